"""Head-attribution estimators: one base class, one ``attribute()`` signature, one result type.

Every estimator scores each head of each example on J = −(masked-reconstruction loss),
positive = the head helps, then applies the per-example postprocess φ and averages:
score = mean_j φ(A_j). The result carries the completeness residual per example,
Σ_h A_jh − (J_j(1) − J_j(α0)), which is zero for an exact IG or Shapley attribution and
tells how far a finite budget is from it.

Captum-style use: ``IntegratedGradients(model, path=STP(), steps=8).attribute(batch)``.
The shared arguments (baseline, objective, postprocess, layers, seed, internal batch size)
are taken, checked and documented once, by :class:`Estimator`; each subclass adds only its
own budget arguments and says which gate points it needs (:meth:`Estimator.attribute_group`).

* :class:`IntegratedGradients` – HeadIG along DP or STP with a registered quadrature rule;
  by default (``steps="auto"``) refined per example until the residual meets ``tol``.
* :class:`ShapleySampling` – permutation sampling (forward-only, antithetic pairs).
* :class:`ExactShapley` – enumerates every coalition (≤ 16 heads), the ground truth.
* :class:`LeaveOneOut` – J(1) − J(1 with head h at the baseline).
* :class:`GradientAtOnes` – ∂J/∂α at all-ones times (1 − α0) (Michel et al., 2019).
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from headig.attribution import engine
from headig.attribution._checks import check_baseline, check_int, check_positive
from headig.attribution.objective import (
    DEFAULT_MASK_PROBS,
    Item,
    MaskedDiffusionObjective,
    as_items,
    check_token_range,
    seed_from,
)
from headig.attribution.paths import STP, GatePath
from headig.attribution.registry import register_estimator
from headig.attribution.results import POSTPROCESS, Attribution
from headig.attribution.rules import NESTED_RULES, grid_indices, ramp_gates
from headig.attribution.runner import run_attribution
from headig.interventions import normalize_layers
from headig.models.family import family_of


class Estimator(ABC):
    """Base class of every head-attribution estimator.

    Args:
        model: a model from :func:`headig.load_model` (or an official LLaDA/Dream model).
        baseline: α0, the gate value of an absent head (0 = zero-ablation); below 1.
        mask_probs, mask_samples_per_prob, loss_normalize, seed, masks: the objective (see
            :class:`~headig.attribution.MaskedDiffusionObjective`), or pass ``objective``.
        postprocess: φ applied to each example's attribution before the mean
            (``signed``, ``abs``, ``relu``).
        layers: attributed layers (default all); other heads stay at gate 1.
        internal_batch_size: rows (gate point × masking variant) per forward/backward
            (default: the estimator's own, :attr:`default_internal_batch_size`).

    Every argument is checked here, before any model work.
    """

    name: ClassVar[str] = ""
    #: whether Σ_h A_h = J(1) − J(α0) holds in the limit of the budget (IG, Shapley)
    complete: ClassVar[bool] = False
    default_internal_batch_size: ClassVar[int] = 64
    default_examples_per_group: ClassVar[int] = 4

    def __init__(
        self,
        model: nn.Module,
        *,
        baseline: float = 0.0,
        mask_probs: Sequence[float] = DEFAULT_MASK_PROBS,
        mask_samples_per_prob: int = 2,
        loss_normalize: str = "mean_masked",
        postprocess: str = "signed",
        layers: Sequence[int] | None = None,
        seed: int = 0,
        masks: dict[str, Tensor] | None = None,
        objective: MaskedDiffusionObjective | None = None,
        internal_batch_size: int | None = None,
    ) -> None:
        self.model = model
        self.baseline = check_baseline(baseline)
        if postprocess not in POSTPROCESS:
            raise ValueError(f"postprocess={postprocess!r}; expected one of {list(POSTPROCESS)}")
        self.postprocess = postprocess
        self.seed = check_int("seed", seed)
        self.internal_batch_size = check_int(
            "internal_batch_size",
            self.default_internal_batch_size if internal_batch_size is None
            else internal_batch_size, 1)
        self.family = family_of(model)
        self.layers = normalize_layers(layers, self.family.n_layers)
        self.shape: tuple[int, int] = (len(self.layers), self.family.n_heads)
        if objective is None:
            objective = MaskedDiffusionObjective(
                mask_probs=mask_probs, mask_samples_per_prob=check_int(
                    "mask_samples_per_prob", mask_samples_per_prob, 1),
                loss_normalize=loss_normalize, seed=seed, masks=masks)
        self.objective = objective

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """This estimator's own settings, for metadata and the run fingerprint."""

    @abstractmethod
    def attribute_group(self, group: list[Item]) -> list[Tensor]:
        """Raw attributions [L', H] (float64) of a group of examples, in order."""

    def check_items(self, items: Sequence[Item]) -> None:
        """Refuse examples the model cannot score, before the first forward."""
        check_token_range(items, engine.embedding_size(self.model, self.family))
        shift = self.family.logit_shift
        for it in items:
            if shift and bool(it.completion[:shift].any()):
                raise ValueError(f"example {it.id!r}: with a logit shift of {shift} the first "
                                 "completion token needs a preceding token (e.g. BOS)")

    def attribute(
        self,
        batch: Any,
        *,
        return_per_example: bool = True,
        checkpoint: str | os.PathLike | None = None,
        examples_per_group: int | None = None,
        progress: bool = False,
    ) -> Attribution:
        """Attribute J to every head for each example of ``batch``.

        Args:
            batch: a list of encoded examples (``input_ids`` [T], ``prompt_length``, ``id``;
                e.g. :class:`headig.data.EncodedExample`) or a mapping with ``input_ids`` /
                ``completion_mask`` [N, T] (see :func:`~headig.attribution.as_items`).
            return_per_example: keep every example's raw attribution in the result.
            checkpoint: a file for atomic per-example checkpoints; a rerun resumes from it
                and gives the identical result.
            examples_per_group: examples evaluated together; a checkpoint is written after
                each group (default: the estimator's own).
            progress: show a progress bar.
        """
        group = check_int("examples_per_group", self.default_examples_per_group
                          if examples_per_group is None else examples_per_group, 1)
        items = as_items(batch)
        self.check_items(items)
        return run_attribution(
            self.model, items, estimator=self.name, attribute_group=self.attribute_group,
            settings=self.settings(), objective=self.objective, layers=self.layers,
            baseline=self.baseline, postprocess_name=self.postprocess,
            internal_batch_size=self.internal_batch_size,
            return_per_example=return_per_example, checkpoint=checkpoint,
            examples_per_group=group, progress=progress)

    def _evaluate(self, requests: list[engine.PointRequest], with_grad: bool):
        return engine.evaluate_points(self.model, self.objective, requests, layers=self.layers,
                                      with_grad=with_grad,
                                      internal_batch_size=self.internal_batch_size)


def _coalition_gates(present: Tensor, baseline: float, shape: tuple[int, int]) -> Tensor:
    """Bool presence [Q, n] -> gates [Q, L', H] (present = 1, absent = baseline)."""
    g = torch.where(present, 1.0, baseline).to(torch.float32)
    return g.reshape(present.shape[0], *shape)


AUTO = "auto"
#: extrapolated rule available only with ``steps="auto"``: Romberg on nested trapezoid grids
ROMBERG = "romberg"


def _romberg(levels: list[Tensor]) -> Tensor:
    """Richardson-extrapolated estimate from trapezoid estimates at K, 2K, 4K, ... intervals.

    Valid (and then of order 2l+2) when the integrand is smooth along the whole path, as on
    DP; across STP's kinks the error has no h² expansion, so it is not used there.
    """
    row = list(levels)
    m = 1
    while len(row) > 1:
        row = [row[i + 1] + (row[i + 1] - row[i]) / (4 ** m - 1) for i in range(len(row) - 1)]
        m += 1
    return row[0]


@dataclass
class _AutoState:
    """One example's progress through the refinement levels."""

    item: Item
    ramps: list[tuple[Tensor, Tensor]]
    gap: float                                   # J(1) − J(α0)
    cache: list[dict[int, Tensor]]               # per path sample: finest-grid key -> ∇J
    levels: list[Tensor] = field(default_factory=list)  # trapezoid-type estimate per level
    estimate: Tensor | None = None
    steps: int = 0
    points: int = 0
    residual: float = math.inf
    stability: float = math.inf
    converged: bool = False


@register_estimator("integrated_gradients", aliases=("ig",))
class IntegratedGradients(Estimator):
    """HeadIG: Integrated Gradients of J over per-head gates, from α0 to 1.

    Args:
        path: :class:`~headig.attribution.DP` or :class:`~headig.attribution.STP` (default
            ``STP()``: 4 path samples, original ramp).
        steps: quadrature points per path sample (intervals for grid rules; nodes per ramp
            for ``ramp_gauss``); an integer >= 1, or ``"auto"`` (the default): refine a
            nested rule per example, evaluating only the new points, until the example's
            completeness residual |Σ_h A_h − (J(1) − J(α0))| / |J(1) − J(α0)| is at most
            ``tol`` (and, with ``stability_tol``, until the attribution vector changed by at
            most that fraction, in L1, since the previous level), or the budget is spent.
        rule: a registered quadrature rule (default: the path's own; see
            :mod:`headig.attribution.rules`). With ``steps="auto"``: a nested rule
            (trapezoid, right, left) or ``romberg`` (uniform trapezoid levels with Richardson
            extrapolation, for smooth paths); default trapezoid.
        tol, stability_tol, min_steps, max_steps, max_points: ``steps="auto"`` only: the
            residual target; the optional per-head stability target; the intervals per path
            sample of the first level; the finest grid, 1/max_steps (levels are
            min_steps·2^l; default 64 uniform, 1024 adaptive); and the budget of gradient
            points per example, all path samples together (default 64 per path sample).
        refine: ``steps="auto"`` only: ``uniform`` (halve every interval per level) or
            ``adaptive`` (halve the intervals that carry the error; trapezoid only; the
            default for trapezoid).
        gradient_checkpointing: recompute activations in the backward (long sequences).
        **shared: the arguments of :class:`Estimator`.

    With ``steps="auto"`` the result's ``meta["convergence"]`` records the mode, targets,
    budget, and per example the intervals reached, points evaluated, residual, stability
    and whether it converged.
    """

    complete = True

    def __init__(self, model: nn.Module, *, path: GatePath | None = None,
                 steps: int | str = AUTO, rule: str | None = None, tol: float = 0.05,
                 stability_tol: float | None = None, min_steps: int = 4,
                 max_steps: int | None = None, max_points: int | None = None,
                 refine: str | None = None,
                 gradient_checkpointing: bool = False, **shared: Any) -> None:
        self.path = STP() if path is None else path
        if not isinstance(self.path, GatePath):
            raise TypeError(f"path={path!r}; expected a gate path such as DP() or STP()")
        self.auto = isinstance(steps, str)
        if self.auto:
            if steps != AUTO:
                raise ValueError(f"steps={steps!r}; expected an integer >= 1 or 'auto'")
            self.rule = rule or "trapezoid"
            if self.rule != ROMBERG:
                self.path.check_rule(self.rule)  # registered, fits the path
                if self.rule not in NESTED_RULES:
                    raise ValueError(
                        f"rule={self.rule!r} has no nested refinement, so steps='auto' (the "
                        "default) cannot refine it; pass an integer steps (e.g. steps=8) or a "
                        f"nested rule ({', '.join(NESTED_RULES)})")
            if refine is None:
                refine = "adaptive" if self.rule == "trapezoid" else "uniform"
            self.tol = check_positive("tol", tol)
            self.stability_tol = (None if stability_tol is None
                                  else check_positive("stability_tol", stability_tol))
            if refine not in ("uniform", "adaptive"):
                raise ValueError(f"refine={refine!r}; expected 'uniform' or 'adaptive'")
            if refine == "adaptive" and self.rule != "trapezoid":
                raise ValueError(f"refine='adaptive' splits trapezoid intervals; rule={self.rule!r} "
                                 "needs refine='uniform'")
            self.refine = refine
            self.min_steps = check_int("min_steps", min_steps, 1)
            if max_steps is None:
                max_steps = 1024 if refine == "adaptive" else 64
            self.max_steps = check_int("max_steps", max_steps, self.min_steps)
            if max_points is None:
                max_points = 64 * self.path.samples
            self.max_points = check_int("max_points", max_points, 1)
            self.depth = int(math.floor(math.log2(self.max_steps / self.min_steps) + 1e-12))
            self.steps: int | str = AUTO
        else:
            self.rule = self.path.check_rule(rule or self.path.default_rule)
            self.steps = check_int("steps", steps, 1)
        self.gradient_checkpointing = bool(gradient_checkpointing)
        super().__init__(model, **shared)
        if not self.auto:
            zeros = torch.zeros(self.shape, dtype=torch.float64)
            GatePath.points(zeros, torch.ones(self.shape, dtype=torch.float64), self.baseline,
                            self.steps, self.rule)  # a user rule fails here, before model work

    def settings(self) -> dict[str, Any]:
        out = {**self.path.settings(), "steps": self.steps, "rule": self.rule,
               "seed": self.seed, "path_seed": self.seed}
        if self.auto:
            out.update(self.auto_settings())
        return out

    def auto_settings(self) -> dict[str, Any]:
        """The convergence targets and budget of ``steps="auto"``."""
        return {"refine": self.refine, "tol": self.tol, "stability_tol": self.stability_tol,
                "min_steps": self.min_steps, "max_steps": self.max_steps,
                "max_points": self.max_points}

    def attribute(self, batch: Any, **kwargs: Any) -> Attribution:
        attr = super().attribute(batch, **kwargs)
        if self.auto:
            attr.meta["convergence"] = self._summary(attr)
        return attr

    attribute.__doc__ = Estimator.attribute.__doc__

    def _with_checkpointing(self, requests: list[engine.PointRequest]):
        model = self.model
        prev = getattr(model, "gradient_checkpointing", False)
        if self.gradient_checkpointing and hasattr(model, "gradient_checkpointing"):
            model.gradient_checkpointing = True
        try:
            return self._evaluate(requests, with_grad=True)
        finally:
            if hasattr(model, "gradient_checkpointing"):
                model.gradient_checkpointing = prev

    def _ramps(self, it: Item) -> list[tuple[Tensor, Tensor]]:
        gen = torch.Generator().manual_seed(seed_from(self.seed, it.id, "path"))
        return self.path.sample_ramps(self.shape, gen)

    def attribute_group(self, group: list[Item]) -> list[Any]:
        if self.auto:
            if self.refine == "adaptive":
                return self._attribute_adaptive(group)
            return self._attribute_auto(group)
        shape = self.shape
        requests, weights, owners = [], [], []
        for it in group:
            ramps = self._ramps(it)
            for u, w in ramps:
                pts = GatePath.points(u, w, self.baseline, self.steps, self.rule)
                requests.append(engine.PointRequest(it, pts.gates))
                weights.append(pts.weights / len(ramps))
                owners.append(it.id)
        out = self._with_checkpointing(requests)
        acc = {it.id: torch.zeros(shape, dtype=torch.float64) for it in group}
        for owner, wts, (_, grads) in zip(owners, weights, out):
            acc[owner] += (grads * wts).sum(0)
        return [acc[it.id] for it in group]

    # ------------------------------------------------------------------ steps="auto"
    def _level_points(self, st: _AutoState, k: int, level: int) -> list[tuple[int, list[int]]]:
        """Per path sample, the finest-grid keys of the points level ``level`` (k intervals)
        needs and has not evaluated yet."""
        rule = "trapezoid" if self.rule == ROMBERG else self.rule
        scale = 2 ** (self.depth - level)
        return [(s, [i * scale for i in grid_indices(rule, k) if i * scale not in st.cache[s]])
                for s in range(len(st.ramps))]

    def _attribute_auto(self, group: list[Item]) -> list[tuple[Tensor, dict[str, Any]]]:
        """Nested refinement per example; see the class docstring."""
        shape, b = self.shape, self.baseline
        rule = "trapezoid" if self.rule == ROMBERG else self.rule
        ones, base = torch.ones(1, *shape), torch.full((1, *shape), b)
        ends = self._evaluate([engine.PointRequest(it, torch.cat([ones, base])) for it in group],
                              with_grad=False)
        states = [_AutoState(it, ramps := self._ramps(it), float(v[0] - v[1]),
                             [{} for _ in ramps]) for it, (v, _) in zip(group, ends)]
        active = list(states)
        level, k = 0, self.min_steps
        while active:
            requests, slots = [], []
            for st in active:
                for s, keys in self._level_points(st, k, level):
                    if not keys:
                        continue
                    u, w = st.ramps[s]
                    tau = torch.tensor(keys, dtype=torch.float64) / (self.min_steps * 2 ** self.depth)
                    requests.append(engine.PointRequest(st.item, ramp_gates(u, w, b, tau).float()))
                    slots.append((st, s, keys))
            for (st, s, keys), (_, grads) in zip(slots, self._with_checkpointing(requests)):
                st.cache[s].update(zip(keys, grads))
                st.points += len(keys)
            scale = 2 ** (self.depth - level)
            still = []
            for st in active:
                est = torch.zeros(shape, dtype=torch.float64)
                for s, (u, w) in enumerate(st.ramps):
                    pts = GatePath.points(u, w, b, k, rule)
                    g = torch.stack([st.cache[s][i * scale] for i in grid_indices(rule, k)])
                    est += (g * pts.weights).sum(0) / len(st.ramps)
                st.levels.append(est)
                new = _romberg(st.levels) if self.rule == ROMBERG else est
                if st.estimate is not None:
                    st.stability = float((new - st.estimate).abs().sum()
                                         / new.abs().sum().clamp_min(1e-30))
                st.estimate, st.steps = new, k
                st.residual = abs(float(new.sum()) - st.gap) / max(abs(st.gap), 1e-12)
                st.converged = st.residual <= self.tol and (
                    self.stability_tol is None or st.stability <= self.stability_tol)
                if st.converged or level == self.depth:
                    continue
                extra = sum(len(keys) for _, keys in self._level_points(st, 2 * k, level + 1))
                if self.max_points is None or st.points + extra <= self.max_points:
                    still.append(st)
            active = still
            level, k = level + 1, 2 * k
        return [(st.estimate, {"steps": st.steps, "levels": len(st.levels),
                               "points": st.points,
                               "residual": st.residual,
                               "stability": None if math.isinf(st.stability) else st.stability,
                               "converged": st.converged}) for st in states]

    def _attribute_adaptive(self, group: list[Item]) -> list[tuple[Tensor, dict[str, Any]]]:
        """Adaptive bisection of trapezoid intervals, per example (see the class docstring).

        Every path sample starts on the uniform ``min_steps`` grid, and the first round
        halves every interval. A halved interval's local error indicator is
        ‖T(a, b) − T(a, m) − T(m, b)‖₁ over heads (T = the trapezoid term of one interval),
        shared by its halves; each later round halves the intervals that carry half of the
        example's summed indicator (Dörfler marking), largest first; if the indicators add
        up to less than the observed residual, they have missed something, and the round
        halves every interval instead. On STP the original
        ramps steepen towards τ = 1 and the kinks sit at the thresholds, so the points go
        where the path bends instead of everywhere.
        """
        shape, b = self.shape, self.baseline
        fine = self.min_steps * 2 ** self.depth
        ones, base = torch.ones(1, *shape), torch.full((1, *shape), b)
        ends = self._evaluate([engine.PointRequest(it, torch.cat([ones, base])) for it in group],
                              with_grad=False)
        states = [_AutoState(it, ramps := self._ramps(it), float(v[0] - v[1]),
                             [{} for _ in ramps]) for it, (v, _) in zip(group, ends)]
        start = list(range(0, fine + 1, 2 ** self.depth))
        todo: dict[int, list[tuple[int, int, int]]] = {  # example -> (sample, left, right)
            i: [(s, k, k) for s in range(len(st.ramps)) for k in start]
            for i, st in enumerate(states)}
        indicator: list[list[dict[int, float]]] = [[{} for _ in st.ramps] for st in states]

        def alpha(st: _AutoState, s: int, keys: list[int]) -> Tensor:
            u, w = st.ramps[s]
            return ramp_gates(u, w, b, torch.tensor(keys, dtype=torch.float64) / fine)

        while todo:
            requests, slots = [], []
            for i, splits in todo.items():
                st = states[i]
                for s in range(len(st.ramps)):
                    keys = sorted({(lo + hi) // 2 for t, lo, hi in splits if t == s})
                    if keys:
                        requests.append(engine.PointRequest(st.item, alpha(st, s, keys).float()))
                        slots.append((i, s, keys))
            for (i, s, keys), (_, grads) in zip(slots, self._with_checkpointing(requests)):
                states[i].cache[s].update(zip(keys, grads))
                states[i].points += len(keys)
            nxt: dict[int, list[tuple[int, int, int]]] = {}
            for i, splits in todo.items():
                st = states[i]
                for s, lo, hi in splits:
                    if hi > lo:  # a halved interval: its local error indicator
                        mid = (lo + hi) // 2
                        c = st.cache[s]
                        a = alpha(st, s, [lo, mid, hi])
                        whole = (c[lo] + c[hi]) * (a[2] - a[0]) / 2
                        halves = (c[lo] + c[mid]) * (a[1] - a[0]) / 2 + \
                            (c[mid] + c[hi]) * (a[2] - a[1]) / 2
                        e = float((whole - halves).abs().sum()) / len(st.ramps)
                        indicator[i][s][lo] = indicator[i][s][mid] = e / 2
                est = torch.zeros(shape, dtype=torch.float64)
                for s in range(len(st.ramps)):
                    keys = sorted(st.cache[s])
                    a = alpha(st, s, keys)
                    delta = a[1:] - a[:-1]
                    wts = torch.zeros_like(a)
                    wts[:-1] += delta / 2
                    wts[1:] += delta / 2
                    est += (torch.stack([st.cache[s][k] for k in keys]) * wts).sum(0)
                est /= len(st.ramps)
                st.levels.append(est)
                if st.estimate is not None:
                    st.stability = float((est - st.estimate).abs().sum()
                                         / est.abs().sum().clamp_min(1e-30))
                st.estimate = est
                st.steps = max(len(c) - 1 for c in st.cache)
                st.residual = abs(float(est.sum()) - st.gap) / max(abs(st.gap), 1e-12)
                st.converged = st.residual <= self.tol and (
                    self.stability_tol is None or st.stability <= self.stability_tol)
                if st.converged:
                    continue
                cand = []
                for s, c in enumerate(st.cache):
                    keys = sorted(c)
                    cand += [(indicator[i][s].get(lo, math.inf), s, lo, hi)
                             for lo, hi in zip(keys[:-1], keys[1:]) if hi - lo >= 2]
                cand.sort(key=lambda x: (-x[0], x[1], x[2]))
                total = sum(x[0] for x in cand)
                if cand and (math.isinf(total) or total < abs(st.residual * st.gap)):
                    # the indicators miss the observed error (a feature between points that
                    # agreed by chance): halve everything, as a uniform level would
                    marked = cand
                else:
                    run, marked = 0.0, []
                    for x in cand:
                        if run >= 0.5 * total and marked:
                            break
                        marked.append(x)
                        run += x[0]
                if self.max_points is not None:
                    marked = marked[:max(0, self.max_points - st.points)]
                if marked:
                    nxt[i] = [(s, lo, hi) for _, s, lo, hi in marked]
            todo = nxt
        return [(st.estimate, {"steps": st.steps, "levels": len(st.levels),
                               "points": st.points, "residual": st.residual,
                               "stability": None if math.isinf(st.stability) else st.stability,
                               "converged": st.converged}) for st in states]

    def _summary(self, attr: Attribution) -> dict[str, Any]:
        """meta["convergence"]: targets, budget, and what each example reached."""
        info = attr.meta.pop("example_info", None) or [{} for _ in attr.example_ids]
        gap = (attr.j_full - attr.j_baseline).abs()
        return {
            "mode": AUTO, "rule": self.rule, **self.auto_settings(),
            "converged": all(bool(x.get("converged")) for x in info),
            "n_converged": sum(bool(x.get("converged")) for x in info),
            "max_steps_reached": max((x.get("steps", 0) for x in info), default=0),
            "points_per_example": [x.get("points") for x in info],
            "points_total": sum(x.get("points", 0) for x in info),
            "final_residual": float(attr.residual.abs().sum() / gap.sum().clamp_min(1e-12)),
            "per_example": info,
        }


@register_estimator("shapley_sampling")
class ShapleySampling(Estimator):
    """Permutation-sampling Shapley values (forward-only): heads switch on in a random order
    and each is credited with its marginal contribution; ``antithetic`` pairs every order
    with its reverse. Cost: permutations × (heads + 1) gate points per example.

    Args:
        permutations: orders per example (an integer >= 1).
        antithetic: pair every order with its reverse.
        **shared: the arguments of :class:`Estimator`.
    """

    complete = True

    def __init__(self, model: nn.Module, *, permutations: int = 8, antithetic: bool = True,
                 **shared: Any) -> None:
        self.permutations = check_int("permutations", permutations, 1)
        self.antithetic = bool(antithetic)
        super().__init__(model, **shared)

    def settings(self) -> dict[str, Any]:
        return {"permutations": self.permutations, "antithetic": self.antithetic,
                "seed": self.seed}

    def attribute_group(self, group: list[Item]) -> list[Tensor]:
        shape = self.shape
        n = shape[0] * shape[1]
        requests, orders = [], []
        for it in group:
            gen = torch.Generator().manual_seed(seed_from(self.seed, it.id, "perm"))
            perms: list[Tensor] = []
            while len(perms) < self.permutations:
                p = torch.randperm(n, generator=gen)
                perms.append(p)
                if self.antithetic and len(perms) < self.permutations:
                    perms.append(p.flip(0))
            present = []
            for p in perms:
                rank = torch.empty(n, dtype=torch.long)
                rank[p] = torch.arange(n)
                steps_ = torch.arange(n + 1)[:, None]
                present.append(rank[None, :] < steps_)  # [n+1, n]: first t heads present
            requests.append(engine.PointRequest(
                it, _coalition_gates(torch.cat(present), self.baseline, shape)))
            orders.append(perms)
        out = self._evaluate(requests, with_grad=False)
        results = []
        for perms, (vals, _) in zip(orders, out):
            acc = torch.zeros(n, dtype=torch.float64)
            vals = vals.view(len(perms), n + 1)
            for p, v in zip(perms, vals):
                acc[p] += v[1:] - v[:-1]
            results.append((acc / len(perms)).view(shape))
        return results


@register_estimator("exact_shapley")
class ExactShapley(Estimator):
    """Exact Shapley values by enumerating all 2^n coalitions of the attributed heads.

    Args:
        max_heads: refuse more attributed heads than this (2^n evaluations per example).
        **shared: the arguments of :class:`Estimator`.
    """

    complete = True
    default_internal_batch_size = 256
    default_examples_per_group = 1

    def __init__(self, model: nn.Module, *, max_heads: int = 16, **shared: Any) -> None:
        self.max_heads = check_int("max_heads", max_heads, 1)
        super().__init__(model, **shared)
        n = self.shape[0] * self.shape[1]
        if n > self.max_heads:
            raise ValueError(f"exact Shapley over {n} heads needs 2^{n} evaluations per example; "
                             f"limit is max_heads={self.max_heads} (restrict layers or raise "
                             "max_heads)")
        self.n = n
        self.codes = torch.arange(2 ** n)
        self.present = ((self.codes[:, None] >> torch.arange(n)) & 1).bool()  # [2^n, n]
        self.size = self.present.sum(1)
        fact = [math.factorial(i) for i in range(n + 1)]
        self.weight_by_size = torch.tensor([fact[s] * fact[n - s - 1] / fact[n] for s in range(n)],
                                           dtype=torch.float64)
        self.gates = _coalition_gates(self.present, self.baseline, self.shape)

    def settings(self) -> dict[str, Any]:
        return {"coalitions": 2 ** self.n}

    def attribute_group(self, group: list[Item]) -> list[Tensor]:
        out = self._evaluate([engine.PointRequest(it, self.gates) for it in group],
                             with_grad=False)
        n, present, codes = self.n, self.present, self.codes
        results = []
        for vals, _ in out:
            phi = torch.zeros(n, dtype=torch.float64)
            for i in range(n):
                without = ~present[:, i]
                s = codes[without]
                phi[i] = (self.weight_by_size[self.size[without]]
                          * (vals[s | (1 << i)] - vals[s])).sum()
            results.append(phi.view(self.shape))
        return results


@register_estimator("leave_one_out", aliases=("loo",))
class LeaveOneOut(Estimator):
    """Ablation of one head at a time: A_h = J(1) − J(1 with head h at the baseline)."""

    def __init__(self, model: nn.Module, **shared: Any) -> None:
        super().__init__(model, **shared)
        n = self.shape[0] * self.shape[1]
        present = torch.ones(n + 1, n, dtype=torch.bool)
        present[torch.arange(1, n + 1), torch.arange(n)] = False
        self.gates = _coalition_gates(present, self.baseline, self.shape)

    def settings(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def attribute_group(self, group: list[Item]) -> list[Tensor]:
        out = self._evaluate([engine.PointRequest(it, self.gates) for it in group],
                             with_grad=False)
        return [(vals[0] - vals[1:]).view(self.shape) for vals, _ in out]


@register_estimator("gradient_at_ones")
class GradientAtOnes(Estimator):
    """First-order head importance: ∂J/∂α_h at α = 1, times (1 − α0) (Michel et al., 2019)."""

    def settings(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def attribute_group(self, group: list[Item]) -> list[Tensor]:
        ones = torch.ones(1, *self.shape)
        out = self._evaluate([engine.PointRequest(it, ones) for it in group], with_grad=True)
        return [grads[0] * (1.0 - self.baseline) for _, grads in out]


__all__ = ["Estimator", "ExactShapley", "GradientAtOnes", "IntegratedGradients", "LeaveOneOut",
           "ShapleySampling"]
