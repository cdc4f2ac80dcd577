"""ReLoRA (Lialin et al., 2023) and plain LoRA as `Method`s: `relora` and `lora` in the registry.

    1. warm start   full-rank training for relora.warm_start_steps (all parameters, inner optimizer),
                    or weights from a full-rank checkpoint (relora.warm_start_checkpoint)
    2. wrap         every targeted Linear becomes W x + (alpha/r) B A x with W frozen; the optimizer is
                    rebuilt over the LoRA factors plus the untargeted parameters (embeddings, norms,
                    head), which keep their moments
    3. restart      every relora.relora_every updates after wrapping: merge (alpha/r) B A into W in
                    fp32, re-initialise A and B, prune the LoRA factors' moments (relora_reset.py)
    4. schedule     jagged cosine (relora_schedule.py)

`lora` is the same code without step 3 (the baseline). The layer, the pruning and the schedule live in
lora.py, relora_reset.py and relora_schedule.py; this module owns the when and the state.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ranktune.trainables.errors import ConfigError
from ranktune.trainables.optim import eightbit
from ranktune.trainables.optim.base import Method, decay_groups, tensor_bytes
from ranktune.trainables.optim.baselines import full_rank_state, inner_state_bytes
from ranktune.trainables.optim.lora import is_target, lora_layers, merge_lora_into_base, wrap_lora
from ranktune.trainables.optim.registry import (
    Device,
    MethodFlops,
    OptimizerEntry,
    ParamShape,
    PhaseState,
    TargetScaling,
    register,
)
from ranktune.trainables.optim.relora_reset import prune_moments_
from ranktune.trainables.optim.relora_schedule import jagged_cosine, restart_steps, settling_windows, wrap_step

log = logging.getLogger(__name__)

# The label of the full-rank warm start's phase in the memory estimate (export's advice looks for it).
WARM_START_PHASE = "warm start"

# Offset of the method's generator seed from train.seed, so LoRA draws differ from the model init's.
_GENERATOR_SEED_OFFSET = 7919


def build_inner_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    o = cfg.optim
    groups = decay_groups(model, o.weight_decay)
    if cfg.relora.inner_optimizer == "adamw8bit":
        import bitsandbytes as bnb  # optional dependency: only 8-bit runs need it installed

        return bnb.optim.AdamW8bit(groups, lr=o.lr, betas=o.betas, eps=o.eps)
    return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps)


def load_warm_start(model: nn.Module, path: str) -> None:
    """Load full-rank weights from a ranktune checkpoint (its "model" entry) or a bare state dict."""
    from ranktune.trainables.checkpoint import CheckpointError, load_tensors_file  # late: it imports optim

    try:
        state = load_tensors_file(path)
    except CheckpointError as exc:
        raise ConfigError([f"relora.warm_start_checkpoint: {exc}"]) from None
    weights = state["model"] if isinstance(state, dict) and "model" in state else state
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise ValueError(
            f"relora.warm_start_checkpoint: {path!r} -> a full-rank checkpoint of this model "
            f"(same model section, not already LoRA-wrapped): {exc}"
        ) from None


class ReLoRAMethod(Method):
    def __init__(self, model: nn.Module, cfg, restarts: bool) -> None:
        self.model = model
        self.cfg = cfg
        self.grad_clip = cfg.train.grad_clip
        self.wrap_step = wrap_step(cfg)
        self.restart_at = set(restart_steps(cfg)) if restarts else set()
        # One generator for every LoRA re-init and random pruning; saved in checkpoints so that a
        # resumed run draws the same numbers as an uninterrupted one.
        self.generator = torch.Generator().manual_seed(cfg.train.seed + _GENERATOR_SEED_OFFSET)
        self.wrapped = False
        self.restarts_done = 0
        self.merge_reset_seconds: list[float] = []
        if cfg.relora.warm_start_checkpoint:
            load_warm_start(model, cfg.relora.warm_start_checkpoint)
            log.info("warm start: loaded full-rank weights from %s", cfg.relora.warm_start_checkpoint)
        self.optimizers = [build_inner_optimizer(model, cfg)]
        if self.wrap_step == 0:
            self._wrap()

    # ---------------------------------------------------------------- structure

    def _wrap(self) -> None:
        """Wrap the targeted Linears and rebuild the optimizer; untargeted parameters keep their state."""
        r = self.cfg.relora
        old = self.optimizers[0]
        names = wrap_lora(self.model, r.target_modules, r.rank, r.alpha, r.base_precision, self.generator)
        new = build_inner_optimizer(self.model, self.cfg)
        for group in new.param_groups:
            for p in group["params"]:
                if p in old.state:
                    new.state[p] = old.state[p]
        self.optimizers = [new]
        self.wrapped = True
        log.info(
            "LoRA: wrapped %d Linear layers (%s) at rank %d; %d trainable parameters",
            len(names),
            ", ".join(r.target_modules),
            r.rank,
            self.trainable_count(),
        )

    def lora_parameters(self) -> list[nn.Parameter]:
        return [p for layer in lora_layers(self.model) for p in (layer.lora_A, layer.lora_B)]

    def trainable_count(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    @torch.no_grad()
    def merge_and_reset(self) -> None:
        """One restart: merge every LoRA update into its base, re-init the factors, prune their moments."""
        start = time.perf_counter()
        for layer in lora_layers(self.model):
            merge_lora_into_base(layer, self.generator)
        r = self.cfg.relora
        prune_moments_(self.optimizers[0], self.lora_parameters(), r.reset_ratio, r.reset_mode, self.generator)
        self.restarts_done += 1
        self.merge_reset_seconds.append(time.perf_counter() - start)

    # ---------------------------------------------------------------- loop hooks

    def end_step(self, step: int) -> dict[str, float]:
        if not self.wrapped and step >= self.wrap_step:
            self._wrap()
        elif step in self.restart_at:
            self.merge_and_reset()
        return {"trainable_parameters": self.trainable_count(), "relora_restarts": self.restarts_done}

    # ---------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        return {
            "wrapped": self.wrapped,
            "restarts_done": self.restarts_done,
            "generator": self.generator.get_state(),
            "optimizers": [opt.state_dict() for opt in self.optimizers],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Re-create the wrapped structure first (the trainer loads the model weights after this)."""
        if state["wrapped"] and not self.wrapped:
            self._wrap()
        elif self.wrapped and not state["wrapped"]:
            raise ValueError("checkpoint is from before LoRA wrapping but this run wraps at step 0")
        self.restarts_done = state["restarts_done"]
        self.generator.set_state(state["generator"])
        super().load_state_dict(state)

    def state_bytes(self) -> dict[str, int]:
        opt = self.optimizers[0]
        lora = set(self.lora_parameters())
        lora_bytes = sum(tensor_bytes(s) for p, s in opt.state.items() if p in lora)
        other_bytes = sum(tensor_bytes(s) for p, s in opt.state.items() if p not in lora)
        return {"lora_moments": lora_bytes, "other_moments": other_bytes}

    def benchmark_extras(self) -> dict[str, float]:
        times = self.merge_reset_seconds
        return {
            "restarts": self.restarts_done,
            "merge_reset_s": sum(times) / len(times) if times else float("nan"),
        }


