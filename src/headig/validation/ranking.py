"""Orders in which to prune heads: one-shot scores, greedy re-attribution, leave-one-out.

A score computed once on the full model says how much each head contributes *with every
other head present*. After a few heads are gone the others compensate or break, so the
k least important heads of the full model need not be the least important set of k.
Three ways to order the heads for the "most" / "least" arms of a pruning sweep:

* ``oneshot``: the given scores, sorted (what :func:`headig.gating.select_heads` does);
* ``loo``: leave-one-out scores, J(all) − J(all but h), on the attribution data;
* ``iterative``: greedy. Attribute on the model with the heads removed so far (HeadIG
  with the caller's settings, or leave-one-out), remove the least (or most) important
  remaining head, repeat.

Every method gives a *nested* removal order per arm, so the k-head set for every k
comes from one run. Attribution always runs on the data given here (the training split);
the sweep evaluates on held-out data.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from headig.gating import HeadMask, normalize_layers
from headig.models.family import family_of

RANKINGS = ("oneshot", "iterative", "loo")
RANKED_ARMS = ("most", "least")
ESTIMATORS = ("headig", "loo")

Attribute = Callable[[nn.Module, Any], Tensor]
"""(model, attribution batch) -> [L, H] scores, positive = the head helps."""

__all__ = ["ESTIMATORS", "RANKED_ARMS", "RANKINGS", "Attribute", "HeadOrder", "RankingSettings",
           "attribution_kwargs_from_meta", "attributor", "head_orders", "iterative_order",
           "order_from_scores"]


@dataclass(frozen=True)
class RankingSettings:
    """How a pruning sweep orders the heads it removes.

    Attributes:
        methods: any of "oneshot", "iterative", "loo", compared in one sweep.
        batch: attribution examples (the training split, never the held-out data);
            needed by "iterative" and "loo".
        estimator: what "iterative" re-attributes with: "loo" (default: leave-one-out,
            which found the dispensable heads best in docs/validation.md) or "headig"
            (HeadIG, :func:`headig.integrated_gradients` with ``attribution_kwargs``).
        attribution_kwargs: keyword arguments of the estimator (path, steps, objective,
            seed, ...); use the settings of the one-shot scores for a like-for-like
            comparison. ``layers`` is set by the sweep.
        attribute: a custom re-attribution ``(model, batch) -> [L, H]``, instead of
            ``estimator``.
    """

    methods: Sequence[str] = ("oneshot",)
    batch: Any = None
    estimator: str = "loo"
    attribution_kwargs: Mapping[str, Any] = field(default_factory=dict)
    attribute: Attribute | None = None


@dataclass
class HeadOrder:
    """Nested removal orders of one ranking method: arm -> heads, first removed first.

    ``keep(arm, k)`` removes the first k heads of the arm's order, so the sets are nested
    in k by construction. ``meta`` records the method, estimator, seeds and, for
    "iterative", the scores seen at every step.
    """

    method: str
    orders: dict[str, list[tuple[int, int]]]
    n_layers: int
    n_heads: int
    meta: dict[str, Any] = field(default_factory=dict)

    def keep(self, arm: str, k: int) -> Tensor:
        """Bool [L, H] mask of the kept heads after removing the first k of ``arm``."""
        order = self.orders[arm]
        if not 0 <= k <= len(order):
            raise ValueError(f"k={k}; the {self.method} {arm} order has {len(order)} heads")
        keep = torch.ones(self.n_layers, self.n_heads, dtype=torch.bool)
        for layer, head in order[:k]:
            keep[layer, head] = False
        return keep


def _candidates(scores: Tensor, layers: Sequence[int], by: str) -> Tensor:
    if by not in ("signed", "abs"):
        raise ValueError(f"by={by!r}; expected 'signed' or 'abs'")
    sub = torch.as_tensor(scores, dtype=torch.float64)[list(layers)]
    if not torch.isfinite(sub).all():
        raise ValueError("scores contain NaN or inf in the prunable layers")
    return sub.abs().flatten() if by == "abs" else sub.flatten()


def order_from_scores(scores: Any, arm: str, *, layers: Sequence[int], by: str = "signed",
                      n: int | None = None) -> list[tuple[int, int]]:
    """The first ``n`` heads (default all) that ``arm`` removes, ranked once by ``scores``.

    Ties break by (layer, head) order, as in :func:`headig.gating.select_heads`, so the
    first k heads are exactly the heads ``select_heads`` removes at k.
    """
    if arm not in RANKED_ARMS:
        raise ValueError(f"arm={arm!r}; expected one of {list(RANKED_ARMS)}")
    s = scores.scores if hasattr(scores, "scores") else scores
    flat = _candidates(s, layers, by)
    n_heads = torch.as_tensor(s).shape[1]
    idx = torch.sort(-flat if arm == "most" else flat, stable=True).indices.tolist()
    idx = idx if n is None else idx[:n]
    return [(int(layers[i // n_heads]), int(i % n_heads)) for i in idx]


def attribution_kwargs_from_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """HeadIG keyword arguments that reproduce a score file's settings (its ``meta``).

    Lets the iterative ranking re-attribute exactly as the one-shot scores were computed
    (path, steps, rule, seed, baseline, postprocess, objective). Settings the file does not
    record keep the estimator's defaults; a file from another estimator gives {}.
    """
    from headig.objective import MaskedDiffusionObjective
    from headig.paths import DP, STP

    if meta.get("estimator") != "integrated_gradients":
        return {}
    out: dict[str, Any] = {}
    if meta.get("path") == "DP":
        out["path"] = DP()
    elif meta.get("path") == "STP":
        out["path"] = STP(**{k: meta[k] for k in ("samples", "ramp", "width", "sampling")
                             if k in meta})
    for key in ("steps", "rule", "seed", "baseline", "postprocess"):
        if meta.get(key) is not None:
            out[key] = meta[key]
    if "mask_probs" in meta and not meta.get("explicit_masks"):
        out["objective"] = MaskedDiffusionObjective(
            mask_probs=tuple(meta["mask_probs"]),
            mask_samples_per_prob=int(meta.get("mask_samples_per_prob", 2)),
            loss_normalize=meta.get("loss_normalize", "mean_masked"),
            seed=int(meta.get("mask_seed", 0)))
    return out


def attributor(estimator: str = "headig", **kwargs: Any) -> Attribute:
    """A re-attribution function for :func:`iterative_order`: HeadIG or leave-one-out.

    ``kwargs`` go to :func:`headig.integrated_gradients` / :func:`headig.leave_one_out`.
    The estimators run under the sweep's :class:`~headig.gating.HeadMask`, whose gates
    multiply theirs, so an already removed head stays removed on every path point.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator={estimator!r}; expected one of {list(ESTIMATORS)}")

    def attribute(model: nn.Module, batch: Any) -> Tensor:
        import headig

        fn = headig.integrated_gradients if estimator == "headig" else headig.leave_one_out
        return fn(model, batch, return_per_example=False, **kwargs).scores.detach().cpu()

    return attribute


