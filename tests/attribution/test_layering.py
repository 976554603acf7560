"""headig.attribution imports only lower layers (its package docstring's rule)."""

from __future__ import annotations

import ast
from pathlib import Path

import headig.attribution

FORBIDDEN = ("headig.cli", "headig.validate", "headig.validation", "headig.faithfulness",
             "headig.demo", "headig_lmeval", "headig.plotting", "headig.validation_plots")


def test_attribution_never_imports_front_ends_or_validation():
    root = Path(headig.attribution.__file__).parent
    offenders = []
    for file in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(file.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{file.name}: {n}" for n in names
                          if any(n == f or n.startswith(f + ".") for f in FORBIDDEN)]
    assert not offenders, offenders
