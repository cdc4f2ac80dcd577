"""Per-layer recipes at a fixed global batch: refresh rule, clip-norm sketch, APOLLO/Fira step time (issue 21).

    python benchmarks/per_layer_batch_invariance.py            # a few minutes on a shared CPU

1. Weights apart: per-layer GaLore, global batch 8, 3 updates (refreshes at 0 and 2), micro-batch 4
   (2 micro-batches) against micro-batch 8 (one: what 2 DDP ranks x 4 compute, whose hooks average
   the same sums), relative norm of the largest-differing tensor, for `galore.refresh`
   first_micro_batch (the older rule) and whole_batch.
2. Subspace overlap of the refresh projector with the full-step projector (mean cos^2 of the
   principal angles, q_proj of layer 0) at 4, 8 and 64 micro-batches, for both rules.
3. The clip-norm sketch: relative error of the estimated full-gradient norm against the exact one,
   over 40 sketch seeds, at 16 rows (GaLore rank 8 on the 64-wide test model, and rank 16 of 128).
4. Step time of APOLLO / APOLLO-Mini / Fira on CPU (fp32, 128-wide 2-layer model, global batch 16 in
   4 micro-batches): whole-model, per-layer device buffer, per-layer host buffer; rows interleaved
   round-robin, median per row, ratio to whole-model.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch
from interleave import interleaved, medians

from ranktune.trainables.config import config_from_dict
from ranktune.trainables.model import build_model
from ranktune.trainables.optim import build_method
from ranktune.trainables.optim.galore.optimizers import norm_sketch_matrix, sketch_projected_back
from ranktune.trainables.optim.galore.projector import project, top_singular_vectors

VOCAB, SEQ = 256, 32


def config(hidden: int, optim: dict, section: str | None = None, keys: dict | None = None, layers: int = 2):
    raw = {
        "model": {
            "name": "tiny",
            "hidden_size": hidden,
            "intermediate_size": int(hidden * 2.6875),
            "num_heads": 4,
            "num_layers": layers,
        },
        "data": {"source": "synthetic", "vocab_size": VOCAB, "seq_len": SEQ},
        "optim": optim,
        "train": {"batch_size": 8, "micro_batch_size": 8, "grad_clip": 0.0, "device": "cpu", "precision": "fp32"},
    }
    if section:
        raw[section] = keys or {}
    return config_from_dict(raw)


def batches(n: int, size: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (size, SEQ + 1), generator=gen) for _ in range(n)]


def train(cfg, global_batches, micro_batch: int):
    torch.manual_seed(0)
    model = build_model(cfg.model.llama_config(vocab_size=VOCAB))
    method = build_method(model, cfg)
    for step, batch in enumerate(global_batches):
        method.begin_step(cfg.optim.lr)
        parts = batch.split(micro_batch)
        for i, x in enumerate(parts):
            method.begin_micro_batch(is_last=i == len(parts) - 1)
            (model(x[:, :-1], x[:, 1:])[1] / len(parts)).backward()
        method.step()
        method.end_step(step + 1)
    return model, method


def weights_apart() -> None:
    print("1. per-layer GaLore, global batch 8, 3 updates: micro-batch 4 vs micro-batch 8 (relative norm)")
    data = batches(3, 8)
    for refresh in ("first_micro_batch", "whole_batch"):
        galore = {"rank": 8, "update_proj_gap": 2, "per_layer": True, "refresh": refresh}
        cfg = config(64, {"name": "galore_adamw", "lr": 1e-2}, "galore", galore)
        a, _ = train(cfg, data, 4)
        b, _ = train(cfg, data, 8)
        diff = max(((pa - pb).norm() / pb.norm()).item() for pa, pb in zip(a.parameters(), b.parameters(), strict=True))
        print(f"   refresh {refresh:18s} {diff:.3g}")


def overlap(u: torch.Tensor, v: torch.Tensor) -> float:
    """Mean cos^2 of the principal angles between the row spaces of u and v (r, n) with orthonormal rows."""
    return (torch.linalg.svdvals(u @ v.T) ** 2).mean().item()


def subspace_overlap() -> None:
    print("2. refresh projector vs full-step projector, q_proj of layer 0, rank 8 (mean cos^2 of principal angles)")
    torch.manual_seed(0)
    model = build_model(config(64, {"name": "adamw"}).model.llama_config(vocab_size=VOCAB))
    weight = model.layers[0].attn.q_proj.weight
    for micro_batches in (4, 8, 64):
        grads = []
        for x in batches(micro_batches, 2, seed=micro_batches):
            model.zero_grad()
            model(x[:, :-1], x[:, 1:])[1].backward()
            grads.append(weight.grad.clone() / micro_batches)
        _, full = top_singular_vectors(torch.stack(grads).sum(0), 8)
        _, first = top_singular_vectors(grads[0], 8)
        print(f"   {micro_batches:3d} micro-batches: first_micro_batch {overlap(first, full):.3f}, whole_batch 1.000")


def sketch_error() -> None:
    print("3. clip-norm sketch, 16 rows: relative error of the estimated global norm (40 seeds)")
    for hidden, rank in ((64, 8), (128, 16)):
        cfg = config(hidden, {"name": "galore_adamw", "lr": 1e-2}, "galore", {"rank": rank})
        torch.manual_seed(0)
        model = build_model(cfg.model.llama_config(vocab_size=VOCAB))
        method = build_method(model, cfg)
        opt = method.optimizers[0]
        x = batches(1, 8)[0]
        model(x[:, :-1], x[:, 1:])[1].backward()
        exact = torch.stack([p.grad.square().sum() for p in model.parameters()]).sum().sqrt().item()
        projected_matrices = []
        rest = 0.0
        for group in opt.param_groups:
            for p in group["params"]:
                if "rank" not in group:
                    rest += p.grad.square().sum().item()
                    continue
                state = {"step": 0}
                opt.low_rank_grad(p.grad, group, state)  # the SVD projector of this gradient
                projected_matrices.append((p, state))
        errors = []
        for seed in range(40):
            total = rest
            for position, (p, state) in enumerate(projected_matrices):
                low = project(p.grad, state)
                omega = norm_sketch_matrix(16, p, seed * 1000 + position, 0)
                residual = omega @ p.grad - sketch_projected_back(omega, low, state)
                total += low.square().sum().item() + residual.square().sum().item()
            errors.append(total**0.5 / exact - 1)
        projected_only = (rest + sum(project(p.grad, s).square().sum().item() for p, s in projected_matrices)) ** 0.5
        print(
            f"   hidden {hidden}, rank {rank}: mean error {statistics.mean(errors):+.4f}, "
            f"std {statistics.stdev(errors):.4f}, max |error| {max(abs(e) for e in errors):.4f}; "
            f"projected-only norm / full {projected_only / exact:.3f}"
        )


def train_step(model, method, data) -> Callable[[], None]:
    """One optimizer step of `method` over `data` in 4 micro-batches."""

    def step() -> None:
        method.begin_step(1e-3)
        parts = data.split(4)
        for i, x in enumerate(parts):
            method.begin_micro_batch(is_last=i == len(parts) - 1)
            (model(x[:, :-1], x[:, 1:])[1] / len(parts)).backward()
        method.step()

    return step


def step_times(rounds: int = 7) -> None:
    print("4. APOLLO / Fira step time on CPU, global batch 16 in 4 micro-batches (median, ratio to whole-model)")
    data = batches(1, 16)[0]
    for name, section, keys in (
        ("apollo_adamw", "apollo", {"rank": 32}),
        ("apollo_mini", "apollo_mini", {}),
        ("fira_adamw", "fira", {"rank": 32}),
    ):
        rows = {}
        for mode, extra in (
            ("whole-model", {}),
            ("per-layer device", {"per_layer": True}),
            ("per-layer host", {"per_layer": True, "full_grad_buffer": "host"}),
        ):
            cfg = config(128, {"name": name, "lr": 1e-3}, section, {**keys, "update_proj_gap": 1000, **extra})
            torch.manual_seed(0)
            model = build_model(cfg.model.llama_config(vocab_size=VOCAB))
            rows[mode] = train_step(model, build_method(model, cfg), data)
        median = medians(interleaved(rows, rounds), skip=1)  # the first step allocates the state
        base = median["whole-model"]
        cells = ", ".join(f"{mode} {t / base:.2f}" for mode, t in median.items())
        print(f"   {name:13s} whole-model {base * 1e3:.0f} ms; ratios: {cells}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    weights_apart()
    subspace_overlap()
    sketch_error()
    step_times()
