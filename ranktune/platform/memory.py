"""Training-memory estimator: bytes of weights, gradients, optimizer state, activations and overhead.

    estimate = estimate_memory(cfg)              # a TrainConfig; the peak phase of the run
    estimate.total, estimate.fits(24 * GIB)

Shapes come from the model itself, built on the `meta` device, and the projected / wrapped layers are
picked with the methods' own targeting rules, so the count follows the code rather than a copy of it.
What each optimizer keeps per parameter follows what the implementations allocate (checked against
`Trainer.memory_metrics()` in tests/test_memory.py):

    adamw                exp_avg + exp_avg_sq in the parameter dtype, plus a 0-d fp32 `step` tensor
    adamw8bit            bitsandbytes: uint8 state1 + state2 and one fp32 absmax per block of 256 per
                         moment; tensors under 4096 elements keep fp32 moments; two 256-entry fp32
                         code maps (qmap) shared by the optimizer
    adafactor            torch: a row (m) and a column (n) second moment per matrix, the full
                         second moment for vectors, no first moment, a 0-d fp32 `step`
    galore_*             the inner optimizer's state on the projected (low-rank) gradient, plus the
                         projector in the gradient dtype; std: moments 2 r max(m, n), projector
                         r min(m, n); untargeted tensors get the plain inner state
    relora / lora        frozen base (training dtype, bf16, or int8 + one fp32 absmax per row),
                         LoRA factors A (r, in) and B (out, r), moments for LoRA factors and the
                         untargeted tensors (embeddings, norms, head) only

Activations are per layer and per token (measured with saved-tensor hooks on CPU, see docs/memory.md):

    fp32        44 C + 16 I + 4 nh  bytes       C hidden, I intermediate, nh heads
    bf16        26 C +  8 I + 4 nh              (weights and activations in bf16)
    bf16-mixed  36 C +  8 I + 4 nh              (fp32 residual stream, bf16 autocast)

i.e. 7 hidden-sized tensors and 4 intermediate-sized tensors in the activation dtype, two RMSNorms
that keep an fp32 copy of their input, and SDPA's fp32 log-sum-exp (flash / memory-efficient SDPA
stores no T x T matrix). Autocast casts the shared norm output once per projection (q, k, v; gate,
up), three extra copies. With activation checkpointing a layer keeps only its input, and one layer's
activations are rebuilt at a time in backward. The loss adds B T V logits: the head output in the
activation dtype, its fp32 copy, the fp32 log-softmax and, in backward, its fp32 gradient.

Everything is summed, as in the GaLore paper's Figure 1: an upper bound, since activations are
freed during backward while gradients appear.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cache
from typing import Literal

from ranktune.trainables.config import TrainConfig
from ranktune.trainables.model import LlamaConfig

GIB = 2**30
DEFAULT_BUDGET_GIB = 24.0
# CUDA context with cuBLAS / cuDNN handles and workspaces (about 0.5-0.8 GiB on recent GPUs with lazy
# module loading) plus caching-allocator fragmentation. Counted on CUDA only: on CPU it is the
# process's own footprint, not part of any budget.
DEFAULT_CUDA_OVERHEAD_GIB = 1.0

BNB_BLOCK = 256  # bitsandbytes' blockwise optimizers quantize in blocks of 256 values (CPU and CUDA)
BNB_MIN_8BIT_SIZE = 4096  # smaller tensors keep 32-bit state
BNB_QMAPS_BYTES = 2 * 256 * 4  # signed + unsigned dynamic code maps, fp32, one pair per optimizer
STEP_TENSOR_BYTES = 4  # torch AdamW / Adafactor keep `step` as a 0-d fp32 tensor per parameter

Device = Literal["cuda", "cpu"]


# ---------------------------------------------------------------------------------- result


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes by category for one phase of a run (ReLoRA's full-rank warm start is its own phase)."""

    phase: str
    weights: int
    gradients: int
    optimizer: dict[str, int]  # the same categories as the method's state_bytes()
    activations: int
    logits: int
    autocast_weight_copies: int
    step_temporaries: int
    overhead: int
    notes: tuple[str, ...] = ()

    @property
    def optimizer_state(self) -> int:
        return sum(self.optimizer.values())

    @property
    def total(self) -> int:
        return (
            self.weights + self.gradients + self.optimizer_state + self.activations + self.logits
            + self.autocast_weight_copies + self.step_temporaries + self.overhead
        )  # fmt: skip

    def rows(self) -> list[tuple[str, int]]:
        rows = [("weights", self.weights), ("gradients", self.gradients)]
        rows += [(f"optimizer state: {k}", v) for k, v in self.optimizer.items()]
        rows += [
            ("activations", self.activations),
            ("logits + loss", self.logits),
            ("autocast weight copies", self.autocast_weight_copies),
            ("step temporaries", self.step_temporaries),
            ("fixed overhead", self.overhead),
        ]
        return rows

    def fits(self, budget_bytes: float) -> bool:
        return self.total <= budget_bytes

    def as_dict(self) -> dict:
        return {
            "phase": self.phase, "total_bytes": self.total, "weights": self.weights, "gradients": self.gradients,
            "optimizer": dict(self.optimizer), "optimizer_state": self.optimizer_state,
            "activations": self.activations, "logits": self.logits,
            "autocast_weight_copies": self.autocast_weight_copies, "step_temporaries": self.step_temporaries,
            "overhead": self.overhead, "notes": list(self.notes),
        }  # fmt: skip


