"""headig.cli._common: the shared flags and loaders of the headig subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from headig.cli import _common as common
from headig.importance import HeadImportance


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(formatter_class=common.Formatter)
    common.add_model_arguments(p)
    common.add_data_arguments(p, limit=None)
    common.add_layer_arguments(p)
    common.add_importance_arguments(p)
    return p


def test_flags_have_dashed_aliases_and_registry_choices() -> None:
    assert common.flags("--k_frac", "--max_samples") == ["--k_frac", "--k-frac", "--max_samples",
                                                         "--max-samples"]
    args = _parser().parse_args(["--data-seed", "3", "--recipe", "gsm8k", "--num-fewshot", "2",
                                 "--layer-start", "1", "--original-sign", "loss"])
    assert (args.model, args.dtype, args.data_seed, args.recipe) == ("embedded", "auto", 3, "gsm8k")
    assert common.recipe_options(args) == {"num_fewshot": 2}
    assert args.original_sign == "loss"
    from headig.data import RECIPES

    recipe = next(a for a in _parser()._actions if a.dest == "recipe")
    assert tuple(recipe.choices) == tuple(RECIPES)
    with pytest.raises(SystemExit):
        _parser().parse_args(["--original_sign", "negative"])


def test_layers_from_args() -> None:
    ns = argparse.Namespace(layer_start=None, layer_end=None)
    assert common.layers_from_args(ns, 4) is None
    assert common.layers_from_args(argparse.Namespace(layer_start=1, layer_end=None), 4) == [1, 2, 3]
    assert common.layers_from_args(argparse.Namespace(layer_start=None, layer_end=-2), 4) == [0, 1, 2]
    with pytest.raises(ValueError, match="invalid layer range"):
        common.layers_from_args(argparse.Namespace(layer_start=3, layer_end=1), 4)


def test_parse_list_and_device() -> None:
    assert common.parse_list("1, 2,4", int, "k") == [1, 2, 4]
    with pytest.raises(ValueError, match="--k='1,x'; expected comma-separated values such as 1,2,4"):
        common.parse_list("1,x", int, "k")
    with pytest.raises(ValueError, match="--keep is empty"):
        common.parse_list(" , ", float, "keep")
    assert common.resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="expected cpu, cuda"):
        common.resolve_device("gpu0")


def test_load_importance(tmp_path: Path) -> None:
    imp = HeadImportance(torch.tensor([[0.5, -1.0]]))
    imp.save(tmp_path / "run")
    got = common.load_importance(str(tmp_path / "run"))
    assert got.scores.tolist() == [[0.5, -1.0]]
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        common.load_importance(str(tmp_path / "missing"))
    torch.save({"importance_scores": {1: torch.tensor([2.0, 0.0])}}, tmp_path / "o.pt")
    orig = common.load_importance(str(tmp_path / "o.pt"), "loss", 3)
    assert orig.layers == (1,) and orig.scores[1].tolist() == [-2.0, 0.0]


def test_help_shows_defaults_once() -> None:
    text = _parser().format_help()
    assert "--data_seed, --data-seed DATA_SEED" in text
    assert "(default: auto)" in text
