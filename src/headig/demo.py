"""``headig demo``: the whole story on the two embedded models, offline, on a CPU, in minutes.

1. load the tiny trained diffusion LM shipped with headig (3 layers x 4 heads) and score
   every head with HeadIG (Stochastic Threshold Path, converged quadrature ``steps="auto"``)
   on training examples;
2. prune the most / least important and random heads and measure the held-out loss and
   the exact-match accuracy of generation, with the exhaustive oracle (12 heads = 4096
   subsets) and the ranking's fidelity;
3. on the long-context model (``tiny-dllm-long``, 4 layers x 8 heads, ~540-token
   sequences, blocks of 16 tokens) compare sparse-attention budget policies — uniform,
   importance-adaptive, sensitivity-adaptive — at several keep ratios over seeds, with the
   HeadIG importance and sparsity sensitivity precomputed on its training draws and
   shipped in ``assets/tiny-dllm-long/scores`` (recomputed by
   ``headig demo --recompute-long-scores FOLDER``);
4. write a report folder: the score file, a heatmap, the plots, tables and ``summary.md``.

Attribution data (training examples / draws) and evaluation data (held-out splits) never
overlap.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["DemoConfig", "DemoReport", "LongScoreSettings", "compute_long_scores",
           "long_scores_path", "run_demo"]

# the long-context comparison: block size, keeps, seeds, objective, training draws
LONG_BLOCK_SIZE = 16
LONG_KEEPS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5)
LONG_SEEDS: tuple[int, ...] = (0, 1, 2)
LONG_MASK_PROBS: tuple[float, ...] = (0.15, 0.5, 0.9)
LONG_TRAIN_SEED = 777
LONG_SCORES_COMMAND = "headig demo --recompute-long-scores FOLDER"


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo; ``quick`` is for CI and very slow machines."""

    attribution_per_task: int = 8
    eval_per_task: int = 20
    ks: tuple[int, ...] = (1, 2, 3, 4, 6)
    random_seeds: int = 3
    oracle_examples: int = 24
    stp_samples: int = 4
    ig_tol: float = 0.05
    headline_k: int = 2
    long_keeps: tuple[float, ...] = LONG_KEEPS
    long_seeds: tuple[int, ...] = LONG_SEEDS
    long_per_task: int = 4

    @classmethod
    def quick(cls) -> DemoConfig:
        return cls(attribution_per_task=4, eval_per_task=8, ks=(1, 2, 4), random_seeds=3,
                   oracle_examples=8, stp_samples=4, ig_tol=0.05, headline_k=2,
                   long_keeps=(0.2, 0.5), long_seeds=LONG_SEEDS, long_per_task=2)


@dataclass
class DemoReport:
    """Where everything went, and the headline numbers."""

    folder: Path
    files: dict[str, Path]
    numbers: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def _printer(enabled: bool) -> Callable[[str], None]:
    def say(msg: str) -> None:
        if enabled:
            print(msg, file=sys.stderr, flush=True)

    return say


def _encode(tokenizer: Any, raw: list[Any], split: str) -> tuple[list[Any], dict[str, str]]:
    from headig.data import Example, encode_examples

    examples = [Example(e.prompt, e.completion, id=f"{split}-{i}", meta={"task": e.task})
                for i, e in enumerate(raw)]
    encoded, report = encode_examples(tokenizer, examples, add_bos=False)
    if report.dropped:
        raise ValueError(f"demo data could not be encoded:\n{report}")
    return encoded, {ex.id: ex.meta["task"] for ex in examples}


