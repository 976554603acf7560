"""headig.validation as a package: settings groups, the oracle on the model's own attention,
the shared report base, and the import rules of the package."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

import headig.validation as validation
from headig.objective import MaskedDiffusionObjective
from headig.validation import (
    AccuracySettings,
    EvalSettings,
    OracleSettings,
    PruneSelection,
    Report,
    coalition_table,
    eval_items,
    prune_sweep,
    sparse_sweep,
)
from headig.validation.coalitions import enumerate_generic
from headig.validation.report import csv_text, fmt, head_name, json_default, mean_std

FAST = MaskedDiffusionObjective(mask_probs=(0.3, 0.7), mask_samples_per_prob=1)
SCORES = torch.tensor([[0.5, -0.2, 0.1, 0.9], [-0.4, 0.3, 0.05, -0.7]])


def random_batch(n=3, lengths=(10, 10, 12), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [dict(input_ids=torch.randint(0, 490, (length,), generator=g),
                 prompt_length=length - 4, id=f"ex{i}") for i, length in enumerate(lengths[:n])]


def _results(sweep):
    return json.loads(json.dumps({k: v for k, v in sweep.to_dict().items() if k != "meta"},
                                 default=json_default))


# ----------------------------------------------------------------------------- settings


def test_settings_groups_and_flat_keywords_give_identical_sweeps(loaded):
    """The grouped settings and the flat keywords of earlier releases are the same call."""
    model, _ = loaded("tiny-llada")
    batch = random_batch()
    flat = prune_sweep(model, batch, SCORES, ks=[1, 3], random_seeds=2, seed=7, by="abs",
                       objective=FAST, oracle=True, oracle_examples=2, internal_batch_size=8)
    grouped = prune_sweep(model, batch, SCORES,
                          PruneSelection(ks=[1, 3], random_seeds=2, seed=7, by="abs"),
                          oracle=OracleSettings(enabled=True, examples=2),
                          evaluation=EvalSettings(objective=FAST, internal_batch_size=8))
    assert _results(flat) == _results(grouped)
    assert flat.meta["oracle_examples"] == grouped.meta["oracle_examples"] == 2
    assert [r["arm"] for r in flat.runs] == ["most", "least", "random", "random"] * 2
    # 8 heads: the oracle ran, with a fidelity per ranked arm
    assert set(flat.fidelity) == {"most", "least"} and len(flat.oracle) == 2


def test_settings_reject_a_keyword_given_twice_or_unknown(loaded):
    model, _ = loaded("tiny-llada")
    batch = random_batch(1)
    with pytest.raises(TypeError, match="ks= inside the PruneSelection"):
        prune_sweep(model, batch, SCORES, PruneSelection(ks=[1]), ks=[2])
    with pytest.raises(TypeError, match="oracle_examples= inside the OracleSettings"):
        prune_sweep(model, batch, SCORES, ks=[1], oracle=OracleSettings(), oracle_examples=3)
    with pytest.raises(TypeError, match="labels= inside the AccuracySettings"):
        prune_sweep(model, batch, SCORES, ks=[1], accuracy=AccuracySettings(), labels={})
    with pytest.raises(TypeError, match="unexpected keyword"):
        prune_sweep(model, batch, SCORES, ks=[1], oracle_rows=3)


def test_sparse_sweep_settings_groups_equal_flat_keywords(loaded):
    model, _ = loaded("tiny-llada")
    batch = random_batch()
    scores = SCORES.abs()
    flat = sparse_sweep(model, batch, scores, keeps=[0.5], objective=FAST,
                        internal_batch_size=4)
    grouped = sparse_sweep(model, batch, scores, keeps=[0.5],
                           evaluation=EvalSettings(objective=FAST, internal_batch_size=4))
    assert [(r["mode"], r["keep"], r["loss"]) for r in flat.rows] == \
        [(r["mode"], r["keep"], r["loss"]) for r in grouped.rows]
    dense, uniform, adaptive = (r["loss"] for r in flat.rows)
    # half the key blocks: both sparse modes change the loss of the random-weight model
    assert abs(uniform - dense) > 1e-2 and abs(adaptive - dense) > 1e-2
    with pytest.raises(TypeError, match="objective= inside the EvalSettings"):
        sparse_sweep(model, batch, scores, evaluation=EvalSettings(), objective=FAST)
    with pytest.raises(TypeError, match="unexpected keyword"):
        sparse_sweep(model, batch, scores, oracle_examples=2)


# ----------------------------------------------------------------------------- oracle


def test_oracle_follows_the_models_own_attention(loaded, monkeypatch):
    """The prefix-shared oracle calls Attention.head_outputs, so a change there reaches it:
    with layer 1's head outputs scaled by 1.5 (forward and oracle alike) the enumeration
    still equals plain forwards, and differs from the unpatched table."""
    model, _ = loaded("tiny-dream")
    items = eval_items(random_batch())
    before = coalition_table(model, items, objective=FAST).values
    attn = model.layers[1].attn
    original = attn.head_outputs
    calls = []

    def scaled(*args, **kwargs):
        calls.append(1)
        return 1.5 * original(*args, **kwargs)

    monkeypatch.setattr(attn, "head_outputs", scaled)
    after = coalition_table(model, items, objective=FAST)
    assert calls, "the oracle did not use Attention.head_outputs"
    plain = enumerate_generic(model, items, FAST, [0, 1])
    torch.testing.assert_close(after.values, plain, atol=2e-5, rtol=1e-6)
    assert (after.values - before).abs().max() > 1e-2
    # with every head of layer 1 removed its (scaled) outputs contribute nothing
    removed_l1 = sum(1 << i for i in range(4))  # layer 0 kept, layer 1 removed
    assert after.values[removed_l1].item() == pytest.approx(before[removed_l1].item(), abs=1e-5)


# ----------------------------------------------------------------------------- reports


class _Toy(Report):
    default_prefix = "toy"

    def __init__(self) -> None:
        self.rows = [{"a": 1, "b": 0.123456789, "c": None}, {"a": 2, "b": 2.0, "c": "x"}]

    def to_dict(self):
        return {"rows": self.rows, "shape": (2, 3), "t": torch.tensor([1.5])}

    def csv_rows(self):
        return self.rows

    def to_markdown(self):
        return "| a |\n"

    def extra_files(self, folder, prefix):
        path = folder / f"{prefix}_extra.txt"
        path.write_text("extra")
        return {"extra": path}


def test_report_base_writes_each_format_once(tmp_path: Path):
    files = _Toy().save(tmp_path / "out", plot=True)
    assert list(files) == ["csv", "json", "md", "extra"]  # no plot(): no png
    assert files["csv"].read_text() == "a,b,c\n1,0.123457,\n2,2,x\n"
    assert json.loads(files["json"].read_text()) == {
        "rows": [{"a": 1, "b": 0.123456789, "c": None}, {"a": 2, "b": 2.0, "c": "x"}],
        "shape": [2, 3], "t": [1.5]}
    assert files["md"].read_text() == "| a |\n"
    assert _Toy().save(tmp_path / "p", prefix="other")["csv"].name == "other.csv"


def test_formatting_helpers():
    assert fmt(None) == "–" and fmt(0.123456) == "0.1235" and fmt(2, 1) == "2.0"
    assert head_name(3, 11) == "L3.H11"
    assert csv_text([]) == ""
    mean, std, lo, hi = mean_std([1.0, 2.0, 4.0])
    assert (mean, lo, hi) == (7 / 3, 1.0, 4.0) and std == pytest.approx(1.5275252316519468)
    assert mean_std([5.0]) == (5.0, 0.0, 5.0, 5.0)
    with pytest.raises(TypeError):
        json_default(object())


# ----------------------------------------------------------------------------- imports


def test_package_imports_no_private_names_and_never_the_cli():
    folder = Path(validation.__file__).parent
    for path in sorted(folder.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and \
                    node.module.startswith("headig"):
                assert not node.module.startswith("headig.cli"), (path.name, node.module)
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, (path.name, node.module, private)
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("headig.cli") for a in node.names), path.name


def test_old_module_paths_still_work():
    import headig.faithfulness as old_faith
    import headig.validate as old
    import headig.validation_plots as old_plots

    assert old.prune_sweep is validation.prune_sweep
    assert old.coalition_table is validation.coalition_table
    assert old_faith.faithfulness is validation.faithfulness
    assert old_faith.ranking_fidelity is validation.ranking_fidelity
    assert old_plots.plot_prune is validation.plots.plot_prune
