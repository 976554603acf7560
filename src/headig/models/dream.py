"""Dream (Dream-org/Dream-v0-Base/Instruct-7B): a Qwen2-style network with shifted logits."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from headig.models.family import ArchConfig, FamilySpec, config_int, register_family

_LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn.q_proj",
    "self_attn.k_proj": "attn.k_proj",
    "self_attn.v_proj": "attn.v_proj",
    "self_attn.o_proj": "attn.o_proj",
    "post_attention_layernorm": "mlp_norm",
    "mlp.gate_proj": "mlp.gate_proj",
    "mlp.up_proj": "mlp.up_proj",
    "mlp.down_proj": "mlp.down_proj",
}
_TOP_NAMES = {"model.embed_tokens": "embed", "model.norm": "norm", "lm_head": "lm_head"}
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.([\w.]+)\.(weight|bias)$")
_TOP_RE = re.compile(r"^([\w.]+)\.(weight|bias)$")


def parse_config(cfg: Mapping[str, Any]) -> ArchConfig:
    if cfg.get("hidden_act", "silu") != "silu":
        raise ValueError(f"Dream config has hidden_act={cfg.get('hidden_act')!r}; expected 'silu'")
    if cfg.get("rope_scaling") not in (None, {}) and (cfg["rope_scaling"] or {}).get(
            "rope_type", cfg["rope_scaling"].get("type", "default")) != "default":
        raise ValueError(f"Dream config has rope_scaling={cfg['rope_scaling']!r}; only plain RoPE is supported")
    hidden, n_heads = config_int(cfg, "hidden_size"), config_int(cfg, "num_attention_heads")
    return ArchConfig(
        family="dream",
        n_layers=config_int(cfg, "num_hidden_layers"),
        d_model=hidden,
        n_heads=n_heads,
        n_kv_heads=int(cfg.get("num_key_value_heads") or n_heads),
        head_dim=int(cfg.get("head_dim") or hidden // n_heads),
        mlp_hidden=config_int(cfg, "intermediate_size"),
        vocab_size=config_int(cfg, "vocab_size"),
        rope_theta=float(cfg.get("rope_theta", 10000.0)),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        qkv_bias=True,
        mask_token_id=int(cfg.get("mask_token_id", 151666)),
        pad_token_id=cfg.get("pad_token_id"),
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_id=cfg.get("eos_token_id"),
        max_position_embeddings=cfg.get("max_position_embeddings"),
        extra={"tie_embeddings": bool(cfg.get("tie_word_embeddings", False))},
    )


def map_weight_name(name: str) -> str | None:
    if name.endswith("rotary_emb.inv_freq"):
        return None  # recomputed, never trusted from a file
    if m := _LAYER_RE.match(name):
        layer, part, kind = m.groups()
        if part in _LAYER_NAMES:
            return f"layers.{layer}.{_LAYER_NAMES[part]}.{kind}"
    elif m := _TOP_RE.match(name):
        part, kind = m.groups()
        if part in _TOP_NAMES:
            return f"{_TOP_NAMES[part]}.{kind}"
    raise KeyError(f"unexpected Dream weight {name!r}")


DREAM = register_family(FamilySpec(
    name="dream",
    model_types=("Dream",),
    logit_shift=1,
    rope_in_float32=False,
    parse_config=parse_config,
    map_weight_name=map_weight_name,
    official_layers="model.layers",
    official_out_proj="self_attn.o_proj",
))