def run_demo(out: str | Path = "headig-report", *, quick: bool = False,
             model_dir: str | Path | None = None, progress: bool = True,
             config: DemoConfig | None = None, sparse: bool = True,
             long_scores: str | Path | None = None) -> DemoReport:
    """Run the demo and write the report folder; returns its paths and headline numbers.

    Args:
        out: report folder (created; files in it are replaced).
        quick: a smaller budget (fewer examples, k values, keep ratios).
        model_dir: a folder written by ``python -m headig.toy.train_tiny`` (with
            ``train.jsonl`` / ``eval.jsonl``) instead of the embedded tiny model.
        progress: print stages and progress bars to stderr.
        config: explicit sizes (overrides ``quick``).
        sparse: include the budget-policy comparison on the long-context model.
        long_scores: a folder written by :func:`compute_long_scores` instead of the
            scores shipped with the long model.
    """
    from headig import tasks
    from headig.attribution import STP, integrated_gradients
    from headig.models.loading import load_model
    from headig.validation.prune import OracleSettings, PruneSelection, prune_sweep
    from headig.validation.ranking import RankingSettings
    from headig.validation.settings import AccuracySettings, EvalSettings

    cfg = config or (DemoConfig.quick() if quick else DemoConfig())
    say = _printer(progress)
    t_start = time.time()
    folder = Path(out).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} exists and is not a folder; choose another --out")
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    n_steps = 5 if sparse else 4
    seconds: dict[str, float] = {}

    # 1. model and data
    if model_dir is None:
        from headig.toy.embedded import embedded_model_path

        model_dir = embedded_model_path()
        model_name = "the embedded tiny model (headig/assets/tiny-dllm)"
    else:
        model_name = str(model_dir)
    model_dir = Path(model_dir)
    for name in ("train.jsonl", "eval.jsonl"):
        if not (model_dir / name).is_file():
            raise FileNotFoundError(f"{model_dir} has no {name}; the demo needs a folder written "
                                    "by python -m headig.toy.train_tiny")
    say(f"[1/{n_steps}] loading {model_name}")
    model, tokenizer = load_model(model_dir)
    fam = model.family
    attr_raw = tasks.subset(tasks.read_jsonl(model_dir / "train.jsonl"), cfg.attribution_per_task)
    eval_raw = tasks.subset(tasks.read_jsonl(model_dir / "eval.jsonl"), cfg.eval_per_task)
    attr, _ = _encode(tokenizer, attr_raw, "train")
    held, labels = _encode(tokenizer, eval_raw, "eval")
    n_heads = fam.n_layers * fam.n_heads
    say(f"      {fam.n_layers} layers x {fam.n_heads} heads; {len(attr)} attribution examples "
        f"(train split), {len(held)} held-out examples (eval split), "
        f"{len({e.task for e in eval_raw})} tasks")

    # 2. attribution
    say(f"[2/{n_steps}] HeadIG (STP, {cfg.stp_samples} path samples, steps until the "
        f"completeness residual is under {cfg.ig_tol:g}) on {len(attr)} examples")
    t0 = time.time()
    att = integrated_gradients(model, attr, path=STP(samples=cfg.stp_samples), steps="auto",
                               tol=cfg.ig_tol, progress=progress)
    imp = att.to_importance()
    imp.meta["demo"] = {"data": "embedded train split", "per_task": cfg.attribution_per_task}
    seconds["attribution"] = time.time() - t0
    files["scores"] = imp.save(folder / "head_importance.safetensors")
    files["heatmap"] = _heatmap(imp, folder / "heatmap.png")
    delta = (att.j_full - att.j_baseline).abs()
    conv = att.meta.get("convergence", {})
    completeness = {
        "mean_abs_residual": float(att.residual.abs().mean()),
        "mean_abs_delta": float(delta.mean()),
        "relative": float(att.residual.abs().sum() / delta.sum().clamp_min(1e-12)),
        "points_per_example": _mean([p for p in conv.get("points_per_example", []) if p]),
        "n_converged": conv.get("n_converged"), "n_examples": len(attr),
    }
    say(f"      done in {seconds['attribution']:.0f} s; completeness residual "
        f"{completeness['relative']:.1%} of |J(1) - J(0)|")

    # 3. pruning
    ks = [k for k in cfg.ks if 1 <= k < n_heads]
    say(f"[3/{n_steps}] pruning k = {', '.join(map(str, ks))} heads: most / least / random "
        f"({cfg.random_seeds} seeds), loss + generation accuracy; oracle over all "
        f"{2 ** n_heads} subsets on {min(cfg.oracle_examples, len(held))} examples")
    t0 = time.time()
    sweep = prune_sweep(model, held, imp, PruneSelection(ks=ks, random_seeds=cfg.random_seeds),
                        oracle=OracleSettings(enabled=n_heads <= 16,
                                              examples=cfg.oracle_examples),
                        accuracy=AccuracySettings(enabled=True, labels=labels),
                        # iterative (leave-one-out) re-ranking finds better "least" subsets
                        ranking=RankingSettings(methods=("oneshot", "iterative"), batch=attr),
                        evaluation=EvalSettings(progress=progress,
                                                on_stage=lambda m: say(f"      {m}")))
    seconds["pruning"] = time.time() - t0
    files.update({f"prune_{k}": v for k, v in sweep.save(folder).items()})
    say(f"      done in {seconds['pruning']:.0f} s")

    # 4. budget policies on the long-context model
    policies = None
    if sparse:
        say(f"[4/{n_steps}] sparse attention on the long-context model: uniform / "
            f"importance-adaptive / sensitivity budgets at keep "
            f"{', '.join(f'{k:g}' for k in cfg.long_keeps)}, seeds "
            f"{', '.join(map(str, cfg.long_seeds))}")
        t0 = time.time()
        policies = long_policies(cfg, scores=long_scores, progress=progress,
                                 on_stage=lambda m: say(f"      {m}"))
        files.update({f"policies_{k}": v
                      for k, v in policies.save(folder, plot=False).items()})
        files["policies_plot"] = plot_policies(policies, folder / "policies.png")
        seconds["policies"] = time.time() - t0
        say(f"      done in {seconds['policies']:.0f} s")

    # 5. summary
    say(f"[{n_steps}/{n_steps}] writing the summary")
    numbers = _numbers(imp, sweep, policies, completeness, cfg)
    seconds["total"] = time.time() - t_start
    numbers["seconds"] = seconds
    summary = _summary(model_name, fam, attr, held, imp, sweep, policies, completeness,
                       numbers, cfg, seconds, list(dict.fromkeys(e.task for e in eval_raw)))
    files["summary"] = folder / "summary.md"
    files["summary"].write_text(summary)
    say(f"report written to {folder.resolve()} ({seconds['total']:.0f} s); start with "
        f"{files['summary'].resolve()}")
    return DemoReport(folder=folder, files=files, numbers=numbers, seconds=seconds["total"])


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _heatmap(imp: Any, path: Path) -> Path:
    from headig.plotting import save_heatmap

    return save_heatmap(imp, path, mark_top=3,
                        title="HeadIG (STP) head importance — embedded tiny model")


