"""Pruning orders (headig.validation.ranking): one-shot, leave-one-out, greedy iterative."""

from __future__ import annotations

import pytest
import torch

from headig import HeadMask, integrated_gradients, leave_one_out, select_heads
from headig.objective import MaskedDiffusionObjective
from headig.paths import STP
from headig.validation.prune import PruneSelection, prune_sweep
from headig.validation.ranking import (
    HeadOrder,
    RankingSettings,
    attribution_kwargs_from_meta,
    attributor,
    head_orders,
    iterative_order,
    order_from_scores,
)
from headig.validation.settings import EvalSettings

FAST = MaskedDiffusionObjective(mask_probs=(0.3, 0.7), mask_samples_per_prob=1)
SCORES = torch.tensor([[0.5, -0.2, 0.1, 0.9], [-0.4, 0.3, 0.1, -0.7]])


def random_batch(n=3, lengths=(10, 10, 12), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [dict(input_ids=torch.randint(0, 490, (length,), generator=g),
                 prompt_length=length - 4, id=f"ex{i}") for i, length in enumerate(lengths[:n])]


def removed_set(keep):
    return {tuple(x) for x in (~keep).nonzero().tolist()}


# ----------------------------------------------------------------------------- one-shot


@pytest.mark.parametrize("by", ["signed", "abs"])
def test_oneshot_order_is_select_heads_at_every_k(by):
    """The first k heads of the order are the heads select_heads removes (ties included:
    0.1 appears twice), so a one-shot ranking through the order layer changes nothing."""
    for arm in ("most", "least"):
        order = order_from_scores(SCORES, arm, layers=[0, 1], by=by)
        assert len(order) == len(set(order)) == 8
        for k in range(8):
            assert removed_set(select_heads(SCORES, arm, k=k, layers=[0, 1], by=by)) \
                == set(order[:k])
    assert order_from_scores(SCORES, "least", layers=[1], n=2) == [(1, 3), (1, 0)]
    with pytest.raises(ValueError, match="arm"):
        order_from_scores(SCORES, "random", layers=[0])


def test_head_order_keep_is_nested():
    order = HeadOrder("x", {"least": [(1, 3), (0, 1), (1, 0)]}, 2, 4)
    sets = [removed_set(order.keep("least", k)) for k in range(4)]
    assert sets[0] == set() and all(a < b for a, b in zip(sets, sets[1:]))
    assert sets[3] == {(1, 3), (0, 1), (1, 0)}
    with pytest.raises(ValueError, match="order has 3 heads"):
        order.keep("least", 4)


# ----------------------------------------------------------------------------- iterative


def test_estimators_compose_with_a_head_mask(loaded):
    """Re-attribution runs under HeadMask: the estimator's gates multiply the mask's, so a
    removed head scores exactly 0 and the others are scored on the pruned model."""
    model, _ = loaded("tiny-llada")
    batch = random_batch()
    keep = torch.ones(2, 4, dtype=torch.bool)
    keep[0, 1] = False
    with HeadMask(model, keep):
        loo = leave_one_out(model, batch, objective=FAST).scores
        ig = integrated_gradients(model, batch, path=STP(samples=2), steps=3,
                                  objective=FAST).scores
    assert loo[0, 1].abs() < 1e-6 and ig[0, 1] == 0.0
    full = leave_one_out(model, batch, objective=FAST).scores
    assert (loo - full).abs().max() > 1e-3  # the other heads were scored without L0.H1


@pytest.mark.parametrize("estimator", ["loo", "headig"])
@pytest.mark.parametrize("arm", ["least", "most"])
def test_iterative_order_is_the_hand_rolled_greedy_loop(loaded, estimator, arm):
    model, _ = loaded("tiny-llada")
    batch = random_batch()
    kwargs = {"objective": FAST, "layers": [0, 1]}
    if estimator == "headig":
        kwargs.update(path=STP(samples=2), steps=3)
    fn = leave_one_out if estimator == "loo" else integrated_gradients
    # hand-rolled: attribute on the pruned model, drop the extreme live head, repeat
    keep = torch.ones(2, 4, dtype=torch.bool)
    expected = []
    for _ in range(5):
        with HeadMask(model, keep.clone()):
            s = fn(model, batch, **kwargs).scores.double()
        s = s.masked_fill(~keep, float("-inf") if arm == "most" else float("inf"))
        flat = int(s.argmax() if arm == "most" else s.argmin())
        head = (flat // 4, flat % 4)
        keep[head] = False
        expected.append(head)
    order, seen = iterative_order(model, batch, attributor(estimator, **kwargs), arm, steps=5,
                                  layers=[0, 1])
    assert order == expected
    assert len(seen) == 5 and seen[0].shape == (2, 4)
    # step 0 is the one-shot ranking of the full model
    assert order[0] == order_from_scores(fn(model, batch, **kwargs).scores, arm,
                                         layers=[0, 1], n=1)[0]


def test_iterative_order_respects_layers_and_rejects_bad_input(loaded):
    model, _ = loaded("tiny-llada")
    batch = random_batch(n=2)
    order, _ = iterative_order(model, batch, attributor("loo", objective=FAST, layers=[1]),
                               "least", steps=4, layers=[1])
    assert sorted(order) == [(1, 0), (1, 1), (1, 2), (1, 3)]
    with pytest.raises(ValueError, match="steps"):
        iterative_order(model, batch, attributor("loo"), "least", steps=5, layers=[1])
    with pytest.raises(ValueError, match="shape"):
        iterative_order(model, batch, lambda m, b: torch.zeros(3, 3), "least", steps=1,
                        layers=[0])
    with pytest.raises(ValueError, match="estimator"):
        attributor("shapley")


def test_attribution_kwargs_from_meta_reproduce_the_scores(loaded):
    """The iterative ranking re-attributes with the one-shot file's own settings."""
    model, _ = loaded("tiny-llada")
    batch = random_batch(n=2)
    obj = MaskedDiffusionObjective(mask_probs=(0.5,), mask_samples_per_prob=2, seed=3)
    att = integrated_gradients(model, batch, path=STP(samples=3, sampling="antithetic"),
                               steps=4, seed=5, objective=obj)
    kwargs = attribution_kwargs_from_meta(att.to_importance().meta)
    assert kwargs["steps"] == 4 and kwargs["seed"] == 5 and kwargs["path"].samples == 3
    again = integrated_gradients(model, batch, **kwargs)
    torch.testing.assert_close(again.scores, att.scores, atol=0, rtol=0)
    assert attribution_kwargs_from_meta({"estimator": "leave_one_out"}) == {}


# ----------------------------------------------------------------------------- the sweep


def test_prune_sweep_compares_rankings_and_oneshot_matches_the_default(loaded):
    model, _ = loaded("tiny-llada")
    held, attr = random_batch(seed=1), random_batch(seed=2)
    ev = EvalSettings(objective=FAST)
    sel = PruneSelection(ks=[1, 3], random_seeds=2, seed=7)
    plain = prune_sweep(model, held, SCORES, sel, oracle=True, oracle_examples=2, evaluation=ev)
    settings = RankingSettings(methods=("oneshot", "iterative", "loo"), batch=attr,
                               estimator="loo", attribution_kwargs={"objective": FAST})
    multi = prune_sweep(model, held, SCORES, sel, oracle=True, oracle_examples=2,
                        evaluation=ev, ranking=settings)
    assert "ranking" not in plain.runs[0] and "rankings" not in plain.meta
    assert multi.rankings == ["oneshot", "iterative", "loo"]
    one = multi.for_ranking("oneshot")
    assert one.table() == plain.table()
    assert one.oracle == plain.oracle and one.fidelity == plain.fidelity
    assert set(multi.fidelity) == {f"{m} {a}" for m in multi.rankings for a in ("most", "least")}
    # random draws are shared by every ranking; one row per (k, arm, ranking)
    rows = multi.table()
    assert [(r["k"], r["arm"], r["ranking"]) for r in rows if r["k"] == 1] == [
        (1, "most", "oneshot"), (1, "most", "iterative"), (1, "most", "loo"),
        (1, "least", "oneshot"), (1, "least", "iterative"), (1, "least", "loo"),
        (1, "random", "")]
    # the loo arms remove the heads leave-one-out ranks lowest / highest
    loo = leave_one_out(model, attr, objective=FAST).scores
    for arm in ("most", "least"):
        run = next(r for r in multi.runs if r["ranking"] == "loo" and r["arm"] == arm
                   and r["k"] == 3)
        assert set(map(tuple, run["removed"])) == removed_set(select_heads(loo, arm, k=3))
        it = next(r for r in multi.runs if r["ranking"] == "iterative" and r["arm"] == arm
                  and r["k"] == 3)
        assert {tuple(h) for h in it["removal_order"]} == set(map(tuple, it["removed"]))
        k1 = next(r for r in multi.runs if r["ranking"] == "iterative" and r["arm"] == arm
                  and r["k"] == 1)
        assert it["removal_order"][:1] == k1["removal_order"]  # nested
    md = multi.to_markdown()
    assert "| 1 | least | iterative |" in md and "loo least" in md


def test_rankings_that_attribute_need_training_data(loaded):
    model, _ = loaded("tiny-llada")
    with pytest.raises(ValueError, match="training examples"):
        head_orders(model, RankingSettings(methods=("loo",)), scores=SCORES, max_k=1,
                    layers=[0, 1])
    with pytest.raises(ValueError, match="rankings"):
        head_orders(model, RankingSettings(methods=("best",)), scores=SCORES, max_k=1,
                    layers=[0, 1])
