"""headig: which attention heads of a diffusion language model matter, proven causally.

The public API in one place::

    import headig
    model, tok = headig.load_model("GSAI-ML/LLaDA-8B-Instruct", dtype="bfloat16", device="cuda")
    attr = headig.integrated_gradients(model, batch, path=headig.STP(samples=4))
    attr.save("scores/")                       # HeadImportance file, positive = helps
    with headig.HeadMask.from_scores(model, attr.scores, "most", k=8):
        ...                                     # the model without its 8 most helpful heads

Where things live (each subpackage's docstring says what it may import):

- :mod:`headig.models` – native LLaDA / Dream, the per-family table, named hook points;
- :mod:`headig.diffusion` – the masked-diffusion maths: logit alignment, masked CE,
  masking variants, samplers, likelihood;
- :mod:`headig.interventions` – one apply/remove lifecycle: :class:`HeadGate`,
  :class:`HeadMask`; :mod:`headig.sparse` – block-sparse attention and budget policies;
- :mod:`headig.attribution` – the objective, the batched engine, gate paths, quadrature
  rules, estimators and the resumable runner;
- :mod:`headig.importance` – score values and files; :mod:`headig.data` – examples;
- :mod:`headig.validation` – causal checks (pruning, sparse budgets, faithfulness);
- :mod:`headig.toy` – synthetic tasks, the tiny-model trainer, the embedded model;
- :mod:`headig.cli` – the ``headig`` command.
"""

from headig.attribution import (
    DP,
    STP,
    Attribution,
    Estimator,
    ExactShapley,
    GatePath,
    GradientAtOnes,
    IntegratedGradients,
    LeaveOneOut,
    MaskedDiffusionObjective,
    RunFolder,
    ShapleySampling,
    exact_shapley,
    get_estimator,
    gradient_at_ones,
    integrated_gradients,
    leave_one_out,
    register_estimator,
    register_rule,
    shapley_sampling,
)
from headig.importance import HeadImportance, as_importance, combine, compare
from headig.interventions import (
    HeadGate,
    HeadMask,
    Intervention,
    layer_range,
    normalize_layers,
    select_heads,
)
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
    "DP", "STP", "Attribution", "BudgetPolicy", "DenseBudget", "DiffusionLM", "Estimator",
    "ExactShapley", "Family", "SensitivityBudget", "SparsityGate", "WeightBudget",
    "compare_budget_policies", "sparsity_sensitivity", "GatePath", "GradientAtOnes", "HeadGate", "HeadImportance",
    "HeadMask", "ImportanceBudget", "IntegratedGradients", "Intervention", "LeaveOneOut",
    "MaskedDiffusionObjective", "RunFolder", "ShapleySampling", "SparseAttentionPatch",
    "UniformBudget", "__version__", "as_importance", "budget_policy", "coalition_table",
    "combine", "compare", "exact_shapley", "family_of", "generate",
    "get_estimator", "gradient_at_ones", "integrated_gradients", "layer_range",
    "leave_one_out", "load_model", "load_tokenizer", "loglikelihood", "normalize_layers",
    "prune_sweep", "register_estimator", "register_rule", "select_heads", "shapley_sampling",
    "sparse_sweep", "supported_model_types",
]

# Heavier or optional pieces load on first use: name -> module that defines it.
_LAZY = {
    "SparseAttentionPatch": "headig.sparse",
    "BudgetPolicy": "headig.sparse",
    "UniformBudget": "headig.sparse",
    "ImportanceBudget": "headig.sparse",
    "DenseBudget": "headig.sparse",
    "budget_policy": "headig.sparse",
    "generate": "headig.diffusion.generation",
    "loglikelihood": "headig.diffusion.likelihood",
    "SensitivityBudget": "headig.sparse",
    "WeightBudget": "headig.sparse",
    "SparsityGate": "headig.sparse",
    "sparsity_sensitivity": "headig.attribution.sensitivity",
    "compare_budget_policies": "headig.validation",
    "prune_sweep": "headig.validation",
    "sparse_sweep": "headig.validation",
    "coalition_table": "headig.validation",
}


def __getattr__(name: str):
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'headig' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module_name), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
