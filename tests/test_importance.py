"""HeadImportance: construction checks, safe files, original .pt loading, combine, compare."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from headig.importance import (
    DEFAULT_FILENAME,
    SCHEMA_VERSION,
    HeadImportance,
    combine,
    compare,
)
from headig.importance.stats import kendall_tau_b


def _example(seed: int = 0, layers: tuple[int, ...] = (1, 2), n_layers: int = 4,
             n_heads: int = 3, n: int = 5) -> HeadImportance:
    g = torch.Generator().manual_seed(seed)
    per = torch.zeros(n, n_layers, n_heads)
    per[:, list(layers)] = torch.randn(n, len(layers), n_heads, generator=g)
    return HeadImportance.from_per_example(per, layers=layers,
                                           meta={"seed": seed, "model": "tiny", "ks": (1, 2)})


# ---------------------------------------------------------------- construction
def test_construction_validates_and_normalises() -> None:
    imp = HeadImportance(torch.tensor([[1.0, -2.0], [0.5, 0.0]], dtype=torch.float64))
    assert imp.scores.dtype == torch.float32
    assert imp.layers == (0, 1) and imp.n_layers == 2 and imp.n_heads == 2
    assert imp.layer_mask.tolist() == [True, True]
    with pytest.raises(ValueError, match="NaN or inf"):
        HeadImportance(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="NaN or inf"):
        HeadImportance(torch.tensor([[1.0, float("inf")]]))
    with pytest.raises(ValueError, match="2-D"):
        HeadImportance(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="2-D"):
        HeadImportance(torch.zeros(3))
    with pytest.raises(ValueError, match="outside the attributed layers"):
        HeadImportance(torch.ones(3, 2), layers=(0, 1))
    with pytest.raises(ValueError, match=r"integers in \[0, 3\)"):
        HeadImportance(torch.zeros(3, 2), layers=(0, 3))
    with pytest.raises(ValueError, match="duplicates"):
        HeadImportance(torch.zeros(3, 2), layers=(1, 1))
    with pytest.raises(ValueError, match="JSON-serialisable"):
        HeadImportance(torch.zeros(1, 2), meta={"t": torch.zeros(1)})
    with pytest.raises(ValueError, match="per_example must be"):
        HeadImportance(torch.zeros(2, 2), per_example=torch.zeros(3, 2, 3))
    with pytest.raises(ValueError, match="non-negative"):
        HeadImportance(torch.zeros(2, 2), stderr=-torch.ones(2, 2))
    # layers are sorted; meta is its JSON round trip (tuples -> lists)
    imp = HeadImportance(torch.zeros(3, 2), layers=[2, 0], meta={"k": (1, 2)})
    assert imp.layers == (0, 2) and imp.meta == {"k": [1, 2]}


def test_from_per_example_mean_and_stderr() -> None:
    per = torch.tensor([[[1.0, 2.0]], [[3.0, 6.0]], [[5.0, 10.0]]])  # N=3, L=1, H=2
    imp = HeadImportance.from_per_example(per)
    assert imp.scores.tolist() == [[3.0, 6.0]]
    # std (ddof=1) of (1,3,5) = 2, of (2,6,10) = 4; stderr = std / sqrt(3)
    torch.testing.assert_close(imp.stderr, torch.tensor([[2.0, 4.0]]) / math.sqrt(3))
    assert imp.n_examples == 3


# ---------------------------------------------------------------- files
@pytest.mark.parametrize("as_folder", [True, False])
def test_round_trip_is_bit_exact(tmp_path: Path, as_folder: bool) -> None:
    imp = _example()
    target = tmp_path / "out" if as_folder else tmp_path / "scores.safetensors"
    written = imp.save(target)
    assert written == (target / DEFAULT_FILENAME if as_folder else target)
    back = HeadImportance.load(target)
    assert torch.equal(back.scores, imp.scores)
    assert torch.equal(back.per_example, imp.per_example)
    assert torch.equal(back.stderr, imp.stderr)
    assert back.layers == (1, 2)
    assert back.meta == imp.meta == {"seed": 0, "model": "tiny", "ks": [1, 2]}
    # sidecar: human-readable, same description, top heads listed
    side = json.loads(written.with_suffix(".json").read_text())
    assert side["schema_version"] == SCHEMA_VERSION and side["sign_convention"] == "positive_helps"
    assert side["layers"] == [1, 2] and side["shape"] == [4, 3] and side["n_examples"] == 5
    best = imp.top_k(1)[0]
    assert side["top_heads"][0] == {"layer": best[0], "head": best[1], "score": best[2]}
    # atomic writes leave no temporary files behind
    assert sorted(p.name for p in written.parent.iterdir()) == sorted(
        [written.name, written.with_suffix(".json").name])


def test_save_without_optional_tensors_and_overwrite(tmp_path: Path) -> None:
    imp = HeadImportance(torch.tensor([[0.25, -1.5]]), meta={})
    f = tmp_path / "a.safetensors"
    imp.save(f, sidecar=False)
    assert not f.with_suffix(".json").exists()
    imp2 = HeadImportance(torch.tensor([[2.0, 3.0]]))
    imp2.save(f, sidecar=False)  # replaces the old file
    back = HeadImportance.load(f)
    assert back.scores.tolist() == [[2.0, 3.0]] and back.per_example is None and back.stderr is None
    with pytest.raises(ValueError, match="folder or a path ending in .safetensors"):
        imp.save(tmp_path / "x.pt")
    existing = tmp_path / "run.v1"  # an existing folder is a folder, whatever its name
    existing.mkdir()
    assert imp.save(existing) == existing / DEFAULT_FILENAME
    assert HeadImportance.load(existing).scores.tolist() == [[0.25, -1.5]]


def _write_with_header(path: Path, header: dict | None, scores: torch.Tensor) -> None:
    meta = {"format": "pt"}
    if header is not None:
        meta["headig"] = json.dumps(header)
    save_file({"scores": scores}, str(path), metadata=meta)


def _good_header() -> dict:
    return {"format": "headig.head_importance", "schema_version": 1,
            "sign_convention": "positive_helps", "shape": [2, 3], "layers": [0, 1], "meta": {}}


@pytest.mark.parametrize("field", ["format", "schema_version", "sign_convention", "shape",
                                   "layers", "meta"])
def test_missing_field_is_named(tmp_path: Path, field: str) -> None:
    header = _good_header()
    del header[field]
    f = tmp_path / "h.safetensors"
    _write_with_header(f, header, torch.zeros(2, 3))
    with pytest.raises(ValueError, match=f"missing field '{field}'"):
        HeadImportance.load(f)


def test_schema_errors(tmp_path: Path) -> None:
    f = tmp_path / "h.safetensors"
    _write_with_header(f, _good_header(), torch.zeros(2, 3))
    assert HeadImportance.load(f).scores.shape == (2, 3)  # the hand-written header is valid

    cases = [
        ({"schema_version": 2}, torch.zeros(2, 3), "newer than this headig"),
        ({"schema_version": "1"}, torch.zeros(2, 3), "expected the integer 1"),
        ({"sign_convention": "loss"}, torch.zeros(2, 3), "expected 'positive_helps'"),
        ({"format": "other"}, torch.zeros(2, 3), "expected 'headig.head_importance'"),
        ({"shape": [2]}, torch.zeros(2, 3), r"expected \[n_layers, n_heads\]"),
        ({}, torch.zeros(3, 3), r"has shape \[3, 3\] but field 'shape' says \[2, 3\]"),
        ({"shape": [6]}, torch.zeros(6), r"expected \[n_layers, n_heads\]"),
        ({"layers": [0, 5]}, torch.zeros(2, 3), r"integers in \[0, 2\)"),
        ({}, torch.zeros(2, 3, dtype=torch.float64), "expected float32"),
        ({}, torch.tensor([[0.0, 1, 2], [0, 0, float("nan")]]), "NaN or inf"),
    ]
    for change, scores, msg in cases:
        header = {**_good_header(), **change}
        _write_with_header(f, header, scores)
        with pytest.raises(ValueError, match=msg):
            HeadImportance.load(f)
    _write_with_header(f, None, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="no 'headig' entry"):
        HeadImportance.load(f)
    f.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage, not json at all}")
    with pytest.raises(ValueError, match="cannot parse"):
        HeadImportance.load(f)


def test_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no importance file"):
        HeadImportance.load(tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError, match="folder without"):
        HeadImportance.load(tmp_path)
    side = tmp_path / "x.json"
    side.write_text("{}")
    with pytest.raises(ValueError, match="JSON file"):
        HeadImportance.load(side)
    other = tmp_path / "x.txt"
    other.write_text("hello")
    with pytest.raises(ValueError, match="neither a safetensors"):
        HeadImportance.load(other)
    _example().save(tmp_path / "s.safetensors")
    with pytest.raises(ValueError, match="records its own sign"):
        HeadImportance.load(tmp_path / "s.safetensors", original_sign="loss")


# ---------------------------------------------------------------- original .pt files
def _write_original(path: Path, rows: dict, meta: dict | None = None) -> None:
    torch.save({"importance_scores": rows, "metadata": meta or {"ig_steps": 8, "mask_probs": (0.15, 0.5)}},
               path)


def test_original_pt_both_signs(tmp_path: Path) -> None:
    f = tmp_path / "head_importance.pt"
    raw = {0: torch.tensor([0.5, -2.0, 1.0]), 1: torch.tensor([-0.25, 0.0, 3.0])}
    _write_original(f, raw)
    with pytest.raises(ValueError, match="original_sign='loss'.*original_sign='helps'"):
        HeadImportance.load(f)
    loss = HeadImportance.load(f, original_sign="loss")
    helps = HeadImportance.load(tmp_path, original_sign="helps")  # folder with head_importance.pt
    assert loss.scores.tolist() == [[-0.5, 2.0, -1.0], [0.25, 0.0, -3.0]]
    assert helps.scores.tolist() == [[0.5, -2.0, 1.0], [-0.25, 0.0, 3.0]]
    assert loss.layers == (0, 1)
    assert loss.meta["original_metadata"] == {"ig_steps": 8, "mask_probs": [0.15, 0.5]}
    assert loss.meta["negated"] is True and helps.meta["negated"] is False
    # converted files save and load as headig files
    back = HeadImportance.load(loss.save(tmp_path / "conv.safetensors"))
    assert torch.equal(back.scores, loss.scores)


def test_original_pt_sub_range_with_n_layers(tmp_path: Path) -> None:
    f = tmp_path / "part.pt"
    _write_original(f, {2: torch.tensor([1.0, 2.0]), 3: torch.tensor([-1.0, 4.0])})
    imp = HeadImportance.load(f, original_sign="loss", n_layers=6)
    assert imp.layers == (2, 3) and imp.scores.shape == (6, 2)
    assert imp.scores[2:4].tolist() == [[-1.0, -2.0], [1.0, -4.0]]
    assert imp.scores[[0, 1, 4, 5]].abs().sum() == 0
    assert HeadImportance.load(f, original_sign="loss").n_layers == 4  # default: max key + 1
    with pytest.raises(ValueError, match="n_layers=3"):
        HeadImportance.load(f, original_sign="loss", n_layers=3)


def test_original_pt_malformed(tmp_path: Path) -> None:
    f = tmp_path / "bad.pt"
    torch.save({"scores": torch.zeros(2)}, f)
    with pytest.raises(ValueError, match="missing field 'importance_scores'"):
        HeadImportance.load(f, original_sign="helps")
    torch.save({"importance_scores": {0: torch.zeros(2), 1: torch.zeros(3)}}, f)
    with pytest.raises(ValueError, match="different head counts"):
        HeadImportance.load(f, original_sign="helps")
    torch.save({"importance_scores": {0: torch.zeros(2, 2)}}, f)
    with pytest.raises(ValueError, match="1-D float tensor"):
        HeadImportance.load(f, original_sign="helps")


class _Payload:
    """Unpickling this would create a marker file: the loader must refuse before that."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _Plain:
    def __init__(self) -> None:
        self.x = 1


