"""Deprecated location; moved to headig.interventions. Kept for one release."""

from headig.interventions.heads import HeadGate, HeadMask, Which, select_heads
from headig.interventions.layers import layer_range, normalize_layers

__all__ = ["HeadGate", "HeadMask", "Which", "layer_range", "normalize_layers", "select_heads"]
