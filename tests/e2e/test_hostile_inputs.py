"""Issue 24, items 9-18: hostile or damaged inputs give one-line refusals (exit 2) or correct results,
never a traceback, a file written outside the sweep, or a file left half-written."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3

import pytest

from ranktune.platform.cli.main import main
from ranktune.platform.store.files import write_json_atomic
from ranktune.platform.store.locks import LOCK_FILE, OWNER_FILE, own_directory
from ranktune.platform.sweep import driver as sweep
from ranktune.search_spaces.spec import spec_from_dict
from ranktune.trainables.config import ConfigError


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip() and not line.startswith(("WARNING", "INFO"))]


def assert_one_line_refusal(rc: int, err: str, *expected: str) -> str:
    assert rc == 2, err
    assert "Traceback" not in err, err
    [line] = error_lines(err)
    assert line.startswith("error: "), line
    for text in expected:
        assert text in line, line
    return line


@pytest.fixture
def cli(capsys):
    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        rc = main(list(argv))
        out, err = capsys.readouterr()
        return rc, out, err

    return run


@pytest.fixture(scope="module")
def base_config(token_cache, tmp_path_factory) -> dict:
    from support.tiny import tiny_config_dict

    return tiny_config_dict(str(tmp_path_factory.mktemp("run")), token_cache)


@pytest.fixture
def raw_spec(base_config, tmp_path):
    return {
        "name": "hostile",
        "base_overrides": base_config,
        "space": {"params": {"optim.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2}}},
        "budget": {"num_trials": 1, "steps_per_trial": 10},
        "storage": str(tmp_path / "sweep"),
    }


@pytest.fixture(scope="module")
def started_sweep_template(base_config, tmp_path_factory):
    """A sweep directory as `ranktune sweep` leaves it before Ray runs a trial: sweep.json, mlflow.db with
    the parent run. Created once (MLflow's schema setup takes seconds); each test gets a copy, which
    works where it lies (relocate.py)."""
    storage = tmp_path_factory.mktemp("template") / "sweep"
    spec = spec_from_dict(
        {
            "name": "hostile",
            "base_overrides": base_config,
            "budget": {"num_trials": 1, "steps_per_trial": 10},
            "space": {"params": {"optim.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2}}},
            "storage": str(storage),
        }
    )
    storage.mkdir()
    state = {"spec": json.loads(sweep.spec_json(spec)), **sweep.start_tracking(spec)}
    write_json_atomic(storage / sweep.STATE_FILE, state)
    return storage


@pytest.fixture
def started_sweep(started_sweep_template, tmp_path):
    copy = tmp_path / "started"
    shutil.copytree(started_sweep_template, copy)
    return copy


# ------------------------------------------------------------------ 12, 13: storage values and URI-unsafe paths


@pytest.mark.parametrize(
    "storage,expected",
    [
        ("", "storage: '' -> a directory path"),
        ("  ", "storage: '  ' -> a directory path"),
        ("{foo}", "storage: '{foo}' -> a path in which '{name}' is the only placeholder (found '{foo}')"),
        ("{0}", "(found '{0}')"),
        ("{", "storage: '{' -> a path in which '{name}' is the only placeholder (Single '{'"),
        ("x}", "Single '}'"),
        ("x/{name!r}", "(found '{name}')"),
        ("{tmp}/a?b", "-> a path without '?'"),
        ("{tmp}/a#b/{{name}}", "-> a path without '#'"),
        ("{tmp}/100%/{name}", "-> a path without '%'"),
    ],
)
def test_bad_storage_values_are_refused_in_one_line(raw_spec, tmp_path, storage, expected):
    with pytest.raises(ConfigError) as exc:
        spec_from_dict({**raw_spec, "storage": storage.replace("{tmp}", str(tmp_path))})
    [problem] = exc.value.problems
    assert problem.startswith("storage: ") and expected in problem, problem


def test_a_storage_path_with_a_query_character_writes_nothing_outside_it(cli, raw_spec, tmp_path):
    """Before: `sweeps/a?b` put mlflow.db and optuna.db in one sqlite file `sweeps/a`, outside the sweep."""
    spec_file = tmp_path / "spec.yaml"
    import yaml

    spec_file.write_text(yaml.safe_dump({**raw_spec, "storage": str(tmp_path / "s" / "a?b")}))
    rc, _, err = cli("sweep", str(spec_file), "--quiet")
    assert_one_line_refusal(rc, err, "storage:", "a path without '?'")
    assert not (tmp_path / "s").exists()


def test_literal_braces_and_the_name_placeholder_still_work(raw_spec, tmp_path):
    spec = spec_from_dict({**raw_spec, "storage": str(tmp_path / "{{x}}" / "{name}")})
    assert spec.storage_dir == tmp_path / "{x}" / "hostile"


def test_seed_outside_numpys_range_is_refused(cli, raw_spec):
    with pytest.raises(ConfigError, match=r"seed: .* -> Input should be less than or equal to 4294967295"):
        spec_from_dict({**raw_spec, "seed": 2**40})
    rc, _, err = cli("config", "--set", "train.seed=1e20")
    assert_one_line_refusal(rc, err, "train.seed")


# ------------------------------------------------------------------ 14: damaged sweep files


def test_report_of_an_intact_started_sweep_works(cli, started_sweep):
    rc, _, err = cli("report", str(started_sweep), "--no-plots")
    assert rc == 0, err


@pytest.mark.parametrize(
    "content,expected",
    [
        (b"", "is damaged (not JSON"),
        (b'{"spec": {"name": "x"', "is damaged (not JSON"),
        (b"\x00\xff\xfe garbage", "is damaged (not JSON"),
        (b"[]", "holds a JSON list, not an object"),
        (b"{}", "(no spec, tracking_uri, experiment_id, parent_run_id)"),
        (b'{"spec": [], "tracking_uri": "x", "experiment_id": "1", "parent_run_id": "r"}', "spec: a JSON list"),
        (b'{"spec": {}, "tracking_uri": 1, "experiment_id": "1", "parent_run_id": "r"}', "tracking_uri: 1"),
    ],
)
def test_a_damaged_sweep_json_is_refused_naming_the_file(cli, started_sweep, content, expected):
    (started_sweep / "sweep.json").write_bytes(content)
    for command in ("report", "export", "ui", "dashboard"):
        rc, _, err = cli(command, str(started_sweep))
        assert_one_line_refusal(rc, err, f"'{started_sweep / 'sweep.json'}'", expected)
    rc, _, err = cli("sweep", "--resume", str(started_sweep), "--quiet")
    assert_one_line_refusal(rc, err, "sweep.json")


@pytest.mark.parametrize(
    "edit,expected",
    [
        ({"budget": {"num_trials": "many", "steps_per_trial": 10}}, "spec.budget.num_trials: 'many' -> Input"),
        ({"objective": {"metric": "eval_loss", "mode": "sideways"}}, "spec.objective.mode: 'sideways'"),
        ({"space": {"params": {"optim.lr": {"type": "uniformish"}}}}, "spec.space.params.optim.lr"),
    ],
)
def test_hand_edited_spec_values_in_sweep_json_are_refused(cli, started_sweep, edit, expected):
    path = started_sweep / "sweep.json"
    state = json.loads(path.read_text())
    state["spec"].update(edit)
    path.write_text(json.dumps(state))
    rc, _, err = cli("report", str(started_sweep))
    assert rc == 2 and "Traceback" not in err, err
    assert any(expected in line and "sweep.json" in line for line in error_lines(err)), err


@pytest.mark.parametrize("damage", ["missing", "empty", "truncated", "garbage", "not-mlflow"])
def test_a_missing_or_damaged_mlflow_db_is_refused_not_recreated(cli, started_sweep, damage):
    db = started_sweep / "mlflow.db"
    if damage == "missing":
        db.unlink()
    elif damage == "empty":
        db.write_bytes(b"")
    elif damage == "truncated":
        db.write_bytes(db.read_bytes()[:3000])
    elif damage == "garbage":
        db.write_bytes(os.urandom(8192))
    else:
        db.unlink()
        sqlite3.connect(db).execute("create table t (x)").connection.commit()
    size = db.stat().st_size if db.exists() else None
    rc, out, err = cli("report", str(started_sweep), "--no-plots")
    line = assert_one_line_refusal(rc, err, f"'{db}'")
    assert "--resume" not in line + out
    assert (db.stat().st_size if db.exists() else None) == size  # no fresh empty store in its place


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b'{"configurations": [',
        b"[]",
        b"{}",
        b'{"configurations": [1], "verdict": "x", "why": "", "rule": "", "seeds": 2, "metric": "eval_loss"}',
    ],
)
def test_a_damaged_confirm_json_is_refused_naming_the_file(cli, started_sweep, content):
    (started_sweep / "confirm.json").write_bytes(content)
    rc, _, err = cli("report", str(started_sweep), "--no-plots")
    assert_one_line_refusal(rc, err, f"'{started_sweep / 'confirm.json'}' is damaged")


def test_json_files_are_replaced_atomically(tmp_path, monkeypatch):
    path = tmp_path / "sweep.json"
    write_json_atomic(path, {"a": 1})

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError):
        write_json_atomic(path, {"a": 2, "b": "x" * 10000})
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.json"]  # no temporary file left


# ------------------------------------------------------------------ 16: planted symlinks


@pytest.mark.parametrize("name", [OWNER_FILE, LOCK_FILE])
def test_a_planted_symlink_is_refused_and_its_target_untouched(tmp_path, name):
    directory, target = tmp_path / "run", tmp_path / "precious.txt"
    directory.mkdir()
    target.write_text("keep me")
    (directory / name).symlink_to(target)
    with pytest.raises(ConfigError) as exc:
        with own_directory(directory, "output.dir", "training run"):
            pass
    [problem] = exc.value.problems
    assert problem.startswith(f"output.dir: '{directory / name}' is a symbolic link")
    assert target.read_text() == "keep me"


def test_a_symlink_planted_after_the_check_is_still_not_followed(tmp_path, monkeypatch):
    from ranktune.platform.store import locks

    directory, target = tmp_path / "run", tmp_path / "precious.txt"
    directory.mkdir()
    target.write_text("keep me")
    monkeypatch.setattr(locks, "refuse_symlink", lambda path, field: None)  # the race: check passes, link appears
    (directory / OWNER_FILE).symlink_to(target)
    with pytest.raises(OSError):
        with own_directory(directory, "output.dir", "training run"):
            pass
    assert target.read_text() == "keep me"


# ------------------------------------------------------------------ 17, 18: flags, plots, rules, checkpoints


@pytest.fixture
def argv_exit(capsys):
    """rc and stderr of `ranktune ARGV`, argparse refusals (SystemExit 2) included."""

    def run(*argv: str) -> tuple[int, str]:
        capsys.readouterr()
        try:
            rc = main(list(argv))
        except SystemExit as exc:
            rc = exc.code
        return rc, capsys.readouterr().err

    return run


@pytest.mark.parametrize(
    "argv",
    [
        ["report", "S", "--max-memory-gib", "nan"],
        ["report", "S", "--max-memory-gib", "-3"],
        ["export", "S", "--budget-gib", "nan"],
        ["export", "S", "--budget-gib", "inf"],
        ["export", "S", "--budget-gib", "-24"],
        ["export", "S", "--max-memory-gib", "0"],
        ["estimate", "--budget-gib=-inf"],
        ["ui", "S", "--port", "99999"],
        ["dashboard", "S", "--port", "0"],
        ["mlflow-server", "--backend-store-uri", "sqlite:///x.db", "--artifacts-destination", "a", "--port", "-1"],
    ],
)
def test_non_finite_negative_or_out_of_range_numbers_are_refused(argv_exit, argv):
    rc, err = argv_exit(*argv)
    assert rc == 2, err
    assert "Traceback" not in err and "-> a " in err.splitlines()[-1], err


def test_export_rules_that_are_not_yaml_and_an_out_directory_are_refused(cli, started_sweep, tmp_path):
    rules = tmp_path / "rules.yaml"
    for content, expected in [("a: [1,\n", "is not a YAML file of scaling rules"), ("- 1\n", "holds a list")]:
        rules.write_text(content)
        rc, _, err = cli("export", str(started_sweep), "--rules", str(rules))
        assert_one_line_refusal(rc, err, "--rules:", expected)
    rc, _, err = cli("export", str(started_sweep), "--out", str(tmp_path))
    assert_one_line_refusal(rc, err, f"--out: '{tmp_path}' is a directory")


def test_schedule_plot_says_the_file_it_wrote_and_refuses_an_unwritable_one(cli, tmp_path):
    rc, out, err = cli("schedule", "--plot", str(tmp_path / "lr"))
    assert rc == 0, err
    assert f"plot: {tmp_path / 'lr.png'}" in out and (tmp_path / "lr.png").is_file()
    rc, _, err = cli("schedule", "--plot", "/proc/ranktune-x.png")
    assert_one_line_refusal(rc, err, "--plot: '/proc/ranktune-x.png' cannot be written")
    rc, _, err = cli("schedule", "--plot", str(tmp_path))
    assert_one_line_refusal(rc, err, "is a directory")


def test_an_unsupported_tracking_uri_is_refused_with_the_spec(raw_spec):
    with pytest.raises(ConfigError) as exc:
        spec_from_dict({**raw_spec, "tracking": {"tracking_uri": "ftp://alice:pw@host/mlruns"}})
    [problem] = exc.value.problems
    assert problem.startswith("tracking.tracking_uri: 'ftp://host/mlruns' -> an MLflow tracking URI")
    assert "pw" not in problem
    for fine in ("sqlite:///x.db", "postgresql+psycopg2://db/x", "http://127.0.0.1:5000", "mlruns"):
        spec_from_dict({**raw_spec, "tracking": {"tracking_uri": fine}})


@pytest.mark.parametrize("content", ["tensor", "wrong-keys", "text", "random"])
def test_a_file_that_is_not_a_ranktune_checkpoint_is_unreadable_not_dangerous(tmp_path, caplog, content):
    """Resume skips it as damaged (with a warning naming it) instead of a KeyError or a "could run code"."""
    import random

    import torch

    from ranktune.trainables.checkpoint import checkpoint_dir, load_latest_checkpoint

    checkpoint_dir(tmp_path).mkdir(parents=True)
    path = checkpoint_dir(tmp_path) / "step_00000005.pt"
    rng = random.Random(24)
    for _ in range(20 if content == "random" else 1):
        if content == "tensor":
            torch.save(torch.zeros(3), path)
        elif content == "wrong-keys":
            torch.save({"weights": {"w": torch.zeros(2)}, "step": 5}, path)
        elif content == "text":
            path.write_text("step: 5\nmodel: none\n")
        else:
            path.write_bytes(rng.randbytes(rng.randint(1, 8192)))
        caplog.clear()
        assert load_latest_checkpoint(tmp_path) is None
        [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert f"checkpoint {path} is unreadable" in warning and "could run code" not in warning


def test_printed_commands_are_quoted_for_pasting(raw_spec):
    from ranktune.platform.report.table import winner_lines

    spec = spec_from_dict(raw_spec)
    best = {"trial_id": "t1", "params": {"optim.lr": 1e-3}, "objective": 3.5}
    lines = winner_lines(spec, best, "/tmp/my sweeps/k1")
    assert "ranktune export '/tmp/my sweeps/k1' --target 7b" in lines[1]
    assert "ranktune train '/tmp/my sweeps/k1/best_config.yaml'" in lines[1]
    assert "ranktune sweep --resume '/tmp/my sweeps/k1'" in winner_lines(spec, None, "/tmp/my sweeps/k1")[0]


COMMAND_BEFORE_A_PATH = (
    "ranktune sweep --resume ",
    "ranktune export ",
    "ranktune train ",
    "ranktune report ",
    "ranktune ui ",
    "ranktune dashboard ",
    "ranktune confirm ",
)


def _is_quoted(node) -> bool:
    """`shlex.quote(...)`, a name `quoted`, or either inside `html.escape(...)`."""
    import ast

    if isinstance(node, ast.Name):
        return node.id == "quoted"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        if node.func.attr == "quote" and getattr(node.func.value, "id", None) == "shlex":
            return True
        if node.func.attr == "escape" and getattr(node.func.value, "id", None) == "html":
            return bool(node.args) and _is_quoted(node.args[0])
    return False


def test_every_printed_command_quotes_the_path_it_interpolates():
    """Issue 24.18: a path with a space pasted from a message must stay one argument. Every f-string in
    ranktune/ that puts a value right after `ranktune <command> ` quotes it (shlex.quote)."""
    import ast
    from pathlib import Path

    import ranktune

    unquoted = []
    for source in sorted(Path(ranktune.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(source.read_text())):
            if not isinstance(node, ast.JoinedStr):
                continue
            for before, value in zip(node.values, node.values[1:], strict=False):
                if (
                    isinstance(before, ast.Constant)
                    and isinstance(value, ast.FormattedValue)
                    and str(before.value).endswith(COMMAND_BEFORE_A_PATH)
                    and not _is_quoted(value.value)
                ):
                    tail = str(before.value)[-40:]
                    unquoted.append(f"{source.name}:{value.lineno}: ...{tail}{{{ast.unparse(value.value)}}}")
    assert not unquoted, "\n".join(unquoted)


def test_report_of_a_running_sweep_does_not_advise_resume(cli, started_sweep):
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import time
        from ranktune.platform.store.locks import own_directory
        with own_directory({str(started_sweep)!r}, "storage", "sweep"):
            print("held", flush=True)
            time.sleep(60)
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        rc, out, err = cli("report", str(started_sweep), "--no-plots")
        assert rc == 0, err
        assert "--resume" not in out and f"the sweep is still running (pid {holder.pid}" in out
        rc, _, err = cli("export", str(started_sweep))
        line = assert_one_line_refusal(rc, err, "the sweep is still running")
        assert "--resume" not in line
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize(
    "fault,expected",
    [
        (
            OSError(28, "No space left on device", "/x/metrics.jsonl"),
            "error: no space left on the device writing /x/metrics.jsonl -> free some space",
        ),
        (MemoryError(), "error: out of memory (host RAM) -> lower train.micro_batch_size"),
    ],
)
def test_disk_full_and_out_of_memory_are_one_line_errors(argv_exit, monkeypatch, fault, expected):
    from ranktune.platform.cli import train as cli_module

    def failing(args):
        raise fault

    monkeypatch.setattr(cli_module, "cmd_config", failing)
    rc, err = argv_exit("config")
    assert rc == 1 and "Traceback" not in err, err
    assert error_lines(err) == [error_lines(err)[0]] and error_lines(err)[0].startswith(expected), err


def test_cuda_out_of_memory_is_a_one_line_error(argv_exit, monkeypatch):
    import torch

    from ranktune.platform.cli import train as cli_module

    def failing(args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(cli_module, "cmd_config", failing)
    rc, err = argv_exit("config")
    assert rc == 1 and error_lines(err) == [
        "error: out of GPU memory (CUDA out of memory. Tried to allocate 2.00 GiB) -> lower train.micro_batch_size "
        "(the batch is kept by gradient accumulation) or the model; `ranktune estimate` shows the need"
    ], err


# ------------------------------------------------------------------ 9, 15: interrupted or failing drivers


class FakeResults:
    """What `Tuner.fit()` returns, as far as the driver reads it."""

    def __init__(self, ended: int, total: int) -> None:
        self.num_terminated, self.num_errors, self.total = ended, 0, total

    def __len__(self) -> int:
        return self.total


class FakeTuner:
    def __init__(self, outcome) -> None:
        self.outcome = outcome

    def fit(self):
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


def open_trial_run(spec, state, trial_id="t_1"):
    from ranktune.platform.tracking.client import SWEEP_TAG, TRIAL_TAG, mlflow_client

    client = mlflow_client(state.tracking_uri)
    tags = {"mlflow.parentRunId": state.parent_run_id, TRIAL_TAG: trial_id, SWEEP_TAG: spec.name}
    return client, client.create_run(state.experiment_id, tags=tags).info.run_id


def test_ctrl_c_during_the_search_leaves_trials_interrupted_and_the_sweep_resumable(cli, started_sweep, monkeypatch):
    from ranktune.platform.tracking.client import REASON_TAG, STATUS_TAG

    spec, state = sweep.load_state(started_sweep)
    client, trial_run = open_trial_run(spec, state)
    # Tune returns from fit() after Ctrl-C with the running trial not ended.
    summary = sweep.Sweep(spec, state, 0.0, progress=False).fit_and_finish(FakeTuner(FakeResults(ended=0, total=1)))
    assert summary["interrupted"]
    run = client.get_run(trial_run)
    assert run.data.tags[STATUS_TAG] == "interrupted" and "--resume" in run.data.tags[REASON_TAG]
    assert client.get_run(state.parent_run_id).info.status == "KILLED"  # not FINISHED: resumable

    monkeypatch.setattr(sweep, "resume_sweep", lambda *a, **k: summary)
    rc, out, err = cli("sweep", "--resume", str(started_sweep), "--quiet")
    assert rc == 130, err
    assert f"interrupted: `ranktune sweep --resume {started_sweep}` continues the sweep" in err
    assert "lost" not in out + err

    # The resumed sweep ends; a trial still tagged interrupted was not continued, so it is lost now.
    summary = sweep.Sweep(spec, state, 0.0, progress=False).fit_and_finish(FakeTuner(FakeResults(ended=1, total=1)))
    assert not summary["interrupted"]
    assert client.get_run(trial_run).data.tags[STATUS_TAG] == "lost"
    assert client.get_run(state.parent_run_id).info.status == "FINISHED"


@pytest.mark.parametrize(
    "fault,status",
    [(OSError(28, "No space left on device"), "FAILED"), (KeyboardInterrupt(), "KILLED")],
)
def test_a_driver_that_dies_does_not_leave_the_parent_run_running(started_sweep, fault, status):
    from ranktune.platform.tracking.client import mlflow_client

    spec, state = sweep.load_state(started_sweep)
    with pytest.raises(type(fault)):
        sweep.Sweep(spec, state, 0.0, progress=False).fit_and_finish(FakeTuner(fault))
    assert mlflow_client(state.tracking_uri).get_run(state.parent_run_id).info.status == status
