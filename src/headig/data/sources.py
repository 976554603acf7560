"""Sources of records (local JSON / JSONL / CSV files, folders of split files, in-memory
records, Hugging Face datasets) and :func:`load_examples`, which turns them into examples
through a recipe (with few-shot shots, ids, shuffling and split-leak warnings)."""

from __future__ import annotations

import csv
import importlib
import json
import random
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headig.data.examples import Example
from headig.data.recipes import RECIPES, Recipe, available_recipes, recipe_for_dataset

__all__ = ["load_examples", "load_records"]

_SPLIT_PREFERENCE = ("train", "dev", "validation", "val", "valid")
_FILE_SUFFIXES = (".jsonl", ".json", ".csv")


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


def _open_source(source: Any, config: str | None, recipe: Recipe | None) -> _Source:
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


def _choose_split(src: _Source, split: str | None, recipe: Recipe) -> str | None:
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
    return _read_split(src, _choose_split(src, split, RECIPES["fields"]))


def _record_id(record: Mapping[str, Any], id_fields: Sequence[str], split: str | None,
               index: int) -> str:
    for f in id_fields:
        value = record.get(f)
        if value is not None and str(value) != "":
            return str(value)
    return f"{split}-{index}" if split else f"row-{index}"


def _resolve_recipe(recipe: Any, source: Any) -> tuple[Recipe | None, Callable[..., Any] | None]:
    if callable(recipe):
        return None, recipe
    if recipe is None:
        if isinstance(source, str) and not Path(source).expanduser().exists():
            found = recipe_for_dataset(source)
            if found is not None:
                return found, None
        return RECIPES["fields"], None
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; available: {available_recipes()} or a "
                         "callable record -> (prompt, completion)")
    return RECIPES[recipe], None


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
                self_id: str, self_prompt: str, recipe: Recipe, opts: dict[str, Any],
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
    recipe_spec = spec or RECIPES["fields"]
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
