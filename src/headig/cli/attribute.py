"""``headig attribute``: score every attention head of a diffusion LM on a data set.

Writes into ``--out``:

* ``head_importance.safetensors`` (+ its ``head_importance.json`` summary): the
  :class:`~headig.importance.HeadImportance` (positive = the head helps);
* ``attribution.json``: every setting, the encoding report (dropped / truncated examples),
  the completeness summary and per-example residuals, timings, versions and a status;
* ``checkpoint.safetensors`` while running (one per rank under ``torchrun``): per-example
  results written atomically. Rerunning the same command after a crash resumes from it and
  gives the same scores as an uninterrupted run. It is removed on success unless
  ``--keep_checkpoint``.

Everything that can be checked without the model (flag values, the layer range against
``config.json``, the data, the tokenizer, the state of ``--out``) is checked before the
model is loaded. The original research flag names are accepted (``--path_mode``,
``--ig_steps``, ``--ig_postprocess`` ...), next to tidier aliases (``--path``, ``--steps``,
``--postprocess``) and dashed spellings (``--mask-probs``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headig.attribution.registry import canonical_name, estimator_names, get_estimator
from headig.attribution.rules import get_rule, rule_names
from headig.attribution.runner import CHECKPOINT_FILE, LOG_SCHEMA, RunFolder
from headig.attribution.runner import LOG_FILE as LOG_FILE
from headig.attribution.runner import RESULT_FILE as RESULT_FILE
from headig.cli._common import DTYPES, Formatter, flags, resolve_device
from headig.data import RECIPES

#: ``--ig_steps`` default: refine until converged (docs/method.md, "Converged scores")
DEFAULT_STEPS: int | str = "auto"
DEFAULT_TOL = 0.05

PATHS = {"dp": "dp", "diagonal": "dp", "stp": "stp", "random_threshold": "stp"}


_Formatter = Formatter
_flags = flags


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "attribute", formatter_class=_Formatter,
        help="score every attention head on a data set (HeadIG and other estimators)",
        description="Attribute J = -(masked-reconstruction loss of the completions) to every "
                    "attention head. Positive score = the head helps. A killed run rerun with "
                    "the same command resumes from the checkpoint in --out.")
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default=None,
                   help="checkpoint folder (official LLaDA/Dream layout) or cached hub id; "
                        "default: the embedded tiny model when it is installed")
    g.add_argument("--data", default=None,
                   help="a .jsonl/.json/.csv file, a folder of <split>.<ext> files, or a "
                        "Hugging Face dataset name; default with the embedded model: its "
                        "training data")
    g.add_argument(*_flags("--recipe"), default=None, choices=tuple(RECIPES),
                   help="how records become (prompt, completion); default: inferred "
                        "('fields' for files)")
    g.add_argument(*_flags("--split"), default=None,
                   help="split to attribute on (default: train/dev; a test split warns)")
    g.add_argument(*_flags("--data_config"), default=None, help="Hugging Face dataset config")
    g.add_argument(*_flags("--prompt_field"), default=None, help="fields recipe: prompt field")
    g.add_argument(*_flags("--completion_field"), default=None,
                   help="fields recipe: completion field")
    g.add_argument(*_flags("--max_samples", "--limit"), type=int, default=50,
                   help="examples to attribute (after a seeded shuffle)")
    g.add_argument(*_flags("--max_length"), type=int, default=2048,
                   help="tokens per example; longer ones are cut keeping the completion")
    g.add_argument(*_flags("--num_fewshot"), type=int, default=None,
                   help="few-shot prefix (gsm8k, mmlu)")
    g.add_argument(*_flags("--answer_mode"), default=None, choices=("full", "final"),
                   help="gsm8k: score the whole solution or only the final answer")
    g.add_argument(*_flags("--chat_template"), action="store_true",
                   help="wrap prompts in the tokenizer's chat template")

    g = p.add_argument_group("estimator")
    g.add_argument(*_flags("--estimator"), default="integrated_gradients",
                   choices=estimator_names(),
                   help="integrated_gradients (alias ig) = HeadIG; the others are comparison "
                        "estimators")
    g.add_argument(*_flags("--path", "--path_mode"), default="stp", choices=sorted(PATHS),
                   help="IG path: stp (= random_threshold) or dp (= diagonal)")
    g.add_argument(*_flags("--path_samples", "--samples"), type=int, default=4,
                   help="STP path samples per example (DP is deterministic: one)")
    g.add_argument(*_flags("--ramp"), default="original", choices=("original", "narrow"),
                   help="STP ramp: original (u -> 1, as the paper) or narrow (fixed width)")
    g.add_argument(*_flags("--ramp_width"), type=float, default=0.1,
                   help="width of the narrow ramp")
    g.add_argument(*_flags("--threshold_sampling"), default="iid",
                   choices=("iid", "stratified", "antithetic"),
                   help="how STP thresholds are drawn across path samples")
    g.add_argument(*_flags("--ig_steps", "--steps"), type=_steps_arg, default=DEFAULT_STEPS,
                   help="quadrature steps per path sample, or auto: refine each example "
                        "(doubling the steps, reusing points) until its completeness residual "
                        "is at most --tol or the budget is spent")
    g.add_argument(*_flags("--tol"), type=float, default=DEFAULT_TOL,
                   help="--ig_steps auto: target |sum of scores - (J(1) - J(baseline))| / "
                        "|J(1) - J(baseline)| per example")
    g.add_argument(*_flags("--stability_tol"), type=float, default=None,
                   help="--ig_steps auto: also require the scores to change by at most this "
                        "fraction (L1) between the last two refinement levels")
    g.add_argument(*_flags("--min_steps"), type=int, default=4,
                   help="--ig_steps auto: steps per path sample of the first level")
    g.add_argument(*_flags("--max_steps"), type=int, default=None,
                   help="--ig_steps auto: the finest grid is 1/max_steps (default 1024 "
                        "adaptive, 64 uniform)")
    g.add_argument(*_flags("--max_points"), type=int, default=None,
                   help="--ig_steps auto: most gradient points per example, all path samples "
                        "together (default 64 per path sample)")
    g.add_argument(*_flags("--refine"), default=None, choices=("adaptive", "uniform"),
                   help="--ig_steps auto: halve the intervals that carry the error (adaptive, "
                        "the default with trapezoid) or every interval (uniform)")
    g.add_argument(*_flags("--rule"), default=None, choices=[*rule_names(), "romberg"],
                   help="quadrature rule (default: gauss_legendre for dp, trapezoid for stp; "
                        "'right' = the original)")
    g.add_argument(*_flags("--baseline"), default="zero",
                   help="gate value of an absent head: zero, scalar (uses --baseline_scalar) "
                        "or a number below 1")
    g.add_argument(*_flags("--baseline_scalar"), type=float, default=0.3,
                   help="baseline gate for --baseline scalar")
    g.add_argument(*_flags("--permutations"), type=int, default=8,
                   help="shapley_sampling: permutations per example")
    g.add_argument(*_flags("--max_heads"), type=int, default=16,
                   help="exact_shapley: refuse more attributed heads than this")

    g = p.add_argument_group("objective")
    g.add_argument(*_flags("--mask_probs"), default="0.15,0.3,0.5,0.7,0.9",
                   help="comma-separated mask probabilities of the masking variants")
    g.add_argument(*_flags("--mask_samples_per_prob"), type=int, default=2,
                   help="masking variants drawn per probability")
    g.add_argument(*_flags("--loss_normalize"), default="mean_masked",
                   choices=("mean_masked", "sum"), help="per-variant loss: mean or sum")
    g.add_argument(*_flags("--ig_postprocess", "--postprocess"), default="signed",
                   choices=("signed", "abs", "relu"),
                   help="applied to each example's attribution before the mean")
    g.add_argument(*_flags("--layer_start"), type=int, default=0,
                   help="first attributed layer (inclusive)")
    g.add_argument(*_flags("--layer_end"), type=int, default=-1,
                   help="last attributed layer (inclusive, -1 = last)")
    g.add_argument(*_flags("--seed"), type=int, default=0,
                   help="seed of path thresholds / permutations (and default of the others)")
    g.add_argument(*_flags("--data_seed"), type=int, default=None,
                   help="shuffles the data before --max_samples (default: --seed)")
    g.add_argument(*_flags("--mask_seed"), type=int, default=None,
                   help="seeds the masking variants (default: --seed)")

    g = p.add_argument_group("compute")
    g.add_argument(*_flags("--dtype"), default="auto", choices=DTYPES,
                   help="weights dtype (auto = as stored); gates and losses stay float32")
    g.add_argument(*_flags("--device"), default=None,
                   help="cpu, cuda, cuda:1 ... (default: cuda when available; under "
                        "torchrun cuda:LOCAL_RANK)")
    g.add_argument(*_flags("--internal_batch_size", "--batch_size"), type=int, default=64,
                   help="rows (gate point x masking variant) per forward/backward")
    g.add_argument(*_flags("--gradient_checkpointing"), action="store_true",
                   help="recompute activations in the backward (long sequences)")
    g.add_argument(*_flags("--examples_per_group"), type=int, default=4,
                   help="examples evaluated together; a checkpoint is written after each group")

    g = p.add_argument_group("output")
    g.add_argument(*_flags("--out"), required=True, help="output folder")
    g.add_argument(*_flags("--overwrite"), action="store_true",
                   help="discard a previous run (result or checkpoint) in --out")
    g.add_argument(*_flags("--keep_checkpoint"), action="store_true",
                   help="keep checkpoint.safetensors after success")
    g.add_argument(*_flags("--no_per_example"), action="store_true",
                   help="do not store per-example scores in the importance file")
    g.add_argument(*_flags("--no_progress"), action="store_true", help="no progress bar")
    p.set_defaults(func=run)


# ------------------------------------------------------------------------- validation
def _steps_arg(text: str) -> int | str:
    """``--ig_steps``: an integer or ``auto``."""
    if str(text).strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an integer or 'auto'") from None


def _positive_int(name: str, value: int, minimum: int = 1) -> int:
    if value < minimum:
        raise ValueError(f"--{name}={value}; expected an integer >= {minimum}")
    return value


def _parse_mask_probs(text: str) -> list[float]:
    try:
        probs = [float(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--mask_probs={text!r}; expected comma-separated numbers such as "
                         "0.15,0.3,0.5,0.7,0.9") from None
    if not probs or any(not (0.0 < p <= 1.0) or math.isnan(p) for p in probs):
        raise ValueError(f"--mask_probs={text!r}; expected probabilities in (0, 1]")
    return probs


def _parse_baseline(args: argparse.Namespace) -> float:
    b = str(args.baseline).strip().lower()
    if b == "zero":
        value = 0.0
    elif b == "scalar":
        value = float(args.baseline_scalar)
    else:
        try:
            value = float(b)
        except ValueError:
            raise ValueError(f"--baseline={args.baseline!r}; expected zero, scalar (with "
                             "--baseline_scalar) or a number below 1") from None
    if not math.isfinite(value) or value >= 1.0:
        raise ValueError(f"baseline gate {value}; expected a finite value below 1 "
                         "(0 = zero-ablation of the head)")
    return value


def _resolve_model(args: argparse.Namespace) -> tuple[str, bool]:
    """The model folder and whether it is the embedded tiny model."""
    if args.model is not None:
        return str(args.model), False
    try:
        from headig.toy.embedded import embedded_model_path
        return str(embedded_model_path()), True
    except (ImportError, FileNotFoundError) as err:
        raise ValueError("--model is required (no embedded model is installed: "
                         f"{err})") from None


def _resolve_data(args: argparse.Namespace, model_dir: str, embedded: bool) -> str:
    if args.data is not None:
        return str(args.data)
    if embedded:
        train = Path(model_dir) / "train.jsonl"
        if train.is_file():
            return str(train)
    raise ValueError("--data is required: a .jsonl/.json/.csv file, a folder of split files, "
                     "or a dataset name")


def _model_arch(model_dir: str) -> tuple[dict[str, Any], Any, Any]:
    """config.json, its family spec and parsed architecture, without loading weights."""
    from headig.models.family import spec_for_model_type
    from headig.models.loading import read_config, resolve_checkpoint_dir

    folder = resolve_checkpoint_dir(model_dir)
    cfg = read_config(folder)
    spec = spec_for_model_type(cfg.get("model_type", ""))
    return cfg, spec, spec.parse_config(cfg)


def _dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the torchrun / accelerate environment."""
    from headig.runtime import env_dist_info

    return env_dist_info()


