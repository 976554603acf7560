"""``headig demo``: the newcomer's first command (offline, CPU, a few minutes)."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo", help="score, prune and sparsify the embedded tiny model; write a report",
        description="Load the tiny diffusion LM shipped with headig, compute HeadIG scores, "
                    "prune the most / least / random heads (with the exhaustive oracle), "
                    "compare uniform and importance-adaptive sparse attention, and write a "
                    "report folder (scores, heatmap, plots, summary.md). Offline, on a CPU.")
    p.add_argument("--out", default="headig-report", help="report folder (default: %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="a smaller budget (fewer examples and settings), about a third of the time")
    p.add_argument("--model", default=None,
                   help="a folder written by `python -m headig.toy.train_tiny` instead of the "
                        "embedded model")
    p.add_argument("--no_sparse", "--no-sparse", action="store_true",
                   help="skip the sparse-attention comparison")
    p.add_argument("--no_progress", "--no-progress", action="store_true",
                   help="no progress output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from headig.demo import run_demo

    report = run_demo(args.out, quick=args.quick, model_dir=args.model,
                      progress=not args.no_progress, sparse=not args.no_sparse)
    print(f"headig demo: report in {report.folder.resolve()} "
          f"(open {report.files['summary'].name} first)")
    return 0
