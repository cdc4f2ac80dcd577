"""The sweep's Optuna storage (`optuna.db`), found in the sweep's directory again after a copy or move.

Ray Tune pickles the searcher, and with it the Optuna storage, into the sweep's `tune/` directory
(`tuner.pkl`, `searcher-state-*.pkl`). Optuna's RDBStorage pickles its absolute sqlite URL and
connects to it when unpickled: a resumed copy of a sweep wrote to the original's `optuna.db`, or
failed with "unable to open database file" once the original was gone. This storage unpickles as
the `optuna.db` of the sweep directory being resumed (relocate.resuming, around Tune's restore and
fit), and as the file it was pickled with anywhere else.
"""

from __future__ import annotations

from pathlib import Path

import optuna

from ranktune.platform.store.relocate import resumed_state

STUDY_FILE = "optuna.db"


class SweepStudyStorage(optuna.storages.RDBStorage):
    def __init__(self, sweep_dir: str | Path) -> None:
        self.sweep_dir = Path(sweep_dir)
        super().__init__(f"sqlite:///{self.sweep_dir / STUDY_FILE}")

    def __reduce__(self):
        return (_reopen, (str(self.sweep_dir),))


def _reopen(pickled_dir: str) -> SweepStudyStorage:
    resumed = resumed_state()
    return SweepStudyStorage(resumed.storage_dir if resumed is not None else pickled_dir)
