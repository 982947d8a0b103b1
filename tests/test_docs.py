"""Every usage example in the docstrings runs as written, and the repository is self-contained."""
from __future__ import annotations

import ast
import doctest
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULES = ["agents", "cli", "comam", "credit", "eval", "rewards", "train", "warmstart", "data.example",
           "data.generate", "data.personamem"]
SOURCES = sorted(p for p in ROOT.rglob("*.py") if "tests" not in p.parts and ".venv" not in str(p)
                 and not any(part.startswith(".") for part in p.relative_to(ROOT).parts))


@pytest.mark.uses_solutions
@pytest.mark.parametrize("name", MODULES)
def test_doctests_run(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.failed == 0


def test_no_reference_outside_the_repository():
    """Code cites the paper's equations and docs/method.md, never notes that are not in the repository."""
    for path in SOURCES + [ROOT / "README.md"]:
        text = path.read_text()
        assert "PAPER.md" not in text and "../shared" not in text, path


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_no_import_circle_between_the_top_level_modules():
    """The graph of imports between the repository's top-level modules has no cycle."""
    local = {p.stem for p in ROOT.glob("*.py")} | {"data"}
    graph = {p.stem: _imports(p) & local - {p.stem} for p in ROOT.glob("*.py")}
    graph["data"] = set().union(*(_imports(p) & local - {"data"} for p in (ROOT / "data").glob("*.py")))
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in graph.get(node, ()):
            assert state.get(nxt) != 1, f"import circle: {' -> '.join(path + [nxt])}"
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2
    for node in graph:
        if node not in state:
            visit(node, [node])


def test_method_notes_point_at_functions_that_exist():
    """Every `module.function` named in docs/method.md's tables exists."""
    text = (ROOT / "docs" / "method.md").read_text()
    names = set(re.findall(r"`((?:agents|comam|rewards|credit|train|eval|warmstart|cli)\.(?!py\b)[A-Za-z_]+)", text))
    assert len(names) > 20
    for name in names:
        module, attr = name.split(".")
        assert hasattr(importlib.import_module(module), attr), name


def test_the_assignment_guide_counts_the_graded_tests_pytest_collects():
    """docs/assignments.md's table says how many graded tests each assignment has (+ hidden ones)."""
    guide = (ROOT / "docs" / "assignments.md").read_text()
    for n in range(1, 5):
        row = re.search(rf"^\| {n} \|.*\| (\d+)[^|]*\(\+(\d+)\) \|[^|]*\|$", guide, re.M)
        assert row, f"no table row for assignment {n}"
        out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", f"assignment{n}"],
                             cwd=ROOT, capture_output=True, text=True).stdout
        per_file = dict(re.findall(r"^(tests/\S+\.py): (\d+)$", out, re.M))  # pytest.ini's -q + -q: counts per file
        hidden = sum(int(k) for f, k in per_file.items() if f.startswith("tests/hidden/"))
        shown = sum(int(k) for k in per_file.values()) - hidden
        expected_hidden = int(row.group(2)) if (ROOT / "tests" / "hidden").exists() else 0  # not in the student copy
        assert shown > 0 and (shown, hidden) == (int(row.group(1)), expected_hidden), (n, per_file)
