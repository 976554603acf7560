"""Likelihood: exact enumeration against the official estimator's expectation, Monte-Carlo
agreement, seeding and batch independence, batched requests."""

from __future__ import annotations

import pytest
import torch

from headig.diffusion.generation import predict_logits
from headig.diffusion.likelihood import (
    draw_mask_patterns,
    exact_loglikelihood,
    loglikelihood,
    loglikelihood_batch,
)

FAMILIES = ["tiny-llada", "tiny-dream"]


def _case(golden, name, j):
    g = golden(name)
    return g["loglik.prompt"], g[f"loglik.answer{j}"], float(g["loglik.expected"][j])


class Forwards:
    def __init__(self, model):
        self.n = 0
        self.handle = model.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.n += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("j", [0, 1, 2])
def test_exact_enumeration_matches_golden(loaded, golden, name, j):
    model, _ = loaded(name)
    prompt, answer, expected = _case(golden, name, j)
    assert abs(exact_loglikelihood(model, prompt, answer) - expected) <= 1e-4


@pytest.mark.parametrize("name", FAMILIES)
def test_one_token_answer_is_exact_in_one_forward(loaded, golden, name):
    model, _ = loaded(name)
    prompt, answer, expected = _case(golden, name, 0)
    with Forwards(model) as fw:
        ll, stderr = loglikelihood(model, prompt, answer)
    assert fw.n == 1
    assert abs(ll - expected) <= 1e-4 and stderr == 0.0
    # and it is log p(answer | prompt, answer masked), read at the family's aligned row
    x = torch.cat([prompt, torch.tensor([model.family.mask_token_id])])[None]
    logp = predict_logits(model, x)[0, -1].log_softmax(-1)[answer[0]]
    assert abs(ll - float(logp)) <= 1e-5


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("j", [1, 2])
def test_monte_carlo_within_stated_error(loaded, golden, name, j):
    model, _ = loaded(name)
    prompt, answer, expected = _case(golden, name, j)
    ll, stderr = loglikelihood(model, prompt, answer, mc_num=128, seed=7)
    assert 0 < stderr < 1.0
    assert abs(ll - expected) <= 4 * stderr


@pytest.mark.parametrize("name", FAMILIES)
def test_independent_of_batch_size(loaded, golden, name):
    model, _ = loaded(name)
    prompt, answer, _ = _case(golden, name, 2)
    results = [loglikelihood(model, prompt, answer, batch_size=b, seed=3) for b in (1, 7, 32)]
    for ll, stderr in results[1:]:
        # identical masks; only float32 forward rounding differs between batch shapes
        assert abs(ll - results[0][0]) <= 2e-7 * abs(results[0][0])
        assert abs(stderr - results[0][1]) <= 1e-5
    other_seed = loglikelihood(model, prompt, answer, seed=4)[0]
    assert abs(other_seed - results[0][0]) > 1e-3  # the seed matters


def test_batched_requests_equal_individual_calls(loaded, golden):
    model, _ = loaded("tiny-dream")
    g = golden("tiny-dream")
    p = g["loglik.prompt"]
    requests = [(p, g["loglik.answer1"]), (p[:3], g["loglik.answer2"]), (p, g["loglik.answer0"]),
                (p[2:].tolist(), g["loglik.answer2"].tolist())]
    batched = loglikelihood_batch(model, requests, mc_num=64, batch_size=5, seed=11)
    for (prompt, target), (ll, stderr, greedy) in zip(requests, batched):
        alone = loglikelihood(model, prompt, target, mc_num=64, batch_size=5, seed=11,
                              greedy_check=True)
        assert abs(ll - alone[0]) <= 1e-6 * max(1.0, abs(ll))
        assert abs(stderr - alone[1]) <= 1e-5
        assert greedy == alone[2]


@pytest.mark.parametrize("name", FAMILIES)
def test_greedy_check(loaded, golden, name):
    model, _ = loaded(name)
    prompt = golden(name)["loglik.prompt"]
    mask_id = model.family.mask_token_id
    x = torch.cat([prompt, torch.full((3,), mask_id)])[None]
    greedy = predict_logits(model, x)[0, -3:].argmax(-1)  # masked input: target-independent
    assert loglikelihood(model, prompt, greedy, greedy_check=True, mc_num=32)[2] is True
    wrong = greedy.clone()
    wrong[1] = (wrong[1] + 1) % mask_id
    assert loglikelihood(model, prompt, wrong, greedy_check=True, mc_num=32)[2] is False
    ll, is_greedy = loglikelihood(model, prompt, greedy, return_stderr=False,
                                  greedy_check=True, mc_num=32)
    assert isinstance(ll, float) and is_greedy is True


def test_mask_patterns_follow_official_stratification():
    patterns = draw_mask_patterns(4, 64, seed=0, stratum_size=32)
    assert patterns.shape == (64, 4)
    for group in patterns.split(32):
        counts = torch.bincount(group.sum(-1), minlength=5)
        assert counts[0] == 0
        assert ((counts[1:] - 8).abs() <= 1).all()  # k..k+3.875 rounded: 7 to 9 each
    assert torch.equal(patterns, draw_mask_patterns(4, 64, seed=0, stratum_size=32))
    assert not torch.equal(patterns, draw_mask_patterns(4, 64, seed=1, stratum_size=32))
    assert draw_mask_patterns(5, 10, seed=0, stratum_size=4).shape == (10, 5)  # ragged last


def test_cfg_one_token(loaded, golden):
    model, _ = loaded("tiny-llada")
    prompt, answer, _ = _case(golden, "tiny-llada", 0)
    mask_id = model.family.mask_token_id
    ll, _ = loglikelihood(model, prompt, answer, cfg_scale=2.0)
    x = torch.cat([prompt, torch.tensor([mask_id])])[None]
    cond = predict_logits(model, x)[0, -1]
    uncond = predict_logits(model, torch.full_like(x, mask_id))[0, -1]
    want = (uncond + 3.0 * (cond - uncond)).log_softmax(-1)[answer[0]]
    assert abs(ll - float(want)) <= 1e-5


def test_bad_inputs_raise(loaded, golden):
    model, _ = loaded("tiny-llada")
    prompt, answer, _ = _case(golden, "tiny-llada", 2)
    with pytest.raises(ValueError, match="empty"):
        loglikelihood(model, prompt, [])
    with pytest.raises(ValueError, match="mask id"):
        loglikelihood(model, prompt, [5, model.family.mask_token_id])
    with pytest.raises(ValueError, match="max_target_len"):
        exact_loglikelihood(model, prompt, list(range(13)))
    with pytest.raises(ValueError, match="1-D"):
        loglikelihood(model, prompt[None].repeat(2, 1), answer)
    with pytest.raises(ValueError, match="mc_num"):
        loglikelihood(model, prompt, answer, mc_num=0)
    with pytest.raises(ValueError, match="batch_size"):
        loglikelihood(model, prompt, answer, batch_size=0)
