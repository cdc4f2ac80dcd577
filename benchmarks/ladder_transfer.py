"""Does the ranking of methods on a small proxy transfer to larger models? Runs a ladder spec and prints
the correlations and regrets between its rungs as a markdown table (docs/ladder.md holds the result).

    python benchmarks/ladder_transfer.py                                   # configs/sweeps/ladder_tiny.yaml
    python benchmarks/ladder_transfer.py --set storage=/tmp/lt             # any spec override
    python benchmarks/ladder_transfer.py --from sweeps/ladder-tiny         # re-print a finished ladder

A killed run continues with `--from <storage>` (it resumes the ladder before printing). Prints the load
(`os.getloadavg`) before and after and the wall time: on a shared machine, read the time with the load.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def table(ladder: dict) -> str:
    def f(value, fmt=".2f"):
        return "n/a" if value is None else format(value, fmt)

    lines = [
        "| rungs | configurations | Spearman rho | Kendall tau | methods | methods' Kendall tau "
        "| winner below -> above | best config kept | regret (held-out loss) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in ladder["comparisons"]:
        kept = f"{sum(c['best_config_kept'].values())}/{len(c['best_config_kept'])}" if c["best_config_kept"] else "n/a"
        lines.append(
            f"| {c['lower']} -> {c['upper']} | {c['configurations']} | {f(c['spearman'])} "
            f"| {f(c['kendall'])} | {c['methods']} | {f(c['method_kendall'])} "
            f"| {c['lower_winner']} -> {c['upper_winner']} | {kept} "
            f"| {f(c['regret'], '.4f')} |"
        )
    lines += [
        "",
        "| rung | width | layers | parameters | matrix share | steps | methods, best first (held-out loss) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in ladder["rungs"]:
        order = ", ".join(f"{m['method']} {m['loss']:.3f}" for m in r["method_ranking"])
        lines.append(
            f"| {r['name']} | {r['width']} | {r['num_layers']} | {r['parameters'] / 1e6:.2f}M "
            f"| {r['matrix_share']:.0%} | {r['steps']} | {order} |"
        )
    lines += ["", f"Verdict: {ladder['verdict']}", ""]
    for method, rule in sorted(ladder["rules"].items()):
        lines.append(
            f"- {method}: {rule['step_size_text'] or 'no fit'}; {rule['rank_note']}"
            f"{'; ' + rule['note'] if rule['note'] else ''}"
        )
    return "\n".join(lines)


def main() -> int:
    from ranktune.platform.sweep.ladder import resume_ladder, run_ladder
    from ranktune.search_spaces.spec import load_spec

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default=str(Path(__file__).parent.parent / "configs/sweeps/ladder_tiny.yaml"))
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    parser.add_argument("--from", dest="storage", help="a ladder directory: resume it if needed, then print")
    args = parser.parse_args()
    load_before, start = os.getloadavg(), time.monotonic()
    if args.storage:
        ladder_file = Path(args.storage) / "ladder.json"
        done = ladder_file.is_file() and json.loads(ladder_file.read_text())["complete"]
        ladder = json.loads(ladder_file.read_text()) if done else resume_ladder(args.storage, progress=False)
    else:
        ladder = run_ladder(load_spec(args.spec, args.overrides), progress=False)
    wall = time.monotonic() - start
    print(table(ladder))
    print(f"\nwall {wall / 60:.1f} min; load average (1/5/15 min) before {load_before}, after {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
