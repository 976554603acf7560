"""How faithful is each head-attribution estimator to the exact Shapley values?

On a model with at most 16 attributed heads, :func:`faithfulness` enumerates every head
subset once (:func:`headig.validation.coalitions.coalition_table`), which gives

* the exact Shapley values of J = −loss (the ground truth that HeadIG's STP approximates),
* the oracle pruning curves (best / worst k-subsets), against which any ranking's
  pruning fidelity is measured (see :mod:`headig.validation.coalitions`),

and then runs each estimator at several budgets on the *same* examples and masking
variants, so the only difference from the exact values is the estimator's own error.

Cost is counted, not assumed: a hook on the model counts the rows (gate point x masking
variant) of every forward, and of every forward that builds a graph for a backward.
``cost`` = (forward rows + 2 x backward rows) per example, a backward costing about two
forwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from headig.attribution import MaskedDiffusionObjective
from headig.runtime import progress_bar
from headig.validation.coalitions import CoalitionTable, coalition_table, ranking_fidelity
from headig.validation.loss import eval_items
from headig.validation.report import Report, fmt

__all__ = ["GRIDS", "EstimatorRun", "Faithfulness", "default_grid", "faithfulness",
           "ranking_fidelity"]


@dataclass(frozen=True)
class EstimatorRun:
    """One estimator configuration: ``ESTIMATORS[estimator](model, batch, **kwargs)``."""

    method: str
    estimator: str
    budget: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def run(self, model: nn.Module, batch: Any, **common: Any) -> Any:
        from headig.attribution import canonical_name, functions

        # the registry's canonical names are also the names of the thin functions
        estimate = getattr(functions, canonical_name(self.estimator))
        return estimate(model, batch, **dict(self.kwargs), **common)


def default_grid(name: str = "full") -> list[EstimatorRun]:
    """The estimator grid: ``full`` (docs table), ``quick`` (a few budgets), ``minimal``."""
    from headig.attribution import DP, STP

    if name not in GRIDS:
        raise ValueError(f"grid={name!r}; expected one of {list(GRIDS)}")
    sizes = {"full": dict(dp=(2, 4, 8, 16, 32), stp=(1, 2, 4, 8, 16, 32), anti=(2, 4, 8, 16),
                          narrow=(1, 2, 4, 8, 16), right=(4, 16), perms=(1, 2, 4, 8, 16, 32)),
             "quick": dict(dp=(8,), stp=(1, 4, 16), anti=(4,), narrow=(2, 8), right=(),
                           perms=(2, 8)),
             "minimal": dict(dp=(8,), stp=(4,), anti=(), narrow=(2,), right=(), perms=(4,))}[name]
    grid: list[EstimatorRun] = []
    grid += [EstimatorRun("IG, diagonal path (DP)", "ig", f"steps={s}",
                          {"path": DP(), "steps": s}) for s in sizes["dp"]]
    grid += [EstimatorRun("HeadIG STP (original ramp, trapezoid)", "ig", f"samples={p}, steps=8",
                          {"path": STP(samples=p), "steps": 8}) for p in sizes["stp"]]
    grid += [EstimatorRun("HeadIG STP (original ramp, right rule = research code)", "ig",
                          f"samples={p}, steps=8",
                          {"path": STP(samples=p), "steps": 8, "rule": "right"})
             for p in sizes["right"]]
    grid += [EstimatorRun("HeadIG STP (original ramp, antithetic)", "ig", f"samples={p}, steps=8",
                          {"path": STP(samples=p, sampling="antithetic"), "steps": 8})
             for p in sizes["anti"]]
    grid += [EstimatorRun("HeadIG STP (narrow ramp 0.1, 4 Gauss nodes per ramp)", "ig",
                          f"samples={p}, steps=4",
                          {"path": STP(samples=p, ramp="narrow", width=0.1),
                           "rule": "ramp_gauss", "steps": 4}) for p in sizes["narrow"]]
    grid += [EstimatorRun("Shapley sampling (antithetic permutations)", "shapley_sampling",
                          f"permutations={p}", {"permutations": p}) for p in sizes["perms"]]
    grid.append(EstimatorRun("leave-one-out", "leave_one_out", "-", {}))
    grid.append(EstimatorRun("gradient at ones", "gradient_at_ones", "-", {}))
    return grid


GRIDS = ("full", "quick", "minimal")


class _RowCounter:
    """Counts forward rows (and rows of graph-building forwards) of a model."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.forward_rows = 0
        self.backward_rows = 0
        self._handle = None

    def _hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = args[0] if args else kwargs.get("input_ids")
        rows = int(ids.shape[0]) if ids is not None and ids.dim() == 2 else 1
        self.forward_rows += rows
        if torch.is_grad_enabled():
            self.backward_rows += rows

    def __enter__(self) -> _RowCounter:
        self._handle = self.model.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()


