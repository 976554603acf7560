"""Sparse kernels against a float64 reference, and the benchmarks' timing harness."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from headig.sparse import kernels
from headig.sparse.patterns import BlockPattern, build_pattern

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _timing  # noqa: E402


def _reference(q, k, v, pattern, key_valid):
    """Masked softmax attention in float64 from the token-level pattern (0 for empty rows)."""
    g = q.shape[1] // k.shape[1]
    kk = k.double().repeat_interleave(g, 1)
    vv = v.double().repeat_interleave(g, 1)
    m = pattern.dense_mask()
    if key_valid is not None:
        m = m & key_valid[:, None, None, :]
    s = (q.double() @ kk.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    p = torch.softmax(s.masked_fill(~m, float("-inf")), -1).nan_to_num(0.0)
    return p @ vv


def _case(seed, *, b=2, h=4, kv=2, t=45, d=16, bs=4, counts=(2, 9, 3, 9), pad=11):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, n, t, d, generator=gen) for n in (h, kv, kv))
    key_valid = torch.ones(b, t, dtype=torch.bool)
    key_valid[0, :pad] = False
    pattern = build_pattern(q, k, torch.tensor(counts), bs, key_valid=key_valid,
                            estimate="pooled", prompt_length=17)
    return q, k, v, pattern, key_valid


@pytest.mark.parametrize("seed,shape", [
    (0, {}),
    (1, {"h": 8, "kv": 8, "counts": (3,) * 8}),        # uniform budgets, no GQA
    (2, {"t": 64, "counts": (16, 1, 5, 16)}),          # whole blocks; a full-row head
    (3, {"b": 1, "h": 6, "kv": 1, "t": 30, "bs": 8, "counts": (1, 2, 3, 4, 2, 1)}),
])
def test_matmul_gather_matches_reference(seed, shape):
    q, k, v, pattern, key_valid = _case(seed, **shape)
    for mask in (key_valid, None):
        out = kernels._gather_matmul(q, k, v, pattern, mask)
        assert out.shape == q.shape and out.dtype == q.dtype
        torch.testing.assert_close(out.double(), _reference(q, k, v, pattern, mask),
                                   atol=2e-6, rtol=1e-5)
        # and the autograd-capable SDPA path gives the same numbers
        torch.testing.assert_close(kernels._gather_sdpa(q, k, v, pattern, mask), out,
                                   atol=2e-6, rtol=1e-5)


def test_matmul_gather_chunking_changes_nothing(monkeypatch):
    q, k, v, pattern, key_valid = _case(4)
    whole = kernels._gather_matmul(q, k, v, pattern, key_valid)
    monkeypatch.setattr(kernels, "_MATMUL_CHUNK_ELEMENTS", 1)  # one query block per matmul
    torch.testing.assert_close(kernels._gather_matmul(q, k, v, pattern, key_valid), whole,
                               atol=1e-6, rtol=1e-6)


def test_rows_that_see_no_key_output_zero():
    q, k, v, pattern, _ = _case(5, b=1, t=40, counts=(1, 1, 1, 1))
    valid = torch.ones(1, 40, dtype=torch.bool)
    valid[0, :12] = False  # the first 3 blocks hold only padding
    out = kernels._gather_matmul(q, k, v, pattern, valid)
    assert bool(torch.isfinite(out).all())
    ref = _reference(q, k, v, pattern, valid)
    empty = ref.abs().sum(-1) == 0
    assert bool(empty.any()), "the case should contain rows with no visible key"
    assert bool((out[empty] == 0).all())
    torch.testing.assert_close(out.double(), ref, atol=2e-6, rtol=1e-5)


def test_low_precision_and_float64_inputs():
    q, k, v, pattern, key_valid = _case(6)
    ref = _reference(q, k, v, pattern, key_valid)
    out16 = kernels._gather_matmul(q.bfloat16(), k.bfloat16(), v.bfloat16(), pattern,
                                   key_valid)
    assert out16.dtype == torch.bfloat16
    torch.testing.assert_close(out16.double(), ref, atol=3e-2, rtol=3e-2)
    out64 = kernels._gather_matmul(q.double(), k.double(), v.double(), pattern, key_valid)
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64, ref, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("name", ["gather", "gather_mm", "dense_mask"])
def test_every_named_kernel_matches_reference(name):
    q, k, v, pattern, key_valid = _case(9)
    for mask in (key_valid, None):
        out = kernels.run_kernel(name, q, k, v, pattern, mask)
        torch.testing.assert_close(out.double(), _reference(q, k, v, pattern, mask),
                                   atol=2e-6, rtol=1e-5)
    assert name in kernels.KERNELS


def test_gather_mm_uses_sdpa_under_autograd():
    q, k, v, pattern, key_valid = _case(7)
    q = q.clone().requires_grad_(True)
    out = kernels.gather_mm_sparse(q, k, v, pattern, key_valid)
    assert out.requires_grad
    out.square().sum().backward()
    qd = q.detach().double().requires_grad_(True)
    _reference(qd, k, v, pattern, key_valid).square().sum().backward()
    torch.testing.assert_close(q.grad.double(), qd.grad, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(kernels.gather_mm_sparse(q, k, v, pattern, key_valid),
                                   out.detach(), atol=2e-6, rtol=1e-5)


def test_full_pattern_equals_dense_sdpa():
    gen = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(1, 4, 50, 16, generator=gen) for _ in range(3))
    pattern = BlockPattern.from_kept(torch.ones(1, 4, 13, 13, dtype=torch.bool), 4, 50)
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(kernels._gather_matmul(q, k, v, pattern), dense,
                               atol=1e-6, rtol=1e-5)


def test_auto_kernel_choice(monkeypatch):
    assert kernels.auto_kernel("cpu", grad=True) == "gather"  # no CPU flex backward
    expected = "flex" if kernels.flex_available("cpu") else "gather"
    assert kernels.auto_kernel("cpu", grad=False) == expected
    monkeypatch.setattr(kernels, "AUTO_CPU_KERNEL", "gather_mm")
    assert kernels.auto_kernel("cpu", grad=False) == "gather_mm"
    assert kernels.auto_kernel("cpu", grad=True) == "gather"


# ----------------------------------------------------------------------------- harness


def test_interleaved_rotates_order_and_pairs_ratios():
    calls: list[str] = []
    clock = iter(range(1, 1000))
    variants = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    # fake timer: the sample is the call's position, so the ratios are exact
    samples = _timing.interleaved(variants, 3, warmup=1,
                                  timer=lambda fn: (fn(), float(next(clock)))[1])
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")
    assert samples == {"a": [1.0, 6.0, 8.0], "b": [2.0, 4.0, 9.0], "c": [3.0, 5.0, 7.0]}
    assert _timing.ratios(samples, "b", "a") == [2.0, 4 / 6, 9 / 8]
    spread = _timing.Spread.of(_timing.ratios(samples, "b", "a"))
    assert (spread.min, spread.median, spread.max, spread.n) == (4 / 6, 9 / 8, 2.0, 3)
    assert spread.fmt() == "1.12 [0.67–2.00]"


def test_interleaved_keeps_each_variants_last_result():
    count = {"a": 0, "b": 0}

    def bump(name):
        count[name] += 1
        return f"{name}{count[name]}"

    results: dict[str, object] = {}
    samples = _timing.interleaved({n: (lambda n=n: bump(n)) for n in "ab"}, 2, warmup=1,
                                  timer=lambda fn: (fn(), 1.0)[1], results=results)
    assert results == {"a": "a3", "b": "b3"} and samples == {"a": [1.0, 1.0], "b": [1.0, 1.0]}


def test_load_record_warns_above_core_count(monkeypatch):
    monkeypatch.setattr(_timing, "cores", lambda: 2)
    loads = iter([(0.5, 0.4, 0.3), (3.5, 1.0, 0.5)])
    monkeypatch.setattr(_timing, "load_average", lambda: next(loads))
    rec = _timing.LoadRecord.start()
    assert "WARNING" not in rec.report() and not rec.loaded()
    rec.stop()
    assert rec.peak == 3.5 and rec.loaded()
    text = rec.report()
    assert "before 0.50/0.40/0.30, after 3.50/1.00/0.50; 2 cores" in text
    assert "WARNING" in text


def test_load_record_tolerates_a_benchmark_filling_every_core(monkeypatch):
    """A 2-thread run alone on 2 cores ends near load 2.0; another job shows as ~3."""
    monkeypatch.setattr(_timing, "cores", lambda: 2)
    for after, loaded in (((2.04, 1.9, 1.5), False), ((2.26, 2.0, 1.5), True)):
        loads = iter([(0.8, 0.8, 0.5), after])
        monkeypatch.setattr(_timing, "load_average", lambda loads=loads: next(loads))
        rec = _timing.LoadRecord.start().stop()
        assert rec.loaded() is loaded and ("WARNING" in rec.report()) is loaded
