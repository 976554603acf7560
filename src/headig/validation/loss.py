"""The held-out masked-diffusion loss with heads removed, and how validation reads data.

Every check (pruning, sparse attention, the oracle) measures the same quantity, the
attribution objective's loss L = −J on held-out examples, so it lives here once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from headig.attribution import (
    Item,
    MaskedDiffusionObjective,
    PointRequest,
    as_items,
    evaluate_points,
)
from headig.models.family import family_of

__all__ = ["default_objective", "device_of", "eval_items", "loss_at_masks", "spread"]


def device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (where inputs must go)."""
    return next(model.parameters()).device


def default_objective(objective: MaskedDiffusionObjective | None) -> MaskedDiffusionObjective:
    """``objective``, or the attribution default (so validation scores what was attributed)."""
    return objective if objective is not None else MaskedDiffusionObjective()


def eval_items(batch: Any) -> list[Item]:
    """:func:`headig.attribution.as_items`, also for :class:`headig.data.EncodedExample` lists.

    (``EncodedExample.completion_mask`` is a method, which ``as_items`` would read as a
    value, so such objects are passed on as ``prompt_length`` dicts.)
    """
    if isinstance(batch, Mapping):
        return as_items(batch)
    batch = list(batch)
    if batch and all(isinstance(x, Item) for x in batch):
        return batch
    rows = []
    for ex in batch:
        if not isinstance(ex, Mapping) and callable(getattr(ex, "completion_mask", None)):
            rows.append({"input_ids": ex.input_ids, "prompt_length": ex.prompt_length,
                         "id": getattr(ex, "id", None)})
        else:
            rows.append(ex)
    return as_items(rows)


def spread(items: Sequence[Any], n: int) -> list[Any]:
    """``n`` items evenly spaced through ``items`` (all of them when n >= len).

    Used for the oracle's subset: data files are often grouped (by task, by source), and
    the first n rows would cover only the first group.
    """
    if n < 1:
        raise ValueError(f"n={n}; expected >= 1")
    m = len(items)
    if n >= m:
        return list(items)
    return [items[(i * m) // n] for i in range(n)]


def loss_at_masks(model: nn.Module, batch: Any, keep: Tensor, *,
                  objective: MaskedDiffusionObjective | None = None,
                  internal_batch_size: int = 256) -> Tensor:
    """Held-out masked-diffusion loss with heads removed, for each keep mask.

    Args:
        batch: examples as accepted by :func:`headig.attribution.as_items`.
        keep: bool [L, H] or [M, L, H] (False = zero-ablate the head).
        objective: the loss (masking variants, normalisation); default
            ``MaskedDiffusionObjective()``, the attribution default. The same masks are
            used for every keep mask (common random numbers), so differences between
            masks are not masking noise.

    Returns:
        float64 [M] (or a 0-d tensor for a single [L, H] mask): the mean over examples of
        the per-example loss −J.
    """
    family = family_of(model)
    keep = torch.as_tensor(keep)
    single = keep.dim() == 2
    masks = keep[None] if single else keep
    expected = (family.n_layers, family.n_heads)
    if masks.dim() != 3 or tuple(masks.shape[1:]) != expected or masks.dtype != torch.bool:
        raise ValueError(f"keep must be a bool tensor [L, H] or [M, L, H] with [L, H] = "
                         f"{list(expected)}; got {masks.dtype} {tuple(keep.shape)}")
    items = eval_items(batch)
    obj = default_objective(objective)
    gates = masks.to(torch.float32)
    out = evaluate_points(model, obj, [PointRequest(it, gates) for it in items],
                          layers=list(range(family.n_layers)), with_grad=False,
                          internal_batch_size=internal_batch_size)
    j = torch.stack([v for v, _ in out])  # [N, M]
    loss = -j.mean(0)
    return loss[0] if single else loss
