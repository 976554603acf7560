"""Per-head block budgets: how many key blocks each head keeps, with an exact total.

Uniform sparse attention keeps ``u = ceil(keep * n_blocks)`` key blocks per query block in
every head. Importance-adaptive attention redistributes the *same* total ``L * H * u`` among
the heads: a monotone map turns scores into weights, the weights are scaled (and clamped
to ``[min_keep, max_keep]``) until they sum to the total, and largest-remainder rounding
makes the integer counts add up exactly. So adaptive and uniform runs always spend the same
number of key blocks, which makes their accuracies comparable.

A budget *policy* (:class:`BudgetPolicy`) packages one such rule with its options:
:class:`DenseBudget`, :class:`UniformBudget` and :class:`ImportanceBudget` (the original
importance-adaptive method). A new rule is one small registered class; see
:func:`register_budget` and :func:`budget_policy`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor

KV_GROUPS = ("query", "kv")
_EPS = 1e-9


def n_blocks_for(seq_len: int, block_size: int) -> int:
    """Number of (query or key) blocks covering ``seq_len`` tokens; the last may be partial."""
    return -(-int(seq_len) // int(block_size))


def check_fraction(name: str, value: float, *, allow_zero: bool = False) -> float:
    """``value`` as a float in (0, 1] (or [0, 1]); a clear error otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number in {'[0' if allow_zero else '(0'}, 1]; "
                        f"got {type(value).__name__}")
    v = float(value)
    low_ok = v >= 0.0 if allow_zero else v > 0.0
    if not (math.isfinite(v) and low_ok and v <= 1.0):
        raise ValueError(f"{name}={value}; expected a fraction in "
                         f"{'[0' if allow_zero else '(0'}, 1] of the key blocks")
    return v


def uniform_count(n_blocks: int, keep: float) -> int:
    """Key blocks kept per head by uniform sparsity: ``ceil(keep * n_blocks)``, at least 1.

    Rounding up means a head never keeps less than the fraction ``keep``.
    """
    if n_blocks < 1:
        raise ValueError(f"n_blocks={n_blocks}; expected at least 1 block")
    return min(n_blocks, max(1, math.ceil(keep * n_blocks - _EPS)))


def count_limits(n_blocks: int, keep: float, min_keep: float | None,
                 max_keep: float) -> tuple[int, int, int]:
    """(lo, uniform, hi) block counts per head for these fractions.

    ``lo = max(1, ceil(min_keep * n))`` and ``hi = floor(max_keep * n)``, widened to the
    uniform count when rounding alone would exclude it (e.g. keep = max_keep = 0.3 with
    n = 8 blocks gives uniform 3 but floor(2.4) = 2).
    """
    keep = check_fraction("keep", keep)
    max_keep = check_fraction("max_keep", max_keep)
    if min_keep is not None:
        min_keep = check_fraction("min_keep", min_keep, allow_zero=True)
        if min_keep > keep:
            raise ValueError(f"min_keep={min_keep} is larger than keep={keep}; the uniform "
                             "budget must lie between min_keep and max_keep")
    if max_keep < keep:
        raise ValueError(f"max_keep={max_keep} is smaller than keep={keep}; the uniform "
                         "budget must lie between min_keep and max_keep")
    u = uniform_count(n_blocks, keep)
    lo = 1 if min_keep is None else max(1, math.ceil(min_keep * n_blocks - _EPS))
    lo = min(lo, u)
    hi = max(u, min(n_blocks, math.floor(max_keep * n_blocks + _EPS)))
    return lo, u, hi


