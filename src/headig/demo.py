"""``headig demo``: the whole story on the embedded tiny model, offline, on a CPU, in minutes.

1. load the tiny trained diffusion LM shipped with headig (3 layers x 4 heads);
2. score every head with HeadIG (Stochastic Threshold Path) on training examples;
3. prune the most / least important and random heads and measure the held-out loss and
   the exact-match accuracy of generation, with the exhaustive oracle (12 heads = 4096
   subsets) and the ranking's fidelity;
4. compare dense, uniform-sparse and importance-adaptive sparse attention;
5. write a report folder: the score file, a heatmap, the plots, tables and ``summary.md``.

Attribution data (the training split) and evaluation data (the held-out split) never
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

__all__ = ["DemoConfig", "DemoReport", "run_demo"]


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo; ``quick`` is for tests and very slow machines."""

    attribution_per_task: int = 8
    eval_per_task: int = 20
    ks: tuple[int, ...] = (1, 2, 3, 4, 6)
    random_seeds: int = 3
    oracle_examples: int = 24
    sparse_keeps: tuple[float, ...] = (0.2, 0.3, 0.5)
    stp_samples: int = 4
    ig_steps: int = 8
    headline_k: int = 2

    @classmethod
    def quick(cls) -> DemoConfig:
        return cls(attribution_per_task=4, eval_per_task=8, ks=(1, 2, 4), random_seeds=3,
                   oracle_examples=8, sparse_keeps=(0.3,), stp_samples=4, ig_steps=8,
                   headline_k=2)


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
             config: DemoConfig | None = None, sparse: bool = True) -> DemoReport:
    """Run the demo and write the report folder; returns its paths and headline numbers.

    Args:
        out: report folder (created; files in it are replaced).
        quick: a smaller budget (fewer examples, k values and keep ratios).
        model_dir: a folder written by ``python -m headig.toy.train_tiny`` (with
            ``train.jsonl`` / ``eval.jsonl``) instead of the embedded model.
        progress: print stages and progress bars to stderr.
        config: explicit sizes (overrides ``quick``).
        sparse: include the sparse-attention comparison (when headig.sparse is present).
    """
    from headig import tasks
    from headig.attribution import STP, integrated_gradients
    from headig.models.loading import load_model
    from headig.validation.prune import OracleSettings, PruneSelection, prune_sweep
    from headig.validation.settings import AccuracySettings, EvalSettings
    from headig.validation.sparse import sparse_sweep

    cfg = config or (DemoConfig.quick() if quick else DemoConfig())
    say = _printer(progress)
    t_start = time.time()
    folder = Path(out).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} exists and is not a folder; choose another --out")
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    n_steps = 5 if sparse else 4

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
    say(f"[2/{n_steps}] HeadIG (STP, {cfg.stp_samples} path samples x {cfg.ig_steps} steps) "
        f"on {len(attr)} examples")
    t0 = time.time()
    att = integrated_gradients(model, attr, path=STP(samples=cfg.stp_samples),
                               steps=cfg.ig_steps, progress=progress)
    imp = att.to_importance()
    imp.meta["demo"] = {"data": "embedded train split", "per_task": cfg.attribution_per_task}
    attr_seconds = time.time() - t0
    files["scores"] = imp.save(folder / "head_importance.safetensors")
    files["heatmap"] = _heatmap(imp, folder / "heatmap.png")
    delta = (att.j_full - att.j_baseline).abs().mean()
    completeness = {
        "mean_abs_residual": float(att.residual.abs().mean()),
        "mean_abs_delta": float(delta),
        "relative": float(att.residual.abs().mean() / delta.clamp_min(1e-12)),
    }
    say(f"      done in {attr_seconds:.0f} s; completeness residual "
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
                        evaluation=EvalSettings(progress=progress,
                                                on_stage=lambda m: say(f"      {m}")))
    prune_seconds = time.time() - t0
    files.update({f"prune_{k}": v for k, v in sweep.save(folder).items()})
    say(f"      done in {prune_seconds:.0f} s")

    # 4. sparse attention
    sparse_result = None
    sparse_note = None
    if sparse:
        say(f"[4/{n_steps}] sparse attention: dense vs uniform vs adaptive at keep "
            f"{', '.join(f'{k:g}' for k in cfg.sparse_keeps)}")
        t0 = time.time()
        try:
            sparse_result = sparse_sweep(
                model, held, imp, keeps=cfg.sparse_keeps,
                accuracy=AccuracySettings(enabled=True, labels=labels),
                evaluation=EvalSettings(progress=progress))
            files.update({f"sparse_{k}": v for k, v in sparse_result.save(folder).items()})
            say(f"      done in {time.time() - t0:.0f} s")
        except ImportError as err:  # headig.sparse not installed in this build
            sparse_note = f"skipped: {err}"
            say(f"      {sparse_note}")

    # 5. summary
    say(f"[{n_steps}/{n_steps}] writing the summary")
    numbers = _numbers(imp, sweep, sparse_result, completeness, cfg)
    seconds = time.time() - t_start
    summary = _summary(model_name, fam, attr, held, imp, att, sweep, sparse_result, sparse_note,
                       completeness, numbers, cfg, seconds, files, folder,
                       list(dict.fromkeys(e.task for e in eval_raw)))
    files["summary"] = folder / "summary.md"
    files["summary"].write_text(summary)
    say(f"report written to {folder.resolve()} ({seconds:.0f} s); start with "
        f"{files['summary'].resolve()}")
    return DemoReport(folder=folder, files=files, numbers=numbers, seconds=seconds)


