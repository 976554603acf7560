"""Quadrature rules: how one integration path becomes gate points and IG weights.

A rule turns one path sample — per-head ramps (start u, width w), where the gate of head h
is α0 + (1 − α0)·clip((τ − u_h)/w_h, 0, 1) — into gate points α_k [Q, L', H] and weights
W_k [Q, L', H] such that IG ≈ Σ_k ∇J(α_k) ⊙ W_k.

Built-in rules on a uniform τ grid with ``steps`` intervals (Riemann–Stieltjes sums, so the
weights of every head add up to exactly 1 − α0):

* ``right`` – ∇J(α(τ_k)) ⊙ (α(τ_k) − α(τ_{k−1})): the original research rule (K points).
* ``left`` – the same with the left end of each interval (K points).
* ``midpoint`` – the interval's midpoint gates (K points).
* ``trapezoid`` – mean of both ends (K+1 points); second-order accurate, and for a
  piecewise-linear path (STP) it is IG along the polyline through the grid points, whose
  completeness residual vanishes as O(1/K²).
* ``gauss_legendre`` – K Gauss–Legendre nodes on [0, 1] with weights c_k α'(τ_k);
  spectrally accurate on a smooth path (DP).

And one per-head rule, only for paths whose heads move at different times (STP):

* ``ramp_gauss`` – for each head, ``steps`` Gauss–Legendre nodes inside that head's own
  ramp. Cost is steps × heads points per path sample, but with a narrow ramp each head's
  integral is its marginal contribution to the heads that switched on before it, so STP
  converges to exact Shapley values.

Users add rules with :func:`register_rule`; every estimator and the CLI look rules up here.
``trapezoid``, ``right`` and ``left`` nest under step doubling (:data:`NESTED_RULES`,
:func:`grid_indices`), which is what lets ``steps="auto"`` refine without re-evaluating.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from headig.attribution._checks import check_int

RuleFn = Callable[[Tensor, Tensor, float, int], "PathPoints"]


@dataclass(frozen=True)
class PathPoints:
    """Gate points [Q, L', H] and IG weights [Q, L', H] for one path sample."""

    gates: Tensor
    weights: Tensor


@dataclass(frozen=True)
class QuadratureRule:
    """A registered rule: ``fn(u, w, baseline, steps) -> PathPoints``.

    ``per_head`` rules place nodes inside each head's own ramp; they are only meaningful on
    paths whose heads switch on at different times (not on the diagonal path).
    """

    name: str
    fn: RuleFn
    per_head: bool = False


_RULES: dict[str, QuadratureRule] = {}


def register_rule(name: str, fn: RuleFn | None = None, *, per_head: bool = False,
                  overwrite: bool = False):
    """Register a quadrature rule under ``name``; usable as a decorator.

    ``fn(u, w, baseline, steps)`` gets float64 ramp starts/widths [L', H], the baseline α0
    and the number of steps, and returns :class:`PathPoints` (gates float32, weights
    float64). :func:`ramp_gates` and :func:`ramp_slope` evaluate the path for it.
    """
    def add(f: RuleFn) -> RuleFn:
        if not isinstance(name, str) or not name:
            raise ValueError(f"rule name {name!r}; expected a non-empty string")
        if name in _RULES and not overwrite:
            raise ValueError(f"quadrature rule {name!r} is already registered "
                             "(pass overwrite=True to replace it)")
        _RULES[name] = QuadratureRule(name, f, bool(per_head))
        return f

    return add if fn is None else add(fn)


def get_rule(name: str) -> QuadratureRule:
    """The registered rule ``name``; unknown names list the known ones."""
    try:
        return _RULES[name]
    except (KeyError, TypeError):
        raise ValueError(f"rule={name!r}; expected one of {rule_names()}") from None


def rule_names() -> list[str]:
    """Names of every registered rule, built-ins first."""
    return list(_RULES)


def gauss_legendre_01(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of the n-point Gauss–Legendre rule on [0, 1]."""
    x, w = np.polynomial.legendre.leggauss(int(n))
    return (x + 1.0) / 2.0, w / 2.0


def ramp_gates(u: Tensor, w: Tensor, baseline: float, tau: Tensor) -> Tensor:
    """Gates α(τ) [Q, L', H] at times ``tau`` [Q] (float64)."""
    scale = 1.0 - float(baseline)
    r = ((tau[:, None, None] - u) / w).clamp(0.0, 1.0)
    return baseline + scale * r


def ramp_slope(u: Tensor, w: Tensor, baseline: float, tau: Tensor) -> Tensor:
    """α'(τ) [Q, L', H] at times ``tau`` [Q] (float64; zero outside each head's ramp)."""
    scale = 1.0 - float(baseline)
    inside = (tau[:, None, None] >= u) & (tau[:, None, None] <= u + w)
    return inside.to(torch.float64) * scale / w


def points(u: Tensor, w: Tensor, baseline: float, steps: int, rule: str) -> PathPoints:
    """Gate points and IG weights for one path sample with ramps (u, w)."""
    r = get_rule(rule)
    k = check_int("steps", steps, 1)
    return r.fn(u, w, baseline, k)


def _grid(u: Tensor, w: Tensor, baseline: float, k: int) -> tuple[Tensor, Tensor, Tensor]:
    grid = torch.linspace(0.0, 1.0, k + 1, dtype=torch.float64)
    a = ramp_gates(u, w, baseline, grid)
    return grid, a, a[1:] - a[:-1]


@register_rule("right")
def _right(u: Tensor, w: Tensor, baseline: float, k: int) -> PathPoints:
    _, a, delta = _grid(u, w, baseline, k)
    return PathPoints(a[1:].float(), delta)


@register_rule("left")
def _left(u: Tensor, w: Tensor, baseline: float, k: int) -> PathPoints:
    _, a, delta = _grid(u, w, baseline, k)
    return PathPoints(a[:-1].float(), delta)


@register_rule("midpoint")
def _midpoint(u: Tensor, w: Tensor, baseline: float, k: int) -> PathPoints:
    grid, _, delta = _grid(u, w, baseline, k)
    return PathPoints(ramp_gates(u, w, baseline, (grid[1:] + grid[:-1]) / 2).float(), delta)


@register_rule("trapezoid")
def _trapezoid(u: Tensor, w: Tensor, baseline: float, k: int) -> PathPoints:
    _, a, delta = _grid(u, w, baseline, k)
    weights = torch.zeros_like(a)
    weights[:-1] += delta / 2
    weights[1:] += delta / 2
    return PathPoints(a.float(), weights)


@register_rule("gauss_legendre")
def _gauss_legendre(u: Tensor, w: Tensor, baseline: float, k: int) -> PathPoints:
    x, c = gauss_legendre_01(k)
    tau = torch.from_numpy(x)
    weights = ramp_slope(u, w, baseline, tau) * torch.from_numpy(c)[:, None, None]
    return PathPoints(ramp_gates(u, w, baseline, tau).float(), weights)


@register_rule("ramp_gauss", per_head=True)
def _ramp_gauss(u: Tensor, w: Tensor, baseline: float, k: int) -> PathPoints:
    shape = tuple(u.shape)
    scale = 1.0 - float(baseline)
    x, c = gauss_legendre_01(k)
    x, c = torch.from_numpy(x), torch.from_numpy(c)
    flat_u, flat_w = u.flatten(), w.flatten()
    n = flat_u.numel()
    tau = (flat_u[:, None] + flat_w[:, None] * x[None]).flatten()  # [n*k]
    gates = ramp_gates(u, w, baseline, tau)
    weights = torch.zeros(n, k, n, dtype=torch.float64)
    weights[torch.arange(n), :, torch.arange(n)] = (c * scale)[None].expand(n, k)
    return PathPoints(gates.float(), weights.reshape(n * k, *shape))


BUILTIN_RULES: tuple[str, ...] = tuple(_RULES)
GRID_RULES: tuple[str, ...] = ("right", "left", "midpoint", "trapezoid", "gauss_legendre")

#: Grid rules whose points at K intervals are among those at 2K (τ = i/K for these i), so a
#: convergence-controlled run can double K and evaluate only the new points.
_NESTED: dict[str, Callable[[int], range]] = {
    "trapezoid": lambda k: range(0, k + 1),
    "right": lambda k: range(1, k + 1),
    "left": lambda k: range(0, k),
}
NESTED_RULES: tuple[str, ...] = tuple(_NESTED)


def grid_indices(rule: str, k: int) -> range:
    """Grid indices i (τ = i/k) of the points a nested rule returns for ``k`` intervals, in
    the order of its :class:`PathPoints` rows."""
    try:
        return _NESTED[rule](k)
    except KeyError:
        raise ValueError(f"rule={rule!r} does not nest under step doubling; expected one of "
                         f"{list(NESTED_RULES)}") from None

__all__ = ["BUILTIN_RULES", "GRID_RULES", "NESTED_RULES", "PathPoints", "QuadratureRule",
           "gauss_legendre_01", "get_rule", "grid_indices", "points", "ramp_gates", "ramp_slope",
           "register_rule", "rule_names"]
