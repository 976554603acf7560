"""Plots of the causal validations: pruning curves, oracle bands, sparse budgets, faithfulness.

matplotlib is imported lazily with the non-interactive Agg backend (install the
``plot`` extra: ``pip install 'headig[plot]'``). Every function writes one PNG and returns
its path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["COLORS", "plot_faithfulness", "plot_prune", "plot_sparse", "pyplot", "save_figure"]

COLORS = {"most": "#c0392b", "least": "#27ae60", "random": "#7f8c8d", "oracle": "#2c3e50",
          "standard": "#2c3e50", "uniform": "#e67e22", "adaptive": "#2980b9"}


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (a clear error when matplotlib is missing)."""
    try:
        import matplotlib
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib: pip install 'headig[plot]'") from err
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, out: str | os.PathLike, dpi: int = 130) -> Path:
    """Write ``fig`` to ``out`` (folders created), close it, return the path."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _arm_series(table: list[dict[str, Any]], arm: str, key: str) -> tuple[list, list, list]:
    rows = [r for r in table if r["arm"] == arm and r.get(key) is not None]
    rows.sort(key=lambda r: r["k"])
    std_key = f"{key}_std"
    return ([r["k"] for r in rows], [r[key] for r in rows],
            [r.get(std_key) or 0.0 for r in rows])


def plot_prune(sweep: Any, out: str | os.PathLike, *, title: str | None = None) -> Path:
    """Loss (and accuracy, and the oracle band when present) against the number of pruned heads."""
    plt = pyplot()
    table = sweep.table()
    has_acc = sweep.intact.get("accuracy") is not None
    panels = ["loss"] + (["accuracy"] if has_acc else []) + (["oracle"] if sweep.oracle else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False,
                             layout="constrained")
    labels = {"most": "prune most important", "least": "prune least important",
              "random": "prune random (mean ± std)"}
    for ax, panel in zip(axes[0], panels):
        if panel in ("loss", "accuracy"):
            intact = sweep.intact[panel]
            for arm in ("most", "random", "least"):
                ks, ys, sd = _arm_series(table, arm, panel)
                if not ks:
                    continue
                ks, ys = [0] + ks, [intact] + ys
                sd = [0.0] + sd
                ax.plot(ks, ys, marker="o", ms=4, color=COLORS[arm], label=labels[arm])
                if arm == "random":
                    ax.fill_between(ks, [y - s for y, s in zip(ys, sd)],
                                    [y + s for y, s in zip(ys, sd)], color=COLORS[arm],
                                    alpha=0.2, lw=0)
            ax.axhline(intact, color="black", lw=0.8, ls=":", label="no pruning")
            ax.set_ylabel("held-out masked-diffusion loss" if panel == "loss"
                          else "exact-match accuracy (generation)")
            if panel == "accuracy":
                ax.set_ylim(-0.02, 1.02)
        else:
            o = sweep.oracle
            base = sweep.meta.get("oracle_intact_loss")
            start = [0] if base is not None else []
            pre = [base] if base is not None else []
            ks = start + [r["k"] for r in o]
            best = pre + [r["best_loss"] for r in o]
            worst = pre + [r["worst_loss"] for r in o]
            ax.fill_between(ks, best, worst, color=COLORS["oracle"], alpha=0.12, lw=0,
                            label="all k-subsets (best … worst)")
            ax.plot(ks, worst, color=COLORS["oracle"], ls="--", lw=1,
                    label="oracle worst / best")
            ax.plot(ks, best, color=COLORS["oracle"], ls="--", lw=1)
            ax.plot(ks, pre + [r["random_mean_loss"] for r in o], color=COLORS["random"],
                    marker="o", ms=3, label="random (exact mean)")
            for arm in ("most", "least"):
                pts = [(r["k"], r[f"{arm}_loss"]) for r in o if r.get(f"{arm}_loss") is not None]
                if pts:
                    pts = ([(0, base)] if base is not None else []) + pts
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=4,
                            color=COLORS[arm], label=f"prune {arm}")
            fid = sweep.fidelity or {}
            parts = [f"{a} {v:.2f}" for a, v in fid.items() if v is not None]
            ax.set_title(f"oracle, {sweep.meta.get('oracle_examples')} examples"
                         + (f"\nfidelity: {', '.join(parts)}" if parts else ""), fontsize=9)
            ax.set_ylabel("loss")
        ax.set_xlabel(f"heads pruned (of {sweep.n_heads})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left" if panel != "accuracy" else "upper right")
    fig.suptitle(title or "Pruning heads by importance", fontsize=11)
    return save_figure(fig, out)


def plot_sparse(sweep: Any, out: str | os.PathLike, *, title: str | None = None) -> Path:
    """Loss and accuracy against the kept fraction of attention, per sparse mode."""
    plt = pyplot()
    rows = sweep.rows
    has_acc = any(r.get("accuracy") is not None for r in rows)
    panels = ["loss"] + (["accuracy"] if has_acc else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False,
                             layout="constrained")
    for ax, key in zip(axes[0], panels):
        dense = next((r for r in rows if r["mode"] == "standard"), None)
        if dense is not None and dense.get(key) is not None:
            ax.axhline(dense[key], color=COLORS["standard"], ls=":", lw=1, label="dense (standard)")
        for mode in ("uniform", "adaptive"):
            pts = sorted((r["keep"], r[key]) for r in rows
                         if r["mode"] == mode and r.get(key) is not None)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=4,
                        color=COLORS[mode], label=f"{mode} sparse")
        ax.set_xlabel("fraction of key blocks kept")
        ax.set_ylabel("held-out masked-diffusion loss" if key == "loss"
                      else "exact-match accuracy (generation)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title or "Sparse attention: uniform vs importance-adaptive budgets",
                 fontsize=11)
    return save_figure(fig, out)


def plot_faithfulness(result: Any, out: str | os.PathLike, *, title: str | None = None) -> Path:
    """Spearman vs exact Shapley and pruning fidelity against cost, per estimator.

    ``result`` needs ``rows`` (dicts with method, cost, spearman, fidelity) and ``meta``
    (exact_cost, exact_fidelity), as :class:`headig.validation.faithfulness.Faithfulness` has.
    """
    plt = pyplot()
    rows = result.rows
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), layout="constrained")
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cmap = plt.get_cmap("tab10")
    handles = []
    for i, m in enumerate(methods):
        pts = sorted((r["cost"], r["spearman"], r["fidelity"]) for r in rows if r["method"] == m)
        style = dict(marker="o", ms=4, color=cmap(i % 10), label=m)
        (h,) = axes[0].plot([p[0] for p in pts], [p[1] for p in pts], **style)
        axes[1].plot([p[0] for p in pts], [p[2] for p in pts], **style)
        handles.append(h)
    exact_cost = result.meta.get("exact_cost")
    labels = ("Spearman vs exact Shapley", "pruning fidelity vs oracle (mean of most, least)")
    for ax, label in zip(axes, labels):
        ax.set_xscale("log")
        ax.set_xlabel("cost per example (forward-equivalent rows: fwd + 2 x bwd)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
        if exact_cost:
            ax.axvline(exact_cost, color="black", ls=":", lw=0.8)
            ax.annotate("exact\nenumeration", (exact_cost, 0.02),
                        xycoords=("data", "axes fraction"), ha="right", va="bottom", fontsize=7)
    exact_fid = (result.meta.get("exact_fidelity") or {}).get("mean")
    if exact_fid is not None:
        (h,) = axes[1].plot([], [], color="black", lw=0.8, ls="--",
                            label="ranking by exact Shapley")
        axes[1].axhline(exact_fid, color="black", lw=0.8, ls="--")
        handles.append(h)
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(title or "Estimator faithfulness against exact Shapley values", fontsize=11)
    return save_figure(fig, out)
