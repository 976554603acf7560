"""Head importance scores as a value: validated, saved safely, loaded safely, compared.

A :class:`HeadImportance` holds one score per attention head, ``scores[layer, head]``, over
all layers of the model. The sign convention is fixed: a positive score means the head
*helps* (the attribution is of J = -loss). Only the rows listed in ``layers`` were
attributed; the other rows are zero and must be ignored by consumers.

Files are ``.safetensors`` with the JSON description in the safetensors header, so loading
never unpickles anything. The original research format (``head_importance.pt``, a torch
pickle of IG of the *loss*) is read with ``torch.load(weights_only=True)`` and an explicit
sign flag. See ``docs/importance-files.md``.
"""

from __future__ import annotations

import json
import math
import operator
import os
import pickle
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from headig.runtime import atomic_write

__all__ = [
    "DEFAULT_FILENAME", "FORMAT_NAME", "SCHEMA_VERSION", "SIGN_CONVENTION", "HeadImportance",
    "combine", "compare",
]

FORMAT_NAME = "headig.head_importance"
SCHEMA_VERSION = 1
SIGN_CONVENTION = "positive_helps"
DEFAULT_FILENAME = "head_importance.safetensors"
_HEADER_KEY = "headig"
_ORIGINAL_SUFFIXES = (".pt", ".pth", ".bin")
_ORIGINAL_NAME = "head_importance.pt"

OriginalSign = Literal["loss", "helps"]


def _json_normalise(meta: Any, what: str = "meta") -> dict[str, Any]:
    """Return a JSON round-tripped copy of ``meta`` so that saving and loading give it back."""
    if not isinstance(meta, Mapping):
        raise ValueError(f"{what} must be a dict of JSON-serialisable values; got {type(meta).__name__}")
    try:
        return json.loads(json.dumps(dict(meta), allow_nan=False))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must hold only JSON-serialisable values (str, int, finite float, "
                         f"bool, None, list, dict with str keys): {err}") from err


def _as_float_tensor(x: Any, name: str) -> Tensor:
    t = torch.as_tensor(x)
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64, torch.bool)):
        raise ValueError(f"{name} must be a real-valued tensor; got dtype {t.dtype}")
    return t.detach().to(device="cpu", dtype=torch.float32).contiguous()


def _check_finite(t: Tensor, name: str) -> None:
    if not torch.isfinite(t).all():
        bad = (~torch.isfinite(t)).nonzero()[:4].tolist()
        raise ValueError(f"{name} contains NaN or inf (first bad indices {bad}); "
                         "importance scores must be finite")


