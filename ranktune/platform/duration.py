"""How long a run takes on a card: tokens, FLOPs and wall time, stated with the throughput they assume.

    d = estimate_duration(cfg, "rtx4090")          # a TrainConfig, a key of CARDS
    d.seconds, d.flops.total, "\n".join(d.lines())

FLOPs (per token, N = every parameter of the model, T = tokens):
- model: 6 N T (forward 2 N, backward 4 N), plus the attention scores 6 L S C per token (S = seq_len);
- recompute: with activation checkpointing each decoder layer's forward runs again in backward:
  2 N_layers T (+ 2 L S C of attention), N_layers = the decoder layers' parameters;
- the method's own work, from its registry entry's `estimate_flops` (optim/registry.py): per
  micro-batch (per-layer low-rank accumulation), per step, per refresh (SVD, ReLoRA merge), per token.

Wall time = FLOPs / (peak bf16 TFLOPS x utilisation) of the card in `CARDS`, an assumption printed
with the figure. A measured tokens/s for the same card, model, method, micro-batch and sequence length
(`benchmarks/gpu_check.py --record`, see MEASURED_PATHS) replaces the assumed step rate and is marked
measured; the refreshes are still counted at the assumed rate.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from ranktune.platform.cards import DEFAULT_CARD, Card, card
from ranktune.trainables.config import ConfigError, TrainConfig
from ranktune.trainables.optim import OPTIMIZERS, MethodFlops

# Chinchilla's compute-optimal ratio (Hoffmann et al. 2022): about 20 training tokens per parameter.
COMPUTE_OPTIMAL_TOKENS_PER_PARAMETER = 20
SECONDS_PER_DAY = 86_400


# ---------------------------------------------------------------------------------- measured figures


@dataclass(frozen=True)
class MeasuredThroughput:
    """Tokens/s of one training configuration on one card, as benchmarks/gpu_check.py measured it."""

    card: str  # a CARDS key
    device_name: str
    model: str
    optim: str
    micro_batch_size: int
    seq_len: int
    activation_checkpointing: bool
    tokens_per_s: float
    date: str

    def matches(self, cfg: TrainConfig, card_key: str) -> bool:
        return (
            self.card,
            self.model,
            self.optim,
            self.micro_batch_size,
            self.seq_len,
            self.activation_checkpointing,
        ) == (
            card_key,
            cfg.model.name,
            cfg.optim.name,
            cfg.train.micro_batch_size,
            cfg.data.seq_len,
            cfg.model.activation_checkpointing,
        )


def measured_paths() -> list[Path]:
    """Committed measurements next to this module, then the user's own (gpu_check --record's default)."""
    cache = Path(os.environ.get("RANKTUNE_CACHE", "~/.cache/ranktune")).expanduser()
    return [Path(__file__).with_name("measured_throughput.json"), cache / "measured_throughput.json"]


def load_measured(paths: list[Path] | None = None) -> list[MeasuredThroughput]:
    records: list[MeasuredThroughput] = []
    for path in paths if paths is not None else measured_paths():
        if path.is_file():
            try:
                records += [MeasuredThroughput(**r) for r in json.loads(path.read_text())]
            except (ValueError, TypeError) as exc:
                fields = ", ".join(MeasuredThroughput.__dataclass_fields__)
                problem = f"measured throughput: {str(path)!r} -> a JSON list of records ({fields}): {exc}"
                raise ConfigError([problem]) from None
    return records


def record_measured(path: Path, record: MeasuredThroughput) -> None:
    """Add (or replace: same card and configuration) a measurement in `path`."""
    existing = load_measured([path])
    key = lambda r: (r.card, r.model, r.optim, r.micro_batch_size, r.seq_len, r.activation_checkpointing)  # noqa: E731
    kept = [r for r in existing if key(r) != key(record)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(r) for r in [*kept, record]], indent=2) + "\n")


# ---------------------------------------------------------------------------------- FLOPs


@dataclass(frozen=True)
class RunFlops:
    """FLOPs of a whole run by part (see the module docstring)."""

    parameters: int
    layer_parameters: int  # the decoder layers' (what activation checkpointing recomputes)
    tokens: int
    steps: int
    model: float  # 6 N T
    attention: float  # 6 L S C T
    recompute: float  # (2 N_layers + 2 L S C) T with activation checkpointing, else 0
    method: float  # the method's per-micro-batch, per-step, per-refresh and per-token work
    method_refresh: float  # the refresh part of `method`
    method_flops: MethodFlops

    @property
    def total(self) -> float:
        return self.model + self.attention + self.recompute + self.method

    @property
    def per_step_without_refresh(self) -> float:
        return (self.total - self.method_refresh) / self.steps


def run_flops(cfg: TrainConfig) -> RunFlops:
    from ranktune.platform.memory import model_shapes, vocab_size

    llama = cfg.model.llama_config(vocab_size=vocab_size(cfg))
    shapes = model_shapes(llama, cfg.train.precision)
    n = sum(p.numel * p.count for p in shapes)
    n_layers = sum(p.numel * p.count for p in shapes if p.name.startswith("layers."))
    steps = cfg.train.steps
    tokens = steps * cfg.tokens_per_step
    attention_per_token = 2 * llama.num_layers * cfg.data.seq_len * llama.hidden_size  # forward, QK^T and AV
    recompute = (2 * n_layers + attention_per_token) * tokens if cfg.model.activation_checkpointing else 0
    entry = OPTIMIZERS.get(cfg.optim.name)
    m = entry.estimate_flops(shapes, cfg) if entry is not None and entry.estimate_flops else MethodFlops()
    refreshes = steps // m.refresh_every if m.refresh_every else 0
    refresh = refreshes * m.per_refresh
    method = steps * (cfg.grad_accum_steps * m.per_micro_batch + m.per_step) + refresh + m.per_token * tokens
    return RunFlops(
        parameters=n,
        layer_parameters=n_layers,
        tokens=tokens,
        steps=steps,
        model=6.0 * n * tokens,
        attention=3.0 * attention_per_token * tokens,
        recompute=float(recompute),
        method=method,
        method_refresh=refresh,
        method_flops=m,
    )


# ---------------------------------------------------------------------------------- duration


@dataclass(frozen=True)
class Duration:
    flops: RunFlops
    card: Card
    flops_per_s: float  # the assumed rate (peak x utilisation)
    source: Literal["assumed", "measured"]
    measured: MeasuredThroughput | None

    @property
    def step_seconds(self) -> float:
        """One optimizer step (without refreshes): measured tokens/s when known, else FLOPs / rate."""
        if self.measured is not None:
            return self.flops.tokens / self.flops.steps / self.measured.tokens_per_s
        return self.flops.per_step_without_refresh / self.flops_per_s

    @property
    def refresh_seconds(self) -> float:
        return self.flops.method_refresh / self.flops_per_s

    @property
    def seconds(self) -> float:
        return self.flops.steps * self.step_seconds + self.refresh_seconds

    @property
    def tokens_per_s(self) -> float:
        return self.flops.tokens / self.seconds

    @property
    def compute_optimal_tokens(self) -> int:
        return COMPUTE_OPTIMAL_TOKENS_PER_PARAMETER * self.flops.parameters

    def rate_line(self) -> str:
        c = self.card
        assumed = (
            f"{c.name}: {c.peak_bf16_tflops:g} TFLOPS peak bf16 x {100 * c.utilisation:.0f}% utilisation (assumed)"
        )
        if self.measured is None:
            return assumed
        m = self.measured
        return (
            f"{c.name}: measured {m.tokens_per_s:,.0f} tokens/s on {m.device_name} ({m.date}, micro-batch "
            f"{m.micro_batch_size}); refreshes at {assumed}"
        )

    def lines(self) -> list[str]:
        f = self.flops
        lines = [
            f"Tokens: {f.steps:,} steps x {f.tokens // f.steps:,} = {f.tokens:,} ({f.tokens / 1e9:.2f}B); "
            f"compute-optimal for {f.parameters / 1e9:.2f}B parameters: ~{self.compute_optimal_tokens / 1e9:.0f}B "
            f"({COMPUTE_OPTIMAL_TOKENS_PER_PARAMETER} tokens/parameter), this run is "
            f"{f.tokens / self.compute_optimal_tokens:.2f}x that",
            f"FLOPs: {f.total:.3g} = 6NT {f.model:.3g} + attention {f.attention:.3g} + recompute (activation "
            f"checkpointing) {f.recompute:.3g} + method {f.method:.3g} (of which refreshes {f.method_refresh:.3g})",
            *(f"  method: {note}" for note in f.method_flops.notes),
            f"Throughput: {self.rate_line()}",
            f"Wall time: {format_days(self.seconds)} ({self.step_seconds:.2f} s per step, "
            f"{self.tokens_per_s:,.0f} tokens/s{', measured' if self.source == 'measured' else ', assumed'})",
        ]
        return lines


def format_days(seconds: float) -> str:
    if seconds >= SECONDS_PER_DAY:
        return f"{seconds / SECONDS_PER_DAY:.1f} days"
    return f"{seconds / 3600:.1f} hours"


def estimate_duration(
    cfg: TrainConfig, card_key: str = DEFAULT_CARD, measured: list[MeasuredThroughput] | None = None
) -> Duration:
    c = card(card_key)
    records = load_measured() if measured is None else measured
    match = next((r for r in reversed(records) if r.matches(cfg, card_key)), None)
    return Duration(
        flops=run_flops(cfg),
        card=c,
        flops_per_s=c.peak_bf16_tflops * 1e12 * c.utilisation,
        source="measured" if match else "assumed",
        measured=match,
    )


# ---------------------------------------------------------------------------------- choices


@dataclass(frozen=True)
class MicroBatchChoice:
    """The fastest of the micro-batches that fit, and the runner-up, by estimated step time."""

    chosen: TrainConfig
    chosen_step_s: float
    runner_up: TrainConfig | None
    runner_up_step_s: float | None

    def line(self) -> str:
        c = self.chosen.train.micro_batch_size
        text = f"micro-batch {c}: {self.chosen_step_s:.2f} s per step"
        if self.runner_up is None:
            return text + " (the only one that fits)"
        r = self.runner_up.train.micro_batch_size
        return (
            f"{text}, the fastest that fits; runner-up micro-batch {r}: {self.runner_up_step_s:.2f} s "
            f"({100 * (self.runner_up_step_s / self.chosen_step_s - 1):+.1f}%)"
        )


def fastest_micro_batch(
    fitting: list[TrainConfig], card_key: str = DEFAULT_CARD, measured: list[MeasuredThroughput] | None = None
) -> MicroBatchChoice:
    """Rank configs differing in micro-batch by step time; equal times go to the larger micro-batch
    (fewer micro-batches per step: fewer kernel launches and per-layer hooks, which FLOPs do not show)."""
    if not fitting:
        raise ValueError("fastest_micro_batch needs at least one config")
    timed = sorted(
        (
            (round(estimate_duration(c, card_key, measured).step_seconds, 6), -c.train.micro_batch_size, i)
            for i, c in enumerate(fitting)
        )
    )
    (t0, _, i0), rest = timed[0], timed[1:]
    if not rest:
        return MicroBatchChoice(fitting[i0], t0, None, None)
    t1, _, i1 = rest[0]
    return MicroBatchChoice(fitting[i0], t0, fitting[i1], t1)


# ---------------------------------------------------------------------------------- sizing


@dataclass(frozen=True)
class RunBudget:
    """What a user can spend: tokens (`--tokens N`) or days of one card (`--days D`); exactly one."""

    tokens: int | None = None
    days: float | None = None

    def __post_init__(self) -> None:
        if (self.tokens is None) == (self.days is None):
            raise ConfigError(["--tokens / --days: give exactly one of them"])
        if self.tokens is not None and self.tokens < 1:
            raise ConfigError([f"--tokens: {self.tokens} -> a positive number of training tokens"])
        if self.days is not None and not self.days > 0:
            raise ConfigError([f"--days: {self.days} -> a positive number of days"])


def sized_steps(
    cfg: TrainConfig, budget: RunBudget, card_key: str = DEFAULT_CARD, measured: list[MeasuredThroughput] | None = None
) -> tuple[int, str]:
    """Optimizer steps of `cfg`'s tokens per step that spend `budget`, and a line saying how.

    Tokens: whole steps, rounded down. Days: the step time (plus each step's share of the method's
    refreshes) of `cfg` on the card, rounded down to whole steps, so the estimate stays within the days."""
    per_step_tokens = cfg.tokens_per_step
    if budget.tokens is not None:
        steps = budget.tokens // per_step_tokens
        why = (
            f"--tokens {budget.tokens:,}: {steps:,} steps x {per_step_tokens:,} tokens per step = "
            f"{steps * per_step_tokens:,} tokens"
        )
        if steps * per_step_tokens != budget.tokens:
            why += f" (rounded down to whole steps, {budget.tokens - steps * per_step_tokens:,} tokens short)"
    else:
        d = estimate_duration(cfg, card_key, measured)
        m = d.flops.method_flops
        refresh_share = m.per_refresh / m.refresh_every / d.flops_per_s if m.refresh_every else 0.0
        per_step_s = d.step_seconds + refresh_share
        steps = int(budget.days * SECONDS_PER_DAY // per_step_s)
        why = (
            f"--days {budget.days:g} on {d.card.name}: {per_step_s:.3f} s per step ({d.source}) -> {steps:,} "
            f"steps x {per_step_tokens:,} tokens per step = {steps * per_step_tokens:,} tokens"
        )
    if steps < 1:
        raise ConfigError([f"{why.split(':')[0]}: less than one step of {per_step_tokens:,} tokens -> a larger budget"])
    return steps, why
