"""Every subset of at most 16 heads: the coalition table, exact Shapley values, fidelity.

:func:`coalition_table` evaluates J = −loss for all 2^n coalitions of kept heads. From
that one table come the oracle pruning curves (best and worst k-subsets), the exact
expectation of random pruning, exact Shapley values (:meth:`CoalitionTable.shapley`) and
the fidelity of any ranking (:func:`ranking_curves`, :func:`ranking_fidelity`)::

    fidelity_most(k)  = (L_rand(k) − L_most(k))  / (L_rand(k) − L_worst(k))
    fidelity_least(k) = (L_rand(k) − L_least(k)) / (L_rand(k) − L_best(k))

1 = the ranking removes the oracle's subset, 0 = no better than chance, < 0 = worse.
The pooled fidelity sums numerators and denominators over k (an area ratio between the
curves), which weights each k by how much room there is to beat chance.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from headig.attribution import Item, MaskedDiffusionObjective, PointRequest, evaluate_points
from headig.diffusion import has_preceding_row, masked_row_loss, source_rows, token_ce
from headig.interventions import normalize_layers, select_heads
from headig.models.family import family_of
from headig.runtime import progress_bar
from headig.validation.loss import default_objective, device_of, eval_items

DEFAULT_ORACLE_MAX_HEADS = 16

__all__ = ["DEFAULT_ORACLE_MAX_HEADS", "CoalitionTable", "coalition_table", "fidelity",
           "ranking_curves", "ranking_fidelity"]


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
        """The (layer, head) pairs a coalition removes."""
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
        per-example Shapley values (:func:`headig.attribution.exact_shapley`, signed).
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

    def to_importance(self) -> Any:
        """Exact Shapley values as a :class:`~headig.importance.HeadImportance`."""
        from headig.importance import HeadImportance

        meta = {**self.meta, "estimator": "exact_shapley", "sign_convention": "positive_helps",
                "n_examples": self.n_examples}
        return HeadImportance(self.shapley().float(), layers=self.layers, meta=meta)


# ----------------------------------------------------------------------------- fidelity


def fidelity(arm: float, rand: float, oracle: float) -> float | None:
    """(L_rand − L_arm) / (L_rand − L_oracle); None when the oracle cannot beat chance."""
    den = rand - oracle
    if abs(den) < 1e-12:
        return None
    return (rand - arm) / den


def ranking_curves(table: CoalitionTable, keeps: Mapping[tuple[str, int], Tensor],
                   ks: Sequence[int]) -> tuple[list[dict[str, Any]], dict[str, float | None]]:
    """Per-k oracle rows with each ranked arm's loss and fidelity, and the pooled fidelity.

    Args:
        keeps: (arm, k) -> keep mask [L, H] for the arms "most" and "least" (an arm
            absent for every k is left out of the summary).
        ks: the head counts, in the order of the rows (and of the pooled sums).
    """
    arms = {arm for arm, _ in keeps}
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
            if (arm, k) not in keeps:
                continue
            loss = table.loss(keeps[(arm, k)])
            row[f"{arm}_loss"] = loss
            row[f"fidelity_{arm}"] = fidelity(loss, o["random_mean_loss"], o[ref])
            num[arm] += o["random_mean_loss"] - loss
            den[arm] += o["random_mean_loss"] - o[ref]
        rows.append(row)
    summary = {arm: (num[arm] / den[arm] if abs(den[arm]) > 1e-12 else None)
               for arm in ("most", "least") if arm in arms}
    return rows, summary


def ranking_fidelity(table: CoalitionTable, scores: Tensor, *, by: str = "signed",
                     ks: Sequence[int] | None = None) -> dict[str, float | None]:
    """Pooled pruning fidelity of a ranking against the table's oracle (all k by default).

    ``most``: removing the top-k heads vs the worst k-subset; ``least``: removing the
    bottom-k vs the best k-subset; ``mean``: their average.
    """
    ks = list(range(1, table.n)) if ks is None else list(ks)
    keeps = {(arm, k): select_heads(scores, arm, k=k, layers=list(table.layers), by=by)
             for k in ks for arm in ("most", "least")}
    _, summary = ranking_curves(table, keeps, ks)
    out: dict[str, float | None] = {a: summary.get(a) for a in ("most", "least")}
    vals = [v for v in out.values() if v is not None]
    out["mean"] = sum(vals) / len(vals) if vals else None
    return out


# ----------------------------------------------------------------------------- enumeration


def coalition_table(model: nn.Module, batch: Any, *, layers: Sequence[int] | None = None,
                    objective: MaskedDiffusionObjective | None = None, baseline: float = 0.0,
                    max_heads: int = DEFAULT_ORACLE_MAX_HEADS, max_rows: int = 4096,
                    progress: bool = False) -> CoalitionTable:
    """Evaluate J at all 2^n coalitions of the heads in ``layers`` (n ≤ ``max_heads``).

    On native headig models the forward is shared across coalitions layer by layer: the
    hidden state after layer l depends only on the gates of layers ≤ l, so layer l runs
    once per distinct prefix (2^(H·(l+1)) rows per input row, not 2^n for every layer);
    rows of equal length are batched without padding. Other models fall back to
    :func:`headig.attribution.evaluate_points`. Both give the attribution objective's J
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
    obj = default_objective(objective)
    start = time.time()
    native = isinstance(model, DiffusionLM)
    enumerate_ = enumerate_prefix_shared if native else enumerate_generic
    values = enumerate_(model, items, obj, lyr, baseline=float(baseline),
                        max_rows=int(max_rows), progress=progress)
    meta = {"objective": obj.settings(), "baseline": float(baseline), "layers": lyr,
            "coalitions": 1 << n, "seconds": round(time.time() - start, 3),
            "method": "prefix-shared" if native else "evaluate_points"}
    return CoalitionTable(values=values, layers=tuple(lyr), n_heads=n_h,
                          n_layers=family.n_layers, n_examples=len(items), meta=meta)