@dataclass(eq=False)
class HeadImportance:
    """Importance of every attention head; positive = the head helps (attribution of J = -loss).

    Attributes:
        scores: float32 [L, H] over all L layers of the model.
        layers: the layers that were attributed (sorted, unique); rows outside are 0 and
            must be ignored. Defaults to all layers.
        meta: JSON-serialisable settings (seeds, model id, data fingerprint, version...).
            Stored as its JSON round trip, so tuples become lists and keys become strings.
        per_example: optional float32 [N, L, H] scores of each example.
        stderr: optional float32 [L, H] standard error of ``scores`` (non-negative).
    """

    scores: Tensor
    layers: tuple[int, ...] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    per_example: Tensor | None = None
    stderr: Tensor | None = None

    def __post_init__(self) -> None:
        scores = _as_float_tensor(self.scores, "scores")
        if scores.dim() != 2:
            raise ValueError(f"scores must be 2-D [n_layers, n_heads]; got shape {tuple(scores.shape)}")
        if scores.shape[0] < 1 or scores.shape[1] < 1:
            raise ValueError(f"scores must have at least one layer and one head; got {tuple(scores.shape)}")
        _check_finite(scores, "scores")
        n_layers = scores.shape[0]
        self.layers = _normalise_layers(self.layers, n_layers)
        outside = [i for i in range(n_layers) if i not in set(self.layers)]
        if outside and scores[outside].abs().sum() != 0:
            raise ValueError(f"scores rows outside the attributed layers {list(self.layers)} must be 0 "
                             f"(non-zero rows among {outside}); pass layers= covering them")
        self.scores = scores
        self.meta = _json_normalise(self.meta)
        if self.per_example is not None:
            pe = _as_float_tensor(self.per_example, "per_example")
            if pe.dim() != 3 or tuple(pe.shape[1:]) != tuple(scores.shape):
                raise ValueError(f"per_example must be [N, L, H] = [N, {n_layers}, {scores.shape[1]}]; "
                                 f"got shape {tuple(pe.shape)}")
            _check_finite(pe, "per_example")
            if outside and pe[:, outside].abs().sum() != 0:
                raise ValueError("per_example rows outside the attributed layers must be 0")
            self.per_example = pe
        if self.stderr is not None:
            se = _as_float_tensor(self.stderr, "stderr")
            if tuple(se.shape) != tuple(scores.shape):
                raise ValueError(f"stderr must have the shape of scores {tuple(scores.shape)}; "
                                 f"got {tuple(se.shape)}")
            _check_finite(se, "stderr")
            if (se < 0).any():
                raise ValueError("stderr must be non-negative")
            self.stderr = se

    # ------------------------------------------------------------------ basics
    @property
    def n_layers(self) -> int:
        return int(self.scores.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.scores.shape[1])

    @property
    def n_examples(self) -> int | None:
        """Number of examples in ``per_example`` (None when per-example scores were not kept)."""
        return None if self.per_example is None else int(self.per_example.shape[0])

    @property
    def layer_mask(self) -> Tensor:
        """Bool [L]: True on attributed layers."""
        mask = torch.zeros(self.n_layers, dtype=torch.bool)
        mask[list(self.layers)] = True
        return mask

    @classmethod
    def from_per_example(cls, per_example: Tensor, layers: Sequence[int] | None = None,
                         meta: Mapping[str, Any] | None = None, *,
                         keep_per_example: bool = True) -> HeadImportance:
        """Mean over examples as ``scores`` and its standard error (std / sqrt(N), ddof=1)."""
        pe = _as_float_tensor(per_example, "per_example")
        if pe.dim() != 3 or pe.shape[0] < 1:
            raise ValueError(f"per_example must be [N, L, H] with N >= 1; got shape {tuple(pe.shape)}")
        pe64 = pe.to(torch.float64)
        scores = pe64.mean(0)
        stderr = (pe64.std(0, unbiased=True) / math.sqrt(pe.shape[0])) if pe.shape[0] > 1 else None
        return cls(scores=scores.float(), layers=None if layers is None else tuple(layers),
                   meta=dict(meta or {}), per_example=pe if keep_per_example else None,
                   stderr=None if stderr is None else stderr.float())

    def entries(self) -> list[tuple[int, int, float]]:
        """(layer, head, score) for every head of the attributed layers, in (layer, head) order."""
        return [(layer, head, float(self.scores[layer, head]))
                for layer in self.layers for head in range(self.n_heads)]

    def top_k(self, k: int, by: Literal["signed", "abs"] = "signed", *,
              largest: bool = True) -> list[tuple[int, int, float]]:
        """The k most important heads as (layer, head, signed score), best first.

        ``by="signed"`` ranks by score (largest = most helpful); ``by="abs"`` by |score|.
        ``largest=False`` gives the k lowest instead. Only attributed layers are ranked;
        ties keep (layer, head) order.
        """
        if by not in ("signed", "abs"):
            raise ValueError(f"by={by!r}; expected 'signed' or 'abs'")
        entries = self.entries()
        kk = _as_int(k)
        if kk is None or not 0 <= kk <= len(entries):
            raise ValueError(f"k={k!r}; expected an integer in [0, {len(entries)}] "
                             "(heads in the attributed layers)")
        sign = -1.0 if largest else 1.0

        def key(e: tuple[int, int, float]) -> float:
            return sign * (abs(e[2]) if by == "abs" else e[2])

        return sorted(entries, key=key)[:kk]  # sorted() is stable: ties keep (layer, head) order

    def layer_head_table(self, precision: int = 3, *, show_all_layers: bool = False) -> str:
        """A plain-text table: one row per layer, one column per head (signed scores).

        Rows of layers that were not attributed are omitted unless ``show_all_layers``,
        which prints them as ``-``.
        """
        fmt = f"{{:+.{int(precision)}g}}"
        rows = range(self.n_layers) if show_all_layers else self.layers
        attributed = set(self.layers)
        cells = [[fmt.format(float(self.scores[r, h])) if r in attributed else "-"
                  for h in range(self.n_heads)] for r in rows]
        header = ["layer"] + [f"h{h}" for h in range(self.n_heads)]
        body = [[str(r)] + c for r, c in zip(rows, cells)]
        widths = [max(len(row[i]) for row in [header] + body) for i in range(len(header))]
        lines = ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in [header] + body]
        return "\n".join(lines)

    def to_dict(self, *, include_scores: bool = True) -> dict[str, Any]:
        """A JSON-friendly summary: schema fields, meta, and (by default) scores / stderr as lists."""
        out: dict[str, Any] = {
            "format": FORMAT_NAME,
            "schema_version": SCHEMA_VERSION,
            "sign_convention": SIGN_CONVENTION,
            "shape": [self.n_layers, self.n_heads],
            "layers": list(self.layers),
            "n_examples": self.n_examples,
            "meta": json.loads(json.dumps(self.meta)),
        }
        if include_scores:
            out["scores"] = self.scores.tolist()
            if self.stderr is not None:
                out["stderr"] = self.stderr.tolist()
        return out

    def to_json(self, *, include_scores: bool = True, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(include_scores=include_scores), indent=indent)

    # ------------------------------------------------------------------ files
    def _header(self) -> dict[str, Any]:
        from headig import __version__

        tensors = ["scores"] + (["per_example"] if self.per_example is not None else []) + \
            (["stderr"] if self.stderr is not None else [])
        return {
            "format": FORMAT_NAME,
            "schema_version": SCHEMA_VERSION,
            "sign_convention": SIGN_CONVENTION,
            "shape": [self.n_layers, self.n_heads],
            "layers": list(self.layers),
            "n_examples": self.n_examples,
            "tensors": tensors,
            "headig_version": __version__,
            "meta": self.meta,
        }

    def save(self, path: str | os.PathLike, *, sidecar: bool = True) -> Path:
        """Write the scores to a ``.safetensors`` file; returns the file path.

        ``path`` is either a file ending in ``.safetensors`` or a folder (an existing one, or a
        suffix-less path that is created), in which case the file is
        ``<folder>/head_importance.safetensors``. The description
        (schema version, sign convention, layers, shape, meta) is stored in the safetensors
        header, which is authoritative. With ``sidecar`` a human-readable copy of it plus the
        top heads is also written next to the file as ``<stem>.json`` (never read back).
        Both writes are atomic (temporary file, then ``os.replace``).
        """
        from safetensors.torch import save as st_save

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
        header = self._header()
        tensors = {"scores": self.scores}
        if self.per_example is not None:
            tensors["per_example"] = self.per_example
        if self.stderr is not None:
            tensors["stderr"] = self.stderr
        blob = st_save({k: v.contiguous() for k, v in tensors.items()},
                       metadata={"format": "pt", _HEADER_KEY: json.dumps(header, allow_nan=False)})
        atomic_write(target, blob)
        if sidecar:
            summary = dict(header)
            top = self.top_k(min(10, len(self.entries())))
            summary["top_heads"] = [{"layer": layer, "head": h, "score": s} for layer, h, s in top]
            summary["note"] = ("human-readable copy; the .safetensors header is authoritative")
            atomic_write(target.with_suffix(".json"),
                          (json.dumps(summary, indent=2) + "\n").encode("utf-8"))
        return target

    @classmethod
    def load(cls, path: str | os.PathLike, *, original_sign: OriginalSign | None = None,
             n_layers: int | None = None) -> HeadImportance:
        """Load a headig ``.safetensors`` file (or a folder holding one) or an original ``.pt``.

        Args:
            path: a ``.safetensors`` file written by :meth:`save`, a folder containing
                ``head_importance.safetensors`` (or ``head_importance.pt``), or an original
                ``head_importance.pt`` (``{"importance_scores": {layer: tensor[H]}, "metadata": {}}``).
            original_sign: required for original ``.pt`` files, which do not record their
                sign: ``"loss"`` for raw files (IG of the loss, negative = important; the
                scores are negated), ``"helps"`` for files already negated ("_neg" files).
            n_layers: for original files, the model's layer count when the file covers only a
                sub-range of layers (default: highest layer index + 1).

        Never unpickles arbitrary objects: ``.pt`` files are read with ``weights_only=True``.
        """
        file = _resolve_load_path(Path(path).expanduser())
        kind = _sniff(file)
        if kind == "safetensors":
            if original_sign is not None or n_layers is not None:
                raise ValueError(f"{file} is a headig file, which records its own sign and shape; "
                                 "original_sign / n_layers apply only to original .pt files")
            return _load_safetensors(file)
        return _load_original(file, original_sign=original_sign, n_layers=n_layers)

    def __repr__(self) -> str:
        extra = "" if self.per_example is None else f", per_example=[{self.n_examples}, ...]"
        extra += "" if self.stderr is None else ", stderr"
        return (f"HeadImportance(shape=[{self.n_layers}, {self.n_heads}], layers={list(self.layers)}"
                f"{extra}, meta_keys={sorted(self.meta)})")


