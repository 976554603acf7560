"""(prompt, completion) examples for attribution and validation: loading, recipes, encoding.

An :class:`Example` is a prompt and the completion whose likelihood is attributed. The
loader reads local JSON / JSONL / CSV files (or a folder of ``<split>.<ext>`` files,
or in-memory records) and, when the optional ``datasets`` package is installed, Hugging
Face datasets. Recipes turn raw records into examples with the exact strings of the
original research scripts (gsm8k, mmlu, humaneval, chat). :func:`encode_example` turns an
example into token ids with a known prompt/completion boundary. See ``docs/data.md``.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import json
import random
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from headig.runtime import fingerprint as _fingerprint

__all__ = [
    "EncodedExample", "EncodingReport", "Example", "ExampleDropped", "available_recipes",
    "encode_example", "encode_examples", "fingerprint", "load_examples", "load_records",
]

_SPLIT_PREFERENCE = ("train", "dev", "validation", "val", "valid")
_FILE_SUFFIXES = (".jsonl", ".json", ".csv")
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


# ---------------------------------------------------------------------- examples
@dataclass(frozen=True)
class Example:
    """One attribution example: ``prompt`` is context, ``completion`` is what is scored.

    ``id`` defaults to a content hash (``ex-<12 hex>``). ``meta`` holds JSON-friendly
    provenance (source, split, row index, recipe, few-shot ids; ``messages`` for chat
    records, used by ``encode_example(chat_template=True)``).
    """

    prompt: str
    completion: str
    id: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not isinstance(self.completion, str):
            raise TypeError(f"prompt and completion must be str; got {type(self.prompt).__name__} "
                            f"and {type(self.completion).__name__}")
        if not self.completion:
            raise ValueError(f"example {self.id!r} has an empty completion; there is nothing to score")
        if not isinstance(self.id, str):
            raise TypeError(f"id must be a str; got {type(self.id).__name__}")
        if not self.id:
            digest = hashlib.sha256(f"{self.prompt}\x00{self.completion}".encode()).hexdigest()
            object.__setattr__(self, "id", f"ex-{digest[:12]}")
        if not isinstance(self.meta, Mapping):
            raise TypeError(f"meta must be a dict; got {type(self.meta).__name__}")


def fingerprint(examples: Iterable[Example]) -> str:
    """A stable sha256 (hex) of the example texts in order (ids and meta are not included).

    Record it in importance metadata so that results can be matched to their data.
    """
    return _fingerprint((text for ex in examples for text in (ex.prompt, ex.completion)),
                        header=b"headig-examples-v1\n", length_prefix=True)


# ---------------------------------------------------------------------- recipes
@dataclass(frozen=True)
class _Recipe:
    name: str
    build: Callable[[Mapping[str, Any], dict[str, Any]], tuple[str, str, dict[str, Any]]]
    options: Mapping[str, Any]  # accepted options and their defaults
    fewshot: bool = False
    preamble: Callable[[Mapping[str, Any], dict[str, Any]], str] | None = None
    group_field: str | None = None  # few-shot shots prefer records with the same value
    id_fields: tuple[str, ...] = ("id",)
    hf: tuple[str, str | None] | None = None  # default HF dataset (path, config)
    default_split: str = "train"
    fewshot_splits: tuple[str, ...] = ("train",)


def _field(record: Mapping[str, Any], name: str, recipe: str) -> Any:
    if name not in record:
        raise ValueError(f"recipe {recipe!r} needs field {name!r}; the record has fields "
                         f"{sorted(map(str, record))}")
    return record[name]


def _text(record: Mapping[str, Any], name: str, recipe: str) -> str:
    value = _field(record, name, recipe)
    if not isinstance(value, str):
        raise ValueError(f"recipe {recipe!r}: field {name!r} must be a string; got "
                         f"{type(value).__name__}")
    return value


def gsm8k_final_answer(answer: str) -> str:
    """The final answer of a GSM8K solution: the text after the last ``####``, stripped."""
    if "####" not in answer:
        raise ValueError(f"GSM8K answer has no '####' final-answer marker: {answer[-80:]!r}")
    return answer.rsplit("####", 1)[1].strip()


