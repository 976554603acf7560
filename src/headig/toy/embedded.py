"""The tiny trained diffusion LMs shipped inside the package (no download needed).

``headig/assets/tiny-dllm`` (``name="tiny"``) is an official-format LLaDA checkpoint
(3 layers x 4 heads) trained by :mod:`headig.toy.train_tiny` on the task mix of
:mod:`headig.toy.tasks`; its folder also holds the exact training and held-out data
(``train.jsonl``, ``eval.jsonl``) and a ``TRAINING.md`` card.

``headig/assets/tiny-dllm-long`` (``name="long"``) is the long-context model of
:mod:`headig.toy.long_context` (4 layers x 8 heads, 516-547-token sequences) with its
held-out ``eval.jsonl``, its card, and ``scores/``: HeadIG importance and sparsity
sensitivity precomputed on training draws for ``headig demo`` (see ``scores/README.md``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import torch

__all__ = ["EMBEDDED_MODELS", "EMBEDDED_NAME", "embedded_examples", "embedded_model_path",
           "load_embedded", "load_embedded_long"]

EMBEDDED_NAME = "tiny-dllm"
EMBEDDED_MODELS: dict[str, str] = {"tiny": "tiny-dllm", "long": "tiny-dllm-long"}
_REQUIRED = ("config.json", "model.safetensors", "tokenizer.json")


def _folder_name(name: str) -> str:
    if name in EMBEDDED_MODELS:
        return EMBEDDED_MODELS[name]
    if name in EMBEDDED_MODELS.values():
        return name
    raise ValueError(f"name={name!r}; expected one of {list(EMBEDDED_MODELS)}")


def embedded_model_path(name: str = "tiny") -> Path:
    """Folder of an embedded checkpoint (``"tiny"`` or ``"long"``), also inside a wheel.

    Raises:
        FileNotFoundError: the package was installed without its data files.
    """
    folder = Path(str(resources.files("headig").joinpath("assets", _folder_name(name))))
    missing = [n for n in _REQUIRED if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"the embedded model folder {folder} lacks {missing}; reinstall headig with its "
            "package data (assets/**/*)"
        )
    return folder


def load_embedded(dtype: str | torch.dtype | None = None,
                  device: str | torch.device | None = None, *,
                  name: str = "tiny") -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` of an embedded model (``"tiny"`` or ``"long"``)."""
    from headig.models.loading import load_model

    return load_model(embedded_model_path(name), dtype=dtype, device=device)


def load_embedded_long(dtype: str | torch.dtype | None = None,
                       device: str | torch.device | None = None) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` of the long-context model ``tiny-dllm-long``."""
    return load_embedded(dtype, device, name="long")


def embedded_examples(split: str = "eval", *, name: str = "tiny") -> list:
    """The committed ``eval`` (held-out) or ``train`` examples of an embedded model.

    The long model ships only ``eval`` (its training draws are generated on the fly:
    :func:`headig.toy.long_context.train_batch`).
    """
    if split not in ("eval", "train"):
        raise ValueError(f"split={split!r}; expected 'eval' or 'train'")
    if _folder_name(name) == EMBEDDED_MODELS["long"]:
        from headig.toy import long_context as lc

        if split == "train":
            raise ValueError("tiny-dllm-long ships no train split; draw training examples "
                             "with headig.toy.long_context.train_batch")
        return lc.read_jsonl(embedded_model_path(name) / "eval.jsonl")
    from headig.toy.tasks import read_jsonl

    return read_jsonl(embedded_model_path(name) / f"{split}.jsonl")
