"""Deprecated location; moved to headig.attribution (objective and engine). Kept for one release."""

from headig.attribution.engine import PointRequest, evaluate_points, objective_values, row_losses
from headig.attribution.objective import (
    DEFAULT_MASK_PROBS,
    LOSS_NORMALIZE,
    Item,
    MaskedDiffusionObjective,
    Variants,
    as_items,
    seed_from,
)

__all__ = ["DEFAULT_MASK_PROBS", "LOSS_NORMALIZE", "Item", "MaskedDiffusionObjective",
           "PointRequest", "Variants", "as_items", "evaluate_points", "objective_values",
           "row_losses", "seed_from"]
