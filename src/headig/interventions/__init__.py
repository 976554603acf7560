"""Interventions: changes to a model's forward pass with one apply/remove lifecycle.

What lives here: :class:`Intervention` (the shared lifecycle: ``apply`` / ``remove`` /
``with``, idempotent, partial installs undone on error), the head interventions
:class:`HeadGate` (per-head gates, the basis of attribution) and :class:`HeadMask` (head
ablation), :func:`select_heads`, and the one layer specification (:func:`normalize_layers`,
:func:`layer_range`). Block-sparse attention (:mod:`headig.sparse`) builds on the same
base class.

Imports: torch and :mod:`headig.models` only, so that every other headig module (objective,
estimators, validation, sparse attention) can import from here without cycles.
"""

from headig.interventions.base import Intervention
from headig.interventions.heads import HeadGate, HeadMask, select_heads
from headig.interventions.layers import LayerSpec, layer_range, normalize_layers

__all__ = ["HeadGate", "HeadMask", "Intervention", "LayerSpec", "layer_range",
           "normalize_layers", "select_heads"]