def _heatmap(imp: Any, path: Path) -> Path:
    from headig.plotting import save_heatmap

    return save_heatmap(imp, path, mark_top=3,
                        title="HeadIG (STP) head importance — embedded tiny model")


def _row(sweep: Any, arm: str, k: int) -> dict[str, Any] | None:
    return next((r for r in sweep.table() if r["arm"] == arm and r["k"] == k), None)


def _numbers(imp: Any, sweep: Any, sparse_result: Any, completeness: dict[str, float],
             cfg: DemoConfig) -> dict[str, Any]:
    k = cfg.headline_k if cfg.headline_k in sweep.ks else sweep.ks[0]
    out: dict[str, Any] = {
        "top_heads": [(layer, head, score) for layer, head, score in imp.top_k(3)],
        "completeness_relative": completeness["relative"],
        "headline_k": k,
        "intact": sweep.intact,
        "most": _row(sweep, "most", k), "least": _row(sweep, "least", k),
        "random": _row(sweep, "random", k),
        "fidelity": sweep.fidelity,
    }
    if sparse_result is not None:
        out["sparse"] = [{kk: r[kk] for kk in ("mode", "keep", "loss", "accuracy")}
                         for r in sparse_result.rows]
    return out


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _summary(model_name: str, fam: Any, attr: list[Any], held: list[Any], imp: Any, att: Any,
             sweep: Any, sparse_result: Any, sparse_note: str | None,
             completeness: dict[str, float], numbers: dict[str, Any], cfg: DemoConfig,
             seconds: float, files: dict[str, Path], folder: Path,
             task_names: list[str]) -> str:
    k = numbers["headline_k"]
    most, least, rand = numbers["most"], numbers["least"], numbers["random"]
    intact = sweep.intact
    top = ", ".join(f"layer {a} head {b} ({s:+.3f})" for a, b, s in numbers["top_heads"])
    bottom = ", ".join(f"layer {a} head {b} ({s:+.3f})"
                       for a, b, s in imp.top_k(3, largest=False))
    lines = [
        "# headig demo report",
        "",
        f"Model: {model_name} — {fam.name} format, {fam.n_layers} layers x {fam.n_heads} "
        f"heads ({fam.n_layers * fam.n_heads} heads), trained on {len(task_names)} small "
        f"prompt→answer tasks ({', '.join(task_names)}).",
        f"Attribution on {len(attr)} training examples; every check below on {len(held)} "
        f"held-out examples ({cfg.eval_per_task} per task). Run time {seconds:.0f} s on "
        f"{torch.get_num_threads()} CPU thread(s).",
        "",
        "## 1. Which heads matter (HeadIG, Stochastic Threshold Path)",
        "",
        f"Scores are Integrated Gradients of J = −(masked-diffusion loss on the completion) "
        f"over per-head gates, along the STP ({cfg.stp_samples} path samples x "
        f"{cfg.ig_steps} trapezoid steps per example). Positive = the head helps.",
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
        f"a residual of {_pct(completeness['relative'])} of that difference (mean |residual| "
        f"{completeness['mean_abs_residual']:.4f} vs mean |J(1) − J(0)| "
        f"{completeness['mean_abs_delta']:.4f}). "
        + ("That is large: J changes abruptly when a critical head switches on, which "
           f"{cfg.ig_steps} steps per path undersample; more steps shrink the residual "
           "(it is a quadrature error). docs/faithfulness.md shows how the ranking depends "
           "on the budget." if completeness["relative"] > 0.2 else
           "More path samples or steps shrink it further."),
        "",
        "## 2. Pruning: does removing the top heads break the model?",
        "",
        "![pruning](prune.png)",
        "",
    ]
    if most and least and rand:
        acc_most = most.get("accuracy")
        lines += [
            f"Removing **{k} of {sweep.n_heads}** heads (held-out loss; exact-match accuracy of "
            "diffusion generation):",
            "",
            "| heads removed | loss | accuracy |",
            "|---|---:|---:|",
            f"| none | {intact['loss']:.3f} | {_pct(intact.get('accuracy'))} |",
            f"| {k} most important ({most['removed']}) | {most['loss']:.3f} | "
            f"{_pct(acc_most)} |",
            f"| {k} random (mean ± std, {rand['n_runs']} seeds) | {rand['loss']:.3f} ± "
            f"{rand['loss_std']:.3f} | {_pct(rand.get('accuracy'))} ± "
            f"{_pct(rand.get('accuracy_std'))} |",
            f"| {k} least important ({least['removed']}) | {least['loss']:.3f} | "
            f"{_pct(least.get('accuracy'))} |",
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
        lines.append(f"Pruning the top-ranked heads raises the loss "
                     f"{most['loss'] - intact['loss']:+.3f}, random heads "
                     f"{rand['loss'] - intact['loss']:+.3f}, the bottom-ranked heads "
                     f"{least['loss'] - intact['loss']:+.3f}: {verdict}.")
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
    lines += ["## 3. Sparse attention: uniform vs importance-adaptive budgets", ""]
    if sparse_result is None:
        lines.append(f"Not run ({sparse_note or 'disabled'}).")
    else:
        lines += ["![sparse](sparse.png)", "", sparse_result.to_markdown()]
        comps = []
        for keep in sorted({r["keep"] for r in sparse_result.rows if r["mode"] != "standard"}):
            u = next((r for r in sparse_result.rows if r["mode"] == "uniform"
                      and r["keep"] == keep), None)
            a = next((r for r in sparse_result.rows if r["mode"] == "adaptive"
                      and r["keep"] == keep), None)
            if u and a:
                better = "adaptive is better" if a["loss"] < u["loss"] else "uniform is better"
                comps.append(f"keep {keep:g}: uniform {u['loss']:.3f}, adaptive "
                             f"{a['loss']:.3f} ({better})")
        block = sparse_result.meta["patch"].get("block_size")
        wins = [c for c in comps if "adaptive is better" in c]
        if len(wins) == len(comps):
            verdict = "Adaptive budgets beat uniform ones at every keep ratio here."
        elif not wins:
            verdict = ("Here adaptive budgets do NOT beat uniform ones: a head's importance "
                       "(what removing it costs) is not the same as how much it suffers "
                       "from seeing fewer keys, and the heads ranked low lose keys they need.")
        else:
            verdict = "The two modes trade places depending on the keep ratio."
        lines += [
            f"Both sparse modes keep the same total number of key blocks (blocks of {block} "
            f"token{'s' if block != 1 else ''} on these short sequences); adaptive gives more "
            "of them to heads with higher scores. Held-out loss — " + "; ".join(comps) + ".",
            "",
            verdict + " On a 12-head toy model with ~15-token sequences this is a small "
            "test; the comparison that matters is on real checkpoints (see examples/).",
        ]
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
    if sparse_result is not None:
        lines.append("| sparse.png, sparse.md/.csv/.json | sparse-attention comparison |")
    lines += [
        "",
        "## Do it yourself",
        "",
        "```bash",
        "headig attribute --out scores      # HeadIG; default: the embedded model, its train data",
        "headig show scores",
        "headig validate prune --scores scores --k 1,2,4 --out prune",
        "headig validate sparse --scores scores --out sparse",
        "headig faithfulness --out faithfulness     # estimators vs exact Shapley values",
        "```",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------- long-context model scores
LONG_BLOCK_SIZE = 16
LONG_KEEPS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5)
LONG_SEEDS: tuple[int, ...] = (0, 1, 2)
LONG_MASK_PROBS: tuple[float, ...] = (0.15, 0.5, 0.9)
LONG_TRAIN_SEED = 777
LONG_SCORES_COMMAND = "headig demo --recompute-long-scores FOLDER"


@dataclass(frozen=True)
class LongScoreSettings:
    """How the shipped scores of ``tiny-dllm-long`` were computed (training draws only).

    The defaults are the settings of the shipped files; tests use smaller ones.
    """

    seeds: tuple[int, ...] = LONG_SEEDS
    keeps: tuple[float, ...] = LONG_KEEPS
    train: int = 6
    importance_steps: int = 4
    sensitivity_steps: int = 8


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
