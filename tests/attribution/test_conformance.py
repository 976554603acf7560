"""Every registered estimator honours the same contract (one test list, all estimators).

A new estimator must be added to ``CONFIG`` (a test fails otherwise), and then gets the
whole contract checked: result type, shapes and metadata; a resumed run equal to an
uninterrupted one bit for bit; invariance to the internal batch size and example order.
"""

from __future__ import annotations

import pytest
import torch

import headig.attribution.engine as engine
from headig.attribution import ESTIMATORS, STP, Attribution, get_estimator
from headig.attribution.results import postprocess

FAST = dict(mask_probs=(0.3, 0.7), mask_samples_per_prob=1)
# Small budgets per estimator; exact Shapley is restricted to one layer (4 heads).
CONFIG: dict[str, dict] = {
    "integrated_gradients": dict(path=STP(samples=2), steps=2),
    "shapley_sampling": dict(permutations=2),
    "exact_shapley": dict(layers=[1]),
    "leave_one_out": {},
    "gradient_at_ones": {},
}
NAMES = list(ESTIMATORS)


def make_batch(n: int = 3, length: int = 10, prompt: int = 5, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [dict(input_ids=torch.randint(0, 490, (length + i,), generator=g),
                 prompt_length=prompt, id=f"ex{i}") for i in range(n)]


def build(name: str, model, **kw):
    return get_estimator(name)(model, **{**CONFIG[name], **FAST, **kw})


def test_every_registered_estimator_is_in_the_conformance_list():
    assert set(CONFIG) == set(ESTIMATORS)


@pytest.mark.parametrize("name", NAMES)
def test_result_type_shapes_and_metadata(name, loaded):
    model, _ = loaded("tiny-llada")
    est = build(name, model, postprocess="abs")
    batch = make_batch()
    a = est.attribute(batch)
    assert isinstance(a, Attribution)
    n_layers, n_heads = 2, 4
    layers = CONFIG[name].get("layers", [0, 1])
    assert a.scores.shape == (n_layers, n_heads) and a.scores.dtype == torch.float32
    assert a.layers == tuple(layers) and a.example_ids == ["ex0", "ex1", "ex2"]
    assert a.per_example.shape == (3, n_layers, n_heads) and a.per_example.dtype == torch.float64
    for t in (a.j_full, a.j_baseline, a.residual):
        assert t.shape == (3,) and t.dtype == torch.float64
    others = [layer for layer in range(n_layers) if layer not in layers]
    assert not a.scores[others].any() and not a.per_example[:, others].any()
    torch.testing.assert_close(a.scores, postprocess(a.per_example, "abs").mean(0).float())
    torch.testing.assert_close(a.residual, a.per_example.sum((1, 2)) - (a.j_full - a.j_baseline))
    assert a.meta["estimator"] == name == type(est).name
    assert a.meta["postprocess"] == "abs" and a.meta["layers"] == layers
    assert a.meta["n_examples"] == 3 and a.meta["sign_convention"] == "positive_helps"
    assert (a.j_full > a.j_baseline).all()  # the tiny model needs its heads
    if name in ("exact_shapley", "shapley_sampling"):
        # Efficient by construction: the sums telescope to J(1) − J(α0) exactly, up to the
        # float32 forward of the end points, evaluated in other rows than the coalitions.
        assert a.residual.abs().max() < 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_resumed_run_equals_uninterrupted_bit_for_bit(name, loaded, tmp_path, monkeypatch):
    model, _ = loaded("tiny-llada")
    batch = make_batch()
    reference = build(name, model).attribute(batch, examples_per_group=1)
    real = engine.evaluate_points
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # example 1 done (2 calls), killed inside example 2
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    ckpt = tmp_path / "ckpt.safetensors"
    monkeypatch.setattr(engine, "evaluate_points", dying)
    with pytest.raises(KeyboardInterrupt):
        build(name, model).attribute(batch, checkpoint=ckpt, examples_per_group=1)
    assert ckpt.is_file() and not list(tmp_path.glob("*.tmp*"))
    monkeypatch.setattr(engine, "evaluate_points", real)
    resumed = build(name, model).attribute(batch, checkpoint=ckpt, examples_per_group=1)
    for field in ("scores", "per_example", "j_full", "j_baseline", "residual"):
        assert torch.equal(getattr(resumed, field), getattr(reference, field)), field


@pytest.mark.parametrize("name", NAMES)
def test_invariant_to_internal_batch_size(name, loaded):
    # Not bit-exact: a chunk's padding length and GEMM shapes depend on which rows share it,
    # and float32 matmuls of another shape may round differently; each row's J and gradient
    # is then accumulated in float64 in a fixed order. Agreement is to float32 rounding.
    model, _ = loaded("tiny-dream")
    batch = make_batch()
    one = build(name, model, internal_batch_size=1).attribute(batch)
    many = build(name, model, internal_batch_size=64).attribute(batch)
    torch.testing.assert_close(one.per_example, many.per_example, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(one.scores, many.scores, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(one.j_full, many.j_full, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_invariant_to_example_order(name, loaded):
    # With one example per group an example's rows are evaluated alone, so its attribution
    # does not depend on its position: per-example results are bit-identical. The mean over
    # examples is summed in another order, so scores agree to float64 rounding.
    model, _ = loaded("tiny-dream")
    batch = make_batch()
    fwd = build(name, model).attribute(batch, examples_per_group=1)
    rev = build(name, model).attribute(batch[::-1], examples_per_group=1)
    assert rev.example_ids == fwd.example_ids[::-1]
    assert torch.equal(rev.per_example.flip(0), fwd.per_example)
    assert torch.equal(rev.residual.flip(0), fwd.residual)
    torch.testing.assert_close(rev.scores, fwd.scores, rtol=1e-6, atol=1e-9)