_resolve_device = resolve_device


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """Validate every flag (no model needed) and return the normalised run settings."""
    estimator = canonical_name(args.estimator)
    path = PATHS[args.path]
    auto = args.ig_steps == "auto"
    if not auto:
        _positive_int("ig_steps", args.ig_steps)
    for name in ("path_samples", "mask_samples_per_prob", "internal_batch_size",
                 "max_samples", "permutations", "examples_per_group", "max_heads"):
        _positive_int(name, getattr(args, name))
    _positive_int("max_length", args.max_length, 2)
    if args.num_fewshot is not None:
        _positive_int("num_fewshot", args.num_fewshot, 0)
    if not 0.0 < args.ramp_width <= 1.0:
        raise ValueError(f"--ramp_width={args.ramp_width}; expected 0 < width <= 1")
    rule = args.rule
    if rule == "romberg" and not auto:
        raise ValueError("--rule romberg extrapolates over refinement levels and needs "
                         "--ig_steps auto")
    if rule not in (None, "romberg") and path == "dp" and get_rule(rule).per_head:
        raise ValueError(f"--rule {rule} ""integrates inside each head's own ramp and needs "
                         "--path stp; use gauss_legendre (default) or trapezoid with dp")
    seed = int(args.seed)
    settings: dict[str, Any] = {
        "estimator": estimator,
        "mask_probs": _parse_mask_probs(args.mask_probs),
        "mask_samples_per_prob": args.mask_samples_per_prob,
        "loss_normalize": args.loss_normalize,
        "postprocess": args.ig_postprocess,
        "baseline": _parse_baseline(args),
        "seed": seed,
        "mask_seed": seed if args.mask_seed is None else int(args.mask_seed),
        "data_seed": seed if args.data_seed is None else int(args.data_seed),
        "layer_start": args.layer_start,
        "layer_end": args.layer_end,
    }
    if estimator == "integrated_gradients":
        settings.update({"path": path, "steps": args.ig_steps,
                         "rule": rule or _default_rule(path, auto)})
        if auto:
            settings.update(_auto_settings(args, settings["rule"]))
        if path == "stp":
            settings.update({"path_samples": args.path_samples, "ramp": args.ramp,
                             "threshold_sampling": args.threshold_sampling})
            if args.ramp == "narrow":
                settings["ramp_width"] = float(args.ramp_width)
    elif estimator == "shapley_sampling":
        settings["permutations"] = args.permutations
    elif estimator == "exact_shapley":
        settings["max_heads"] = args.max_heads
    return settings


