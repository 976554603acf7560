"""Logit alignment: which raw output row predicts which token position.

A family's ``logit_shift`` s says that the model's prediction for position i is its raw
output row i - s (LLaDA: s = 0; Dream: s = 1, the autoregressive-initialised convention).
Positions i < s have no preceding row; they read row 0, exactly as Dream's official
sampler does. Every place that turns logits into predictions goes through this module, so
the convention is written down once.

Two forms are needed:

* :func:`align_logits` – full logits [B, T, V] -> aligned logits [B, T, V] (row i predicts
  token i), for callers that already ran the whole unembedding;
* :func:`source_rows` + :func:`gather_aligned` – for callers that unembed only the rows
  they score (the memory-saving path of native models): ``source_rows`` says which raw
  rows to compute for a bool set of positions, ``gather_aligned`` maps the computed rows
  back to one row per position (row-major order of the positions).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["align_logits", "gather_aligned", "has_preceding_row", "source_rows"]


def _check_shift(shift: int) -> int:
    shift = int(shift)
    if shift < 0:
        raise ValueError(f"logit shift must be >= 0; got {shift}")
    return shift


def align_logits(logits: Tensor, shift: int) -> Tensor:
    """Align raw logits [B, T, V] so that row i predicts token i.

    With ``shift`` 1 (Dream) the prediction for position i is raw row i-1, and position 0
    reuses row 0 (the official sampler's rule). Only shifts 0 and 1 occur in the families.
    """
    shift = _check_shift(shift)
    if shift == 0:
        return logits
    if shift != 1:
        raise ValueError(f"logit shift must be 0 or 1; got {shift}")
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


def source_rows(positions: Tensor, shift: int) -> Tensor:
    """Bool [B, T]: the raw output rows whose logits predict the bool ``positions`` [B, T].

    Row j is selected when position j + shift is; positions before ``shift`` read row 0.
    When no such early position is selected, the selected rows correspond one to one, in
    row-major order, with the selected positions, so ``raw[source_rows(m, s)]`` lines up
    with ``targets[m]`` directly; otherwise use :func:`gather_aligned`.
    """
    shift = _check_shift(shift)
    positions = positions.bool()
    if shift == 0:
        return positions
    src = torch.zeros_like(positions)
    src[:, :-shift] = positions[:, shift:]
    src[:, 0] |= positions[:, :shift].any(-1)
    return src


def gather_aligned(rows: Tensor, positions: Tensor, src: Tensor, shift: int) -> Tensor:
    """One logits row per selected position [N, V], from the rows computed at ``src``.

    ``rows`` [M, V] are the raw logits at ``src = source_rows(positions, shift)`` in
    row-major order. M < N only when a position before ``shift`` and the position that
    shares its source row are both selected (Dream: positions 0 and 1 both read row 0);
    then rows are repeated so that the result has one row per position.
    """
    shift = _check_shift(shift)
    n = int(positions.sum())
    if rows.shape[0] == n:
        return rows
    row_index = src.flatten().cumsum(0).view_as(src) - 1
    b, i = positions.nonzero(as_tuple=True)
    return rows[row_index[b, (i - shift).clamp(min=0)]]


def has_preceding_row(positions: Tensor, shift: int) -> bool:
    """Whether every selected position has its own preceding output row (none before
    ``shift``). Training-style losses need this: the first token after BOS is fine, a
    masked position 0 under a shift is predicted from itself."""
    shift = _check_shift(shift)
    return shift == 0 or not bool(positions[..., :shift].any())
