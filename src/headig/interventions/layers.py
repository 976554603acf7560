"""The one layer specification: parse it once, here, into sorted absolute indices.

Accepted everywhere a set of layers is asked for (gates, masks, sparse attention,
attribution): ``None`` (all layers), an int, a ``range``, a sequence of ints, a ``slice``,
or a string: ``"3"``, ``"0,2,5"`` or an inclusive range ``"2:5"`` (as the original
``--layer_start/--layer_end`` flags; ``-1`` is the last layer).
"""

from __future__ import annotations

from collections.abc import Sequence

LayerSpec = None | int | str | range | slice | Sequence[int]


def _from_string(spec: str, n_layers: int) -> list[int]:
    text = spec.strip()
    if ":" in text:
        start, _, end = text.partition(":")
        try:
            s = int(start) if start.strip() else 0
            e = int(end) if end.strip() else -1
        except ValueError:
            raise ValueError(f"layers={spec!r}; expected 'start:end' with integers "
                             "(inclusive, -1 = last layer)") from None
        return layer_range(s, e, n_layers)
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"layers={spec!r}; expected an int, a comma list like '0,2,5' or an "
                         "inclusive range like '2:5'") from None


def normalize_layers(layers: LayerSpec, n_layers: int, *, strict: bool = False) -> list[int]:
    """Sorted absolute layer indices for any accepted spec (negative counts from the end).

    With ``strict=True`` the spec must already be in increasing order without repeats,
    because the caller pairs its i-th entry with row i of some tensor (gates); sorting
    silently would pair rows with the wrong layers.
    """
    if layers is None:
        return list(range(n_layers))
    if isinstance(layers, bool):
        raise TypeError(f"layers={layers!r}; expected None, an int, a range, a list of ints "
                        "or a string like '2:5'")
    if isinstance(layers, str):
        raw: list[int] = _from_string(layers, n_layers)
    elif isinstance(layers, int):
        raw = [layers]
    elif isinstance(layers, slice):
        raw = list(range(n_layers))[layers]
    else:
        raw = [int(i) for i in layers]
    out = []
    for i in raw:
        j = i + n_layers if i < 0 else i
        if not 0 <= j < n_layers:
            raise ValueError(f"layer {i} out of range for a model with {n_layers} layers")
        out.append(j)
    if not out:
        raise ValueError("layers is empty; pass None for all layers or a non-empty list")
    if strict and any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError(f"layers={list(raw)} must be increasing without repeats (resolved: "
                         f"{out}); row i of the gates belongs to the i-th listed layer, so "
                         f"pass layers sorted, e.g. {sorted(set(out))}")
    return sorted(set(out))


def layer_range(start: int = 0, end: int = -1, n_layers: int | None = None) -> list[int]:
    """Inclusive layer range as in the original ``--layer_start/--layer_end`` flags (-1 = last)."""
    if n_layers is None:
        raise ValueError("layer_range needs n_layers")
    s = start + n_layers if start < 0 else start
    e = end + n_layers if end < 0 else end
    if not 0 <= s <= e < n_layers:
        raise ValueError(
            f"invalid layer range {start}..{end} (inclusive) for {n_layers} layers; "
            "expected 0 <= start <= end < n_layers, -1 meaning the last layer"
        )
    return list(range(s, e + 1))