# --------------------------------------------------------------- long-context model scores


@dataclass(frozen=True)
class LongScoreSettings:
    """How the shipped scores of ``tiny-dllm-long`` were computed (training draws only).

    The defaults are the settings of the shipped files; tests use smaller ones.
    """

    seeds: tuple[int, ...] = LONG_SEEDS
    keeps: tuple[float, ...] = LONG_KEEPS
    train: int = 4
    importance_steps: int = 4
    sensitivity_steps: int = 4


def long_objective(seed: int) -> Any:
    """The objective of the long-model comparison: mask rates 0.15 / 0.5 / 0.9, one each."""
    from headig.objective import MaskedDiffusionObjective

    return MaskedDiffusionObjective(mask_probs=LONG_MASK_PROBS, mask_samples_per_prob=1,
                                    seed=int(seed))


def long_rows(examples: list[Any], split: str) -> list[dict[str, Any]]:
    """Encoded rows (ids ``{split}-{i}``) of long-context examples."""
    from headig.toy import long_context as lc

    return [{"input_ids": torch.tensor(pr + co), "prompt_length": len(pr), "id": f"{split}-{i}"}
            for i, (pr, co) in enumerate(lc.encode_fast(examples))]


def long_train_examples(n: int) -> list[Any]:
    """The training draws the long-model scores are computed on (never held out)."""
    from headig.toy import long_context as lc

    return lc.train_batch(seed=LONG_TRAIN_SEED, step=0, n=n, length=lc.EVAL_CONTEXT)


def long_score_name(kind: str, seed: int, keep: float | None = None) -> str:
    """File name of one shipped score: ``importance-seed0`` / ``sensitivity-keep0.3-seed0``."""
    if kind == "importance":
        return f"importance-seed{seed}.safetensors"
    if kind == "sensitivity" and keep is not None:
        return f"sensitivity-keep{keep:g}-seed{seed}.safetensors"
    raise ValueError(f"kind={kind!r}, keep={keep!r}")


def long_scores_path() -> Path:
    """The precomputed scores shipped with ``tiny-dllm-long`` (``scores/``)."""
    from headig.toy.embedded import embedded_model_path

    return embedded_model_path("long") / "scores"


