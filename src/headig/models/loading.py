"""Load an official LLaDA / Dream checkpoint folder into the native model, no remote code."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from headig.models.family import Family, parse_arch_config, resolve_dtype
from headig.models.modeling import DiffusionLM

_WEIGHT_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]


def resolve_checkpoint_dir(path: str | os.PathLike) -> Path:
    """The local folder of a checkpoint: a folder path, or a hub id already in the local cache."""
    p = Path(path).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise ValueError(f"{p} is a file; expected a checkpoint folder with config.json")
    # Not a folder: treat as a hub id, resolved from the local cache or downloaded.
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:  # pragma: no cover - huggingface_hub ships with transformers
        raise FileNotFoundError(f"checkpoint folder {p} does not exist") from err
    try:
        return Path(snapshot_download(str(path), allow_patterns=_WEIGHT_PATTERNS))
    except Exception as err:
        raise FileNotFoundError(
            f"{path!s} is neither a local checkpoint folder nor a reachable hub id ({err})"
        ) from err


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The folder's ``config.json`` as a dict; ValueError naming the file if it is not one."""
    cfg_file = Path(path) / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"no config.json in {path}; expected an official checkpoint folder")
    try:
        cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{cfg_file} is not valid JSON ({err.msg} at line {err.lineno}, "
                         f"column {err.colno}); expected the checkpoint's config object") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{cfg_file} is not UTF-8 text ({err.reason}); expected the "
                         "checkpoint's JSON config object") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{cfg_file} holds a JSON {type(cfg).__name__}; expected an object "
                         'of config keys such as {"model_type": "llada", "n_heads": 32, ...}')
    return cfg


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / s for s in shards]
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    files = sorted(folder.glob("*.safetensors"))
    files = [f for f in files if f.name != "golden.safetensors"]
    if files:
        return files
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if bins:
        return bins
    raise FileNotFoundError(f"no model weights (*.safetensors or pytorch_model*.bin) in {folder}")


def _iter_tensors(file: Path):
    if file.suffix == ".safetensors":
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                yield key, f.get_tensor(key)
    else:  # weights_only: never unpickles arbitrary objects
        yield from torch.load(file, map_location="cpu", weights_only=True).items()


def load_native_model(path: str | os.PathLike, dtype: str | torch.dtype | None = None,
                      device: str | torch.device | None = None) -> DiffusionLM:
    """Build the native network for a checkpoint folder and load its official weights."""
    folder = resolve_checkpoint_dir(path)
    cfg = read_config(folder)
    spec, arch = parse_arch_config(cfg, str(folder / "config.json"))
    torch_dtype = resolve_dtype(dtype)
    device = torch.device(device) if device is not None else torch.device("cpu")
    with torch.device("meta"):
        model = DiffusionLM(Family(spec=spec, arch=arch, native=True))
    expected = set(model.state_dict())
    state: dict[str, torch.Tensor] = {}
    for file in _weight_files(folder):
        for key, tensor in _iter_tensors(file):
            native = spec.map_weight_name(key)
            if native is None:
                continue
            if native not in expected:
                raise KeyError(f"weight {key!r} maps to {native!r}, which the model does not have")
            if torch_dtype is None:
                torch_dtype = tensor.dtype if tensor.is_floating_point() else torch.float32
            state[native] = tensor.to(device=device, dtype=torch_dtype)
    if arch.extra.get("tie_embeddings") and "lm_head.weight" not in state:
        state["lm_head.weight"] = state["embed.weight"]
    missing = sorted(expected - set(state))
    if missing:
        raise KeyError(f"checkpoint {folder} lacks weights for {missing[:8]}{'...' if len(missing) > 8 else ''}")
    model.load_state_dict(state, strict=True, assign=True)
    if arch.extra.get("tie_embeddings"):
        model.lm_head.weight = model.embed.weight
    model.requires_grad_(False)
    model.eval()
    model.name_or_path = str(path)
    return model


def load_tokenizer(path: str | os.PathLike):
    """Load the fast tokenizer from ``tokenizer.json`` even when the config names a remote class."""
    from transformers import PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    folder = resolve_checkpoint_dir(path)
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer.json in {folder}")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tok = PreTrainedTokenizerFast.from_pretrained(str(folder))
    finally:
        hf_logging.set_verbosity(verbosity)
    template = folder / "chat_template.jinja"
    if not getattr(tok, "chat_template", None) and template.is_file():
        tok.chat_template = template.read_text()
    return tok


def load_model(path: str | os.PathLike, dtype: str | torch.dtype | None = None,
               device: str | torch.device | None = None, *, tokenizer: bool = True):
    """Load ``(model, tokenizer)`` from an official LLaDA or Dream checkpoint folder.

    Args:
        path: checkpoint folder (config.json, *.safetensors, tokenizer.json) or a hub id
            already in the local cache.
        dtype: "float32", "bfloat16", "float16", a torch dtype, or None (the file's dtype).
        device: where to put the weights ("cpu", "cuda", "cuda:1", ...).
        tokenizer: also load the tokenizer (returns ``(model, None)`` when False).
    """
    model = load_native_model(path, dtype=dtype, device=device)
    return model, (load_tokenizer(path) if tokenizer else None)
