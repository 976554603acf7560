"""Train the embedded tiny diffusion LM: an official-format LLaDA checkpoint, on CPU, in minutes.

Run ``python -m headig.toy.train_tiny --out DIR`` to reproduce ``headig/assets/tiny-dllm``:
it draws the task data (:mod:`headig.toy.tasks`), trains headig's native
:class:`~headig.models.DiffusionLM` with the masked-diffusion objective, saves it with the
official LLaDA config keys and weight names (so :func:`headig.load_model` loads it like
a real checkpoint), then measures held-out accuracy and single-head ablations and writes
them into ``TRAINING.md``.

Objective (LLaDA SFT): per row draw t ~ U(eps, 1], mask each answer token (the completion
plus 0..``max_eos`` trailing end-of-text tokens) with probability t (at least one), never
the prompt, and take the cross-entropy on the masked tokens. ``loss_weighting="inv_t"``
weights each masked token by 1/t and divides by the row's answer length (the ELBO used by
LLaDA); ``"mean"`` is the plain mean over masked tokens.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from headig.diffusion.loss import token_ce
from headig.models.family import Family, spec_for_model_type
from headig.models.modeling import DiffusionLM
from headig.toy import tasks
from headig.toy.checkpoint import (
    WordVocabulary,
    official_llada_config,
    save_word_tokenizer,
    word_tokenizer,
)
from headig.toy.checkpoint import save_checkpoint as write_checkpoint

__all__ = [
    "TrainConfig", "build_model", "build_tokenizer", "diffusion_loss", "head_ablation",
    "llada_config", "main", "official_state_dict", "run", "save_checkpoint", "save_tokenizer",
    "train",
]

# Native parameter name -> official LLaDA name (the inverse of the loader's mapping).
_NATIVE_BLOCK_TO_OFFICIAL = {
    "attn_norm": "attn_norm",
    "attn.q_proj": "q_proj",
    "attn.k_proj": "k_proj",
    "attn.v_proj": "v_proj",
    "attn.o_proj": "attn_out",
    "mlp_norm": "ff_norm",
    "mlp.gate_proj": "ff_proj",
    "mlp.up_proj": "up_proj",
    "mlp.down_proj": "ff_out",
}
_NATIVE_TOP_TO_OFFICIAL = {"embed": "wte", "norm": "ln_f", "lm_head": "ff_out"}


@dataclass
class TrainConfig:
    """Everything that determines the trained weights (with the torch version and threads)."""

    seed: int = 0
    n_layers: int = 3
    n_heads: int = 4
    head_dim: int = 24
    mlp_hidden: int = 192
    embedding_size: int = 64
    steps: int = 3600
    batch_size: int = 128
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eps: float = 1e-3
    loss_weighting: str = "mean"
    max_eos: int = 3
    bos_prob: float = 0.5
    n_train: int = 24000
    n_eval_per_task: int = 100

    def __post_init__(self) -> None:
        if self.loss_weighting not in ("mean", "inv_t"):
            raise ValueError(f"loss_weighting={self.loss_weighting!r}; expected 'mean' or 'inv_t'")
        positive = ("n_layers", "n_heads", "head_dim", "mlp_hidden", "steps", "batch_size")
        bad = [f"{k}={getattr(self, k)}" for k in positive if int(getattr(self, k)) < 1]
        if bad:
            raise ValueError(f"{', '.join(bad)}; expected positive integers")
        if not 0.0 < self.eps < 1.0:
            raise ValueError(f"eps={self.eps}; expected 0 < eps < 1")
        if self.embedding_size < len(tasks.vocabulary()):
            raise ValueError(f"embedding_size={self.embedding_size} is smaller than the "
                             f"vocabulary ({len(tasks.vocabulary())} tokens)")


# --------------------------------------------------------------------------- tokenizer

VOCABULARY = WordVocabulary(tasks.vocabulary(), tasks.SPECIAL_TOKENS, bos=tasks.BOS,
                            eos=tasks.EOS, mask=tasks.MASK, unk=tasks.UNK, max_length=64)


def build_tokenizer() -> Any:
    """A word-level fast tokenizer over :func:`headig.toy.tasks.vocabulary` (whitespace split)."""
    return word_tokenizer(VOCABULARY)


def save_tokenizer(tokenizer: Any, out: Path) -> None:
    """tokenizer.json plus configs that transformers 4.x and 5.x both read."""
    save_word_tokenizer(tokenizer, VOCABULARY, out)


# --------------------------------------------------------------------------- model

def llada_config(cfg: TrainConfig) -> dict[str, Any]:
    """The official LLaDA ``config.json`` for the tiny model."""
    return official_llada_config(VOCABULARY, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                                 n_kv_heads=cfg.n_heads, head_dim=cfg.head_dim,
                                 mlp_hidden=cfg.mlp_hidden, embedding_size=cfg.embedding_size)


def build_model(config: dict[str, Any], seed: int) -> DiffusionLM:
    """A freshly initialised, trainable native model for an official config dict.

    Weights ~ N(0, 0.02); the two residual-output projections are scaled down by
    sqrt(2 * n_layers) (GPT-2 style) so the residual stream starts near the embedding.
    """
    spec = spec_for_model_type(config["model_type"])
    arch = spec.parse_config(config)
    gen = torch.Generator().manual_seed(int(seed))
    model = DiffusionLM(Family(spec=spec, arch=arch, native=True))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                std = 0.02
                if name.endswith(("o_proj.weight", "down_proj.weight")):
                    std /= math.sqrt(2 * arch.n_layers)
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


def official_state_dict(model: DiffusionLM) -> dict[str, Tensor]:
    """The model's weights under official LLaDA names, contiguous float tensors."""
    out: dict[str, Tensor] = {}
    for name, tensor in model.state_dict().items():
        parts = name.split(".")
        if parts[0] == "layers":
            local, kind = ".".join(parts[2:-1]), parts[-1]
            if local not in _NATIVE_BLOCK_TO_OFFICIAL:
                raise KeyError(f"no official LLaDA name for native weight {name!r}")
            key = f"model.transformer.blocks.{parts[1]}.{_NATIVE_BLOCK_TO_OFFICIAL[local]}.{kind}"
        elif parts[0] in _NATIVE_TOP_TO_OFFICIAL and len(parts) == 2:
            key = f"model.transformer.{_NATIVE_TOP_TO_OFFICIAL[parts[0]]}.{parts[1]}"
        else:
            raise KeyError(f"no official LLaDA name for native weight {name!r}")
        out[key] = tensor.detach().cpu().contiguous().clone()
    return out


