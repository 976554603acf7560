"""LLaDA (GSAI-ML/LLaDA-8B-Base/Instruct, LLaDA-1.5): config keys and weight names."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from headig.models.family import ArchConfig, FamilySpec, config_int, register_family

_BLOCK_NAMES = {
    "attn_norm": "attn_norm",
    "q_proj": "attn.q_proj",
    "k_proj": "attn.k_proj",
    "v_proj": "attn.v_proj",
    "attn_out": "attn.o_proj",
    "ff_norm": "mlp_norm",
    "ff_proj": "mlp.gate_proj",  # the SiLU-gated branch
    "up_proj": "mlp.up_proj",
    "ff_out": "mlp.down_proj",
}
_TOP_NAMES = {"wte": "embed", "ln_f": "norm", "ff_out": "lm_head"}
_BLOCK_RE = re.compile(r"^model\.transformer\.blocks\.(\d+)\.(\w+)\.(weight|bias)$")
_TOP_RE = re.compile(r"^model\.transformer\.(\w+)\.(weight|bias)$")


def _require(cfg: Mapping[str, Any], key: str, expected: Any) -> None:
    value = cfg.get(key, expected)
    if value != expected:
        raise ValueError(
            f"LLaDA config has {key}={value!r}; headig supports only {key}={expected!r} "
            "(the layout of the published LLaDA checkpoints)"
        )


def parse_config(cfg: Mapping[str, Any]) -> ArchConfig:
    for key, expected in (("block_type", "llama"), ("activation_type", "silu"),
                          ("layer_norm_type", "rms"), ("rope", True), ("alibi", False),
                          ("include_bias", False), ("attention_layer_norm", False),
                          ("scale_logits", False)):
        _require(cfg, key, expected)
    d_model, n_heads = config_int(cfg, "d_model"), config_int(cfg, "n_heads")
    n_kv = cfg.get("n_kv_heads") or n_heads
    if cfg.get("multi_query_attention"):
        n_kv = 1
    hidden = cfg.get("mlp_hidden_size") or int(cfg.get("mlp_ratio", 4)) * d_model
    vocab = int(cfg.get("embedding_size") or cfg["vocab_size"])
    return ArchConfig(
        family="llada",
        n_layers=config_int(cfg, "n_layers"),
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=int(n_kv),
        head_dim=d_model // n_heads,
        mlp_hidden=int(hidden),
        vocab_size=vocab,
        rope_theta=float(cfg.get("rope_theta", 10000.0)),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
        qkv_bias=bool(cfg.get("include_qkv_bias", False)),
        mask_token_id=int(cfg.get("mask_token_id", 126336)),
        pad_token_id=cfg.get("pad_token_id"),
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_id=cfg.get("eos_token_id"),
        max_position_embeddings=cfg.get("max_sequence_length"),
        extra={"tie_embeddings": bool(cfg.get("weight_tying", False))},
    )


def map_weight_name(name: str) -> str | None:
    if m := _BLOCK_RE.match(name):
        layer, part, kind = m.groups()
        if part in _BLOCK_NAMES:
            return f"layers.{layer}.{_BLOCK_NAMES[part]}.{kind}"
    elif m := _TOP_RE.match(name):
        part, kind = m.groups()
        if part in _TOP_NAMES:
            return f"{_TOP_NAMES[part]}.{kind}"
    raise KeyError(f"unexpected LLaDA weight {name!r}")


LLADA = register_family(FamilySpec(
    name="llada",
    model_types=("llada",),
    logit_shift=0,
    rope_in_float32=True,
    parse_config=parse_config,
    map_weight_name=map_weight_name,
    official_layers="model.transformer.blocks",
    official_out_proj="attn_out",
))
