"""Head-importance files: safetensors + JSON header (schema 1) and the original ``.pt``.

Loading never unpickles arbitrary objects: headig files are parsed by safetensors, and the
original research pickles are read with ``torch.load(weights_only=True)``, which refuses
anything but tensors and plain containers. Writes are atomic (:func:`headig.runtime.atomic_write`).

A file is refused when its parts disagree with each other, because a consumer reading only
``scores`` would silently act on numbers that are not what ``per_example`` says
(see :func:`check_consistency`).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from headig.importance.value import (
    DEFAULT_FILENAME,
    FORMAT_NAME,
    ORIGINAL_SIGNS,
    POSTPROCESS,
    SCHEMA_VERSION,
    SIGN_CONVENTION,
    HeadImportance,
    OriginalSign,
)
from headig.runtime import atomic_write

__all__ = ["MEAN_RTOL", "check_consistency", "load_importance", "save_importance"]

_HEADER_KEY = "headig"
_ORIGINAL_SUFFIXES = (".pt", ".pth", ".bin")
_ORIGINAL_NAME = "head_importance.pt"

#: Relative tolerance of the scores-vs-per-example mean check. ``per_example`` is stored as
#: float32 (each entry rounded by at most 2**-24 relative) and ``scores`` is the float32
#: rounding of the float64 mean, so an honest file is off by at most about
#: 2**-23 * mean_n |phi(per_example[n])| per head (~1.2e-7 relative). 1e-5 leaves ~80x
#: headroom for other summation orders while still catching any real edit or mismatch.
MEAN_RTOL = 1e-5

_UNSET: Any = object()


def save_importance(imp: HeadImportance, path: str | os.PathLike, *,
                    sidecar: bool = True) -> Path:
    """Write ``imp`` to a ``.safetensors`` file; returns the file path.

    ``path`` is a file ending in ``.safetensors`` or a folder (an existing one, or a
    suffix-less path that is created) that receives ``head_importance.safetensors``. With
    ``sidecar`` a human-readable ``<stem>.json`` (header plus top heads) is written next to
    it; it is never read back. A value whose parts disagree is refused before anything is
    written, so every saved file loads.
    """
    from safetensors.torch import save as st_save

    check_consistency(imp)
    target = Path(path).expanduser()
    if target.is_dir():
        target = target / DEFAULT_FILENAME
    elif target.suffix == ".safetensors":
        target.parent.mkdir(parents=True, exist_ok=True)
    elif target.suffix == "":
        if target.exists() and not target.is_dir():
            raise ValueError(f"{target} exists and is not a folder; pass a folder or a "
                             "path ending in .safetensors")
        target.mkdir(parents=True, exist_ok=True)
        target = target / DEFAULT_FILENAME
    else:
        raise ValueError(f"cannot save to {target}: expected a folder or a path ending in "
                         f".safetensors (got suffix {target.suffix!r})")
    header = imp.header()
    tensors = {"scores": imp.scores}
    if imp.per_example is not None:
        tensors["per_example"] = imp.per_example
    if imp.stderr is not None:
        tensors["stderr"] = imp.stderr
    blob = st_save({k: v.contiguous() for k, v in tensors.items()},
                   metadata={"format": "pt", _HEADER_KEY: json.dumps(header, allow_nan=False)})
    atomic_write(target, blob)
    if sidecar:
        summary = dict(header)
        top = imp.top_k(min(10, len(imp.entries())))
        summary["top_heads"] = [{"layer": layer, "head": h, "score": s} for layer, h, s in top]
        summary["note"] = ("human-readable copy; the .safetensors header is authoritative")
        atomic_write(target.with_suffix(".json"),
                     (json.dumps(summary, indent=2) + "\n").encode("utf-8"))
    return target


def load_importance(path: str | os.PathLike, *, original_sign: OriginalSign | None = None,
                    n_layers: int | None = None) -> HeadImportance:
    """Load a headig ``.safetensors`` file (or a folder holding one) or an original ``.pt``.

    See :meth:`HeadImportance.load` for the arguments.
    """
    file = _resolve_load_path(Path(path).expanduser())
    kind = _sniff(file)
    if kind == "safetensors":
        if original_sign is not None or n_layers is not None:
            raise ValueError(f"{file} is a headig file, which records its own sign and shape; "
                             "original_sign / n_layers apply only to original .pt files")
        return _load_safetensors(file)
    return _load_original(file, original_sign=original_sign, n_layers=n_layers)


def check_consistency(imp: HeadImportance, *, n_examples: Any = _UNSET) -> None:
    """Raise ValueError when ``imp``'s parts disagree.

    With ``per_example`` kept: ``scores`` must equal ``mean_n phi(per_example[n])`` (phi from
    ``meta["postprocess"]``, default "signed") within ``MEAN_RTOL`` relative to
    ``mean_n |phi(per_example[n])|`` per head, and ``meta["n_examples"]`` (when recorded) must
    be the number of rows. ``n_examples`` is a file header's field, which must equal the
    row count (or be null without ``per_example``).
    """
    pe = imp.per_example
    rows = None if pe is None else int(pe.shape[0])
    if n_examples is not _UNSET and n_examples != rows:
        raise ValueError(f"n_examples is {n_examples!r} but per_example has "
                         f"{'no rows (not stored)' if rows is None else f'{rows} rows'}")
    if pe is None:
        return
    meta_n = imp.meta.get("n_examples")
    if meta_n is not None and meta_n != rows:
        raise ValueError(f"meta n_examples is {meta_n!r} but per_example has {rows} rows")
    how = imp.meta.get("postprocess", "signed")
    if how not in POSTPROCESS:
        raise ValueError(f"meta postprocess is {how!r}; expected one of {list(POSTPROCESS)}")
    phi = POSTPROCESS[how](pe.to(torch.float64))
    mean = phi.mean(0)
    tol = MEAN_RTOL * phi.abs().mean(0)
    err = (imp.scores.to(torch.float64) - mean).abs()
    bad = err > tol
    if bool(bad.any()):
        layer, head = (int(v) for v in bad.nonzero()[0])
        raise ValueError(
            f"scores disagree with the mean of per_example ({how}) at {int(bad.sum())} heads, "
            f"first layer {layer} head {head}: score {float(imp.scores[layer, head]):.6g}, "
            f"mean {float(mean[layer, head]):.6g} (tolerance {MEAN_RTOL:g} x mean |per_example| "
            f"= {float(tol[layer, head]):.3g}); the file was edited or assembled from "
            "different runs")


def _resolve_load_path(p: Path) -> Path:
    if p.is_dir():
        for name in (DEFAULT_FILENAME, _ORIGINAL_NAME):
            if (p / name).is_file():
                return p / name
        found = sorted(x.name for x in p.iterdir() if x.suffix in (".safetensors",) + _ORIGINAL_SUFFIXES)
        raise FileNotFoundError(f"{p} is a folder without {DEFAULT_FILENAME} or {_ORIGINAL_NAME}"
                                + (f"; it holds {found}, pass one of them" if found else ""))
    if not p.exists():
        raise FileNotFoundError(f"no importance file at {p}")
    if not p.is_file():
        raise ValueError(f"{p} is not a file; expected a .safetensors or original .pt file")
    return p


def _sniff(file: Path) -> Literal["safetensors", "torch"]:
    with open(file, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{":
        (n,) = struct.unpack("<Q", head[:8])
        if 0 < n <= file.stat().st_size - 8:
            return "safetensors"
    if file.suffix in _ORIGINAL_SUFFIXES:
        return "torch"
    if file.suffix == ".json":
        raise ValueError(f"{file} is a JSON file; the scores live in the .safetensors file next to "
                         "it (the JSON sidecar is a human-readable copy)")
    raise ValueError(f"{file} is neither a safetensors file nor an original .pt/.pth importance "
                     "file")


def _schema_error(file: Path, msg: str) -> ValueError:
    return ValueError(f"{file}: invalid headig importance file: {msg}")


def _load_safetensors(file: Path) -> HeadImportance:
    from safetensors.torch import load as st_load

    data = file.read_bytes()
    try:
        (n,) = struct.unpack("<Q", data[:8])
        raw_header = json.loads(data[8:8 + n])
        tensors = st_load(data)
    except Exception as err:  # corrupt / truncated file
        raise _schema_error(file, f"cannot parse the safetensors container ({err})") from err
    st_meta = raw_header.get("__metadata__") or {}
    if _HEADER_KEY not in st_meta:
        raise _schema_error(file, f"no {_HEADER_KEY!r} entry in the safetensors metadata; expected "
                            "a file written by HeadImportance.save")
    try:
        header = json.loads(st_meta[_HEADER_KEY])
    except json.JSONDecodeError as err:
        raise _schema_error(file, f"the {_HEADER_KEY!r} metadata is not valid JSON ({err})") from err
    if not isinstance(header, dict):
        raise _schema_error(file, f"the {_HEADER_KEY!r} metadata must be a JSON object")
    required = {
        "format": "the string " + repr(FORMAT_NAME),
        "schema_version": f"the integer {SCHEMA_VERSION}",
        "sign_convention": repr(SIGN_CONVENTION),
        "shape": "[n_layers, n_heads]",
        "layers": "a list of attributed layer indices",
        "meta": "a JSON object",
    }
    for key, form in required.items():
        if key not in header:
            raise _schema_error(file, f"missing field {key!r} (expected {form})")
    if header["format"] != FORMAT_NAME:
        raise _schema_error(file, f"field 'format' is {header['format']!r}; expected {FORMAT_NAME!r}")
    version = header["schema_version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _schema_error(file, f"field 'schema_version' is {version!r}; expected the integer "
                            f"{SCHEMA_VERSION}")
    if version > SCHEMA_VERSION:
        raise _schema_error(file, f"schema_version {version} is newer than this headig supports "
                            f"({SCHEMA_VERSION}); upgrade headig")
    if version != SCHEMA_VERSION:
        raise _schema_error(file, f"schema_version {version} is not supported; expected {SCHEMA_VERSION}")
    if header["sign_convention"] != SIGN_CONVENTION:
        raise _schema_error(file, f"field 'sign_convention' is {header['sign_convention']!r}; "
                            f"expected {SIGN_CONVENTION!r} (positive = the head helps)")
    shape = header["shape"]
    if (not isinstance(shape, list) or len(shape) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)):
        raise _schema_error(file, f"field 'shape' is {shape!r}; expected [n_layers, n_heads] "
                            "(two positive integers)")
    if not isinstance(header["layers"], list):
        raise _schema_error(file, f"field 'layers' is {header['layers']!r}; expected a list of ints")
    if not isinstance(header["meta"], dict):
        raise _schema_error(file, "field 'meta' must be a JSON object")
    if "scores" not in tensors:
        raise _schema_error(file, "no 'scores' tensor (expected float32 [n_layers, n_heads])")
    for name, t in tensors.items():
        if name in ("scores", "per_example", "stderr") and t.dtype != torch.float32:
            raise _schema_error(file, f"tensor {name!r} has dtype {t.dtype}; expected float32")
    if list(tensors["scores"].shape) != shape:
        raise _schema_error(file, f"tensor 'scores' has shape {list(tensors['scores'].shape)} but "
                            f"field 'shape' says {shape}")
    try:
        imp = HeadImportance(scores=tensors["scores"], layers=tuple(header["layers"]),
                             meta=header["meta"], per_example=tensors.get("per_example"),
                             stderr=tensors.get("stderr"))
        check_consistency(imp, n_examples=header.get("n_examples"))
    except ValueError as err:
        raise _schema_error(file, str(err)) from err
    return imp


def _plain(value: Any) -> Any:
    """Make original metadata JSON-friendly (tensors -> lists, tuples -> lists, other -> str)."""
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _load_original(file: Path, *, original_sign: OriginalSign | None,
                   n_layers: int | None) -> HeadImportance:
    if original_sign not in ORIGINAL_SIGNS:
        raise ValueError(
            f"{file} is an original head_importance.pt, which does not record its sign; pass "
            "original_sign='loss' for raw files (IG of the loss: negative = important; headig "
            "negates them) or original_sign='helps' for files that were already negated "
            f"('_neg' files). Got original_sign={original_sign!r}")
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if "GLOBAL" in ln or "Unsupported" in ln]
        why = f" ({lines[0]})" if lines else ""
        raise ValueError(f"{file}: refused to load: the pickle holds objects other than tensors and "
                         f"plain containers; it was read with weights_only=True and nothing in it "
                         f"was executed{why}") from err
    except Exception as err:
        raise ValueError(f"{file}: cannot read as an original importance file ({err})") from err
    if not isinstance(obj, Mapping) or "importance_scores" not in obj:
        got = sorted(map(str, obj)) if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(f"{file}: missing field 'importance_scores' (expected "
                         f"{{'importance_scores': {{layer: tensor[H]}}, 'metadata': {{...}}}}); got {got}")
    raw = obj["importance_scores"]
    if not isinstance(raw, Mapping) or not raw:
        raise ValueError(f"{file}: 'importance_scores' must be a non-empty dict "
                         "{layer_index: float tensor[H]}")
    rows: dict[int, Tensor] = {}
    for key, value in raw.items():
        try:
            layer = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"{file}: layer key {key!r} in 'importance_scores' is not an integer") from None
        t = torch.as_tensor(value)
        if t.dim() != 1 or not t.is_floating_point():
            raise ValueError(f"{file}: importance_scores[{key!r}] must be a 1-D float tensor [H]; "
                             f"got {t.dtype} {tuple(t.shape)}")
        if layer < 0 or layer in rows:
            raise ValueError(f"{file}: layer key {key!r} is negative or duplicated")
        rows[layer] = t.to(torch.float32)
    widths = {t.numel() for t in rows.values()}
    if len(widths) != 1:
        raise ValueError(f"{file}: layers have different head counts {sorted(widths)}")
    (n_heads,) = widths
    top = max(rows)
    if n_layers is None:
        n_layers = top + 1
    elif isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers <= top:
        raise ValueError(f"n_layers={n_layers!r} must be an integer > the highest layer in the file ({top})")
    scores = torch.zeros(n_layers, n_heads, dtype=torch.float32)
    for layer, t in rows.items():
        scores[layer] = -t if original_sign == "loss" else t
    meta = {
        "source_format": "original_head_importance_pt",
        "source_file": file.name,
        "original_sign": original_sign,
        "negated": original_sign == "loss",
        "original_metadata": _plain(obj.get("metadata", {})),
    }
    return HeadImportance(scores=scores, layers=tuple(sorted(rows)), meta=meta)
