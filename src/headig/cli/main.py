"""Entry point of the ``headig`` command.

Each subcommand lives in its own module ``headig.cli.<name>`` exposing
``register(subparsers) -> None``; the parser it adds sets ``func`` (args -> exit code).
Modules are imported only to build the parser, and torch-heavy imports stay inside
``func`` so that ``headig --help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

SUBCOMMANDS = ("demo", "attribute", "show", "plot", "compare", "validate", "faithfulness",
               "sensitivity")


def build_parser() -> argparse.ArgumentParser:
    import headig

    parser = argparse.ArgumentParser(
        prog="headig",
        description="Which attention heads of a diffusion LM (LLaDA, Dream) matter: "
                    "attribute with HeadIG, inspect, and validate causally.",
    )
    parser.add_argument("--version", action="version", version=f"headig {headig.__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"headig.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"headig.cli.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError, TypeError) as err:
        if getattr(args, "debug", False):
            raise
        print(f"headig {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
