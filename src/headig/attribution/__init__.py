"""Head attribution: which attention heads a masked-diffusion LM's objective relies on.

What lives here:

* :mod:`.objective` – J(α) = −(masked-reconstruction loss): :class:`MaskedDiffusionObjective`,
  the example rows :class:`Item` and :func:`as_items` (the one place batches are checked);
* :mod:`.engine` – :func:`evaluate_points`, the batched per-row-gate forward/backward that
  every estimator drives (:class:`PointRequest`, :func:`row_losses`);
* :mod:`.paths` – gate paths :class:`GatePath`, :class:`DP`, :class:`STP`;
* :mod:`.rules` – the quadrature-rule registry (:func:`register_rule`);
* :mod:`.estimators` – the :class:`Estimator` base (one ``attribute()`` signature) and one
  class per estimator; :mod:`.registry` – canonical names and aliases;
* :mod:`.runner` – the resumable, sharded runner and the :class:`RunFolder` state machine;
* :mod:`.functions` – one-call forms (:func:`integrated_gradients` ...).

Dependencies: this package may import ``headig.models``, ``headig.diffusion``,
``headig.gating`` / ``headig.interventions`` and ``headig.importance``; it never imports
validation, the CLI or other front ends (they import it).
"""

from headig.attribution.engine import PointRequest, evaluate_points, objective_values, row_losses
from headig.attribution.estimators import (
    Estimator,
    ExactShapley,
    GradientAtOnes,
    IntegratedGradients,
    LeaveOneOut,
    ShapleySampling,
)
from headig.attribution.functions import (
    exact_shapley,
    gradient_at_ones,
    integrated_gradients,
    leave_one_out,
    shapley_sampling,
)
from headig.attribution.objective import (
    DEFAULT_MASK_PROBS,
    Item,
    MaskedDiffusionObjective,
    as_items,
    seed_from,
)
from headig.attribution.paths import DP, STP, GatePath
from headig.attribution.registry import (
    ALIASES,
    ESTIMATORS,
    canonical_name,
    estimator_names,
    get_estimator,
    register_estimator,
)
from headig.attribution.results import POSTPROCESS, Attribution
from headig.attribution.rules import PathPoints, QuadratureRule, get_rule, register_rule, rule_names
from headig.attribution.runner import RunFolder, run_attribution

__all__ = [
    "ALIASES", "DEFAULT_MASK_PROBS", "DP", "ESTIMATORS", "POSTPROCESS", "STP", "Attribution",
    "Estimator", "ExactShapley", "GatePath", "GradientAtOnes", "IntegratedGradients", "Item",
    "LeaveOneOut", "MaskedDiffusionObjective", "PathPoints", "PointRequest", "QuadratureRule",
    "RunFolder", "ShapleySampling", "as_items", "canonical_name", "estimator_names",
    "evaluate_points", "exact_shapley", "get_estimator", "get_rule", "gradient_at_ones",
    "integrated_gradients", "leave_one_out", "objective_values", "register_estimator",
    "register_rule", "row_losses", "rule_names", "run_attribution", "seed_from",
    "shapley_sampling",
]
