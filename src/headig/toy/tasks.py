"""The synthetic prompt→answer task mix of the embedded tiny diffusion LM.

Six small algorithmic tasks over a word-level vocabulary of letters, digits and brackets.
They need different attention patterns (copy a position, mirror a position, compare all
letters, align digits, match and count a query letter, match nested brackets), so the
heads of a small model specialise and matter unequally, which is what the causal checks
of headig need.

Every example is a prompt ending in ``=`` and a completion starting with a space, so
``prompt + completion`` is the full text and the two tokenize independently::

    reverse: a b c d =        ->  " d c b a"
    add: 4 7 + 3 5 =          ->  " 0 8 2"

Generators are deterministic given a seed. :func:`make_splits` splits by a hash of the
prompt text, so no evaluation prompt can appear in training. The evaluator
(:func:`mask_predict`, :func:`accuracy`) decodes with the family's own diffusion sampler
(:func:`headig.diffusion.generation.generate_completions`, the decoder the causal checks
use): all completion tokens start masked and, at temperature 0 with one step per token,
the LLaDA sampler reveals the most confident one at each step.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from headig.diffusion.alignment import align_logits
from headig.diffusion.generation import generate_completions
from headig.diffusion.loss import masked_row_loss, token_ce
from headig.diffusion.masking import sample_variant_masks

__all__ = [
    "BOS", "DIGITS", "EOS", "GENERATORS", "LETTERS", "MASK", "SPECIAL_TOKENS", "TASKS", "UNK",
    "Example", "accuracy", "completion_loss", "encode", "gen_add", "gen_balanced", "gen_copy",
    "gen_count", "gen_reverse", "gen_sort", "is_held_out", "make_splits", "mask_predict",
    "masking_variants", "pad_right", "read_jsonl", "reference_answer", "subset", "vocabulary",
    "write_jsonl",
]

TASKS: tuple[str, ...] = ("copy", "reverse", "sort", "add", "count", "balanced")
LETTERS: tuple[str, ...] = tuple("abcdefgh")
DIGITS: tuple[str, ...] = tuple("0123456789")

# Special tokens, in the LLaDA convention: <|endoftext|> ends answers and pads batches.
BOS, EOS, MASK, UNK = "<|startoftext|>", "<|endoftext|>", "<|mdm_mask|>", "<|unk|>"
SPECIAL_TOKENS: tuple[str, ...] = (EOS, BOS, MASK, UNK)


def vocabulary() -> list[str]:
    """Every token of the tiny model, specials first; the list index is the token id."""
    words = [f"{t}:" for t in TASKS] + ["=", "+", "?", "(", ")", "[", "]", "yes", "no"]
    return [*SPECIAL_TOKENS, *words, *LETTERS, *DIGITS]


@dataclass(frozen=True)
class Example:
    """One task instance; ``prompt + completion`` is the full text."""

    prompt: str
    completion: str
    task: str


def _letters(rng: random.Random, lo: int = 3, hi: int = 6) -> list[str]:
    return [rng.choice(LETTERS) for _ in range(rng.randint(lo, hi))]


def _example(task: str, body: Sequence[str], answer: Sequence[str]) -> Example:
    return Example(f"{task}: {' '.join(body)} =", " " + " ".join(answer), task)


def gen_copy(rng: random.Random) -> Example:
    xs = _letters(rng)
    return _example("copy", xs, xs)


def gen_reverse(rng: random.Random) -> Example:
    xs = _letters(rng)
    return _example("reverse", xs, xs[::-1])


def gen_sort(rng: random.Random) -> Example:
    xs = _letters(rng)
    return _example("sort", xs, sorted(xs))


def gen_add(rng: random.Random) -> Example:
    """Two two-digit numbers (leading zeros) and their three-digit sum."""
    a, b = rng.randrange(100), rng.randrange(100)
    return _example("add", [*f"{a:02d}", "+", *f"{b:02d}"], list(f"{a + b:03d}"))


def gen_count(rng: random.Random) -> Example:
    """How often the query letter occurs in 4..8 letters from a..e (0 a fifth of the time)."""
    xs = [rng.choice(LETTERS[:5]) for _ in range(rng.randint(4, 8))]
    if rng.random() < 0.2:
        query = rng.choice([x for x in LETTERS if x not in xs])
    else:
        query = rng.choice(xs)
    return _example("count", [*xs, "?", query], [str(xs.count(query))])


_PAIRS = {")": "(", "]": "["}


def _is_balanced(xs: Sequence[str]) -> bool:
    """Every closing bracket matches the innermost open one, and all are closed."""
    stack: list[str] = []
    for x in xs:
        if x in _PAIRS:
            if not stack or stack.pop() != _PAIRS[x]:
                return False
        else:
            stack.append(x)
    return not stack


def _dyck(rng: random.Random, n: int) -> list[str]:
    """A random balanced string of length n over two bracket types."""
    xs: list[str] = []
    stack: list[str] = []
    opens = n // 2
    for i in range(n):
        if opens and (not stack or (len(stack) < n - i - 1 and rng.random() < 0.5)):
            stack.append(rng.choice("(["))
            xs.append(stack[-1])
            opens -= 1
        else:
            xs.append(")" if stack.pop() == "(" else "]")
    return xs


def gen_balanced(rng: random.Random) -> Example:
    """Bracket matching over ( ) [ ], even length 4..10; balanced half of the time.

    Negatives are shuffles of a balanced string (same brackets, so counting alone
    cannot answer) or one bracket flipped to the other type.
    """
    n = 2 * rng.randint(2, 5)
    xs = _dyck(rng, n)
    if rng.random() < 0.5:
        while _is_balanced(xs):
            if rng.random() < 0.5:
                rng.shuffle(xs)
            else:
                j = rng.randrange(n)
                xs[j] = {"(": "[", "[": "(", ")": "]", "]": ")"}[xs[j]]
    return _example("balanced", xs, ["yes" if _is_balanced(xs) else "no"])


GENERATORS: dict[str, Callable[[random.Random], Example]] = {
    "copy": gen_copy, "reverse": gen_reverse, "sort": gen_sort,
    "add": gen_add, "count": gen_count, "balanced": gen_balanced,
}


def _check_tasks(tasks: Iterable[str] | None) -> list[str]:
    chosen = list(TASKS if tasks is None else tasks)
    unknown = [t for t in chosen if t not in GENERATORS]
    if unknown or not chosen:
        raise ValueError(f"unknown or empty tasks {unknown or chosen}; expected a subset of {list(TASKS)}")
    return chosen


def reference_answer(prompt: str) -> str:
    """Recompute the completion of a prompt from its text (checks the data, the generators)."""
    head, _, rest = prompt.partition(" ")
    task = head.rstrip(":")
    if task not in GENERATORS or not prompt.endswith(" ="):
        raise ValueError(f"not a task prompt: {prompt!r}; expected 'TASK: ... ='")
    body = rest[: -len(" =")].split()
    if task == "copy":
        out = body
    elif task == "reverse":
        out = body[::-1]
    elif task == "sort":
        out = sorted(body)
    elif task == "add":
        a, b = int("".join(body[:2])), int("".join(body[3:5]))
        out = list(f"{a + b:03d}")
    elif task == "count":
        out = [str(body[:-2].count(body[-1]))]
    else:
        out = ["yes" if _is_balanced(body) else "no"]
    return " " + " ".join(out)


def is_held_out(prompt: str, percent: int = 10) -> bool:
    """Whether a prompt belongs to the evaluation side of the fixed hash split.

    A prompt's side depends only on its text, so no generator seed or sample size can
    leak an evaluation prompt into training, and small task spaces keep most of their
    prompts for training.
    """
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 100 < percent


def make_splits(seed: int = 0, n_train: int = 24000, n_eval_per_task: int = 100,
                tasks: Iterable[str] | None = None) -> tuple[list[Example], list[Example]]:
    """Deterministic (train, eval) lists, disjoint by :func:`is_held_out`.

    The evaluation set has ``n_eval_per_task`` distinct held-out prompts per task; the
    training set cycles through the tasks (equal shares) and keeps only the other
    prompts (they may repeat: short strings have few distinct values).
    """
    chosen = _check_tasks(tasks)
    if n_train < 0 or n_eval_per_task < 1:
        raise ValueError(f"n_train={n_train}, n_eval_per_task={n_eval_per_task}; expected "
                         "n_train >= 0 and n_eval_per_task >= 1")
    rng = random.Random(f"headig-tasks-{seed}")
    held_out: list[Example] = []
    for task in chosen:
        seen: set[str] = set()
        tries = 0
        while len(seen) < n_eval_per_task:
            tries += 1
            if tries > 1000 * n_eval_per_task:
                raise RuntimeError(f"could not draw {n_eval_per_task} distinct {task} prompts")
            ex = GENERATORS[task](rng)
            if is_held_out(ex.prompt) and ex.prompt not in seen:
                seen.add(ex.prompt)
                held_out.append(ex)
    train: list[Example] = []
    i = 0
    while len(train) < n_train:
        ex = GENERATORS[chosen[i % len(chosen)]](rng)
        if not is_held_out(ex.prompt):
            train.append(ex)
            i += 1
    return train, held_out


def write_jsonl(path: str | os.PathLike, examples: Iterable[Example]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps(asdict(ex), separators=(",", ":")) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[Example]:
    """Read examples with the fields prompt, completion, task (one JSON object a line)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            missing = {"prompt", "completion", "task"} - set(row)
            if missing:
                raise ValueError(f"{path}:{n} lacks fields {sorted(missing)}; expected "
                                 "prompt, completion, task")
            out.append(Example(row["prompt"], row["completion"], row["task"]))
    return out


