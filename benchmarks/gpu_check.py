"""GPU check: tokens/s and peak memory measured on CUDA through ranktune's trainer, next to the estimator.

    python benchmarks/gpu_check.py --out DIR            # CUDA: every row, at most --time-budget-s (480) seconds
    python benchmarks/gpu_check.py --smoke --out DIR    # CPU: tiny shapes, 2 steps, every kind of row (CI)

Rows (docs/gpu.md explains every column):
- 60m / 350m / 1b, bf16, synthetic tokens, 16 x 256 tokens per step: AdamW, GaLore AdamW, their 8-bit
  variants when bitsandbytes imports, ReLoRA, LoRA;
- 7b, per-layer GaLore (8-bit inner when bitsandbytes imports), bf16, activation checkpointing, 16 x 256:
  measured peak vs estimate vs the 24 GiB budget; the same at 512 x 256 with accumulation when the config
  accepts per-layer low-rank accumulation (issue 11), skipped with the reason otherwise;
- 7b throughput: the GaLore 7b export (ranktune.platform.export.recipe, 24 GiB) at the micro-batches the duration
  estimate chooses between (the chosen one and the runner-up), 4 accumulation steps each, randomized SVD;
  tokens/s next to the duration estimate's, and with --record PATH saved as measured figures for the
  card (ranktune.platform.duration reads them instead of its assumed utilisation);
- which SDPA backend ran in the model (profiler op names) and which backends run alone;
- torch.compile off vs on at 350m (tokens/s, time to the first step).

Every row is a real `Trainer` run on `data.source: synthetic`, so the CUDA paths under test are ranktune's.
Rows run one after another in this process; between rows everything is freed and the allocator's peak
statistics are reset. A time guard skips a row when less time is left than it is expected to take, and
stops a running row after its current step once the budget is spent; both say so in the row's notes.
Imports only torch, numpy, pyyaml, pydantic and rich (optional) besides ranktune: no Ray, MLflow or Optuna.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import platform
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ranktune.platform.budget import DEFAULT_BUDGET_GIB
from ranktune.platform.memory import GIB, estimate_memory
from ranktune.trainables import Trainer
from ranktune.trainables.callbacks import Callback
from ranktune.trainables.config import ConfigError, config_from_dict
from ranktune.trainables.model import build_model, count_parameters

DEFAULT_TIME_BUDGET_S = 480.0  # the 8 minutes on the device
ESTIMATE_TOLERANCE = 0.10  # the target: estimate within 10% of the measured peak
# The per-layer low-rank accumulation option of issue 11. The 512 x 256 row runs only when the config
# accepts it (extra keys are errors, so an absent or renamed option makes the row skip with the reason);
# without it, per-layer + accumulation keeps full gradients alive and would measure another mode.
LOW_RANK_ACCUMULATION = {"galore": {"accumulation": "low_rank"}}
# Rough device speed for the time guard only (bf16 dense, well below an H200's peak on purpose).
GUARD_FLOPS_PER_S = 100e12
GUARD_SECONDS_PER_PROJECTED_MATRIX = 0.1  # GaLore's first-step (randomized) SVD, per targeted matrix
GUARD_ROW_OVERHEAD_S = 8.0  # model build, step-0 evaluation, freeing


@dataclass(frozen=True)
class Scale:
    """What differs between the CUDA run and the CPU smoke run."""

    models: dict[str, dict]  # row name -> model section
    sizes: tuple[str, ...]  # models of the per-method rows
    seq_len: int
    micro_batch: int
    accum_batch: int  # sequences per step of the accumulation row
    steps: int
    warmup: int  # steps before timing starts (GaLore's SVD and allocator warm-up fall here)
    big_steps: int  # 7b rows
    galore_rank: int
    big_galore_rank: int
    lora_rank: int
    vocab_size: int


TINY = {"name": "tiny", "hidden_size": 64, "intermediate_size": 172, "num_heads": 4}
CUDA_SCALE = Scale(
    models={"60m": {"name": "60m"}, "350m": {"name": "350m"}, "1b": {"name": "1b"}, "7b": {"name": "7b"}},
    sizes=("60m", "350m", "1b"),
    seq_len=256,
    micro_batch=16,
    accum_batch=512,
    steps=7,
    warmup=2,
    big_steps=3,
    galore_rank=128,
    big_galore_rank=1024,
    lora_rank=128,
    vocab_size=32000,
)
SMOKE_SCALE = Scale(
    models={name: TINY for name in ("60m", "350m", "1b", "7b")},
    sizes=("60m",),  # the tiny model stands in for every size: one set of method rows is enough
    seq_len=32,
    micro_batch=4,
    accum_batch=8,
    steps=2,
    warmup=1,
    big_steps=2,
    galore_rank=8,
    big_galore_rank=8,
    lora_rank=8,
    vocab_size=1024,
)


@dataclass
class Row:
    label: str
    kind: str  # train | 7b | compile | sdpa
    raw: dict  # the config, as a dict (validated when the row runs)
    expected_s: float = 0.0
    skip_reason: str | None = None
    result: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------- configs


@cache
def bitsandbytes_problem() -> str | None:
    """Why bitsandbytes cannot be used here, or None."""
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # ImportError, or a CUDA library it fails to load
        return f"bitsandbytes does not import ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    return None


def deep_merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = deep_merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def method_sections(method: str, galore_rank: int, lora_rank: int) -> dict:
    if method.startswith("galore_"):
        # Randomized SVD: the full SVD of every matrix at the first step would take minutes at 1b / 7b.
        return {"optim": {"name": method}, "galore": {"rank": galore_rank, "svd": "randomized"}}
    if method in ("relora", "lora"):
        return {"optim": {"name": method}, "relora": {"rank": lora_rank}}
    return {"optim": {"name": method}}


def base_config(scale: Scale, model: str, steps: int, device: str, out_dir: str) -> dict:
    return {
        "model": dict(scale.models[model]),
        "data": {"source": "synthetic", "seq_len": scale.seq_len, "vocab_size": scale.vocab_size},
        "train": {
            "steps": steps,
            "batch_size": scale.micro_batch,
            "micro_batch_size": scale.micro_batch,
            "precision": "bf16",
            "device": device,
            "eval_every": 10**9,
            "eval_blocks": 4,
            "log_every": steps,
        },
        "schedule": {"warmup_steps": 0},
        "output": {"dir": out_dir, "checkpoint_every": 0},
    }


def expected_seconds(raw: dict, steps: int) -> float:
    """A rough guess of a row's wall time on the device, for the time guard."""
    cfg = config_from_dict(raw)
    llama = cfg.model.llama_config(vocab_size=cfg.data.vocab_size)
    params = count_parameters(build_model(llama, "meta"))
    recompute = 4 / 3 if cfg.model.activation_checkpointing else 1.0
    flops = 6 * params * cfg.tokens_per_step * steps * recompute
    svd = 0.0
    if cfg.optim.name.startswith("galore_"):
        svd = GUARD_SECONDS_PER_PROJECTED_MATRIX * llama.num_layers * len(cfg.galore.target_modules)
    compile_s = 60.0 if cfg.train.compile else 0.0
    return GUARD_ROW_OVERHEAD_S + flops / GUARD_FLOPS_PER_S + svd + compile_s


