"""Per-family description: the small table that says where things live in a model.

Everything headig does to a model (gating heads, masking, sparse attention, losses,
generation) reads this table instead of special-casing a family. Adding a family means
one file that registers a :class:`FamilySpec` plus a test.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class ArchConfig:
    """Family-independent architecture numbers of a native model."""

    family: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    mlp_hidden: int
    vocab_size: int
    rope_theta: float
    rms_norm_eps: float
    qkv_bias: bool
    mask_token_id: int
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    max_position_embeddings: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def group_size(self) -> int:
        """Query heads per KV head (1 for plain multi-head attention)."""
        return self.n_heads // self.n_kv_heads


@dataclass(frozen=True)
class FamilySpec:
    """What differs between diffusion-LM families, as data.

    Attributes:
        name: short family name ("llada", "dream").
        model_types: ``config.json`` ``model_type`` values this family loads.
        logit_shift: 0 when output row i predicts token i (LLaDA); 1 when it predicts
            token i+1, so the prediction for position i is row i-1 (Dream).
        rope_in_float32: rotate q/k in float32 (LLaDA) or in the activation dtype with
            float32-computed cos/sin (Dream); matters only for half-precision parity.
        parse_config: ``config.json`` dict -> :class:`ArchConfig`.
        map_weight_name: official state-dict key -> native key (None = ignore the key).
        official_layers: path to the layer list in the *official* remote-code model.
        official_out_proj: attribute path, inside one official layer, of the attention
            output projection (the module whose input is the concatenated head outputs).
    """

    name: str
    model_types: tuple[str, ...]
    logit_shift: int
    rope_in_float32: bool
    parse_config: Callable[[Mapping[str, Any]], ArchConfig]
    map_weight_name: Callable[[str], str | None]
    official_layers: str
    official_out_proj: str


_REGISTRY: dict[str, FamilySpec] = {}

HOOK_HEAD_OUT = "hook_head_out"
HOOK_POINTS = (HOOK_HEAD_OUT,)  # named hook points of every native attention layer


def register_family(spec: FamilySpec) -> FamilySpec:
    """Make a family loadable by :func:`headig.load_model` and known to :func:`family_of`."""
    for model_type in spec.model_types:
        _REGISTRY[model_type.lower()] = spec
    return spec


def supported_model_types() -> list[str]:
    return sorted({t for spec in _REGISTRY.values() for t in spec.model_types})


def spec_for_model_type(model_type: str) -> FamilySpec:
    spec = _REGISTRY.get(str(model_type).lower())
    if spec is None:
        raise ValueError(
            f"unsupported model_type {model_type!r}; headig supports the families "
            f"{supported_model_types()} (LLaDA and Dream checkpoints)"
        )
    return spec


def config_int(cfg: Mapping[str, Any], key: str) -> int:
    """A required positive integer config value; a ValueError naming the key otherwise.

    A missing key raises KeyError(key), which :func:`parse_arch_config` turns into a
    ValueError naming the file and the key.
    """
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"key {key!r} = {value!r}; expected a positive integer")
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"key {key!r} = {value!r}; expected a positive integer") from None
    if number < 1 or number != float(value):
        raise ValueError(f"key {key!r} = {value!r}; expected a positive integer")
    return number


def parse_arch_config(cfg: Any, source: str = "config.json") -> tuple[FamilySpec, ArchConfig]:
    """(family spec, architecture) of a ``config.json`` object, read by its ``model_type``.

    Every malformed config (not an object, no or unknown ``model_type``, a missing or bad
    key) raises ValueError naming ``source`` and the key, before any weight is read.
    """
    if not isinstance(cfg, Mapping):
        raise ValueError(f"{source} holds a JSON {type(cfg).__name__}; expected an object of "
                         'config keys such as {"model_type": "llada", "n_heads": 32, ...}')
    if "model_type" not in cfg:
        raise ValueError(f"{source} has no 'model_type' key; expected one of "
                         f"{supported_model_types()}")
    try:
        spec = spec_for_model_type(cfg["model_type"])
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None
    try:
        arch = spec.parse_config(cfg)
    except KeyError as err:
        raise ValueError(f"{source} lacks the key {err.args[0]!r}, which {spec.name} configs "
                         "need") from None
    except (TypeError, ValueError, ZeroDivisionError, AttributeError) as err:
        raise ValueError(f"{source}: {err}") from None
    return spec, arch


def _get_path(root: Any, path: str) -> Any:
    obj = root
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


@dataclass(frozen=True)
class Family:
    """A loaded model's family description: sizes, ids, and where heads are gated.

    Works for headig's native models and for the official remote-code models loaded with
    ``trust_remote_code=True`` on transformers 4.x.
    """

    spec: FamilySpec
    arch: ArchConfig
    native: bool

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def n_layers(self) -> int:
        return self.arch.n_layers

    @property
    def n_heads(self) -> int:
        return self.arch.n_heads

    @property
    def n_kv_heads(self) -> int:
        return self.arch.n_kv_heads

    @property
    def head_dim(self) -> int:
        return self.arch.head_dim

    @property
    def mask_token_id(self) -> int:
        return self.arch.mask_token_id

    @property
    def logit_shift(self) -> int:
        return self.spec.logit_shift

    @property
    def n_total_heads(self) -> int:
        return self.arch.n_layers * self.arch.n_heads

    def layers(self, model: nn.Module) -> list[nn.Module]:
        if self.native:
            return list(model.layers)
        return list(_get_path(model, self.spec.official_layers))

    def out_proj(self, model: nn.Module, layer: int) -> nn.Module:
        """The attention output projection of ``layer``; its input holds the head outputs."""
        layer_module = self.layers(model)[layer]
        if self.native:
            return layer_module.attn.o_proj
        return _get_path(layer_module, self.spec.official_out_proj)

    def hook_name(self, layer: int, point: str = HOOK_HEAD_OUT) -> str:
        """Module path of a named hook point of ``layer`` in a native model.

        The one source of hook point names; ``hook_head_out`` carries the per-head
        attention outputs [B, T, H, D] (query heads, before the output projection).
        """
        if point not in HOOK_POINTS:
            raise ValueError(f"unknown hook point {point!r}; expected one of {list(HOOK_POINTS)}")
        if not 0 <= int(layer) < self.n_layers:
            raise ValueError(f"layer {layer} out of range for a model with {self.n_layers} layers")
        return f"layers.{int(layer)}.attn.{point}"

    def hook_point(self, model: nn.Module, layer: int, point: str = HOOK_HEAD_OUT) -> nn.Module:
        """The named hook point module of ``layer`` (native models only)."""
        if not self.native:
            raise TypeError(f"{type(model).__name__} is an official remote-code model without "
                            "named hook points; hook the output projection "
                            "(Family.out_proj) or load it with headig.load_model")
        return model.get_submodule(self.hook_name(layer, point))


def family_of(model: nn.Module) -> Family:
    """Describe a loaded model: a native headig model or an official remote-code model."""
    native_family = getattr(model, "family", None)
    if isinstance(native_family, Family):
        return native_family
    config = getattr(model, "config", None)
    if config is None:
        raise TypeError(
            f"cannot tell the family of {type(model).__name__}: it has no .config; pass a "
            "model from headig.load_model or an official LLaDA/Dream model"
        )
    cfg = config.to_dict() if hasattr(config, "to_dict") else dict(vars(config))
    spec, arch = parse_arch_config(cfg, f"the config of {type(model).__name__}")
    return Family(spec=spec, arch=arch, native=False)


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """Accept torch dtypes and the usual strings ("bf16", "bfloat16", "float32", "auto")."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
        "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
        "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
        "auto": None,
    }
    key = str(dtype).lower().removeprefix("torch.")
    if key not in names:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(names)}")
    return names[key]
