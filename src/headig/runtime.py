"""Small process-level utilities shared by the library, the CLI and the lm-eval adapter.

Each helper exists once so that every caller gets the same guarantees:

- **Files**: :func:`atomic_write` / :func:`atomic_path` write to a temporary file in the
  target's folder and ``os.replace`` it into place, so a crash never leaves a half-written
  file and an existing file survives a failed write.
- **Fingerprints**: :func:`fingerprint` (sha256 over strings, bytes and tensors),
  :func:`json_digest` (sha256 of canonical JSON), :func:`file_digest` and
  :func:`stable_seed`. They are byte-for-byte the digests headig has always recorded in
  checkpoints, importance metadata and the lm-eval cache key, so old records still match.
- **Distributed**: :func:`dist_info` (rank/world of the initialised process group),
  :func:`env_dist_info` (rank/world/local rank from the torchrun/accelerate environment)
  and :func:`init_process_group`.
- **Progress**: :func:`progress_bar`, one tqdm factory; a disabled bar is still a bar, so
  callers never branch on ``None``.

This module imports only the standard library, numpy and torch (tqdm lazily); any headig
module may use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "atomic_path", "atomic_write", "dist_info", "env_dist_info", "file_digest",
    "fingerprint", "init_process_group", "json_digest", "progress_bar", "stable_seed",
]

PathLike = str | os.PathLike[str]
HashPart = str | bytes | torch.Tensor | np.ndarray


# ----------------------------------------------------------------------------- files


@contextlib.contextmanager
def atomic_path(target: PathLike, *, make_parents: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success move it onto ``target``.

    For writers that need a file name (``safetensors.torch.save_file``, ``torch.save``).
    The temporary file lives in the same folder so ``os.replace`` is atomic; on any error it
    is removed and ``target`` is left untouched.
    """
    target = Path(target)
    if make_parents:
        target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=str(target.parent), prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write(target: PathLike, data: bytes | str, *, make_parents: bool = False,
                 fsync: bool = True) -> Path:
    """Write ``data`` (``str`` is UTF-8 encoded) to ``target`` atomically; return the path.

    The data is flushed and fsync'ed before the rename so that the new name never points at
    a file whose contents are still only in the page cache.
    """
    target = Path(target)
    if isinstance(data, str):
        data = data.encode("utf-8")
    with atomic_path(target, make_parents=make_parents) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
    return target


# ----------------------------------------------------------------------------- fingerprints


def _as_bytes(part: HashPart) -> bytes:
    if isinstance(part, bytes):
        return part
    if isinstance(part, str):
        return part.encode("utf-8")
    if isinstance(part, torch.Tensor):
        return part.detach().cpu().numpy().tobytes()
    if isinstance(part, np.ndarray):
        return part.tobytes()
    raise TypeError(f"cannot fingerprint a {type(part).__name__}; expected str, bytes, "
                    "a tensor or a numpy array")


def fingerprint(parts: Iterable[HashPart], *, header: bytes = b"", length_prefix: bool = False,
                n_hex: int | None = None) -> str:
    """sha256 (hex) over ``parts`` in order: strings as UTF-8, tensors/arrays as raw bytes.

    ``header`` versions the scheme; ``length_prefix`` puts each part's byte length (8 bytes,
    little endian) before it, which makes the encoding unambiguous (``"ab","c"`` differs
    from ``"a","bc"``). ``n_hex`` truncates the hex digest.
    """
    h = hashlib.sha256(header)
    for part in parts:
        b = _as_bytes(part)
        if length_prefix:
            h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    out = h.hexdigest()
    return out if n_hex is None else out[:n_hex]


def json_digest(obj: Any, *, n_hex: int | None = None) -> str:
    """sha256 (hex) of ``json.dumps(obj, sort_keys=True, default=str)``.

    Key order never matters; non-JSON values hash as their ``str``.
    """
    out = hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
    return out if n_hex is None else out[:n_hex]


def file_digest(path: PathLike, chunk: int = 1 << 20) -> str:
    """sha256 (hex) of a file's bytes, read in chunks so large files do not fill memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def stable_seed(*parts: Any) -> int:
    """A 63-bit seed from JSON-able parts; the same on every machine, process and run
    (unlike ``hash()``, which Python salts per process)."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


# ----------------------------------------------------------------------------- distributed


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised default process group, else ``(0, 1)``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def env_dist_info() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the torchrun / accelerate environment.

    Readable before any process group exists (to pick a device first). ``LOCAL_RANK``
    defaults to ``RANK`` (single node).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return rank, world, local


def init_process_group(device: str | torch.device) -> bool:
    """Create the default process group (env:// rendezvous) unless one exists.

    NCCL for a CUDA ``device`` (made the current device first, as NCCL requires), gloo
    otherwise. Returns True when this call created the group, so the caller knows it owns
    it and must ``destroy_process_group()`` when done.
    """
    if torch.distributed.is_initialized():
        return False
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return True


# ----------------------------------------------------------------------------- progress


def progress_bar(total: int, desc: str, *, enabled: bool = True, unit: str = "it",
                 initial: int = 0, leave: bool = True) -> Any:
    """A tqdm bar (notebook-aware); when ``enabled`` is False a disabled bar, which
    accepts ``update``/``close`` and prints nothing, so callers need no ``None`` checks.

    Pass ``enabled=show and rank == 0`` under data parallelism so one process reports.
    """
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, initial=initial, leave=leave,
                disable=not enabled)