def plan_rows(scale: Scale, device: str, out_dir: str) -> list[Row]:
    bnb = bitsandbytes_problem()
    rows: list[Row] = [Row("SDPA backend (60m shapes)", "sdpa", base_config(scale, "60m", 1, device, out_dir))]

    big_method = "galore_adamw8bit" if bnb is None else "galore_adamw"
    big = deep_merge(
        base_config(scale, "7b", scale.big_steps, device, out_dir),
        {
            **method_sections(big_method, scale.big_galore_rank, scale.lora_rank),
            "model": {"activation_checkpointing": True},
            "train": {"grad_clip": 0.0},  # per-layer updates refuse global-norm clipping
        },
    )
    big["galore"].update(per_layer=True, update_proj_gap=500)
    rows.append(Row(f"7b {big_method} per-layer, ckpt, {scale.micro_batch}x{scale.seq_len}", "7b", big))
    accum = deep_merge(big, {"train": {"batch_size": scale.accum_batch}, **LOW_RANK_ACCUMULATION})
    try:
        config_from_dict(accum)
        no_option = None
    except ConfigError as exc:
        no_option = "config does not accept per-layer low-rank accumulation (issue 11): " + "; ".join(exc.problems)
    # Appended last: at 512 x 256 tokens per step it is the longest row, and the time guard may skip it.
    accum_label = f"7b {big_method} per-layer, ckpt, {scale.accum_batch}x{scale.seq_len} accum"
    accum_row = Row(accum_label, "7b", accum, skip_reason=no_option)

    rows += throughput_rows(scale, device, out_dir, bnb)

    for model in scale.sizes:
        for method in ("adamw", "adamw8bit", "galore_adamw", "galore_adamw8bit", "relora", "lora"):
            raw = deep_merge(
                base_config(scale, model, scale.steps, device, out_dir),
                method_sections(method, scale.galore_rank, scale.lora_rank),
            )
            skip = bnb if method.endswith("8bit") else None
            rows.append(Row(f"{model} {method}", "train", raw, skip_reason=skip))

    for compile_on in (False, True):
        raw = deep_merge(base_config(scale, "350m", scale.steps, device, out_dir), {"train": {"compile": compile_on}})
        skip = None
        if compile_on and scale is SMOKE_SCALE:
            skip = (
                "smoke run: inductor's first compile takes minutes on a small CPU; "
                "tests/test_gpu_check.py::test_train_compile_matches_eager covers train.compile"
            )
        rows.append(Row(f"350m adamw compile {'on' if compile_on else 'off'}", "compile", raw, skip_reason=skip))
    rows.append(accum_row)

    for row in rows:
        if row.skip_reason is None:
            row.expected_s = expected_seconds(row.raw, row.raw["train"]["steps"])
    return rows


