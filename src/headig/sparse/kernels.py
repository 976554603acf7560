"""Block-sparse attention kernels over a :class:`~headig.sparse.patterns.BlockPattern`.

- ``"flex"``: PyTorch's ``flex_attention``, compiled once with dynamic shapes and run one
  batch row at a time, so new sequence lengths and batch sizes reuse the compiled kernel
  (one graph per dtype, GQA and with/without key padding). The block structure comes only from the BlockMask indices; the
  mask function is used only for key padding. Uncompiled flex_attention ignores the
  indices, so it is never used.
- ``"gather"``: pure PyTorch fallback: for each group of heads with the same budget, gather
  the kept key/value blocks of a chunk of query blocks (``index_select`` on a flat table of
  blocks) and run fused SDPA on them. Works wherever SDPA does, with autograd.
- ``"gather_mm"``: the same gathered blocks, attended with two batched matmuls and an
  unnormalised ``exp`` (the softmax denominator is applied to the output); no fused kernel,
  so its speed does not depend on how SDPA tiles a one-block query. Without autograd only
  (with autograd it runs ``gather``).
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

from headig.sparse.patterns import BlockPattern, pad_tokens

log = logging.getLogger("headig.sparse")

KERNELS = ("auto", "flex", "gather", "gather_mm", "dense_mask")
_GATHER_CHUNK_ELEMENTS = 1 << 23  # gathered key elements per chunk (32 MiB in float32)
# logits elements per chunk of gather_mm (16 MiB in float32): several query blocks per
# batched matmul; smaller chunks mean more parallel regions, which a busy machine punishes
_MATMUL_CHUNK_ELEMENTS = 1 << 22

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


# What ``auto`` runs on CPU without autograd when compiled flex works. One constant, so that
# the choice follows the kernel table of docs/sparse-attention.md (measured with
# ``benchmarks/sparse_attention.py --kernels auto,flex,gather,gather_mm`` on a quiet machine).
AUTO_CPU_KERNEL = "flex"


def auto_kernel(device: torch.device | str, *, grad: bool) -> str:
    """The concrete kernel ``kernel="auto"`` stands for on this device.

    CPU flex_attention has no backward, so CPU autograd gets ``gather``; without autograd,
    CPU gets :data:`AUTO_CPU_KERNEL`; other devices get compiled flex where it works and
    ``gather`` elsewhere.
    """
    dev = torch.device(device)
    if dev.type == "cpu":
        if grad:
            return "gather"
        if AUTO_CPU_KERNEL != "flex":
            return AUTO_CPU_KERNEL
    return "flex" if flex_available(dev) else "gather"


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
    """Block-sparse attention over gathered key/value blocks: fused SDPA per query block.

    Works wherever SDPA does, with autograd. See :func:`gather_mm_sparse` for the variant
    that replaces SDPA by batched matmuls.
    """
    return _gather_sdpa(q, k, v, pattern, key_valid)


def gather_mm_sparse(q: Tensor, k: Tensor, v: Tensor, pattern: BlockPattern,
                     key_valid: Tensor | None = None) -> Tensor:
    """Gather kernel with batched matmuls instead of SDPA (no autograd: falls back to SDPA).

    Kernel name ``"gather_mm"``. Which of ``gather`` and ``gather_mm`` is faster depends on
    the machine and its load; ``benchmarks/sparse_attention.py --kernels`` measures both.
    """
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if grad:
        return _gather_sdpa(q, k, v, pattern, key_valid)
    return _gather_matmul(q, k, v, pattern, key_valid)


def _flat_block_ids(pattern: BlockPattern, heads: Tensor, c: int, kv: int, g: int) -> Tensor:
    """Row index into a [B * KV * nb] table of key blocks for each kept block: [B*G*nb, c]."""
    b, nb = pattern.indices.shape[0], pattern.n_blocks
    dev = pattern.indices.device
    base = (torch.arange(b, device=dev).view(b, 1, 1, 1) * kv
            + (heads.to(dev) // g).view(1, -1, 1, 1)) * nb
    return (base + pattern.indices[:, heads.to(dev), :, :c].long()).reshape(-1, c)


def _gather_matmul(q: Tensor, k: Tensor, v: Tensor, pattern: BlockPattern,
                   key_valid: Tensor | None = None) -> Tensor:
    """Gather kernel without autograd: per chunk of query blocks, two batched matmuls.

    Why it exists: PyTorch's CPU flash kernel tiles a query shorter than 192 rows in 32-row
    pieces, so SDPA on one 128-token query block may run below matmul speed; here a
    [block, c * block] logits tile per query block goes through plain ``bmm`` + ``exp`` +
    ``bmm``. The softmax denominator is applied to the [block, D] output instead of the
    logits, which saves one pass over them. It issues more (smaller) parallel regions than
    ``gather``, which costs more when other jobs hold the cores. Computed in float32 (or
    float64 for float64 inputs) and cast back.
    """
    b, h, t, d = q.shape
    kv = k.shape[1]
    g = h // kv
    bs = pattern.block_size
    nb = pattern.n_blocks
    tp = nb * bs
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    qb = (pad_tokens(q, tp, 2).to(work) * d ** -0.5).reshape(b, h, nb, bs, d)
    kf = pad_tokens(k, tp, 2).to(work).reshape(b * kv * nb, bs, d)
    vf = pad_tokens(v, tp, 2).to(work).reshape(b * kv * nb, bs, d)
    if key_valid is None and tp != t:
        key_valid = torch.ones(b, t, dtype=torch.bool, device=q.device)
    bias = None
    if key_valid is not None:  # additive key mask per key block, [B * KV * nb, bs]
        valid = pad_tokens(key_valid.to(torch.uint8), tp, 1).bool().view(b, 1, nb, bs)
        bias = torch.zeros(b, kv, nb, bs, device=q.device, dtype=work)
        bias.masked_fill_(~valid, float("-inf"))
        bias = bias.view(b * kv * nb, bs)
    out = torch.empty(b, h, nb, bs, d, device=q.device, dtype=work)
    head_counts = pattern.head_counts.to(q.device)
    for c in torch.unique(head_counts).tolist():
        heads = torch.nonzero(head_counts == c).flatten()
        n_h = heads.numel()
        flat = _flat_block_ids(pattern, heads, c, kv, g)  # [B * n_h * nb, c]
        every = n_h == h
        qs = (qb if every else qb[:, heads]).reshape(-1, bs, d)
        dst = out.view(-1, bs, d) if every else torch.empty_like(qs)
        units = flat.shape[0]
        per = max(1, _MATMUL_CHUNK_ELEMENTS // (bs * c * bs))
        for s in range(0, units, per):
            e = min(units, s + per)
            ids = flat[s:e].reshape(-1)
            ks = kf.index_select(0, ids).view(e - s, c * bs, d)
            vs = vf.index_select(0, ids).view(e - s, c * bs, d)
            a = torch.bmm(qs[s:e], ks.transpose(1, 2))  # [n, bs, c * bs]
            if bias is not None:
                a += bias.index_select(0, ids).view(e - s, 1, c * bs)
                top = a.amax(-1, keepdim=True).nan_to_num_(0.0, 0.0, 0.0)  # all-masked rows
            else:
                top = a.amax(-1, keepdim=True)
            a.sub_(top).exp_()
            denom = a.sum(-1, keepdim=True).clamp_min_(1.0)  # >= 1 unless no key: then out 0
            torch.bmm(a, vs, out=dst[s:e])
            dst[s:e].div_(denom)
        if not every:
            out[:, heads] = dst.view(b, n_h, nb, bs, d)
    return out.view(b, h, tp, d)[:, :, :t].to(q.dtype)


def _gather_sdpa(q: Tensor, k: Tensor, v: Tensor, pattern: BlockPattern,
                 key_valid: Tensor | None = None) -> Tensor:
    """Gather kernel through fused SDPA on the gathered blocks (supports autograd).

    Kept blocks are copied with ``index_select`` from a flat [B * KV * nb] table of blocks
    (one contiguous copy per block, cheaper than multi-dimensional advanced indexing), a
    chunk of query blocks at a time, and each query block attends to its ``c`` blocks.
    """
    b, h, t, d = q.shape
    kv = k.shape[1]
    g = h // kv
    bs = pattern.block_size
    nb = pattern.n_blocks
    tp = nb * bs
    if key_valid is None and tp != t:
        key_valid = torch.ones(b, t, dtype=torch.bool, device=q.device)
    qb = pad_tokens(q, tp, 2).reshape(b, h, nb, bs, d)
    kf = pad_tokens(k, tp, 2).reshape(b * kv * nb, bs, d)
    vf = pad_tokens(v, tp, 2).reshape(b * kv * nb, bs, d)
    valid = None
    if key_valid is not None:  # [B * KV * nb, bs], indexed like the key blocks
        valid = (pad_tokens(key_valid.to(torch.uint8), tp, 1).bool().view(b, 1, nb, bs)
                 .expand(b, kv, nb, bs).reshape(b * kv * nb, bs))
    out = torch.zeros(b, h, nb, bs, d, device=q.device, dtype=q.dtype)
    head_counts = pattern.head_counts.to(q.device)
    for c in torch.unique(head_counts).tolist():
        heads = torch.nonzero(head_counts == c).flatten()
        n_h = heads.numel()
        every = n_h == h
        flat = _flat_block_ids(pattern, heads, c, kv, g)  # [B * n_h * nb, c]
        qs = (qb if every else qb[:, heads]).reshape(-1, 1, bs, d)
        dst = out.view(-1, 1, bs, d) if every else torch.zeros_like(qs)
        units = flat.shape[0]
        per = max(1, _GATHER_CHUNK_ELEMENTS // (c * bs * d))
        for s in range(0, units, per):
            e = min(units, s + per)
            ids = flat[s:e].reshape(-1)
            ks = kf.index_select(0, ids).view(e - s, 1, c * bs, d)
            vs = vf.index_select(0, ids).view(e - s, 1, c * bs, d)
            mask = None if valid is None else valid.index_select(0, ids).view(e - s, 1, 1, c * bs)
            o = F.scaled_dot_product_attention(qs[s:e], ks, vs, attn_mask=mask)
            if mask is not None:
                o = o.masked_fill(~mask.any(-1, keepdim=True), 0.0)
            dst[s:e] = o
        if not every:
            out[:, heads] = dst.view(b, n_h, nb, bs, d)
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
    """Dispatch to a named kernel ("flex", "gather", "gather_mm" or "dense_mask")."""
    if name == "flex":
        return flex_sparse(q, k, v, pattern, key_valid)
    if name == "gather":
        return gather_sparse(q, k, v, pattern, key_valid)
    if name == "gather_mm":
        return gather_mm_sparse(q, k, v, pattern, key_valid)
    if name == "dense_mask":
        return dense_mask_sparse(q, k, v, pattern, key_valid)
    raise ValueError(f"kernel={name!r}; expected one of {list(KERNELS[1:])}")
