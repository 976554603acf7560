"""``headig sensitivity``: which heads lose most when their attention is made block-sparse.

Runs :func:`headig.attribution.sensitivity.sparsity_sensitivity` (HeadIG over per-head
dense<->sparse gates) on training data and writes a head-score file that
``headig show`` reads and ``SensitivityBudget`` turns into per-head block budgets.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from headig.cli._common import (
    Formatter,
    add_data_arguments,
    add_model_arguments,
    add_objective_arguments,
    flags,
    layers_from_args,
    load_data_from_args,
    load_model_from_args,
    objective_from_args,
    rows_per_forward,
    say,
)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "sensitivity", formatter_class=Formatter,
        help="sparsity sensitivity: per-head attribution of what block-sparse attention costs",
        description="Interpolate every head between its block-sparse output at --keep (gate "
                    "0) and its dense output (gate 1) and integrate the gradient along the "
                    "diagonal path (Gauss-Legendre): the scores add up to J(dense) - J(all "
                    "sparse), positive = the head loses when sparsified.")
    g = p.add_argument_group("model and data")
    add_model_arguments(g)
    add_data_arguments(g, limit=48, what="attribution")
    g.add_argument(*flags("--layer_start"), type=int, default=None,
                   help="first gated layer (inclusive)")
    g.add_argument(*flags("--layer_end"), type=int, default=None,
                   help="last gated layer (inclusive, -1 = last)")
    g = p.add_argument_group("sparse attention and quadrature")
    g.add_argument("--keep", type=float, default=0.3,
                   help="fraction of key blocks the sparse side keeps (uniform budget)")
    g.add_argument(*flags("--block_size"), type=int, default=None,
                   help="tokens per block (default: 128, or smaller so that the longest "
                        "example has at least 16 blocks)")
    g.add_argument("--steps", type=int, default=16, help="Gauss-Legendre nodes on the path")
    g.add_argument("--kernel", choices=("gather", "dense_mask", "flex"), default="gather",
                   help="sparse kernel (needs autograd: gather works everywhere)")
    add_objective_arguments(g)
    g = p.add_argument_group("output")
    g.add_argument("--out", required=True, help="output .safetensors file (HeadImportance)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    t_start = time.time()
    out = Path(args.out)
    if out.suffix != ".safetensors":
        out = out / "sensitivity.safetensors"
    if out.exists() and not args.overwrite:
        raise ValueError(f"{out} exists; pass --overwrite to replace it")
    objective = objective_from_args(args)

    from headig.attribution.sensitivity import sparsity_sensitivity
    from headig.validation.sparse import auto_block_size

    model, tokenizer, embedded = load_model_from_args(args)
    fam = model.family
    layers = layers_from_args(args, fam.n_layers) or list(range(fam.n_layers))
    encoded, _, desc = load_data_from_args(args, tokenizer, embedded, default_split="train")
    say(f"data: {desc}")
    block = args.block_size or auto_block_size(max(len(e.input_ids) for e in encoded))
    res = sparsity_sensitivity(model, encoded, keep=args.keep, block_size=block,
                               steps=args.steps, kernel=args.kernel, layers=layers,
                               objective=objective,
                               internal_batch_size=rows_per_forward(args, encoded) or 64)
    imp = res.to_importance()
    out.parent.mkdir(parents=True, exist_ok=True)
    imp.save(out)
    delta = (res.j_full - res.j_baseline).mean()
    print(f"J(dense) - J(sparse, keep {args.keep:g}, block {block}) = {float(delta):+.4f} "
          f"(mean over {len(encoded)} examples); completeness residual "
          f"{float(res.residual.abs().mean()):.2e} "
          f"({float(res.relative_residual.mean()):.2%} of |J(dense) - J(sparse)|)")
    print("score per head (rows = layers; positive = loses when sparsified):")
    for i in layers:
        print(f"  L{i}: " + " ".join(f"{float(v):+.4f}" for v in imp.scores[i]))
    say(f"wrote {out} ({time.time() - t_start:.0f} s)")
    return 0
