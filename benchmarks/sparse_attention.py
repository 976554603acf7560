"""Benchmark: uniform and adaptive block-sparse attention against dense SDPA, side by side.

Two parts, both measured in one run with the variants interleaved (so a busy machine
slows all of them alike) and reported as medians:

1. Attention alone, through the exact code path the patch installs (one layer, q/k/v of
   ``--heads`` x ``--head-dim``), for every length in ``--lengths`` and keep in ``--keeps``:
   - dense: the model's SDPA attention function;
   - one-shot: pattern chosen on the fly from the same q/k (likelihood scoring);
   - reuse: pattern chosen once per generation and reused (a denoising step after the
     build step).
2. End to end: one denoising-step forward of the tiny vendored models (``--models``) at
   ``--e2e-lengths``, dense vs uniform vs adaptive with the library defaults (so short
   sequences fall back to dense).

Example (the defaults; a few minutes on 2 CPU cores)::

    python benchmarks/sparse_attention.py
    python benchmarks/sparse_attention.py --lengths 4096,8192 --keeps 0.3 --repeats 5
    python benchmarks/sparse_attention.py --device cuda --dtype bfloat16 \\
        --lengths 4096,16384,65536 --heads 32
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from headig.models.modeling import sdpa_attention
from headig.schedule import denoising
from headig.sparse import SparseAttentionPatch
from headig.sparse.kernels import flex_available

ROOT = Path(__file__).resolve().parents[1]


class _Attn(nn.Module):
    def __init__(self, n_heads: int, n_kv_heads: int) -> None:
        super().__init__()
        self.layer_idx = 0
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.attn_fn = sdpa_attention


class _Block(nn.Module):
    def __init__(self, n_heads: int, n_kv_heads: int) -> None:
        super().__init__()
        self.attn = _Attn(n_heads, n_kv_heads)


class OneLayer(nn.Module):
    """The smallest thing SparseAttentionPatch accepts: one layer's attention function."""

    def __init__(self, n_heads: int, n_kv_heads: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_Block(n_heads, n_kv_heads)])

    def attend(self, q, k, v):
        attn = self.layers[0].attn
        return attn.attn_fn(q, k, v, mask=None, module=attn)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _attention_rows(args: argparse.Namespace, layer: OneLayer, importance: torch.Tensor,
                    t: int, device: torch.device, dtype: torch.dtype) -> None:
    h, kv, d, b = args.heads, args.kv_heads or args.heads, args.head_dim, args.batch
    gen = torch.Generator().manual_seed(t)
    q = torch.randn(b, h, t, d, generator=gen).to(device, dtype)
    k = torch.randn(b, kv, t, d, generator=gen).to(device, dtype)
    v = torch.randn(b, kv, t, d, generator=gen).to(device, dtype)

    def attend():
        return layer.attend(q, k, v)

    variants: dict[str, Callable[[], object]] = {"dense": attend}
    kernels: set[str] = set()
    for keep in args.keeps:
        for mode in ("uniform", "adaptive"):
            kw = {"importance": importance} if mode == "adaptive" else {}
            patch = SparseAttentionPatch(layer, mode, keep=keep, block_size=args.block_size,
                                         skip=0.0, kernel=args.kernel, min_seq_len=0, **kw)
            # the reused pattern; its kernel time depends on its density, not on the estimate
            cheap = SparseAttentionPatch(layer, mode, keep=keep, block_size=args.block_size,
                                         skip=0.0, kernel=args.kernel, min_seq_len=0,
                                         estimate="pooled", **kw)
            with cheap, denoising(layer, total_steps=2, prompt_length=t // 2) as st:
                st.step = 1
                attend()  # warm-up (compiles on first use)
                built = dict(st.cache)
            built = {(patch._cache_key, key[1]): value for key, value in built.items()}

            def one_shot(patch=patch):
                with patch:
                    return attend()

            def reuse(patch=patch, built=built):
                with patch, denoising(layer, total_steps=2, prompt_length=t // 2) as st:
                    st.step = 1
                    st.cache.update(built)
                    return attend()

            one_shot()
            variants[f"{mode} 1-shot {keep}"] = one_shot
            variants[f"{mode} reuse {keep}"] = reuse
            kernels |= {name for name in patch.stats if name.startswith("kernel_")}
    # the build step of a generation (exact estimate, once per run), keep 0.3 uniform
    builder = SparseAttentionPatch(layer, "uniform", keep=0.3, block_size=args.block_size,
                                   skip=0.0, kernel=args.kernel, min_seq_len=0)
    with builder, denoising(layer, total_steps=2, prompt_length=t // 2) as st:
        st.step = 1
        build = _time(attend, device)
    attend()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            times[name].append(_time(fn, device))
    dense = _median(times["dense"])
    for keep in args.keeps:
        cells = []
        for name in ("uniform 1-shot", "uniform reuse", "adaptive 1-shot", "adaptive reuse"):
            m = _median(times[f"{name} {keep}"])
            cells.append(f"{m * 1e3:.1f} ({m / dense:.2f})")
        print(f"| {t} | {keep} | {dense * 1e3:.1f} | " + " | ".join(cells)
              + f" | {build * 1e3:.0f} ({build / dense:.1f}) |", flush=True)
    if kernels != {"kernel_flex"}:
        print(f"(kernels used at T={t}: {sorted(kernels)})")


def attention_table(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> None:
    h, kv, d, b = args.heads, args.kv_heads or args.heads, args.head_dim, args.batch
    layer = OneLayer(h, kv)
    importance = torch.randn(1, h, generator=torch.Generator().manual_seed(0))
    print(f"\n## Attention alone: B={b}, H={h}, KV={kv}, D={d}, {dtype}, block "
          f"{args.block_size}, kernel {args.kernel}, median of {args.repeats}\n")
    print("| T | keep | dense ms | uniform 1-shot ms (x dense) | uniform reuse ms (x) | "
          "adaptive 1-shot ms (x) | adaptive reuse ms (x) | build step, keep 0.3 ms (x) |")
    print("|---|---|---|---|---|---|---|---|")
    for t in args.lengths:
        _attention_rows(args, layer, importance, t, device, dtype)


def _e2e_row(args: argparse.Namespace, model: nn.Module, label: str, importance: torch.Tensor,
             t: int, device: torch.device) -> None:
    ids = torch.randint(0, 400, (1, t), generator=torch.Generator().manual_seed(t)).to(device)
    kw = dict(keep=0.3, skip=0.2, min_seq_len=args.min_seq_len, kernel=args.kernel)
    uni = SparseAttentionPatch(model, "uniform", **kw)
    ada = SparseAttentionPatch(model, "adaptive", importance=importance, **kw)
    n = args.e2e_calls

    def forwards() -> float:
        return _time(lambda: [model(ids) for _ in range(n)], device) / n

    with torch.no_grad():
        forwards()
        n = max(n, math.ceil(0.25 / max(forwards(), 1e-6)))  # >= 0.25 s per timed sample

    def step(patch: SparseAttentionPatch) -> float:
        # denoising steps after the build step: the pattern is reused
        with patch, denoising(model, total_steps=10, prompt_length=t // 2) as st:
            st.step = 2
            model(ids)  # builds (not timed)
            st.step = 3
            return forwards()

    def scoring() -> float:
        with uni:
            return forwards()

    with torch.no_grad():
        forwards(), step(uni), step(ada), scoring()  # warm-up
        times: dict[str, list[float]] = {"d": [], "u": [], "a": [], "s": []}
        for _ in range(args.e2e_repeats):
            times["d"].append(forwards())
            times["u"].append(step(uni))
            times["a"].append(step(ada))
            times["s"].append(scoring())
    dense = _median(times["d"])
    cells = [f"{_median(times[x]) * 1e3:.2f} ({_median(times[x]) / dense:.2f})"
             for x in ("u", "a", "s")]
    print(f"| {label} | {t} | {dense * 1e3:.2f} | " + " | ".join(cells) + " |", flush=True)


def e2e_table(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> None:
    import headig

    print(f"\n## End to end: one denoising-step forward of the tiny models, {dtype}, library "
          f"defaults (block 128, dense below {args.min_seq_len or 'the default min_seq_len'}), "
          f"median over {args.e2e_repeats} repeats of the mean of >= 0.25 s of forwards\n")
    print("| model | T | dense ms | uniform 0.3 step ms (x dense) | adaptive 0.3 step ms (x) | "
          "uniform 0.3 scoring forward ms (x) |")
    print("|---|---|---|---|---|---|")
    overheads: list[str] = []
    for name in args.models:
        path = Path(name)
        if not path.exists():
            path = ROOT / "tests" / "fixtures" / name
        model, _ = headig.load_model(path, dtype=dtype, device=device)
        fam = model.family
        importance = torch.randn(fam.n_layers, fam.n_heads,
                                 generator=torch.Generator().manual_seed(1))
        for t in args.e2e_lengths:
            _e2e_row(args, model, path.name, importance, t, device)
        overheads.append(_fallback_overhead(model, path.name, device))
    print()
    for line in overheads:
        print(line)


def _fallback_overhead(model: nn.Module, label: str, device: torch.device) -> str:
    """Cost the patch adds to an attention call it leaves dense (a short sequence)."""
    attn = model.layers[0].attn
    fam = model.family
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, fam.n_heads, 128, fam.head_dim, generator=gen).to(device, model.dtype)
    k = torch.randn(1, fam.n_kv_heads, 128, fam.head_dim, generator=gen).to(device, model.dtype)
    v = torch.randn_like(k)
    plain = attn.attn_fn
    patch = SparseAttentionPatch(model, "uniform", keep=0.3)

    def calls(n: int = 2000) -> float:
        fn = attn.attn_fn
        return _time(lambda: [fn(q, k, v, mask=None, module=attn) for _ in range(n)], device) / n

    a, b = [], []
    with torch.no_grad():
        calls(200)
        for _ in range(7):
            a.append(calls())
            with patch:
                b.append(calls())
    assert attn.attn_fn is plain
    extra = _median(b) - _median(a)
    return (f"{label}: dense-fallback overhead {extra * 1e6:.1f} us per attention call "
            f"({_median(a) * 1e6:.0f} us unpatched, T=128; median of 7 x 2000 calls)")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=_ints, default=[1024, 2048, 4096, 8192, 16384])
    p.add_argument("--keeps", type=_floats, default=[0.1, 0.3, 0.5])
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=None, help="default: --heads (no GQA)")
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--kernel", default="auto", choices=["auto", "flex", "gather", "dense_mask"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--models", type=lambda s: s.split(","), default=["tiny-llada", "tiny-dream"])
    p.add_argument("--e2e-lengths", type=_ints, default=[128, 512, 1024, 4096])
    p.add_argument("--e2e-repeats", type=int, default=7)
    p.add_argument("--e2e-calls", type=int, default=5, help="forwards per timed sample (at least 0.25 s worth)")
    p.add_argument("--min-seq-len", type=int, default=None,
                   help="end-to-end dense threshold (default: the library's)")
    p.add_argument("--skip-attention", action="store_true")
    p.add_argument("--skip-e2e", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(f"# headig sparse attention benchmark\n\n{' '.join(sys.argv)}\n\ntorch "
          f"{torch.__version__}, {device} ({name or platform.machine()}), "
          f"{torch.get_num_threads()} threads, compiled flex available: "
          f"{flex_available(device)}")
    if not args.skip_attention:
        with torch.no_grad():
            attention_table(args, device, dtype)
    if not args.skip_e2e:
        e2e_table(args, device, dtype)


if __name__ == "__main__":
    main()
