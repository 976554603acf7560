"""One native bidirectional transformer that serves every supported diffusion-LM family.

LLaDA and Dream are both Llama-style stacks (RMSNorm, RoPE, SwiGLU MLP); they differ in
config keys, weight names, q/k/v biases, GQA and the logit shift, all of which live in the
family table (:mod:`headig.models.family`). Attention goes through one pluggable
function per layer (:attr:`Attention.attn_fn`), so dense and sparse attention share the
same code path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from headig.models.family import ArchConfig, Family


class AttentionFn(Protocol):
    """Signature of a per-layer attention function.

    Args:
        q: queries [B, H, T, D] (RoPE applied).
        k, v: keys and values [B, KV, T, D] (RoPE applied to k); KV divides H and
            query head h reads KV head ``h // (H // KV)``.
        mask: None, or a boolean [B, 1, Tq or 1, T] mask (True = may attend).
        module: the calling :class:`Attention` (layer index, head counts).

    Returns:
        [B, H, T, D] head outputs, before the output projection.
    """

    def __call__(
        self, q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | None, module: Attention
    ) -> Tensor: ...


def expand_kv(x: Tensor, group_size: int) -> Tensor:
    """Repeat each KV head for its ``group_size`` consecutive query heads (GQA)."""
    if group_size == 1:
        return x
    return x.repeat_interleave(group_size, dim=1)


def sdpa_attention(
    q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | None, module: Attention
) -> Tensor:
    """Dense, fully bidirectional attention through PyTorch's fused SDPA."""
    group = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(
        q, expand_kv(k, group), expand_kv(v, group), attn_mask=mask, is_causal=False
    )


