"""GPU models the duration estimate knows: peak dense bf16 throughput and an assumed utilisation.

Imports nothing heavy (no torch), so the command line can list the cards in `--help`.
"""

from __future__ import annotations

from dataclasses import dataclass

# Model FLOPs utilisation assumed when nothing was measured: well-tuned dense training on one GPU reaches
# 35-50%; single-GPU low-rank runs with per-layer hooks and checkpointing sit at the low end.
ASSUMED_UTILISATION = 0.40


@dataclass(frozen=True)
class Card:
    """One GPU model: dense bf16 tensor-core peak (with fp32 accumulation, no sparsity), from the vendor's sheet."""

    key: str
    name: str
    peak_bf16_tflops: float
    memory_gib: float
    utilisation: float = ASSUMED_UTILISATION


CARDS: dict[str, Card] = {
    c.key: c
    for c in (
        Card("rtx4090", "NVIDIA GeForce RTX 4090", 165.2, 24),
        Card("rtx3090", "NVIDIA GeForce RTX 3090", 71.0, 24),
        Card("a6000", "NVIDIA RTX A6000", 154.8, 48),
        Card("l40s", "NVIDIA L40S", 362.0, 48),
        Card("a100", "NVIDIA A100", 312.0, 80),
        Card("h100", "NVIDIA H100 SXM", 989.0, 80),
        Card("h200", "NVIDIA H200", 989.0, 141),
    )
}
DEFAULT_CARD = "rtx4090"  # the 24 GiB card the default --budget-gib stands for


def card(key: str) -> Card:
    if key not in CARDS:
        from ranktune.trainables.errors import ConfigError  # imports ranktune.trainables (torch): only on error

        raise ConfigError([f"--card: {key!r} -> one of {sorted(CARDS)}"])
    return CARDS[key]


def card_key_for_device_name(device_name: str) -> str | None:
    """The CARDS key of a `torch.cuda.get_device_name()` string ("NVIDIA H100 80GB HBM3" -> "h100")."""
    name = device_name.lower().replace(" ", "")
    for key in sorted(CARDS, key=len, reverse=True):
        if key in name:
            return key
    return None


__all__ = ["CARDS", "DEFAULT_CARD", "Card", "card", "card_key_for_device_name"]