def _default_rule(path: str, auto: bool) -> str:
    if auto:
        return "trapezoid"
    return "gauss_legendre" if path == "dp" else "trapezoid"


def _auto_settings(args: argparse.Namespace, rule: str) -> dict[str, Any]:
    """Checked convergence targets and budget of ``--ig_steps auto`` (part of the identity)."""
    from headig.attribution.rules import NESTED_RULES

    if rule not in (*NESTED_RULES, "romberg"):
        raise ValueError(f"--rule {rule} does not nest under step doubling; with --ig_steps auto "
                         f"use one of {', '.join((*NESTED_RULES, 'romberg'))}")
    for name in ("tol", "stability_tol"):
        v = getattr(args, name)
        if v is not None and not (math.isfinite(v) and v > 0):
            raise ValueError(f"--{name}={v}; expected a positive number such as 0.05")
    _positive_int("min_steps", args.min_steps)
    if args.max_steps is not None:
        _positive_int("max_steps", args.max_steps, args.min_steps)
    if args.max_points is not None:
        _positive_int("max_points", args.max_points)
    if args.refine == "adaptive" and rule != "trapezoid":
        raise ValueError(f"--refine adaptive splits trapezoid intervals; --rule {rule} needs "
                         "--refine uniform")
    return {"tol": args.tol, "stability_tol": args.stability_tol, "min_steps": args.min_steps,
            "max_steps": args.max_steps, "max_points": args.max_points, "refine": args.refine}


