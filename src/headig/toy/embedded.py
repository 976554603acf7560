"""The tiny trained diffusion LM shipped inside the package (no download needed).

``headig/assets/tiny-dllm`` is an official-format LLaDA checkpoint (3 layers x 4 heads)
trained by :mod:`headig.toy.train_tiny` on the task mix of :mod:`headig.toy.tasks`; its
folder also holds the exact training and held-out data (``train.jsonl``, ``eval.jsonl``)
and a ``TRAINING.md`` card with the command, loss curve, accuracy and head ablations.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import torch

__all__ = ["EMBEDDED_NAME", "embedded_examples", "embedded_model_path", "load_embedded"]

EMBEDDED_NAME = "tiny-dllm"
_REQUIRED = ("config.json", "model.safetensors", "tokenizer.json")


def embedded_model_path() -> Path:
    """Folder of the embedded checkpoint, also inside an installed wheel.

    Raises:
        FileNotFoundError: the package was installed without its data files.
    """
    folder = Path(str(resources.files("headig").joinpath("assets", EMBEDDED_NAME)))
    missing = [name for name in _REQUIRED if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"the embedded model folder {folder} lacks {missing}; reinstall headig with its "
            "package data (assets/**/*)"
        )
    return folder


def load_embedded(dtype: str | torch.dtype | None = None,
                  device: str | torch.device | None = None) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` of the embedded tiny LLaDA-format model via ``load_model``."""
    from headig.models.loading import load_model

    return load_model(embedded_model_path(), dtype=dtype, device=device)


def embedded_examples(split: str = "eval") -> list:
    """The committed ``eval`` (held-out) or ``train`` examples of the embedded model."""
    from headig.toy.tasks import read_jsonl

    if split not in ("eval", "train"):
        raise ValueError(f"split={split!r}; expected 'eval' or 'train'")
    return read_jsonl(embedded_model_path() / f"{split}.jsonl")