THROUGHPUT_ACCUMULATION = 4  # micro-batches per timed step: tokens/s of the micro-batch, not of a 512-sequence step


def export_micro_batches() -> tuple[dict, list[int]]:
    """The 7b export of a GaLore proxy (the paper's rank 128 at 60m) on 24 GiB, and the micro-batches the
    duration estimate chose between: [chosen, runner-up]."""
    from ranktune.platform.export.fit import fit_micro_batch_choice
    from ranktune.platform.export.mapping import map_to_target
    from ranktune.platform.export.rules import ScalingRules

    # Synthetic data of the tokenizer's vocabulary (32000): the device has no mistral-common to read it from.
    proxy = config_from_dict(
        {
            "model": {"name": "60m"},
            "optim": {"name": "galore_adamw"},
            "galore": {"rank": 128},
            "data": {"source": "synthetic", "vocab_size": 32000},
            "train": {"steps": 1000},
            "schedule": {"warmup_steps": 100},
        }
    )
    rules = ScalingRules(data_source="proxy")
    cfg, _, choice = fit_micro_batch_choice(map_to_target(proxy, "7b", rules), [], rules, DEFAULT_BUDGET_GIB)
    mbs = [choice.chosen.train.micro_batch_size]
    if choice.runner_up is not None:
        mbs.append(choice.runner_up.train.micro_batch_size)
    return cfg.model_dump(mode="json"), mbs