def _recipe_options(args: argparse.Namespace, recipe: str | None) -> dict[str, Any]:
    """Recipe options given on the command line, refused where the recipe has no such option."""
    given = {"num_fewshot": args.num_fewshot, "answer_mode": args.answer_mode,
             "prompt_field": args.prompt_field, "completion_field": args.completion_field}
    accepted = {"fields": {"prompt_field", "completion_field"},
                "gsm8k": {"num_fewshot", "answer_mode"}, "mmlu": {"num_fewshot"},
                "humaneval": set(), "chat": set()}[recipe or "fields"]
    opts = {k: v for k, v in given.items() if v is not None}
    bad = sorted(set(opts) - accepted)
    if bad:
        flags = ", ".join(f"--{b}" for b in bad)
        raise ValueError(f"{flags} does not apply to recipe {recipe or 'fields'!r} (it accepts "
                         f"{sorted('--' + a for a in accepted) or 'no options'})")
    return opts


def _infer_recipe(args: argparse.Namespace) -> str | None:
    if args.recipe is not None:
        return args.recipe
    data = str(args.data) if args.data is not None else ""
    if data and not Path(data).expanduser().exists():
        for name, hub in (("gsm8k", "openai/gsm8k"), ("mmlu", "cais/mmlu"),
                          ("humaneval", "openai/openai_humaneval")):
            if data in (name, hub):
                return name
    return None


