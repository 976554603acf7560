"""Diffusion generation for every family: LLaDA-style blocks and Dream-style algorithms.

Both samplers reproduce the official code token for token at temperature 0 (LLaDA's
``generate()`` and Dream's ``diffusion_generate``) and both run on either family: the only
family difference, the logit shift, is read from the family table by
:func:`predict_logits`, which every forward goes through.

Differences from the official code, all of them outside the cases the official code
handles correctly:

- logits are post-processed in float32 (identical for float32 models; in half precision
  the official code ranks confidences in the model dtype, where ties are common);
- only positions that can be committed get logits and noise (same result, less memory);
- a forward whose step commits nothing is skipped (the step index is still counted);
- a row never commits more tokens than it has masks left (the official Dream sampler
  re-masks committed tokens when batch rows hold different numbers of masks);
- random numbers come from ``generator`` (CPU by default), so results do not depend on the
  device the model runs on.
"""

from __future__ import annotations

import operator
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from headig.diffusion.alignment import align_logits, gather_aligned, source_rows
from headig.diffusion.schedule import denoising
from headig.models.family import family_of
from headig.models.modeling import DiffusionLM

__all__ = [
    "DREAM_ALGS", "REMASKING", "STYLES", "dream_transfer_count", "generate",
    "generate_completions", "generate_dream_style", "generate_llada_style", "model_device",
    "num_transfer_tokens",
    "predict_logits", "shift_logits", "truncate_at_stop",
]

REMASKING = ("low_confidence", "random")
DREAM_ALGS = ("origin", "maskgit_plus", "topk_margin", "entropy")
STYLES = ("llada", "dream")
_DEFAULT_STYLE = {"llada": "llada", "dream": "dream"}
_NEG_INF = float("-inf")


# ----------------------------------------------------------------------------- logits


def shift_logits(logits: Tensor, shift: int) -> Tensor:
    """Align raw logits [B, T, V] so that row i predicts token i (see
    :func:`headig.diffusion.alignment.align_logits`; kept under its former name)."""
    return align_logits(logits, shift)


def model_device(model: nn.Module) -> torch.device:
    """The device a model's inputs must be on (native models know it; others by a weight)."""
    if isinstance(model, DiffusionLM):
        return model.device
    return next(model.parameters()).device


_model_device = model_device  # former private name


def _raw_logits(model: nn.Module, ids: Tensor, attention_mask: Tensor | None,
                rows: Tensor | None) -> Tensor:
    """Raw logits, [B, T, V] or, at the bool mask ``rows``, [N, V] in row-major order."""
    kwargs = {} if attention_mask is None else {"attention_mask": attention_mask}
    if isinstance(model, DiffusionLM):
        return model(ids, logits_at=rows, **kwargs).logits
    logits = model(ids, **kwargs).logits
    return logits if rows is None else logits[rows]


def predict_logits(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None,
                   *, at: Tensor | None = None, cfg_scale: float = 0.0,
                   uncond_ids: Tensor | None = None) -> Tensor:
    """Aligned logits: the model's prediction for each position, whatever the family.

    Args:
        model: a headig model (or any model :func:`headig.family_of` understands).
        input_ids: [B, T] token ids (mask ids where tokens are to be predicted).
        attention_mask: optional [B, T] padding mask (1 = real token).
        at: optional bool [B, T]; only these positions are returned, as [N, V] in
            row-major order (the unembedding then runs on N rows only).
        cfg_scale: classifier-free guidance weight w; logits become
            ``u + (w + 1) * (c - u)`` with ``u`` the prediction for ``uncond_ids``.
        uncond_ids: [B, T] unconditional input (the prompt replaced by mask ids); needed
            when ``cfg_scale > 0``.

    Returns:
        float logits in the model dtype, [B, T, V] or [N, V].
    """
    shift = family_of(model).logit_shift
    guided = cfg_scale > 0
    ids, mask, where = input_ids, attention_mask, at
    if guided:
        if uncond_ids is None or uncond_ids.shape != input_ids.shape:
            raise ValueError("cfg_scale > 0 needs uncond_ids shaped like input_ids")
        ids = torch.cat([input_ids, uncond_ids])
        mask = None if attention_mask is None else torch.cat([attention_mask, attention_mask])
        where = None if at is None else torch.cat([at, at])
    if where is None:
        logits = align_logits(_raw_logits(model, ids, mask, None), shift)
    else:
        where = where.bool()
        src = source_rows(where, shift)
        logits = gather_aligned(_raw_logits(model, ids, mask, src), where, src, shift)
    if guided:
        cond, uncond = logits.chunk(2) if at is None else logits.split(int(at.sum()))
        logits = uncond + (cfg_scale + 1.0) * (cond - uncond)
    return logits


