"""Training throughput (tokens/s) and peak memory of the real trainer, per model config.

    python benchmarks/train_throughput.py            # tiny and 60m rows, plus 60m variants
    python benchmarks/train_throughput.py --steps 20

Each row runs in its own process so its peak memory (CUDA peak allocated, or peak RSS on CPU) is its
own. Ratios are against the first row of the same run. The first `--warmup` steps are excluded.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

ROWS: list[tuple[str, list[str]]] = [
    ("tiny fp32", ["model.name=tiny", "data.seq_len=128", "train.batch_size=16", "train.micro_batch_size=16"]),
    ("60m fp32", ["model.name=60m", "data.seq_len=256", "train.batch_size=4", "train.micro_batch_size=4"]),
    ("60m fp32 +act-ckpt", ["model.name=60m", "data.seq_len=256", "train.batch_size=4", "train.micro_batch_size=4",
                            "model.activation_checkpointing=true"]),
    ("60m bf16-mixed", ["model.name=60m", "data.seq_len=256", "train.batch_size=4", "train.micro_batch_size=4",
                        "train.precision=bf16-mixed"]),
]  # fmt: skip


def run_row(overrides: list[str], steps: int, warmup: int) -> dict:
    """Child process: train `steps` steps and print one JSON line of figures."""
    import tempfile

    from ranktune.trainables import Trainer
    from ranktune.trainables.callbacks import Callback
    from ranktune.trainables.config import apply_overrides, config_from_dict

    class Collect(Callback):
        def __init__(self):
            self.logs = []

        def on_log(self, m):
            self.logs.append(m)

    with tempfile.TemporaryDirectory() as out:
        raw = apply_overrides(
            {"train": {"steps": steps, "log_every": 1, "eval_every": 10**6, "eval_blocks": 4},
             "output": {"dir": out, "checkpoint_every": 0}, "schedule": {"warmup_steps": 1}},
            overrides,
        )  # fmt: skip
        cfg = config_from_dict(raw)
        collect = Collect()
        trainer = Trainer(cfg, [collect], progress=False)
        trainer.save = lambda: None  # throughput only: no checkpoint file at the end
        trainer.fit()
    timed = collect.logs[warmup:]
    tokens_per_s = sum(m["tokens_per_s"] for m in timed) / len(timed)
    last = collect.logs[-1]
    return {
        "tokens_per_s": tokens_per_s,
        "peak_memory_bytes": last["peak_memory_bytes"],
        "parameter_bytes": last["parameter_bytes"],
        "optimizer_state_bytes": last["optimizer_state_bytes"],
        "device": str(trainer.device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--row", type=int, help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args()
    if args.row is not None:
        print(json.dumps(run_row(ROWS[args.row][1], args.steps, args.warmup)))
        return

    results = []
    for i, (label, _) in enumerate(ROWS):
        cmd = [sys.executable, __file__, "--row", str(i), "--steps", str(args.steps), "--warmup", str(args.warmup)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results.append((label, json.loads(out.stdout.strip().splitlines()[-1])))
    ref = results[0][1]
    print(f"{args.steps} steps per row ({args.warmup} warm-up steps not timed), device {ref['device']}")
    header = f"{'config':<22}{'tokens/s':>10}{'x ref':>8}{'peak MiB':>10}{'x ref':>8}{'params MiB':>12}{'opt MiB':>9}"
    print(header)
    print("-" * len(header))
    for label, r in results:
        print(
            f"{label:<22}{r['tokens_per_s']:>10.0f}{r['tokens_per_s'] / ref['tokens_per_s']:>8.3f}"
            f"{r['peak_memory_bytes'] / 2**20:>10.0f}{r['peak_memory_bytes'] / ref['peak_memory_bytes']:>8.2f}"
            f"{r['parameter_bytes'] / 2**20:>12.1f}{r['optimizer_state_bytes'] / 2**20:>9.1f}"
        )


if __name__ == "__main__":
    main()
