"""Shared fixtures: the vendored tiny official-format checkpoints and their golden outputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

# Never let a test reach the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

FIXTURES = Path(__file__).parent / "fixtures"
FAMILIES = ["tiny-llada", "tiny-dream"]


@pytest.fixture(scope="session", autouse=True)
def _deterministic() -> None:
    torch.use_deterministic_algorithms(False)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def fixture_path(name: str) -> Path:
    return FIXTURES / name


@pytest.fixture(scope="session")
def golden():
    cache: dict[str, dict[str, torch.Tensor]] = {}

    def get(name: str) -> dict[str, torch.Tensor]:
        if name not in cache:
            cache[name] = load_file(str(FIXTURES / name / "golden.safetensors"))
        return cache[name]

    return get


@pytest.fixture(scope="session")
def loaded():
    """Session cache of (model, tokenizer) per fixture name, float32 CPU."""
    import headig

    cache: dict[str, tuple] = {}

    def get(name: str):
        if name not in cache:
            cache[name] = headig.load_model(FIXTURES / name)
        return cache[name]

    return get
