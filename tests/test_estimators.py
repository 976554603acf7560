"""HeadIG and the comparison estimators: axioms, equivalences, determinism, resume, ranks."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import headig.attribution.engine as est
from headig.attribution import (
    DP,
    STP,
    GatePath,
    exact_shapley,
    gradient_at_ones,
    integrated_gradients,
    leave_one_out,
    shapley_sampling,
)
from headig.gating import HeadGate
from tests.conftest import FAMILIES, FIXTURES

FAST = dict(mask_probs=(0.3, 0.7), mask_samples_per_prob=1)


def make_batch(n=3, length=12, prompt=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [dict(input_ids=torch.randint(0, 490, (length,), generator=g), prompt_length=prompt,
                 id=f"ex{i}") for i in range(n)]


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("path", [DP(), STP(samples=2)])
def test_completeness_residual_vanishes_with_steps(name, path, loaded):
    model, _ = loaded(name)
    batch = make_batch()
    res = []
    for steps in (4, 64):
        a = integrated_gradients(model, batch, path=path, rule="trapezoid", steps=steps, **FAST)
        scale = (a.j_full - a.j_baseline).abs().max().item()
        res.append(a.residual.abs().max().item() / scale)
    assert res[1] < res[0] / 10, res
    assert res[1] < 2e-2, res


@pytest.mark.parametrize("name", FAMILIES)
def test_identity_and_ablation_endpoints(name, loaded):
    """J(1) is the ungated objective; J(0) is the model with every head zeroed."""
    model, _ = loaded(name)
    batch = make_batch(n=1)
    mask = torch.zeros(12, dtype=torch.bool)
    mask[[7, 9, 10]] = True
    a = gradient_at_ones(model, batch, masks={"ex0": mask[None]})
    ids = batch[0]["input_ids"]
    inp = ids.masked_fill(mask, model.family.mask_token_id)[None]
    shift = model.family.logit_shift

    def loss(logits):
        pos = mask.nonzero().flatten()
        return F.cross_entropy(logits[0, pos - shift], ids[pos]).item()

    with torch.no_grad():
        ungated = loss(model(inp).logits)
        with HeadGate(model, torch.zeros(2, 4)):
            ablated = loss(model(inp).logits)
    assert a.j_full[0].item() == pytest.approx(-ungated, abs=1e-6)
    assert a.j_baseline[0].item() == pytest.approx(-ablated, abs=1e-6)


def test_dream_shift_matches_golden_likelihood(loaded, golden):
    """J at gate 1 with the one-token answer masked is log p(answer | prompt) (golden)."""
    for name in FAMILIES:
        model, _ = loaded(name)
        g = golden(name)
        ids = torch.cat([g["loglik.prompt"], g["loglik.answer0"]])
        mask = torch.zeros(ids.numel(), dtype=torch.bool)
        mask[-1] = True
        batch = [dict(input_ids=ids, prompt_length=ids.numel() - 1, id="a0")]
        a = leave_one_out(model, batch, masks={"a0": mask[None]}, layers=[0])
        assert a.j_full[0].item() == pytest.approx(g["loglik.expected"][0].item(), abs=1e-4)


def test_dp_equals_stp_with_zero_thresholds(loaded):
    class ZeroThresholds(STP):
        def uniforms(self, shape, generator):
            return torch.zeros(self.samples, *shape, dtype=torch.float64)

    model, _ = loaded("tiny-dream")
    batch = make_batch()
    for rule in ("right", "trapezoid", "gauss_legendre"):
        dp = integrated_gradients(model, batch, path=DP(), rule=rule, steps=6, **FAST)
        stp = integrated_gradients(model, batch, path=ZeroThresholds(samples=3), rule=rule,
                                   steps=6, **FAST)
        torch.testing.assert_close(dp.per_example, stp.per_example, rtol=1e-6, atol=1e-8)


def _one_mask_batch():
    batch = make_batch(n=1)
    mask = torch.zeros(12, dtype=torch.bool)
    mask[[6, 8, 9, 11]] = True
    return batch, dict(masks={"ex0": mask[None]}, layers=[0])


def test_stp_narrow_ramp_over_all_orders_is_exact_shapley(loaded):
    """Thresholds that visit every order of the 4 heads once: STP == exact Shapley."""
    model, _ = loaded("tiny-llada")
    batch, kw = _one_mask_batch()
    exact = exact_shapley(model, batch, **kw).scores[0]
    orders = list(itertools.permutations(range(4)))

    class EveryOrder(STP):
        def uniforms(self, shape, generator):
            u = torch.zeros(len(orders), *shape, dtype=torch.float64)
            for i, order in enumerate(orders):
                for rank, head in enumerate(order):
                    u[i, 0, head] = (rank + 0.5) / 4
            return u

    path = EveryOrder(samples=len(orders), ramp="narrow", width=0.002)
    coarse = integrated_gradients(model, batch, path=path, rule="ramp_gauss", steps=2, **kw)
    fine = integrated_gradients(model, batch, path=path, rule="ramp_gauss", steps=8, **kw)
    err_coarse = (coarse.scores[0] - exact).abs().max().item()
    err_fine = (fine.scores[0] - exact).abs().max().item()
    assert exact.abs().max() > 0.2
    assert err_fine < 1e-3 and err_fine < err_coarse / 5, (err_coarse, err_fine)


def test_stp_narrow_ramp_sampled_converges_to_exact_shapley(loaded):
    model, _ = loaded("tiny-llada")
    batch, kw = _one_mask_batch()
    exact = exact_shapley(model, batch, **kw).scores[0]
    errors = []
    for samples in (4, 128):
        path = STP(samples=samples, ramp="narrow", width=0.002, sampling="antithetic")
        a = integrated_gradients(model, batch, path=path, rule="ramp_gauss", steps=4, **kw)
        errors.append((a.scores[0] - exact).abs().max().item())
    assert errors[1] < errors[0]
    assert errors[1] < 0.06 * exact.abs().max().item(), errors


def test_exact_shapley_is_efficient_and_sampling_agrees(loaded):
    model, _ = loaded("tiny-dream")
    batch = make_batch(n=2)
    exact = exact_shapley(model, batch, layers=[1], **FAST)
    assert exact.residual.abs().max() < 1e-5
    sampled = shapley_sampling(model, batch, layers=[1], permutations=24, **FAST)
    assert sampled.residual.abs().max() < 1e-5  # every permutation telescopes exactly
    err = (sampled.scores - exact.scores).abs().max().item()
    assert err < 0.25 * exact.scores.abs().max().item()


def test_leave_one_out_equals_direct_ablation(loaded):
    model, _ = loaded("tiny-llada")
    batch = make_batch(n=1)
    loo = leave_one_out(model, batch, **FAST)
    base = loo.j_full[0]
    for layer, head in [(0, 2), (1, 1)]:
        gates = torch.ones(1, 2, 4)
        gates[0, layer, head] = 0.0
        from headig.attribution import (
            MaskedDiffusionObjective,
            PointRequest,
            as_items,
            evaluate_points,
        )
        obj = MaskedDiffusionObjective(**FAST)
        (vals, _), = evaluate_points(model, obj, [PointRequest(as_items(batch)[0], gates)],
                                     layers=[0, 1], with_grad=False)
        assert loo.scores[layer, head].item() == pytest.approx((base - vals[0]).item(), abs=1e-6)


def test_gradient_at_ones_is_ig_first_point(loaded):
    model, _ = loaded("tiny-dream")
    batch = make_batch(n=2)
    grad = gradient_at_ones(model, batch, **FAST)
    # the left-rule IG with one step on a reversed path would differ; compare to autograd
    from headig.attribution import MaskedDiffusionObjective, PointRequest, as_items, evaluate_points
    obj = MaskedDiffusionObjective(**FAST)
    out = evaluate_points(model, obj, [PointRequest(it, torch.ones(1, 2, 4))
                                       for it in as_items(batch)], layers=[0, 1], with_grad=True)
    mean = torch.stack([g[0] for _, g in out]).mean(0)
    torch.testing.assert_close(grad.scores, mean.float(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", FAMILIES)
def test_batched_equals_sequential_and_seed_determinism(name, loaded):
    model, _ = loaded(name)
    batch = make_batch(n=3) + [dict(input_ids=torch.arange(20, 29), prompt_length=4, id="short")]
    kw = dict(path=STP(samples=2), steps=4, **FAST)
    one = integrated_gradients(model, batch, internal_batch_size=1, **kw)
    many = integrated_gradients(model, batch, internal_batch_size=64, **kw)
    mid = integrated_gradients(model, batch, internal_batch_size=7, examples_per_group=1, **kw)
    torch.testing.assert_close(one.scores, many.scores, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(one.scores, mid.scores, rtol=1e-5, atol=1e-6)
    again = integrated_gradients(model, batch, internal_batch_size=64, **kw)
    assert torch.equal(again.scores, many.scores)
    other = integrated_gradients(model, batch, internal_batch_size=64, seed=1, **kw)
    assert not torch.allclose(other.scores, many.scores)
    # an example's attribution does not depend on the other examples in the run
    alone = integrated_gradients(model, batch[1:2], **kw)
    torch.testing.assert_close(alone.per_example[0], many.per_example[1], rtol=1e-5, atol=1e-7)


def test_postprocess_semantics(loaded):
    model, _ = loaded("tiny-llada")
    batch = make_batch(n=3)
    kw = dict(path=DP(), steps=4, **FAST)
    signed = integrated_gradients(model, batch, postprocess="signed", **kw)
    absd = integrated_gradients(model, batch, postprocess="abs", **kw)
    relu = integrated_gradients(model, batch, postprocess="relu", **kw)
    pe = signed.per_example
    torch.testing.assert_close(signed.scores, pe.mean(0).float())
    torch.testing.assert_close(absd.scores, pe.abs().mean(0).float())
    torch.testing.assert_close(relu.scores, pe.clamp_min(0).mean(0).float())
    assert (absd.scores >= signed.scores.abs() - 1e-7).all()
    assert not torch.allclose(absd.scores, signed.scores.abs())  # φ applies before the mean


def test_variants_dedup_and_prompt_never_masked():
    from headig.attribution import Item, MaskedDiffusionObjective
    obj = MaskedDiffusionObjective(mask_probs=(0.15, 0.9), mask_samples_per_prob=3, seed=3)
    one_token = Item("x", torch.arange(8), torch.arange(8) >= 7)
    v = obj.variants(one_token)
    assert v.masks.shape == (1, 8) and v.weights.tolist() == [1.0]  # 6 draws, 1 unique
    item = Item("y", torch.arange(30), torch.arange(30) >= 10)
    v = obj.variants(item)
    assert not v.masks[:, :10].any() and v.masks.any(1).all()
    assert math.isclose(v.weights.sum().item(), 1.0)
    v2 = MaskedDiffusionObjective(mask_probs=(0.15, 0.9), mask_samples_per_prob=3, seed=3).variants(item)
    assert torch.equal(v.masks, v2.masks)


def test_replace_gives_a_fresh_mask_cache():
    """A copy with another seed draws its own masks instead of reusing the original's."""
    import dataclasses

    from headig.attribution import Item, MaskedDiffusionObjective
    item = Item("y", torch.arange(30), torch.arange(30) >= 10)
    obj = MaskedDiffusionObjective(mask_probs=(0.5,), mask_samples_per_prob=4, seed=0)
    first = obj.variants(item).masks
    other = dataclasses.replace(obj, seed=1)
    fresh = MaskedDiffusionObjective(mask_probs=(0.5,), mask_samples_per_prob=4, seed=1)
    assert torch.equal(other.variants(item).masks, fresh.variants(item).masks)
    assert not torch.equal(other.variants(item).masks, first)
    assert torch.equal(obj.variants(item).masks, first)  # the original keeps its own
    assert other == fresh  # the cache takes no part in equality


