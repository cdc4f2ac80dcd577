"""A method defined here, outside ranktune/, registered by name: it trains through `ranktune train`,
`ranktune estimate` counts it from its own `estimate_state`, and a sweep spec validates with it."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from torch import nn

from ranktune.platform.cli.main import main
from ranktune.platform.memory import estimate_run
from ranktune.search_spaces import spec_from_dict
from ranktune.trainables.config import ConfigError
from ranktune.trainables.optim import OPTIMIZERS, Method, OptimizerEntry, PhaseState, register, unregister

TOY = "toy_projected_momentum"


class ProjectedMomentumSGD(torch.optim.Optimizer):
    """SGD with momentum kept in a fixed random subspace: a (m, n) matrix keeps a (m, k) momentum of
    G P for a fixed (n, k) projection P, and moves by M P^T; vectors keep plain momentum."""

    def __init__(self, params, lr: float, rank: int, momentum: float = 0.9, seed: int = 0) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum})
        self.rank = rank
        self.generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if p.dim() == 2:
                    if not state:
                        n = p.shape[1]
                        proj = torch.randn(n, self.rank, generator=self.generator) / self.rank**0.5
                        state["projection"] = proj.to(p.dtype)
                        state["momentum"] = torch.zeros(p.shape[0], self.rank, dtype=p.dtype)
                    proj = state["projection"]
                    state["momentum"].mul_(group["momentum"]).add_(p.grad @ proj)
                    p.add_(state["momentum"] @ proj.T, alpha=-group["lr"])
                else:
                    if not state:
                        state["momentum"] = torch.zeros_like(p)
                    state["momentum"].mul_(group["momentum"]).add_(p.grad)
                    p.add_(state["momentum"], alpha=-group["lr"])


class ProjectedMomentumMethod(Method):
    def __init__(self, model: nn.Module, cfg) -> None:
        self.model = model
        self.grad_clip = cfg.train.grad_clip
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizers = [ProjectedMomentumSGD(params, lr=cfg.optim.lr, rank=cfg.galore.rank, seed=cfg.train.seed)]

    def state_bytes(self) -> dict[str, int]:
        by_category = {"momentum": 0, "projections": 0}
        for state in self.optimizers[0].state.values():
            m = state["momentum"]
            by_category["momentum"] += m.numel() * m.element_size()
            if "projection" in state:
                by_category["projections"] += state["projection"].numel() * state["projection"].element_size()
        return by_category


def check_toy(cfg) -> list[str]:
    smallest = min(cfg.model.llama_config().hidden_size, cfg.model.llama_config().intermediate_size)
    if cfg.galore.rank > smallest:
        return [f"galore.rank: {cfg.galore.rank} -> at most {smallest} for {TOY}"]
    return []


def estimate_toy(shapes, cfg, device) -> list[PhaseState]:
    k = cfg.galore.rank
    momentum = projections = 0
    for p in shapes:
        if len(p.shape) == 2:
            momentum += p.shape[0] * k * p.value_bytes * p.count
            projections += p.shape[1] * k * p.value_bytes * p.count
        else:
            momentum += p.numel * p.value_bytes * p.count
    weights = sum(p.numel * p.count * p.value_bytes for p in shapes)
    return [PhaseState("toy", weights, shapes, {"momentum": momentum, "projections": projections})]


@pytest.fixture
def toy_method():
    register(
        TOY,
        OptimizerEntry(
            build=ProjectedMomentumMethod,
            check=check_toy,
            estimate_state=estimate_toy,
            summarize=lambda cfg: f"toy rank {cfg.galore.rank}",
            description="test-only projected momentum SGD",
        ),
    )
    yield TOY
    unregister(TOY)


def test_a_method_registered_outside_ranktune_trains_estimates_and_sweeps(toy_method, make_config, tmp_path, capsys):
    cfg = make_config(f"optim.name={toy_method}", "optim.lr=0.05", "galore.rank=8", "train.log_every=1")
    config_file = tmp_path / "toy.yaml"
    config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))

    assert main(["train", str(config_file), "--quiet"]) == 0
    logs = [json.loads(line) for line in open(cfg.output.dir + "/metrics.jsonl")]
    trained = [r for r in logs if "optimizer_state_bytes/momentum" in r][-1]
    summary = json.loads(open(cfg.output.dir + "/summary.json").read())
    assert summary["completed"] and summary["final_eval_loss"] < summary["initial_eval_loss"]

    estimate = estimate_run(cfg, device="cpu").peak
    assert set(estimate.optimizer) == {"momentum", "projections"}
    for category, expected in estimate.optimizer.items():
        measured = trained[f"optimizer_state_bytes/{category}"]
        assert measured > 0 and abs(measured / expected - 1) <= 0.10, (category, measured, expected)

    assert main(["estimate", str(config_file), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "optimizer state: projections" in printed and "toy rank 8" in printed  # the method's own summary

    base = {"model": {"name": "tiny"}, "optim": {"name": toy_method}, "train": {"batch_size": 8, "micro_batch_size": 8}}
    lr = {"optim.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-1}}
    spec = spec_from_dict({"base_overrides": base, "space": {"params": lr}})
    assert spec.trial_config({"optim.lr": 0.01}).optim.name == toy_method
    rank = {"galore.rank": {"type": "choice", "values": [8, 100000]}}
    with pytest.raises(ConfigError, match=f"galore.rank=100000: galore.rank: 100000 -> at most .* for {toy_method}"):
        spec_from_dict({"base_overrides": base, "space": {"params": rank}})


def test_registering_a_taken_name_is_refused():
    entry = OPTIMIZERS["adamw"]
    with pytest.raises(ValueError, match="'adamw' is already registered"):
        register("adamw", OptimizerEntry(build=entry.build))
    assert OPTIMIZERS["adamw"] is entry


def test_estimate_refuses_a_method_without_estimate_state(make_config):
    register("toy_uncounted", OptimizerEntry(build=ProjectedMomentumMethod))
    try:
        cfg = make_config("optim.name=toy_uncounted")
        with pytest.raises(ConfigError, match="'toy_uncounted' was registered without an estimate_state"):
            estimate_run(cfg, device="cpu")
    finally:
        unregister("toy_uncounted")


def toy_to_target(raw, proxy, scaling) -> None:
    """The toy's own target mapping: its rank (it reads galore.rank) by the export's width rule."""
    raw["galore"]["rank"] = scaling.rank(proxy.galore.rank)


TOY_COLOUR = "#5b2a86"


def test_a_method_registered_outside_ranktune_exports_settles_and_plots(make_config, make_spec, tmp_path):
    """The toy entry alone, with no edit to platform/, gets its single-GPU export (its own target
    mapping and single-GPU setting, fitted to the budget), its settling windows in the milestone
    scheduler, and its colour in the plots; without an estimate_state export refuses in words."""
    from ranktune.platform.export.fit import fit_to_target
    from ranktune.platform.export.rules import ScalingRules
    from ranktune.platform.report.plots import plot_best_per_method
    from ranktune.platform.sweep.milestones import in_window, settling_windows

    register(
        TOY,
        OptimizerEntry(
            build=ProjectedMomentumMethod,
            check=check_toy,
            estimate_state=estimate_toy,
            description="test-only projected momentum SGD",
            colour=TOY_COLOUR,
            settling_windows=lambda cfg: [(1, cfg.schedule.warmup_steps)],
            single_gpu=(("train.grad_clip", 0.0),),
            target_mapping=toy_to_target,
        ),
    )
    try:
        proxy = make_config(f"optim.name={TOY}", "galore.rank=32", "train.grad_clip=1.0", "schedule.warmup_steps=4")
        fit = fit_to_target(proxy, "60m", ScalingRules(), [], budget_gib=24)
        assert fit.problems == () and fit.baseline is None, fit
        # the proxy (64 wide) -> 60m (512 wide): rank 32 -> 256 by the relative rule, through the toy's mapping
        assert proxy.model.llama_config().hidden_size == 64
        assert fit.config.optim.name == TOY and fit.config.galore.rank == 256
        assert fit.config.train.grad_clip == 0.0 and fit.config.model.name == "60m"  # its single_gpu setting
        assert set(fit.estimate.peak.optimizer) == {"momentum", "projections"}  # counted by its estimate_state

        assert settling_windows(proxy) == [(1, 4)]
        assert in_window(3, settling_windows(proxy)) and not in_window(5, settling_windows(proxy))

        spec = make_spec()  # the plot reads its objective and name; the rows name the method
        rows = [{"status": "finished", "objective": 4.2, "params": {"optim.name": TOY}, "trial_id": "t0"}]
        svg = plot_best_per_method(spec, rows, [TOY], None, tmp_path / "best.svg")
        assert TOY_COLOUR in svg.read_text()
    finally:
        unregister(TOY)

    register(TOY, OptimizerEntry(build=ProjectedMomentumMethod, target_mapping=toy_to_target))  # no estimate_state
    try:
        fit = fit_to_target(proxy, "60m", ScalingRules(), [], budget_gib=24)
        assert fit.config is None
        assert any(f"{TOY!r} was registered without an estimate_state" in p for p in fit.problems), fit.problems
    finally:
        unregister(TOY)
