"""``--model_args`` of headig-dllm: a typed configuration, parsed and validated in one place.

:class:`ModelArgs` has one typed field per model_arg (default, help, allowed values and
group in the field's metadata); :func:`parse_model_args` is the one place where lm-eval's
strings become a ModelArgs and every combination is checked. Validation runs before any
weights are loaded, so a typo fails at once with a message that lists the valid arguments.
The table :data:`ARGS` (derived from the fields) is also what ``docs/lm-eval.md`` documents
and what the cache fingerprint is built from. Choice lists are imported from the headig
modules that implement them.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from headig.cli._common import DTYPES as CLI_DTYPES
from headig.diffusion.generation import DREAM_ALGS
from headig.diffusion.generation import REMASKING as _GEN_REMASKING
from headig.importance import ORIGINAL_SIGNS, RANK_BY
from headig.sparse.budgets import KV_GROUPS as _KV_GROUPS
from headig.sparse.kernels import KERNELS
from headig.sparse.patch import MODES as SPARSE_MODES

# Choice lists come from the library that implements them, so a value the library accepts
# is a value model_args accepts, and the two cannot drift apart.
ATTENTION: tuple[str, ...] = SPARSE_MODES
PRUNE: tuple[str, ...] = ("most", "least", "random")  # headig.interventions.select_heads(which=)
PRUNE_BY: tuple[str, ...] = RANK_BY
IMPORTANCE_SIGN: tuple[str, ...] = ORIGINAL_SIGNS
REMASKING: tuple[str, ...] = _GEN_REMASKING
ALGS: tuple[str, ...] = DREAM_ALGS
DTYPES: tuple[str, ...] = CLI_DTYPES
KV_GROUPS: tuple[str, ...] = _KV_GROUPS
SPARSE_KERNELS: tuple[str, ...] = KERNELS


@dataclass(frozen=True)
class Arg:
    """One model argument: its parsed type, default, allowed values and help text."""

    name: str
    kind: str  # "str" | "int" | "float" | "bool" | "layers" | "batch"
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    group: str = "model"


def _arg(kind: str, default: Any, help: str, *, choices: tuple[str, ...] | None = None,
         group: str = "model") -> Any:
    """A :class:`ModelArgs` field that carries its model_arg description."""
    return field(default=default, metadata={"kind": kind, "help": help, "choices": choices,
                                            "group": group})


@dataclass(frozen=True)
class ModelArgs:
    """The typed configuration of headig-dllm: one field per model_arg.

    Build it with :func:`parse_model_args` (or :meth:`parse`), which converts lm-eval's
    strings, applies the defaults and checks every combination; ``given`` records which
    arguments were set explicitly. The field list is the authoritative table (:data:`ARGS`)
    that ``docs/lm-eval.md`` documents and the cache fingerprint is built from.
    """

    # -- model
    pretrained: str | None = _arg("str", None,
        "checkpoint folder (or hub id) of a LLaDA or Dream model; required")
    tokenizer: str | None = _arg("str", None,
        "tokenizer folder if it differs from `pretrained`")
    dtype: str = _arg("str", "auto",
        "weights/activations dtype; auto = bfloat16 on CUDA, float32 on CPU", choices=DTYPES)
    device: str | None = _arg("str", None,
        "torch device (also --device); default cuda when available, else cpu; under "
        "accelerate/torchrun each process uses its local device")
    batch_size: int | str = _arg("batch", 1,
        "requests per forward (also --batch_size); results do not depend on it; 'auto' "
        "uses max_batch_size")
    max_batch_size: int = _arg("int", 64,
        "batch size used for batch_size=auto")
    max_length: int | None = _arg("int", None,
        "context window in tokens; default the checkpoint's max_position_embeddings "
        "(4096 if absent). Longer prompts are cut on the left")
    add_bos_token: bool = _arg("bool", False,
        "prepend the tokenizer's BOS token to every context")
    trust_remote_code: bool = _arg("bool", False,
        "accepted for compatibility with --model hf and ignored: headig never runs "
        "checkpoint code")
    # -- intervention
    attention: str = _arg("str", "standard",
        "attention: dense (standard), uniform block-sparse or importance-adaptive "
        "block-sparse", choices=ATTENTION, group="intervention")
    keep: float | None = _arg("float", None,
        "sparse attention: fraction of key blocks kept per head (library default 0.3; "
        "the original `select`)", group="intervention")
    skip: float | None = _arg("float", None,
        "sparse attention: fraction of denoising steps run dense before the pattern is "
        "built (library default 0.2)", group="intervention")
    block_size: int | None = _arg("int", None,
        "sparse attention: key/query block size (library default)", group="intervention")
    min_keep: float | None = _arg("float", None,
        "adaptive attention: lowest per-head keep ratio", group="intervention")
    max_keep: float | None = _arg("float", None,
        "adaptive attention: highest per-head keep ratio", group="intervention")
    kv_groups: str | None = _arg("str", None,
        "adaptive attention under GQA: per query head or per KV group",
        choices=KV_GROUPS, group="intervention")
    min_seq_len: int | None = _arg("int", None,
        "sparse attention: shorter sequences stay dense (library default: measured per "
        "device, 1024 tokens); 0 always runs sparse", group="intervention")
    sparse_kernel: str | None = _arg("str", None,
        "sparse attention kernel (library default auto: compiled flex_attention, else "
        "gather)", choices=SPARSE_KERNELS, group="intervention")
    row_budgets: bool | None = _arg("bool", None,
        "sparse attention: count each padded row's budget on its own tokens, so results "
        "do not depend on batch composition (library default false: budgets on the padded "
        "length)", group="intervention")
    importance: str | None = _arg("str", None,
        "head importance file (.safetensors from headig, or the original "
        "head_importance.pt); needed by prune=most|least and attention=adaptive",
        group="intervention")
    importance_sign: str | None = _arg("str", None,
        "sign of an original .pt file: 'loss' (raw IG of the loss, negative = helps) or"
        " 'helps'", choices=IMPORTANCE_SIGN, group="intervention")
    prune: str | None = _arg("str", None,
        "remove heads: the most or least important ones, or random ones",
        choices=PRUNE, group="intervention")
    prune_k: int | None = _arg("int", None,
        "number of heads to remove (or use prune_k_frac)", group="intervention")
    prune_k_frac: float | None = _arg("float", None,
        "fraction of heads (in the chosen layers) to remove", group="intervention")
    prune_by: str = _arg("str", "signed",
        "rank heads by signed score or by |score|", choices=PRUNE_BY, group="intervention")
    layers: tuple | None = _arg("layers", None,
        "layers to prune in: '3', '0-7' (inclusive), '-4:-1' (inclusive, negatives "
        "count from the end) or '0;2;5'; default all attributed layers", group="intervention")
    seed: int = _arg("int", 1234,
        "seed of random pruning, Monte-Carlo masks and sampling", group="intervention")
    # -- likelihood
    mc_num: int = _arg("int", 128,
        "Monte-Carlo samples per loglikelihood request (1 is exact for one-token "
        "continuations, which are always scored exactly)", group="likelihood")
    mc_batch_size: int = _arg("int", 32,
        "Monte-Carlo rows per stratified group (the original batch_size); each forward "
        "holds batch_size x mc_batch_size rows", group="likelihood")
    cfg: float = _arg("float", 0.0,
        "classifier-free guidance scale (likelihood and generation)", group="likelihood")
    greedy_check: bool = _arg("bool", True,
        "compute is_greedy (argmax of the fully masked continuation reproduces it); "
        "costs at most one extra row per request", group="likelihood")
    # -- generation
    gen_length: int = _arg("int", 256,
        "new tokens per generation (max_gen_toks); tasks' max_gen_toks and --gen_kwargs"
        " override it", group="generation")
    max_new_tokens: int | None = _arg("int", None,
        "alias of gen_length", group="generation")
    steps: int | None = _arg("int", None,
        "denoising steps; default gen_length (one token per step)", group="generation")
    block_length: int | None = _arg("int", None,
        "LLaDA-style semi-autoregressive block length (default one block)", group="generation")
    remasking: str | None = _arg("str", None,
        "LLaDA-style remasking (default low_confidence)", choices=REMASKING, group="generation")
    alg: str | None = _arg("str", None,
        "Dream-style ordering; default entropy for Dream checkpoints (LLaDA-style for "
        "LLaDA)", choices=ALGS, group="generation")
    alg_temp: float = _arg("float", 0.0,
        "Dream-style: temperature of the position choice", group="generation")
    temperature: float = _arg("float", 0.0,
        "token sampling temperature (0 = greedy)", group="generation")
    top_p: float | None = _arg("float", None,
        "Dream-style nucleus sampling", group="generation")
    top_k: int | None = _arg("int", None,
        "Dream-style top-k sampling", group="generation")
    eps: float = _arg("float", 1e-3,
        "Dream-style final timestep", group="generation")
    stop_early: bool = _arg("bool", True,
        "stop denoising once every row has committed EOS with no mask before it (the "
        "text cannot change any more)", group="generation")
    # set by the parser, not a model_arg
    given: frozenset[str] = field(default_factory=frozenset, compare=False)

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | str | None) -> ModelArgs:
        """Same as :func:`parse_model_args`."""
        return parse_model_args(raw)

    @property
    def values(self) -> dict[str, Any]:
        """Every model_arg and its value, in table order."""
        return {name: getattr(self, name) for name in ARG_NAMES}

    def as_dict(self) -> dict[str, Any]:
        return self.values

    def fingerprint_items(self) -> dict[str, Any]:
        """Everything that can change a result: every semantic argument, given or defaulted."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.values.items()
                if k not in NON_SEMANTIC}


