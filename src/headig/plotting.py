"""Layer x head heatmaps of head importance (matplotlib, imported only when used).

Uses matplotlib's object API with the Agg canvas, so it never touches the global pyplot
backend and works on headless machines::

    from headig.plotting import save_heatmap
    save_heatmap(HeadImportance.load("out/"), "heatmap.png")

Signed scores use a diverging colormap centred at 0 (blue = the head helps, red = it
hurts); ``by="abs"`` shows |score| on a sequential colormap. Layers that were not
attributed are drawn grey.
"""

from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path
from typing import Any

import numpy as np


def _require_matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("plotting needs matplotlib: pip install 'headig[plot]'") from err
    return matplotlib


def _as_importance(importance: Any) -> Any:
    from headig.importance import HeadImportance

    if isinstance(importance, HeadImportance):
        return importance
    return HeadImportance(scores=importance)


def default_title(importance: Any) -> str:
    """A short title from the file's metadata: model, estimator, path, examples."""
    m = importance.meta
    model = m.get("model")
    name = Path(str(model)).name if model else "head importance"
    parts = [p for p in (m.get("estimator"), m.get("path")) if p]
    if m.get("path") == "STP" and m.get("samples"):
        parts[-1] += f" x{m['samples']}"
    if m.get("steps"):
        parts.append(f"{m['steps']} steps")
    n = importance.n_examples if importance.n_examples is not None else m.get("n_examples")
    if n:
        parts.append(f"{n} examples")
    return name + (f" — {', '.join(map(str, parts))}" if parts else "")


def _ticks(n: int) -> list[int]:
    if n <= 40:
        return list(range(n))
    step = math.ceil(n / 20)
    return list(range(0, n, step))


def figure_size(n_layers: int, n_heads: int) -> tuple[float, float]:
    """Inches: about 0.3 in per cell (0.22 for big grids), never smaller than 5 x 3.2."""
    cell = 0.3 if max(n_layers, n_heads) <= 24 else 0.22
    return max(5.0, 2.6 + n_heads * cell), max(3.2, 1.4 + n_layers * cell)


def heatmap(importance: Any, *, by: str = "signed", title: str | None = None, ax: Any = None,
            annotate: bool | None = None, mark_top: int = 0, cmap: str | None = None) -> Any:
    """Draw a layer x head heatmap and return the matplotlib Figure.

    Args:
        importance: a :class:`~headig.importance.HeadImportance` or a [L, H] score array.
        by: ``signed`` (diverging, centred at 0) or ``abs`` (|score|, sequential).
        title: figure title (default: from the metadata).
        ax: draw into this Axes instead of a new Figure.
        annotate: write each value in its cell (default: when there are at most 100 cells).
        mark_top: outline the k most important heads (ranked as ``top_k(k, by=by)``).
        cmap: override the colormap (default ``RdBu`` for signed, ``viridis`` for abs).
    """
    if by not in ("signed", "abs"):
        raise ValueError(f"by={by!r}; expected 'signed' or 'abs'")
    _require_matplotlib()
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    imp = _as_importance(importance)
    n_layers, n_heads = imp.n_layers, imp.n_heads
    scores = imp.scores.detach().double().cpu().numpy()
    values = np.abs(scores) if by == "abs" else scores
    attributed = imp.layer_mask.numpy()
    data = np.ma.masked_array(values, mask=np.repeat(~attributed[:, None], n_heads, axis=1))

    if ax is None:
        fig = Figure(figsize=figure_size(n_layers, n_heads), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    shown = values[attributed]
    peak = float(np.abs(shown).max()) if shown.size else 0.0
    peak = peak if peak > 0 else 1.0
    if by == "signed":
        colormap = colormaps[cmap or "RdBu"]
        vmin, vmax, label = -peak, peak, "score (positive = helps)"
    else:
        colormap = colormaps[cmap or "viridis"]
        vmin, vmax, label = 0.0, peak, "|score| (importance magnitude)"
    colormap = colormap.with_extremes(bad="#d0d0d0")
    im = ax.imshow(data, cmap=colormap, vmin=vmin, vmax=vmax, aspect="equal",
                   interpolation="nearest", origin="upper")
    # A colorbar exactly as tall as the (aspect-equal) image, for 2 x 4 and 32 x 32 alike.
    cax = ax.inset_axes([1.03, 0.0, 0.045 if n_heads <= 8 else 0.03, 1.0])
    bar = fig.colorbar(im, cax=cax)
    bar.set_label(label)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(_ticks(n_heads))
    ax.set_yticks(_ticks(n_layers))
    small = max(n_layers, n_heads) > 24
    ax.tick_params(labelsize=7 if small else 9)
    text = default_title(imp) if title is None else title
    width_in = fig.get_size_inches()[0]
    chars = max(30, int(width_in * 9))
    if len(text) > chars:
        text = "\n".join(textwrap.fill(line, chars) for line in text.split(" — "))
    ax.set_title(text, fontsize=10 if small else 11)

    if annotate is None:
        annotate = int(attributed.sum()) * n_heads <= 100
    if annotate:
        for layer in np.flatnonzero(attributed):
            for head in range(n_heads):
                v = values[layer, head]
                rgba = colormap((v - vmin) / (vmax - vmin))
                light = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2] > 0.55
                ax.text(head, layer, f"{v:+.2g}" if by == "signed" else f"{v:.2g}",
                        ha="center", va="center", fontsize=8,
                        color="black" if light else "white")
    if mark_top:
        for layer, head, _ in imp.top_k(min(int(mark_top), len(imp.entries())), by=by):
            ax.add_patch(Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False,
                                   edgecolor="black", linewidth=1.6))
    return fig


def save_heatmap(importance: Any, out: str | os.PathLike, *, dpi: int = 150,
                 **kwargs: Any) -> Path:
    """:func:`heatmap` written to ``out`` (format from the suffix: .png, .pdf, .svg)."""
    target = Path(out).expanduser()
    if target.suffix.lower() not in (".png", ".pdf", ".svg", ".jpg", ".jpeg"):
        raise ValueError(f"--out {target}: expected a .png, .pdf, .svg or .jpg file name")
    if target.parent and not target.parent.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
    fig = heatmap(importance, **kwargs)
    fig.savefig(target, dpi=dpi)
    return target


__all__ = ["default_title", "figure_size", "heatmap", "save_heatmap"]
