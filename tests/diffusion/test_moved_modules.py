"""The former module paths keep working for one release (same objects, same script)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize(("old", "new"), [
    ("headig.generation", "headig.diffusion.generation"),
    ("headig.likelihood", "headig.diffusion.likelihood"),
    ("headig.schedule", "headig.diffusion.schedule"),
    ("headig.tasks", "headig.toy.tasks"),
    ("headig.train_tiny", "headig.toy.train_tiny"),
    ("headig.embedded", "headig.toy.embedded"),
])
def test_shims_re_export_the_same_objects(old, new):
    import importlib

    shim, module = importlib.import_module(old), importlib.import_module(new)
    assert module.__all__
    for name in module.__all__:
        assert getattr(shim, name) is getattr(module, name), name


def test_old_private_names_still_resolve():
    from headig import generation
    from headig.diffusion.generation import model_device

    assert generation._model_device is model_device


def test_old_script_path_still_runs():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "headig.train_tiny", "--help"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "--out" in out.stdout and "--loss-weighting" in out.stdout
