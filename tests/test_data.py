"""headig.data: loaders, recipes' exact strings, split warnings, encoding and truncation."""

from __future__ import annotations

import csv
import hashlib
import json
import sys
import types
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

import headig
from headig.data import (
    EncodedExample,
    Example,
    ExampleDropped,
    available_recipes,
    encode_example,
    encode_examples,
    fingerprint,
    load_examples,
    load_records,
)

FIX = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def llada_tok():
    return headig.load_tokenizer(FIX / "tiny-llada")


@pytest.fixture(scope="module")
def dream_tok():
    return headig.load_tokenizer(FIX / "tiny-dream")


def _gsm(i: int) -> dict[str, str]:
    return {"question": f"Tom has {i} apples. How many?",
            "answer": f"He has {i} apples.\n#### {i}"}


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# ---------------------------------------------------------------- Example, fingerprint
def test_example_validation_and_default_id() -> None:
    ex = Example("p", "c")
    assert ex.id.startswith("ex-") and len(ex.id) == 15
    assert ex.id == Example("p", "c").id != Example("p", "d").id
    assert hash(ex) == hash(Example("p", "c", id=ex.id, meta={"x": 1}))  # meta is not hashed
    with pytest.raises(ValueError, match="empty completion"):
        Example("p", "")
    with pytest.raises(TypeError, match="must be str"):
        Example("p", 3)  # type: ignore[arg-type]


def test_fingerprint_is_stable_and_text_only() -> None:
    a = [Example("Question: 1\nAnswer:", " 2", id="a"), Example("x", "y", id="b")]
    fp = fingerprint(a)
    h = hashlib.sha256(b"headig-examples-v1\n")  # the documented layout, recomputed here
    for text in ("Question: 1\nAnswer:", " 2", "x", "y"):
        h.update(len(text.encode()).to_bytes(8, "little") + text.encode())
    assert fp == h.hexdigest()
    assert fp == "ef036fd7a2e7df59d1a54748457286604b82d1a2f14ab2173211022e00fc0e8d"  # pinned
    assert fingerprint([Example(e.prompt, e.completion, id="z" + e.id, meta={"k": 1}) for e in a]) == fp
    assert fingerprint(a[::-1]) != fp  # order matters (per-example results are aligned to it)
    assert fingerprint([Example("xy", "z"), Example("a", "b")]) != \
        fingerprint([Example("x", "yz"), Example("a", "b")])  # boundaries matter


