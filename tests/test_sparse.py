"""SparseAttentionPatch: exact budgets, patterns, kernels, schedule, restore, errors."""

from __future__ import annotations

import logging
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from headig.diffusion.schedule import denoising
from headig.sparse import (
    BlockPattern,
    BudgetPolicy,
    DenseBudget,
    ImportanceBudget,
    SparseAttentionPatch,
    UniformBudget,
    budget_names,
    budget_policy,
    build_pattern,
    dense_mask_sparse,
    gather_sparse,
    head_budgets,
    importance_weights,
    select_blocks,
    split_mask,
)
from headig.sparse.budgets import register_budget, uniform_count

# Most tests below use the older mode=/keep=/importance= call style on purpose: it must
# keep giving identical results. Its DeprecationWarning is checked once, explicitly.
pytestmark = pytest.mark.filterwarnings("ignore:SparseAttentionPatch\\(model, mode=:DeprecationWarning")

# ----------------------------------------------------------------------------- budgets


@pytest.mark.parametrize("keep", [0.05, 0.1, 0.3, 0.5, 0.77, 1.0])
@pytest.mark.parametrize("n_blocks", [1, 2, 7, 32, 129])
def test_adaptive_total_equals_uniform_total(keep, n_blocks):
    gen = torch.Generator().manual_seed(n_blocks)
    scores = torch.randn(6, 8, generator=gen) * torch.rand(6, 8, generator=gen) * 5
    u = uniform_count(n_blocks, keep)
    assert u == min(n_blocks, max(1, math.ceil(keep * n_blocks - 1e-9)))
    uniform = head_budgets(None, n_blocks, keep, n_layers=6, n_heads=8)
    assert uniform.dtype == torch.long and bool((uniform == u).all())
    for kw in ({}, {"min_keep": 0.0}, {"max_keep": max(keep, 0.6)},
               {"kv_groups": "kv", "group_size": 4}, {"increases_keep": False}):
        adaptive = head_budgets(scores, n_blocks, keep, **kw)
        assert adaptive.shape == (6, 8)
        assert int(adaptive.sum()) == int(uniform.sum()) == 48 * u
        assert int(adaptive.min()) >= 1 and int(adaptive.max()) <= n_blocks


def test_budgets_are_monotone_in_score_and_clamped():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(8, 16, generator=gen) ** 3
    for increases in (True, False):
        b = head_budgets(scores, 64, 0.3, min_keep=0.1, max_keep=0.5,
                         increases_keep=increases).flatten()
        s = scores.flatten() if increases else -scores.flatten()
        order = s.argsort()
        assert bool((b[order][1:] >= b[order][:-1]).all()), "higher score got fewer blocks"
        assert int(b.min()) >= math.ceil(0.1 * 64) and int(b.max()) <= math.floor(0.5 * 64)
        assert int(b.sum()) == 128 * 20
        assert int(b.max()) > int(b.min())  # it really redistributes
    up = head_budgets(scores, 64, 0.3)
    down = head_budgets(scores, 64, 0.3, increases_keep=False)
    top = int(scores.flatten().argmax())
    assert up.flatten()[top] > down.flatten()[top]


def test_importance_weight_map():
    scores = torch.arange(101, dtype=torch.float64).view(1, 101)
    w = importance_weights(scores)
    # clipped at the 5th/95th percentiles, linear in between, from 1/3 to 5/3
    assert torch.allclose(w[0, :6], torch.full((6,), 1 / 3, dtype=torch.float64))
    assert torch.allclose(w[0, 95:], torch.full((6,), 5 / 3, dtype=torch.float64))
    assert torch.allclose(w[0, 50], torch.tensor(1.0, dtype=torch.float64))
    assert bool((w[0, 1:] >= w[0, :-1]).all())
    assert torch.equal(importance_weights(torch.full((3, 4), 7.0)), torch.ones(3, 4,
                                                                               dtype=torch.float64))


@pytest.mark.parametrize("value", [1.0, -3.5, 0.0])
def test_equal_importance_is_uniform(value):
    scores = torch.full((4, 8), value)
    for n in (5, 32, 100):
        for kw in ({}, {"kv_groups": "kv", "group_size": 2}, {"increases_keep": False}):
            assert bool((head_budgets(scores, n, 0.3, **kw) == uniform_count(n, 0.3)).all())


def test_kv_groups_share_one_budget():
    gen = torch.Generator().manual_seed(3)
    scores = torch.randn(3, 8, generator=gen)
    b = head_budgets(scores, 40, 0.25, kv_groups="kv", group_size=4)
    assert bool((b.view(3, 2, 4) == b.view(3, 2, 4)[..., :1]).all())
    pooled = head_budgets(scores.view(3, 2, 4).mean(-1), 40, 0.25)
    assert torch.equal(b.view(3, 2, 4)[..., 0], pooled)
    per_query = head_budgets(scores, 40, 0.25, kv_groups="query", group_size=4)
    assert int(per_query.sum()) == int(b.sum())
    assert not torch.equal(per_query, b)


