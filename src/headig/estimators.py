"""Head-attribution estimators with one signature and one result type.

Every estimator scores each head of each example on J = −(masked-reconstruction loss),
positive = the head helps, then applies the per-example postprocess φ and averages:
score = mean_j φ(A_j). The result carries the completeness residual per example,
Σ_h A_jh − (J_j(1) − J_j(α0)), which is zero for an exact IG or Shapley attribution and
tells how far a finite budget is from it.

* :func:`integrated_gradients` – HeadIG along DP or STP with a pluggable quadrature rule.
* :func:`shapley_sampling` – permutation sampling (forward-only, antithetic pairs).
* :func:`exact_shapley` – enumerates every coalition (≤ 16 heads), the ground truth.
* :func:`leave_one_out` – J(1) − J(1 with head h at the baseline).
* :func:`gradient_at_ones` – ∂J/∂α at all-ones times (1 − α0) (Michel et al., 2019).

Runs are resumable: with ``checkpoint=FILE`` per-example results are written atomically
after every group of examples and reused on restart (the result is identical, since each
example's masks and thresholds depend only on the seed and its id). Under
``torch.distributed`` examples are sharded across ranks and gathered, so every rank returns
the single-process result.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path as FilePath
from typing import Any

import torch
from torch import Tensor, nn

from headig.gating import normalize_layers
from headig.models.family import family_of
from headig.objective import (
    DEFAULT_MASK_PROBS,
    Item,
    MaskedDiffusionObjective,
    PointRequest,
    as_items,
    evaluate_points,
    seed_from,
)
from headig.paths import DP, STP, Path

POSTPROCESS = ("signed", "abs", "relu")


def _postprocess(a: Tensor, how: str) -> Tensor:
    if how == "signed":
        return a
    if how == "abs":
        return a.abs()
    return a.clamp_min(0.0)


@dataclass
class Attribution:
    """Scores [L, H] (float32, all layers; rows outside ``layers`` are 0), per-example raw
    attributions before φ, and the completeness residual per example."""

    scores: Tensor
    layers: tuple[int, ...]
    example_ids: list[str]
    per_example: Tensor | None
    j_full: Tensor
    j_baseline: Tensor
    residual: Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def relative_residual(self) -> Tensor:
        """|residual| / |J(1) − J(α0)| per example."""
        return self.residual.abs() / (self.j_full - self.j_baseline).abs().clamp_min(1e-12)

    @property
    def convergence_delta(self) -> Tensor:
        """Alias of :attr:`residual` (Captum's name)."""
        return self.residual

    def to_importance(self):
        from headig.importance import HeadImportance

        meta = dict(self.meta)
        meta["completeness"] = {
            "mean_abs_residual": float(self.residual.abs().mean()),
            "mean_relative_residual": float(self.relative_residual.mean()),
        }
        stderr = None
        if self.per_example is not None and self.per_example.shape[0] > 1:
            post = _postprocess(self.per_example, meta.get("postprocess", "signed"))
            stderr = (post.std(0, unbiased=True) / math.sqrt(post.shape[0])).float()
        return HeadImportance(scores=self.scores.clone(), layers=tuple(self.layers), meta=meta,
                              per_example=None if self.per_example is None
                              else self.per_example.float(), stderr=stderr)

    def save(self, path: str | os.PathLike) -> None:
        self.to_importance().save(path)


# --------------------------------------------------------------------------------------
# shared driver


def _fingerprint(items: Sequence[Item]) -> str:
    h = hashlib.sha256()
    for it in items:
        h.update(it.id.encode())
        h.update(it.input_ids.numpy().tobytes())
        h.update(it.completion.numpy().tobytes())
    return h.hexdigest()[:16]


def _atomic_save(path: FilePath, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
              metadata={"headig_checkpoint": json.dumps(meta)})
    os.replace(tmp, path)


def _load_checkpoint(path: FilePath, fingerprint: str) -> dict[str, tuple[Tensor, float, float]]:
    from safetensors import safe_open

    if not path.is_file():
        return {}
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("headig_checkpoint", "{}"))
        if meta.get("fingerprint") != fingerprint:
            raise ValueError(
                f"checkpoint {path} was written by a run with different settings or data "
                f"(fingerprint {meta.get('fingerprint')!r}, this run {fingerprint!r}); "
                "use another checkpoint path or delete it"
            )
        done = {}
        for i, ex_id in enumerate(meta["ids"]):
            done[ex_id] = (f.get_tensor(f"a{i}").double(), float(meta["j_full"][i]),
                           float(meta["j_base"][i]))
    return done


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _run(
    model: nn.Module,
    batch: Any,
    *,
    estimator: str,
    attribute_group: Callable[[list[Item]], list[Tensor]],
    settings: dict[str, Any],
    objective: MaskedDiffusionObjective,
    layers: list[int],
    baseline: float,
    postprocess: str,
    internal_batch_size: int,
    return_per_example: bool,
    checkpoint: str | os.PathLike | None,
    examples_per_group: int,
    progress: bool,
) -> Attribution:
    if postprocess not in POSTPROCESS:
        raise ValueError(f"postprocess={postprocess!r}; expected one of {list(POSTPROCESS)}")
    family = family_of(model)
    items = as_items(batch)
    full_settings = {
        "estimator": estimator, **settings, **objective.settings(), "baseline": float(baseline),
        "postprocess": postprocess, "layers": list(layers),
    }
    data_fp = _fingerprint(items)
    run_fp = hashlib.sha256(json.dumps([full_settings, data_fp], sort_keys=True,
                                       default=str).encode()).hexdigest()[:16]
    rank, world = _dist()
    ckpt = None
    if checkpoint is not None:
        ckpt = FilePath(checkpoint)
        if world > 1:
            ckpt = ckpt.with_name(f"{ckpt.stem}.rank{rank}of{world}{ckpt.suffix}")
    done = _load_checkpoint(ckpt, run_fp) if ckpt is not None else {}
    mine = [it for i, it in enumerate(items) if i % world == rank]
    todo = [it for it in mine if it.id not in done]

    shape = (len(layers), family.n_heads)
    ones = torch.ones(1, *shape)
    base = torch.full((1, *shape), float(baseline))
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc=f"headig {estimator}",
                   unit="ex")
    start_time = time.time()
    try:
        for g0 in range(0, len(todo), examples_per_group):
            group = todo[g0:g0 + examples_per_group]
            attributions = attribute_group(group)
            ends = evaluate_points(model, objective,
                                   [PointRequest(it, torch.cat([ones, base])) for it in group],
                                   layers=layers, with_grad=False,
                                   internal_batch_size=internal_batch_size)
            for it, a, (vals, _) in zip(group, attributions, ends):
                done[it.id] = (a.double(), float(vals[0]), float(vals[1]))
            if ckpt is not None:
                ids = [it.id for it in mine if it.id in done]
                _atomic_save(ckpt, {f"a{i}": done[x][0] for i, x in enumerate(ids)},
                             {"fingerprint": run_fp, "ids": ids,
                              "j_full": [done[x][1] for x in ids],
                              "j_base": [done[x][2] for x in ids]})
            if bar is not None:
                bar.update(len(group))
    finally:
        if bar is not None:
            bar.close()

    local = {it.id: done[it.id] for it in mine}
    if world > 1:
        gathered: list[Any] = [None] * world
        torch.distributed.all_gather_object(gathered, local)
        for part in gathered:
            local.update(part)
    raw = torch.stack([local[it.id][0] for it in items])  # [N, L', H] float64
    j_full = torch.tensor([local[it.id][1] for it in items], dtype=torch.float64)
    j_base = torch.tensor([local[it.id][2] for it in items], dtype=torch.float64)
    residual = raw.sum((1, 2)) - (j_full - j_base)
    mean = _postprocess(raw, postprocess).mean(0)
    scores = torch.zeros(family.n_layers, family.n_heads, dtype=torch.float32)
    scores[layers] = mean.float()
    import headig

    meta = {
        **full_settings,
        "sign_convention": "positive_helps",
        "objective": "J = -(masked-token cross-entropy on the completion span)",
        "model": getattr(model, "name_or_path", None) or type(model).__name__,
        "family": family.name,
        "n_layers": family.n_layers, "n_heads": family.n_heads,
        "n_examples": len(items),
        "data_fingerprint": data_fp,
        "run_fingerprint": run_fp,
        "headig_version": headig.__version__,
        "torch_version": torch.__version__,
        "device": str(next(model.parameters()).device),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "world_size": world,
        "python": platform.python_version(),
        "seconds": round(time.time() - start_time, 3),
    }
    full_raw = None
    if return_per_example:
        full_raw = torch.zeros(len(items), family.n_layers, family.n_heads, dtype=torch.float64)
        full_raw[:, layers] = raw
    return Attribution(scores=scores, layers=tuple(layers), example_ids=[it.id for it in items],
                       per_example=full_raw, j_full=j_full, j_baseline=j_base,
                       residual=residual, meta=meta)


