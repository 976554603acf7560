"""Per-head gates on the attention output, and head masking built on the same hook.

Each query head's attention output is scaled by its gate before the output projection.
Gate 1 is the identity (bit for bit), gate 0 is zero-ablation of the head, and fractional
gates are what Integrated Gradients integrates over. Under GQA the gate is per *query*
head.

Where the gate is applied: on a native headig model, a forward hook on the named hook
point ``layers.{l}.attn.hook_head_out`` ([B, T, H, D]); on an official remote-code model,
a forward pre-hook on the family table's output projection, whose input is viewed as
[B, T, H, D]. Both compute the same float32 product on the same contiguous layout, so the
two routes give bit-identical logits and gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from headig.interventions.base import Intervention
from headig.interventions.layers import LayerSpec, normalize_layers
from headig.models.family import Family, family_of

Site = Literal["auto", "hook_head_out", "out_proj"]
SITES = ("auto", "hook_head_out", "out_proj")


def _scale_heads(heads: Tensor, gates: Tensor, slot: int, dtype: torch.dtype) -> Tensor:
    """``heads`` [B, ..., H, D] (contiguous) times the slot's gates, computed in float32."""
    g = gates[slot] if gates.dim() == 2 else gates[:, slot]
    if gates.dim() == 3 and gates.shape[0] != heads.shape[0]:
        raise ValueError(
            f"per-row gates have batch size {gates.shape[0]} but the model input has "
            f"batch size {heads.shape[0]}; expected gates [B, L, H] with the same B"
        )
    g = g.to(device=heads.device, dtype=torch.float32)
    n_heads = heads.shape[-2]
    if g.dim() == 1:
        scale = g[:, None]
    else:  # [B, H] -> broadcast over every middle dimension
        scale = g.reshape(g.shape[0], *([1] * (heads.dim() - 3)), n_heads, 1)
    # type promotion computes in float32 while autograd keeps only the original
    # (possibly bf16) activation for the gate gradient, not a float32 copy
    return (heads * scale).to(dtype)


class HeadGate(Intervention):
    """Multiply each query head's attention output by a gate, before the output projection.

    Use as a context manager (hooks always removed, also on exceptions), or call
    :meth:`apply` / :meth:`remove` for long-lived use.

    Args:
        model: a native headig model or an official LLaDA/Dream model.
        gates: [L', H] (one gate per head) or [B, L', H] (one set per batch row), where
            L' = len(layers) and row i belongs to the i-th layer. Any float dtype, finite;
            the product is computed in float32 and cast back, and gradients flow to
            ``gates``. None = all ones.
        layers: the gated layers, increasing (default all); other layers are untouched.
        site: "auto" (the named hook point on native models, the output projection's
            input otherwise), or force "hook_head_out" / "out_proj".

    Example:
        >>> alpha = torch.ones(L, H, requires_grad=True)
        >>> with HeadGate(model, alpha):
        ...     loss = model(ids).logits.sum()
        >>> loss.backward()  # alpha.grad holds d loss / d gate
    """

    def __init__(self, model: nn.Module, gates: Tensor | None = None, *,
                 layers: LayerSpec = None, site: Site = "auto") -> None:
        self.model = model
        self.family: Family = family_of(model)
        self.layers = normalize_layers(layers, self.family.n_layers, strict=True)
        if site not in SITES:
            raise ValueError(f"site={site!r}; expected one of {list(SITES)}")
        if site == "hook_head_out" and not self.family.native:
            raise ValueError("site='hook_head_out' needs a native headig model "
                             "(headig.load_model); official models are gated at 'out_proj'")
        self.site = ("hook_head_out" if self.family.native else "out_proj") \
            if site == "auto" else site
        self._slot = {layer: i for i, layer in enumerate(self.layers)}
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
        finite = torch.isfinite(gates.detach())
        if not bool(finite.all()):
            bad = (~finite).nonzero()[0].tolist()
            raise ValueError(f"gates contain NaN or inf (first at index {bad}, value "
                             f"{gates.detach()[tuple(bad)].item()}); expected finite gates, "
                             "1 = keep the head, 0 = ablate it")
        return gates

    def set_gates(self, gates: Tensor) -> None:
        """Replace the gates without re-registering hooks."""
        self.gates = self._check(gates)

    def _head_out_hook(self, layer: int) -> Callable[..., Tensor]:
        slot = self._slot[layer]

        def hook(module: nn.Module, args: tuple[Any, ...], out: Tensor) -> Tensor:
            # contiguous first: the same layout (hence the same gradient reductions) as
            # the output projection's input
            return _scale_heads(out.contiguous(), self.gates, slot, out.dtype)

        return hook

    def _out_proj_hook(self, layer: int) -> Callable[..., tuple[Any, ...]]:
        slot, n_heads, head_dim = self._slot[layer], self.family.n_heads, self.family.head_dim

        def pre_hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            x = args[0]
            shape = x.shape
            heads = x.reshape(*shape[:-1], n_heads, head_dim)
            return (_scale_heads(heads, self.gates, slot, x.dtype).reshape(shape), *args[1:])

        return pre_hook

    def _install(self) -> None:
        for layer in self.layers:
            if self.site == "hook_head_out":
                point = self.family.hook_point(self.model, layer)
                self._on_remove(point.register_forward_hook(self._head_out_hook(layer)))
            else:
                module = self.family.out_proj(self.model, layer)
                self._on_remove(module.register_forward_pre_hook(self._out_proj_hook(layer)))

    def __repr__(self) -> str:
        return (f"HeadGate(layers={self.layers}, gates={tuple(self.gates.shape)}, "
                f"site={self.site!r}, active={self.active})")