def _gate_configs(n: int, baseline: float) -> Tensor:
    """[2^n, n] gates of every coalition code (bit i set = head i at 1, else ``baseline``)."""
    present = ((torch.arange(1 << n)[:, None] >> torch.arange(n)) & 1).bool()
    return torch.where(present, 1.0, baseline)


def enumerate_generic(model: nn.Module, items: Sequence[Item], obj: MaskedDiffusionObjective,
                      lyr: Sequence[int], *, baseline: float = 0.0, max_rows: int = 4096,
                      progress: bool = False) -> Tensor:
    """J of every coalition [2^n] through :func:`~headig.attribution.evaluate_points` (any model)."""
    family = family_of(model)
    n = len(lyr) * family.n_heads
    gates = _gate_configs(n, baseline).to(torch.float32).view(-1, len(lyr), family.n_heads)
    values = torch.zeros(1 << n, dtype=torch.float64)
    bar = progress_bar(len(items), "oracle coalitions", enabled=progress, unit="ex", leave=False)
    for it in items:
        (vals, _), = evaluate_points(model, obj, [PointRequest(it, gates)], layers=list(lyr),
                                     with_grad=False, internal_batch_size=max_rows)
        values += vals / len(items)
        bar.update(1)
    bar.close()
    return values


def _variant_rows(items: Sequence[Item], obj: MaskedDiffusionObjective,
                  ) -> list[tuple[Item, Tensor, float]]:
    """(item, mask [T], weight / N) for every masking variant of every item."""
    rows = []
    for it in items:
        v = obj.variants(it)
        for m, w in zip(v.masks, v.weights.tolist()):
            rows.append((it, m, w / len(items)))
    return rows


