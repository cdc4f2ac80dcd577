"""APOLLO (Zhu et al. 2025) and Fira (Chen et al. 2024): AdamW state in a low-rank space sets the scale
of a full-rank gradient update.

    from ranktune.trainables.optim.apollo import ApolloAdamW, FiraAdamW
    opt = ApolloAdamW([{"params": matrices, "rank": 256, "update_proj_gap": 200, "scale": 1.0,
                        "proj": "random", "scale_type": "channel", "proj_type": "std"},
                       {"params": others}], lr=1e-2)

Modules: `random_projector` (APOLLO's seeded Gaussian projector), `optimizers` (the torch optimizers,
on GaLore's projector and step loop), `method` (the `apollo_adamw` / `apollo_mini` / `fira_adamw`
training methods, registered on import). See docs/apollo.md.
"""

from ranktune.trainables.optim.apollo import method  # noqa: F401  (registers the methods)
from ranktune.trainables.optim.apollo.method import ScaledGradientMethod
from ranktune.trainables.optim.apollo.optimizers import ApolloAdamW, FiraAdamW

__all__ = ["ApolloAdamW", "FiraAdamW", "ScaledGradientMethod"]
