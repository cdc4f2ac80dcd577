"""LLaMA decoder, read top to bottom: RMSNorm, rotary embeddings, attention, SwiGLU MLP, block, model.

Shapes follow the GaLore / ReLoRA papers (vocab 32000, untied embeddings, no biases).
Comments give tensor shapes as (B, T, C) = (batch, sequence, hidden); nh = heads, hs = head size.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

# The decoder layer's attention and MLP projections: what the low-rank methods target by default.
ATTENTION_MLP_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class LlamaConfig:
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_layers: int
    vocab_size: int = 32000
    max_seq_len: int = 1024
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"model.hidden_size={self.hidden_size} is not divisible by model.num_heads={self.num_heads}"
            )
        if (self.hidden_size // self.num_heads) % 2:
            raise ValueError("head size (hidden_size / num_heads) must be even for rotary embeddings")

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads


# Paper configs (GaLore table / ReLoRA table) plus tiny ones that train on a laptop CPU in minutes.
MODEL_PRESETS: dict[str, LlamaConfig] = {
    "tiny": LlamaConfig(hidden_size=128, intermediate_size=344, num_heads=4, num_layers=2, max_seq_len=256),
    "tiny4": LlamaConfig(hidden_size=256, intermediate_size=688, num_heads=4, num_layers=4, max_seq_len=256),
    "60m": LlamaConfig(hidden_size=512, intermediate_size=1376, num_heads=8, num_layers=8),
    "130m": LlamaConfig(hidden_size=768, intermediate_size=2048, num_heads=12, num_layers=12),
    "350m": LlamaConfig(hidden_size=1024, intermediate_size=2736, num_heads=16, num_layers=24),
    "1b": LlamaConfig(hidden_size=2048, intermediate_size=5461, num_heads=32, num_layers=24),
    "7b": LlamaConfig(hidden_size=4096, intermediate_size=11008, num_heads=32, num_layers=32),
}


def model_config(name: str, **overrides) -> LlamaConfig:
    """Look up a named preset, optionally overriding fields (e.g. vocab_size for another tokenizer)."""
    if name not in MODEL_PRESETS:
        raise KeyError(f"unknown model {name!r}; choose one of {sorted(MODEL_PRESETS)}")
    return replace(MODEL_PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 even under bf16 autocast: the mean of squares loses precision in bf16.
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def rotary_tables(cfg: LlamaConfig, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of shape (max_seq_len, hs/2) for rotary position embeddings."""
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_size, 2, device=device).float() / cfg.head_size))
    positions = torch.arange(cfg.max_seq_len, device=device).float()
    angles = torch.outer(positions, inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., :hs/2], x[..., hs/2:]) of x (B, nh, T, hs) by position-dependent angles."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_size = cfg.head_size
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False)
        self.o_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        # (B, T, C) -> (B, nh, T, hs)
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_size).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.num_heads, self.head_size).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.num_heads, self.head_size).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        # SDPA picks flash / memory-efficient kernels on CUDA and a fused math kernel on CPU.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, C))


class SwiGLU(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class Llama(nn.Module):
    def __init__(
        self, cfg: LlamaConfig, activation_checkpointing: bool = False, dtype: torch.dtype = torch.float32
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.activation_checkpointing = activation_checkpointing
        # Each piece is initialised in fp32 and cast to `dtype` before the next is built, so a bf16
        # model never holds more than one block in fp32 (a whole 7b in fp32 is 27 GB: more than a 24 GB card).
        self.embed_tokens = initialized(nn.Embedding(cfg.vocab_size, cfg.hidden_size), dtype)
        self.layers = nn.ModuleList(initialized(Block(cfg), dtype) for _ in range(cfg.num_layers))
        self.norm = initialized(RMSNorm(cfg.hidden_size, cfg.norm_eps), dtype)
        self.lm_head = initialized(nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False), dtype)
        # Rotary tables are derived data, not parameters: recomputed on load, never checkpointed.
        cos, sin = rotary_tables(cfg)
        self.register_buffer("rope_cos", cos.to(dtype), persistent=False)
        self.register_buffer("rope_sin", sin.to(dtype), persistent=False)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """idx (B, T) token ids -> logits (B, T, vocab); with targets, also the mean cross-entropy."""
        B, T = idx.shape
        if T > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds model max_seq_len {self.cfg.max_seq_len}")
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        x = self.embed_tokens(idx)
        for block in self.layers:
            if self.activation_checkpointing and self.training:
                # Recompute the block in backward instead of keeping its activations.
                x = checkpoint(block, x, cos, sin, use_reentrant=False)
            else:
                x = block(x, cos, sin)
        logits = self.lm_head(self.norm(x))
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss


def init_weights(module: nn.Module) -> None:
    # LLaMA-style init: normal(0, 0.02) for every matrix, ones for norms (set in RMSNorm).
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)


def initialized(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """`module` with LLaMA's init drawn in fp32, then cast to `dtype`."""
    module.apply(init_weights)
    return module.to(dtype)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_model(
    cfg: LlamaConfig,
    device: str | torch.device = "cpu",
    activation_checkpointing: bool = False,
    dtype: torch.dtype = torch.float32,
) -> Llama:
    """Build on `device` in `dtype`; with device='meta' nothing is allocated (used for parameter counts of 7b)."""
    with torch.device(device):
        return Llama(cfg, activation_checkpointing=activation_checkpointing, dtype=dtype)