def compute_long_scores(out: str | Path, settings: LongScoreSettings | None = None, *,
                        progress: bool = True) -> dict[str, Path]:
    """Recompute the HeadIG importance and sparsity sensitivity of ``tiny-dllm-long``.

    The slowest step of the demo, so its results ship with the model; this is the command
    that made them (``headig demo --recompute-long-scores FOLDER``). For every seed:
    HeadIG (STP) importance and, at every keep, the sparsity sensitivity (block size 16),
    on ``settings.train`` training draws with objective masks of that seed.
    """
    import json

    from headig.attribution.estimators import IntegratedGradients
    from headig.attribution.sensitivity import sparsity_sensitivity
    from headig.paths import STP
    from headig.toy.embedded import load_embedded

    st = settings or LongScoreSettings()
    say = _printer(progress)
    folder = Path(out).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    model, _ = load_embedded(name="long")
    train = long_rows(long_train_examples(st.train), "train")
    files: dict[str, Path] = {}
    t0 = time.time()
    for seed in st.seeds:
        obj = long_objective(seed)
        say(f"{time.time() - t0:6.0f} s  seed {seed}: HeadIG importance")
        imp = IntegratedGradients(model, path=STP(), steps=st.importance_steps,
                                  objective=obj).attribute(train).to_importance()
        imp.meta["demo"] = {"model": "tiny-dllm-long", "seed": seed, "kind": "importance"}
        name = long_score_name("importance", seed)
        files[name] = imp.save(folder / name)
        for keep in st.keeps:
            say(f"{time.time() - t0:6.0f} s  seed {seed}: sparsity sensitivity at keep {keep:g}")
            att = sparsity_sensitivity(model, train, keep=keep, steps=st.sensitivity_steps,
                                       objective=obj, block_size=LONG_BLOCK_SIZE,
                                       kernel="gather")
            sens = att.to_importance()
            sens.meta["demo"] = {
                "model": "tiny-dllm-long", "seed": seed, "kind": "sensitivity", "keep": keep,
                "j_dense_minus_sparse": float((att.j_full - att.j_baseline).mean()),
                "mean_abs_residual": float(att.residual.abs().mean())}
            name = long_score_name("sensitivity", seed, keep)
            files[name] = sens.save(folder / name)
    manifest = {"command": LONG_SCORES_COMMAND, "settings": dataclasses.asdict(st),
                "block_size": LONG_BLOCK_SIZE, "mask_probs": list(LONG_MASK_PROBS),
                "train_draws": {"seed": LONG_TRAIN_SEED, "step": 0, "n": st.train},
                "seconds": round(time.time() - t0, 1),
                "threads": torch.get_num_threads(), "files": sorted(files)}
    files["manifest"] = folder / "manifest.json"
    files["manifest"].write_text(json.dumps(manifest, indent=1) + "\n")
    say(f"{time.time() - t0:6.0f} s  scores written to {folder}")
    return files


def _load_long_scores(folder: Path, seeds: tuple[int, ...], keeps: tuple[float, ...]
                      ) -> tuple[dict[int, Any], dict[tuple[int, float], Any]]:
    from headig.importance import HeadImportance

    missing = [n for n in [long_score_name("importance", s) for s in seeds]
               + [long_score_name("sensitivity", s, k) for s in seeds for k in keeps]
               if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {missing[:3]}{' ...' if len(missing) > 3 else ''};"
                                f" write them with `{LONG_SCORES_COMMAND}`")
    imp = {s: HeadImportance.load(folder / long_score_name("importance", s)) for s in seeds}
    sens = {(s, k): HeadImportance.load(folder / long_score_name("sensitivity", s, k))
            for s in seeds for k in keeps}
    return imp, sens


def long_held_out(per_task: int) -> list[Any]:
    """The first ``per_task`` held-out examples of each long-context task."""
    from headig.toy import long_context as lc
    from headig.toy.embedded import embedded_examples

    pool = embedded_examples("eval", name="long")
    return [e for t in lc.LONG_TASKS for e in [x for x in pool if x.task == t][:per_task]]


def _policy_loss(model: Any, items: list[Any], policy: Any, objective: Any) -> float:
    """Held-out loss with block-sparse attention (blocks of 16) under ``policy`` (None = dense)."""
    from headig.sparse import SparseAttentionPatch
    from headig.validation.loss import loss_at_masks

    fam = model.family
    full = torch.ones(fam.n_layers, fam.n_heads, dtype=torch.bool)
    if policy is None:
        return float(loss_at_masks(model, items, full, objective=objective,
                                   internal_batch_size=32))
    with SparseAttentionPatch(model, policy, block_size=LONG_BLOCK_SIZE, min_seq_len=0,
                              kernel="gather"):
        return float(loss_at_masks(model, items, full, objective=objective,
                                   internal_batch_size=32))


