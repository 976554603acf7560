"""Long-context tasks of the second embedded model, ``tiny-dllm-long``.

The first embedded model sees ~15-token sequences, so sparse attention (blocks of 1 token)
and head pruning are tested where nearly every head matters. These tasks give 516-547-token
sequences (33-35 key blocks of 16 tokens) in which a few heads must reach far while the rest
can stay local, which is what budgeted sparse attention and pruning should tell apart.

Every prompt is a long *context*: a stream of filler syllables that follows a fixed local
rule (each syllable is a fixed function of the one before it, except that 10% of them are
replaced by random ones), with 16 key-value pairs ``k v`` (a letter, then a digit; the keys
are distinct; shorter training contexts have fewer) and one needle (a capital letter ``A``..``J``, the only one in the context)
inserted at random places. Three tasks ask different questions about it:

- ``recall`` (multi-query associative recall): ``? k1 .. k16 =`` (every key, shuffled) ->
  the 16 values. Each answer lives in the block of its key, anywhere in the sequence.
- ``needle``: ``? =`` -> the needle. One far block holds it; no key to match.
- ``continue``: ``=`` -> the next 8 filler syllables by the local rule. Only the last
  context token matters.

Texts are space-separated words (the word-level tokenizer of :mod:`headig.train_tiny`)::

    recall: la bo D ki c 7 ... h 2 ... ni ? c h ... =   ->  " 7 2 ..."

Generators are deterministic given a ``random.Random``; the train/eval split is by a hash
of the prompt text (:func:`is_held_out`, 10% held out), so training can draw fresh examples
forever and still never see an evaluation prompt.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from headig.toy.checkpoint import WordVocabulary, save_word_tokenizer, word_tokenizer

LONG_TASKS: tuple[str, ...] = ("recall", "needle", "continue")
KEYS: tuple[str, ...] = tuple("abcdefghijklmnopqrstuvwx")
DIGITS: tuple[str, ...] = tuple("0123456789")
NEEDLES: tuple[str, ...] = tuple("ABCDEFGHIJ")
FILLER: tuple[str, ...] = ("ba", "be", "bi", "bo", "da", "de", "di", "do",
                           "ka", "ke", "ki", "ko", "la", "le", "li", "lo")

BOS, EOS, MASK, UNK = "<|startoftext|>", "<|endoftext|>", "<|mdm_mask|>", "<|unk|>"
SPECIAL_TOKENS: tuple[str, ...] = (EOS, BOS, MASK, UNK)

N_PAIRS = 16          # key-value pairs per context
N_QUERIES = 16        # recall questions at full length (every key, shuffled)
CONTINUE_LEN = 8      # filler syllables to continue
FILLER_NOISE = 0.1    # share of context syllables replaced by random ones
MAX_LENGTH = 1024     # model_max_length of the tokenizer, max_sequence_length of the config
EVAL_CONTEXT = 512    # context tokens of the held-out examples (516-547 tokens in all)
EMBEDDED_LONG_NAME = "tiny-dllm-long"


def vocabulary() -> list[str]:
    """Every token of the long-context model, specials first; the index is the token id."""
    words = [f"{t}:" for t in LONG_TASKS] + ["=", "?"]
    return [*SPECIAL_TOKENS, *words, *KEYS, *DIGITS, *NEEDLES, *FILLER]


def _filler_rule() -> list[int]:
    """The local rule: syllable t+1 = rule[syllable t]; fixed, part of the task definition.

    A random cyclic permutation (one cycle through all syllables), so clean filler never
    gets stuck on a short loop and the previous syllable alone predicts the next.
    """
    rng = random.Random("headig-long-filler-rule")
    order = rng.sample(range(len(FILLER)), len(FILLER))
    rule = [0] * len(FILLER)
    for i, w in enumerate(order):
        rule[w] = order[(i + 1) % len(order)]
    return rule


_RULE = _filler_rule()


def next_filler(prev: str) -> str:
    """The syllable the local rule puts after ``prev``."""
    return FILLER[_RULE[FILLER.index(prev)]]


@dataclass(frozen=True)
class Example:
    """One task instance; ``prompt + completion`` is the full text.

    ``sources`` are the token positions (in the prompt's word list) that hold each
    answer token's information: the value token for recall, the needle for needle, and
    the last context token for continue. They let the card measure where heads look.
    """

    prompt: str
    completion: str
    task: str
    sources: tuple[int, ...] = ()


@dataclass
class _Context:
    words: list[str]
    values: dict[str, int]          # key -> position of its value
    needle: int                     # position of the needle token


def pairs_for(length: int) -> int:
    """Key-value pairs in a context of ``length`` tokens: 16 from 384 tokens on, fewer in
    shorter ones (at least 2), so short training contexts stay mostly filler."""
    return max(2, min(N_PAIRS, length // 24))


def make_context(rng: random.Random, length: int) -> _Context:
    """``length`` context tokens: filler with :func:`pairs_for` pairs and one needle.

    Insertions never touch the last two tokens, so ``continue`` always ends on filler.
    """
    n_pairs = pairs_for(length)
    n_inserted = 2 * n_pairs + 1
    shortest = n_inserted + n_pairs + 3  # one filler gap per inserted item
    if length < shortest:
        raise ValueError(f"context length {length} is too short; expected >= {shortest}")
    n_filler = length - n_inserted
    stream = [rng.choice(FILLER), rng.choice(FILLER)]
    while len(stream) < n_filler:
        stream.append(next_filler(stream[-1]))
    noisy = [rng.choice(FILLER) if i < n_filler - 2 and rng.random() < FILLER_NOISE else w
             for i, w in enumerate(stream)]
    # choose insertion slots among the first n_filler - 2 gaps, one item per slot
    items: list[list[str]] = [[k, rng.choice(DIGITS)] for k in rng.sample(KEYS, n_pairs)]
    items.append([rng.choice(NEEDLES)])
    rng.shuffle(items)
    slots = sorted(rng.sample(range(n_filler - 1), len(items)))
    words: list[str] = []
    values: dict[str, int] = {}
    needle = -1
    it = iter(zip(slots, items))
    nxt = next(it, None)
    for i, w in enumerate(noisy):
        while nxt is not None and nxt[0] == i:
            item = nxt[1]
            if item[0] in NEEDLES:
                needle = len(words)
            else:
                values[item[0]] = len(words) + 1
            words.extend(item)
            nxt = next(it, None)
        words.append(w)
    return _Context(words, values, needle)


def _assemble(task: str, ctx: _Context, tail: Sequence[str], answer: Sequence[str],
              sources: Sequence[int]) -> Example:
    offset = 1  # the task header word precedes the context
    return Example(f"{task}: {' '.join([*ctx.words, *tail])}", " " + " ".join(answer), task,
                   tuple(offset + s for s in sources))


def gen_recall(rng: random.Random, length: int = EVAL_CONTEXT) -> Example:
    ctx = make_context(rng, length)
    keys = rng.sample(sorted(ctx.values), len(ctx.values))
    answer = [ctx.words[ctx.values[k]] for k in keys]
    return _assemble("recall", ctx, ["?", *keys, "="], answer, [ctx.values[k] for k in keys])


def gen_needle(rng: random.Random, length: int = EVAL_CONTEXT) -> Example:
    ctx = make_context(rng, length)
    return _assemble("needle", ctx, ["?", "="], [ctx.words[ctx.needle]], [ctx.needle])


def gen_continue(rng: random.Random, length: int = EVAL_CONTEXT) -> Example:
    ctx = make_context(rng, length)
    seq = [ctx.words[-1]]
    while len(seq) < 1 + CONTINUE_LEN:
        seq.append(next_filler(seq[-1]))
    last = len(ctx.words) - 1
    return _assemble("continue", ctx, ["="], seq[1:], [last] * CONTINUE_LEN)


GENERATORS: dict[str, Callable[..., Example]] = {
    "recall": gen_recall, "needle": gen_needle, "continue": gen_continue,
}


def reference_answer(prompt: str) -> str:
    """Recompute a prompt's completion from its text alone (checks data and generators)."""
    words = prompt.split()
    task = words[0].rstrip(":")
    if task not in GENERATORS or words[-1] != "=":
        raise ValueError(f"not a long-context prompt: {prompt[:40]!r}...; expected 'TASK: ... ='")
    body = words[1:-1]
    if task == "recall":
        q = body.index("?")
        ctx, keys = body[:q], body[q + 1:]
        out = [ctx[ctx.index(k) + 1] for k in keys]
    elif task == "needle":
        out = [w for w in body if w in NEEDLES]
    else:
        out = [body[-1]]
        while len(out) < 1 + CONTINUE_LEN:
            out.append(next_filler(out[-1]))
        out = out[1:]
    return " " + " ".join(out)


def is_held_out(prompt: str, percent: int = 10) -> bool:
    """Whether a prompt is on the evaluation side of the fixed hash split (10% are)."""
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 100 < percent


def draw(task: str, rng: random.Random, length: int, held_out: bool) -> Example:
    """One example of ``task`` with ``length`` context tokens, on the given split side."""
    if task not in GENERATORS:
        raise ValueError(f"unknown task {task!r}; expected one of {list(LONG_TASKS)}")
    for _ in range(10_000):
        ex = GENERATORS[task](rng, length)
        if is_held_out(ex.prompt) == held_out:
            return ex
    raise RuntimeError(f"could not draw a {task} example on the {held_out=} side")


def train_batch(seed: int, step: int, n: int, length: int) -> list[Example]:
    """The ``n`` training examples of one step: a pure function of (seed, step).

    Tasks cycle recall, needle, continue; every example has ``length`` context tokens.
    Because the batch depends only on its step, a resumed run draws the same data.
    """
    rng = random.Random(f"headig-long-train-{seed}-{step}")
    return [draw(LONG_TASKS[i % len(LONG_TASKS)], rng, length, held_out=False)
            for i in range(n)]


def eval_examples(seed: int = 0, per_task: int = 64, length: int = EVAL_CONTEXT,
                  tasks: Iterable[str] = LONG_TASKS) -> list[Example]:
    """Deterministic held-out examples, ``per_task`` of each task, grouped by task."""
    rng = random.Random(f"headig-long-eval-{seed}")
    return [draw(task, rng, length, held_out=True) for task in tasks for _ in range(per_task)]


def write_jsonl(path: str | os.PathLike, examples: Iterable[Example]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for ex in examples:
            row = asdict(ex)
            row["sources"] = list(ex.sources)
            f.write(json.dumps(row, separators=(",", ":")) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[Example]:
    """Examples written by :func:`write_jsonl` (``sources`` optional)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                out.append(Example(row["prompt"], row["completion"], row["task"],
                                   tuple(row.get("sources", ()))))
    return out


# --------------------------------------------------------------------------- tokenizer

def word_vocabulary() -> WordVocabulary:
    """The long-context vocabulary with its special tokens, as the checkpoint writer takes it."""
    return WordVocabulary(vocabulary(), SPECIAL_TOKENS, bos=BOS, eos=EOS, mask=MASK, unk=UNK,
                          max_length=MAX_LENGTH)


def build_tokenizer() -> Any:
    """A word-level fast tokenizer over :func:`vocabulary` (whitespace split)."""
    return word_tokenizer(word_vocabulary())


def save_tokenizer(tokenizer: Any, out: Path) -> None:
    """tokenizer.json plus configs that transformers 4.x and 5.x both read."""
    save_word_tokenizer(tokenizer, word_vocabulary(), out)


def encode_fast(examples: Sequence[Example]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, completion ids) by direct vocabulary lookup (same ids as the tokenizer)."""
    index = {w: i for i, w in enumerate(vocabulary())}
    return [([index[w] for w in ex.prompt.split()], [index[w] for w in ex.completion.split()])
            for ex in examples]


# --------------------------------------------------------------------------- embedded asset

def embedded_long_path() -> Path:
    """Folder of the embedded long-context checkpoint, also inside an installed wheel."""
    folder = Path(str(resources.files("headig").joinpath("assets", EMBEDDED_LONG_NAME)))
    missing = [n for n in ("config.json", "model.safetensors", "tokenizer.json")
               if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"the embedded model folder {folder} lacks {missing}; "
                                "reinstall headig with its package data (assets/**/*)")
    return folder


def load_embedded_long(dtype: str | torch.dtype | None = None,
                       device: str | torch.device | None = None) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` of ``tiny-dllm-long`` via :func:`headig.load_model`."""
    from headig.models.loading import load_model

    return load_model(embedded_long_path(), dtype=dtype, device=device)


def embedded_long_examples() -> list[Example]:
    """The committed held-out examples of ``tiny-dllm-long`` (``eval.jsonl``)."""
    return read_jsonl(embedded_long_path() / "eval.jsonl")
