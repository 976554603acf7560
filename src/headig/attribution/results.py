"""The result value every estimator returns: :class:`Attribution`."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

POSTPROCESS = ("signed", "abs", "relu")


def postprocess(a: Tensor, how: str) -> Tensor:
    """φ applied to each example's attribution before the mean (signed, abs or relu)."""
    if how == "signed":
        return a
    if how == "abs":
        return a.abs()
    return a.clamp_min(0.0)


@dataclass
class Attribution:
    """Scores [L, H] (float32, all layers; rows outside ``layers`` are 0), per-example raw
    attributions before φ, and the completeness residual per example."""

    scores: Tensor
    layers: tuple[int, ...]
    example_ids: list[str]
    per_example: Tensor | None
    j_full: Tensor
    j_baseline: Tensor
    residual: Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def relative_residual(self) -> Tensor:
        """|residual| / |J(1) − J(α0)| per example."""
        return self.residual.abs() / (self.j_full - self.j_baseline).abs().clamp_min(1e-12)

    @property
    def convergence_delta(self) -> Tensor:
        """Alias of :attr:`residual` (Captum's name)."""
        return self.residual

    def to_importance(self):
        """The scores as a :class:`headig.importance.HeadImportance` (with stderr and meta)."""
        from headig.importance import HeadImportance

        meta = dict(self.meta)
        meta["completeness"] = {
            "mean_abs_residual": float(self.residual.abs().mean()),
            "mean_relative_residual": float(self.relative_residual.mean()),
        }
        stderr = None
        if self.per_example is not None and self.per_example.shape[0] > 1:
            post = postprocess(self.per_example, meta.get("postprocess", "signed"))
            stderr = (post.std(0, unbiased=True) / math.sqrt(post.shape[0])).float()
        return HeadImportance(scores=self.scores.clone(), layers=tuple(self.layers), meta=meta,
                              per_example=None if self.per_example is None
                              else self.per_example.float(), stderr=stderr)

    def save(self, path: str | os.PathLike) -> None:
        self.to_importance().save(path)


__all__ = ["POSTPROCESS", "Attribution", "postprocess"]
