"""Causal validation of head scores: pruning sweeps, exhaustive oracles, fidelity, sparse budgets.

A head ranking is useful if removing the heads it calls important hurts the model more
than removing random heads, and removing the heads it calls unimportant hurts less. This
module measures exactly that:

* :func:`loss_at_masks` – the held-out masked-diffusion loss (the attribution objective,
  L = −J) with chosen heads zero-ablated, for many keep masks in one pass.
* :func:`generation_accuracy` – exact-match accuracy of diffusion generation
  (:func:`headig.generation.generate`) against reference completions.
* :func:`coalition_table` – the loss of *every* subset of kept heads (≤ 16 heads), which
  gives the oracle pruning curves (best and worst k-subsets), the exact expectation of
  random pruning, and exact Shapley values (:meth:`CoalitionTable.shapley`).
* :func:`prune_sweep` – prune-most / prune-least / prune-random (several seeds) over k,
  with the oracle curves and the ranking's fidelity when the model is small enough.
* :func:`sparse_sweep` – dense vs uniform vs importance-adaptive sparse attention at
  several keep ratios.

Fidelity of a ranking at k heads (see docs/validation.md)::

    fidelity_most(k)  = (L_most(k)  − L_rand(k)) / (L_worst(k) − L_rand(k))
    fidelity_least(k) = (L_rand(k) − L_least(k)) / (L_rand(k) − L_best(k))

where L_rand is the exact mean loss over all k-subsets and L_worst / L_best the largest
/ smallest loss of any k-subset. 1 = the ranking picks the oracle subset, 0 = no better
than chance, < 0 = worse than chance. The summary fidelity pools the numerators and
denominators over every k (an area ratio between the curves), which weights each k by
how much room there is to beat chance.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from headig.gating import normalize_layers, select_heads
from headig.models.family import family_of
from headig.objective import (
    Item,
    MaskedDiffusionObjective,
    PointRequest,
    as_items,
    evaluate_points,
)

ARMS = ("most", "least", "random")
DEFAULT_ORACLE_MAX_HEADS = 16

__all__ = [
    "ARMS", "CoalitionTable", "PruneSweep", "SparseSweep", "auto_block_size", "coalition_table",
    "eval_items", "generation_accuracy", "loss_at_masks", "prune_sweep", "resolve_ks", "spread",
    "sparse_sweep",
]


# ----------------------------------------------------------------------------- helpers


def _progress(enabled: bool, total: int, desc: str, unit: str = "it"):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _objective(objective: MaskedDiffusionObjective | None) -> MaskedDiffusionObjective:
    return objective if objective is not None else MaskedDiffusionObjective()


def eval_items(batch: Any) -> list[Item]:
    """:func:`headig.objective.as_items`, also for :class:`headig.data.EncodedExample` lists.

    (``EncodedExample.completion_mask`` is a method, which ``as_items`` would read as a
    value, so such objects are passed on as ``prompt_length`` dicts.)
    """
    if isinstance(batch, Mapping):
        return as_items(batch)
    batch = list(batch)
    if batch and all(isinstance(x, Item) for x in batch):
        return batch
    rows = []
    for ex in batch:
        if not isinstance(ex, Mapping) and callable(getattr(ex, "completion_mask", None)):
            rows.append({"input_ids": ex.input_ids, "prompt_length": ex.prompt_length,
                         "id": getattr(ex, "id", None)})
        else:
            rows.append(ex)
    return as_items(rows)


def resolve_ks(n_heads: int, ks: Sequence[int] | None = None,
               k_fracs: Sequence[float] | None = None) -> list[int]:
    """Head counts to prune from ``ks`` or ``k_fracs`` (rounded like :func:`select_heads`).

    Every k must satisfy 1 <= k < n_heads (pruning every head leaves no model to rank).
    Duplicates collapse; the result is sorted.
    """
    if (ks is None) == (k_fracs is None):
        raise ValueError("pass exactly one of ks (head counts) or k_fracs (fractions in (0, 1))")
    out: list[int] = []
    if ks is not None:
        for k in ks:
            if isinstance(k, bool) or int(k) != k or not 1 <= int(k) < n_heads:
                raise ValueError(f"k={k!r}; expected integers with 1 <= k < {n_heads} "
                                 "(the heads in the chosen layers)")
            out.append(int(k))
    else:
        for f in k_fracs or ():
            if not 0.0 < float(f) < 1.0:
                raise ValueError(f"k_frac={f!r}; expected fractions in (0, 1)")
            k = int(round(float(f) * n_heads))
            if not 1 <= k < n_heads:
                raise ValueError(f"k_frac={f} of {n_heads} heads rounds to {k} heads; expected "
                                 f"1 <= k < {n_heads}")
            out.append(k)
    if not out:
        raise ValueError("no k values given")
    return sorted(set(out))


def spread(items: Sequence[Any], n: int) -> list[Any]:
    """``n`` items evenly spaced through ``items`` (all of them when n >= len).

    Used for the oracle's subset: data files are often grouped (by task, by source), and
    the first n rows would cover only the first group.
    """
    if n < 1:
        raise ValueError(f"n={n}; expected >= 1")
    m = len(items)
    if n >= m:
        return list(items)
    return [items[(i * m) // n] for i in range(n)]


def _head_name(layer: int, head: int) -> str:
    return f"L{layer}.H{head}"


# ----------------------------------------------------------------------------- loss


def loss_at_masks(model: nn.Module, batch: Any, keep: Tensor, *,
                  objective: MaskedDiffusionObjective | None = None,
                  internal_batch_size: int = 256) -> Tensor:
    """Held-out masked-diffusion loss with heads removed, for each keep mask.

    Args:
        batch: examples as accepted by :func:`headig.objective.as_items`.
        keep: bool [L, H] or [M, L, H] (False = zero-ablate the head).
        objective: the loss (masking variants, normalisation); default
            ``MaskedDiffusionObjective()``, the attribution default. The same masks are
            used for every keep mask (common random numbers), so differences between
            masks are not masking noise.

    Returns:
        float64 [M] (or a 0-d tensor for a single [L, H] mask): the mean over examples of
        the per-example loss −J.
    """
    family = family_of(model)
    keep = torch.as_tensor(keep)
    single = keep.dim() == 2
    masks = keep[None] if single else keep
    expected = (family.n_layers, family.n_heads)
    if masks.dim() != 3 or tuple(masks.shape[1:]) != expected or masks.dtype != torch.bool:
        raise ValueError(f"keep must be a bool tensor [L, H] or [M, L, H] with [L, H] = "
                         f"{list(expected)}; got {masks.dtype} {tuple(keep.shape)}")
    items = eval_items(batch)
    obj = _objective(objective)
    gates = masks.to(torch.float32)
    out = evaluate_points(model, obj, [PointRequest(it, gates) for it in items],
                          layers=list(range(family.n_layers)), with_grad=False,
                          internal_batch_size=internal_batch_size)
    j = torch.stack([v for v, _ in out])  # [N, M]
    loss = -j.mean(0)
    return loss[0] if single else loss


# ----------------------------------------------------------------------------- coalitions


@dataclass
class CoalitionTable:
    """The loss of every subset of kept heads among ``n = len(layers) * n_heads`` heads.

    Bit i of a coalition code is head ``i`` in (layer slot, head) order, i.e. head
    ``(layers[i // n_heads], i % n_heads)``; a set bit means the head is *kept* (gate 1),
    a clear bit that it is at the baseline (0 = removed). ``values[c]`` is the mean over
    examples of J = −loss for coalition c, so ``values[-1]`` is the intact model.
    """

    values: Tensor  # float64 [2^n]
    layers: tuple[int, ...]
    n_heads: int
    n_layers: int
    n_examples: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.layers) * self.n_heads

    @property
    def full(self) -> int:
        return (1 << self.n) - 1

    def _popcount(self) -> Tensor:
        codes = torch.arange(1 << self.n)
        return ((codes[:, None] >> torch.arange(self.n)) & 1).sum(1)

    def code_of_keep(self, keep: Tensor) -> int:
        """Coalition code of a keep mask [L, H] (only the table's layers count)."""
        keep = torch.as_tensor(keep).bool()
        sub = keep[list(self.layers)].flatten()
        return int((sub.long() << torch.arange(self.n)).sum())

    def keep_of_code(self, code: int) -> Tensor:
        """Keep mask [L, H] of a coalition (layers outside the table are kept)."""
        keep = torch.ones(self.n_layers, self.n_heads, dtype=torch.bool)
        bits = ((torch.tensor(int(code)) >> torch.arange(self.n)) & 1).bool()
        keep[list(self.layers)] = bits.view(len(self.layers), self.n_heads)
        return keep

    def removed_of_code(self, code: int) -> list[tuple[int, int]]:
        return [tuple(x) for x in (~self.keep_of_code(code)).nonzero().tolist()]

    def loss(self, keep: Tensor) -> float:
        """Mean loss with the heads of ``keep`` [L, H] kept and the others removed."""
        return float(-self.values[self.code_of_keep(keep)])

    def oracle(self, k: int) -> dict[str, Any]:
        """Best and worst k-subsets to remove, and the exact mean over all k-subsets.

        ``best``: the k heads whose removal raises the loss least (the ideal "prune least
        important" choice); ``worst``: the k heads whose removal raises it most (the ideal
        "prune most important" choice).
        """
        if not 0 <= int(k) <= self.n:
            raise ValueError(f"k={k}; expected 0 <= k <= {self.n}")
        kept = self.n - int(k)
        codes = (self._popcount() == kept).nonzero().flatten()
        loss = -self.values[codes]
        best, worst = int(codes[loss.argmin()]), int(codes[loss.argmax()])
        return {
            "k": int(k), "n_subsets": int(codes.numel()),
            "best_loss": float(loss.min()), "best_removed": self.removed_of_code(best),
            "worst_loss": float(loss.max()), "worst_removed": self.removed_of_code(worst),
            "random_mean_loss": float(loss.mean()),
            "random_std_loss": float(loss.std(unbiased=False)) if loss.numel() > 1 else 0.0,
        }

    def shapley(self) -> Tensor:
        """Exact Shapley values of J per head, [L, H] float64 (rows outside ``layers`` 0).

        Positive = the head helps. By linearity these equal the mean over examples of
        per-example Shapley values (:func:`headig.estimators.exact_shapley`, signed).
        """
        n = self.n
        codes = torch.arange(1 << n)
        size = self._popcount()
        fact = [math.factorial(i) for i in range(n + 1)]
        w = torch.tensor([fact[s] * fact[n - s - 1] / fact[n] for s in range(n)],
                         dtype=torch.float64)
        phi = torch.zeros(n, dtype=torch.float64)
        for i in range(n):
            without = codes[(codes >> i) & 1 == 0]
            phi[i] = (w[size[without]] * (self.values[without | (1 << i)]
                                          - self.values[without])).sum()
        out = torch.zeros(self.n_layers, self.n_heads, dtype=torch.float64)
        out[list(self.layers)] = phi.view(len(self.layers), self.n_heads)
        return out

    def to_importance(self):
        """Exact Shapley values as a :class:`~headig.importance.HeadImportance`."""
        from headig.importance import HeadImportance

        meta = {**self.meta, "estimator": "exact_shapley", "sign_convention": "positive_helps",
                "n_examples": self.n_examples}
        return HeadImportance(self.shapley().float(), layers=self.layers, meta=meta)


def _row_table(items: Sequence[Item], objective: MaskedDiffusionObjective,
               ) -> list[tuple[Tensor, Tensor, float]]:
    """(masked input ids [T], mask [T], weight / N) for every variant of every item."""
    rows = []
    for it in items:
        v = objective.variants(it)
        for m, w in zip(v.masks, v.weights.tolist()):
            rows.append((it, m, w / len(items)))
    return rows


def coalition_table(model: nn.Module, batch: Any, *, layers: Sequence[int] | None = None,
                    objective: MaskedDiffusionObjective | None = None, baseline: float = 0.0,
                    max_heads: int = DEFAULT_ORACLE_MAX_HEADS, max_rows: int = 4096,
                    progress: bool = False) -> CoalitionTable:
    """Evaluate J at all 2^n coalitions of the heads in ``layers`` (n ≤ ``max_heads``).

    On native headig models the forward is shared across coalitions layer by layer: the
    hidden state after layer l depends only on the gates of layers ≤ l, so layer l runs
    once per distinct prefix (2^(H·(l+1)) rows per input row, not 2^n for every layer);
    rows of equal length are batched without padding. Other models fall back to
    :func:`headig.objective.evaluate_points`. Both give the attribution objective's J
    (same masks, same weights) up to float32 rounding.

    Args:
        baseline: gate of an absent head (0 = removed).
        max_rows: rows per forward (memory bound).
    """
    from headig.models.modeling import DiffusionLM

    family = family_of(model)
    lyr = normalize_layers(layers, family.n_layers)
    n_h = family.n_heads
    n = len(lyr) * n_h
    if n > max_heads:
        raise ValueError(f"the oracle enumerates 2^{n} head subsets ({len(lyr)} layers x {n_h} "
                         f"heads); the limit is max_heads={max_heads}: restrict the layers")
    if not math.isfinite(float(baseline)) or float(baseline) >= 1.0:
        raise ValueError(f"baseline={baseline}; expected a finite gate value below 1")
    if int(max_rows) < 1:
        raise ValueError(f"max_rows={max_rows}; expected >= 1")
    items = eval_items(batch)
    obj = _objective(objective)
    start = time.time()
    if isinstance(model, DiffusionLM):
        values = _coalitions_native(model, items, obj, lyr, float(baseline), int(max_rows),
                                    progress)
    else:
        values = _coalitions_generic(model, items, obj, lyr, float(baseline), int(max_rows),
                                     progress)
    meta = {"objective": obj.settings(), "baseline": float(baseline), "layers": lyr,
            "coalitions": 1 << n, "seconds": round(time.time() - start, 3),
            "method": "prefix-shared" if isinstance(model, DiffusionLM) else "evaluate_points"}
    return CoalitionTable(values=values, layers=tuple(lyr), n_heads=n_h,
                          n_layers=family.n_layers, n_examples=len(items), meta=meta)


def _all_gates(n: int, shape: tuple[int, int], baseline: float) -> Tensor:
    codes = torch.arange(1 << n)
    present = ((codes[:, None] >> torch.arange(n)) & 1).bool()
    return torch.where(present, 1.0, baseline).to(torch.float32).view(-1, *shape)


def _coalitions_generic(model, items, obj, lyr, baseline, max_rows, progress) -> Tensor:
    family = family_of(model)
    n = len(lyr) * family.n_heads
    gates = _all_gates(n, (len(lyr), family.n_heads), baseline)
    values = torch.zeros(1 << n, dtype=torch.float64)
    bar = _progress(progress, len(items), "oracle coalitions", "ex")
    for it in items:
        (vals, _), = evaluate_points(model, obj, [PointRequest(it, gates)], layers=lyr,
                                     with_grad=False, internal_batch_size=max_rows)
        values += vals / len(items)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return values


def _head_outputs(attn: nn.Module, h: Tensor, rotary: Any, cos: Tensor, sin: Tensor) -> Tensor:
    """Each head's contribution to the attention output, o_proj applied per head: [B, T, H, d]."""
    b, t, _ = h.shape
    q = attn.q_proj(h).view(b, t, attn.n_heads, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(h).view(b, t, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
    v = attn.v_proj(h).view(b, t, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
    q, k = rotary.apply(q, cos, sin), rotary.apply(k, cos, sin)
    out = attn.attn_fn(q, k, v, mask=None, module=attn)  # [B, H, T, D]
    w = attn.o_proj.weight.view(-1, attn.n_heads, attn.head_dim)  # [d, H, D]
    return torch.einsum("bhtk,mhk->bthm", out, w)


@torch.no_grad()
def _coalitions_native(model, items, obj, lyr, baseline, max_rows, progress) -> Tensor:
    """Prefix-shared enumeration on the native model.

    A gate scales a head's output before the (linear, bias-free) output projection, so
    the attention output under gates g is Σ_h g_h · P_h with P_h the head's projected
    output. Per layer, attention runs once per distinct gate prefix of the earlier
    layers; only the gate mix and the MLP run per coalition, and in the last layer only
    at the positions whose logits are scored.
    """
    family = family_of(model)
    device, dtype = _device(model), model.dtype
    n_h, n_layers = family.n_heads, family.n_layers
    n = len(lyr) * n_h
    slot = {layer: i for i, layer in enumerate(lyr)}
    for block in model.layers:
        if block.attn.o_proj.bias is not None:
            raise ValueError("the prefix-shared oracle needs a bias-free output projection")
    all_configs = torch.where(((torch.arange(1 << n_h)[:, None] >> torch.arange(n_h)) & 1)
                              .bool(), 1.0, baseline).to(device=device, dtype=dtype)
    ones = torch.ones(1, n_h, device=device, dtype=dtype)
    values = torch.zeros(1 << n, dtype=torch.float64)
    mask_id, shift = family.mask_token_id, family.logit_shift
    rows = _row_table(items, obj)
    for it, _, _ in rows:
        if shift and bool(it.completion[:shift].any()):
            raise ValueError(f"example {it.id!r}: with a logit shift of {shift} the first "
                             "completion token needs a preceding token (e.g. BOS)")
    by_len: dict[int, list[tuple[Item, Tensor, float]]] = defaultdict(list)
    for row in rows:
        by_len[row[0].length].append(row)
    bar = _progress(progress, len(rows), "oracle coalitions", "row")

    def run(x: Tensor, layer: int, codes: Tensor, src: Tensor, ctx: dict[str, Tensor]) -> None:
        block = model.layers[layer]
        gated = layer in slot
        gates = all_configs if gated else ones
        n_cfg = gates.shape[0]
        cfg_bits = (torch.arange(n_cfg, device=device) << (slot[layer] * n_h)) if gated \
            else torch.zeros(1, dtype=torch.long, device=device)
        per = max(1, max_rows // n_cfg)
        for s in range(0, x.shape[0], per):
            xs, cs, ss = x[s:s + per], codes[s:s + per], src[s:s + per]
            r = xs.shape[0]
            heads = _head_outputs(block.attn, block.attn_norm(xs), model.rotary, ctx["cos"],
                                  ctx["sin"])
            new_codes = cs[:, None] | cfg_bits[None]  # [r, C]
            if layer < n_layers - 1:
                mix = torch.einsum("bthm,ch->bctm", heads, gates)
                x1 = (xs[:, None] + mix).reshape(r * n_cfg, *xs.shape[1:])
                x2 = x1 + block.mlp(block.mlp_norm(x1))
                run(x2, layer + 1, new_codes.flatten(), ss.repeat_interleave(n_cfg), ctx)
                continue
            sel = ctx["select"][ss]  # [r, T] positions whose logits are scored
            owner = sel.nonzero()[:, 0]
            mix = torch.einsum("nhm,ch->ncm", heads[sel], gates)
            x1 = xs[sel][:, None] + mix  # [N, C, d]
            x2 = x1 + block.mlp(block.mlp_norm(x1))
            logits = model.lm_head(model.norm(x2)).float()  # [N, C, V]
            tgt = ctx["targets"][ss][ctx["masked"][ss]]
            ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                 tgt.repeat_interleave(n_cfg), reduction="none")
            loss = torch.zeros(r, n_cfg, dtype=torch.float32, device=device)
            loss.index_add_(0, owner, ce.view(-1, n_cfg))
            if obj.loss_normalize == "mean_masked":
                loss = loss / ctx["masked"][ss].sum(1, keepdim=True).clamp_min(1)
            contrib = -loss.double().cpu() * ctx["coeff"][ss.cpu()][:, None]
            values.index_add_(0, new_codes.flatten().cpu(), contrib.flatten())

    for length, group in sorted(by_len.items()):
        cos, sin = model.rotary.cos_sin(torch.arange(length, device=device)[None])
        for s in range(0, len(group), max_rows):
            chunk = group[s:s + max_rows]
            ids = torch.stack([it.input_ids for it, _, _ in chunk]).to(device)
            masked = torch.stack([m for _, m, _ in chunk]).to(device)
            select = masked if shift == 0 else F.pad(masked[:, shift:], (0, shift))
            ctx = {"cos": cos, "sin": sin, "targets": ids, "masked": masked, "select": select,
                   "coeff": torch.tensor([w for _, _, w in chunk], dtype=torch.float64)}
            x = model.embed(ids.masked_fill(masked, mask_id))
            src = torch.arange(len(chunk), device=device)
            codes = torch.zeros(len(chunk), dtype=torch.long, device=device)
            run(x, 0, codes, src, ctx)
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return values


# ----------------------------------------------------------------------------- accuracy


def _prompt_split(item: Item) -> int:
    """Prompt length of an item whose completion is a suffix (as generation needs)."""
    comp = item.completion
    p = int(comp.long().argmax())
    if not bool(comp[p:].all()):
        raise ValueError(f"example {item.id!r}: the completion must be one contiguous suffix "
                         "to be generated")
    return p


@torch.no_grad()
def generation_accuracy(model: nn.Module, batch: Any, *, labels: Mapping[str, str] | None = None,
                        steps_per_token: int = 1, batch_size: int = 128, seed: int = 0,
                        generate_kwargs: Mapping[str, Any] | None = None,
                        keep: Tensor | None = None) -> dict[str, Any]:
    """Exact-match accuracy of diffusion generation against each example's completion.

    For every example the prompt is given and ``len(completion)`` masked positions are
    generated with :func:`headig.generation.generate` (the family's own sampler,
    temperature 0, ``steps_per_token`` x length steps, one block); the example is correct
    when every generated token equals the reference. Examples with the same completion
    length share a batch; shorter prompts are left-padded with the pad token, masked as
    keys (RoPE is relative, so this does not change what a row attends to).

    Args:
        labels: example id -> group name (e.g. the task); adds per-group accuracy.
        generate_kwargs: extra arguments for ``generate`` (e.g. ``alg="entropy"``).
        keep: optional bool [L, H] keep mask applied during generation.

    Returns:
        ``{"accuracy": float, "n": int, "groups": {name: accuracy}, "correct": {id: bool}}``.
    """
    from headig.gating import HeadMask
    from headig.generation import generate

    items = eval_items(batch)
    if int(steps_per_token) < 1 or int(batch_size) < 1:
        raise ValueError(f"steps_per_token={steps_per_token} and batch_size={batch_size} "
                         "must be >= 1")
    extra = dict(generate_kwargs or {})
    extra.setdefault("temperature", 0.0)
    family = family_of(model)
    pad_id = family.arch.pad_token_id if family.arch.pad_token_id is not None else \
        (family.arch.eos_token_id or 0)
    device = _device(model)
    groups: dict[int, list[tuple[Item, int]]] = defaultdict(list)
    for it in items:
        p = _prompt_split(it)
        groups[it.length - p].append((it, p))
    gen = torch.Generator().manual_seed(int(seed))
    correct: dict[str, bool] = {}
    ctx = HeadMask(model, torch.as_tensor(keep).bool()) if keep is not None else None
    if ctx is not None:
        ctx.apply()
    try:
        for c, group in sorted(groups.items()):
            group.sort(key=lambda x: x[1])
            for s in range(0, len(group), int(batch_size)):
                chunk = group[s:s + int(batch_size)]
                width = max(p for _, p in chunk)
                ids = torch.full((len(chunk), width), int(pad_id), dtype=torch.long)
                attn = torch.zeros(len(chunk), width, dtype=torch.long)
                for r, (it, p) in enumerate(chunk):
                    ids[r, width - p:] = it.input_ids[:p]
                    attn[r, width - p:] = 1
                mask = None if bool(attn.all()) else attn.to(device)
                out = generate(model, ids.to(device), mask, steps=c * int(steps_per_token),
                               gen_length=c, generator=gen, **extra)
                ref = torch.stack([it.input_ids[p:] for it, p in chunk])
                hits = (out[:, width:].cpu() == ref).all(1).tolist()
                correct.update({it.id: bool(h) for (it, _), h in zip(chunk, hits)})
    finally:
        if ctx is not None:
            ctx.remove()
    result: dict[str, Any] = {"accuracy": sum(correct.values()) / len(correct),
                              "n": len(correct), "groups": {}, "correct": correct}
    if labels is not None:
        by_label: dict[str, list[bool]] = defaultdict(list)
        for it in items:
            by_label[str(labels.get(it.id, "?"))].append(correct[it.id])
        result["groups"] = {k: sum(v) / len(v) for k, v in sorted(by_label.items())}
    return result


# ----------------------------------------------------------------------------- pruning


def _fidelity(arm: float, rand: float, oracle: float) -> float | None:
    """(L_rand − L_arm) / (L_rand − L_oracle); None when the oracle cannot beat chance."""
    den = rand - oracle
    if abs(den) < 1e-12:
        return None
    return (rand - arm) / den


def _mean_std(values: Sequence[float]) -> tuple[float, float, float, float]:
    t = torch.tensor(list(values), dtype=torch.float64)
    std = float(t.std(unbiased=True)) if t.numel() > 1 else 0.0
    return float(t.mean()), std, float(t.min()), float(t.max())


@dataclass
class PruneSweep:
    """Results of :func:`prune_sweep`.

    Attributes:
        runs: one dict per pruned model (arm, k, seed, loss, accuracy, removed heads).
        intact: loss (and accuracy) of the unpruned model.
        oracle: per k, on the oracle data: the best / worst k-subsets, the exact mean over
            all k-subsets (random pruning's expectation), each arm's loss and fidelity.
        fidelity: summary fidelity per arm over all k (pooled; see the module docstring).
    """

    ks: list[int]
    n_heads: int
    layers: list[int]
    runs: list[dict[str, Any]]
    intact: dict[str, Any]
    oracle: list[dict[str, Any]] | None = None
    fidelity: dict[str, float | None] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def table(self) -> list[dict[str, Any]]:
        """One row per (arm, k): mean, std (over seeds for random), min, max."""
        rows = [{"arm": "intact", "k": 0, "k_frac": 0.0, "n_runs": 1,
                 "loss": self.intact["loss"], "loss_std": 0.0, "loss_min": self.intact["loss"],
                 "loss_max": self.intact["loss"], "accuracy": self.intact.get("accuracy"),
                 "accuracy_std": 0.0 if self.intact.get("accuracy") is not None else None,
                 "removed": ""}]
        for k in self.ks:
            for arm in self.meta.get("arms", ARMS):
                runs = [r for r in self.runs if r["arm"] == arm and r["k"] == k]
                if not runs:
                    continue
                loss, loss_std, lo, hi = _mean_std([r["loss"] for r in runs])
                accs = [r["accuracy"] for r in runs if r.get("accuracy") is not None]
                acc, acc_std = (None, None)
                if accs:
                    acc, acc_std, _, _ = _mean_std(accs)
                removed = "" if arm == "random" else " ".join(
                    _head_name(a, b) for a, b in runs[0]["removed"])
                rows.append({"arm": arm, "k": k, "k_frac": round(k / self.n_heads, 4),
                             "n_runs": len(runs), "loss": loss, "loss_std": loss_std,
                             "loss_min": lo, "loss_max": hi, "accuracy": acc,
                             "accuracy_std": acc_std, "removed": removed})
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {"ks": self.ks, "n_heads": self.n_heads, "layers": self.layers,
                "intact": self.intact, "table": self.table(), "runs": self.runs,
                "oracle": self.oracle, "fidelity": self.fidelity, "meta": self.meta}

    def to_csv(self) -> str:
        return _csv(self.table())

    def oracle_csv(self) -> str:
        if not self.oracle:
            return ""
        rows = [{k: (" ".join(_head_name(a, b) for a, b in v) if k.endswith("removed") else v)
                 for k, v in row.items()} for row in self.oracle]
        return _csv(rows)

    def to_markdown(self) -> str:
        has_acc = self.intact.get("accuracy") is not None
        lines = ["| arm | k | loss (mean ± std) | range |" + (" accuracy |" if has_acc else "")
                 + " removed heads |",
                 "|---|---:|---:|---:|" + ("---:|" if has_acc else "") + "---|"]
        for r in self.table():
            std = f" ± {r['loss_std']:.4f}" if r["n_runs"] > 1 else ""
            rng = f"{r['loss_min']:.4f}–{r['loss_max']:.4f}" if r["n_runs"] > 1 else ""
            acc = ""
            if has_acc:
                acc = f" {r['accuracy']:.3f}" + (f" ± {r['accuracy_std']:.3f}"
                                                 if r["n_runs"] > 1 else "") + " |"
            removed = r["removed"] or (f"({r['n_runs']} seeds)" if r["arm"] == "random" else "")
            lines.append(f"| {r['arm']} | {r['k']} | {r['loss']:.4f}{std} | {rng} |{acc} "
                         f"{removed} |")
        if self.oracle:
            n_ex = self.meta.get("oracle_examples")
            lines += ["", f"Oracle over all subsets of the {self.n_heads} heads "
                      f"({n_ex} examples; losses on these examples):", "",
                      "| k | best subset | least | random (exact mean) | most | worst subset "
                      "| fidelity least | fidelity most |",
                      "|---:|---:|---:|---:|---:|---:|---:|---:|"]
            for o in self.oracle:
                lines.append(
                    f"| {o['k']} | {o['best_loss']:.4f} | {_fmt(o.get('least_loss'))} | "
                    f"{o['random_mean_loss']:.4f} | {_fmt(o.get('most_loss'))} | "
                    f"{o['worst_loss']:.4f} | {_fmt(o.get('fidelity_least'), 3)} | "
                    f"{_fmt(o.get('fidelity_most'), 3)} |")
            if self.fidelity:
                lines += ["", "Summary fidelity (pooled over k; 1 = oracle, 0 = random): "
                          + ", ".join(f"{a} {_fmt(v, 3)}" for a, v in self.fidelity.items())]
        return "\n".join(lines) + "\n"

    def save(self, out: str | Path, *, plot: bool = True, prefix: str = "prune") -> dict[str, Path]:
        """Write ``<prefix>.csv``, ``<prefix>.json``, ``<prefix>.md`` (+ oracle CSV, plot PNG)."""
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        files = {"csv": folder / f"{prefix}.csv", "json": folder / f"{prefix}.json",
                 "md": folder / f"{prefix}.md"}
        files["csv"].write_text(self.to_csv())
        files["json"].write_text(json.dumps(self.to_dict(), indent=2, default=_json_default) + "\n")
        files["md"].write_text(self.to_markdown())
        if self.oracle:
            files["oracle_csv"] = folder / f"{prefix}_oracle.csv"
            files["oracle_csv"].write_text(self.oracle_csv())
        if plot:
            from headig.validation_plots import plot_prune

            files["png"] = plot_prune(self, folder / f"{prefix}.png")
        return files


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    return f"{v:.{digits}f}"


def _json_default(o: Any) -> Any:
    if isinstance(o, Tensor):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _csv(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if v is None else (f"{v:.6g}" if isinstance(v, float) else v))
                         for k, v in r.items()})
    return buf.getvalue()


def prune_sweep(model: nn.Module, batch: Any, scores: Any, *, ks: Sequence[int] | None = None,
                k_fracs: Sequence[float] | None = None, arms: Sequence[str] = ARMS,
                random_seeds: int = 3, seed: int = 1234, by: str = "signed",
                layers: Sequence[int] | None = None,
                objective: MaskedDiffusionObjective | None = None,
                accuracy: bool = False, labels: Mapping[str, str] | None = None,
                generate_kwargs: Mapping[str, Any] | None = None,
                oracle: bool | None = None, oracle_batch: Any = None,
                oracle_examples: int | None = None,
                oracle_max_heads: int = DEFAULT_ORACLE_MAX_HEADS,
                table: CoalitionTable | None = None, internal_batch_size: int = 256,
                progress: bool = False,
                on_stage: Callable[[str], None] | None = None) -> PruneSweep:
    """Prune the top / bottom / random k heads of a ranking and measure what breaks.

    Args:
        batch: held-out examples (not the attribution data) for the loss and accuracy.
        scores: a :class:`~headig.importance.HeadImportance` or [L, H] scores
            (positive = helps).
        ks / k_fracs: head counts or fractions of the heads in ``layers`` (one of them).
        arms: any of "most", "least", "random".
        random_seeds: random draws per k (seeds ``seed``, ``seed + 1``, ...).
        by: rank by the signed score or by |score| (see :func:`headig.gating.select_heads`).
        layers: the layers whose heads may be pruned (default: the attributed layers).
        objective: the loss (default: the attribution default, seed 0).
        accuracy: also measure exact-match generation accuracy
            (:func:`generation_accuracy`; ``labels`` gives per-group accuracy).
        oracle: enumerate every head subset (default: when the heads in ``layers`` are at
            most ``oracle_max_heads``), on ``oracle_batch``, else on ``oracle_examples``
            examples evenly spaced through ``batch`` (:func:`spread`), else on ``batch``.
        table: a precomputed :func:`coalition_table` to use as the oracle.
        on_stage: called with a short description before each stage (progress display).
    """
    family = family_of(model)
    if random_seeds < 1 and "random" in arms:
        raise ValueError(f"random_seeds={random_seeds}; expected >= 1")
    bad = [a for a in arms if a not in ARMS]
    if bad or not arms:
        raise ValueError(f"arms={list(arms)}; expected a non-empty subset of {list(ARMS)}")
    s = scores.scores if hasattr(scores, "scores") else torch.as_tensor(scores)
    if tuple(s.shape) != (family.n_layers, family.n_heads):
        raise ValueError(f"scores have shape {tuple(s.shape)}; the model has [L, H] = "
                         f"[{family.n_layers}, {family.n_heads}]")
    attributed = list(scores.layers) if hasattr(scores, "layers") else None
    lyr = normalize_layers(layers if layers is not None else attributed, family.n_layers)
    n = len(lyr) * family.n_heads
    k_list = resolve_ks(n, ks, k_fracs)
    if oracle is None:
        oracle = table is not None or n <= oracle_max_heads
    if oracle and table is None and n > oracle_max_heads:
        raise ValueError(f"oracle over {n} heads needs 2^{n} subsets; limit oracle_max_heads="
                         f"{oracle_max_heads} (restrict the layers or disable the oracle)")
    if table is not None and tuple(table.layers) != tuple(lyr):
        raise ValueError(f"the coalition table covers layers {list(table.layers)}, the sweep "
                         f"prunes layers {lyr}")
    obj = _objective(objective)
    items = eval_items(batch)
    stage = on_stage or (lambda _msg: None)

    # every keep mask of the sweep, evaluated in one pass
    specs: list[dict[str, Any]] = []
    for k in k_list:
        for arm in arms:
            seeds = [seed + i for i in range(random_seeds)] if arm == "random" else [seed]
            for sd in seeds:
                keep = select_heads(s, arm, k=k, layers=lyr, seed=sd, by=by)
                specs.append({"arm": arm, "k": k, "seed": sd if arm == "random" else None,
                              "keep": keep})
    masks = torch.stack([torch.ones(family.n_layers, family.n_heads, dtype=torch.bool)]
                        + [sp["keep"] for sp in specs])
    stage(f"loss of {len(masks)} pruned models on {len(items)} examples")
    losses = loss_at_masks(model, items, masks, objective=obj,
                           internal_batch_size=internal_batch_size).tolist()
    intact: dict[str, Any] = {"loss": losses[0], "accuracy": None}
    accs: list[float | None] = [None] * len(masks)
    groups: list[dict[str, float]] = [{}] * len(masks)
    if accuracy:
        stage(f"generation accuracy of {len(masks)} pruned models")
        bar = _progress(progress, len(masks), "accuracy", "model")
        for i, keep in enumerate(masks):
            res = generation_accuracy(model, items, labels=labels, keep=keep,
                                      generate_kwargs=generate_kwargs)
            accs[i], groups[i] = res["accuracy"], res["groups"]
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        intact["accuracy"], intact["groups"] = accs[0], groups[0]
    runs = []
    for i, sp in enumerate(specs, start=1):
        runs.append({"arm": sp["arm"], "k": sp["k"], "seed": sp["seed"], "loss": losses[i],
                     "accuracy": accs[i], "groups": groups[i],
                     "removed": [tuple(x) for x in (~sp["keep"]).nonzero().tolist()]})

    oracle_rows = None
    fidelity = None
    oracle_n = None
    if oracle:
        if table is None:
            if oracle_batch is not None:
                o_items = eval_items(oracle_batch)
            elif oracle_examples is not None:
                o_items = spread(items, int(oracle_examples))
            else:
                o_items = items
            stage(f"oracle: loss of all {1 << n} head subsets on {len(o_items)} examples")
            table = coalition_table(model, o_items, layers=lyr, objective=obj,
                                    max_heads=max(oracle_max_heads, n), progress=progress)
        oracle_n = table.n_examples
        oracle_rows, fidelity = _oracle_rows(table, runs, k_list, arms)
    meta = {"arms": list(arms), "random_seeds": int(random_seeds), "seed": int(seed), "by": by,
            "objective": obj.settings(), "n_examples": len(items), "oracle_examples": oracle_n,
            "family": family.name, "model": getattr(model, "name_or_path", None),
            "score_meta": dict(getattr(scores, "meta", {}) or {}).get("estimator")}
    if table is not None:
        meta["oracle_seconds"] = table.meta.get("seconds")
        meta["oracle_intact_loss"] = float(-table.values[table.full])
    return PruneSweep(ks=k_list, n_heads=n, layers=lyr, runs=runs, intact=intact,
                      oracle=oracle_rows, fidelity=fidelity, meta=meta)


def _oracle_rows(table: CoalitionTable, runs: list[dict[str, Any]], ks: Sequence[int],
                 arms: Sequence[str]) -> tuple[list[dict[str, Any]], dict[str, float | None]]:
    """Per-k oracle rows with each ranked arm's loss and fidelity on the table's data."""
    rows = []
    num: dict[str, float] = defaultdict(float)
    den: dict[str, float] = defaultdict(float)
    for k in ks:
        o = table.oracle(k)
        row: dict[str, Any] = {"k": k, "n_subsets": o["n_subsets"], "best_loss": o["best_loss"],
                               "least_loss": None, "random_mean_loss": o["random_mean_loss"],
                               "random_std_loss": o["random_std_loss"], "most_loss": None,
                               "worst_loss": o["worst_loss"], "fidelity_least": None,
                               "fidelity_most": None, "best_removed": o["best_removed"],
                               "worst_removed": o["worst_removed"]}
        for arm, ref in (("least", "best_loss"), ("most", "worst_loss")):
            if arm not in arms:
                continue
            run = next(r for r in runs if r["arm"] == arm and r["k"] == k)
            keep = torch.ones(table.n_layers, table.n_heads, dtype=torch.bool)
            for a, b in run["removed"]:
                keep[a, b] = False
            loss = table.loss(keep)
            row[f"{arm}_loss"] = loss
            row[f"fidelity_{arm}"] = _fidelity(loss, o["random_mean_loss"], o[ref])
            num[arm] += o["random_mean_loss"] - loss
            den[arm] += o["random_mean_loss"] - o[ref]
        rows.append(row)
    summary = {arm: (num[arm] / den[arm] if abs(den[arm]) > 1e-12 else None)
               for arm in ("most", "least") if arm in arms}
    return rows, summary


# ----------------------------------------------------------------------------- sparse


def auto_block_size(max_length: int, *, min_blocks: int = 16, kernel_tile: int = 128) -> int:
    """The kernel tile (128), or a power of two small enough for ``min_blocks`` blocks.

    Sparse budgets are counted in key blocks; a 20-token sequence has one 128-token
    block, so nothing could be dropped. Short data therefore gets smaller blocks.
    """
    if max_length < 1:
        raise ValueError(f"max_length={max_length}; expected >= 1")
    size = kernel_tile
    while size > 1 and max_length < min_blocks * size:
        size //= 2
    return size


@dataclass
class SparseSweep:
    """Results of :func:`sparse_sweep`: one row per (mode, keep)."""

    rows: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "meta": self.meta}

    def to_csv(self) -> str:
        return _csv([{k: v for k, v in r.items() if k not in ("groups", "stats")}
                     for r in self.rows])

    def to_markdown(self) -> str:
        has_acc = any(r.get("accuracy") is not None for r in self.rows)
        lines = ["| mode | keep | loss | Δ loss vs dense |" + (" accuracy |" if has_acc else "")
                 + " seconds |", "|---|---:|---:|---:|" + ("---:|" if has_acc else "") + "---:|"]
        dense = next((r for r in self.rows if r["mode"] == "standard"), None)
        for r in self.rows:
            delta = "" if dense is None else f"{r['loss'] - dense['loss']:+.4f}"
            acc = f" {_fmt(r.get('accuracy'), 3)} |" if has_acc else ""
            lines.append(f"| {r['mode']} | {r['keep']:.2f} | {r['loss']:.4f} | {delta} |{acc} "
                         f"{r['seconds']:.1f} |")
        return "\n".join(lines) + "\n"

    def save(self, out: str | Path, *, plot: bool = True, prefix: str = "sparse"
             ) -> dict[str, Path]:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        files = {"csv": folder / f"{prefix}.csv", "json": folder / f"{prefix}.json",
                 "md": folder / f"{prefix}.md"}
        files["csv"].write_text(self.to_csv())
        files["json"].write_text(json.dumps(self.to_dict(), indent=2, default=_json_default) + "\n")
        files["md"].write_text(self.to_markdown())
        if plot:
            from headig.validation_plots import plot_sparse

            files["png"] = plot_sparse(self, folder / f"{prefix}.png")
        return files


SPARSE_MODES = ("standard", "uniform", "adaptive")


def sparse_sweep(model: nn.Module, batch: Any, importance: Any = None, *,
                 keeps: Sequence[float] = (0.1, 0.3, 0.5),
                 modes: Sequence[str] = SPARSE_MODES,
                 objective: MaskedDiffusionObjective | None = None, accuracy: bool = False,
                 labels: Mapping[str, str] | None = None,
                 generate_kwargs: Mapping[str, Any] | None = None,
                 patch_kwargs: Mapping[str, Any] | None = None,
                 internal_batch_size: int = 256, progress: bool = False,
                 on_stage: Callable[[str], None] | None = None) -> SparseSweep:
    """Dense vs uniform vs importance-adaptive sparse attention at several keep ratios.

    The loss is the held-out masked-diffusion loss (one forward per masking variant, so
    the sparse pattern is chosen on the fly from each forward's own queries and keys);
    the accuracy comes from generation, where the pattern follows the denoising schedule
    (dense for the first ``skip`` of the steps, then chosen once and reused).

    Args:
        importance: HeadImportance or [L, H] scores; required for ``adaptive``.
        keeps: fractions of key blocks kept (the same total budget in both sparse modes).
        modes: any of "standard" (dense, measured once), "uniform", "adaptive".
        patch_kwargs: passed to :class:`headig.sparse.SparseAttentionPatch`
            (``block_size``, ``skip``, ``min_keep``, ``kv_groups``, ``kernel`` ...).
            ``block_size`` defaults to :func:`auto_block_size` of the longest example,
            ``min_seq_len`` to 0 (always sparse: this measures quality, not speed) and
            ``kernel`` to "gather" on a CPU (same result as the compiled kernel, no compile).
    """
    from headig.sparse import SparseAttentionPatch

    bad = [m for m in modes if m not in SPARSE_MODES]
    if bad or not modes:
        raise ValueError(f"modes={list(modes)}; expected a non-empty subset of "
                         f"{list(SPARSE_MODES)}")
    if "adaptive" in modes and importance is None:
        raise ValueError("the adaptive mode needs importance scores (--scores FILE)")
    sparse_modes = [m for m in modes if m != "standard"]
    keep_list = sorted({float(k) for k in keeps})
    if sparse_modes and (not keep_list or any(not 0.0 < k <= 1.0 for k in keep_list)):
        raise ValueError(f"keeps={list(keeps)}; expected fractions in (0, 1]")
    family = family_of(model)
    items = eval_items(batch)
    obj = _objective(objective)
    kw = dict(patch_kwargs or {})
    if kw.get("block_size") is None:
        kw["block_size"] = auto_block_size(max(it.length for it in items))
    kw.setdefault("min_seq_len", 0)
    if kw.get("kernel") in (None, "auto") and _device(model).type == "cpu":
        kw["kernel"] = "gather"  # compiling flex_attention on a CPU costs more than it saves
    stage = on_stage or (lambda _m: None)
    full = torch.ones(family.n_layers, family.n_heads, dtype=torch.bool)
    configs = ([("standard", 1.0)] if "standard" in modes else []) + \
        [(m, k) for k in keep_list for m in sparse_modes]
    rows = []
    bar = _progress(progress, len(configs), "sparse", "setting")
    for mode, keep in configs:
        stage(f"{mode} attention" + ("" if mode == "standard" else f", keep {keep:g}"))
        start = time.time()
        args = {"importance": importance} if mode == "adaptive" else {}
        patch = SparseAttentionPatch(model, mode, keep=keep, **args, **kw) \
            if mode != "standard" else None
        if patch is not None:
            patch.apply()
        try:
            loss = float(loss_at_masks(model, items, full, objective=obj,
                                       internal_batch_size=internal_batch_size))
            acc = None
            groups: dict[str, float] = {}
            if accuracy:
                res = generation_accuracy(model, items, labels=labels,
                                          generate_kwargs=generate_kwargs)
                acc, groups = res["accuracy"], res["groups"]
        finally:
            if patch is not None:
                patch.remove()
        rows.append({"mode": mode, "keep": keep, "loss": loss, "accuracy": acc,
                     "groups": groups, "seconds": time.time() - start,
                     "stats": dict(patch.stats) if patch is not None else {}})
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    meta = {"n_examples": len(items), "objective": obj.settings(),
            "patch": {k: v for k, v in kw.items()}, "family": family.name,
            "model": getattr(model, "name_or_path", None)}
    return SparseSweep(rows=rows, meta=meta)
