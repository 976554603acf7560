"""Settings shared by the sweeps, and how the flat keywords of earlier releases map onto them.

Grouping the knobs keeps each sweep's signature short and makes one setting mean the same
thing in every sweep (``AccuracySettings.labels`` in pruning and in sparse attention).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from headig.objective import MaskedDiffusionObjective

__all__ = ["AccuracySettings", "EvalSettings", "fold_keywords"]


@dataclass(frozen=True)
class AccuracySettings:
    """Exact-match generation accuracy (:func:`~headig.validation.accuracy.generation_accuracy`).

    ``labels`` (example id -> group) adds per-group accuracy; ``generate_kwargs`` go to
    :func:`headig.generation.generate`.
    """

    enabled: bool = False
    labels: Mapping[str, str] | None = None
    generate_kwargs: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class EvalSettings:
    """How the loss is computed and reported: objective, batch size, progress display."""

    objective: MaskedDiffusionObjective | None = None
    internal_batch_size: int = 256
    progress: bool = False
    on_stage: Callable[[str], None] | None = None


def fold_keywords(function: str, given: Mapping[str, Any], defaults: Mapping[str, Any],
                  keywords: Mapping[str, Any], mapping: Mapping[str, tuple[str, str]]
                  ) -> dict[str, Any]:
    """The settings groups of a sweep, with flat keywords folded into their group.

    Args:
        function: the sweep's name (for error messages).
        given: group name -> the settings object the caller passed, or None.
        defaults: group name -> the settings object to start from when none was given.
        keywords: the flat keywords of the call.
        mapping: flat keyword -> (group name, field name).

    A keyword may not be combined with an explicit settings object of its group (which
    would be ambiguous); unknown keywords are a TypeError, as for any function.
    """
    unknown = sorted(set(keywords) - set(mapping))
    if unknown:
        raise TypeError(f"{function}() got unexpected keyword argument(s) {unknown}")
    updates: dict[str, dict[str, Any]] = {g: {} for g in defaults}
    for name, value in keywords.items():
        group, attr = mapping[name]
        if given.get(group) is not None:
            raise TypeError(f"pass {name}= inside the {type(given[group]).__name__} or as a "
                            "keyword, not both")
        updates[group][attr] = value
    return {g: dataclasses.replace(given.get(g) if given.get(g) is not None else defaults[g],
                                   **updates[g]) for g in defaults}
