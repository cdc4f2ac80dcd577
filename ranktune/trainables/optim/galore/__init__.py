"""GaLore (Zhao et al. 2024): train full-rank weights with optimizer state in a low-rank gradient subspace.

    from ranktune.trainables.optim.galore import GaLoreAdamW
    opt = GaLoreAdamW([{"params": matrices, "rank": 128, "update_proj_gap": 200, "scale": 0.25,
                        "proj_type": "std"}, {"params": others}], lr=1e-2)

Modules: `projector` (SVD and projection math), `optimizers` (the torch optimizers), `method` (the
`galore_adamw` / `galore_adamw8bit` / `galore_adafactor` training methods, registered on import).
See docs/galore.md.
"""

from ranktune.trainables.optim.galore import method  # noqa: F401  (registers the galore_* methods)
from ranktune.trainables.optim.galore.method import GaLoreMethod
from ranktune.trainables.optim.galore.optimizers import GaLoreAdafactor, GaLoreAdamW, GaLoreAdamW8bit

__all__ = ["GaLoreAdafactor", "GaLoreAdamW", "GaLoreAdamW8bit", "GaLoreMethod"]