# ---------------------------------------------------------------- file loading
def test_json_jsonl_csv_loading(tmp_path: Path, no_warnings) -> None:
    rows = [{"id": f"r{i}", "prompt": f"P{i}", "completion": f"C{i}"} for i in range(4)]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    (tmp_path / "b.json").write_text(json.dumps({"data": rows}))
    _write_jsonl(tmp_path / "c.jsonl", rows)
    with open(tmp_path / "d.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "prompt", "completion"])
        w.writeheader()
        w.writerows(rows)
    for name in ("a.json", "b.json", "c.jsonl", "d.csv"):
        ex = load_examples(tmp_path / name, seed=None)
        assert [(e.id, e.prompt, e.completion) for e in ex] == \
            [(f"r{i}", f"P{i}", f"C{i}") for i in range(4)], name
        assert ex[2].meta == {"source": Path(name).stem, "split": None, "index": 2, "recipe": "fields"}


def test_custom_fields_ids_and_errors(tmp_path: Path) -> None:
    rows = [{"q": "Why?", "a": "Because."}, {"q": "How?", "a": "So."}]
    f = _write_jsonl(tmp_path / "qa.jsonl", rows)
    ex = load_examples(f, prompt_field="q", completion_field="a", seed=None)
    assert [(e.id, e.prompt, e.completion) for e in ex] == [("row-0", "Why?", "Because."),
                                                           ("row-1", "How?", "So.")]
    assert load_examples(f, prompt_field="q", completion_field="a", id_field="q",
                         seed=None)[1].id == "How?"
    with pytest.raises(ValueError, match=r"no field\(s\) \['prompt', 'completion'\]"):
        load_examples(f)
    with pytest.raises(TypeError, match="does not accept option"):
        load_examples(f, recipe="humaneval", num_fewshot=2)
    with pytest.raises(ValueError, match="unknown recipe"):
        load_examples(f, recipe="nope")
    with pytest.raises(FileNotFoundError):
        load_examples(tmp_path / "missing.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{oops\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        load_examples(tmp_path / "bad.jsonl")
    _write_jsonl(tmp_path / "dup.jsonl", [{"id": "x", "prompt": "a", "completion": "b"}] * 2)
    with pytest.raises(ValueError, match="duplicate example ids"):
        load_examples(tmp_path / "dup.jsonl")
    custom = load_examples(f, recipe=lambda r: (r["q"].upper(), " " + r["a"]), seed=None)
    assert (custom[0].prompt, custom[0].completion, custom[0].meta["recipe"]) == \
        ("WHY?", " Because.", "custom")
    assert set(available_recipes()) == {"fields", "gsm8k", "mmlu", "humaneval", "chat"}


def test_seed_and_limit(tmp_path: Path) -> None:
    f = _write_jsonl(tmp_path / "d.jsonl", [{"prompt": str(i), "completion": "c"} for i in range(20)])
    assert [e.prompt for e in load_examples(f, seed=None, limit=3)] == ["0", "1", "2"]
    a = [e.id for e in load_examples(f, seed=7)]
    assert a == [e.id for e in load_examples(f, seed=7)]  # deterministic
    assert sorted(a) == sorted(f"row-{i}" for i in range(20)) and a != sorted(a)
    assert [e.id for e in load_examples(f, seed=7, limit=5)] == a[:5]
    assert a != [e.id for e in load_examples(f, seed=8)]
    assert load_examples(f, limit=0) == []
    with pytest.raises(ValueError, match="limit"):
        load_examples(f, limit=-1)


def test_split_folders_and_leak_warnings(tmp_path: Path) -> None:
    d = tmp_path / "ds"
    d.mkdir()
    _write_jsonl(d / "train.jsonl", [{"prompt": "tr", "completion": "x"}])
    _write_jsonl(d / "test.jsonl", [{"prompt": "te", "completion": "x"}])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ex = load_examples(d)
    assert [e.prompt for e in ex] == ["tr"] and ex[0].id == "train-0"
    assert ex[0].meta["split"] == "train"
    with pytest.warns(UserWarning, match="split 'test'.*leaks"):
        ex = load_examples(d, split="test")
    assert [e.prompt for e in ex] == ["te"]
    with pytest.raises(ValueError, match=r"split 'dev' not in ds; available: \['test', 'train'\]"):
        load_examples(d, split="dev")
    # a JSON object of splits; only a test split -> the user must choose
    (tmp_path / "s.json").write_text(json.dumps({"test": [{"prompt": "a", "completion": "b"}]}))
    with pytest.raises(ValueError, match="no train/dev split"):
        load_examples(tmp_path / "s.json")
    with pytest.warns(UserWarning, match="leaks"):
        load_examples(tmp_path / "s.json", split="test")
    # an unsplit file whose name says test, or a test label, warns as well
    f = _write_jsonl(tmp_path / "gsm8k_test.jsonl", [{"prompt": "a", "completion": "b"}])
    with pytest.warns(UserWarning, match="looks like a test set"):
        load_examples(f)
    g = _write_jsonl(tmp_path / "plain.jsonl", [{"prompt": "a", "completion": "b"}])
    with pytest.warns(UserWarning, match="leaks"):
        load_examples(g, split="test")
    assert load_records(d) == [{"prompt": "tr", "completion": "x"}]


# ---------------------------------------------------------------- recipes
def test_gsm8k_strings(no_warnings) -> None:
    rec = {"question": "Natalia sold 48 clips. How many?", "answer": "She sold 48/2 = <<48/2=24>>24.\n#### 72"}
    (full,) = load_examples([rec], recipe="gsm8k")
    assert full.prompt == "Question: Natalia sold 48 clips. How many?\nAnswer:"
    assert full.completion == " She sold 48/2 = <<48/2=24>>24.\n#### 72"
    assert full.meta["final_answer"] == "72"
    (final,) = load_examples([rec], recipe="gsm8k", answer_mode="final")
    assert (final.prompt, final.completion) == (full.prompt, " 72")
    with pytest.raises(ValueError, match="answer_mode"):
        load_examples([rec], recipe="gsm8k", answer_mode="short")
    with pytest.raises(ValueError, match="no '####'"):
        load_examples([{"question": "q", "answer": "a"}], recipe="gsm8k", answer_mode="final")


def test_gsm8k_fewshot_exact_and_excludes_self(no_warnings) -> None:
    rows = [_gsm(i) for i in range(6)]
    ex = load_examples(rows, recipe="gsm8k", seed=None, num_fewshot=2, answer_mode="final")
    assert ex[0].prompt == ("Question: Tom has 1 apples. How many?\nAnswer: 1\n\n"
                            "Question: Tom has 2 apples. How many?\nAnswer: 2\n\n"
                            "Question: Tom has 0 apples. How many?\nAnswer:")
    assert ex[0].meta["fewshot_ids"] == ["row-1", "row-2"]
    assert ex[1].meta["fewshot_ids"] == ["row-0", "row-2"]
    for seed in (0, 1, 2):
        ex = load_examples(rows, recipe="gsm8k", seed=seed, num_fewshot=5)
        for e in ex:
            assert e.id not in e.meta["fewshot_ids"] and len(set(e.meta["fewshot_ids"])) == 5
            own = e.prompt.rsplit("\n\n", 1)[1]
            assert e.prompt.count(own) == 1  # the example's own question is not a shot
    with pytest.raises(ValueError, match="only 5 few-shot records"):
        load_examples(rows, recipe="gsm8k", num_fewshot=6)
    # a duplicate question under another id is not used as a shot either
    dup = rows + [dict(rows[0])]
    ex = load_examples(dup, recipe="gsm8k", seed=None, num_fewshot=5)
    assert "row-6" not in ex[0].meta["fewshot_ids"] and "row-0" not in ex[6].meta["fewshot_ids"]


def test_fewshot_from_train_split(tmp_path: Path, no_warnings) -> None:
    d = tmp_path / "gsm"
    d.mkdir()
    _write_jsonl(d / "train.jsonl", [_gsm(i) for i in range(10)])
    _write_jsonl(d / "dev.jsonl", [_gsm(i) for i in range(100, 103)])
    ex = load_examples(d, recipe="gsm8k", split="dev", num_fewshot=3, seed=4)
    assert [e.id for e in sorted(ex, key=lambda e: e.id)] == ["dev-0", "dev-1", "dev-2"]
    for e in ex:
        assert all(s.startswith("train-") for s in e.meta["fewshot_ids"])
        assert e.prompt.count("Question:") == 4
    ex2 = load_examples(d, recipe="gsm8k", split="dev", num_fewshot=1, seed=None,
                        fewshot_records=[_gsm(7)])
    assert ex2[0].prompt.startswith("Question: Tom has 7 apples. How many?\nAnswer: He has 7 apples.")


def test_mmlu_strings(tmp_path: Path, no_warnings) -> None:
    rec = {"question": " What is 2+2? ", "choices": ["3", "4", "5", "6"], "answer": 1,
           "subject": "elementary_mathematics"}
    (ex,) = load_examples([rec], recipe="mmlu")
    assert ex.prompt == "What is 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:"
    assert ex.completion == " B"
    assert ex.meta["answer_index"] == 1 and ex.meta["subject"] == "elementary_mathematics"
    (ex,) = load_examples([{**rec, "answer": "d"}], recipe="mmlu", subject_header=True)
    assert ex.prompt.startswith("The following are multiple choice questions (with answers) about "
                                "elementary mathematics.\n\nWhat is 2+2?\nA. 3")
    assert ex.completion == " D"
    with open(tmp_path / "m.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["question", "A", "B", "C", "D", "answer"])
        w.writerow(["Capital of France?", "Rome", "Paris", "Oslo", "Bern", "1"])
    (ex,) = load_examples(tmp_path / "m.csv", recipe="mmlu")
    assert (ex.prompt, ex.completion) == (
        "Capital of France?\nA. Rome\nB. Paris\nC. Oslo\nD. Bern\nAnswer:", " B")
    with pytest.raises(ValueError, match="neither a letter"):
        load_examples([{**rec, "answer": 4}], recipe="mmlu")
    # few-shot prefers the same subject
    pool = [{"question": f"m{i}", "choices": ["a", "b"], "answer": 0, "subject": "math"}
            for i in range(3)] + [{"question": "h", "choices": ["a", "b"], "answer": 1,
                                   "subject": "history"}]
    (ex,) = load_examples([{"question": "q", "choices": ["x", "y"], "answer": "A",
                            "subject": "math"}], recipe="mmlu", num_fewshot=2,
                          fewshot_records=pool, seed=None)
    assert ex.prompt == "m0\nA. a\nB. b\nAnswer: A\n\nm1\nA. a\nB. b\nAnswer: A\n\nq\nA. x\nB. y\nAnswer:"


def test_humaneval_and_chat(no_warnings) -> None:
    (he,) = load_examples([{"task_id": "HumanEval/0", "prompt": "def f():\n",
                            "canonical_solution": "    return 1\n"}], recipe="humaneval")
    assert (he.id, he.prompt, he.completion) == ("HumanEval/0", "def f():\n", "    return 1\n")
    rows = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Yo"}]},
        {"instruction": "Add", "input": "1 and 2", "output": "3"},
        {"instruction": "Say hi", "output": "hi"},
        {"conversations": [{"from": "human", "value": "A"}, {"from": "gpt", "value": "B"},
                           {"from": "human", "value": "C"}, {"from": "gpt", "value": "D"}]},
    ]
    ex = load_examples(rows, recipe="chat", seed=None)
    assert [(e.prompt, e.completion) for e in ex] == [
        ("Hi", "Hello!"), ("Be brief.\n\nHi", "Yo"), ("Add\n\n1 and 2", "3"), ("Say hi", "hi"),
        ("User: A\n\nAssistant: B\n\nUser: C\n\nAssistant:", "D")]
    assert ex[1].meta["messages"] == [{"role": "system", "content": "Be brief."},
                                      {"role": "user", "content": "Hi"}]
    with pytest.raises(ValueError, match="no completion"):
        load_examples([{"messages": [{"role": "user", "content": "Hi"}]}], recipe="chat")
    with pytest.raises(ValueError, match="need 'messages'"):
        load_examples([{"text": "x"}], recipe="chat")


def test_hf_datasets_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        if path == "openai/openai_humaneval":
            return [{"task_id": "HumanEval/3", "prompt": "p", "canonical_solution": "s"}]
        return [_gsm(i + (0 if split == "train" else 50)) for i in range(4)]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ex = load_examples("gsm8k", limit=2, answer_mode="final")
    assert calls == [("openai/gsm8k", "main", "train")] and len(ex) == 2
    assert ex[0].meta["recipe"] == "gsm8k" and ex[0].id.startswith("train-")
    calls.clear()
    ex = load_examples("openai/gsm8k", split="validation", num_fewshot=1, seed=None)
    assert calls == [("openai/gsm8k", "main", "validation"), ("openai/gsm8k", "main", "train")]
    assert ex[0].meta["fewshot_ids"] == ["train-0"]
    with pytest.warns(UserWarning, match="split 'test'"):
        (he,) = load_examples("humaneval")  # humaneval only has a test split
    assert he.id == "HumanEval/3"
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    with pytest.raises(ImportError, match=r"headig\[datasets\]"):
        load_examples("some/dataset")


# ---------------------------------------------------------------- encoding
def _ids(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def test_encode_bos_and_separate_tokenization(llada_tok) -> None:
    ex = Example("Answer: th", "e end", id="e")
    enc = encode_example(llada_tok, ex)
    p, c = _ids(llada_tok, ex.prompt), _ids(llada_tok, ex.completion)
    assert enc.input_ids.dtype == torch.long
    assert enc.input_ids.tolist() == [496] + p + c
    assert enc.prompt_length == 1 + len(p) and enc.completion_length == len(c)
    assert enc.input_ids.tolist() != [496] + _ids(llada_tok, ex.prompt + ex.completion)  # would merge
    assert enc.completion_mask().tolist() == [False] * (1 + len(p)) + [True] * len(c)
    assert not enc.truncated and enc.id == "e"
    no_bos = encode_example(llada_tok, ex, add_bos=False)
    assert no_bos.input_ids.tolist() == p + c and no_bos.prompt_length == len(p)

    class NoBos:  # a tokenizer without a BOS token
        bos_token_id = None

        def encode(self, text, add_special_tokens=False):
            return llada_tok.encode(text, add_special_tokens=add_special_tokens)

    assert encode_example(NoBos(), ex).input_ids.tolist() == p + c
    with pytest.raises(ValueError, match="no chat template"):
        encode_example(NoBos(), ex, chat_template=True)


def test_truncation_exact_lengths(llada_tok) -> None:
    ex = Example("one two three four five six seven eight nine ten", " alpha beta gamma delta",
                 id="t")
    p, c = _ids(llada_tok, ex.prompt), _ids(llada_tok, ex.completion)
    P, C = len(p), len(c)
    assert P > 8 and C > 6
    full = encode_example(llada_tok, ex, max_length=1 + P + C)
    assert not full.truncated and full.length == 1 + P + C
    # prompt cut from the left, BOS kept, completion whole
    cut = encode_example(llada_tok, ex, max_length=1 + P + C - 3)
    assert cut.input_ids.tolist() == [496] + p[3:] + c
    assert cut.prompt_length == 1 + P - 3 and cut.truncated
    # the completion alone fills the window: keep min_prompt_tokens=1 prompt token, cut its end
    over = encode_example(llada_tok, ex, max_length=C)
    assert over.input_ids.tolist() == [496, p[-1]] + c[:C - 2]
    assert over.prompt_length == 2 and over.length == C
    wide = encode_example(llada_tok, ex, max_length=1 + C + 2, min_prompt_tokens=5)
    assert wide.input_ids.tolist() == [496] + p[-5:] + c[:C - 3]
    with pytest.raises(ExampleDropped, match="nothing of the prompt would remain"):
        encode_example(llada_tok, ex, max_length=C, min_prompt_tokens=0)
    with pytest.raises(ExampleDropped, match="no room for the completion"):
        encode_example(llada_tok, ex, max_length=6, min_prompt_tokens=5)
    # min_prompt_tokens=0 still cuts the prompt when the completion fits
    assert encode_example(llada_tok, ex, max_length=1 + C + 1,
                          min_prompt_tokens=0).input_ids.tolist() == [496, p[-1]] + c
    with pytest.raises(ValueError, match="max_length"):
        encode_example(llada_tok, ex, max_length=1)

    other = Example("short", " ok", id="s")
    encoded, report = encode_examples(llada_tok, [ex, other, Example("x", "   ", id="w")],
                                      max_length=C, min_prompt_tokens=0)
    assert [e.id for e in encoded] == ["s", "w"]
    assert report.n_examples == 3 and report.n_kept == 2
    assert [i for i, _ in report.dropped] == ["t"] and "nothing of the prompt" in report.dropped[0][1]
    assert report.truncated == []
    encoded, report = encode_examples(llada_tok, [ex, other], max_length=1 + P + C - 3)
    assert report.truncated == [("t", f"prompt cut from the left: kept {P - 3} of {P} prompt "
                                       f"tokens (max_length={1 + P + C - 3})")]
    assert json.loads(json.dumps(report.to_dict()))["truncated"][0]["id"] == "t"
    assert "1 truncated, 0 dropped" in str(report)
    with pytest.raises(ValueError, match="duplicate example id"):
        encode_examples(llada_tok, [other, other])


def test_chat_template_dream(dream_tok) -> None:
    ex = Example("What is 2+2?", " 4", id="c")
    enc = encode_example(dream_tok, ex, chat_template=True)
    text = dream_tok.apply_chat_template([{"role": "user", "content": ex.prompt}],
                                         add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    prompt_ids = [dream_tok.bos_token_id] + _ids(dream_tok, text)
    assert dream_tok.bos_token_id == 499 and _ids(dream_tok, "<|im_start|>") == [497]
    assert enc.input_ids.tolist() == prompt_ids + _ids(dream_tok, " 4")
    assert enc.prompt_length == len(prompt_ids)
    # multi-turn chat records keep their turns (system prompt included)
    (chat,) = load_examples([{"messages": [{"role": "system", "content": "Be terse."},
                                           {"role": "user", "content": "Hi"},
                                           {"role": "assistant", "content": "Yo"}]}], recipe="chat")
    enc = encode_example(dream_tok, chat, chat_template=True)
    prompt = dream_tok.decode(enc.input_ids[:enc.prompt_length])
    assert prompt == ("<|beginoftext|><|im_start|>system\nBe terse.<|im_end|>\n"
                      "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert dream_tok.decode(enc.input_ids[enc.prompt_length:]) == "Yo"


def test_chat_template_llada_no_double_bos(llada_tok) -> None:
    enc = encode_example(llada_tok, Example("Hi", " there", id="l"), chat_template=True)
    ids = enc.input_ids.tolist()
    assert ids[0] == 496 and ids.count(496) == 1  # the template's BOS is not doubled
    assert llada_tok.decode(ids[:enc.prompt_length]) == (
        "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_encoded_example_is_plain_value() -> None:
    enc = EncodedExample(torch.tensor([1, 2, 3]), 1, "x")
    assert (enc.length, enc.completion_length, enc.truncated) == (3, 2, False)


# ---------------------------------------------------------------- recipe registry
def test_recipe_registry_is_public_and_read_only() -> None:
    from headig.data import RECIPES, Recipe, recipe_for_dataset, register_recipe

    assert tuple(RECIPES) == ("fields", "gsm8k", "mmlu", "humaneval", "chat")
    assert available_recipes() == sorted(RECIPES)
    assert recipe_for_dataset("openai/gsm8k") is RECIPES["gsm8k"]
    assert recipe_for_dataset("mmlu") is RECIPES["mmlu"] and recipe_for_dataset("x/y") is None
    with pytest.raises(TypeError):
        RECIPES["mine"] = RECIPES["fields"]  # type: ignore[index]
    with pytest.raises(ValueError, match="'gsm8k' already exists"):
        register_recipe(Recipe("gsm8k", RECIPES["fields"].build, {}))
    with pytest.raises(TypeError, match="expected a Recipe"):
        register_recipe("qa")  # type: ignore[arg-type]


def test_registered_recipe_is_loadable() -> None:
    import headig.data.recipes as recipes
    from headig.data import Recipe, register_recipe

    def build(rec: dict, opts: dict) -> tuple[str, str, dict]:
        return f"Q: {rec['q']}{opts['sep']}", f" {rec['a']}", {"kind": "qa"}

    register_recipe(Recipe("qa", build, {"sep": "\nA:"}))
    try:
        (ex,) = load_examples([{"q": "2+2?", "a": "4", "id": "r0"}], recipe="qa", seed=None)
        assert "qa" in available_recipes()
    finally:
        del recipes._REGISTRY["qa"]  # keep the registry as other tests expect it
    assert (ex.prompt, ex.completion, ex.id) == ("Q: 2+2?\nA:", " 4", "r0")
    assert ex.meta == {"source": "records", "split": None, "index": 0, "recipe": "qa",
                       "kind": "qa"}
