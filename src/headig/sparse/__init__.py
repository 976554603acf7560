"""Block-sparse attention with uniform or importance-adaptive per-head budgets.

:class:`SparseAttentionPatch` plugs block-sparse attention into a native headig model;
:func:`head_budgets` turns head importance into exact integer block budgets. See
docs/sparse-attention.md for the schedule, the budget map, the kernels and measured speed.
"""

from headig.sparse.budgets import allocate, head_budgets, importance_weights, uniform_count
from headig.sparse.kernels import KERNELS, dense_mask_sparse, flex_sparse, gather_sparse
from headig.sparse.patch import MODES, SparseAttentionPatch, split_mask
from headig.sparse.patterns import BlockPattern, block_scores, build_pattern, select_blocks

__all__ = [
    "KERNELS", "MODES", "BlockPattern", "SparseAttentionPatch", "allocate", "block_scores",
    "build_pattern", "dense_mask_sparse", "flex_sparse", "gather_sparse", "head_budgets",
    "importance_weights", "select_blocks", "split_mask", "uniform_count",
]
