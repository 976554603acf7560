"""Deprecated location; moved to headig.validation.plots. Kept for one release."""

from headig.validation.plots import (
    COLORS,
    plot_faithfulness,
    plot_prune,
    plot_sparse,
    pyplot,
    save_figure,
)

_plt = pyplot
_save = save_figure

__all__ = ["COLORS", "plot_faithfulness", "plot_prune", "plot_sparse", "pyplot", "save_figure"]
