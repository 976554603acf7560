"""Training module and task mix of the embedded tiny model: determinism, format, data."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import headig
from headig.models.llada import map_weight_name
from headig.toy import tasks
from headig.toy.train_tiny import (
    TrainConfig,
    build_model,
    build_tokenizer,
    llada_config,
    main,
    official_state_dict,
    save_checkpoint,
    train,
)

FIXTURES = Path(__file__).parent / "fixtures"
TINY = dict(n_layers=1, n_heads=2, head_dim=8, mlp_hidden=32, steps=20, batch_size=16,
            warmup=5, n_train=240, n_eval_per_task=3)


def _trained(seed: int) -> torch.nn.Module:
    cfg = TrainConfig(seed=seed, **TINY)
    train_set, _ = tasks.make_splits(cfg.seed, cfg.n_train, cfg.n_eval_per_task)
    model = build_model(llada_config(cfg), cfg.seed)
    train(model, build_tokenizer(), train_set, cfg)
    return model


def test_short_training_is_deterministic_and_seeded():
    a, b, c = _trained(0), _trained(0), _trained(1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa), "same seed must give identical weights"
    assert not all(torch.equal(sa[k], sc[k]) for k in sa), "a different seed must differ"
    # training moved the weights away from the initialisation
    init = build_model(llada_config(TrainConfig(seed=0, **TINY)), 0).state_dict()
    assert max(float((sa[k] - init[k]).abs().max()) for k in sa) > 1e-3


def test_official_names_round_trip_through_the_loader():
    model = build_model(llada_config(TrainConfig(seed=0, **TINY)), 0)
    official = official_state_dict(model)
    native = model.state_dict()
    assert {map_weight_name(k) for k in official} == set(native)
    for key, tensor in official.items():
        assert torch.equal(tensor, native[map_weight_name(key)])
    expected_blocks = {f"model.transformer.blocks.0.{p}.weight" for p in (
        "attn_norm", "q_proj", "k_proj", "v_proj", "attn_out", "ff_norm", "ff_proj", "up_proj",
        "ff_out")}
    top = {f"model.transformer.{p}.weight" for p in ("wte", "ln_f", "ff_out")}
    assert set(official) == expected_blocks | top


def test_config_has_the_official_llada_keys():
    ours = llada_config(TrainConfig())
    reference = json.loads((FIXTURES / "tiny-llada" / "config.json").read_text())
    assert set(ours) == set(reference)
    assert ours["model_type"] == "llada" and ours["n_layers"] * ours["n_heads"] == 12
    assert ours["d_model"] == ours["n_heads"] * TrainConfig().head_dim == 96


def test_saved_checkpoint_reloads_to_identical_logits(tmp_path):
    model = _trained(0)
    tok = build_tokenizer()
    folder = save_checkpoint(model, tok, llada_config(TrainConfig(seed=0, **TINY)), tmp_path / "m")
    loaded, loaded_tok = headig.load_model(folder)
    ex = tasks.make_splits(0, 0, 2)[1]
    pairs = tasks.encode(loaded_tok, ex)
    ids, attn = tasks.pad_right([p + c for p, c in pairs], loaded_tok.pad_token_id)
    with torch.no_grad():
        ref = model(ids, attention_mask=attn).logits
        got = loaded(ids, attention_mask=attn).logits
    assert torch.equal(ref, got)
    assert loaded.family.name == "llada" and loaded.family.n_heads == 2
    assert loaded_tok.mask_token_id == loaded.family.mask_token_id
    stored = load_file(str(folder / "model.safetensors"))
    assert all(t.dtype == torch.float32 for t in stored.values())


def test_tokenizer_round_trips_task_text():
    tok = build_tokenizer()
    train_set, eval_set = tasks.make_splits(0, 60, 5)
    unk = tok.convert_tokens_to_ids(tasks.UNK)
    for ex in train_set + eval_set:
        ids = tok(ex.prompt + ex.completion, add_special_tokens=False)["input_ids"]
        assert unk not in ids
        assert tok.decode(ids) == ex.prompt + ex.completion
        p, c = tasks.encode(tok, [ex])[0]
        assert p + c == ids  # prompt and completion tokenize independently
    assert tok.convert_ids_to_tokens(tok.mask_token_id) == "<|mdm_mask|>"
    assert len(tok) == len(tasks.vocabulary()) < 128


def test_splits_are_deterministic_disjoint_and_correct():
    train_a, eval_a = tasks.make_splits(3, 600, 20)
    train_b, eval_b = tasks.make_splits(3, 600, 20)
    assert train_a == train_b and eval_a == eval_b
    assert tasks.make_splits(4, 600, 20)[1] != eval_a
    assert not {e.prompt for e in eval_a} & {e.prompt for e in train_a}
    assert all(tasks.is_held_out(e.prompt) for e in eval_a)
    assert Counter(e.task for e in eval_a) == {t: 20 for t in tasks.TASKS}
    assert Counter(e.task for e in train_a) == {t: 100 for t in tasks.TASKS}
    for ex in train_a + eval_a:
        assert tasks.reference_answer(ex.prompt) == ex.completion
    labels = Counter(e.completion for e in train_a if e.task == "balanced")
    assert min(labels.values()) >= 35  # both labels well represented


@pytest.mark.parametrize(("prompt", "completion"), [
    ("reverse: a b c d =", " d c b a"),
    ("sort: d a c a =", " a a c d"),
    ("add: 4 7 + 3 5 =", " 0 8 2"),
    ("add: 9 9 + 9 9 =", " 1 9 8"),
    ("count: a b a c a ? a =", " 3"),
    ("count: a b a c ? h =", " 0"),
    ("balanced: ( [ ] ) =", " yes"),
    ("balanced: ( [ ) ] =", " no"),
    ("balanced: ) ( =", " no"),
])
def test_reference_answers(prompt, completion):
    assert tasks.reference_answer(prompt) == completion


def test_masking_variants_mask_only_completions_and_at_least_one():
    pairs = [([5, 6, 7], [8]), ([5, 6], [8, 9, 10, 11])]
    variants = tasks.masking_variants(pairs, mask_probs=(0.01, 0.5, 1.0), samples_per_prob=3)
    assert len(variants) == 2 * 3 * 3
    for index, ids, flags in variants:
        n_prompt = len(pairs[index][0])
        assert ids == pairs[index][0] + pairs[index][1]
        assert not any(flags[:n_prompt]) and any(flags[n_prompt:])
    assert all(all(f[2:]) for i, _, f in variants[-3:])  # p = 1 masks everything


def test_bad_input_is_rejected_early():
    with pytest.raises(ValueError, match="loss_weighting"):
        TrainConfig(loss_weighting="sum")
    with pytest.raises(ValueError, match="positive"):
        TrainConfig(n_heads=0)
    with pytest.raises(ValueError, match="unknown or empty tasks"):
        tasks.make_splits(tasks=["multiply"])
    with pytest.raises(ValueError, match="not a task prompt"):
        tasks.reference_answer("hello world")


def test_cli_writes_a_loadable_checkpoint_with_card_and_data(tmp_path):
    out = tmp_path / "run"
    argv = ["--out", str(out), "--steps", "6", "--n-layers", "1", "--n-heads", "2",
            "--head-dim", "8", "--mlp-hidden", "16", "--batch-size", "8", "--warmup", "2",
            "--n-train", "48", "--n-eval-per-task", "2"]
    assert main(argv) == 0
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "train.jsonl", "eval.jsonl", "TRAINING.md"):
        assert (out / name).is_file(), name
    assert len(tasks.read_jsonl(out / "eval.jsonl")) == 2 * len(tasks.TASKS)
    card = (out / "TRAINING.md").read_text()
    assert "--steps 6" in card and "Single-head zero-ablation" in card
    model, tok = headig.load_model(out)
    assert (model.family.n_layers, model.family.n_heads, model.family.head_dim) == (1, 2, 8)
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["ablation"]) == 1 and len(metrics["ablation"][0]) == 2


@pytest.mark.parametrize("name", ["tiny-llada", "tiny-dream"])
def test_completion_loss_and_decoding_follow_the_family_logit_shift(name):
    model, tok = headig.load_model(FIXTURES / name)
    ex = [tasks.Example("copy: a b c =", " a b c", "copy")]
    (prompt, comp), = tasks.encode(tok, ex)
    mask_id, shift = model.family.mask_token_id, model.family.logit_shift
    ids = torch.tensor([prompt + [mask_id] * len(comp)])
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    rows = torch.arange(len(prompt), len(prompt) + len(comp)) - shift
    manual = torch.nn.functional.cross_entropy(logits[rows], torch.tensor(comp))
    got = tasks.completion_loss(model, tok, ex, mask_probs=(1.0,), samples_per_prob=1)
    assert got == pytest.approx(float(manual), rel=1e-5)
    # one-token answer: the family's sampler commits the argmax of the aligned row
    with torch.no_grad():
        logits = model(torch.tensor([prompt + [mask_id]])).logits[0].float()
    first = tasks.mask_predict(model, tok, [prompt], [1])[0]
    assert first == [int(logits[len(prompt) - shift].argmax())]