@pytest.mark.parametrize("kind", ["reduce", "plain"])
def test_original_pt_refuses_arbitrary_objects(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "executed"
    obj = _Payload(str(marker)) if kind == "reduce" else _Plain()
    f = tmp_path / "evil.pt"
    torch.save({"importance_scores": {0: torch.zeros(2)}, "metadata": {"x": obj}}, f)
    assert not marker.exists()
    with pytest.raises(ValueError, match="refused to load"):
        HeadImportance.load(f, original_sign="loss")
    assert not marker.exists()


# ---------------------------------------------------------------- summaries
def test_top_k_table_and_dict() -> None:
    scores = torch.tensor([[0.0, 0.0, 0.0], [1.0, -5.0, 2.0], [2.0, 0.5, -0.25]])
    imp = HeadImportance(scores, layers=(1, 2), meta={"m": 1})
    assert imp.top_k(3) == [(1, 2, 2.0), (2, 0, 2.0), (1, 0, 1.0)]  # tie keeps (layer, head) order
    assert imp.top_k(2, by="abs") == [(1, 1, -5.0), (1, 2, 2.0)]
    assert imp.top_k(2, largest=False) == [(1, 1, -5.0), (2, 2, -0.25)]
    with pytest.raises(ValueError, match=r"\[0, 6\]"):
        imp.top_k(7)
    table = imp.layer_head_table(precision=2)
    assert table.splitlines() == ["layer  h0    h1     h2",
                                  "    1  +1    -5     +2",
                                  "    2  +2  +0.5  -0.25"]
    assert imp.layer_head_table(show_all_layers=True).splitlines()[1].split() == ["0", "-", "-", "-"]
    d = json.loads(imp.to_json())
    assert d["shape"] == [3, 3] and d["layers"] == [1, 2] and d["scores"][1] == [1.0, -5.0, 2.0]
    assert d["sign_convention"] == "positive_helps" and d["meta"] == {"m": 1}
    assert "scores" not in imp.to_dict(include_scores=False)


# ---------------------------------------------------------------- combine
def test_combine_weighted_mean_and_stderr() -> None:
    a = HeadImportance(torch.tensor([[1.0, 2.0], [0.0, 0.0]]), layers=(0,), meta={"run": "a"},
                       stderr=torch.tensor([[0.3, 0.6], [0.0, 0.0]]))
    b = HeadImportance(torch.tensor([[5.0, -2.0], [0.0, 0.0]]), layers=(0,), meta={"run": "b"},
                       stderr=torch.tensor([[0.1, 0.2], [0.0, 0.0]]))
    c = combine([a, b], weights=[1, 3])
    assert c.scores[0].tolist() == [4.0, -1.0]  # (1*1 + 3*5)/4, (1*2 - 3*2)/4
    assert c.layers == (0,)
    expected_se = [math.sqrt(0.09 + 9 * 0.01) / 4, math.sqrt(0.36 + 9 * 0.04) / 4]
    torch.testing.assert_close(c.stderr[0], torch.tensor(expected_se))
    assert c.meta["combined"]["weights"] == [1.0, 3.0]
    assert [s["run"] for s in c.meta["combined"]["sources"]] == ["a", "b"]
    assert combine([a, b]).scores[0].tolist() == [3.0, 0.0]  # equal weights
    assert combine([a, HeadImportance(b.scores, layers=(0,))]).stderr is None
    with pytest.raises(ValueError, match="attributes layers"):
        combine([a, HeadImportance(torch.ones(2, 2))])
    with pytest.raises(ValueError, match="shape"):
        combine([a, HeadImportance(torch.ones(3, 2))])
    with pytest.raises(ValueError, match="non-negative"):
        combine([a, b], weights=[1, -1])
    with pytest.raises(ValueError, match="2 entries for 3"):
        combine([a, b, a], weights=[1, 1])


# ---------------------------------------------------------------- compare
def test_compare_hand_computed() -> None:
    a = HeadImportance(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    b = HeadImportance(torch.tensor([[1.0, 3.0], [2.0, 4.0]]))
    r = compare(a, b, k=2)
    # one swapped pair out of 6: tau = (5 - 1) / 6; rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert r["kendall"] == pytest.approx(2 / 3, abs=1e-12)
    assert r["spearman"] == pytest.approx(0.8, abs=1e-12)
    assert r["pearson"] == pytest.approx(0.8, abs=1e-12)
    # with ties: x = 1,1,2,3 and y = 1,2,2,3 -> nc=4, nd=0, one tie each: tau_b = 4/5
    a = HeadImportance(torch.tensor([[1.0, 1.0], [2.0, 3.0]]))
    b = HeadImportance(torch.tensor([[1.0, 2.0], [2.0, 3.0]]))
    r = compare(a, b, k=2)
    assert r["kendall"] == pytest.approx(0.8, abs=1e-12)
    assert r["spearman"] == pytest.approx(5 / 6, abs=1e-12)  # ranks (1.5,1.5,3,4) vs (1,2.5,2.5,4)
    # top-2 of a: (1,1), (1,0); of b: (1,1), then the tie (0,1)/(1,0) -> (0,1) by order
    assert r["topk_overlap"] == 0.5 and r["topk_jaccard"] == pytest.approx(1 / 3)
    assert r["n_heads"] == 4 and r["layers"] == [0, 1]


def test_compare_top2_first_case_exact() -> None:
    a = HeadImportance(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    b = HeadImportance(torch.tensor([[1.0, 3.0], [2.0, 4.0]]))
    # top-2 of a = {(1,1), (1,0)}; of b = {(1,1), (0,1)} -> overlap 1/2, jaccard 1/3
    r = compare(a, b, k=2)
    assert (r["topk_overlap"], r["topk_jaccard"]) == (0.5, pytest.approx(1 / 3))
    r = compare(a, HeadImportance(-b.scores), k=1, by="abs")
    assert r["topk_overlap"] == 1.0 and r["spearman"] == pytest.approx(-0.8)


def test_compare_common_layers_only_and_errors() -> None:
    g = torch.Generator().manual_seed(0)
    full = torch.randn(3, 4, generator=g)
    a = HeadImportance(full.clone())
    b_scores = torch.zeros(3, 4)
    b_scores[1] = torch.randn(4, generator=g)
    b = HeadImportance(b_scores, layers=(1,))
    r = compare(a, b, k=2)
    only = compare(HeadImportance(full * torch.tensor([[0.0], [1.0], [0.0]]), layers=(1,)), b, k=2)
    assert r["layers"] == [1] and r["n_heads"] == 4
    for key in ("spearman", "kendall", "pearson", "topk_overlap", "topk_jaccard"):
        assert r[key] == only[key]
    const = HeadImportance(torch.ones(2, 2))
    assert math.isnan(compare(const, HeadImportance(torch.randn(2, 2, generator=g)), k=1)["pearson"])
    with pytest.raises(ValueError, match="no common attributed layers"):
        compare(HeadImportance(torch.zeros(2, 2), layers=(0,)),
                HeadImportance(torch.zeros(2, 2), layers=(1,)))
    with pytest.raises(ValueError, match="different models"):
        compare(HeadImportance(torch.zeros(2, 2)), HeadImportance(torch.zeros(2, 3)))
    with pytest.raises(ValueError, match=r"\[1, 4\]"):
        compare(const, const, k=5)


def test_kendall_chunking_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 8, 70).astype(float)  # many ties
    y = x + rng.integers(-3, 4, 70)
    nc = nd = 0
    for i in range(70):
        for j in range(i + 1, 70):
            s = np.sign(x[i] - x[j]) * np.sign(y[i] - y[j])
            nc += s > 0
            nd += s < 0
    n0 = 70 * 69 / 2
    tx = sum(c * (c - 1) / 2 for c in np.unique(x, return_counts=True)[1])
    ty = sum(c * (c - 1) / 2 for c in np.unique(y, return_counts=True)[1])
    expected = (nc - nd) / math.sqrt((n0 - tx) * (n0 - ty))
    assert kendall_tau_b(x, y, chunk=7) == pytest.approx(expected, abs=1e-12)
    assert kendall_tau_b(x, y) == pytest.approx(expected, abs=1e-12)


def test_compare_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(3)
    a_scores = torch.round(torch.randn(8, 16, generator=g) * 4) / 4  # ties on purpose
    b_scores = torch.round((a_scores + torch.randn(8, 16, generator=g)) * 4) / 4
    r = compare(HeadImportance(a_scores), HeadImportance(b_scores), k=10)
    x, y = a_scores.flatten().double().numpy(), b_scores.flatten().double().numpy()
    assert r["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-10)
    assert r["kendall"] == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-10)
    assert r["pearson"] == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-10)


def test_no_temp_files_on_failed_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    imp = _example()
    f = tmp_path / "x.safetensors"
    imp.save(f, sidecar=False)
    before = f.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        _example(seed=1).save(f, sidecar=False)
    assert f.read_bytes() == before  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]


