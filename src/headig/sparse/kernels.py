"""Block-sparse attention kernels over a :class:`~headig.sparse.patterns.BlockPattern`.

- ``"flex"``: PyTorch's ``flex_attention``, compiled once with dynamic shapes and run one
  batch row at a time, so new sequence lengths and batch sizes reuse the compiled kernel
  (one graph per dtype, GQA and with/without key padding). The block structure comes only from the BlockMask indices; the
  mask function is used only for key padding. Uncompiled flex_attention ignores the
  indices, so it is never used.
- ``"gather"``: pure PyTorch fallback: for each group of heads with the same budget, gather
  the kept key/value blocks of a chunk of query blocks and run fused SDPA on them. Works
  wherever SDPA does; slower than flex but still sub-dense at long lengths.
- ``"dense_mask"``: SDPA with the pattern expanded to a token mask; the reference (never
  faster than dense), also used for attention masks that are not key-padding masks.

All kernels agree with dense attention restricted to the pattern; a query row that can see
no key at all outputs 0.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from headig.sparse.patterns import BlockPattern, _pad_tokens

log = logging.getLogger("headig.sparse")

KERNELS = ("auto", "flex", "gather", "dense_mask")
_GATHER_CHUNK_ELEMENTS = 1 << 23  # gathered key elements per chunk (32 MiB in float32)

_compiled: Callable | None = None
_compile_lock = threading.Lock()
_flex_broken: dict[str, str] = {}  # device type -> why compiled flex failed there


def _expand_kv(x: Tensor, group: int) -> Tensor:
    return x if group == 1 else x.repeat_interleave(group, dim=1)


def flex_available(device: torch.device | str) -> bool:
    """False once compiled flex_attention has failed on this device type in this process."""
    dev = torch.device(device).type
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return dev not in _flex_broken


def mark_flex_broken(device: torch.device | str, reason: str) -> None:
    _flex_broken[torch.device(device).type] = reason


def _compiled_flex() -> Callable:
    global _compiled
    with _compile_lock:
        if _compiled is None:
            from torch.nn.attention.flex_attention import flex_attention

            log.info("compiling flex_attention for block-sparse attention (once per process; "
                     "torch caches the kernel on disk)")
            _compiled = torch.compile(flex_attention, dynamic=True)
        return _compiled


def flex_sparse(q: Tensor, k: Tensor, v: Tensor, pattern: BlockPattern,
                key_valid: Tensor | None = None) -> Tensor:
    """Compiled flex_attention over the pattern (raises if compilation fails).

    Batch rows run one at a time: PyTorch compiles flex_attention with static batch and
    head sizes, so one row per call keeps a single compiled graph for every batch size and
    length (per dtype, GQA and key-padding variant). The compiled function never silently
    falls back to eager flex_attention (which would ignore the block pattern): hitting the
    recompile limit raises instead.
    """
    from torch.nn.attention.flex_attention import BlockMask

    b, _, t, _ = q.shape
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    gqa = q.shape[1] != k.shape[1]
    fn = _compiled_flex()
    outs = []
    for row in range(b):
        if key_valid is None:
            mask_mod = None
        else:
            kvalid = key_valid[row:row + 1].contiguous()

            def mask_mod(b, h, q_idx, kv_idx, kvalid=kvalid):
                return kvalid[b, kv_idx]

        block_mask = BlockMask.from_kv_blocks(
            pattern.counts[row:row + 1], pattern.indices[row:row + 1],
            BLOCK_SIZE=pattern.block_size, mask_mod=mask_mod, seq_lengths=(t, t),
            compute_q_blocks=grad)
        with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
            outs.append(fn(q[row:row + 1].contiguous(), k[row:row + 1].contiguous(),
                           v[row:row + 1].contiguous(), block_mask=block_mask, enable_gqa=gqa))
    return outs[0] if b == 1 else torch.cat(outs, dim=0)


def gather_sparse(q: Tensor, k: Tensor, v: Tensor, pattern: BlockPattern,
                  key_valid: Tensor | None = None) -> Tensor:
    """Block-sparse attention by gathering kept key/value blocks and running SDPA on them."""
    b, h, t, d = q.shape
    kv = k.shape[1]
    g = h // kv
    bs = pattern.block_size
    nb = pattern.n_blocks
    tp = nb * bs
    if key_valid is None and tp != t:
        key_valid = torch.ones(b, t, dtype=torch.bool, device=q.device)
    qb = _pad_tokens(q, tp, 2).reshape(b, h, nb, bs, d)
    kb = _pad_tokens(k, tp, 2).reshape(b, kv, nb, bs, d)
    vb = _pad_tokens(v, tp, 2).reshape(b, kv, nb, bs, d)
    kvb = None
    if key_valid is not None:
        kvb = _pad_tokens(key_valid.to(torch.uint8), tp, 1).bool().view(b, nb, bs)
    out = torch.zeros(b, h, nb, bs, d, device=q.device, dtype=q.dtype)
    head_counts = pattern.head_counts.to(q.device)
    bi = torch.arange(b, device=q.device).view(b, 1, 1, 1)
    for c in torch.unique(head_counts).tolist():
        heads = torch.nonzero(head_counts == c).flatten()
        n_h = heads.numel()
        idx = pattern.indices[:, heads, :, :c].long()  # [B, G, nb, c]
        kv_heads = (heads // g).view(1, n_h, 1, 1)
        per = max(1, _GATHER_CHUNK_ELEMENTS // max(1, b * n_h * c * bs * d))
        for s in range(0, nb, per):
            e = min(nb, s + per)
            ii = idx[:, :, s:e]
            ks = kb[bi, kv_heads, ii].reshape(b * n_h * (e - s), 1, c * bs, d)
            vs = vb[bi, kv_heads, ii].reshape(b * n_h * (e - s), 1, c * bs, d)
            qs = qb[:, heads, s:e].reshape(b * n_h * (e - s), 1, bs, d)
            mask = None
            if kvb is not None:
                mask = kvb[bi, ii].reshape(b * n_h * (e - s), 1, 1, c * bs)
            o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask)
            if mask is not None:
                o = o.masked_fill(~mask.any(-1, keepdim=True), 0.0)
            out[:, heads, s:e] = o.view(b, n_h, e - s, bs, d)
    return out.view(b, h, tp, d)[:, :, :t]


def dense_mask_sparse(q: Tensor, k: Tensor, v: Tensor, pattern: BlockPattern,
                      key_valid: Tensor | None = None, attn_mask: Tensor | None = None) -> Tensor:
    """SDPA with the pattern as a token mask (and any extra bool mask [B, 1, T|1, T])."""
    g = q.shape[1] // k.shape[1]
    m = pattern.dense_mask()
    if key_valid is not None:
        m = m & key_valid[:, None, None, :]
    if attn_mask is not None:
        m = m & attn_mask
    out = F.scaled_dot_product_attention(q, _expand_kv(k, g), _expand_kv(v, g), attn_mask=m)
    return out.masked_fill(~m.any(-1, keepdim=True), 0.0)


def run_kernel(name: str, q: Tensor, k: Tensor, v: Tensor, pattern: BlockPattern,
               key_valid: Tensor | None = None) -> Tensor:
    """Dispatch to a named kernel ("flex", "gather" or "dense_mask")."""
    if name == "flex":
        return flex_sparse(q, k, v, pattern, key_valid)
    if name == "gather":
        return gather_sparse(q, k, v, pattern, key_valid)
    if name == "dense_mask":
        return dense_mask_sparse(q, k, v, pattern, key_valid)
    raise ValueError(f"kernel={name!r}; expected one of {list(KERNELS[1:])}")
