"""Where a model is in a denoising run, so that interventions can follow the schedule.

Generators announce a run with :func:`denoising` and advance :attr:`DenoisingState.step`
before each forward; anything patched into the model (sparse attention builds its pattern
once after the dense warm-up, then reuses it) reads :func:`current_state`. Outside a
generation (likelihood scoring, attribution) there is no state and every forward is
treated as a one-shot pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from torch import nn

__all__ = ["DenoisingState", "current_state", "denoising"]

_ATTR = "_headig_denoising_state"


@dataclass
class DenoisingState:
    """Progress of one generation call.

    Attributes:
        total_steps: number of denoising forwards the run will make.
        prompt_length: first position of the generation region (prompt + earlier blocks
            are before it; with left padding the prompt region is [0, prompt_length)).
        step: index of the forward about to run (0-based); generators update it.
        run_id: increments with every new run, so cached per-run data is never reused
            across generations.
        cache: scratch space for interventions, cleared when the run ends.
    """

    total_steps: int
    prompt_length: int
    step: int = 0
    run_id: int = 0
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def progress(self) -> float:
        """Fraction of the run done before the current forward, in [0, 1)."""
        return self.step / max(self.total_steps, 1)


_run_counter = 0


@contextmanager
def denoising(model: nn.Module, total_steps: int, prompt_length: int) -> Iterator[DenoisingState]:
    """Mark ``model`` as inside a generation run for the duration of the block."""
    global _run_counter
    _run_counter += 1
    previous = getattr(model, _ATTR, None)
    state = DenoisingState(total_steps=total_steps, prompt_length=prompt_length,
                           run_id=_run_counter)
    setattr(model, _ATTR, state)
    try:
        yield state
    finally:
        state.cache.clear()
        if previous is None:
            try:
                delattr(model, _ATTR)
            except AttributeError:
                pass
        else:
            setattr(model, _ATTR, previous)


def current_state(model: nn.Module) -> DenoisingState | None:
    """The active run of ``model``, or None outside generation."""
    return getattr(model, _ATTR, None)