# ---------------------------------------------------------------- file consistency
def _tamper(src: Path, dst: Path, *, scores: torch.Tensor | None = None,
            header_change: dict | None = None, meta_change: dict | None = None) -> None:
    """Rewrite a saved file with some part changed, keeping everything else."""
    from safetensors import safe_open

    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    header = json.loads(meta["headig"])
    header.update(header_change or {})
    header["meta"].update(meta_change or {})
    meta["headig"] = json.dumps(header)
    if scores is not None:
        tensors["scores"] = scores
    save_file(tensors, str(dst), metadata=meta)


def test_scores_must_match_per_example_mean(tmp_path: Path) -> None:
    imp = _example(n=4)
    f = imp.save(tmp_path / "ok.safetensors", sidecar=False)
    assert torch.equal(HeadImportance.load(f).scores, imp.scores)
    # a change far below float32 noise of the mean still loads (tolerance 1e-5 relative)
    nudged = imp.scores.clone()
    nudged[1, 0] = torch.nextafter(nudged[1, 0], torch.tensor(10.0))
    _tamper(f, tmp_path / "nudged.safetensors", scores=nudged)
    HeadImportance.load(tmp_path / "nudged.safetensors")
    # an edited score is refused, naming the head, both numbers and the tolerance
    edited = imp.scores.clone()
    edited[2, 1] += 0.01
    _tamper(f, tmp_path / "edited.safetensors", scores=edited)
    with pytest.raises(ValueError, match=r"scores disagree with the mean of per_example \(signed\) "
                                         r"at 1 heads, first layer 2 head 1.*tolerance 1e-05"):
        HeadImportance.load(tmp_path / "edited.safetensors")


