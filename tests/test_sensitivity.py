"""Sparsity sensitivity: the dense<->sparse gate, completeness, the sensitivity budget."""

from __future__ import annotations

import math

import pytest
import torch

import headig
from headig.attribution import engine
from headig.attribution.objective import MaskedDiffusionObjective, as_items
from headig.attribution.sensitivity import sparsity_sensitivity
from headig.sparse import (
    SensitivityBudget,
    SparseAttentionPatch,
    SparsityGate,
    UniformBudget,
    WeightBudget,
    budget_names,
    budget_policy,
    sensitivity_weights,
)

from .conftest import fixture_path

KEEP, BLOCK = 0.3, 4


@pytest.fixture(scope="module")
def model():
    m, _ = headig.load_model(fixture_path("tiny-llada"))
    return m


def _ids(batch: int, length: int, seed: int, vocab: int = 400) -> torch.Tensor:
    return torch.randint(5, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def _items(n: int, length: int = 40, prompt: int = 12):
    ids = _ids(n, length, 7)
    return as_items([{"input_ids": ids[i], "prompt_length": prompt, "id": f"x{i}"}
                     for i in range(n)])


# ----------------------------------------------------------------------------- the gate
@pytest.mark.parametrize("padded", [False, True])
def test_gate_endpoints_are_dense_and_the_patch_bit_for_bit(model, padded):
    ids = _ids(2, 40, 0)
    attn = torch.ones(2, 40, dtype=torch.bool)
    if padded:
        attn[1, 31:] = False
    kw = {"attention_mask": attn} if padded else {}
    layers = list(range(model.family.n_layers))
    with torch.no_grad():
        dense = model(ids, **kw).logits
        with SparseAttentionPatch(model, UniformBudget(KEEP), block_size=BLOCK, min_seq_len=0,
                                  kernel="gather"):
            sparse = model(ids, **kw).logits
        with SparsityGate(model, KEEP, layers=layers, block_size=BLOCK) as gate:
            at_one = model(ids, **kw).logits
            gate.set_gates(torch.zeros(len(layers), model.family.n_heads))
            at_zero = model(ids, **kw).logits
            gate.set_gates(torch.full((2, len(layers), model.family.n_heads), 0.5))
            half = model(ids, **kw).logits
        after = model(ids, **kw).logits
    # g*dense + (1-g)*sparse with g in {0, 1} is exactly one side (finite values)
    assert torch.equal(at_one, dense)
    assert torch.equal(at_zero, sparse)
    assert not torch.equal(dense, sparse)
    assert not torch.equal(half, dense) and not torch.equal(half, sparse)
    assert torch.equal(after, dense)  # removed cleanly


def test_default_gate_site_is_the_head_gate(model):
    items = _items(2)
    obj = MaskedDiffusionObjective(mask_probs=(0.5,), mask_samples_per_prob=2)
    layers = list(range(model.family.n_layers))
    g = torch.rand(3, len(layers), model.family.n_heads,
                   generator=torch.Generator().manual_seed(1))
    reqs = [engine.PointRequest(it, g) for it in items]
    a = engine.evaluate_points(model, obj, reqs, layers=layers, with_grad=True)
    b = engine.evaluate_points(model, obj, reqs, layers=layers, with_grad=True,
                               gate_site=engine.head_gate_site)
    for (va, ga), (vb, gb) in zip(a, b):
        assert torch.equal(va, vb) and torch.equal(ga, gb)


# ----------------------------------------------------------------------------- completeness
def test_completeness_and_endpoints(model):
    items = _items(3)
    obj = MaskedDiffusionObjective(mask_probs=(0.3, 0.7), mask_samples_per_prob=1)
    res = {s: sparsity_sensitivity(model, items, keep=KEEP, block_size=BLOCK, steps=s,
                                   objective=obj) for s in (2, 16)}
    r = res[16]
    layers = list(range(model.family.n_layers))
    # j_full / j_baseline are J at the dense model and at the patch
    dense = engine.objective_values(model, obj, items, torch.ones(len(layers), 4), layers=layers)
    with SparseAttentionPatch(model, UniformBudget(KEEP), block_size=BLOCK, min_seq_len=0,
                              kernel="gather"):
        sparse = engine.objective_values(model, obj, items[:1], torch.ones(len(layers), 4),
                                         layers=layers)
    assert torch.allclose(r.j_full, dense, rtol=0, atol=1e-6)
    assert math.isclose(float(r.j_baseline[0]), float(sparse[0]), abs_tol=1e-6)
    delta = (r.j_full - r.j_baseline).abs()
    assert bool((delta > 1e-3).all())  # the fixture really loses something when sparse
    # measured max relative residual: 0.15 (2 nodes), 2.2e-2 (4), 2.2e-4 (8), 4.9e-6 (16)
    assert float(r.relative_residual.max()) < 1e-4
    assert float(res[2].residual.abs().mean()) > float(r.residual.abs().mean())
    assert r.meta["sparsity"]["keep"] == KEEP and r.scores.shape == (2, 4)


def test_layer_subset_and_greedy_oracle(model):
    from headig.validation.sparse import greedy_oracle

    items = _items(2)
    obj = MaskedDiffusionObjective(mask_probs=(0.5,), mask_samples_per_prob=2)
    r = sparsity_sensitivity(model, items, keep=KEEP, block_size=BLOCK, steps=8, layers=[1],
                             objective=obj)
    assert bool((r.scores[0] == 0).all()) and r.layers == (1,)
    with SparseAttentionPatch(model, UniformBudget(KEEP), block_size=BLOCK, min_seq_len=0,
                              kernel="gather", layers=[1]):
        sparse = engine.objective_values(model, obj, items, torch.ones(2, 4), layers=[0, 1])
    assert torch.allclose(r.j_baseline, sparse, rtol=0, atol=1e-6)
    assert float(r.relative_residual.max()) < 1e-3  # measured 9.6e-5 at 8 nodes
    w, hist = greedy_oracle(model, items, 0.5, units=2, max_moves=2, objective=obj,
                            patch_kwargs={"block_size": BLOCK, "min_seq_len": 0,
                                          "kernel": "gather"})
    assert float(w.sum()) == 2 * 8 and bool((w >= 0).all())  # units are only moved
    assert all(b < a for a, b in zip(hist, hist[1:]))        # every accepted move helps


# ----------------------------------------------------------------------------- budgets
@pytest.mark.parametrize("keep", [0.1, 0.2, 0.3, 0.5])
@pytest.mark.parametrize("n_blocks", [8, 12, 33, 64])
def test_sensitivity_budget_total_and_floor(keep, n_blocks):
    gen = torch.Generator().manual_seed(n_blocks)
    s = torch.randn(3, 4, generator=gen).abs() ** 3
    s[0, 0] = 0.0
    s[2, 1] = -0.2
    layers = [0, 1, 2]
    uni = UniformBudget(keep).counts(n_blocks, layers, 3, 4)
    for pol in (SensitivityBudget(s, keep), SensitivityBudget(s, keep, power=1.0),
                SensitivityBudget(s, keep, min_keep=0.0), WeightBudget(s.clamp_min(0), keep)):
        c = pol.counts(n_blocks, layers, 3, 4)
        assert c.dtype == torch.long and int(c.sum()) == int(uni.sum())
        assert c.double().mean() == uni.double().mean()
        assert int(c.min()) >= 1 and int(c.max()) <= n_blocks
    c = SensitivityBudget(s, keep).counts(n_blocks, layers, 3, 4)
    floor = max(1, math.ceil(keep / 2 * n_blocks - 1e-9))
    assert int(c.min()) >= min(floor, int(uni[0, 0]))
    # monotone: a more sensitive head never gets fewer blocks
    order = s.flatten().argsort()
    assert bool((c.flatten()[order][1:] >= c.flatten()[order][:-1]).all())


def test_sensitivity_budget_maps_and_registry():
    assert "sensitivity" in budget_names() and "weights" in budget_names()
    s = torch.tensor([[0.0, 4.0, 1.0, 9.0]], dtype=torch.float64)
    assert torch.equal(sensitivity_weights(s), torch.tensor([[0.0, 2.0, 1.0, 3.0]],
                                                            dtype=torch.float64))
    pol = budget_policy("sensitivity", sensitivity=s, keep=0.5)
    assert isinstance(pol, SensitivityBudget) and pol.min_keep == 0.25
    # 1 layer x 4 heads, 16 blocks, uniform 8 each (total 32); floor 4 for the zero head,
    # the rest ~ sqrt(s) = 2:1:3 of the remaining 28 (hi = 16): 9.33/4.67/14 -> rounded
    c = pol.counts(16, [0], 1, 4)
    assert c.tolist() == [[4, 9, 5, 14]]
    assert int(c.sum()) == 32
    zeros = SensitivityBudget(torch.zeros(1, 4), 0.5).counts(16, [0], 1, 4)
    assert zeros.tolist() == [[8, 8, 8, 8]]
    with pytest.raises(ValueError):
        SensitivityBudget(None, 0.3)
    with pytest.raises(ValueError):
        SensitivityBudget(s, 0.3, power=0.0)


# ----------------------------------------------------------------------------- CLI
def test_cli_sensitivity_and_policies(tmp_path):
    from headig.cli.main import main
    from headig.importance import HeadImportance

    out = tmp_path / "sens.safetensors"
    assert main(["sensitivity", "--limit", "6", "--steps", "4", "--keep", "0.3",
                 "--mask_probs", "0.5", "--out", str(out)]) == 0
    imp = HeadImportance.load(out)
    assert imp.scores.shape == (3, 4) and imp.meta["sparsity"]["keep"] == 0.3
    assert main(["validate", "sparse", "--policies", "uniform,sensitivity", "--keep", "0.3",
                 "--seeds", "0,1", "--limit", "6", "--train_limit", "6", "--block_size", "1",
                 "--sensitivity_steps", "4", "--mask_probs", "0.5", "--accuracy", "no",
                 "--no_progress", "--out", str(tmp_path / "pol")]) == 0
    import json

    rep = json.loads((tmp_path / "pol" / "policies.json").read_text())
    assert {(r["policy"], r["seed"]) for r in rep["rows"]} == {
        ("uniform", 0), ("uniform", 1), ("sensitivity", 0), ("sensitivity", 1)}
    assert all(math.isfinite(r["loss"]) for r in rep["rows"])


# ----------------------------------------------------------------------------- ordering
def test_sensitivity_beats_uniform_on_the_embedded_model_at_keep_0_3():
    """Only the margin that the 3-seed comparison measured well above its spread.

    docs/validation.md (embedded model, 48 training / 120 held-out examples, block 1):
    paired held-out loss difference sensitivity - uniform at keep 0.3 = -0.640 +- 0.068
    over seeds 0, 1, 2 (uniform 1.659 +- 0.001). One seed here; the bound -0.3 is ~5 std
    from the measured mean. (With 12 training examples the margin vanishes: measured
    +0.004 +- 0.036, so the test keeps the documented sizes.)
    """
    from headig.demo import _encode
    from headig.toy import tasks
    from headig.toy.embedded import embedded_model_path, load_embedded
    from headig.validation.sparse import compare_budget_policies

    model, tok = load_embedded()
    d = embedded_model_path()
    train, _ = _encode(tok, tasks.subset(tasks.read_jsonl(d / "train.jsonl"), 8), "train")
    held, _ = _encode(tok, tasks.subset(tasks.read_jsonl(d / "eval.jsonl"), 20), "eval")
    res = compare_budget_policies(model, train, held, keeps=[0.3], seeds=[0],
                                  policies=["uniform", "sensitivity"], block_size=1)
    loss = {r["policy"]: r["loss"] for r in res.rows}
    assert loss["uniform"] == pytest.approx(1.6574, abs=2e-3)
    assert loss["sensitivity"] - loss["uniform"] < -0.3