def long_policies(cfg: DemoConfig, *, scores: str | Path | None = None, progress: bool = False,
                  on_stage: Callable[[str], None] | None = None) -> Any:
    """Uniform vs importance-adaptive vs sensitivity budgets on ``tiny-dllm-long``.

    The evaluation of :func:`headig.validation.sparse.compare_budget_policies` (same
    objective, block size, budgets and paired seeds), with the scores read from
    ``scores`` (default: the shipped ``scores/`` folder) instead of recomputed: seed s
    uses the scores computed with objective seed s and held-out masks of seed s.
    """
    import json

    from headig.sparse import ImportanceBudget, SensitivityBudget, UniformBudget
    from headig.toy.embedded import load_embedded
    from headig.validation.loss import eval_items
    from headig.validation.sparse import PolicyComparison

    stage = on_stage or (lambda _m: None)
    folder = Path(scores).expanduser() if scores is not None else long_scores_path()
    seeds, keeps = tuple(cfg.long_seeds), tuple(sorted(cfg.long_keeps))
    imp, sens = _load_long_scores(folder, seeds, keeps)
    model, _ = load_embedded(name="long")
    held_ex = long_held_out(cfg.long_per_task)
    items = eval_items(long_rows(held_ex, "eval"))
    rows: list[dict[str, Any]] = []
    for s in seeds:
        obj = long_objective(s)
        stage(f"seed {s}: dense and {len(keeps)} keeps x 3 policies on {len(items)} held-out "
              "examples")
        for k in keeps:
            built = {"uniform": UniformBudget(k), "adaptive": ImportanceBudget(imp[s], k),
                     "sensitivity": SensitivityBudget(sens[(s, k)], k)}
            for pol, budget in built.items():
                rows.append({"policy": pol, "keep": k, "seed": int(s),
                             "loss": _policy_loss(model, items, budget, obj), "accuracy": None})
    dense = {int(s): _policy_loss(model, items, None, long_objective(s)) for s in seeds}
    manifest = folder / "manifest.json"
    meta = {"model": "tiny-dllm-long", "n_held_out": len(items),
            "held_out_per_task": cfg.long_per_task, "seeds": list(seeds),
            "patch": {"block_size": LONG_BLOCK_SIZE, "min_seq_len": 0, "kernel": "gather"},
            "objective": long_objective(0).settings(), "dense_loss": dense,
            "max_length": max(it.length for it in items),
            "scores": "shipped" if scores is None else str(folder),
            "score_settings": json.loads(manifest.read_text()) if manifest.is_file() else None,
            "sensitivity_completeness": {f"seed{s}_keep{k:g}": sens[(s, k)].meta.get("demo")
                                         for s in seeds for k in keeps}}
    return PolicyComparison(rows=rows, meta=meta)


def plot_policies(result: Any, path: Path) -> Path:
    """Held-out loss against the kept fraction, per budget policy (mean ± std over seeds)."""
    from headig.validation.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    dense = list(result.meta["dense_loss"].values())
    ax.axhline(sum(dense) / len(dense), color="0.3", ls=":", lw=1, label="dense attention")
    colors = {"uniform": "tab:blue", "adaptive": "tab:orange", "sensitivity": "tab:green"}
    names = {"uniform": "uniform", "adaptive": "importance-adaptive",
             "sensitivity": "sensitivity-adaptive"}
    summ = result.summary()
    for i, pol in enumerate(("uniform", "adaptive", "sensitivity")):
        pts = sorted((r["keep"], r["loss_mean"], r["loss_std"]) for r in summ
                     if r["policy"] == pol)
        if pts:
            off = (i - 1) * 0.006  # keep overlapping error bars apart
            ax.errorbar([p[0] + off for p in pts], [p[1] for p in pts],
                        yerr=[p[2] for p in pts], marker="o", ms=4, capsize=3,
                        color=colors[pol], label=names[pol])
    ax.set_xlabel("fraction of key blocks kept (blocks of 16 tokens)")
    ax.set_ylabel("held-out masked-diffusion loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Sparse-attention budgets, tiny-dllm-long ({len(result.meta['seeds'])} seeds, "
                 "mean ± std)", fontsize=10)
    return save_figure(fig, path)


# ------------------------------------------------------------------------------ summary
def _row(sweep: Any, arm: str, k: int, ranking: str | None = None) -> dict[str, Any] | None:
    return next((r for r in sweep.table() if r["arm"] == arm and r["k"] == k
                 and (ranking is None or r.get("ranking") in (ranking, None))), None)


