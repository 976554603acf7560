"""Masked-diffusion log-likelihood of a target given a prompt (LLaDA's estimator).

For a target of n tokens, draw k ~ U{1..n}, mask k target tokens uniformly at random and
score ``-sum(CE over the masked tokens) * n / k``; the expectation is a lower bound on
log p(target | prompt) and is exact for n = 1. :func:`loglikelihood` estimates it by Monte
Carlo exactly as the official LLaDA evaluation does (stratified mask counts), and
:func:`exact_loglikelihood` computes the expectation by enumerating every mask.

Reproducibility: every request draws its mask patterns up front from a CPU generator
seeded with ``seed``, so the result depends neither on the device, nor on ``batch_size``,
nor on which other requests share a forward. Requests with equal target lengths get the
same patterns (common random numbers, which lowers the variance of comparisons between
answers). Identical patterns are evaluated once and weighted by their count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from headig.diffusion.generation import model_device, predict_logits
from headig.diffusion.loss import token_ce
from headig.models.family import family_of

__all__ = [
    "draw_mask_patterns", "exact_loglikelihood", "loglikelihood", "loglikelihood_batch",
    "stratified_mask_counts",
]

TokenIds = Tensor | Sequence[int]


def _as_ids(ids: TokenIds, name: str) -> Tensor:
    t = torch.as_tensor(ids)
    if t.dim() == 2 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 1:
        raise ValueError(f"{name} must be a 1-D sequence of token ids; got shape {tuple(t.shape)}")
    if t.numel() and (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool):
        raise ValueError(f"{name} must hold integer token ids; got {t.dtype}")
    return t.to(device="cpu", dtype=torch.long)


def stratified_mask_counts(n: int, size: int, generator: torch.Generator) -> Tensor:
    """Official LLaDA mask counts for one group of ``size`` rows, each in 1..n.

    ``k ~ U{1..n}``; counts = ((round(linspace(k, k + (size-1) * n / size, size)) - 1) mod n)
    + 1, computed in float32 as the official code does, so the counts cover 1..n evenly.
    """
    k = torch.randint(1, n + 1, (), generator=generator)
    end = (k + (size - 1) * (n / size)).item()  # int64 tensor + float -> float32
    counts = torch.linspace(float(k), end, steps=size).round().long()
    return (counts - 1) % n + 1


def draw_mask_patterns(n: int, mc_num: int, seed: int, stratum_size: int = 32) -> Tensor:
    """Bool [mc_num, n]: which target tokens each Monte-Carlo row masks.

    Rows come in groups of ``stratum_size`` (the official ``batch_size``; the last group may
    be smaller) that share one stratified draw of mask counts; each row then masks a
    uniformly random subset of that size.
    """
    if n < 1 or mc_num < 1 or stratum_size < 1:
        raise ValueError(f"need n, mc_num, stratum_size >= 1; got {n}, {mc_num}, {stratum_size}")
    g = torch.Generator().manual_seed(int(seed))
    rows = []
    for start in range(0, mc_num, stratum_size):
        size = min(stratum_size, mc_num - start)
        for count in stratified_mask_counts(n, size, g).tolist():
            rows.append(torch.randperm(n, generator=g) < count)
    return torch.stack(rows)


@dataclass
class _Row:
    """One scored row: the request's (shared) prompt and target and this row's mask pattern;
    the token ids are built only when the row's chunk is evaluated."""

    prompt: Tensor
    target: Tensor
    pattern: Tensor      # bool [n]: masked target tokens

    def __len__(self) -> int:
        return len(self.prompt) + len(self.target)

    def ids(self, mask_id: int) -> Tensor:
        return torch.cat([self.prompt, self.target.masked_fill(self.pattern, mask_id)])


def _ce_and_hits(logits: Tensor, targets: Tensor, chunk: int = 2048) -> tuple[Tensor, Tensor]:
    """Float64 CPU cross-entropy and argmax hits per row of [N, V] logits; the float32
    upcast runs in row chunks so a half-precision model never holds a float32 copy of
    every row at once."""
    ce, hits = token_ce(logits, targets, chunk_rows=chunk, with_hits=True)
    return ce.double().cpu(), hits.cpu()