# -------------------------------------------------------------------- config checks


def _min_dims(cfg) -> dict[str, int]:
    """min(out, in) of each LLaMA projection, by module name."""
    llama = cfg.model.llama_config()
    h, i = llama.hidden_size, llama.intermediate_size
    dims = {"q_proj": h, "k_proj": h, "v_proj": h, "o_proj": h}
    dims.update({"gate_proj": min(h, i), "up_proj": min(h, i), "down_proj": min(h, i)})
    return dims


def check_lora(cfg) -> list[str]:
    r, steps = cfg.relora, cfg.train.steps
    problems = []
    if r.warm_start_steps >= steps:
        problems.append(f"relora.warm_start_steps: {r.warm_start_steps} -> fewer than train.steps ({steps})")
    if r.warm_start_checkpoint:
        if r.warm_start_steps:
            problems.append(
                f"relora.warm_start_checkpoint: {r.warm_start_checkpoint!r} -> not together with "
                f"relora.warm_start_steps ({r.warm_start_steps}); use one kind of warm start"
            )
        if not Path(r.warm_start_checkpoint).expanduser().is_file():
            problems.append(f"relora.warm_start_checkpoint: {r.warm_start_checkpoint!r} -> an existing file")
    try:
        dims = _min_dims(cfg)
    except (KeyError, ValueError):
        dims = {}  # the model section is broken; check_config reports that
    unknown = [t for t in r.target_modules if not any(is_target(name, [t]) for name in dims)]
    if not r.target_modules or unknown:
        problems.append(f"relora.target_modules: {r.target_modules} -> a non-empty list from {sorted(dims)}")
    targeted = {name: d for name, d in dims.items() if is_target(name, r.target_modules)}
    if targeted and r.rank > min(targeted.values()):
        smallest = min(targeted, key=targeted.get)
        problems.append(
            f"relora.rank: {r.rank} -> at most {targeted[smallest]}, the smallest dimension of a wrapped "
            f"layer ({smallest})"
        )
    needs_bnb = r.inner_optimizer == "adamw8bit" or r.base_precision == "int8"
    if needs_bnb and eightbit.bitsandbytes_missing():
        problems.append(
            "relora.inner_optimizer / relora.base_precision: 8-bit needs bitsandbytes -> pip install "
            "bitsandbytes, or use inner_optimizer: adamw and base_precision: same|bf16"
        )
    return problems


