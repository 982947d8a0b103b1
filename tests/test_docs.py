"""Every usage example in the docstrings runs as written, and the repository is self-contained."""
from __future__ import annotations

import ast
import doctest
import importlib
import re
import sys
from pathlib import Path

import pytest

from collected_markers import run_pytest

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


# docs/method.md's two maps as they must read: the paper's item (the row's first cell) -> the functions its
# last cell names, in order. Written here by hand from the paper and the code, not read from the notes, so
# a row that names another function fails (test_every_map_row_names_the_right_functions). Eqs. 1-5 are
# Sec. 3's formulation, 6-8 the GRPO background, 9-16 CoMAM's; A1.1-A1.6 our parts of Algorithm 1.
PAPER_MAP = {
    "Eq. 1 (Sec. 3)": ("comam.run_extraction", "comam.run_profile"),  # construction: M_f from H, M_c from M_f
    "Eq. 2 (Sec. 3)": ("comam.build_memory",),  # the memory M = {M_f, M_c}
    "Eq. 3 (Sec. 3)": ("comam.run_retrieval",),  # E'_q from q and M
    "Eq. 4 (Sec. 3)": ("comam.run_retrieval", "agents.parse_answer"),  # the answer p, same generation
    "Eq. 5 (Sec. 3)": ("eval.evaluate", "eval.metrics"),  # accuracy
    "Eq. 6": ("train.policy_loss",),  # GRPO objective (--loss-agg sequence)
    "Eq. 7": ("credit.group_advantages",),  # group-relative advantage
    "Eq. 8": ("train.policy_loss", "models.reference_logprobs"),  # k3 KL
    "Eq. 9": ("rewards.extraction_reward",),
    "Eq. 10": ("rewards.profile_reward",),
    "Eq. 11": ("rewards.retrieval_reward",),
    "Eq. 12": ("rewards.global_reward",),
    "Eq. 13": ("credit.ndcg", "credit.consistency"),
    "Eq. 14": ("credit.credit_weights",),
    "Eq. 15": ("credit.integrated_rewards",),
    "Eq. 16": ("train.policy_loss", "train.credit_step"),  # the clipped objective; its advantages
    "Sec. 4.2": ("comam.rollout",),
    "Algorithm 1": ("train.train_step",),
    "Table 1, Base and RAG": ("eval.base_memories", "eval.rag_memories"),
    "Table 2, agent ablations": ("train.trained_roles",),  # not implemented: where it would enter
    "Table 3, independent RL": ("train.trained_roles",),
    "Table 3, one shared policy": ("runs.load_run_policies",),
    "Table 4 / Fig. 5": ("credit.integrated_rewards",),
    "App. B.1": ("eval.evaluate", "comam.build_memory", "comam.answer"),
}
ALGORITHM_MAP = {
    "A1.1": ("train.batch_at",),
    "A1.2": ("comam.rollout",),
    "A1.3": ("comam.Trajectory.score",),
    "A1.4": ("train.credit_step",),
    "A1.5": ("train.update_policies", "train.grpo_update"),
    "A1.6": ("train.policy_loss",),
    "the loop": ("train.main", "train.train_step"),
}
# Eqs. 6-16: the row's first function cites its equation in its docstring (the code agrees with the map)
CITED_FROM = range(6, 17)


def _table(text: str, heading: str) -> dict[str, tuple[str, ...]]:
    """The table under `heading` in method.md: first cell -> the `module.function` names of the last cell."""
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("| ") or len(cells) < 3 or set(cells[0]) <= set("-") or cells[0] in ("paper", "part"):
            continue
        rows[cells[0]] = tuple(re.findall(rf"`((?:{CODE_MODULES})(?:\.[A-Za-z_][A-Za-z0-9_]*)+)`", cells[-1]))
    return rows


def map_errors(text: str) -> list[str]:
    """Every way method.md's text departs from PAPER_MAP and ALGORITHM_MAP: a row missing, added or naming
    other functions, a function that does not exist, or (Eqs. 6-16) one whose docstring does not cite it."""
    errors = []
    for heading, expected in (("## Paper → code", PAPER_MAP), ("## Algorithm 1, as this code runs it", ALGORITHM_MAP)):
        rows = _table(text, heading)
        errors += [f"{heading}: no row {key!r}" for key in expected if key not in rows]
        errors += [f"{heading}: row {key!r} is not in the test's table" for key in rows if key not in expected]
        for key, names in rows.items():
            if key in expected and names != expected[key]:
                errors.append(f"{heading}: row {key!r} names {names}, the paper's is {expected[key]}")
            for name in names:
                try:
                    if not callable(_resolve(name)):
                        errors.append(f"{key}: {name} is not callable")
                except (AttributeError, ImportError):
                    errors.append(f"{key}: {name} does not exist")
    for n in CITED_FROM:
        first = PAPER_MAP[f"Eq. {n}"][0]
        if not re.search(rf"Eqs?\. (?:[\d, -]+, )?{n}(?!\d)", _resolve(first).__doc__ or ""):
            errors.append(f"Eq. {n}: the docstring of {first} does not cite it")
    return errors


