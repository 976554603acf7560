"""Speed and accuracy of HeadIG, measured side by side in one run (CPU or GPU).

Speed (default):

  (a) gate overhead: one gradient evaluation of headig (gated forward + backward w.r.t.
      the gates, through ``evaluate_points``) vs a plain forward + backward of the same
      rows without gates (backward to the input embeddings, so both graphs span every
      layer and neither computes parameter gradients);
  (b) batched (``internal_batch_size`` 8/32/64 rows) vs one row at a time (1);
  (c) time to a score: headig vs a faithful re-creation of the original sequential
      algorithm (right Riemann, P path samples, one example at a time, one batch-1 forward
      per masking variant and one backward per IG point: P·K·V forwards, P·K backwards) at
      equal settings and with the same thresholds and masks, so the scores must agree.

Time to a converged score (``--convergence``): (d) every method of :func:`methods` at
K = 2, 4, 8, … until the aggregate completeness residual is ≤ ``--conv-tol`` (2%) and the
Spearman correlation with a long reference run is ≥ ``--conv-spearman`` (0.95); wall time
and speed-up vs the original sequential algorithm, on the fixtures and a random 8×8-head
model with 512-token sequences. The load average is printed before and after.

Accuracy (``--accuracy``) on the tiny fixtures: completeness residual vs steps for DP/STP
x rules, and agreement of every estimator with exact Shapley values.

Models: the vendored tiny fixtures (2 layers x 4 heads) and a random LLaDA-format model
built in memory (default 4 layers x 8 heads, d_model 256, sequences of 256 tokens).
Timings (a)–(c) go through ``_timing.interleaved``: every repeat runs every variant once in a
rotating order, ratios are paired within a repeat and shown as median [min–max].

    python benchmarks/attribution.py                 # speed, a few minutes on 2 CPU cores
    python benchmarks/attribution.py --accuracy      # + the accuracy study
    python benchmarks/attribution.py --convergence-only   # (d) only
    python benchmarks/attribution.py --device cuda --big-layers 8 --big-seq 512
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import headig
from headig.estimators import (
    exact_shapley,
    gradient_at_ones,
    integrated_gradients,
    leave_one_out,
    shapley_sampling,
)
from headig.gating import HeadGate
from headig.models.family import Family, spec_for_model_type
from headig.models.modeling import DiffusionLM
from headig.objective import (
    MaskedDiffusionObjective,
    PointRequest,
    as_items,
    evaluate_points,
    row_losses,
    seed_from,
)
from headig.paths import DP, STP

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import LoadRecord, Spread, conditions, interleaved, ratios  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"


# ----------------------------------------------------------------------------- helpers
def random_llada(n_layers: int, n_heads: int, d_model: int, vocab: int = 4096,
                 seed: int = 0, device: str = "cpu", mlp_ratio: float = 3.0) -> DiffusionLM:
    """A randomly initialised LLaDA-format model (no files), frozen like a loaded one."""
    cfg = {"model_type": "llada", "d_model": d_model, "n_heads": n_heads,
           "n_kv_heads": n_heads, "n_layers": n_layers,
           "mlp_hidden_size": int(mlp_ratio * d_model),
           "vocab_size": vocab, "embedding_size": vocab, "mask_token_id": vocab - 1,
           "pad_token_id": vocab - 2, "rope_theta": 500000.0, "max_sequence_length": 8192}
    spec = spec_for_model_type("llada")
    torch.manual_seed(seed)
    model = DiffusionLM(Family(spec=spec, arch=spec.parse_config(cfg), native=True))
    for block in model.layers:  # keep activations O(1) through depth
        for lin in block.modules():
            if isinstance(lin, torch.nn.Linear):
                torch.nn.init.normal_(lin.weight, std=d_model ** -0.5)
    model.to(device).requires_grad_(False).eval()
    model.name_or_path = f"random-llada-{n_layers}x{n_heads}-d{d_model}"
    return model


def random_batch(n: int, length: int, prompt: int, vocab: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, vocab - 8, (length,), generator=g),
             "prompt_length": prompt, "id": f"ex{i}"} for i in range(n)]


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def spread(samples: dict[str, list[float]], name: str, base: str, *,
           invert: bool = False) -> str:
    """Paired ratio ``name / base`` (or ``base / name`` with ``invert``), median [min–max]."""
    r = ratios(samples, base, name) if invert else ratios(samples, name, base)
    return Spread.of(r).fmt()


def syncer(device: str) -> Callable[[], None]:
    if device.startswith("cuda"):
        return torch.cuda.synchronize
    return lambda: None


def table(title: str, header: list[str], rows: list[list[Any]]) -> str:
    cells = [header] + [[c if isinstance(c, str) else f"{c:.4g}" for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [f"\n## {title}", "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells[1:]]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- (a) overhead
def gate_overhead(model, item_batch, objective, rows: int, repeats: int, device: str):
    """Seconds per chunk of ``rows`` rows: headig engine, bare gated core, plain fwd+bwd."""
    family = model.family
    layers = list(range(family.n_layers))
    item = as_items(item_batch[:1])[0]
    v = objective.variants(item)
    n_var = v.masks.shape[0]
    q = max(1, rows // n_var)
    g = torch.Generator().manual_seed(0)
    gates = torch.rand(q, family.n_layers, family.n_heads, generator=g)
    req = [PointRequest(item, gates)]

    def engine():
        return evaluate_points(model, objective, req, layers=layers, with_grad=True,
                               internal_batch_size=q * n_var)

    # The same rows, prebuilt on the device.
    masks = v.masks.repeat(q, 1)
    ids = item.input_ids.to(device)
    inputs = ids.masked_fill(masks.to(device), family.mask_token_id)
    targets = ids.expand_as(inputs)
    masked = masks.to(device)
    row_gates = gates.repeat_interleave(n_var, 0).to(device)

    def gated_core():
        gg = row_gates.clone().requires_grad_(True)
        with HeadGate(model, gg, layers=layers):
            loss = row_losses(model, family, inputs, targets, masked, None, "mean_masked")
            (grad,) = torch.autograd.grad(loss.sum(), gg)
        return grad

    captured: dict[str, torch.Tensor] = {}

    def leaf_hook(module, args, out):
        out = out.detach().requires_grad_(True)
        captured["emb"] = out
        return out

    def plain():
        handle = model.embed.register_forward_hook(leaf_hook)
        try:
            loss = row_losses(model, family, inputs, targets, masked, None, "mean_masked")
            (grad,) = torch.autograd.grad(loss.sum(), captured["emb"])
        finally:
            handle.remove()
        return grad

    def forward_only():
        with torch.no_grad():
            return row_losses(model, family, inputs, targets, masked, None, "mean_masked")

    samples = interleaved({"engine": engine, "core": gated_core, "plain": plain,
                           "forward": forward_only}, repeats, device=device)
    return {"rows": q * n_var, "samples": samples}


# ----------------------------------------------------------------------------- (c) original
def original_sequential(model, batch, objective: MaskedDiffusionObjective, path: Any,
                        steps: int, baseline: float, seed: int,
                        path_samples: int | None = None,
                        per_example: bool = False) -> torch.Tensor:
    """The original algorithm as it ran: per example, per path sample, per IG point
    τ_k = k/K, one batch-1 forward per masking variant computing the full logits (graph
    kept over the variants), one backward, right-Riemann accumulation
    g(τ_k)·(α(τ_k) − α(τ_{k−1})), then the mean over path samples.

    For a comparable result it uses headig's thresholds and masks (the V draws, duplicates
    included) and applies Dream's logit shift, which the original forgot. With a
    deterministic path (DP) it repeats the identical path ``path_samples`` times, as the
    original did. Returns scores [L, H] with headig's sign (positive = helps), or [N, L, H]
    per example with ``per_example``.
    """
    import torch.nn.functional as F

    family = model.family
    device = next(model.parameters()).device
    layers = list(range(family.n_layers))
    shape = (family.n_layers, family.n_heads)
    shift = family.logit_shift
    examples = []
    for item in as_items(batch):
        var = objective.variants(item)
        total = int(objective.mask_samples_per_prob) * len(objective.mask_probs)
        counts = (var.weights * total).round().long()
        masks = var.masks.repeat_interleave(counts, 0).to(device)  # V draws, duplicates kept
        ids = item.input_ids.to(device)
        gen = torch.Generator().manual_seed(seed_from(seed, item.id, "path"))
        ramps = path.sample_ramps(shape, gen)
        if isinstance(path, DP) and path_samples:
            ramps = ramps * int(path_samples)
        ig = torch.zeros(shape, dtype=torch.float64)
        for u, w in ramps:
            def alpha(tau: float, u=u, w=w) -> torch.Tensor:
                return baseline + (1.0 - baseline) * ((tau - u) / w).clamp(0.0, 1.0)

            prev = alpha(0.0)
            for k in range(1, steps + 1):
                a = alpha(k / steps)
                g = a.float().to(device).requires_grad_(True)
                with HeadGate(model, g, layers=layers):
                    loss = 0.0
                    for m in masks:
                        logits = model(ids.masked_fill(m, family.mask_token_id)[None]).logits[0]
                        pos = m.nonzero().flatten()
                        ce = F.cross_entropy(logits[pos - shift].float(), ids[pos],
                                             reduction="sum" if objective.loss_normalize == "sum"
                                             else "mean")
                        loss = loss + ce
                    loss = loss / masks.shape[0]
                    (grad,) = torch.autograd.grad(loss, g)
                ig += grad.double().cpu() * (a - prev)
                prev = a
        examples.append(-ig / len(ramps))  # IG of the loss -> IG of J = -loss
    stacked = torch.stack(examples)
    return stacked.float() if per_example else stacked.mean(0).float()


# ----------------------------------------------------------------------------- speed

def batching(args: argparse.Namespace, name: str, model, length: int, prompt: int,
             n_ex: int) -> list[Any]:
    """Row of table (b) for one model: the same IG run at several internal batch sizes,
    interleaved."""
    batch = random_batch(n_ex, length, prompt, model.family.arch.vocab_size, seed=1)
    n_var = len(args.mask_probs) * args.mask_samples
    settings = dict(path=STP(samples=args.path_samples), steps=args.steps, rule="right",
                    mask_probs=args.mask_probs, mask_samples_per_prob=args.mask_samples)
    sizes = (1, 8, 32, 64)
    last: dict[str, Any] = {}
    samples = interleaved(
        {f"ibs {ibs}": (lambda ibs=ibs: integrated_gradients(
            model, batch, internal_batch_size=ibs, return_per_example=False, **settings))
         for ibs in sizes}, args.repeats_slow, device=args.device, results=last)
    print(f"(b) {name}: " + ", ".join(f"{k} {median(v):.3f}s" for k, v in samples.items()),
          file=sys.stderr, flush=True)
    ref = last["ibs 64"].scores
    diff = max((a.scores - ref).abs().max().item() for a in last.values())
    n_rows = n_ex * args.path_samples * args.steps * n_var
    return [name, f"{n_ex}x{args.path_samples}x{args.steps}x{n_var}={n_rows}",
            *[median(samples[f"ibs {ibs}"]) for ibs in sizes],
            spread(samples, "ibs 1", "ibs 32"), spread(samples, "ibs 1", "ibs 64"),
            diff / ref.abs().max().item()]


def versus_original(args: argparse.Namespace, label: str, model, batch: list[dict], path: Any,
                    mask_probs: tuple[float, ...], mask_samples: int) -> list[Any]:
    """Row of table (c): the original re-creation vs headig (right rule, same settings),
    and headig's default trapezoid rule, interleaved."""
    obj = MaskedDiffusionObjective(mask_probs=mask_probs, mask_samples_per_prob=mask_samples,
                                   seed=0)
    n_var_unique = sum(obj.variants(it).masks.shape[0] for it in as_items(batch))
    kw = dict(steps=args.steps, internal_batch_size=64, return_per_example=False,
              mask_probs=mask_probs, mask_samples_per_prob=mask_samples)
    last: dict[str, Any] = {}
    samples = interleaved({
        "original": lambda: original_sequential(model, batch, obj, path, args.steps, 0.0, 0,
                                                path_samples=args.path_samples),
        "headig": lambda: integrated_gradients(model, batch, path=path, rule="right", **kw),
        "trapezoid": lambda: integrated_gradients(model, batch, path=path, **kw),
    }, args.repeats_slow, device=args.device, results=last)
    t_orig, t_new = median(samples["original"]), median(samples["headig"])
    print(f"(c) {label}: original {t_orig:.3f}s, headig {t_new:.3f}s", file=sys.stderr,
          flush=True)
    new = last["headig"]
    diff = (last["original"] - new.scores).abs().max().item() / new.scores.abs().max().item()
    p = args.path_samples
    v = len(mask_probs) * mask_samples
    n = len(batch)
    pts = args.steps * (1 if isinstance(path, DP) else p)
    return [label, f"{n * p * args.steps * v} / {n * p * args.steps}",
            f"{pts * n_var_unique} / {-(-pts * n_var_unique // 64)}", t_orig, t_new,
            spread(samples, "headig", "original", invert=True), diff,
            median(samples["trapezoid"])]