def check_relora(cfg) -> list[str]:
    r = cfg.relora
    problems = check_lora(cfg)
    if r.relora_every <= r.restart_warmup_steps:
        problems.append(
            f"relora.relora_every: {r.relora_every} -> more than relora.restart_warmup_steps "
            f"({r.restart_warmup_steps}), or the LR never gets back to the envelope"
        )
    return problems


# -------------------------------------------------------------------- memory accounting


def lora_state(shapes: tuple[ParamShape, ...], cfg, device: Device) -> PhaseState:
    """After wrapping: the frozen bases (training dtype, bf16, or int8 + one fp32 absmax per row), LoRA
    factors A (r, in) and B (out, r), inner-optimizer moments for the factors and the untargeted
    tensors (embeddings, norms, head) only. check_lora allows only projection names as targets, which
    pick the same tensors in every layer, so one layer's rows stand for all."""
    r = cfg.relora
    compute_bytes = 4 if cfg.train.precision == "fp32" else 2  # the dtype the forward runs in
    weights = temp = 0
    lora: list[ParamShape] = []
    others: list[ParamShape] = []
    largest_target = 0
    for p in shapes:
        if p.module == "Linear" and is_target(p.module_name, r.target_modules):  # wrap_lora's rule
            out_f, in_f = p.shape
            if r.base_precision == "int8":
                weights += (p.numel + out_f * 4) * p.count  # int8 rows + fp32 absmax per output row
                temp = max(temp, p.numel * (4 + compute_bytes))
            else:
                weights += p.numel * (2 if r.base_precision == "bf16" else p.value_bytes) * p.count
                if r.base_precision == "bf16" and p.value_bytes != 2:
                    temp = max(temp, p.numel * p.value_bytes)  # re-materialised in the compute dtype, one at a time
            module = p.module_name
            lora += [
                ParamShape(f"{module}.lora_A", (r.rank, in_f), "LoRALinear", p.value_bytes, p.count),
                ParamShape(f"{module}.lora_B", (out_f, r.rank), "LoRALinear", p.value_bytes, p.count),
            ]
            largest_target = max(largest_target, p.numel)
        else:
            others.append(p)
    trainable = tuple(lora + others)
    weights += sum(p.numel * p.count * p.value_bytes for p in trainable)
    inner = r.inner_optimizer
    lora_moments = sum(inner_state_bytes(inner, p.shape, p.value_bytes, step_tensor=True) * p.count for p in lora)
    other_moments = sum(inner_state_bytes(inner, p.shape, p.value_bytes, step_tensor=True) * p.count for p in others)
    if inner == "adamw8bit":
        other_moments += eightbit.QMAPS_BYTES
    elif device == "cuda":
        temp = max(temp, sum(p.numel * p.count * p.value_bytes for p in trainable))  # foreach AdamW
    if cfg.optim.name == "relora":
        # A restart merges in fp32: the base, B A and the sum, one layer at a time (not during backward).
        temp = max(temp, 3 * largest_target * 4)
    return PhaseState(
        phase="LoRA",
        weights=weights,
        trainable=trainable,
        optimizer={"lora_moments": lora_moments, "other_moments": other_moments},
        step_temporaries=temp,
        saved_values_per_token=7 * r.rank,  # A x, the (B, T, r) input of each LoRA B factor
    )