def throughput_rows(scale: Scale, device: str, out_dir: str, bnb: str | None) -> list[Row]:
    exported, mbs = export_micro_batches()
    rows = []
    for mb in mbs:
        raw = deep_merge(
            exported,
            {
                "model": scale.models["7b"] | {"activation_checkpointing": True},
                "data": {
                    "source": "synthetic",
                    "seq_len": scale.seq_len,
                    "vocab_size": scale.vocab_size,
                    "max_tokens": None,
                },
                "galore": {"svd": "randomized", "rank": scale.big_galore_rank},  # a full SVD of 224 matrices: minutes
                "train": {
                    "steps": scale.big_steps,
                    "micro_batch_size": mb,
                    "batch_size": mb * THROUGHPUT_ACCUMULATION,
                    "device": device,
                    "eval_every": 10**9,
                    "eval_blocks": 4,
                    "log_every": scale.big_steps,
                },
                "schedule": {"warmup_steps": 0},
                "output": {"dir": out_dir, "checkpoint_every": 0},
            },
        )
        if bnb is not None:
            raw["optim"]["name"] = "galore_adamw"
        label = f"7b throughput {raw['optim']['name']} mb {mb} x{THROUGHPUT_ACCUMULATION} micro-batches"
        rows.append(Row(label, "throughput", raw))
    return rows


def record_throughput(rows: list[Row], meta: dict, path: Path) -> list[str]:
    """Save the throughput rows' tokens/s as measured figures for this card; lines saying what was saved."""
    from ranktune.platform.cards import card_key_for_device_name
    from ranktune.platform.duration import MeasuredThroughput, record_measured

    key = card_key_for_device_name(meta["device_name"])
    if key is None or meta["device"] == "cpu":
        return [f"--record: {meta['device_name']!r} is not a card of ranktune.platform.cards: nothing recorded"]
    lines = []
    for row in rows:
        r = row.result
        if row.kind == "throughput" and r.get("status") == "ok" and "tokens_per_s" in r:
            cfg = config_from_dict(row.raw)
            record = MeasuredThroughput(
                key,
                meta["device_name"],
                "7b",
                cfg.optim.name,
                cfg.train.micro_batch_size,
                cfg.data.seq_len,
                True,
                r["tokens_per_s"],
                meta["started"][:10],
            )
            record_measured(path, record)
            lines.append(f"recorded {record.tokens_per_s:.0f} tokens/s ({row.label}) for {key} in {path}")
    return lines


# ------------------------------------------------------------------------------------------- measuring


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    """Drop what the previous row left (cycles through hooks, compiled graphs) and reset the peaks."""
    torch._dynamo.reset()  # compiled graphs hold the previous model's parameters
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def cuda_context_bytes(device: torch.device) -> int:
    """Device memory this process uses outside the caching allocator (CUDA context, cuBLAS/cuDNN handles)."""
    a = torch.randn(256, 256, device=device, dtype=torch.bfloat16)
    (a @ a).sum().item()  # creates the cuBLAS handle
    free, total = torch.cuda.mem_get_info(device)
    used = total - free - torch.cuda.memory_reserved(device)
    del a
    return used


class StepClock(Callback):
    """Device-synchronised wall time at the start of training and after every step; stops at `stop_at`."""

    def __init__(self, device: torch.device, stop_at: float) -> None:
        self.device, self.stop_at = device, stop_at
        self.trainer: Trainer | None = None
        self.start = 0.0
        self.times: list[float] = []
        self.losses: list[float] = []
        self.cut_short = False

    def now(self) -> float:
        synchronize(self.device)
        return time.perf_counter()

    def on_train_start(self, info) -> None:
        self.start = self.now()

    def on_step(self, metrics) -> None:
        self.times.append(self.now())
        self.losses.append(metrics["train_loss"])
        if self.trainer is not None and self.times[-1] > self.stop_at:
            self.trainer.stop_requested = True  # the trainer ends cleanly after this step
            self.cut_short = True


