"""Benchmark: uniform and adaptive block-sparse attention against dense SDPA, side by side.

Two parts, both measured in one run with the shared harness in ``_timing.py``: every
repeat runs every variant once (order rotating), each cell is the median ratio to dense of
the same repeat with its min–max spread, and the load average before and after the run is
printed, with a warning when it exceeded the core count (such numbers are not for tables).

1. Attention alone, through the exact code path the patch installs (one layer, q/k/v of
   ``--heads`` x ``--head-dim``), for every length in ``--lengths`` and keep in ``--keeps``:
   - dense: the model's SDPA attention function;
   - one-shot: pattern chosen on the fly from the same q/k (likelihood scoring);
   - reuse: pattern chosen once per generation and reused (a denoising step after the
     build step);
   - build: the generation step that chooses the pattern (exact estimate) and attends;
   with ``--kernels auto,flex,gather`` every kernel gets its own rows, interleaved too.
2. End to end: one denoising-step forward of the tiny vendored models (``--models``) at
   ``--e2e-lengths``, dense vs uniform vs adaptive with the library defaults (so short
   sequences fall back to dense).

Example (the defaults; several minutes on 2 CPU cores)::

    python benchmarks/sparse_attention.py
    python benchmarks/sparse_attention.py --lengths 8192 --keeps 0.3 --kernels auto,flex,gather \
        --threads 2 --skip-e2e
    python benchmarks/sparse_attention.py --threads 1 --clock cpu --lengths 8192 --skip-e2e
    python benchmarks/sparse_attention.py --device cuda --dtype bfloat16 \\
        --lengths 4096,16384,65536 --heads 32
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from headig.models.modeling import sdpa_attention
from headig.schedule import denoising
from headig.sparse import SparseAttentionPatch, UniformBudget, budget_from_mode
from headig.sparse.kernels import KERNELS, flex_available

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import (  # noqa: E402
    CLOCKS,
    LoadRecord,
    Spread,
    conditions,
    interleaved,
    ratios,
    time_once,
    timer_for,
)

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


def _time(fn: Callable[[], object], device: torch.device) -> float:
    return time_once(fn, device)


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def _kernel_list(text: str) -> list[str]:
    names = [x for x in text.split(",") if x]
    bad = [x for x in names if x not in KERNELS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown kernel(s) {bad}")
    return names


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _cell(samples: dict[str, list[float]], name: str, base: str = "dense") -> str:
    """``ms ratio [min-max]``: the median time and the paired per-repeat ratio spread."""
    ms = statistics.median(samples[name]) * 1e3
    return f"{ms:.1f} ({Spread.of(ratios(samples, name, base)).fmt()})"


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
    patches: dict[str, list[SparseAttentionPatch]] = {}
    for kernel in args.kernels:
        patches[kernel] = []
        for keep in args.keeps:
            for mode in ("uniform", "adaptive"):
                budget = budget_from_mode(mode, keep, importance if mode == "adaptive" else None)
                common = dict(block_size=args.block_size, skip=0.0, kernel=kernel,
                              min_seq_len=0)
                patch = SparseAttentionPatch(layer, budget, **common)
                # the reused pattern; its kernel time depends on its density, not the estimate
                cheap = SparseAttentionPatch(layer, budget, estimate="pooled", **common)
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

                variants[f"{kernel} {mode} 1-shot {keep}"] = one_shot
                variants[f"{kernel} {mode} reuse {keep}"] = reuse
                patches[kernel].append(patch)
        # the build step of a generation (exact estimate, once per run), keep 0.3 uniform
        builder = SparseAttentionPatch(layer, UniformBudget(0.3), block_size=args.block_size,
                                       skip=0.0, kernel=kernel, min_seq_len=0)

        def build_step(builder=builder):
            with builder, denoising(layer, total_steps=2, prompt_length=t // 2) as st:
                st.step = 1
                return attend()

        variants[f"{kernel} build"] = build_step
    samples = interleaved(variants, args.repeats, timer=timer_for(args.clock, device))
    for kernel in args.kernels:
        for keep in args.keeps:
            cells = [_cell(samples, f"{kernel} {name} {keep}")
                     for name in ("uniform 1-shot", "uniform reuse", "adaptive 1-shot",
                                  "adaptive reuse")]
            print(f"| {t} | {keep} | {kernel} | {statistics.median(samples['dense']) * 1e3:.1f} | "
                  + " | ".join(cells) + f" | {_cell(samples, f'{kernel} build')} |", flush=True)
    for kernel, runs in patches.items():
        names = {n[7:] for p in runs for n, c in p.stats.items() if n.startswith("kernel_") and c}
        print(f"(T={t}, --kernels {kernel}: ran {sorted(names)})")


def attention_table(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> None:
    h, kv, d, b = args.heads, args.kv_heads or args.heads, args.head_dim, args.batch
    layer = OneLayer(h, kv)
    importance = torch.randn(1, h, generator=torch.Generator().manual_seed(0))
    print(f"\n## Attention alone: B={b}, H={h}, KV={kv}, D={d}, {dtype}, block "
          f"{args.block_size}, {args.repeats} interleaved repeats, {args.clock} clock\n")
    print("Cells: median ms (median ratio to dense of the same repeat [min–max]).\n")
    print("| T | keep | kernel | dense ms | uniform 1-shot | uniform reuse | "
          "adaptive 1-shot | adaptive reuse | build step, keep 0.3 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for t in args.lengths:
        _attention_rows(args, layer, importance, t, device, dtype)


def _e2e_row(args: argparse.Namespace, model: nn.Module, label: str, importance: torch.Tensor,
             t: int, device: torch.device) -> None:
    ids = torch.randint(0, 400, (1, t), generator=torch.Generator().manual_seed(t)).to(device)
    kw = dict(skip=0.2, min_seq_len=args.min_seq_len, kernel=args.kernels[0])
    uni = SparseAttentionPatch(model, UniformBudget(0.3), **kw)
    ada = SparseAttentionPatch(model, budget_from_mode("adaptive", 0.3, importance), **kw)
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

    variants = {"d": forwards, "u": lambda: step(uni), "a": lambda: step(ada), "s": scoring}
    with torch.no_grad():
        times = interleaved(variants, args.e2e_repeats, timer=lambda fn: fn())
    cells = [f"{_median(times[x]) * 1e3:.2f} ({Spread.of(ratios(times, x, 'd')).fmt()})"
             for x in ("u", "a", "s")]
    print(f"| {label} | {t} | {_median(times['d']) * 1e3:.2f} | " + " | ".join(cells) + " |",
          flush=True)


def e2e_table(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> None:
    import headig

    print(f"\n## End to end: one denoising-step forward of the tiny models, {dtype}, library "
          f"defaults (block 128, dense below {args.min_seq_len or 'the default min_seq_len'}), "
          f"kernel {args.kernels[0]}, {args.e2e_repeats} interleaved repeats of the mean of "
          ">= 0.25 s of forwards; cells: median ms (median ratio [min–max])\n")
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
    patch = SparseAttentionPatch(model, UniformBudget(0.3))

    def calls(n: int = 2000) -> float:
        fn = attn.attn_fn
        return _time(lambda: [fn(q, k, v, mask=None, module=attn) for _ in range(n)], device) / n

    def patched() -> float:
        with patch:
            return calls()

    with torch.no_grad():
        calls(200)
        times = interleaved({"a": calls, "b": patched}, 7, warmup=0, timer=lambda fn: fn())
    a, b = times["a"], times["b"]
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
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--kernels", "--kernel", type=_kernel_list, default=["auto"],
                   help=f"comma-separated kernels to compare side by side ({', '.join(KERNELS)}); "
                        "the end-to-end part uses the first")
    p.add_argument("--clock", default="wall", choices=CLOCKS,
                   help="attention table: wall time, or process CPU time (with --threads 1 on "
                        "a shared machine, an estimate of quiet wall time)")
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
    load = LoadRecord.start()
    print(f"# headig sparse attention benchmark\n\n{' '.join(sys.argv)}\n\n{conditions()}; "
          f"{device} ({name or platform.machine()}); compiled flex available: "
          f"{flex_available(device)}")
    print(load.report())
    if not args.skip_attention:
        with torch.no_grad():
            attention_table(args, device, dtype)
    if not args.skip_e2e:
        e2e_table(args, device, dtype)
    print("\n" + load.stop().report())


if __name__ == "__main__":
    main()
