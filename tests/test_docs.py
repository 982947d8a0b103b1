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
MODULES = ["agents", "cli", "comam", "credit", "eval", "experiments", "lora", "models", "rewards", "runs", "train",
           "warmstart", "data.example", "data.generate", "data.personamem"]
CODE_MODULES = "agents|cli|comam|credit|eval|experiments|lora|models|rewards|sharing|runs|train|warmstart"
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


def _resolve(name: str):
    """module.attr or module.Class.attr -> the object (AttributeError when it does not exist)."""
    module, *attrs = name.split(".")
    obj = importlib.import_module(module)
    for attr in attrs:
        obj = getattr(obj, attr)
    return obj


def test_method_notes_point_at_functions_that_exist():
    """Every `module.function` named in docs/method.md exists."""
    text = (ROOT / "docs" / "method.md").read_text()
    names = set(re.findall(rf"`((?:{CODE_MODULES})(?:\.(?!py\b)[A-Za-z_][A-Za-z0-9_]*)+)", text))
    assert len(names) > 30
    for name in names:
        assert _resolve(name) is not None, name


def test_the_paper_map_has_a_row_for_every_equation_and_part_of_algorithm_1():
    """docs/method.md's Paper -> code table: one row for each of Eqs. 1-16 and for A1.1-A1.6, each
    naming a function that exists."""
    text = (ROOT / "docs" / "method.md").read_text()
    table = text.split("## Paper → code", 1)[1].split("\n## ", 1)[0]
    algo = text.split("## Algorithm 1, as this code runs it", 1)[1].split("\n## ", 1)[0]
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| (Eq\. \d+)[^|]*\|[^|]*\| (.*) \|$", table, re.M)}
    rows |= {m.group(1): m.group(2) for m in re.finditer(r"^\| (A1\.\d)[^|]*\|[^|]*\| (.*) \|$", algo, re.M)}
    wanted = [f"Eq. {n}" for n in range(1, 17)] + [f"A1.{n}" for n in range(1, 7)]
    assert [w for w in wanted if w not in rows] == []
    for key in wanted:
        named = re.findall(rf"`((?:{CODE_MODULES})(?:\.[A-Za-z_][A-Za-z0-9_]*)+)", rows[key])
        assert named, (key, rows[key])
        for name in named:
            assert callable(_resolve(name)), (key, name)


def test_the_assignment_guide_counts_the_graded_tests_pytest_collects():
    """The instructor's guide's table says how many visible graded tests each assignment has, and how many
    graded cases the grader runs (the hidden folder's cases module). Neither is in a student copy."""
    if not (ROOT / "docs" / "assignments.md").exists():
        pytest.skip("the instructor's guide is not in a student copy")
    sys.path.insert(0, str(ROOT / "tests" / "hidden"))
    import cases
    guide = (ROOT / "docs" / "assignments.md").read_text()
    for n in range(1, 5):
        row = re.search(rf"^\| {n} \|.*\| (\d+)[^|]*\| (\d+)[^|]*\|[^|]*\|$", guide, re.M)
        assert row, f"no table row for assignment {n}"
        out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", f"assignment{n}"],
                             cwd=ROOT, capture_output=True, text=True).stdout
        per_file = dict(re.findall(r"^(tests/\S+\.py): (\d+)$", out, re.M))  # pytest.ini's -q + -q: counts per file
        shown = sum(int(k) for f, k in per_file.items() if not f.startswith("tests/hidden/"))
        graded = sum(c.assignment == n for c in cases.CASES.values())
        assert shown > 0 and (shown, graded) == (int(row.group(1)), int(row.group(2))), (n, per_file, graded)
