"""Writing a toy model as an official LLaDA checkpoint folder (config, weights, tokenizer).

Both toy trainers (:mod:`headig.toy.train_tiny`, :mod:`headig.toy.train_long`) write
through here, so the folders they make load with :func:`headig.load_model` exactly like a
published checkpoint and differ only in their sizes and vocabularies.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headig.models.modeling import DiffusionLM


@dataclass(frozen=True)
class WordVocabulary:
    """A whitespace-split word vocabulary with its special tokens (pad = end-of-text)."""

    words: Sequence[str]
    specials: Sequence[str]
    bos: str
    eos: str
    mask: str
    unk: str
    max_length: int

    def special_map(self) -> dict[str, str]:
        return {"bos_token": self.bos, "eos_token": self.eos, "pad_token": self.eos,
                "mask_token": self.mask, "unk_token": self.unk}


def word_tokenizer(vocab: WordVocabulary) -> Any:
    """A word-level fast tokenizer over ``vocab.words`` (whitespace split)."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    ids = {w: i for i, w in enumerate(vocab.words)}
    tok = Tokenizer(models.WordLevel(ids, unk_token=vocab.unk))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False)
                            for s in vocab.specials])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=vocab.bos, eos_token=vocab.eos, pad_token=vocab.eos,
        mask_token=vocab.mask, unk_token=vocab.unk, clean_up_tokenization_spaces=False,
        model_max_length=vocab.max_length)


def save_word_tokenizer(tokenizer: Any, vocab: WordVocabulary, out: Path) -> None:
    """tokenizer.json plus configs that transformers 4.x and 5.x both read."""
    tokenizer.backend_tokenizer.save(str(out / "tokenizer.json"))
    specials = vocab.special_map()
    ids = tokenizer.get_vocab()
    decoder = {str(ids[s]): {"content": s, "lstrip": False, "normalized": False,
                             "rstrip": False, "single_word": False, "special": True}
               for s in vocab.specials}
    config = {"added_tokens_decoder": decoder, **specials,
              "clean_up_tokenization_spaces": False,
              "model_input_names": ["input_ids", "attention_mask"],
              "model_max_length": vocab.max_length, "tokenizer_class": "PreTrainedTokenizerFast"}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")


def official_llada_config(vocab: WordVocabulary, *, n_layers: int, n_heads: int,
                          n_kv_heads: int, head_dim: int, mlp_hidden: int,
                          embedding_size: int) -> dict[str, Any]:
    """The official LLaDA ``config.json`` for a toy model (GQA through ``n_kv_heads``)."""
    words = list(vocab.words)
    d_model = n_heads * head_dim
    return {
        "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0,
        "architectures": ["LLaDAModelLM"], "attention_dropout": 0.0,
        "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
        "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig",
                     "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
                     "AutoModel": "modeling_llada.LLaDAModelLM"},
        "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama",
        "d_model": d_model, "embedding_dropout": 0.0, "embedding_size": embedding_size,
        "eos_token_id": words.index(vocab.eos), "flash_attention": False,
        "include_bias": False, "include_qkv_bias": False, "init_cutoff_factor": None,
        "init_device": "meta", "init_fn": "mitchell", "init_std": 0.02,
        "input_emb_norm": False, "layer_norm_type": "rms", "layer_norm_with_affine": True,
        "mask_token_id": words.index(vocab.mask), "max_sequence_length": vocab.max_length,
        "mlp_hidden_size": mlp_hidden, "mlp_ratio": max(1, mlp_hidden // d_model),
        "model_type": "llada", "multi_query_attention": None,
        "n_heads": n_heads, "n_kv_heads": n_kv_heads, "n_layers": n_layers,
        "pad_token_id": words.index(vocab.eos), "precision": "fp32",
        "residual_dropout": 0.0, "rms_norm_eps": 1e-05, "rope": True,
        "rope_full_precision": True, "rope_theta": 10000.0, "scale_logits": False,
        "use_cache": False, "vocab_size": len(words), "weight_tying": False,
    }


def save_checkpoint(model: DiffusionLM, config: dict[str, Any], out: str | os.PathLike, *,
                    state_dict: Callable[[DiffusionLM], dict[str, Any]],
                    save_tokenizer: Callable[[Path], None]) -> Path:
    """config.json, model.safetensors (official weight names) and the tokenizer files."""
    from safetensors.torch import save_file

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file(state_dict(model), str(folder / "model.safetensors"), metadata={"format": "pt"})
    save_tokenizer(folder)
    return folder
