"""Deprecated location; moved to headig.validation. Kept for one release."""

from typing import Any

from headig.validation.accuracy import generation_accuracy
from headig.validation.coalitions import (
    DEFAULT_ORACLE_MAX_HEADS,
    CoalitionTable,
    coalition_table,
    enumerate_generic,
)
from headig.validation.coalitions import fidelity as _fidelity
from headig.validation.loss import eval_items, loss_at_masks, spread
from headig.validation.prune import ARMS, PruneSweep, prune_sweep, resolve_ks
from headig.validation.report import csv_text as _csv
from headig.validation.report import fmt as _fmt
from headig.validation.report import json_default as _json_default
from headig.validation.sparse import SPARSE_MODES, SparseSweep, auto_block_size, sparse_sweep


def _coalitions_generic(model: Any, items: Any, obj: Any, lyr: Any, baseline: float,
                        max_rows: int, progress: bool) -> Any:
    """Positional form of :func:`headig.validation.coalitions.enumerate_generic`."""
    return enumerate_generic(model, items, obj, lyr, baseline=baseline, max_rows=max_rows,
                             progress=progress)


__all__ = [
    "ARMS", "DEFAULT_ORACLE_MAX_HEADS", "SPARSE_MODES", "CoalitionTable", "PruneSweep",
    "SparseSweep", "auto_block_size", "coalition_table", "eval_items", "generation_accuracy",
    "loss_at_masks", "prune_sweep", "resolve_ks", "sparse_sweep", "spread",
    "_coalitions_generic", "_csv", "_fidelity", "_fmt", "_json_default",
]
