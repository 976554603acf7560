"""Exact-match accuracy of diffusion generation against reference completions.

The loss says how a change moves the model's beliefs; accuracy says whether it still
produces the right answer. Used by the pruning and sparse-attention sweeps.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from headig.attribution import Item
from headig.models.family import family_of
from headig.validation.loss import device_of, eval_items

__all__ = ["generation_accuracy", "prompt_length_of"]


def prompt_length_of(item: Item) -> int:
    """Prompt length of an item whose completion is a suffix (as generation needs)."""
    comp = item.completion
    p = int(comp.long().argmax())
    if not bool(comp[p:].all()):
        raise ValueError(f"example {item.id!r}: the completion must be one contiguous suffix "
                         "to be generated")
    return p


@torch.no_grad()
def generation_accuracy(model: nn.Module, batch: Any, *, labels: Mapping[str, str] | None = None,
                        steps_per_token: int = 1, batch_size: int = 128, seed: int = 0,
                        generate_kwargs: Mapping[str, Any] | None = None,
                        keep: Tensor | None = None) -> dict[str, Any]:
    """Exact-match accuracy of diffusion generation against each example's completion.

    For every example the prompt is given and ``len(completion)`` masked positions are
    generated with :func:`headig.diffusion.generation.generate` (the family's own sampler,
    temperature 0, ``steps_per_token`` x length steps, one block); the example is correct
    when every generated token equals the reference. Examples with the same completion
    length share a batch; shorter prompts are left-padded with the pad token, masked as
    keys (RoPE is relative, so this does not change what a row attends to).

    Args:
        labels: example id -> group name (e.g. the task); adds per-group accuracy.
        generate_kwargs: extra arguments for ``generate`` (e.g. ``alg="entropy"``).
        keep: optional bool [L, H] keep mask applied during generation.

    Returns:
        ``{"accuracy": float, "n": int, "groups": {name: accuracy}, "correct": {id: bool}}``.
    """
    from headig.diffusion.generation import generate
    from headig.interventions import HeadMask

    items = eval_items(batch)
    if int(steps_per_token) < 1 or int(batch_size) < 1:
        raise ValueError(f"steps_per_token={steps_per_token} and batch_size={batch_size} "
                         "must be >= 1")
    extra = dict(generate_kwargs or {})
    extra.setdefault("temperature", 0.0)
    family = family_of(model)
    pad_id = family.arch.pad_token_id if family.arch.pad_token_id is not None else \
        (family.arch.eos_token_id or 0)
    device = device_of(model)
    groups: dict[int, list[tuple[Item, int]]] = defaultdict(list)
    for it in items:
        p = prompt_length_of(it)
        groups[it.length - p].append((it, p))
    gen = torch.Generator().manual_seed(int(seed))
    correct: dict[str, bool] = {}
    ctx = HeadMask(model, torch.as_tensor(keep).bool()) if keep is not None else None
    if ctx is not None:
        ctx.apply()
    try:
        for c, group in sorted(groups.items()):
            group.sort(key=lambda x: x[1])
            for s in range(0, len(group), int(batch_size)):
                chunk = group[s:s + int(batch_size)]
                width = max(p for _, p in chunk)
                ids = torch.full((len(chunk), width), int(pad_id), dtype=torch.long)
                attn = torch.zeros(len(chunk), width, dtype=torch.long)
                for r, (it, p) in enumerate(chunk):
                    ids[r, width - p:] = it.input_ids[:p]
                    attn[r, width - p:] = 1
                mask = None if bool(attn.all()) else attn.to(device)
                out = generate(model, ids.to(device), mask, steps=c * int(steps_per_token),
                               gen_length=c, generator=gen, **extra)
                ref = torch.stack([it.input_ids[p:] for it, p in chunk])
                hits = (out[:, width:].cpu() == ref).all(1).tolist()
                correct.update({it.id: bool(h) for (it, _), h in zip(chunk, hits)})
    finally:
        if ctx is not None:
            ctx.remove()
    result: dict[str, Any] = {"accuracy": sum(correct.values()) / len(correct),
                              "n": len(correct), "groups": {}, "correct": correct}
    if labels is not None:
        by_label: dict[str, list[bool]] = defaultdict(list)
        for it in items:
            by_label[str(labels.get(it.id, "?"))].append(correct[it.id])
        result["groups"] = {k: sum(v) / len(v) for k, v in sorted(by_label.items())}
    return result