def test_postprocess_is_applied_before_the_mean(tmp_path: Path) -> None:
    per = torch.tensor([[[1.0, -3.0]], [[-2.0, 1.0]]])  # N=2, L=1, H=2
    signed = HeadImportance(per.mean(0), per_example=per, meta={"postprocess": "signed"})
    assert signed.scores.tolist() == [[-0.5, -1.0]]
    f = signed.save(tmp_path / "s.safetensors", sidecar=False)
    # abs: mean |a| = [1.5, 2.0]; relu: mean max(a, 0) = [0.5, 0.5]
    _tamper(f, tmp_path / "abs.safetensors", scores=torch.tensor([[1.5, 2.0]]),
            meta_change={"postprocess": "abs"})
    assert HeadImportance.load(tmp_path / "abs.safetensors").scores.tolist() == [[1.5, 2.0]]
    _tamper(f, tmp_path / "relu.safetensors", scores=torch.tensor([[1.5, 2.0]]),
            meta_change={"postprocess": "relu"})
    with pytest.raises(ValueError, match=r"\(relu\).*score 1.5, mean 0.5"):
        HeadImportance.load(tmp_path / "relu.safetensors")
    _tamper(f, tmp_path / "odd.safetensors", meta_change={"postprocess": "square"})
    with pytest.raises(ValueError, match="meta postprocess is 'square'"):
        HeadImportance.load(tmp_path / "odd.safetensors")


