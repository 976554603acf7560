"""``headig validate prune|sparse``: causal checks of a head-importance file.

``prune`` removes the k most / least important heads and k random heads (several seeds)
and measures the held-out masked-diffusion loss (and, where it is meaningful, the
exact-match accuracy of generation); with at most 16 prunable heads it also enumerates
every head subset for the oracle curves and the ranking's fidelity. ``sparse`` compares
dense attention with uniform and importance-adaptive block-sparse attention at several
keep ratios. Both write a table (CSV, JSON, Markdown) and a plot into ``--out``.

The helpers here (model, data and objective flags) are shared by ``headig faithfulness``
and ``headig demo``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from pathlib import Path
from typing import Any

EMBEDDED = "embedded"
BOS_CHOICES = ("auto", "yes", "no")


# ----------------------------------------------------------------------------- shared flags


def flags(*names: str) -> list[str]:
    """Each name plus its dashed spelling (``--k_frac`` -> also ``--k-frac``)."""
    out: list[str] = []
    for n in names:
        for v in (n, n[:2] + n[2:].replace("_", "-")):
            if v not in out:
                out.append(v)
    return out


class Formatter(argparse.HelpFormatter):
    """Shows a flag's default in its help unless it is None/False or already mentioned."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return text + " (default: %(default)s)"


def add_model_arguments(p: argparse.ArgumentParser | Any) -> None:
    p.add_argument(*flags("--model"), default=EMBEDDED,
                   help="checkpoint folder (official LLaDA/Dream layout), cached hub id, or "
                        "'embedded' for the tiny model shipped with headig")
    p.add_argument(*flags("--dtype"), default="auto",
                   choices=("auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16"),
                   help="weights dtype (auto = as stored)")
    p.add_argument(*flags("--device"), default=None,
                   help="cpu, cuda, cuda:1 ... (default: cuda when available)")


