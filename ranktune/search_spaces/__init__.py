"""Declarative search spaces for sweeps and their validation (filled by the sweep work)."""
