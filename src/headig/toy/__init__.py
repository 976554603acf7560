"""The toy world: synthetic tasks, the tiny-model trainer and the embedded tiny model.

* :mod:`~headig.toy.tasks` – the six algorithmic prompt→answer tasks, their splits, the
  evaluator (exact-match accuracy through the diffusion decoder) and held-out loss;
* :mod:`~headig.toy.train_tiny` – trains the embedded model (``python -m
  headig.toy.train_tiny --out DIR``);
* :mod:`~headig.toy.embedded` – the checkpoint shipped in ``headig/assets/tiny-dllm`` and
  its data.

Dependency rule: this package may import :mod:`headig.models`, :mod:`headig.diffusion`
and the interventions (head gating, for ablations); nothing in the library below it may
import it. The trainer is not imported here, so ``python -m headig.toy.train_tiny`` runs
it cleanly as a script.
"""

from __future__ import annotations

from headig.toy.embedded import (
    EMBEDDED_NAME,
    embedded_examples,
    embedded_model_path,
    load_embedded,
)
from headig.toy.tasks import TASKS, Example, accuracy, completion_loss, make_splits

__all__ = [
    "EMBEDDED_NAME", "TASKS", "Example", "accuracy", "completion_loss", "embedded_examples",
    "embedded_model_path", "load_embedded", "make_splits",
]
