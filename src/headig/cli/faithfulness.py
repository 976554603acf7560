"""``headig faithfulness``: every estimator at several budgets against exact Shapley values.

Needs a model (or a layer range) with at most 16 heads, e.g. the embedded tiny model:
every head subset is evaluated once, which gives the exact Shapley values and the
pruning oracle. Writes ``faithfulness.csv/.json/.md``, ``faithfulness.png`` and
``exact_shapley.safetensors`` into ``--out``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from headig.cli._common import (
    Formatter,
    add_data_arguments,
    add_model_arguments,
    add_objective_arguments,
    check_out,
    flags,
    layers_from_args,
    load_data_from_args,
    load_model_from_args,
    objective_from_args,
    parse_list,
    rows_per_forward,
    say,
)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "faithfulness", formatter_class=Formatter,
        help="compare estimators (DP, STP variants, Shapley sampling, ...) with exact Shapley",
        description="Enumerate every subset of at most 16 heads for exact Shapley values and "
                    "the pruning oracle, then run each estimator at several budgets on the same "
                    "examples and masks: Spearman / Pearson vs exact, pruning fidelity vs the "
                    "oracle, completeness residual, measured cost.")
    g = p.add_argument_group("model and data")
    add_model_arguments(g)
    add_data_arguments(g, limit=48, what="attribution")
    g.add_argument(*flags("--layer_start"), type=int, default=None,
                   help="first attributed layer (inclusive)")
    g.add_argument(*flags("--layer_end"), type=int, default=None,
                   help="last attributed layer (inclusive, -1 = last)")
    g = p.add_argument_group("estimators")
    g.add_argument("--grid", choices=("quick", "full", "minimal"), default="quick",
                   help="estimator settings: minimal (one budget each), quick, full (docs)")
    g.add_argument("--seeds", default="0",
                   help="estimator seeds, comma-separated (results are averaged)")
    g.add_argument("--by", choices=("signed", "abs"), default="signed",
                   help="how rankings are read for the pruning fidelity")
    g.add_argument("--topk", type=int, default=None,
                   help="k of the top-k overlap (default: a quarter of the heads)")
    add_objective_arguments(g)
    g = p.add_argument_group("output")
    g.add_argument("--out", default="headig-faithfulness", help="output folder")
    g.add_argument("--overwrite", action="store_true", help="replace earlier results in --out")
    g.add_argument(*flags("--no_plot"), action="store_true", help="skip the PNG")
    g.add_argument(*flags("--no_progress"), action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    t_start = time.time()
    seeds = parse_list(args.seeds, int, "seeds")
    if args.topk is not None and args.topk < 1:
        raise ValueError(f"--topk={args.topk}; expected >= 1")
    objective = objective_from_args(args)
    out = check_out(args.out, ["faithfulness.csv", "faithfulness.json", "faithfulness.md"],
                    args.overwrite)

    from headig.validation.faithfulness import faithfulness

    model, tokenizer, embedded = load_model_from_args(args)
    fam = model.family
    layers = layers_from_args(args, fam.n_layers) or list(range(fam.n_layers))
    n = len(layers) * fam.n_heads
    if n > 16:
        raise ValueError(f"{n} heads in layers {layers[0]}..{layers[-1]}: exact Shapley values "
                         "need 2^n subsets, at most 16 heads; restrict --layer_start/--layer_end")
    encoded, _, desc = load_data_from_args(args, tokenizer, embedded, default_split="train")
    say(f"data: {desc}")
    result = faithfulness(model, encoded, layers=layers, grid=args.grid, seeds=seeds,
                          objective=objective, by=args.by, topk=args.topk,
                          internal_batch_size=rows_per_forward(args, encoded),
                          progress=not args.no_progress, on_stage=lambda m: say(f"... {m}"))
    result.meta.update({"data": desc, "grid": args.grid,
                        "model": "embedded" if embedded else str(args.model),
                        "seconds": time.time() - t_start})
    files = result.save(out, plot=not args.no_plot)
    print(result.to_markdown())
    say(f"wrote {', '.join(str(f) for f in files.values())} ({time.time() - t_start:.0f} s)")
    return 0