@dataclass(frozen=True)
class RunEstimate:
    """Every phase of a run; the run needs as much as its largest phase."""

    config_summary: str
    phases: tuple[MemoryEstimate, ...]

    @property
    def peak(self) -> MemoryEstimate:
        return max(self.phases, key=lambda p: p.total)

    @property
    def total(self) -> int:
        return self.peak.total


# ---------------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class Param:
    name: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@cache
def model_params(llama: LlamaConfig) -> tuple[Param, ...]:
    from ranktune.trainables.model import build_model

    return tuple(Param(n, tuple(p.shape)) for n, p in build_model(llama, "meta").named_parameters())


@cache
def _sentencepiece_vocab(path: str) -> int:
    from ranktune.trainables.data import Tokenizer

    return Tokenizer(path).vocab_size


def vocab_size(cfg: TrainConfig) -> int:
    """The tokenizer's vocabulary (synthetic data: its own): the trainer sizes the embeddings and head by it."""
    if cfg.data.source == "synthetic":
        return cfg.data.vocab_size
    return _sentencepiece_vocab(cfg.data.tokenizer)


def weight_bytes_per_value(precision: str) -> int:
    return 2 if precision == "bf16" else 4  # bf16-mixed keeps fp32 weights


def activation_bytes_per_value(precision: str) -> int:
    return 4 if precision == "fp32" else 2


# ---------------------------------------------------------------------------------- optimizer state


def adamw_state(n: int, value_bytes: int) -> int:
    return 2 * n * value_bytes + STEP_TENSOR_BYTES


def adamw8bit_state(n: int) -> int:
    """bitsandbytes blockwise 8-bit Adam: codes and per-block absmax for both moments."""
    if n < BNB_MIN_8BIT_SIZE:
        return 2 * n * 4
    return 2 * n + 2 * 4 * math.ceil(n / BNB_BLOCK)


def adafactor_state(shape: tuple[int, ...], value_bytes: int, step_tensor: bool = True) -> int:
    values = shape[0] + shape[1] if len(shape) == 2 else math.prod(shape)
    return values * value_bytes + (STEP_TENSOR_BYTES if step_tensor else 0)


def inner_state(inner: str, shape: tuple[int, ...], value_bytes: int, torch_step: bool) -> int:
    """State of one tensor under an inner optimizer; `torch_step`: torch's optimizers keep a step tensor."""
    n = math.prod(shape)
    if inner == "adamw":
        return 2 * n * value_bytes + (STEP_TENSOR_BYTES if torch_step else 0)
    if inner == "adamw8bit":
        return adamw8bit_state(n)
    return adafactor_state(shape, value_bytes, step_tensor=torch_step)


def galore_low_rank(shape: tuple[int, int], rank: int, proj_type: str) -> tuple[tuple[int, int], int]:
    """(shape of the projected gradient, projector values) for one matrix."""
    from ranktune.trainables.optim.galore.projector import projected_sides

    m, n = shape
    left, right = projected_sides(shape, proj_type)
    low = (rank if left else m, rank if right else n)
    return low, (m * rank if left else 0) + (rank * n if right else 0)


