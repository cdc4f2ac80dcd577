"""Training-memory estimator: bytes of weights, gradients, optimizer state, activations and overhead.

    estimate = estimate_memory(cfg)              # a TrainConfig; the peak phase of the run
    estimate.total, estimate.fits(24 * GIB)

Shapes come from the model itself, built on the `meta` device. What a method keeps (optimizer state,
frozen or quantized weights, step temporaries) is the method's own count: the `estimate_state` of its
registry entry, written next to the code that allocates the state (see optim/registry.py for the
contract) and checked against `Trainer.memory_metrics()` in tests/test_memory.py. This module adds what
every method shares: gradients, activations, logits, autocast copies and the fixed overhead.

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

from dataclasses import dataclass, field, replace
from functools import cache

from ranktune.trainables.config import ConfigError, TrainConfig
from ranktune.trainables.data import Tokenizer
from ranktune.trainables.model import LlamaConfig, build_model
from ranktune.trainables.optim import OPTIMIZERS, ParamShape, PhaseState
from ranktune.trainables.optim.registry import LAYER_PREFIX, Device

FIRST_LAYER = LAYER_PREFIX + "0."

GIB = 2**30
# 1000x the largest dense models trained so far: beyond it a figure means a typo, not a plan.
MAX_PARAMETERS = 10**15
# CUDA context with cuBLAS / cuDNN handles and workspaces (about 0.5-0.8 GiB on recent GPUs with lazy
# module loading) plus caching-allocator fragmentation. Counted on CUDA only: on CPU it is the
# process's own footprint, not part of any budget.
DEFAULT_CUDA_OVERHEAD_GIB = 1.0


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
    host: dict[str, int] = field(default_factory=dict)  # host-memory bytes by category, not in `total`

    @property
    def optimizer_state(self) -> int:
        return sum(self.optimizer.values())

    @property
    def total(self) -> int:
        return (
            self.weights
            + self.gradients
            + self.optimizer_state
            + self.activations
            + self.logits
            + self.autocast_weight_copies
            + self.step_temporaries
            + self.overhead
        )

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

    def host_rows(self) -> list[tuple[str, int]]:
        return [(f"host memory: {k}", v) for k, v in self.host.items()]

    def fits(self, budget_bytes: float) -> bool:
        return self.total <= budget_bytes

    def as_dict(self) -> dict:
        return {
            "phase": self.phase,
            "total_bytes": self.total,
            "weights": self.weights,
            "gradients": self.gradients,
            "optimizer": dict(self.optimizer),
            "optimizer_state": self.optimizer_state,
            "activations": self.activations,
            "logits": self.logits,
            "autocast_weight_copies": self.autocast_weight_copies,
            "step_temporaries": self.step_temporaries,
            "overhead": self.overhead,
            "notes": list(self.notes),
            "host": dict(self.host),
        }


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


@cache
def _model_layout(llama: LlamaConfig) -> tuple[tuple[str, tuple[int, ...], str, int], ...]:
    """(name, shape, owning module's class, count) of the model's parameters: the model is built on the
    meta device with one decoder layer, whose tensors stand for all `num_layers` of them."""
    model = build_model(replace(llama, num_layers=1), "meta")
    layout = []
    for module_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            full_name = f"{module_name}.{name}" if module_name else name
            count = llama.num_layers if full_name.startswith(FIRST_LAYER) else 1
            layout.append((full_name, tuple(p.shape), type(module).__name__, count))
    return tuple(layout)


def model_shapes(llama: LlamaConfig, precision: str) -> tuple[ParamShape, ...]:
    """The parameters the trainer builds, as the methods' `estimate_state` receives them."""
    value_bytes = weight_bytes_per_value(precision)
    return tuple(ParamShape(n, shape, module, value_bytes, count) for n, shape, module, count in _model_layout(llama))


@cache
def _sentencepiece_vocab(path: str) -> int:
    return Tokenizer(path).vocab_size


def vocab_size(cfg: TrainConfig) -> int:
    """The tokenizer's vocabulary (synthetic data: its own): the trainer sizes the embeddings and head by it."""
    from ranktune.trainables.corpus_tokenizer import corpus_vocab_size

    if cfg.data.source == "synthetic":
        return cfg.data.vocab_size
    trained = corpus_vocab_size(cfg.data.tokenizer)  # corpus:<size> has exactly <size> pieces
    return trained if trained is not None else _sentencepiece_vocab(cfg.data.tokenizer)


def weight_bytes_per_value(precision: str) -> int:
    return 2 if precision == "bf16" else 4  # bf16-mixed keeps fp32 weights


def activation_bytes_per_value(precision: str) -> int:
    return 4 if precision == "fp32" else 2


# ---------------------------------------------------------------------------------- activations


def layer_activation_bytes_per_token(llama: LlamaConfig, precision: str, saved_values_per_token: int = 0) -> int:
    """Saved-for-backward bytes of one decoder block per token (see the module docstring); the method
    may save `saved_values_per_token` more values (LoRA's A x) in the activation dtype."""
    c, i, nh = llama.hidden_size, llama.intermediate_size, llama.num_heads
    a = activation_bytes_per_value(precision)
    residual = 2 if precision == "bf16" else 4
    hidden_tensors = 10 if precision == "bf16-mixed" else 7  # autocast casts the norm output per projection
    norms = 2 * (4 + residual) * c  # each RMSNorm keeps its fp32 input and its normalised output
    return hidden_tensors * a * c + norms + 4 * a * i + 4 * nh + saved_values_per_token * a


def activation_estimate(llama: LlamaConfig, cfg: TrainConfig, saved_values_per_token: int = 0) -> tuple[int, int]:
    """(decoder + final norm activations, logits and loss) bytes for one micro-batch."""
    precision = cfg.train.precision
    tokens = cfg.train.micro_batch_size * cfg.data.seq_len
    a = activation_bytes_per_value(precision)
    residual = 2 if precision == "bf16" else 4
    per_layer = layer_activation_bytes_per_token(llama, precision, saved_values_per_token) * tokens
    if cfg.model.activation_checkpointing:
        # Each block keeps its input; backward recomputes one block at a time.
        layers = llama.num_layers * residual * llama.hidden_size * tokens + per_layer
    else:
        layers = llama.num_layers * per_layer
    final_norm = ((4 + residual) + a) * llama.hidden_size * tokens  # norm and the head's input
    fp32_copy = 0 if a == 4 else 4  # logits.float() is a no-op in fp32
    logits = tokens * llama.vocab_size * (a + fp32_copy + 4 + 4)  # head out, fp32 copy, log-softmax, its grad
    return layers + final_norm, logits


# ---------------------------------------------------------------------------------- the estimate


def config_summary(cfg: TrainConfig) -> str:
    t = cfg.train
    parts = [
        f"model {cfg.model.name}",
        f"optim {cfg.optim.name}",
        f"precision {t.precision}",
        f"micro-batch {t.micro_batch_size} x seq {cfg.data.seq_len} (batch {t.batch_size})",
        f"activation checkpointing {'on' if cfg.model.activation_checkpointing else 'off'}",
    ]
    entry = OPTIMIZERS.get(cfg.optim.name)
    if entry is not None and entry.summarize is not None:
        parts.append(entry.summarize(cfg))
    return ", ".join(parts)


def estimate_run(cfg: TrainConfig, device: Device = "cuda", overhead_gib: float | None = None) -> RunEstimate:
    """Memory of every phase of the run `cfg` describes, on `device` ("cuda" counts the fixed overhead)."""
    name = cfg.optim.name
    entry = OPTIMIZERS.get(name)
    if entry is None or entry.estimate_state is None:
        counted = sorted(n for n, e in OPTIMIZERS.items() if e.estimate_state is not None)
        reason = "is not registered" if entry is None else "was registered without an estimate_state"
        raise ConfigError([f"optim.name: {name!r} {reason} -> one of {counted}"])
    llama = cfg.model.llama_config(vocab_size=vocab_size(cfg))
    shapes = model_shapes(llama, cfg.train.precision)
    parameters = sum(p.numel * p.count for p in shapes)
    if parameters > MAX_PARAMETERS:
        m = cfg.model
        raise ConfigError(
            [
                f"model: {parameters:.3g} parameters (num_layers {llama.num_layers}, hidden_size {llama.hidden_size}, "
                f"intermediate_size {llama.intermediate_size}) -> at most {MAX_PARAMETERS:.0e} for an estimate; "
                f"check model.num_layers / model.hidden_size / model.intermediate_size of preset {m.name!r}"
            ]
        )
    if overhead_gib is None:
        overhead_gib = DEFAULT_CUDA_OVERHEAD_GIB if device == "cuda" else 0.0
    overhead = int(overhead_gib * GIB)
    states = entry.estimate_state(shapes, cfg, device)
    return RunEstimate(config_summary(cfg), tuple(phase_estimate(s, shapes, llama, cfg, overhead) for s in states))


def phase_estimate(
    state: PhaseState, shapes: tuple[ParamShape, ...], llama: LlamaConfig, cfg: TrainConfig, overhead: int
) -> MemoryEstimate:
    """A method's phase plus what every method has: gradients, activations, logits, autocast copies."""
    notes = list(state.notes)
    grads = sum(p.numel * p.count * p.value_bytes for p in state.trainable)
    if state.gradient_bytes is not None:
        grads = state.gradient_bytes
    elif state.one_gradient_at_a_time:
        accum = cfg.grad_accum_steps
        if accum == 1:
            grads = max(p.numel * p.value_bytes for p in state.trainable)
            notes.append("per-layer updates: one gradient alive at a time (no accumulation)")
        else:
            notes.append(
                f"per-layer updates with {accum} accumulation steps: full gradients coexist between "
                "micro-batches; set train.micro_batch_size = train.batch_size to save them"
            )
    activations, logits = activation_estimate(llama, cfg, state.saved_values_per_token)
    copies = 0
    if cfg.train.precision == "bf16-mixed":
        # Autocast caches a bf16 copy of every Linear weight for the forward; backward keeps them.
        copies = 2 * sum(p.numel * p.count for p in shapes if p.module == "Linear")
    return MemoryEstimate(
        phase=state.phase,
        weights=state.weights,
        gradients=grads,
        optimizer=dict(state.optimizer),
        activations=activations,
        logits=logits,
        autocast_weight_copies=copies,
        step_temporaries=state.step_temporaries,
        overhead=overhead,
        notes=tuple(notes),
        host=dict(state.host_bytes),
    )


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
    host_labels = [label for p in run.phases for label, _ in p.host_rows()]
    for label in dict.fromkeys(host_labels):  # not device memory: below the device total
        table.add_row(label, *(gib(dict(p.host_rows()).get(label, 0)) for p in run.phases), style="dim")
    console.print(table)
    for note in peak.notes:
        console.print(f"note: {note}")
    v = verdict(run, budget_gib)
    console.print(f"[{'green' if v.fits else 'red'}]{v.line()}[/]")
    return v