@dataclass
class Faithfulness(Report):
    """Result of :func:`faithfulness`: one row per (method, budget), averaged over seeds."""

    rows: list[dict[str, Any]]
    runs: list[dict[str, Any]]
    exact: Any  # HeadImportance of the exact Shapley values
    table: CoalitionTable
    meta: dict[str, Any] = field(default_factory=dict)

    default_prefix = "faithfulness"

    def csv_rows(self) -> list[dict[str, Any]]:
        return self.rows

    def to_markdown(self) -> str:
        n_seeds = self.meta.get("n_seeds", 1)
        pm = " (mean ± std over seeds)" if n_seeds > 1 else ""
        lines = [f"| method | budget | cost / example | Spearman{pm} | Pearson | "
                 f"top-{self.meta['topk']} overlap | fidelity most | fidelity least | "
                 "rel. residual | seconds |",
                 "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in self.rows:
            sp = f"{r['spearman']:.3f}" + (f" ± {r['spearman_std']:.3f}" if n_seeds > 1 else "")
            lines.append(f"| {r['method']} | {r['budget']} | {r['cost']:.0f} | {sp} | "
                         f"{r['pearson']:.3f} | {r['topk_overlap']:.2f} | "
                         f"{fmt(r['fidelity_most'], 3)} | {fmt(r['fidelity_least'], 3)} | "
                         f"{fmt(r['relative_residual'], 3)} | {r['seconds']:.1f} |")
        ex = self.meta["exact_fidelity"]
        lines.append(f"| exact Shapley (enumeration) | {1 << self.table.n} subsets | "
                     f"{self.meta['exact_cost']:.0f} | 1 | 1 | 1.00 | {fmt(ex['most'], 3)} | "
                     f"{fmt(ex['least'], 3)} | 0 | {self.meta['exact_seconds']:.1f} |")
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "runs": self.runs, "meta": self.meta,
                "exact_shapley": self.exact.scores.tolist(), "layers": list(self.table.layers)}

    def extra_files(self, folder: Path, prefix: str) -> dict[str, Path]:
        """The exact Shapley values as an importance file (``exact_shapley.safetensors``)."""
        return {"exact": self.exact.save(folder / "exact_shapley.safetensors")}

    def plot(self, path: Path) -> Path:
        from headig.validation.plots import plot_faithfulness

        return plot_faithfulness(self, path)