# ---------------------------------------------------------------------- helpers
def _normalise_layers(layers: Sequence[int] | None, n_layers: int) -> tuple[int, ...]:
    if layers is None:
        return tuple(range(n_layers))
    if isinstance(layers, (str, bytes)) or not isinstance(layers, (Sequence, Tensor, np.ndarray)):
        raise ValueError(f"layers must be a sequence of layer indices; got {layers!r}")
    out: list[int] = []
    for v in (layers.tolist() if isinstance(layers, (Tensor, np.ndarray)) else layers):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= int(v) < n_layers:
            raise ValueError(f"layers must be integers in [0, {n_layers}); got {v!r} in {list(layers)}")
        out.append(int(v))
    if not out:
        raise ValueError("layers is empty; at least one layer must be attributed")
    if len(set(out)) != len(out):
        raise ValueError(f"layers has duplicates: {out}")
    return tuple(sorted(out))


def _as_int(v: Any) -> int | None:
    """An integer (Python or numpy), else None; bools are not integers here."""
    if isinstance(v, bool):
        return None
    try:
        return operator.index(v)
    except TypeError:
        return None


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
        return HeadImportance(scores=tensors["scores"], layers=tuple(header["layers"]),
                              meta=header["meta"], per_example=tensors.get("per_example"),
                              stderr=tensors.get("stderr"))
    except ValueError as err:
        raise _schema_error(file, str(err)) from err


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
    if original_sign not in ("loss", "helps"):
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


