"""One report base for every validation result, and the formatting helpers they share.

PruneSweep, SparseSweep and Faithfulness are all "a table of rows plus metadata" that is
printed as Markdown and saved as CSV, JSON, Markdown and a plot; :class:`Report` writes
those files once, so the formats cannot drift apart. The helpers are public so no module
reaches into another's private names.
"""

from __future__ import annotations

import csv
import io
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["Report", "csv_text", "fmt", "head_name", "json_default", "mean_std"]


def fmt(v: Any, digits: int = 4) -> str:
    """A float with ``digits`` decimals, or an en dash for a missing value."""
    if v is None:
        return "–"
    return f"{v:.{digits}f}"


def json_default(o: Any) -> Any:
    """``json.dumps`` fallback for tensors and tuples (results hold both)."""
    if isinstance(o, Tensor):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def csv_text(rows: list[dict[str, Any]]) -> str:
    """Rows as CSV (columns of the first row, floats to 6 significant digits, None empty)."""
    if not rows:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if v is None else (f"{v:.6g}" if isinstance(v, float) else v))
                         for k, v in r.items()})
    return buf.getvalue()


def head_name(layer: int, head: int) -> str:
    """``L{layer}.H{head}``, the spelling of a head in every table."""
    return f"L{layer}.H{head}"


def mean_std(values: Sequence[float]) -> tuple[float, float, float, float]:
    """(mean, sample std (0 for one value), min, max) in float64."""
    t = torch.tensor(list(values), dtype=torch.float64)
    std = float(t.std(unbiased=True)) if t.numel() > 1 else 0.0
    return float(t.mean()), std, float(t.min()), float(t.max())


class Report(ABC):
    """Base of the validation results: ``to_dict``, ``to_csv``, ``to_markdown``, ``save``.

    Subclasses implement :meth:`to_dict`, :meth:`csv_rows` and :meth:`to_markdown`; they
    add files with :meth:`extra_files` and draw with :meth:`plot`. :meth:`save` writes
    ``<prefix>.csv``, ``<prefix>.json``, ``<prefix>.md``, then the extras, then
    ``<prefix>.png``.
    """

    default_prefix = "report"

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """The whole result as JSON-ready data."""

    @abstractmethod
    def csv_rows(self) -> list[dict[str, Any]]:
        """One dict per table row."""

    @abstractmethod
    def to_markdown(self) -> str:
        """The table as Markdown."""

    def to_csv(self) -> str:
        return csv_text(self.csv_rows())

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=json_default) + "\n"

    def extra_files(self, folder: Path, prefix: str) -> dict[str, Path]:
        """Files beyond csv/json/md (written after them); none by default."""
        return {}

    def plot(self, path: Path) -> Path | None:
        """Draw the result to ``path``; None when there is nothing to draw."""
        return None

    def save(self, out: str | Path, *, plot: bool = True, prefix: str | None = None
             ) -> dict[str, Path]:
        """Write the csv / json / md files (+ extras and the PNG) into ``out``."""
        prefix = prefix or self.default_prefix
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        files = {"csv": folder / f"{prefix}.csv", "json": folder / f"{prefix}.json",
                 "md": folder / f"{prefix}.md"}
        files["csv"].write_text(self.to_csv())
        files["json"].write_text(self.to_json())
        files["md"].write_text(self.to_markdown())
        files.update(self.extra_files(folder, prefix))
        if plot:
            png = self.plot(folder / f"{prefix}.png")
            if png is not None:
                files["png"] = png
        return files