# ---------------------------------------------------------------------------------- activations


def layer_activation_bytes_per_token(llama: LlamaConfig, precision: str, lora_rank: int = 0) -> int:
    """Saved-for-backward bytes of one decoder block per token (see the module docstring)."""
    c, i, nh = llama.hidden_size, llama.intermediate_size, llama.num_heads
    a = activation_bytes_per_value(precision)
    residual = 2 if precision == "bf16" else 4
    hidden_tensors = 10 if precision == "bf16-mixed" else 7  # autocast casts the norm output per projection
    norms = 2 * (4 + residual) * c  # each RMSNorm keeps its fp32 input and its normalised output
    lora = 7 * lora_rank * a  # A x, the (B, T, r) input of each LoRA B factor
    return hidden_tensors * a * c + norms + 4 * a * i + 4 * nh + lora


def activation_estimate(llama: LlamaConfig, cfg: TrainConfig, lora_rank: int = 0) -> tuple[int, int]:
    """(decoder + final norm activations, logits and loss) bytes for one micro-batch."""
    precision = cfg.train.precision
    tokens = cfg.train.micro_batch_size * cfg.data.seq_len
    a = activation_bytes_per_value(precision)
    residual = 2 if precision == "bf16" else 4
    per_layer = layer_activation_bytes_per_token(llama, precision, lora_rank) * tokens
    if cfg.model.activation_checkpointing:
        # Each block keeps its input; backward recomputes one block at a time.
        layers = llama.num_layers * residual * llama.hidden_size * tokens + per_layer
    else:
        layers = llama.num_layers * per_layer
    final_norm = ((4 + residual) + a) * llama.hidden_size * tokens  # norm and the head's input
    fp32_copy = 0 if a == 4 else 4  # logits.float() is a no-op in fp32
    logits = tokens * llama.vocab_size * (a + fp32_copy + 4 + 4)  # head out, fp32 copy, log-softmax, its grad
    return layers + final_norm, logits


# ---------------------------------------------------------------------------------- methods


@dataclass
class Tally:
    """What one phase holds besides activations; filled in by the method's estimator."""

    weights: int = 0
    trainable: list[Param] = field(default_factory=list)
    optimizer: dict[str, int] = field(default_factory=dict)
    step_temporaries: int = 0
    notes: list[str] = field(default_factory=list)


def plain_optimizer(name: str, params: tuple[Param, ...], e: int, device: Device) -> Tally:
    """adamw / adamw8bit / adafactor over every parameter (also ReLoRA's full-rank warm start)."""
    largest = max(p.numel for p in params)
    if name == "adamw":
        state = sum(adamw_state(p.numel, e) for p in params)
        # torch's foreach AdamW (the default on CUDA) allocates sqrt(exp_avg_sq) for all tensors at once.
        temp = sum(p.numel for p in params) * e if device == "cuda" else largest * e
    elif name == "adamw8bit":
        state = sum(adamw8bit_state(p.numel) for p in params) + BNB_QMAPS_BYTES
        temp = 0  # fused in-place kernel
    else:
        state = sum(adafactor_state(p.shape, e) for p in params)
        temp = 2 * largest * e  # row_var @ col_var and the update, one matrix at a time
    return Tally(
        weights=sum(p.numel for p in params) * e,
        trainable=list(params),
        optimizer={"moments": state},
        step_temporaries=temp,
    )


def galore_tally(cfg: TrainConfig, llama: LlamaConfig, params: tuple[Param, ...], e: int) -> Tally:
    from ranktune.trainables.model import build_model
    from ranktune.trainables.optim.galore.method import targeted_linears

    g, inner = cfg.galore, cfg.optim.name.removeprefix("galore_")
    projected = {f"{name}.weight" for name in targeted_linears(build_model(llama, "meta"), g.target_modules)}
    moments = projectors = regular = 0
    temp = 0
    for p in params:
        if p.name in projected:
            low, projector = galore_low_rank(p.shape, g.rank, g.proj_type)
            moments += inner_state(inner, low, e, torch_step=False)
            projectors += projector * e  # stored in the gradient dtype
            m, n = p.shape
            k = min(m, n)
            svd = (m * n + m * k + k * n + k) * 4  # fp32 copy of the gradient and its thin SVD
            temp = max(temp, svd + m * n * e)  # plus the projected-back full-rank update
        else:
            regular += inner_state(inner, p.shape, e, torch_step=False)
            if inner != "adamw8bit":
                temp = max(temp, 2 * p.numel * e)  # sqrt(v) + update (AdamW) or var estimate (Adafactor)
    return Tally(
        weights=sum(p.numel for p in params) * e,
        trainable=list(params),
        optimizer={"moments": moments, "projectors": projectors, "regular_params": regular},
        step_temporaries=temp,
    )