def importance_weights(scores: Tensor, *, clip: Sequence[float] = (5.0, 95.0),
                       strength: float = 2.0 / 3.0) -> Tensor:
    """Monotone map from head scores to positive weights (float64, same shape).

    The scores are pooled, clipped at the ``clip`` percentiles and scaled to ``n`` in
    [0, 1]; the weight is ``1 + strength * (2n - 1)``, so with the default strength 2/3 the
    weights run from 1/3 to 5/3 (the research code's map). Equal scores (for example an
    all-ones importance) give equal weights, hence exactly the uniform budget.
    """
    if not 0.0 <= strength < 1.0:
        raise ValueError(f"strength={strength}; expected 0 <= strength < 1 (weights must stay > 0)")
    lo_p, hi_p = float(clip[0]), float(clip[1])
    if not 0.0 <= lo_p <= hi_p <= 100.0:
        raise ValueError(f"clip={tuple(clip)}; expected two percentiles 0 <= low <= high <= 100")
    s = scores.detach().to(torch.float64).flatten()
    lo = torch.quantile(s, lo_p / 100.0)
    hi = torch.quantile(s, hi_p / 100.0)
    span = float(hi - lo)
    if span <= 1e-12 * max(1.0, float(hi.abs()), float(lo.abs())):
        return torch.ones_like(scores, dtype=torch.float64)
    n = (s.clamp(lo, hi) - lo) / span
    return (1.0 + strength * (2.0 * n - 1.0)).view(scores.shape)


def allocate(weights: Tensor, total: int, lo: int, hi: int, tiebreak: Tensor | None = None) -> Tensor:
    """Integer counts in ``[lo, hi]`` proportional to ``weights`` that sum to ``total`` exactly.

    The continuous solution is ``clamp(lam * w, lo, hi)`` with ``lam`` found by bisection;
    its floors are topped up by largest remainder (ties: larger ``tiebreak`` first, then
    lower index). Counts are monotone: a larger weight never gets a smaller count, and among
    equal weights a larger ``tiebreak`` never gets a smaller count.
    """
    w = weights.detach().to(torch.float64).flatten()
    n = w.numel()
    if n == 0:
        raise ValueError("no heads to allocate blocks to")
    if not bool((w > 0).all()) or not bool(torch.isfinite(w).all()):
        raise ValueError("weights must be finite and positive")
    if not n * lo <= total <= n * hi:
        raise ValueError(f"cannot give {n} heads between {lo} and {hi} blocks each with a "
                         f"total of {total}")
    tb = torch.zeros(n, dtype=torch.float64) if tiebreak is None else \
        tiebreak.detach().to(torch.float64).flatten().cpu()
    w = w.cpu()
    a, b = 0.0, float(hi) / float(w.min())
    for _ in range(200):
        mid = 0.5 * (a + b)
        if float((mid * w).clamp(lo, hi).sum()) < total:
            a = mid
        else:
            b = mid
    x = (b * w).clamp(lo, hi)
    base = torch.floor(x).clamp(lo, hi)
    frac = x - base
    counts = base.to(torch.long)
    index = torch.arange(n, dtype=torch.float64)
    remaining = total - int(counts.sum())
    while remaining != 0:  # one pass always suffices in exact arithmetic; loop for rounding
        if remaining > 0:
            cand = torch.nonzero(counts < hi).flatten()
            # sort by frac desc, tiebreak desc, index asc (lexsort via successive stable sorts)
            order = cand[torch.argsort(index[cand], stable=True)]
            order = order[torch.argsort(-tb[order], stable=True)]
            order = order[torch.argsort(-frac[order], stable=True)]
            pick = order[:remaining]
            counts[pick] += 1
            remaining -= pick.numel()
        else:
            cand = torch.nonzero(counts > lo).flatten()
            order = cand[torch.argsort(-index[cand], stable=True)]
            order = order[torch.argsort(tb[order], stable=True)]
            order = order[torch.argsort(frac[order], stable=True)]
            pick = order[:-remaining]
            counts[pick] -= 1
            remaining += pick.numel()
        frac = torch.zeros_like(frac)
    return counts.view(weights.shape)


