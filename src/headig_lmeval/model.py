"""``HeadigDLLM``: lm-eval's LM API over headig's LLaDA/Dream models and interventions.

A thin layer: scoring is :func:`headig.diffusion.likelihood.loglikelihood_batch`, generation is
:func:`headig.diffusion.generation.generate`, head removal is :class:`headig.HeadMask` and sparse
attention is :class:`headig.sparse.SparseAttentionPatch`. What lives here is the lm-eval
contract: tokenisation, truncation, batching, stop strings, chat templates, multi-process
collectives and the response-cache key.

Reproducibility: a request's result depends only on the request and the model arguments,
never on the batch it shares, its position, the batch size or the process rank. Likelihood
masks come from ``seed`` alone (see :mod:`headig.diffusion.likelihood`); greedy generation is
deterministic; sampled generation runs each request with its own generator seeded from
``seed`` and the request's token ids.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.model import TemplateLM

import headig
from headig.diffusion.generation import generate, truncate_at_stop
from headig.diffusion.likelihood import loglikelihood_batch
from headig.runtime import (
    dist_info,
    env_dist_info,
    file_digest,
    fingerprint,
    init_process_group,
    json_digest,
    progress_bar,
    stable_seed,
)
from headig_lmeval._hook import MODEL_NAME, registered
from headig_lmeval.args import (
    ModelArgs,
    ModelArgsError,
    merge_generation,
    parse_model_args,
    resolve_layers,
)

log = logging.getLogger(__name__)

_STOP_TOKENS = ("<|eot_id|>", "<|endoftext|>", "<|im_end|>")
_FAMILY_DEFAULT_ALG = {"dream": "entropy"}


def _read_arch(pretrained: str) -> tuple[str, int, int] | None:
    """(family name, layers, heads) from config.json, without loading weights; None when
    ``pretrained`` is not a local folder (a hub id is resolved by the loader)."""
    cfg = Path(pretrained).expanduser() / "config.json"
    if not cfg.is_file():
        return None
    from headig.models.family import spec_for_model_type

    config = json.loads(cfg.read_text())
    try:
        spec = spec_for_model_type(str(config.get("model_type", "")))
        arch = spec.parse_config(config)
    except (ValueError, KeyError, TypeError) as err:
        raise ModelArgsError(f"pretrained={pretrained!r}: {err}") from None
    return spec.name, arch.n_layers, arch.n_heads


@registered(MODEL_NAME)
class HeadigDLLM(TemplateLM):
    """LLaDA / Dream for lm-eval, with optional head pruning and sparse attention.

    ``lm_eval --model headig-dllm --model_args pretrained=DIR[,importance=FILE,prune=most,
    prune_k_frac=0.05][,attention=adaptive,keep=0.3] --tasks ...``. See docs/lm-eval.md for
    every argument; :data:`headig_lmeval.args.ARGS` is the authoritative table.
    """

    backend = "causal"

    def __init__(self, pretrained: str | None = None, **kwargs: Any) -> None:
        super().__init__()
        self.args: ModelArgs = parse_model_args({"pretrained": pretrained, **kwargs})
        a = self.args
        arch = _read_arch(a.pretrained)
        self._default_alg = _FAMILY_DEFAULT_ALG.get(arch[0] if arch else "")
        # fail fast on generation settings (lengths only when gen_length is a model arg)
        merge_generation(a, {}, self._default_alg,
                         lengths=bool({"gen_length", "max_new_tokens"} & a.given))
        # importance file and head selection are checked before the weights are loaded
        self.importance = self._load_importance(arch[1:]) if arch else None
        if arch and a.prune is not None:
            self._select(torch.zeros(arch[1], arch[2]))

        self._setup_distributed(a.device)
        dtype = a.dtype
        if dtype == "auto":
            dtype = "bfloat16" if self._device.type == "cuda" else "float32"
        self.model, tokenizer = headig.load_model(a.pretrained, dtype=dtype, device=self._device)
        self.family = self.model.family
        if self._default_alg is None:
            self._default_alg = _FAMILY_DEFAULT_ALG.get(self.family.name)
        if a.tokenizer is not None:
            tokenizer = headig.load_tokenizer(a.tokenizer)
        self.tokenizer = tokenizer
        self._pad_id = self._first_id(tokenizer.pad_token_id, self.family.arch.pad_token_id,
                                      tokenizer.eos_token_id, self.family.arch.eos_token_id,
                                      self.family.mask_token_id)
        self._eot_id = self._first_id(tokenizer.eos_token_id, self.family.arch.eos_token_id,
                                      self._pad_id)
        self._stop_ids = self._collect_stop_ids()
        arch_max = self.family.arch.max_position_embeddings
        self._max_length = a.max_length or arch_max or 4096
        self._batch_size = a.max_batch_size if a.batch_size == "auto" else a.batch_size

        if arch is None:
            self.importance = self._load_importance((self.family.n_layers,
                                                     self.family.n_heads))
        self.head_mask = None
        self.sparse = None
        self._apply_interventions()
        self._fingerprint = self._compute_fingerprint()
        log.info("headig-dllm ready: %s (%s, %s), %d heads removed, attention=%s, "
                 "fingerprint %s", a.pretrained, self.family.name, self.model.dtype,
                 len(self.removed_heads), a.attention, self._fingerprint[:12])

    # ------------------------------------------------------------------ construction
    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None):
        """model_args win over the CLI's --batch_size/--device (the CLI always passes a
        batch size, so a model_args one must not collide with it)."""
        merged = {k: v for k, v in (additional_config or {}).items() if v is not None}
        merged.update(arg_dict)
        return cls(**merged)

    @staticmethod
    def _first_id(*ids: int | None) -> int:
        return next(int(i) for i in ids if i is not None)

    def _collect_stop_ids(self) -> list[int]:
        ids = {self._eot_id}
        if self.family.arch.eos_token_id is not None:
            ids.add(int(self.family.arch.eos_token_id))
        vocab = self.tokenizer.get_vocab()
        ids.update(vocab[t] for t in _STOP_TOKENS if t in vocab)
        ids.discard(self.family.mask_token_id)
        return sorted(ids)

    def _setup_distributed(self, device: str | None) -> None:
        """Data-parallel under ``accelerate launch`` / ``torchrun`` (env:// rendezvous)."""
        _, world, local = env_dist_info()
        cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
        self._dist = None
        if world > 1:
            import torch.distributed as dist

            self._device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
            init_process_group(self._device)
            if cuda:
                torch.cuda.set_device(self._device)
            self._dist = dist
            self._rank, self._world_size = dist_info()
        else:
            self._rank, self._world_size = 0, 1
            if device is None:
                device = "cuda" if torch.cuda.is_available() else "cpu"
            elif str(device).startswith("cuda") and not torch.cuda.is_available():
                # lm-eval's CLI defaults to cuda:0; like --model hf, run where we can
                log.warning("device=%s requested but CUDA is not available; using cpu", device)
                device = "cpu"
            try:
                self._device = torch.device(device)
            except RuntimeError as err:
                raise ModelArgsError(f"device={device!r}: {err}") from None

    def _load_importance(self, shape: tuple[int, int]):
        a = self.args
        if a.importance is None:
            return None
        from headig.importance import as_importance

        path = Path(a.importance).expanduser()
        kwargs: dict[str, Any] = {}
        if a.importance_sign is not None:
            kwargs = {"original_sign": a.importance_sign, "n_layers": shape[0]}
        try:
            imp = as_importance(path, **kwargs)
        except (ValueError, OSError) as err:
            raise ModelArgsError(f"importance={a.importance!r}: {err}") from None
        if tuple(imp.scores.shape) != tuple(shape):
            raise ModelArgsError(f"importance={a.importance!r} has scores of shape "
                                 f"{tuple(imp.scores.shape)}, but the model has [layers, heads] "
                                 f"= {list(shape)}")
        return imp

    def _select(self, zeros: torch.Tensor) -> torch.Tensor:
        """The heads to keep (bool [L, H]); raises ModelArgsError for an impossible choice."""
        a = self.args
        from headig.interventions import select_heads

        scores = self.importance if self.importance is not None else zeros
        try:
            return select_heads(scores, a.prune, k=a.prune_k, k_frac=a.prune_k_frac,
                                layers=resolve_layers(a.layers, zeros.shape[0]), seed=a.seed,
                                by=a.prune_by)
        except ValueError as err:
            raise ModelArgsError(f"prune: {err}") from None

    def _apply_interventions(self) -> None:
        a = self.args
        if a.prune is not None:
            keep = self._select(torch.zeros(self.family.n_layers, self.family.n_heads))
            info = {"which": a.prune, "k": int((~keep).sum()), "k_frac": a.prune_k_frac,
                    "seed": a.seed, "by": a.prune_by}
            self.head_mask = headig.HeadMask(self.model, keep, info).apply()
        if a.attention != "standard":
            try:
                from headig.sparse import SparseAttentionPatch, budget_from_mode
            except ImportError as err:
                raise ModelArgsError(f"attention={a.attention} needs headig.sparse, which this "
                                     f"headig install lacks ({err})") from None
            kwargs = {k: v for k, v in (("skip", a.skip), ("block_size", a.block_size),
                                         ("kv_groups", a.kv_groups),
                                         ("min_seq_len", a.min_seq_len),
                                         ("kernel", a.sparse_kernel),
                                         ("row_budgets", a.row_budgets)) if v is not None}
            importance = self.importance if a.attention == "adaptive" else None
            try:
                budget = budget_from_mode(a.attention, a.keep, importance,
                                          {"min_keep": a.min_keep, "max_keep": a.max_keep})
                self.sparse = SparseAttentionPatch(self.model, budget, **kwargs).apply()
            except (TypeError, ValueError) as err:
                raise ModelArgsError(f"attention={a.attention}: {err}") from None

    @property
    def removed_heads(self) -> list[tuple[int, int]]:
        return [] if self.head_mask is None else self.head_mask.removed

    def _compute_fingerprint(self) -> str:
        """Hash of everything that can change a response: semantic model args, the
        checkpoint's config and weight files (size + name), the importance file's bytes, the
        removed heads and the headig version."""
        a = self.args
        folder = Path(a.pretrained).expanduser()
        ckpt: dict[str, Any] = {"path": str(folder.resolve()) if folder.exists() else a.pretrained}
        if folder.is_dir():
            cfg = folder / "config.json"
            ckpt["config"] = file_digest(cfg) if cfg.is_file() else None
            ckpt["weights"] = sorted((p.name, p.stat().st_size) for p in folder.glob("*")
                                     if p.suffix in (".safetensors", ".bin"))
        items = {
            "model_args": a.fingerprint_items(),
            "checkpoint": ckpt,
            "importance": (file_digest(Path(a.importance).expanduser()
                                        if Path(a.importance).expanduser().is_file()
                                        else _importance_file(a.importance))
                           if a.importance else None),
            "removed_heads": self.removed_heads,
            "dtype": str(self.model.dtype),
            "headig": headig.__version__,
        }
        return json_digest(items)

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def set_cache_hook(self, cache_hook: Any) -> None:
        """Key the ``--use_cache`` database by this model's fingerprint.

        lm-eval hashes only the request into the cache key, so two runs with different
        model args (say prune_k_frac=0.05 and 0.1) sharing a --use_cache path would reuse
        each other's answers. The cache is a SqliteDict shared by CachingLM and this hook;
        we point it at a table named after the fingerprint, so each configuration reads and
        writes only its own responses.
        """
        super().set_cache_hook(cache_hook)
        db = getattr(cache_hook, "dbdict", None)
        if db is None:
            return
        table = f"headig_{self._fingerprint[:32]}"
        if getattr(db, "tablename", None) == table:
            return
        try:
            from sqlitedict import SqliteDict

            SqliteDict(db.filename, tablename=table, autocommit=True).close()  # create it
            db.tablename = table
            log.info("headig-dllm: response cache table %s in %s", table, db.filename)
        except Exception as err:  # the cache would otherwise mix configurations: refuse
            raise RuntimeError(f"cannot key the --use_cache database by the model arguments "
                               f"({err}); run without --use_cache") from err

    # ------------------------------------------------------------------ lm-eval properties
    @property
    def eot_token_id(self) -> int:
        return self._eot_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return int(bos) if bos is not None else self._eot_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self.args.gen_length

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer_name(self) -> str:
        name = self.args.tokenizer or self.args.pretrained
        return str(name).replace("/", "__")

    def get_model_info(self) -> dict[str, Any]:
        return {
            "headig_version": headig.__version__,
            "headig_family": self.family.name,
            "headig_model_args": self.args.fingerprint_items(),
            "headig_removed_heads": self.removed_heads,
            "headig_fingerprint": self._fingerprint,
            "headig_world_size": self._world_size,
            "model_dtype": str(self.model.dtype),
        }

    # ------------------------------------------------------------------ tokenisation
    def tok_encode(self, string: str, add_special_tokens: bool | None = None,
                   left_truncate_len: int | None = None, **kwargs: Any) -> list[int]:
        ids = self.tokenizer.encode(string, add_special_tokens=False)
        add_bos = self.args.add_bos_token if add_special_tokens is None else add_special_tokens
        bos = self.tokenizer.bos_token_id
        if add_bos and bos is not None and (not ids or ids[0] != bos):
            ids = [int(bos)] + ids
        if left_truncate_len:
            ids = ids[-left_truncate_len:]
        return ids

    def tok_decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, chat_history: list[dict[str, str]],
                            add_generation_prompt: bool = True) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"the tokenizer of {self.args.tokenizer or self.args.pretrained} "
                             "has no chat template; drop --apply_chat_template")
        return self.tokenizer.apply_chat_template(
            chat_history, tokenize=False, add_generation_prompt=add_generation_prompt,
            continue_final_message=not add_generation_prompt)

    # ------------------------------------------------------------------ collectives
    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if self._dist is None:
            return tensor
        t = tensor if tensor.dim() > 0 else tensor[None]
        t = t.contiguous()
        out = [torch.empty_like(t) for _ in range(self._world_size)]
        self._dist.all_gather(out, t)
        return torch.cat(out, dim=0)

    def gather_object(self, obj: Any, dst: int = 0) -> list[Any] | None:
        if self._dist is None:
            return [obj]
        result = [None] * self._world_size if self._rank == dst else None
        self._dist.gather_object(obj, result, dst=dst)
        return result

    def barrier(self) -> None:
        if self._dist is not None:
            self._dist.barrier()

    # ------------------------------------------------------------------ likelihood
    def _rows_per_forward(self) -> int:
        return max(1, self._batch_size) * self.args.mc_batch_size

    def score_tokens(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], *,
                     disable_tqdm: bool = True) -> list[tuple[float, float, bool]]:
        """(loglik, Monte-Carlo stderr, is_greedy) per (context ids, continuation ids) pair.

        Identical pairs are scored once. Contexts are cut on the left to fit ``max_length``.
        One-token continuations are exact (stderr 0).
        """
        a = self.args
        fitted: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        for ctx, cont in pairs:
            ctx, cont = tuple(int(i) for i in ctx), tuple(int(i) for i in cont)
            if len(cont) >= self._max_length:
                raise ValueError(f"a continuation of {len(cont)} tokens does not fit the "
                                 f"context window max_length={self._max_length}")
            room = self._max_length - len(cont)
            fitted.append((ctx[-room:] if len(ctx) > room else ctx, cont))
        unique = sorted({p for p in fitted if p[1]}, key=lambda p: (len(p[0]) + len(p[1]), p))
        results: dict[tuple, tuple[float, float, bool]] = {}
        rows = self._rows_per_forward()
        # requests per call: about 4 forwards' worth of rows; results do not depend on it
        step_rows = 4 * rows
        chunk: list[tuple] = []
        n_rows = 0
        pbar = progress_bar(len(unique), "headig-dllm loglikelihood",
                            enabled=not disable_tqdm and self._rank == 0)

        def flush() -> None:
            nonlocal chunk, n_rows
            if not chunk:
                return
            out = loglikelihood_batch(
                self.model, [(list(c), list(t)) for c, t in chunk], mc_num=a.mc_num,
                batch_size=rows, seed=a.seed, cfg_scale=a.cfg, exact_if_single=True,
                stratum_size=a.mc_batch_size, greedy_check=a.greedy_check)
            for pair, (ll, se, greedy) in zip(chunk, out):
                results[pair] = (float(ll), float(se), bool(greedy) if greedy is not None
                                 else False)
            pbar.update(len(chunk))
            chunk, n_rows = [], 0

        for pair in unique:
            chunk.append(pair)
            n_rows += 1 if len(pair[1]) == 1 else a.mc_num
            if n_rows >= step_rows:
                flush()
        flush()
        pbar.close()
        return [results[p] if p[1] else (0.0, 0.0, True) for p in fitted]

    def _loglikelihood_tokens(self, requests: list[tuple[tuple[str, str], list[int], list[int]]],
                              disable_tqdm: bool = False, **kwargs: Any
                              ) -> list[tuple[float, bool]]:
        scored = self.score_tokens([(ctx, cont) for _, ctx, cont in requests],
                                   disable_tqdm=disable_tqdm)
        out = []
        for (key, _, _), (ll, _, greedy) in zip(requests, scored):
            out.append((ll, greedy))
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, (ll, greedy))
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False
                              ) -> list[float]:
        """Sum over lm-eval's disjoint rolling windows of the Monte-Carlo masked-diffusion
        estimate of log p(window | tokens before it in the context window).

        Each window's estimate is an unbiased estimate of the model's ELBO for that window,
        which lower-bounds its log-likelihood; the sum is therefore an estimate of a lower
        bound of log p(document), and perplexities derived from it are upper bounds. It is
        comparable across headig configurations, not with autoregressive perplexities.
        """
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        windows: list[tuple[list[int], list[int]]] = []
        owners: list[int] = []
        for i, req in enumerate(requests):
            (string,) = req.args
            for window in get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self._max_length - 1, context_len=1):
                windows.append(make_disjoint_window(window))
                owners.append(i)
        scored = self.score_tokens(windows, disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for i, (ll, _, _) in zip(owners, scored):
            totals[i] += ll
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ------------------------------------------------------------------ generation
    def _settings(self, gen_kwargs: dict[str, Any]) -> dict[str, Any]:
        return merge_generation(self.args, gen_kwargs, self._default_alg,
                                warn=lambda m: log.warning(m))

    @staticmethod
    def _is_stochastic(s: dict[str, Any]) -> bool:
        return (s["temperature"] > 0 or s["remasking"] == "random" or bool(s["alg_temp"])
                or s["alg"] == "origin")

    def _generate_call(self, prompts: list[list[int]], s: dict[str, Any],
                       generator: torch.Generator | None) -> torch.Tensor:
        """Left-pad ``prompts`` and run one generate() call; returns the new ids [B, gen]."""
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros(len(prompts), width, dtype=torch.long)
        for j, p in enumerate(prompts):
            if p:
                ids[j, width - len(p):] = torch.tensor(p, dtype=torch.long)
                mask[j, width - len(p):] = 1
        padded = bool((mask == 0).any())
        kwargs: dict[str, Any] = dict(
            steps=s["steps"] or s["gen_length"], gen_length=s["gen_length"],
            temperature=s["temperature"], cfg_scale=s["cfg"], generator=generator,
            stop_ids=self._stop_ids if self.args.stop_early else None, style=s["style"])
        if s["style"] == "llada":
            kwargs.update(block_length=s["block_length"],
                          remasking=s["remasking"] or "low_confidence")
        else:
            kwargs.update(alg=s["alg"], alg_temp=s["alg_temp"], top_p=s["top_p"],
                          top_k=s["top_k"], eps=s["eps"])
        out = generate(self.model, ids.to(self._device),
                       mask.to(self._device) if padded else None, **kwargs)
        return out[:, width:].cpu()

    def _cut(self, new_ids: Iterable[int]) -> list[int]:
        out = []
        stops = set(self._stop_ids)
        for t in new_ids:
            if t in stops:
                break
            out.append(int(t))
        return out

    def generate_ids(self, prompts: Sequence[Sequence[int]], gen_kwargs: dict[str, Any] | None
                     = None, *, disable_tqdm: bool = True) -> list[list[int]]:
        """Generated token ids (uncut, ``gen_length`` per prompt) for token-id prompts, with
        the same batching, seeding and settings as :meth:`generate_until`."""
        s = self._settings(dict(gen_kwargs or {}))
        prompts = [list(map(int, p)) for p in prompts]
        return self._run_group(prompts, s, disable_tqdm=disable_tqdm)

    def _run_group(self, prompts: list[list[int]], s: dict[str, Any], *,
                   disable_tqdm: bool, pbar: Any = None) -> list[list[int]]:
        room = self._max_length - s["gen_length"]
        if room < 1:
            raise ValueError(f"gen_length={s['gen_length']} leaves no room for the prompt in "
                             f"max_length={self._max_length}")
        prompts = [(p[-room:] if len(p) > room else p) or [self.prefix_token_id]
                   for p in prompts]
        results: list[list[int] | None] = [None] * len(prompts)
        if self._is_stochastic(s):
            # one request per call, each with its own generator: independent of batching;
            # repeated identical requests (lm-eval's `repeats`) get different draws
            seen: dict[tuple, int] = defaultdict(int)
            settings_key = {k: v for k, v in s.items() if k != "until"}
            for j, p in enumerate(prompts):
                occurrence = seen[tuple(p)]
                seen[tuple(p)] += 1
                g = torch.Generator().manual_seed(
                    stable_seed(self.args.seed, p, settings_key, occurrence))
                results[j] = self._generate_call([p], s, g)[0].tolist()
                if pbar is not None:
                    pbar.update(1)
        else:
            order = sorted(range(len(prompts)), key=lambda j: (-len(prompts[j]), prompts[j]))
            bs = max(1, self._batch_size)
            for start in range(0, len(order), bs):
                batch = order[start:start + bs]
                out = self._generate_call([prompts[j] for j in batch], s, None)
                for j, row in zip(batch, out.tolist()):
                    results[j] = row
                if pbar is not None:
                    pbar.update(len(batch))
        return [r for r in results if r is not None]

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        groups: dict[str, list[int]] = defaultdict(list)
        settings: dict[str, dict[str, Any]] = {}
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            key = json.dumps(gen_kwargs, sort_keys=True, default=str)
            if key not in settings:
                settings[key] = self._settings(dict(gen_kwargs))  # validate all groups first
            groups[key].append(i)
        out: list[str | None] = [None] * len(requests)
        pbar = progress_bar(len(requests), "headig-dllm generate_until",
                            enabled=not disable_tqdm and self._rank == 0)
        for key, idx in groups.items():
            s = settings[key]
            prompts = [self.tok_encode(requests[i].args[0]) for i in idx]
            new_ids = self._run_group(prompts, s, disable_tqdm=True, pbar=pbar)
            for i, ids in zip(idx, new_ids):
                text = truncate_at_stop(self.tok_decode(self._cut(ids)), s["until"])
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        pbar.close()
        return [t if t is not None else "" for t in out]


def _importance_file(path: str) -> str:
    """Digest of an importance *folder* (its files, sorted)."""
    folder = Path(path).expanduser()
    files = [p for p in sorted(folder.rglob("*")) if p.is_file()]
    return fingerprint(part for p in files for part in (p.name, file_digest(p)))
