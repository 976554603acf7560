"""Flags and loaders shared by the ``headig`` subcommands.

A subcommand module builds its parser from these helpers so that a flag means the same
thing (name, dashed alias, choices, default, help) everywhere, and loads its inputs with the
same checks and error messages:

==========================  ============================================================
helper                      what it gives
==========================  ============================================================
``flags(*names)``           each flag plus its dashed spelling (``--k_frac``/``--k-frac``)
``Formatter``               help text with each flag's default; metavar shown once
``add_model_arguments``     ``--model`` / ``--dtype`` / ``--device``
``resolve_model``           (checkpoint folder or hub id, is it the embedded model)
``resolve_device``          a device string from ``--device`` (torchrun-aware)
``load_model_from_args``    (model, tokenizer, embedded) from the model flags
``add_data_arguments``      ``--data`` / ``--recipe`` (choices: the recipe registry) / ...
``recipe_options``          the recipe options given on the command line
``add_layer_arguments``     ``--layer_start`` / ``--layer_end`` (inclusive, -1 = last)
``layers_from_args``        the attributed layers, or None when neither flag was given
``add_importance_arguments`` ``--original_sign`` / ``--n_layers`` for original ``.pt`` files
``load_importance``         a HeadImportance from a path, with a clear missing-file error
``parse_list``              comma-separated numbers with a clear error
``say``                     a progress line on stderr
==========================  ============================================================

Choice lists are read from their registries (recipes, original signs, ranking modes),
never restated. Heavy imports (torch, models) happen inside the functions so that
``headig --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

__all__ = [
    "DTYPES", "EMBEDDED", "Formatter", "add_data_arguments", "add_importance_arguments",
    "add_layer_arguments", "add_model_arguments", "flags", "layers_from_args",
    "load_importance", "load_model_from_args", "parse_list", "recipe_options",
    "resolve_device", "resolve_model", "say",
]

#: ``--model`` value naming the tiny model shipped with headig.
EMBEDDED = "embedded"
#: Weight dtypes accepted on the command line ("auto" = as stored).
DTYPES = ("auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16")
#: Recipe options that have their own flag.
RECIPE_OPTIONS = ("prompt_field", "completion_field", "num_fewshot", "answer_mode")


def flags(*names: str) -> list[str]:
    """Each name plus its dashed spelling (``--k_frac`` -> also ``--k-frac``)."""
    out: list[str] = []
    for n in names:
        for v in (n, n[:2] + n[2:].replace("_", "-")):
            if v not in out:
                out.append(v)
    return out


class Formatter(argparse.HelpFormatter):
    """Shows a flag's default in its help (unless None/False or already mentioned) and each
    flag's metavar once, after all its aliases."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return text + " (default: %(default)s)"

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        metavar = self._format_args(action, self._get_default_metavar_for_optional(action))
        return ", ".join(action.option_strings) + " " + metavar


def say(msg: str) -> None:
    """A progress line on stderr (stdout stays for results)."""
    print(msg, file=sys.stderr, flush=True)


