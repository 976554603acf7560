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
``load_data_from_args``     encoded examples (embedded task data or any source) + labels
``add_objective_arguments`` the masked-diffusion objective's flags; ``objective_from_args``
``rows_per_forward``        ``--internal_batch_size`` or about 16k tokens per forward
``check_out``               an output folder that will not overwrite results silently
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
import math
import sys
import time
from pathlib import Path
from typing import Any

__all__ = [
    "BOS_CHOICES", "DTYPES", "EMBEDDED", "Formatter", "add_data_arguments",
    "add_importance_arguments", "add_layer_arguments", "add_model_arguments",
    "add_objective_arguments", "check_out", "embedded_split", "flags", "layers_from_args",
    "load_data_from_args", "load_importance", "load_model_from_args", "objective_from_args",
    "parse_list", "recipe_options", "resolve_device", "resolve_model", "rows_per_forward",
    "say", "want_accuracy",
]

#: ``--model`` value naming the tiny model shipped with headig.
EMBEDDED = "embedded"
#: Weight dtypes accepted on the command line ("auto" = as stored).
#: ``--bos`` choices.
BOS_CHOICES = ("auto", "yes", "no")
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
                       what: str = "held-out", data_help: str | None = None,
                       data_seed: int | None = 0, bos: bool = True) -> None:
    """``--data``, ``--recipe`` (choices: :data:`headig.data.RECIPES`), ``--split``,
    ``--data_config``, the recipe options, ``--limit``/``--max_samples``, ``--data_seed``,
    ``--max_length``, ``--chat_template`` and (``bos=True``) ``--bos``."""
    from headig.data import RECIPES

    if data_help is None:
        data_help = (f"{what} examples: a .jsonl/.json/.csv file, a folder of split files, "
                     "a Hugging Face dataset name, or embedded[:eval|:train] (default with "
                     "the embedded model: embedded:eval, its held-out set)")
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
                   help="examples to use (embedded data: the same number from every task)")
    p.add_argument(*flags("--data_seed"), type=int, default=data_seed,
                   help="shuffles --data before --limit")
    p.add_argument(*flags("--max_length"), type=int, default=2048,
                   help="tokens per example; longer ones are cut keeping the completion")
    p.add_argument(*flags("--chat_template"), action="store_true",
                   help="wrap prompts in the tokenizer's chat template")
    if bos:
        p.add_argument(*flags("--bos"), default="auto", choices=BOS_CHOICES,
                       help="prepend BOS: auto = no for the embedded task data (as it is "
                            "evaluated), yes otherwise")


