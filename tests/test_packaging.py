"""Packaging: a plain install (no extras) has everything headig imports, and README's first
commands are the ones CI runs."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
# Import name -> distribution, where they differ or come with a base dependency.
PROVIDED_BY = {"tokenizers": "transformers", "huggingface_hub": "transformers"}


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements}


def _third_party_imports(package: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for f in package.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            else:
                continue
            for m in mods:
                top = m.split(".")[0]
                if top not in sys.stdlib_module_names and top != "headig":
                    found.setdefault(top, set()).add(str(f.relative_to(ROOT)))
    return found


def test_base_dependencies_cover_every_import_of_headig():
    """`pip install headig` (no extras) must run everything under headig/, the demo's plots
    included: an import only an extra provides would break the README's first command."""
    base = _names(_project()["dependencies"])
    imports = _third_party_imports(ROOT / "src" / "headig")
    assert {"torch", "matplotlib", "safetensors", "transformers"} <= set(imports)
    missing = {m: sorted(files) for m, files in imports.items()
               if m.lower() not in base and PROVIDED_BY.get(m) not in base}
    assert not missing, f"imported by headig but not a base dependency: {missing}"


def test_plot_extra_is_a_compatible_alias():
    project = _project()
    assert "matplotlib" in _names(project["dependencies"])
    plot = _names(project["optional-dependencies"]["plot"])
    assert plot <= _names(project["dependencies"])  # installs nothing new


def test_ci_runs_the_readme_commands():
    """.ci/run reads README's set-up and test commands by these patterns; keep them matching."""
    readme = (ROOT / "README.md").read_text().splitlines()
    ci = (ROOT / ".ci" / "run").read_text()
    setup = [line for line in readme if line.startswith("python3 -m venv .venv && ")]
    tests = [line for line in readme
             if line.startswith('. .venv/bin/activate && pip install -e ".[dev')]
    assert len(setup) == 1 and len(tests) == 1, (setup, tests)
    assert setup[0].endswith("&& headig demo")
    # torch pinned and installed before headig, so pip does not pull a CUDA build
    assert setup[0].index("pip install torch==2.13.0") < setup[0].index("pip install -e .")
    assert tests[0].endswith("python -m pytest tests")
    assert "grep -m1 '^python3 -m venv .venv && ' README.md" in ci
    assert """grep -m1 '^\\. \\.venv/bin/activate && pip install -e ".\\[dev' README.md""" in ci
    assert 'TORCH="torch==2.13.0"' in ci and "set -euo pipefail" in ci
