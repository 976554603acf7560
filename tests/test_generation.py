"""Generation: token-for-token parity with the official samplers, both styles on both families."""

from __future__ import annotations

import json

import pytest
import torch

from headig.diffusion.generation import (
    dream_transfer_count,
    generate,
    generate_dream_style,
    generate_llada_style,
    num_transfer_tokens,
    predict_logits,
    truncate_at_stop,
)
from headig.diffusion.schedule import current_state
from tests.conftest import fixture_path

GOLDEN_CASES = [
    ("tiny-llada", "lowconf_blocks"), ("tiny-llada", "lowconf_single"),
    ("tiny-dream", "entropy"), ("tiny-dream", "maskgit_plus"), ("tiny-dream", "topk_margin"),
]
PADDED_CASES = [("tiny-llada", "generate_lowconf"), ("tiny-dream", "generate_entropy")]


def _settings(name: str) -> dict:
    return json.loads((fixture_path(name) / "golden.json").read_text())["cases"]


class ForwardCounter:
    """Counts forwards and records the announced denoising step of each."""

    def __init__(self, model):
        self.model, self.steps = model, []
        self.handle = model.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        state = current_state(self.model)
        self.steps.append(None if state is None else (state.step, state.total_steps,
                                                      state.prompt_length))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.parametrize("name,case", GOLDEN_CASES)
def test_generate_matches_official(loaded, golden, name, case):
    model, _ = loaded(name)
    g = golden(name)
    settings = _settings(name)["generate"]["settings"][case]
    out = generate(model, g["generate.prompt"], **settings)
    assert out.dtype == torch.long
    assert torch.equal(out, g[f"generate.{case}"])


@pytest.mark.parametrize("name,case", PADDED_CASES)
def test_padded_generate_matches_official(loaded, golden, name, case):
    model, _ = loaded(name)
    g = golden(name)
    settings = _settings(name)["padded"]["generate_settings"]
    ids, mask = g["padded.prompt_ids"], g["padded.prompt_attention_mask"]
    out = generate(model, ids, mask, **settings)
    assert torch.equal(out, g[f"padded.{case}"])
    # the short, heavily padded row equals the same prompt run alone, unpadded
    alone = generate(model, ids[:1, mask[0].bool()], **settings)
    assert torch.equal(out[0, ids.shape[1]:], alone[0, -8:])


def test_explicit_style_functions_match_dispatcher(loaded, golden):
    llada, _ = loaded("tiny-llada")
    dream, _ = loaded("tiny-dream")
    out = generate_llada_style(llada, golden("tiny-llada")["generate.prompt"], steps=8,
                               max_new_tokens=8, block_length=4)
    assert torch.equal(out, golden("tiny-llada")["generate.lowconf_blocks"])
    out = generate_dream_style(dream, golden("tiny-dream")["generate.prompt"], steps=8,
                               gen_length=8, alg="topk_margin")
    assert torch.equal(out, golden("tiny-dream")["generate.topk_margin"])


@pytest.mark.parametrize("name", ["tiny-llada", "tiny-dream"])
@pytest.mark.parametrize("style", ["llada", "dream"])
def test_both_styles_apply_the_family_shift(loaded, golden, name, style):
    """One new token in one step is the argmax of the aligned prediction at the first
    generated position: raw row P for LLaDA, raw row P-1 for Dream (in either style)."""
    model, _ = loaded(name)
    prompt = golden(name)["generate.prompt"]
    p = prompt.shape[1]
    kwargs = {"alg": "maskgit_plus"} if style == "dream" else {}
    out = generate(model, prompt, steps=1, gen_length=1, style=style, **kwargs)
    x = torch.cat([prompt, torch.full((2, 1), model.family.mask_token_id)], dim=1)
    raw = model(x).logits
    row = p - model.family.logit_shift
    assert torch.equal(out[:, p], raw[:, row].argmax(-1))
    assert not torch.equal(raw[:, p].argmax(-1), raw[:, p - 1].argmax(-1))  # test can fail


@pytest.mark.parametrize("name,case", GOLDEN_CASES)
def test_batch_equals_rows_alone(loaded, golden, name, case):
    model, _ = loaded(name)
    g = golden(name)
    settings = _settings(name)["generate"]["settings"][case]
    rows = [generate(model, g["generate.prompt"][i:i + 1], **settings) for i in range(2)]
    assert torch.equal(torch.cat(rows), g[f"generate.{case}"])


