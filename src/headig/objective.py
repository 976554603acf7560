"""The attribution objective J(α) = −(masked-reconstruction loss on the completion span).

For each example, a set of *masking variants* is drawn once (mask probabilities ×
samples, at least one completion token masked, prompt never masked) and reused at every
gate point (common random numbers). The loss of a variant is the cross-entropy at its
masked completion positions, aligned with the family's logit shift (Dream predicts
position i from output row i-1). J_j(α) is minus the weighted mean over variants.

:func:`evaluate_points` is the one engine every estimator drives: it evaluates J (and
optionally ∇_α J) for many (example, gate point) pairs, packing (point × variant) rows
into batches of ``internal_batch_size`` with per-row gates and one backward per chunk.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from headig.gating import HeadGate
from headig.models.family import Family, family_of

DEFAULT_MASK_PROBS: tuple[float, ...] = (0.15, 0.3, 0.5, 0.7, 0.9)
LOSS_NORMALIZE = ("mean_masked", "sum")


def seed_from(*parts: Any) -> int:
    """A 63-bit seed derived from any printable parts (stable across runs and platforms)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass(frozen=True)
class Item:
    """One example as the objective sees it: unpadded ids and which positions are completion."""

    id: str
    input_ids: Tensor  # [T] long, CPU
    completion: Tensor  # [T] bool, CPU

    @property
    def length(self) -> int:
        return int(self.input_ids.numel())


def as_items(batch: Any) -> list[Item]:
    """Normalise the accepted batch forms into a list of :class:`Item`.

    Accepted:
      * a mapping with ``input_ids`` [N, T] and ``completion_mask`` [N, T] (bool), optional
        ``attention_mask`` [N, T] (1 = real token; padding is dropped) and ``ids``;
      * a sequence of objects or dicts with ``input_ids`` [T] and ``prompt_length`` (the
        completion is ``[prompt_length, T)``) or ``completion_mask`` [T], optional ``id``.
    """
    items: list[Item] = []
    if isinstance(batch, Mapping):
        if "input_ids" not in batch or "completion_mask" not in batch:
            raise ValueError("a batch mapping needs 'input_ids' [N, T] and 'completion_mask' [N, T]"
                             f"; got keys {sorted(batch)}")
        ids = torch.as_tensor(batch["input_ids"])
        comp = torch.as_tensor(batch["completion_mask"]).bool()
        if ids.dim() == 1:
            ids, comp = ids[None], comp[None]
        if ids.shape != comp.shape or ids.dim() != 2:
            raise ValueError(f"input_ids {tuple(ids.shape)} and completion_mask {tuple(comp.shape)} "
                             "must both be [N, T]")
        attn = batch.get("attention_mask")
        attn = torch.ones_like(ids, dtype=torch.bool) if attn is None else torch.as_tensor(attn).bool()
        names = batch.get("ids") or [str(i) for i in range(ids.shape[0])]
        for n, row_ids, row_comp, row_attn in zip(names, ids, comp, attn):
            items.append(Item(str(n), row_ids[row_attn].cpu().long(), row_comp[row_attn].cpu()))
    else:
        for i, ex in enumerate(batch):
            get = ex.get if isinstance(ex, Mapping) else (lambda k, d=None, ex=ex: getattr(ex, k, d))
            ids = torch.as_tensor(get("input_ids")).cpu().long().flatten()
            comp = get("completion_mask")
            if callable(comp):  # headig.data.EncodedExample.completion_mask() is a method
                comp = comp()
            if comp is None:
                p = get("prompt_length")
                if p is None:
                    raise ValueError(f"example {i} has neither 'prompt_length' nor 'completion_mask'")
                comp = torch.arange(ids.numel()) >= int(p)
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
    _cache: dict[str, Variants] = field(default_factory=dict, repr=False)

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
            draws = list(raw)
        else:
            positions = comp.nonzero().flatten()
            draws = []
            v = 0
            for p in self.mask_probs:
                for _ in range(int(self.mask_samples_per_prob)):
                    gen = torch.Generator().manual_seed(seed_from(self.seed, item.id, v))
                    pick = torch.rand(positions.numel(), generator=gen) < p
                    if not bool(pick.any()):
                        pick[torch.randint(positions.numel(), (1,), generator=gen)] = True
                    m = torch.zeros(item.length, dtype=torch.bool)
                    m[positions[pick]] = True
                    draws.append(m)
                    v += 1
        stacked = torch.stack(draws)
        unique, counts = torch.unique(stacked, dim=0, return_counts=True)
        out = Variants(unique, counts.to(torch.float64) / counts.sum())
        self._cache[item.id] = out
        return out


def _forward_logits(model: nn.Module, ids: Tensor, attn: Tensor | None, select: Tensor) -> Tensor:
    """Logits at the selected positions [N, V], computing only those rows on native models."""
    if hasattr(model, "hidden_states"):
        return model(ids, attention_mask=attn, logits_at=select).logits
    out = model(ids, attention_mask=attn)
    logits = out.logits if hasattr(out, "logits") else out[0]
    return logits[select]


def row_losses(model: nn.Module, family: Family, inputs: Tensor, targets: Tensor,
               masked: Tensor, attn: Tensor | None, normalize: str) -> Tensor:
    """Per-row masked CE [B] for already-masked ``inputs`` [B, T] (float32)."""
    shift = family.logit_shift
    select = masked if shift == 0 else F.pad(masked[:, shift:], (0, shift))
    logits = _forward_logits(model, inputs, attn, select).float()
    ce = F.cross_entropy(logits, targets[masked], reduction="none")
    rows = masked.nonzero()[:, 0]
    loss = torch.zeros(inputs.shape[0], dtype=ce.dtype, device=ce.device).index_add(0, rows, ce)
    if normalize == "mean_masked":
        loss = loss / masked.sum(1).clamp_min(1).to(loss.dtype)
    return loss


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
) -> list[tuple[Tensor, Tensor | None]]:
    """Evaluate J_j at each gate point of each request; optionally ∇_α J_j too.

    Returns, per request, ``values`` [Q] (float64) and ``grads`` [Q, L', H] (float64) or
    None. Rows (point × variant) are packed into chunks of ``internal_batch_size``; each
    chunk has its own graph and one backward, so memory is bounded by the chunk.
    Parameters never receive gradients.
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
    gate = HeadGate(model, layers=layers)
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
            gate.set_gates(g)
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
                     internal_batch_size: int = 64) -> Tensor:
    """J_j at one gate setting [L', H] for every item -> [N] (no gradients)."""
    reqs = [PointRequest(it, gates[None]) for it in items]
    out = evaluate_points(model, objective, reqs, layers=layers, with_grad=False,
                          internal_batch_size=internal_batch_size)
    return torch.stack([v[0] for v, _ in out])