def test_every_map_row_names_the_right_functions():
    """docs/method.md's Paper -> code and Algorithm 1 tables: one row for each of Eqs. 1-16, the sections and
    tables mapped, and A1.1-A1.6, each naming exactly the functions of the test's own table."""
    assert len(PAPER_MAP) == 24 and all(f"Eq. {n}" in " ".join(PAPER_MAP) for n in range(1, 17))
    assert map_errors((ROOT / "docs" / "method.md").read_text()) == []


def _swap_code(text: str, a: str, b: str) -> str:
    """method.md with the code cells of rows `a` and `b` exchanged (the Eq. 2 / Eq. 4 mix-up of issue 32)."""
    lines = text.splitlines()
    at = {key: next(i for i, l in enumerate(lines) if l.startswith(f"| {key} |")) for key in (a, b)}
    head_a, _, code_a = lines[at[a]].rpartition(" | ")
    head_b, _, code_b = lines[at[b]].rpartition(" | ")
    lines[at[a]], lines[at[b]] = f"{head_a} | {code_b}", f"{head_b} | {code_a}"
    return "\n".join(lines)


@pytest.mark.parametrize("edit, expected", [
    (lambda t: t.replace("| `train.policy_loss` (advantages: `train.credit_step`) |",
                         "| `train.credit_step` → `train.grpo_update` |"), "row 'Eq. 16' names"),
    (lambda t: _swap_code(t, "Eq. 2 (Sec. 3)", "Eq. 4 (Sec. 3)"), "row 'Eq. 2 (Sec. 3)' names"),
    (lambda t: _swap_code(t, "A1.4", "A1.6"), "row 'A1.4' names"),
    (lambda t: re.sub(r"^\| Table 2, agent ablations \|.*\n", "", t, flags=re.M), "no row 'Table 2, agent ablations'"),
    (lambda t: t.replace("| `credit.group_advantages` |", "| `credit.group_advantage` |"), "does not exist"),
], ids=["eq16-grpo_update", "eq2-eq4-swapped", "a1.4-a1.6-swapped", "table2-dropped", "eq7-misspelt"])
def test_the_map_check_fails_on_an_edited_copy_of_the_map(edit, expected):
    """The check of test_every_map_row_names_the_right_functions, run on a copy of method.md with one row
    made wrong, reports that row (and a copy left as it is passes)."""
    text = (ROOT / "docs" / "method.md").read_text()
    edited = edit(text)
    assert edited != text
    errors = map_errors(edited)
    assert any(expected in e for e in errors), errors


def test_the_map_check_fails_when_a_function_stops_citing_its_equation(monkeypatch):
    """The other half of the check: the code must agree with the map (a docstring citing Eq. 16 for the
    advantage, as credit.py did before issue 32, fails)."""
    import credit
    monkeypatch.setattr(credit.group_advantages, "__doc__", "Eq. 16: A = (r - mean) / (std + eps).")
    assert map_errors((ROOT / "docs" / "method.md").read_text()) == ["Eq. 7: the docstring of "
                                                                     "credit.group_advantages does not cite it"]


def test_the_assignment_guide_counts_the_graded_tests_pytest_collects():
    """The instructor's guide's table says how many visible graded tests each assignment has, and how many
    graded cases the grader runs (the hidden folder's cases module). Neither is in a student copy."""
    if not (ROOT / "docs" / "assignments.md").exists():
        pytest.skip("the instructor's guide is not in a student copy")
    sys.path.insert(0, str(ROOT / "tests" / "hidden"))
    import cases
    guide = (ROOT / "docs" / "assignments.md").read_text()
    # the visible test files that name a graded marker (a file holding a graded test names it): collecting
    # only these is faster, and tests/hidden/ is left out
    marked = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "tests").glob("test_*.py"))
              if re.search(r"\bassignment[1-4]\b", p.read_text())]
    r, markers = run_pytest(ROOT, "--collect-only", *marked)  # every collected test's markers
    assert r.returncode == 0, r.stdout[-2000:]
    for n in range(1, 5):
        row = re.search(rf"^\| {n} \|.*\| (\d+)[^|]*\| (\d+)[^|]*\|[^|]*\|$", guide, re.M)
        assert row, f"no table row for assignment {n}"
        shown = sum(f"assignment{n}" in m for m in markers.values())
        graded = sum(c.assignment == n for c in cases.CASES.values())
        assert shown > 0 and (shown, graded) == (int(row.group(1)), int(row.group(2))), (n, shown, graded)