# ----------------------------------------------------------------------------- helpers


def _rand(shape: Sequence[int], generator: torch.Generator | None, device: torch.device,
          dtype: torch.dtype = torch.float32) -> Tensor:
    """Uniform [0, 1) noise drawn on the generator's device (CPU by default), then moved."""
    where = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(tuple(shape), generator=generator, device=where, dtype=dtype).to(device)


def _sample_categorical(probs: Tensor, generator: torch.Generator | None) -> Tensor:
    """One draw per row of ``probs`` [N, V] by inverse CDF (N uniforms, device independent)."""
    cdf = probs.double().cumsum(-1)
    u = _rand((probs.shape[0], 1), generator, probs.device, torch.float64) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


def num_transfer_tokens(block_masks: Tensor, steps: int) -> Tensor:
    """LLaDA's per-step commit counts [B, steps]: ``m // steps`` each, the first
    ``m % steps`` steps one more (m = masks in the row's block)."""
    m = block_masks.sum(-1, keepdim=True)
    extra = torch.arange(steps, device=m.device) < (m % steps)
    return m // steps + extra.long()


def dream_transfer_count(n_mask: Tensor, t: Tensor, s: Tensor, last: bool) -> int:
    """Dream's commit count for one step: ``int(n_mask * (1 - s / t))`` in float32
    (truncation, not rounding), or ``int(n_mask)`` on the last step."""
    n_mask = n_mask.to(torch.float32)
    return int(n_mask) if last else int(n_mask * (1 - s / t))


def _select(confidence: Tensor, counts: Tensor, candidates: Tensor) -> Tensor:
    """Per row, the ``counts[b]`` candidate positions of highest confidence (bool [B, T])."""
    counts = torch.minimum(counts, candidates.sum(-1))
    chosen = torch.zeros_like(candidates)
    k = int(counts.max()) if counts.numel() else 0
    if k == 0:
        return chosen
    _, index = confidence.topk(k, dim=-1)
    keep = torch.arange(k, device=counts.device) < counts[:, None]
    chosen.scatter_(1, index, keep)
    return chosen & candidates


def _full(candidates: Tensor, values: Tensor, fill: float | int) -> Tensor:
    out = torch.full(candidates.shape, fill, dtype=values.dtype, device=values.device)
    out[candidates] = values
    return out


def _top_p(logits: Tensor, top_p: float) -> Tensor:
    """Keep the smallest set of tokens whose probability reaches ``top_p`` (Dream's rule)."""
    sorted_logits, order = logits.sort(-1, descending=True)
    remove = sorted_logits.softmax(-1).cumsum(-1) > top_p
    remove[..., 1:] = remove[..., :-1].clone()
    remove[..., 0] = False
    mask = torch.zeros_like(remove).scatter_(-1, order, remove)
    return logits.masked_fill(mask, torch.finfo(logits.dtype).min)


def _top_k(logits: Tensor, top_k: int) -> Tensor:
    kth = logits.topk(min(top_k, logits.shape[-1]), -1).values[..., -1:]
    return logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)


def _stop_tensor(stop_ids: Iterable[int] | None, device: torch.device) -> Tensor | None:
    if stop_ids is None:
        return None
    ids = sorted({int(i) for i in ([stop_ids] if isinstance(stop_ids, int) else stop_ids)})
    if not ids:
        raise ValueError("stop_ids is empty; pass None to disable early stopping")
    return torch.tensor(ids, dtype=torch.long, device=device)


def _finish_if_stopped(x: Tensor, start: int, mask_id: int, stops: Tensor | None) -> bool:
    """True (and trailing masks filled) when every row has a committed stop token with no
    mask before it; what follows it cannot change the decoded text."""
    if stops is None:
        return False
    gen = x[:, start:]
    is_stop, is_mask = torch.isin(gen, stops), gen == mask_id
    has_stop = is_stop.any(-1)
    first = torch.where(has_stop, is_stop.long().argmax(-1), gen.shape[1])
    before = torch.arange(gen.shape[1], device=x.device) < first[:, None]
    if not bool((has_stop & ~(is_mask & before).any(-1)).all()):
        return False
    fill = gen.gather(1, first.clamp(max=gen.shape[1] - 1)[:, None]).expand_as(gen)
    x[:, start:] = torch.where(is_mask, fill, gen)
    return True


