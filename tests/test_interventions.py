"""The shared intervention lifecycle, the named hook point route and the layer spec."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from headig.interventions import (
    HeadGate,
    HeadMask,
    Intervention,
    layer_range,
    normalize_layers,
)
from tests.conftest import FAMILIES


def _ids(golden, name):
    return golden(name)["forward.input_ids"]


@pytest.mark.parametrize("name", FAMILIES)
def test_hook_point_and_out_proj_sites_are_bit_identical(name, loaded, golden):
    """Both gate sites give the same logits and the same gate gradients, bit for bit."""
    model, _ = loaded(name)
    ids = _ids(golden, name).expand(3, -1)
    torch.manual_seed(0)
    base = torch.rand(3, 2, 4, dtype=torch.float32)
    results = {}
    for site in ("hook_head_out", "out_proj"):
        g = base.clone().requires_grad_(True)
        with HeadGate(model, g, site=site) as gate:
            assert gate.site == site
            logits = model(ids).logits
        (grad,) = torch.autograd.grad(logits.double().pow(2).mean(), g)
        results[site] = (logits.detach(), grad)
    assert torch.equal(results["hook_head_out"][0], results["out_proj"][0])
    assert torch.equal(results["hook_head_out"][1], results["out_proj"][1])
    assert results["out_proj"][1].abs().sum() > 0


def test_auto_site_is_the_named_hook_point(loaded):
    model, _ = loaded("tiny-llada")
    family = model.family
    assert family.hook_name(1) == "layers.1.attn.hook_head_out"
    assert family.hook_point(model, 1) is model.layers[1].attn.hook_head_out
    with HeadGate(model, layers=[1]) as gate:
        assert gate.site == "hook_head_out"
        assert len(model.layers[1].attn.hook_head_out._forward_hooks) == 1
        assert len(model.layers[0].attn.hook_head_out._forward_hooks) == 0
        assert len(model.layers[1].attn.o_proj._forward_pre_hooks) == 0
    assert len(model.layers[1].attn.hook_head_out._forward_hooks) == 0
    with pytest.raises(ValueError, match="out of range"):
        family.hook_name(2)
    with pytest.raises(ValueError, match="unknown hook point"):
        family.hook_name(0, "hook_q")


def test_partial_install_is_undone(loaded, monkeypatch):
    """A failure while installing layer 1 removes the hook already put on layer 0."""
    model, _ = loaded("tiny-llada")
    family = model.family
    real = type(family).hook_point

    def flaky(self, m, layer, point="hook_head_out"):
        if layer == 1:
            raise RuntimeError("cannot reach layer 1")
        return real(self, m, layer, point)

    monkeypatch.setattr(type(family), "hook_point", flaky)
    gate = HeadGate(model)
    with pytest.raises(RuntimeError, match="layer 1"):
        gate.apply()
    assert not gate.active
    assert all(len(layer.attn.hook_head_out._forward_hooks) == 0 for layer in model.layers)


def test_apply_and_remove_are_idempotent(loaded, golden):
    model, _ = loaded("tiny-dream")
    ids = _ids(golden, "tiny-dream")
    with torch.no_grad():
        ref = model(ids).logits
        gate = HeadGate(model, torch.zeros(2, 4))
        assert gate.apply() is gate and gate.apply() is gate and gate.active
        assert sum(len(b.attn.hook_head_out._forward_hooks) for b in model.layers) == 2
        gate.remove()
        gate.remove()
        assert not gate.active
        assert torch.equal(model(ids).logits, ref)
        mask = HeadMask(model, torch.ones(2, 4, dtype=torch.bool))
        with mask:
            with mask:  # re-entering an active intervention installs nothing twice
                assert sum(len(b.attn.hook_head_out._forward_hooks) for b in model.layers) == 2
        assert not mask.active


def test_dataclass_subclass_lifecycle(loaded, golden):
    """A small dataclass intervention gets apply/remove/with from the base class."""

    @dataclass
    class ScaleLogits(Intervention):
        model: nn.Module
        factor: float

        def _install(self) -> None:
            def hook(module, args, out):
                return out * self.factor
            self._on_remove(self.model.lm_head.register_forward_hook(hook))

    model, _ = loaded("tiny-llada")
    ids = _ids(golden, "tiny-llada")
    with torch.no_grad():
        ref = model(ids).logits
        with ScaleLogits(model, 2.0) as iv:
            assert iv.active
            assert torch.equal(model(ids).logits, ref * 2.0)
        assert torch.equal(model(ids).logits, ref)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_gates_are_rejected(loaded, bad):
    model, _ = loaded("tiny-llada")
    gates = torch.ones(2, 4)
    gates[1, 2] = bad
    with pytest.raises(ValueError, match=r"NaN or inf \(first at index \[1, 2\]"):
        HeadGate(model, gates)
    gate = HeadGate(model)
    with pytest.raises(ValueError, match="NaN or inf"):
        gate.set_gates(gates)


@pytest.mark.parametrize("layers", [[1, 0], [0, 0], [1, -1]])
def test_unsorted_or_repeated_gate_layers_are_rejected(loaded, layers):
    model, _ = loaded("tiny-llada")
    with pytest.raises(ValueError, match="increasing without repeats"):
        HeadGate(model, torch.ones(len(layers), 4), layers=layers)


def test_layer_spec_forms():
    assert normalize_layers(None, 4) == [0, 1, 2, 3]
    assert normalize_layers(2, 4) == [2]
    assert normalize_layers([-1, 0], 4) == [0, 3]
    assert normalize_layers(range(1, 3), 4) == [1, 2]
    assert normalize_layers(slice(1, None), 4) == [1, 2, 3]
    assert normalize_layers("1:2", 4) == [1, 2]  # inclusive, like layer_range
    assert normalize_layers("2:", 4) == [2, 3]
    assert normalize_layers("0,3", 4) == [0, 3]
    assert normalize_layers([3, 1, 1], 4) == [1, 3]  # non-strict: a set of layers
    assert layer_range(1, -1, 4) == [1, 2, 3]
    with pytest.raises(ValueError, match="out of range"):
        normalize_layers([4], 4)
    with pytest.raises(ValueError, match="comma list"):
        normalize_layers("a,b", 4)
    with pytest.raises(ValueError, match="invalid layer range"):
        normalize_layers("3:1", 4)
    with pytest.raises(ValueError, match="empty"):
        normalize_layers([], 4)
    with pytest.raises(TypeError):
        normalize_layers(True, 4)


def test_head_mask_keep_keyword_still_works(loaded):
    model, _ = loaded("tiny-dream")
    kept = torch.ones(2, 4, dtype=torch.bool)
    kept[0, 1] = False
    old = HeadMask(model, keep=kept)
    new = HeadMask(model, kept_heads=kept)
    assert torch.equal(old.keep, new.kept_heads) and old.removed == [(0, 1)]
    with pytest.raises(TypeError, match="once"):
        HeadMask(model)


def test_gating_shim_reexports_the_same_objects():
    import headig.gating as old
    import headig.interventions as new

    for name in ("HeadGate", "HeadMask", "select_heads", "layer_range", "normalize_layers"):
        assert getattr(old, name) is getattr(new, name)