# ------------------------------------------------------------------------- output folder
def _comparable(identity: dict[str, Any]) -> dict[str, Any]:
    """An identity with the estimator under its canonical name (older logs say ``ig``)."""
    est = identity.get("estimator")
    if isinstance(est, str):
        try:
            identity["estimator"] = canonical_name(est)
        except ValueError:
            pass
    return identity


# ------------------------------------------------------------------------- run
@dataclass
class _Plan:
    """Everything decided before the model is loaded."""

    settings: dict[str, Any]
    rank: int
    world: int
    model_dir: str
    embedded: bool
    data_source: str
    arch: Any
    layers: list[int]
    device: str
    encoded: list[Any]
    report: Any
    identity: dict[str, Any]
    data_seconds: float


def _plan(args: argparse.Namespace, say: Any) -> _Plan:
    """Check every flag, the model config, the data and its encoding: all before the model."""
    settings = _settings(args)
    rank, world, local_rank = _dist_env()

    model_dir, embedded = _resolve_model(args)
    data_source = _resolve_data(args, model_dir, embedded)
    recipe = _infer_recipe(args)
    options = _recipe_options(args, recipe)
    cfg, spec, arch = _model_arch(model_dir)
    from headig.interventions import layer_range

    layers = layer_range(args.layer_start, args.layer_end, arch.n_layers)
    n_attr = len(layers) * arch.n_heads
    if settings["estimator"] == "exact_shapley" and n_attr > args.max_heads:
        raise ValueError(f"exact_shapley over {n_attr} heads ({len(layers)} layers x "
                         f"{arch.n_heads}) needs 2^{n_attr} evaluations per example; restrict "
                         f"--layer_start/--layer_end or raise --max_heads")
    from headig.models.family import resolve_dtype

    resolve_dtype(None if args.dtype == "auto" else args.dtype)
    device = _resolve_device(args.device, world, local_rank)

    # Data: load, tokenize and report before the model.
    t0 = time.time()
    import warnings

    from headig import data as hdata
    from headig.models.loading import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            examples = hdata.load_examples(data_source, recipe=recipe, split=args.split,
                                           limit=args.max_samples,
                                           seed=settings["data_seed"],
                                           config=args.data_config, **options)
        except ImportError as err:  # a hub dataset without the optional `datasets` package
            raise ValueError(str(err)) from None
    for w in caught:
        say(f"warning: {w.message}")
    if not examples:
        raise ValueError(f"--data {data_source} gave no examples")
    encoded, report = hdata.encode_examples(tokenizer, examples, max_length=args.max_length,
                                            chat_template=args.chat_template)
    if not encoded:
        raise ValueError(f"every example was dropped while encoding:\n{report}")
    short = [e.id for e in encoded if e.prompt_length < spec.logit_shift]
    if short:
        raise ValueError(f"examples {short[:5]} have no token before the completion, which "
                         f"{arch.family}'s shifted logits need (a BOS or prompt text)")
    data_seconds = time.time() - t0

    model_dir_path = Path(model_dir)
    identity = {
        "model": str(model_dir_path.resolve()) if model_dir_path.exists() else model_dir,
        "model_config_sha256": hashlib.sha256(json.dumps(cfg, sort_keys=True).encode())
        .hexdigest()[:16],
        "dtype": args.dtype,
        "data": data_source, "recipe": recipe or "fields", "split": args.split,
        "recipe_options": options, "max_samples": args.max_samples,
        "max_length": args.max_length, "chat_template": bool(args.chat_template),
        "data_fingerprint": hdata.fingerprint(examples)[:16],
        "layers": layers, **settings,
    }
    return _Plan(settings=settings, rank=rank, world=world, model_dir=model_dir,
                 embedded=embedded, data_source=data_source, arch=arch, layers=layers,
                 device=device, encoded=encoded, report=report, identity=identity,
                 data_seconds=data_seconds)


