"""Streamed data pipeline: its tokens/s on this machine against what a 7b step consumes on a 4090, and
how long a user waits for 2 training steps on a large local corpus.

    python benchmarks/stream_throughput.py                  # 300 MB corpus, 60 s of pipeline, then `ranktune train`
    python benchmarks/stream_throughput.py --corpus-mb 20 --seconds 10 --no-train   # quick look

1. Writes a jsonl corpus of --corpus-mb MB to a temporary directory from the embedded corpus (the State of
   the Union addresses, each repeated with its copy number so no two documents are equal); deleted at the end.
2. Pipeline: `StreamedBlocks` (the background tokenizer thread and the block packer) drained as fast as
   possible for --seconds; tokens/s of training blocks handed out.
3. Reference: the 7b GaLore export's step consumption on an RTX 4090 from the duration estimate
   (ranktune.platform.duration: FLOPs / (peak x assumed utilisation), the table's figure, printed).
   Target: pipeline >= 10x the reference.
4. Unless --no-train: `ranktune train` of the tiny model, 2 steps, on the corpus with data.max_tokens 2e9
   (streamed: data.streaming auto), timed from the command's start to its exit, as a user runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_RATIO = 10.0


def write_corpus(path: Path, megabytes: float) -> tuple[int, int]:
    """(documents, bytes) of a jsonl corpus of about `megabytes` MB."""
    from ranktune.trainables.data import embedded_documents

    docs = list(embedded_documents())
    written, count, copy = 0, 0, 0
    with open(path, "w") as f:
        while written < megabytes * 1e6:
            for text in docs:
                line = json.dumps({"text": f"(copy {copy}) {text}"}) + "\n"
                f.write(line)
                written += len(line.encode())
                count += 1
            copy += 1
    return count, written


def pipeline_tokens_per_s(corpus: Path, seconds: float, seq_len: int = 256, rows: int = 64) -> tuple[float, int]:
    from ranktune.trainables.config import DataSection
    from ranktune.trainables.data import Tokenizer
    from ranktune.trainables.stream import StreamedBlocks

    cfg = DataSection(source="files", files=[str(corpus)], seq_len=seq_len, streaming="on", max_tokens=2 * 10**9)
    blocks = StreamedBlocks(cfg, Tokenizer(), rows_per_batch=rows)
    blocks.next_rows()  # start-up (datasets opening the file) is not throughput
    start, taken = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        blocks.next_rows()
        taken += rows
    elapsed = time.perf_counter() - start
    blocks.close()
    return taken * seq_len / elapsed, taken * seq_len


def reference_7b_tokens_per_s() -> tuple[float, list[str]]:
    from ranktune.platform.duration import estimate_duration
    from ranktune.platform.export.fit import fit_micro_batch_choice
    from ranktune.platform.export.mapping import map_to_target
    from ranktune.platform.export.rules import ScalingRules
    from ranktune.trainables.config import config_from_dict

    proxy = config_from_dict(
        {
            "model": {"name": "60m"},
            "optim": {"name": "galore_adamw"},
            "galore": {"rank": 128},
            "train": {"steps": 1000},
            "schedule": {"warmup_steps": 100},
        }
    )
    rules = ScalingRules()
    cfg, _, _ = fit_micro_batch_choice(map_to_target(proxy, "7b", rules), [], rules, 24.0)
    d = estimate_duration(cfg, "rtx4090", measured=[])
    return d.tokens_per_s, d.lines()


def time_two_steps(corpus: Path, workdir: Path) -> float:
    cmd = [
        sys.executable,
        "-m",
        "ranktune.platform.cli",
        "train",
        "--quiet",
        "--set",
        "model.name=tiny",
        "--set",
        "data.source=files",
        "--set",
        f"data.files=[{corpus}]",
        "--set",
        "data.max_tokens=2000000000",
        "--set",
        f"data.cache_dir={workdir / 'cache'}",
        "--set",
        "data.seq_len=256",
        "--set",
        "train.steps=2",
        "--set",
        "train.batch_size=8",
        "--set",
        "train.micro_batch_size=8",
        "--set",
        "train.eval_blocks=8",
        "--set",
        "schedule.warmup_steps=0",
        "--set",
        f"output.dir={workdir / 'run'}",
    ]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus-mb", type=float, default=300)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--no-train", action="store_true")
    args = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="ranktune-stream-"))
    try:
        corpus = workdir / "corpus.jsonl"
        docs, size = write_corpus(corpus, args.corpus_mb)
        print(f"corpus: {docs:,} documents, {size / 1e6:.0f} MB -> {corpus}")
        print(f"load: {os.getloadavg()[0]:.1f} (1 min), {os.cpu_count()} cores")
        if not args.no_train:
            print(
                f"ranktune train, 2 steps, data.max_tokens 2e9: {time_two_steps(corpus, workdir):.1f} s "
                f"(load {os.getloadavg()[0]:.1f})"
            )
        tps, tokens = pipeline_tokens_per_s(corpus, args.seconds)
        ref, lines = reference_7b_tokens_per_s()
        print(f"pipeline: {tps:,.0f} tokens/s ({tokens:,} tokens in {args.seconds:g} s, load {os.getloadavg()[0]:.1f})")
        print(f"7b GaLore export on an RTX 4090 consumes {ref:,.0f} tokens/s (duration estimate):")
        print("\n".join(f"  {line}" for line in lines))
        ratio = tps / ref
        print(f"ratio: {ratio:.0f}x (target >= {TARGET_RATIO:g}x): {'met' if ratio >= TARGET_RATIO else 'NOT met'}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