def _build_gsm8k(record: Mapping[str, Any], opts: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    question = _text(record, "question", "gsm8k")
    answer = _text(record, "answer", "gsm8k")
    mode = opts["answer_mode"]
    if mode not in ("full", "final"):
        raise ValueError(f"answer_mode={mode!r}; expected 'full' (whole solution) or 'final' "
                         "(only the answer after ####)")
    final = gsm8k_final_answer(answer) if mode == "final" or "####" in answer else None
    completion = " " + (answer if mode == "full" else final)  # type: ignore[operator]
    return f"Question: {question}\nAnswer:", completion, {"final_answer": final}


def _mmlu_choices(record: Mapping[str, Any]) -> list[str]:
    if "choices" in record:
        choices = record["choices"]
        if isinstance(choices, str):  # CSV cell holding a JSON list
            try:
                choices = json.loads(choices)
            except json.JSONDecodeError:
                raise ValueError(f"mmlu: field 'choices' is a string that is not a JSON list: "
                                 f"{choices[:60]!r}") from None
    elif all(k in record for k in "ABCD"):
        choices = [record[k] for k in _LETTERS if k in record]
    else:
        raise ValueError("mmlu needs field 'choices' (a list) or columns 'A', 'B', 'C', 'D'; the "
                         f"record has {sorted(map(str, record))}")
    if not isinstance(choices, (list, tuple)) or not 2 <= len(choices) <= len(_LETTERS):
        raise ValueError(f"mmlu: choices must be a list of 2..26 strings; got {choices!r}")
    return [str(c) for c in choices]


def _mmlu_answer_index(answer: Any, n: int) -> int:
    if isinstance(answer, str):
        a = answer.strip()
        if len(a) == 1 and a.upper() in _LETTERS[:n]:
            return _LETTERS.index(a.upper())
        if a.isdigit():
            answer = int(a)
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < n:
        return answer
    raise ValueError(f"mmlu: answer {answer!r} is neither a letter in {_LETTERS[:n]} nor an "
                     f"index in [0, {n})")


def _build_mmlu(record: Mapping[str, Any], opts: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    question = _text(record, "question", "mmlu").strip()
    choices = _mmlu_choices(record)
    idx = _mmlu_answer_index(_field(record, "answer", "mmlu"), len(choices))
    lines = [question] + [f"{_LETTERS[i]}. {c}" for i, c in enumerate(choices)] + ["Answer:"]
    meta = {"answer_index": idx}
    if "subject" in record:
        meta["subject"] = str(record["subject"])
    return "\n".join(lines), f" {_LETTERS[idx]}", meta


def _mmlu_preamble(record: Mapping[str, Any], opts: dict[str, Any]) -> str:
    if not opts["subject_header"] or not record.get("subject"):
        return ""
    subject = str(record["subject"]).replace("_", " ")
    return f"The following are multiple choice questions (with answers) about {subject}.\n\n"


def _build_humaneval(record: Mapping[str, Any], opts: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    return (_text(record, "prompt", "humaneval"), _text(record, "canonical_solution", "humaneval"),
            {})


_ROLE_ALIASES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                 "bot": "assistant", "model": "assistant", "system": "system"}


def _chat_turns(record: Mapping[str, Any]) -> list[dict[str, str]] | None:
    raw = record.get("messages", record.get("conversations"))
    if raw is None:
        return None
    if not isinstance(raw, (list, tuple)) or not raw:
        raise ValueError("chat: 'messages' must be a non-empty list of {role, content} dicts")
    turns = []
    for t in raw:
        if not isinstance(t, Mapping):
            raise ValueError(f"chat: each turn must be a dict with 'role' and 'content'; got {t!r}")
        role = t.get("role", t.get("from"))
        content = t.get("content", t.get("value"))
        if role not in _ROLE_ALIASES or not isinstance(content, str):
            raise ValueError(f"chat: turn {dict(t)!r} needs a role in {sorted(_ROLE_ALIASES)} and "
                             "string content")
        turns.append({"role": _ROLE_ALIASES[role], "content": content})
    return turns


def _render_turns(turns: Sequence[Mapping[str, str]]) -> str:
    """Plain-text prompt for chat turns when no chat template is applied."""
    roles = [t["role"] for t in turns]
    if roles == ["user"]:
        return turns[0]["content"]
    if roles == ["system", "user"]:
        return f"{turns[0]['content']}\n\n{turns[1]['content']}"
    body = "\n\n".join(f"{t['role'].capitalize()}: {t['content']}" for t in turns)
    return body + "\n\nAssistant:"


def _build_chat(record: Mapping[str, Any], opts: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    turns = _chat_turns(record)
    completion: str | None = None
    if turns is not None:
        if turns[-1]["role"] == "assistant":
            completion, turns = turns[-1]["content"], turns[:-1]
    elif "instruction" in record:
        instruction = _text(record, "instruction", "chat")
        extra = record.get("input") or ""
        user = f"{instruction}\n\n{extra}" if extra else instruction
        turns = ([{"role": "system", "content": str(record["system"])}] if record.get("system")
                 else []) + [{"role": "user", "content": user}]
    else:
        raise ValueError("chat records need 'messages' (list of {role, content}) or "
                         f"'instruction' (+ optional 'input'); the record has {sorted(map(str, record))}")
    if completion is None:
        for key in ("output", "completion", "response"):
            if isinstance(record.get(key), str):
                completion = record[key]
                break
    if completion is None:
        raise ValueError("chat: no completion: the last turn is not an assistant turn and there is "
                         "no 'output' / 'completion' / 'response' field")
    if not any(t["role"] == "user" for t in turns):
        raise ValueError("chat: the prompt turns have no user turn")
    return _render_turns(turns), completion, {"messages": turns}


def _build_fields(record: Mapping[str, Any], opts: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    pf, cf = opts["prompt_field"], opts["completion_field"]
    missing = [f for f in (pf, cf) if f not in record]
    if missing:
        raise ValueError(f"record has no field(s) {missing} (fields: {sorted(map(str, record))}); "
                         f"set prompt_field= / completion_field=, or pick a recipe from "
                         f"{available_recipes()}")
    return _text(record, pf, "fields"), _text(record, cf, "fields"), {}


_RECIPES: dict[str, _Recipe] = {
    "fields": _Recipe("fields", _build_fields, {"prompt_field": "prompt",
                                                "completion_field": "completion"}),
    "gsm8k": _Recipe("gsm8k", _build_gsm8k, {"answer_mode": "full", "num_fewshot": 0},
                     fewshot=True, hf=("openai/gsm8k", "main"), default_split="train",
                     fewshot_splits=("train",)),
    "mmlu": _Recipe("mmlu", _build_mmlu, {"num_fewshot": 0, "subject_header": False},
                    fewshot=True, preamble=_mmlu_preamble, group_field="subject",
                    hf=("cais/mmlu", "all"), default_split="validation",
                    fewshot_splits=("dev", "train", "validation")),
    "humaneval": _Recipe("humaneval", _build_humaneval, {}, id_fields=("task_id", "id"),
                         hf=("openai/openai_humaneval", None), default_split="test"),
    "chat": _Recipe("chat", _build_chat, {}),
}
_HF_ALIASES = {spec.hf[0]: name for name, spec in _RECIPES.items() if spec.hf}


def available_recipes() -> list[str]:
    """Names accepted by ``load_examples(recipe=...)``."""
    return sorted(_RECIPES)


# ---------------------------------------------------------------------- sources
def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: not valid JSON ({err.msg})") from None
    return out


def _read_csv(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            raise ValueError(f"{path}: empty CSV; expected a header row naming the fields")
        return [dict(row) for row in reader]


def _read_file(path: Path) -> list[dict[str, Any]] | dict[str, list[dict[str, Any]]]:
    """Records of a file, or {split: records} for a JSON object of lists."""
    if path.suffix == ".jsonl":
        return _read_jsonl(path)
    if path.suffix == ".csv":
        return _read_csv(path)
    if path.suffix == ".json":
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        if isinstance(obj, list):
            return obj
        if isinstance(obj, dict):
            for key in ("data", "examples", "records", "rows"):
                if isinstance(obj.get(key), list) and len(obj) == 1:
                    return obj[key]
            if obj and all(isinstance(v, list) for v in obj.values()):
                return obj  # {split: records}
        raise ValueError(f"{path}: expected a JSON list of records, {{'data': [...]}}, or "
                         "{split_name: [records]}")
    raise ValueError(f"{path}: unsupported file type {path.suffix!r}; expected one of "
                     f"{list(_FILE_SUFFIXES)}")


@dataclass
class _Source:
    name: str
    splits: dict[str, Callable[[], list[dict[str, Any]]]] | None  # None: one unsplit collection
    flat: Callable[[], list[dict[str, Any]]] | None = None
    hf: tuple[str, str | None] | None = None


def _hf_loader(path: str, config: str | None, split: str) -> Callable[[], list[dict[str, Any]]]:
    def load() -> list[dict[str, Any]]:
        try:
            datasets = importlib.import_module("datasets")
        except ImportError as err:
            raise ImportError(f"{path!r} is not a local file or folder; loading it from the "
                              "Hugging Face hub needs the optional 'datasets' package "
                              "(pip install 'headig[datasets]')") from err
        ds = datasets.load_dataset(path, config, split=split)
        return [dict(row) for row in ds]
    return load


def _open_source(source: Any, config: str | None, recipe: _Recipe | None) -> _Source:
    if isinstance(source, (list, tuple)):
        records = list(source)
        return _Source("records", None, flat=lambda: records)
    if not isinstance(source, (str, Path)):
        raise TypeError(f"source must be a path, a dataset name or a list of records; got "
                        f"{type(source).__name__}")
    path = Path(source).expanduser()
    if path.is_dir():
        files = {p.stem: p for p in sorted(path.iterdir()) if p.suffix in _FILE_SUFFIXES}
        if not files:
            raise FileNotFoundError(f"{path} holds no {'/'.join(_FILE_SUFFIXES)} files; expected "
                                    "<split>.jsonl, <split>.json or <split>.csv")
        return _Source(path.name, {s: (lambda p=p: _as_records(_read_file(p), p))
                                   for s, p in files.items()})
    if path.is_file():
        content = _read_file(path)
        if isinstance(content, dict):
            return _Source(path.stem, {s: (lambda r=r: r) for s, r in content.items()})
        return _Source(path.stem, None, flat=lambda: content)
    text = str(source)
    if path.suffix in _FILE_SUFFIXES or text.startswith((".", "/", "~")):
        raise FileNotFoundError(f"no such file or folder: {path}")
    if recipe is not None and recipe.hf is not None and text in (recipe.name, recipe.hf[0]):
        hf_path, hf_config = recipe.hf
        config = config if config is not None else hf_config
    else:
        hf_path = text
    return _Source(hf_path, None, hf=(hf_path, config))


def _as_records(content: Any, path: Path) -> list[dict[str, Any]]:
    if isinstance(content, dict):
        raise ValueError(f"{path}: a split file must hold a list of records, not {{split: records}}")
    return content


def _is_test_split(name: str | None) -> bool:
    return name is not None and "test" in name.lower()


def _leak_warning(what: str) -> None:
    warnings.warn(f"{what}: attributing on an evaluation split leaks — the heads would be chosen "
                  "on the rows you later evaluate on. Prefer a train/dev split.",
                  UserWarning, stacklevel=3)


def _choose_split(src: _Source, split: str | None, recipe: _Recipe) -> str | None:
    if src.hf is not None:
        return split if split is not None else recipe.default_split
    if src.splits is None:
        return split  # an unsplit collection: the split is only a label
    if split is not None:
        if split not in src.splits:
            raise ValueError(f"split {split!r} not in {src.name}; available: {sorted(src.splits)}")
        return split
    for name in _SPLIT_PREFERENCE:
        if name in src.splits:
            return name
    raise ValueError(f"{src.name} has no train/dev split (available: {sorted(src.splits)}); pass "
                     "split= explicitly")


def _read_split(src: _Source, split: str | None) -> list[dict[str, Any]]:
    if src.hf is not None:
        return _hf_loader(src.hf[0], src.hf[1], split or "train")()
    if src.splits is None:
        assert src.flat is not None
        return src.flat()
    return src.splits[split]()  # type: ignore[index]


def load_records(source: Any, split: str | None = None, *, config: str | None = None
                 ) -> list[dict[str, Any]]:
    """Raw records of a source (file, folder of ``<split>.<ext>`` files, list, or HF name)."""
    src = _open_source(source, config, None)
    return _read_split(src, _choose_split(src, split, _RECIPES["fields"]))


def _record_id(record: Mapping[str, Any], id_fields: Sequence[str], split: str | None,
               index: int) -> str:
    for f in id_fields:
        value = record.get(f)
        if value is not None and str(value) != "":
            return str(value)
    return f"{split}-{index}" if split else f"row-{index}"


def _resolve_recipe(recipe: Any, source: Any) -> tuple[_Recipe | None, Callable[..., Any] | None]:
    if callable(recipe):
        return None, recipe
    if recipe is None:
        if isinstance(source, str) and not Path(source).expanduser().exists():
            name = source if source in _RECIPES else _HF_ALIASES.get(source)
            if name is not None:
                return _RECIPES[name], None
        return _RECIPES["fields"], None
    if recipe not in _RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; available: {available_recipes()} or a "
                         "callable record -> (prompt, completion)")
    return _RECIPES[recipe], None


def _custom_example(fn: Callable[..., Any], record: Mapping[str, Any], rid: str,
                    meta: dict[str, Any]) -> Example:
    out = fn(record)
    if isinstance(out, Example):
        return out
    if isinstance(out, Mapping):
        out = (out["prompt"], out["completion"])
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError("a custom recipe must return an Example, a (prompt, completion) tuple, or "
                        f"a dict with 'prompt' and 'completion'; got {type(out).__name__}")
    return Example(prompt=out[0], completion=out[1], id=rid, meta=meta)


def _pick_shots(pool: Sequence[tuple[str, Mapping[str, Any]]],
                groups: Mapping[Any, Sequence[tuple[str, Mapping[str, Any]]]], k: int, *,
                self_id: str, self_prompt: str, recipe: _Recipe, opts: dict[str, Any],
                group: Any, seed: int | None) -> list[tuple[str, Mapping[str, Any]]]:
    """k shots from the pool, never the example itself (same id or same prompt text).

    Shots with the example's group (mmlu subject) are preferred when there are enough.
    """
    candidates = pool
    same = groups.get(group) if group is not None else None
    if same is not None and len(same) > k:  # enough even after excluding the example itself
        candidates = same
    n = len(candidates)

    def orders() -> Iterable[Sequence[int]]:
        if seed is None:
            yield range(n)
            return
        rng = random.Random(f"{seed}:{self_id}")
        yield rng.sample(range(n), min(n, k + 8))  # almost always enough: cheap for big pools
        yield rng.sample(range(n), n)

    shots: list[tuple[str, Mapping[str, Any]]] = []
    for order in orders():
        shots = []
        for i in order:
            rid, rec = candidates[i]
            if rid != self_id and recipe.build(rec, opts)[0] != self_prompt:
                shots.append(candidates[i])
                if len(shots) == k:
                    return shots
    raise ValueError(f"num_fewshot={k} but only {len(shots)} few-shot records (other than example "
                     f"{self_id!r} itself) are available")


def load_examples(source: Any, recipe: str | Callable[..., Any] | None = None,
                  split: str | None = None, limit: int | None = None, seed: int | None = 0, *,
                  config: str | None = None, id_field: str | None = None,
                  fewshot_records: Sequence[Mapping[str, Any]] | None = None,
                  fewshot_split: str | None = None, **options: Any) -> list[Example]:
    """Load (prompt, completion) examples.

    Args:
        source: a ``.json`` / ``.jsonl`` / ``.csv`` file; a folder of ``<split>.<ext>`` files;
            a list of record dicts; or a Hugging Face dataset name (needs the optional
            ``datasets`` package; the recipe names ``gsm8k``, ``mmlu``, ``humaneval`` stand for
            ``openai/gsm8k`` (main), ``cais/mmlu`` (all), ``openai/openai_humaneval``).
        recipe: ``"fields"`` (default: ``prompt_field`` / ``completion_field``), ``"gsm8k"``,
            ``"mmlu"``, ``"humaneval"``, ``"chat"``, or a callable ``record -> (prompt,
            completion)``. Inferred from a dataset name such as ``"gsm8k"``.
        split: which split. Default: the first of train, dev, validation, val, valid (HF: the
            recipe's default; humaneval has only "test"). A split named like "test" warns,
            since attributing on evaluation rows leaks. For an unsplit file it is a label.
        limit: keep at most this many examples (after shuffling).
        seed: shuffles the rows (and draws few-shot shots) deterministically; None keeps the
            source order and takes the first eligible shots.
        config: HF dataset configuration (e.g. "main" for gsm8k).
        id_field: record field holding the example id (default: "id"; humaneval "task_id";
            otherwise ``<split>-<row index>``).
        fewshot_records / fewshot_split: where few-shot shots come from (default: the
            recipe's train-like split of the same source, else the loaded rows themselves;
            an example is never its own shot).
        **options: recipe options: fields: ``prompt_field``, ``completion_field``; gsm8k:
            ``answer_mode`` ("full" | "final"), ``num_fewshot``; mmlu: ``num_fewshot``,
            ``subject_header``.
    """
    spec, custom = _resolve_recipe(recipe, source)
    recipe_spec = spec or _RECIPES["fields"]
    allowed = dict(recipe_spec.options) if custom is None else {}
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"recipe {recipe_spec.name if custom is None else 'custom'!r} does not "
                        f"accept option(s) {unknown}; it accepts {sorted(allowed)}")
    opts = {**allowed, **options}
    k = int(opts.get("num_fewshot", 0))
    if k < 0:
        raise ValueError(f"num_fewshot={k}; expected >= 0")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit={limit!r}; expected a non-negative integer or None")
    src = _open_source(source, config, spec)
    chosen = _choose_split(src, split, recipe_spec)
    if _is_test_split(chosen):
        _leak_warning(f"split {chosen!r} of {src.name}")
    elif chosen is None and src.splits is None and _is_test_split(src.name):
        _leak_warning(f"{src.name} looks like a test set")
    records = _read_split(src, chosen)
    for i, r in enumerate(records):
        if not isinstance(r, Mapping):
            raise ValueError(f"{src.name}: row {i} is a {type(r).__name__}; expected a dict record")
    id_fields = (id_field,) if id_field else recipe_spec.id_fields
    ids = [_record_id(r, id_fields, chosen, i) for i, r in enumerate(records)]
    dupes = sorted({x for x in ids if ids.count(x) > 1}) if len(set(ids)) != len(ids) else []
    if dupes:
        raise ValueError(f"{src.name}: duplicate example ids {dupes[:5]}; ids must be unique "
                         "(set id_field= to a unique field)")
    order = list(range(len(records)))
    if seed is not None:
        random.Random(seed).shuffle(order)
    if limit is not None:
        order = order[:limit]

    pool: list[tuple[str, Mapping[str, Any]]] = []
    if k > 0:
        if fewshot_records is not None:
            pool = [(f"fewshot-{i}", r) for i, r in enumerate(fewshot_records)]
        else:
            pool_split = fewshot_split
            if pool_split is None and src.hf is not None:
                pool_split = recipe_spec.fewshot_splits[0]
            elif pool_split is None and src.splits is not None:
                pool_split = next((s for s in recipe_spec.fewshot_splits if s in src.splits), chosen)
            if pool_split is None or pool_split == chosen:
                pool = list(zip(ids, records))
            else:
                extra = _read_split(src, pool_split)
                pool = [(_record_id(r, id_fields, pool_split, i), r) for i, r in enumerate(extra)]

    groups: dict[Any, list[tuple[str, Mapping[str, Any]]]] = {}
    if recipe_spec.group_field:
        for item in pool:
            groups.setdefault(item[1].get(recipe_spec.group_field), []).append(item)
    name = recipe_spec.name if custom is None else "custom"
    out = []
    for i in order:
        rec, rid = records[i], ids[i]
        meta: dict[str, Any] = {"source": src.name, "split": chosen, "index": i, "recipe": name}
        if custom is not None:
            out.append(_custom_example(custom, rec, rid, meta))
            continue
        try:
            prompt, completion, extra_meta = recipe_spec.build(rec, opts)
            prefix = recipe_spec.preamble(rec, opts) if recipe_spec.preamble else ""
            if k > 0:
                shots = _pick_shots(pool, groups, k, self_id=rid, self_prompt=prompt, recipe=recipe_spec,
                                    opts=opts, group=rec.get(recipe_spec.group_field or ""),
                                    seed=seed)
                for _, shot in shots:
                    sp, sc, _ = recipe_spec.build(shot, opts)
                    prefix += f"{sp}{sc}\n\n"
                meta["fewshot_ids"] = [sid for sid, _ in shots]
        except ValueError as err:
            raise ValueError(f"{src.name} row {i} (id {rid!r}): {err}") from None
        meta.update(extra_meta)
        out.append(Example(prompt=prefix + prompt, completion=completion, id=rid, meta=meta))
    return out


# ---------------------------------------------------------------------- encoding
@dataclass(frozen=True, eq=False)
class EncodedExample:
    """Token ids of one example; the completion is positions ``[prompt_length, len(input_ids))``."""

    input_ids: Tensor  # int64 [T]
    prompt_length: int
    id: str
    truncated: bool = False

    @property
    def length(self) -> int:
        return int(self.input_ids.numel())

    @property
    def completion_length(self) -> int:
        return self.length - self.prompt_length

    def completion_mask(self) -> Tensor:
        """Bool [T], True on completion positions."""
        mask = torch.zeros(self.length, dtype=torch.bool)
        mask[self.prompt_length:] = True
        return mask


class ExampleDropped(ValueError):
    """Raised by :func:`encode_example` when an example cannot be encoded within ``max_length``."""

    def __init__(self, example_id: str, reason: str) -> None:
        super().__init__(f"example {example_id!r} dropped: {reason}")
        self.example_id = example_id
        self.reason = reason


@dataclass
class EncodingReport:
    """What :func:`encode_examples` did: ``(id, why)`` for every dropped / truncated example."""

    n_examples: int
    n_kept: int
    dropped: list[tuple[str, str]] = field(default_factory=list)
    truncated: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"n_examples": self.n_examples, "n_kept": self.n_kept,
                "dropped": [{"id": i, "reason": r} for i, r in self.dropped],
                "truncated": [{"id": i, "reason": r} for i, r in self.truncated]}

    def __str__(self) -> str:
        lines = [f"{self.n_kept}/{self.n_examples} examples kept, {len(self.truncated)} truncated, "
                 f"{len(self.dropped)} dropped"]
        lines += [f"  dropped {i}: {r}" for i, r in self.dropped]
        lines += [f"  truncated {i}: {r}" for i, r in self.truncated]
        return "\n".join(lines)


def _tokenize(tokenizer: Any, text: str) -> list[int]:
    if not text:
        return []
    return list(tokenizer.encode(text, add_special_tokens=False))


def _encode(tokenizer: Any, example: Example, *, max_length: int, add_bos: bool,
            chat_template: bool, min_prompt_tokens: int) -> tuple[EncodedExample, str | None]:
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length={max_length!r}; expected an integer >= 2")
    if isinstance(min_prompt_tokens, bool) or not isinstance(min_prompt_tokens, int) \
            or min_prompt_tokens < 0:
        raise ValueError(f"min_prompt_tokens={min_prompt_tokens!r}; expected an integer >= 0")
    if chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("chat_template=True but the tokenizer has no chat template; pass "
                             "chat_template=False")
        messages = example.meta.get("messages") or [{"role": "user", "content": example.prompt}]
        text = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True,
                                             tokenize=False)
        prompt_ids = _tokenize(tokenizer, text)
    else:
        prompt_ids = _tokenize(tokenizer, example.prompt)
    completion_ids = _tokenize(tokenizer, example.completion)
    bos = getattr(tokenizer, "bos_token_id", None)
    if add_bos and bos is not None and prompt_ids[:1] != [bos]:
        prompt_ids = [bos] + prompt_ids
    n_head = 1 if bos is not None and prompt_ids[:1] == [bos] else 0  # the BOS survives cuts
    body = prompt_ids[n_head:]
    n_p, n_c = len(body), len(completion_ids)
    if n_c == 0:
        raise ExampleDropped(example.id, "the completion encodes to no tokens")
    room = max_length - n_head
    reason = None
    if n_p + n_c <= room:
        keep_p, keep_c = n_p, n_c
    else:
        keep_p = min(n_p, max(min(n_p, min_prompt_tokens), room - n_c))
        keep_c = min(n_c, room - keep_p)
        if n_p > 0 and keep_p == 0:
            raise ExampleDropped(example.id, f"nothing of the prompt would remain: the completion has "
                                 f"{n_c} tokens and max_length is {max_length} "
                                 "(min_prompt_tokens=0)")
        if keep_c < 1:
            raise ExampleDropped(example.id, f"no room for the completion: min_prompt_tokens="
                                 f"{min_prompt_tokens} fills max_length={max_length}")
        parts = []
        if keep_p < n_p:
            parts.append(f"prompt cut from the left: kept {keep_p} of {n_p} prompt tokens")
        if keep_c < n_c:
            parts.append(f"completion cut at the end: kept {keep_c} of {n_c} completion tokens")
        reason = "; ".join(parts) + f" (max_length={max_length})"
    ids = prompt_ids[:n_head] + body[n_p - keep_p:] + completion_ids[:keep_c]
    enc = EncodedExample(input_ids=torch.tensor(ids, dtype=torch.long),
                         prompt_length=n_head + keep_p, id=example.id, truncated=reason is not None)
    return enc, reason


def encode_example(tokenizer: Any, example: Example, *, max_length: int = 2048,
                   add_bos: bool = True, chat_template: bool = False,
                   min_prompt_tokens: int = 1) -> EncodedExample:
    """Token ids of ``example`` with the prompt/completion boundary at ``prompt_length``.

    Prompt and completion are tokenized separately (``add_special_tokens=False``) so
    completion tokens never merge with the prompt. A BOS is prepended when ``add_bos`` and
    the tokenizer has one (not twice when a chat template already starts with it). With
    ``chat_template`` the prompt (or ``example.meta["messages"]`` for chat records) is
    rendered as user turn(s) with ``add_generation_prompt=True``.

    Truncation to ``max_length`` keeps the completion: the prompt is cut from the left (the
    BOS stays). When the completion would leave fewer than ``min_prompt_tokens`` prompt
    tokens, the completion is cut at its end instead so that ``min(prompt tokens,
    min_prompt_tokens)`` of them remain. With ``min_prompt_tokens=0`` an example whose
    completion fills the window is dropped (nothing of its prompt would remain). Raises
    :class:`ExampleDropped` when an example cannot be encoded.
    """
    return _encode(tokenizer, example, max_length=max_length, add_bos=add_bos,
                   chat_template=chat_template, min_prompt_tokens=min_prompt_tokens)[0]


def encode_examples(tokenizer: Any, examples: Iterable[Example], *, max_length: int = 2048,
                    add_bos: bool = True, chat_template: bool = False,
                    min_prompt_tokens: int = 1) -> tuple[list[EncodedExample], EncodingReport]:
    """Encode many examples (as :func:`encode_example`); dropped ones are left out and reported."""
    items = list(examples)
    seen: set[str] = set()
    for ex in items:
        if not isinstance(ex, Example):
            raise TypeError(f"encode_examples expects Example objects; got {type(ex).__name__}")
        if ex.id in seen:
            raise ValueError(f"duplicate example id {ex.id!r}; ids must be unique")
        seen.add(ex.id)
    encoded: list[EncodedExample] = []
    report = EncodingReport(n_examples=len(items), n_kept=0)
    for ex in items:
        try:
            enc, why = _encode(tokenizer, ex, max_length=max_length, add_bos=add_bos,
                               chat_template=chat_template, min_prompt_tokens=min_prompt_tokens)
        except ExampleDropped as drop:
            report.dropped.append((ex.id, drop.reason))
            continue
        if why is not None:
            report.truncated.append((ex.id, why))
        encoded.append(enc)
    report.n_kept = len(encoded)
    return encoded, report

