"""Declarative search spaces (YAML or Python) for sweeps, and their validation against the model."""

from ranktune.search_spaces.presets import PRESETS
from ranktune.search_spaces.space import Branches, Param, SearchSpace
from ranktune.search_spaces.spec import SweepSpec, load_spec, spec_from_dict

__all__ = ["PRESETS", "Branches", "Param", "SearchSpace", "SweepSpec", "load_spec", "spec_from_dict"]