def _as_scores(scores: object) -> Tensor:
    if hasattr(scores, "scores") and hasattr(scores, "layers"):  # a HeadImportance
        scores = scores.scores  # type: ignore[attr-defined]
    if not isinstance(scores, Tensor):
        try:
            scores = torch.as_tensor(scores)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"scores must be a [L, H] tensor or a HeadImportance; got "
                            f"{type(scores).__name__}") from err
    if not scores.is_floating_point():
        scores = scores.to(torch.float64)
    if scores.dim() != 2:
        raise ValueError(f"scores must be 2-D [layers, heads]; got shape {tuple(scores.shape)}")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("scores contain NaN or inf; importance scores must be finite")
    return scores


def head_budgets(scores: Tensor | None, n_blocks: int, keep: float, *,
                 n_layers: int | None = None, n_heads: int | None = None,
                 min_keep: float | None = None, max_keep: float = 1.0,
                 increases_keep: bool = True, kv_groups: str = "query", group_size: int = 1,
                 clip: Sequence[float] = (5.0, 95.0), strength: float = 2.0 / 3.0) -> Tensor:
    """Key blocks kept per query block by each head: LongTensor [L, H].

    Args:
        scores: importance [L, H] (positive = the head helps) or a HeadImportance (its
            ``.scores`` are used as given, so pass only the rows you budget); None gives the
            uniform budget (then ``n_layers`` and ``n_heads`` give the shape).
        n_blocks: key blocks in the sequence (``ceil(T / block_size)``).
        keep: uniform fraction of key blocks per head, in (0, 1].
        min_keep, max_keep: per-head fraction clamps (min_keep None = at least 1 block).
        increases_keep: True gives more blocks to higher scores; False reverses the map.
        kv_groups: "query" budgets every query head; "kv" averages scores over the
            ``group_size`` query heads that share a KV head and gives them one budget.
        clip, strength: the score -> weight map, see :func:`importance_weights`.

    The sum always equals ``L * H * ceil(keep * n_blocks)``, the uniform total.
    """
    if kv_groups not in KV_GROUPS:
        raise ValueError(f"kv_groups={kv_groups!r}; expected one of {list(KV_GROUPS)}")
    if isinstance(n_blocks, bool) or not isinstance(n_blocks, int) or n_blocks < 1:
        raise ValueError(f"n_blocks={n_blocks!r}; expected a positive int")
    lo, u, hi = count_limits(n_blocks, keep, min_keep, max_keep)
    if scores is None:
        if n_layers is None or n_heads is None:
            raise ValueError("uniform budgets (scores=None) need n_layers and n_heads")
        return torch.full((int(n_layers), int(n_heads)), u, dtype=torch.long)
    s = _as_scores(scores).detach().to("cpu", torch.float64)
    n_l, n_h = s.shape
    if (n_layers is not None and n_layers != n_l) or (n_heads is not None and n_heads != n_h):
        raise ValueError(f"scores have shape {tuple(s.shape)}; expected [{n_layers}, {n_heads}]")
    if not increases_keep:
        s = -s
    g = int(group_size)
    if kv_groups == "kv" and g > 1:
        if n_h % g:
            raise ValueError(f"{n_h} heads cannot form KV groups of {g}")
        s = s.view(n_l, n_h // g, g).mean(-1)
    w = importance_weights(s, clip=clip, strength=strength)
    counts = allocate(w, s.numel() * u, lo, hi, tiebreak=s)
    if kv_groups == "kv" and g > 1:
        counts = counts.repeat_interleave(g, dim=1)
    return counts


# ---------------------------------------------------------------------- budget policies
def importance_scores(importance: Any, n_layers: int, n_heads: int) -> tuple[Tensor, list[int]]:
    """(scores float64 [L, H] on the CPU, attributed layers) from a HeadImportance or a tensor.

    Only the attributed layers must be finite; other rows are never read.
    """
    if hasattr(importance, "scores") and hasattr(importance, "layers"):
        scores, layers = importance.scores, importance.layers
    else:
        scores, layers = importance, None
    if not isinstance(scores, Tensor):
        try:
            scores = torch.as_tensor(scores)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError("importance must be a HeadImportance or a [n_layers, n_heads] "
                            f"tensor; got {type(importance).__name__}") from err
    if scores.dim() != 2 or tuple(scores.shape) != (n_layers, n_heads):
        raise ValueError(f"importance scores have shape {tuple(scores.shape)}; expected "
                         f"[n_layers, n_heads] = [{n_layers}, {n_heads}] for this model")
    if not scores.is_floating_point():
        scores = scores.to(torch.float64)
    layers = list(range(n_layers)) if layers is None else sorted({int(i) for i in layers})
    if any(not 0 <= i < n_layers for i in layers):
        raise ValueError(f"importance layers {layers} out of range for {n_layers} layers")
    if not bool(torch.isfinite(scores[layers]).all()):
        raise ValueError("importance scores contain NaN or inf in the attributed layers")
    return scores.detach().to("cpu", torch.float64), layers


class BudgetPolicy(ABC):
    """How many key blocks each head keeps: the rule behind a sparse-attention patch.

    A policy is a small frozen dataclass of options with a registered ``name``. The patch
    calls :meth:`bind` once (checks against the model, before any forward) and then
    :meth:`counts` for every sequence length it meets (it caches the result per length).
    Subclasses override :meth:`counts` (and :meth:`bind` to read per-model data).
    """

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    #: False for a policy that keeps every block, so the patch need not install anything
    sparse: ClassVar[bool] = True
    keep: float | None

    def bind(self, n_layers: int, n_heads: int, layers: list[int]) -> None:
        """Check the policy against a model with ``n_layers x n_heads`` patched at ``layers``.

        An optional hook: policies without scores have nothing to check.
        """
        return None

    @abstractmethod
    def counts(self, n_blocks: int, layers: list[int], n_layers: int, n_heads: int, *,
               group_size: int = 1, kv_groups: str = "query") -> Tensor:
        """Kept key blocks per query block, LongTensor [n_layers, n_heads].

        Rows outside ``layers`` must read ``n_blocks`` (dense).
        """


_BUDGETS: dict[str, type[BudgetPolicy]] = {}
P = TypeVar("P", bound=type[BudgetPolicy])


def register_budget(cls: P) -> P:
    """Class decorator: make a policy constructible by name (:func:`budget_policy`)."""
    for key in (cls.name, *cls.aliases):
        if not key:
            raise ValueError(f"{cls.__name__} needs a non-empty name")
        _BUDGETS[key] = cls
    return cls


def budget_names() -> list[str]:
    """Registered policy names (canonical names only, no aliases)."""
    return sorted({cls.name for cls in _BUDGETS.values()})


def budget_policy(name: str, **options: Any) -> BudgetPolicy:
    """Build a registered policy from its name and options (for the CLI and lm-eval args).

    Raises ValueError naming the policy and the options it accepts when one does not apply.
    """
    cls = _BUDGETS.get(name)
    if cls is None:
        raise ValueError(f"budget policy {name!r}; expected one of {budget_names()} "
                         f"(aliases: {sorted(set(_BUDGETS) - set(budget_names()))})")
    accepted = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"{unknown} do not apply to the {cls.name!r} budget; it accepts "
                         f"{accepted or 'no options'}")
    return cls(**options)


