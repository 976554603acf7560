"""``steps="auto"``: nested refinement per example until the completeness residual meets tol."""

from __future__ import annotations

import json

import pytest
import torch

import headig.attribution.engine as eng
from headig.attribution import DP, STP, integrated_gradients
from headig.cli.main import main
from headig.importance import HeadImportance
from tests.conftest import FIXTURES
from tests.test_estimators import FAST, make_batch


def rel(a) -> torch.Tensor:
    return a.residual.abs() / (a.j_full - a.j_baseline).abs()


@pytest.mark.parametrize("name", ["tiny-llada", "tiny-dream"])
def test_auto_meets_tol_and_equals_the_fixed_rule_at_its_level(name, loaded):
    model, _ = loaded(name)
    batch = make_batch(n=3)
    a = integrated_gradients(model, batch, path=STP(samples=2), steps="auto", tol=0.05,
                             max_steps=64, max_points=1000, refine="uniform", **FAST)
    conv = a.meta["convergence"]
    assert conv["mode"] == "auto" and conv["tol"] == 0.05 and conv["rule"] == "trapezoid"
    assert conv["refine"] == "uniform"
    assert conv["converged"] and conv["n_converged"] == 3
    assert a.meta["steps"] == "auto" and "example_info" not in a.meta
    assert float(rel(a).max()) <= 0.05 + 1e-6
    for i, ex in enumerate(conv["per_example"]):
        k = ex["steps"]
        assert ex["id"] == batch[i]["id"] and ex["residual"] <= 0.05
        assert ex["points"] == 2 * (k + 1)  # nested: every grid point evaluated once
        assert ex["levels"] == k.bit_length() - 2  # 4, 8, 16, ... intervals
        fixed = integrated_gradients(model, batch[i:i + 1], path=STP(samples=2),
                                     rule="trapezoid", steps=k, **FAST)
        torch.testing.assert_close(a.per_example[i], fixed.per_example[0],
                                   rtol=1e-5, atol=1e-7)
    assert conv["points_total"] == sum(conv["points_per_example"])


@pytest.mark.parametrize("name", ["tiny-llada", "tiny-dream"])
def test_adaptive_meets_tol_with_fewer_points_than_uniform(name, loaded):
    """The default on STP: bisect the intervals that carry the error (nonuniform trapezoid)."""
    model, _ = loaded(name)
    batch = make_batch(n=3)
    kw = dict(path=STP(samples=2), steps="auto", tol=0.03, **FAST)
    ada = integrated_gradients(model, batch, **kw)
    uni = integrated_gradients(model, batch, **kw, refine="uniform")
    conv = ada.meta["convergence"]
    assert conv["refine"] == "adaptive" and conv["converged"]
    assert float(rel(ada).max()) <= 0.03 + 1e-6
    assert conv["points_total"] < uni.meta["convergence"]["points_total"]
    # the scores agree with the uniform refinement to about the tolerance
    diff = (ada.per_example - uni.per_example).abs().sum((1, 2))
    assert float((diff / uni.per_example.abs().sum((1, 2))).max()) < 0.15


def test_auto_is_cheaper_per_residual_on_dp_with_romberg(loaded):
    model, _ = loaded("tiny-llada")
    batch = make_batch(n=3)
    a = integrated_gradients(model, batch, path=DP(), steps="auto", tol=1e-3, max_points=200,
                             rule="romberg", **FAST)
    conv = a.meta["convergence"]
    assert conv["rule"] == "romberg" and conv["converged"]
    assert float(rel(a).max()) <= 1e-3 + 1e-6
    trap = integrated_gradients(model, batch, path=DP(), steps="auto", tol=1e-3,
                                rule="trapezoid", refine="uniform", max_points=200, **FAST)
    assert trap.meta["convergence"]["final_residual"] > a.meta["convergence"]["final_residual"]
    assert conv["points_total"] < trap.meta["convergence"]["points_total"]


def test_budget_stops_refinement_and_records_it(loaded):
    model, _ = loaded("tiny-dream")
    batch = make_batch(n=2)
    a = integrated_gradients(model, batch, path=STP(samples=2), steps="auto", tol=1e-9,
                             max_steps=8, refine="uniform", **FAST)
    conv = a.meta["convergence"]
    assert not conv["converged"] and conv["n_converged"] == 0
    assert conv["max_steps_reached"] == 8
    assert conv["points_per_example"] == [18, 18]
    b = integrated_gradients(model, batch, path=STP(samples=2), steps="auto", tol=1e-9,
                             max_points=20, refine="uniform", **FAST)
    assert b.meta["convergence"]["points_per_example"] == [18, 18]  # 34 would exceed 20
    d = integrated_gradients(model, batch, path=STP(samples=2), steps="auto", tol=1e-9,
                             max_points=25, **FAST)  # adaptive: fills the budget exactly
    assert d.meta["convergence"]["points_per_example"] == [25, 25]
    e = integrated_gradients(model, batch, path=STP(samples=2), steps="auto", tol=1e-9,
                             max_steps=8, **FAST)  # adaptive: finest spacing 1/8
    assert e.meta["convergence"]["points_per_example"] == [18, 18]
    c = integrated_gradients(model, batch, path=STP(samples=2), steps="auto", tol=1e-9,
                             min_steps=4, max_steps=4, **FAST)
    assert c.meta["convergence"]["points_per_example"] == [10, 10]
    assert all(x["stability"] is None for x in c.meta["convergence"]["per_example"])


