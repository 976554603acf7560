"""Masked-diffusion mathematics, in one place.

What lives here:

* :mod:`~headig.diffusion.alignment` – the family's logit shift: which raw output row
  predicts which position (full logits, or only the rows that predict chosen positions);
* :mod:`~headig.diffusion.loss` – the one masked-token cross-entropy and its per-row
  reduction;
* :mod:`~headig.diffusion.masking` – the one seeded masking-variant sampler.

Dependency rule: this package may import :mod:`headig.models` (and torch), never the
attribution, validation, interventions or CLI layers; those build on it.
"""

from __future__ import annotations

from headig.diffusion.alignment import (
    align_logits,
    gather_aligned,
    has_preceding_row,
    source_rows,
)
from headig.diffusion.loss import LOSS_NORMALIZE, masked_row_loss, sum_by_row, token_ce
from headig.diffusion.masking import (
    DEFAULT_MASK_PROBS,
    collapse_variants,
    sample_variant_masks,
    seed_from,
)

__all__ = [
    "DEFAULT_MASK_PROBS", "LOSS_NORMALIZE", "align_logits", "collapse_variants",
    "gather_aligned", "has_preceding_row", "masked_row_loss", "sample_variant_masks",
    "seed_from", "source_rows", "sum_by_row", "token_ce",
]