def _check_keep(keep: float, min_keep: float | None = None, max_keep: float = 1.0) -> float:
    count_limits(1000, keep, min_keep, max_keep)  # validates the fractions and their order
    return float(keep)


def _bound_rows(policy: Any, source: Callable[[], Any], n_layers: int, n_heads: int,
                layers: list[int]) -> tuple[Tensor, list[int]]:
    """A score policy's [L, H] scores and the patched layers that have scores, cached per shape.

    The cache lives on the (frozen) policy, so one policy object serves many forwards
    without re-reading its scores.
    """
    key = (n_layers, n_heads, tuple(layers))
    bound: dict[tuple[Any, ...], tuple[Tensor, list[int]]] = policy._bound
    if key not in bound:
        scores, scored = importance_scores(source(), n_layers, n_heads)
        rows = [i for i in layers if i in set(scored)]
        if not rows:
            raise ValueError(f"none of the patched layers {layers} have scores "
                             f"(scored layers: {scored})")
        bound[key] = (scores, rows)
    return bound[key]


@register_budget
@dataclass(frozen=True)
class DenseBudget(BudgetPolicy):
    """Every head keeps every key block: attention stays dense and nothing is installed."""

    name: ClassVar[str] = "dense"
    aliases: ClassVar[tuple[str, ...]] = ("standard",)
    sparse: ClassVar[bool] = False

    @property
    def keep(self) -> None:  # type: ignore[override]
        return None

    def counts(self, n_blocks: int, layers: list[int], n_layers: int, n_heads: int, *,
               group_size: int = 1, kv_groups: str = "query") -> Tensor:
        return torch.full((n_layers, n_heads), n_blocks, dtype=torch.long)