# ---------------------------------------------------------------------- combine / compare
def combine(importances: Sequence[HeadImportance],
            weights: Sequence[float] | None = None) -> HeadImportance:
    """Weighted mean of several importances of the same model and layers.

    ``weights`` (non-negative, not all zero) default to equal. When every input has a
    ``stderr`` the result has ``sqrt(sum w_i^2 se_i^2) / sum w_i`` (independent estimates);
    ``per_example`` is not carried. ``meta`` records the weights and each source's meta.
    """
    items = list(importances)
    if not items:
        raise ValueError("combine needs at least one HeadImportance")
    if not all(isinstance(x, HeadImportance) for x in items):
        raise ValueError("combine expects HeadImportance objects")
    ref = items[0]
    for i, x in enumerate(items[1:], start=1):
        if x.scores.shape != ref.scores.shape:
            raise ValueError(f"importance {i} has shape {list(x.scores.shape)}; importance 0 has "
                             f"{list(ref.scores.shape)} (all must describe the same model)")
        if x.layers != ref.layers:
            raise ValueError(f"importance {i} attributes layers {list(x.layers)}; importance 0 "
                             f"attributes {list(ref.layers)} (all must match)")
    w = np.ones(len(items)) if weights is None else np.asarray(list(weights), dtype=np.float64)
    if w.shape != (len(items),):
        raise ValueError(f"weights has {w.size} entries for {len(items)} importances")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be finite, non-negative and not all zero; got {w.tolist()}")
    wt = torch.as_tensor(w, dtype=torch.float64)
    stacked = torch.stack([x.scores.to(torch.float64) for x in items])
    scores = (wt[:, None, None] * stacked).sum(0) / wt.sum()
    stderr = None
    if all(x.stderr is not None for x in items):
        se = torch.stack([x.stderr.to(torch.float64) for x in items])  # type: ignore[union-attr]
        stderr = ((wt[:, None, None] ** 2 * se ** 2).sum(0)).sqrt() / wt.sum()
    meta = {
        "combined": {
            "method": "weighted_mean",
            "weights": w.tolist(),
            "sources": [x.meta for x in items],
        }
    }
    return HeadImportance(scores=scores.float(), layers=ref.layers, meta=meta,
                          stderr=None if stderr is None else stderr.float())


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties get the mean of their positions (as scipy.stats.rankdata)."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    avg = (starts + ends + 1) / 2.0  # mean of positions start+1 .. end
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2:
        return float("nan")
    xc, yc = x - x.mean(), y - y.mean()
    den = math.sqrt(float((xc * xc).sum()) * float((yc * yc).sum()))
    return float("nan") if den == 0 else float(np.clip((xc * yc).sum() / den, -1.0, 1.0))


