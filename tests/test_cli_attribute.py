"""``headig attribute`` / ``show`` / ``plot`` / ``compare`` end to end on the tiny fixtures."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest
import torch

import headig.attribution.engine as est
import headig.models.loading as loading
from headig.cli.main import main
from headig.importance import HeadImportance, compare
from tests.conftest import FIXTURES

FAST = ["--mask_probs", "0.3,0.7", "--mask_samples_per_prob", "1", "--no_progress"]
IG = ["--path", "stp", "--path_samples", "2", "--ig_steps", "3"]


@pytest.fixture(scope="module")
def jsonl(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    rows = [{"prompt": f"Question: what is {i} plus {i + 2}?\nAnswer:",
             "completion": f" {2 * i + 2}. Done."} for i in range(6)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def attribute(model: str, data, out, *extra: str) -> int:
    return main(["attribute", "--model", str(FIXTURES / model), "--data", str(data),
                 "--max_samples", "4", "--out", str(out), *FAST, *extra])


def library_reference(model_name: str, data, **kw):
    """The same run through the library API, for exact equality with the CLI."""
    import headig
    from headig.data import encode_examples, load_examples
    from headig.objective import MaskedDiffusionObjective

    model, tok = headig.load_model(FIXTURES / model_name)
    examples = load_examples(str(data), limit=4, seed=0)
    enc, _ = encode_examples(tok, examples, max_length=2048)
    batch = [{"input_ids": e.input_ids, "prompt_length": e.prompt_length, "id": e.id}
             for e in enc]
    obj = MaskedDiffusionObjective(mask_probs=(0.3, 0.7), mask_samples_per_prob=1,
                                   seed=kw.pop("mask_seed", 0))
    return headig.integrated_gradients(model, batch, objective=obj, **kw)


# ----------------------------------------------------------------------------- attribute
@pytest.mark.parametrize("name,flags", [
    ("tiny-llada", IG),
    # the original research flag names on the GQA + shifted-logits family
    ("tiny-dream", ["--path_mode", "random_threshold", "--path_samples", "2", "--ig_steps", "3",
                    "--ig_postprocess", "signed", "--mask_seed", "5"]),
])
def test_attribute_writes_results_equal_to_library(name, flags, jsonl, tmp_path):
    out = tmp_path / "run"
    assert attribute(name, jsonl, out, *flags) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "attribution.json", "head_importance.json", "head_importance.safetensors"]
    imp = HeadImportance.load(out)
    log = json.loads((out / "attribution.json").read_text())
    assert log["status"] == "complete"
    assert log["encoding"]["n_kept"] == 4 and log["encoding"]["dropped"] == []
    assert set(log["timings"]) >= {"data_seconds", "model_load_seconds", "attribution_seconds"}
    assert len(log["completeness"]["per_example"]) == 4

    from headig.paths import STP
    ref = library_reference(name, jsonl, path=STP(samples=2), steps=3,
                            mask_seed=5 if name == "tiny-dream" else 0)
    assert torch.equal(imp.scores, ref.scores)
    assert imp.per_example.shape == (4, 2, 4)
    torch.testing.assert_close(imp.per_example.double(), ref.per_example, rtol=1e-6, atol=1e-9)
    per = log["completeness"]["per_example"]
    np.testing.assert_allclose([r["residual"] for r in per], ref.residual.numpy(), rtol=1e-9)
    assert log["completeness"]["mean_abs_residual"] == pytest.approx(
        float(ref.residual.abs().mean()), rel=1e-9)
    gap = (ref.j_full - ref.j_baseline).abs().sum()
    assert log["completeness"]["aggregate_relative_residual"] == pytest.approx(
        float(ref.residual.abs().sum() / gap), rel=1e-9)
    assert imp.meta["completeness"]["aggregate_relative_residual"] == pytest.approx(
        log["completeness"]["aggregate_relative_residual"])
    assert imp.meta["rule"] == "trapezoid" and imp.meta["samples"] == 2
    assert imp.meta["mask_seed"] == (5 if name == "tiny-dream" else 0)


def test_estimators_and_dp_through_cli(jsonl, tmp_path):
    assert attribute("tiny-llada", jsonl, tmp_path / "shap", "--estimator", "exact_shapley",
                     "--layer_start", "1", "--layer_end", "-1") == 0
    log = json.loads((tmp_path / "shap" / "attribution.json").read_text())
    assert log["completeness"]["expected_zero"]
    assert log["completeness"]["max_abs_residual"] < 1e-9  # Shapley values are efficient
    shap = HeadImportance.load(tmp_path / "shap")
    assert shap.layers == (1,) and shap.meta["coalitions"] == 16
    assert torch.all(shap.scores[0] == 0) and torch.any(shap.scores[1] != 0)
    assert attribute("tiny-llada", jsonl, tmp_path / "dp", "--path", "diagonal",
                     "--ig_steps", "4", "--baseline", "scalar", "--baseline_scalar", "0.3") == 0
    dp = HeadImportance.load(tmp_path / "dp")
    assert dp.meta["path"] == "DP" and dp.meta["rule"] == "gauss_legendre"
    assert dp.meta["baseline"] == pytest.approx(0.3)
    from headig.paths import DP
    ref = library_reference("tiny-llada", jsonl, path=DP(), steps=4, baseline=0.3)
    assert torch.equal(dp.scores, ref.scores)


def test_resume_after_crash_gives_identical_scores(jsonl, tmp_path, monkeypatch):
    full = tmp_path / "full"
    args = [*IG, "--examples_per_group", "1"]
    assert attribute("tiny-llada", jsonl, full, *args) == 0
    reference = HeadImportance.load(full)

    real = est.evaluate_points
    calls = {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:  # examples 1-2 done (2 calls each), killed inside example 3
            raise KeyboardInterrupt
        return real(*a, **k)

    out = tmp_path / "crash"
    monkeypatch.setattr(est, "evaluate_points", dying)
    with pytest.raises(KeyboardInterrupt):
        attribute("tiny-llada", jsonl, out, *args)
    assert (out / "checkpoint.safetensors").is_file()
    assert json.loads((out / "attribution.json").read_text())["status"] == "running"
    assert not (out / "head_importance.safetensors").exists()

    counted = {"n": 0}

    def counting(*a, **k):
        counted["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(est, "evaluate_points", counting)
    assert attribute("tiny-llada", jsonl, out, *args) == 0
    assert counted["n"] == 4  # only examples 3 and 4 were computed again
    resumed = HeadImportance.load(out)
    assert torch.equal(resumed.scores, reference.scores)
    assert torch.equal(resumed.per_example, reference.per_example)
    log = json.loads((out / "attribution.json").read_text())
    assert log["status"] == "complete" and log["resumed"] is True
    assert not (out / "checkpoint.safetensors").exists()  # removed on success


def test_rerun_is_idempotent_and_refuses_other_settings(jsonl, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert attribute("tiny-llada", jsonl, out, *IG, "--keep_checkpoint") == 0
    assert (out / "checkpoint.safetensors").is_file()
    before = (out / "head_importance.safetensors").read_bytes()

    def no_model(*a, **k):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(loading, "load_model", no_model)
    capsys.readouterr()
    assert attribute("tiny-llada", jsonl, out, *IG) == 0  # finished: nothing to do
    assert "nothing to do" in capsys.readouterr().err
    assert attribute("tiny-llada", jsonl, out, "--path", "stp", "--path_samples", "3",
                     "--ig_steps", "3") == 2
    assert "differs in path_samples" in capsys.readouterr().err
    assert (out / "head_importance.safetensors").read_bytes() == before
    monkeypatch.undo()
    assert attribute("tiny-llada", jsonl, out, "--path", "stp", "--path_samples", "3",
                     "--ig_steps", "3", "--overwrite") == 0
    assert HeadImportance.load(out).meta["samples"] == 3


@pytest.mark.parametrize("flags,message", [
    (["--path", "curved"], None),  # argparse: invalid choice
    (["--mask_probs", "0.3,1.5"], "mask_probs"),
    (["--mask_probs", "a,b"], "comma-separated"),
    (["--layer_start", "1", "--layer_end", "2"], "invalid layer range"),
    (["--layer_end", "-3"], "invalid layer range"),
    (["--baseline", "1.0"], "below 1"),
    (["--baseline", "half"], "--baseline='half'"),
    (["--ig_steps", "0"], "--ig_steps=0"),
    (["--internal_batch_size", "0"], "--internal_batch_size=0"),
    (["--ramp", "narrow", "--ramp_width", "1.5"], "--ramp_width"),
    (["--num_fewshot", "2"], "does not apply to recipe 'fields'"),
    (["--rule", "ramp_gauss", "--path", "dp"], "needs --path stp"),
    (["--estimator", "exact_shapley", "--max_heads", "4"], "needs 2^8"),
    (["--chat_template", "--model", str(FIXTURES / "tiny-llada"), "--max_length", "1"],
     "--max_length=1"),
])
def test_bad_flags_fail_before_model_load(flags, message, jsonl, tmp_path, monkeypatch, capsys):
    def no_model(*a, **k):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(loading, "load_model", no_model)
    monkeypatch.setattr(loading, "load_native_model", no_model)
    if message is None:
        with pytest.raises(SystemExit) as exc:
            attribute("tiny-llada", jsonl, tmp_path / "o", *flags)
        assert exc.value.code == 2
        assert "invalid choice" in capsys.readouterr().err
        return
    assert attribute("tiny-llada", jsonl, tmp_path / "o", *flags) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not (tmp_path / "o").exists()


def test_bad_files_fail_before_model_load(jsonl, tmp_path, monkeypatch, capsys):
    def no_model(*a, **k):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(loading, "load_model", no_model)
    assert attribute("tiny-llada", tmp_path / "missing.jsonl", tmp_path / "o") == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["attribute", "--model", str(tmp_path / "nomodel"), "--data", str(jsonl),
                 "--out", str(tmp_path / "o")]) == 2
    assert "nomodel" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    assert attribute("tiny-llada", jsonl, tmp_path / "afile") == 2
    assert "not a folder" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "answer": "b"}\n')
    assert attribute("tiny-llada", bad, tmp_path / "o") == 2
    assert "completion" in capsys.readouterr().err


# ----------------------------------------------------------------------------- torchrun
def _rank_main(rank, world, port, argv):
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    assert main(argv) == 0


def test_two_ranks_like_torchrun_equal_one(jsonl, tmp_path):
    import torch.multiprocessing as mp

    single = tmp_path / "single"
    assert attribute("tiny-dream", jsonl, single, *IG) == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ranks"
    argv = ["attribute", "--model", str(FIXTURES / "tiny-dream"), "--data", str(jsonl),
            "--max_samples", "4", "--out", str(out), "--device", "cpu", *FAST, *IG]
    mp.start_processes(_rank_main, args=(2, port, argv), nprocs=2, join=True,
                       start_method="spawn")
    got, ref = HeadImportance.load(out), HeadImportance.load(single)
    torch.testing.assert_close(got.scores, ref.scores, rtol=1e-5, atol=1e-7)
    assert json.loads((out / "attribution.json").read_text())["world_size"] == 2
    assert not list(out.glob("checkpoint*"))  # each rank removed its own checkpoint


# ----------------------------------------------------------------------------- show/plot/compare
@pytest.fixture(scope="module")
def two_runs(jsonl, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    assert attribute("tiny-llada", jsonl, root / "ig", *IG) == 0
    assert attribute("tiny-llada", jsonl, root / "loo", "--estimator", "leave_one_out") == 0
    return root / "ig", root / "loo"


def test_show(two_runs, capsys):
    ig, _ = two_runs
    imp = HeadImportance.load(ig)
    capsys.readouterr()
    assert main(["show", str(ig), "--top", "3"]) == 0
    text = capsys.readouterr().out
    assert "estimator: integrated_gradients" in text and "STP (2 samples" in text
    assert "rule: trapezoid, 3 steps" in text
    agg = imp.meta["completeness"]["aggregate_relative_residual"]
    assert f"completeness residual: {agg:.3g} of |J(1) - J(baseline)|" in text
    assert imp.layer_head_table() in text
    layer, head, score = imp.top_k(1)[0]
    assert f"1  L{layer:<3} H{head:<3} {score:+.4g}" in text
    assert "bottom 3 heads" in text
    assert main(["show", str(ig / "head_importance.safetensors"), "--by", "abs", "--top", "2"]) == 0
    text = capsys.readouterr().out
    layer, head, score = imp.top_k(1, by="abs")[0]
    assert "top 2 heads by |score|" in text and f"L{layer:<3} H{head:<3} {score:+.4g}" in text
    assert main(["show", str(ig), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["scores"] == imp.scores.tolist()


def test_show_original_file_needs_sign(tmp_path, capsys):
    f = tmp_path / "head_importance.pt"
    torch.save({"importance_scores": {0: torch.tensor([-2.0, 1.0]), 1: torch.tensor([0.5, 0.0])},
                "metadata": {"path_mode": "random_threshold", "ig_steps": 8}}, f)
    assert main(["show", str(f)]) == 2
    assert "original_sign" in capsys.readouterr().err
    assert main(["show", str(f), "--original_sign", "loss", "--top", "1"]) == 0
    text = capsys.readouterr().out
    assert "negated on load" in text and "path_mode=random_threshold" in text
    assert "L0   H0   +2" in text  # loss-sign -2 becomes +2 = helps


def test_plot_png(two_runs, tmp_path):
    import matplotlib.image as mpimg

    from headig.plotting import figure_size

    ig, _ = two_runs
    png = tmp_path / "heat.png"
    assert main(["plot", str(ig), "--out", str(png), "--dpi", "100", "--mark_top", "2"]) == 0
    img = mpimg.imread(png)
    w, h = figure_size(2, 4)
    assert img.shape[:2] == (round(h * 100), round(w * 100))
    rgb = img[..., :3].reshape(-1, 3)
    assert rgb.std() > 0.1  # not blank
    assert len(np.unique((rgb * 255).round(), axis=0)) > 50
    imp = HeadImportance.load(ig)
    if (imp.scores > 0).any() and (imp.scores < 0).any():  # both ends of RdBu are drawn
        blue = (rgb[:, 2] > rgb[:, 0] + 0.2).sum()
        red = (rgb[:, 0] > rgb[:, 2] + 0.2).sum()
        assert blue > 100 and red > 100
    assert main(["plot", str(ig), "--out", str(tmp_path / "abs.pdf"), "--by", "abs"]) == 0
    assert (tmp_path / "abs.pdf").read_bytes()[:4] == b"%PDF"
    assert main(["plot", str(ig), "--out", str(tmp_path / "x.txt")]) == 2


def test_plot_large_grid_readable(tmp_path):
    from headig.plotting import figure_size, save_heatmap

    g = torch.Generator().manual_seed(0)
    imp = HeadImportance(torch.randn(32, 32, generator=g), meta={"model": "m"})
    png = save_heatmap(imp, tmp_path / "big.png", dpi=50)
    import matplotlib.image as mpimg
    img = mpimg.imread(png)
    w, h = figure_size(32, 32)
    assert img.shape[:2] == (round(h * 50), round(w * 50))
    assert w >= 9 and h >= 8  # about a quarter inch per cell


def test_compare(two_runs, capsys):
    ig, loo = two_runs
    expected = compare(HeadImportance.load(ig), HeadImportance.load(loo), k=3)
    capsys.readouterr()
    assert main(["compare", str(ig), str(loo), "--k", "3"]) == 0
    text = capsys.readouterr().out
    assert f"spearman      {expected['spearman']:.4f}" in text
    assert f"kendall tau-b {expected['kendall']:.4f}" in text
    assert f"top-3 overlap  {expected['topk_overlap']:.4f}" in text
    assert main(["compare", str(ig), str(ig), "--json"]) == 0
    same = json.loads(capsys.readouterr().out)
    assert same["spearman"] == pytest.approx(1.0) and same["topk_overlap"] == 1.0
    assert main(["compare", str(ig), str(ig), "--k", "99"]) == 2
    assert "k=99" in capsys.readouterr().err


def test_defaults_to_the_embedded_model_and_its_training_data(tmp_path, monkeypatch):
    """Without --model/--data the embedded tiny model and its train.jsonl are used."""
    import shutil

    embedded = pytest.importorskip("headig.toy.embedded")

    folder = tmp_path / "tiny-dllm"
    shutil.copytree(FIXTURES / "tiny-llada", folder)
    rows = [{"prompt": f"copy: a b {c} =", "completion": f" a b {c}", "task": "copy"}
            for c in "cdefg"]
    (folder / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    monkeypatch.setattr(embedded, "embedded_model_path", lambda: folder)
    out = tmp_path / "o"
    assert main(["attribute", "--out", str(out), "--max_samples", "3", *FAST, *IG]) == 0
    log = json.loads((out / "attribution.json").read_text())
    assert log["embedded_model"] is True
    assert log["identity"]["data"] == str(folder / "train.jsonl")
    assert log["encoding"]["n_kept"] == 3

    def missing():
        raise FileNotFoundError("no assets")

    monkeypatch.setattr(embedded, "embedded_model_path", missing)
    assert main(["attribute", "--out", str(tmp_path / "o2")]) == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_fails_before_model_load(jsonl, tmp_path, monkeypatch, capsys):
    def no_model(*a, **k):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(loading, "load_model", no_model)
    assert attribute("tiny-llada", jsonl, tmp_path / "o", "--device", "cuda") == 2
    assert "CUDA is not available" in capsys.readouterr().err
