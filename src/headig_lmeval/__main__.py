"""``python -m headig_lmeval {status,install-hook,remove-hook,args}``.

- ``status``: is the lm-eval start-up hook installed and armed, and does lm-eval resolve
  ``--model headig-dllm`` (and still ``--model hf``)?
- ``install-hook`` / ``remove-hook``: copy or delete ``headig_lmeval.pth`` in this
  interpreter's site-packages, for installs that did not ship it.
- ``args``: the model_args table as Markdown.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import sysconfig
from pathlib import Path

PTH_NAME = "headig_lmeval.pth"


def site_pth() -> Path:
    return Path(sysconfig.get_paths()["purelib"]) / PTH_NAME


def packaged_pth() -> Path:
    return Path(__file__).resolve().with_name(PTH_NAME)


def status() -> int:
    from headig_lmeval import _hook

    target = site_pth()
    print(f"start-up hook file: {target} ({'present' if target.is_file() else 'MISSING'})")
    print(f"hook armed in this interpreter: {_hook.installed() or 'lm_eval' in sys.modules}")
    try:
        import lm_eval.models  # noqa: F401
        from lm_eval.api.registry import model_registry
    except ImportError as err:
        print(f"lm-eval not importable: {err}")
        return 1
    ok = _hook.MODEL_NAME in model_registry and "hf" in model_registry
    print(f"lm-eval resolves {_hook.MODEL_NAME}: {_hook.MODEL_NAME in model_registry}; "
          f"hf: {'hf' in model_registry}")
    return 0 if ok and target.is_file() else 1


def args_table() -> str:
    from headig_lmeval.args import ARGS

    lines = ["| argument | default | values | meaning |", "|---|---|---|---|"]
    for a in ARGS:
        values = " \\| ".join(a.choices) if a.choices else a.kind
        lines.append(f"| `{a.name}` | {a.default!r} | {values} | {a.help} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m headig_lmeval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["status", "install-hook", "remove-hook", "args"])
    ns = parser.parse_args(argv)
    if ns.command == "status":
        return status()
    if ns.command == "install-hook":
        target = site_pth()
        shutil.copyfile(packaged_pth(), target)
        print(f"installed {target}")
        return 0
    if ns.command == "remove-hook":
        target = site_pth()
        if target.is_file():
            target.unlink()
            print(f"removed {target}")
        else:
            print(f"{target} not present")
        return 0
    print(args_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