def test_n_examples_must_match_per_example(tmp_path: Path) -> None:
    imp = _example(n=5)
    f = imp.save(tmp_path / "ok.safetensors", sidecar=False)
    _tamper(f, tmp_path / "hdr.safetensors", header_change={"n_examples": 50})
    with pytest.raises(ValueError, match="invalid headig importance file: n_examples is 50 but "
                                         "per_example has 5 rows"):
        HeadImportance.load(tmp_path / "hdr.safetensors")
    _tamper(f, tmp_path / "meta.safetensors", meta_change={"n_examples": 4})
    with pytest.raises(ValueError, match="meta n_examples is 4 but per_example has 5 rows"):
        HeadImportance.load(tmp_path / "meta.safetensors")
    # without per_example the header must say null; meta may still record the data size
    bare = HeadImportance(imp.scores, layers=imp.layers, meta={"n_examples": 5})
    g = bare.save(tmp_path / "bare.safetensors", sidecar=False)
    assert HeadImportance.load(g).meta["n_examples"] == 5
    _tamper(g, tmp_path / "bare_hdr.safetensors", header_change={"n_examples": 5})
    with pytest.raises(ValueError, match=r"n_examples is 5 but per_example has no rows"):
        HeadImportance.load(tmp_path / "bare_hdr.safetensors")


