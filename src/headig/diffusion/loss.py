"""The masked-token cross-entropy, the one loss of masked diffusion.

Every loss in headig (the attribution objective, the coalition tables of validation, the
likelihood estimator, the toy tasks' held-out loss, tiny-model training) is the
cross-entropy of the model's aligned prediction at masked positions against the clean
token, summed per row and optionally divided by the row's number of masked tokens. The
arithmetic is fixed here so that all of them compute the same numbers:

* :func:`token_ce` – float32 cross-entropy per scored position (logits are upcast to
  float32 first, in row chunks when asked, so a half-precision model never holds a
  float32 copy of every row at once);
* :func:`sum_by_row` – scatter per-position values into their rows;
* :func:`masked_row_loss` – the per-row loss from per-position CE and the bool mask
  (``"mean_masked"`` divides by the row's masked count, ``"sum"`` does not).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LOSS_NORMALIZE", "masked_row_loss", "sum_by_row", "token_ce"]

LOSS_NORMALIZE: tuple[str, ...] = ("mean_masked", "sum")


def token_ce(logits: Tensor, targets: Tensor, *, chunk_rows: int | None = None,
             with_hits: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Float32 cross-entropy per row of ``logits`` [N, V] against ``targets`` [N].

    Args:
        chunk_rows: upcast and score this many rows at a time (None: all at once). Each
            row's value does not depend on the chunking.
        with_hits: also return bool [N], whether the row's argmax equals the target.

    Returns:
        ce [N] float32 on the logits' device (and hits [N] when ``with_hits``).
    """
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"token_ce needs logits [N, V] and targets [N]; got "
                         f"{tuple(logits.shape)} and {tuple(targets.shape)}")
    if chunk_rows is None:
        part = logits.float()
        ce = F.cross_entropy(part, targets, reduction="none")
        return (ce, part.argmax(-1) == targets) if with_hits else ce
    if int(chunk_rows) < 1:
        raise ValueError(f"chunk_rows={chunk_rows}; expected >= 1")
    ces, hits = [], []
    for start in range(0, logits.shape[0], int(chunk_rows)):
        part = logits[start:start + int(chunk_rows)].float()
        tgt = targets[start:start + int(chunk_rows)]
        ces.append(F.cross_entropy(part, tgt, reduction="none"))
        if with_hits:
            hits.append(part.argmax(-1) == tgt)
    if not ces:
        ces = [torch.zeros(0, dtype=torch.float32, device=logits.device)]
        hits = [torch.zeros(0, dtype=torch.bool, device=logits.device)]
    ce = torch.cat(ces)
    return (ce, torch.cat(hits)) if with_hits else ce


def sum_by_row(values: Tensor, owner: Tensor, n_rows: int) -> Tensor:
    """Sum ``values`` [N, ...] into ``n_rows`` rows by ``owner`` [N] (row index each)."""
    out = torch.zeros((int(n_rows), *values.shape[1:]), dtype=values.dtype,
                      device=values.device)
    return out.index_add(0, owner, values)


def masked_row_loss(ce: Tensor, masked: Tensor, normalize: str = "mean_masked") -> Tensor:
    """Per-row loss [B] (or [B, C]) from per-position CE at the bool ``masked`` [B, T].

    ``ce`` [N] (or [N, C] for C configurations per position) lists the masked positions
    in row-major order, as ``targets[masked]`` does. ``"mean_masked"`` divides each row's
    sum by its number of masked tokens (at least 1); ``"sum"`` returns the sum.
    """
    if normalize not in LOSS_NORMALIZE:
        raise ValueError(f"normalize={normalize!r}; expected one of {LOSS_NORMALIZE}")
    rows = masked.nonzero()[:, 0]
    loss = sum_by_row(ce, rows, masked.shape[0])
    if normalize == "mean_masked":
        count = masked.sum(1).clamp_min(1).to(loss.dtype)
        loss = loss / (count if loss.dim() == 1 else count[:, None])
    return loss