def _policy_verdicts(policies: Any) -> list[dict[str, Any]]:
    """Per keep: each policy's mean ± std, the winner, and whether its lead beats the spread.

    The lead is "clear" when the paired difference to the runner-up (same seed) has a mean
    larger than twice its standard deviation over seeds.
    """
    from headig.validation.report import mean_std

    by = {(r["policy"], r["keep"], r["seed"]): r["loss"] for r in policies.rows}
    summ = policies.summary()
    out = []
    for keep in sorted({r["keep"] for r in summ}):
        rs = sorted((r for r in summ if r["keep"] == keep), key=lambda r: r["loss_mean"])
        best, second = rs[0], rs[1] if len(rs) > 1 else None
        lead = None
        if second is not None:
            d = [by[(second["policy"], keep, s)] - by[(best["policy"], keep, s)]
                 for s in policies.meta["seeds"]]
            m, sd = mean_std(d)[:2]
            lead = {"mean": m, "std": sd, "clear": m > 2 * sd}
        out.append({"keep": keep, "ranked": [(r["policy"], r["loss_mean"], r["loss_std"])
                                             for r in rs],
                    "winner": best["policy"], "runner_up": second and second["policy"],
                    "lead": lead})
    return out


def _numbers(imp: Any, sweep: Any, policies: Any, completeness: dict[str, Any],
             cfg: DemoConfig) -> dict[str, Any]:
    k = cfg.headline_k if cfg.headline_k in sweep.ks else sweep.ks[0]
    out: dict[str, Any] = {
        "top_heads": [(layer, head, score) for layer, head, score in imp.top_k(3)],
        "completeness_relative": completeness["relative"],
        "completeness": completeness,
        "headline_k": k,
        "intact": sweep.intact,
        "most": _row(sweep, "most", k, "oneshot"), "least": _row(sweep, "least", k, "iterative"),
        "least_oneshot": _row(sweep, "least", k, "oneshot"),
        "random": _row(sweep, "random", k),
        "fidelity": sweep.fidelity,
    }
    if policies is not None:
        out["policies"] = policies.summary()
        out["policy_verdicts"] = _policy_verdicts(policies)
        out["dense_loss"] = policies.meta["dense_loss"]
    return out


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


POLICY_NAMES = {"uniform": "uniform", "adaptive": "importance-adaptive",
                "sensitivity": "sensitivity-adaptive"}