def parse_list(text: str, cast: Any, name: str) -> list[Any]:
    """Comma-separated values, each converted with ``cast``; a clear error otherwise."""
    try:
        out = [cast(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--{name}={text!r}; expected comma-separated values such as "
                         f"{'1,2,4' if cast is int else '0.1,0.3,0.5'}") from None
    if not out:
        raise ValueError(f"--{name} is empty")
    return out


# ----------------------------------------------------------------------------- model


def add_model_arguments(p: argparse.ArgumentParser | Any, *, default: str | None = EMBEDDED,
                        device_help: str = "cpu, cuda, cuda:1 ... (default: cuda when "
                                           "available)") -> None:
    """``--model`` (default: the embedded tiny model), ``--dtype``, ``--device``."""
    p.add_argument(*flags("--model"), default=default,
                   help="checkpoint folder (official LLaDA/Dream layout), cached hub id, or "
                        "'embedded' for the tiny model shipped with headig")
    p.add_argument(*flags("--dtype"), default="auto", choices=DTYPES,
                   help="weights dtype (auto = as stored)")
    p.add_argument(*flags("--device"), default=None, help=device_help)


def resolve_model(value: str | None) -> tuple[str, bool]:
    """(checkpoint folder or hub id, is it the embedded model); None means embedded."""
    if value in (None, EMBEDDED):
        from headig.toy.embedded import embedded_model_path

        return str(embedded_model_path()), True
    return str(value), False


def resolve_device(requested: str | None, world: int = 1, local_rank: int = 0) -> str:
    """The device for ``--device``: cuda when available (``cuda:LOCAL_RANK`` under a
    multi-process launch), else cpu; a requested CUDA device must exist."""
    import torch

    if requested is None:
        if torch.cuda.is_available():
            return f"cuda:{local_rank % torch.cuda.device_count()}" if world > 1 else "cuda"
        return "cpu"
    try:
        dev = torch.device(requested)
    except RuntimeError:
        raise ValueError(f"--device={requested!r}; expected cpu, cuda, cuda:N, mps ...") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device={requested}: CUDA is not available on this machine")
    if dev.type == "cuda" and world > 1 and dev.index is None:
        return f"cuda:{local_rank % torch.cuda.device_count()}"
    return str(dev)


def load_model_from_args(args: argparse.Namespace) -> tuple[Any, Any, bool]:
    """(model, tokenizer, embedded) from ``--model/--dtype/--device``; reports on stderr."""
    from headig.models.loading import load_model

    folder, embedded = resolve_model(args.model)
    device = resolve_device(args.device)
    t0 = time.time()
    model, tokenizer = load_model(folder, dtype=None if args.dtype == "auto" else args.dtype,
                                  device=device)
    fam = model.family
    say(f"model: {'embedded tiny model' if embedded else folder} ({fam.name}, {fam.n_layers} "
        f"layers x {fam.n_heads} heads) on {device}, {time.time() - t0:.1f} s")
    return model, tokenizer, embedded


# ----------------------------------------------------------------------------- data


def add_data_arguments(p: argparse.ArgumentParser | Any, *, limit: int | None,
                       data_help: str = "examples: a .jsonl/.json/.csv file, a folder of "
                                        "split files, or a Hugging Face dataset name",
                       data_seed: int | None = 0) -> None:
    """``--data``, ``--recipe`` (choices: :data:`headig.data.RECIPES`), ``--split``,
    ``--data_config``, the recipe options, ``--limit``/``--max_samples``, ``--data_seed``,
    ``--max_length`` and ``--chat_template``."""
    from headig.data import RECIPES

    p.add_argument(*flags("--data"), default=None, help=data_help)
    p.add_argument(*flags("--recipe"), default=None, choices=tuple(RECIPES),
                   help="how records become (prompt, completion) (default: inferred)")
    p.add_argument(*flags("--split"), default=None, help="split of --data")
    p.add_argument(*flags("--data_config"), default=None, help="Hugging Face dataset config")
    p.add_argument(*flags("--prompt_field"), default=None, help="fields recipe: prompt field")
    p.add_argument(*flags("--completion_field"), default=None,
                   help="fields recipe: completion field")
    p.add_argument(*flags("--num_fewshot"), type=int, default=None,
                   help="few-shot prefix (gsm8k, mmlu)")
    p.add_argument(*flags("--answer_mode"), default=None, choices=("full", "final"),
                   help="gsm8k: score the whole solution or only the final answer")
    p.add_argument(*flags("--limit", "--max_samples"), type=int, default=limit,
                   help="examples to use (after a seeded shuffle)")
    p.add_argument(*flags("--data_seed"), type=int, default=data_seed,
                   help="shuffles --data before --limit")
    p.add_argument(*flags("--max_length"), type=int, default=2048,
                   help="tokens per example; longer ones are cut keeping the completion")
    p.add_argument(*flags("--chat_template"), action="store_true",
                   help="wrap prompts in the tokenizer's chat template")


def recipe_options(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe options given on the command line (unset flags are left to the recipe)."""
    return {k: getattr(args, k) for k in RECIPE_OPTIONS if getattr(args, k, None) is not None}


# ----------------------------------------------------------------------------- layers


def add_layer_arguments(p: argparse.ArgumentParser | Any, *, start: int | None = None,
                        end: int | None = None) -> None:
    """``--layer_start`` / ``--layer_end``: an inclusive layer range, -1 = the last layer."""
    p.add_argument(*flags("--layer_start"), type=int, default=start,
                   help="first layer (inclusive)")
    p.add_argument(*flags("--layer_end"), type=int, default=end,
                   help="last layer (inclusive, -1 = last)")


def layers_from_args(args: argparse.Namespace, n_layers: int) -> list[int] | None:
    """The layers named by ``--layer_start/--layer_end``; None when neither was given."""
    if args.layer_start is None and args.layer_end is None:
        return None
    from headig.interventions import layer_range

    start = 0 if args.layer_start is None else args.layer_start
    end = -1 if args.layer_end is None else args.layer_end
    return layer_range(start, end, n_layers)


# ----------------------------------------------------------------------------- importance


def add_importance_arguments(p: argparse.ArgumentParser | Any) -> None:
    """``--original_sign`` / ``--n_layers``: how to read original research ``.pt`` files."""
    from headig.importance import ORIGINAL_SIGNS

    p.add_argument("--original_sign", "--original-sign", choices=ORIGINAL_SIGNS, default=None,
                   help="for original head_importance.pt files, which do not record their sign: "
                        "'loss' = raw files (IG of the loss, negative = important; negated on "
                        "load), 'helps' = already negated ('_neg') files")
    p.add_argument("--n_layers", "--n-layers", type=int, default=None,
                   help="for original .pt files covering a sub-range: the model's layer count")


def load_importance(path: str, original_sign: str | None = None,
                    n_layers: int | None = None) -> Any:
    """:func:`headig.importance.as_importance` of a path, with a clear error for a missing one."""
    from headig.importance import as_importance

    if not Path(path).expanduser().exists():
        raise FileNotFoundError(f"{path}: no such file or folder (expected a headig "
                                ".safetensors importance file, a folder holding one, or an "
                                "original head_importance.pt)")
    return as_importance(str(path), original_sign=original_sign,  # type: ignore[arg-type]
                         n_layers=n_layers)