@pytest.mark.parametrize("name", ["tiny-llada", "tiny-dream"])
def test_announces_schedule_before_every_forward(loaded, golden, name):
    model, _ = loaded(name)
    prompt = golden(name)["generate.prompt"]
    with ForwardCounter(model) as counter:
        if name == "tiny-llada":
            generate(model, prompt, steps=8, gen_length=8, block_length=4)
            expected = list(range(8))
        else:  # Dream commits 0 tokens at step 0 (int truncation): that forward is skipped
            generate(model, prompt, steps=8, gen_length=8, alg="entropy")
            expected = list(range(1, 8))
    assert counter.steps == [(i, 8, 6) for i in expected]
    assert current_state(model) is None


def test_transfer_counts():
    masks = torch.tensor([[1] * 8, [1] * 5 + [0] * 3], dtype=torch.bool)
    assert num_transfer_tokens(masks, 3).tolist() == [[3, 3, 2], [2, 2, 1]]
    ts = torch.linspace(1, 1e-3, 9, dtype=torch.float32)
    counts, left = [], 8
    for i in range(8):
        c = dream_transfer_count(torch.tensor(left) / 1, ts[i], ts[i + 1], i == 7)
        counts.append(c)
        left -= c
    assert counts == [0, 1, 1, 1, 1, 1, 1, 2]  # the README's schedule; rounding differs
    ts = torch.linspace(1, 1e-3, 5, dtype=torch.float32)
    counts, left = [], 8
    for i in range(4):
        c = dream_transfer_count(torch.tensor(left) / 1, ts[i], ts[i + 1], i == 3)
        counts.append(c)
        left -= c
    assert counts == [1, 2, 2, 3]


@pytest.mark.parametrize("kwargs", [
    {"style": "llada", "temperature": 0.9, "steps": 8, "block_length": 4},
    {"style": "llada", "remasking": "random", "steps": 4},
    {"style": "dream", "alg": "origin", "steps": 4},
    {"style": "dream", "alg": "entropy", "temperature": 0.8, "top_p": 0.9, "steps": 4},
    {"style": "dream", "alg": "maskgit_plus", "temperature": 1.0, "top_k": 20,
     "alg_temp": 0.5, "steps": 4},
])
def test_seeded_sampling_is_reproducible(loaded, golden, kwargs):
    model, _ = loaded("tiny-dream" if kwargs["style"] == "dream" else "tiny-llada")
    prompt = golden("tiny-llada")["generate.prompt"]

    def run(seed):
        return generate(model, prompt, gen_length=8,
                        generator=torch.Generator().manual_seed(seed), **kwargs)

    first, again, other = run(0), run(0), run(1)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not (first == model.family.mask_token_id).any()


def test_default_rng_follows_manual_seed(loaded, golden):
    model, _ = loaded("tiny-llada")
    prompt = golden("tiny-llada")["generate.prompt"]
    torch.manual_seed(3)
    a = generate(model, prompt, steps=4, gen_length=8, temperature=1.0)
    torch.manual_seed(3)
    b = generate(model, prompt, steps=4, gen_length=8, temperature=1.0)
    assert torch.equal(a, b)


def test_cfg_logits_formula(loaded, golden):
    model, _ = loaded("tiny-dream")
    mask_id = model.family.mask_token_id
    x = golden("tiny-dream")["forward.input_ids"]
    uncond = x.clone()
    uncond[:, :5] = mask_id
    at = x == mask_id
    got = predict_logits(model, x, at=at, cfg_scale=1.5, uncond_ids=uncond)
    c, u = predict_logits(model, x), predict_logits(model, uncond)
    want = (u + 2.5 * (c - u))[at]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    out = generate(model, golden("tiny-dream")["generate.prompt"], steps=4, gen_length=8,
                   alg="entropy", cfg_scale=1.5)
    assert out.shape == (2, 14) and not (out == mask_id).any()