def add_data_arguments(p: argparse.ArgumentParser | Any, *, limit: int | None,
                       what: str = "held-out") -> None:
    p.add_argument(*flags("--data"), default=None,
                   help=f"{what} examples: a .jsonl/.json/.csv file, a folder of split files, "
                        "a Hugging Face dataset name, or embedded[:eval|:train] (default with "
                        "the embedded model: embedded:eval, its held-out set)")
    p.add_argument(*flags("--recipe"), default=None,
                   choices=("fields", "gsm8k", "mmlu", "humaneval", "chat"),
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
    p.add_argument(*flags("--data_seed"), type=int, default=0,
                   help="shuffles --data before --limit")
    p.add_argument(*flags("--max_length"), type=int, default=2048,
                   help="tokens per example; longer ones are cut keeping the completion")
    p.add_argument(*flags("--chat_template"), action="store_true",
                   help="wrap prompts in the tokenizer's chat template")
    p.add_argument(*flags("--bos"), default="auto", choices=BOS_CHOICES,
                   help="prepend BOS: auto = no for the embedded task data (as it is "
                        "evaluated), yes otherwise")


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


def objective_from_args(args: argparse.Namespace) -> Any:
    from headig.objective import MaskedDiffusionObjective

    probs = parse_list(args.mask_probs, float, "mask_probs")
    if any(not 0.0 < p <= 1.0 or math.isnan(p) for p in probs):
        raise ValueError(f"--mask_probs={args.mask_probs!r}; expected probabilities in (0, 1]")
    if args.mask_samples_per_prob < 1:
        raise ValueError(f"--mask_samples_per_prob={args.mask_samples_per_prob}; expected >= 1")
    return MaskedDiffusionObjective(mask_probs=probs,
                                    mask_samples_per_prob=args.mask_samples_per_prob,
                                    loss_normalize=args.loss_normalize, seed=args.mask_seed)


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def resolve_model(value: str | None) -> tuple[str, bool]:
    """(checkpoint folder or hub id, is it the embedded model)."""
    if value in (None, EMBEDDED):
        from headig.embedded import embedded_model_path

        return str(embedded_model_path()), True
    return str(value), False


def _device(requested: str | None) -> str:
    import torch

    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(requested)
    except RuntimeError:
        raise ValueError(f"--device={requested!r}; expected cpu, cuda, cuda:N ...") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device={requested}: CUDA is not available on this machine")
    return str(dev)


def load_model_from_args(args: argparse.Namespace) -> tuple[Any, Any, bool]:
    """(model, tokenizer, embedded) from --model/--dtype/--device."""
    from headig.models.loading import load_model

    folder, embedded = resolve_model(args.model)
    device = _device(args.device)
    t0 = time.time()
    model, tokenizer = load_model(folder, dtype=None if args.dtype == "auto" else args.dtype,
                                  device=device)
    fam = model.family
    say(f"model: {'embedded tiny model' if embedded else folder} ({fam.name}, {fam.n_layers} "
        f"layers x {fam.n_heads} heads) on {device}, {time.time() - t0:.1f} s")
    return model, tokenizer, embedded


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
        from headig import tasks
        from headig.embedded import embedded_examples

        raw = embedded_examples(split)
        if args.limit is not None:
            n_tasks = len({e.task for e in raw})
            raw = tasks.subset(raw, max(1, args.limit // n_tasks))
        examples = [hdata.Example(e.prompt, e.completion, id=f"{split}-{i}",
                                  meta={"task": e.task}) for i, e in enumerate(raw)]
        labels = {ex.id: ex.meta["task"] for ex in examples}
        source = f"embedded {split} set"
    else:
        options = {k: getattr(args, k) for k in ("prompt_field", "completion_field",
                                                 "num_fewshot", "answer_mode")
                   if getattr(args, k, None) is not None}
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


def layers_from_args(args: argparse.Namespace, n_layers: int) -> list[int] | None:
    """--layer_start/--layer_end as a layer list, or None when neither is given."""
    if args.layer_start is None and args.layer_end is None:
        return None
    from headig.gating import layer_range

    start = 0 if args.layer_start is None else args.layer_start
    end = -1 if args.layer_end is None else args.layer_end
    return layer_range(start, end, n_layers)


_flags = flags  # earlier private names, kept for one release
_layers_from_args = layers_from_args


# ----------------------------------------------------------------------------- register


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "validate", help="causal checks of head scores: pruning sweeps, sparse attention",
        description="Causal validation of a head-importance file on held-out data.")
    sub = p.add_subparsers(dest="validate_command", metavar="CHECK")

    pp = sub.add_parser(
        "prune", formatter_class=Formatter,
        help="prune the most / least / random heads over k; loss, accuracy, oracle, fidelity",
        description="Remove the k heads with the highest scores, the lowest scores, and k "
                    "random heads (several seeds) and measure the held-out masked-diffusion "
                    "loss and exact-match generation accuracy. With at most --oracle_max_heads "
                    "prunable heads every head subset is evaluated too: the oracle curves and "
                    "each ranking's fidelity (1 = oracle, 0 = random).")
    g = pp.add_argument_group("scores and model")
    g.add_argument("--scores", required=True,
                   help="importance file (.safetensors, a folder holding one, or an original "
                        ".pt with --original_sign)")
    g.add_argument(*flags("--original_sign"), choices=("loss", "helps"), default=None,
                   help="for original .pt files: 'loss' = raw files (negative = important), "
                        "'helps' = already negated")
    add_model_arguments(g)
    g = pp.add_argument_group("data")
    add_data_arguments(g, limit=120)
    g = pp.add_argument_group("sweep")
    g.add_argument("--k", default=None, help="head counts to prune, e.g. 1,2,4")
    g.add_argument(*flags("--k_frac"), default=None,
                   help="fractions of the prunable heads instead, e.g. 0.05,0.1,0.25")
    g.add_argument("--which", default="most,least,random",
                   help="arms: any of most, least, random")
    g.add_argument(*flags("--random_seeds"), type=int, default=3,
                   help="random draws per k (mean ± std are reported)")
    g.add_argument("--seed", type=int, default=1234, help="first random seed")
    g.add_argument("--by", choices=("signed", "abs"), default="signed",
                   help="rank heads by signed score or by |score|")
    g.add_argument(*flags("--layer_start"), type=int, default=None,
                   help="first prunable layer (inclusive; default: the attributed layers)")
    g.add_argument(*flags("--layer_end"), type=int, default=None,
                   help="last prunable layer (inclusive, -1 = last)")
    g.add_argument("--accuracy", choices=("auto", "yes", "no"), default="auto",
                   help="exact-match generation accuracy: auto = for the embedded task data")
    g.add_argument("--oracle", choices=("auto", "yes", "no"), default="auto",
                   help="enumerate every head subset (auto: when <= --oracle_max_heads)")
    g.add_argument(*flags("--oracle_examples"), type=int, default=48,
                   help="examples for the oracle and fidelity (evenly spaced through the data)")
    g.add_argument(*flags("--oracle_max_heads"), type=int, default=16,
                   help="largest number of prunable heads for the oracle (2^n subsets)")
    add_objective_arguments(g)
    g = pp.add_argument_group("ranking (which heads most / least remove)")
    g.add_argument("--ranking", default="oneshot",
                   help="any of oneshot (the --scores as given), iterative (greedy: "
                        "re-attribute on the pruned model, remove one head, repeat), loo "
                        "(leave-one-out scores); several are compared in one report")
    g.add_argument(*flags("--iterative_estimator"), choices=("headig", "loo"),
                   default="loo",
                   help="what iterative re-attributes with: leave-one-out (default; it found "
                        "the dispensable heads best in the measured comparison) or HeadIG with "
                        "the settings recorded in --scores")
    g.add_argument(*flags("--ranking_data"), default=None,
                   help="attribution examples for iterative / loo (never the held-out data; "
                        "default with the embedded model: embedded:train)")
    g.add_argument(*flags("--ranking_limit"), type=int, default=48,
                   help="attribution examples for iterative / loo (embedded data: the same "
                        "number from every task)")
    g = pp.add_argument_group("output")
    g.add_argument("--out", required=True, help="output folder")
    g.add_argument("--overwrite", action="store_true", help="replace earlier results in --out")
    g.add_argument(*flags("--no_plot"), action="store_true", help="skip the PNG")
    g.add_argument(*flags("--no_progress"), action="store_true", help="no progress bars")
    pp.set_defaults(func=run_prune)

    sp = sub.add_parser(
        "sparse", formatter_class=Formatter,
        help="dense vs uniform vs importance-adaptive sparse attention at several keep ratios",
        description="Compare dense attention with uniform and importance-adaptive "
                    "block-sparse attention (headig.sparse.SparseAttentionPatch) at the same "
                    "total budget: held-out loss and exact-match generation accuracy.")
    g = sp.add_argument_group("scores and model")
    g.add_argument("--scores", default=None, help="importance file (needed for adaptive)")
    g.add_argument(*flags("--original_sign"), choices=("loss", "helps"), default=None,
                   help="for original .pt files")
    add_model_arguments(g)
    g = sp.add_argument_group("data")
    add_data_arguments(g, limit=120)
    g = sp.add_argument_group("sparse attention")
    g.add_argument("--keep", default="0.1,0.2,0.3,0.5",
                   help="fractions of key blocks kept, comma-separated")
    g.add_argument("--modes", default="standard,uniform,adaptive",
                   help="any of standard (dense), uniform, adaptive")
    g.add_argument(*flags("--block_size"), type=int, default=None,
                   help="tokens per block (default: 128, or smaller for short data so that "
                        "sequences have at least 16 blocks)")
    g.add_argument("--skip", type=float, default=0.2,
                   help="fraction of denoising steps that stay dense")
    g.add_argument(*flags("--min_keep"), type=float, default=None,
                   help="adaptive: smallest per-head keep fraction")
    g.add_argument(*flags("--max_keep"), type=float, default=1.0,
                   help="adaptive: largest per-head keep fraction")
    g.add_argument(*flags("--kv_groups"), choices=("query", "kv"), default="query",
                   help="GQA: a budget per query head or per KV group")
    g.add_argument("--kernel", default="auto", choices=("auto", "flex", "gather", "dense_mask"),
                   help="sparse kernel (auto: compiled flex_attention on GPUs, gather on CPUs)")
    g.add_argument("--accuracy", choices=("auto", "yes", "no"), default="auto",
                   help="exact-match generation accuracy: auto = for the embedded task data")
    add_objective_arguments(g)
    g = sp.add_argument_group(
        "budget policies", "with --policies: scores from the training split, held-out loss "
        "(and accuracy) per policy x keep x seed (headig.validation.compare_budget_policies)")
    g.add_argument("--policies", default=None,
                   help="compare budget policies instead of modes: any of uniform, adaptive, "
                        "sensitivity, oracle")
    g.add_argument("--seeds", default="0,1,2",
                   help="seeds of the training-split scores and of the held-out masks")
    g.add_argument(*flags("--train_data"), default=None,
                   help="training examples for the scores (default: the embedded train split; "
                        "same recipe options as --data)")
    g.add_argument(*flags("--train_limit"), type=int, default=48,
                   help="training examples for the importance and sensitivity scores")
    g.add_argument(*flags("--sensitivity_steps"), type=int, default=16,
                   help="Gauss-Legendre nodes of the sparsity sensitivity")
    g.add_argument(*flags("--oracle_examples"), type=int, default=16,
                   help="held-out examples the greedy oracle searches on")
    g.add_argument(*flags("--oracle_moves"), type=int, default=12,
                   help="largest number of greedy oracle moves per keep")
    g = sp.add_argument_group("output")
    g.add_argument("--out", required=True, help="output folder")
    g.add_argument("--overwrite", action="store_true", help="replace earlier results in --out")
    g.add_argument(*flags("--no_plot"), action="store_true", help="skip the PNG")
    g.add_argument(*flags("--no_progress"), action="store_true", help="no progress bars")
    sp.set_defaults(func=run_sparse)

    p.set_defaults(func=lambda _args: (p.print_help(), 2)[1])


# ----------------------------------------------------------------------------- prune


def run_prune(args: argparse.Namespace) -> int:
    from headig.cli.show import load_importance

    t_start = time.time()
    if (args.k is None) == (args.k_frac is None):
        raise ValueError("pass exactly one of --k (head counts, e.g. 1,2,4) or --k_frac "
                         "(fractions, e.g. 0.05,0.1,0.25)")
    ks = parse_list(args.k, int, "k") if args.k is not None else None
    k_fracs = parse_list(args.k_frac, float, "k_frac") if args.k_frac is not None else None
    arms = parse_list(args.which, str, "which")
    bad = [a for a in arms if a not in ("most", "least", "random")]
    if bad:
        raise ValueError(f"--which {args.which}: unknown arm(s) {bad}; expected most, least, "
                         "random")
    if args.random_seeds < 1:
        raise ValueError(f"--random_seeds={args.random_seeds}; expected >= 1")
    if args.oracle_examples < 1:
        raise ValueError(f"--oracle_examples={args.oracle_examples}; expected >= 1")
    rankings = list(dict.fromkeys(parse_list(args.ranking, str, "ranking")))
    bad = [r for r in rankings if r not in ("oneshot", "iterative", "loo")]
    if bad:
        raise ValueError(f"--ranking {args.ranking}: unknown ranking(s) {bad}; expected "
                         "oneshot, iterative, loo")
    if args.ranking_limit < 1:
        raise ValueError(f"--ranking_limit={args.ranking_limit}; expected >= 1")
    objective = objective_from_args(args)
    out = check_out(args.out, ["prune.csv", "prune.json", "prune.md"], args.overwrite)
    imp = load_importance(args.scores, args.original_sign)

    import torch

    from headig.validation.prune import OracleSettings, PruneSelection, prune_sweep, resolve_ks
    from headig.validation.settings import AccuracySettings, EvalSettings

    model, tokenizer, embedded = load_model_from_args(args)
    fam = model.family
    if (imp.n_layers, imp.n_heads) != (fam.n_layers, fam.n_heads):
        raise ValueError(f"{args.scores} scores a model with [{imp.n_layers} layers, "
                         f"{imp.n_heads} heads]; the model has [{fam.n_layers}, {fam.n_heads}]")
    layers = layers_from_args(args, fam.n_layers) or list(imp.layers)
    n = len(layers) * fam.n_heads
    resolve_ks(n, ks, k_fracs)  # flag errors before any model work
    oracle = {"auto": None, "yes": True, "no": False}[args.oracle]
    encoded, labels, desc = load_data_from_args(args, tokenizer, embedded)
    say(f"data: {desc}")
    accuracy = want_accuracy(args.accuracy, labels)
    ranking = None
    if rankings != ["oneshot"]:
        ranking = ranking_from_args(args, rankings, tokenizer, embedded, imp)
    t0 = time.time()
    with torch.no_grad() if ranking is None else contextlib.nullcontext():
        sweep = prune_sweep(
            model, encoded, imp,
            PruneSelection(ks=ks, k_fracs=k_fracs, arms=arms, random_seeds=args.random_seeds,
                           seed=args.seed, by=args.by, layers=layers),
            oracle=OracleSettings(enabled=oracle, examples=args.oracle_examples,
                                  max_heads=args.oracle_max_heads),
            accuracy=AccuracySettings(enabled=accuracy, labels=labels or None),
            evaluation=EvalSettings(objective=objective,
                                    internal_batch_size=rows_per_forward(args, encoded),
                                    progress=not args.no_progress,
                                    on_stage=lambda m: say(f"... {m}")),
            ranking=ranking)
    sweep.meta.update({"scores": str(args.scores), "data": desc, "seconds": time.time() - t0})
    files = sweep.save(out, plot=not args.no_plot)
    print(sweep.to_markdown())
    say(f"wrote {', '.join(str(f) for f in files.values())} ({time.time() - t_start:.0f} s)")
    return 0


def ranking_from_args(args: argparse.Namespace, rankings: list[str], tokenizer: Any,
                      embedded: bool, imp: Any) -> Any:
    """RankingSettings for --ranking: attribution data from --ranking_data (the training
    split), HeadIG settings from the score file so iterative re-attributes like it."""
    from headig.validation.ranking import RankingSettings, attribution_kwargs_from_meta

    batch = None
    if any(r != "oneshot" for r in rankings):
        if args.ranking_data is None and not embedded:
            raise ValueError("--ranking iterative / loo attribute on training examples: pass "
                             "--ranking_data (not the held-out --data)")
        attr_args = argparse.Namespace(**{**vars(args), "data": args.ranking_data,
                                          "limit": args.ranking_limit})
        batch, _, attr_desc = load_data_from_args(attr_args, tokenizer, embedded,
                                                  default_split="train")
        say(f"ranking data: {attr_desc}")
    kwargs = attribution_kwargs_from_meta(dict(imp.meta or {}))
    if "iterative" in rankings and args.iterative_estimator == "headig" and not kwargs:
        say("... --scores records no HeadIG settings; iterative uses HeadIG's defaults")
    return RankingSettings(methods=rankings, batch=batch, estimator=args.iterative_estimator,
                           attribution_kwargs=kwargs)


# ----------------------------------------------------------------------------- sparse


def run_sparse(args: argparse.Namespace) -> int:
    from headig.cli.show import load_importance

    t_start = time.time()
    keeps = parse_list(args.keep, float, "keep")
    if any(not 0.0 < k <= 1.0 for k in keeps):
        raise ValueError(f"--keep {args.keep}: expected fractions in (0, 1]")
    modes = parse_list(args.modes, str, "modes")
    bad = [m for m in modes if m not in ("standard", "uniform", "adaptive")]
    if bad:
        raise ValueError(f"--modes {args.modes}: unknown mode(s) {bad}; expected standard, "
                         "uniform, adaptive")
    if "adaptive" in modes and args.scores is None and args.policies is None:
        raise ValueError("--modes includes adaptive, which needs --scores FILE")
    if args.block_size is not None and args.block_size < 1:
        raise ValueError(f"--block_size={args.block_size}; expected >= 1")
    if not 0.0 <= args.skip < 1.0:
        raise ValueError(f"--skip={args.skip}; expected a fraction in [0, 1)")
    objective = objective_from_args(args)
    if args.policies is not None:
        return run_policies(args, keeps, objective, t_start)
    out = check_out(args.out, ["sparse.csv", "sparse.json", "sparse.md"], args.overwrite)
    imp = load_importance(args.scores, args.original_sign) if args.scores else None

    import torch

    from headig.validation.settings import AccuracySettings, EvalSettings
    from headig.validation.sparse import sparse_sweep

    model, tokenizer, embedded = load_model_from_args(args)
    fam = model.family
    if imp is not None and (imp.n_layers, imp.n_heads) != (fam.n_layers, fam.n_heads):
        raise ValueError(f"{args.scores} scores a model with [{imp.n_layers} layers, "
                         f"{imp.n_heads} heads]; the model has [{fam.n_layers}, {fam.n_heads}]")
    encoded, labels, desc = load_data_from_args(args, tokenizer, embedded)
    say(f"data: {desc}")
    patch = {"block_size": args.block_size, "skip": args.skip, "min_keep": args.min_keep,
             "max_keep": args.max_keep, "kv_groups": args.kv_groups, "kernel": args.kernel}
    t0 = time.time()
    with torch.no_grad():
        sweep = sparse_sweep(
            model, encoded, imp, keeps=keeps, modes=modes, patch_kwargs=patch,
            accuracy=AccuracySettings(enabled=want_accuracy(args.accuracy, labels),
                                      labels=labels or None),
            evaluation=EvalSettings(objective=objective,
                                    internal_batch_size=rows_per_forward(args, encoded),
                                    progress=not args.no_progress,
                                    on_stage=lambda m: say(f"... {m}")))
    sweep.meta.update({"scores": args.scores, "data": desc, "seconds": time.time() - t0})
    files = sweep.save(out, plot=not args.no_plot)
    print(sweep.to_markdown())
    say(f"wrote {', '.join(str(f) for f in files.values())} ({time.time() - t_start:.0f} s)")
    return 0


def run_policies(args: argparse.Namespace, keeps: list[float], objective: Any,
                 t_start: float) -> int:
    """``validate sparse --policies``: budget policies compared over seeds."""
    import copy

    from headig.validation.settings import AccuracySettings
    from headig.validation.sparse import POLICIES, compare_budget_policies

    policies = parse_list(args.policies, str, "policies")
    bad = [p for p in policies if p not in POLICIES]
    if bad:
        raise ValueError(f"--policies {args.policies}: unknown policy(ies) {bad}; expected "
                         f"any of {', '.join(POLICIES)}")
    seeds = parse_list(args.seeds, int, "seeds")
    out = check_out(args.out, ["policies.csv", "policies.json", "policies.md"], args.overwrite)
    model, tokenizer, embedded = load_model_from_args(args)
    held, labels, desc = load_data_from_args(args, tokenizer, embedded)
    if args.train_data is None and not embedded:
        raise ValueError("--policies needs --train_data (the scores come from training data)")
    targs = copy.copy(args)
    targs.data, targs.limit = args.train_data, args.train_limit
    train, _, train_desc = load_data_from_args(targs, tokenizer, embedded, default_split="train")
    say(f"data: scores on {train_desc}; evaluated on {desc}")
    res = compare_budget_policies(
        model, train, held, keeps=keeps, policies=policies, seeds=seeds,
        block_size=args.block_size or 16, sensitivity_steps=args.sensitivity_steps,
        oracle_examples=args.oracle_examples, oracle_moves=args.oracle_moves,
        objective=objective,
        accuracy=AccuracySettings(enabled=want_accuracy(args.accuracy, labels),
                                  labels=labels or None),
        internal_batch_size=rows_per_forward(args, held),
        patch_kwargs={"kernel": "gather" if args.kernel == "auto" else args.kernel,
                      "skip": args.skip, "kv_groups": args.kv_groups},
        on_stage=None if args.no_progress else (lambda m: say(f"... {m}")))
    res.meta.update({"data": desc, "train_data": train_desc, "seconds": time.time() - t_start})
    files = res.save(out, plot=False)
    print(res.to_markdown())
    say(f"wrote {', '.join(str(f) for f in files.values())} ({time.time() - t_start:.0f} s)")
    return 0
