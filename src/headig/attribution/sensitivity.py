"""Sparsity sensitivity: which heads lose most when their attention is made block-sparse.

A head's importance (what removing it costs) is not what *sparsifying* it costs: a head
that matters a lot may read only its own neighbourhood and lose nothing when it sees fewer
keys. Here each gated head's attention output is interpolated between its block-sparse
output at ``keep`` (gate 0) and its dense output (gate 1),
``out_h(g) = g_h·dense_h + (1 − g_h)·sparse_h`` (:class:`~headig.sparse.SparsityGate`),
and Integrated Gradients runs along the diagonal path g = τ·1, τ ∈ [0, 1]:

    S_h = ∫_0^1 ∂J/∂g_h(τ·1) dτ,     Σ_h S_h = J(dense) − J(all sparse)  (completeness).

Positive S_h = the objective J = −loss drops by that much when head h is sparsified
(with every other head moving along with it). The quadrature is Gauss–Legendre; the
per-example completeness residual ``Σ_h S_h − (J(dense) − J(sparse))`` is reported, as
for every complete estimator. See docs/method.md, "Sparsity sensitivity".
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from headig.attribution import engine
from headig.attribution._checks import check_int
from headig.attribution.objective import (
    DEFAULT_MASK_PROBS,
    Item,
    MaskedDiffusionObjective,
    as_items,
    check_token_range,
)
from headig.attribution.paths import GatePath
from headig.attribution.results import POSTPROCESS, Attribution, postprocess
from headig.interventions import normalize_layers
from headig.models.family import family_of

__all__ = ["sparsity_sensitivity"]


def sparsity_sensitivity(
    model: nn.Module,
    batch: Any,
    *,
    keep: float = 0.3,
    block_size: int = 128,
    steps: int = 16,
    rule: str = "gauss_legendre",
    kernel: str = "gather",
    estimate: str = "auto",
    keep_diagonal: bool = True,
    kv_groups: str = "query",
    mask_probs: Sequence[float] = DEFAULT_MASK_PROBS,
    mask_samples_per_prob: int = 2,
    loss_normalize: str = "mean_masked",
    postprocess_name: str = "signed",
    layers: Sequence[int] | None = None,
    seed: int = 0,
    objective: MaskedDiffusionObjective | None = None,
    internal_batch_size: int = 64,
    return_per_example: bool = True,
) -> Attribution:
    """Per-head attribution of J(dense) − J(block-sparse at ``keep``) (HeadIG over
    dense↔sparse gates; see the module docstring).

    Args:
        model: a native headig model (:func:`headig.load_model`).
        batch: encoded examples (as for :meth:`~headig.attribution.Estimator.attribute`);
            use the *training* split when the scores will set budgets.
        keep: fraction of key blocks the sparse side keeps (uniform budget), in (0, 1].
        block_size, kernel, estimate, keep_diagonal, kv_groups: the sparse side, as for
            :class:`~headig.sparse.SparseAttentionPatch` (always sparse: ``min_seq_len=0``).
            The kernel needs autograd: "gather" (default) works everywhere.
        steps, rule: quadrature nodes on the diagonal path and the rule (Gauss–Legendre).
        mask_probs, mask_samples_per_prob, loss_normalize, seed, objective: the objective J.
        postprocess_name: φ applied per example before the mean ("signed", "abs", "relu").
        layers: gated layers (default all); the others stay dense.

    Returns:
        an :class:`~headig.attribution.Attribution`: ``scores`` [L, H] (positive = the head
        loses J when sparsified), ``j_full`` = J(dense), ``j_baseline`` = J(all gated
        layers sparse), ``residual`` per example; ``meta["sparsity"]`` holds the sparse
        settings. ``.to_importance()`` gives a :class:`~headig.importance.HeadImportance`.
    """
    from headig.sparse.budgets import check_fraction
    from headig.sparse.sensitivity_gate import sparsity_gate_site

    keep = check_fraction("keep", keep)
    steps = check_int("steps", steps, 1)
    internal_batch_size = check_int("internal_batch_size", internal_batch_size, 1)
    if postprocess_name not in POSTPROCESS:
        raise ValueError(f"postprocess={postprocess_name!r}; expected one of {list(POSTPROCESS)}")
    family = family_of(model)
    if not family.native:
        raise TypeError("sparsity_sensitivity needs a native headig model (headig.load_model)")
    layer_list = normalize_layers(layers, family.n_layers)
    shape = (len(layer_list), family.n_heads)
    if objective is None:
        objective = MaskedDiffusionObjective(
            mask_probs=mask_probs, mask_samples_per_prob=check_int(
                "mask_samples_per_prob", mask_samples_per_prob, 1),
            loss_normalize=loss_normalize, seed=seed)
    batch = list(batch) if not isinstance(batch, dict) else batch
    items = batch if batch and all(isinstance(x, Item) for x in batch) else as_items(batch)
    check_token_range(items, engine.embedding_size(model, family))
    site = sparsity_gate_site(keep, block_size=block_size, kernel=kernel, estimate=estimate,
                              keep_diagonal=keep_diagonal, kv_groups=kv_groups)
    ones = torch.ones(shape, dtype=torch.float64)
    pts = GatePath.points(torch.zeros(shape, dtype=torch.float64), ones, 0.0, steps, rule)
    ends_gates = torch.stack([torch.ones(shape), torch.zeros(shape)])
    start = time.time()
    raw, j_dense, j_sparse = [], [], []
    # One example per call: the engine pads a chunk to its longest row, and the sparse
    # side's block count (hence its uniform budget ceil(keep * n_blocks)) follows the
    # padded length, so mixing lengths would give the path and its endpoints different
    # sparse models.
    for it in items:
        (_, grads), = engine.evaluate_points(
            model, objective, [engine.PointRequest(it, pts.gates)], layers=layer_list,
            with_grad=True, internal_batch_size=internal_batch_size, gate_site=site)
        raw.append((grads * pts.weights).sum(0))
        (vals, _), = engine.evaluate_points(
            model, objective, [engine.PointRequest(it, ends_gates)], layers=layer_list,
            with_grad=False, internal_batch_size=internal_batch_size, gate_site=site)
        j_dense.append(float(vals[0]))
        j_sparse.append(float(vals[1]))
    a = torch.stack(raw)  # [N, L', H] float64
    jd = torch.tensor(j_dense, dtype=torch.float64)
    js = torch.tensor(j_sparse, dtype=torch.float64)
    scores = torch.zeros(family.n_layers, family.n_heads, dtype=torch.float32)
    scores[layer_list] = postprocess(a, postprocess_name).mean(0).float()
    per_example = None
    if return_per_example:
        per_example = torch.zeros(len(items), family.n_layers, family.n_heads,
                                  dtype=torch.float64)
        per_example[:, layer_list] = a
    meta = {
        "estimator": "sparsity_sensitivity", "path": "DP", "steps": steps, "rule": rule,
        "baseline": 0.0, "postprocess": postprocess_name, "layers": layer_list,
        "objective_settings": objective.settings(),
        "sign_convention": "positive_loses_when_sparsified",
        "objective": "J = -(masked-token cross-entropy on the completion span)",
        "sparsity": {"keep": keep, "block_size": int(block_size), "kernel": kernel,
                     "estimate": estimate, "keep_diagonal": bool(keep_diagonal),
                     "kv_groups": kv_groups},
        "model": getattr(model, "name_or_path", None) or type(model).__name__,
        "family": family.name, "n_layers": family.n_layers, "n_heads": family.n_heads,
        "n_examples": len(items), "seconds": round(time.time() - start, 3),
        "j_dense_minus_sparse": float((jd - js).mean()),
    }
    return Attribution(scores=scores, layers=tuple(layer_list),
                       example_ids=[it.id for it in items], per_example=per_example,
                       j_full=jd, j_baseline=js, residual=a.sum((1, 2)) - (jd - js), meta=meta)
