"""Native LLaDA and Dream implementations and the per-family table."""

from headig.models import dream, llada  # noqa: F401  (registers the families)
from headig.models.family import (
    ArchConfig,
    Family,
    FamilySpec,
    family_of,
    register_family,
    resolve_dtype,
    supported_model_types,
)
from headig.models.loading import load_model, load_native_model, load_tokenizer
from headig.models.modeling import AttentionFn, DiffusionLM, DiffusionLMOutput, sdpa_attention

__all__ = [
    "ArchConfig", "AttentionFn", "DiffusionLM", "DiffusionLMOutput", "Family", "FamilySpec",
    "family_of", "load_model", "load_native_model", "load_tokenizer", "register_family",
    "resolve_dtype", "sdpa_attention", "supported_model_types",
]