def _as_int(value: object, name: str) -> int:
    """Accept any integral value (Python or NumPy int); reject floats and bools."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int; got {value!r}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name} must be an int; got {value!r}") from None


def _resolve_length(gen_length: int | None, max_new_tokens: int | None) -> int:
    if gen_length is None and max_new_tokens is None:
        raise ValueError("pass gen_length (or its alias max_new_tokens)")
    if gen_length is not None and max_new_tokens is not None and gen_length != max_new_tokens:
        raise ValueError(f"gen_length={gen_length} and max_new_tokens={max_new_tokens} disagree")
    length = _as_int(gen_length if gen_length is not None else max_new_tokens, "gen_length")
    if length < 1:
        raise ValueError(f"gen_length must be a positive int; got {length!r}")
    return length


def _prepare(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None,
             gen_length: int, steps: int, temperature: float, cfg_scale: float,
             ) -> tuple[Tensor, Tensor | None, int, int]:
    """Validate common arguments; return (x, extended mask, prompt length, mask id)."""
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
        raise ValueError("input_ids must be a [batch, prompt_len] LongTensor")
    if input_ids.dtype not in (torch.long, torch.int32):
        raise ValueError(f"input_ids must hold integer token ids; got {input_ids.dtype}")
    if _as_int(steps, "steps") < 1:
        raise ValueError(f"steps must be a positive int; got {steps!r}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0; got {temperature}")
    if cfg_scale < 0:
        raise ValueError(f"cfg_scale must be >= 0; got {cfg_scale}")
    b, p = input_ids.shape
    if attention_mask is not None and attention_mask.shape != (b, p):
        raise ValueError(f"attention_mask must be [batch, prompt_len] = [{b}, {p}]; "
                         f"got {tuple(attention_mask.shape)}")
    device = model_device(model)
    mask_id = family_of(model).mask_token_id
    x = torch.full((b, p + gen_length), mask_id, dtype=torch.long, device=device)
    x[:, :p] = input_ids.to(device)
    mask = None
    if attention_mask is not None:
        ones = torch.ones(b, gen_length, dtype=attention_mask.dtype, device=device)
        mask = torch.cat([attention_mask.to(device), ones], dim=-1)
    return x, mask, p, mask_id


def _uncond(x: Tensor, prompt_index: Tensor, mask_id: int) -> Tensor:
    """The classifier-free-guidance input: every prompt (non-mask) token masked."""
    return x.masked_fill(prompt_index, mask_id)


# ----------------------------------------------------------------------------- LLaDA style


def generate_llada_style(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None, *,
    steps: int, gen_length: int | None = None, max_new_tokens: int | None = None,
    block_length: int | None = None, temperature: float = 0.0,
    remasking: str = "low_confidence", cfg_scale: float = 0.0,
    generator: torch.Generator | None = None, stop_ids: Iterable[int] | None = None,
) -> Tensor:
    """LLaDA's ``generate()``: semi-autoregressive blocks with low-confidence remasking.

    ``gen_length`` new positions start as masks and are split into blocks of
    ``block_length`` (default: one block); ``steps`` are split evenly across blocks. In a
    block with m masks and S steps, step i commits ``m // S`` tokens, plus one for the first
    ``m % S`` steps. Each step predicts every candidate (a mask before the block's end), picks
    ``argmax`` (of Gumbel-perturbed float64 logits when ``temperature > 0``) and commits the
    candidates of highest confidence (the probability of the picked token, or a uniform
    draw for ``remasking="random"``).

    Returns:
        LongTensor [B, prompt_len + gen_length] on the model's device.
    """
    gen_length = _resolve_length(gen_length, max_new_tokens)
    block_length = gen_length if block_length is None else _as_int(block_length, "block_length")
    steps = _as_int(steps, "steps")
    if remasking not in REMASKING:
        raise ValueError(f"unknown remasking {remasking!r}; expected one of {REMASKING}")
    if block_length < 1 or gen_length % block_length:
        raise ValueError(f"gen_length ({gen_length}) must be a multiple of block_length "
                         f"({block_length})")
    n_blocks = gen_length // block_length
    if steps < 1 or steps % n_blocks:
        raise ValueError(f"steps ({steps}) must be a positive multiple of the number of "
                         f"blocks ({n_blocks} = gen_length / block_length)")
    x, mask, p, mask_id = _prepare(model, input_ids, attention_mask, gen_length, steps,
                                   temperature, cfg_scale)
    steps_per_block = steps // n_blocks
    stops = _stop_tensor(stop_ids, x.device)
    prompt_index = x != mask_id
    positions = torch.arange(x.shape[1], device=x.device)
    with torch.no_grad(), denoising(model, steps, p) as state:
        step = 0
        for block in range(n_blocks):
            end = p + (block + 1) * block_length
            counts = num_transfer_tokens(x[:, end - block_length:end] == mask_id,
                                         steps_per_block)
            done = False
            for i in range(steps_per_block):
                state.step = step
                step += 1
                candidates = (x == mask_id) & (positions < end)
                k = counts[:, i]
                if not bool((torch.minimum(candidates.sum(-1), k) > 0).any()):
                    continue
                logits = predict_logits(
                    model, x, mask, at=candidates, cfg_scale=cfg_scale,
                    uncond_ids=_uncond(x, prompt_index, mask_id) if cfg_scale > 0 else None,
                ).float()
                if temperature > 0:
                    noise = _rand(logits.shape, generator, logits.device, torch.float64)
                    x0 = (logits.double().exp() / (-noise.log()) ** temperature).argmax(-1)
                else:
                    x0 = logits.argmax(-1)
                if remasking == "low_confidence":
                    conf = logits.softmax(-1).gather(-1, x0[:, None]).squeeze(-1)
                else:
                    conf = _rand(x0.shape, generator, x0.device)
                chosen = _select(_full(candidates, conf, _NEG_INF), k, candidates)
                x[chosen] = _full(candidates, x0, mask_id)[chosen]
                if _finish_if_stopped(x, p, mask_id, stops):
                    done = True
                    break
            if done:
                break
    return x


# ----------------------------------------------------------------------------- Dream style


def _dream_sample(logits: Tensor, *, alg: str, temperature: float, top_p: float | None,
                  top_k: int | None, generator: torch.Generator | None,
                  ) -> tuple[Tensor, Tensor]:
    """Dream's ``sample_tokens``: (confidence, token) per row of float logits [N, V]."""
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        logits = _top_p(logits, top_p)
    if top_k is not None:
        logits = _top_k(logits, top_k)
    probs = logits.softmax(-1)
    if temperature > 0:
        x0 = _sample_categorical(probs, generator)
        confidence = probs.gather(-1, x0[:, None]).squeeze(-1)
    else:
        confidence, x0 = probs.max(-1)
    if alg == "topk_margin":
        top2 = probs.topk(2, -1).values
        confidence = top2[:, 0] - top2[:, 1]
    elif alg == "entropy":
        confidence = (probs * (probs + 1e-10).log()).sum(-1)
    return confidence, x0


def generate_dream_style(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None, *,
    steps: int, gen_length: int | None = None, max_new_tokens: int | None = None,
    alg: str = "origin", alg_temp: float | None = 0.0, temperature: float = 0.0,
    top_p: float | None = None, top_k: int | None = None, eps: float = 1e-3,
    cfg_scale: float = 0.0, generator: torch.Generator | None = None,
    stop_ids: Iterable[int] | None = None,
) -> Tensor:
    """Dream's ``diffusion_generate``: all new positions denoised together.

    Timesteps are float32 ``linspace(1, eps, steps + 1)``; step i goes from t = ts[i] to
    s = ts[i+1]. ``origin`` commits each mask independently with probability 1 - s/t (all on
    the last step). The other algorithms commit ``int(n_mask * (1 - s/t))`` tokens per row
    (n_mask = masks left, averaged over the batch; the last step takes the rest), ranked by
    the probability of the sampled token (``maskgit_plus``), the top-1 minus top-2 margin
    (``topk_margin``) or the negative entropy (``entropy``); with ``alg_temp > 0`` the
    positions are sampled from softmax(confidence / alg_temp) instead of taken greedily.

    Returns:
        LongTensor [B, prompt_len + gen_length] on the model's device.
    """
    gen_length = _resolve_length(gen_length, max_new_tokens)
    steps = _as_int(steps, "steps")
    if alg not in DREAM_ALGS:
        raise ValueError(f"unknown alg {alg!r}; expected one of {DREAM_ALGS}")
    if not 0 < eps < 1:
        raise ValueError(f"eps must be in (0, 1); got {eps}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1]; got {top_p}")
    if top_k is not None and _as_int(top_k, "top_k") < 1:
        raise ValueError(f"top_k must be a positive int; got {top_k!r}")
    if alg_temp is not None and alg_temp < 0:
        raise ValueError(f"alg_temp must be >= 0; got {alg_temp}")
    x, mask, p, mask_id = _prepare(model, input_ids, attention_mask, gen_length, steps,
                                   temperature, cfg_scale)
    stops = _stop_tensor(stop_ids, x.device)
    prompt_index = x != mask_id
    timesteps = torch.linspace(1, eps, steps + 1, dtype=torch.float32)
    sample = dict(alg=alg, temperature=temperature, top_p=top_p, top_k=top_k,
                  generator=generator)
    with torch.no_grad(), denoising(model, steps, p) as state:
        for i in range(steps):
            state.step = i
            masks = x == mask_id
            t, s = timesteps[i], timesteps[i + 1]
            last = i == steps - 1
            if alg == "origin":
                n = int(masks.sum())
                if n == 0:
                    continue
                chosen_flat = (_rand((n,), generator, x.device) < (1 - s / t).item()
                               if not last else torch.ones(n, dtype=torch.bool, device=x.device))
                if not bool(chosen_flat.any()):
                    continue
                chosen = _full(masks, chosen_flat, False)
                logits = predict_logits(
                    model, x, mask, at=chosen, cfg_scale=cfg_scale,
                    uncond_ids=_uncond(x, prompt_index, mask_id) if cfg_scale > 0 else None,
                ).float()
                _, x0 = _dream_sample(logits, **sample)
                x[chosen] = x0
            else:
                count = dream_transfer_count(masks.sum() / masks.shape[0], t, s, last)
                if count <= 0:
                    continue
                logits = predict_logits(
                    model, x, mask, at=masks, cfg_scale=cfg_scale,
                    uncond_ids=_uncond(x, prompt_index, mask_id) if cfg_scale > 0 else None,
                ).float()
                conf, x0 = _dream_sample(logits, **sample)
                full_conf = _full(masks, conf, _NEG_INF)
                if alg_temp:  # sample positions without replacement (Gumbel top-k)
                    gumbel = -(-_rand(full_conf.shape, generator, x.device).log()).log()
                    full_conf = (full_conf / alg_temp).log_softmax(-1) + gumbel
                k = torch.full((x.shape[0],), count, dtype=torch.long, device=x.device)
                chosen = _select(full_conf, k, masks)
                x[chosen] = _full(masks, x0, mask_id)[chosen]
            if _finish_if_stopped(x, p, mask_id, stops):
                break
    return x


# ----------------------------------------------------------------------------- dispatcher


def generate(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None, *,
    steps: int, gen_length: int | None = None, max_new_tokens: int | None = None,
    block_length: int | None = None, temperature: float = 0.0, remasking: str | None = None,
    alg: str | None = None, alg_temp: float | None = 0.0, top_p: float | None = None,
    top_k: int | None = None, eps: float = 1e-3, cfg_scale: float = 0.0,
    generator: torch.Generator | None = None, stop_ids: Iterable[int] | None = None,
    style: str | None = None,
) -> Tensor:
    """Generate ``gen_length`` tokens after each prompt row; returns [B, prompt_len + gen].

    The style is ``style`` if given; else Dream-style when ``alg`` is given, LLaDA-style when
    ``remasking`` or ``block_length`` is given, otherwise the family's own (LLaDA-style for
    LLaDA, Dream-style with ``alg="origin"`` for Dream). Arguments of the other style are
    rejected. See :func:`generate_llada_style` and :func:`generate_dream_style`.

    ``stop_ids``: when given, denoising stops once every row has committed one of these ids
    with no mask before it; the row's remaining masks are filled with that id. Off by
    default, because the official samplers always run every step.
    """
    if style is None:
        if alg is not None:
            style = "dream"
        elif remasking is not None or block_length is not None:
            style = "llada"
        else:
            style = _DEFAULT_STYLE.get(family_of(model).name, "llada")
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")
    common = dict(steps=steps, gen_length=gen_length, max_new_tokens=max_new_tokens,
                  temperature=temperature, cfg_scale=cfg_scale, generator=generator,
                  stop_ids=stop_ids)
    if style == "llada":
        foreign = {"alg": alg, "top_p": top_p, "top_k": top_k}
        foreign.update({"alg_temp": alg_temp} if alg_temp else {})
        foreign.update({"eps": eps} if eps != 1e-3 else {})
        bad = sorted(name for name, value in foreign.items() if value is not None)
        if bad:
            raise ValueError(f"{bad} only apply to Dream-style generation (style='dream')")
        return generate_llada_style(model, input_ids, attention_mask, block_length=block_length,
                                    remasking=remasking or "low_confidence", **common)
    bad = [name for name, value in (("remasking", remasking), ("block_length", block_length))
           if value is not None]
    if bad:
        raise ValueError(f"{bad} only apply to LLaDA-style generation (style='llada')")
    return generate_dream_style(model, input_ids, attention_mask, alg=alg or "origin",
                                alg_temp=alg_temp, top_p=top_p, top_k=top_k, eps=eps, **common)


def generate_completions(
    model: nn.Module, prompts: Sequence[Sequence[int] | Tensor], lengths: Sequence[int], *,
    pad_id: int, steps_per_token: int = 1, batch_size: int = 128,
    generator: torch.Generator | None = None, **generate_kwargs: Any,
) -> list[list[int]]:
    """Generate ``lengths[i]`` tokens after each prompt with :func:`generate`; the answers.

    This is the one decoder behind every exact-match accuracy: each answer gets
    ``steps_per_token * length`` steps in one block, with the family's own sampler at
    temperature 0 unless ``generate_kwargs`` say otherwise. Prompts are grouped by answer
    length (ascending), sorted by prompt length within a group (stable) and cut into
    batches of ``batch_size``; shorter prompts are left-padded with ``pad_id`` and masked
    as keys (RoPE is relative, so a row attends to the same tokens). ``generator`` is
    shared by all batches in that order, so stochastic samplers are reproducible.

    Returns:
        the generated ids of each prompt, in the input order.
    """
    if len(prompts) != len(lengths):
        raise ValueError(f"{len(prompts)} prompts but {len(lengths)} answer lengths")
    if any(_as_int(n, "length") < 1 for n in lengths):
        raise ValueError("every answer length must be >= 1")
    if _as_int(steps_per_token, "steps_per_token") < 1 or _as_int(batch_size, "batch_size") < 1:
        raise ValueError(f"steps_per_token={steps_per_token} and batch_size={batch_size} "
                         "must be >= 1")
    kwargs = dict(generate_kwargs)
    kwargs.setdefault("temperature", 0.0)
    device = model_device(model)
    rows = [torch.as_tensor(p, dtype=torch.long).flatten().cpu() for p in prompts]
    groups: dict[int, list[int]] = defaultdict(list)
    for i, n in enumerate(lengths):
        groups[int(n)].append(i)
    out: list[list[int]] = [[] for _ in rows]
    for c, group in sorted(groups.items()):
        group.sort(key=lambda i: len(rows[i]))
        for s in range(0, len(group), int(batch_size)):
            chunk = group[s:s + int(batch_size)]
            width = max(len(rows[i]) for i in chunk)
            ids = torch.full((len(chunk), width), int(pad_id), dtype=torch.long)
            attn = torch.zeros(len(chunk), width, dtype=torch.long)
            for r, i in enumerate(chunk):
                p = len(rows[i])
                ids[r, width - p:] = rows[i]
                attn[r, width - p:] = 1
            mask = None if bool(attn.all()) else attn.to(device)
            gen = generate(model, ids.to(device), mask, steps=c * int(steps_per_token),
                           gen_length=c, generator=generator, **kwargs)
            for r, i in enumerate(chunk):
                out[i] = gen[r, width:].tolist()
    return out


def truncate_at_stop(text: str, stops: str | Iterable[str] | None) -> str:
    """Cut ``text`` at the earliest occurrence of any stop string (empty stops ignored)."""
    if stops is None:
        return text
    if isinstance(stops, str):
        stops = [stops]
    cut = len(text)
    for stop in stops:
        if stop:
            at = text.find(stop)
            if 0 <= at < cut:
                cut = at
    return text[:cut]