def _summary(model_name: str, fam: Any, attr: list[Any], held: list[Any], imp: Any,
             sweep: Any, policies: Any, completeness: dict[str, Any],
             numbers: dict[str, Any], cfg: DemoConfig, seconds: dict[str, float],
             task_names: list[str]) -> str:
    k = numbers["headline_k"]
    most, least, rand = numbers["most"], numbers["least"], numbers["random"]
    intact = sweep.intact
    top = ", ".join(f"layer {a} head {b} ({s:+.3f})" for a, b, s in numbers["top_heads"])
    bottom = ", ".join(f"layer {a} head {b} ({s:+.3f})"
                       for a, b, s in imp.top_k(3, largest=False))
    pts = completeness.get("points_per_example")
    timing = ", ".join(f"{name} {sec:.0f} s" for name, sec in seconds.items() if name != "total")
    lines = [
        "# headig demo report",
        "",
        "The story in three steps: HeadIG says which attention heads matter; removing those "
        "heads breaks the model while removing the dispensable ones does not; and when "
        "every head must attend to fewer keys, the budget rule decides how much accuracy "
        "is kept.",
        "",
        f"Run time {seconds['total']:.0f} s on {torch.get_num_threads()} CPU thread(s) "
        f"({timing}).",
        "",
        "## 1. Which heads matter (HeadIG, Stochastic Threshold Path)",
        "",
        f"Model: {model_name} — {fam.name} format, {fam.n_layers} layers x {fam.n_heads} "
        f"heads ({fam.n_layers * fam.n_heads} heads), trained on {len(task_names)} small "
        f"prompt→answer tasks ({', '.join(task_names)}). Attribution on {len(attr)} training "
        f"examples; every check in section 2 on {len(held)} held-out examples "
        f"({cfg.eval_per_task} per task).",
        "",
        "Scores are Integrated Gradients of J = −(masked-diffusion loss on the completion) "
        f"over per-head gates, along the STP ({cfg.stp_samples} path samples per example; "
        "`steps=\"auto\"` refines the quadrature until the completeness residual is under "
        f"{cfg.ig_tol:g} of J(all heads) − J(no heads)"
        + (f", here {pts:.0f} gate points per example on average" if pts else "")
        + "). Positive = the head helps.",
        "",
        "![heatmap](heatmap.png)",
        "",
        "```",
        imp.layer_head_table(),
        "```",
        "",
        f"- Most important: {top}.",
        f"- Least important: {bottom}.",
        f"- Completeness: the scores of an example add up to J(all heads) − J(no heads) up to "
        f"a residual of **{_pct(completeness['relative'])}** of that difference (mean "
        f"|residual| {completeness['mean_abs_residual']:.4f} vs mean |J(1) − J(0)| "
        f"{completeness['mean_abs_delta']:.4f}"
        + (f"; {completeness['n_converged']} of {completeness['n_examples']} examples "
           "reached the target on their own" if completeness.get("n_converged") is not None
           else "") + ").",
        "",
        "## 2. Pruning: removing the top heads breaks the model, the bottom ones do not",
        "",
        "![pruning](prune.png)",
        "",
    ]
    if most and least and rand:
        lines += [
            f"Removing **{k} of {sweep.n_heads}** heads (held-out loss; exact-match accuracy of "
            "diffusion generation):",
            "",
            "| heads removed | loss | accuracy |",
            "|---|---:|---:|",
            f"| none | {intact['loss']:.3f} | {_pct(intact.get('accuracy'))} |",
            f"| {k} most important ({most['removed']}) | {most['loss']:.3f} | "
            f"{_pct(most.get('accuracy'))} |",
            f"| {k} random (mean ± std, {rand['n_runs']} seeds) | {rand['loss']:.3f} ± "
            f"{rand['loss_std']:.3f} | {_pct(rand.get('accuracy'))} ± "
            f"{_pct(rand.get('accuracy_std'))} |",
            f"| {k} least important ({least['removed']}) | {least['loss']:.3f} | "
            f"{_pct(least.get('accuracy'))} |",
        ]
        lo = numbers.get("least_oneshot")
        if lo:
            lines.append(f"| {k} least important, one-shot ranking ({lo['removed']}) | "
                         f"{lo['loss']:.3f} | {_pct(lo.get('accuracy'))} |")
        lines += [
            "",
            "Most important: the one-shot HeadIG ranking. Least important: the iterative "
            "ranking (remove the least important head, re-rank the rest by leave-one-out on "
            "the training examples, repeat), which finds more dispensable sets than the "
            "one-shot ranking here (fidelities below).",
            "",
        ]
        loss_ok = most["loss"] > rand["loss"] > least["loss"]
        accs = [most.get("accuracy"), rand.get("accuracy"), least.get("accuracy")]
        acc_ok = None if None in accs else accs[0] < accs[1] < accs[2]
        if loss_ok and acc_ok in (None, True):
            verdict = "the order the scores predict (most > random > least)"
        elif loss_ok:
            verdict = ("the predicted order for the loss; the accuracy of the least-important "
                       "arm is not above the random arm's at this k")
        else:
            verdict = "NOT the order the scores predict (most > random > least)"
        lines.append(f"Pruning the top-ranked heads raises the loss by "
                     f"{most['loss'] - intact['loss']:+.3f} and takes the accuracy from "
                     f"{_pct(intact.get('accuracy'))} to {_pct(most.get('accuracy'))}; random "
                     f"heads {rand['loss'] - intact['loss']:+.3f}, the bottom-ranked heads "
                     f"{least['loss'] - intact['loss']:+.3f} ({_pct(least.get('accuracy'))} "
                     f"accuracy): {verdict}.")
    if sweep.fidelity:
        fid = ", ".join(f"{a} {v:.2f}" for a, v in sweep.fidelity.items() if v is not None)
        lines += [
            "",
            f"Oracle: all {2 ** sweep.n_heads} head subsets were evaluated on "
            f"{sweep.meta['oracle_examples']} of the held-out examples. Fidelity of the "
            f"ranking (1 = it finds the worst / best k-subset, 0 = no better than random "
            f"pruning; pooled over k): **{fid}**.",
        ]
    lines += ["", "Full table: [prune.md](prune.md) (also prune.csv, prune.json).", ""]
    lines += ["## 3. Sparse attention: which budget policy keeps the most", ""]
    if policies is None:
        lines.append("Not run (--no-sparse).")
    else:
        lines += _policy_section(policies, numbers)
    lines += [
        "",
        "## Files",
        "",
        "| file | what |",
        "|---|---|",
        "| head_importance.safetensors (+ .json) | the scores (`headig show`, "
        "`HeadImportance.load`) |",
        "| heatmap.png | layer x head heatmap, top 3 heads outlined |",
        "| prune.png, prune.md/.csv/.json, prune_oracle.csv | pruning sweep and oracle |",
    ]
    if policies is not None:
        lines.append("| policies.png, policies.md/.csv/.json | sparse budget policies on the "
                     "long-context model (one row per policy, keep, seed) |")
    lines += [
        "",
        "## Do it yourself",
        "",
        "```bash",
        "headig attribute --out scores      # HeadIG; default: the embedded model, its train data",
        "headig show scores",
        "headig validate prune --scores scores --k 1,2,4 --out prune",
        "headig faithfulness --out faithfulness     # estimators vs exact Shapley values",
        f"{LONG_SCORES_COMMAND}   # the long model's shipped scores",
        "```",
        "",
    ]
    return "\n".join(lines)