def speed(args: argparse.Namespace) -> str:
    device = args.device
    out = []
    models = []
    for name in ("tiny-llada", "tiny-dream"):
        m, _ = headig.load_model(FIXTURES / name, device=device, tokenizer=False)
        models.append((name, m, 64, 32, args.tiny_examples))
    big = random_llada(args.big_layers, args.big_heads, args.big_d, vocab=args.big_vocab,
                       device=device)
    models.append((big.name_or_path, big, args.big_seq, args.big_seq // 4 * 3,
                   args.big_examples))

    # (a) gate overhead
    rows_a = []
    for name, model, length, prompt, _ in models:
        batch = random_batch(1, length, prompt, model.family.arch.vocab_size)
        obj = MaskedDiffusionObjective(mask_probs=(0.15, 0.3, 0.5, 0.7), mask_samples_per_prob=2,
                                       seed=0)
        for rows in ((8, 32) if length <= 64 else (4, 16)):
            r = gate_overhead(model, batch, obj, rows, args.repeats, device)
            t = r["samples"]
            rows_a.append([name, f"{length}", f"{r['rows']}", median(t["plain"]) * 1e3,
                           median(t["core"]) * 1e3, median(t["engine"]) * 1e3,
                           spread(t, "core", "plain"), spread(t, "engine", "plain"),
                           spread(t, "forward", "plain")])
            print(f"(a) {name} rows {rows}: "
                  + ", ".join(f"{k} {median(v) * 1e3:.1f}ms" for k, v in t.items()),
                  file=sys.stderr, flush=True)
    out.append(table(
        f"(a) one gradient evaluation (median ms per chunk of rows; ratios paired within a "
        f"repeat, median [min–max] of {args.repeats} interleaved repeats)",
        ["model", "seq", "rows", "plain fwd+bwd", "gated fwd+bwd", "headig engine",
         "gated/plain", "engine/plain", "fwd-only/plain"], rows_a))

    # (b) batched vs one row at a time
    rows_b = [batching(args, name, model, length, prompt, n_ex)
              for name, model, length, prompt, n_ex in models]
    out.append(table(
        f"(b) integrated_gradients wall time (median s of {args.repeats_slow} interleaved "
        "repeats) by internal_batch_size (rows per forward); speed-ups median [min–max]",
        ["model", "rows (ex x P x K x V)", "ibs 1", "ibs 8", "ibs 32", "ibs 64", "1/32",
         "1/64", "max rel. score diff"], rows_b))

    # (c) vs the original sequential algorithm
    mp, ms = args.mask_probs, args.mask_samples
    stp = STP(samples=args.path_samples)
    rows_c = []
    for name, model, length, prompt, n_ex in models:
        batch = random_batch(n_ex, length, prompt, model.family.arch.vocab_size, seed=1)
        rows_c.append(versus_original(args, f"{name} STP", model, batch, stp, mp, ms))
    name, model, length, prompt, n_ex = models[-1]
    vocab = model.family.arch.vocab_size
    batch = random_batch(n_ex, length, prompt, vocab, seed=1)
    rows_c.append(versus_original(args, f"{name} DP (original: P identical copies)", model,
                                  batch, DP(), mp, ms))
    short = random_batch(n_ex, length - (length - prompt) + 2, prompt, vocab, seed=1)
    rows_c.append(versus_original(args, f"{name} 2-token completion, V=10", model, short, stp,
                                  (0.15, 0.3, 0.5, 0.7, 0.9), 2))
    n_var = len(mp) * ms
    out.append(table(
        f"(c) time to score (median s of {args.repeats_slow} interleaved repeats): original "
        f"sequential vs headig at equal settings (right Riemann, P={args.path_samples}, "
        f"K={args.steps}, V={n_var} unless stated); speed-up median [min–max]",
        ["case", "original fwds / bwds", "headig rows / chunks", "original", "headig",
         "speed-up", "max rel. score diff", f"headig trapezoid K={args.steps}"], rows_c))
    return "\n".join(out)