def run_training_row(row: Row, device: torch.device, warmup: int, stop_at: float, context: int | None) -> dict:
    cfg = config_from_dict(row.raw)
    estimate = estimate_memory(cfg, device="cuda" if device.type == "cuda" else "cpu")
    allocated_before = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    clock = StepClock(device, stop_at)
    trainer = Trainer(cfg, [clock], progress=False)
    trainer.save = lambda: None  # measurement only: no checkpoint files
    clock.trainer = trainer
    result: dict[str, Any] = {}
    if device.type == "cuda":
        # The model is built in fp32 and cast to bf16: the build can peak above training.
        result["build_peak_bytes"] = torch.cuda.max_memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    trainer.fit()
    if device.type == "cuda":
        result["peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
        result["peak_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
        result["allocated_before_bytes"] = allocated_before
        if context is not None:
            result["footprint_bytes"] = result["peak_reserved_bytes"] + context
    timed = len(clock.times) - warmup
    result.update(
        steps_run=len(clock.times),
        steps_timed=max(timed, 0),
        first_step_s=clock.times[0] - clock.start,
        losses=clock.losses,
        tokens_per_step=cfg.tokens_per_step,
        estimate_total_bytes=estimate.total,
        estimate_overhead_bytes=estimate.overhead,
        estimate_allocated_bytes=estimate.total - estimate.overhead,
        estimate=estimate.as_dict(),
    )
    if timed > 0:
        result["tokens_per_s"] = cfg.tokens_per_step * timed / (clock.times[-1] - clock.times[warmup - 1])
    if "peak_allocated_bytes" in result:
        ratio = result["estimate_allocated_bytes"] / result["peak_allocated_bytes"]
        result["estimate_ratio"] = ratio
        result["within_tolerance"] = abs(ratio - 1) <= ESTIMATE_TOLERANCE
    if "footprint_bytes" in result:
        result["footprint_ratio"] = estimate.total / result["footprint_bytes"]
    if row.kind == "throughput" and device.type == "cuda":
        from ranktune.platform.cards import card_key_for_device_name
        from ranktune.platform.duration import estimate_duration

        key = card_key_for_device_name(torch.cuda.get_device_name(device))
        if key is not None:
            d = estimate_duration(cfg, key, measured=[])
            result["estimate_tokens_per_s"] = cfg.tokens_per_step / d.step_seconds
            result["estimate_card"] = key
    if row.kind == "7b":
        budget = int(DEFAULT_BUDGET_GIB * GIB)
        result["budget_bytes"] = budget
        result["estimate_fits_budget"] = estimate.total <= budget
        if "footprint_bytes" in result:
            result["measured_fits_budget"] = result["footprint_bytes"] <= budget
    notes = list(estimate.notes)
    if clock.cut_short:
        notes.append(f"time guard: stopped after {len(clock.times)} of {cfg.train.steps} steps")
    if timed <= 0:
        notes.append("no timed step (all steps were warm-up)")
    result["notes"] = notes
    del trainer, clock
    return result


SDPA_OPS = {  # aten op -> backend
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "flash (CPU)",
    "aten::_scaled_dot_product_efficient_attention": "memory-efficient",
    "aten::_scaled_dot_product_cudnn_attention": "cudnn",
    "aten::_scaled_dot_product_fused_attention_overrideable": "fused (overrideable)",
    "aten::_scaled_dot_product_attention_math": "math",
}


def sdpa_backends_alone(q: torch.Tensor) -> dict[str, str]:
    """For each backend, whether SDPA runs on these shapes with only that backend enabled (and why not)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    out = {}
    for backend in (
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.EFFICIENT_ATTENTION,
        SDPBackend.CUDNN_ATTENTION,
        SDPBackend.MATH,
    ):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with sdpa_kernel(backend):
                    F.scaled_dot_product_attention(q, q, q, is_causal=True).sum().item()
                out[backend.name] = "runs"
            except RuntimeError as exc:
                # torch warns once per disabled or unsuitable backend, saying why; keep all of it.
                why = list(dict.fromkeys(str(w.message).splitlines()[0] for w in caught)) or [str(exc)]
                out[backend.name] = "unavailable: " + " / ".join(why)
    return out


def run_sdpa_row(row: Row, device: torch.device) -> dict:
    """Profile one forward + backward of the model and read which SDPA op ran."""
    from torch.profiler import ProfilerActivity, profile

    cfg = config_from_dict(row.raw)
    trainer = Trainer(cfg, progress=False)
    x, y = trainer.train_blocks.batch(trainer.batches.next_indices())
    x, y = x.to(trainer.device), y.to(trainer.device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        with trainer.autocast():
            _, loss = trainer.model(x, y)
        loss.backward()
        synchronize(device)
    names = {e.key for e in prof.key_averages()}
    ran = sorted({SDPA_OPS[n.removesuffix("_backward")] for n in names if n.removesuffix("_backward") in SDPA_OPS})
    kernels = sorted(n for n in names if any(k in n.lower() for k in ("flash", "fmha", "attention", "sdpa")))
    llama = trainer.llama_cfg
    q = torch.randn(
        cfg.train.micro_batch_size,
        llama.num_heads,
        cfg.data.seq_len,
        llama.head_size,
        device=trainer.device,
        dtype=next(trainer.model.parameters()).dtype,
    )
    result = {
        "sdpa_backend": ", ".join(ran) if ran else "none found",
        "sdpa_ops": sorted(n for n in names if "scaled_dot_product" in n),
        "sdpa_kernels": kernels[:8],
        "sdpa_alone": sdpa_backends_alone(q),
        "dtype": str(q.dtype),
        "notes": [],
    }
    del trainer, loss, prof
    return result


# ------------------------------------------------------------------------------------------- report


def fmt_gib(n: float | None) -> str:
    return "" if n is None else f"{n / GIB:.3g}"


def table_cells(row: Row) -> list[str]:
    r = row.result
    status = r.get("status", "")
    if status != "ok":
        return [row.label, status, "", "", "", "", "", "", "", r.get("reason", "")]
    if row.kind == "sdpa":
        alone = ", ".join(f"{k.lower()}: {'yes' if v == 'runs' else 'no'}" for k, v in r["sdpa_alone"].items())
        return [row.label, "ok", "", "", "", "", "", "", "", f"ran: {r['sdpa_backend']} ({r['dtype']}); alone: {alone}"]
    ratio = r.get("estimate_ratio")
    notes = list(r["notes"])
    if "estimate_tokens_per_s" in r:
        notes.insert(
            0,
            f"duration estimate {r['estimate_tokens_per_s']:.0f} tokens/s on {r['estimate_card']} "
            "(assumed utilisation)",
        )
    if row.kind == "7b":
        measured = fmt_gib(r.get("footprint_bytes")) or "n/a"
        notes.insert(
            0,
            f"footprint {measured} vs est {fmt_gib(r['estimate_total_bytes'])} vs budget "
            f"{fmt_gib(r['budget_bytes'])} GiB",
        )
        if "build_peak_bytes" in r:
            notes.insert(1, f"build peak {fmt_gib(r['build_peak_bytes'])} GiB")
    return [
        row.label,
        "ok",
        f"{r['tokens_per_s']:.0f}" if "tokens_per_s" in r else "",
        fmt_gib(r.get("peak_allocated_bytes")),
        fmt_gib(r["estimate_allocated_bytes"]),
        "" if ratio is None else f"{ratio:.3f}{'' if r['within_tolerance'] else ' !'}",
        fmt_gib(r.get("peak_reserved_bytes")),
        fmt_gib(r["estimate_total_bytes"]),
        f"{r['first_step_s']:.1f}",
        "; ".join(notes),
    ]


HEADER = [
    "row",
    "status",
    "tokens/s",
    "peak alloc GiB",
    "est alloc GiB",
    "est/meas",
    "peak reserved GiB",
    "est total GiB",
    "first step s",
    "notes",
]


def markdown(rows: list[Row], meta: dict) -> str:
    lines = [f"GPU check, {meta['finished']}, {meta['device_name']}, torch {meta['torch']}, mode {meta['mode']}", ""]
    lines.append("| " + " | ".join(HEADER) + " |")
    lines.append("|" + "---|" * len(HEADER))
    for row in rows:
        lines.append("| " + " | ".join(c.replace("|", "/") for c in table_cells(row)) + " |")
    return "\n".join(lines) + "\n"


def print_table(rows: list[Row], meta: dict) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(markdown(rows, meta))
        return
    table = Table(title=f"GPU check: {meta['device_name']}, torch {meta['torch']}, {meta['wall_s']:.0f} s")
    for name in HEADER:
        table.add_column(name, justify="left" if name in ("row", "status", "notes") else "right")
    for row in rows:
        table.add_row(*table_cells(row))
    Console(width=200).print(table)


def write_report(out: Path, rows: list[Row], meta: dict, started: float) -> None:
    meta["wall_s"] = time.perf_counter() - started
    meta["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    report = {"meta": meta, "rows": [{"label": r.label, "kind": r.kind, **r.result} for r in rows]}
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    (out / "gpu_check.md").write_text(markdown(rows, meta))


# ------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory for gpu_check.json and gpu_check.md")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, 2 steps (CPU, CI)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--time-budget-s", type=float, default=DEFAULT_TIME_BUDGET_S)
    parser.add_argument("--only", default="", help="comma-separated substrings: run only rows whose label has one")
    parser.add_argument(
        "--record",
        metavar="PATH",
        help="save the 7b throughput rows as measured figures (a JSON "
        "file ranktune.platform.duration reads: ranktune/platform/measured_throughput.json, or "
        "$RANKTUNE_CACHE/measured_throughput.json)",
    )
    args = parser.parse_args(argv)

    started = time.perf_counter()
    deadline = started + args.time_budget_s
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    if use_cuda and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    scale = SMOKE_SCALE if args.smoke else CUDA_SCALE
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    context = cuda_context_bytes(device) if device.type == "cuda" else None
    meta = {
        "mode": "smoke" if args.smoke else "full",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "bitsandbytes": bitsandbytes_problem() or "imports",
        "cuda_context_bytes": context,
        "time_budget_s": args.time_budget_s,
        "scale": "every model row is the tiny model (64 hidden, 2 layers)" if args.smoke else "paper shapes",
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    free_memory(device)  # and after every row: each row starts from an empty allocator with fresh peaks
    only = [s for s in args.only.split(",") if s]
    failed = False
    with tempfile.TemporaryDirectory() as run_dir:
        rows = plan_rows(scale, device.type, run_dir)
        if only:
            rows = [r for r in rows if any(s in r.label for s in only)]
        for row in rows:
            left = deadline - time.perf_counter()
            if row.skip_reason is not None:
                row.result = {"status": "skipped", "reason": row.skip_reason}
            elif row.expected_s > left:
                reason = f"time guard: {left:.0f} s left, row expected to take ~{row.expected_s:.0f} s"
                row.result = {"status": "skipped", "reason": reason}
            else:
                t0 = time.perf_counter()
                try:
                    if row.kind == "sdpa":
                        row.result = run_sdpa_row(row, device)
                    else:
                        warmup = 1 if row.kind in ("7b", "throughput") else scale.warmup
                        row.result = run_training_row(row, device, warmup, deadline, context)
                    row.result["status"] = "ok"
                except Exception as exc:  # one row's failure (e.g. out of memory) must not lose the others
                    failed = True
                    message = str(exc).splitlines()[0] if str(exc) else ""
                    # The whole traceback: a device run is one shot, its failures must be fixable from the output.
                    row.result = {
                        "status": "failed",
                        "reason": f"{type(exc).__name__}: {message}",
                        "traceback": traceback.format_exc(),
                    }
                    print(row.result["traceback"], file=sys.stderr, flush=True)
                row.result["wall_s"] = time.perf_counter() - t0
                free_memory(device)
            print(f"[{time.perf_counter() - started:6.1f} s] {row.label}: {row.result['status']}", flush=True)
            write_report(out, [r for r in rows if r.result], meta, started)  # a killed run keeps what it measured
    write_report(out, rows, meta, started)
    print_table(rows, meta)
    if args.record:
        print("\n".join(record_throughput(rows, meta, Path(args.record))))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