ARGS: tuple[Arg, ...] = tuple(
    Arg(f.name, f.metadata["kind"], f.default, f.metadata["help"], f.metadata["choices"],
        f.metadata["group"]) for f in fields(ModelArgs) if "kind" in f.metadata)

ARG_NAMES: tuple[str, ...] = tuple(a.name for a in ARGS)
_BY_NAME: dict[str, Arg] = {a.name: a for a in ARGS}

# Arguments that never change a result (only speed, memory or placement).
NON_SEMANTIC = frozenset({"batch_size", "max_batch_size", "device", "trust_remote_code"})

# Per-request generation settings a task's generation_kwargs (or --gen_kwargs) may set.
GEN_KWARGS = ("until", "do_sample", "max_gen_toks", "max_new_tokens", "max_tokens",
              "max_completion_tokens", "gen_length", "steps", "block_length", "remasking",
              "alg", "alg_temp", "temperature", "top_p", "top_k", "eps", "cfg")


class ModelArgsError(ValueError):
    """A bad ``--model_args`` value; the message says what is expected."""


def _valid_list() -> str:
    groups: dict[str, list[str]] = {}
    for a in ARGS:
        groups.setdefault(a.group, []).append(a.name)
    return "; ".join(f"{g}: {', '.join(names)}" for g, names in groups.items())


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ModelArgsError(f"{name}={value!r}: expected true or false")


