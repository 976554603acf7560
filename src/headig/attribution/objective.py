"""The attribution objective J(α) = −(masked-reconstruction loss on the completion span).

For each example, a set of *masking variants* is drawn once by the one seeded sampler of
:mod:`headig.diffusion.masking` (mask probabilities × samples, at least one completion
token masked, prompt never masked) and reused at every gate point (common random numbers). The loss of a variant is the cross-entropy at its
masked completion positions, aligned with the family's logit shift (Dream predicts
position i from output row i-1). J_j(α) is minus the weighted mean over variants.

:func:`as_items` is the one place where the accepted batch forms are checked and turned
into :class:`Item` rows, so a malformed batch fails here, before any model work.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from headig.diffusion.loss import LOSS_NORMALIZE
from headig.diffusion.masking import (
    DEFAULT_MASK_PROBS,
    collapse_variants,
    sample_variant_masks,
    seed_from,
)


@dataclass(frozen=True)
class Item:
    """One example as the objective sees it: unpadded ids and which positions are completion."""

    id: str
    input_ids: Tensor  # [T] long, CPU
    completion: Tensor  # [T] bool, CPU

    @property
    def length(self) -> int:
        return int(self.input_ids.numel())


def _token_ids(value: Any, where: str) -> Tensor:
    """Integer token ids as a CPU long tensor; floats are refused rather than truncated."""
    ids = torch.as_tensor(value)
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(f"{where}: input_ids must be integer token ids (int64 tensor or list of "
                        f"ints); got dtype {str(ids.dtype).removeprefix('torch.')}")
    return ids.cpu().long()


def _prompt_completion(p: Any, length: int, where: str) -> Tensor:
    """Completion mask ``[prompt_length, length)``; a prompt length outside [0, T) is refused."""
    try:
        if isinstance(p, bool):
            raise TypeError
        p = operator.index(p)
    except TypeError:
        raise TypeError(f"{where}: prompt_length={p!r}; expected an integer") from None
    if p < 0:
        raise ValueError(f"{where}: prompt_length={p}; expected 0 <= prompt_length < "
                         f"len(input_ids) = {length}")
    return torch.arange(length) >= p


def as_items(batch: Any) -> list[Item]:
    """Normalise the accepted batch forms into a list of :class:`Item`.

    Accepted:
      * a mapping with ``input_ids`` [N, T] and ``completion_mask`` [N, T] (bool), optional
        ``attention_mask`` [N, T] (1 = real token; padding is dropped) and ``ids`` (N names);
      * a sequence of objects or dicts with ``input_ids`` [T] and ``prompt_length`` (the
        completion is ``[prompt_length, T)``) or ``completion_mask`` [T], optional ``id``
        (this includes :class:`headig.data.EncodedExample`, taken as it is).
    """
    items: list[Item] = []
    if isinstance(batch, Mapping):
        if "input_ids" not in batch or "completion_mask" not in batch:
            raise ValueError("a batch mapping needs 'input_ids' [N, T] and 'completion_mask' [N, T]"
                             f"; got keys {sorted(batch)}")
        ids = _token_ids(batch["input_ids"], "batch")
        comp = torch.as_tensor(batch["completion_mask"]).bool()
        if ids.dim() == 1:
            ids, comp = ids[None], comp[None]
        if ids.shape != comp.shape or ids.dim() != 2:
            raise ValueError(f"input_ids {tuple(ids.shape)} and completion_mask {tuple(comp.shape)} "
                             "must both be [N, T]")
        attn = batch.get("attention_mask")
        attn = torch.ones_like(ids, dtype=torch.bool) if attn is None else torch.as_tensor(attn).bool()
        if attn.shape != ids.shape:
            raise ValueError(f"attention_mask {tuple(attn.shape)} must match input_ids "
                             f"{tuple(ids.shape)}")
        names = batch.get("ids")
        if names is None or len(names) == 0:
            names = [str(i) for i in range(ids.shape[0])]
        elif len(names) != ids.shape[0]:
            raise ValueError(f"batch 'ids' has {len(names)} names for {ids.shape[0]} rows of "
                             "input_ids; expected one unique name per row")
        for n, row_ids, row_comp, row_attn in zip(names, ids, comp, attn):
            items.append(Item(str(n), row_ids[row_attn].cpu().long(), row_comp[row_attn].cpu()))
    else:
        for i, ex in enumerate(batch):
            get = ex.get if isinstance(ex, Mapping) else (lambda k, d=None, ex=ex: getattr(ex, k, d))
            where = f"example {i}"
            raw_ids = get("input_ids")
            if raw_ids is None:
                raise ValueError(f"{where} has no 'input_ids'")
            ids = _token_ids(raw_ids, where).flatten()
            comp = get("completion_mask")
            if callable(comp):  # headig.data.EncodedExample.completion_mask() is a method
                comp = comp()
            if comp is None:
                p = get("prompt_length")
                if p is None:
                    raise ValueError(f"example {i} has neither 'prompt_length' nor 'completion_mask'")
                comp = _prompt_completion(p, ids.numel(), where)
            items.append(Item(str(get("id", None) or i), ids, torch.as_tensor(comp).cpu().bool().flatten()))
    seen: set[str] = set()
    for it in items:
        if it.id in seen:
            raise ValueError(f"duplicate example id {it.id!r}; ids seed the masks and must be unique")
        seen.add(it.id)
        if it.completion.shape != it.input_ids.shape:
            raise ValueError(f"example {it.id!r}: completion mask and input_ids differ in length")
        if not bool(it.completion.any()):
            raise ValueError(f"example {it.id!r} has an empty completion span")
    if not items:
        raise ValueError("no examples to attribute")
    return items


def check_token_range(items: Sequence[Item], vocab_size: int) -> None:
    """Refuse token ids outside ``[0, vocab_size)`` before they reach the embedding (where they
    would fail deep in a forward on CPU, or corrupt memory silently on some devices)."""
    for it in items:
        if it.input_ids.numel() == 0:
            continue
        lo, hi = int(it.input_ids.min()), int(it.input_ids.max())
        if lo < 0 or hi >= vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"example {it.id!r}: token id {bad} is outside the model's "
                             f"embedding table [0, {vocab_size}); were the ids made with "
                             "this model's tokenizer?")


@dataclass
class Variants:
    """The masking variants of one example: unique masks [V, T] and their weights (sum 1)."""

    masks: Tensor
    weights: Tensor


@dataclass
class MaskedDiffusionObjective:
    """J = −(mean over masking variants of the masked-token cross-entropy on the completion).

    Args:
        mask_probs: per-token mask probabilities; each gives ``mask_samples_per_prob`` draws.
        mask_samples_per_prob: draws per probability.
        loss_normalize: ``mean_masked`` (mean over a variant's masked tokens) or ``sum``.
        seed: masks come from a CPU generator seeded by (seed, example id, variant), so they
            do not depend on device, batch composition or rank.
        masks: explicit masks instead of sampled ones: {example id: bool [V, T]}.
    """

    mask_probs: Sequence[float] = DEFAULT_MASK_PROBS
    mask_samples_per_prob: int = 2
    loss_normalize: str = "mean_masked"
    seed: int = 0
    masks: Mapping[str, Tensor] | None = None
    # Not an init field: dataclasses.replace() then gives the copy its own, empty cache
    # instead of sharing masks drawn under the old settings.
    _cache: dict[str, Variants] = field(default_factory=dict, init=False, repr=False,
                                        compare=False)

    def __post_init__(self) -> None:
        probs = [float(p) for p in self.mask_probs]
        if not probs or any(not 0.0 < p <= 1.0 for p in probs):
            raise ValueError(f"mask_probs={list(self.mask_probs)}; expected probabilities in (0, 1]")
        self.mask_probs = tuple(probs)
        if int(self.mask_samples_per_prob) < 1:
            raise ValueError(f"mask_samples_per_prob={self.mask_samples_per_prob}; expected >= 1")
        if self.loss_normalize not in LOSS_NORMALIZE:
            raise ValueError(f"loss_normalize={self.loss_normalize!r}; expected one of {list(LOSS_NORMALIZE)}")

    def settings(self) -> dict[str, Any]:
        return {"mask_probs": list(self.mask_probs),
                "mask_samples_per_prob": int(self.mask_samples_per_prob),
                "loss_normalize": self.loss_normalize, "mask_seed": int(self.seed),
                "explicit_masks": self.masks is not None}

    def variants(self, item: Item) -> Variants:
        """Unique masks of ``item`` with weights; identical draws are evaluated once."""
        cached = self._cache.get(item.id)
        if cached is not None:
            return cached
        comp = item.completion
        if self.masks is not None:
            if item.id not in self.masks:
                raise KeyError(f"explicit masks given but none for example {item.id!r}")
            raw = torch.as_tensor(self.masks[item.id]).bool().cpu()
            raw = raw[None] if raw.dim() == 1 else raw
            if raw.shape[-1] != item.length:
                raise ValueError(f"masks for {item.id!r} have length {raw.shape[-1]}, "
                                 f"expected {item.length}")
            if bool((raw & ~comp).any()):
                raise ValueError(f"masks for {item.id!r} cover prompt positions; only the "
                                 "completion may be masked")
            if not bool(raw.any(-1).all()):
                raise ValueError(f"a mask for {item.id!r} masks no token")
            unique, weights = collapse_variants(raw)
        else:
            unique, weights = collapse_variants(sample_variant_masks(
                comp, example_id=item.id, seed=self.seed, mask_probs=self.mask_probs,
                samples_per_prob=int(self.mask_samples_per_prob)))
        out = Variants(unique, weights)
        self._cache[item.id] = out
        return out


__all__ = ["DEFAULT_MASK_PROBS", "LOSS_NORMALIZE", "Item", "MaskedDiffusionObjective", "Variants",
           "as_items", "check_token_range", "seed_from"]
