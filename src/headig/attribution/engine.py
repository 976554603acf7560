"""The one evaluation engine every estimator drives.

:func:`evaluate_points` evaluates J (and optionally ∇_α J) for many (example, gate point)
pairs, packing (point × variant) rows into batches of ``internal_batch_size`` with per-row
gates and one backward per chunk. Estimators differ only in which gate points they ask for
and how they combine the answers, so batching, padding, the logit shift and gradient
bookkeeping live here once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from headig.attribution.objective import Item, MaskedDiffusionObjective
from headig.diffusion.alignment import gather_aligned, source_rows
from headig.diffusion.loss import masked_row_loss, token_ce
from headig.interventions import HeadGate, Intervention
from headig.models.family import Family, family_of


def _forward_logits(model: nn.Module, ids: Tensor, attn: Tensor | None, select: Tensor) -> Tensor:
    """Logits at the selected positions [N, V], computing only those rows on native models."""
    if hasattr(model, "hidden_states"):
        return model(ids, attention_mask=attn, logits_at=select).logits
    out = model(ids, attention_mask=attn)
    logits = out.logits if hasattr(out, "logits") else out[0]
    return logits[select]


def row_losses(model: nn.Module, family: Family, inputs: Tensor, targets: Tensor,
               masked: Tensor, attn: Tensor | None, normalize: str) -> Tensor:
    """Per-row masked CE [B] for already-masked ``inputs`` [B, T] (float32).

    The family's logit alignment, the CE and its per-row reduction are those of
    :mod:`headig.diffusion`; native models unembed only the rows that are scored.
    """
    shift = family.logit_shift
    select = source_rows(masked, shift)
    logits = gather_aligned(_forward_logits(model, inputs, attn, select), masked, select, shift)
    ce = token_ce(logits, targets[masked])
    return masked_row_loss(ce, masked, normalize)


def embedding_size(model: nn.Module, family: Family) -> int:
    """Rows of the input embedding (token ids must be below it)."""
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else getattr(model, "embed", None)
    if isinstance(emb, nn.Embedding):
        return int(emb.num_embeddings)
    return int(family.arch.vocab_size)


#: Builds the intervention that applies per-row gates [B, L', H] (``set_gates``) at the
#: gated layers: ``factory(model, layers)``. The default is :class:`HeadGate`; the
#: sparsity-sensitivity gate (:mod:`headig.sparse.sensitivity_gate`) is another.
GateSite = Callable[[nn.Module, Sequence[int]], Intervention]


def head_gate_site(model: nn.Module, layers: Sequence[int]) -> Intervention:
    """The default gate site: per-head output gates (:class:`HeadGate`)."""
    return HeadGate(model, layers=layers)


@dataclass
class PointRequest:
    """Gate points at which to evaluate J for one example: gates [Q, L', H]."""

    item: Item
    gates: Tensor


def evaluate_points(
    model: nn.Module,
    objective: MaskedDiffusionObjective,
    requests: Sequence[PointRequest],
    *,
    layers: Sequence[int],
    with_grad: bool,
    internal_batch_size: int = 64,
    on_chunk: Callable[[int], None] | None = None,
    gate_site: GateSite | None = None,
) -> list[tuple[Tensor, Tensor | None]]:
    """Evaluate J_j at each gate point of each request; optionally ∇_α J_j too.

    Returns, per request, ``values`` [Q] (float64) and ``grads`` [Q, L', H] (float64) or
    None. Rows (point × variant) are packed into chunks of ``internal_batch_size``; each
    chunk has its own graph and one backward, so memory is bounded by the chunk.
    Parameters never receive gradients. ``gate_site`` says what a gate interpolates
    (default :func:`head_gate_site`: gate 1 = the head as is, 0 = the head removed).
    """
    family = family_of(model)
    device = next(model.parameters()).device
    pad_id = family.arch.pad_token_id if family.arch.pad_token_id is not None else 0
    if internal_batch_size < 1:
        raise ValueError(f"internal_batch_size={internal_batch_size}; expected >= 1")
    for req in requests:
        if family.logit_shift and bool(req.item.completion[: family.logit_shift].any()):
            raise ValueError(f"example {req.item.id!r}: with a logit shift of {family.logit_shift} "
                             "the first completion token needs a preceding token (e.g. BOS)")
        if req.gates.dim() != 3 or tuple(req.gates.shape[1:]) != (len(layers), family.n_heads):
            raise ValueError(f"gate points must be [Q, {len(layers)}, {family.n_heads}]; "
                             f"got {tuple(req.gates.shape)}")

    # Row table: (request index, point index, variant index, variant weight)
    rows: list[tuple[int, int, int, float]] = []
    variants = [objective.variants(req.item) for req in requests]
    for r, req in enumerate(requests):
        w = variants[r].weights.tolist()
        for q in range(req.gates.shape[0]):
            rows.extend((r, q, v, w[v]) for v in range(len(w)))

    values = [torch.zeros(req.gates.shape[0], dtype=torch.float64) for req in requests]
    grads = [torch.zeros(req.gates.shape, dtype=torch.float64) if with_grad else None
             for req in requests]
    mask_id = family.mask_token_id
    gate = (gate_site or head_gate_site)(model, layers)
    with gate:
        for start in range(0, len(rows), internal_batch_size):
            chunk = rows[start:start + internal_batch_size]
            t_max = max(requests[r].item.length for r, *_ in chunk)
            b = len(chunk)
            inputs = torch.full((b, t_max), pad_id, dtype=torch.long)
            targets = torch.full((b, t_max), pad_id, dtype=torch.long)
            masked = torch.zeros(b, t_max, dtype=torch.bool)
            attn = torch.zeros(b, t_max, dtype=torch.bool)
            g = torch.empty(b, len(layers), family.n_heads, dtype=torch.float32)
            coeff = torch.empty(b, dtype=torch.float64)
            for i, (r, q, v, w) in enumerate(chunk):
                item = requests[r].item
                n = item.length
                m = variants[r].masks[v]
                inputs[i, :n] = item.input_ids.masked_fill(m, mask_id)
                targets[i, :n] = item.input_ids
                masked[i, :n] = m
                attn[i, :n] = True
                g[i] = requests[r].gates[q]
                coeff[i] = w
            attn_arg = None if bool(attn.all()) else attn.to(device)
            g = g.to(device).requires_grad_(with_grad)
            gate.set_gates(g)  # type: ignore[attr-defined]
            with torch.set_grad_enabled(with_grad):
                loss = row_losses(model, family, inputs.to(device), targets.to(device),
                                  masked.to(device), attn_arg, objective.loss_normalize)
                j_rows = -loss.double().cpu() * coeff
                if with_grad:
                    (row_grads,) = torch.autograd.grad(
                        (-loss * coeff.to(device=loss.device, dtype=loss.dtype)).sum(), g)
                    row_grads = row_grads.double().cpu()
            for i, (r, q, _v, _w) in enumerate(chunk):
                values[r][q] += j_rows[i].detach()
                if with_grad:
                    grads[r][q] += row_grads[i]
            if on_chunk is not None:
                on_chunk(b)
    return list(zip(values, grads))


def objective_values(model: nn.Module, objective: MaskedDiffusionObjective,
                     items: Iterable[Item], gates: Tensor, *, layers: Sequence[int],
                     internal_batch_size: int = 64, gate_site: GateSite | None = None) -> Tensor:
    """J_j at one gate setting [L', H] for every item -> [N] (no gradients)."""
    reqs = [PointRequest(it, gates[None]) for it in items]
    out = evaluate_points(model, objective, reqs, layers=layers, with_grad=False,
                          internal_batch_size=internal_batch_size, gate_site=gate_site)
    return torch.stack([v[0] for v, _ in out])


__all__ = ["GateSite", "PointRequest", "embedding_size", "head_gate_site", "evaluate_points", "objective_values", "row_losses"]
