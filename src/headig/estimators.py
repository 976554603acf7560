"""Deprecated location; moved to headig.attribution. Kept for one release.

``ESTIMATORS`` here is the old name -> function table (with the ``"ig"`` alias); the
registry of estimator classes is :data:`headig.attribution.ESTIMATORS`.
"""

from collections.abc import Callable

from headig.attribution import registry as _registry
from headig.attribution.engine import evaluate_points
from headig.attribution.functions import (
    exact_shapley,
    gradient_at_ones,
    integrated_gradients,
    leave_one_out,
    shapley_sampling,
)
from headig.attribution.paths import DP, STP
from headig.attribution.results import POSTPROCESS, Attribution

_FUNCTIONS: dict[str, Callable[..., Attribution]] = {
    "integrated_gradients": integrated_gradients,
    "shapley_sampling": shapley_sampling,
    "exact_shapley": exact_shapley,
    "leave_one_out": leave_one_out,
    "gradient_at_ones": gradient_at_ones,
}
ESTIMATORS: dict[str, Callable[..., Attribution]] = {
    **{alias: _FUNCTIONS[name] for alias, name in _registry.ALIASES.items()}, **_FUNCTIONS}

__all__ = ["DP", "ESTIMATORS", "POSTPROCESS", "STP", "Attribution", "evaluate_points",
           "exact_shapley", "gradient_at_ones", "integrated_gradients", "leave_one_out",
           "shapley_sampling"]