def iterative_order(model: nn.Module, batch: Any, attribute: Attribute, arm: str, *,
                    steps: int, layers: Sequence[int], by: str = "signed",
                    on_step: Callable[[int, tuple[int, int]], None] | None = None
                    ) -> tuple[list[tuple[int, int]], list[Tensor]]:
    """Greedy pruning: re-attribute on the pruned model, remove its least (most) important head.

    Step i attributes ``batch`` with the i heads removed so far masked out, then removes
    the remaining head (in ``layers``) with the lowest ("least") or highest ("most")
    score. Ties break by (layer, head) order.

    Returns:
        the removal order (``steps`` heads) and the [L, H] scores seen at every step.
    """
    if arm not in RANKED_ARMS:
        raise ValueError(f"arm={arm!r}; expected one of {list(RANKED_ARMS)}")
    family = family_of(model)
    shape = (family.n_layers, family.n_heads)
    lyr = list(layers)
    if not 0 <= steps <= len(lyr) * family.n_heads:
        raise ValueError(f"steps={steps}; expected 0 <= steps <= {len(lyr) * family.n_heads}")
    keep = torch.ones(shape, dtype=torch.bool)
    order: list[tuple[int, int]] = []
    seen: list[Tensor] = []
    for i in range(steps):
        with HeadMask(model, keep.clone()):
            scores = torch.as_tensor(attribute(model, batch)).detach().cpu()
        if tuple(scores.shape) != shape:
            raise ValueError(f"the attribution returned shape {tuple(scores.shape)}; "
                             f"expected [L, H] = {list(shape)}")
        seen.append(scores.clone())
        flat = _candidates(scores, lyr, by)
        flat = -flat if arm == "most" else flat
        alive = keep[lyr].flatten()
        flat = torch.where(alive, flat, torch.full_like(flat, float("inf")))
        j = int(torch.sort(flat, stable=True).indices[0])
        head = (lyr[j // family.n_heads], j % family.n_heads)
        keep[head] = False
        order.append(head)
        if on_step is not None:
            on_step(i + 1, head)
    return order, seen


def head_orders(model: nn.Module, settings: RankingSettings, *, scores: Any, max_k: int,
                layers: Sequence[int], arms: Sequence[str] = RANKED_ARMS, by: str = "signed",
                on_stage: Callable[[str], None] | None = None) -> dict[str, HeadOrder]:
    """One :class:`HeadOrder` per method of ``settings`` (first ``max_k`` heads per arm).

    Args:
        scores: the one-shot scores (:class:`~headig.importance.HeadImportance` or [L, H]).
        max_k: the largest head count the sweep prunes.
        layers: the prunable layers.
        arms: the ranked arms to order ("most", "least").
    """
    family = family_of(model)
    lyr = normalize_layers(list(layers), family.n_layers)
    stage = on_stage or (lambda _msg: None)
    methods = list(dict.fromkeys(settings.methods))
    bad = [m for m in methods if m not in RANKINGS]
    if bad or not methods:
        raise ValueError(f"rankings={list(settings.methods)}; expected a non-empty subset of "
                         f"{list(RANKINGS)}")
    arms = [a for a in RANKED_ARMS if a in arms]
    if settings.estimator not in ESTIMATORS and settings.attribute is None:
        raise ValueError(f"estimator={settings.estimator!r}; expected one of {list(ESTIMATORS)}")
    if any(m != "oneshot" for m in methods) and settings.batch is None:
        raise ValueError("the iterative and loo rankings attribute on training examples: pass "
                         "RankingSettings(batch=...) (never the held-out data)")
    kwargs = {**dict(settings.attribution_kwargs), "layers": lyr}
    out: dict[str, HeadOrder] = {}
    for method in methods:
        t0 = time.time()
        meta: dict[str, Any] = {"method": method, "by": by}
        if method == "oneshot":
            orders = {a: order_from_scores(scores, a, layers=lyr, by=by, n=max_k) for a in arms}
            meta["estimator"] = dict(getattr(scores, "meta", {}) or {}).get("estimator")
        elif method == "loo":
            stage(f"ranking loo: leave-one-out on {len(settings.batch)} attribution examples")
            loo_kwargs = {k: v for k, v in kwargs.items() if k not in ("path", "steps", "rule")}
            s = attributor("loo", **loo_kwargs)(model, settings.batch)
            orders = {a: order_from_scores(s, a, layers=lyr, by=by, n=max_k) for a in arms}
            meta.update(estimator="leave_one_out", scores=s.tolist(),
                        seed=int(loo_kwargs.get("seed", 0)))
        else:
            attribute = settings.attribute or attributor(settings.estimator, **(
                kwargs if settings.estimator == "headig" else
                {k: v for k, v in kwargs.items() if k not in ("path", "steps", "rule")}))
            orders, steps_seen = {}, {}
            for arm in arms:
                stage(f"ranking iterative {arm}: {max_k} re-attributions "
                      f"({'custom' if settings.attribute else settings.estimator}) on "
                      f"{len(settings.batch)} attribution examples")
                orders[arm], seen = iterative_order(model, settings.batch, attribute, arm,
                                                    steps=max_k, layers=lyr, by=by)
                steps_seen[arm] = [t.tolist() for t in seen]
            meta.update(estimator="custom" if settings.attribute else settings.estimator,
                        seed=int(kwargs.get("seed", 0)), step_scores=steps_seen)
        meta["seconds"] = time.time() - t0
        out[method] = HeadOrder(method, orders, family.n_layers, family.n_heads, meta)
    return out