def estimate_lora(shapes: tuple[ParamShape, ...], cfg, device: Device) -> list[PhaseState]:
    """A full-rank warm-start phase (when trained in this run), then the LoRA phase."""
    r = cfg.relora
    phases = []
    if r.warm_start_steps > 0 and not r.warm_start_checkpoint:
        label = f"{WARM_START_PHASE} (full-rank, {r.warm_start_steps} steps)"
        warm = full_rank_state(r.inner_optimizer, shapes, device, label)
        warm.optimizer = {"lora_moments": 0, "other_moments": warm.optimizer["moments"]}
        phases.append(warm)
    phases.append(lora_state(shapes, cfg, device))
    return phases


def estimate_lora_flops(shapes: tuple[ParamShape, ...], cfg) -> MethodFlops:
    """Per token after the warm start: the adapters' forward and backward (6 r (in + out) per wrapped
    projection) less the weight gradient the frozen base no longer needs (2 in out); ReLoRA merges
    B A into every base each relora_every steps (2 out r in)."""
    r, steps = cfg.relora, cfg.train.steps
    adapters = skipped = merge = 0.0
    for p in shapes:
        if p.module == "Linear" and is_target(p.module_name, r.target_modules):
            out_f, in_f = p.shape
            adapters += 6 * r.rank * (in_f + out_f) * p.count
            skipped += 2 * in_f * out_f * p.count
            merge += 2 * out_f * r.rank * in_f * p.count
    in_run_warm_start = r.warm_start_steps if not r.warm_start_checkpoint else 0
    lora_share = max(0, steps - in_run_warm_start) / steps
    restarts = cfg.optim.name == "relora"
    return MethodFlops(
        per_token=(adapters - skipped) * lora_share,
        per_refresh=merge if restarts else 0.0,
        refresh_every=r.relora_every if restarts else 0,
        notes=(f"LoRA phase {100 * lora_share:.0f}% of the steps: adapters minus the frozen base's weight gradients",),
    )


def summarize_lora(cfg) -> str:
    r = cfg.relora
    return f"lora rank {r.rank}, base {r.base_precision}, inner {r.inner_optimizer}"


def needs_warm_start_checkpoint(proxy, target) -> list[str]:
    """A full-rank warm start does not fit one 24 GiB GPU at 7b (full AdamW state): the exported run
    starts from a full-rank checkpoint trained elsewhere for the proxy's share of the run instead."""
    r = target.relora
    if proxy.relora.warm_start_steps == 0 and not proxy.relora.warm_start_checkpoint:
        return []
    if r.warm_start_checkpoint or r.warm_start_steps:
        return []
    share = proxy.relora.warm_start_steps / proxy.train.steps
    return [
        f"relora.warm_start_checkpoint: null -> the proxy trained full-rank for its first "
        f"{proxy.relora.warm_start_steps} of {proxy.train.steps} steps; give a full-rank {target.model.name} "
        f"checkpoint of {share:.0%} of this run's tokens (about {round(share * target.train.steps)} steps) with "
        "--set relora.warm_start_checkpoint=PATH"
    ]