def save_checkpoint(model: DiffusionLM, tokenizer: Any, config: dict[str, Any],
                    out: str | os.PathLike) -> Path:
    """Write config.json, model.safetensors and the tokenizer files to ``out``."""
    return write_checkpoint(model, config, out, state_dict=official_state_dict,
                            save_tokenizer=lambda folder: save_tokenizer(tokenizer, folder))


# --------------------------------------------------------------------------- training

class _Batcher:
    """Deterministic epoch-shuffled batches of masked-diffusion training rows."""

    def __init__(self, pairs: list[tuple[list[int], list[int]]], cfg: TrainConfig,
                 tokenizer: Any, gen: torch.Generator) -> None:
        if not pairs:
            raise ValueError("no training examples")
        self.pairs, self.cfg, self.gen = pairs, cfg, gen
        self.eos, self.bos = tokenizer.eos_token_id, tokenizer.bos_token_id
        self.order: list[int] = []

    def next(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(clean ids, attention mask, answer mask, t) for one batch."""
        idx = []
        while len(idx) < self.cfg.batch_size:
            if not self.order:
                self.order = torch.randperm(len(self.pairs), generator=self.gen).tolist()
            idx.append(self.order.pop())
        n = len(idx)
        n_eos = torch.randint(0, self.cfg.max_eos + 1, (n,), generator=self.gen).tolist()
        with_bos = (torch.rand(n, generator=self.gen) < self.cfg.bos_prob).tolist()
        rows, answers = [], []
        for i, k, b in zip(idx, n_eos, with_bos):
            prompt, comp = self.pairs[i]
            head = ([self.bos] if b else []) + prompt
            rows.append(head + comp + [self.eos] * k)
            answers.append([0] * len(head) + [1] * (len(comp) + k))
        ids, attn = tasks.pad_right(rows, self.eos)
        answer, _ = tasks.pad_right(answers, 0)
        t = self.cfg.eps + (1.0 - self.cfg.eps) * torch.rand(n, generator=self.gen)
        return ids, attn, answer.bool(), t


def diffusion_loss(model: DiffusionLM, ids: Tensor, attn: Tensor, answer: Tensor, t: Tensor,
                   gen: torch.Generator, weighting: str = "mean",
                   mask_id: int | None = None) -> Tensor:
    """Masked-diffusion loss of one batch: mask answer tokens with prob t, CE on them."""
    mask_id = model.family.mask_token_id if mask_id is None else mask_id
    u = torch.rand(ids.shape, generator=gen)
    masked = answer & (u < t[:, None])
    # at least one masked answer token per row: the one with the smallest draw
    forced = torch.where(answer, u, torch.full_like(u, 2.0)).argmin(-1)
    masked[torch.arange(ids.shape[0]), forced] = True
    masked &= answer
    noisy = ids.masked_fill(masked, mask_id)
    logits = model(noisy.to(model.device), attention_mask=attn.to(model.device)).logits
    ce = token_ce(logits[masked.to(model.device)], ids[masked].to(model.device))
    if weighting == "mean":
        return ce.mean()
    rows = masked.nonzero()[:, 0].to(model.device)
    w = (1.0 / t.to(model.device))[rows] / answer.sum(-1).to(model.device)[rows]
    return (ce * w).sum() / ids.shape[0]


def train(model: DiffusionLM, tokenizer: Any, train_examples: list[tasks.Example],
          cfg: TrainConfig, *, log_every: int = 100, progress: bool = False,
          callback: Callable[[int, DiffusionLM], Any] | None = None) -> list[dict]:
    """Train in place; returns the loss curve (mean training loss per ``log_every`` steps).

    ``callback(step, model)`` runs after each logged window (e.g. a held-out check); its
    non-None return value is stored in the curve entry under ``"eval"``.
    """
    gen = torch.Generator().manual_seed(int(cfg.seed) + 1)
    batcher = _Batcher(tasks.encode(tokenizer, train_examples), cfg, tokenizer, gen)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(0.9, 0.98), eps=1e-8)

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to 5%
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * frac)))

    model.train()
    model.requires_grad_(True)
    curve, window, start = [], [], time.perf_counter()
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        ids, attn, answer, t = batcher.next()
        loss = diffusion_loss(model, ids, attn, answer, t, gen, cfg.loss_weighting)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        window.append(float(loss.detach()))
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
            curve.append({"step": step + 1, "loss": sum(window) / len(window),
                          "seconds": round(time.perf_counter() - start, 1)})
            window = []
            if callback is not None:
                with torch.no_grad():
                    extra = callback(step + 1, model)
                if extra is not None:
                    curve[-1]["eval"] = extra
            if progress:
                print(f"step {curve[-1]['step']:5d}  loss {curve[-1]['loss']:.4f}  "
                      f"{curve[-1]['seconds']:.0f}s", file=sys.stderr, flush=True)
    model.requires_grad_(False)
    model.eval()
    return curve


# --------------------------------------------------------------------------- analysis

@torch.no_grad()
def head_ablation(model: nn.Module, tokenizer: Any, examples: list[tasks.Example],
                  **loss_kwargs: Any) -> tuple[float, Tensor]:
    """(clean held-out loss, [L, H] loss with each single head zero-ablated)."""
    from headig.interventions import HeadGate
    from headig.models.family import family_of

    fam = family_of(model)
    base = float(tasks.completion_loss(model, tokenizer, examples, **loss_kwargs))
    table = torch.zeros(fam.n_layers, fam.n_heads, dtype=torch.float64)
    for layer in range(fam.n_layers):
        for head in range(fam.n_heads):
            gates = torch.ones(fam.n_layers, fam.n_heads)
            gates[layer, head] = 0.0
            with HeadGate(model, gates):
                table[layer, head] = float(
                    tasks.completion_loss(model, tokenizer, examples, **loss_kwargs))
    return base, table


def _training_card(cfg: TrainConfig, command: str, curve: list[dict], seconds: float,
                   cpu_seconds: float, acc: dict[str, float], loss: dict[str, float], base: float,
                   table: Tensor, n_params: int, size_bytes: int) -> str:
    lines = [
        "# tiny-dllm: the embedded tiny diffusion LM",
        "",
        "A LLaDA-format masked diffusion LM trained from scratch by `headig.toy.train_tiny` on the",
        "synthetic task mix of `headig.toy.tasks` (copy, reverse, sort, add, count, balanced).",
        "It loads with `headig.load_model` like an official checkpoint.",
        "",
        "## Reproduce",
        "",
        "```",
        command,
        "```",
        "",
        f"Training took {seconds:.0f} s wall-clock, {cpu_seconds:.0f} s of CPU time, on "
        f"{torch.get_num_threads()} torch thread(s) "
        f"(torch {torch.__version__}, Python {platform.python_version()}). Bit-exact weights "
        "need the same torch version and thread count.",
        "",
        "## Model",
        "",
        f"- {cfg.n_layers} layers x {cfg.n_heads} heads = {cfg.n_layers * cfg.n_heads} heads, "
        f"head_dim {cfg.head_dim}, d_model {cfg.n_heads * cfg.head_dim}, "
        f"SwiGLU hidden {cfg.mlp_hidden}, RoPE, RMSNorm, no dropout, untied output.",
        f"- Vocabulary: {len(tasks.vocabulary())} word-level tokens (embedding rows "
        f"{cfg.embedding_size}); `<|mdm_mask|>` is the mask, `<|endoftext|>` ends answers and "
        "pads.",
        f"- {n_params:,} parameters, float32, {size_bytes / 1e6:.2f} MB.",
        "",
        "## Data",
        "",
        f"- `train.jsonl`: {cfg.n_train} examples (equal shares per task), "
        f"`eval.jsonl`: {cfg.n_eval_per_task} distinct held-out prompts per task. The split is by a "
        "hash of the prompt text (`headig.toy.tasks.is_held_out`), so no eval prompt is in train.",
        "",
        "## Training",
        "",
        f"- Config: `{json.dumps(asdict(cfg))}`",
        "- Objective: per row t ~ U(eps, 1]; each answer token (completion plus 0..max_eos "
        "trailing `<|endoftext|>`) is masked with probability t, at least one; prompt tokens "
        "never. Cross-entropy on masked tokens, "
        + ("plain mean over the batch's masked tokens." if cfg.loss_weighting == "mean"
           else "weighted 1/t and divided by the answer length (LLaDA ELBO).")
        + f" A `<|startoftext|>` is prepended with probability {cfg.bos_prob}.",
        "- AdamW (betas 0.9, 0.98), linear warm-up then cosine decay to 5%, gradient clipping.",
        "",
        "Training loss (mean over each logging window):",
        "",
        "| step | loss | seconds |",
        "|---:|---:|---:|",
    ]
    lines += [f"| {c['step']} | {c['loss']:.4f} | {c['seconds']:.0f} |" for c in curve]
    lines += [
        "",
        "## Held-out results",
        "",
        "Accuracy: exact match of diffusion generation with the family's sampler at temperature",
        "0, one step per answer token (all completion tokens masked, the most confident one",
        "revealed per step; `headig.toy.tasks.accuracy`). Loss: masked-diffusion cross-entropy",
        "on completions, mask probabilities 0.15/0.3/0.5/0.7/0.9 x 2 samples, seed 0",
        "(`headig.toy.tasks.completion_loss`).",
        "",
        "| task | accuracy | loss |",
        "|---|---:|---:|",
    ]
    lines += [f"| {t} | {acc[t]:.3f} | {loss[t]:.4f} |" for t in acc]
    inc = table - base
    flat = sorted(((float(inc[i, j]), i, j) for i in range(inc.shape[0])
                   for j in range(inc.shape[1])), reverse=True)
    lines += [
        "",
        "## Single-head zero-ablation",
        "",
        f"Held-out loss with all heads: {base:.4f}. Each cell is the loss increase when that",
        "one head's output is multiplied by 0 (`headig.HeadGate`).",
        "",
        "| layer | " + " | ".join(f"head {j}" for j in range(inc.shape[1])) + " |",
        "|---|" + "---:|" * inc.shape[1],
    ]
    lines += [f"| {i} | " + " | ".join(f"{float(inc[i, j]):+.4f}" for j in range(inc.shape[1]))
              + " |" for i in range(inc.shape[0])]
    top, bottom = flat[0], flat[-1]
    lines += [
        "",
        f"Most important: layer {top[1]} head {top[2]} (+{top[0]:.4f}); least: layer "
        f"{bottom[1]} head {bottom[2]} ({bottom[0]:+.4f}). Ranked increases: "
        + ", ".join(f"{v:.3f}" for v, _, _ in flat) + ".",
        "",
    ]
    return "\n".join(lines)


def run(cfg: TrainConfig, out: str | os.PathLike, *, command: str | None = None,
        progress: bool = True) -> dict[str, Any]:
    """Draw data, train, save the checkpoint + data + card to ``out``; returns the metrics."""
    folder = Path(out)
    torch.manual_seed(cfg.seed)
    train_set, eval_set = tasks.make_splits(cfg.seed, cfg.n_train, cfg.n_eval_per_task)
    tokenizer = build_tokenizer()
    config = llada_config(cfg)
    model = build_model(config, cfg.seed)
    start, cpu_start = time.perf_counter(), time.process_time()
    curve = train(model, tokenizer, train_set, cfg, progress=progress)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    save_checkpoint(model, tokenizer, config, folder)
    tasks.write_jsonl(folder / "train.jsonl", train_set)
    tasks.write_jsonl(folder / "eval.jsonl", eval_set)
    acc = tasks.accuracy(model, tokenizer, eval_set)
    loss = tasks.completion_loss(model, tokenizer, eval_set, per_task=True)
    base, table = head_ablation(model, tokenizer, eval_set)
    n_params = sum(p.numel() for p in model.parameters())
    size = (folder / "model.safetensors").stat().st_size
    command = command or f"python -m headig.toy.train_tiny --out {folder}"
    card = _training_card(cfg, command, curve, seconds, cpu_seconds, acc, loss, base, table,
                          n_params, size)
    (folder / "TRAINING.md").write_text(card)
    metrics = {"config": asdict(cfg), "seconds": seconds, "cpu_seconds": cpu_seconds,
               "curve": curve, "accuracy": acc,
               "loss": loss, "ablation_base": base, "ablation": table.tolist(),
               "threads": torch.get_num_threads(), "torch": torch.__version__}
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m headig.toy.train_tiny",
        description="Train the embedded tiny LLaDA-format diffusion LM on CPU.")
    parser.add_argument("--out", required=True, help="output checkpoint folder")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (fix it for bit-exact reproduction)")
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(getattr(defaults, f.name)),
                            default=getattr(defaults, f.name))
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads {args.threads}: expected a positive integer")
        torch.set_num_threads(args.threads)
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    shown = ["python -m headig.toy.train_tiny", "--out", args.out]
    if args.threads is not None:
        shown += ["--threads", str(args.threads)]
    shown += [f"--{f.name.replace('_', '-')} {getattr(cfg, f.name)}" for f in fields(cfg)
              if getattr(cfg, f.name) != getattr(defaults, f.name)]
    metrics = run(cfg, args.out, command=" ".join(shown))
    acc = ", ".join(f"{k} {v:.3f}" for k, v in metrics["accuracy"].items())
    print(f"trained in {metrics['seconds']:.0f} s; held-out accuracy: {acc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
