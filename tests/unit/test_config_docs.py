"""The key tables in docs/ agree with the config schema: every documented key exists, every key is
documented, and a default the docs state is the schema's default."""

from __future__ import annotations

import re

import yaml
from support.paths import REPO

from ranktune.platform.cli.main import main
from ranktune.trainables.config import config_keys

DOCS = REPO / "docs"
SCHEMA = {key: default for key, _, default, _ in config_keys()}
# Sections documented in prose rather than a table: their keys must still be named in the section's text.
PROSE_SECTIONS = {"schedule", "output"}
# Where each section's keys are documented: (file, heading that starts with the section's name).
TABLE_DOCS = {"galore": "galore.md", "relora": "relora.md"}


def _sections(doc: str) -> dict[str, str]:
    """Body of each `## heading`, keyed by the heading's first word (`## data (see data.md)` -> data)."""
    parts = re.split(r"^## ", doc, flags=re.M)[1:]
    return {part.split()[0].strip("`:"): part for part in parts}


def _split_top_level(cell: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in cell:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    return [*parts, current.strip()]


def _table_rows(body: str) -> list[tuple[list[str], list[str]]]:
    """(keys, defaults) of each `| key | default | meaning |` row."""
    rows = []
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        keys = re.findall(r"`([a-z_]+)`", cells[0])
        rows.append((keys, _split_top_level(cells[1])))
    return rows


def _documented() -> dict[str, list[str]]:
    """Dotted key -> the default cells the docs give it (empty when a row's defaults cannot be paired)."""
    found: dict[str, list[str]] = {}
    tables = {name: body for name, body in _sections((DOCS / "configuration.md").read_text()).items()}
    for section, doc in TABLE_DOCS.items():
        tables[section] = _sections((DOCS / doc).read_text())["Config"]
    for section, body in tables.items():
        if section in PROSE_SECTIONS:
            for key in re.findall(r"`([a-z_]+)", body):  # `name: cosine`, `min_lr_ratio * lr` name keys too
                if f"{section}.{key}" in SCHEMA:
                    found[f"{section}.{key}"] = []
            continue
        for keys, defaults in _table_rows(body):
            paired = defaults if len(defaults) == len(keys) else [None] * len(keys)
            for key, default in zip(keys, paired, strict=True):
                found[f"{section}.{key}"] = [default] if default is not None else []
    return found


def _as_value(cell: str):
    """A default cell as YAML (`0 (off)` -> 0, `none` -> None), or the cell itself when it is descriptive."""
    text = re.sub(r"\s*\(.*\)$", "", cell.replace("`", "")) if not cell.startswith("(") else cell
    text = text.replace("(", "[").replace(")", "]")
    try:
        return yaml.safe_load(text if text != "none" else "null")
    except yaml.YAMLError:
        return cell


def test_every_documented_key_exists():
    unknown = sorted(
        k
        for k in _documented()
        if k.split(".")[0] in {"model", "data", "optim", "train", *TABLE_DOCS} and k not in SCHEMA
    )
    assert unknown == []


def test_every_training_key_is_documented():
    sections = {"model", "data", "optim", "schedule", "train", "output", *TABLE_DOCS}
    documented = _documented()
    missing = sorted(k for k in SCHEMA if k.split(".")[0] in sections and k not in documented)
    assert missing == []


def test_documented_defaults_match_the_schema():
    wrong = []
    for key, cells in _documented().items():
        for cell in cells:
            value, default = _as_value(cell), SCHEMA.get(key)
            if isinstance(default, tuple):
                default = list(default)
            if (isinstance(value, str) and not isinstance(default, str)) or cell.count("`") > 2:
                continue  # a descriptive default ("preset's", "`$RANKTUNE_CACHE` or `~/...`"), not a value
            if isinstance(default, str) and value != default and not isinstance(value, str):
                value = str(value)
            if value != default:
                wrong.append(f"{key}: docs {cell!r}, schema {default!r}")
    assert wrong == []


def test_config_keys_prints_every_key_with_its_meaning(capsys):
    assert main(["config", "--keys"]) == 0
    out = capsys.readouterr().out
    for key, _, _, meaning in config_keys():
        assert key in out
        assert meaning and meaning in out, key
    assert "galore.rank  (int, default 128)" in out
