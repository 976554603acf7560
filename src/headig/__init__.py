"""headig: which attention heads of a diffusion language model matter, proven causally."""

from headig.gating import HeadGate, HeadMask, layer_range, select_heads
from headig.models import (
    DiffusionLM,
    Family,
    family_of,
    load_model,
    load_tokenizer,
    supported_model_types,
)

__version__ = "0.1.0"

__all__ = [
    "DiffusionLM", "HeadGate", "HeadMask", "layer_range", "select_heads", "Family", "__version__", "family_of", "load_model", "load_tokenizer",
    "supported_model_types",
]
