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
                 "prune_oracle.csv", "sparse.png", "sparse.csv", "sparse.json", "sparse.md"):
        assert (report / name).is_file(), name
    for name in ("heatmap.png", "prune.png", "sparse.png"):
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
                    "![heatmap](heatmap.png)", "![pruning](prune.png)", "![sparse](sparse.png)",
                    "Completeness", "Fidelity of the ranking"):
        assert section in summary, section
    rows = {(r["arm"], r["k"]): r for r in prune["table"]}
    assert f"| none | {prune['intact']['loss']:.3f} |" in summary
    most = rows[("most", 2)]
    assert f"| 2 most important ({most['removed']}) | {most['loss']:.3f} |" in summary
    top = re.search(r"Most important: layer (\d) head (\d)", summary)
    imp_json = json.loads((report / "head_importance.json").read_text())
    best = imp_json["top_heads"][0]
    assert (int(top.group(1)), int(top.group(2))) == (best["layer"], best["head"])
    # the quick budget: 48 held-out examples, an oracle over 4096 subsets on 8 of them
    assert prune["meta"]["n_examples"] == 48 and prune["meta"]["oracle_examples"] == 8
    assert len(prune["oracle"]) == len(prune["ks"]) == 3
    sparse = json.loads((report / "sparse.json").read_text())
    assert [(r["mode"], r["keep"]) for r in sparse["rows"]] == [
        ("standard", 1.0), ("uniform", 0.3), ("adaptive", 0.3)]


def test_demo_refuses_a_file_as_out(tmp_path, capsys):
    from headig.cli.main import main

    target = tmp_path / "a-file"
    target.write_text("x")
    assert main(["demo", "--quick", "--out", str(target)]) == 2
    assert "not a folder" in capsys.readouterr().err
