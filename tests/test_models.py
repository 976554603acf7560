"""Native LLaDA / Dream against outputs of the official code (golden fixtures)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import headig
from headig.models import family_of
from tests.conftest import FAMILIES, FIXTURES


@pytest.mark.parametrize("name", FAMILIES)
def test_forward_logits_match_official(name, loaded, golden):
    model, _ = loaded(name)
    g = golden(name)
    with torch.no_grad():
        out = model(g["forward.input_ids"]).logits
    assert out.shape == g["forward.logits"].shape
    assert (out - g["forward.logits"]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name", FAMILIES)
def test_padded_logits_match_official(name, loaded, golden):
    model, _ = loaded(name)
    g = golden(name)
    mask = g["padded.attention_mask"]
    with torch.no_grad():
        out = model(g["padded.input_ids"], attention_mask=mask).logits[mask.bool()]
        ignored = model(g["padded.input_ids"]).logits[mask.bool()]
    assert (out - g["padded.logits"]).abs().max().item() <= 1e-4
    # ignoring the mask is a real mistake the fixture catches
    assert (ignored - g["padded.logits"]).abs().max().item() > 0.1


@pytest.mark.parametrize("name", FAMILIES)
def test_logits_at_selects_rows(name, loaded, golden):
    model, _ = loaded(name)
    ids = golden(name)["forward.input_ids"]
    sel = ids == model.family.mask_token_id
    with torch.no_grad():
        full = model(ids).logits
        part = model(ids, logits_at=sel).logits
    torch.testing.assert_close(part, full[sel], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name,tol_max,tol_mean", [("tiny-llada", 0.25, 0.03),
                                                   ("tiny-dream", 0.08, 0.012)])
def test_bfloat16_close_to_official(name, tol_max, tol_mean, golden):
    model, _ = headig.load_model(FIXTURES / name, dtype="bfloat16", tokenizer=False)
    assert model.dtype == torch.bfloat16
    g = golden(name)
    with torch.no_grad():
        out = model(g["forward.input_ids"]).logits.float()
    for ref in (g["bf16.logits"], g["forward.logits"]):
        diff = (out - ref).abs()
        assert diff.max().item() <= tol_max and diff.mean().item() <= tol_mean
    agree = (out.argmax(-1) == g["forward.logits"].argmax(-1)).float().mean().item()
    assert agree >= 0.9


def test_float16_loads_and_runs(golden):
    model, _ = headig.load_model(FIXTURES / "tiny-dream", dtype=torch.float16, tokenizer=False)
    g = golden("tiny-dream")
    with torch.no_grad():
        out = model(g["forward.input_ids"]).logits.float()
    assert torch.isfinite(out).all()
    assert (out - g["forward.logits"]).abs().max().item() < 0.05


@pytest.mark.parametrize("name,expected", [
    ("tiny-llada", dict(name="llada", n_layers=2, n_heads=4, n_kv_heads=4, head_dim=16,
                        mask_token_id=501, logit_shift=0)),
    ("tiny-dream", dict(name="dream", n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
                        mask_token_id=500, logit_shift=1)),
])
def test_family_table(name, expected, loaded):
    model, _ = loaded(name)
    fam = family_of(model)
    assert fam is model.family
    for key, value in expected.items():
        assert getattr(fam, key) == value, key
    assert fam.out_proj(model, 1) is model.layers[1].attn.o_proj


@pytest.mark.parametrize("name", FAMILIES)
def test_tokenizer_loads_without_remote_code(name, loaded):
    _, tok = loaded(name)
    assert tok.mask_token is not None
    assert tok.convert_tokens_to_ids(tok.mask_token) == json.loads(
        (FIXTURES / name / "config.json").read_text())["mask_token_id"]
    assert tok.chat_template
    assert tok("Beautiful is")["input_ids"] == [415, 366, 454, 267]


def test_sharded_checkpoint_loads(tmp_path, golden):
    src = FIXTURES / "tiny-dream"
    for f in src.iterdir():
        if f.name not in ("model.safetensors", "golden.safetensors"):
            shutil.copy(f, tmp_path / f.name)
    weights = load_file(str(src / "model.safetensors"))
    keys = sorted(weights)
    half = len(keys) // 2
    shards = {"model-00001-of-00002.safetensors": keys[:half],
              "model-00002-of-00002.safetensors": keys[half:]}
    weight_map = {}
    for shard, names in shards.items():
        save_file({k: weights[k] for k in names}, str(tmp_path / shard))
        weight_map.update({k: shard for k in names})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    model, _ = headig.load_model(tmp_path, tokenizer=False)
    g = golden("tiny-dream")
    with torch.no_grad():
        out = model(g["forward.input_ids"]).logits
    assert (out - g["forward.logits"]).abs().max().item() <= 1e-4


def test_unsupported_model_type(tmp_path):
    cfg = json.loads((FIXTURES / "tiny-llada" / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"unsupported model_type 'gpt2'.*Dream.*llada"):
        headig.load_model(tmp_path)


def test_missing_folder_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        headig.load_model(tmp_path)


def test_missing_weight_is_clear(tmp_path):
    src = FIXTURES / "tiny-llada"
    shutil.copy(src / "config.json", tmp_path / "config.json")
    weights = load_file(str(src / "model.safetensors"))
    weights.pop("model.transformer.ln_f.weight")
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(KeyError, match="norm.weight"):
        headig.load_model(tmp_path, tokenizer=False)


def test_fully_masked_rows_give_zero_not_nan(loaded, golden):
    """A Dream-style 4-D mask with empty pad rows must not spread NaN."""
    model, _ = loaded("tiny-dream")
    g = golden("tiny-dream")
    m = g["padded.attention_mask"].bool()
    mask4 = (m[:, None, :, None] & m[:, None, None, :])
    with torch.no_grad():
        out = model(g["padded.input_ids"], attention_mask=mask4).logits
    assert torch.isfinite(out).all()
    assert (out[m] - g["padded.logits"]).abs().max().item() <= 1e-4


def test_gradient_checkpointing_same_gradients(loaded, golden):
    model, _ = loaded("tiny-llada")
    ids = golden("tiny-llada")["forward.input_ids"]
    emb = model.embed.weight

    def grad(flag: bool) -> torch.Tensor:
        model.gradient_checkpointing = flag
        w = torch.ones(model.arch.d_model, requires_grad=True)
        h = model.hidden_states(ids) * w
        h.square().mean().backward()
        return w.grad

    try:
        torch.testing.assert_close(grad(False), grad(True))
    finally:
        model.gradient_checkpointing = False
    assert not emb.requires_grad


def _fixture_copy(tmp_path, name="tiny-llada"):
    dst = tmp_path / name
    shutil.copytree(FIXTURES / name, dst)
    return dst


@pytest.mark.parametrize("text, match", [
    ('{"model_type": "llada", "n_heads": 4,', r"config\.json is not valid JSON \(.*line 1"),
    ("[1, 2, 3]", r"config\.json holds a JSON list; expected an object"),
    ('"llada"', r"config\.json holds a JSON str; expected an object"),
])
def test_malformed_config_json_names_the_file(tmp_path, text, match):
    folder = _fixture_copy(tmp_path)
    (folder / "config.json").write_text(text)
    with pytest.raises(ValueError, match=match):
        headig.load_model(folder, tokenizer=False)


@pytest.mark.parametrize("name, key", [("tiny-llada", "n_heads"), ("tiny-llada", "d_model"),
                                       ("tiny-dream", "num_attention_heads"),
                                       ("tiny-dream", "model_type")])
def test_missing_config_key_names_the_file_and_key(tmp_path, name, key):
    folder = _fixture_copy(tmp_path, name)
    cfg = json.loads((folder / "config.json").read_text())
    del cfg[key]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=rf"{folder / 'config.json'}.*'{key}'"):
        headig.load_model(folder, tokenizer=False)


@pytest.mark.parametrize("value", ["four", 0, -2, 2.5, None, [4]])
def test_bad_config_value_names_the_key(tmp_path, value):
    folder = _fixture_copy(tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["n_heads"] = value
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"config\.json: key 'n_heads' = .*positive integer"):
        headig.load_model(folder, tokenizer=False)


def test_official_style_config_errors_are_value_errors():
    from types import SimpleNamespace

    model = SimpleNamespace(config=SimpleNamespace(model_type="llada", d_model=8))
    with pytest.raises(ValueError, match=r"config of SimpleNamespace lacks the key 'n_heads'"):
        family_of(model)
