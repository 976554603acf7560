"""SparseAttentionPatch: uniform or importance-adaptive block-sparse attention on a model.

The patch replaces each chosen layer's attention function (``attn.attn_fn``) and restores
the previous one exactly on :meth:`SparseAttentionPatch.remove` (or on leaving the
``with`` block, also after an exception).

Schedule (steps are the 0-based ``state.step`` of :mod:`headig.schedule`):

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
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from headig.schedule import current_state
from headig.sparse.budgets import (
    KV_GROUPS,
    check_fraction,
    count_limits,
    head_budgets,
    n_blocks_for,
)
from headig.sparse.kernels import KERNELS, flex_available, mark_flex_broken, run_kernel
from headig.sparse.patterns import ESTIMATES, BlockPattern, build_pattern

log = logging.getLogger("headig.sparse")

MODES = ("standard", "uniform", "adaptive")
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


def _importance_scores(importance: Any, n_layers: int, n_heads: int) -> tuple[Tensor, list[int]]:
    """(scores float64 [L, H], attributed layers) from a HeadImportance or a tensor."""
    if hasattr(importance, "scores") and hasattr(importance, "layers"):
        scores, layers = importance.scores, importance.layers
    else:
        scores, layers = importance, None
    if not isinstance(scores, Tensor):
        try:
            scores = torch.as_tensor(scores)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError("importance must be a HeadImportance or a [n_layers, n_heads] "
                            f"tensor; got {type(importance).__name__}") from err
    if scores.dim() != 2 or tuple(scores.shape) != (n_layers, n_heads):
        raise ValueError(f"importance scores have shape {tuple(scores.shape)}; expected "
                         f"[n_layers, n_heads] = [{n_layers}, {n_heads}] for this model")
    if not scores.is_floating_point():
        scores = scores.to(torch.float64)
    layers = list(range(n_layers)) if layers is None else sorted({int(i) for i in layers})
    if any(not 0 <= i < n_layers for i in layers):
        raise ValueError(f"importance layers {layers} out of range for {n_layers} layers")
    if not bool(torch.isfinite(scores[layers]).all()):
        raise ValueError("importance scores contain NaN or inf in the attributed layers")
    return scores.detach().to("cpu", torch.float64), layers


class SparseAttentionPatch:
    """Block-sparse attention with uniform or importance-adaptive per-head budgets.

    Args:
        model: a native headig model (:func:`headig.load_model`).
        mode: "uniform" (every head keeps ``keep`` of the key blocks), "adaptive"
            (per-head budgets from ``importance`` with the same total) or "standard"
            (dense; the patch does nothing).
        keep: fraction of key blocks kept per query block, in (0, 1]; a head keeps
            ``ceil(keep * n_blocks)`` blocks under uniform sparsity.
        importance: HeadImportance or [n_layers, n_heads] scores (positive = helps);
            required by, and only accepted with, mode="adaptive". Layers outside its
            ``.layers`` get the uniform budget.
        block_size: tokens per block (default 128, the flex_attention tile).
        skip: fraction of denoising steps that stay dense before the pattern is chosen.
        min_keep, max_keep: per-head fraction clamps for adaptive budgets
            (min_keep None = at least one block).
        kv_groups: under GQA, "query" gives every query head its own budget and pattern;
            "kv" pools scores per KV group and shares one budget and pattern in the group.
        importance_increases_keep: False gives *fewer* blocks to important heads (control).
        kernel: "auto" (compiled flex_attention, falling back to "gather" if it cannot be
            compiled here), "flex", "gather" or "dense_mask" (reference).
        layers: layers to sparsify (default all).
        min_seq_len: sequences shorter than this stay dense, and so do layers where every
            head keeps every block. Default (measured): 1024 tokens inside generation,
            where the pattern is reused, and 2048 for one-shot forwards, which choose their
            own; 0 always runs the sparse kernel.
        estimate: how the pattern is scored: "auto" ("exact" when built once per
            generation, "pooled" when chosen for a single forward), "exact" or "pooled".
        keep_diagonal: always keep each query block's own key block.
        clip, strength: the score -> budget map (see :func:`head_budgets`).

    Example:
        >>> with SparseAttentionPatch(model, "adaptive", keep=0.3, importance=imp):
        ...     out = headig.generation.generate(model, ids, steps=256, gen_length=256)
    """

    def __init__(self, model: nn.Module, mode: str = "uniform", keep: float = 0.3,
                 importance: Any = None, *, block_size: int | None = None, skip: float = 0.2,
                 min_keep: float | None = None, max_keep: float = 1.0,
                 kv_groups: str = "query", importance_increases_keep: bool = True,
                 kernel: str = "auto", layers: Sequence[int] | None = None,
                 min_seq_len: int | None = None, estimate: str = "auto",
                 keep_diagonal: bool = True, clip: Sequence[float] = (5.0, 95.0),
                 strength: float = 2.0 / 3.0) -> None:
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}; expected one of {list(MODES)}")
        if kv_groups not in KV_GROUPS:
            raise ValueError(f"kv_groups={kv_groups!r}; expected one of {list(KV_GROUPS)}")
        if kernel not in KERNELS:
            raise ValueError(f"kernel={kernel!r}; expected one of {list(KERNELS)}")
        if estimate not in ("auto", *ESTIMATES):
            raise ValueError(f"estimate={estimate!r}; expected one of {['auto', *ESTIMATES]}")
        self.keep = check_fraction("keep", keep)
        self.skip = check_fraction("skip", skip, allow_zero=True)
        count_limits(1000, self.keep, min_keep, max_keep)  # validates the fractions
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
        self.mode = mode
        self.min_keep = min_keep
        self.max_keep = float(max_keep)
        self.kv_groups = kv_groups
        self.importance_increases_keep = bool(importance_increases_keep)
        self.kernel = kernel
        self.block_size = block_size
        self.min_seq_len = min_seq_len
        self.estimate = estimate
        self.keep_diagonal = bool(keep_diagonal)
        self.clip = tuple(float(c) for c in clip)
        self.strength = float(strength)
        first = layer_list[0].attn
        self.n_layers = len(layer_list)
        self.n_heads = int(first.n_heads)
        self.group_size = int(first.n_heads) // int(first.n_kv_heads)
        if layers is None:
            self.layers = list(range(self.n_layers))
        else:
            self.layers = sorted({int(i) + (self.n_layers if int(i) < 0 else 0) for i in layers})
            if not self.layers or any(not 0 <= i < self.n_layers for i in self.layers):
                raise ValueError(f"layers={list(layers)}; expected a non-empty list of layer "
                                 f"indices in [0, {self.n_layers})")
        self._scores: Tensor | None = None
        self._adaptive_layers: list[int] = []
        if mode == "adaptive":
            if importance is None:
                raise ValueError("mode='adaptive' needs importance (a HeadImportance or "
                                 "[n_layers, n_heads] scores)")
            scores, attributed = _importance_scores(importance, self.n_layers, self.n_heads)
            self._adaptive_layers = [i for i in self.layers if i in set(attributed)]
            if not self._adaptive_layers:
                raise ValueError(f"none of the patched layers {self.layers} were attributed in "
                                 f"the importance (attributed: {attributed})")
            self._scores = scores
        elif importance is not None and mode == "uniform":
            raise ValueError("importance is only used by mode='adaptive'; with mode='uniform' "
                             "every head gets the same budget (drop importance or use adaptive)")
        self._budget_cache: dict[int, Tensor] = {}
        self._previous: dict[int, Any] = {}
        self._installed: dict[int, Any] = {}
        self._active = False
        self._logged: set[str] = set()
        self._cache_key = f"headig.sparse:{id(self)}"
        self.stats: Counter[str] = Counter()
        self.last_patterns: dict[int, BlockPattern] = {}

    # ------------------------------------------------------------------ budgets
    def budgets(self, n_blocks: int) -> Tensor:
        """Kept key blocks per query block for every layer and head: LongTensor [L, H].

        Layers the patch does not touch read ``n_blocks`` (dense). The patched layers'
        total equals ``len(layers) * H * ceil(keep * n_blocks)`` in every mode.
        """
        cached = self._budget_cache.get(n_blocks)
        if cached is not None:
            return cached
        kw = dict(min_keep=self.min_keep, max_keep=self.max_keep,
                  increases_keep=self.importance_increases_keep, kv_groups=self.kv_groups,
                  group_size=self.group_size, clip=self.clip, strength=self.strength)
        out = torch.full((self.n_layers, self.n_heads), n_blocks, dtype=torch.long)
        out[self.layers] = head_budgets(None, n_blocks, self.keep, n_layers=len(self.layers),
                                        n_heads=self.n_heads, **kw)
        if self._scores is not None:
            rows = self._adaptive_layers
            out[rows] = head_budgets(self._scores[rows], n_blocks, self.keep, **kw)
        self._budget_cache[n_blocks] = out
        return out

    # ------------------------------------------------------------------ install
    def apply(self) -> SparseAttentionPatch:
        """Install the sparse attention functions (idempotent); returns self."""
        if self._active:
            return self
        if self.mode != "standard":
            try:
                for i in self.layers:
                    attn = self.model.layers[i].attn
                    self._previous[i] = attn.attn_fn
                    fn = self._make_fn(i, attn.attn_fn)
                    self._installed[i] = fn
                    attn.attn_fn = fn
            except Exception:
                self.remove()
                raise
        self._active = True
        return self

    def remove(self) -> None:
        """Restore every layer's previous attention function exactly."""
        for i, prev in self._previous.items():
            attn = self.model.layers[i].attn
            if attn.attn_fn is self._installed.get(i):
                attn.attn_fn = prev
            else:
                log.warning("layer %d's attention function was replaced after the sparse patch "
                            "was applied; leaving it in place", i)
        self._previous.clear()
        self._installed.clear()
        self._active = False

    @property
    def active(self) -> bool:
        return self._active

    def __enter__(self) -> SparseAttentionPatch:
        return self.apply()

    def __exit__(self, *exc: object) -> None:
        self.remove()

    # ------------------------------------------------------------------ forward
    def _note(self, key: str, msg: str, *args: Any, level: int = logging.INFO) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.log(level, msg + " (logged once)", *args)

    def _kernel_for(self, q: Tensor, k: Tensor, v: Tensor) -> str:
        if self.kernel != "auto":
            return self.kernel
        if q.device.type == "cpu" and torch.is_grad_enabled() and (
                q.requires_grad or k.requires_grad or v.requires_grad):
            return "gather"  # flex_attention has no CPU backward
        return "flex" if flex_available(q.device) else "gather"

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
        if state is not None:
            key = (self._cache_key, layer)
            pattern = state.cache.get(key)
            if pattern is None or not pattern.matches(b, h, t, q.device):
                if pattern is not None:
                    self._note("rebuild", "batch or length changed inside a generation run: "
                               "choosing a new sparse pattern")
                pattern = self._build(layer, q, k, counts, key_valid, "exact",
                                      state.prompt_length)
                state.cache[key] = pattern
        else:
            pattern = self._build(layer, q, k, counts, key_valid, "pooled", None)
        self.stats["sparse"] += 1
        if other is not None:
            self._note("mask", "attention mask is not a key-padding mask: using the dense-mask "
                       "sparse kernel (correct, not faster)", level=logging.WARNING)
            from headig.sparse.kernels import dense_mask_sparse

            return dense_mask_sparse(q, k, v, pattern, None, other)
        return self._run(q, k, v, pattern, key_valid)

    def _build(self, layer: int, q: Tensor, k: Tensor, counts: Tensor, key_valid: Tensor | None,
               default_estimate: str, prompt_length: int | None) -> BlockPattern:
        estimate = default_estimate if self.estimate == "auto" else self.estimate
        pattern = build_pattern(q, k, counts, self.block_size, key_valid=key_valid,
                                estimate=estimate, kv_groups=self.kv_groups,
                                prompt_length=prompt_length, keep_diagonal=self.keep_diagonal)
        self.stats["builds"] += 1
        self.last_patterns[layer] = pattern
        return pattern

    def _run(self, q: Tensor, k: Tensor, v: Tensor, pattern: BlockPattern,
             key_valid: Tensor | None) -> Tensor:
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
        return (f"SparseAttentionPatch(mode={self.mode!r}, keep={self.keep}, "
                f"block_size={self.block_size}, skip={self.skip}, kv_groups={self.kv_groups!r}, "
                f"kernel={self.kernel!r}, layers={self.layers}, active={self._active})")
