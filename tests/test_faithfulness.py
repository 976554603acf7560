"""Estimators against exact Shapley values: the STP ranking check, cost accounting, CLI."""

from __future__ import annotations

import json

import pytest
import torch

from headig.attribution import STP, MaskedDiffusionObjective, integrated_gradients
from headig.importance import compare
from headig.validation import (
    EstimatorRun,
    coalition_table,
    eval_items,
    faithfulness,
    ranking_fidelity,
)

# Budget of the STP check (stated here, used below): 4 training examples per task (24),
# masking variants p = 0.3, 0.6, 0.9 once each; STP with a narrow ramp (width 0.1) and 4
# Gauss-Legendre nodes inside each head's ramp, 16 path samples = 16 x 12 x 4 = 768
# gradient points per example, against exact Shapley values from all 4096 head subsets.
# (Measured on the committed model: Spearman 0.930 at seed 0, 0.930 and 0.958 at seeds 1
# and 2. The original ramp converges to a different attribution, 0.6-0.8 here at 16 paths
# x 8 steps; see docs/faithfulness.md.)
STP_PER_TASK = 4
STP_OBJECTIVE = dict(mask_probs=(0.3, 0.6, 0.9), mask_samples_per_prob=1)
STP_BUDGET = dict(path=STP(samples=16, ramp="narrow", width=0.1), rule="ramp_gauss", steps=4)
MIN_SPEARMAN = 0.9


def test_stp_ranks_heads_like_exact_shapley_on_the_embedded_model():
    from headig import tasks
    from headig.data import Example, encode_examples
    from headig.toy.embedded import embedded_examples, load_embedded

    model, tok = load_embedded()
    raw = tasks.subset(embedded_examples("train"), STP_PER_TASK)
    enc, _ = encode_examples(tok, [Example(e.prompt, e.completion, id=f"t{i}")
                                   for i, e in enumerate(raw)], add_bos=False)
    obj = MaskedDiffusionObjective(**STP_OBJECTIVE)
    table = coalition_table(model, enc, objective=obj)
    exact = table.to_importance()
    assert table.n == 12 and exact.scores.abs().max() > 0.1
    att = integrated_gradients(model, enc, objective=obj, **STP_BUDGET)
    c = compare(att.to_importance(), exact, k=3)
    assert c["spearman"] >= MIN_SPEARMAN, c
    assert c["topk_overlap"] >= 2 / 3, c
    # the ranking prunes almost as well as the exact values do
    fid_stp = ranking_fidelity(table, att.scores)
    fid_exact = ranking_fidelity(table, exact.scores)
    assert fid_stp["mean"] > fid_exact["mean"] - 0.1, (fid_stp, fid_exact)


def test_cost_is_counted_exactly_and_rows_are_complete(loaded):
    """LOO = n+1 forward points, gradient-at-ones = 1 point with a backward, permutation
    sampling = P (n+1) points; every estimator adds the 2 completeness endpoints."""
    model, _ = loaded("tiny-llada")
    g = torch.Generator().manual_seed(0)
    batch = [dict(input_ids=torch.randint(0, 490, (10,), generator=g), prompt_length=6,
                  id=f"ex{i}") for i in range(2)]
    obj = MaskedDiffusionObjective(mask_probs=(0.3, 0.7), mask_samples_per_prob=1)
    n_var = sum(int(obj.variants(it).weights.numel()) for it in eval_items(batch))
    grid = [EstimatorRun("leave-one-out", "leave_one_out", "-"),
            EstimatorRun("gradient at ones", "gradient_at_ones", "-"),
            EstimatorRun("Shapley sampling", "shapley_sampling", "permutations=2",
                          {"permutations": 2})]
    res = faithfulness(model, batch, grid=grid, objective=obj, seeds=[0, 1])
    n = 8
    rows = {r["method"]: r for r in res.rows}
    assert rows["leave-one-out"]["points"] == n + 1 + 2
    assert rows["gradient at ones"]["points"] == 1 + 2
    assert rows["Shapley sampling"]["points"] == 2 * (n + 1) + 2
    runs = {(r["method"], r["seed"]): r for r in res.runs}
    assert runs[("gradient at ones", 0)]["backward_rows"] == n_var
    assert runs[("gradient at ones", 0)]["forward_rows"] == 3 * n_var
    assert rows["gradient at ones"]["cost"] == pytest.approx((3 * n_var + 2 * n_var) / 2)
    assert runs[("leave-one-out", 0)]["backward_rows"] == 0
    # permutation sampling is exactly efficient: no completeness residual
    assert rows["Shapley sampling"]["relative_residual"] == pytest.approx(0.0, abs=1e-5)
    assert rows["Shapley sampling"]["n_seeds"] == 2 and "spearman_std" in rows["Shapley sampling"]
    md = res.to_markdown()
    assert "| exact Shapley (enumeration) | 256 subsets |" in md
    assert res.meta["exact_cost"] == 256 * n_var / 2


def test_cli_faithfulness_writes_the_table_and_plot(tmp_path, capsys):
    from headig.cli.main import main
    from headig.importance import HeadImportance
    from tests.conftest import FIXTURES

    data = tmp_path / "data.jsonl"
    rows = [{"prompt": "The cat sat on the", "completion": " mat and slept."},
            {"prompt": "Two plus two is", "completion": " four, said Ann."},
            {"prompt": "Rain falls", "completion": " on the green hills."}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "f"
    rc = main(["faithfulness", "--model", str(FIXTURES / "tiny-llada"), "--data", str(data),
               "--grid", "minimal", "--mask_probs", "0.5", "--mask_samples_per_prob", "1",
               "--out", str(out), "--no_progress"])
    assert rc == 0
    for name in ("faithfulness.csv", "faithfulness.json", "faithfulness.md",
                 "faithfulness.png", "exact_shapley.safetensors"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "faithfulness.json").read_text())
    methods = {r["method"] for r in saved["rows"]}
    assert {"IG, diagonal path (DP)", "HeadIG STP (original ramp, trapezoid)",
            "leave-one-out", "gradient at ones"} <= methods
    exact = HeadImportance.load(out / "exact_shapley.safetensors")
    assert exact.meta["estimator"] == "exact_shapley" and exact.scores.shape == (2, 4)
    assert "exact Shapley (enumeration)" in capsys.readouterr().out
    rc = main(["faithfulness", "--model", str(FIXTURES / "tiny-llada"), "--data", str(data),
               "--seeds", "a", "--out", str(tmp_path / "g")])
    assert rc == 2 and "--seeds" in capsys.readouterr().err
