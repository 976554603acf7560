"""Dense vs uniform vs importance-adaptive sparse attention at several keep ratios.

If head scores say which heads matter, giving those heads more of a fixed sparse-attention
budget should cost less quality than spreading it uniformly; :func:`sparse_sweep` checks
that on held-out loss (and generation accuracy).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from headig.models.family import family_of
from headig.runtime import progress_bar
from headig.validation.accuracy import generation_accuracy
from headig.validation.loss import default_objective, device_of, eval_items, loss_at_masks
from headig.validation.report import Report, fmt
from headig.validation.settings import AccuracySettings, EvalSettings, fold_keywords

SPARSE_MODES = ("standard", "uniform", "adaptive")

# earlier flat keyword -> (settings group, field)
_LEGACY: dict[str, tuple[str, str]] = {
    **{name: ("evaluation", name) for name in
       ("objective", "internal_batch_size", "progress", "on_stage")},
    "labels": ("accuracy", "labels"), "generate_kwargs": ("accuracy", "generate_kwargs"),
}

__all__ = ["SPARSE_MODES", "SparseSweep", "auto_block_size", "sparse_sweep"]


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
class SparseSweep(Report):
    """Results of :func:`sparse_sweep`: one row per (mode, keep)."""

    rows: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)

    default_prefix = "sparse"

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "meta": self.meta}

    def csv_rows(self) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k not in ("groups", "stats")} for r in self.rows]

    def to_markdown(self) -> str:
        has_acc = any(r.get("accuracy") is not None for r in self.rows)
        lines = ["| mode | keep | loss | Δ loss vs dense |" + (" accuracy |" if has_acc else "")
                 + " seconds |", "|---|---:|---:|---:|" + ("---:|" if has_acc else "") + "---:|"]
        dense = next((r for r in self.rows if r["mode"] == "standard"), None)
        for r in self.rows:
            delta = "" if dense is None else f"{r['loss'] - dense['loss']:+.4f}"
            acc = f" {fmt(r.get('accuracy'), 3)} |" if has_acc else ""
            lines.append(f"| {r['mode']} | {r['keep']:.2f} | {r['loss']:.4f} | {delta} |{acc} "
                         f"{r['seconds']:.1f} |")
        return "\n".join(lines) + "\n"

    def plot(self, path: Path) -> Path:
        from headig.validation.plots import plot_sparse

        return plot_sparse(self, path)


def sparse_sweep(model: nn.Module, batch: Any, importance: Any = None, *,
                 keeps: Sequence[float] = (0.1, 0.3, 0.5),
                 modes: Sequence[str] = SPARSE_MODES,
                 accuracy: AccuracySettings | bool = False,
                 evaluation: EvalSettings | None = None,
                 patch_kwargs: Mapping[str, Any] | None = None,
                 **legacy: Any) -> SparseSweep:
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
        accuracy: :class:`~headig.validation.settings.AccuracySettings`, or True / False.
        evaluation: objective, rows per forward, progress
            (:class:`~headig.validation.settings.EvalSettings`).
        **legacy: the flat keywords of earlier releases (``objective``, ``labels``,
            ``generate_kwargs``, ``internal_batch_size``, ``progress``, ``on_stage``).
    """
    from headig.sparse import SparseAttentionPatch

    cfg = fold_keywords(
        "sparse_sweep",
        {"accuracy": accuracy if isinstance(accuracy, AccuracySettings) else None,
         "evaluation": evaluation},
        {"accuracy": AccuracySettings(enabled=bool(accuracy)), "evaluation": EvalSettings()},
        legacy, _LEGACY)
    acc_cfg: AccuracySettings = cfg["accuracy"]
    ev: EvalSettings = cfg["evaluation"]
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
    obj = default_objective(ev.objective)
    kw = dict(patch_kwargs or {})
    if kw.get("block_size") is None:
        kw["block_size"] = auto_block_size(max(it.length for it in items))
    kw.setdefault("min_seq_len", 0)
    if kw.get("kernel") in (None, "auto") and device_of(model).type == "cpu":
        kw["kernel"] = "gather"  # compiling flex_attention on a CPU costs more than it saves
    stage = ev.on_stage or (lambda _m: None)
    full = torch.ones(family.n_layers, family.n_heads, dtype=torch.bool)
    configs = ([("standard", 1.0)] if "standard" in modes else []) + \
        [(m, k) for k in keep_list for m in sparse_modes]
    rows = []
    bar = progress_bar(len(configs), "sparse", enabled=ev.progress, unit="setting", leave=False)
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
                                       internal_batch_size=ev.internal_batch_size))
            acc = None
            groups: dict[str, float] = {}
            if acc_cfg.enabled:
                res = generation_accuracy(model, items, labels=acc_cfg.labels,
                                          generate_kwargs=acc_cfg.generate_kwargs)
                acc, groups = res["accuracy"], res["groups"]
        finally:
            if patch is not None:
                patch.remove()
        rows.append({"mode": mode, "keep": keep, "loss": loss, "accuracy": acc,
                     "groups": groups, "seconds": time.time() - start,
                     "stats": dict(patch.stats) if patch is not None else {}})
        bar.update(1)
    bar.close()
    meta = {"n_examples": len(items), "objective": obj.settings(),
            "patch": {k: v for k, v in kw.items()}, "family": family.name,
            "model": getattr(model, "name_or_path", None)}
    return SparseSweep(rows=rows, meta=meta)
