"""``headig demo``: the newcomer's first command (offline, CPU, under 3 minutes)."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo", help="score, prune and sparsify the embedded models; write a report",
        description="Load the tiny diffusion LM shipped with headig, compute HeadIG scores, "
                    "prune the most / least / random heads (with the exhaustive oracle); on "
                    "the shipped long-context model compare uniform, importance-adaptive and "
                    "sensitivity-adaptive sparse-attention budgets (scores precomputed and "
                    "shipped with it); write a report folder (scores, heatmap, plots, "
                    "summary.md). Offline, on a CPU, under 3 minutes on 2 cores.")
    p.add_argument("--out", default="headig-report", help="report folder (default: %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="a smaller budget (fewer examples and settings), about half the time")
    p.add_argument("--model", default=None,
                   help="a folder written by `python -m headig.toy.train_tiny` instead of the "
                        "embedded model")
    p.add_argument("--no_sparse", "--no-sparse", action="store_true",
                   help="skip the sparse-attention comparison")
    p.add_argument("--long_scores", "--long-scores", default=None, metavar="FOLDER",
                   help="scores written by --recompute-long-scores instead of the shipped ones")
    p.add_argument("--recompute_long_scores", "--recompute-long-scores", default=None,
                   metavar="FOLDER",
                   help="only recompute the long-context model's importance and sparsity "
                        "sensitivity (the files shipped in assets/tiny-dllm-long/scores) into "
                        "FOLDER; about 10 minutes on 2 CPU cores")
    p.add_argument("--no_progress", "--no-progress", action="store_true",
                   help="no progress output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from headig.demo import compute_long_scores, run_demo

    if args.recompute_long_scores:
        files = compute_long_scores(args.recompute_long_scores, progress=not args.no_progress)
        print(f"headig demo: {len(files)} files in {files['manifest'].parent.resolve()}")
        return 0
    report = run_demo(args.out, quick=args.quick, model_dir=args.model,
                      progress=not args.no_progress, sparse=not args.no_sparse,
                      long_scores=args.long_scores)
    print(f"headig demo: report in {report.folder.resolve()} "
          f"(open {report.files['summary'].name} first)")
    return 0