def test_resume_after_kill_gives_same_result(loaded, tmp_path, monkeypatch):
    model, _ = loaded("tiny-llada")
    batch = make_batch(n=5)
    kw = dict(path=STP(samples=2), steps=4, examples_per_group=1, **FAST)
    reference = integrated_gradients(model, batch, **kw)
    ckpt = tmp_path / "run.ckpt.safetensors"
    calls = {"n": 0}
    real = est.evaluate_points

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # groups 1-2 done (2 calls each), die inside group 3
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(est, "evaluate_points", dying)
    with pytest.raises(KeyboardInterrupt):
        integrated_gradients(model, batch, checkpoint=ckpt, **kw)
    assert ckpt.is_file() and not list(tmp_path.glob("*.tmp*"))
    calls["n"] = -1000
    counted = {"n": 0}

    def counting(*args, **kwargs):
        counted["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(est, "evaluate_points", counting)
    resumed = integrated_gradients(model, batch, checkpoint=ckpt, **kw)
    assert counted["n"] == 6  # only the 3 remaining examples were computed
    assert torch.equal(resumed.scores, reference.scores)
    torch.testing.assert_close(resumed.residual, reference.residual)
    with pytest.raises(ValueError, match="different settings"):
        integrated_gradients(model, batch, checkpoint=ckpt, **{**kw, "steps": 5})


def _rank_worker(rank, world, init_file, out_file):
    import torch.distributed as dist

    import headig
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        torch.set_num_threads(1)
        model, _ = headig.load_model(FIXTURES / "tiny-dream", tokenizer=False)
        a = integrated_gradients(model, make_batch(n=5), path=STP(samples=2), steps=4, **FAST)
        if rank == 0:
            torch.save({"scores": a.scores, "per_example": a.per_example}, out_file)
    finally:
        dist.destroy_process_group()


def test_two_ranks_equal_one(loaded, tmp_path):
    import torch.multiprocessing as mp
    model, _ = loaded("tiny-dream")
    single = integrated_gradients(model, make_batch(n=5), path=STP(samples=2), steps=4, **FAST)
    out = tmp_path / "rank0.pt"
    mp.start_processes(_rank_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2,
                       join=True, start_method="spawn")
    got = torch.load(out, weights_only=True)
    torch.testing.assert_close(got["scores"], single.scores, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got["per_example"], single.per_example, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(rule="simpson"), ValueError, "expected one of"),
    (dict(steps=0), ValueError, "steps=0"),
    (dict(postprocess="square"), ValueError, "postprocess"),
    (dict(baseline=1.0), ValueError, "baseline"),
    (dict(mask_probs=(0.0,)), ValueError, "mask_probs"),
    (dict(loss_normalize="token"), ValueError, "loss_normalize"),
    (dict(layers=[7]), ValueError, "out of range"),
])
def test_bad_arguments_fail_fast(kwargs, exc, match, loaded):
    model, _ = loaded("tiny-llada")
    with pytest.raises(exc, match=match):
        integrated_gradients(model, make_batch(n=1), **kwargs)


