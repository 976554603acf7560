"""Malformed arguments and batches fail with a clear message before any model work."""

from __future__ import annotations

import pytest
import torch

import headig.attribution.engine as engine
from headig.attribution import DP, STP, as_items, integrated_gradients, shapley_sampling


@pytest.fixture
def no_model_work(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the model must not be run")

    monkeypatch.setattr(engine, "evaluate_points", refuse)


def batch(n=3, length=8, prompt=4):
    return [dict(input_ids=torch.arange(10, 10 + length), prompt_length=prompt, id=f"e{i}")
            for i in range(n)]


def test_fractional_steps_are_refused_not_truncated(loaded, no_model_work):
    model, _ = loaded("tiny-llada")
    with pytest.raises(TypeError, match=r"steps=2\.7; expected an integer >= 1"):
        integrated_gradients(model, batch(), steps=2.7)
    with pytest.raises(TypeError, match=r"permutations=1\.5; expected an integer"):
        shapley_sampling(model, batch(), permutations=1.5)
    with pytest.raises(TypeError, match="STP samples"):
        STP(samples=2.5)


def test_per_head_rule_refused_on_the_diagonal_path(loaded, no_model_work):
    model, _ = loaded("tiny-llada")
    with pytest.raises(ValueError, match="'ramp_gauss'.*every head moves together.*STP"):
        integrated_gradients(model, batch(), path=DP(), rule="ramp_gauss")


def test_float_input_ids_are_refused(loaded, no_model_work):
    model, _ = loaded("tiny-llada")
    bad = [dict(input_ids=torch.arange(8, dtype=torch.float32) + 10.5, prompt_length=4, id="a")]
    with pytest.raises(TypeError, match="example 0: input_ids must be integer token ids.*float32"):
        integrated_gradients(model, bad)
    with pytest.raises(TypeError, match="integer token ids"):
        as_items({"input_ids": torch.ones(2, 5), "completion_mask": torch.ones(2, 5)})


def test_negative_prompt_length_is_refused(loaded, no_model_work):
    model, _ = loaded("tiny-llada")
    with pytest.raises(ValueError, match=r"example 0: prompt_length=-2; expected 0 <= "):
        integrated_gradients(model, batch(n=1, prompt=-2))
    with pytest.raises(TypeError, match="prompt_length=2.5; expected an integer"):
        as_items(batch(n=1, prompt=2.5))


def test_token_ids_beyond_the_embedding_are_refused(loaded, no_model_work):
    model, _ = loaded("tiny-llada")  # 512 embedding rows
    bad = batch(n=2)
    bad[1]["input_ids"] = torch.tensor([1, 2, 3, 4, 511, 512, 7])
    with pytest.raises(ValueError, match=r"'e1': token id 512 is outside .* \[0, 512\)"):
        integrated_gradients(model, bad)
    bad[1]["input_ids"] = torch.tensor([1, 2, 3, 4, -1, 6, 7])
    with pytest.raises(ValueError, match="token id -1"):
        integrated_gradients(model, bad)


def test_mapping_ids_must_name_every_row(loaded, no_model_work):
    model, _ = loaded("tiny-llada")
    ids = torch.arange(10, 34).view(3, 8)
    comp = torch.zeros(3, 8, dtype=torch.bool)
    comp[:, 4:] = True
    with pytest.raises(ValueError, match="'ids' has 2 names for 3 rows"):
        integrated_gradients(model, {"input_ids": ids, "completion_mask": comp,
                                     "ids": ["a", "b"]})
    items = as_items({"input_ids": ids, "completion_mask": comp, "ids": ["a", "b", "c"]})
    assert [it.id for it in items] == ["a", "b", "c"]


def test_encoded_examples_are_taken_natively():
    from headig.data import EncodedExample

    enc = [EncodedExample(input_ids=torch.arange(10, 18), prompt_length=3, id="x")]
    (item,) = as_items(enc)
    (same,) = as_items([dict(input_ids=torch.arange(10, 18), prompt_length=3, id="x")])
    assert item.id == "x" and torch.equal(item.input_ids, same.input_ids)
    assert torch.equal(item.completion, same.completion) and int(item.completion.sum()) == 5