def lora_tally(cfg: TrainConfig, params: tuple[Param, ...], e: int, device: Device) -> Tally:
    from ranktune.trainables.optim.lora import is_target

    r = cfg.relora
    weights, temp = 0, 0
    lora: list[Param] = []
    others: list[Param] = []
    for p in params:
        module = p.name.removesuffix(".weight")
        if len(p.shape) == 2 and is_target(module, r.target_modules) and not p.name.startswith("embed"):
            out_f, in_f = p.shape
            if r.base_precision == "int8":
                weights += p.numel + out_f * 4  # int8 rows + fp32 absmax per output row
                temp = max(temp, p.numel * (4 + activation_bytes_per_value(cfg.train.precision)))
            else:
                weights += p.numel * (2 if r.base_precision == "bf16" else e)
                if r.base_precision == "bf16" and e != 2:
                    temp = max(temp, p.numel * e)  # re-materialised in the compute dtype, one layer at a time
            lora += [Param(f"{module}.lora_A", (r.rank, in_f)), Param(f"{module}.lora_B", (out_f, r.rank))]
        else:
            others.append(p)
    weights += sum(p.numel for p in lora + others) * e
    trainable = lora + others
    inner = r.inner_optimizer
    lora_state = sum(inner_state(inner, p.shape, e, torch_step=True) for p in lora)
    other_state = sum(inner_state(inner, p.shape, e, torch_step=True) for p in others)
    if inner == "adamw8bit":
        other_state += BNB_QMAPS_BYTES
    elif device == "cuda":
        temp = max(temp, sum(p.numel for p in trainable) * e)  # foreach AdamW
    # A restart merges in fp32: the base, B A and the sum, one layer at a time (not during backward).
    largest_target = max((p.shape[0] * q.shape[1] for p, q in zip(lora[1::2], lora[::2], strict=True)), default=0)
    if cfg.optim.name == "relora":
        temp = max(temp, 3 * largest_target * 4)
    return Tally(
        weights=weights,
        trainable=trainable,
        optimizer={"lora_moments": lora_state, "other_moments": other_state},
        step_temporaries=temp,
    )


# ---------------------------------------------------------------------------------- the estimate


def config_summary(cfg: TrainConfig) -> str:
    t = cfg.train
    parts = [
        f"model {cfg.model.name}", f"optim {cfg.optim.name}", f"precision {t.precision}",
        f"micro-batch {t.micro_batch_size} x seq {cfg.data.seq_len} (batch {t.batch_size})",
        f"activation checkpointing {'on' if cfg.model.activation_checkpointing else 'off'}",
    ]  # fmt: skip
    if cfg.optim.name.startswith("galore"):
        parts.append(f"galore rank {cfg.galore.rank}{', per-layer' if cfg.galore.per_layer else ''}")
    if cfg.optim.name in ("relora", "lora"):
        r = cfg.relora
        parts.append(f"lora rank {r.rank}, base {r.base_precision}, inner {r.inner_optimizer}")
    return ", ".join(parts)


