"""headig: which attention heads of a diffusion language model matter, proven causally.

The public API in one place::

    import headig
    model, tok = headig.load_model("GSAI-ML/LLaDA-8B-Instruct", dtype="bfloat16", device="cuda")
    attr = headig.integrated_gradients(model, batch, path=headig.STP(samples=4))
    attr.save("scores/")                       # HeadImportance file, positive = helps
    with headig.HeadMask.from_scores(model, attr.scores, "most", k=8):
        ...                                     # the model without its 8 most helpful heads
"""

from headig.estimators import (
    Attribution,
    exact_shapley,
    gradient_at_ones,
    integrated_gradients,
    leave_one_out,
    shapley_sampling,
)
from headig.gating import HeadGate, HeadMask, layer_range, select_heads
from headig.importance import HeadImportance, combine, compare
from headig.models import (
    DiffusionLM,
    Family,
    family_of,
    load_model,
    load_tokenizer,
    supported_model_types,
)
from headig.objective import MaskedDiffusionObjective
from headig.paths import DP, STP

__version__ = "0.1.0"

__all__ = [
    "DP", "STP", "Attribution", "DiffusionLM", "Family", "HeadGate", "HeadImportance",
    "HeadMask", "MaskedDiffusionObjective", "__version__", "combine", "compare",
    "exact_shapley", "family_of", "gradient_at_ones", "integrated_gradients", "layer_range",
    "leave_one_out", "load_model", "load_tokenizer", "select_heads", "shapley_sampling",
    "supported_model_types",
]


def __getattr__(name: str):
    # Heavier or optional pieces load on first use.
    if name == "SparseAttentionPatch":
        from headig.sparse import SparseAttentionPatch
        return SparseAttentionPatch
    if name in ("generate", "loglikelihood"):
        import importlib
        module = importlib.import_module(
            "headig.generation" if name == "generate" else "headig.likelihood")
        return getattr(module, name)
    raise AttributeError(f"module 'headig' has no attribute {name!r}")