def test_bad_batches(loaded):
    model, _ = loaded("tiny-dream")
    with pytest.raises(ValueError, match="duplicate example id"):
        integrated_gradients(model, make_batch(n=2) + make_batch(n=1))
    with pytest.raises(ValueError, match="empty completion"):
        integrated_gradients(model, [dict(input_ids=torch.arange(5), prompt_length=5, id="a")])
    with pytest.raises(ValueError, match="preceding token"):
        integrated_gradients(model, [dict(input_ids=torch.arange(5), prompt_length=0, id="a")])
    with pytest.raises(ValueError, match="completion_mask"):
        integrated_gradients(model, {"input_ids": torch.zeros(2, 4, dtype=torch.long)})
    with pytest.raises(ValueError, match="max_heads"):
        exact_shapley(model, make_batch(n=1), max_heads=4)


def test_path_weights_sum_to_gate_range():
    u = torch.rand(2, 3, dtype=torch.float64)
    for rule in ("right", "left", "midpoint", "trapezoid"):
        pts = GatePath.points(u, 1 - u, 0.25, 7, rule)
        torch.testing.assert_close(pts.weights.sum(0), torch.full((2, 3), 0.75, dtype=torch.float64))
    pts = GatePath.points(u * 0.9, torch.full((2, 3), 0.1, dtype=torch.float64), 0.0, 3, "ramp_gauss")
    assert pts.gates.shape == (18, 2, 3)
    torch.testing.assert_close(pts.weights.sum(0), torch.ones(2, 3, dtype=torch.float64))


def test_stp_sampling_schemes():
    g = torch.Generator().manual_seed(0)
    u = STP(samples=8, sampling="stratified").uniforms((2, 3), g)
    strata = (u * 8).floor().sort(0).values
    assert torch.equal(strata, torch.arange(8.0, dtype=torch.float64)[:, None, None].expand(8, 2, 3))
    u = STP(samples=4, sampling="antithetic").uniforms((2, 3), g)
    torch.testing.assert_close(u[0] + u[1], torch.ones(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="sampling"):
        STP(sampling="sobol")


def test_old_module_paths_still_work():
    import pathlib

    import headig.estimators as old_est
    import headig.objective as old_obj
    import headig.paths as old_paths
    from headig import attribution

    assert old_paths.Path is GatePath and old_paths.Path is not pathlib.Path
    assert old_paths.RULES == ("right", "left", "midpoint", "trapezoid", "gauss_legendre",
                               "ramp_gauss")
    assert old_est.ESTIMATORS["ig"] is integrated_gradients
    assert old_est.Attribution is attribution.Attribution
    assert old_obj.evaluate_points is attribution.evaluate_points
    assert old_obj.MaskedDiffusionObjective is attribution.MaskedDiffusionObjective
