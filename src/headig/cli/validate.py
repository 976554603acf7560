"""``headig validate prune|sparse``: causal checks of a head-importance file.

``prune`` removes the k most / least important heads and k random heads (several seeds)
and measures the held-out masked-diffusion loss (and, where it is meaningful, the
exact-match accuracy of generation); with at most 16 prunable heads it also enumerates
every head subset for the oracle curves and the ranking's fidelity. ``sparse`` compares
dense attention with uniform and importance-adaptive block-sparse attention at several
keep ratios. Both write a table (CSV, JSON, Markdown) and a plot into ``--out``.

The model, data and objective flags come from :mod:`headig.cli._common`, shared with
``headig faithfulness``, ``headig sensitivity`` and ``headig attribute``.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from typing import Any

from headig.cli._common import (
    Formatter,
    add_data_arguments,
    add_model_arguments,
    add_objective_arguments,
    check_out,
    flags,
    layers_from_args,
    load_data_from_args,
    load_model_from_args,
    objective_from_args,
    parse_list,
    rows_per_forward,
    say,
    want_accuracy,
)

# The shared flags and loaders live in headig.cli._common; these names stay importable
# from here for one release.
_flags = flags
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
    g.add_argument(*flags("--row_budgets"), action="store_true",
                   help="count each padded row's budget on its own tokens (batch-invariant; "
                        "default: on the batch's padded length, as the documented tables)")
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
             "max_keep": args.max_keep, "kv_groups": args.kv_groups, "kernel": args.kernel,
             "row_budgets": args.row_budgets}
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
                      "skip": args.skip, "kv_groups": args.kv_groups,
                      "row_budgets": args.row_budgets},
        on_stage=None if args.no_progress else (lambda m: say(f"... {m}")))
    res.meta.update({"data": desc, "train_data": train_desc, "seconds": time.time() - t_start})
    files = res.save(out, plot=False)
    print(res.to_markdown())
    say(f"wrote {', '.join(str(f) for f in files.values())} ({time.time() - t_start:.0f} s)")
    return 0
