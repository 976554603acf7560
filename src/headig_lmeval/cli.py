"""``headig-eval``: the lm-eval command line with ``headig-dllm`` registered up front.

Works without the start-up hook (``headig_lmeval.pth``), for environments where ``.pth``
files are not processed. ``--model`` defaults to ``headig-dllm``; everything else is lm-eval's
own CLI (``headig-eval run ...``, ``headig-eval ls tasks``, legacy ``headig-eval --tasks ...``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from headig_lmeval._hook import MODEL_NAME

_SUBCOMMANDS = ("run", "ls", "validate")


def with_default_model(argv: Sequence[str]) -> list[str]:
    """Insert ``--model headig-dllm`` into a run command that names no model."""
    args = list(argv)
    if any(a in ("-h", "--help") for a in args[:1]) or (args and args[0] in ("ls", "validate")):
        return args
    has_model = any(a in ("--model", "-M") or a.startswith("--model=") for a in args)
    if has_model:
        return args
    at = 1 if args and args[0] == "run" else 0
    return [*args[:at], "--model", MODEL_NAME, *args[at:]]


def main(argv: Sequence[str] | None = None) -> None:
    from headig_lmeval._hook import register

    try:
        register()
    except ImportError as err:
        raise SystemExit(f"headig-eval needs lm-eval: pip install 'headig[lmeval]' ({err})") from err
    from lm_eval.__main__ import cli_evaluate

    args = sys.argv[1:] if argv is None else list(argv)
    sys.argv = ["headig-eval", *with_default_model(args)]
    cli_evaluate()


if __name__ == "__main__":
    main()
