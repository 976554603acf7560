"""Long-context tasks and the ``tiny-dllm-long`` embedded model."""

from __future__ import annotations

import json
import random

import pytest
import torch

from headig.toy import long_context as lc
from headig.toy import train_long as tl


def test_generators_are_deterministic_and_answers_check():
    a = lc.train_batch(0, 7, 9, 300)
    b = lc.train_batch(0, 7, 9, 300)
    c = lc.train_batch(0, 8, 9, 300)
    assert a == b
    assert a != c
    assert [e.task for e in a] == list(lc.LONG_TASKS) * 3
    for ex in a + lc.eval_examples(per_task=4):
        assert lc.reference_answer(ex.prompt) == ex.completion
        words = ex.prompt.split()
        answer = ex.completion.split()
        if ex.task != "continue":  # sources hold the answer tokens themselves
            assert [words[s] for s in ex.sources] == answer


def test_context_layout_has_far_sources_and_local_filler():
    rng = random.Random(3)
    ex = lc.gen_recall(rng, lc.EVAL_CONTEXT)
    words = ex.prompt.split()
    n = len(words) + len(ex.completion.split())
    assert 540 <= n <= 550  # 34 key blocks of 16 tokens
    assert n // 16 >= 16
    assert len(ex.sources) == lc.N_QUERIES == len(ex.completion.split())
    # keys are distinct, so each query has one answer
    keys = [w for w in words[1:words.index("?")] if w in lc.KEYS]
    assert len(keys) == len(set(keys)) == lc.N_PAIRS
    # answers come from all over the sequence, not just its end
    sources = [lc.gen_recall(rng).sources for _ in range(30)]
    blocks = {s // 16 for row in sources for s in row}
    assert len(blocks) >= 25
    # the filler follows its local rule most of the time
    fill = [w for w in words if w in lc.FILLER]
    ok = sum(lc.next_filler(x) == y for x, y in zip(fill, fill[1:]))
    assert ok / (len(fill) - 1) > 0.6
    # the rule is one cycle through all syllables
    seen, w = set(), lc.FILLER[0]
    while w not in seen:
        seen.add(w)
        w = lc.next_filler(w)
    assert len(seen) == len(lc.FILLER)
    # exactly one needle, anywhere
    needle = lc.gen_needle(rng)
    assert sum(w in lc.NEEDLES for w in needle.prompt.split()) == 1


def test_split_is_disjoint_by_prompt_hash():
    held = lc.eval_examples(per_task=10)
    assert all(lc.is_held_out(e.prompt) for e in held)
    assert len({e.prompt for e in held}) == len(held) == 30
    train = lc.train_batch(0, 0, 30, lc.EVAL_CONTEXT)
    assert not any(lc.is_held_out(e.prompt) for e in train)
    share = sum(lc.is_held_out(e.prompt) for e in
                (lc.gen_needle(random.Random(i), 64) for i in range(2000))) / 2000
    assert 0.07 < share < 0.13


def test_tokenizer_matches_fast_encoding():
    tok = lc.build_tokenizer()
    ex = lc.eval_examples(per_task=1)
    fast = lc.encode_fast(ex)
    for e, (p, c) in zip(ex, fast):
        assert tok(e.prompt, add_special_tokens=False)["input_ids"] == p
        assert tok(e.completion, add_special_tokens=False)["input_ids"] == c
        assert tok.unk_token_id not in p + c


TINY = dict(n_layers=1, n_heads=2, n_kv_heads=1, head_dim=8, mlp_hidden=16, steps=4,
            tokens_per_batch=300, min_ctx=16, max_ctx=80, warmup=1)


def _fresh(cfg: tl.LongConfig) -> torch.nn.Module:
    return tl.build_model(tl.llada_config(cfg), cfg.seed)


def test_short_training_is_deterministic_and_seeded():
    tok = lc.build_tokenizer()
    runs = []
    for seed in (0, 0, 1):
        cfg = tl.LongConfig(seed=seed, **TINY)
        model = _fresh(cfg)
        curve, _ = tl.train(model, tok, cfg, log_every=2)
        assert [c["step"] for c in curve] == [2, 4]
        runs.append(model.state_dict())
    assert all(torch.equal(v, runs[1][k]) for k, v in runs[0].items())
    assert not all(torch.equal(v, runs[2][k]) for k, v in runs[0].items())


def test_a_stopped_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    cfg = tl.LongConfig(**TINY)
    tok = lc.build_tokenizer()
    whole = _fresh(cfg)
    tl.train(whole, tok, cfg)

    state = tmp_path / "state.pt"
    original, calls = tl.make_batch, []

    def stop_on_third(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(tl, "make_batch", stop_on_third)
    with pytest.raises(KeyboardInterrupt):
        tl.train(_fresh(cfg), tok, cfg, state_path=state, save_every=1)
    monkeypatch.setattr(tl, "make_batch", original)
    assert torch.load(state, weights_only=False)["step"] == 2
    assert not state.with_suffix(".tmp").exists()

    resumed = _fresh(cfg)
    tl.train(resumed, tok, cfg, state_path=state)
    for k, v in whole.state_dict().items():
        assert torch.allclose(v, resumed.state_dict()[k], atol=1e-6), k
    with pytest.raises(ValueError, match="another config"):
        tl.train(_fresh(cfg), tok, tl.LongConfig(**{**TINY, "lr": 1e-3}), state_path=state)


def test_head_statistics_are_fractions_and_restore_attention():
    cfg = tl.LongConfig(**TINY)
    model = _fresh(cfg).eval()
    fns = [layer.attn.attn_fn for layer in model.layers]
    rng = random.Random(0)
    ex = [lc.GENERATORS[t](rng, 48) for t in lc.LONG_TASKS]
    stats = tl.head_attention_stats(model, ex)
    assert [layer.attn.attn_fn for layer in model.layers] == fns
    for key in ("local", "source", "source_q"):
        assert stats[key].shape == (1, 2)
        assert float(stats[key].min()) >= 0.0 and float(stats[key].max()) <= 1.0 + 1e-9
    # an untrained head spreads attention about evenly: source mass near one block's share
    assert abs(float(stats["source"].mean()) - float(stats["chance"])) < 0.1
    assert float(stats["distance"].min()) > 5.0


asset = pytest.mark.skipif(
    not (lc.Path(__file__).parents[1] / "src/headig/assets" / lc.EMBEDDED_LONG_NAME
         / "model.safetensors").is_file(), reason="tiny-dllm-long asset not built")


@asset
def test_embedded_long_model_shapes_and_card():
    model, tok = lc.load_embedded_long()
    fam = model.family
    assert fam.n_layers * fam.n_heads >= 24
    assert fam.n_kv_heads < fam.n_heads  # grouped-query attention
    folder = lc.embedded_long_path()
    assert (folder / "model.safetensors").stat().st_size <= 10 * 1024 * 1024
    metrics = json.loads((folder / "metrics.json").read_text())
    card = (folder / "TRAINING.md").read_text()
    assert "## Head specialisation" in card and "retrieval" in card
    assert set(metrics["accuracy"]) == {*lc.LONG_TASKS, "all"}
    ex = lc.embedded_long_examples()
    assert len(ex) == metrics["config"]["n_eval_per_task"] * 3
    assert all(lc.is_held_out(e.prompt) for e in ex)
    n = len(tok(ex[0].prompt + ex[0].completion, add_special_tokens=False)["input_ids"])
    assert n // 16 >= 16


@asset
def test_embedded_long_model_solves_held_out_examples():
    try:
        from headig.toy import tasks
    except ImportError:
        from headig import tasks
    model, tok = lc.load_embedded_long()
    ex = lc.embedded_long_examples()
    # needle (far retrieval) and continue (local): the tasks the model learned
    few = [e for t in ("needle", "continue") for e in [x for x in ex if x.task == t][:8]]
    acc = tasks.accuracy(model, tok, few, batch_size=16)
    stated = json.loads((lc.embedded_long_path() / "metrics.json").read_text())["accuracy"]
    for task in ("needle", "continue"):
        assert stated[task] >= 0.9, (task, stated[task])
        assert acc[task] >= 0.75, (task, acc[task])
