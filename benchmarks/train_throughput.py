"""Training throughput (tokens/s) and peak memory of the real trainer, per model config.

    python benchmarks/train_throughput.py            # tiny and 60m rows, plus 60m variants
    python benchmarks/train_throughput.py --steps 20

Each row runs in its own process so its peak memory (CUDA peak allocated, or peak RSS on CPU) is its
own. The processes live side by side and step in turn (benchmarks/interleave.py: one training step of
every row per round, tokens/s from the median step per row), so a change of load during the run shifts
every row alike. Ratios are against the first row of the same run. The first `--warmup` steps are excluded.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from interleave import interleaved

MARK = "ROW "  # the lines a row process answers with (anything else it prints is passed over)

ROWS: list[tuple[str, list[str]]] = [
    ("tiny fp32", ["model.name=tiny", "data.seq_len=128", "train.batch_size=16", "train.micro_batch_size=16"]),
    ("60m fp32", ["model.name=60m", "data.seq_len=256", "train.batch_size=4", "train.micro_batch_size=4"]),
    (
        "60m fp32 +act-ckpt",
        [
            "model.name=60m",
            "data.seq_len=256",
            "train.batch_size=4",
            "train.micro_batch_size=4",
            "model.activation_checkpointing=true",
        ],
    ),
    (
        "60m bf16-mixed",
        [
            "model.name=60m",
            "data.seq_len=256",
            "train.batch_size=4",
            "train.micro_batch_size=4",
            "train.precision=bf16-mixed",
        ],
    ),
]


def serve_row(overrides: list[str]) -> None:
    """Child process: build the row's trainer, then run one training step per `step` line on stdin and
    answer with its seconds; on `done`, answer with the row's memory figures."""
    import tempfile

    from ranktune.trainables import Trainer
    from ranktune.trainables.config import apply_overrides, config_from_dict

    def answer(figures: dict) -> None:
        print(MARK + json.dumps(figures), flush=True)

    with tempfile.TemporaryDirectory() as out:
        raw = apply_overrides(
            {
                "train": {"steps": 10**6, "log_every": 1, "eval_every": 10**6, "eval_blocks": 4},
                "output": {"dir": out, "checkpoint_every": 0},
                "schedule": {"warmup_steps": 1},
            },
            overrides,
        )
        trainer = Trainer(config_from_dict(raw), progress=False)
        trainer.model.train()
        answer({"ready": True})
        try:
            for line in sys.stdin:
                if line.strip() != "step":
                    break
                start = time.perf_counter()
                trainer.train_step(trainer.next_micro_batches())
                answer({"seconds": time.perf_counter() - start})
            answer(
                {
                    **trainer.memory_metrics(),
                    "tokens_per_step": trainer.cfg.tokens_per_step,
                    "device": str(trainer.device),
                }
            )
        finally:
            trainer.train_data.close()


def reply(proc: subprocess.Popen) -> dict:
    """The row process's next answer."""
    for line in proc.stdout:
        if line.startswith(MARK):
            return json.loads(line[len(MARK) :])
    raise RuntimeError(f"row process {proc.args} ended (exit code {proc.wait()}) before answering")


def ask(proc: subprocess.Popen, command: str) -> dict:
    proc.stdin.write(command + "\n")
    proc.stdin.flush()
    return reply(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--row", type=int, help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args()
    if args.row is not None:
        serve_row(ROWS[args.row][1])
        return

    procs = {
        label: subprocess.Popen(
            [sys.executable, __file__, "--row", str(i)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for i, (label, _) in enumerate(ROWS)
    }
    try:
        for proc in procs.values():
            reply(proc)  # built: no row is timed while another is still building
        times = interleaved(
            {label: lambda proc=proc: ask(proc, "step")["seconds"] for label, proc in procs.items()}, rounds=args.steps
        )
        results = []
        for label, proc in procs.items():
            figures = ask(proc, "done")
            step_s = statistics.median(times[label][args.warmup :] or times[label])
            results.append((label, {**figures, "tokens_per_s": figures["tokens_per_step"] / step_s}))
    finally:
        for proc in procs.values():
            proc.stdin.close()
            proc.wait()
    ref = results[0][1]
    print(
        f"{args.steps} steps per row interleaved ({args.warmup} warm-up steps not timed; tokens/s from the "
        f"median step), device {ref['device']}"
    )
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
