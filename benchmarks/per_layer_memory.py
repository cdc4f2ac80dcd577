"""Live gradient + accumulator bytes of GaLore's three ways to accumulate, measured and estimated.

    python benchmarks/per_layer_memory.py            # 350m widths, 2 of its 24 layers, a few minutes on a shared CPU

A 350m-class model (hidden 1024, intermediate 2736, vocab 32000; fp32) with the paper's rank 256
trains `--steps` optimizer steps with 4 micro-batches each, in three modes:

    whole-model          galore.per_layer false: full gradients sum in .grad until the step
    per-layer, full      galore.accumulation full: the same, updated inside the hooks
    per-layer, low-rank  galore.accumulation low_rank: each micro-batch's gradient projected into an
                         accumulator in the optimizer state and freed at once

Measured: the peak over backward of the bytes held by every `.grad` plus every accumulator, read by
tensor accounting inside post-accumulate-grad hooks (one registered before the method's, one after,
so both sides of each projection are seen), not RSS. Printed next to the estimator's `gradients`
figure (ranktune.platform.memory, CPU) and, for the projected weights, the accumulator bytes over
their full gradients' bytes, which should be rank / min(m, n) = 256 / 1024 = 25%. A fourth row stores
the projectors as int8 (`galore.projector_dtype`) for its tokens/s cost (steps after the first; noisy
on a shared CPU). Two of the real 350m's 24 layers and a randomized SVD without power iterations keep
the run short; the byte ratios do not depend on either.
"""

from __future__ import annotations

import argparse
import time

import torch

from ranktune.platform.memory import estimate_memory, vocab_size
from ranktune.trainables.config import config_from_dict
from ranktune.trainables.model import build_model
from ranktune.trainables.optim import build_method
from ranktune.trainables.optim.galore.method import targeted_linears

MODES = {
    "whole-model": {"per_layer": False},
    "per-layer, full": {"per_layer": True, "accumulation": "full"},
    "per-layer, low-rank": {"per_layer": True, "accumulation": "low_rank"},
    "low-rank, int8 proj.": {"per_layer": True, "accumulation": "low_rank", "projector_dtype": "int8"},
}


def make_config(mode: dict, layers: int, micro_batch: int, seq_len: int, accum: int):
    return config_from_dict(
        {
            "model": {"name": "350m", "num_layers": layers},
            "data": {"seq_len": seq_len},
            "optim": {"name": "galore_adamw", "lr": 1e-3},
            "galore": {"rank": 256, "update_proj_gap": 200, "svd": "randomized", "svd_power_iters": 0, **mode},
            "train": {
                "batch_size": micro_batch * accum,
                "micro_batch_size": micro_batch,
                "grad_clip": 0.0,
                "precision": "fp32",
                "device": "cpu",
            },
        }
    )


def live_bytes(model, method) -> tuple[int, int]:
    """(all .grad and accumulator bytes, accumulator bytes of the projected weights)."""
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    accum = projected = 0
    for opt in method.optimizers:
        for p, state in opt.state.items():
            if "grad_accum" in state:
                n = state["grad_accum"].numel() * state["grad_accum"].element_size()
                accum += n
                projected += n if id(p) in method.projected_ids else 0
    return grads + accum, projected


def measure(cfg, steps: int, accum: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = build_model(cfg.model.llama_config(vocab_size=vocab_size(cfg)))
    peak = {"live": 0, "projected_accum": 0}

    def record(_param):
        live, projected = live_bytes(model, method)
        peak["live"] = max(peak["live"], live)
        peak["projected_accum"] = max(peak["projected_accum"], projected)

    for p in model.parameters():  # before the method's hooks: sees each gradient before it is freed
        p.register_post_accumulate_grad_hook(record)
    method = build_method(model, cfg)
    for p in model.parameters():  # after them: sees the accumulator that replaced it
        p.register_post_accumulate_grad_hook(record)
    gen = torch.Generator().manual_seed(0)
    vocab = model.cfg.vocab_size
    for step in range(steps):
        if step == 1:
            start = time.perf_counter()  # after step 0, whose projector SVDs would dominate a short run
        method.begin_step(cfg.optim.lr)
        for micro in range(accum):
            x = torch.randint(0, vocab, (cfg.train.micro_batch_size, cfg.data.seq_len + 1), generator=gen)
            method.begin_micro_batch(is_last=micro == accum - 1)
            (model(x[:, :-1], x[:, 1:])[1] / accum).backward()
        record(None)  # whole-model mode: all gradients, just before the step frees them
        method.step()
        method.end_step(step + 1)
    targets = targeted_linears(model, cfg.galore.target_modules).values()
    projected_full = sum(m.weight.numel() * m.weight.element_size() for m in targets)
    tokens = (steps - 1) * accum * cfg.train.micro_batch_size * cfg.data.seq_len
    return {**peak, "projected_full": projected_full, "tokens_per_s": tokens / (time.perf_counter() - start)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2, help="at least 2: step 0 is not timed")
    parser.add_argument("--micro-batch", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=64)
    args = parser.parse_args()
    accum = 4
    torch.set_num_threads(2)
    print(
        f"350m widths, {args.layers} layers, fp32, rank 256, {args.steps} steps x {accum} micro-batches of "
        f"{args.micro_batch} x {args.seq_len} tokens"
    )
    columns = ["measured MiB", "estimate MiB", "est/meas", "proj. accum/full", "tokens/s"]
    print(f"{'mode':22s} " + " ".join(f"{c:>{w}s}" for c, w in zip(columns, (13, 13, 9, 17, 9), strict=True)))
    for label, mode in MODES.items():
        cfg = make_config(mode, args.layers, args.micro_batch, args.seq_len, accum)
        m = measure(cfg, args.steps, accum)
        estimate = estimate_memory(cfg, device="cpu").gradients
        ratio = m["projected_accum"] / m["projected_full"] if m["projected_accum"] else float("nan")
        print(
            f"{label:22s} {m['live'] / 2**20:13.1f} {estimate / 2**20:13.1f} {estimate / m['live']:9.3f} "
            f"{ratio:17.3f} {m['tokens_per_s']:9.1f}"
        )


if __name__ == "__main__":
    main()
