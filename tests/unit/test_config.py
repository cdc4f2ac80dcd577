import pytest

from ranktune.trainables.config import ConfigError, apply_overrides, load_config


def problems(tmp_path, yaml_text: str, *overrides: str) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as exc:
        load_config(path, list(overrides))
    return str(exc.value)


def test_defaults_load_and_overrides_apply(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {steps: 30}\n")
    cfg = load_config(path, ["optim.lr=1e-3", "train.micro_batch_size=4", "galore.target_modules=[q_proj]"])
    assert cfg.train.steps == 30 and cfg.optim.lr == 1e-3 and cfg.grad_accum_steps == 4
    assert cfg.galore.target_modules == ["q_proj"]


@pytest.mark.parametrize(
    "text,overrides,expected",
    [
        ("optim: {lr: 0}\n", [], "optim.lr: 0 -> Input should be greater than 0"),
        ("", ["optim.lr=-1"], "optim.lr: -1"),
        ("trian: {steps: 3}\n", [], "trian: unknown key"),
        ("train: {stepz: 3}\n", [], "train.stepz: unknown key"),
        ("train: {steps: many}\n", [], "train.steps: 'many' -> Input should be a valid integer"),
        (
            "train: {batch_size: 10, micro_batch_size: 4}\n",
            [],
            "train.batch_size: 10 -> a multiple of train.micro_batch_size (4)",
        ),
        ("data: {seq_len: 2048}\n", [], "data.seq_len: 2048 -> at most the model's max_seq_len (256)"),
        ("data: {source: files, files: [/nope.txt]}\n", [], "data.files: '/nope.txt' -> an existing file"),
        ("data: {source: files}\n", [], "data.files: [] -> at least one file"),
        ("data: {source: c4}\n", [], "data.max_tokens: None -> a token budget is required"),
        ("model: {name: 13b}\n", [], "model.name: '13b' -> one of"),
        ("optim: {name: sgd}\n", [], "optim.name: 'sgd' -> one of"),
        ("schedule: {warmup_steps: 500}\ntrain: {steps: 100}\n", [], "schedule.warmup_steps: 500 -> fewer than"),
        ("train: {precision: fp8}\n", [], "train.precision: 'fp8'"),
        ("- a\n- b\n", [], "holds a list -> a mapping of sections"),
    ],
)
def test_bad_input_names_field_value_and_allowed(tmp_path, text, overrides, expected):
    assert expected in problems(tmp_path, text, *overrides)


def test_all_cross_field_problems_reported_together(tmp_path):
    msg = problems(tmp_path, "train: {batch_size: 10, micro_batch_size: 4}\ndata: {seq_len: 4096}\n")
    assert "train.batch_size" in msg and "data.seq_len" in msg


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_override_needs_key_value():
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides({}, ["optim.lr"])