def test_head_budgets_bad_input():
    good = torch.randn(2, 4)
    with pytest.raises(ValueError, match="2-D"):
        head_budgets(torch.randn(8), 10, 0.3)
    with pytest.raises(ValueError, match="NaN"):
        head_budgets(torch.tensor([[1.0, float("nan")]]), 10, 0.3)
    for keep in (-0.1, 0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="keep"):
            head_budgets(good, 10, keep)
    with pytest.raises(ValueError, match="min_keep"):
        head_budgets(good, 10, 0.3, min_keep=0.5)
    with pytest.raises(ValueError, match="max_keep"):
        head_budgets(good, 10, 0.3, max_keep=0.2)
    with pytest.raises(ValueError, match="kv_groups"):
        head_budgets(good, 10, 0.3, kv_groups="both")
    with pytest.raises(ValueError, match="n_layers"):
        head_budgets(None, 10, 0.3)


# ----------------------------------------------------------------------------- patterns


@pytest.mark.parametrize("prompt_blocks", [None, 1, 4, 9])
@pytest.mark.parametrize("diagonal", [True, False])
def test_select_blocks_keeps_exactly_the_budget(prompt_blocks, diagonal):
    gen = torch.Generator().manual_seed(1)
    nk = 10
    scores = torch.rand(2, 5, nk, nk, generator=gen)
    scores[0, 0, 3] = 0.5  # ties are broken deterministically
    counts = torch.tensor([1, 2, 3, 7, 10])
    valid = torch.ones(2, nk, dtype=torch.bool)
    valid[1, :3] = False
    kept = select_blocks(scores, counts, prompt_blocks=prompt_blocks, keep_diagonal=diagonal,
                         block_valid=valid)
    assert torch.equal(kept.sum(-1), counts.view(1, 5, 1).expand(2, 5, nk))
    eye = torch.eye(nk, dtype=torch.bool)
    if diagonal:
        assert bool(kept[:, :, eye].all())
    if prompt_blocks is not None and 0 < prompt_blocks < nk:
        c_rest = counts - (1 if diagonal else 0)
        for h in range(5):
            if c_rest[h] >= 2:  # both regions are represented (the diagonal counts)
                assert bool(kept[:, h, :, :prompt_blocks].any(-1).all())
                assert bool(kept[:, h, :, prompt_blocks:].any(-1).all())
    # padding blocks are only kept when the budget exceeds the real blocks
    kept1 = select_blocks(scores, counts, keep_diagonal=False, block_valid=valid)
    assert not bool(kept1[1, :3, :, :3].any())


def test_select_without_regions_is_top_k():
    gen = torch.Generator().manual_seed(2)
    scores = torch.rand(1, 2, 6, 6, generator=gen)
    kept = select_blocks(scores, torch.tensor([2, 4]), keep_diagonal=False)
    for h, c in enumerate((2, 4)):
        top = scores[0, h].topk(c, dim=-1).indices
        expect = torch.zeros(6, 6, dtype=torch.bool).scatter_(-1, top, True)
        assert torch.equal(kept[0, h], expect)


@pytest.mark.parametrize("estimate", ["exact", "pooled"])
def test_pattern_follows_attention_mass(estimate):
    """A key block that every query attends to strongly must be chosen."""
    gen = torch.Generator().manual_seed(4)
    b, h, t, d, bs = 1, 2, 32, 8, 4
    q = torch.randn(b, h, t, d, generator=gen) * 0.1
    k = torch.randn(b, h, t, d, generator=gen) * 0.1
    q[..., 0] = 3.0
    k[:, :, 20:24, 0] = 3.0  # block 5 is where the mass goes
    p = build_pattern(q, k, torch.tensor([2, 2]), bs, estimate=estimate, keep_diagonal=True)
    assert bool(p.kept[..., 5].all())
    assert torch.equal(p.counts, torch.full((1, 2, 8), 2, dtype=torch.int32))



def test_block_scores_match_a_direct_computation(monkeypatch):
    import headig.sparse.patterns as patterns

    gen = torch.Generator().manual_seed(11)
    q, k = torch.randn(2, 4, 37, 8, generator=gen), torch.randn(2, 2, 37, 8, generator=gen)
    valid = torch.ones(2, 37, dtype=torch.bool)
    valid[0, :5] = False  # row 0: block 0 is all padding (its rows all vote), block 1 half
    exact = patterns.block_scores(q, k, 4, key_valid=valid, estimate="exact")
    pooled = patterns.block_scores(q, k, 4, key_valid=valid, estimate="pooled")
    # reference: full softmax, rows weighted by real tokens of the block, sums per key block
    s = (q @ k.repeat_interleave(2, 1).transpose(-1, -2)) / math.sqrt(8)
    prob = torch.softmax(s.masked_fill(~valid[:, None, None, :], float("-inf")), -1)
    per_key_block = F.pad(prob, [0, 3, 0, 3]).view(2, 4, 40, 10, 4).sum(-1)  # [B,H,Tq,nk]
    w = F.pad(valid.float(), [0, 3]).view(2, 10, 4)
    w = torch.where(w.sum(-1, keepdim=True) > 0, w, F.pad(torch.ones(2, 37), [0, 3]).view(2, 10, 4))
    w = w / w.sum(-1, keepdim=True)
    ref = (per_key_block.view(2, 4, 10, 4, 10) * w[:, None, :, :, None]).sum(3)
    torch.testing.assert_close(exact, ref, atol=1e-6, rtol=1e-5)
    qbar = (F.pad(q, [0, 0, 0, 3]).view(2, 4, 10, 4, 8) * w[:, None, :, :, None]).sum(3)
    sp = (qbar @ k.repeat_interleave(2, 1).transpose(-1, -2)) / math.sqrt(8)
    sp = torch.softmax(sp.masked_fill(~valid[:, None, None, :], float("-inf")), -1)
    torch.testing.assert_close(pooled, F.pad(sp, [0, 3]).view(2, 4, 10, 10, 4).sum(-1),
                               atol=1e-6, rtol=1e-5)
    assert bool(exact[0, :, :, 0].eq(0).all())  # a block of padding gets no mass
    # chunking the scratch space changes nothing
    monkeypatch.setattr(patterns, "_CHUNK_ELEMENTS", 100)
    assert torch.equal(patterns.block_scores(q, k, 4, key_valid=valid, estimate="exact"), exact)
    assert torch.equal(patterns.block_scores(q, k, 4, key_valid=valid, estimate="pooled"), pooled)