def _make_objective(objective, mask_probs, mask_samples_per_prob, loss_normalize, seed, masks):
    if objective is not None:
        return objective
    return MaskedDiffusionObjective(mask_probs=mask_probs,
                                    mask_samples_per_prob=mask_samples_per_prob,
                                    loss_normalize=loss_normalize, seed=seed, masks=masks)


def _check_baseline(baseline: float) -> float:
    b = float(baseline)
    if not math.isfinite(b) or b >= 1.0:
        raise ValueError(f"baseline={baseline}; expected a finite gate value below 1 (0 = ablation)")
    return b


_COMMON_DOC = """
    Common args:
        model: a model from :func:`headig.load_model` (or an official LLaDA/Dream model).
        batch: examples: a list of encoded examples (``input_ids`` [T], ``prompt_length``,
            ``id``) or a mapping with ``input_ids`` / ``completion_mask`` [N, T].
        baseline: α0, the gate value of an absent head (0 = zero-ablation).
        mask_probs, mask_samples_per_prob, loss_normalize, seed, masks: the objective
            (see :class:`headig.objective.MaskedDiffusionObjective`), or pass ``objective``.
        postprocess: φ applied to each example's attribution before the mean
            (``signed``, ``abs``, ``relu``).
        layers: attributed layers (default all); other heads stay at gate 1.
        internal_batch_size: rows (gate point × masking variant) per forward/backward.
        checkpoint: a file for atomic per-example checkpoints; a rerun resumes from it.
        progress: show a progress bar.
"""


