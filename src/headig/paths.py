"""Integration paths from the baseline gates α0 to all-ones, and quadrature rules.

A path maps time τ ∈ [0, 1] to gates α(τ) ∈ R^{L×H}; IG_h = ∫ ∂J/∂α_h(α(τ)) α_h'(τ) dτ.
A rule turns one path sample into gate points and per-head weights such that
IG ≈ Σ_k ∇J(α_k) ⊙ W_k.

Rules on a uniform τ grid with ``steps`` intervals (Riemann–Stieltjes sums, so the
weights of every head add up to exactly 1 − α0):

* ``right`` – ∇J(α(τ_k)) ⊙ (α(τ_k) − α(τ_{k−1})): the original research rule (K points).
* ``left`` – the same with the left end of each interval (K points).
* ``midpoint`` – the interval's midpoint gates (K points).
* ``trapezoid`` – mean of both ends (K+1 points); second-order accurate, and for a
  piecewise-linear path (STP) it is IG along the polyline through the grid points, whose
  completeness residual vanishes as O(1/K²).
* ``gauss_legendre`` – K Gauss–Legendre nodes on [0, 1] with weights c_k α'(τ_k);
  spectrally accurate on a smooth path (DP).

And one rule for threshold paths:

* ``ramp_gauss`` – for each head, ``steps`` Gauss–Legendre nodes inside that head's own
  ramp (the only time its gate moves). Cost is steps × heads points per path sample,
  but with a narrow ramp each head's integral is its marginal contribution to the heads
  that switched on before it, so STP converges to exact Shapley values.

Default rules: ``gauss_legendre`` for DP, ``trapezoid`` for STP (see docs/method.md).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

GRID_RULES = ("right", "left", "midpoint", "trapezoid", "gauss_legendre")
RULES = (*GRID_RULES, "ramp_gauss")


def gauss_legendre_01(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of the n-point Gauss–Legendre rule on [0, 1]."""
    x, w = np.polynomial.legendre.leggauss(int(n))
    return (x + 1.0) / 2.0, w / 2.0


@dataclass(frozen=True)
class PathPoints:
    """Gate points [Q, L', H] and IG weights [Q, L', H] for one path sample."""

    gates: Tensor
    weights: Tensor


class Path(ABC):
    """Base class: a family of paths α(τ) from α0 to 1 (possibly random per sample)."""

    default_rule: str = "trapezoid"
    samples: int = 1

    @abstractmethod
    def sample_ramps(self, shape: tuple[int, int],
                     generator: torch.Generator) -> list[tuple[Tensor, Tensor]]:
        """Per path sample, per-head ramp start u and width w (float64 [L', H]).

        The gate of a head is α0 + (1 − α0)·clip((τ − u)/w, 0, 1).
        """

    @abstractmethod
    def settings(self) -> dict:
        """The path's settings, for metadata."""

    @staticmethod
    def points(u: Tensor, w: Tensor, baseline: float, steps: int, rule: str) -> PathPoints:
        """Gate points and IG weights for one path sample with ramps (u, w)."""
        if rule not in RULES:
            raise ValueError(f"rule={rule!r}; expected one of {list(RULES)}")
        if int(steps) < 1:
            raise ValueError(f"steps={steps}; expected >= 1")
        shape = tuple(u.shape)
        scale = 1.0 - float(baseline)

        def alpha(tau: Tensor) -> Tensor:  # tau [Q] -> [Q, L', H]
            r = ((tau[:, None, None] - u) / w).clamp(0.0, 1.0)
            return baseline + scale * r

        def slope(tau: Tensor) -> Tensor:  # α'(τ) [Q, L', H]
            inside = (tau[:, None, None] >= u) & (tau[:, None, None] <= u + w)
            return inside.to(torch.float64) * scale / w

        k = int(steps)
        if rule == "ramp_gauss":
            x, c = gauss_legendre_01(k)
            x, c = torch.from_numpy(x), torch.from_numpy(c)
            flat_u, flat_w = u.flatten(), w.flatten()
            n = flat_u.numel()
            tau = (flat_u[:, None] + flat_w[:, None] * x[None]).flatten()  # [n*k]
            gates = alpha(tau)
            weights = torch.zeros(n, k, n, dtype=torch.float64)
            weights[torch.arange(n), :, torch.arange(n)] = (c * scale)[None].expand(n, k)
            return PathPoints(gates.float(), weights.reshape(n * k, *shape))
        if rule == "gauss_legendre":
            x, c = gauss_legendre_01(k)
            tau = torch.from_numpy(x)
            weights = slope(tau) * torch.from_numpy(c)[:, None, None]
            return PathPoints(alpha(tau).float(), weights)
        grid = torch.linspace(0.0, 1.0, k + 1, dtype=torch.float64)
        a = alpha(grid)
        delta = a[1:] - a[:-1]  # [K, L', H]
        if rule == "right":
            return PathPoints(a[1:].float(), delta)
        if rule == "left":
            return PathPoints(a[:-1].float(), delta)
        if rule == "midpoint":
            return PathPoints(alpha((grid[1:] + grid[:-1]) / 2).float(), delta)
        weights = torch.zeros_like(a)
        weights[:-1] += delta / 2
        weights[1:] += delta / 2
        return PathPoints(a.float(), weights)


@dataclass(frozen=True)
class DP(Path):
    """Diagonal path: every gate moves together, α(τ) = α0 + τ(1 − α0). Deterministic."""

    default_rule: str = "gauss_legendre"

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
class STP(Path):
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
        if int(self.samples) < 1:
            raise ValueError(f"STP samples={self.samples}; expected >= 1")
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