def _int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ModelArgsError(f"{name}={value!r}: expected an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    try:
        return int(str(value).strip())
    except ValueError:
        raise ModelArgsError(f"{name}={value!r}: expected an integer") from None


def _float(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ModelArgsError(f"{name}={value!r}: expected a number")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ModelArgsError(f"{name}={value!r}: expected a number") from None
    if not math.isfinite(out):
        raise ModelArgsError(f"{name}={value!r}: expected a finite number")
    return out


_RANGE = re.compile(r"^(\d+)-(\d+)$")
_SLICE = re.compile(r"^(-?\d+):(-?\d+)$")


def parse_layers(value: Any) -> tuple[int, ...] | tuple[str, int, int]:
    """Parse a layer selection; ranges with negative ends stay symbolic until the model
    size is known (``("range", start, end)``)."""
    if isinstance(value, bool):
        raise ModelArgsError(f"layers={value!r}: expected layer indices")
    if isinstance(value, int):
        return (value,)
    if isinstance(value, Sequence) and not isinstance(value, str):
        return tuple(_int("layers", v) for v in value)
    text = str(value).strip().replace(" ", "")
    if m := _RANGE.match(text):
        a, b = int(m.group(1)), int(m.group(2))
        if a > b:
            raise ModelArgsError(f"layers={value!r}: empty range (start > end)")
        return tuple(range(a, b + 1))
    if m := _SLICE.match(text):
        return ("range", int(m.group(1)), int(m.group(2)))
    parts = [p for p in re.split(r"[;|/]", text) if p]
    try:
        out = tuple(int(p) for p in parts)
    except ValueError:
        out = ()
    if not out:
        raise ModelArgsError(
            f"layers={value!r}: expected '3', '0-7' (inclusive), '-4:-1' (inclusive, "
            "negative = from the end) or a ';'-separated list like '0;2;5' (commas separate "
            "model_args)")
    return out


def resolve_layers(spec: tuple | None, n_layers: int) -> list[int] | None:
    """Absolute, sorted layer indices for a parsed ``layers`` value.

    Resolution (negative indices, ranges, order) is headig's one layer spec; only the
    model_args spelling is parsed here.
    """
    if spec is None:
        return None
    from headig.interventions import layer_range, normalize_layers

    try:
        if spec and spec[0] == "range":
            return layer_range(spec[1], spec[2], n_layers)
        return normalize_layers(list(spec), n_layers)
    except ValueError as err:
        raise ModelArgsError(f"layers: {err}") from None


def _convert(arg: Arg, value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() == "none" and arg.kind != "str":
        return None
    if arg.kind == "bool":
        return _bool(arg.name, value)
    if arg.kind == "int":
        return _int(arg.name, value)
    if arg.kind == "float":
        return _float(arg.name, value)
    if arg.kind == "layers":
        return parse_layers(value)
    if arg.kind == "batch":
        if isinstance(value, str) and value.strip().lower().startswith("auto"):
            return "auto"
        return _int(arg.name, value)
    text = str(value).strip()
    if arg.choices is not None:
        low = text.lower()
        if low not in arg.choices:
            raise ModelArgsError(f"{arg.name}={value!r}: expected one of {list(arg.choices)}")
        return low
    return text


def _checks(v: dict[str, Any], given: set[str]) -> None:
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ModelArgsError(msg)

    need(v["pretrained"] is not None and str(v["pretrained"]).strip() != "",
         "pretrained is required: --model_args pretrained=PATH_TO_CHECKPOINT")
    bs = v["batch_size"]
    need(bs == "auto" or bs >= 1, f"batch_size={bs}: expected a positive integer or 'auto'")
    need(v["max_batch_size"] >= 1, "max_batch_size must be >= 1")
    need(v["max_length"] is None or v["max_length"] >= 2, "max_length must be >= 2")
    # aliases
    if v["max_new_tokens"] is not None:
        if "gen_length" in given and v["gen_length"] != v["max_new_tokens"]:
            raise ModelArgsError(f"gen_length={v['gen_length']} and max_new_tokens="
                                 f"{v['max_new_tokens']} conflict (they are aliases)")
        v["gen_length"] = v["max_new_tokens"]
    v["max_new_tokens"] = None
    # sparse attention
    sparse_only = [k for k in ("keep", "skip", "block_size", "min_keep", "max_keep",
                               "kv_groups", "min_seq_len", "sparse_kernel", "row_budgets")
                   if v[k] is not None]
    if v["attention"] == "dense":  # the new name; "standard" keeps older cache keys valid
        v["attention"] = "standard"
    if v["attention"] == "standard":
        need(not sparse_only, f"{sparse_only} only apply to sparse attention; add "
             "attention=uniform or attention=adaptive")
    if v["attention"] == "uniform":
        bad = [k for k in ("min_keep", "max_keep", "kv_groups") if v[k] is not None]
        need(not bad, f"{bad} only apply to attention=adaptive")
    need(v["keep"] is None or 0 < v["keep"] <= 1, f"keep={v['keep']}: expected a fraction "
         "in (0, 1]")
    need(v["skip"] is None or 0 <= v["skip"] < 1, f"skip={v['skip']}: expected a fraction "
         "in [0, 1)")
    need(v["min_keep"] is None or 0 < v["min_keep"] <= 1, "min_keep must be in (0, 1]")
    need(v["max_keep"] is None or 0 < v["max_keep"] <= 1, "max_keep must be in (0, 1]")
    need(v["min_seq_len"] is None or v["min_seq_len"] >= 0, "min_seq_len must be >= 0")
    need(v["block_size"] is None or v["block_size"] >= 1, "block_size must be >= 1")
    need(v["attention"] != "adaptive" or v["importance"] is not None,
         "attention=adaptive needs importance=FILE (per-head keep ratios come from the scores)")
    # pruning
    prune_only = [k for k in ("prune_k", "prune_k_frac") if v[k] is not None]
    prune_only += [k for k in ("prune_by", "layers") if k in given]
    if v["prune"] is None:
        need(not prune_only, f"{prune_only} only apply with prune=most|least|random")
    else:
        need((v["prune_k"] is None) != (v["prune_k_frac"] is None),
             "prune needs exactly one of prune_k (a head count) or prune_k_frac (a fraction)")
        need(v["prune"] == "random" or v["importance"] is not None,
             f"prune={v['prune']} needs importance=FILE (only prune=random works without one)")
        need(v["prune_k"] is None or v["prune_k"] >= 1, "prune_k must be >= 1")
        need(v["prune_k_frac"] is None or 0 < v["prune_k_frac"] < 1,
             f"prune_k_frac={v['prune_k_frac']}: expected a fraction in (0, 1)")
    need(v["importance_sign"] is None or v["importance"] is not None,
         "importance_sign only applies together with importance=FILE")
    if v["importance"] is not None:
        path = os.path.expanduser(str(v["importance"]))
        need(os.path.exists(path), f"importance file {v['importance']!r} does not exist")
        need(v["prune"] is not None or v["attention"] == "adaptive",
             "importance=FILE is used by prune=most|least or attention=adaptive; add one "
             "of them")
    # likelihood
    need(v["mc_num"] >= 1, f"mc_num={v['mc_num']}: expected >= 1")
    need(v["mc_batch_size"] >= 1, f"mc_batch_size={v['mc_batch_size']}: expected >= 1")
    need(v["cfg"] >= 0, f"cfg={v['cfg']}: expected >= 0")
    # generation: steps/block_length are checked against gen_length here only when
    # gen_length is given; tasks usually set it per request (max_gen_toks), and then the
    # check runs before any request of that task is generated
    check_generation(v, lengths="gen_length" in given or "max_new_tokens" in given)


def check_generation(v: Mapping[str, Any], *, lengths: bool = True) -> None:
    """Validate generation settings (model_args merged with one request's gen_kwargs);
    ``lengths=False`` skips the gen_length / block_length / steps divisibility checks."""
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ModelArgsError(msg)

    gl, steps, bl = v.get("gen_length"), v.get("steps"), v.get("block_length")
    need(isinstance(gl, int) and gl >= 1, f"gen_length={gl}: expected a positive integer")
    need(steps is None or steps >= 1, f"steps={steps}: expected a positive integer")
    need(bl is None or bl >= 1, f"block_length={bl}: expected a positive integer")
    llada = [k for k in ("block_length", "remasking") if v.get(k) is not None]
    dream = [k for k in ("alg", "top_p", "top_k") if v.get(k) is not None]
    need(not (llada and dream), f"{llada} (LLaDA-style) and {dream} (Dream-style) cannot be "
         "combined; choose one generation style")
    if bl is not None and lengths:
        need(gl % bl == 0, f"gen_length ({gl}) must be a multiple of block_length ({bl})")
        n_blocks = gl // bl
        s = gl if steps is None else steps
        need(s % n_blocks == 0, f"steps ({s}) must be a multiple of the number of blocks "
             f"({n_blocks} = gen_length {gl} / block_length {bl})")
    temp = v.get("temperature", 0.0) or 0.0
    need(temp >= 0, f"temperature={temp}: expected >= 0")
    need((v.get("alg_temp") or 0.0) >= 0, "alg_temp must be >= 0")
    tp = v.get("top_p")
    need(tp is None or 0 < tp <= 1, f"top_p={tp}: expected a value in (0, 1]")
    tk = v.get("top_k")
    need(tk is None or tk >= 1, f"top_k={tk}: expected a positive integer")
    eps = v.get("eps", 1e-3)
    need(0 < eps < 1, f"eps={eps}: expected a value in (0, 1)")
    need(v.get("remasking") in (None, *REMASKING), f"remasking must be one of {REMASKING}")
    need(v.get("alg") in (None, *ALGS), f"alg must be one of {ALGS}")


def parse_model_args(raw: Mapping[str, Any] | str | None) -> ModelArgs:
    """Parse and validate model arguments (a dict, or lm-eval's ``k=v,k2=v2`` string).

    Raises :class:`ModelArgsError` naming the bad argument and listing the valid ones.
    """
    if raw is None:
        raw = {}
    if isinstance(raw, str):
        raw = _split_arg_string(raw)
    unknown = [k for k in raw if k not in _BY_NAME]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, ARG_NAMES, n=1)
            hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ModelArgsError(f"unknown headig-dllm model_args {', '.join(hints)}. Valid "
                             f"arguments: {_valid_list()}")
    values = {a.name: a.default for a in ARGS}
    given = set()
    for k, value in raw.items():
        if value is None:
            continue
        values[k] = _convert(_BY_NAME[k], value)
        given.add(k)
    _checks(values, given)
    return ModelArgs(**values, given=frozenset(given))


def _split_arg_string(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise ModelArgsError(f"model_args item {part!r} is not key=value")
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def merge_generation(base: ModelArgs, gen_kwargs: Mapping[str, Any],
                     default_family_alg: str | None,
                     warn: Callable[[str], None] | None = None, *,
                     lengths: bool = True) -> dict[str, Any]:
    """Generation settings for one request group: model_args defaults updated by the task's
    ``generation_kwargs`` (which ``--gen_kwargs`` has already updated).

    Returns a dict with ``until`` (list of stop strings), ``gen_length``, ``steps``,
    ``block_length``, ``remasking``, ``alg``, ``alg_temp``, ``temperature``, ``top_p``,
    ``top_k``, ``eps``, ``cfg``.
    """
    kw = dict(gen_kwargs or {})
    unknown = sorted(k for k in kw if k not in GEN_KWARGS)
    if unknown and warn is not None:
        warn(f"headig-dllm ignores generation kwargs {unknown} (supported: {list(GEN_KWARGS)})")
    out: dict[str, Any] = {k: base.values[k] for k in (
        "gen_length", "steps", "block_length", "remasking", "alg", "alg_temp", "temperature",
        "top_p", "top_k", "eps", "cfg")}
    until = kw.get("until")
    if until is None:
        until = []
    elif isinstance(until, str):
        until = [until]
    elif not isinstance(until, (list, tuple)):
        raise ModelArgsError(f"until={until!r}: expected a string or a list of strings")
    out["until"] = [str(u) for u in until]
    for alias in ("max_gen_toks", "gen_length", "max_new_tokens", "max_tokens",
                  "max_completion_tokens"):
        if kw.get(alias) is not None:
            out["gen_length"] = _int(alias, kw[alias])
            break
    for k, conv in (("steps", _int), ("block_length", _int), ("top_k", _int),
                    ("alg_temp", _float), ("temperature", _float), ("top_p", _float),
                    ("eps", _float), ("cfg", _float)):
        if k in kw:
            out[k] = None if kw[k] is None else conv(k, kw[k])
    for k in ("remasking", "alg"):
        if k in kw:
            out[k] = None if kw[k] is None else str(kw[k]).lower()
    if kw.get("do_sample") is False or str(kw.get("do_sample")).lower() == "false":
        if out["temperature"] and warn is not None:
            warn(f"do_sample=false in the task's generation_kwargs overrides temperature="
                 f"{out['temperature']}; pass --gen_kwargs do_sample=true,temperature=... to "
                 "sample")
        out["temperature"] = 0.0
    style_llada = out["block_length"] is not None or out["remasking"] is not None
    if out["alg"] is None and not style_llada and default_family_alg is not None:
        out["alg"] = default_family_alg
    if out["top_p"] is not None and out["top_p"] >= 1.0:
        out["top_p"] = None
    check_generation(out, lengths=lengths)
    out["style"] = "dream" if out["alg"] is not None else "llada"
    if out["style"] == "llada":
        foreign = [k for k in ("top_p", "top_k") if out[k] is not None]
        foreign += [k for k in ("alg_temp",) if out[k]]
        foreign += [k for k in ("eps",) if out[k] != 1e-3]
        if foreign:
            raise ModelArgsError(f"{foreign} only apply to Dream-style generation; add "
                                 f"alg={'|'.join(ALGS)}")
    return out


def describe() -> list[dict[str, Any]]:
    """The argument table as plain dicts (for docs and ``python -m headig_lmeval args``)."""
    return [{f.name: getattr(a, f.name) for f in fields(a)} for a in ARGS]
