"""Block patterns: which key blocks each query block of each head attends to.

A pattern is chosen SparseD-style from the queries and keys themselves: each query block
scores every key block by the attention mass it sends there, and keeps its top ``c_h`` key
blocks, where ``c_h`` is the head's budget. Two estimates of the mass are available:

- ``"exact"``: softmax of every query row over all keys, averaged over the block's rows,
  summed inside each key block (what the research code did; costs about one dense
  attention, so it is used where the pattern is built once and reused);
- ``"pooled"``: softmax of the block's *mean* query over all keys, summed inside each key
  block (``1 / block_size`` of the cost; used when the pattern is chosen on the fly).

The diagonal block (a query block's own tokens) is always kept when ``keep_diagonal``, and
inside generation the prompt and generation regions each get their share of the budget, so
neither the prompt nor the tokens being denoised can be starved. Every query block keeps
exactly ``c_h`` key blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from headig.sparse.budgets import n_blocks_for

ESTIMATES = ("exact", "pooled")
_CHUNK_ELEMENTS = 1 << 24  # float32 elements of scratch per chunk (64 MiB)


@dataclass
class BlockPattern:
    """Kept key blocks of every (batch row, head, query block).

    Attributes:
        kept: bool [B, H, nq, nk], True = the query block attends to the key block.
        counts: int32 [B, H, nq], kept key blocks per query block (flex's ``kv_num_blocks``).
        indices: int32 [B, H, nq, nk], kept key-block indices first (ascending), then the
            others (flex's ``kv_indices``).
        head_counts: long [H], the budget of each head (every row of ``counts`` equals it).
        block_size: tokens per block.
        seq_len: tokens in the sequence (the last block may be partial).
    """

    kept: Tensor
    counts: Tensor
    indices: Tensor
    head_counts: Tensor
    block_size: int
    seq_len: int

    @property
    def n_blocks(self) -> int:
        return self.kept.shape[-1]

    @property
    def density(self) -> float:
        """Fraction of (query block, key block) pairs kept."""
        return float(self.kept.float().mean())

    def matches(self, batch: int, n_heads: int, seq_len: int, device: torch.device) -> bool:
        """Whether this pattern can serve a forward of this shape (reuse check)."""
        return (self.kept.shape[0] == batch and self.kept.shape[1] == n_heads
                and self.seq_len == seq_len and self.kept.device == device)

    @classmethod
    def from_kept(cls, kept: Tensor, block_size: int, seq_len: int) -> BlockPattern:
        """Build the index form of a boolean block pattern [B, H, nq, nk]."""
        nk = kept.shape[-1]
        counts = kept.sum(-1, dtype=torch.int32)
        order_key = (~kept).to(torch.int32) * nk + torch.arange(nk, device=kept.device,
                                                                 dtype=torch.int32)
        indices = order_key.argsort(dim=-1).to(torch.int32)
        head_counts = counts[0, :, 0].to(torch.long)
        return cls(kept=kept, counts=counts, indices=indices, head_counts=head_counts,
                   block_size=int(block_size), seq_len=int(seq_len))

    def dense_mask(self) -> Tensor:
        """Token-level bool mask [B, H, T, T] (True = attend); for reference and tests."""
        bs, t = self.block_size, self.seq_len
        m = self.kept.repeat_interleave(bs, dim=-1).repeat_interleave(bs, dim=-2)
        return m[..., :t, :t]


def pad_tokens(x: Tensor, length: int, dim: int, value: float | bool = 0) -> Tensor:
    extra = length - x.shape[dim]
    if extra == 0:
        return x
    pad = [0, 0] * (x.dim() - 1 - (dim % x.dim())) + [0, extra]
    return F.pad(x, pad, value=value)


def block_scores(q: Tensor, k: Tensor, block_size: int, *, key_valid: Tensor | None = None,
                 estimate: str = "pooled") -> Tensor:
    """Attention mass from each query block to each key block: float32 [B, H, nq, nk].

    Args:
        q: [B, H, T, D]; k: [B, KV, T, D] with KV dividing H (query head h reads KV head
            ``h // (H // KV)``).
        key_valid: optional bool [B, T]; False keys (padding) get no mass, and padding
            query rows do not vote when their block has real rows.
        estimate: "exact" or "pooled" (see the module docstring).
    """
    if estimate not in ESTIMATES:
        raise ValueError(f"estimate={estimate!r}; expected one of {list(ESTIMATES)}")
    b, h, t, d = q.shape
    kv = k.shape[1]
    g = h // kv
    bs = int(block_size)
    nb = n_blocks_for(t, bs)
    tp = nb * bs
    scale = d ** -0.5
    kf = k if k.dtype == torch.float32 else k.float()
    # query-row weights: real tokens of the block, or all of its rows if it has none
    rows = torch.ones(b, t, device=q.device, dtype=torch.float32)
    if key_valid is not None:
        real = key_valid.to(torch.float32)
        has = pad_tokens(real, tp, 1).view(b, nb, bs).sum(-1, keepdim=True) > 0
        rows = torch.where(has.expand(b, nb, bs).reshape(b, tp)[:, :t], real, rows)
    rows = pad_tokens(rows, tp, 1).view(b, nb, bs)
    rows = rows / rows.sum(-1, keepdim=True).clamp_min(1.0)
    key_bias = None
    if key_valid is not None:
        key_bias = torch.zeros(b, t, device=q.device, dtype=torch.float32)
        key_bias.masked_fill_(~key_valid, float("-inf"))
        key_bias = key_bias[:, None, None, :]

    out = torch.empty(b, kv, g, nb, nb, device=q.device, dtype=torch.float32)
    qf = pad_tokens(q, tp, 2).reshape(b, kv, g, nb, bs, d)
    if estimate == "pooled":
        # weighted mean query of each block, [B, KV, g, nb, D], pre-scaled
        qbar = torch.matmul((rows * scale)[:, None, None, :, None, :], qf.float()).squeeze(-2)
        per_q = max(1, _CHUNK_ELEMENTS // max(1, b * g * nb * t))
        for s in range(0, kv, per_q):
            e = min(kv, s + per_q)
            logits = torch.matmul(qbar[:, s:e].flatten(2, 3), kf[:, s:e].transpose(-1, -2))
            if key_bias is not None:
                logits = logits + key_bias
            p = torch.softmax(logits, dim=-1)
            if key_bias is not None:
                p = p.nan_to_num_(0.0)
            p = pad_tokens(p, tp, -1).view(b, e - s, g, nb, nb, bs).sum(-1)
            out[:, s:e] = p
        return out.view(b, h, nb, nb)
    # exact: chunks of KV heads x query blocks, bounded scratch
    per_kv = max(1, min(kv, _CHUNK_ELEMENTS // max(1, b * g * bs * t)))
    per = max(1, _CHUNK_ELEMENTS // max(1, b * per_kv * g * bs * t))
    for s0 in range(0, kv, per_kv):
        e0 = min(kv, s0 + per_kv)
        for s in range(0, nb, per):
            e = min(nb, s + per)
            qc = qf[:, s0:e0, :, s:e].float().reshape(b, e0 - s0, g * (e - s) * bs, d)
            logits = torch.matmul(qc, kf[:, s0:e0].transpose(-1, -2)) * scale
            if key_bias is not None:
                logits = logits + key_bias
            p = torch.softmax(logits, dim=-1)
            if key_bias is not None:
                p = p.nan_to_num_(0.0)
            p = p.view(b, e0 - s0, g, e - s, bs, t)
            p = torch.matmul(rows[:, None, None, s:e, None, :], p).squeeze(-2)  # [B,k,g,n,T]
            out[:, s0:e0, :, s:e] = pad_tokens(p, tp, -1).view(
                b, e0 - s0, g, e - s, nb, bs).sum(-1)
    return out.view(b, h, nb, nb)


def _ranks(scores: Tensor) -> Tensor:
    """Rank of each entry along the last dim (0 = largest; ties by lower index)."""
    order = scores.argsort(dim=-1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(scores.shape[-1], device=scores.device)
                   .expand_as(order).contiguous())
    return ranks


def select_blocks(scores: Tensor, head_counts: Tensor, *, prompt_blocks: int | None = None,
                  keep_diagonal: bool = True, block_valid: Tensor | None = None) -> Tensor:
    """Top key blocks per query block: bool [B, H, nq, nk] with exactly ``head_counts[h]``
    True entries in every row of head h.

    Args:
        scores: [B, H, nq, nk] block scores (higher = keep first).
        head_counts: [H] budgets, each in [1, nk].
        prompt_blocks: inside generation, the number of key blocks that start inside the
            prompt; the remaining budget (after the diagonal) is split between prompt and
            generation blocks in proportion to their sizes, with at least one block for each
            region when two or more are left. None = one region.
        keep_diagonal: always keep the query block's own key block (counts toward the budget).
        block_valid: optional bool [B, nk]; key blocks that hold only padding are ranked last.
    """
    b, h, nq, nk = scores.shape
    dev = scores.device
    c = head_counts.to(dev, torch.long).view(1, h, 1)
    if bool((c < 1).any()) or bool((c > nk).any()):
        raise ValueError(f"head budgets must lie in [1, {nk}]; got {head_counts.tolist()}")
    s = scores.float()
    if block_valid is not None:
        s = torch.where(block_valid[:, None, None, :], s, torch.full_like(s, -1.0))
    cols = torch.arange(nk, device=dev)
    rows = torch.arange(nq, device=dev)
    diag = (rows[:, None] == cols[None, :]) if keep_diagonal and nq == nk else \
        torch.zeros(nq, nk, dtype=torch.bool, device=dev)
    has_diag = diag.any(-1).view(1, 1, nq).long()
    c_rest = c - has_diag  # [1, H, nq] blocks to choose besides the diagonal
    neg = torch.tensor(float("-inf"), device=dev)
    if prompt_blocks is None or not 0 < prompt_blocks < nk:
        r = _ranks(torch.where(diag, neg, s))
        return diag.expand(b, h, nq, nk) | ((r < c_rest[..., None]) & ~diag)
    in_prompt = cols < prompt_blocks  # [nk]
    n_p = (in_prompt[None, :] & ~diag).sum(-1).view(1, 1, nq)  # free prompt blocks per row
    n_g = (~in_prompt[None, :] & ~diag).sum(-1).view(1, 1, nq)
    total_free = (n_p + n_g).clamp_min(1)
    c_g = torch.round(c_rest.double() * n_g.double() / total_free.double()).long()
    both = (c_rest >= 2) & (n_p >= 1) & (n_g >= 1)
    c_g = torch.where(both, c_g.clamp(1, None), c_g)
    c_g = torch.where(both, torch.minimum(c_g, c_rest - 1), c_g)
    c_g = torch.maximum(torch.minimum(c_g, n_g), c_rest - n_p).clamp_min(0)
    c_p = c_rest - c_g
    prompt_cols = in_prompt[None, :] & ~diag  # [nq, nk]
    gen_cols = ~in_prompt[None, :] & ~diag
    r_p = _ranks(torch.where(prompt_cols, s, neg))
    r_g = _ranks(torch.where(gen_cols, s, neg))
    return (diag.expand(b, h, nq, nk) | ((r_p < c_p[..., None]) & prompt_cols)
            | ((r_g < c_g[..., None]) & gen_cols))


def real_key_blocks(key_valid: Tensor, n_blocks: int, block_size: int) -> Tensor:
    """bool [B, n_blocks]: which key blocks hold at least one real (non-padding) key."""
    return pad_tokens(key_valid, n_blocks * block_size, 1, False).view(
        key_valid.shape[0], n_blocks, -1).any(-1)


@dataclass
class RowGroupedPattern:
    """Patterns for a padded batch whose rows hold different numbers of real key blocks.

    A row's budget is counted on its own real key blocks, as if it ran alone, so padding
    added for its batch-mates does not enlarge it. Rows with the same count of real blocks
    share one :class:`BlockPattern` (its batch is those rows); kernels run per group.
    """

    groups: list[tuple[Tensor, BlockPattern]]  # (row indices [n], pattern of those rows)
    batch: int

    @property
    def kept(self) -> Tensor:
        """bool [B, H, nq, nk] of the whole batch (for inspection)."""
        first = self.groups[0][1].kept
        out = torch.zeros(self.batch, *first.shape[1:], dtype=torch.bool, device=first.device)
        for rows, pattern in self.groups:
            out[rows.to(first.device)] = pattern.kept
        return out

    @property
    def density(self) -> float:
        return float(self.kept.float().mean())

    def matches(self, batch: int, n_heads: int, seq_len: int, device: torch.device) -> bool:
        rows, first = self.groups[0]
        return self.batch == batch and first.matches(len(rows), n_heads, seq_len, device)


def build_pattern(q: Tensor, k: Tensor, head_counts: Tensor, block_size: int, *,
                  key_valid: Tensor | None = None, estimate: str = "pooled",
                  kv_groups: str = "query", prompt_length: int | None = None,
                  keep_diagonal: bool = True) -> BlockPattern:
    """Choose a :class:`BlockPattern` for one layer from its queries and keys.

    ``kv_groups="kv"`` chooses one pattern per KV head from the group's summed block
    scores (its query heads must share a budget) and gives it to every head of the group.
    """
    b, h, t, _ = q.shape
    kv = k.shape[1]
    g = h // kv
    nb = n_blocks_for(t, block_size)
    head_counts = head_counts.to(torch.long)
    if head_counts.shape != (h,):
        raise ValueError(f"head_counts must have shape [{h}]; got {tuple(head_counts.shape)}")
    with torch.no_grad():
        scores = block_scores(q, k, block_size, key_valid=key_valid, estimate=estimate)
        block_valid = None
        if key_valid is not None:
            block_valid = real_key_blocks(key_valid, nb, block_size)
        prompt_blocks = None if prompt_length is None else n_blocks_for(prompt_length, block_size)
        if kv_groups == "kv" and g > 1:
            grouped = head_counts.view(kv, g)
            if bool((grouped != grouped[:, :1]).any()):
                raise ValueError("kv_groups='kv' needs equal budgets within each KV group; got "
                                 f"{head_counts.tolist()}")
            kept = select_blocks(scores.view(b, kv, g, nb, nb).sum(2), grouped[:, 0],
                                 prompt_blocks=prompt_blocks, keep_diagonal=keep_diagonal,
                                 block_valid=block_valid).repeat_interleave(g, dim=1)
        else:
            kept = select_blocks(scores, head_counts, prompt_blocks=prompt_blocks,
                                 keep_diagonal=keep_diagonal, block_valid=block_valid)
        return BlockPattern.from_kept(kept, block_size, t)
