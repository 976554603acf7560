"""Deprecated location; moved to headig.validation.faithfulness. Kept for one release."""

from headig.validation.coalitions import ranking_fidelity
from headig.validation.faithfulness import (
    GRIDS,
    EstimatorRun,
    Faithfulness,
    default_grid,
    faithfulness,
)

__all__ = ["GRIDS", "EstimatorRun", "Faithfulness", "default_grid", "faithfulness",
           "ranking_fidelity"]