def _tie_pairs(x: np.ndarray) -> float:
    _, counts = np.unique(x, return_counts=True)
    return float((counts * (counts - 1) / 2).sum())


def _kendall_tau_b(x: np.ndarray, y: np.ndarray, chunk: int = 512) -> float:
    """Kendall's tau-b, exact O(n^2) in row chunks (n is the number of heads, at most a few 1000)."""
    n = len(x)
    if n < 2:
        return float("nan")
    s = 0.0  # sum over ordered pairs i != j of sign(dx) * sign(dy) = 2 (concordant - discordant)
    for start in range(0, n, chunk):
        dx = np.sign(x[start:start + chunk, None] - x[None, :])
        dy = np.sign(y[start:start + chunk, None] - y[None, :])
        s += float((dx * dy).sum())
    n0 = n * (n - 1) / 2
    den = math.sqrt((n0 - _tie_pairs(x)) * (n0 - _tie_pairs(y)))
    return float("nan") if den == 0 else float(np.clip(s / 2 / den, -1.0, 1.0))


def compare(a: HeadImportance, b: HeadImportance, k: int = 10,
            by: Literal["signed", "abs"] = "signed") -> dict[str, Any]:
    """Agreement between two importances over their common attributed layers.

    Returns ``spearman`` (Pearson of average ranks), ``kendall`` (tau-b), ``pearson`` on
    the scores, and for the top-``k`` heads of each (ranked as in :meth:`HeadImportance.top_k`
    with ``by``): ``topk_overlap`` = |A ∩ B| / k and ``topk_jaccard`` = |A ∩ B| / |A ∪ B|,
    plus ``n_heads`` compared and the common ``layers``. Correlations are NaN when undefined
    (fewer than two heads, or constant scores).
    """
    if a.n_layers != b.n_layers or a.n_heads != b.n_heads:
        raise ValueError(f"cannot compare shapes {[a.n_layers, a.n_heads]} and "
                         f"{[b.n_layers, b.n_heads]}: they describe different models")
    if by not in ("signed", "abs"):
        raise ValueError(f"by={by!r}; expected 'signed' or 'abs'")
    layers = sorted(set(a.layers) & set(b.layers))
    if not layers:
        raise ValueError(f"no common attributed layers (a: {list(a.layers)}, b: {list(b.layers)})")
    n = len(layers) * a.n_heads
    kk = _as_int(k)
    if kk is None or not 1 <= kk <= n:
        raise ValueError(f"k={k!r}; expected an integer in [1, {n}] (heads in the common layers)")
    k = kk
    x = a.scores[layers].to(torch.float64).flatten().numpy()
    y = b.scores[layers].to(torch.float64).flatten().numpy()
    sub_a = HeadImportance(a.scores * _row_mask(a.n_layers, layers), layers=tuple(layers))
    sub_b = HeadImportance(b.scores * _row_mask(b.n_layers, layers), layers=tuple(layers))
    top_a = {(layer, h) for layer, h, _ in sub_a.top_k(k, by=by)}
    top_b = {(layer, h) for layer, h, _ in sub_b.top_k(k, by=by)}
    inter = len(top_a & top_b)
    return {
        "spearman": _pearson(_average_ranks(x), _average_ranks(y)),
        "kendall": _kendall_tau_b(x, y),
        "pearson": _pearson(x, y),
        "k": k,
        "by": by,
        "topk_overlap": inter / k,
        "topk_jaccard": inter / len(top_a | top_b),
        "n_heads": n,
        "layers": layers,
    }


def _row_mask(n_layers: int, layers: Sequence[int]) -> Tensor:
    m = torch.zeros(n_layers, 1)
    m[list(layers)] = 1.0
    return m
