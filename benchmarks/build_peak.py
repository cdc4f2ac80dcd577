"""Peak host memory of building a bf16 model: cast after a whole fp32 build vs. cast piece by piece.

    python benchmarks/build_peak.py [--model 350m]

Each build runs in a fresh subprocess on CPU; the figure is the growth of its peak resident set
(ru_maxrss) over the interpreter with torch imported. On a GPU the same build happens on the device:
a 7b cast after a whole fp32 build needs 27 GB there before training starts, more than a 24 GB card.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

PROBE = """
import resource, sys, torch
from ranktune.trainables.model import build_model, count_parameters, model_config
cfg = model_config(sys.argv[1], vocab_size=32000)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if sys.argv[2] == "whole_fp32_then_cast":
    model = build_model(cfg).to(torch.bfloat16)
else:
    model = build_model(cfg, dtype=torch.bfloat16)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(count_parameters(model), (peak - before) * 1024)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="350m")
    args = parser.parse_args()
    peaks = {}
    for way in ("whole_fp32_then_cast", "piece_by_piece"):
        out = subprocess.run([sys.executable, "-c", PROBE, args.model, way], capture_output=True, text=True, check=True)
        params, peak = map(int, out.stdout.split())
        peaks[way] = peak
        print(f"{way:<22} peak growth {peak / 2**30:6.2f} GiB  ({peak / (2 * params):.2f}x the bf16 weights)")
    print(f"piece_by_piece / whole_fp32_then_cast: {peaks['piece_by_piece'] / peaks['whole_fp32_then_cast']:.2f}")


if __name__ == "__main__":
    main()