def faithfulness(model: nn.Module, batch: Any, *, layers: Sequence[int] | None = None,
                 grid: str | Sequence[EstimatorRun] = "quick", seeds: Sequence[int] = (0,),
                 objective: MaskedDiffusionObjective | None = None, by: str = "signed",
                 topk: int | None = None, table: CoalitionTable | None = None,
                 internal_batch_size: int = 256, progress: bool = False,
                 on_stage: Callable[[str], None] | None = None) -> Faithfulness:
    """Compare estimators with exact Shapley values and the pruning oracle on ``batch``.

    Args:
        layers: attributed layers; their heads (≤ 16) are enumerated.
        grid: ``"full"``, ``"quick"``, ``"minimal"`` or a list of :class:`EstimatorRun`.
        seeds: estimator seeds (path thresholds, permutations); the masking variants stay
            those of ``objective`` so every estimator sees the exact values' data.
        objective: the attribution objective (default: ``MaskedDiffusionObjective()``).
        by: how rankings are read for the fidelity (signed score or |score|).
        topk: k of the top-k overlap (default a quarter of the heads).
        table: a precomputed :func:`~headig.validation.coalitions.coalition_table` of this data.
    """
    from headig.importance import compare

    runs_spec = default_grid(grid) if isinstance(grid, str) else list(grid)
    if not runs_spec:
        raise ValueError("the estimator grid is empty")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds is empty; pass at least one seed")
    obj = objective if objective is not None else MaskedDiffusionObjective()
    items = eval_items(batch)
    rows_batch = [{"input_ids": it.input_ids, "completion_mask": it.completion, "id": it.id}
                  for it in items]
    stage = on_stage or (lambda _m: None)
    if table is None:
        stage(f"exact Shapley: enumerating head subsets on {len(items)} examples")
        table = coalition_table(model, items, layers=layers, objective=obj, progress=progress)
    lyr = list(table.layers)
    n_var = sum(int(obj.variants(it).weights.numel()) for it in items)
    exact = table.to_importance()
    k_top = topk or max(1, table.n // 4)
    exact_fid = ranking_fidelity(table, exact.scores, by=by)
    common = {"objective": obj, "layers": lyr, "internal_batch_size": internal_batch_size,
              "return_per_example": True}
    raw: list[dict[str, Any]] = []
    bar = progress_bar(len(runs_spec) * len(seeds), "estimators", enabled=progress, unit="run",
                       leave=False)
    stage(f"running {len(runs_spec)} estimator settings x {len(seeds)} seed(s)")
    for spec in runs_spec:
        for seed in seeds:
            start = time.time()
            with _RowCounter(model) as counter:
                att = spec.run(model, rows_batch, seed=seed, **common)
            seconds = time.time() - start
            imp = att.to_importance()
            c = compare(imp, exact, k=k_top, by=by)
            fid = ranking_fidelity(table, imp.scores, by=by)
            delta = (att.j_full - att.j_baseline).abs().mean().clamp_min(1e-12)
            raw.append({
                "method": spec.method, "budget": spec.budget, "estimator": spec.estimator,
                "seed": seed, "spearman": c["spearman"], "pearson": c["pearson"],
                "kendall": c["kendall"], "topk_overlap": c["topk_overlap"],
                "fidelity_most": fid["most"], "fidelity_least": fid["least"],
                "fidelity": fid["mean"],
                "relative_residual": float(att.residual.abs().mean() / delta),
                "forward_rows": counter.forward_rows, "backward_rows": counter.backward_rows,
                "cost": (counter.forward_rows + 2 * counter.backward_rows) / len(items),
                "points": counter.forward_rows / n_var, "seconds": seconds,
                "scores": imp.scores[lyr].flatten().tolist(),
            })
            bar.update(1)
    bar.close()
    rows = _aggregate(raw)
    exact_rows = n_var * (1 << table.n)
    meta = {"n_examples": len(items), "n_variants": n_var, "layers": lyr, "n_heads": table.n,
            "seeds": seeds, "n_seeds": len(seeds), "by": by, "topk": k_top,
            "objective": obj.settings(), "exact_fidelity": exact_fid,
            "exact_cost": exact_rows / len(items), "exact_seconds": table.meta.get("seconds", 0.0),
            "exact_method": table.meta.get("method")}
    return Faithfulness(rows=rows, runs=raw, exact=exact, table=table, meta=meta)


def _aggregate(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = ("spearman", "pearson", "kendall", "topk_overlap", "fidelity_most", "fidelity_least",
            "fidelity", "relative_residual", "cost", "points", "seconds")
    rows = []
    order = list(dict.fromkeys((r["method"], r["budget"]) for r in raw))
    for method, budget in order:
        group = [r for r in raw if r["method"] == method and r["budget"] == budget]
        row: dict[str, Any] = {"method": method, "budget": budget,
                               "estimator": group[0]["estimator"], "n_seeds": len(group)}
        for k in keys:
            vals = [r[k] for r in group if r[k] is not None]
            if not vals:
                row[k] = None
                continue
            t = torch.tensor(vals, dtype=torch.float64)
            row[k] = float(t.mean())
            if k in ("spearman", "fidelity"):
                row[f"{k}_std"] = float(t.std(unbiased=True)) if len(vals) > 1 else 0.0
        rows.append(row)
    return rows
