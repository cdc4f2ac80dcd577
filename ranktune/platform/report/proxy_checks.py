"""Does the proxy resemble its target? Lines for every sweep's report (console, MLflow note, ladder).

1. Matrix share: the fraction of the model's parameters in the decoder blocks' attention and MLP
   matrices, the tensors GaLore, APOLLO, Fira, ReLoRA and LoRA change; everything else (embeddings,
   head, norms) every method trains with plain AdamW. `tiny` with the 32k vocabulary: 5%; 7b: 96%.
   Below MIN_MATRIX_SHARE a method can win by how little it moves the matrices (docs/ladder.md: AdamW
   with the matrices frozen beat AdamW training everything on `tiny`), so the report warns.
2. Sanity baseline: when a method whose registry entry is a `sanity_baseline` (adamw_frozen_blocks)
   ties or beats the best real method, the proxy cannot tell the methods apart; said in words.
3. Edges: a best value within EDGE_FRACTION of its range's end (log scale for log ranges) may sit
   beyond the range; the search should be widened there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ranktune.search_spaces.spec import SweepSpec

# Below half, most of what the proxy trains is what every compared method leaves to plain AdamW.
MIN_MATRIX_SHARE = 0.5
TARGET_MODEL = "7b"
EDGE_FRACTION = 0.05  # of the range's width (in log space for loguniform ranges)


@dataclass(frozen=True)
class MatrixShare:
    matrices: int  # parameters in the decoder blocks' attention and MLP matrices
    total: int

    @property
    def share(self) -> float:
        return self.matrices / self.total


def matrix_share(llama) -> MatrixShare:
    """Counted from the model the trainer builds (on the meta device, platform/memory.py's layout)."""
    from ranktune.platform.memory import model_shapes
    from ranktune.trainables.optim.frozen_blocks import is_block_matrix

    shapes = model_shapes(llama, "fp32")
    total = sum(p.numel * p.count for p in shapes)
    return MatrixShare(sum(p.numel * p.count for p in shapes if is_block_matrix(p.name)), total)


def proxy_share(cfg) -> MatrixShare:
    from ranktune.platform.memory import vocab_size

    return matrix_share(cfg.model.llama_config(vocab_size=vocab_size(cfg)))


def target_share(name: str = TARGET_MODEL) -> MatrixShare:
    from ranktune.trainables.model import model_config

    return matrix_share(model_config(name))


def matrix_share_lines(cfg, target: str = TARGET_MODEL) -> list[str]:
    proxy, tgt = proxy_share(cfg), target_share(target)
    lines = [
        f"proxy: {proxy.share:.0%} of its {proxy.total / 1e6:.2f}M parameters are the attention/MLP matrices "
        f"the low-rank methods change ({target}: {tgt.share:.0%})"
    ]
    if proxy.share < MIN_MATRIX_SHARE:
        lines.append(
            f"warning: below {MIN_MATRIX_SHARE:.0%}, the proxy is mostly embeddings and head, which every method "
            "trains with plain AdamW; a method can win here by barely moving the matrices. Use a small vocabulary "
            "(data.tokenizer: corpus:4096) or a deeper/wider shape (docs/ladder.md)"
        )
    return lines


def sanity_line(spec: SweepSpec, rows: list[dict[str, Any]]) -> str | None:
    """Whether a sanity baseline ties or beats the best real method (best full-budget trial of each)."""
    from ranktune.platform.report.ranking import objective_key
    from ranktune.platform.report.table import method_of
    from ranktune.trainables.optim import OPTIMIZERS

    best: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["status"] != "finished" or r["objective"] is None:
            continue
        name = spec.trial_config(r["params"]).optim.name
        if name not in best or objective_key(r, spec.objective.mode) < objective_key(best[name], spec.objective.mode):
            best[name] = r
    baselines = {n: r for n, r in best.items() if n in OPTIMIZERS and OPTIMIZERS[n].sanity_baseline}
    real = {n: r for n, r in best.items() if n not in baselines}
    if not baselines or not real:
        return None
    base_name, base = min(baselines.items(), key=lambda kv: objective_key(kv[1], spec.objective.mode))
    win_name, win = min(real.items(), key=lambda kv: objective_key(kv[1], spec.objective.mode))
    metric = spec.objective.metric
    if objective_key(base, spec.objective.mode) <= objective_key(win, spec.objective.mode):
        return (
            f"sanity baseline: {base_name} ({metric} {base['objective']:.4f}) ties or beats the best method, "
            f"{method_of(spec, win['params'])} ({win['objective']:.4f}): this proxy cannot tell these methods "
            "apart; do not read the winner as an answer for the target"
        )
    return (
        f"sanity baseline: {base_name} ({metric} {base['objective']:.4f}) is behind the best method "
        f"{method_of(spec, win['params'])} ({win['objective']:.4f}): the proxy separates them"
    )


def on_edge(value: float, low: float, high: float, log: bool) -> str | None:
    """'low' / 'high' when `value` lies within EDGE_FRACTION of that end of [low, high], else None."""
    if log:
        value, low, high = math.log(value), math.log(low), math.log(high)
    width = high - low
    if width <= 0:
        return None
    if value - low <= EDGE_FRACTION * width:
        return "low"
    if high - value <= EDGE_FRACTION * width:
        return "high"
    return None


def edge_lines(spec: SweepSpec, rows: list[dict[str, Any]]) -> list[str]:
    """Each method's best full-budget trial: its numeric values at an end of their searched range."""
    from ranktune.platform.report.ranking import objective_key
    from ranktune.platform.report.table import method_of

    ranges = {name: p for name, p in spec.search_space().all_params().items() if p.type != "choice"}
    best: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["status"] == "finished" and r["objective"] is not None:
            m = method_of(spec, r["params"])
            if m not in best or objective_key(r, spec.objective.mode) < objective_key(best[m], spec.objective.mode):
                best[m] = r
    lines = []
    for method, r in sorted(best.items()):
        for key, value in sorted(r["params"].items()):
            p = ranges.get(key)
            if p is None or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            low, high = p.low, p.high
            end = on_edge(float(value), low, high, log=p.type == "loguniform" or p.log)
            if end is not None:
                lines.append(
                    f"edge: {method}'s best {key} = {value:g} is at the {end} end of its range "
                    f"[{low:g}, {high:g}]; the best value may lie beyond it, widen the range"
                )
    return lines


def proxy_check_lines(spec: SweepSpec, rows: list[dict[str, Any]]) -> list[str]:
    """Everything above, for the report (empty parts left out)."""
    lines = matrix_share_lines(spec.trial_config({}))
    sanity = sanity_line(spec, rows)
    if sanity:
        lines.append(sanity)
    return lines + edge_lines(spec, rows)
