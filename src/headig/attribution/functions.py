"""One-call forms of the estimators, with the signatures of earlier releases.

Each is ``<Estimator>(model, ...).attribute(batch, ...)``; the classes document the
arguments (:class:`~headig.attribution.Estimator` the shared ones).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from headig.attribution.estimators import (
    ExactShapley,
    GradientAtOnes,
    IntegratedGradients,
    LeaveOneOut,
    ShapleySampling,
)
from headig.attribution.objective import DEFAULT_MASK_PROBS, MaskedDiffusionObjective
from headig.attribution.paths import GatePath
from headig.attribution.results import Attribution


def integrated_gradients(
    model: nn.Module,
    batch: Any,
    *,
    path: GatePath | None = None,
    steps: int | str = "auto",
    rule: str | None = None,
    tol: float = 0.05,
    stability_tol: float | None = None,
    min_steps: int = 4,
    max_steps: int | None = None,
    max_points: int | None = None,
    refine: str | None = None,
    baseline: float = 0.0,
    mask_probs: Sequence[float] = DEFAULT_MASK_PROBS,
    mask_samples_per_prob: int = 2,
    loss_normalize: str = "mean_masked",
    postprocess: str = "signed",
    layers: Sequence[int] | None = None,
    seed: int = 0,
    masks: dict[str, Tensor] | None = None,
    objective: MaskedDiffusionObjective | None = None,
    internal_batch_size: int = 64,
    gradient_checkpointing: bool = False,
    return_per_example: bool = True,
    checkpoint: str | os.PathLike | None = None,
    examples_per_group: int = 4,
    progress: bool = False,
) -> Attribution:
    """HeadIG along ``path`` (default ``STP()``); see :class:`IntegratedGradients`."""
    return IntegratedGradients(
        model, path=path, steps=steps, rule=rule, tol=tol, stability_tol=stability_tol,
        min_steps=min_steps, max_steps=max_steps, max_points=max_points,
        refine=refine, gradient_checkpointing=gradient_checkpointing,
        baseline=baseline, mask_probs=mask_probs, mask_samples_per_prob=mask_samples_per_prob,
        loss_normalize=loss_normalize, postprocess=postprocess, layers=layers, seed=seed,
        masks=masks, objective=objective, internal_batch_size=internal_batch_size,
    ).attribute(batch, return_per_example=return_per_example, checkpoint=checkpoint,
                examples_per_group=examples_per_group, progress=progress)


def shapley_sampling(
    model: nn.Module,
    batch: Any,
    *,
    permutations: int = 8,
    antithetic: bool = True,
    baseline: float = 0.0,
    mask_probs: Sequence[float] = DEFAULT_MASK_PROBS,
    mask_samples_per_prob: int = 2,
    loss_normalize: str = "mean_masked",
    postprocess: str = "signed",
    layers: Sequence[int] | None = None,
    seed: int = 0,
    masks: dict[str, Tensor] | None = None,
    objective: MaskedDiffusionObjective | None = None,
    internal_batch_size: int = 64,
    return_per_example: bool = True,
    checkpoint: str | os.PathLike | None = None,
    examples_per_group: int = 4,
    progress: bool = False,
) -> Attribution:
    """Permutation-sampling Shapley values; see :class:`ShapleySampling`."""
    return ShapleySampling(
        model, permutations=permutations, antithetic=antithetic,
        baseline=baseline, mask_probs=mask_probs, mask_samples_per_prob=mask_samples_per_prob,
        loss_normalize=loss_normalize, postprocess=postprocess, layers=layers, seed=seed,
        masks=masks, objective=objective, internal_batch_size=internal_batch_size,
    ).attribute(batch, return_per_example=return_per_example, checkpoint=checkpoint,
                examples_per_group=examples_per_group, progress=progress)


def exact_shapley(
    model: nn.Module,
    batch: Any,
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
    internal_batch_size: int = 256,
    max_heads: int = 16,
    return_per_example: bool = True,
    checkpoint: str | os.PathLike | None = None,
    examples_per_group: int = 1,
    progress: bool = False,
) -> Attribution:
    """Exact Shapley values over all 2^n coalitions; see :class:`ExactShapley`."""
    return ExactShapley(
        model, max_heads=max_heads,
        baseline=baseline, mask_probs=mask_probs, mask_samples_per_prob=mask_samples_per_prob,
        loss_normalize=loss_normalize, postprocess=postprocess, layers=layers, seed=seed,
        masks=masks, objective=objective, internal_batch_size=internal_batch_size,
    ).attribute(batch, return_per_example=return_per_example, checkpoint=checkpoint,
                examples_per_group=examples_per_group, progress=progress)


def leave_one_out(
    model: nn.Module,
    batch: Any,
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
    internal_batch_size: int = 64,
    return_per_example: bool = True,
    checkpoint: str | os.PathLike | None = None,
    examples_per_group: int = 4,
    progress: bool = False,
) -> Attribution:
    """One head at a time at the baseline; see :class:`LeaveOneOut`."""
    return LeaveOneOut(
        model,
        baseline=baseline, mask_probs=mask_probs, mask_samples_per_prob=mask_samples_per_prob,
        loss_normalize=loss_normalize, postprocess=postprocess, layers=layers, seed=seed,
        masks=masks, objective=objective, internal_batch_size=internal_batch_size,
    ).attribute(batch, return_per_example=return_per_example, checkpoint=checkpoint,
                examples_per_group=examples_per_group, progress=progress)


def gradient_at_ones(
    model: nn.Module,
    batch: Any,
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
    internal_batch_size: int = 64,
    return_per_example: bool = True,
    checkpoint: str | os.PathLike | None = None,
    examples_per_group: int = 4,
    progress: bool = False,
) -> Attribution:
    """∂J/∂α at all-ones times (1 − α0); see :class:`GradientAtOnes`."""
    return GradientAtOnes(
        model,
        baseline=baseline, mask_probs=mask_probs, mask_samples_per_prob=mask_samples_per_prob,
        loss_normalize=loss_normalize, postprocess=postprocess, layers=layers, seed=seed,
        masks=masks, objective=objective, internal_batch_size=internal_batch_size,
    ).attribute(batch, return_per_example=return_per_example, checkpoint=checkpoint,
                examples_per_group=examples_per_group, progress=progress)


__all__ = ["exact_shapley", "gradient_at_ones", "integrated_gradients", "leave_one_out",
           "shapley_sampling"]
