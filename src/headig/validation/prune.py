"""Prune the top / bottom / random k heads of a ranking and measure what breaks.

A head ranking is useful if removing the heads it calls important hurts the model more
than removing random heads, and removing the heads it calls unimportant hurts less.
:func:`prune_sweep` measures exactly that on held-out data, with the exhaustive oracle
(:mod:`headig.validation.coalitions`) and the ranking's fidelity when the model is small.

Its settings come in four small groups (:class:`PruneSelection`, :class:`OracleSettings`,
:class:`AccuracySettings`, :class:`EvalSettings`); the flat keywords of earlier releases
(``ks=``, ``oracle_examples=``, ``labels=`` ...) are still accepted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from headig.gating import normalize_layers, select_heads
from headig.models.family import family_of
from headig.runtime import progress_bar
from headig.validation.accuracy import generation_accuracy
from headig.validation.coalitions import (
    DEFAULT_ORACLE_MAX_HEADS,
    CoalitionTable,
    coalition_table,
    ranking_curves,
)
from headig.validation.loss import default_objective, eval_items, loss_at_masks, spread
from headig.validation.ranking import RankingSettings, head_orders
from headig.validation.report import Report, fmt, head_name, mean_std
from headig.validation.settings import AccuracySettings, EvalSettings, fold_keywords

ARMS = ("most", "least", "random")

__all__ = ["ARMS", "AccuracySettings", "EvalSettings", "OracleSettings", "PruneSelection",
           "PruneSweep", "RankingSettings", "prune_sweep", "resolve_ks"]


def resolve_ks(n_heads: int, ks: Sequence[int] | None = None,
               k_fracs: Sequence[float] | None = None) -> list[int]:
    """Head counts to prune from ``ks`` or ``k_fracs`` (rounded like :func:`select_heads`).

    Every k must satisfy 1 <= k < n_heads (pruning every head leaves no model to rank).
    Duplicates collapse; the result is sorted.
    """
    if (ks is None) == (k_fracs is None):
        raise ValueError("pass exactly one of ks (head counts) or k_fracs (fractions in (0, 1))")
    out: list[int] = []
    if ks is not None:
        for k in ks:
            if isinstance(k, bool) or int(k) != k or not 1 <= int(k) < n_heads:
                raise ValueError(f"k={k!r}; expected integers with 1 <= k < {n_heads} "
                                 "(the heads in the chosen layers)")
            out.append(int(k))
    else:
        for f in k_fracs or ():
            if not 0.0 < float(f) < 1.0:
                raise ValueError(f"k_frac={f!r}; expected fractions in (0, 1)")
            k = int(round(float(f) * n_heads))
            if not 1 <= k < n_heads:
                raise ValueError(f"k_frac={f} of {n_heads} heads rounds to {k} heads; expected "
                                 f"1 <= k < {n_heads}")
            out.append(k)
    if not out:
        raise ValueError("no k values given")
    return sorted(set(out))


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class PruneSelection:
    """Which heads each pruned model loses.

    Attributes:
        ks / k_fracs: head counts or fractions of the heads in ``layers`` (one of them).
        arms: any of "most", "least", "random".
        random_seeds: random draws per k (seeds ``seed``, ``seed + 1``, ...).
        by: rank by the signed score or by |score| (see :func:`headig.gating.select_heads`).
        layers: the layers whose heads may be pruned (default: the attributed layers).
    """

    ks: Sequence[int] | None = None
    k_fracs: Sequence[float] | None = None
    arms: Sequence[str] = ARMS
    random_seeds: int = 3
    seed: int = 1234
    by: str = "signed"
    layers: Sequence[int] | None = None


@dataclass(frozen=True)
class OracleSettings:
    """The exhaustive oracle: whether to run it, and on which examples.

    Attributes:
        enabled: None = when the heads in the pruned layers are at most ``max_heads``.
        batch: the oracle's examples; else ``examples`` examples evenly spaced through the
            sweep's batch (:func:`~headig.validation.loss.spread`); else the whole batch.
    """

    enabled: bool | None = None
    batch: Any = None
    examples: int | None = None
    max_heads: int = DEFAULT_ORACLE_MAX_HEADS


# earlier flat keyword -> (settings group, field)
_LEGACY: dict[str, tuple[str, str]] = {
    **{name: ("selection", name) for name in
       ("ks", "k_fracs", "arms", "random_seeds", "seed", "by", "layers")},
    **{name: ("evaluation", name) for name in
       ("objective", "internal_batch_size", "progress", "on_stage")},
    "labels": ("accuracy", "labels"), "generate_kwargs": ("accuracy", "generate_kwargs"),
    "oracle_batch": ("oracle", "batch"), "oracle_examples": ("oracle", "examples"),
    "oracle_max_heads": ("oracle", "max_heads"),
}


def _settings(selection: PruneSelection | None, oracle: OracleSettings | bool | None,
              accuracy: AccuracySettings | bool, evaluation: EvalSettings | None,
              legacy: Mapping[str, Any]
              ) -> tuple[PruneSelection, OracleSettings, AccuracySettings, EvalSettings]:
    """The four settings groups, with any flat keywords of earlier releases folded in."""
    given = {"selection": selection,
             "oracle": oracle if isinstance(oracle, OracleSettings) else None,
             "accuracy": accuracy if isinstance(accuracy, AccuracySettings) else None,
             "evaluation": evaluation}
    defaults = {"selection": PruneSelection(),
                "oracle": OracleSettings(enabled=None if oracle is None else bool(oracle)),
                "accuracy": AccuracySettings(enabled=bool(accuracy)),
                "evaluation": EvalSettings()}
    out = fold_keywords("prune_sweep", given, defaults, legacy, _LEGACY)
    return out["selection"], out["oracle"], out["accuracy"], out["evaluation"]


# ----------------------------------------------------------------------------- result


@dataclass
class PruneSweep(Report):
    """Results of :func:`prune_sweep`.

    Attributes:
        runs: one dict per pruned model (arm, k, seed, loss, accuracy, removed heads).
        intact: loss (and accuracy) of the unpruned model.
        oracle: per k, on the oracle data: the best / worst k-subsets, the exact mean over
            all k-subsets (random pruning's expectation), each arm's loss and fidelity.
        fidelity: summary fidelity per arm over all k (pooled, see
            :mod:`headig.validation.coalitions`).

    A sweep that compared rankings (``prune_sweep(..., ranking=...)``) tags runs and oracle
    rows with their ``ranking``, keys the fidelity "<ranking> <arm>", lists the rankings
    in ``meta["rankings"]`` and their orders' provenance in ``meta["ranking_meta"]``;
    :meth:`for_ranking` gives one ranking's view in the plain layout.
    """

    ks: list[int]
    n_heads: int
    layers: list[int]
    runs: list[dict[str, Any]]
    intact: dict[str, Any]
    oracle: list[dict[str, Any]] | None = None
    fidelity: dict[str, float | None] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    default_prefix = "prune"

    @property
    def rankings(self) -> list[str] | None:
        """The compared ranking methods, or None for a sweep of the given scores alone."""
        return self.meta.get("rankings")

    def for_ranking(self, method: str) -> PruneSweep:
        """The sweep as if only ``method`` had ranked the heads (random runs shared)."""
        if not self.rankings:
            return self
        if method not in self.rankings:
            raise ValueError(f"ranking {method!r} not in this sweep ({self.rankings})")
        runs = [{k: v for k, v in r.items() if k != "ranking"} for r in self.runs
                if r.get("ranking") in (None, method)]
        oracle = None if self.oracle is None else [
            {k: v for k, v in o.items() if k != "ranking"} for o in self.oracle
            if o["ranking"] == method]
        fidelity = None if self.fidelity is None else {
            a: v for a, v in ((key.split(" ")[1], v) for key, v in self.fidelity.items()
                              if key.split(" ")[0] == method)}
        meta = {k: v for k, v in self.meta.items() if k not in ("rankings", "ranking_meta")}
        meta["ranking"] = method
        return PruneSweep(ks=self.ks, n_heads=self.n_heads, layers=self.layers, runs=runs,
                          intact=self.intact, oracle=oracle, fidelity=fidelity, meta=meta)

    def table(self) -> list[dict[str, Any]]:
        """One row per (arm, k) (and ranking, when several are compared): mean, std (over
        seeds for random), min, max."""
        if self.rankings:
            rows = []
            for method in self.rankings:
                for r in self.for_ranking(method).table():
                    if r["arm"] in ("intact", "random") and method != self.rankings[0]:
                        continue
                    rows.append({"ranking": "" if r["arm"] in ("intact", "random")
                                 else method, **r})
            order = {a: i for i, a in enumerate(("intact", *self.meta.get("arms", ARMS)))}
            rows.sort(key=lambda r: (r["k"], order[r["arm"]]))
            return rows
        rows = [{"arm": "intact", "k": 0, "k_frac": 0.0, "n_runs": 1,
                 "loss": self.intact["loss"], "loss_std": 0.0, "loss_min": self.intact["loss"],
                 "loss_max": self.intact["loss"], "accuracy": self.intact.get("accuracy"),
                 "accuracy_std": 0.0 if self.intact.get("accuracy") is not None else None,
                 "removed": ""}]
        for k in self.ks:
            for arm in self.meta.get("arms", ARMS):
                runs = [r for r in self.runs if r["arm"] == arm and r["k"] == k]
                if not runs:
                    continue
                loss, loss_std, lo, hi = mean_std([r["loss"] for r in runs])
                accs = [r["accuracy"] for r in runs if r.get("accuracy") is not None]
                acc, acc_std = (None, None)
                if accs:
                    acc, acc_std, _, _ = mean_std(accs)
                removed = "" if arm == "random" else " ".join(
                    head_name(a, b) for a, b in runs[0]["removed"])
                rows.append({"arm": arm, "k": k, "k_frac": round(k / self.n_heads, 4),
                             "n_runs": len(runs), "loss": loss, "loss_std": loss_std,
                             "loss_min": lo, "loss_max": hi, "accuracy": acc,
                             "accuracy_std": acc_std, "removed": removed})
        return rows

    def csv_rows(self) -> list[dict[str, Any]]:
        return self.table()

    def to_dict(self) -> dict[str, Any]:
        return {"ks": self.ks, "n_heads": self.n_heads, "layers": self.layers,
                "intact": self.intact, "table": self.table(), "runs": self.runs,
                "oracle": self.oracle, "fidelity": self.fidelity, "meta": self.meta}

    def oracle_csv(self) -> str:
        """The oracle rows as CSV (removed heads spelled ``L0.H1 L2.H3``); "" without oracle."""
        from headig.validation.report import csv_text

        if not self.oracle:
            return ""
        rows = [{k: (" ".join(head_name(a, b) for a, b in v) if k.endswith("removed") else v)
                 for k, v in row.items()} for row in self.oracle]
        return csv_text(rows)

    def to_markdown(self) -> str:
        if self.rankings:
            return self._multi_markdown()
        has_acc = self.intact.get("accuracy") is not None
        lines = ["| arm | k | loss (mean ± std) | range |" + (" accuracy |" if has_acc else "")
                 + " removed heads |",
                 "|---|---:|---:|---:|" + ("---:|" if has_acc else "") + "---|"]
        for r in self.table():
            std = f" ± {r['loss_std']:.4f}" if r["n_runs"] > 1 else ""
            rng = f"{r['loss_min']:.4f}–{r['loss_max']:.4f}" if r["n_runs"] > 1 else ""
            acc = ""
            if has_acc:
                acc = f" {r['accuracy']:.3f}" + (f" ± {r['accuracy_std']:.3f}"
                                                 if r["n_runs"] > 1 else "") + " |"
            removed = r["removed"] or (f"({r['n_runs']} seeds)" if r["arm"] == "random" else "")
            lines.append(f"| {r['arm']} | {r['k']} | {r['loss']:.4f}{std} | {rng} |{acc} "
                         f"{removed} |")
        if self.oracle:
            n_ex = self.meta.get("oracle_examples")
            lines += ["", f"Oracle over all subsets of the {self.n_heads} heads "
                      f"({n_ex} examples; losses on these examples):", "",
                      "| k | best subset | least | random (exact mean) | most | worst subset "
                      "| fidelity least | fidelity most |",
                      "|---:|---:|---:|---:|---:|---:|---:|---:|"]
            for o in self.oracle:
                lines.append(
                    f"| {o['k']} | {o['best_loss']:.4f} | {fmt(o.get('least_loss'))} | "
                    f"{o['random_mean_loss']:.4f} | {fmt(o.get('most_loss'))} | "
                    f"{o['worst_loss']:.4f} | {fmt(o.get('fidelity_least'), 3)} | "
                    f"{fmt(o.get('fidelity_most'), 3)} |")
            if self.fidelity:
                lines += ["", "Summary fidelity (pooled over k; 1 = oracle, 0 = random): "
                          + ", ".join(f"{a} {fmt(v, 3)}" for a, v in self.fidelity.items())]
        return "\n".join(lines) + "\n"

    def _multi_markdown(self) -> str:
        """Tables of a sweep comparing several rankings: one row per (k, arm, ranking)."""
        has_acc = self.intact.get("accuracy") is not None
        lines = ["| k | arm | ranking | loss (mean ± std) | range |"
                 + (" accuracy |" if has_acc else "") + " removed heads |",
                 "|---:|---|---|---:|---:|" + ("---:|" if has_acc else "") + "---|"]
        for r in self.table():
            multi = r["n_runs"] > 1
            std = f" ± {r['loss_std']:.4f}" if multi else ""
            rng = f"{r['loss_min']:.4f}–{r['loss_max']:.4f}" if multi else ""
            acc = ""
            if has_acc:
                acc = f" {r['accuracy']:.3f}" + (f" ± {r['accuracy_std']:.3f}"
                                                 if multi else "") + " |"
            removed = r["removed"] or (f"({r['n_runs']} seeds)" if r["arm"] == "random" else "")
            lines.append(f"| {r['k']} | {r['arm']} | {r['ranking']} | {r['loss']:.4f}{std} | "
                         f"{rng} |{acc} {removed} |")
        if self.oracle:
            lines += ["", f"Oracle over all subsets of the {self.n_heads} heads "
                      f"({self.meta.get('oracle_examples')} examples; losses on these "
                      "examples):", "",
                      "| ranking | k | best subset | least | random (exact mean) | most "
                      "| worst subset | fidelity least | fidelity most |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
            for o in self.oracle:
                lines.append(
                    f"| {o['ranking']} | {o['k']} | {o['best_loss']:.4f} | "
                    f"{fmt(o.get('least_loss'))} | {o['random_mean_loss']:.4f} | "
                    f"{fmt(o.get('most_loss'))} | {o['worst_loss']:.4f} | "
                    f"{fmt(o.get('fidelity_least'), 3)} | {fmt(o.get('fidelity_most'), 3)} |")
            if self.fidelity:
                lines += ["", "Summary fidelity (pooled over k; 1 = oracle, 0 = random): "
                          + ", ".join(f"{a} {fmt(v, 3)}" for a, v in self.fidelity.items())]
        return "\n".join(lines) + "\n"

    def extra_files(self, folder: Path, prefix: str) -> dict[str, Path]:
        if not self.oracle:
            return {}
        path = folder / f"{prefix}_oracle.csv"
        path.write_text(self.oracle_csv())
        return {"oracle_csv": path}

    def plot(self, path: Path) -> Path:
        """The pruning curves (of the first ranking, when several are compared)."""
        from headig.validation.plots import plot_prune

        if self.rankings:
            first = self.rankings[0]
            return plot_prune(self.for_ranking(first), path,
                              title=f"Pruning heads by importance ({first} ranking)")
        return plot_prune(self, path)


# ----------------------------------------------------------------------------- sweep


def prune_sweep(model: nn.Module, batch: Any, scores: Any,
                selection: PruneSelection | None = None, *,
                oracle: OracleSettings | bool | None = None,
                accuracy: AccuracySettings | bool = False,
                evaluation: EvalSettings | None = None,
                table: CoalitionTable | None = None,
                ranking: RankingSettings | None = None, **legacy: Any) -> PruneSweep:
    """Prune the top / bottom / random k heads of a ranking and measure what breaks.

    Args:
        batch: held-out examples (not the attribution data) for the loss and accuracy.
        scores: a :class:`~headig.importance.HeadImportance` or [L, H] scores
            (positive = helps).
        selection: the head counts, arms, seeds and layers (:class:`PruneSelection`).
        oracle: :class:`OracleSettings`, or True / False / None (= automatic).
        accuracy: :class:`AccuracySettings`, or True / False.
        evaluation: objective, rows per forward, progress (:class:`EvalSettings`).
        table: a precomputed :func:`~headig.validation.coalitions.coalition_table` to use
            as the oracle.
        ranking: how to order the heads of the "most" / "least" arms
            (:class:`~headig.validation.ranking.RankingSettings`: one-shot ``scores``,
            greedy re-attribution, leave-one-out; several compared in one sweep). None =
            the scores as given, with results laid out as in earlier releases.
        **legacy: the flat keywords of earlier releases (``ks``, ``k_fracs``, ``arms``,
            ``random_seeds``, ``seed``, ``by``, ``layers``, ``objective``, ``labels``,
            ``generate_kwargs``, ``oracle_batch``, ``oracle_examples``,
            ``oracle_max_heads``, ``internal_batch_size``, ``progress``, ``on_stage``).
    """
    sel, orc, acc, ev = _settings(selection, oracle, accuracy, evaluation, legacy)
    family = family_of(model)
    arms = sel.arms
    if sel.random_seeds < 1 and "random" in arms:
        raise ValueError(f"random_seeds={sel.random_seeds}; expected >= 1")
    bad = [a for a in arms if a not in ARMS]
    if bad or not arms:
        raise ValueError(f"arms={list(arms)}; expected a non-empty subset of {list(ARMS)}")
    s = scores.scores if hasattr(scores, "scores") else torch.as_tensor(scores)
    if tuple(s.shape) != (family.n_layers, family.n_heads):
        raise ValueError(f"scores have shape {tuple(s.shape)}; the model has [L, H] = "
                         f"[{family.n_layers}, {family.n_heads}]")
    attributed = list(scores.layers) if hasattr(scores, "layers") else None
    lyr = normalize_layers(sel.layers if sel.layers is not None else attributed,
                           family.n_layers)
    n = len(lyr) * family.n_heads
    k_list = resolve_ks(n, sel.ks, sel.k_fracs)
    run_oracle = orc.enabled
    if run_oracle is None:
        run_oracle = table is not None or n <= orc.max_heads
    if run_oracle and table is None and n > orc.max_heads:
        raise ValueError(f"oracle over {n} heads needs 2^{n} subsets; limit oracle_max_heads="
                         f"{orc.max_heads} (restrict the layers or disable the oracle)")
    if table is not None and tuple(table.layers) != tuple(lyr):
        raise ValueError(f"the coalition table covers layers {list(table.layers)}, the sweep "
                         f"prunes layers {lyr}")
    obj = default_objective(ev.objective)
    items = eval_items(batch)
    stage = ev.on_stage or (lambda _msg: None)

    orders = None
    if ranking is not None:
        orders = head_orders(model, ranking, scores=scores, max_k=max(k_list), layers=lyr,
                             arms=arms, by=sel.by, on_stage=stage)

    # every keep mask of the sweep, evaluated in one pass
    specs: list[dict[str, Any]] = []
    for k in k_list:
        for arm in arms:
            seeds = [sel.seed + i for i in range(sel.random_seeds)] if arm == "random" \
                else [sel.seed]
            if orders is not None and arm != "random":
                specs += [{"arm": arm, "k": k, "seed": None, "ranking": method,
                           "keep": order.keep(arm, k)} for method, order in orders.items()]
                continue
            for sd in seeds:
                keep = select_heads(s, arm, k=k, layers=lyr, seed=sd, by=sel.by)
                specs.append({"arm": arm, "k": k, "seed": sd if arm == "random" else None,
                              "keep": keep})
                if orders is not None:
                    specs[-1]["ranking"] = None
    masks = torch.stack([torch.ones(family.n_layers, family.n_heads, dtype=torch.bool)]
                        + [sp["keep"] for sp in specs])
    stage(f"loss of {len(masks)} pruned models on {len(items)} examples")
    losses = loss_at_masks(model, items, masks, objective=obj,
                           internal_batch_size=ev.internal_batch_size).tolist()
    intact: dict[str, Any] = {"loss": losses[0], "accuracy": None}
    accs: list[float | None] = [None] * len(masks)
    groups: list[dict[str, float]] = [{}] * len(masks)
    if acc.enabled:
        stage(f"generation accuracy of {len(masks)} pruned models")
        bar = progress_bar(len(masks), "accuracy", enabled=ev.progress, unit="model",
                           leave=False)
        for i, keep in enumerate(masks):
            res = generation_accuracy(model, items, labels=acc.labels, keep=keep,
                                      generate_kwargs=acc.generate_kwargs)
            accs[i], groups[i] = res["accuracy"], res["groups"]
            bar.update(1)
        bar.close()
        intact["accuracy"], intact["groups"] = accs[0], groups[0]
    runs = []
    for i, sp in enumerate(specs, start=1):
        runs.append({"arm": sp["arm"], "k": sp["k"], "seed": sp["seed"], "loss": losses[i],
                     "accuracy": accs[i], "groups": groups[i],
                     "removed": [tuple(x) for x in (~sp["keep"]).nonzero().tolist()]})
        if orders is not None:
            runs[-1]["ranking"] = sp["ranking"]
            if sp["ranking"] is not None:  # in the order the ranking removed them
                runs[-1]["removal_order"] = [list(h) for h in
                                             orders[sp["ranking"]].orders[sp["arm"]][:sp["k"]]]

    oracle_rows = None
    fidelity = None
    oracle_n = None
    if run_oracle:
        if table is None:
            if orc.batch is not None:
                o_items = eval_items(orc.batch)
            elif orc.examples is not None:
                o_items = spread(items, int(orc.examples))
            else:
                o_items = items
            stage(f"oracle: loss of all {1 << n} head subsets on {len(o_items)} examples")
            table = coalition_table(model, o_items, layers=lyr, objective=obj,
                                    max_heads=max(orc.max_heads, n), progress=ev.progress)
        oracle_n = table.n_examples
        if orders is None:
            oracle_rows, fidelity = ranking_curves(
                table, _ranked_keeps(table, runs, k_list, arms), k_list)
        else:
            oracle_rows, fidelity = [], {}
            for method in orders:
                mine = [r for r in runs if r["ranking"] == method]
                rows, summary = ranking_curves(table, _ranked_keeps(table, mine, k_list, arms),
                                               k_list)
                oracle_rows += [{"ranking": method, **row} for row in rows]
                fidelity.update({f"{method} {a}": v for a, v in summary.items()})
    meta = {"arms": list(arms), "random_seeds": int(sel.random_seeds), "seed": int(sel.seed),
            "by": sel.by, "objective": obj.settings(), "n_examples": len(items),
            "oracle_examples": oracle_n, "family": family.name,
            "model": getattr(model, "name_or_path", None),
            "score_meta": dict(getattr(scores, "meta", {}) or {}).get("estimator")}
    if orders is not None:
        meta["rankings"] = list(orders)
        meta["ranking_meta"] = {m: o.meta for m, o in orders.items()}
    if table is not None:
        meta["oracle_seconds"] = table.meta.get("seconds")
        meta["oracle_intact_loss"] = float(-table.values[table.full])
    return PruneSweep(ks=k_list, n_heads=n, layers=lyr, runs=runs, intact=intact,
                      oracle=oracle_rows, fidelity=fidelity, meta=meta)


def _ranked_keeps(table: CoalitionTable, runs: list[dict[str, Any]], ks: Sequence[int],
                  arms: Sequence[str]) -> dict[tuple[str, int], torch.Tensor]:
    """(arm, k) -> keep mask of the sweep's "most" / "least" runs, for the oracle rows."""
    keeps = {}
    for k in ks:
        for arm in ("least", "most"):
            if arm not in arms:
                continue
            run = next(r for r in runs if r["arm"] == arm and r["k"] == k)
            keep = torch.ones(table.n_layers, table.n_heads, dtype=torch.bool)
            for a, b in run["removed"]:
                keep[a, b] = False
            keeps[(arm, k)] = keep
    return keeps
