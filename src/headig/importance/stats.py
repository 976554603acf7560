"""Statistics over head-importance values: :func:`combine` (weighted mean) and
:func:`compare` (rank and top-k agreement). numpy only; the tests cross-check scipy."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from headig.importance.value import RANK_BY, HeadImportance, as_int

__all__ = ["combine", "compare", "kendall_tau_b"]


def combine(importances: Sequence[HeadImportance],
            weights: Sequence[float] | None = None) -> HeadImportance:
    """Weighted mean of several importances of the same model and layers.

    ``weights`` (non-negative, not all zero) default to equal. When every input has a
    ``stderr`` the result has ``sqrt(sum w_i^2 se_i^2) / sum w_i`` (independent estimates);
    ``per_example`` is not carried. ``meta`` records the weights and each source's meta.
    """
    items = list(importances)
    if not items:
        raise ValueError("combine needs at least one HeadImportance")
    if not all(isinstance(x, HeadImportance) for x in items):
        raise ValueError("combine expects HeadImportance objects")
    ref = items[0]
    for i, x in enumerate(items[1:], start=1):
        if x.scores.shape != ref.scores.shape:
            raise ValueError(f"importance {i} has shape {list(x.scores.shape)}; importance 0 has "
                             f"{list(ref.scores.shape)} (all must describe the same model)")
        if x.layers != ref.layers:
            raise ValueError(f"importance {i} attributes layers {list(x.layers)}; importance 0 "
                             f"attributes {list(ref.layers)} (all must match)")
    w = np.ones(len(items)) if weights is None else np.asarray(list(weights), dtype=np.float64)
    if w.shape != (len(items),):
        raise ValueError(f"weights has {w.size} entries for {len(items)} importances")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be finite, non-negative and not all zero; got {w.tolist()}")
    wt = torch.as_tensor(w, dtype=torch.float64)
    stacked = torch.stack([x.scores.to(torch.float64) for x in items])
    scores = (wt[:, None, None] * stacked).sum(0) / wt.sum()
    stderr = None
    if all(x.stderr is not None for x in items):
        se = torch.stack([x.stderr.to(torch.float64) for x in items])  # type: ignore[union-attr]
        stderr = ((wt[:, None, None] ** 2 * se ** 2).sum(0)).sqrt() / wt.sum()
    meta = {
        "combined": {
            "method": "weighted_mean",
            "weights": w.tolist(),
            "sources": [x.meta for x in items],
        }
    }
    return HeadImportance(scores=scores.float(), layers=ref.layers, meta=meta,
                          stderr=None if stderr is None else stderr.float())


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties get the mean of their positions (as scipy.stats.rankdata)."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    avg = (starts + ends + 1) / 2.0  # mean of positions start+1 .. end
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2:
        return float("nan")
    xc, yc = x - x.mean(), y - y.mean()
    den = math.sqrt(float((xc * xc).sum()) * float((yc * yc).sum()))
    return float("nan") if den == 0 else float(np.clip((xc * yc).sum() / den, -1.0, 1.0))


def _tie_pairs(x: np.ndarray) -> float:
    _, counts = np.unique(x, return_counts=True)
    return float((counts * (counts - 1) / 2).sum())


def kendall_tau_b(x: np.ndarray, y: np.ndarray, chunk: int = 512) -> float:
    """Kendall's tau-b, exact O(n^2) in row chunks (n is the number of heads, at most a few 1000)."""
    n = len(x)
    if n < 2:
        return float("nan")
    s = 0.0  # sum over ordered pairs i != j of sign(dx) * sign(dy) = 2 (concordant - discordant)
    for start in range(0, n, chunk):
        dx = np.sign(x[start:start + chunk, None] - x[None, :])
        dy = np.sign(y[start:start + chunk, None] - y[None, :])
        s += float((dx * dy).sum())
    n0 = n * (n - 1) / 2
    den = math.sqrt((n0 - _tie_pairs(x)) * (n0 - _tie_pairs(y)))
    return float("nan") if den == 0 else float(np.clip(s / 2 / den, -1.0, 1.0))


def compare(a: HeadImportance, b: HeadImportance, k: int = 10,
            by: Literal["signed", "abs"] = "signed") -> dict[str, Any]:
    """Agreement between two importances over their common attributed layers.

    Returns ``spearman`` (Pearson of average ranks), ``kendall`` (tau-b), ``pearson`` on
    the scores, and for the top-``k`` heads of each (ranked as in :meth:`HeadImportance.top_k`
    with ``by``): ``topk_overlap`` = |A ∩ B| / k and ``topk_jaccard`` = |A ∩ B| / |A ∪ B|,
    plus ``n_heads`` compared and the common ``layers``. Correlations are NaN when undefined
    (fewer than two heads, or constant scores).
    """
    if a.n_layers != b.n_layers or a.n_heads != b.n_heads:
        raise ValueError(f"cannot compare shapes {[a.n_layers, a.n_heads]} and "
                         f"{[b.n_layers, b.n_heads]}: they describe different models")
    if by not in RANK_BY:
        raise ValueError(f"by={by!r}; expected 'signed' or 'abs'")
    layers = sorted(set(a.layers) & set(b.layers))
    if not layers:
        raise ValueError(f"no common attributed layers (a: {list(a.layers)}, b: {list(b.layers)})")
    n = len(layers) * a.n_heads
    kk = as_int(k)
    if kk is None or not 1 <= kk <= n:
        raise ValueError(f"k={k!r}; expected an integer in [1, {n}] (heads in the common layers)")
    k = kk
    x = a.scores[layers].to(torch.float64).flatten().numpy()
    y = b.scores[layers].to(torch.float64).flatten().numpy()
    sub_a = HeadImportance(a.scores * _row_mask(a.n_layers, layers), layers=tuple(layers))
    sub_b = HeadImportance(b.scores * _row_mask(b.n_layers, layers), layers=tuple(layers))
    top_a = {(layer, h) for layer, h, _ in sub_a.top_k(k, by=by)}
    top_b = {(layer, h) for layer, h, _ in sub_b.top_k(k, by=by)}
    inter = len(top_a & top_b)
    return {
        "spearman": _pearson(_average_ranks(x), _average_ranks(y)),
        "kendall": kendall_tau_b(x, y),
        "pearson": _pearson(x, y),
        "k": k,
        "by": by,
        "topk_overlap": inter / k,
        "topk_jaccard": inter / len(top_a | top_b),
        "n_heads": n,
        "layers": layers,
    }


def _row_mask(n_layers: int, layers: Sequence[int]) -> Tensor:
    m = torch.zeros(n_layers, 1)
    m[list(layers)] = 1.0
    return m
