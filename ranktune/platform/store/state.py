"""A sweep's state file (sweep.json): the spec and the MLflow ids the sweep runs under, read wherever the
sweep's directory now is. Reading commands (report, export, ui) and the sweep itself load it here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ranktune.search_spaces.spec import SweepSpec
from ranktune.trainables.config import ConfigError

STATE_FILE = "sweep.json"
# The keys this version reads and writes, in the order a fresh sweep writes them.
_KNOWN_KEYS = ("spec", "tracking_uri", "experiment_id", "parent_run_id", "storage_dir", "confirm_runs")


@dataclass
class SweepState:
    """What `sweep.json` holds: the spec as written and the MLflow ids the sweep runs under.

    Written back byte for byte as it was read (its keys in the file's order, keys of other versions
    kept), so reading a sweep with this version and writing it again changes only what changed."""

    spec: dict[str, Any]  # the spec as JSON; `load_state` returns the validated SweepSpec beside it
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    storage_dir: str | None = None  # where the sweep last ran or was loaded (relocate.py); absent before
    confirm_runs: dict[str, str] | None = None  # searched trial id -> its replicates' MLflow run (confirm)
    other: dict[str, Any] = field(default_factory=dict)  # keys this version does not know
    key_order: tuple[str, ...] = ()  # the order of the file's keys, kept when it is written again

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SweepState:
        known = {key: data[key] for key in _KNOWN_KEYS if key in data}
        other = {key: value for key, value in data.items() if key not in _KNOWN_KEYS}
        return cls(**known, other=other, key_order=tuple(data))

    def to_json(self) -> dict[str, Any]:
        values = {key: getattr(self, key) for key in _KNOWN_KEYS} | self.other
        present = {key: value for key, value in values.items() if value is not None or key in self.key_order}
        order = [key for key in self.key_order if key in present] + [k for k in present if k not in self.key_order]
        return {key: present[key] for key in order}

    def write(self, storage_dir: Path) -> None:
        from ranktune.platform.store.files import write_json_atomic

        write_json_atomic(Path(storage_dir) / STATE_FILE, self.to_json())


def load_state(storage_dir: str | Path, check_store: bool = True) -> tuple[SweepSpec, SweepState]:
    """The sweep in `storage_dir`, wherever that directory now is (see relocate.py); with `check_store`,
    its default MLflow store must be there and intact (`check_sweep_store`)."""
    from ranktune.platform.store.relocate import relocate

    path = Path(storage_dir).expanduser().resolve() / STATE_FILE
    if not path.is_file():
        raise ConfigError([f"{str(path.parent)!r} is not a sweep directory (no {STATE_FILE})"])
    spec, state = relocate(*read_state_file(path), path.parent)
    if check_store:
        check_sweep_store(spec)
    return spec, state


def check_sweep_store(spec: SweepSpec) -> None:
    """A sweep on its own sqlite store: the file must be intact, or MLflow would make a fresh empty one."""
    from ranktune.platform.store.files import check_mlflow_store

    if spec.tracking.tracking_uri is None:
        check_mlflow_store(spec.storage_dir / "mlflow.db")


def read_state_file(path: Path) -> tuple[SweepSpec, SweepState]:
    """sweep.json as written by `run_sweep`; a damaged or hand-broken one is refused naming the file."""
    from ranktune.platform.store.files import read_json_object
    from ranktune.trainables.config import describe_validation_errors

    what = "the spec and MLflow ids `ranktune sweep` wrote; restore it from a copy of the sweep"
    state = read_json_object(path, what, required=("spec", "tracking_uri", "experiment_id", "parent_run_id"))
    wrong = [
        f"{key}: {state[key]!r}"
        for key in ("tracking_uri", "experiment_id", "parent_run_id")
        if not isinstance(state[key], str) or not state[key]
    ]
    recorded = state.get("storage_dir")  # where the sweep last was (relocate.py): absent in older sweeps
    if recorded is not None and not (isinstance(recorded, str) and Path(recorded).is_absolute()):
        wrong.append(f"storage_dir: {recorded!r} is not an absolute path")
    if not isinstance(state["spec"], dict):
        wrong.append(f"spec: a JSON {type(state['spec']).__name__}, not an object")
    if wrong:
        raise ConfigError([f"{str(path)!r} is damaged ({'; '.join(wrong)}) -> {what}"])
    prefix = "spec."
    try:
        spec = SweepSpec.model_validate(state["spec"])
        prefix = "spec.space."
        spec.search_space()
    except ValidationError as exc:
        problems = describe_validation_errors(exc, docs="docs/sweeps.md", prefix=prefix)
        raise ConfigError([f"{str(path)!r}: {p}" for p in problems]) from None
    return spec, SweepState.from_json(state)
