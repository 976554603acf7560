"""``headig demo --quick`` end to end: the report folder a newcomer opens first."""

from __future__ import annotations

import json
import re

import pytest


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from headig.cli.main import main

    out = tmp_path_factory.mktemp("demo") / "headig-report"
    rc = main(["demo", "--quick", "--out", str(out), "--no_progress"])
    assert rc == 0
    return out


def test_report_files(report):
    from matplotlib.image import imread

    from headig.importance import HeadImportance

    for name in ("summary.md", "head_importance.safetensors", "head_importance.json",
                 "heatmap.png", "prune.png", "prune.csv", "prune.json", "prune.md",
                 "prune_oracle.csv", "policies.png", "policies.csv", "policies.json",
                 "policies.md"):
        assert (report / name).is_file(), name
    for name in ("heatmap.png", "prune.png", "policies.png"):
        img = imread(report / name)
        assert img.shape[0] > 200 and img.shape[1] > 300, (name, img.shape)
        assert img[..., :3].std() > 0.05, f"{name} looks blank"
    imp = HeadImportance.load(report / "head_importance.safetensors")
    assert imp.scores.shape == (3, 4) and imp.meta["estimator"] == "integrated_gradients"
    assert imp.meta["path"] == "STP" and imp.meta["n_examples"] == 24
    assert imp.scores.abs().sum() > 0


def test_summary_reports_the_measured_numbers(report):
    summary = (report / "summary.md").read_text()
    prune = json.loads((report / "prune.json").read_text())
    for section in ("## 1. Which heads matter", "## 2. Pruning", "## 3. Sparse attention",
                    "![heatmap](heatmap.png)", "![pruning](prune.png)",
                    "![sparse policies](policies.png)", "Completeness",
                    "Fidelity of the ranking", 'steps="auto"'):
        assert section in summary, section
    assert "trapezoid" not in summary
    rows = {(r["arm"], r["k"]): r for r in prune["table"] if r.get("ranking") != "iterative"}
    assert f"| none | {prune['intact']['loss']:.3f} |" in summary
    most = rows[("most", 2)]
    assert f"| 2 most important ({most['removed']}) | {most['loss']:.3f} |" in summary
    assert rows[("random", 2)]["n_runs"] == 3
    top = re.search(r"Most important: layer (\d) head (\d)", summary)
    imp_json = json.loads((report / "head_importance.json").read_text())
    best = imp_json["top_heads"][0]
    assert (int(top.group(1)), int(top.group(2))) == (best["layer"], best["head"])
    # the quick budget: 48 held-out examples, an oracle over 4096 subsets on 8 of them
    assert prune["meta"]["n_examples"] == 48 and prune["meta"]["oracle_examples"] == 8
    assert len(prune["ks"]) == 3 and len(prune["oracle"]) >= 3
    assert {"oneshot least", "iterative least"} <= set(prune["fidelity"])


def test_completeness_residual_of_the_default_is_small(report):
    """steps="auto" (tol 0.05): the residual in the summary is at most 10% of |J(1) - J(0)|."""
    summary = (report / "summary.md").read_text()
    rel = float(re.search(r"residual of \*\*([\d.]+)%\*\*", summary).group(1)) / 100
    assert 0 <= rel <= 0.10, rel


def test_policy_table_on_the_long_model(report):
    pol = json.loads((report / "policies.json").read_text())
    assert pol["meta"]["model"] == "tiny-dllm-long" and pol["meta"]["scores"] == "shipped"
    assert pol["meta"]["patch"]["block_size"] == 16 and pol["meta"]["n_held_out"] == 6
    keys = sorted((r["policy"], r["keep"], r["seed"]) for r in pol["rows"])
    assert keys == sorted((p, k, s) for p in ("uniform", "adaptive", "sensitivity")
                          for k in (0.2, 0.5) for s in (0, 1, 2))
    assert all(0 < r["loss"] < 20 for r in pol["rows"])
    summary = (report / "summary.md").read_text()
    for r in pol["summary"]:
        assert f"| {r['policy']} | {r['keep']:.2f} | {r['loss_mean']:.4f} ± " in summary
    assert summary.count("- keep 0.2: **") == summary.count("- keep 0.5: **") == 1


def test_demo_refuses_a_file_as_out(tmp_path, capsys):
    from headig.cli.main import main

    target = tmp_path / "a-file"
    target.write_text("x")
    assert main(["demo", "--quick", "--out", str(target)]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_recompute_long_scores_matches_the_shipped_format(tmp_path):
    """The documented command writes files like the shipped ones (small settings here)."""
    from headig.demo import LongScoreSettings, compute_long_scores, long_scores_path
    from headig.importance import HeadImportance

    small = LongScoreSettings(seeds=(0,), keeps=(0.3,), train=1, importance_steps=1,
                              sensitivity_steps=1)
    files = compute_long_scores(tmp_path, small, progress=False)
    assert set(files) == {"importance-seed0.safetensors",
                          "sensitivity-keep0.3-seed0.safetensors", "manifest"}
    shipped = long_scores_path()
    for name in ("importance-seed0.safetensors", "sensitivity-keep0.3-seed0.safetensors"):
        new, old = HeadImportance.load(tmp_path / name), HeadImportance.load(shipped / name)
        assert new.scores.shape == old.scores.shape == (4, 8)
        assert new.meta["demo"].keys() == old.meta["demo"].keys()
        assert new.scores.isfinite().all() and new.scores.abs().sum() > 0
    manifest = json.loads((shipped / "manifest.json").read_text())
    assert manifest["command"] == "headig demo --recompute-long-scores FOLDER"
    assert len(manifest["files"]) == 3 + 3 * 4
    assert json.loads((tmp_path / "manifest.json").read_text()).keys() == manifest.keys()
