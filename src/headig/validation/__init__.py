"""Causal validation of head scores: does acting on a ranking change the model as predicted?

What lives here, one job per module:

* :mod:`~headig.validation.loss` – the held-out masked-diffusion loss with heads removed
  (:func:`loss_at_masks`) and how validation reads examples (:func:`eval_items`, :func:`spread`);
* :mod:`~headig.validation.coalitions` – every subset of ≤ 16 heads (:func:`coalition_table`),
  the oracle pruning curves, exact Shapley values and the fidelity of a ranking;
* :mod:`~headig.validation.prune` – prune most / least / random k heads (:func:`prune_sweep`);
* :mod:`~headig.validation.sparse` – dense vs uniform vs adaptive sparse attention
  (:func:`sparse_sweep`);
* :mod:`~headig.validation.accuracy` – exact-match generation accuracy;
* :mod:`~headig.validation.faithfulness` – estimators against exact Shapley values;
* :mod:`~headig.validation.settings` – settings shared by the sweeps (accuracy, evaluation);
* :mod:`~headig.validation.report` – the one report base (csv / json / markdown / save) and
  the public formatting helpers;
* :mod:`~headig.validation.plots` – the PNGs of the reports (matplotlib, lazily).

Imports: this package may use the models, the diffusion core (masked CE, logit
alignment, generation), the runtime helpers, attribution (objective, estimators),
interventions (head gates and masks, sparse attention) and importance — never the command
line (``headig.cli``), which is built on top of it. Its modules import each other's
public names only.
"""

from headig.validation.accuracy import generation_accuracy
from headig.validation.coalitions import (
    DEFAULT_ORACLE_MAX_HEADS,
    CoalitionTable,
    coalition_table,
    fidelity,
    ranking_curves,
    ranking_fidelity,
)
from headig.validation.faithfulness import (
    GRIDS,
    EstimatorRun,
    Faithfulness,
    default_grid,
    faithfulness,
)
from headig.validation.loss import eval_items, loss_at_masks, spread
from headig.validation.prune import (
    ARMS,
    OracleSettings,
    PruneSelection,
    PruneSweep,
    prune_sweep,
    resolve_ks,
)
from headig.validation.ranking import HeadOrder, RankingSettings
from headig.validation.report import Report
from headig.validation.settings import AccuracySettings, EvalSettings
from headig.validation.sparse import (
    SPARSE_MODES,
    PolicyComparison,
    SparseSweep,
    auto_block_size,
    compare_budget_policies,
    greedy_oracle,
    sparse_sweep,
)

__all__ = [
    "HeadOrder", "RankingSettings",
    "PolicyComparison", "compare_budget_policies", "greedy_oracle",
    "ARMS", "DEFAULT_ORACLE_MAX_HEADS", "GRIDS", "SPARSE_MODES", "AccuracySettings",
    "CoalitionTable", "EstimatorRun", "EvalSettings", "Faithfulness", "OracleSettings",
    "PruneSelection", "PruneSweep", "Report", "SparseSweep", "auto_block_size",
    "coalition_table", "default_grid", "eval_items", "faithfulness", "fidelity",
    "generation_accuracy", "loss_at_masks", "prune_sweep", "ranking_curves",
    "ranking_fidelity", "resolve_ks", "sparse_sweep", "spread",
]
