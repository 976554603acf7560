"""The head-importance value: :class:`HeadImportance` and :func:`as_importance`.

A :class:`HeadImportance` holds one score per attention head, ``scores[layer, head]``, over
all layers of the model. The sign convention is fixed: a positive score means the head
*helps* (the attribution is of J = -loss). Only the rows listed in ``layers`` were
attributed; the other rows are zero and must be ignored by consumers.

:func:`as_importance` is the one place where "a HeadImportance, a tensor or a path" becomes a
HeadImportance, so every consumer accepts the same inputs with the same errors.
File I/O lives in :mod:`headig.importance.io`; comparison statistics in
:mod:`headig.importance.stats`. See ``docs/importance-files.md``.
"""

from __future__ import annotations

import json
import math
import operator
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "DEFAULT_FILENAME", "FORMAT_NAME", "POSTPROCESS", "SCHEMA_VERSION", "SIGN_CONVENTION",
    "HeadImportance", "ORIGINAL_SIGNS", "OriginalSign", "RANK_BY", "as_importance", "as_int",
]

FORMAT_NAME = "headig.head_importance"
SCHEMA_VERSION = 1
SIGN_CONVENTION = "positive_helps"
DEFAULT_FILENAME = "head_importance.safetensors"
_HEADER_KEY = "headig"
_ORIGINAL_SUFFIXES = (".pt", ".pth", ".bin")
_ORIGINAL_NAME = "head_importance.pt"

OriginalSign = Literal["loss", "helps"]
#: How heads are ranked: by signed score or by |score| (``top_k(by=...)``, ``compare``).
RANK_BY: tuple[str, ...] = ("signed", "abs")
#: The values ``original_sign`` accepts (the one list; CLI choices read it).
ORIGINAL_SIGNS: tuple[str, ...] = ("loss", "helps")

#: How per-example attributions become scores: ``scores = mean_n(phi(per_example[n]))``.
#: ``meta["postprocess"]`` names phi (default "signed"); a file's ``per_example`` holds the
#: raw attributions before phi, so checking a file's scores needs this table.
POSTPROCESS: dict[str, Callable[[Tensor], Tensor]] = {
    "signed": lambda a: a,
    "abs": lambda a: a.abs(),
    "relu": lambda a: a.clamp_min(0.0),
}


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
        if by not in RANK_BY:
            raise ValueError(f"by={by!r}; expected 'signed' or 'abs'")
        entries = self.entries()
        kk = as_int(k)
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
    def header(self) -> dict[str, Any]:
        """The file description stored in the safetensors header (see the file format)."""
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
        from headig.importance.io import save_importance

        return save_importance(self, path, sidecar=sidecar)

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
        from headig.importance.io import load_importance

        return load_importance(path, original_sign=original_sign, n_layers=n_layers)

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


def as_int(v: Any) -> int | None:
    """An integer (Python or numpy), else None; bools are not integers here."""
    if isinstance(v, bool):
        return None
    try:
        return operator.index(v)
    except TypeError:
        return None




def as_importance(x: Any, *, original_sign: OriginalSign | None = None,
                  n_layers: int | None = None,
                  shape: tuple[int, int] | None = None) -> HeadImportance:
    """The one coercion to :class:`HeadImportance`.

    Accepts a HeadImportance (returned as is), an object with ``to_importance()`` (an
    estimator's ``Attribution``), a path to an importance file or folder (loaded with
    ``original_sign`` / ``n_layers`` as in :meth:`HeadImportance.load`), or a real-valued
    ``[n_layers, n_heads]`` tensor / array / nested list (all layers attributed; stored as
    float32). ``shape`` checks the result against a model's ``(n_layers, n_heads)``.
    """
    if isinstance(x, HeadImportance):
        imp = x
    elif hasattr(x, "to_importance") and callable(x.to_importance):
        imp = x.to_importance()
    elif isinstance(x, (str, os.PathLike)):
        imp = HeadImportance.load(x, original_sign=original_sign, n_layers=n_layers)
    else:
        if isinstance(x, (bytes, Mapping)) or x is None:
            raise TypeError(f"cannot use a {type(x).__name__} as head importance; expected a "
                            "HeadImportance, an [n_layers, n_heads] tensor or a file path")
        try:
            imp = HeadImportance(scores=x)
        except (TypeError, RuntimeError) as err:
            raise TypeError(f"cannot use a {type(x).__name__} as head importance; expected a "
                            "HeadImportance, an [n_layers, n_heads] tensor or a file path "
                            f"({err})") from err
    if not isinstance(imp, HeadImportance):
        raise TypeError(f"{type(x).__name__}.to_importance() returned {type(imp).__name__}, "
                        "not a HeadImportance")
    if shape is not None and (imp.n_layers, imp.n_heads) != tuple(shape):
        raise ValueError(f"importance scores have shape {[imp.n_layers, imp.n_heads]}; expected "
                         f"[n_layers, n_heads] = {list(shape)} for this model")
    return imp
