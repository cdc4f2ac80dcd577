"""The HTML report and the plots: drawn from report rows, checked in headless Chromium."""

from __future__ import annotations

import re

from support.browser import distinct_colours, dump_dom, needs_chromium, screenshot, with_error_probe
from support.rows import TABLE_ROWS as ROWS
from support.rows import TABLE_SPEC as SPEC

from ranktune.platform.report.html import render_html
from ranktune.platform.report.plots import informative_range, method_colour
from ranktune.platform.report.replicates import summarize
from ranktune.platform.report.table import flat_rows, method_of
from ranktune.search_spaces import spec_from_dict

METHODS = [method_of(SPEC, r["params"]) for r in ROWS]
CURVES = {
    r["run_id"]: {
        "eval_loss": [(0, 10.4), (20, 7.9 + i / 10), (40, 7.2 + i / 10), (80, 6.8 + i / 10)],
        "train_loss": [(5, 9.0), (40, 7.3), (80, 6.9)],
    }
    for i, r in enumerate(ROWS)
}
# The replicates of the top two, as confirm.summarize writes them: adamw is both runner-up and baseline.
CONFIRM = summarize(
    spec_from_dict(
        {
            "name": "compare-tiny",
            "space": {"params": {"optim.lr": {"type": "loguniform", "low": 1e-3, "high": 2e-2}}},
            "confirm": {"top_k": 2, "seeds": 2},
        }
    ),
    ROWS[:2],
    {0: [6.82, 6.84], 1: [6.83, 6.85]},
)


def page(tmp_path):
    text = render_html(SPEC, ROWS, METHODS, flat_rows(SPEC, ROWS), CURVES, CONFIRM, ROWS[0], "sweeps/demo")
    path = tmp_path / "report.html"
    path.write_text(text)
    return path


def test_report_is_self_contained_with_table_charts_and_next_command(tmp_path):
    text = page(tmp_path).read_text()
    assert not re.search(r"<script[^>]+src=", text)  # plotly.js inlined: opens offline
    # best per method, Pareto (memory), throughput, train and held-out curves, history, parallel coordinates
    assert text.count("Plotly.newPlot") == 7
    assert "winner: adamw8bit (trial 3f2f0c47" in text and "ranktune export sweeps/demo --target 7b" in text
    assert "galore.rank=64 galore.update_proj_gap=30" in text and "diverged at step 3" in text
    assert "verdict, adamw8bit vs adamw (runner-up): add seeds" in text
    assert "verdict, adamw8bit (baseline): winner is the baseline" in text and "about 32 seeds per arm" in text


def test_method_colours_are_fixed_and_the_y_range_leaves_out_the_untrained_start():
    from ranktune.trainables.optim import OPTIMIZERS

    assert method_colour("galore_adamw") == OPTIMIZERS["galore_adamw"].colour != method_colour("relora")
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


def _rgb(colour: str) -> tuple[int, ...]:
    return tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))


def test_every_registered_method_has_its_own_colour_far_from_the_others():
    from ranktune.trainables.optim import OPTIMIZERS

    colours = {name: method_colour(name) for name in OPTIMIZERS}
    assert all(entry.colour for entry in OPTIMIZERS.values())
    # The README demo's methods: no two closer than 80 in RGB (adamw and adamw8bit were two blues 76 apart,
    # apollo_adamw a third).
    demo = [
        "adamw",
        "adamw8bit",
        "galore_adamw",
        "fira_adamw",
        "apollo_adamw",
        "apollo_mini",
        "relora",
        "lora",
        "adamw_frozen_blocks",
    ]
    for i, a in enumerate(demo):
        for b in demo[i + 1 :]:
            distance = sum((x - y) ** 2 for x, y in zip(_rgb(colours[a]), _rgb(colours[b]), strict=True)) ** 0.5
            assert distance > 80, (a, b, colours[a], colours[b])
    assert len(set(colours.values())) == len(colours)


def _figures_by_title():
    from ranktune.platform.report.html import _figures

    return dict(_figures(SPEC, ROWS, METHODS, CURVES, CONFIRM))


