"""The attribution example: a prompt and the completion whose likelihood is scored."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from headig.runtime import fingerprint as _digest

__all__ = ["Example", "fingerprint"]


@dataclass(frozen=True)
class Example:
    """One attribution example: ``prompt`` is context, ``completion`` is what is scored.

    ``id`` defaults to a content hash (``ex-<12 hex>``). ``meta`` holds JSON-friendly
    provenance (source, split, row index, recipe, few-shot ids; ``messages`` for chat
    records, used by ``encode_example(chat_template=True)``).
    """

    prompt: str
    completion: str
    id: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not isinstance(self.completion, str):
            raise TypeError(f"prompt and completion must be str; got {type(self.prompt).__name__} "
                            f"and {type(self.completion).__name__}")
        if not self.completion:
            raise ValueError(f"example {self.id!r} has an empty completion; there is nothing to score")
        if not isinstance(self.id, str):
            raise TypeError(f"id must be a str; got {type(self.id).__name__}")
        if not self.id:
            digest = hashlib.sha256(f"{self.prompt}\x00{self.completion}".encode()).hexdigest()
            object.__setattr__(self, "id", f"ex-{digest[:12]}")
        if not isinstance(self.meta, Mapping):
            raise TypeError(f"meta must be a dict; got {type(self.meta).__name__}")


def fingerprint(examples: Iterable[Example]) -> str:
    """A stable sha256 (hex) of the example texts in order (ids and meta are not included).

    Record it in importance metadata so that results can be matched to their data.
    """
    return _digest((text for ex in examples for text in (ex.prompt, ex.completion)),
                   header=b"headig-examples-v1\n", length_prefix=True)