# --------------------------------------------------------------------------- encoding

def encode(tokenizer: Any, examples: Sequence[Example]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, completion ids) per example, without special tokens."""
    if not examples:
        return []
    prompts = tokenizer([e.prompt for e in examples], add_special_tokens=False)["input_ids"]
    comps = tokenizer([e.completion for e in examples], add_special_tokens=False)["input_ids"]
    for ex, c in zip(examples, comps):
        if not c:
            raise ValueError(f"empty completion for prompt {ex.prompt!r}")
    return list(zip(prompts, comps))


def pad_right(rows: Sequence[Sequence[int]], pad_id: int,
              device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Right-pad id lists to ``ids`` [B, T] and a padding ``attention_mask`` [B, T]."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        attn[i, : len(r)] = 1
    return ids.to(device), attn.to(device)


def _ids(model: nn.Module, tokenizer: Any) -> tuple[int, int, int | None]:
    from headig.models.family import family_of

    fam = family_of(model)
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = fam.arch.pad_token_id if fam.arch.pad_token_id is not None else fam.arch.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer and the config name no pad/eos token to pad batches with")
    return fam.mask_token_id, int(pad), fam.logit_shift


def _aligned_logits(model: nn.Module, ids: Tensor, attn: Tensor, shift: int) -> Tensor:
    return align_logits(model(ids, attention_mask=attn).logits, shift).float()


# --------------------------------------------------------------------------- decoding

@torch.no_grad()
def mask_predict(model: nn.Module, tokenizer: Any, prompts: Sequence[Sequence[int]],
                 lengths: Sequence[int], *, add_bos: bool = False, batch_size: int = 128,
                 seed: int = 0) -> list[list[int]]:
    """Decode ``lengths[i]`` tokens after each prompt with the family's diffusion sampler.

    All answer positions start as the mask token and are denoised by
    :func:`headig.diffusion.generation.generate_completions` at temperature 0 with one
    step per answer token (LLaDA: the most confident masked position is revealed per
    step, as its argmax), exactly as the causal checks decode. ``seed`` seeds the
    sampler's generator (only stochastic samplers, e.g. Dream's ``origin``, use it).
    Returns the answer ids per row.
    """
    _, pad_id, _ = _ids(model, tokenizer)
    bos = [tokenizer.bos_token_id] if add_bos else []
    return generate_completions(model, [[*bos, *p] for p in prompts], lengths, pad_id=pad_id,
                                batch_size=batch_size,
                                generator=torch.Generator().manual_seed(int(seed)))


def accuracy(model: nn.Module, tokenizer: Any, examples: Sequence[Example], *,
             add_bos: bool = False, batch_size: int = 128, seed: int = 0) -> dict[str, float]:
    """Exact-match accuracy of :func:`mask_predict` per task, plus ``"all"`` (example mean).

    The answer length is the reference completion's length (only the completion is
    masked, as in the masked-diffusion evaluation).
    """
    if not examples:
        raise ValueError("no examples to score")
    pairs = encode(tokenizer, examples)
    preds = mask_predict(model, tokenizer, [p for p, _ in pairs], [len(c) for _, c in pairs],
                         add_bos=add_bos, batch_size=batch_size, seed=seed)
    hits: dict[str, list[bool]] = defaultdict(list)
    for ex, (_, gold), pred in zip(examples, pairs, preds):
        hits[ex.task].append(pred == gold)
    result = {task: sum(h) / len(h) for task, h in sorted(hits.items())}
    result["all"] = sum(sum(h) for h in hits.values()) / len(examples)
    return result


# --------------------------------------------------------------------------- loss

def masking_variants(pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
                     mask_probs: Sequence[float] = (0.15, 0.3, 0.5, 0.7, 0.9),
                     samples_per_prob: int = 2, seed: int = 0,
                     ) -> list[tuple[int, list[int], list[bool]]]:
    """Masked completion variants: (example index, ids with masks to fill, mask flags).

    For each probability p and sample, each completion token is masked with probability
    p, at least one always; prompt tokens never are. The flags cover prompt+completion.
    Token ids in the result are the *clean* ids; the caller substitutes the mask id.

    The draws are the attribution objective's own sampler
    (:func:`headig.diffusion.masking.sample_variant_masks`), keyed by the example's token
    ids, so an example's masks do not depend on the examples around it.
    """
    if not mask_probs or any(not 0.0 < p <= 1.0 for p in mask_probs) or samples_per_prob < 1:
        raise ValueError(f"mask_probs={list(mask_probs)} must be non-empty values in (0, 1] and "
                         f"samples_per_prob={samples_per_prob} >= 1")
    out = []
    for i, (prompt, comp) in enumerate(pairs):
        flags = torch.zeros(len(prompt) + len(comp), dtype=torch.bool)
        flags[len(prompt):] = True
        masks = sample_variant_masks(flags, example_id=(tuple(prompt), tuple(comp)),
                                     seed=int(seed), mask_probs=tuple(mask_probs),
                                     samples_per_prob=int(samples_per_prob))
        out.extend((i, [*prompt, *comp], m.tolist()) for m in masks)
    return out


@torch.no_grad()
def completion_loss(model: nn.Module, tokenizer: Any, examples: Sequence[Example], *,
                    mask_probs: Sequence[float] = (0.15, 0.3, 0.5, 0.7, 0.9),
                    samples_per_prob: int = 2, seed: int = 0, batch_size: int = 512,
                    per_task: bool = False) -> float | dict[str, float]:
    """Held-out masked-diffusion loss: cross-entropy on masked completion tokens.

    Each variant's loss is the mean over its masked tokens, an example's loss the mean
    over its variants, and the result the mean over examples (the ``mean_masked`` rule
    of the original attribution method). With ``per_task`` a dict per task plus ``"all"``.
    """
    if not examples:
        raise ValueError("no examples to score")
    mask_id, pad_id, shift = _ids(model, tokenizer)
    device = next(model.parameters()).device
    variants = masking_variants(encode(tokenizer, examples), mask_probs, samples_per_prob, seed)
    per_example = torch.zeros(len(examples), dtype=torch.float64)
    for start in range(0, len(variants), batch_size):
        chunk = variants[start: start + batch_size]
        clean, attn = pad_right([v[1] for v in chunk], pad_id, device)
        flags, _ = pad_right([[int(f) for f in v[2]] for v in chunk], 0, device)
        flags = flags.bool()
        ids = clean.masked_fill(flags, mask_id)
        logits = _aligned_logits(model, ids, attn, shift)
        ce = token_ce(logits[flags], clean[flags])
        variant_loss = masked_row_loss(ce, flags, "mean_masked").double().cpu()
        index = torch.tensor([v[0] for v in chunk])
        per_example.index_add_(0, index, variant_loss)
    per_example /= len(mask_probs) * samples_per_prob
    if not per_task:
        return float(per_example.mean())
    by_task: dict[str, list[float]] = defaultdict(list)
    for ex, v in zip(examples, per_example.tolist()):
        by_task[ex.task].append(v)
    result = {t: sum(v) / len(v) for t, v in sorted(by_task.items())}
    result["all"] = float(per_example.mean())
    return result


def subset(examples: Sequence[Example], per_task: int) -> list[Example]:
    """The first ``per_task`` examples of each task, in the original order."""
    counts: dict[str, int] = defaultdict(int)
    out = []
    for ex in examples:
        if counts[ex.task] < per_task:
            counts[ex.task] += 1
            out.append(ex)
    return out