@register_budget
@dataclass(frozen=True)
class UniformBudget(BudgetPolicy):
    """Every patched head keeps ``ceil(keep * n_blocks)`` key blocks.

    Args:
        keep: fraction of key blocks kept per query block, in (0, 1].
    """

    keep: float = 0.3
    name: ClassVar[str] = "uniform"

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep", _check_keep(self.keep))

    def counts(self, n_blocks: int, layers: list[int], n_layers: int, n_heads: int, *,
               group_size: int = 1, kv_groups: str = "query") -> Tensor:
        out = torch.full((n_layers, n_heads), n_blocks, dtype=torch.long)
        out[layers] = head_budgets(None, n_blocks, self.keep, n_layers=len(layers),
                                   n_heads=n_heads)
        return out


@register_budget
@dataclass(frozen=True, eq=False)
class ImportanceBudget(BudgetPolicy):
    """Importance-adaptive budgets with the uniform total (the original method).

    Heads of the attributed layers share ``n_heads * ceil(keep * n_blocks)`` blocks per
    layer in proportion to a monotone map of their scores (:func:`head_budgets`); patched
    layers that the importance does not cover get the uniform budget.

    Args:
        importance: HeadImportance or [n_layers, n_heads] scores (positive = helps).
        keep: uniform fraction of key blocks, in (0, 1]; fixes the total.
        min_keep, max_keep: per-head fraction clamps (min_keep None = at least one block).
        increases_keep: False gives *fewer* blocks to important heads (a control).
        clip, strength: the score -> weight map, see :func:`importance_weights`.
    """

    importance: Any = field(repr=False)
    keep: float = 0.3
    min_keep: float | None = None
    max_keep: float = 1.0
    increases_keep: bool = True
    clip: tuple[float, float] = (5.0, 95.0)
    strength: float = 2.0 / 3.0
    name: ClassVar[str] = "adaptive"
    aliases: ClassVar[tuple[str, ...]] = ("importance",)

    def __post_init__(self) -> None:
        if self.importance is None:
            raise ValueError("the adaptive budget needs importance (a HeadImportance or "
                             "[n_layers, n_heads] scores)")
        object.__setattr__(self, "keep", _check_keep(self.keep, self.min_keep, self.max_keep))
        object.__setattr__(self, "max_keep", float(self.max_keep))
        object.__setattr__(self, "increases_keep", bool(self.increases_keep))
        object.__setattr__(self, "clip", tuple(float(c) for c in self.clip))
        object.__setattr__(self, "strength", float(self.strength))
        object.__setattr__(self, "_bound", {})

    def _rows(self, n_layers: int, n_heads: int, layers: list[int]) -> tuple[Tensor, list[int]]:
        return _bound_rows(self, lambda: self.importance, n_layers, n_heads, layers)

    def bind(self, n_layers: int, n_heads: int, layers: list[int]) -> None:
        self._rows(n_layers, n_heads, layers)

    def counts(self, n_blocks: int, layers: list[int], n_layers: int, n_heads: int, *,
               group_size: int = 1, kv_groups: str = "query") -> Tensor:
        scores, rows = self._rows(n_layers, n_heads, layers)
        kw = dict(min_keep=self.min_keep, max_keep=self.max_keep,
                  increases_keep=self.increases_keep, kv_groups=kv_groups,
                  group_size=group_size, clip=self.clip, strength=self.strength)
        out = torch.full((n_layers, n_heads), n_blocks, dtype=torch.long)
        out[layers] = head_budgets(None, n_blocks, self.keep, n_layers=len(layers),
                                   n_heads=n_heads, **kw)
        out[rows] = head_budgets(scores[rows], n_blocks, self.keep, **kw)
        return out