# ----------------------------------------------------------------------------- convergence
@dataclass(frozen=True)
class Method:
    """One way to compute a score, run at increasing ``steps`` until it converges.

    ``run(model, batch, steps, objective, delta_j)`` returns the mean scores [L, H] and the
    completeness residual per example [N] (``delta_j`` = J(1) − J(α0) per example, for
    methods that do not report it). Adding a configuration is one line in :func:`methods`.
    """

    label: str
    run: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    max_steps: int | None = None  # ladder cap for this method (None: --conv-max-steps)
    key: str = ""  # short name for --conv-methods


def _headig_method(key: str, label: str, make_path: Callable[[], Any], rule: str | None,
                   max_steps: int | None = None, **extra: Any) -> Method:
    def run(model, batch, steps, obj, delta_j):
        a = integrated_gradients(model, batch, path=make_path(), steps=steps, rule=rule,
                                 objective=obj, internal_batch_size=64,
                                 return_per_example=False, **extra)
        return a.scores, a.residual
    return Method(label, run, max_steps, key)


def _auto_method(label: str, make_path: Callable[[], Any], args: argparse.Namespace) -> Method:
    """The convergence-controlled mode: one run that refines itself to the target residual.

    The ladder calls it once (``max_steps=2``); its K column shows 2 for that single run.
    """
    def run(model, batch, steps, obj, delta_j):
        a = integrated_gradients(model, batch, path=make_path(), steps="auto", tol=args.conv_tol,
                                 objective=obj, internal_batch_size=64,
                                 return_per_example=False)
        return a.scores, a.residual
    return Method(label, run, 2, "auto")


