"""Train ``tiny-dllm-long``: the long-context embedded LLaDA-format model, on CPU.

Run ``python -m headig.toy.train_long --out DIR --threads 1`` to reproduce
``headig/assets/tiny-dllm-long``. It trains headig's native
:class:`~headig.models.DiffusionLM` on the tasks of :mod:`headig.toy.long_context` with
the masked-diffusion objective of :mod:`headig.train_tiny` (prompt never masked, each
answer token masked with probability t ~ U(eps, 1], cross-entropy on the masked tokens),
saves it under the official LLaDA names, then measures held-out accuracy, per-head
attention statistics and single-head ablations, and writes them into ``TRAINING.md``.

Training data are drawn fresh at every step from a seed (:func:`long_context.train_batch`),
with a random, log-uniform context length per step (``min_ctx`` .. ``max_ctx``) and a fixed token
budget per batch: short contexts teach the retrieval heads quickly and cost little, long
ones make them work at the evaluation length. Progress is checkpointed atomically to
``DIR/train_state.pt`` so a stopped run resumes where it was (and gives the same weights).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from headig.models.modeling import DiffusionLM
from headig.toy import long_context as lc
from headig.toy import tasks as _tasks
from headig.toy.checkpoint import official_llada_config
from headig.toy.checkpoint import save_checkpoint as write_checkpoint
from headig.toy.train_tiny import build_model, official_state_dict

STATE_FILE = "train_state.pt"
BLOCK = 16  # key-block size the card measures with (the sparse-attention block size)


@dataclass
class LongConfig:
    """Everything that determines the trained weights (with the torch version and threads)."""

    seed: int = 0
    n_layers: int = 4
    n_heads: int = 8
    n_kv_heads: int = 4
    head_dim: int = 12
    mlp_hidden: int = 192
    embedding_size: int = 80
    steps: int = 2500
    tokens_per_batch: int = 3072
    min_ctx: int = 16
    max_ctx: int = 512
    ramp: float = 0.4
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eps: float = 1e-3
    max_eos: int = 3
    bos_prob: float = 0.5
    n_eval_per_task: int = 64

    def __post_init__(self) -> None:
        positive = ("n_layers", "n_heads", "n_kv_heads", "head_dim", "mlp_hidden", "steps",
                    "tokens_per_batch", "n_eval_per_task")
        bad = [f"{k}={getattr(self, k)}" for k in positive if int(getattr(self, k)) < 1]
        if bad:
            raise ValueError(f"{', '.join(bad)}; expected positive integers")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of "
                             f"n_kv_heads={self.n_kv_heads}")
        if not 16 <= self.min_ctx <= self.max_ctx <= lc.MAX_LENGTH - 32:
            raise ValueError(f"min_ctx={self.min_ctx}, max_ctx={self.max_ctx}; expected "
                             f"16 <= min_ctx <= max_ctx <= {lc.MAX_LENGTH - 32}")
        if not 0.0 <= self.ramp <= 1.0:
            raise ValueError(f"ramp={self.ramp}; expected a share of the steps in [0, 1]")
        if self.embedding_size < len(lc.vocabulary()):
            raise ValueError(f"embedding_size={self.embedding_size} is smaller than the "
                             f"vocabulary ({len(lc.vocabulary())} tokens)")


def llada_config(cfg: LongConfig) -> dict[str, Any]:
    """The official LLaDA ``config.json`` (GQA through ``n_kv_heads``)."""
    return official_llada_config(lc.word_vocabulary(), n_layers=cfg.n_layers,
                                 n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads,
                                 head_dim=cfg.head_dim, mlp_hidden=cfg.mlp_hidden,
                                 embedding_size=cfg.embedding_size)


def save_checkpoint(model: DiffusionLM, tokenizer: Any, config: dict[str, Any],
                    out: str | os.PathLike) -> Path:
    """config.json, model.safetensors and the tokenizer files, in the official layout."""
    return write_checkpoint(model, config, out, state_dict=official_state_dict,
                            save_tokenizer=lambda folder: lc.save_tokenizer(tokenizer, folder))


def step_shape(cfg: LongConfig, step: int) -> tuple[int, int]:
    """(rows, context length) of a step: a random length, rows filling the token budget.

    The length is log-uniform in ``min_ctx .. top``: many short contexts (many answers
    per token, where retrieval is found fast) and enough long ones to work at full length.
    ``top`` grows linearly from ``min_ctx`` to ``max_ctx`` over the first ``ramp`` share of
    the steps (a length curriculum; 0 = full range from the start).
    """
    rng = random.Random(f"headig-long-shape-{cfg.seed}-{step}")
    frac = 1.0 if cfg.ramp <= 0 else min(1.0, step / (cfg.ramp * cfg.steps))
    top = cfg.min_ctx + frac * (cfg.max_ctx - cfg.min_ctx)
    length = round(math.exp(rng.uniform(math.log(cfg.min_ctx), math.log(top))))
    per_row = length + 3 + lc.pairs_for(length) * 2 // 3 + cfg.max_eos  # mean over tasks
    rows = max(len(lc.LONG_TASKS), cfg.tokens_per_batch // per_row)
    return rows - rows % len(lc.LONG_TASKS), length


def make_batch(cfg: LongConfig, step: int, bos_id: int, eos_id: int,
               gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(clean ids, attention mask, answer mask, t) of one step's masked-diffusion rows."""
    rows_n, length = step_shape(cfg, step)
    pairs = lc.encode_fast(lc.train_batch(cfg.seed, step, rows_n, length))
    n_eos = torch.randint(0, cfg.max_eos + 1, (rows_n,), generator=gen).tolist()
    with_bos = (torch.rand(rows_n, generator=gen) < cfg.bos_prob).tolist()
    rows, answers = [], []
    for (prompt, comp), k, b in zip(pairs, n_eos, with_bos):
        head = ([bos_id] if b else []) + prompt
        rows.append(head + comp + [eos_id] * k)
        answers.append([0] * len(head) + [1] * (len(comp) + k))
    ids, attn = _tasks.pad_right(rows, eos_id)
    answer, _ = _tasks.pad_right(answers, 0)
    t = cfg.eps + (1.0 - cfg.eps) * torch.rand(rows_n, generator=gen)
    return ids, attn, answer.bool(), t


