"""SparseAttentionPatch: block-sparse attention on a model, budgeted by a policy object.

The patch is an :class:`~headig.interventions.Intervention`: it replaces each chosen
layer's attention function (``attn.attn_fn``) and restores the previous one exactly on
:meth:`~headig.interventions.Intervention.remove` (or on leaving the ``with`` block, also
after an exception or a failure half-way through installing). How many key blocks each
head keeps is the budget policy's business (:mod:`headig.sparse.budgets`).

Schedule (steps are the 0-based ``state.step`` of :mod:`headig.diffusion.schedule`):

- inside a generation of ``T`` steps, forwards with ``step < floor(skip * T)`` are dense
  (the previous attention function runs unchanged); the first forward with
  ``step >= floor(skip * T)`` (normally step ``floor(skip * T)``, i.e. the
  ``floor(skip * T) + 1``-th forward, as in the research code) chooses a pattern per layer
  and head from its own queries and keys and already uses it; every later forward of the
  run reuses it. A new run (or a different batch/length) chooses a new pattern.
- outside generation (likelihood scoring, one forward per request) every forward chooses
  its pattern on the fly from its own queries and keys.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from headig.diffusion.schedule import current_state
from headig.interventions.base import Intervention
from headig.interventions.layers import LayerSpec, normalize_layers
from headig.sparse.budgets import (
    KV_GROUPS,
    BudgetPolicy,
    DenseBudget,
    ImportanceBudget,
    UniformBudget,
    check_fraction,
    count_limits,
    n_blocks_for,
)
from headig.sparse.kernels import KERNELS, auto_kernel, mark_flex_broken, run_kernel
from headig.sparse.patterns import (
    ESTIMATES,
    BlockPattern,
    RowGroupedPattern,
    build_pattern,
    real_key_blocks,
)

log = logging.getLogger("headig.sparse")

MODES = ("dense", "uniform", "adaptive", "standard")  # "standard": older name of "dense"
DEFAULT_BLOCK_SIZE = 128  # flex_attention's tile on CUDA and CPU
# Below these lengths the pattern choice and kernel launch cost more than the skipped blocks
# save (measured in docs/sparse-attention.md), so attention stays dense. A forward that
# reuses a generation's pattern wins from shorter lengths than one that chooses its own.
DEFAULT_MIN_SEQ_LEN = {"reuse": 1024, "one_shot": 2048}


def split_mask(mask: Tensor | None, batch: int, seq_len: int) -> tuple[Tensor | None, Tensor | None]:
    """Split the model's attention mask into (key_valid [B, T], other [B, 1, T, T]).

    A [B, 1, 1, T] mask is key padding. A [B, 1, T, T] mask whose rows are the key-padding
    row, except that rows of padding positions may be all True (the form the model
    produces for Dream-style ``m_i & m_j`` masks, whose padding rows it zeroes afterwards),
    is also key padding. Anything else is returned as ``other`` for the dense-mask kernel.
    """
    if mask is None:
        return None, None
    m = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
    if m.dim() != 4 or m.shape[1] != 1 or m.shape[-1] != seq_len:
        raise ValueError(f"attention mask has shape {tuple(m.shape)}; expected [B, 1, 1, T] or "
                         f"[B, 1, T, T] with T = {seq_len}")
    m = m.expand(batch, 1, m.shape[2], seq_len)
    if m.shape[2] == 1:
        key_valid = m[:, 0, 0]
    else:
        rows = m[:, 0]
        key_valid = rows.all(dim=-2)
        full_rows = rows.all(dim=-1, keepdim=True) & ~key_valid[:, :, None]
        if not bool(((rows == key_valid[:, None, :]) | full_rows).all()):
            return None, m
    if bool(key_valid.all()):
        return None, None
    return key_valid, None


_LEGACY_BUDGET_OPTIONS = ("min_keep", "max_keep", "importance_increases_keep", "clip",
                          "strength")


def budget_from_mode(mode: str, keep: float | None = None, importance: Any = None,
                     options: dict[str, Any] | None = None) -> BudgetPolicy:
    """The budget policy that flat settings describe (a mode name, keep, importance, limits).

    For front ends with flat options (the lm-eval model_args, the CLI, the older
    ``mode=...`` call style): every option is validated in every mode, as it always was.
    """
    options = options or {}
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; expected one of {list(MODES)} "
                         "('standard' is the older name of 'dense')")
    given = {k: v for k, v in options.items() if v is not None}
    fraction = 0.3 if keep is None else keep
    check_fraction("keep", fraction)
    # validated in every mode, as before, although only the adaptive budget reads them
    count_limits(1000, fraction, given.get("min_keep"), given.get("max_keep", 1.0))
    if mode in ("dense", "standard"):
        if importance is not None:
            raise ValueError(f"mode={mode!r} is dense attention and ignores importance; "
                             "drop importance, or use mode='adaptive' (ImportanceBudget) for "
                             "importance-driven block budgets")
        return DenseBudget()
    if mode == "uniform":
        if importance is not None:
            raise ValueError("importance is only used by mode='adaptive'; with mode='uniform' "
                             "every head gets the same budget (drop importance or use adaptive)")
        return UniformBudget(fraction)
    if importance is None:
        raise ValueError("mode='adaptive' needs importance (a HeadImportance or "
                         "[n_layers, n_heads] scores)")
    if "importance_increases_keep" in given:
        given["increases_keep"] = given.pop("importance_increases_keep")
    return ImportanceBudget(importance, fraction, **given)


@dataclass(init=False, repr=False, eq=False)
class SparseAttentionPatch(Intervention):
    """Block-sparse attention on a native model, with a per-head budget policy.

    Args:
        model: a native headig model (:func:`headig.load_model`).
        budget: how many key blocks each head keeps: :class:`UniformBudget` (default,
            keep 0.3), :class:`ImportanceBudget` (importance-adaptive, same total) or
            :class:`DenseBudget` (the patch does nothing); see
            :func:`headig.sparse.budget_policy` to build one by name.
        block_size: tokens per block (default 128, the flex_attention tile).
        skip: fraction of denoising steps that stay dense before the pattern is chosen.
        kv_groups: under GQA, "query" gives every query head its own budget and pattern;
            "kv" pools scores per KV group and shares one budget and pattern in the group.
        kernel: "auto" (compiled flex_attention, falling back to "gather" if it cannot be
            compiled here), "flex", "gather" or "dense_mask" (reference).
        layers: layers to sparsify (default all; any form :func:`normalize_layers` takes).
        min_seq_len: sequences shorter than this stay dense, and so do layers where every
            head keeps every block. Default (measured): 1024 tokens inside generation,
            where the pattern is reused, and 2048 for one-shot forwards, which choose their
            own; 0 always runs the sparse kernel.
        estimate: how the pattern is scored: "auto" ("exact" when built once per
            generation, "pooled" when chosen for a single forward), "exact" or "pooled".
        keep_diagonal: always keep each query block's own key block.
        row_budgets: in a padded batch, count each row's budget on its own real key blocks,
            so a row's pattern (and output) is the one it gets alone, whatever its
            batch-mates (rows with equal real lengths share one kernel call). The default,
            False, counts every row's budget on the padded length, as the released
            version did and as the documented validation numbers were measured: short
            rows in a batch of long ones then keep a larger share of their keys than
            ``keep``. Pass True for batch-invariant results.

    Deprecated call style, same results: ``SparseAttentionPatch(model, mode, keep=...,
    importance=..., min_keep=..., max_keep=..., importance_increases_keep=..., clip=...,
    strength=...)`` with mode "uniform", "adaptive" or "dense" ("standard").

    Example:
        >>> budget = ImportanceBudget(imp, keep=0.3)
        >>> with SparseAttentionPatch(model, budget):
        ...     out = headig.diffusion.generation.generate(model, ids, steps=256, gen_length=256)
    """

    model: nn.Module
    budget: BudgetPolicy
    block_size: int = DEFAULT_BLOCK_SIZE
    skip: float = 0.2
    kv_groups: str = "query"
    kernel: str = "auto"
    layers: list[int] = field(default_factory=list)
    min_seq_len: int | None = None
    estimate: str = "auto"
    keep_diagonal: bool = True
    row_budgets: bool = False

    def __init__(self, model: nn.Module, budget: BudgetPolicy | str | None = None,
                 keep: float | None = None, importance: Any = None, *,
                 block_size: int | None = None, skip: float = 0.2, kv_groups: str = "query",
                 kernel: str = "auto", layers: LayerSpec = None,
                 min_seq_len: int | None = None, estimate: str = "auto",
                 keep_diagonal: bool = True, row_budgets: bool = False,
                 mode: str | None = None,
                 min_keep: float | None = None, max_keep: float | None = None,
                 importance_increases_keep: bool | None = None,
                 clip: Sequence[float] | None = None, strength: float | None = None) -> None:
        legacy = {"min_keep": min_keep, "max_keep": max_keep,
                  "importance_increases_keep": importance_increases_keep, "clip": clip,
                  "strength": strength}
        if isinstance(budget, str):
            if mode is not None and mode != budget:
                raise TypeError(f"mode given twice ({budget!r} and mode={mode!r})")
            mode, budget = budget, None
        if budget is not None:
            extra = [k for k, v in (("mode", mode), ("keep", keep), ("importance", importance),
                                    *legacy.items()) if v is not None]
            if extra:
                raise TypeError(f"{extra} belong to the budget policy; pass them to "
                                f"{type(budget).__name__}(...) instead of the patch")
            if not isinstance(budget, BudgetPolicy):
                raise TypeError(f"budget must be a BudgetPolicy (UniformBudget, "
                                f"ImportanceBudget, DenseBudget) or a mode name; got "
                                f"{type(budget).__name__}")
        elif mode is None and keep is None and importance is None and all(
                v is None for v in legacy.values()):
            budget = UniformBudget()
        else:
            warnings.warn("SparseAttentionPatch(model, mode=..., keep=..., importance=...) is "
                          "deprecated; pass a budget policy: SparseAttentionPatch(model, "
                          "UniformBudget(keep)) or ImportanceBudget(importance, keep)",
                          DeprecationWarning, stacklevel=2)
            budget = budget_from_mode(mode or "uniform", keep, importance, legacy)
        if kv_groups not in KV_GROUPS:
            raise ValueError(f"kv_groups={kv_groups!r}; expected one of {list(KV_GROUPS)}")
        if kernel not in KERNELS:
            raise ValueError(f"kernel={kernel!r}; expected one of {list(KERNELS)}")
        if estimate not in ("auto", *ESTIMATES):
            raise ValueError(f"estimate={estimate!r}; expected one of {['auto', *ESTIMATES]}")
        self.skip = check_fraction("skip", skip, allow_zero=True)
        if block_size is None:
            block_size = DEFAULT_BLOCK_SIZE
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size={block_size!r}; expected a positive int (tokens)")
        if min_seq_len is not None and (isinstance(min_seq_len, bool)
                                        or not isinstance(min_seq_len, int) or min_seq_len < 0):
            raise ValueError(f"min_seq_len={min_seq_len!r}; expected a non-negative int or None")
        layer_list = getattr(model, "layers", None)
        if not isinstance(layer_list, nn.ModuleList) or not all(
                hasattr(blk, "attn") and hasattr(blk.attn, "attn_fn") for blk in layer_list):
            raise TypeError("SparseAttentionPatch needs a native headig model (headig.load_model) "
                            "whose layers call attn.attn_fn; got "
                            f"{type(model).__name__}")
        self.model = model
        self.budget = budget
        self.kv_groups = kv_groups
        self.kernel = kernel
        self.block_size = block_size
        self.min_seq_len = min_seq_len
        self.estimate = estimate
        self.keep_diagonal = bool(keep_diagonal)
        if not isinstance(row_budgets, bool):
            raise ValueError(f"row_budgets={row_budgets!r}; expected True or False")
        self.row_budgets = row_budgets
        first = layer_list[0].attn
        self.n_layers = len(layer_list)
        self.n_heads = int(first.n_heads)
        self.group_size = int(first.n_heads) // int(first.n_kv_heads)
        try:
            self.layers = normalize_layers(layers, self.n_layers)
        except (TypeError, ValueError) as err:
            raise ValueError(f"layers={layers!r}: {err}") from None
        budget.bind(self.n_layers, self.n_heads, self.layers)  # errors before any forward
        self._budget_cache: dict[int, Tensor] = {}
        self._logged: set[str] = set()
        self._cache_key = f"headig.sparse:{id(self)}"
        self.stats: Counter[str] = Counter()
        self.last_patterns: dict[int, BlockPattern | RowGroupedPattern] = {}

    @property
    def mode(self) -> str:
        """The budget policy's name ("dense", "uniform", "adaptive", ...)."""
        return self.budget.name

    @property
    def keep(self) -> float | None:
        """The budget's uniform fraction of key blocks (None for dense attention)."""
        return self.budget.keep

    # ------------------------------------------------------------------ budgets
    def budgets(self, n_blocks: int) -> Tensor:
        """Kept key blocks per query block for every layer and head: LongTensor [L, H].

        Layers the patch does not touch read ``n_blocks`` (dense). For the uniform and
        adaptive budgets the patched layers' total equals
        ``len(layers) * H * ceil(keep * n_blocks)``.
        """
        cached = self._budget_cache.get(n_blocks)
        if cached is not None:
            return cached
        out = self.budget.counts(n_blocks, self.layers, self.n_layers, self.n_heads,
                                 group_size=self.group_size, kv_groups=self.kv_groups)
        self._budget_cache[n_blocks] = out
        return out

    # ------------------------------------------------------------------ install
    def _install(self) -> None:
        """Swap each patched layer's attention function; each swap is undone exactly."""
        if not self.budget.sparse:
            return
        for i in self.layers:
            self._swap_attention_fn(self.model.layers[i].attn,
                                    lambda prev, i=i: self._make_fn(i, prev))

    # ------------------------------------------------------------------ forward
    def _note(self, key: str, msg: str, *args: Any, level: int = logging.INFO) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.log(level, msg + " (logged once)", *args)

    def _kernel_for(self, q: Tensor, k: Tensor, v: Tensor) -> str:
        if self.kernel != "auto":
            return self.kernel
        grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad
                                            or v.requires_grad)
        return auto_kernel(q.device, grad=grad)

    def _min_len(self, in_generation: bool) -> int:
        if self.min_seq_len is not None:
            return self.min_seq_len
        return DEFAULT_MIN_SEQ_LEN["reuse" if in_generation else "one_shot"]

    def _make_fn(self, layer: int, prev: Any):
        def sparse_attn_fn(q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | None,
                           module: nn.Module) -> Tensor:
            return self._forward(layer, prev, q, k, v, mask, module)

        sparse_attn_fn.headig_sparse_patch = self  # type: ignore[attr-defined]
        return sparse_attn_fn

    def _forward(self, layer: int, prev: Any, q: Tensor, k: Tensor, v: Tensor,
                 mask: Tensor | None, module: nn.Module) -> Tensor:
        b, h, t, _ = q.shape
        if k.shape[-2] != t:
            self._note("cross", "query and key lengths differ (%d vs %d): dense attention",
                       t, k.shape[-2])
            self.stats["dense_other"] += 1
            return prev(q, k, v, mask=mask, module=module)
        nk = n_blocks_for(t, self.block_size)
        state = current_state(self.model)
        min_len = self._min_len(state is not None)
        if t < min_len or nk < 2 and min_len > 0:
            self._note(f"short{state is None}", "%s of %d tokens is shorter than min_seq_len=%d "
                       "(or fits in one %d-token block): attention stays DENSE there because "
                       "sparse cannot be faster; pass min_seq_len=0 to sparsify every sequence",
                       "one-shot forward" if state is None else "generation", t, min_len,
                       self.block_size, level=logging.WARNING)
            self.stats["dense_short"] += 1
            return prev(q, k, v, mask=mask, module=module)
        if state is not None and state.step < math.floor(self.skip * state.total_steps + 1e-9):
            self.stats["dense_schedule"] += 1
            return prev(q, k, v, mask=mask, module=module)
        counts = self.budgets(nk)[layer]
        if min_len > 0 and bool((counts >= nk).all()):
            self.stats["dense_full"] += 1
            return prev(q, k, v, mask=mask, module=module)
        key_valid, other = split_mask(mask, b, t)
        groups = self._row_groups(nk, key_valid) if self.row_budgets and other is None else None
        if state is not None:
            key = (self._cache_key, layer)
            pattern = state.cache.get(key)
            if pattern is None or not pattern.matches(b, h, t, q.device):
                if pattern is not None:
                    self._note("rebuild", "batch or length changed inside a generation run: "
                               "choosing a new sparse pattern")
                pattern = self._build(layer, q, k, counts, key_valid, "exact",
                                      state.prompt_length, groups)
                state.cache[key] = pattern
        else:
            pattern = self._build(layer, q, k, counts, key_valid, "pooled", None, groups)
        self.stats["sparse"] += 1
        if other is not None:
            self._note("mask", "attention mask is not a key-padding mask: using the dense-mask "
                       "sparse kernel (correct, not faster)", level=logging.WARNING)
            from headig.sparse.kernels import dense_mask_sparse

            return dense_mask_sparse(q, k, v, pattern, None, other)
        return self._run(q, k, v, pattern, key_valid)

    def _row_groups(self, nk: int, key_valid: Tensor | None) -> list[tuple[Tensor, int]] | None:
        """Rows grouped by their number of real key blocks, when padding makes them differ.

        None when every row's keys reach into all ``nk`` blocks (no padding block): then
        the whole batch shares one budget, as before. Otherwise each row's budget is counted
        on its own real blocks, so a row gets the pattern size it would get alone, whatever
        its batch-mates.
        """
        if key_valid is None:
            return None
        n_real = real_key_blocks(key_valid, nk, self.block_size).sum(-1).clamp_min(1).cpu()
        if bool((n_real == nk).all()):
            return None
        return [(torch.nonzero(n_real == n).flatten(), int(n))
                for n in torch.unique(n_real).tolist()]

    def _build(self, layer: int, q: Tensor, k: Tensor, counts: Tensor, key_valid: Tensor | None,
               default_estimate: str, prompt_length: int | None,
               groups: list[tuple[Tensor, int]] | None = None,
               ) -> BlockPattern | RowGroupedPattern:
        estimate = default_estimate if self.estimate == "auto" else self.estimate
        kw = dict(estimate=estimate, kv_groups=self.kv_groups, prompt_length=prompt_length,
                  keep_diagonal=self.keep_diagonal)
        pattern: BlockPattern | RowGroupedPattern
        if groups is None:
            pattern = build_pattern(q, k, counts, self.block_size, key_valid=key_valid, **kw)
        else:
            parts = []
            for rows, n_real in groups:
                r = rows.to(q.device)
                parts.append((rows, build_pattern(
                    q[r], k[r], self.budgets(n_real)[layer], self.block_size,
                    key_valid=None if key_valid is None else key_valid[r], **kw)))
            pattern = RowGroupedPattern(parts, q.shape[0])
        self.stats["builds"] += 1
        self.last_patterns[layer] = pattern
        return pattern

    def _run(self, q: Tensor, k: Tensor, v: Tensor, pattern: BlockPattern | RowGroupedPattern,
             key_valid: Tensor | None) -> Tensor:
        if isinstance(pattern, RowGroupedPattern):
            outs, order = [], []
            for rows, sub in pattern.groups:
                r = rows.to(q.device)
                outs.append(self._run(q[r], k[r], v[r], sub,
                                      None if key_valid is None else key_valid[r]))
                order.append(r)
            return torch.cat(outs)[torch.argsort(torch.cat(order))]
        name = self._kernel_for(q, k, v)
        if name == "flex":
            try:
                out = run_kernel("flex", q, k, v, pattern, key_valid)
                self.stats["kernel_flex"] += 1
                return out
            except Exception as err:  # compilation problems surface at the first call
                if self.kernel == "flex":
                    raise RuntimeError(f"compiled flex_attention failed on {q.device} ({err}); "
                                       "use kernel='gather' or kernel='auto'") from err
                mark_flex_broken(q.device, repr(err))
                self._note("flexfail", "compiled flex_attention is unavailable on %s (%s); "
                           "using the gather kernel", q.device.type, type(err).__name__,
                           level=logging.WARNING)
                name = "gather"
        self.stats[f"kernel_{name}"] += 1
        return run_kernel(name, q, k, v, pattern, key_valid)

    def __repr__(self) -> str:
        return (f"SparseAttentionPatch(budget={self.budget!r}, "
                f"block_size={self.block_size}, skip={self.skip}, kv_groups={self.kv_groups!r}, "
                f"kernel={self.kernel!r}, layers={self.layers}, active={self.active})")
