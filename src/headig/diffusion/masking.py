"""Masking variants: which completion tokens a scored row masks.

A *variant* of an example masks each completion token with probability p (for each p of
``mask_probs``, ``samples_per_prob`` times), at least one token, never a prompt token.
Variant v of example ``example_id`` is drawn from its own CPU generator seeded by
``seed_from(seed, example_id, v)``, so an example's masks depend only on (seed, id,
variant): not on the device, the batch, the other examples or their order. This lets
every gate point, head subset and pruned model be scored on the same masks (common
random numbers).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["DEFAULT_MASK_PROBS", "collapse_variants", "sample_variant_masks", "seed_from"]

DEFAULT_MASK_PROBS: tuple[float, ...] = (0.15, 0.3, 0.5, 0.7, 0.9)


def seed_from(*parts: Any) -> int:
    """A 63-bit seed derived from any printable parts (stable across runs and platforms)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def sample_variant_masks(completion: Tensor, *, example_id: Any, seed: int = 0,
                         mask_probs: Sequence[float] = DEFAULT_MASK_PROBS,
                         samples_per_prob: int = 2) -> Tensor:
    """Bool [len(mask_probs) * samples_per_prob, T]: the example's masking variants.

    ``completion`` is the bool [T] completion flag of the example (it must hold at least
    one token). Variants come in the order (p, sample); variant v draws ``rand`` per
    completion token from a generator seeded by ``seed_from(seed, example_id, v)`` and
    masks those below p; when none is, one position drawn from the same generator is.
    """
    completion = torch.as_tensor(completion).bool().cpu()
    positions = completion.nonzero().flatten()
    if positions.numel() == 0:
        raise ValueError(f"example {example_id!r} has no completion token to mask")
    if int(samples_per_prob) < 1 or not len(mask_probs):
        raise ValueError(f"mask_probs={list(mask_probs)}, samples_per_prob={samples_per_prob}: "
                         "need at least one probability and one sample")
    draws = []
    v = 0
    for p in mask_probs:
        for _ in range(int(samples_per_prob)):
            gen = torch.Generator().manual_seed(seed_from(seed, example_id, v))
            pick = torch.rand(positions.numel(), generator=gen) < p
            if not bool(pick.any()):
                pick[torch.randint(positions.numel(), (1,), generator=gen)] = True
            m = torch.zeros(completion.numel(), dtype=torch.bool)
            m[positions[pick]] = True
            draws.append(m)
            v += 1
    return torch.stack(draws)


def collapse_variants(masks: Tensor) -> tuple[Tensor, Tensor]:
    """Identical variants scored once: (unique masks [U, T], weights [U] float64, sum 1).

    Short completions often draw the same mask twice; weighting each unique mask by its
    frequency gives the same mean loss with fewer rows.
    """
    unique, counts = torch.unique(masks, dim=0, return_counts=True)
    return unique, counts.to(torch.float64) / counts.sum()
