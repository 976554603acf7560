"""Per-head gates on the attention output, and head masking built on the same hook.

A forward pre-hook on each layer's attention output projection views its input as
[B, T, H, head_dim] and scales query head h by its gate. Gate 1 is the identity (bit for
bit), gate 0 is zero-ablation of the head, and fractional gates are what Integrated
Gradients integrates over. Under GQA the gate is per *query* head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from headig.models.family import Family, family_of


def normalize_layers(layers: Sequence[int] | range | None, n_layers: int) -> list[int]:
    """Sorted, de-duplicated absolute layer indices (negative counts from the end)."""
    if layers is None:
        return list(range(n_layers))
    out = []
    for raw in layers:
        i = int(raw)
        j = i + n_layers if i < 0 else i
        if not 0 <= j < n_layers:
            raise ValueError(f"layer {i} out of range for a model with {n_layers} layers")
        out.append(j)
    if not out:
        raise ValueError("layers is empty; pass None for all layers or a non-empty list")
    return sorted(set(out))


def layer_range(start: int = 0, end: int = -1, n_layers: int | None = None) -> list[int]:
    """Inclusive layer range as in the original ``--layer_start/--layer_end`` flags (-1 = last)."""
    if n_layers is None:
        raise ValueError("layer_range needs n_layers")
    s = start + n_layers if start < 0 else start
    e = end + n_layers if end < 0 else end
    if not 0 <= s <= e < n_layers:
        raise ValueError(
            f"invalid layer range {start}..{end} (inclusive) for {n_layers} layers; "
            "expected 0 <= start <= end < n_layers, -1 meaning the last layer"
        )
    return list(range(s, e + 1))


class HeadGate:
    """Multiply each query head's attention output by a gate, before the output projection.

    Use as a context manager (hooks always removed, also on exceptions), or call
    :meth:`apply` / :meth:`remove` for long-lived use.

    Args:
        model: a native headig model or an official LLaDA/Dream model.
        gates: [L', H] (one gate per head) or [B, L', H] (one set per batch row), where
            L' = len(layers). Any float dtype; the product is computed in float32 and
            cast back, and gradients flow to ``gates``. None = all ones.
        layers: the gated layers (default all); other layers are untouched.

    Example:
        >>> alpha = torch.ones(L, H, requires_grad=True)
        >>> with HeadGate(model, alpha):
        ...     loss = model(ids).logits.sum()
        >>> loss.backward()  # alpha.grad holds d loss / d gate
    """

    def __init__(self, model: nn.Module, gates: Tensor | None = None, *,
                 layers: Sequence[int] | None = None) -> None:
        self.model = model
        self.family: Family = family_of(model)
        self.layers = normalize_layers(layers, self.family.n_layers)
        self._slot = {layer: i for i, layer in enumerate(self.layers)}
        self._handles: list[RemovableHandle] = []
        self.gates = self._check(gates) if gates is not None else torch.ones(
            len(self.layers), self.family.n_heads)

    def _check(self, gates: Tensor) -> Tensor:
        if not isinstance(gates, Tensor) or not gates.is_floating_point():
            raise TypeError(f"gates must be a floating-point tensor; got {type(gates).__name__}"
                            + (f" of dtype {gates.dtype}" if isinstance(gates, Tensor) else ""))
        expected = (len(self.layers), self.family.n_heads)
        if gates.dim() not in (2, 3) or tuple(gates.shape[-2:]) != expected:
            raise ValueError(
                f"gates have shape {tuple(gates.shape)}; expected [L, H] = {list(expected)} or "
                f"[B, L, H] = [B, {expected[0]}, {expected[1]}] (L = number of gated layers)"
            )
        return gates

    def set_gates(self, gates: Tensor) -> None:
        """Replace the gates without re-registering hooks."""
        self.gates = self._check(gates)

    def _hook(self, layer: int):
        slot, n_heads, head_dim = self._slot[layer], self.family.n_heads, self.family.head_dim

        def pre_hook(module: nn.Module, args: tuple[Any, ...]):
            x = args[0]
            gates = self.gates
            g = gates[slot] if gates.dim() == 2 else gates[:, slot]
            if gates.dim() == 3 and gates.shape[0] != x.shape[0]:
                raise ValueError(
                    f"per-row gates have batch size {gates.shape[0]} but the model input has "
                    f"batch size {x.shape[0]}; expected gates [B, L, H] with the same B"
                )
            g = g.to(device=x.device, dtype=torch.float32)
            shape = x.shape
            heads = x.reshape(*shape[:-1], n_heads, head_dim)
            if g.dim() == 1:
                scale = g[:, None]
            else:  # [B, H] -> broadcast over every middle dimension
                scale = g.reshape(g.shape[0], *([1] * (heads.dim() - 3)), n_heads, 1)
            # type promotion computes in float32 while autograd keeps only the original
            # (possibly bf16) activation for the gate gradient, not a float32 copy
            gated = (heads * scale).to(x.dtype)
            return (gated.reshape(shape), *args[1:])

        return pre_hook

    def apply(self) -> HeadGate:
        if self._handles:
            return self
        try:
            for layer in self.layers:
                module = self.family.out_proj(self.model, layer)
                self._handles.append(module.register_forward_pre_hook(self._hook(layer)))
        except Exception:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def __enter__(self) -> HeadGate:
        return self.apply()

    def __exit__(self, *exc: object) -> None:
        self.remove()


Which = Literal["most", "least", "random"]
_WHICH = ("most", "least", "random")
_BY = ("signed", "abs")


def _scores_and_layers(scores: Any) -> tuple[Tensor, list[int] | None]:
    if hasattr(scores, "scores") and hasattr(scores, "layers"):  # a HeadImportance
        return torch.as_tensor(scores.scores), list(scores.layers)
    return torch.as_tensor(scores), None


def select_heads(scores: Any, which: str = "most", *, k: int | None = None,
                 k_frac: float | None = None, layers: Sequence[int] | None = None,
                 seed: int = 1234, by: str = "signed") -> Tensor:
    """Choose heads to remove; returns a bool keep mask [L, H] (False = removed).

    Selection is global over the chosen layers: ``most`` removes the k highest scores
    (positive = helps, so the most helpful heads), ``least`` the k lowest, ``random`` k
    heads drawn with ``seed``. ``by="abs"`` ranks by |score|, which separates the arms
    when large negative scores mark heads that matter as much as large positive ones.
    Ties are broken by (layer, head) order so the choice is deterministic.
    """
    if which not in _WHICH:
        raise ValueError(f"which={which!r}; expected one of {list(_WHICH)}")
    if by not in _BY:
        raise ValueError(f"by={by!r}; expected one of {list(_BY)}")
    s, attributed = _scores_and_layers(scores)
    if s.dim() != 2:
        raise ValueError(f"scores must be [L, H]; got shape {tuple(s.shape)}")
    n_layers, n_heads = s.shape
    chosen = normalize_layers(layers if layers is not None else attributed, n_layers)
    if attributed is not None and not set(chosen) <= set(attributed):
        raise ValueError(f"layers {sorted(set(chosen) - set(attributed))} were not attributed "
                         f"in this importance file (attributed: {attributed})")
    if (k is None) == (k_frac is None):
        raise ValueError("pass exactly one of k (a head count) or k_frac (a fraction in (0, 1))")
    sub = s[chosen].to(torch.float64)
    if not torch.isfinite(sub).all():
        raise ValueError("scores contain NaN or inf in the selected layers")
    n = sub.numel()
    if k_frac is not None:
        if not 0.0 < float(k_frac) < 1.0:
            raise ValueError(f"k_frac={k_frac}; expected a fraction in (0, 1)")
        k = int(round(float(k_frac) * n))
        if k == 0:
            raise ValueError(f"k_frac={k_frac} of {n} heads rounds to 0 heads; use a larger k_frac")
    assert k is not None
    if isinstance(k, bool) or int(k) != k or not 0 <= int(k) < n:
        raise ValueError(f"k={k}; expected an integer with 0 <= k < {n} (heads in the chosen layers)")
    k = int(k)
    flat = sub.abs().flatten() if by == "abs" else sub.flatten()
    if which == "random":
        gen = torch.Generator().manual_seed(int(seed))
        removed = torch.randperm(n, generator=gen)[:k]
    else:
        # stable sorts: among equal scores the earlier (layer, head) is chosen first
        key = -flat if which == "most" else flat
        removed = torch.sort(key, stable=True).indices[:k]
    keep = torch.ones(n_layers, n_heads, dtype=torch.bool)
    rows = torch.tensor(chosen)
    sub_keep = torch.ones(n, dtype=torch.bool)
    sub_keep[removed] = False
    keep[rows] = sub_keep.view(len(chosen), n_heads)
    return keep


@dataclass
class HeadMask:
    """Remove (zero-ablate) heads for evaluation: a context manager over :class:`HeadGate`.

    Build it from an explicit keep mask, or from scores with :meth:`from_scores`.

    Example:
        >>> with HeadMask.from_scores(model, importance, which="most", k_frac=0.05):
        ...     out = generate(model, ids, ...)
    """

    model: nn.Module
    keep: Tensor
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        family = family_of(self.model)
        expected = (family.n_layers, family.n_heads)
        keep = torch.as_tensor(self.keep)
        if keep.dtype != torch.bool or tuple(keep.shape) != expected:
            raise ValueError(f"keep must be a bool tensor of shape [L, H] = {list(expected)}; "
                             f"got {keep.dtype} {tuple(keep.shape)}")
        self.keep = keep
        self._gate = HeadGate(self.model, keep.to(torch.float32))

    @classmethod
    def from_scores(cls, model: nn.Module, scores: Any, which: str = "most", *,
                    k: int | None = None, k_frac: float | None = None,
                    layers: Sequence[int] | None = None, seed: int = 1234,
                    by: str = "signed") -> HeadMask:
        family = family_of(model)
        s, _ = _scores_and_layers(scores)
        if tuple(s.shape) != (family.n_layers, family.n_heads):
            raise ValueError(f"scores have shape {tuple(s.shape)}; the model has "
                             f"[L, H] = [{family.n_layers}, {family.n_heads}]")
        keep = select_heads(scores, which, k=k, k_frac=k_frac, layers=layers, seed=seed, by=by)
        info = {"which": which, "k": int((~keep).sum()), "k_frac": k_frac, "seed": seed,
                "by": by, "layers": None if layers is None else list(layers)}
        return cls(model, keep, info)

    @property
    def removed(self) -> list[tuple[int, int]]:
        """(layer, head) pairs that are masked."""
        return [tuple(x) for x in (~self.keep).nonzero().tolist()]

    def apply(self) -> HeadMask:
        self._gate.apply()
        return self

    def remove(self) -> None:
        self._gate.remove()

    def __enter__(self) -> HeadMask:
        return self.apply()

    def __exit__(self, *exc: object) -> None:
        self.remove()