@pytest.mark.parametrize("name", ["tiny-llada", "tiny-dream"])
def test_predict_logits_at_positions(loaded, golden, name):
    model, _ = loaded(name)
    g = golden(name)
    x = g["forward.input_ids"]
    full = predict_logits(model, x)
    raw = g["forward.logits"]
    aligned = torch.cat([raw[:, :1], raw[:, :-1]], 1) if model.family.logit_shift else raw
    torch.testing.assert_close(full, aligned, atol=1e-4, rtol=0)
    at = x == model.family.mask_token_id
    at[0, :2] = True  # positions 0 and 1 read the same row under the Dream shift
    torch.testing.assert_close(predict_logits(model, x, at=at), full[at], atol=1e-5, rtol=0)


def test_prompt_masks_are_filled_like_any_mask(loaded, golden):
    model, _ = loaded("tiny-dream")
    mask_id = model.family.mask_token_id
    prompt = golden("tiny-dream")["generate.prompt"].clone()
    prompt[:, 2] = mask_id
    out = generate(model, prompt, steps=4, gen_length=8, alg="entropy")
    assert not (out == mask_id).any()
    keep = torch.ones(6, dtype=torch.bool)
    keep[2] = False
    assert torch.equal(out[:, :6][:, keep], prompt[:, keep])


def test_early_stop_keeps_text_up_to_stop(loaded, golden):
    model, _ = loaded("tiny-llada")
    prompt = golden("tiny-llada")["generate.prompt"]
    full = golden("tiny-llada")["generate.lowconf_single"]
    stop_ids = [int(full[0, 6]), int(full[1, 6])]  # both first tokens commit by step 1
    with ForwardCounter(model) as counter:
        out = generate(model, prompt, steps=4, gen_length=8, stop_ids=stop_ids)
    assert len(counter.steps) == 2
    assert not (out == model.family.mask_token_id).any()
    for row in range(2):
        gen = out[row, 6:].tolist()
        first = min(i for i, t in enumerate(gen) if t in stop_ids)
        assert gen[:first + 1] == full[row, 6:6 + first + 1].tolist()
        assert all(t == gen[first] for t in gen[first:] if t not in full[row, 6:].tolist())
    # off by default: no stop ids, every step runs
    with ForwardCounter(model) as counter:
        generate(model, prompt, steps=4, gen_length=8)
    assert len(counter.steps) == 4


def test_truncate_at_stop():
    assert truncate_at_stop("a b<|eot|>c\n\nd", ["\n\n", "<|eot|>"]) == "a b"
    assert truncate_at_stop("abc", "x") == "abc"
    assert truncate_at_stop("abc", ["", "c"]) == "ab"
    assert truncate_at_stop("abc", None) == "abc"


@pytest.mark.parametrize("kwargs,match", [
    ({"steps": 8, "gen_length": 8, "block_length": 3}, "multiple of block_length"),
    ({"steps": 3, "gen_length": 8, "block_length": 4}, "multiple of the number of blocks"),
    ({"steps": 4, "gen_length": 8, "remasking": "greedy"}, "low_confidence"),
    ({"steps": 4, "gen_length": 8, "alg": "beam"}, "maskgit_plus"),
    ({"steps": 4, "gen_length": 8, "max_new_tokens": 6}, "disagree"),
    ({"steps": 4}, "gen_length"),
    ({"steps": 0, "gen_length": 8}, "steps"),
    ({"steps": 4, "gen_length": 8, "temperature": -1.0}, "temperature"),
    ({"steps": 4, "gen_length": 8, "alg": "entropy", "top_p": 1.5}, "top_p"),
    ({"steps": 4, "gen_length": 8, "alg": "entropy", "block_length": 4}, "LLaDA-style"),
    ({"steps": 4, "gen_length": 8, "remasking": "random", "top_k": 5}, "Dream-style"),
    ({"steps": 4, "gen_length": 8, "style": "ar"}, "style"),
])
def test_bad_arguments_raise(loaded, golden, kwargs, match):
    model, _ = loaded("tiny-llada")
    with pytest.raises(ValueError, match=match):
        generate(model, golden("tiny-llada")["generate.prompt"], **kwargs)


def test_bad_inputs_raise(loaded, golden):
    model, _ = loaded("tiny-llada")
    prompt = golden("tiny-llada")["generate.prompt"]
    with pytest.raises(ValueError, match="batch, prompt_len"):
        generate(model, prompt[0], steps=4, gen_length=8)
    with pytest.raises(ValueError, match="attention_mask"):
        generate(model, prompt, torch.ones(2, 5, dtype=torch.long), steps=4, gen_length=8)