def _common(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: kwargs[k] for k in ("postprocess", "internal_batch_size", "return_per_example",
                                   "checkpoint", "examples_per_group", "progress")}


def integrated_gradients(
    model: nn.Module,
    batch: Any,
    *,
    path: Path | None = None,
    steps: int = 8,
    rule: str | None = None,
    baseline: float = 0.0,
    mask_probs: Sequence[float] = DEFAULT_MASK_PROBS,
    mask_samples_per_prob: int = 2,
    loss_normalize: str = "mean_masked",
    postprocess: str = "signed",
    layers: Sequence[int] | None = None,
    seed: int = 0,
    masks: dict[str, Tensor] | None = None,
    objective: MaskedDiffusionObjective | None = None,
    internal_batch_size: int = 64,
    gradient_checkpointing: bool = False,
    return_per_example: bool = True,
    checkpoint: str | os.PathLike | None = None,
    examples_per_group: int = 4,
    progress: bool = False,
) -> Attribution:
    """HeadIG: Integrated Gradients of J over per-head gates, from α0 to 1.

    Args:
        path: :class:`DP` or :class:`STP` (default ``STP()``: 4 path samples, original ramp).
        steps: quadrature points per path sample (intervals for grid rules; nodes per ramp
            for ``ramp_gauss``).
        rule: quadrature rule (default: the path's own; see :mod:`headig.paths`).
    """
    path = STP() if path is None else path
    rule = rule or path.default_rule
    baseline = _check_baseline(baseline)
    family = family_of(model)
    lyr = normalize_layers(layers, family.n_layers)
    obj = _make_objective(objective, mask_probs, mask_samples_per_prob, loss_normalize, seed, masks)
    shape = (len(lyr), family.n_heads)
    Path.points(torch.zeros(shape, dtype=torch.float64), torch.ones(shape, dtype=torch.float64),
                baseline, steps, rule)  # validate rule/steps before any model work

    def attribute_group(group: list[Item]) -> list[Tensor]:
        requests, weights, owners = [], [], []
        for it in group:
            gen = torch.Generator().manual_seed(seed_from(seed, it.id, "path"))
            ramps = path.sample_ramps(shape, gen)
            for u, w in ramps:
                pts = Path.points(u, w, baseline, steps, rule)
                requests.append(PointRequest(it, pts.gates))
                weights.append(pts.weights / len(ramps))
                owners.append(it.id)
        prev = getattr(model, "gradient_checkpointing", False)
        if gradient_checkpointing and hasattr(model, "gradient_checkpointing"):
            model.gradient_checkpointing = True
        try:
            out = evaluate_points(model, obj, requests, layers=lyr, with_grad=True,
                                  internal_batch_size=internal_batch_size)
        finally:
            if hasattr(model, "gradient_checkpointing"):
                model.gradient_checkpointing = prev
        acc = {it.id: torch.zeros(shape, dtype=torch.float64) for it in group}
        for owner, wts, (_, grads) in zip(owners, weights, out):
            acc[owner] += (grads * wts).sum(0)
        return [acc[it.id] for it in group]

    settings = {**path.settings(), "steps": int(steps), "rule": rule, "seed": int(seed),
                "path_seed": int(seed)}
    return _run(model, batch, estimator="integrated_gradients", attribute_group=attribute_group,
                settings=settings, objective=obj, layers=lyr, baseline=baseline, **_common(locals()))


