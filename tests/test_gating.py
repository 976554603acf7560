"""HeadGate axioms and HeadMask selection, on both families (Dream is GQA)."""

from __future__ import annotations

import pytest
import torch

from headig.gating import HeadGate, HeadMask, layer_range, select_heads
from tests.conftest import FAMILIES


def _ids(golden, name):
    return golden(name)["forward.input_ids"]


@pytest.mark.parametrize("name", FAMILIES)
def test_gate_one_is_bit_identical(name, loaded, golden):
    model, _ = loaded(name)
    ids = _ids(golden, name)
    with torch.no_grad():
        ref = model(ids).logits
        with HeadGate(model, torch.ones(2, 4)):
            gated = model(ids).logits
        with HeadGate(model, torch.ones(3, 2, 4, dtype=torch.float64)):
            gated_rows = model(ids).logits
    assert torch.equal(ref, gated)
    assert torch.equal(ref, gated_rows)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("layer,head", [(0, 0), (1, 3)])
def test_gate_zero_equals_zeroed_out_proj_columns(name, layer, head, loaded, golden):
    model, _ = loaded(name)
    ids = _ids(golden, name)
    gates = torch.ones(2, 4)
    gates[layer, head] = 0.0
    hd = model.family.head_dim
    with torch.no_grad():
        with HeadGate(model, gates):
            gated = model(ids).logits
        weight = model.layers[layer].attn.o_proj.weight
        saved = weight[:, head * hd:(head + 1) * hd].clone()
        weight[:, head * hd:(head + 1) * hd] = 0.0
        try:
            zeroed = model(ids).logits
        finally:
            weight[:, head * hd:(head + 1) * hd] = saved
        ref = model(ids).logits
    torch.testing.assert_close(gated, zeroed, rtol=0, atol=1e-5)
    assert (gated - ref).abs().max() > 1e-3  # the head did matter


def _n_hooks(model) -> int:
    """Gate hooks on the model, on either site (hook point or output projection)."""
    return sum(len(layer.attn.hook_head_out._forward_hooks)
               + len(layer.attn.o_proj._forward_pre_hooks) for layer in model.layers)


@pytest.mark.parametrize("name", FAMILIES)
def test_hooks_removed_on_exception(name, loaded, golden):
    model, _ = loaded(name)
    before = _n_hooks(model)
    with pytest.raises(RuntimeError, match="boom"):
        with HeadGate(model, torch.zeros(2, 4)):
            assert _n_hooks(model) == before + 2
            assert len(model.layers[0].attn.hook_head_out._forward_hooks) == 1
            raise RuntimeError("boom")
    assert _n_hooks(model) == before
    # and a failing forward inside the gate (bad batch size) also cleans up
    with pytest.raises(ValueError, match="batch size"):
        with HeadGate(model, torch.ones(5, 2, 4)), torch.no_grad():
            model(_ids(golden, name))
    assert _n_hooks(model) == 0


@pytest.mark.parametrize("name", FAMILIES)
def test_per_row_gates_are_independent(name, loaded, golden):
    """Row b's output depends only on row b's gates."""
    model, _ = loaded(name)
    ids = _ids(golden, name)
    gen = torch.Generator().manual_seed(0)
    gates = torch.rand(3, 2, 4, generator=gen)
    with torch.no_grad(), HeadGate(model, gates):
        batched = model(ids).logits
    for b in range(3):
        with torch.no_grad(), HeadGate(model, gates[b]):
            alone = model(ids[b:b + 1]).logits
        torch.testing.assert_close(batched[b:b + 1], alone, rtol=0, atol=2e-5)
    # gradients too: d(row 0 output)/d(gates of row 1) == 0
    g = gates.clone().requires_grad_(True)
    with HeadGate(model, g):
        model(ids).logits[0].sum().backward()
    assert g.grad[1:].abs().max() == 0
    assert g.grad[0].abs().max() > 0


@pytest.mark.parametrize("name", FAMILIES)
def test_gradients_flow_to_gates_not_params(name, loaded, golden):
    model, _ = loaded(name)
    alpha = torch.full((2, 4), 0.5, requires_grad=True)
    with HeadGate(model, alpha):
        model(_ids(golden, name)).logits.logsumexp(-1).mean().backward()
    assert alpha.grad is not None and alpha.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_gate_in_bfloat16_model_keeps_float32_gradient(golden):
    import headig
    from tests.conftest import FIXTURES
    model, _ = headig.load_model(FIXTURES / "tiny-dream", dtype="bfloat16", tokenizer=False)
    alpha = torch.full((2, 4), 0.5, requires_grad=True)
    with HeadGate(model, alpha):
        out = model(golden("tiny-dream")["forward.input_ids"]).logits
    assert out.dtype == torch.bfloat16
    out.float().logsumexp(-1).mean().backward()
    assert alpha.grad.dtype == torch.float32 and torch.isfinite(alpha.grad).all()