def estimate_run(cfg: TrainConfig, device: Device = "cuda", overhead_gib: float | None = None) -> RunEstimate:
    """Memory of every phase of the run `cfg` describes, on `device` ("cuda" counts the fixed overhead)."""
    llama = cfg.model.llama_config(vocab_size=vocab_size(cfg))
    params = model_params(llama)
    e = weight_bytes_per_value(cfg.train.precision)
    name = cfg.optim.name
    if overhead_gib is None:
        overhead_gib = DEFAULT_CUDA_OVERHEAD_GIB if device == "cuda" else 0.0
    overhead = int(overhead_gib * GIB)
    accum = cfg.grad_accum_steps

    def phase(label: str, tally: Tally, lora_rank: int = 0, per_layer: bool = False) -> MemoryEstimate:
        notes = list(tally.notes)
        grads = sum(p.numel for p in tally.trainable) * e
        if per_layer:
            if accum == 1:
                grads = max(p.numel for p in tally.trainable) * e  # one gradient alive at a time
                notes.append("per-layer updates: one gradient alive at a time (no accumulation)")
            else:
                notes.append(
                    f"per-layer updates with {accum} accumulation steps: full gradients coexist between "
                    "micro-batches; set train.micro_batch_size = train.batch_size to save them"
                )
        activations, logits = activation_estimate(llama, cfg, lora_rank)
        copies = 0
        if cfg.train.precision == "bf16-mixed":
            # Autocast caches a bf16 copy of every Linear weight for the forward; backward keeps them.
            copies = 2 * sum(p.numel for p in params if len(p.shape) == 2 and not p.name.startswith("embed"))
        return MemoryEstimate(
            phase=label, weights=tally.weights, gradients=grads, optimizer=tally.optimizer,
            activations=activations, logits=logits, autocast_weight_copies=copies,
            step_temporaries=tally.step_temporaries, overhead=overhead, notes=tuple(notes),
        )  # fmt: skip

    if name in ("adamw", "adamw8bit", "adafactor"):
        phases = [phase("full-rank", plain_optimizer(name, params, e, device))]
    elif name.startswith("galore_"):
        phases = [phase("galore", galore_tally(cfg, llama, params, e), per_layer=cfg.galore.per_layer)]
    elif name in ("relora", "lora"):
        r = cfg.relora
        phases = []
        if r.warm_start_steps > 0 and not r.warm_start_checkpoint:
            warm = plain_optimizer(r.inner_optimizer, params, e, device)
            warm.optimizer = {"lora_moments": 0, "other_moments": warm.optimizer["moments"]}
            phases.append(phase(f"warm start (full-rank, {r.warm_start_steps} steps)", warm))
        phases.append(phase("LoRA", lora_tally(cfg, params, e, device), lora_rank=r.rank))
    else:
        from ranktune.trainables.config import ConfigError

        raise ConfigError([f"optim.name: {name!r} -> the memory estimator knows adamw, adamw8bit, adafactor, "
                           "galore_*, relora and lora"])  # fmt: skip
    return RunEstimate(config_summary(cfg), tuple(phases))


def estimate_memory(cfg: TrainConfig, device: Device = "cuda", overhead_gib: float | None = None) -> MemoryEstimate:
    """The run's peak phase."""
    return estimate_run(cfg, device, overhead_gib).peak


# ---------------------------------------------------------------------------------- verdict and table


@dataclass(frozen=True)
class Verdict:
    fits: bool
    total: int
    budget: int

    @property
    def headroom(self) -> int:
        return self.budget - self.total

    def line(self) -> str:
        pct = 100 * self.headroom / self.budget
        if self.fits:
            return f"fits: {gib(self.total)} of {gib(self.budget)}, headroom {gib(self.headroom)} ({pct:.1f}%)"
        return f"does not fit: {gib(self.total)} > {gib(self.budget)} by {gib(-self.headroom)}"


def verdict(estimate: MemoryEstimate | RunEstimate, budget_gib: float) -> Verdict:
    budget = int(budget_gib * GIB)
    return Verdict(fits=estimate.total <= budget, total=estimate.total, budget=budget)


def gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def render_estimate(run: RunEstimate, budget_gib: float, console=None) -> Verdict:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    peak = run.peak
    console.print(run.config_summary)
    table = Table()
    table.add_column("category")
    for p in run.phases:
        table.add_column(p.phase + (" (peak)" if p is peak and len(run.phases) > 1 else ""), justify="right")
    labels = [label for label, _ in peak.rows()]
    for p in run.phases:  # a warm start has no projector rows etc.: union of labels, in order
        labels += [label for label, _ in p.rows() if label not in labels]
    for label in labels:
        table.add_row(label, *(gib(dict(p.rows()).get(label, 0)) for p in run.phases))
    table.add_row("total", *(gib(p.total) for p in run.phases), style="bold")
    console.print(table)
    for note in peak.notes:
        console.print(f"note: {note}")
    v = verdict(run, budget_gib)
    console.print(f"[{'green' if v.fits else 'red'}]{v.line()}[/]")
    return v