integrated_gradients.__doc__ += _COMMON_DOC


def _coalition_gates(present: Tensor, baseline: float, shape: tuple[int, int]) -> Tensor:
    """Bool presence [Q, n] -> gates [Q, L', H] (present = 1, absent = baseline)."""
    g = torch.where(present, 1.0, baseline).to(torch.float32)
    return g.reshape(present.shape[0], *shape)


def shapley_sampling(
    model: nn.Module,
    batch: Any,
    *,
    permutations: int = 8,
    antithetic: bool = True,
    baseline: float = 0.0,
    mask_probs: Sequence[float] = DEFAULT_MASK_PROBS,
    mask_samples_per_prob: int = 2,
    loss_normalize: str = "mean_masked",
    postprocess: str = "signed",
    layers: Sequence[int] | None = None,
    seed: int = 0,
    masks: dict[str, Tensor] | None = None,
    objective: MaskedDiffusionObjective | None = None,
    internal_batch_size: int = 64,
    return_per_example: bool = True,
    checkpoint: str | os.PathLike | None = None,
    examples_per_group: int = 4,
    progress: bool = False,
) -> Attribution:
    """Permutation-sampling Shapley values (forward-only): heads switch on in a random order
    and each is credited with its marginal contribution; ``antithetic`` pairs every order
    with its reverse. Cost: permutations × (heads + 1) gate points per example."""
    baseline = _check_baseline(baseline)
    family = family_of(model)
    lyr = normalize_layers(layers, family.n_layers)
    if int(permutations) < 1:
        raise ValueError(f"permutations={permutations}; expected >= 1")
    obj = _make_objective(objective, mask_probs, mask_samples_per_prob, loss_normalize, seed, masks)
    shape = (len(lyr), family.n_heads)
    n = shape[0] * shape[1]

    def attribute_group(group: list[Item]) -> list[Tensor]:
        requests, orders = [], []
        for it in group:
            gen = torch.Generator().manual_seed(seed_from(seed, it.id, "perm"))
            perms = []
            while len(perms) < permutations:
                p = torch.randperm(n, generator=gen)
                perms.append(p)
                if antithetic and len(perms) < permutations:
                    perms.append(p.flip(0))
            present = []
            for p in perms:
                rank = torch.empty(n, dtype=torch.long)
                rank[p] = torch.arange(n)
                steps_ = torch.arange(n + 1)[:, None]
                present.append(rank[None, :] < steps_)  # [n+1, n]: first t heads present
            requests.append(PointRequest(it, _coalition_gates(torch.cat(present), baseline, shape)))
            orders.append(perms)
        out = evaluate_points(model, obj, requests, layers=lyr, with_grad=False,
                              internal_batch_size=internal_batch_size)
        results = []
        for perms, (vals, _) in zip(orders, out):
            acc = torch.zeros(n, dtype=torch.float64)
            vals = vals.view(len(perms), n + 1)
            for p, v in zip(perms, vals):
                acc[p] += v[1:] - v[:-1]
            results.append((acc / len(perms)).view(shape))
        return results

    settings = {"permutations": int(permutations), "antithetic": bool(antithetic),
                "seed": int(seed)}
    return _run(model, batch, estimator="shapley_sampling", attribute_group=attribute_group,
                settings=settings, objective=obj, layers=lyr, baseline=baseline, **_common(locals()))


