"""``headig-eval``: the lm-eval command line with ``headig-dllm`` registered up front.

Works without the start-up hook (``headig_lmeval.pth``), for environments where ``.pth``
files are not processed. ``--model`` defaults to ``headig-dllm``; everything else is lm-eval's
own CLI (``headig-eval run ...``, ``headig-eval ls tasks``, legacy ``headig-eval --tasks ...``).
Unlike plain ``lm_eval``, it checks headig-dllm's ``--model_args`` before lm-eval indexes its
task library (which takes seconds), so a typo fails at once.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from headig_lmeval._hook import MODEL_NAME


def with_default_model(argv: Sequence[str]) -> list[str]:
    """Insert ``--model headig-dllm`` into a run command that names no model."""
    args = list(argv)
    if any(a in ("-h", "--help") for a in args[:1]) or (args and args[0] in ("ls", "validate")):
        return args
    has_model = any(a in ("--model", "-M", "--config", "-C") or a.startswith(("--model=",
                    "--config=")) for a in args)
    if has_model:
        return args
    at = 1 if args and args[0] == "run" else 0
    return [*args[:at], "--model", MODEL_NAME, *args[at:]]


def main(argv: Sequence[str] | None = None) -> None:
    from headig_lmeval._hook import register

    try:
        register()
        from lm_eval._cli import HarnessCLI
        from lm_eval.utils import setup_logging
    except ImportError as err:
        raise SystemExit(f"headig-eval needs lm-eval >= 0.4.13: pip install 'headig[lmeval]' "
                         f"({err})") from err
    args = sys.argv[1:] if argv is None else list(argv)
    sys.argv = ["headig-eval", *with_default_model(args)]
    setup_logging()
    parser = HarnessCLI()
    ns = parser.parse_args()
    if getattr(ns, "model", None) == MODEL_NAME and getattr(ns, "model_args", None):
        from headig_lmeval.args import ModelArgsError, parse_model_args

        try:
            parse_model_args(dict(ns.model_args))
        except ModelArgsError as err:
            print(f"headig-eval: error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
    parser.execute(ns)


if __name__ == "__main__":
    main()
