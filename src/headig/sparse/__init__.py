"""Block-sparse attention with per-head key-block budgets chosen by a policy.

:class:`SparseAttentionPatch` plugs block-sparse attention into a native headig model (an
:class:`~headig.interventions.Intervention`); a budget policy (:class:`UniformBudget`,
:class:`ImportanceBudget`, :class:`DenseBudget`, or any class registered with
:func:`register_budget`) says how many key blocks each head keeps, with exact integer
totals (:func:`head_budgets`). See docs/sparse-attention.md for the schedule, the budget
map, the kernels and measured speed.
"""

from headig.sparse.budgets import (
    BudgetPolicy,
    DenseBudget,
    ImportanceBudget,
    SensitivityBudget,
    UniformBudget,
    WeightBudget,
    allocate,
    budget_names,
    budget_policy,
    head_budgets,
    importance_weights,
    register_budget,
    sensitivity_weights,
    uniform_count,
    weighted_counts,
)
from headig.sparse.kernels import KERNELS, dense_mask_sparse, flex_sparse, gather_sparse
from headig.sparse.patch import MODES, SparseAttentionPatch, budget_from_mode, split_mask
from headig.sparse.patterns import BlockPattern, block_scores, build_pattern, select_blocks
from headig.sparse.sensitivity_gate import SparsityGate, sparsity_gate_site

__all__ = [
    "KERNELS", "MODES", "BlockPattern", "BudgetPolicy", "DenseBudget", "ImportanceBudget",
    "SparseAttentionPatch", "UniformBudget", "allocate", "block_scores", "budget_from_mode",
    "budget_names",
    "budget_policy", "build_pattern", "dense_mask_sparse", "flex_sparse", "gather_sparse",
    "head_budgets", "importance_weights", "register_budget", "select_blocks", "split_mask",
    "uniform_count",
    # sparsity sensitivity
    "SensitivityBudget", "SparsityGate", "WeightBudget", "sensitivity_weights",
    "sparsity_gate_site", "weighted_counts",
]
