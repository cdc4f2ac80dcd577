"""The ranked table a reader meets: 100 columns, method first, one params column, reasons below; CSV/JSON/sort."""

from __future__ import annotations

import csv
import io
import json

import pytest
from rich.console import Console
from support.rows import TABLE_ROWS, TABLE_SPEC

from ranktune.platform.report.table import flat_rows, render_table, sort_rows, to_csv, to_json, winner_lines
from ranktune.trainables.config import ConfigError

SPEC, ROWS = TABLE_SPEC, TABLE_ROWS


def rendered(flat) -> list[str]:
    buffer = io.StringIO()
    render_table(SPEC, flat, console=Console(file=buffer, width=100, force_terminal=False))
    return buffer.getvalue().splitlines()


def test_table_fits_100_columns_method_first_one_params_column_reasons_below():
    lines = rendered(flat_rows(SPEC, ROWS))
    assert max(len(line) for line in lines) <= 100
    header = next(i for i, line in enumerate(lines) if "method" in line)
    assert lines[header].split()[:3] == ["#", "method", "params"]
    assert all(col in lines[header] for col in ("loss", "opt", "peak", "tok/s", "CPU-h", "trial"))
    text = "\n".join(lines)
    # each row shows only its own branch's params, with their section
    assert "galore.rank=64" in text and "relora.relora_every=30" in text
    galore_line = next(line for line in lines if "galore_adamw" in line)
    assert "relora." not in galore_line
    assert "stop@20" in text and "5e6f7a8b stopped: milestone 40" in text
    # no key=value is cut across lines (relora.restart_warmup_steps=4 is wider than the column's share)
    for word in " ".join(r["params"] for r in flat_rows(SPEC, ROWS)).split():
        assert word in text, word
    assert "9c0d1e2f failed: diverged at step 3" in text


def test_csv_json_and_sort():
    flat = flat_rows(SPEC, ROWS)
    parsed = list(csv.DictReader(io.StringIO(to_csv(flat))))
    assert [r["method"] for r in parsed] == ["adamw8bit", "adamw", "galore_adamw", "relora", "lora"]
    assert parsed[2]["params"] == "galore.rank=64 galore.update_proj_gap=30 optim.lr=0.0121"
    assert parsed[0]["params"] == "optim.lr=8.5e-3"
    assert json.loads(to_json(flat))[0]["optimizer_state_mib"] == pytest.approx(1.04)
    by_memory = sort_rows(flat, "optimizer_state", "min")
    assert [r["trial_id"] for r in by_memory][:2] == ["9c0d1e2f", "3f2f0c47"]
    by_speed = sort_rows(flat, "tokens_per_s", "min")
    assert by_speed[0]["method"] == "adamw" and by_speed[-1]["method"] == "lora"  # no value: last
    with pytest.raises(ConfigError, match="--sort: 'speed' -> one of"):
        sort_rows(flat, "speed", "min")


def test_last_lines_name_the_winner_and_the_next_command():
    lines = winner_lines(SPEC, ROWS[0], "sweeps/demo")
    assert lines[0].startswith("winner: adamw8bit (trial 3f2f0c47, eval_loss 6.8278")
    assert lines[1].startswith("next: ranktune export sweeps/demo --target 7b")