def recipe_options(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe options given on the command line (unset flags are left to the recipe)."""
    return {k: getattr(args, k) for k in RECIPE_OPTIONS if getattr(args, k, None) is not None}


# ----------------------------------------------------------------------------- evaluation


def add_objective_arguments(p: argparse.ArgumentParser | Any) -> None:
    p.add_argument(*flags("--mask_probs"), default="0.15,0.3,0.5,0.7,0.9",
                   help="mask probabilities of the loss's masking variants")
    p.add_argument(*flags("--mask_samples_per_prob"), type=int, default=2,
                   help="masking variants per probability")
    p.add_argument(*flags("--loss_normalize"), default="mean_masked",
                   choices=("mean_masked", "sum"), help="per-variant loss: mean or sum")
    p.add_argument(*flags("--mask_seed"), type=int, default=0, help="seeds the masking variants")
    p.add_argument(*flags("--internal_batch_size", "--batch_size"), type=int, default=None,
                   help="rows (pruned model x masking variant) per forward (default: about "
                        "16k tokens per forward, at most 256 rows)")


def objective_from_args(args: argparse.Namespace) -> Any:
    from headig.attribution import MaskedDiffusionObjective

    probs = parse_list(args.mask_probs, float, "mask_probs")
    if any(not 0.0 < p <= 1.0 or math.isnan(p) for p in probs):
        raise ValueError(f"--mask_probs={args.mask_probs!r}; expected probabilities in (0, 1]")
    if args.mask_samples_per_prob < 1:
        raise ValueError(f"--mask_samples_per_prob={args.mask_samples_per_prob}; expected >= 1")
    return MaskedDiffusionObjective(mask_probs=probs,
                                    mask_samples_per_prob=args.mask_samples_per_prob,
                                    loss_normalize=args.loss_normalize, seed=args.mask_seed)


def embedded_split(value: str | None, embedded_model: bool, default: str) -> str | None:
    """'eval'/'train' when --data names the embedded task data (or defaults to it)."""
    if value is None:
        if not embedded_model:
            raise ValueError("--data is required with a model other than the embedded one")
        return default
    if value == EMBEDDED:
        return default
    if value.startswith(EMBEDDED + ":"):
        split = value.split(":", 1)[1]
        if split not in ("eval", "train"):
            raise ValueError(f"--data {value}: expected embedded, embedded:eval or embedded:train")
        return split
    return None


def load_data_from_args(args: argparse.Namespace, tokenizer: Any, embedded_model: bool, *,
                        default_split: str = "eval") -> tuple[list[Any], dict[str, str], str]:
    """(encoded examples, example id -> task label (embedded data only), description)."""
    from headig import data as hdata

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit={args.limit}; expected >= 1")
    split = embedded_split(args.data, embedded_model, default_split)
    labels: dict[str, str] = {}
    if split is not None:
        from headig.toy import tasks
        from headig.toy.embedded import embedded_examples

        raw = embedded_examples(split)
        if args.limit is not None:
            n_tasks = len({e.task for e in raw})
            raw = tasks.subset(raw, max(1, args.limit // n_tasks))
        examples = [hdata.Example(e.prompt, e.completion, id=f"{split}-{i}",
                                  meta={"task": e.task}) for i, e in enumerate(raw)]
        labels = {ex.id: ex.meta["task"] for ex in examples}
        source = f"embedded {split} set"
    else:
        options = recipe_options(args)
        try:
            examples = hdata.load_examples(args.data, recipe=args.recipe, split=args.split,
                                           limit=args.limit, seed=args.data_seed,
                                           config=args.data_config, **options)
        except TypeError as err:  # a recipe option the recipe does not have
            raise ValueError(str(err)) from None
        except ImportError as err:  # a hub dataset without the optional datasets package
            raise ValueError(str(err)) from None
        source = str(args.data)
    if not examples:
        raise ValueError(f"--data {args.data} gave no examples")
    add_bos = args.bos == "yes" or (args.bos == "auto" and split is None)
    encoded, report = hdata.encode_examples(tokenizer, examples, max_length=args.max_length,
                                            add_bos=add_bos, chat_template=args.chat_template)
    if not encoded:
        raise ValueError(f"every example was dropped while encoding:\n{report}")
    desc = (f"{len(encoded)} examples from {source}"
            + (f" ({len(report.dropped)} dropped)" if report.dropped else ""))
    return encoded, labels, desc


def rows_per_forward(args: argparse.Namespace, encoded: list[Any]) -> int:
    """--internal_batch_size, or about 16k tokens per forward (at most 256 rows)."""
    if args.internal_batch_size is not None:
        if args.internal_batch_size < 1:
            raise ValueError(f"--internal_batch_size={args.internal_batch_size}; expected >= 1")
        return args.internal_batch_size
    longest = max(int(e.input_ids.numel()) for e in encoded)
    return max(1, min(256, 16384 // longest))


def want_accuracy(value: str, labels: dict[str, str]) -> bool:
    """auto: exact-match accuracy only where it is meaningful (the embedded task data)."""
    return value == "yes" or (value == "auto" and bool(labels))


def check_out(out: str, files: list[str], overwrite: bool) -> Path:
    folder = Path(out).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {folder} exists and is not a folder")
    clash = [f for f in files if (folder / f).exists()]
    if clash and not overwrite:
        raise ValueError(f"--out {folder} already holds {', '.join(clash)}; choose another "
                         "--out or pass --overwrite")
    return folder


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
