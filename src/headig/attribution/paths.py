"""Gate paths from the baseline gates α0 to all-ones.

A path maps time τ ∈ [0, 1] to gates α(τ) ∈ R^{L×H}; IG_h = ∫ ∂J/∂α_h(α(τ)) α_h'(τ) dτ.
Every path here is described per sample by per-head ramps (start u, width w); a
quadrature rule (:mod:`headig.attribution.rules`) turns the ramps into gate points.

* :class:`DP` – the diagonal path: every gate moves together (deterministic).
* :class:`STP` – the Stochastic Threshold Path: each head waits at α0 until its own random
  threshold, then ramps to 1.

The base class is :class:`GatePath` (named so that it never shadows :class:`pathlib.Path`).
Default rules: ``gauss_legendre`` for DP, ``trapezoid`` for STP (see docs/method.md).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from headig.attribution import rules as _rules
from headig.attribution._checks import check_int
from headig.attribution.rules import PathPoints


class GatePath(ABC):
    """Base class: a family of paths α(τ) from α0 to 1 (possibly random per sample).

    ``per_head_ramps`` says whether heads switch on at different times; per-head quadrature
    rules (``ramp_gauss``) need it.
    """

    default_rule: str = "trapezoid"
    samples: int = 1
    per_head_ramps: bool = True

    @abstractmethod
    def sample_ramps(self, shape: tuple[int, int],
                     generator: torch.Generator) -> list[tuple[Tensor, Tensor]]:
        """Per path sample, per-head ramp start u and width w (float64 [L', H]).

        The gate of a head is α0 + (1 − α0)·clip((τ − u)/w, 0, 1).
        """

    @abstractmethod
    def settings(self) -> dict:
        """The path's settings, for metadata."""

    def check_rule(self, rule: str) -> str:
        """``rule`` if it is registered and fits this path; a clear error otherwise."""
        r = _rules.get_rule(rule)
        if r.per_head and not self.per_head_ramps:
            raise ValueError(f"rule={rule!r} integrates inside each head's own ramp, but on "
                             f"{type(self).__name__} every head moves together; use it with "
                             "STP, or use gauss_legendre / trapezoid here")
        return rule

    @staticmethod
    def points(u: Tensor, w: Tensor, baseline: float, steps: int, rule: str) -> PathPoints:
        """Gate points and IG weights for one path sample with ramps (u, w)."""
        return _rules.points(u, w, baseline, steps, rule)


@dataclass(frozen=True)
class DP(GatePath):
    """Diagonal path: every gate moves together, α(τ) = α0 + τ(1 − α0). Deterministic."""

    default_rule: str = "gauss_legendre"
    per_head_ramps = False

    @property
    def samples(self) -> int:  # a deterministic path needs one sample, never P copies
        return 1

    def sample_ramps(self, shape, generator):
        return [(torch.zeros(shape, dtype=torch.float64), torch.ones(shape, dtype=torch.float64))]

    def settings(self) -> dict:
        return {"path": "DP"}


Ramp = Literal["original", "narrow"]
Sampling = Literal["iid", "stratified", "antithetic"]


@dataclass(frozen=True)
class STP(GatePath):
    """Stochastic Threshold Path: head h waits at α0 until its threshold u_h, then ramps to 1.

    Args:
        samples: path samples P averaged per example.
        ramp: ``original`` — r = clip((τ−u)/(1−u), 0, 1), u ~ U[0, 1) (the research code);
            ``narrow`` — r = clip((τ−u)/width, 0, 1), u ~ U[0, 1−width].
        width: ramp width for ``narrow``.
        sampling: ``iid`` thresholds; ``stratified`` (each head's P thresholds fall one in
            each of P strata, in a random order); ``antithetic`` (pairs u and its mirror
            image, which reverses the order in which heads switch on).
    """

    samples: int = 4
    ramp: str = "original"
    width: float = 0.1
    sampling: str = "iid"
    default_rule: str = "trapezoid"

    def __post_init__(self) -> None:
        check_int("STP samples", self.samples, 1)
        if self.ramp not in ("original", "narrow"):
            raise ValueError(f"STP ramp={self.ramp!r}; expected 'original' or 'narrow'")
        if not 0.0 < float(self.width) <= 1.0:
            raise ValueError(f"STP width={self.width}; expected 0 < width <= 1")
        if self.sampling not in ("iid", "stratified", "antithetic"):
            raise ValueError(f"STP sampling={self.sampling!r}; expected iid, stratified or antithetic")

    def settings(self) -> dict:
        return {"path": "STP", "samples": int(self.samples), "ramp": self.ramp,
                "width": float(self.width), "sampling": self.sampling}

    def uniforms(self, shape: tuple[int, int], generator: torch.Generator) -> Tensor:
        """U[0,1) thresholds [P, L', H] following ``sampling``."""
        p = int(self.samples)
        if self.sampling == "iid":
            return torch.rand(p, *shape, generator=generator, dtype=torch.float64)
        if self.sampling == "stratified":
            jitter = torch.rand(p, *shape, generator=generator, dtype=torch.float64)
            order = torch.argsort(torch.rand(p, *shape, generator=generator), dim=0)
            return (order.to(torch.float64) + jitter) / p
        # antithetic: samples come in pairs (u, 1 − u)
        half = torch.rand((p + 1) // 2, *shape, generator=generator, dtype=torch.float64)
        return torch.stack([half, 1.0 - half], dim=1).reshape(-1, *shape)[:p]

    def sample_ramps(self, shape, generator):
        out = []
        for u in self.uniforms(shape, generator):
            if self.ramp == "original":
                u = u.clamp(max=1.0 - 1e-9)
                out.append((u, 1.0 - u))
            else:
                w = float(self.width)
                out.append((u * (1.0 - w), torch.full(shape, w, dtype=torch.float64)))
        return out


__all__ = ["DP", "STP", "GatePath", "PathPoints", "Ramp", "Sampling"]