# ----------------------------------------------------------------------------- kernels


def _reference(q, k, v, pattern, key_valid):
    """Masked softmax attention in float64 from the token-level pattern."""
    g = q.shape[1] // k.shape[1]
    kk = k.double().repeat_interleave(g, 1)
    vv = v.double().repeat_interleave(g, 1)
    m = pattern.dense_mask()
    if key_valid is not None:
        m = m & key_valid[:, None, None, :]
    s = (q.double() @ kk.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    s = s.masked_fill(~m, float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)
    return p @ vv


def _random_case(seed, b=2, h=4, kv=2, t=37, d=16, bs=4, counts=(2, 9, 3, 10)):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, n, t, d, generator=gen) for n in (h, kv, kv))
    key_valid = torch.ones(b, t, dtype=torch.bool)
    key_valid[0, :11] = False
    pattern = build_pattern(q, k, torch.tensor(counts), bs, key_valid=key_valid,
                            estimate="pooled", prompt_length=17)
    return q, k, v, pattern, key_valid


@pytest.mark.parametrize("kernel", [gather_sparse, dense_mask_sparse])
def test_kernels_match_reference(kernel):
    q, k, v, pattern, key_valid = _random_case(0)
    for kv_mask in (key_valid, None):
        ref = _reference(q, k, v, pattern, kv_mask)
        out = kernel(q, k, v, pattern, kv_mask)
        assert out.shape == q.shape
        torch.testing.assert_close(out.double(), ref, atol=2e-6, rtol=1e-5)
    # bfloat16 inputs: same result up to bf16 rounding
    out = kernel(q.bfloat16(), k.bfloat16(), v.bfloat16(), pattern, key_valid)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), _reference(q, k, v, pattern, key_valid),
                               atol=3e-2, rtol=3e-2)


def test_compiled_flex_matches_reference():
    from headig.sparse.kernels import flex_sparse

    q, k, v, pattern, key_valid = _random_case(5)
    try:
        out = flex_sparse(q, k, v, pattern, key_valid)
    except Exception as err:  # no C++ toolchain / unsupported build: auto falls back
        pytest.skip(f"torch.compile(flex_attention) unavailable here: {type(err).__name__}")
    torch.testing.assert_close(out.double(), _reference(q, k, v, pattern, key_valid),
                               atol=2e-6, rtol=1e-5)
    # new lengths and batch sizes reuse the compiled kernel (dynamic shapes), still exact
    from torch._dynamo.utils import counters

    def check(seed, b, t):
        q2, k2, v2, p2, kv2 = _random_case(seed, b=b, t=t)
        kv2[0, :3] = False
        torch.testing.assert_close(flex_sparse(q2, k2, v2, p2, kv2).double(),
                                   _reference(q2, k2, v2, p2, kv2), atol=2e-6, rtol=1e-5)
        return counters["stats"]["unique_graphs"]

    graphs = counters["stats"]["unique_graphs"]
    for seed, b, t in ((6, 2, 53), (8, 1, 90), (9, 3, 41)):
        assert check(seed, b, t) == graphs, "a new length or batch size recompiled flex"



