"""Recipes: the public registry of record -> (prompt, completion) conversions.

Each :class:`Recipe` reproduces the exact strings of the original research scripts
(gsm8k, mmlu, humaneval, chat) or reads two named fields ("fields"). :data:`RECIPES` is the
one list of names; anything offering recipe choices reads it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

__all__ = ["RECIPES", "Recipe", "available_recipes", "gsm8k_final_answer", "recipe_for_dataset",
           "register_recipe"]

_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class Recipe:
    """How raw records of one dataset become (prompt, completion) examples.

    ``build(record, options) -> (prompt, completion, extra_meta)`` holds the exact strings
    of the original research scripts; the other fields tell the loader about options,
    few-shot shots, ids and the default Hugging Face dataset.
    """

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


_REGISTRY: dict[str, Recipe] = {
    "fields": Recipe("fields", _build_fields, {"prompt_field": "prompt",
                                                "completion_field": "completion"}),
    "gsm8k": Recipe("gsm8k", _build_gsm8k, {"answer_mode": "full", "num_fewshot": 0},
                     fewshot=True, hf=("openai/gsm8k", "main"), default_split="train",
                     fewshot_splits=("train",)),
    "mmlu": Recipe("mmlu", _build_mmlu, {"num_fewshot": 0, "subject_header": False},
                    fewshot=True, preamble=_mmlu_preamble, group_field="subject",
                    hf=("cais/mmlu", "all"), default_split="validation",
                    fewshot_splits=("dev", "train", "validation")),
    "humaneval": Recipe("humaneval", _build_humaneval, {}, id_fields=("task_id", "id"),
                         hf=("openai/openai_humaneval", None), default_split="test"),
    "chat": Recipe("chat", _build_chat, {}),
}
#: The recipe registry (read-only view, in registration order); CLI choices read it.
RECIPES: Mapping[str, Recipe] = MappingProxyType(_REGISTRY)


def register_recipe(recipe: Recipe) -> Recipe:
    """Add a recipe under ``recipe.name`` (refusing to replace one); returns it."""
    if not isinstance(recipe, Recipe):
        raise TypeError(f"expected a Recipe; got {type(recipe).__name__}")
    if recipe.name in _REGISTRY:
        raise ValueError(f"a recipe named {recipe.name!r} already exists")
    _REGISTRY[recipe.name] = recipe
    return recipe


def recipe_for_dataset(name: str) -> Recipe | None:
    """The recipe whose name or default Hugging Face dataset is ``name`` (e.g. "gsm8k" or
    "openai/gsm8k"), else None."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    return next((r for r in _REGISTRY.values() if r.hf and r.hf[0] == name), None)


def available_recipes() -> list[str]:
    """Names accepted by ``load_examples(recipe=...)``."""
    return sorted(_REGISTRY)