@torch.no_grad()
def enumerate_prefix_shared(model: nn.Module, items: Sequence[Item],
                            obj: MaskedDiffusionObjective, lyr: Sequence[int], *,
                            baseline: float = 0.0, max_rows: int = 4096,
                            progress: bool = False) -> Tensor:
    """J of every coalition [2^n] on a native :class:`~headig.models.modeling.DiffusionLM`.

    A gate scales a head's output before the (linear, bias-free) output projection, so
    the attention output under gates g is Σ_h g_h · P_h with P_h the head's projected
    output. Per layer, attention (the model's own :meth:`Attention.head_outputs`) runs
    once per distinct gate prefix of the earlier layers; only the gate mix and the MLP
    run per coalition, and in the last layer only at the positions whose logits are scored.
    """
    family = family_of(model)
    device, dtype = device_of(model), model.dtype
    n_h, n_layers = family.n_heads, family.n_layers
    slot = {layer: i for i, layer in enumerate(lyr)}
    for block in model.layers:
        if block.attn.o_proj.bias is not None:
            raise ValueError("the prefix-shared oracle needs a bias-free output projection")
    all_configs = _gate_configs(n_h, baseline).to(device=device, dtype=dtype)
    ones = torch.ones(1, n_h, device=device, dtype=dtype)
    values = torch.zeros(1 << (len(lyr) * n_h), dtype=torch.float64)
    mask_id, shift = family.mask_token_id, family.logit_shift
    rows = _variant_rows(items, obj)
    for it, _, _ in rows:
        if not has_preceding_row(it.completion, shift):
            raise ValueError(f"example {it.id!r}: with a logit shift of {shift} the first "
                             "completion token needs a preceding token (e.g. BOS)")
    by_len: dict[int, list[tuple[Item, Tensor, float]]] = defaultdict(list)
    for row in rows:
        by_len[row[0].length].append(row)
    bar = progress_bar(len(rows), "oracle coalitions", enabled=progress, unit="row", leave=False)

    def projected_heads(layer: int, x: Tensor, ctx: dict[str, Tensor]) -> Tensor:
        """[B, T, H, d]: each head's output through its slice of o_proj (the gate mix's terms)."""
        block = model.layers[layer]
        attn = block.attn
        heads = attn.head_outputs(block.attn_norm(x), model.rotary, ctx["cos"], ctx["sin"])
        w = attn.o_proj.weight.view(-1, attn.n_heads, attn.head_dim)  # [d, H, D]
        return torch.einsum("bhtk,mhk->bthm", heads, w)

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
            heads = projected_heads(layer, xs, ctx)
            new_codes = cs[:, None] | cfg_bits[None]  # [r, C]
            if layer < n_layers - 1:
                mix = torch.einsum("bthm,ch->bctm", heads, gates)
                x1 = (xs[:, None] + mix).reshape(r * n_cfg, *xs.shape[1:])
                x2 = x1 + block.mlp(block.mlp_norm(x1))
                run(x2, layer + 1, new_codes.flatten(), ss.repeat_interleave(n_cfg), ctx)
                continue
            sel = ctx["select"][ss]  # [r, T] positions whose logits are scored
            mix = torch.einsum("nhm,ch->ncm", heads[sel], gates)
            x1 = xs[sel][:, None] + mix  # [N, C, d]
            x2 = x1 + block.mlp(block.mlp_norm(x1))
            logits = model.lm_head(model.norm(x2)).float()  # [N, C, V]
            tgt = ctx["targets"][ss][ctx["masked"][ss]]
            ce = token_ce(logits.reshape(-1, logits.shape[-1]), tgt.repeat_interleave(n_cfg))
            loss = masked_row_loss(ce.view(-1, n_cfg), ctx["masked"][ss], obj.loss_normalize)
            contrib = -loss.double().cpu() * ctx["coeff"][ss.cpu()][:, None]
            values.index_add_(0, new_codes.flatten().cpu(), contrib.flatten())

    for length, group in sorted(by_len.items()):
        cos, sin = model.rotary.cos_sin(torch.arange(length, device=device)[None])
        for s in range(0, len(group), max_rows):
            chunk = group[s:s + max_rows]
            ids = torch.stack([it.input_ids for it, _, _ in chunk]).to(device)
            masked = torch.stack([m for _, m, _ in chunk]).to(device)
            select = source_rows(masked, shift)  # rows whose logits predict the masked tokens
            ctx = {"cos": cos, "sin": sin, "targets": ids, "masked": masked, "select": select,
                   "coeff": torch.tensor([w for _, _, w in chunk], dtype=torch.float64)}
            x = model.embed(ids.masked_fill(masked, mask_id))
            src = torch.arange(len(chunk), device=device)
            codes = torch.zeros(len(chunk), dtype=torch.long, device=device)
            run(x, 0, codes, src, ctx)
            bar.update(len(chunk))
    bar.close()
    return values
