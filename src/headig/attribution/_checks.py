"""Argument checks shared by the attribution modules (fail fast with the expected form)."""

from __future__ import annotations

import math
import operator
from typing import Any


def check_int(name: str, value: Any, minimum: int | None = None) -> int:
    """``value`` as an int; a float such as 2.7 is refused rather than silently truncated."""
    try:
        if isinstance(value, bool):
            raise TypeError
        out = operator.index(value)
    except TypeError:
        expected = "an integer" if minimum is None else f"an integer >= {minimum}"
        raise TypeError(f"{name}={value!r}; expected {expected}") from None
    if minimum is not None and out < minimum:
        raise ValueError(f"{name}={value}; expected >= {minimum}")
    return out


def check_baseline(baseline: Any) -> float:
    """α0 as a float: finite and below 1 (the all-ones gate is the full model)."""
    b = float(baseline)
    if not math.isfinite(b) or b >= 1.0:
        raise ValueError(f"baseline={baseline}; expected a finite gate value below 1 (0 = ablation)")
    return b


def check_positive(name: str, value: Any) -> float:
    """A finite number > 0 (a tolerance); 0 or NaN would never stop a refinement."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}={value!r}; expected a positive number such as 0.05") from None
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name}={value!r}; expected a positive number such as 0.05")
    return v
