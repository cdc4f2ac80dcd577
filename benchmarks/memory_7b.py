"""The memory estimator at 7b next to the GaLore paper's figures (docs/memory.md explains the gaps).

    python benchmarks/memory_7b.py

The paper's Figure 1 setting: LLaMA 7b, BF16 weights, token batch 256 (one sequence of 256 tokens),
no activation checkpointing, no offloading. Its claims: 8-bit GaLore with per-layer weight updates
trains in about 22 GB; optimizer state -65.5% (GaLore) and -82.5% (8-bit GaLore) and total -63.3%
(8-bit GaLore) vs the BF16 baseline (AdamW with BF16 states).
"""

from __future__ import annotations

from ranktune.platform.memory import estimate_memory
from ranktune.trainables.config import config_from_dict

GB = 1e9  # the paper's unit

BASE = {
    "model": {"name": "7b"},
    "data": {"seq_len": 256},
    "train": {"precision": "bf16", "batch_size": 1, "micro_batch_size": 1, "grad_clip": 0.0},
}
GALORE = {"rank": 1024, "update_proj_gap": 500}
ROWS = {
    "BF16 AdamW (baseline)": {"optim": {"name": "adamw"}},
    "8-bit AdamW": {"optim": {"name": "adamw8bit"}},
    "GaLore (AdamW, r=1024)": {"optim": {"name": "galore_adamw"}, "galore": GALORE},
    "8-bit GaLore (r=1024)": {"optim": {"name": "galore_adamw8bit"}, "galore": GALORE},
    "8-bit GaLore, per-layer": {"optim": {"name": "galore_adamw8bit"}, "galore": {**GALORE, "per_layer": True}},
}
# The paper's statements, as fractions / GB, keyed by row.
PAPER_STATE_CUT = {"GaLore (AdamW, r=1024)": 0.655, "8-bit GaLore (r=1024)": 0.825}
PAPER_TOTAL = {"8-bit GaLore, per-layer": 22.0}
PAPER_TOTAL_CUT = {"8-bit GaLore, per-layer": 0.633}


def estimates():
    return {label: estimate_memory(config_from_dict({**BASE, **extra})) for label, extra in ROWS.items()}


def main() -> None:
    rows = estimates()
    base = rows["BF16 AdamW (baseline)"]
    print("7b, bf16 weights, 1 x 256 tokens, no checkpointing; GB = 1e9 bytes")
    print("total (paper's sum) = weights + grads + optimizer state + activations + logits;")
    print("total (ranktune) adds step temporaries and the 1 GiB fixed CUDA overhead\n")
    head = f"{'method':28s} {'weights':>8s} {'grads':>7s} {'state':>7s} {'act+log':>8s} {'temp':>6s}"
    head += f" {'total (paper sum)':>18s} {'total (ranktune)':>17s} {'state cut':>10s} {'paper':>6s}"
    head += f" {'total cut':>10s} {'paper':>6s}"
    print(head)
    paper_sum = {k: e.weights + e.gradients + e.optimizer_state + e.activations + e.logits for k, e in rows.items()}
    for label, e in rows.items():
        cut = 1 - e.optimizer_state / base.optimizer_state
        total_cut = 1 - paper_sum[label] / paper_sum["BF16 AdamW (baseline)"]
        paper_cut = PAPER_STATE_CUT.get(label)
        paper_total_cut = PAPER_TOTAL_CUT.get(label)
        print(
            f"{label:28s} {e.weights / GB:8.2f} {e.gradients / GB:7.2f} {e.optimizer_state / GB:7.2f}"
            f" {(e.activations + e.logits) / GB:8.2f} {e.step_temporaries / GB:6.2f}"
            f" {paper_sum[label] / GB:18.2f} {e.total / GB:17.2f} {100 * cut:9.1f}%"
            f" {f'{100 * paper_cut:.1f}%' if paper_cut else '':>6s} {100 * total_cut:9.1f}%"
            f" {f'{100 * paper_total_cut:.1f}%' if paper_total_cut else '':>6s}"
        )
    per_layer = rows["8-bit GaLore, per-layer"]
    print(
        f"\n8-bit GaLore per-layer: {per_layer.total / GB:.2f} GB estimated (ranktune total) vs about "
        f"{PAPER_TOTAL['8-bit GaLore, per-layer']:.0f} GB in the paper"
    )


if __name__ == "__main__":
    main()