class RMSNorm(nn.Module):
    """RMSNorm in the official order: statistics in float32, gain after the cast back."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Rotary:
    """Rotate-half RoPE; cos/sin are always computed in float32."""

    def __init__(self, head_dim: int, theta: float, in_float32: bool) -> None:
        self.head_dim = head_dim
        self.theta = theta
        self.in_float32 = in_float32

    def cos_sin(self, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        """position_ids [B, T] -> cos, sin [B, 1, T, D] float32."""
        device = position_ids.device
        exponent = torch.arange(0, self.head_dim, 2, device=device, dtype=torch.float32)
        inv_freq = 1.0 / (self.theta ** (exponent / self.head_dim))
        freqs = position_ids.to(torch.float32)[..., None] * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]
        return emb.cos(), emb.sin()

    def apply(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        if self.in_float32:
            xf = x.float()
            return (xf * cos + _rotate_half(xf) * sin).to(x.dtype)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        return x * cos + _rotate_half(x) * sin


class HookPoint(nn.Module):
    """An identity module that gives a place in the forward pass a stable, hookable name.

    Register forward hooks on it (``model.get_submodule("layers.3.attn.hook_head_out")``)
    to read or replace the tensor that flows through; it holds no parameters, so state
    dicts and checkpoints are unaffected.
    """

    def forward(self, x: Tensor) -> Tensor:
        return x


class Attention(nn.Module):
    """Multi-head (or grouped-query) bidirectional attention.

    Hook point ``hook_head_out``: the per-head outputs [B, T, H, D] (query heads, before
    the output projection); a hook may return a replacement of the same shape.
    """

    def __init__(self, arch: ArchConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads = arch.n_heads
        self.n_kv_heads = arch.n_kv_heads
        self.head_dim = arch.head_dim
        q_out, kv_out = arch.n_heads * arch.head_dim, arch.n_kv_heads * arch.head_dim
        self.q_proj = nn.Linear(arch.d_model, q_out, bias=arch.qkv_bias)
        self.k_proj = nn.Linear(arch.d_model, kv_out, bias=arch.qkv_bias)
        self.v_proj = nn.Linear(arch.d_model, kv_out, bias=arch.qkv_bias)
        self.o_proj = nn.Linear(q_out, arch.d_model, bias=False)
        self.attn_fn: AttentionFn = sdpa_attention
        self.hook_head_out = HookPoint()

    def head_outputs(self, x: Tensor, rotary: Rotary, cos: Tensor, sin: Tensor,
                     mask: Tensor | None = None, empty: Tensor | None = None) -> Tensor:
        """Each query head's attention output [B, H, T, D], before the output projection.

        The one implementation of q/k/v, RoPE and the attention function: the forward
        pass and the exhaustive pruning oracle both use it.
        """
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = rotary.apply(q, cos, sin), rotary.apply(k, cos, sin)
        out = self.attn_fn(q, k, v, mask=mask, module=self)
        if empty is not None:  # query rows that may attend to nothing output 0
            out = out.masked_fill(empty, 0.0)
        return out

    def forward(self, x: Tensor, rotary: Rotary, cos: Tensor, sin: Tensor,
                mask: Tensor | None, empty: Tensor | None = None) -> Tensor:
        b, t, _ = x.shape
        out = self.hook_head_out(self.head_outputs(x, rotary, cos, sin, mask, empty)
                                 .transpose(1, 2))  # [B, T, H, D]
        return self.o_proj(out.reshape(b, t, self.n_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, arch: ArchConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(arch.d_model, arch.mlp_hidden, bias=False)
        self.up_proj = nn.Linear(arch.d_model, arch.mlp_hidden, bias=False)
        self.down_proj = nn.Linear(arch.mlp_hidden, arch.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, arch: ArchConfig, layer_idx: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(arch.d_model, arch.rms_norm_eps)
        self.attn = Attention(arch, layer_idx)
        self.mlp_norm = RMSNorm(arch.d_model, arch.rms_norm_eps)
        self.mlp = MLP(arch)

    def forward(self, x: Tensor, rotary: Rotary, cos: Tensor, sin: Tensor,
                mask: Tensor | None, empty: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.attn_norm(x), rotary, cos, sin, mask, empty)
        return x + self.mlp(self.mlp_norm(x))


@dataclass
class DiffusionLMOutput:
    """Model output. ``logits`` are raw: for a family with a logit shift they are not aligned."""

    logits: Tensor


def _as_attend_mask(attention_mask: Tensor | None, batch: int, length: int) -> Tensor | None:
    """Turn a user mask into a boolean SDPA mask (True = attend).

    A 2-D [B, T] padding mask masks pad *keys* only: every query row, pads included,
    attends to the valid keys, so no row is empty and nothing becomes NaN. A 4-D
    [B, 1, T, T] mask (boolean, or additive with large negatives) is used as given.
    """
    if attention_mask is None:
        return None
    m = attention_mask
    if m.dim() == 2:
        if m.shape != (batch, length):
            raise ValueError(
                f"attention_mask has shape {tuple(m.shape)}; expected [batch, seq] = "
                f"[{batch}, {length}] (or a 4-D [B, 1, T, T] mask)"
            )
        if bool(m.all()):
            return None
        return m.bool()[:, None, None, :]
    if m.dim() == 4:
        return m if m.dtype == torch.bool else m > torch.finfo(m.dtype).min / 2
    raise ValueError(
        f"attention_mask must be [B, T] (padding) or [B, 1, T, T]; got shape {tuple(m.shape)}"
    )


class DiffusionLM(nn.Module):
    """Native LLaDA / Dream network. Build it with :func:`headig.load_model`."""

    def __init__(self, family: Family) -> None:
        super().__init__()
        arch = family.arch
        self.family = family
        self.arch = arch
        self.embed = nn.Embedding(arch.vocab_size, arch.d_model)
        self.layers = nn.ModuleList(Block(arch, i) for i in range(arch.n_layers))
        self.norm = RMSNorm(arch.d_model, arch.rms_norm_eps)
        self.lm_head = nn.Linear(arch.d_model, arch.vocab_size, bias=False)
        self.rotary = Rotary(arch.head_dim, arch.rope_theta, family.spec.rope_in_float32)
        self.gradient_checkpointing = False
        self.name_or_path: str | None = None

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    def set_attention_fn(self, fn: AttentionFn | Callable | None,
                         layers: list[int] | None = None) -> None:
        """Plug an attention function into some or all layers (None = dense SDPA)."""
        for i in range(len(self.layers)) if layers is None else layers:
            self.layers[i].attn.attn_fn = fn or sdpa_attention

    def hidden_states(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                      position_ids: Tensor | None = None) -> Tensor:
        """Final normalised hidden states [B, T, d_model]."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, seq]; got shape {tuple(input_ids.shape)}")
        b, t = input_ids.shape
        mask = _as_attend_mask(attention_mask, b, t)
        if mask is not None and mask.shape[-2] > 1:
            # Rows with nothing to attend to would produce NaN; let them attend to all and
            # zero them below (the official Dream code returns 0 there).
            empty = ~mask.any(-1, keepdim=True)
            if bool(empty.any()):
                mask = mask | empty
            else:
                empty = None
        else:
            empty = None
        if position_ids is None:
            position_ids = torch.arange(t, device=input_ids.device).expand(b, t)
        cos, sin = self.rotary.cos_sin(position_ids)
        x = self.embed(input_ids)
        for block in self.layers:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, self.rotary, cos, sin, mask, empty,
                               use_reentrant=False)
            else:
                x = block(x, self.rotary, cos, sin, mask, empty)
        return self.norm(x)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                position_ids: Tensor | None = None, *,
                logits_at: Tensor | None = None) -> DiffusionLMOutput:
        """Raw logits [B, T, V]; with ``logits_at`` (bool [B, T]) only those rows, [N, V].

        Selecting rows before the unembedding saves memory on large vocabularies.
        """
        h = self.hidden_states(input_ids, attention_mask, position_ids)
        if logits_at is not None:
            if logits_at.shape != input_ids.shape:
                raise ValueError(
                    f"logits_at must be a bool mask shaped like input_ids {tuple(input_ids.shape)}; "
                    f"got {tuple(logits_at.shape)}"
                )
            h = h[logits_at.bool()]
        return DiffusionLMOutput(logits=self.lm_head(h))
