"""The one decoder behind exact-match accuracy: generate_completions, and the toy tasks'
evaluator that now calls it."""

from __future__ import annotations

import pytest
import torch

from headig import tasks
from headig.diffusion import generate
from headig.diffusion.generation import generate_completions

PROMPTS = [[5, 9, 7], [8, 6], [12, 4, 3, 10], [7], [9, 9, 11]]
LENGTHS = [3, 2, 3, 1, 2]


def _pad(model, tokenizer):
    fam = model.family
    return fam.arch.pad_token_id if fam.arch.pad_token_id is not None else fam.arch.eos_token_id


@pytest.mark.parametrize("name", ["tiny-llada", "tiny-dream"])
def test_completions_are_per_prompt_generations_in_input_order(loaded, name):
    """Deterministic samplers: batching and left padding change no answer, and answers
    come back in the input order."""
    model, tok = loaded(name)
    kwargs = {} if name == "tiny-llada" else {"alg": "entropy"}
    got = generate_completions(model, PROMPTS, LENGTHS, pad_id=_pad(model, tok), batch_size=2,
                               **kwargs)
    for prompt, n, answer in zip(PROMPTS, LENGTHS, got):
        ref = generate(model, torch.tensor([prompt]), steps=n, gen_length=n, temperature=0.0,
                       **kwargs)
        assert answer == ref[0, len(prompt):].tolist()
    assert [len(a) for a in got] == LENGTHS


def test_stochastic_sampler_is_seeded(loaded):
    """Dream's default ``origin`` sampler draws from the generator: same seed, same answers;
    a single prompt equals one generate call with the same generator."""
    model, tok = loaded("tiny-dream")
    pad = _pad(model, tok)

    def run(seed, prompts=PROMPTS, lengths=LENGTHS):
        return generate_completions(model, prompts, lengths, pad_id=pad,
                                    generator=torch.Generator().manual_seed(seed))

    assert run(3) == run(3)
    one = run(4, [PROMPTS[2]], [3])[0]
    ref = generate(model, torch.tensor([PROMPTS[2]]), steps=3, gen_length=3,
                   generator=torch.Generator().manual_seed(4), temperature=0.0)
    assert one == ref[0, 4:].tolist()


def test_completions_validate_arguments(loaded):
    model, tok = loaded("tiny-llada")
    with pytest.raises(ValueError, match="answer lengths"):
        generate_completions(model, PROMPTS, LENGTHS[:2], pad_id=0)
    with pytest.raises(ValueError, match=">= 1"):
        generate_completions(model, [[1]], [0], pad_id=0)
    assert generate_completions(model, [], [], pad_id=0) == []


@pytest.mark.parametrize("name", ["tiny-llada", "tiny-dream"])
def test_task_evaluator_is_the_diffusion_decoder(loaded, name):
    """tasks.mask_predict decodes with generate_completions (BOS handled by the caller)."""
    model, tok = loaded(name)
    ex = [tasks.Example("copy: a b c =", " a b c", "copy"),
          tasks.Example("reverse: a b =", " b a", "reverse")]
    pairs = tasks.encode(tok, ex)
    prompts, lengths = [p for p, _ in pairs], [len(c) for _, c in pairs]
    for add_bos in (False, True):
        got = tasks.mask_predict(model, tok, prompts, lengths, add_bos=add_bos, seed=5)
        bos = [tok.bos_token_id] if add_bos else []
        ref = generate_completions(model, [bos + p for p in prompts], lengths,
                                   pad_id=tok.pad_token_id if tok.pad_token_id is not None
                                   else _pad(model, tok),
                                   generator=torch.Generator().manual_seed(5))
        assert got == ref
