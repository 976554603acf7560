"""``headig show FILE``: the layer x head table, the top heads and what produced the file."""

from __future__ import annotations

import argparse
import json
from typing import Any

from headig.cli._common import add_importance_arguments, load_importance

__all__ = ["add_file_arguments", "load_importance", "register", "run", "summary_lines",
           "top_lines"]


def add_file_arguments(p: argparse.ArgumentParser, *names: str) -> None:
    """Deprecated name of :func:`headig.cli._common.add_importance_arguments`."""
    add_importance_arguments(p)


def register(subparsers: Any) -> None:
    from headig.importance import RANK_BY

    p = subparsers.add_parser(
        "show", help="print an importance file: layer x head table, top heads, settings",
        description="Print a head-importance file (positive = the head helps).")
    p.add_argument("file", help="importance file (.safetensors), a folder holding one (e.g. "
                                "the --out of headig attribute), or an original .pt")
    p.add_argument("--top", type=int, default=10, help="how many top heads to list")
    p.add_argument("--by", choices=RANK_BY, default="signed",
                   help="rank heads by signed score (most helpful first) or by |score|")
    p.add_argument("--precision", type=int, default=3, help="significant digits in the table")
    p.add_argument("--json", action="store_true", help="print the file as JSON instead")
    add_importance_arguments(p)
    p.set_defaults(func=run)


def _fmt(x: Any, digits: int = 3) -> str:
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def summary_lines(imp: Any) -> list[str]:
    """Human-readable lines about how ``imp`` was produced (estimator, path, budget, data)."""
    m = imp.meta
    lines = []
    model = m.get("model")
    fam = m.get("family")
    shape = f"{imp.n_layers} layers x {imp.n_heads} heads"
    lines.append(f"model: {model or '?'}" + (f" ({fam}, {shape})" if fam else f" ({shape})"))
    layers = list(imp.layers)
    contiguous = layers == list(range(layers[0], layers[-1] + 1))
    lines.append("attributed layers: " + (f"{layers[0]}-{layers[-1]}" if contiguous and
                                          len(layers) > 1 else ", ".join(map(str, layers))))
    est = m.get("estimator")
    if est is not None:
        parts = [f"estimator: {est}"]
        if m.get("path") == "STP":
            ramp = m.get("ramp", "?")
            if ramp == "narrow":
                ramp += f" width {m.get('width')}"
            parts.append(f"path: STP ({m.get('samples')} samples, ramp {ramp}, "
                         f"{m.get('sampling')} thresholds)")
        elif m.get("path") == "DP":
            parts.append("path: DP (diagonal)")
        if "rule" in m:
            parts.append(f"rule: {m['rule']}, {m.get('steps')} steps")
        if "permutations" in m:
            parts.append(f"permutations: {m['permutations']}")
        if "coalitions" in m:
            parts.append(f"coalitions: {m['coalitions']}")
        lines.append("  ".join(parts))
        lines.append(
            f"objective: mask_probs {m.get('mask_probs')} x {m.get('mask_samples_per_prob')}, "
            f"loss {m.get('loss_normalize')}; baseline {m.get('baseline')}; postprocess "
            f"{m.get('postprocess')}; seeds: path {m.get('seed')}, masks {m.get('mask_seed')}")
    elif m.get("source_format") == "original_head_importance_pt":
        how = "negated on load" if m.get("negated") else "used as stored"
        lines.append(f"original research file {m.get('source_file')} (original_sign "
                     f"{m.get('original_sign')}: {how})")
        orig = m.get("original_metadata") if isinstance(m.get("original_metadata"), dict) else {}
        known = [k for k in ("path_mode", "path_samples", "ig_steps", "baseline",
                             "mask_probs", "ig_postprocess", "max_samples") if k in orig]
        if known:
            lines.append("original settings: " + ", ".join(f"{k}={orig[k]}" for k in known))
    n = imp.n_examples if imp.n_examples is not None else m.get("n_examples")
    data = m.get("data") if isinstance(m.get("data"), dict) else {}
    if n is not None or data:
        src = f" from {data.get('source')}" if data.get("source") else ""
        fp = m.get("data_fingerprint") or data.get("fingerprint")
        lines.append(f"examples: {n}{src}" + (f" (fingerprint {fp})" if fp else ""))
    comp = m.get("completeness")
    if isinstance(comp, dict):
        agg = comp.get("aggregate_relative_residual")
        lines.append("completeness residual: " +
                     (f"{_fmt(agg)} of |J(1) - J(baseline)| (sum over examples), "
                      if agg is not None else "") +
                     f"mean |residual| {_fmt(comp.get('mean_abs_residual'))}, mean relative "
                     f"{_fmt(comp.get('mean_relative_residual'))}")
    if "seconds" in m:
        lines.append(f"time: {m['seconds']} s on {m.get('device')} ({m.get('dtype')}), "
                     f"world size {m.get('world_size')}, headig {m.get('headig_version')}")
    lines.append("sign: positive = the head helps (attribution of J = -loss)")
    return lines


def top_lines(imp: Any, k: int, by: str) -> list[str]:
    n = len(imp.entries())
    k = max(0, min(int(k), n))
    se = imp.stderr
    lines = []

    def row(rank: int, e: tuple[int, int, float]) -> str:
        layer, head, s = e
        err = f" ± {float(se[layer, head]):.2g}" if se is not None else ""
        return f"  {rank:>3}  L{layer:<3} H{head:<3} {s:+.4g}{err}"

    if by == "abs":
        lines.append(f"top {k} heads by |score|:")
        lines += [row(i + 1, e) for i, e in enumerate(imp.top_k(k, by="abs"))]
    else:
        lines.append(f"top {k} heads (most helpful):")
        lines += [row(i + 1, e) for i, e in enumerate(imp.top_k(k))]
        lines.append(f"bottom {k} heads (most harmful / least helpful):")
        lines += [row(i + 1, e) for i, e in enumerate(imp.top_k(k, largest=False))]
    return lines


def run(args: argparse.Namespace) -> int:
    if args.top < 0:
        raise ValueError(f"--top={args.top}; expected >= 0")
    imp = load_importance(args.file, args.original_sign, args.n_layers)
    if args.json:
        print(json.dumps(imp.to_dict(), indent=2))
        return 0
    print("\n".join(summary_lines(imp)))
    print()
    print("scores (rows = layers, columns = heads):")
    print(imp.layer_head_table(precision=args.precision))
    if args.top:
        print()
        print("\n".join(top_lines(imp, args.top, args.by)))
    return 0