def _policy_section(policies: Any, numbers: dict[str, Any]) -> list[str]:
    meta = policies.meta
    dense = list(meta["dense_loss"].values())
    st = (meta.get("score_settings") or {}).get("settings", {})
    n_seeds = len(meta["seeds"])
    lines = [
        f"Model: the embedded long-context model (headig/assets/tiny-dllm-long; 4 layers x 8 "
        f"heads): {meta['n_held_out']} held-out examples ({meta['held_out_per_task']} per task: "
        f"key-value recall, needle, continue), up to {meta['max_length']} tokens, attention "
        f"in blocks of {meta['patch']['block_size']} tokens. Every policy keeps the same total "
        "number of key blocks as uniform sparsity at that keep ratio; they differ in how the "
        "blocks are shared among heads:",
        "",
        "- **uniform**: every head the same number;",
        "- **importance-adaptive**: more to heads with higher HeadIG importance;",
        "- **sensitivity-adaptive**: more to heads whose loss grows most when *they* are made "
        "sparse (HeadIG between a head's dense and sparse attention; docs/method.md).",
        "",
        "Both score kinds were computed on training draws of the model"
        + (f" ({st.get('train')} draws, importance {st.get('importance_steps')} STP steps, "
           f"sensitivity {st.get('sensitivity_steps')} Gauss–Legendre nodes)" if st else "")
        + (" and ship with it (assets/tiny-dllm-long/scores; "
           f"`{LONG_SCORES_COMMAND}` recomputes them)" if meta.get("scores") == "shipped"
           else f" ({meta.get('scores')})")
        + f". Seed s uses the scores made with seed s and held-out masks of seed s "
        f"({n_seeds} seeds: mean ± std). Dense attention: loss {min(dense):.3f}–"
        f"{max(dense):.3f}.",
        "",
        "![sparse policies](policies.png)",
        "",
        policies.to_markdown(),
    ]
    said = []
    for v in numbers["policy_verdicts"]:
        ranked = ", ".join(f"{POLICY_NAMES[p]} {m:.3f} ± {s:.3f}" for p, m, s in v["ranked"])
        lead = v["lead"]
        how = ("" if lead is None else
               f" by {lead['mean']:.3f} ± {lead['std']:.3f} over {POLICY_NAMES[v['runner_up']]}"
               f" (paired; {'clear' if lead['clear'] else 'within the seed spread'})")
        said.append(f"- keep {v['keep']:g}: **{POLICY_NAMES[v['winner']]}** wins{how} — "
                    f"{ranked}.")
    lines += said
    uni = {r["keep"]: r for r in numbers["policies"] if r["policy"] == "uniform"}
    sens_gain = [(r["keep"], -r["delta_vs_uniform_mean"]) for r in numbers["policies"]
                 if r["policy"] == "sensitivity" and r["delta_vs_uniform_mean"] is not None]
    wins = [v["winner"] for v in numbers["policy_verdicts"]]
    n_sens, n_imp, n_uni = (wins.count("sensitivity"), wins.count("adaptive"),
                            wins.count("uniform"))
    if sens_gain and uni:
        k_best, gain = max(sens_gain, key=lambda x: x[1])
        lines += [
            "",
            f"In words: with the same number of attended key blocks, where the blocks go "
            f"matters. The largest gain of the sensitivity budget over uniform is "
            f"{gain:+.3f} nats at keep {k_best:g} (uniform {uni[k_best]['loss_mean']:.3f}, "
            f"dense {sum(dense) / len(dense):.3f}). "
            + ("Sensitivity (what *sparsifying* a head costs) wins at "
               f"{n_sens} of {len(numbers['policy_verdicts'])} keep ratios, importance (what "
               f"*removing* it costs) at {n_imp}, uniform at {n_uni}: a head can matter a "
               "lot and still need only its neighbourhood."),
        ]
    return lines
