"""``headig compare A B``: rank agreement and top-k overlap of two importance files."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from headig.cli._common import add_importance_arguments, load_importance


def register(subparsers: Any) -> None:
    from headig.importance import ORIGINAL_SIGNS, RANK_BY

    p = subparsers.add_parser(
        "compare", help="agreement of two importance files (Spearman, Kendall, top-k overlap)",
        description="Compare two head-importance files over their common attributed layers.")
    p.add_argument("a", help="first importance file (or folder, or original .pt)")
    p.add_argument("b", help="second importance file")
    p.add_argument("--k", type=int, default=None,
                   help="size of the top-k sets (default: 10, or all heads when fewer)")
    p.add_argument("--by", choices=RANK_BY, default="signed",
                   help="rank the top-k by signed score or |score|")
    add_importance_arguments(p)
    p.add_argument("--original_sign_a", choices=ORIGINAL_SIGNS, default=None,
                   help="sign of A when it is an original .pt (overrides --original_sign)")
    p.add_argument("--original_sign_b", choices=ORIGINAL_SIGNS, default=None,
                   help="sign of B when it is an original .pt (overrides --original_sign)")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON")
    p.set_defaults(func=run)


def _num(x: float) -> str:
    return "nan" if isinstance(x, float) and math.isnan(x) else f"{x:.4f}"


def run(args: argparse.Namespace) -> int:
    from headig.importance import compare

    a = load_importance(args.a, args.original_sign_a or args.original_sign, args.n_layers)
    b = load_importance(args.b, args.original_sign_b or args.original_sign, args.n_layers)
    k = args.k
    if k is None:
        common = set(a.layers) & set(b.layers)
        k = max(1, min(10, len(common) * a.n_heads))
    res = compare(a, b, k=k, by=args.by)
    if args.json:
        print(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v)
                          for k, v in res.items()}, indent=2))
        return 0
    k = res["k"]
    print(f"A: {args.a}")
    print(f"B: {args.b}")
    print(f"heads compared: {res['n_heads']} (layers {res['layers'][0]}-{res['layers'][-1]})")
    print(f"spearman      {_num(res['spearman'])}")
    print(f"kendall tau-b {_num(res['kendall'])}")
    print(f"pearson       {_num(res['pearson'])}")
    print(f"top-{k} overlap  {_num(res['topk_overlap'])}  ({round(res['topk_overlap'] * k)} of "
          f"{k} heads shared, ranked by {res['by']})")
    print(f"top-{k} jaccard  {_num(res['topk_jaccard'])}")
    return 0
