"""Masked-diffusion mathematics, in one place.

What lives here:

* :mod:`~headig.diffusion.alignment` – the family's logit shift: which raw output row
  predicts which position (full logits, or only the rows that predict chosen positions);
* :mod:`~headig.diffusion.loss` – the one masked-token cross-entropy and its per-row
  reduction;
* :mod:`~headig.diffusion.masking` – the one seeded masking-variant sampler;
* :mod:`~headig.diffusion.generation` – the samplers (LLaDA blocks, Dream algorithms) and
  :func:`predict_logits`, the aligned forward every decoder uses;
* :mod:`~headig.diffusion.likelihood` – the masked-diffusion log-likelihood estimator;
* :mod:`~headig.diffusion.schedule` – where a model is in a denoising run, for
  interventions that follow the schedule.

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
from headig.diffusion.generation import (
    generate,
    generate_dream_style,
    generate_llada_style,
    predict_logits,
    truncate_at_stop,
)
from headig.diffusion.likelihood import exact_loglikelihood, loglikelihood, loglikelihood_batch
from headig.diffusion.loss import LOSS_NORMALIZE, masked_row_loss, sum_by_row, token_ce
from headig.diffusion.masking import (
    DEFAULT_MASK_PROBS,
    collapse_variants,
    sample_variant_masks,
    seed_from,
)
from headig.diffusion.schedule import DenoisingState, current_state, denoising

__all__ = [
    "DEFAULT_MASK_PROBS", "LOSS_NORMALIZE", "DenoisingState", "align_logits",
    "collapse_variants", "current_state", "denoising", "exact_loglikelihood",
    "gather_aligned", "generate", "generate_dream_style", "generate_llada_style",
    "has_preceding_row", "loglikelihood", "loglikelihood_batch", "masked_row_loss",
    "predict_logits", "sample_variant_masks", "seed_from", "source_rows", "sum_by_row",
    "token_ce", "truncate_at_stop",
]