def test_save_refuses_inconsistent_value(tmp_path: Path) -> None:
    imp = _example(n=3)
    bad = HeadImportance(imp.scores + imp.layer_mask[:, None].float(), layers=imp.layers,
                         per_example=imp.per_example)
    with pytest.raises(ValueError, match="scores disagree with the mean of per_example"):
        bad.save(tmp_path / "bad.safetensors")
    assert not (tmp_path / "bad.safetensors").exists()


# ---------------------------------------------------------------- as_importance
def test_as_importance_accepts_value_tensor_path_attribution(tmp_path: Path) -> None:
    from headig.importance import as_importance

    imp = _example()
    assert as_importance(imp) is imp
    t = as_importance(np.array([[1.0, 2.0], [3.0, 4.0]]))
    assert t.scores.tolist() == [[1.0, 2.0], [3.0, 4.0]] and t.layers == (0, 1)
    assert as_importance([[1, 0]]).scores.dtype == torch.float32
    f = imp.save(tmp_path / "run", sidecar=False)
    assert torch.equal(as_importance(f).scores, imp.scores)
    assert torch.equal(as_importance(str(tmp_path / "run")).scores, imp.scores)  # the folder

    class Attr:
        def to_importance(self) -> HeadImportance:
            return imp

    assert as_importance(Attr(), shape=(4, 3)) is imp
    with pytest.raises(ValueError, match=r"have shape \[4, 3\]; expected \[n_layers, n_heads\] "
                                         r"= \[4, 8\]"):
        as_importance(imp, shape=(4, 8))
    with pytest.raises(TypeError, match="cannot use a dict as head importance"):
        as_importance({"scores": 1})
    with pytest.raises(ValueError, match="must be 2-D"):
        as_importance(torch.ones(3))
    with pytest.raises(ValueError, match="original_sign"):
        torch.save({"importance_scores": {0: torch.ones(2)}}, tmp_path / "o.pt")
        as_importance(tmp_path / "o.pt")
    assert as_importance(tmp_path / "o.pt", original_sign="loss").scores.tolist() == [[-1.0, -1.0]]