def exact_shapley(
    model: nn.Module,
    batch: Any,
    *,
    baseline: float = 0.0,
    mask_probs: Sequence[float] = DEFAULT_MASK_PROBS,
    mask_samples_per_prob: int = 2,
    loss_normalize: str = "mean_masked",
    postprocess: str = "signed",
    layers: Sequence[int] | None = None,
    seed: int = 0,
    masks: dict[str, Tensor] | None = None,
    objective: MaskedDiffusionObjective | None = None,
    internal_batch_size: int = 256,
    max_heads: int = 16,
    return_per_example: bool = True,
    checkpoint: str | os.PathLike | None = None,
    examples_per_group: int = 1,
    progress: bool = False,
) -> Attribution:
    """Exact Shapley values by enumerating all 2^n coalitions of the attributed heads."""
    baseline = _check_baseline(baseline)
    family = family_of(model)
    lyr = normalize_layers(layers, family.n_layers)
    obj = _make_objective(objective, mask_probs, mask_samples_per_prob, loss_normalize, seed, masks)
    shape = (len(lyr), family.n_heads)
    n = shape[0] * shape[1]
    if n > max_heads:
        raise ValueError(f"exact Shapley over {n} heads needs 2^{n} evaluations per example; "
                         f"limit is max_heads={max_heads} (restrict layers or raise max_heads)")
    codes = torch.arange(2 ** n)
    present = ((codes[:, None] >> torch.arange(n)) & 1).bool()  # [2^n, n]
    size = present.sum(1)
    fact = [math.factorial(i) for i in range(n + 1)]
    weight_by_size = torch.tensor([fact[s] * fact[n - s - 1] / fact[n] for s in range(n)],
                                  dtype=torch.float64)
    gates = _coalition_gates(present, baseline, shape)

    def attribute_group(group: list[Item]) -> list[Tensor]:
        out = evaluate_points(model, obj, [PointRequest(it, gates) for it in group], layers=lyr,
                              with_grad=False, internal_batch_size=internal_batch_size)
        results = []
        for vals, _ in out:
            phi = torch.zeros(n, dtype=torch.float64)
            for i in range(n):
                without = ~present[:, i]
                s = codes[without]
                phi[i] = (weight_by_size[size[without]] * (vals[s | (1 << i)] - vals[s])).sum()
            results.append(phi.view(shape))
        return results

    return _run(model, batch, estimator="exact_shapley", attribute_group=attribute_group,
                settings={"coalitions": 2 ** n}, objective=obj, layers=lyr, baseline=baseline,
                **_common(locals()))


