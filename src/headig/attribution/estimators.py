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

* :class:`IntegratedGradients` – HeadIG along DP or STP with a registered quadrature rule.
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
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from headig.attribution import engine
from headig.attribution._checks import check_baseline, check_int
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


@register_estimator("integrated_gradients", aliases=("ig",))
class IntegratedGradients(Estimator):
    """HeadIG: Integrated Gradients of J over per-head gates, from α0 to 1.

    Args:
        path: :class:`~headig.attribution.DP` or :class:`~headig.attribution.STP` (default
            ``STP()``: 4 path samples, original ramp).
        steps: quadrature points per path sample (intervals for grid rules; nodes per ramp
            for ``ramp_gauss``); an integer >= 1.
        rule: a registered quadrature rule (default: the path's own; see
            :mod:`headig.attribution.rules`).
        gradient_checkpointing: recompute activations in the backward (long sequences).
        **shared: the arguments of :class:`Estimator`.
    """

    complete = True

    def __init__(self, model: nn.Module, *, path: GatePath | None = None, steps: int = 8,
                 rule: str | None = None, gradient_checkpointing: bool = False,
                 **shared: Any) -> None:
        self.path = STP() if path is None else path
        if not isinstance(self.path, GatePath):
            raise TypeError(f"path={path!r}; expected a gate path such as DP() or STP()")
        self.rule = self.path.check_rule(rule or self.path.default_rule)
        self.steps = check_int("steps", steps, 1)
        self.gradient_checkpointing = bool(gradient_checkpointing)
        super().__init__(model, **shared)
        zeros = torch.zeros(self.shape, dtype=torch.float64)
        GatePath.points(zeros, torch.ones(self.shape, dtype=torch.float64), self.baseline,
                        self.steps, self.rule)  # a user rule fails here, before model work

    def settings(self) -> dict[str, Any]:
        return {**self.path.settings(), "steps": self.steps, "rule": self.rule,
                "seed": self.seed, "path_seed": self.seed}

    def attribute_group(self, group: list[Item]) -> list[Tensor]:
        model, shape = self.model, self.shape
        requests, weights, owners = [], [], []
        for it in group:
            gen = torch.Generator().manual_seed(seed_from(self.seed, it.id, "path"))
            ramps = self.path.sample_ramps(shape, gen)
            for u, w in ramps:
                pts = GatePath.points(u, w, self.baseline, self.steps, self.rule)
                requests.append(engine.PointRequest(it, pts.gates))
                weights.append(pts.weights / len(ramps))
                owners.append(it.id)
        prev = getattr(model, "gradient_checkpointing", False)
        if self.gradient_checkpointing and hasattr(model, "gradient_checkpointing"):
            model.gradient_checkpointing = True
        try:
            out = self._evaluate(requests, with_grad=True)
        finally:
            if hasattr(model, "gradient_checkpointing"):
                model.gradient_checkpointing = prev
        acc = {it.id: torch.zeros(shape, dtype=torch.float64) for it in group}
        for owner, wts, (_, grads) in zip(owners, weights, out):
            acc[owner] += (grads * wts).sum(0)
        return [acc[it.id] for it in group]


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
