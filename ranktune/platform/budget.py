"""The card ranktune plans single-GPU runs for: 24 GiB (RTX 4090 class).

Its own import-free module so that the CLI can show the default in `--help` without importing torch.
"""

DEFAULT_BUDGET_GIB = 24.0