# ------------------------------------------------------------ weight-driven policies
def weighted_counts(weights: Tensor, n_blocks: int, keep: float, *,
                    min_keep: float | None = None, max_keep: float = 1.0,
                    tiebreak: Tensor | None = None) -> Tensor:
    """Per-head counts [L, H] proportional to non-negative ``weights``, with the uniform total.

    Heads of weight 0 get the minimum (``lo`` of :func:`count_limits`); if every weight is
    0 the budget is uniform. The total is exactly ``weights.numel() * ceil(keep * n_blocks)``
    (:func:`allocate`).
    """
    lo, u, hi = count_limits(n_blocks, keep, min_keep, max_keep)
    w = weights.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError("budget weights must be finite and non-negative")
    top = float(w.max())
    if top <= 0.0:
        return torch.full(w.shape, u, dtype=torch.long)
    # a weight of 0 becomes a tiny positive one: lam * w then clamps to lo
    w = torch.where(w > 0, w, torch.full_like(w, top * 1e-12))
    return allocate(w, w.numel() * u, lo, hi, tiebreak=tiebreak)


def sensitivity_weights(sensitivity: Tensor, power: float = 0.5) -> Tensor:
    """Budget weights from sparsity sensitivities: ``max(s, 0) ** power`` (float64).

    Why the square root (``power=0.5``): if head h loses about ``s_h * u / c_h`` when it
    keeps ``c_h`` of its key blocks (``s_h`` measured at the uniform count ``u``: loss
    falling like 1/c), minimising ``sum_h s_h / c_h`` at a fixed ``sum_h c_h`` gives
    ``c_h ∝ sqrt(s_h)`` (Lagrange). Heads that lose nothing (s <= 0) go to the minimum.
    """
    if not power > 0.0:
        raise ValueError(f"power={power}; expected > 0")
    return sensitivity.detach().to(torch.float64).clamp_min(0.0) ** float(power)


