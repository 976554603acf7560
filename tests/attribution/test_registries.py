"""The quadrature-rule and estimator registries, and the run-folder state machine."""

from __future__ import annotations

import json

import pytest
import torch

from headig.attribution import (
    DP,
    STP,
    canonical_name,
    estimator_names,
    get_estimator,
    get_rule,
    integrated_gradients,
    register_rule,
    rule_names,
)
from headig.attribution import rules as rules_module
from headig.attribution.rules import PathPoints, ramp_gates
from headig.attribution.runner import RunFolder

FAST = dict(mask_probs=(0.3, 0.7), mask_samples_per_prob=1)


@pytest.fixture
def scratch_rules():
    before = dict(rules_module._RULES)
    yield
    rules_module._RULES.clear()
    rules_module._RULES.update(before)


def batch(n=2):
    g = torch.Generator().manual_seed(1)
    return [dict(input_ids=torch.randint(0, 490, (10,), generator=g), prompt_length=5,
                 id=f"b{i}") for i in range(n)]


def test_builtin_rules_are_registered():
    assert rule_names()[:6] == ["right", "left", "midpoint", "trapezoid", "gauss_legendre",
                                "ramp_gauss"]
    assert get_rule("ramp_gauss").per_head and not get_rule("trapezoid").per_head
    with pytest.raises(ValueError, match="rule='simpson'; expected one of"):
        get_rule("simpson")


def test_a_user_rule_drives_integrated_gradients(loaded, scratch_rules):
    @register_rule("simpson")
    def simpson(u, w, baseline, steps):
        # composite Simpson on 2·steps intervals of τ; weights c_k · Δα over the grid
        k = 2 * steps
        tau = torch.linspace(0.0, 1.0, k + 1, dtype=torch.float64)
        a = ramp_gates(u, w, baseline, tau)
        c = torch.ones(k + 1, dtype=torch.float64)
        c[1:-1:2], c[2:-1:2] = 4.0, 2.0
        slope = torch.gradient(a, spacing=(tau,), dim=0, edge_order=2)[0]
        return PathPoints(a.float(), slope * (c / (3 * k))[:, None, None])

    model, _ = loaded("tiny-llada")
    a = integrated_gradients(model, batch(), path=DP(), rule="simpson", steps=4, **FAST)
    assert a.meta["rule"] == "simpson"
    # on the straight path the slope is exactly 1 − α0, so completeness is Simpson's error
    right = integrated_gradients(model, batch(), path=DP(), rule="right", steps=8, **FAST)
    assert a.relative_residual.max() < right.relative_residual.min()
    with pytest.raises(ValueError, match="already registered"):
        register_rule("simpson", simpson)


def test_same_function_under_a_new_name_gives_identical_scores(loaded, scratch_rules):
    register_rule("trap2", get_rule("trapezoid").fn)
    model, _ = loaded("tiny-dream")
    kw = dict(path=STP(samples=2), steps=3, **FAST)
    a = integrated_gradients(model, batch(), rule="trap2", **kw)
    b = integrated_gradients(model, batch(), rule="trapezoid", **kw)
    assert torch.equal(a.scores, b.scores) and torch.equal(a.per_example, b.per_example)


def test_per_head_user_rule_is_refused_on_dp(loaded, scratch_rules):
    register_rule("mine", get_rule("ramp_gauss").fn, per_head=True)
    model, _ = loaded("tiny-llada")
    with pytest.raises(ValueError, match="'mine' integrates inside each head's own ramp"):
        integrated_gradients(model, batch(), path=DP(), rule="mine")


def test_estimator_names_and_aliases():
    assert estimator_names(aliases=False) == ["integrated_gradients", "shapley_sampling",
                                              "exact_shapley", "leave_one_out",
                                              "gradient_at_ones"]
    assert canonical_name("ig") == "integrated_gradients"
    assert canonical_name("loo") == "leave_one_out"
    assert get_estimator("ig") is get_estimator("integrated_gradients")
    with pytest.raises(ValueError, match="unknown estimator 'lime'"):
        get_estimator("lime")


def test_run_folder_states(tmp_path):
    ident = {"estimator": "integrated_gradients", "steps": 3}

    def norm(d):
        return {**d, "estimator": canonical_name(d["estimator"])}

    folder = RunFolder(tmp_path / "run", ident, normalize=norm)
    assert folder.prepare() == "fresh"
    folder.write_log({"identity": {"estimator": "ig", "steps": 3}, "status": "running"})
    assert folder.prepare() == "fresh"  # no checkpoint yet; an old log naming "ig" is the same run
    folder.checkpoint.write_bytes(b"x")
    assert folder.prepare() == "resume"
    folder.result.write_bytes(b"x")
    folder.write_log({"identity": ident, "status": "complete"})
    assert folder.prepare() == "done"
    other = RunFolder(tmp_path / "run", {**ident, "steps": 4}, normalize=norm)
    with pytest.raises(ValueError, match="differs in steps"):
        other.prepare()
    assert other.prepare(overwrite=True) == "fresh"
    assert not folder.result.exists() and not folder.checkpoints()
    assert json.loads(json.dumps(folder.identity)) == ident
