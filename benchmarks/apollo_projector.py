"""APOLLO's random projector regenerated from its seed vs stored: optimizer-step time as a ratio.

    python benchmarks/apollo_projector.py            # one LLaMA block of 60m and 1b, rank d/4 and 1

Steps one block's seven matrices (q, k, v, o: h x h; gate, up: i x h; down: h x i) with
ApolloAdamW, `proj_storage: seed` and `matrix` interleaved, and prints the median step of each and
their ratio. Only the optimizer step is timed (no forward/backward), so this is an upper bound on
what regeneration adds to a training step.
"""

from __future__ import annotations

import argparse
import time

import torch
from interleave import interleaved, medians

from ranktune.trainables.model import MODEL_PRESETS
from ranktune.trainables.optim.apollo import ApolloAdamW


def block_stepper(hidden: int, intermediate: int, rank: int, storage: str):
    torch.manual_seed(0)
    shapes = [(hidden, hidden)] * 4 + [(intermediate, hidden)] * 2 + [(hidden, intermediate)]
    weights = [torch.nn.Parameter(torch.randn(*s)) for s in shapes]
    group = {"params": weights, "rank": rank, "update_proj_gap": 10**9, "proj_storage": storage}
    opt = ApolloAdamW([group], lr=1e-3)
    grads = [torch.randn_like(w) for w in weights]

    def step() -> float:
        for w, g in zip(weights, grads, strict=True):
            w.grad = g
        start = time.perf_counter()
        opt.step()
        return time.perf_counter() - start

    step()  # allocates the moments and draws the first projector
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["60m", "1b"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"one LLaMA block, optimizer step only, CPU, {args.threads} threads, median of {args.repeats}")
    for name in args.models:
        shape = MODEL_PRESETS[name]
        for rank in (shape.hidden_size // 4, 1):
            steppers = {
                s: block_stepper(shape.hidden_size, shape.intermediate_size, rank, s) for s in ("matrix", "seed")
            }
            median = medians(interleaved(steppers, rounds=args.repeats))
            stored, seeded = median["matrix"], median["seed"]
            print(
                f"{name} rank {rank:4d}: stored {stored * 1e3:8.1f} ms  regenerated {seeded * 1e3:8.1f} ms  "
                f"regenerated/stored {seeded / stored:.2f}"
            )


if __name__ == "__main__":
    main()