def lora_from_random_init(proxy, target) -> str | None:
    """LoRA without restarts on a frozen random base trains a low-rank function: a baseline."""
    r = target.relora
    if r.warm_start_checkpoint or r.warm_start_steps or proxy.relora.warm_start_steps:
        return None
    return (
        "lora: LoRA without restarts from a random init is a baseline, not a pretraining recipe (the frozen "
        "random base never changes)"
    )


def relora_to_target(raw: dict[str, Any], proxy, scaling: TargetScaling) -> None:
    """The rank by the width rule, the frozen base's precision by `relora_base_precision`, the warm start
    in the run only under `relora_warm_start: in_run` (else a checkpoint: `needs_warm_start_checkpoint`)
    and the restart interval by the `intervals` rule (longer than a restart's re-warmup)."""
    r, pr = raw["relora"], proxy.relora
    r["rank"] = scaling.rank(pr.rank)
    r["base_precision"] = scaling.rules.relora_base_precision
    in_run = scaling.rules.relora_warm_start == "in_run" and pr.warm_start_steps
    r["warm_start_steps"] = scaling.interval(pr.warm_start_steps) if in_run else 0
    r["relora_every"] = max(scaling.interval(pr.relora_every), pr.restart_warmup_steps + 1)


def warm_start_too_large(cfg, phase: str, phase_bytes: int) -> list[str]:
    """Export's advice when the full-rank warm start is the phase that does not fit."""
    if not phase.startswith(WARM_START_PHASE):
        return []
    return [
        f"relora.warm_start_steps: {cfg.relora.warm_start_steps} -> the full-rank warm start needs "
        f"{phase_bytes / 2**30:.2f} GiB; --set relora.warm_start_steps=0 --set relora.warm_start_checkpoint=PATH "
        "(a full-rank checkpoint trained elsewhere)"
    ]


# On one GPU at the target: 8-bit LoRA moments; the frozen base precision is export's rule (int8 by default).
RELORA_SINGLE_GPU = (("relora.inner_optimizer", "adamw8bit"),)
RELORA_UPDATE_RULE = ("relora.inner_optimizer", "relora.base_precision")

register(
    "relora",
    OptimizerEntry(
        build=lambda model, cfg: ReLoRAMethod(model, cfg, restarts=True),
        check=check_relora,
        schedule=jagged_cosine,
        settling_windows=settling_windows,
        estimate_state=estimate_lora,
        summarize=summarize_lora,
        estimate_flops=estimate_lora_flops,
        description="ReLoRA: LoRA with periodic merge-and-restart, pruned moments, jagged cosine",
        sections=("relora",),
        colour="#d62728",
        single_gpu=RELORA_SINGLE_GPU,
        update_rule_keys=RELORA_UPDATE_RULE,
        export_inputs=needs_warm_start_checkpoint,
        rank_key="relora.rank",
        target_mapping=relora_to_target,
        export_fit_advice=warm_start_too_large,
    ),
)
register(
    "lora",
    OptimizerEntry(
        build=lambda model, cfg: ReLoRAMethod(model, cfg, restarts=False),
        check=check_lora,
        schedule=jagged_cosine,
        settling_windows=settling_windows,
        estimate_state=estimate_lora,
        summarize=summarize_lora,
        estimate_flops=estimate_lora_flops,
        description="LoRA on a frozen base (optionally after a full-rank warm start), no restarts",
        sections=("relora",),
        colour="#ff7f0e",
        single_gpu=RELORA_SINGLE_GPU,
        update_rule_keys=RELORA_UPDATE_RULE,
        export_refusal=lora_from_random_init,
        export_inputs=needs_warm_start_checkpoint,
        rank_key="relora.rank",
        target_mapping=relora_to_target,
        export_fit_advice=warm_start_too_large,
    ),
)
