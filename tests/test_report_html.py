"""The HTML report and the plots: drawn from report rows, checked in headless Chromium."""

from __future__ import annotations

import re

from browser import distinct_colours, dump_dom, needs_chromium, screenshot, with_error_probe
from test_report_table import ROWS, SPEC

from ranktune.platform.plots import METHOD_COLOURS, informative_range, method_colour
from ranktune.platform.report_html import render_html
from ranktune.platform.report_table import flat_rows, method_of

METHODS = [method_of(SPEC, r["params"]) for r in ROWS]
CURVES = {r["run_id"]: {"eval_loss": [(0, 10.4), (20, 7.9 + i / 10), (40, 7.2 + i / 10), (80, 6.8 + i / 10)],
                        "train_loss": [(5, 9.0), (40, 7.3), (80, 6.9)]} for i, r in enumerate(ROWS)}  # fmt: skip
CONFIRM = {"seeds": 2, "metric": "eval_loss", "verdict": "not resolved", "why": "gap 0.01 < spread 0.03",
           "rule": "mean gap > std + std", "configurations": [
               {"trial_id": "3f2f0c47", "params": ROWS[0]["params"], "mean": 6.83, "std": 0.01, "n": 2,
                "search_objective": 6.8278},
               {"trial_id": "e5d27066", "params": ROWS[1]["params"], "mean": 6.84, "std": 0.02, "n": 2,
                "search_objective": 6.8439}]}  # fmt: skip


def page(tmp_path):
    text = render_html(SPEC, ROWS, METHODS, flat_rows(SPEC, ROWS), CURVES, CONFIRM, ROWS[0], "sweeps/demo")
    path = tmp_path / "report.html"
    path.write_text(text)
    return path


def test_report_is_self_contained_with_table_charts_and_next_command(tmp_path):
    text = page(tmp_path).read_text()
    assert not re.search(r"<script[^>]+src=", text)  # plotly.js inlined: opens offline
    assert text.count("Plotly.newPlot") == 4
    assert "winner: adamw8bit (trial 3f2f0c47" in text and "ranktune export sweeps/demo --target 7b" in text
    assert "galore.rank=64 galore.update_proj_gap=30" in text and "diverged at step 3" in text
    assert "verdict: not resolved" in text


def test_method_colours_are_fixed_and_the_y_range_leaves_out_the_untrained_start():
    assert method_colour("galore_adamw") == METHOD_COLOURS["galore_adamw"] != method_colour("relora")
    assert method_colour("unknown_method") == method_colour("unknown_method")
    low, high = informative_range([7.9, 7.2, 6.8, 7.0, 7.1, 6.9, 7.3, 7.4, 7.5, 7.6, 10.4])
    assert low < 6.8 and 7.6 <= high < 8.0  # the 10.4 outlier (step-0-like) is off the top


@needs_chromium
def test_report_loads_without_console_errors_and_its_charts_render(tmp_path):
    probed = with_error_probe(page(tmp_path), tmp_path / "probed.html")
    dom = dump_dom(probed.as_uri())
    assert "data-errors" not in dom.split("<head>", 1)[0], dom[:500]
    assert dom.count('class="main-svg"') >= 4  # plotly drew each chart's SVG
    png = screenshot(probed.as_uri(), tmp_path / "report.png")
    assert distinct_colours(png) > 50  # a blank or unstyled page has a handful


@needs_chromium
def test_the_error_probe_catches_a_failing_script(tmp_path):
    broken = tmp_path / "broken.html"
    broken.write_text("<html><head></head><body><script>undefinedFunction()</script></body></html>")
    dom = dump_dom(with_error_probe(broken, tmp_path / "probed.html").as_uri())
    assert "data-errors" in dom and "undefinedFunction" in dom
