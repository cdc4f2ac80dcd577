"""A sweep directory copied or moved elsewhere: its MLflow store and artifacts are found in the copy."""

from __future__ import annotations

import json
import shutil

from ranktune.platform.store.relocate import relocate
from ranktune.platform.store.state import SweepState
from ranktune.platform.tracking.client import get_or_create_experiment, log_text_artifact, mlflow_client
from ranktune.search_spaces import spec_from_dict

SPEC = {"name": "moved", "space": {"params": {"optim.lr": {"type": "choice", "values": [1e-3]}}}}


def make_sweep_dir(path):
    """A sweep directory as `run_sweep` leaves it, as far as tracking goes: default store, one run, one artifact."""
    spec = spec_from_dict({**SPEC, "storage": str(path)})
    client = mlflow_client(spec.tracking_uri)
    experiment_id = get_or_create_experiment(client, spec.name, (path / "mlartifacts").as_uri())
    run_id = client.create_run(experiment_id).info.run_id
    log_text_artifact(client, run_id, "note.txt", "kept")
    state = {
        "spec": {**SPEC, "storage": "sweeps/{name}"},
        "tracking_uri": spec.tracking_uri,
        "experiment_id": experiment_id,
        "parent_run_id": run_id,
        "storage_dir": str(path),
    }
    (path / "sweep.json").write_text(json.dumps(state))
    return run_id


def test_a_moved_sweep_reads_its_own_store_and_artifacts_from_any_directory(tmp_path, monkeypatch):
    from ranktune.platform.store.state import load_state

    original, moved, elsewhere = tmp_path / "a" / "moved", tmp_path / "b" / "moved", tmp_path / "cwd"
    original.mkdir(parents=True)
    elsewhere.mkdir()
    run_id = make_sweep_dir(original)
    shutil.copytree(original, moved)
    shutil.rmtree(original)  # moved, not copied: nothing may still point at the old place
    monkeypatch.chdir(elsewhere)

    spec, state = load_state(moved)
    assert spec.storage_dir == moved.resolve()
    assert state.tracking_uri == f"sqlite:///{moved.resolve() / 'mlflow.db'}"
    client = mlflow_client(state.tracking_uri)
    run = client.get_run(run_id)
    assert run.info.artifact_uri.startswith((moved / "mlartifacts").as_uri())
    local = client.download_artifacts(run_id, "note.txt", str(tmp_path))
    assert open(local).read() == "kept"
    assert json.loads((moved / "sweep.json").read_text())["storage_dir"] == str(moved.resolve())
    assert not (elsewhere / "sweeps").exists()  # the spec's relative `storage` is not resolved against the cwd


def test_a_sweep_on_an_explicit_tracking_server_keeps_it(tmp_path):
    spec = spec_from_dict({**SPEC, "tracking": {"tracking_uri": "http://127.0.0.1:5000"}})
    state = SweepState(
        spec=SPEC, tracking_uri="http://127.0.0.1:5000", experiment_id="1", parent_run_id="p", storage_dir="/elsewhere"
    )
    spec, state = relocate(spec, state, tmp_path)
    assert state.tracking_uri == "http://127.0.0.1:5000" and spec.storage_dir == tmp_path.resolve()


def test_what_tune_pickled_reopens_the_resumed_copys_stores(tmp_path):
    """Tune restores its searcher (Optuna storage) and callbacks (MLflow URI) from tune/tuner.pkl: on
    resume of a copy they must open the copy's optuna.db and mlflow.db, never the original's."""
    import pickle

    from ranktune.platform.store.relocate import resuming
    from ranktune.platform.store.study_storage import SweepStudyStorage
    from ranktune.platform.sweep.mlflow_callback import MlflowTrials

    original, copy = tmp_path / "a" / "moved", tmp_path / "b" / "moved"
    original.mkdir(parents=True)
    copy.mkdir(parents=True)
    storage = pickle.dumps(SweepStudyStorage(original))
    callback = pickle.dumps(MlflowTrials(f"sqlite:///{original / 'mlflow.db'}", "1", "parent", "moved", 10, str))
    assert pickle.loads(storage).url == f"sqlite:///{original / 'optuna.db'}"  # in place: as pickled
    assert pickle.loads(callback).tracking_uri == f"sqlite:///{original / 'mlflow.db'}"
    copied = SweepState(
        spec={},
        tracking_uri=f"sqlite:///{copy / 'mlflow.db'}",
        experiment_id="1",
        parent_run_id="parent",
        storage_dir=str(copy),
    )
    with resuming(copied):
        assert pickle.loads(storage).url == f"sqlite:///{copy / 'optuna.db'}"
        assert pickle.loads(callback).tracking_uri == f"sqlite:///{copy / 'mlflow.db'}"
