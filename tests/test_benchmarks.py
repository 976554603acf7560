"""The benchmark scripts run end to end (toy sizes; their numbers are not checked here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_gpu_suite_smoke_writes_every_section(tmp_path: Path) -> None:
    """The prepared GPU run, at toy sizes on the CPU: every step runs and is reported."""
    out = tmp_path / "gpu.md"
    run = subprocess.run([sys.executable, str(BENCH / "gpu_suite.py"), "--smoke", "--device",
                          "cpu", "--out", str(out), "--timeout", "300"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = out.read_text()
    assert report.startswith("# GPU benchmarks (smoke run")
    assert report.count(" — ok, ") == 4, report
    assert "Sparse attention: auto vs gather" in report
    for table in ("Attention alone", "(a) one gradient evaluation", "(b) integrated_gradients",
                  "(c) time to score", "(d) time to a converged score"):
        assert table in report, table
    assert "headig default: STP P=4, steps='auto'" in report
    assert "gauss_legendre" not in report.split("(d) time to a converged score")[1]


def test_attribution_rejects_unknown_method_before_work() -> None:
    run = subprocess.run([sys.executable, str(BENCH / "attribution.py"), "--convergence-only",
                          "--conv-methods", "trapezoid,nope"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert "unknown ['nope']" in run.stderr and "dp_trapezoid" in run.stderr
    assert "(conv)" not in run.stderr  # nothing was computed


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_suite_refuses_cuda_without_a_gpu() -> None:
    run = subprocess.run([sys.executable, str(BENCH / "gpu_suite.py")], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode != 0 and "CUDA is not available" in run.stderr