def run(args: argparse.Namespace) -> int:
    t_start = time.time()
    rank = _dist_env()[0]
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if rank == 0 else (lambda *a: None)
    plan = _plan(args, say)
    settings, world, identity = plan.settings, plan.world, plan.identity
    arch, layers, device, report = plan.arch, plan.layers, plan.device, plan.report
    model_dir, data_source, encoded = plan.model_dir, plan.data_source, plan.encoded
    n_attr = len(layers) * arch.n_heads
    folder = RunFolder(args.out, identity, rank=rank, world=world, normalize=_comparable)
    out = folder.out
    state = folder.prepare(args.overwrite)
    if state == "done":
        say(f"{out} already holds the finished result of this exact run "
            f"({folder.result}); nothing to do (pass --overwrite to recompute)")
        return 0
    out.mkdir(parents=True, exist_ok=True)

    log: dict[str, Any] = {
        "schema_version": LOG_SCHEMA,
        "status": "running",
        "identity": identity,
        "flags": {k: v for k, v in vars(args).items() if k not in ("func",)},
        "embedded_model": plan.embedded,
        "model_arch": {"family": arch.family, "n_layers": arch.n_layers,
                       "n_heads": arch.n_heads, "n_kv_heads": arch.n_kv_heads},
        "device": device, "world_size": world,
        "encoding": report.to_dict(),
        "resumed": state == "resume",
    }
    folder.write_log(log)
    say(f"headig attribute: {len(encoded)} examples ({report.n_examples} loaded, "
        f"{len(report.truncated)} truncated, {len(report.dropped)} dropped) from {data_source}")
    for ex_id, why in report.dropped:
        say(f"  dropped {ex_id}: {why}")
    if state == "resume":
        say(f"resuming from the checkpoint in {out}")

    # Model and (optionally) the process group.
    from headig.attribution.runner import barrier, process_group
    from headig.models.loading import load_model

    with process_group(device, world):
        t0 = time.time()
        model, _ = load_model(model_dir, dtype=None if args.dtype == "auto" else args.dtype,
                              device=device, tokenizer=False)
        load_seconds = time.time() - t0
        say(f"loaded {model_dir} ({arch.family}, {arch.n_layers} layers x {arch.n_heads} "
            f"heads, {next(model.parameters()).dtype}) on {device} in {load_seconds:.1f}s")

        estimator = _estimator(model, args, settings, layers, say)
        t0 = time.time()
        attr = estimator.attribute(encoded, return_per_example=True,
                                   checkpoint=folder.checkpoint,
                                   examples_per_group=args.examples_per_group,
                                   progress=not args.no_progress)
        attr_seconds = time.time() - t0

        if rank == 0:
            imp, completeness = _importance(attr, type(estimator).complete, args, plan)
            result = imp.save(folder.result)
            log.update({
                "status": "complete",
                "result": result.name,
                "meta": attr.meta,
                "completeness": completeness,
                "timings": {"data_seconds": round(plan.data_seconds, 3),
                            "model_load_seconds": round(load_seconds, 3),
                            "attribution_seconds": round(attr_seconds, 3),
                            "total_seconds": round(time.time() - t_start, 3)},
                "checkpoint": (CHECKPOINT_FILE if args.keep_checkpoint else None),
            })
            folder.write_log(log)
        barrier()
        folder.cleanup(args.keep_checkpoint)

    if rank == 0:
        c = log["completeness"]
        say(f"done in {attr_seconds:.1f}s: {folder.result}")
        say(f"completeness residual: {c['aggregate_relative_residual']:.3g} of |J(1) - "
            f"J(baseline)| (sum over examples; mean |residual| {c['mean_abs_residual']:.3g}, "
            f"mean |J(1) - J(baseline)| {c['mean_abs_gap']:.3g})")
        conv = attr.meta.get("convergence")
        if conv:
            say(f"--ig_steps auto: {conv['n_converged']}/{len(encoded)} examples reached "
                f"--tol {conv['tol']:g}; up to {conv['max_steps_reached']} steps per path "
                f"sample, {conv['points_total']} gradient points in all")
        top = imp.top_k(min(5, n_attr))
        say("top heads (layer, head, score): " +
            ", ".join(f"L{layer}H{h} {s:+.3g}" for layer, h, s in top))
    return 0