Which = Literal["most", "least", "random"]
_WHICH = ("most", "least", "random")
_BY = ("signed", "abs")


def _scores_and_layers(scores: Any) -> tuple[Tensor, list[int] | None]:
    if hasattr(scores, "scores") and hasattr(scores, "layers"):  # a HeadImportance
        return torch.as_tensor(scores.scores), list(scores.layers)
    return torch.as_tensor(scores), None


def select_heads(scores: Any, which: str = "most", *, k: int | None = None,
                 k_frac: float | None = None, layers: LayerSpec = None,
                 seed: int = 1234, by: str = "signed") -> Tensor:
    """Choose heads to remove; returns a bool mask of kept heads [L, H] (False = removed).

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
    kept = torch.ones(n_layers, n_heads, dtype=torch.bool)
    rows = torch.tensor(chosen)
    sub_kept = torch.ones(n, dtype=torch.bool)
    sub_kept[removed] = False
    kept[rows] = sub_kept.view(len(chosen), n_heads)
    return kept


@dataclass(init=False, eq=False)
class HeadMask(Intervention):
    """Remove (zero-ablate) heads for evaluation: an intervention over :class:`HeadGate`.

    Build it from a bool mask of kept heads [L, H] (False = removed), or from scores with
    :meth:`from_scores`. ``keep=`` is the older name of ``kept_heads`` and still accepted.

    Example:
        >>> with HeadMask.from_scores(model, importance, which="most", k_frac=0.05):
        ...     out = generate(model, ids, ...)
    """

    model: nn.Module
    kept_heads: Tensor
    info: dict[str, Any] = field(default_factory=dict)

    def __init__(self, model: nn.Module, kept_heads: Tensor | None = None,
                 info: dict[str, Any] | None = None, *, keep: Tensor | None = None) -> None:
        if (kept_heads is None) == (keep is None):
            raise TypeError("HeadMask needs the bool mask of kept heads [L, H] once: "
                            "kept_heads=... (or its older name keep=...)")
        mask = kept_heads if kept_heads is not None else keep
        family = family_of(model)
        expected = (family.n_layers, family.n_heads)
        mask = torch.as_tensor(mask)
        if mask.dtype != torch.bool or tuple(mask.shape) != expected:
            raise ValueError(f"kept_heads must be a bool tensor of shape [L, H] = "
                             f"{list(expected)}; got {mask.dtype} {tuple(mask.shape)}")
        self.model = model
        self.kept_heads = mask
        self.info = {} if info is None else info
        self._gate = HeadGate(model, mask.to(torch.float32))

    @property
    def keep(self) -> Tensor:
        """Older name of :attr:`kept_heads` (bool [L, H], True = kept)."""
        return self.kept_heads

    @classmethod
    def from_scores(cls, model: nn.Module, scores: Any, which: str = "most", *,
                    k: int | None = None, k_frac: float | None = None,
                    layers: LayerSpec = None, seed: int = 1234,
                    by: str = "signed") -> HeadMask:
        family = family_of(model)
        s, _ = _scores_and_layers(scores)
        if tuple(s.shape) != (family.n_layers, family.n_heads):
            raise ValueError(f"scores have shape {tuple(s.shape)}; the model has "
                             f"[L, H] = [{family.n_layers}, {family.n_heads}]")
        kept = select_heads(scores, which, k=k, k_frac=k_frac, layers=layers, seed=seed, by=by)
        info = {"which": which, "k": int((~kept).sum()), "k_frac": k_frac, "seed": seed,
                "by": by, "layers": layers if layers is None or isinstance(layers, (int, str))
                else list(layers)}
        return cls(model, kept, info)

    @property
    def removed(self) -> list[tuple[int, int]]:
        """(layer, head) pairs that are masked."""
        return [tuple(x) for x in (~self.kept_heads).nonzero().tolist()]

    def _install(self) -> None:
        self._gate.apply()
        self._on_remove(self._gate.remove)