def test_layer_subset(loaded, golden):
    model, _ = loaded("tiny-llada")
    ids = _ids(golden, "tiny-llada")
    full = torch.ones(2, 4)
    full[1, 2] = 0.0
    with torch.no_grad():
        with HeadGate(model, full):
            a = model(ids).logits
        with HeadGate(model, torch.tensor([[1.0, 1.0, 0.0, 1.0]]), layers=[1]):
            b = model(ids).logits
    assert torch.equal(a, b)
    assert len(model.layers[0].attn.o_proj._forward_pre_hooks) == 0


def test_bad_gate_shapes(loaded):
    model, _ = loaded("tiny-dream")
    with pytest.raises(ValueError, match=r"expected \[L, H\] = \[2, 4\]"):
        HeadGate(model, torch.ones(2, 2))
    with pytest.raises(TypeError, match="floating-point"):
        HeadGate(model, torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="out of range"):
        HeadGate(model, layers=[5])


# --- HeadMask -----------------------------------------------------------------------

SCORES = torch.tensor([[0.5, -2.0, 0.1, 3.0],
                       [-0.2, 1.0, 0.0, -0.7]])


def test_select_most_least_exact():
    keep = select_heads(SCORES, "most", k=2)
    assert (~keep).nonzero().tolist() == [[0, 3], [1, 1]]
    keep = select_heads(SCORES, "least", k=3)
    assert sorted((~keep).nonzero().tolist()) == [[0, 1], [1, 0], [1, 3]]
    keep = select_heads(SCORES, "most", k=2, by="abs")
    assert sorted((~keep).nonzero().tolist()) == [[0, 1], [0, 3]]
    keep = select_heads(SCORES, "least", k=1, layers=[1])
    assert (~keep).nonzero().tolist() == [[1, 3]]


def test_select_k_frac_and_random_seeded():
    keep = select_heads(SCORES, "most", k_frac=0.25)
    assert int((~keep).sum()) == 2
    a = select_heads(SCORES, "random", k=3, seed=7)
    b = select_heads(SCORES, "random", k=3, seed=7)
    c = select_heads(SCORES, "random", k=3, seed=8)
    assert torch.equal(a, b) and int((~a).sum()) == 3
    seeds = [select_heads(SCORES, "random", k=3, seed=s) for s in range(20)]
    assert any(not torch.equal(a, s) for s in seeds) or not torch.equal(a, c)


def test_select_layer_range_inclusive():
    assert layer_range(0, -1, 4) == [0, 1, 2, 3]
    assert layer_range(1, 2, 4) == [1, 2]
    with pytest.raises(ValueError, match="inclusive"):
        layer_range(3, 1, 4)


@pytest.mark.parametrize("kwargs,match", [
    (dict(which="most", k=2, k_frac=0.2), "exactly one of k"),
    (dict(which="most"), "exactly one of k"),
    (dict(which="most", k=8), r"0 <= k < 8"),
    (dict(which="most", k=4, layers=[0]), r"0 <= k < 4"),
    (dict(which="best", k=1), "expected one of"),
    (dict(which="most", k=1, by="magnitude"), "expected one of"),
    (dict(which="most", k_frac=1.5), r"fraction in \(0, 1\)"),
    (dict(which="most", k_frac=0.01), "rounds to 0"),
])
def test_select_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        select_heads(SCORES, **kwargs)


def test_select_nan_and_shape_errors():
    bad = SCORES.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        select_heads(bad, "most", k=1)
    select_heads(bad, "most", k=1, layers=[1])  # NaN outside the chosen layers is fine
    with pytest.raises(ValueError, match=r"\[L, H\]"):
        select_heads(torch.ones(8), "most", k=1)


@pytest.mark.parametrize("name", FAMILIES)
def test_head_mask_equals_gate_zero(name, loaded, golden):
    model, _ = loaded(name)
    ids = _ids(golden, name)
    mask = HeadMask.from_scores(model, SCORES, "most", k=2)
    assert mask.removed == [(0, 3), (1, 1)]
    gates = mask.keep.float()
    with torch.no_grad():
        with mask:
            a = model(ids).logits
        with HeadGate(model, gates):
            b = model(ids).logits
        c = model(ids).logits
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3
    assert not mask._gate.active


def test_head_mask_validates_before_touching_model(loaded):
    model, _ = loaded("tiny-llada")
    with pytest.raises(ValueError, match=r"\[L, H\] = \[2, 4\]"):
        HeadMask.from_scores(model, torch.ones(3, 4), "most", k=1)
    with pytest.raises(ValueError, match="bool tensor"):
        HeadMask(model, torch.ones(2, 4))
    assert all(len(layer.attn.o_proj._forward_pre_hooks) == 0 for layer in model.layers)