class _WeightedBudget(BudgetPolicy):
    """Shared machinery: per-head weights over the scored rows, uniform elsewhere."""

    keep: float
    min_keep: float | None
    max_keep: float

    @abstractmethod
    def _scores(self) -> Any:
        """The policy's per-head scores (anything :func:`importance_scores` reads)."""

    @abstractmethod
    def _weights(self, scores: Tensor) -> Tensor:
        """Positive per-head weights [rows, H]; budgets are split in proportion to them."""

    def _rows(self, n_layers: int, n_heads: int, layers: list[int]) -> tuple[Tensor, list[int]]:
        return _bound_rows(self, self._scores, n_layers, n_heads, layers)

    def bind(self, n_layers: int, n_heads: int, layers: list[int]) -> None:
        self._rows(n_layers, n_heads, layers)

    def counts(self, n_blocks: int, layers: list[int], n_layers: int, n_heads: int, *,
               group_size: int = 1, kv_groups: str = "query") -> Tensor:
        scores, rows = self._rows(n_layers, n_heads, layers)
        out = torch.full((n_layers, n_heads), n_blocks, dtype=torch.long)
        out[layers] = head_budgets(None, n_blocks, self.keep, n_layers=len(layers),
                                   n_heads=n_heads, min_keep=self.min_keep,
                                   max_keep=self.max_keep)
        s = scores[rows]
        w = self._weights(s)
        g = int(group_size)
        if kv_groups == "kv" and g > 1:
            if n_heads % g:
                raise ValueError(f"{n_heads} heads cannot form KV groups of {g}")
            w = w.view(len(rows), n_heads // g, g).mean(-1)
            s = s.view(len(rows), n_heads // g, g).mean(-1)
        c = weighted_counts(w, n_blocks, self.keep, min_keep=self.min_keep,
                            max_keep=self.max_keep, tiebreak=s)
        if kv_groups == "kv" and g > 1:
            c = c.repeat_interleave(g, dim=1)
        out[rows] = c
        return out

    def _init_common(self) -> None:
        object.__setattr__(self, "keep", _check_keep(self.keep, self.min_keep, self.max_keep))
        object.__setattr__(self, "max_keep", float(self.max_keep))
        object.__setattr__(self, "_bound", {})


@register_budget
@dataclass(frozen=True, eq=False)
class SensitivityBudget(_WeightedBudget):
    """Sensitivity-adaptive budgets with the uniform total.

    The scores are *sparsity sensitivities* (:func:`headig.sparsity_sensitivity`: how much
    J drops when the head is made sparse, positive = loses), ideally measured at this
    ``keep``. Weights ``max(s, 0) ** power`` (:func:`sensitivity_weights`; the default
    square root minimises a 1/c loss model): heads that lose nothing keep the minimum, the
    blocks they save go to the sensitive heads, and the total stays
    ``n_heads * ceil(keep * n_blocks)`` per patched layer, exactly as uniform.

    The floor: by default no head keeps less than half the uniform fraction
    (``min_keep = keep / 2``). A sensitivity is measured near the uniform budget (with all
    heads sparse) and says nothing about starving a head far below it; measured on the
    embedded model, letting heads of ~0 sensitivity drop to one block multiplied the
    held-out loss (docs/validation.md, "Sparse budget policies").

    Args:
        sensitivity: HeadImportance / Attribution or [n_layers, n_heads] scores.
        keep: uniform fraction of key blocks, in (0, 1]; fixes the total.
        min_keep: smallest per-head fraction (None = ``keep / 2``; 0 = one block).
        max_keep: largest per-head fraction.
        power: exponent of the weight map (1 = proportional, 0.5 = square root).
    """

    sensitivity: Any = field(default=None, repr=False)
    keep: float = 0.3
    min_keep: float | None = None
    max_keep: float = 1.0
    power: float = 0.5
    name: ClassVar[str] = "sensitivity"

    def __post_init__(self) -> None:
        if self.sensitivity is None:
            raise ValueError("the sensitivity budget needs sparsity-sensitivity scores: "
                             "expected one of a HeadImportance, an Attribution or "
                             "[n_layers, n_heads] scores (headig.sparsity_sensitivity)")
        if not float(self.power) > 0.0:
            raise ValueError(f"power={self.power}; expected > 0")
        object.__setattr__(self, "power", float(self.power))
        if self.min_keep is None:
            object.__setattr__(self, "min_keep", float(self.keep) / 2.0)
        self._init_common()

    def _scores(self) -> Any:
        return self.sensitivity

    def _weights(self, scores: Tensor) -> Tensor:
        return sensitivity_weights(scores, self.power)


@register_budget
@dataclass(frozen=True, eq=False)
class WeightBudget(_WeightedBudget):
    """Budgets proportional to explicit non-negative per-head weights, uniform total.

    For allocations found by search (the greedy oracle of
    :func:`headig.validation.sparse.greedy_oracle`) or written by hand.

    Args:
        weights: [n_layers, n_heads] non-negative weights (0 = the minimum).
        keep, min_keep, max_keep: as for :class:`SensitivityBudget`.
    """

    weights: Any = field(default=None, repr=False)
    keep: float = 0.3
    min_keep: float | None = None
    max_keep: float = 1.0
    name: ClassVar[str] = "weights"

    def __post_init__(self) -> None:
        if self.weights is None:
            raise ValueError("the weights budget needs weights [n_layers, n_heads]")
        self._init_common()

    def _scores(self) -> Any:
        return self.weights

    def _weights(self, scores: Tensor) -> Tensor:
        return scores