@pytest.mark.parametrize("postprocess", ["signed", "abs", "relu"])
def test_estimator_files_pass_the_consistency_check(loaded, tmp_path: Path,
                                                    postprocess: str) -> None:
    """Real attributions (float64 per example, float32 on disk) load under MEAN_RTOL."""
    from headig.attribution import DP, integrated_gradients
    from headig.importance import MEAN_RTOL

    model, _ = loaded("tiny-llada")
    g = torch.Generator().manual_seed(0)
    batch = [dict(input_ids=torch.randint(0, 490, (12,), generator=g), prompt_length=6,
                  id=f"ex{i}") for i in range(3)]
    attr = integrated_gradients(model, batch, path=DP(), steps=3, mask_probs=(0.3, 0.7),
                                mask_samples_per_prob=1, postprocess=postprocess)
    attr.save(tmp_path / postprocess)
    back = HeadImportance.load(tmp_path / postprocess)
    assert back.n_examples == 3 and back.meta["postprocess"] == postprocess
    phi = {"signed": lambda a: a, "abs": torch.abs, "relu": lambda a: a.clamp_min(0)}[postprocess]
    mean = phi(back.per_example.double()).mean(0)
    err = (back.scores.double() - mean).abs().max().item()
    assert err <= 1e-6 * mean.abs().max().item() + 1e-12  # far inside MEAN_RTOL = 1e-5
    assert MEAN_RTOL == 1e-5