def _importance(attr: Any, complete: bool, args: argparse.Namespace,
                plan: _Plan) -> tuple[Any, dict[str, Any]]:
    """The score file's HeadImportance (with run provenance) and the completeness summary."""
    identity = plan.identity
    imp = attr.to_importance()
    if args.no_per_example:
        imp.per_example = None
    imp.meta.update({"model": identity["model"],
                     "data": {"source": plan.data_source, "recipe": identity["recipe"],
                              "split": args.split, "n_examples": len(plan.encoded),
                              "fingerprint": identity["data_fingerprint"]},
                     "tool": "headig attribute"})
    completeness = _completeness(attr, complete)
    imp.meta["completeness"]["aggregate_relative_residual"] = \
        completeness["aggregate_relative_residual"]
    return imp, completeness


def _estimator(model: Any, args: argparse.Namespace, settings: dict[str, Any],
               layers: list[int], say: Any) -> Any:
    """The configured estimator (shared arguments from the flags, plus its own budget)."""
    from headig.attribution import DP, STP, MaskedDiffusionObjective

    est = settings["estimator"]
    own: dict[str, Any] = {}
    if est == "integrated_gradients":
        if settings["path"] == "dp":
            path = DP()
            if args.path_samples != 4:
                say("note: the diagonal path is deterministic; --path_samples is ignored")
        else:
            path = STP(samples=args.path_samples, ramp=args.ramp, width=args.ramp_width,
                       sampling=args.threshold_sampling)
        own = dict(path=path, steps=args.ig_steps, rule=settings["rule"],
                   gradient_checkpointing=args.gradient_checkpointing)
        if args.ig_steps == "auto":
            own.update({k: settings[k] for k in ("tol", "stability_tol", "min_steps",
                                                  "max_steps", "max_points", "refine")})
    elif est == "shapley_sampling":
        own = dict(permutations=args.permutations)
    elif est == "exact_shapley":
        own = dict(max_heads=args.max_heads)
    objective = MaskedDiffusionObjective(
        mask_probs=settings["mask_probs"],
        mask_samples_per_prob=settings["mask_samples_per_prob"],
        loss_normalize=settings["loss_normalize"], seed=settings["mask_seed"])
    return get_estimator(est)(model, **own, baseline=settings["baseline"],
                              postprocess=settings["postprocess"], layers=layers,
                              seed=settings["seed"], objective=objective,
                              internal_batch_size=args.internal_batch_size)


def _completeness(attr: Any, complete: bool) -> dict[str, Any]:
    """Summary and per-example table of Σ A_j − (J_j(1) − J_j(α0))."""
    total = attr.per_example.sum((1, 2)) if attr.per_example is not None else None
    rel = attr.relative_residual
    gap = attr.j_full - attr.j_baseline
    rows = []
    for i, ex_id in enumerate(attr.example_ids):
        rows.append({"id": ex_id, "j_full": float(attr.j_full[i]),
                     "j_baseline": float(attr.j_baseline[i]),
                     "sum_attribution": None if total is None else float(total[i]),
                     "residual": float(attr.residual[i]), "relative_residual": float(rel[i])})
    return {
        "expected_zero": bool(complete),
        "note": "residual = sum over heads of an example's attribution - (J(1) - J(baseline)); "
                "it tends to 0 with more steps for ig and is exactly 0 for Shapley estimators. "
                "aggregate_relative_residual = sum |residual| / sum |J(1) - J(baseline)|, "
                "robust to examples whose J barely changes",
        "aggregate_relative_residual": float(attr.residual.abs().sum() /
                                             gap.abs().sum().clamp_min(1e-12)),
        "mean_abs_residual": float(attr.residual.abs().mean()),
        "max_abs_residual": float(attr.residual.abs().max()),
        "mean_relative_residual": float(rel.mean()),
        "max_relative_residual": float(rel.max()),
        "mean_abs_gap": float(gap.abs().mean()),
        "mean_j_full": float(attr.j_full.mean()),
        "mean_j_baseline": float(attr.j_baseline.mean()),
        "per_example": rows,
    }