def test_full_pattern_equals_sdpa():
    gen = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, 4, 50, 16, generator=gen) for _ in range(3))
    nk = 13
    pattern = BlockPattern.from_kept(torch.ones(1, 4, nk, nk, dtype=torch.bool), 4, 50)
    dense = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(gather_sparse(q, k, v, pattern), dense, atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------- the patch


def _ids(n, t, seed, vocab=400):
    return torch.randint(0, vocab, (n, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["tiny-llada", "tiny-dream"])
def test_keep_one_equals_dense(loaded, golden, name):
    model, _ = loaded(name)
    g = golden(name)
    ids, mask = g["padded.input_ids"], g["padded.attention_mask"]
    with torch.no_grad():
        dense = model(ids, attention_mask=mask).logits
        for kernel in ("gather", "dense_mask"):
            with SparseAttentionPatch(model, "uniform", keep=1.0, block_size=4, min_seq_len=0,
                                      kernel=kernel) as patch:
                sparse = model(ids, attention_mask=mask).logits
            assert patch.stats["sparse"] == model.family.n_layers
            valid = mask.bool()
            torch.testing.assert_close(sparse[valid], dense[valid], atol=2e-5, rtol=1e-5)
        # and the golden padded logits themselves
        torch.testing.assert_close(dense[mask.bool()], g["padded.logits"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["tiny-llada", "tiny-dream"])
def test_realized_blocks_equal_budget(loaded, name):
    model, _ = loaded(name)
    fam = model.family
    ids = _ids(2, 61, 0)
    imp = torch.randn(fam.n_layers, fam.n_heads, generator=torch.Generator().manual_seed(1))
    nk = math.ceil(61 / 4)
    totals = {}
    for mode, kw in (("uniform", {}), ("adaptive", {"importance": imp})):
        patch = SparseAttentionPatch(model, mode, keep=0.3, block_size=4, min_seq_len=0,
                                     kernel="gather", **kw)
        with patch, torch.no_grad():
            out = model(ids).logits
        assert torch.isfinite(out).all()
        budgets = patch.budgets(nk)
        totals[mode] = int(budgets.sum())
        for layer in range(fam.n_layers):
            p = patch.last_patterns[layer]
            expect = budgets[layer].to(torch.int32).view(1, -1, 1).expand(2, -1, nk)
            assert torch.equal(p.counts, expect)
            assert torch.equal(p.kept.sum(-1, dtype=torch.int32), expect)
    assert totals["adaptive"] == totals["uniform"] == fam.n_layers * fam.n_heads * 5


def test_all_ones_importance_matches_uniform_output(loaded):
    model, _ = loaded("tiny-llada")
    ids = _ids(2, 40, 2)
    kw = dict(keep=0.3, block_size=4, min_seq_len=0, kernel="gather")
    with torch.no_grad():
        with SparseAttentionPatch(model, "uniform", **kw):
            a = model(ids).logits
        with SparseAttentionPatch(model, "adaptive", importance=torch.ones(2, 4), **kw):
            b = model(ids).logits
        dense = model(ids).logits
    assert torch.equal(a, b)
    assert (a - dense).abs().max() > 1e-3  # keep=0.3 really changes the output


def test_importance_object_and_partial_layers(loaded):
    model, _ = loaded("tiny-llada")
    scores = torch.zeros(2, 4)
    scores[1] = torch.tensor([3.0, -1.0, 0.5, 2.0])
    imp = SimpleNamespace(scores=scores, layers=(1,))
    patch = SparseAttentionPatch(model, "adaptive", keep=0.3, importance=imp, block_size=4)
    b = patch.budgets(20)
    assert bool((b[0] == 6).all())  # not attributed: uniform
    assert int(b[1].sum()) == 24 and int(b[1, 0]) > int(b[1, 1])
    only1 = SparseAttentionPatch(model, "uniform", keep=0.3, block_size=4, layers=[1])
    assert torch.equal(only1.budgets(20)[0], torch.full((4,), 20))


def test_gqa_modes(loaded):
    model, _ = loaded("tiny-dream")  # 4 query heads, 2 KV heads
    ids = _ids(1, 48, 3)
    imp = torch.tensor([[4.0, -2.0, 0.0, 1.0], [0.3, 0.2, -5.0, 2.0]])
    kw = dict(keep=0.4, block_size=4, min_seq_len=0, kernel="gather", importance=imp)
    with torch.no_grad():
        with SparseAttentionPatch(model, "adaptive", kv_groups="kv", **kw) as kv_patch:
            model(ids)
        with SparseAttentionPatch(model, "adaptive", kv_groups="query", **kw) as q_patch:
            model(ids)
    kvb, qb = kv_patch.budgets(12), q_patch.budgets(12)
    assert int(kvb.sum()) == int(qb.sum()) == 8 * 5
    assert torch.equal(kvb[:, 0], kvb[:, 1]) and torch.equal(kvb[:, 2], kvb[:, 3])
    assert int(qb[0, 0]) > int(qb[0, 1])
    for layer in range(2):
        kept = kv_patch.last_patterns[layer].kept
        assert torch.equal(kept[:, 0], kept[:, 1]) and torch.equal(kept[:, 2], kept[:, 3])
    assert any(not torch.equal(q_patch.last_patterns[i].kept[:, 2],
                               q_patch.last_patterns[i].kept[:, 3]) for i in range(2))


def test_schedule_dense_then_build_once_and_reuse(loaded):
    model, _ = loaded("tiny-llada")
    ids = _ids(1, 40, 4)
    total, skip = 5, 0.5  # floor(2.5) = 2 dense steps, the pattern is built at step 2
    with torch.no_grad():
        dense = [model(ids + s).logits for s in range(total)]
        patch = SparseAttentionPatch(model, "uniform", keep=0.3, skip=skip, block_size=4,
                                     min_seq_len=0, kernel="gather")
        seen, outs = [], {}
        with patch, denoising(model, total_steps=total, prompt_length=12) as state:
            for s in range(total):
                state.step = s
                out = model(ids + s).logits
                outs[s] = out
                if s < 2:
                    assert torch.equal(out, dense[s]), "dense steps must be exactly dense"
                    assert patch.stats["builds"] == 0
                else:
                    assert not torch.allclose(out, dense[s], atol=1e-4)
                    assert patch.stats["builds"] == 2  # once per layer, at step 2
                    seen.append([state.cache[(patch._cache_key, i)] for i in range(2)])
        assert patch.stats["dense_schedule"] == 2 * 2 and patch.stats["sparse"] == 3 * 2
        assert all(a is b for row in seen for a, b in zip(row, seen[0]))  # reused objects
        # the pattern came from the build step's own input: same as rebuilding it there
        with patch, denoising(model, total_steps=total, prompt_length=12) as state:
            state.step = 2
            again = model(ids + 2).logits
            state.step = 3
            model(ids + 3)
        assert patch.stats["builds"] == 4  # a new run builds again
        # ... from its build step's own queries and keys: same input, same pattern and output
        assert torch.equal(again, outs[2])
        assert torch.equal(seen[0][0].kept, patch.last_patterns[0].kept)
        # skip=1.0 never leaves dense attention
        with SparseAttentionPatch(model, "uniform", keep=0.3, skip=1.0, block_size=4,
                                  min_seq_len=0) as never, denoising(model, 3, 12) as state:
            for s in range(3):
                state.step = s
                assert torch.equal(model(ids).logits, dense[0])
        assert never.stats["sparse"] == 0


def test_generation_regions_get_their_share(loaded):
    model, _ = loaded("tiny-llada")
    ids = _ids(1, 64, 5)
    with torch.no_grad(), SparseAttentionPatch(model, "uniform", keep=0.25, skip=0.0,
                                               block_size=4, min_seq_len=0,
                                               kernel="gather") as patch:
        with denoising(model, total_steps=2, prompt_length=40) as state:
            state.step = 0
            model(ids)
    kept = patch.last_patterns[0].kept  # 16 blocks, 4 kept: diagonal + 3 split 10:6 -> 2:1
    eye = torch.eye(16, dtype=torch.bool)
    rest = kept & ~eye
    assert torch.equal(kept.sum(-1), torch.full((1, 4, 16), 4))
    assert bool(rest[..., :10].any(-1).all()) and bool(rest[..., 10:].any(-1).all())


def test_apply_remove_restore_exactly(loaded):
    model, _ = loaded("tiny-llada")
    calls = []

    def custom(q, k, v, *, mask, module):
        calls.append(module.layer_idx)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    model.set_attention_fn(custom, layers=[1])
    try:
        before = [blk.attn.attn_fn for blk in model.layers]
        patch = SparseAttentionPatch(model, "uniform", keep=0.3, block_size=4)
        patch.apply().apply()  # idempotent
        assert all(blk.attn.attn_fn is not f for blk, f in zip(model.layers, before))
        with torch.no_grad():
            model(_ids(1, 12, 6))  # short: dense via the previous functions
        assert calls == [1]
        patch.remove()
        assert all(blk.attn.attn_fn is f for blk, f in zip(model.layers, before))
        with pytest.raises(RuntimeError, match="boom"):
            with SparseAttentionPatch(model, "uniform", keep=0.3):
                raise RuntimeError("boom")
        assert all(blk.attn.attn_fn is f for blk, f in zip(model.layers, before))
        with SparseAttentionPatch(model, "standard") as std:
            assert std.active
            assert all(blk.attn.attn_fn is f for blk, f in zip(model.layers, before))
    finally:
        model.set_attention_fn(None)


def test_short_sequences_fall_back_to_dense_and_say_so(loaded, caplog):
    model, _ = loaded("tiny-dream")
    ids = _ids(2, 30, 7)
    with torch.no_grad():
        dense = model(ids).logits
        with caplog.at_level(logging.INFO, logger="headig.sparse"):
            with SparseAttentionPatch(model, "uniform", keep=0.1) as patch:
                a = model(ids).logits
                b = model(ids).logits
    assert torch.equal(a, dense) and torch.equal(b, dense)
    assert patch.stats["dense_short"] == 4 and patch.stats["sparse"] == 0
    assert sum("min_seq_len" in r.getMessage() for r in caplog.records) == 1


def test_bfloat16_model(loaded):
    import headig

    from .conftest import fixture_path

    model, _ = headig.load_model(fixture_path("tiny-llada"), dtype=torch.bfloat16)
    ids = _ids(1, 40, 8)
    with torch.no_grad():
        dense = model(ids).logits
        with SparseAttentionPatch(model, "uniform", keep=1.0, block_size=4, min_seq_len=0,
                                  kernel="gather"):
            full = model(ids).logits
        with SparseAttentionPatch(model, "uniform", keep=0.3, block_size=4, min_seq_len=0,
                                  kernel="gather"):
            sparse = model(ids).logits
    assert full.dtype == torch.bfloat16 and sparse.dtype == torch.bfloat16
    torch.testing.assert_close(full.float(), dense.float(), atol=6e-2, rtol=5e-2)
    assert torch.isfinite(sparse.float()).all()


def test_masks_reduce_to_key_padding():
    m2 = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    kv, other = split_mask(m2[:, None, None, :], 2, 5)
    assert torch.equal(kv, m2) and other is None
    # Dream-style m_i & m_j with the model's empty-row fix: still key padding
    m4 = (m2[:, :, None] & m2[:, None, :])
    m4 = m4 | ~m4.any(-1, keepdim=True)
    kv, other = split_mask(m4[:, None], 2, 5)
    assert torch.equal(kv, m2) and other is None
    # a general mask is kept for the dense-mask kernel
    tri = torch.ones(5, 5, dtype=torch.bool).tril().expand(2, 1, 5, 5)
    kv, other = split_mask(tri, 2, 5)
    assert kv is None and torch.equal(other, tri)
    assert split_mask(torch.ones(2, 1, 1, 5, dtype=torch.bool), 2, 5) == (None, None)


def test_general_mask_uses_dense_mask_kernel(loaded):
    model, _ = loaded("tiny-llada")
    ids = _ids(1, 24, 9)
    causal = torch.ones(24, 24, dtype=torch.bool).tril()[None, None]
    with torch.no_grad():
        dense = model(ids, attention_mask=causal).logits
        with SparseAttentionPatch(model, "uniform", keep=1.0, block_size=4, min_seq_len=0,
                                  kernel="gather"):
            sparse = model(ids, attention_mask=causal).logits
    torch.testing.assert_close(sparse, dense, atol=2e-5, rtol=1e-5)


def test_patch_bad_input(loaded):
    model, _ = loaded("tiny-llada")
    bad = [
        (dict(mode="sparse"), ValueError, "mode"),
        (dict(keep=-0.1), ValueError, "keep"),
        (dict(keep=1.2), ValueError, "keep"),
        (dict(keep=0.0), ValueError, "keep"),
        (dict(skip=1.5), ValueError, "skip"),
        (dict(min_keep=0.5), ValueError, "min_keep"),
        (dict(max_keep=0.1), ValueError, "max_keep"),
        (dict(kv_groups="heads"), ValueError, "kv_groups"),
        (dict(kernel="triton"), ValueError, "kernel"),
        (dict(block_size=0), ValueError, "block_size"),
        (dict(layers=[5]), ValueError, "layers"),
        (dict(importance=torch.ones(2, 4)), ValueError, "only used by mode='adaptive'"),
        (dict(mode="adaptive"), ValueError, "needs importance"),
        (dict(mode="adaptive", importance=torch.ones(3, 4)), ValueError, r"\[2, 4\]"),
        (dict(mode="adaptive", importance=torch.ones(4)), ValueError, "shape"),
        (dict(mode="adaptive", importance=torch.tensor([[1.0, float("nan"), 0, 0]] * 2)),
         ValueError, "NaN"),
        (dict(mode="adaptive", importance="scores.pt"), TypeError, "HeadImportance"),
    ]
    for kwargs, exc, match in bad:
        with pytest.raises(exc, match=match):
            SparseAttentionPatch(model, **kwargs)
    # NaN outside the attributed layers is fine (those rows are ignored)
    scores = torch.tensor([[float("nan")] * 4, [1.0, 2.0, 3.0, 4.0]])
    SparseAttentionPatch(model, "adaptive", importance=SimpleNamespace(scores=scores, layers=[1]))
    with pytest.raises(TypeError, match="native headig model"):
        SparseAttentionPatch(torch.nn.Linear(2, 2))
    assert all(blk.attn.attn_fn.__name__ == "sdpa_attention" for blk in model.layers)


def test_generate_integration(loaded, golden):
    generation = pytest.importorskip("headig.diffusion.generation")
    model, _ = loaded("tiny-llada")
    g = golden("tiny-llada")
    prompt = g["generate.prompt"]
    kw = dict(steps=8, gen_length=8, block_length=4, temperature=0.0)
    with torch.no_grad():
        with SparseAttentionPatch(model, "uniform", keep=1.0, skip=0.25, block_size=2,
                                  min_seq_len=0, kernel="gather") as patch:
            out = generation.generate(model, prompt, **kw)
    assert torch.equal(out, g["generate.lowconf_blocks"])
    assert patch.stats["builds"] == model.family.n_layers  # once per layer for the run
    assert patch.stats["dense_schedule"] == 2 * model.family.n_layers  # steps 0 and 1
    with torch.no_grad(), SparseAttentionPatch(model, "uniform", keep=0.3, skip=0.25,
                                               block_size=2, min_seq_len=0,
                                               kernel="gather") as patch:
        sparse_out = generation.generate(model, prompt, **kw)
    assert sparse_out.shape == out.shape and torch.equal(sparse_out[:, :6], prompt)
    assert patch.stats["builds"] == model.family.n_layers


def test_gradients_flow_through_sparse_attention(loaded):
    """With grad enabled on CPU, auto picks the gather kernel (flex has no CPU backward)."""
    from headig import HeadGate

    model, _ = loaded("tiny-llada")
    ids = _ids(1, 40, 10)
    alpha = torch.ones(2, 4, requires_grad=True)
    with HeadGate(model, alpha), SparseAttentionPatch(model, "uniform", keep=0.5, block_size=4,
                                                      min_seq_len=0) as patch:
        model(ids).logits.logsumexp(-1).sum().backward()
    assert alpha.grad is not None and bool(torch.isfinite(alpha.grad).all())
    assert float(alpha.grad.abs().sum()) > 0
    assert patch.stats["kernel_gather"] >= 1  # layer 1's q/k/v depend on the gates


def test_dream_generation_integration(loaded, golden):
    generation = pytest.importorskip("headig.diffusion.generation")
    model, _ = loaded("tiny-dream")
    g = golden("tiny-dream")
    prompt = g["generate.prompt"]
    kw = dict(steps=8, gen_length=8, alg="entropy", temperature=0.0)
    with torch.no_grad():
        with SparseAttentionPatch(model, "adaptive", keep=1.0, skip=0.5, block_size=2,
                                  min_seq_len=0, kernel="gather", kv_groups="kv",
                                  importance=torch.randn(2, 4)) as patch:
            out = generation.generate(model, prompt, **kw)
    assert torch.equal(out, g["generate.entropy"])
    assert patch.stats["builds"] == 2 and patch.stats["dense_schedule"] > 0


# ----------------------------------------------------------------------------- policy API


def test_budget_policy_call_style_equals_legacy(loaded):
    """New-style policies give bit-identical budgets, patterns and logits to mode=..."""
    model, _ = loaded("tiny-dream")
    ids = _ids(2, 61, 11)
    imp = torch.randn(2, 4, generator=torch.Generator().manual_seed(3))
    kw = dict(block_size=4, min_seq_len=0, kernel="gather", kv_groups="kv")
    pairs = [
        (dict(mode="uniform", keep=0.3), UniformBudget(0.3)),
        (dict(mode="adaptive", keep=0.3, importance=imp, min_keep=0.1, max_keep=0.8,
              importance_increases_keep=False, strength=0.5),
         ImportanceBudget(imp, keep=0.3, min_keep=0.1, max_keep=0.8, increases_keep=False,
                          strength=0.5)),
    ]
    for legacy_kw, policy in pairs:
        with torch.no_grad():
            with pytest.warns(DeprecationWarning, match="budget policy"):
                old = SparseAttentionPatch(model, **legacy_kw, **kw)
            with old:
                a = model(ids).logits
            new = SparseAttentionPatch(model, policy, **kw)
            with new:
                b = model(ids).logits
        assert old.mode == new.mode == policy.name and old.keep == new.keep == 0.3
        assert torch.equal(a, b)
        assert torch.equal(old.budgets(16), new.budgets(16))
        assert all(torch.equal(old.last_patterns[i].kept, new.last_patterns[i].kept)
                   for i in range(2))


def test_dense_budget_and_standard_alias(loaded):
    model, _ = loaded("tiny-llada")
    before = [blk.attn.attn_fn for blk in model.layers]
    with pytest.warns(DeprecationWarning):
        legacy = SparseAttentionPatch(model, "standard")
    for patch in (legacy, SparseAttentionPatch(model, "dense"),
                  SparseAttentionPatch(model, DenseBudget())):
        assert patch.mode == "dense" and patch.keep is None
        with patch:
            assert patch.active
            assert all(blk.attn.attn_fn is f for blk, f in zip(model.layers, before))
        assert torch.equal(patch.budgets(7), torch.full((2, 4), 7))
    assert budget_policy("standard") == DenseBudget()


@pytest.mark.parametrize("mode", ["standard", "dense"])
def test_dense_with_importance_is_an_error(loaded, mode):
    model, _ = loaded("tiny-llada")
    with pytest.raises(ValueError, match="dense attention and ignores importance"):
        SparseAttentionPatch(model, mode, importance=torch.ones(2, 4))


def test_registry_and_budget_policy_errors():
    assert {"dense", "uniform", "adaptive"} <= set(budget_names())
    assert budget_policy("uniform", keep=0.25) == UniformBudget(0.25)
    assert budget_policy("importance", importance=torch.ones(2, 4)).name == "adaptive"
    with pytest.raises(ValueError, match=r"\['min_keep'\] do not apply to the 'uniform' budget"):
        budget_policy("uniform", keep=0.3, min_keep=0.1)
    with pytest.raises(ValueError, match="expected one of"):
        budget_policy("no_such_policy")
    with pytest.raises(ValueError, match="keep"):
        UniformBudget(1.5)
    with pytest.raises(ValueError, match="min_keep"):
        ImportanceBudget(torch.ones(2, 4), keep=0.2, min_keep=0.5)
    with pytest.raises(ValueError, match="needs importance"):
        ImportanceBudget(None)


def test_policy_and_legacy_options_do_not_mix(loaded):
    model, _ = loaded("tiny-llada")
    with pytest.raises(TypeError, match=r"\['keep'\] belong to the budget policy"):
        SparseAttentionPatch(model, UniformBudget(0.3), keep=0.5)
    with pytest.raises(TypeError, match="BudgetPolicy"):
        SparseAttentionPatch(model, 0.3)
    with pytest.raises(ValueError, match=r"\[2, 4\]"):  # checked before any forward
        SparseAttentionPatch(model, ImportanceBudget(torch.ones(3, 4)))


def test_a_new_policy_is_one_small_class(loaded):
    """A future policy (here: the first heads keep more) plugs in with exact totals."""
    from dataclasses import dataclass

    @register_budget
    @dataclass(frozen=True)
    class FrontLoaded(BudgetPolicy):
        keep: float = 0.3
        name = "front-loaded-test"

        def counts(self, n_blocks, layers, n_layers, n_heads, *, group_size=1,
                   kv_groups="query"):
            weights = torch.linspace(2.0, 1.0, n_heads).expand(len(layers), n_heads)
            u = uniform_count(n_blocks, self.keep)
            out = torch.full((n_layers, n_heads), n_blocks, dtype=torch.long)
            from headig.sparse import allocate
            out[layers] = allocate(weights, len(layers) * n_heads * u, 1, n_blocks)
            return out

    model, _ = loaded("tiny-llada")
    policy = budget_policy("front-loaded-test", keep=0.3)
    patch = SparseAttentionPatch(model, policy, block_size=4, min_seq_len=0, kernel="gather")
    b = patch.budgets(20)
    assert int(b.sum()) == 2 * 4 * 6 and int(b[0, 0]) > int(b[0, 3])
    with torch.no_grad(), patch:
        out = model(_ids(1, 80, 12)).logits
    assert torch.isfinite(out).all()
    assert torch.equal(patch.last_patterns[0].kept.sum(-1)[0, :, 0].long(), b[0])


def test_partial_install_restores_attention(loaded, monkeypatch):
    model, _ = loaded("tiny-llada")
    before = [blk.attn.attn_fn for blk in model.layers]
    patch = SparseAttentionPatch(model, UniformBudget(0.3), block_size=4)
    real = patch._make_fn

    def flaky(layer, prev):
        if layer == 1:
            raise RuntimeError("cannot patch layer 1")
        return real(layer, prev)

    monkeypatch.setattr(patch, "_make_fn", flaky)
    with pytest.raises(RuntimeError, match="layer 1"):
        patch.apply()
    assert not patch.active
    assert all(blk.attn.attn_fn is f for blk, f in zip(model.layers, before))


@pytest.mark.parametrize("keep", [0.07, 0.3, 0.55, 1.0])
def test_policy_totals_are_integer_exact(loaded, keep):
    model, _ = loaded("tiny-dream")
    imp = torch.randn(2, 4, generator=torch.Generator().manual_seed(5))
    for n_blocks in (1, 3, 17, 64):
        u = uniform_count(n_blocks, keep)
        for policy in (UniformBudget(keep), ImportanceBudget(imp, keep=keep)):
            for kv in ("query", "kv"):
                b = SparseAttentionPatch(model, policy, kv_groups=kv).budgets(n_blocks)
                assert b.dtype == torch.long and int(b.sum()) == 2 * 4 * u


@pytest.mark.parametrize("name,mode", [("tiny-llada", "uniform"), ("tiny-dream", "adaptive")])
def test_padded_rows_get_the_budget_they_get_alone(loaded, name, mode):
    """A row's sparse pattern and logits do not depend on how far its batch-mates pad it."""
    model, _ = loaded(name)
    fam = model.family
    imp = torch.randn(fam.n_layers, fam.n_heads, generator=torch.Generator().manual_seed(3))
    lengths = (61, 37, 22)
    ids = _ids(len(lengths), max(lengths), 5)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    kw = dict(keep=0.3, block_size=4, min_seq_len=0, kernel="gather")
    if mode == "adaptive":
        kw["importance"] = imp
    # the default counts budgets on the padded length: the short rows differ from alone
    with torch.no_grad(), SparseAttentionPatch(model, mode, **kw) as padded_budget:
        model(ids, attention_mask=mask)
    assert not torch.equal(padded_budget.last_patterns[0].kept[2, :, :6, :6].sum(-1),
                           torch.full((fam.n_heads, 6), 2))
    kw["row_budgets"] = True
    for in_generation in (False, True):
        patch = SparseAttentionPatch(model, mode, **kw)
        with torch.no_grad(), patch:
            if in_generation:
                with denoising(model, total_steps=4, prompt_length=8) as st:
                    st.step = 3
                    batched = model(ids, attention_mask=mask).logits
            else:
                batched = model(ids, attention_mask=mask).logits
        grouped = patch.last_patterns[0]
        for i, n in enumerate(lengths):
            alone = SparseAttentionPatch(model, mode, **kw)
            with torch.no_grad(), alone:
                if in_generation:
                    with denoising(model, total_steps=4, prompt_length=8) as st:
                        st.step = 3
                        single = model(ids[i:i + 1, :n]).logits
                else:
                    single = model(ids[i:i + 1, :n]).logits
            torch.testing.assert_close(batched[i, :n], single[0], atol=2e-5, rtol=1e-5)
            nk = math.ceil(n / 4)
            kept = grouped.kept[i, :, :nk, :nk]
            assert torch.equal(kept, alone.last_patterns[0].kept[0])
            assert int(kept[:, 0].sum()) == int(alone.budgets(nk)[0].sum())
