"""SparsityGate: per-head interpolation between dense and block-sparse attention.

HeadIG's usual gate scales a head's output between "removed" (0) and "as is" (1). To ask
how much a head *suffers from seeing fewer keys*, the gate here interpolates instead
between the head's block-sparse output (gate 0) and its dense output (gate 1)::

    out_h = g_h * dense_h + (1 - g_h) * sparse_h

``sparse_h`` is exactly what :class:`~headig.sparse.SparseAttentionPatch` with a uniform
budget at ``keep`` computes for a one-shot forward (same pattern, chosen on the fly from
the forward's own queries and keys, same kernel), so gate 0 everywhere reproduces the
patch's logits and gate 1 everywhere the dense model's, bit for bit (in this convex form
``1·x + 0·y`` is exactly ``x`` for finite ``y``). The kernel must support autograd: the
``gather`` kernel does everywhere.

Frozen patterns: the pattern is a top-k of block scores, piecewise constant in whatever
feeds the layer, so choosing it afresh at every gate point would make J jump along the
path wherever a choice flips, which no quadrature can integrate. Each forward therefore first runs the same
batch once with every gate at 0, without gradients — exactly the patch's sparse forward —
records each layer's pattern, and then uses those patterns at its own gates. J(g) is then
smooth, gate 0 is still the patch's forward bit for bit, and the cost is one extra
gradient-free forward per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from headig.interventions.base import Intervention
from headig.sparse.budgets import UniformBudget
from headig.sparse.kernels import dense_mask_sparse
from headig.sparse.patch import SparseAttentionPatch, split_mask
from headig.sparse.patterns import BlockPattern

__all__ = ["SparsityGate", "sparsity_gate_site"]


class SparsityGate(Intervention):
    """Mix each gated head's dense and block-sparse attention output with a per-head gate.

    Args:
        model: a native headig model (:func:`headig.load_model`).
        keep: uniform fraction of key blocks the sparse side keeps, in (0, 1].
        layers: gated layers (increasing); other layers stay dense.
        gates: [L', H] or [B, L', H]; None = all ones (dense).
        block_size, kernel, estimate, keep_diagonal, kv_groups: as for
            :class:`SparseAttentionPatch` (``min_seq_len`` is 0: every sequence is sparse).

    Use ``set_gates`` between forwards (the attribution engine does, per chunk).
    """

    def __init__(self, model: nn.Module, keep: float, *, layers: Sequence[int],
                 gates: Tensor | None = None, block_size: int = 128, kernel: str = "gather",
                 estimate: str = "auto", keep_diagonal: bool = True,
                 kv_groups: str = "query") -> None:
        if kernel == "auto":
            kernel = "gather"  # autograd everywhere; flex has no CPU backward
        self.model = model
        self.layers = [int(i) for i in layers]
        self.sparse = SparseAttentionPatch(
            model, UniformBudget(keep), block_size=block_size, kernel=kernel,
            layers=self.layers, min_seq_len=0, estimate=estimate,
            keep_diagonal=keep_diagonal, kv_groups=kv_groups)
        self.keep = float(keep)
        self._slot = {layer: i for i, layer in enumerate(self.layers)}
        n_heads = self.sparse.n_heads
        self.gates = torch.ones(len(self.layers), n_heads) if gates is None else gates
        self.set_gates(self.gates)
        self._recording = False
        self._patterns: dict[int, BlockPattern] = {}

    def set_gates(self, gates: Tensor) -> None:
        """Replace the gates ([L', H] or [B, L', H], finite floats)."""
        shape = (len(self.layers), self.sparse.n_heads)
        if not isinstance(gates, Tensor) or not gates.is_floating_point() \
                or gates.dim() not in (2, 3) or tuple(gates.shape[-2:]) != shape:
            raise ValueError(f"gates must be a float tensor [L', H] or [B, L', H] with "
                             f"[L', H] = {list(shape)}")
        if not bool(torch.isfinite(gates.detach()).all()):
            raise ValueError("gates contain NaN or inf")
        self.gates = gates

    def _mix(self, slot: int, dense: Tensor, sparse: Tensor) -> Tensor:
        g = self.gates[slot] if self.gates.dim() == 2 else self.gates[:, slot]
        g = g.to(device=dense.device, dtype=torch.float32)
        # attention outputs are [B, H, T, D]
        g = g[None, :, None, None] if g.dim() == 1 else g[:, :, None, None]
        if g.shape[0] not in (1, dense.shape[0]):
            raise ValueError(f"per-row gates have batch size {g.shape[0]}; the input has "
                             f"{dense.shape[0]} rows")
        return (g * dense + (1.0 - g) * sparse).to(dense.dtype)

    def _make_fn(self, layer: int, prev: Any):
        slot = self._slot[layer]

        def mixed_attn_fn(q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | None,
                          module: nn.Module) -> Tensor:
            if self._recording:  # the all-sparse reference forward: choose and remember
                out = self.sparse._forward(layer, prev, q, k, v, mask, module)
                self._patterns[layer] = self.sparse.last_patterns[layer]
                return out
            dense = prev(q, k, v, mask=mask, module=module)
            pattern = self._patterns.get(layer)
            if pattern is None or not pattern.matches(q.shape[0], q.shape[1], q.shape[2],
                                                      q.device):
                raise RuntimeError("SparsityGate: no recorded pattern for this forward "
                                   "(call the model itself, not a single layer)")
            key_valid, other = split_mask(mask, q.shape[0], q.shape[2])
            if other is not None:
                sparse = dense_mask_sparse(q, k, v, pattern, None, other)
            else:
                sparse = self.sparse._run(q, k, v, pattern, key_valid)
            return self._mix(slot, dense, sparse)

        return mixed_attn_fn

    def _record(self, module: nn.Module, args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> None:
        """Model pre-hook: run the batch all-sparse (no grad) and keep each layer's pattern."""
        if self._recording:
            return
        self._patterns.clear()
        self._recording = True
        try:
            with torch.no_grad():
                module(*args, **kwargs)
        finally:
            self._recording = False

    def _install(self) -> None:
        self._on_remove(self.model.register_forward_pre_hook(self._record, with_kwargs=True))
        for i in self.layers:
            self._swap_attention_fn(self.model.layers[i].attn,
                                    lambda prev, i=i: self._make_fn(i, prev))

    def __repr__(self) -> str:
        return (f"SparsityGate(keep={self.keep}, layers={self.layers}, "
                f"block_size={self.sparse.block_size}, kernel={self.sparse.kernel!r})")


def sparsity_gate_site(keep: float, **options: Any):
    """A gate-site factory for :func:`headig.attribution.engine.evaluate_points`."""

    def factory(model: nn.Module, layers: Sequence[int]) -> SparsityGate:
        return SparsityGate(model, keep, layers=layers, **options)

    return factory