def diffusion_loss(model: DiffusionLM, ids: Tensor, attn: Tensor, answer: Tensor, t: Tensor,
                   gen: torch.Generator) -> Tensor:
    """Mask each answer token with probability t (at least one per row); mean CE on them."""
    u = torch.rand(ids.shape, generator=gen)
    masked = answer & (u < t[:, None])
    forced = torch.where(answer, u, torch.full_like(u, 2.0)).argmin(-1)
    masked[torch.arange(ids.shape[0]), forced] = True
    masked &= answer
    noisy = ids.masked_fill(masked, model.family.mask_token_id)
    logits = model(noisy, attention_mask=attn).logits
    return F.cross_entropy(logits[masked].float(), ids[masked])


def _lr_at(cfg: LongConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to 5% of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * frac)))


def _save_state(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a stopped run never leaves a half-written state behind."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train(model: DiffusionLM, tokenizer: Any, cfg: LongConfig, *, state_path: Path | None = None,
          save_every: int = 100, log_every: int = 50, eval_every: int = 0,
          progress: bool = False) -> tuple[list[dict], float]:
    """Train in place (resuming from ``state_path`` if it exists).

    Returns the loss curve (mean training loss per ``log_every`` steps, with a quick
    held-out accuracy every ``eval_every`` steps) and the training seconds, summed over
    resumed sessions.
    """
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(0.9, 0.98), eps=1e-8)
    curve: list[dict] = []
    start_step, seconds_before = 0, 0.0
    if state_path is not None and state_path.is_file():
        state = torch.load(state_path, weights_only=False)
        if state["config"] != asdict(cfg):
            raise ValueError(f"{state_path} was written with another config; delete it or "
                             "train with the same options")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_step, curve, seconds_before = state["step"], state["curve"], state["seconds"]
        if progress:
            print(f"resumed at step {start_step}", file=sys.stderr, flush=True)
    quick = lc.eval_examples(cfg.seed + 1000, per_task=8) if eval_every else []
    model.train()
    model.requires_grad_(True)
    window: list[float] = []
    start = time.perf_counter()
    for step in range(start_step, cfg.steps):
        # per-step generator: a resumed run masks exactly like an uninterrupted one
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        for group in opt.param_groups:
            group["lr"] = _lr_at(cfg, step)
        ids, attn, answer, t = make_batch(cfg, step, tokenizer.bos_token_id,
                                          tokenizer.eos_token_id, gen)
        loss = diffusion_loss(model, ids, attn, answer, t, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        window.append(float(loss.detach()))
        done = step + 1
        if done % log_every == 0 or done == cfg.steps:
            entry: dict[str, Any] = {
                "step": done, "loss": sum(window) / len(window),
                "seconds": round(seconds_before + time.perf_counter() - start, 1)}
            window = []
            if eval_every and (done % eval_every == 0 or done == cfg.steps):
                model.eval()
                entry["eval"] = token_accuracy(model, tokenizer, quick, batch_size=24)
                model.train()
            curve.append(entry)
            if progress:
                extra = ""
                if "eval" in entry:
                    extra = "  acc " + " ".join(f"{k} {v:.2f}" for k, v in entry["eval"].items())
                print(f"step {done:5d}  loss {entry['loss']:.4f}  {entry['seconds']:.0f}s"
                      + extra, file=sys.stderr, flush=True)
        if state_path is not None and (done % save_every == 0 or done == cfg.steps):
            _save_state(state_path, {
                "config": asdict(cfg), "step": done, "model": model.state_dict(),
                "optimizer": opt.state_dict(), "curve": curve,
                "seconds": seconds_before + time.perf_counter() - start})
    model.requires_grad_(False)
    model.eval()
    return curve, seconds_before + time.perf_counter() - start


# --------------------------------------------------------------------------- analysis

@torch.no_grad()
def token_accuracy(model: DiffusionLM, tokenizer: Any, examples: list[lc.Example],
                   batch_size: int = 32) -> dict[str, float]:
    """Share of answer tokens right under greedy mask-predict decoding, per task + ``all``.

    Exact match of a whole 8-token answer hides partial progress; this shows it.
    """
    pairs = lc.encode_fast(examples)
    preds = _tasks.mask_predict(model, tokenizer, [p for p, _ in pairs],
                                [len(c) for _, c in pairs], batch_size=batch_size)
    hits: dict[str, list[float]] = defaultdict(list)
    for ex, (_, gold), pred in zip(examples, pairs, preds):
        hits[ex.task].append(sum(a == b for a, b in zip(pred, gold)) / len(gold))
    out = {t: sum(v) / len(v) for t, v in sorted(hits.items())}
    out["all"] = sum(sum(v) for v in hits.values()) / len(examples)
    return out


@torch.no_grad()
def head_attention_stats(model: DiffusionLM, examples: list[lc.Example],
                         batch_size: int = 8) -> dict[str, Tensor]:
    """Per-head [L, H] attention statistics with every completion token masked.

    - ``distance``: mean |query - key| of the attention, over all query positions;
    - ``local``: attention mass within the query's own 16-token block and its two
      neighbours (what a sliding local window keeps);
    - ``source``: mass that the answer positions of recall and needle put on the
      16-token block holding their answer's source token;
    - ``source_q``: the same for recall's query keys (the ``k`` after ``?``), whose
      partner value sits in that block;
    - ``needle_all``: mass that *every* query position of the needle examples puts on the
      needle's block (heads that broadcast the far needle to the whole sequence);
    - ``near``: mass on the two tokens on either side of the query (n-gram heads);
    - ``chance``: the source mass a uniform head would give (one block of the sequence).
    """
    fam = model.family
    n_l, n_h = fam.n_layers, fam.n_heads
    sums = {k: torch.zeros(n_l, n_h, dtype=torch.float64)
            for k in ("distance", "local", "source", "source_q", "needle_all", "near")}
    counts = {"distance": 0, "source": 0, "source_q": 0, "needle_all": 0}
    chance: list[float] = []
    captured: dict[int, Tensor] = {}

    def recording(q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | None,
                  module: Any) -> Tensor:
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        probs = scores.softmax(-1)
        captured[module.layer_idx] = probs
        return probs @ v

    attns = [layer.attn for layer in model.layers]
    saved = [a.attn_fn for a in attns]
    mask_id = fam.mask_token_id
    try:
        for a in attns:
            a.attn_fn = recording
        pairs = lc.encode_fast(examples)
        for lo in range(0, len(examples), batch_size):
            chunk = list(range(lo, min(lo + batch_size, len(examples))))
            rows = [pairs[i][0] + [mask_id] * len(pairs[i][1]) for i in chunk]
            ids, attn = _tasks.pad_right(rows, fam.arch.eos_token_id)
            model(ids, attention_mask=attn)
            for r, i in enumerate(chunk):
                n = len(rows[r])
                pos = torch.arange(n)
                dist = (pos[:, None] - pos[None, :]).abs().double()
                blk = pos // BLOCK
                near = ((blk[:, None] - blk[None, :]).abs() <= 1).double()
                offs = (pos[:, None] - pos[None, :]).abs()
                adjacent = ((offs >= 1) & (offs <= 2)).double()
                ex, n_prompt = examples[i], len(pairs[i][0])
                counts["distance"] += n
                src_rows: list[tuple[int, int]] = []  # (query row, source position)
                q_rows: list[tuple[int, int]] = []
                if ex.task in ("recall", "needle"):
                    src_rows = [(n_prompt + j, s) for j, s in enumerate(ex.sources)]
                    chance.append(BLOCK / n)
                if ex.task == "recall":
                    first_key = n_prompt - 1 - len(ex.sources)
                    q_rows = [(first_key + j, s) for j, s in enumerate(ex.sources)]
                for layer in range(n_l):
                    p = captured[layer][r, :, :n, :n].double()  # [H, n, n]
                    sums["distance"][layer] += (p * dist).sum((-1, -2))
                    sums["local"][layer] += (p * near).sum((-1, -2))
                    sums["near"][layer] += (p * adjacent).sum((-1, -2))
                    if ex.task == "needle":
                        b0 = (ex.sources[0] // BLOCK) * BLOCK
                        sums["needle_all"][layer] += p[:, :, b0: b0 + BLOCK].sum((-1, -2))
                    for key, sel in (("source", src_rows), ("source_q", q_rows)):
                        for row, s in sel:
                            b0 = (s // BLOCK) * BLOCK
                            sums[key][layer] += p[:, row, b0: b0 + BLOCK].sum(-1)
                counts["source"] += len(src_rows)
                counts["source_q"] += len(q_rows)
                counts["needle_all"] += n if ex.task == "needle" else 0
            captured.clear()
    finally:
        for a, fn in zip(attns, saved):
            a.attn_fn = fn
    out = {"distance": sums["distance"] / counts["distance"],
           "local": sums["local"] / counts["distance"],
           "source": sums["source"] / max(1, counts["source"]),
           "source_q": sums["source_q"] / max(1, counts["source_q"]),
           "needle_all": sums["needle_all"] / max(1, counts["needle_all"]),
           "near": sums["near"] / counts["distance"]}
    out["chance"] = torch.tensor(sum(chance) / max(1, len(chance)))
    return out


@torch.no_grad()
def head_ablation(model: DiffusionLM, tokenizer: Any, examples: list[lc.Example],
                  **loss_kwargs: Any) -> tuple[dict[str, float], dict[str, Tensor]]:
    """Clean per-task held-out loss, and per task the [L, H] loss with one head zeroed."""
    from headig.gating import HeadGate

    fam = model.family
    base = _tasks.completion_loss(model, tokenizer, examples, per_task=True, **loss_kwargs)
    tables = {t: torch.zeros(fam.n_layers, fam.n_heads, dtype=torch.float64) for t in base}
    for layer in range(fam.n_layers):
        for head in range(fam.n_heads):
            gates = torch.ones(fam.n_layers, fam.n_heads)
            gates[layer, head] = 0.0
            with HeadGate(model, gates):
                res = _tasks.completion_loss(model, tokenizer, examples, per_task=True,
                                             **loss_kwargs)
            for t, v in res.items():
                tables[t][layer, head] = v
    return base, tables


def classify_heads(stats: dict[str, Tensor], ablation: dict[str, Tensor],
                   base: dict[str, float]) -> list[list[str]]:
    """A label per head: ``retrieval`` (>= 5x chance mass on the answer's source block from
    the answers, the recall queries or, for the needle, from every position), else
    ``local`` (>= 25% of the mass on the two tokens either side, or >= 50% within the
    query's block and its neighbours), else ``mixed``."""
    chance = float(stats["chance"])
    n_l, n_h = stats["local"].shape
    labels = []
    for layer in range(n_l):
        row = []
        for h in range(n_h):
            src = max(float(stats[k][layer, h]) for k in ("source", "source_q", "needle_all"))
            if src >= 5 * chance:
                row.append("retrieval")
            elif float(stats["near"][layer, h]) >= 0.25 or float(stats["local"][layer, h]) >= 0.5:
                row.append("local")
            else:
                row.append("mixed")
        labels.append(row)
    return labels


def _card(cfg: LongConfig, command: str, curve: list[dict], seconds: float,
          acc: dict[str, float], tok_acc: dict[str, float], loss: dict[str, float], stats: dict[str, Tensor],
          base: dict[str, float], tables: dict[str, Tensor], labels: list[list[str]],
          n_params: int, size_bytes: int, eval_len: float, n_ablation: int) -> str:
    d_model = cfg.n_heads * cfg.head_dim
    n_l, n_h = cfg.n_layers, cfg.n_heads
    lines = [
        "# tiny-dllm-long: the long-context embedded diffusion LM",
        "",
        "A LLaDA-format masked diffusion LM trained from scratch by `headig.toy.train_long` on",
        "the long-context tasks of `headig.toy.long_context` (multi-query associative recall,",
        "needle retrieval, local continuation) over 516-547-token sequences: 33-35 key blocks of 16",
        "tokens. Retrieval heads must reach the one far block that holds the answer; local heads",
        "model the filler. It loads with `headig.load_model` (or",
        "`headig.toy.long_context.load_embedded_long()`) like an official checkpoint.",
        "",
        "## Reproduce",
        "",
        "```",
        command,
        "```",
        "",
        f"{cfg.steps} steps took {seconds:.0f} s of training wall-clock on "
        f"{torch.get_num_threads()} torch thread(s) (torch {torch.__version__}, Python "
        f"{platform.python_version()}), on a shared, loaded CPU: a quiet core is faster. The "
        "run checkpoints to `train_state.pt` and resumes from it with the same result. "
        "Bit-exact weights need the same torch version and thread count.",
        "",
        "## Model",
        "",
        f"- {n_l} layers x {n_h} query heads = {n_l * n_h} heads (GQA: {cfg.n_kv_heads} KV heads "
        f"per layer), head_dim {cfg.head_dim}, d_model {d_model}, SwiGLU hidden "
        f"{cfg.mlp_hidden}, RoPE, RMSNorm, no dropout, untied output; max length "
        f"{lc.MAX_LENGTH}.",
        f"- Vocabulary: {len(lc.vocabulary())} word-level tokens (embedding rows "
        f"{cfg.embedding_size}): 24 keys `a`..`x`, digits, 10 needles `A`..`J`, 16 filler "
        "syllables, `? =`, "
        "3 task headers, the LLaDA specials.",
        f"- {n_params:,} parameters, float32, {size_bytes / 1e6:.2f} MB.",
        "",
        "## Data",
        "",
        "- Context: filler syllables where each is a fixed function of the one before it "
        f"({int(lc.FILLER_NOISE * 100)}% replaced at random), with {lc.N_PAIRS} key-value "
        "pairs `k d` (fewer in contexts under 384 tokens, `pairs_for`) and one needle (a "
        "capital letter, the only one) at random places.",
        f"- `recall: CONTEXT ? k1 .. k{lc.N_QUERIES} =` -> the {lc.N_QUERIES} values; "
        "`needle: CONTEXT ? =` -> the needle; "
        f"`continue: CONTEXT =` -> the next {lc.CONTINUE_LEN} syllables by the rule.",
        "- Training examples are drawn fresh each step from the seed "
        "(`headig.toy.long_context.train_batch(seed, step, rows, length)`; no `train.jsonl` "
        f"is stored), context length log-uniform in {cfg.min_ctx}..top per step, top rising from {cfg.min_ctx} to {cfg.max_ctx} over the first {cfg.ramp:.0%} of the steps, "
        f"{cfg.tokens_per_batch} tokens per batch, tasks in equal shares. The curriculum is "
        "needed: attention starts uniform, so over hundreds of tokens the gradient reaching "
        "any single (near or far) token is diluted; a pilot trained on 64..512-token contexts "
        "from the start stayed at the unigram loss for 900 steps, this run left it after ~400.",
        f"- `eval.jsonl`: {cfg.n_eval_per_task} held-out examples per task, context "
        f"{lc.EVAL_CONTEXT} tokens ({eval_len:.0f} tokens with the answer on average), "
        "`eval_examples(seed=0)`. The split is by a hash of the prompt text "
        "(`headig.toy.long_context.is_held_out`); training draws only non-held-out prompts.",
        "",
        "## Training",
        "",
        f"- Config: `{json.dumps(asdict(cfg))}`",
        "- Objective: per row t ~ U(eps, 1]; each answer token (completion plus 0..max_eos "
        "trailing `<|endoftext|>`) masked with probability t, at least one; prompt never. "
        "Plain mean cross-entropy over the batch's masked tokens. A `<|startoftext|>` is "
        f"prepended with probability {cfg.bos_prob}.",
        "- AdamW (betas 0.9, 0.98), linear warm-up then cosine decay to 5%, gradient clipping.",
        "",
        "Training loss (mean over each logging window) and quick held-out *token* accuracy "
        "(8 examples per task, eval seed + 1000):",
        "",
        "| step | loss | seconds | quick accuracy |",
        "|---:|---:|---:|---|",
    ]
    for c in curve:
        quick = ", ".join(f"{k} {v:.2f}" for k, v in c["eval"].items()) if "eval" in c else ""
        lines.append(f"| {c['step']} | {c['loss']:.4f} | {c['seconds']:.0f} | {quick} |")
    lines += [
        "",
        "## Held-out results",
        "",
        "Accuracy: exact match of the whole answer, greedy mask-predict decoding (all answer "
        "tokens masked, the most confident revealed per step); token accuracy: the share of "
        "answer tokens right under the same decoding. Loss: masked-diffusion "
        "cross-entropy on completions, mask probabilities 0.15/0.3/0.5/0.7/0.9 x 2 samples.",
        "",
        "| task | exact-match accuracy | token accuracy | loss |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {t} | {acc[t]:.3f} | {tok_acc[t]:.3f} | {loss[t]:.4f} |" for t in acc]
    chance = float(stats["chance"])
    lines += [
        "",
        "## Head specialisation",
        "",
        f"Attention of every head on {n_ablation} held-out examples per task, all answer "
        "tokens masked (`headig.toy.train_long.head_attention_stats`). *dist*: mean "
        "|query - key| distance; *local*: mass within the query's 16-token block and its "
        "neighbours; *src ans*: mass from recall/needle answer positions on the block of "
        "their source token; *src q*: the same from recall's query keys; *needle*: mass from "
        "every position of the needle examples on the needle's block "
        f"(a uniform head gives {chance:.3f} on one block); *adj*: mass on the 2 tokens either "
        "side. Ablation: held-out loss increase per task "
        "when that head alone is zeroed (`headig.HeadGate`), mask probabilities 0.3/0.7, "
        f"clean loss recall {base['recall']:.3f}, needle {base['needle']:.3f}, continue "
        f"{base['continue']:.3f}. Label: retrieval if src ans, src q or needle >= 5x "
        "uniform, else local if adj >= 0.25 or local >= 0.5, else mixed.",
        "",
        "| head | label | dist | local | adj | src ans | src q | needle | Δ recall | Δ needle "
        "| Δ continue |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for layer in range(n_l):
        for h in range(n_h):
            d = {t: float(tables[t][layer, h]) - base[t] for t in ("recall", "needle", "continue")}
            lines.append(
                f"| L{layer}.H{h} | {labels[layer][h]} | {float(stats['distance'][layer, h]):.1f}"
                f" | {float(stats['local'][layer, h]):.2f}"
                f" | {float(stats['near'][layer, h]):.2f}"
                f" | {float(stats['source'][layer, h]):.3f}"
                f" | {float(stats['source_q'][layer, h]):.3f}"
                f" | {float(stats['needle_all'][layer, h]):.3f}"
                f" | {d['recall']:+.3f} | {d['needle']:+.3f} | {d['continue']:+.3f} |")
    counts: dict[str, int] = defaultdict(int)
    for row in labels:
        for lab in row:
            counts[lab] += 1
    drops = sorted(((float(tables["recall"][i, j]) - base["recall"], i, j)
                    for i in range(n_l) for j in range(n_h)), reverse=True)
    small = sum(1 for layer in range(n_l) for h in range(n_h)
                if max(float(tables[t][layer, h]) - base[t] for t in base if t != "all") < 0.05)
    lines += [
        "",
        f"Labels: {counts['retrieval']} retrieval, {counts['local']} local, "
        f"{counts['mixed']} mixed. Largest recall-loss increase: L{drops[0][1]}.H{drops[0][2]} "
        f"({drops[0][0]:+.3f}). {small} of {n_l * n_h} heads raise no task's loss by 0.05 or "
        "more when removed alone (redundant on their own).",
        "",
    ]
    return "\n".join(lines)


@torch.no_grad()
def reach_check(model: DiffusionLM, tokenizer: Any, examples: list[lc.Example],
                keeps: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5)) -> dict[str, dict[str, float]]:
    """Held-out token accuracy per task when attention cannot reach everywhere.

    ``local``: every head sees only its own 16-token block and the two neighbours (a
    sliding window); ``keep=k``: uniform block-sparse attention
    (:class:`headig.sparse.SparseAttentionPatch`, blocks of 16, every head keeps the
    fraction k of key blocks it scores highest, diagonal kept). Retrieval tasks should
    fail under the window while continuation should not care.
    """
    from headig.sparse import SparseAttentionPatch

    out = {"dense": token_accuracy(model, tokenizer, examples)}
    saved = [layer.attn.attn_fn for layer in model.layers]

    def windowed(q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | None,
                 module: Any) -> Tensor:
        blk = torch.arange(q.shape[-2], device=q.device) // BLOCK
        band = (blk[:, None] - blk[None, :]).abs() <= 1
        mask = band if mask is None else mask & band
        return saved[module.layer_idx](q, k, v, mask=mask, module=module)

    try:
        for layer in model.layers:
            layer.attn.attn_fn = windowed
        out["local"] = token_accuracy(model, tokenizer, examples)
    finally:
        for layer, fn in zip(model.layers, saved):
            layer.attn.attn_fn = fn
    for keep in keeps:
        with SparseAttentionPatch(model, "uniform", keep=keep, block_size=BLOCK,
                                  min_seq_len=0, kernel="gather"):
            out[f"keep={keep}"] = token_accuracy(model, tokenizer, examples)
    return out


def evaluate_and_write(model: DiffusionLM, tokenizer: Any, cfg: LongConfig, folder: Path,
                       curve: list[dict], seconds: float, command: str, *,
                       n_ablation: int = 16, progress: bool = True) -> dict[str, Any]:
    """Held-out accuracy, head statistics and ablations -> ``TRAINING.md``, ``metrics.json``."""
    eval_set = lc.eval_examples(cfg.seed, cfg.n_eval_per_task)
    lc.write_jsonl(folder / "eval.jsonl", eval_set)
    if progress:
        print("evaluating", file=sys.stderr, flush=True)
    acc = _tasks.accuracy(model, tokenizer, eval_set, batch_size=32)
    tok_acc = token_accuracy(model, tokenizer, eval_set)
    loss = _tasks.completion_loss(model, tokenizer, eval_set, per_task=True, batch_size=32)
    small = _tasks.subset(eval_set, n_ablation)
    stats = head_attention_stats(model, small)
    if progress:
        print("ablating heads", file=sys.stderr, flush=True)
    base, tables = head_ablation(model, tokenizer, small, mask_probs=(0.3, 0.7),
                                 samples_per_prob=1, batch_size=32)
    labels = classify_heads(stats, tables, base)
    if progress:
        print("restricted attention", file=sys.stderr, flush=True)
    reach = reach_check(model, tokenizer, small)
    n_params = sum(p.numel() for p in model.parameters())
    size = (folder / "model.safetensors").stat().st_size
    eval_len = sum(len(p) + len(c) for p, c in lc.encode_fast(eval_set)) / len(eval_set)
    card = _card(cfg, command, curve, seconds, acc, tok_acc, loss, stats, base, tables,
                 labels, n_params, size, eval_len, n_ablation)
    card += "\n" + _reach_section(reach, n_ablation)
    (folder / "TRAINING.md").write_text(card)
    metrics = {"config": asdict(cfg), "command": command, "seconds": seconds, "curve": curve,
               "accuracy": acc, "token_accuracy": tok_acc, "loss": loss,
               "head_stats": {k: v.tolist() for k, v in stats.items()},
               "ablation_base": base, "ablation": {t: v.tolist() for t, v in tables.items()},
               "labels": labels, "restricted_attention": reach,
               "threads": torch.get_num_threads(), "torch": torch.__version__,
               "n_params": n_params}
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def _reach_section(reach: dict[str, dict[str, float]], n: int) -> str:
    tasks = [t for t in reach["dense"] if t != "all"]
    lines = [
        "## Restricted attention",
        "",
        f"Held-out token accuracy ({n} examples per task) when every head sees only a "
        "sliding window of 3 blocks of 16 tokens (`local`), and under uniform block-sparse "
        "attention (`headig.sparse.SparseAttentionPatch`, blocks of 16, pooled block "
        "scores, diagonal kept) at each keep ratio "
        "(`headig.toy.train_long.reach_check`).",
        "",
        "| attention | " + " | ".join(tasks) + " |",
        "|---|" + "---:|" * len(tasks),
    ]
    lines += [f"| {name} | " + " | ".join(f"{row[t]:.3f}" for t in tasks) + " |"
              for name, row in reach.items()]
    return "\n".join(lines) + "\n"


def run(cfg: LongConfig, out: str | os.PathLike, *, command: str | None = None,
        progress: bool = True, eval_every: int = 250, n_ablation: int = 16) -> dict[str, Any]:
    """Train (or resume), save checkpoint + eval data + card + metrics to ``out``."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    tokenizer = lc.build_tokenizer()
    config = llada_config(cfg)
    model = build_model(config, cfg.seed)
    curve, seconds = train(model, tokenizer, cfg, state_path=folder / STATE_FILE,
                           eval_every=eval_every, progress=progress)
    save_checkpoint(model, tokenizer, config, folder)
    command = command or f"python -m headig.toy.train_long --out {folder}"
    metrics = evaluate_and_write(model, tokenizer, cfg, folder, curve, seconds, command,
                                 n_ablation=n_ablation, progress=progress)
    (folder / STATE_FILE).unlink(missing_ok=True)
    return metrics


def remeasure(out: str | os.PathLike, *, n_ablation: int = 16) -> dict[str, Any]:
    """Re-run the held-out measurements of a trained folder and rewrite its card.

    Uses the saved checkpoint and the training record in ``metrics.json`` (config, loss
    curve, seconds), so a card can gain new measurements without retraining.
    """
    from headig.models.loading import load_model

    folder = Path(out)
    old = json.loads((folder / "metrics.json").read_text())
    cfg = LongConfig(**old["config"])
    model, tokenizer = load_model(folder, dtype="float32")
    command = old.get("command") or _command(folder, cfg, old.get("threads"))
    return evaluate_and_write(model, tokenizer, cfg, folder, old["curve"], old["seconds"],
                              command, n_ablation=n_ablation)


def _command(out: str | os.PathLike, cfg: LongConfig, threads: int | None) -> str:
    """The shortest command line that reproduces ``cfg`` into ``out``."""
    defaults = LongConfig()
    shown = ["python -m headig.toy.train_long", "--out", str(out)]
    if threads is not None:
        shown += ["--threads", str(threads)]
    shown += [f"--{f.name.replace('_', '-')} {getattr(cfg, f.name)}" for f in fields(cfg)
              if getattr(cfg, f.name) != getattr(defaults, f.name)]
    return " ".join(shown)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m headig.toy.train_long",
        description="Train the long-context embedded LLaDA-format diffusion LM on CPU.")
    parser.add_argument("--out", required=True, help="output checkpoint folder")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (fix it for bit-exact reproduction)")
    parser.add_argument("--eval-every", type=int, default=250,
                        help="steps between quick held-out checks (0: none)")
    parser.add_argument("--remeasure", action="store_true",
                        help="do not train: re-measure the trained --out folder, rewrite its card")
    defaults = LongConfig()
    for f in fields(LongConfig):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(getattr(defaults, f.name)),
                            default=getattr(defaults, f.name))
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads {args.threads}: expected a positive integer")
        torch.set_num_threads(args.threads)
    if args.remeasure:
        metrics = remeasure(args.out)
    else:
        cfg = LongConfig(**{f.name: getattr(args, f.name) for f in fields(LongConfig)})
        metrics = run(cfg, args.out, command=_command(args.out, cfg, args.threads),
                      eval_every=args.eval_every)
    acc = ", ".join(f"{k} {v:.3f}" for k, v in metrics["accuracy"].items())
    print(f"trained in {metrics['seconds']:.0f} s; held-out accuracy: {acc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
