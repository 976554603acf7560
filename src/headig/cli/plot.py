"""``headig plot FILE --out heatmap.png``: layer x head heatmap of an importance file."""

from __future__ import annotations

import argparse
from typing import Any

from headig.cli.show import add_file_arguments, load_importance


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "plot", help="draw a layer x head heatmap (PNG/PDF/SVG) of an importance file",
        description="Heatmap of head scores: blue = the head helps, red = it hurts (signed, "
                    "centred at 0), or |score| with --by abs. Grey rows were not attributed.")
    p.add_argument("file", help="importance file, a folder holding one, or an original .pt")
    p.add_argument("--out", required=True, help="image file (.png, .pdf, .svg)")
    p.add_argument("--title", default=None, help="title (default: model, estimator, path)")
    p.add_argument("--by", choices=("signed", "abs"), default="signed",
                   help="signed scores (diverging) or |score| (sequential)")
    p.add_argument("--mark_top", "--mark-top", type=int, default=0,
                   help="outline the k most important heads")
    p.add_argument("--annotate", choices=("auto", "yes", "no"), default="auto",
                   help="write values in the cells (auto: at most 100 cells)")
    p.add_argument("--dpi", type=int, default=150, help="resolution of raster images")
    add_file_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.dpi < 10:
        raise ValueError(f"--dpi={args.dpi}; expected >= 10")
    if args.mark_top < 0:
        raise ValueError(f"--mark_top={args.mark_top}; expected >= 0")
    imp = load_importance(args.file, args.original_sign, args.n_layers)
    from headig.plotting import save_heatmap

    annotate = {"auto": None, "yes": True, "no": False}[args.annotate]
    target = save_heatmap(imp, args.out, dpi=args.dpi, by=args.by, title=args.title,
                          annotate=annotate, mark_top=args.mark_top)
    print(f"wrote {target}")
    return 0