def test_every_trial_is_in_the_loss_charts_and_the_y_range_holds_the_stopped_ones():
    curves = {r["run_id"]: {"eval_loss": [(0, 10.4), (20, 6.9), (40, 6.7), (80, 6.5)]} for r in ROWS}
    stopped = next(r for r in ROWS if r["status"] == "stopped_early")
    curves[stopped["run_id"]] = {"eval_loss": [(0, 10.4), (20, 7.97)]}  # stopped at 20, far above the others
    from ranktune.platform.report.html import _figures

    figures = dict(_figures(SPEC, ROWS, METHODS, curves, CONFIRM))
    fig = figures["held-out loss curves"]
    assert {t.meta for t in fig.data} == {r["trial_id"] for r in ROWS}
    low, high = fig.layout.yaxis.range
    assert low < 6.5 and high > 7.97  # every curve's last point is inside
    # the PNG: the same trials as line gids, the same range
    import matplotlib

    matplotlib.use("Agg")
    from ranktune.platform.report import plots

    captured = []
    original = plots._save
    plots._save = lambda fig, path: captured.append(fig) or path
    try:
        replicate = {**ROWS[0], "trial_id": "rep00001", "run_id": "rrep", "replicate_of": ROWS[0]["trial_id"]}
        curves["rrep"] = {"eval_loss": [(0, 10.4), (80, 6.45)]}
        plots.plot_loss_curves(SPEC, ROWS, curves, METHODS, tmp_png := None, [(replicate, "adamw8bit")])
    finally:
        plots._save = original
    del tmp_png
    ax = captured[0].axes[1]
    gids = {line.get_gid() for line in ax.get_lines()} - {None}
    assert gids == {r["trial_id"] for r in ROWS} | {"replicate:rep00001"}
    assert ax.get_ylim()[0] < 6.45 and ax.get_ylim()[1] > 7.97


def test_history_is_in_start_order_not_trial_id_order():
    import matplotlib

    matplotlib.use("Agg")
    from ranktune.platform.report import plots

    # Tune's trial ids are random hex: here they sort in the reverse of the order the trials started.
    rows = [dict(r, start_time=1000 * (len(ROWS) - i)) for i, r in enumerate(ROWS)]
    assert sorted(r["trial_id"] for r in rows) != [r["trial_id"] for r in sorted(rows, key=lambda r: r["start_time"])]
    started = [r["trial_id"] for r in sorted(rows, key=lambda r: r["start_time"]) if r["objective"] is not None]
    from ranktune.platform.report.html import _figures

    history = dict(_figures(SPEC, rows, METHODS, CURVES, CONFIRM))["history"]
    points = sorted((t.x[0], t.meta) for t in history.data if t.meta)
    assert [trial for _, trial in points] == started
    captured = []
    original = plots._save
    plots._save = lambda fig, path: captured.append(fig) or path
    try:
        plots.plot_history(SPEC, rows, METHODS, None)
    finally:
        plots._save = original
    ax = captured[0].axes[0]
    order = sorted((c.get_offsets()[0][0], c.get_gid()) for c in ax.collections if c.get_gid())
    assert [trial for _, trial in order] == started
    # the best-so-far line starts at the first trial that started and finished
    first_finished = next(r for r in sorted(rows, key=lambda r: r["start_time"]) if r["status"] == "finished")
    best_so_far = [y for y in ax.get_lines()[0].get_ydata() if y == y]  # NaN before any finished trial
    assert best_so_far[0] == first_finished["objective"]


def test_parallel_coordinates_have_every_method_with_a_scored_trial():
    fig = _figures_by_title()["parallel coordinates"]
    scored = {m for r, m in zip(ROWS, METHODS, strict=True) if r["objective"] is not None}
    assert {t.name for t in fig.data if t.meta} == scored  # one line per trial, every method (the colour bar aside)
    assert {t.meta for t in fig.data if t.meta} == {r["trial_id"] for r in ROWS if r["objective"] is not None}


# Bounding boxes of every chart's toolbar against its legend and title, written where --dump-dom shows them.
OVERLAP_PROBE = """<script>
window.addEventListener('load', function () { setTimeout(function () {
  function hit(a, b) { return a.width > 0 && b.width > 0 && a.left < b.right && b.left < a.right &&
                              a.top < b.bottom && b.top < a.bottom; }
  var found = [], charts = document.querySelectorAll('.js-plotly-plot');
  charts.forEach(function (chart, i) {
    var bar = chart.querySelector('.modebar'); if (!bar) { found.push(i + ':no-toolbar'); return; }
    var box = bar.getBoundingClientRect();
    chart.querySelectorAll('.legend, .gtitle').forEach(function (el) {
      if (hit(box, el.getBoundingClientRect())) found.push(i + ':' + el.getAttribute('class')); });
  });
  document.documentElement.setAttribute('data-charts', charts.length);
  document.documentElement.setAttribute('data-overlaps', found.join(',') || 'none');
}, 500); });
</script>"""


@needs_chromium
def test_no_chart_has_its_legend_or_title_under_the_toolbar(tmp_path):
    text = page(tmp_path).read_text().replace("<head>", "<head>" + OVERLAP_PROBE, 1)
    probed = tmp_path / "overlap.html"
    probed.write_text(text)
    dom = dump_dom(probed.as_uri(), size="1200,2000")
    head = dom.split("<head>", 1)[0]
    assert 'data-charts="7"' in head, head
    assert 'data-overlaps="none"' in head, head
    png = screenshot(probed.as_uri(), tmp_path / "report.png", size="1200,4000")
    from PIL import Image

    with Image.open(png) as image:
        assert image.size == (1200, 4000)