def leave_one_out(
    model: nn.Module,
    batch: Any,
    *,
    baseline: float = 0.0,
    mask_probs: Sequence[float] = DEFAULT_MASK_PROBS,
    mask_samples_per_prob: int = 2,
    loss_normalize: str = "mean_masked",
    postprocess: str = "signed",
    layers: Sequence[int] | None = None,
    seed: int = 0,
    masks: dict[str, Tensor] | None = None,
    objective: MaskedDiffusionObjective | None = None,
    internal_batch_size: int = 64,
    return_per_example: bool = True,
    checkpoint: str | os.PathLike | None = None,
    examples_per_group: int = 4,
    progress: bool = False,
) -> Attribution:
    """Ablation of one head at a time: A_h = J(1) − J(1 with head h at the baseline)."""
    baseline = _check_baseline(baseline)
    family = family_of(model)
    lyr = normalize_layers(layers, family.n_layers)
    obj = _make_objective(objective, mask_probs, mask_samples_per_prob, loss_normalize, seed, masks)
    shape = (len(lyr), family.n_heads)
    n = shape[0] * shape[1]
    present = torch.ones(n + 1, n, dtype=torch.bool)
    present[torch.arange(1, n + 1), torch.arange(n)] = False
    gates = _coalition_gates(present, baseline, shape)

    def attribute_group(group: list[Item]) -> list[Tensor]:
        out = evaluate_points(model, obj, [PointRequest(it, gates) for it in group], layers=lyr,
                              with_grad=False, internal_batch_size=internal_batch_size)
        return [(vals[0] - vals[1:]).view(shape) for vals, _ in out]

    return _run(model, batch, estimator="leave_one_out", attribute_group=attribute_group,
                settings={"seed": int(seed)}, objective=obj, layers=lyr, baseline=baseline,
                **_common(locals()))


def gradient_at_ones(
    model: nn.Module,
    batch: Any,
    *,
    baseline: float = 0.0,
    mask_probs: Sequence[float] = DEFAULT_MASK_PROBS,
    mask_samples_per_prob: int = 2,
    loss_normalize: str = "mean_masked",
    postprocess: str = "signed",
    layers: Sequence[int] | None = None,
    seed: int = 0,
    masks: dict[str, Tensor] | None = None,
    objective: MaskedDiffusionObjective | None = None,
    internal_batch_size: int = 64,
    return_per_example: bool = True,
    checkpoint: str | os.PathLike | None = None,
    examples_per_group: int = 4,
    progress: bool = False,
) -> Attribution:
    """First-order head importance: ∂J/∂α_h at α = 1, times (1 − α0) (Michel et al., 2019)."""
    baseline = _check_baseline(baseline)
    family = family_of(model)
    lyr = normalize_layers(layers, family.n_layers)
    obj = _make_objective(objective, mask_probs, mask_samples_per_prob, loss_normalize, seed, masks)
    shape = (len(lyr), family.n_heads)
    ones = torch.ones(1, *shape)

    def attribute_group(group: list[Item]) -> list[Tensor]:
        out = evaluate_points(model, obj, [PointRequest(it, ones) for it in group], layers=lyr,
                              with_grad=True, internal_batch_size=internal_batch_size)
        return [grads[0] * (1.0 - baseline) for _, grads in out]

    return _run(model, batch, estimator="gradient_at_ones", attribute_group=attribute_group,
                settings={"seed": int(seed)}, objective=obj, layers=lyr, baseline=baseline,
                **_common(locals()))


ESTIMATORS: dict[str, Callable[..., Attribution]] = {
    "ig": integrated_gradients,
    "shapley_sampling": shapley_sampling,
    "exact_shapley": exact_shapley,
    "leave_one_out": leave_one_out,
    "gradient_at_ones": gradient_at_ones,
}

__all__ = ["DP", "STP", "Attribution", "ESTIMATORS", "exact_shapley", "gradient_at_ones",
           "integrated_gradients", "leave_one_out", "shapley_sampling"]