def _original_method(args: argparse.Namespace, samples: int) -> Method:
    def run(model, batch, steps, obj, delta_j):
        per = original_sequential(model, batch, obj, STP(samples=samples), steps, 0.0, 0,
                                  per_example=True)
        return per.mean(0), per.double().sum((1, 2)) - delta_j
    return Method(f"original sequential: STP P={samples}, right", run, args.orig_max_steps,
                  "original")


def methods(args: argparse.Namespace) -> list[Method]:
    """The configurations compared; the first is the baseline of the speed-ups."""
    p = args.conv_path_samples
    every = [
        _original_method(args, p),
        _headig_method("right", f"headig: STP P={p}, right (same math, batched)",
                       lambda: STP(samples=p), "right"),
        _headig_method("trapezoid", f"headig: STP P={p}, trapezoid", lambda: STP(samples=p),
                       None),
        _headig_method("gauss_legendre", f"headig: STP P={p}, gauss_legendre",
                       lambda: STP(samples=p), "gauss_legendre"),
        _headig_method("ramp_gauss", f"headig: STP P={p}, ramp_gauss (K nodes per ramp)",
                       lambda: STP(samples=p), "ramp_gauss", max_steps=8),  # K x heads points
        _auto_method(f"headig default: STP P={p}, steps='auto'", lambda: STP(samples=p), args),
        _headig_method("dp_trapezoid", "headig: DP, trapezoid", DP, "trapezoid"),
        _headig_method("dp_gauss_legendre", "headig: DP, gauss_legendre", DP, "gauss_legendre"),
    ]
    if not args.conv_methods:
        return every
    known = [m.key for m in every]
    unknown = sorted(set(args.conv_methods) - set(known))
    if unknown:
        raise SystemExit(f"--conv-methods: unknown {unknown}; expected some of {known}")
    # the original is the baseline of every speed-up, so it always runs first
    return [m for m in every if m.key == "original" or m.key in args.conv_methods]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two score maps (ties broken by position)."""
    def ranks(x: torch.Tensor) -> torch.Tensor:
        r = torch.empty(x.numel(), dtype=torch.float64)
        r[x.flatten().argsort()] = torch.arange(x.numel(), dtype=torch.float64)
        return r - r.mean()
    ra, rb = ranks(a), ranks(b)
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def _ladder(args: argparse.Namespace, method: Method, model, batch, obj, delta_j,
            reference: torch.Tensor) -> dict[str, Any]:
    """Run ``method`` at K = 2, 4, 8, … until residual ≤ tol and Spearman ≥ target."""
    cap = method.max_steps or args.conv_max_steps
    sync = syncer(args.device)
    found: dict[str, Any] = {"res": None, "both": None, "last": None, "prev": None}
    steps = 2
    while steps <= cap:
        sync()
        t0 = time.perf_counter()
        scores, residual = method.run(model, batch, steps, obj, delta_j)
        sync()
        secs = time.perf_counter() - t0
        res = float(residual.abs().sum() / delta_j.abs().sum())
        rho = spearman(scores, reference)
        point = {"steps": steps, "s": secs, "res": res, "rho": rho}
        print(f"(conv) {method.label} K={steps}: {secs:.2f}s residual {res:.4f} "
              f"spearman {rho:.3f}", file=sys.stderr, flush=True)
        found["prev"], found["last"] = found["last"], point
        if found["res"] is None and res <= args.conv_tol:
            found["res"] = point
        if found["both"] is None and res <= args.conv_tol and rho >= args.conv_spearman:
            found["both"] = point
            break
        steps *= 2
    return found


def _extrapolated(found: dict[str, Any], tol: float) -> dict[str, Any] | None:
    """Where a method would reach ``tol``, from its last two K: residual ≈ a/K + floor.

    Cost is taken as ∝ K. None when the fitted floor is at or above ``tol`` (more steps
    alone would not get there) or when there are not two points to fit.
    """
    last, prev = found["last"], found["prev"]
    if last is None or prev is None:
        return None
    k1, k2 = prev["steps"], last["steps"]
    a = (prev["res"] - last["res"]) / (1 / k1 - 1 / k2)
    floor = last["res"] - a / k2
    if a <= 0 or floor >= tol:
        return None
    steps = math.ceil(a / (tol - floor))
    return {"steps": steps, "s": last["s"] * steps / k2, "res": tol, "rho": float("nan"),
            "extrapolated": True}


def _fmt_point(point: dict[str, Any] | None, base: dict[str, Any] | None) -> list[str]:
    """K, seconds and speed-up; ``> x`` when the base never got there (its time at its
    largest K is then a lower bound on what it would need)."""
    if point is None:
        return ["not reached", "", ""]
    mark = " (extrap.)" if point.get("extrapolated") else ""
    speed = ""
    if base is not None:
        bound = "> " if base.get("unreached") else ""
        speed = f"{bound}{base['s'] / point['s']:.1f}x"
    return [f"{point['steps']}{mark}", f"{point['s']:.2f}{mark}", speed]


def convergence_for_model(args: argparse.Namespace, label: str, model, batch) -> list[list[str]]:
    obj = MaskedDiffusionObjective(mask_probs=args.mask_probs,
                                   mask_samples_per_prob=args.mask_samples, seed=0)
    ref = integrated_gradients(model, batch, path=STP(samples=args.ref_path_samples),
                               steps=args.ref_steps, objective=obj, internal_batch_size=64,
                               return_per_example=False)
    delta_j = (ref.j_full - ref.j_baseline).double()
    ref_res = float(ref.residual.abs().sum() / delta_j.abs().sum())
    print(f"(conv) {label}: reference STP P={args.ref_path_samples} trapezoid "
          f"K={args.ref_steps}, residual {ref_res:.4f}", file=sys.stderr, flush=True)
    rows = []
    base_res = base_both = None
    for i, method in enumerate(methods(args)):
        found = _ladder(args, method, model, batch, obj, delta_j, ref.scores)
        res_pt = found["res"]
        if i == 0 and res_pt is None:
            res_pt = _extrapolated(found, args.conv_tol)
        if i == 0:
            unreached = dict(found["last"] or {}, unreached=True) if found["last"] else None
            base_res = res_pt or unreached
            base_both = found["both"] or res_pt or unreached
        last = found["last"] or {"steps": "", "res": float("nan"), "rho": float("nan")}
        rows.append([label, method.label, *_fmt_point(res_pt, base_res),
                     *_fmt_point(found["both"], base_both),
                     f"K={last['steps']}: {last['res']:.3g} / {last['rho']:.3f}"])
    return rows


def convergence(args: argparse.Namespace) -> str:
    cases = []
    for name in args.conv_models:
        if name == "random":
            big = random_llada(args.conv_layers, args.conv_heads, args.big_d,
                               vocab=args.big_vocab, device=args.device)
            cases.append((big.name_or_path + f" T={args.conv_seq}", big,
                          random_batch(args.conv_big_examples, args.conv_seq,
                                       args.conv_seq * 3 // 4, big.family.arch.vocab_size,
                                       seed=2)))
            continue
        m, _ = headig.load_model(FIXTURES / name, device=args.device, tokenizer=False)
        cases.append((name, m, random_batch(args.conv_tiny_examples, 64, 32,
                                            m.family.arch.vocab_size, seed=2)))
    rows = []
    for label, model, batch in cases:
        rows += convergence_for_model(args, label, model, batch)
    tol = f"{args.conv_tol:.0%}"
    return table(
        f"(d) time to a converged score (s): first K (of 2, 4, 8, …) whose aggregate "
        f"completeness residual is ≤ {tol}, and ≤ {tol} with Spearman ≥ {args.conv_spearman} "
        f"vs a reference run (STP P={args.ref_path_samples}, trapezoid, K={args.ref_steps}); "
        f"V={len(args.mask_probs) * args.mask_samples}; speed-ups vs the original ('> x': the "
        "original had not converged at its largest K); one timed run per K",
        ["model", "method", f"K (res ≤ {tol})", "s", "speed-up", "K (+ Spearman)", "s",
         "speed-up", "last K: residual / Spearman"], rows)


# ----------------------------------------------------------------------------- accuracy
def aggregate_residual(a) -> float:
    """Σ_j |residual_j| / Σ_j |J_j(1) − J_j(α0)|: robust to examples with ΔJ ≈ 0."""
    return float(a.residual.abs().sum() / (a.j_full - a.j_baseline).abs().sum())


def accuracy_for_model(args: argparse.Namespace, name: str) -> list[str]:
    """Completeness-vs-steps and agreement-with-exact-Shapley tables for one fixture."""
    out = []
    steps_grid = (1, 2, 4, 8, 16, 32)
    kw = dict(mask_probs=(0.15, 0.3, 0.5, 0.7, 0.9), mask_samples_per_prob=2, seed=0)
    model, _ = headig.load_model(FIXTURES / name, device=args.device, tokenizer=False)
    batch = random_batch(args.acc_examples, 24, 12, model.family.arch.vocab_size, seed=2)
    rows = []
    configs = [("DP", DP(), r) for r in ("right", "trapezoid", "gauss_legendre")]
    configs += [("STP P=4", STP(samples=4), r) for r in ("right", "trapezoid",
                                                        "gauss_legendre")]
    for label, path, rule in configs:
        row = [label, rule]
        for k in steps_grid:
            a = integrated_gradients(model, batch, path=path, steps=k, rule=rule,
                                     return_per_example=False, **kw)
            row.append(aggregate_residual(a))
        rows.append(row)
    out.append(table(f"completeness: Σ_j |Σ_h IG_jh − ΔJ_j| / Σ_j |ΔJ_j| vs steps "
                     f"K ({name}, {args.acc_examples} examples, V=10)",
                     ["path", "rule"] + [f"K={k}" for k in steps_grid], rows))

    exact = exact_shapley(model, batch, **kw)
    ref = exact.per_example.flatten(1)
    ref_imp = exact.to_importance()
    n = model.family.n_layers * model.family.n_heads
    narrow = dict(ramp="narrow", width=0.05, sampling="antithetic")
    configs = [
        ("DP gauss_legendre K=8", "8 grads", integrated_gradients,
         dict(path=DP(), steps=8)),
        ("STP original P=4 trapezoid K=8 (default)", "36 grads", integrated_gradients,
         dict(path=STP(samples=4), steps=8)),
        ("STP original P=4 right K=8 (original)", "32 grads", integrated_gradients,
         dict(path=STP(samples=4), steps=8, rule="right")),
        ("STP original P=16 trapezoid K=8", "144 grads", integrated_gradients,
         dict(path=STP(samples=16), steps=8)),
        ("STP original P=16 stratified trapezoid K=8", "144 grads", integrated_gradients,
         dict(path=STP(samples=16, sampling="stratified"), steps=8)),
        ("STP narrow w=0.05 P=4 antithetic ramp_gauss K=2", f"{4 * 2 * n} grads",
         integrated_gradients, dict(path=STP(samples=4, **narrow), steps=2, rule="ramp_gauss")),
        ("STP narrow w=0.05 P=16 antithetic ramp_gauss K=2", f"{16 * 2 * n} grads",
         integrated_gradients, dict(path=STP(samples=16, **narrow), steps=2,
                                    rule="ramp_gauss")),
        ("shapley_sampling 8 perms", f"{8 * (n + 1)} fwds", shapley_sampling,
         dict(permutations=8)),
        ("shapley_sampling 32 perms", f"{32 * (n + 1)} fwds", shapley_sampling,
         dict(permutations=32)),
        ("leave_one_out", f"{n + 1} fwds", leave_one_out, {}),
        ("gradient_at_ones", "1 grad", gradient_at_ones, {}),
    ]
    rows = []
    for label, cost, fn, extra in configs:
        a = fn(model, batch, **extra, **kw)
        pe = a.per_example.flatten(1)
        rel = ((pe - ref).norm(dim=1) / ref.norm(dim=1)).mean().item()
        c = headig.compare(a.to_importance(), ref_imp, k=3)
        rows.append([label, cost, rel, c["spearman"], c["topk_overlap"],
                     aggregate_residual(a)])
        print(f"accuracy {name} {label} done", file=sys.stderr, flush=True)
    out.append(table(
        f"agreement with exact Shapley ({name}, {n} heads, {2 ** n} coalitions, "
        f"{args.acc_examples} examples; cost per example per masking variant)",
        ["estimator", "cost", "rel. L2 error per example", "spearman of the means",
         "top-3 overlap", "rel. residual"], rows))
    return out


def accuracy(args: argparse.Namespace) -> str:
    out = []
    for name in ("tiny-llada", "tiny-dream"):
        out += accuracy_for_model(args, name)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1 gives stable timings on a shared machine)")
    p.add_argument("--repeats", type=int, default=5,
                   help="interleaved repeats of the timings (a)")
    p.add_argument("--repeats-slow", type=int, default=5,
                   help="interleaved repeats of the timings (b, c)")
    p.add_argument("--big-layers", type=int, default=4)
    p.add_argument("--big-heads", type=int, default=8)
    p.add_argument("--big-d", type=int, default=256)
    p.add_argument("--big-seq", type=int, default=256)
    p.add_argument("--big-vocab", type=int, default=4096,
                   help="vocabulary of the random models (LLaDA-8B: 126464)")
    p.add_argument("--big-examples", type=int, default=1)
    p.add_argument("--tiny-examples", type=int, default=4)
    p.add_argument("--path-samples", type=int, default=2)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--mask-probs", type=lambda s: tuple(float(x) for x in s.split(",")),
                   default=(0.3, 0.7))
    p.add_argument("--mask-samples", type=int, default=2)
    p.add_argument("--accuracy", action="store_true", help="also run the accuracy study")
    p.add_argument("--accuracy-only", action="store_true")
    p.add_argument("--acc-examples", type=int, default=8)
    p.add_argument("--convergence", action="store_true",
                   help="also run (d): time to a converged score vs the original algorithm")
    p.add_argument("--convergence-only", action="store_true")
    p.add_argument("--conv-tol", type=float, default=0.02, help="aggregate residual target")
    p.add_argument("--conv-spearman", type=float, default=0.95)
    p.add_argument("--conv-path-samples", type=int, default=4)
    p.add_argument("--conv-max-steps", type=int, default=64)
    p.add_argument("--orig-max-steps", type=int, default=32,
                   help="ladder cap of the original (beyond it: extrapolated as 1/K)")
    p.add_argument("--ref-path-samples", type=int, default=32)
    p.add_argument("--ref-steps", type=int, default=32)
    p.add_argument("--conv-tiny-examples", type=int, default=4)
    p.add_argument("--conv-big-examples", type=int, default=1)
    p.add_argument("--conv-layers", type=int, default=8)
    p.add_argument("--conv-heads", type=int, default=8)
    p.add_argument("--conv-seq", type=int, default=512)
    p.add_argument("--conv-models", type=lambda s: s.split(","),
                   default=["tiny-llada", "tiny-dream", "random"],
                   help="fixtures by name and/or 'random' (the --conv-layers x --conv-heads model)")
    p.add_argument("--conv-methods", type=lambda s: s.split(","), default=None,
                   help="comma list of method keys to run (default: all); the original "
                        "always runs: right, trapezoid, gauss_legendre, ramp_gauss, auto, "
                        "dp_trapezoid, dp_gauss_legendre")
    args = p.parse_args(argv)
    methods(args)  # a bad --conv-methods fails here, before any model is built
    torch.set_num_threads(args.threads)
    load = LoadRecord.start()
    print(f"# headig {headig.__version__}, device {args.device}\n\n{' '.join(sys.argv)}\n\n"
          f"{conditions()}\n{load.report()}")
    t0 = time.time()
    only = args.accuracy_only or args.convergence_only
    if not only:
        print(speed(args), flush=True)
    if args.accuracy or args.accuracy_only:
        print(accuracy(args), flush=True)
    if args.convergence or args.convergence_only:
        print(convergence(args), flush=True)
    print(f"\n(total {time.time() - t0:.0f} s)\n{load.stop().report()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
