"""Dense vs uniform vs importance-adaptive sparse attention at several keep ratios.

If head scores say which heads matter, giving those heads more of a fixed sparse-attention
budget should cost less quality than spreading it uniformly; :func:`sparse_sweep` checks
that on held-out loss (and generation accuracy). :func:`compare_budget_policies` compares
the budget rules themselves (uniform, importance-adaptive, sensitivity-adaptive, a greedy
oracle) with scores from training data, over seeds, with paired differences.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from headig.models.family import family_of
from headig.runtime import progress_bar
from headig.validation.accuracy import generation_accuracy
from headig.validation.loss import (
    default_objective,
    device_of,
    eval_items,
    loss_at_masks,
    spread,
)
from headig.validation.report import Report, fmt
from headig.validation.settings import AccuracySettings, EvalSettings, fold_keywords

SPARSE_MODES = ("standard", "uniform", "adaptive")

# earlier flat keyword -> (settings group, field)
_LEGACY: dict[str, tuple[str, str]] = {
    **{name: ("evaluation", name) for name in
       ("objective", "internal_batch_size", "progress", "on_stage")},
    "labels": ("accuracy", "labels"), "generate_kwargs": ("accuracy", "generate_kwargs"),
}

__all__ = ["POLICIES", "SPARSE_MODES", "PolicyComparison", "SparseSweep", "auto_block_size",
           "compare_budget_policies", "greedy_oracle", "sparse_sweep"]


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
    from headig.sparse import SparseAttentionPatch, budget_from_mode

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
    # options of the budget policy, not of the patch
    policy_opts = {k: kw.pop(k) for k in ("min_keep", "max_keep", "importance_increases_keep",
                                          "clip", "strength") if k in kw}
    stage = ev.on_stage or (lambda _m: None)
    full = torch.ones(family.n_layers, family.n_heads, dtype=torch.bool)
    configs = ([("standard", 1.0)] if "standard" in modes else []) + \
        [(m, k) for k in keep_list for m in sparse_modes]
    rows = []
    bar = progress_bar(len(configs), "sparse", enabled=ev.progress, unit="setting", leave=False)
    for mode, keep in configs:
        stage(f"{mode} attention" + ("" if mode == "standard" else f", keep {keep:g}"))
        start = time.time()
        budget = budget_from_mode(mode, keep, importance if mode == "adaptive" else None,
                                  policy_opts)
        patch = SparseAttentionPatch(model, budget, **kw) if mode != "standard" else None
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
            "patch": {**kw, **policy_opts}, "family": family.name,
            "model": getattr(model, "name_or_path", None)}
    return SparseSweep(rows=rows, meta=meta)


# ------------------------------------------------------------------ budget policies compared
POLICIES = ("uniform", "adaptive", "sensitivity", "oracle")


def _sparse_loss(model: nn.Module, items: list[Any], policy: Any, objective: Any,
                 patch_kwargs: Mapping[str, Any], internal_batch_size: int) -> float:
    """Held-out loss with block-sparse attention under ``policy`` (None = dense)."""
    from headig.sparse import SparseAttentionPatch

    family = family_of(model)
    full = torch.ones(family.n_layers, family.n_heads, dtype=torch.bool)
    if policy is None:
        return float(loss_at_masks(model, items, full, objective=objective,
                                   internal_batch_size=internal_batch_size))
    with SparseAttentionPatch(model, policy, **patch_kwargs):
        return float(loss_at_masks(model, items, full, objective=objective,
                                   internal_batch_size=internal_batch_size))


def greedy_oracle(model: nn.Module, batch: Any, keep: float, *, units: int = 4,
                  max_moves: int = 24, objective: Any = None,
                  patch_kwargs: Mapping[str, Any] | None = None,
                  internal_batch_size: int = 256) -> tuple[Tensor, list[float]]:
    """Greedy search for per-head budget weights that minimise the loss on ``batch``.

    Every head starts with ``units`` weight units (= the uniform budget; weights map to
    block counts with the uniform total by :class:`headig.sparse.WeightBudget`). Each round
    measures the loss with one unit taken from each head and with one unit given to each
    head (2·n forwards over ``batch``), moves a unit from the head whose loss rises least to
    the head whose loss falls most, and keeps the move only if the loss really falls;
    otherwise the next best pairs are tried (at most 3). A ceiling for budget policies
    when ``batch`` is a subset of the data they are evaluated on, not a method.

    Returns:
        (weights float64 [L, H], the loss after each accepted move, starting from uniform).
    """
    from headig.sparse import WeightBudget

    family = family_of(model)
    kw = dict(patch_kwargs or {})
    items = eval_items(batch)
    obj = default_objective(objective)
    shape = (family.n_layers, family.n_heads)
    w = torch.full(shape, float(units), dtype=torch.float64)

    def loss_of(weights: Tensor) -> float:
        return _sparse_loss(model, items, WeightBudget(weights.clone(), keep=keep), obj, kw,
                            internal_batch_size)

    best = loss_of(w)
    history = [best]
    n = w.numel()
    for _ in range(int(max_moves)):
        flat = w.flatten()
        minus = torch.full((n,), float("inf"), dtype=torch.float64)
        plus = torch.full((n,), float("inf"), dtype=torch.float64)
        for i in range(n):
            if flat[i] >= 1:
                t = flat.clone()
                t[i] -= 1
                minus[i] = loss_of(t.view(shape))
            t = flat.clone()
            t[i] += 1
            plus[i] = loss_of(t.view(shape))
        pairs = sorted(((float(minus[a] + plus[b]), a, b) for a in range(n) for b in range(n)
                        if a != b and torch.isfinite(minus[a])), key=lambda x: x[0])
        moved = False
        for _, a, b in pairs[:3]:
            t = flat.clone()
            t[a] -= 1
            t[b] += 1
            trial = loss_of(t.view(shape))
            if trial < best - 1e-9:
                w, best, moved = t.view(shape), trial, True
                history.append(best)
                break
        if not moved:
            break
    return w, history


@dataclass
class PolicyComparison(Report):
    """Results of :func:`compare_budget_policies`: one row per (policy, keep, seed)."""

    rows: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)

    default_prefix = "policies"

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "summary": self.summary(), "meta": self.meta}

    def csv_rows(self) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "groups"} for r in self.rows]

    def summary(self) -> list[dict[str, Any]]:
        """Per (policy, keep): loss mean ± std over seeds, and the paired difference to
        uniform (same seed: same training scores' seed and held-out masks)."""
        from headig.validation.report import mean_std

        uni = {(r["keep"], r["seed"]): r["loss"] for r in self.rows if r["policy"] == "uniform"}
        out = []
        keys = sorted({(r["keep"], r["policy"]) for r in self.rows},
                      key=lambda x: (x[0], POLICIES.index(x[1]) if x[1] in POLICIES else -1))
        for keep, pol in keys:
            rs = [r for r in self.rows if r["policy"] == pol and r["keep"] == keep]
            m, s, _, _ = mean_std([r["loss"] for r in rs])
            d = [r["loss"] - uni[(keep, r["seed"])] for r in rs if (keep, r["seed"]) in uni]
            dm, ds = (mean_std(d)[:2] if d else (None, None))
            acc = [r["accuracy"] for r in rs if r.get("accuracy") is not None]
            am, asd = (mean_std(acc)[:2] if acc else (None, None))
            out.append({"policy": pol, "keep": keep, "seeds": len(rs), "loss_mean": m,
                        "loss_std": s, "delta_vs_uniform_mean": dm,
                        "delta_vs_uniform_std": ds, "accuracy_mean": am, "accuracy_std": asd})
        return out

    def to_markdown(self) -> str:
        lines = ["| policy | keep | held-out loss (mean ± std) | Δ vs uniform (paired) | "
                 "accuracy |", "|---|---:|---:|---:|---:|"]
        for r in self.summary():
            d = "–" if r["delta_vs_uniform_mean"] is None or r["policy"] == "uniform" else \
                f"{r['delta_vs_uniform_mean']:+.4f} ± {r['delta_vs_uniform_std']:.4f}"
            a = "–" if r["accuracy_mean"] is None else \
                f"{r['accuracy_mean']:.3f} ± {r['accuracy_std']:.3f}"
            lines.append(f"| {r['policy']} | {r['keep']:.2f} | {r['loss_mean']:.4f} ± "
                         f"{r['loss_std']:.4f} | {d} | {a} |")
        return "\n".join(lines) + "\n"


def compare_budget_policies(
    model: nn.Module, train: Any, held_out: Any, *,
    keeps: Sequence[float] = (0.1, 0.2, 0.3, 0.5),
    policies: Sequence[str] = POLICIES,
    seeds: Sequence[int] = (0, 1, 2),
    block_size: int = 16,
    importance_steps: int = 8,
    sensitivity_steps: int = 16,
    oracle_examples: int = 16,
    oracle_moves: int = 12,
    objective: Any = None,
    accuracy: AccuracySettings | bool = False,
    internal_batch_size: int = 256,
    patch_kwargs: Mapping[str, Any] | None = None,
    on_stage: Any = None,
) -> PolicyComparison:
    """Uniform vs importance-adaptive vs sensitivity-adaptive budgets (vs a greedy oracle).

    For each seed s: HeadIG importance (STP) and the sparsity sensitivity at every keep are
    computed on ``train`` with objective seed s; every policy is then evaluated on
    ``held_out`` with held-out masks of seed s (each policy sees the same masks: paired
    differences). All policies spend exactly the uniform total of key blocks. The oracle
    (greedy, :func:`greedy_oracle`) is searched once per keep on ``oracle_examples``
    held-out examples (masks of seed 0) and evaluated like the others: a ceiling, since it
    has seen part of the evaluation data.

    Args:
        block_size: tokens per block; ``patch_kwargs`` go to the patch (``min_seq_len``
            is 0 and ``kernel`` "gather" unless given).
        objective: the objective template (default :class:`MaskedDiffusionObjective`);
            its mask seed is replaced by each seed.
        accuracy: exact-match generation accuracy per (policy, keep, seed) (slow).
    """
    import dataclasses

    from headig.attribution.estimators import IntegratedGradients
    from headig.attribution.sensitivity import sparsity_sensitivity
    from headig.objective import MaskedDiffusionObjective
    from headig.paths import STP
    from headig.sparse import ImportanceBudget, SensitivityBudget, UniformBudget, WeightBudget

    bad = [p for p in policies if p not in POLICIES]
    if bad or not policies:
        raise ValueError(f"policies={list(policies)}; expected a subset of {list(POLICIES)}")
    acc_cfg = accuracy if isinstance(accuracy, AccuracySettings) else \
        AccuracySettings(enabled=bool(accuracy))
    stage = on_stage or (lambda _m: None)
    template = default_objective(objective)

    def seeded(seed: int) -> MaskedDiffusionObjective:
        return dataclasses.replace(template, seed=int(seed))

    train_items, held = eval_items(train), eval_items(held_out)
    kw = {"block_size": int(block_size), "min_seq_len": 0, "kernel": "gather",
          **dict(patch_kwargs or {})}
    keep_list = sorted({float(k) for k in keeps})
    oracle_w: dict[float, Tensor] = {}
    oracle_hist: dict[float, list[float]] = {}
    if "oracle" in policies:
        subset = spread(held, oracle_examples)
        for k in keep_list:
            stage(f"greedy oracle, keep {k:g}")
            oracle_w[k], oracle_hist[k] = greedy_oracle(
                model, subset, k, max_moves=oracle_moves, patch_kwargs=kw,
                objective=seeded(0),
                internal_batch_size=internal_batch_size)
    rows: list[dict[str, Any]] = []
    completeness: dict[str, dict[str, float]] = {}
    for s in seeds:
        obj = seeded(s)
        imp = None
        if "adaptive" in policies:
            stage(f"seed {s}: HeadIG importance on the training split")
            imp = IntegratedGradients(model, path=STP(), steps=importance_steps,
                                      objective=obj).attribute(train).to_importance()
        for k in keep_list:
            sens = None
            if "sensitivity" in policies:
                stage(f"seed {s}: sparsity sensitivity at keep {k:g} on the training split")
                att = sparsity_sensitivity(model, train, keep=k, steps=sensitivity_steps,
                                           objective=obj, block_size=kw["block_size"],
                                           kernel=kw["kernel"])
                completeness[f"seed{s}_keep{k:g}"] = {
                    "j_dense_minus_sparse": float((att.j_full - att.j_baseline).mean()),
                    "mean_abs_residual": float(att.residual.abs().mean())}
                sens = att.to_importance()
            built = {"uniform": UniformBudget(k),
                     "adaptive": ImportanceBudget(imp, k) if imp is not None else None,
                     "sensitivity": SensitivityBudget(sens, k) if sens is not None else None,
                     "oracle": WeightBudget(oracle_w[k], k) if k in oracle_w else None}
            for pol in policies:
                stage(f"seed {s}: {pol} at keep {k:g} on held-out data")
                loss = _sparse_loss(model, held, built[pol], obj, kw, internal_batch_size)
                acc = None
                if acc_cfg.enabled:
                    from headig.sparse import SparseAttentionPatch

                    with SparseAttentionPatch(model, built[pol], **kw):
                        acc = generation_accuracy(model, held, labels=acc_cfg.labels,
                                                  generate_kwargs=acc_cfg.generate_kwargs,
                                                  seed=int(s))["accuracy"]
                rows.append({"policy": pol, "keep": k, "seed": int(s), "loss": loss,
                             "accuracy": acc})
    dense = {int(s): _sparse_loss(model, held, None, seeded(s), kw, internal_batch_size)
             for s in seeds}
    meta = {"n_train": len(train_items), "n_held_out": len(held), "seeds": list(seeds),
            "patch": kw, "importance_steps": importance_steps,
            "sensitivity_steps": sensitivity_steps, "oracle_examples": oracle_examples,
            "objective": template.settings(), "sensitivity_completeness": completeness,
            "oracle_history": {str(k): v for k, v in oracle_hist.items()},
            "dense_loss": dense, "model": getattr(model, "name_or_path", None)}
    return PolicyComparison(rows=rows, meta=meta)
