"""Encoding examples into token ids with a known prompt/completion boundary."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from headig.data.examples import Example

__all__ = ["EncodedExample", "EncodingReport", "ExampleDropped", "encode_example",
           "encode_examples"]


@dataclass(frozen=True, eq=False)
class EncodedExample:
    """Token ids of one example; the completion is positions ``[prompt_length, len(input_ids))``."""

    input_ids: Tensor  # int64 [T]
    prompt_length: int
    id: str
    truncated: bool = False

    @property
    def length(self) -> int:
        return int(self.input_ids.numel())

    @property
    def completion_length(self) -> int:
        return self.length - self.prompt_length

    def completion_mask(self) -> Tensor:
        """Bool [T], True on completion positions."""
        mask = torch.zeros(self.length, dtype=torch.bool)
        mask[self.prompt_length:] = True
        return mask


class ExampleDropped(ValueError):
    """Raised by :func:`encode_example` when an example cannot be encoded within ``max_length``."""

    def __init__(self, example_id: str, reason: str) -> None:
        super().__init__(f"example {example_id!r} dropped: {reason}")
        self.example_id = example_id
        self.reason = reason


@dataclass
class EncodingReport:
    """What :func:`encode_examples` did: ``(id, why)`` for every dropped / truncated example."""

    n_examples: int
    n_kept: int
    dropped: list[tuple[str, str]] = field(default_factory=list)
    truncated: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"n_examples": self.n_examples, "n_kept": self.n_kept,
                "dropped": [{"id": i, "reason": r} for i, r in self.dropped],
                "truncated": [{"id": i, "reason": r} for i, r in self.truncated]}

    def __str__(self) -> str:
        lines = [f"{self.n_kept}/{self.n_examples} examples kept, {len(self.truncated)} truncated, "
                 f"{len(self.dropped)} dropped"]
        lines += [f"  dropped {i}: {r}" for i, r in self.dropped]
        lines += [f"  truncated {i}: {r}" for i, r in self.truncated]
        return "\n".join(lines)


def _tokenize(tokenizer: Any, text: str) -> list[int]:
    if not text:
        return []
    return list(tokenizer.encode(text, add_special_tokens=False))


def _encode(tokenizer: Any, example: Example, *, max_length: int, add_bos: bool,
            chat_template: bool, min_prompt_tokens: int) -> tuple[EncodedExample, str | None]:
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length={max_length!r}; expected an integer >= 2")
    if isinstance(min_prompt_tokens, bool) or not isinstance(min_prompt_tokens, int) \
            or min_prompt_tokens < 0:
        raise ValueError(f"min_prompt_tokens={min_prompt_tokens!r}; expected an integer >= 0")
    if chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("chat_template=True but the tokenizer has no chat template; pass "
                             "chat_template=False")
        messages = example.meta.get("messages") or [{"role": "user", "content": example.prompt}]
        text = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True,
                                             tokenize=False)
        prompt_ids = _tokenize(tokenizer, text)
    else:
        prompt_ids = _tokenize(tokenizer, example.prompt)
    completion_ids = _tokenize(tokenizer, example.completion)
    bos = getattr(tokenizer, "bos_token_id", None)
    if add_bos and bos is not None and prompt_ids[:1] != [bos]:
        prompt_ids = [bos] + prompt_ids
    n_head = 1 if bos is not None and prompt_ids[:1] == [bos] else 0  # the BOS survives cuts
    body = prompt_ids[n_head:]
    n_p, n_c = len(body), len(completion_ids)
    if n_c == 0:
        raise ExampleDropped(example.id, "the completion encodes to no tokens")
    room = max_length - n_head
    reason = None
    if n_p + n_c <= room:
        keep_p, keep_c = n_p, n_c
    else:
        keep_p = min(n_p, max(min(n_p, min_prompt_tokens), room - n_c))
        keep_c = min(n_c, room - keep_p)
        if n_p > 0 and keep_p == 0:
            raise ExampleDropped(example.id, f"nothing of the prompt would remain: the completion has "
                                 f"{n_c} tokens and max_length is {max_length} "
                                 "(min_prompt_tokens=0)")
        if keep_c < 1:
            raise ExampleDropped(example.id, f"no room for the completion: min_prompt_tokens="
                                 f"{min_prompt_tokens} fills max_length={max_length}")
        parts = []
        if keep_p < n_p:
            parts.append(f"prompt cut from the left: kept {keep_p} of {n_p} prompt tokens")
        if keep_c < n_c:
            parts.append(f"completion cut at the end: kept {keep_c} of {n_c} completion tokens")
        reason = "; ".join(parts) + f" (max_length={max_length})"
    ids = prompt_ids[:n_head] + body[n_p - keep_p:] + completion_ids[:keep_c]
    enc = EncodedExample(input_ids=torch.tensor(ids, dtype=torch.long),
                         prompt_length=n_head + keep_p, id=example.id, truncated=reason is not None)
    return enc, reason


def encode_example(tokenizer: Any, example: Example, *, max_length: int = 2048,
                   add_bos: bool = True, chat_template: bool = False,
                   min_prompt_tokens: int = 1) -> EncodedExample:
    """Token ids of ``example`` with the prompt/completion boundary at ``prompt_length``.

    Prompt and completion are tokenized separately (``add_special_tokens=False``) so
    completion tokens never merge with the prompt. A BOS is prepended when ``add_bos`` and
    the tokenizer has one (not twice when a chat template already starts with it). With
    ``chat_template`` the prompt (or ``example.meta["messages"]`` for chat records) is
    rendered as user turn(s) with ``add_generation_prompt=True``.

    Truncation to ``max_length`` keeps the completion: the prompt is cut from the left (the
    BOS stays). When the completion would leave fewer than ``min_prompt_tokens`` prompt
    tokens, the completion is cut at its end instead so that ``min(prompt tokens,
    min_prompt_tokens)`` of them remain. With ``min_prompt_tokens=0`` an example whose
    completion fills the window is dropped (nothing of its prompt would remain). Raises
    :class:`ExampleDropped` when an example cannot be encoded.
    """
    return _encode(tokenizer, example, max_length=max_length, add_bos=add_bos,
                   chat_template=chat_template, min_prompt_tokens=min_prompt_tokens)[0]


def encode_examples(tokenizer: Any, examples: Iterable[Example], *, max_length: int = 2048,
                    add_bos: bool = True, chat_template: bool = False,
                    min_prompt_tokens: int = 1) -> tuple[list[EncodedExample], EncodingReport]:
    """Encode many examples (as :func:`encode_example`); dropped ones are left out and reported."""
    items = list(examples)
    seen: set[str] = set()
    for ex in items:
        if not isinstance(ex, Example):
            raise TypeError(f"encode_examples expects Example objects; got {type(ex).__name__}")
        if ex.id in seen:
            raise ValueError(f"duplicate example id {ex.id!r}; ids must be unique")
        seen.add(ex.id)
    encoded: list[EncodedExample] = []
    report = EncodingReport(n_examples=len(items), n_kept=0)
    for ex in items:
        try:
            enc, why = _encode(tokenizer, ex, max_length=max_length, add_bos=add_bos,
                               chat_template=chat_template, min_prompt_tokens=min_prompt_tokens)
        except ExampleDropped as drop:
            report.dropped.append((ex.id, drop.reason))
            continue
        if why is not None:
            report.truncated.append((ex.id, why))
        encoded.append(enc)
    report.n_kept = len(encoded)
    return encoded, report