def _score_rows(model: nn.Module, rows: list[_Row], batch_size: int, cfg_scale: float,
                ) -> tuple[Tensor, Tensor]:
    """Per row: summed CE over its masked positions (float64) and whether argmax
    reproduces every masked token. Rows are packed by length, right-padded, masked keys."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    family = family_of(model)
    mask_id = family.mask_token_id
    pad_id = family.arch.pad_token_id if family.arch.pad_token_id is not None else mask_id
    device = model_device(model)
    ce_sum = torch.zeros(len(rows), dtype=torch.float64)
    greedy = torch.zeros(len(rows), dtype=torch.bool)
    order = sorted(range(len(rows)), key=lambda r: len(rows[r]))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        lengths = [len(rows[r]) for r in chunk]
        width = max(lengths)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        at = torch.zeros(len(chunk), width, dtype=torch.bool)
        attn = torch.zeros(len(chunk), width, dtype=torch.long)
        prompt = torch.zeros(len(chunk), width, dtype=torch.bool)
        for j, r in enumerate(chunk):
            row = rows[r]
            p = len(row.prompt)
            ids[j, :lengths[j]] = row.ids(mask_id)
            at[j, p:lengths[j]] = row.pattern
            attn[j, :lengths[j]] = 1
            prompt[j, :p] = True
        targets = torch.cat([rows[r].target[rows[r].pattern] for r in chunk]).to(device)
        ids, at, prompt = ids.to(device), at.to(device), prompt.to(device)
        attn_t = None if min(lengths) == width else attn.to(device)
        with torch.no_grad():
            logits = predict_logits(
                model, ids, attn_t, at=at, cfg_scale=cfg_scale,
                uncond_ids=ids.masked_fill(prompt, mask_id) if cfg_scale > 0 else None,
            )
            ce, hit = _ce_and_hits(logits, targets)
        owner = at.nonzero(as_tuple=True)[0].cpu()
        index = torch.tensor(chunk)[owner]
        ce_sum.index_add_(0, index, ce)
        misses = torch.zeros(len(rows), dtype=torch.long).index_add_(0, index, (~hit).long())
        greedy[chunk] = misses[chunk] == 0
    return ce_sum, greedy


def loglikelihood_batch(
    model: nn.Module, requests: Sequence[tuple[TokenIds, TokenIds]], *, mc_num: int = 128,
    batch_size: int = 32, seed: int = 1234, cfg_scale: float = 0.0,
    exact_if_single: bool = True, stratum_size: int = 32, greedy_check: bool = True,
) -> list[tuple[float, float, bool | None]]:
    """Score many (prompt_ids, target_ids) requests; rows of different requests share
    forwards (right-padded, pad keys masked). Returns one (ll, stderr, is_greedy) each.

    Args:
        mc_num: Monte-Carlo rows per request (128 in the official evaluation).
        batch_size: rows per forward; it changes speed and memory, never the result
            (beyond float rounding).
        seed: seeds every request's mask patterns (the same for every request).
        cfg_scale: classifier-free guidance (the prompt masked in the unconditional row).
        exact_if_single: a one-token target is scored exactly in one forward (stderr 0).
        stratum_size: rows sharing one stratified draw of mask counts (the official code's
            batch_size, 32).
        greedy_check: also report whether argmax decoding of the fully masked target
            reproduces it (one extra row unless already sampled); None when False.

    stderr is the standard error of the mean of the row scores treated as independent,
    which overstates the error of the stratified estimate (NaN when mc_num is 1).
    """
    if mc_num < 1:
        raise ValueError(f"mc_num must be >= 1; got {mc_num}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    if cfg_scale < 0:
        raise ValueError(f"cfg_scale must be >= 0; got {cfg_scale}")
    mask_id = family_of(model).mask_token_id
    rows: list[_Row] = []
    plans: list[tuple[int, Tensor, Tensor, int | None, int]] = []  # first row, weights, ...
    for r, request in enumerate(requests):
        if len(request) != 2:
            raise ValueError(f"request {r} must be a (prompt_ids, target_ids) pair")
        prompt, target = _as_ids(request[0], "prompt_ids"), _as_ids(request[1], "target_ids")
        n = len(target)
        if n == 0:
            raise ValueError(f"request {r}: target_ids is empty; nothing to score")
        if bool((target == mask_id).any()):
            raise ValueError(f"request {r}: target_ids contains the mask id {mask_id}")
        if n == 1 and exact_if_single:
            patterns, weights = torch.ones(1, 1, dtype=torch.bool), torch.ones(1)
        else:
            drawn = draw_mask_patterns(n, mc_num, seed, stratum_size)
            patterns, weights = torch.unique(drawn.to(torch.uint8), dim=0, return_counts=True)
            patterns, weights = patterns.bool(), weights.double()
        greedy_row = None
        if greedy_check:
            full = patterns.all(-1).nonzero()
            if len(full):
                greedy_row = len(rows) + int(full[0])
            else:
                patterns = torch.cat([patterns, torch.ones(1, n, dtype=torch.bool)])
                weights = torch.cat([weights, torch.zeros(1, dtype=weights.dtype)])
                greedy_row = len(rows) + len(patterns) - 1
        first = len(rows)
        rows.extend(_Row(prompt, target, p) for p in patterns)
        plans.append((first, weights.double(), patterns.sum(-1), greedy_row, n))
    ce_sum, greedy = _score_rows(model, rows, batch_size, cfg_scale)
    results = []
    for first, weights, counts, greedy_row, n in plans:
        values = -ce_sum[first:first + len(weights)] * n / counts.double()
        total = weights.sum()
        ll = float((weights * values).sum() / total)
        if total <= 1:
            stderr = 0.0 if n == 1 and exact_if_single else math.nan
        else:
            var = float((weights * (values - ll) ** 2).sum() / (total - 1))
            stderr = 0.0 if n == 1 and exact_if_single else math.sqrt(var / float(total))
        results.append((ll, stderr, None if greedy_row is None else bool(greedy[greedy_row])))
    return results


def loglikelihood(
    model: nn.Module, prompt_ids: TokenIds, target_ids: TokenIds, *, mc_num: int = 128,
    batch_size: int = 32, seed: int = 1234, cfg_scale: float = 0.0,
    exact_if_single: bool = True, return_stderr: bool = True, greedy_check: bool = False,
    stratum_size: int = 32,
) -> float | tuple:
    """Monte-Carlo masked-diffusion log-likelihood of ``target_ids`` after ``prompt_ids``.

    Returns ``(ll, stderr)``; ``ll`` alone when ``return_stderr=False``; with
    ``greedy_check=True`` the greedy flag is appended (``(ll, stderr, is_greedy)`` or
    ``(ll, is_greedy)``). See :func:`loglikelihood_batch` for the arguments.
    """
    ll, stderr, is_greedy = loglikelihood_batch(
        model, [(prompt_ids, target_ids)], mc_num=mc_num, batch_size=batch_size, seed=seed,
        cfg_scale=cfg_scale, exact_if_single=exact_if_single, stratum_size=stratum_size,
        greedy_check=greedy_check,
    )[0]
    out: tuple = (ll, stderr) if return_stderr else (ll,)
    if greedy_check:
        out = (*out, is_greedy)
    return out[0] if len(out) == 1 else out


def exact_loglikelihood(
    model: nn.Module, prompt_ids: TokenIds, target_ids: TokenIds, *, batch_size: int = 32,
    cfg_scale: float = 0.0, max_target_len: int = 12,
) -> float:
    """The exact expectation of the estimator, by scoring all 2^n - 1 masks of the target.

    Each mask of k tokens has probability 1 / (n * C(n, k)). Meant for validation and short
    answers: raises when n exceeds ``max_target_len`` (2^n forwards' worth of rows).
    """
    prompt, target = _as_ids(prompt_ids, "prompt_ids"), _as_ids(target_ids, "target_ids")
    n = len(target)
    if n == 0:
        raise ValueError("target_ids is empty; nothing to score")
    if n > max_target_len:
        raise ValueError(f"exact enumeration of a {n}-token target needs {2 ** n - 1} rows; "
                         f"raise max_target_len (now {max_target_len}) or use loglikelihood()")
    mask_id = family_of(model).mask_token_id
    if bool((target == mask_id).any()):
        raise ValueError(f"target_ids contains the mask id {mask_id}")
    bits = torch.arange(1, 2 ** n)
    patterns = (bits[:, None] >> torch.arange(n)) & 1 == 1
    rows = [_Row(prompt, target, p) for p in patterns]
    ce_sum, _ = _score_rows(model, rows, batch_size, cfg_scale)
    k = patterns.sum(-1)
    prob = torch.tensor([1.0 / (n * math.comb(n, int(c))) for c in k], dtype=torch.float64)
    return float((prob * -ce_sum * n / k.double()).sum())