def test_stability_target_refines_further(loaded):
    model, _ = loaded("tiny-llada")
    batch = make_batch(n=2)
    kw = dict(path=STP(samples=2), steps="auto", tol=0.2, **FAST)
    loose = integrated_gradients(model, batch, **kw)
    strict = integrated_gradients(model, batch, **kw, stability_tol=0.01)
    for lo, st in zip(loose.meta["convergence"]["per_example"],
                      strict.meta["convergence"]["per_example"]):
        assert st["steps"] >= lo["steps"]
        assert st["stability"] <= 0.01 or not st["converged"]
    assert (sum(strict.meta["convergence"]["points_per_example"])
            > sum(loose.meta["convergence"]["points_per_example"]))


def test_adaptive_is_the_default_on_dp_too(loaded):
    model, _ = loaded("tiny-dream")
    a = integrated_gradients(model, make_batch(n=3), path=DP(), tol=0.01, **FAST)
    conv = a.meta["convergence"]
    assert conv["rule"] == "trapezoid" and conv["refine"] == "adaptive"
    assert conv["converged"] and float(rel(a).max()) <= 0.01 + 1e-6


def test_auto_is_the_default(loaded):
    model, _ = loaded("tiny-llada")
    a = integrated_gradients(model, make_batch(n=1), path=STP(samples=2), **FAST)
    conv = a.meta["convergence"]
    assert a.meta["steps"] == "auto" and conv["tol"] == 0.05 and conv["refine"] == "adaptive"
    assert conv["max_steps"] == 1024 and conv["max_points"] == 128


def test_fixed_steps_results_carry_no_auto_keys(loaded):
    model, _ = loaded("tiny-llada")
    a = integrated_gradients(model, make_batch(n=1), path=STP(samples=2), steps=3, **FAST)
    assert "convergence" not in a.meta and "tol" not in a.meta and a.meta["steps"] == 3


@pytest.mark.parametrize("kw,err", [
    (dict(steps="many"), "expected an integer >= 1 or 'auto'"),
    (dict(steps="auto", rule="midpoint"), "no nested refinement"),
    (dict(rule="gauss_legendre"), "pass an integer steps"),
    (dict(path=STP(samples=2), rule="ramp_gauss"), "no nested refinement"),
    (dict(path=DP(), rule="ramp_gauss"), "every head moves together"),
    (dict(rule="simpson"), "expected one of"),
    (dict(steps="auto", tol=0.0), "tol=0.0"),
    (dict(steps="auto", min_steps=8, max_steps=4), "max_steps=4"),
    (dict(steps="auto", rule="right", refine="adaptive"), "needs refine='uniform'"),
    (dict(steps="auto", refine="smart"), "refine='smart'"),
    (dict(steps=8, rule="romberg"), "rule='romberg'"),
])
def test_bad_auto_settings_fail_before_model_work(kw, err, loaded):
    model, _ = loaded("tiny-llada")
    with pytest.raises((ValueError, TypeError), match=err):
        integrated_gradients(model, make_batch(n=1), **kw)


def test_auto_resume_after_kill_equals_uninterrupted(loaded, tmp_path, monkeypatch):
    model, _ = loaded("tiny-llada")
    batch = make_batch(n=4)
    kw = dict(path=STP(samples=2), steps="auto", tol=0.05, examples_per_group=1, **FAST)
    reference = integrated_gradients(model, batch, **kw)
    ckpt = tmp_path / "auto.ckpt.safetensors"
    real = eng.evaluate_points
    calls = {"n": 0, "die": True}

    def dying(*args, **kwargs):
        calls["n"] += ckpt.is_file()
        if calls["die"] and calls["n"] == 3:  # inside the refinement of a later example
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(eng, "evaluate_points", dying)
    with pytest.raises(KeyboardInterrupt):
        integrated_gradients(model, batch, checkpoint=ckpt, **kw)
    assert ckpt.is_file()
    calls["die"] = False
    resumed = integrated_gradients(model, batch, checkpoint=ckpt, **kw)
    assert torch.equal(resumed.scores, reference.scores)
    assert resumed.meta["convergence"] == reference.meta["convergence"]


FASTCLI = ["--mask_probs", "0.3,0.7", "--mask_samples_per_prob", "1", "--no_progress",
           "--max_samples", "3"]


def test_cli_auto_default_and_flags(tmp_path):
    rows = [{"prompt": f"Question: what is {i} plus {i + 2}?\nAnswer:",
             "completion": f" {2 * i + 2}. Done."} for i in range(3)]
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    base = ["attribute", "--model", str(FIXTURES / "tiny-llada"), "--data", str(data),
            *FASTCLI, "--path_samples", "2"]
    assert main([*base, "--out", str(tmp_path / "a"), "--ig_steps", "auto", "--tol", "0.1",
                 "--max_steps", "32"]) == 0
    log = json.loads((tmp_path / "a" / "attribution.json").read_text())
    assert log["identity"]["steps"] == "auto" and log["identity"]["tol"] == 0.1
    conv = HeadImportance.load(tmp_path / "a").meta["convergence"]
    assert conv["tol"] == 0.1 and conv["max_steps"] == 32
    assert log["completeness"]["aggregate_relative_residual"] <= 0.1 + 1e-6
    assert main([*base, "--out", str(tmp_path / "d")]) == 0  # the default is auto
    assert json.loads((tmp_path / "d" / "attribution.json").read_text())["identity"]["steps"] \
        == "auto"
    assert main([*base, "--out", str(tmp_path / "f"), "--ig_steps", "3"]) == 0
    ident = json.loads((tmp_path / "f" / "attribution.json").read_text())["identity"]
    assert ident["steps"] == 3 and "tol" not in ident
    assert main([*base, "--out", str(tmp_path / "x"), "--ig_steps", "3", "--rule",
                 "romberg"]) == 2
    assert main([*base, "--out", str(tmp_path / "y"), "--rule", "midpoint"]) == 2
