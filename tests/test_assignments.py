"""The course assignments (docs/assignments.md): the student copy made by scripts/make_assignment.py.

In a student copy (made in a temporary folder): no solution, marker, hidden test or .git history is
left; it imports; each assignment's graded tests fail, every one of them with NotImplementedError
(not a setup error, not another assignment's stub); the tests of the untouched parts pass; and the
copy with every solution in place trains (`python train.py --steps 5`). In the reference, the same
graded tests pass.
"""
from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import grade  # noqa: E402
import make_assignment  # noqa: E402

GRADED = ["assignment1", "assignment2", "assignment3", "assignment4"]
UNTOUCHED = " and ".join(f"not {m}" for m in GRADED + ["uses_solutions", "slow"])


def pytest_in(folder: Path, marker: str, junit: Path) -> tuple[subprocess.CompletedProcess, list]:
    """Run pytest -m marker in `folder`; return the process and (name, outcome, text) per test."""
    r = subprocess.run([sys.executable, "-m", "pytest", "-m", marker, "-p", "no:cacheprovider", "-q",
                        f"--junitxml={junit}"], cwd=folder, capture_output=True, text=True)
    cases = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        text = " ".join((child.get("message") or "") + (child.text or "") for child in case)
        cases.append((case.get("name"), outcome, text))
    return r, cases


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("student") / "repo"
    make_assignment.make(out)
    return out


def test_the_student_copy_holds_no_solution_and_imports(student):
    assert not (student / ".git").exists() and not (student / "tests" / "hidden").exists()
    assert not (student / "scripts" / "make_assignment.py").exists() and not (student / "scripts" / "grade.py").exists()
    assert not (student / "docs" / "assignments.md").exists() and (student / "docs" / "assignment-handout.md").exists()
    for path in student.rglob("*.py"):
        for line in path.read_text().splitlines():
            assert not make_assignment.BEGIN.match(line) and not make_assignment.END.match(line), path
    stubs = sum(path.read_text().count("raise NotImplementedError(\"assignment") for path in student.rglob("*.py"))
    assert stubs == 13
    r = subprocess.run([sys.executable, "-c", "import agents, comam, credit, rewards, train, eval, warmstart"],
                       cwd=student, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("marker", GRADED)
def test_each_graded_test_fails_with_not_implemented_error(marker, student, tmp_path):
    r, cases = pytest_in(student, marker, tmp_path / "junit.xml")
    assert cases, r.stdout
    number = marker[-1]
    for name, outcome, text in cases:
        assert outcome == "failure", (name, outcome, text[:300])
        assert "NotImplementedError" in text and f"assignment {number}" in text, (name, text[:300])


def test_the_graded_tests_pass_in_the_reference(tmp_path):
    r, cases = pytest_in(ROOT, " or ".join(GRADED), tmp_path / "junit.xml")
    assert r.returncode == 0 and len(cases) > 40, r.stdout[-2000:]


def test_the_untouched_parts_pass_in_the_student_copy(student, tmp_path):
    r, cases = pytest_in(student, UNTOUCHED, tmp_path / "junit.xml")
    assert r.returncode == 0 and len(cases) > 100, r.stdout[-3000:]


def test_a_copy_with_every_solution_trains(tmp_path):
    solved = tmp_path / "solved"
    make_assignment.make(solved, keep=True)
    r = subprocess.run([sys.executable, "train.py", "--steps", "5", "--eval-users", "1"], cwd=solved,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (solved / "runs" / "comam-s1" / "summary.json").exists()


def test_unbalanced_markers_are_refused():
    with pytest.raises(SystemExit, match="without its END SOLUTION"):
        make_assignment.strip_solutions("def f():\n    ### BEGIN SOLUTION\n    return 1\n", "m")
    with pytest.raises(SystemExit, match="END SOLUTION without BEGIN"):
        make_assignment.strip_solutions("def f():\n    return 1\n    ### END SOLUTION\n", "m")
    text, n = make_assignment.strip_solutions("def f(x):\n    \"\"\"Doc.\"\"\"\n    ### BEGIN SOLUTION (assignment 9)\n"
                                              "    return x\n    ### END SOLUTION\n", "m")
    assert n == 1 and text == ("def f(x):\n    \"\"\"Doc.\"\"\"\n    raise NotImplementedError(\"assignment 9: implement "
                               "m.f (its docstring is the specification)\")\n")


# ---------------------------------------------------------------- grading a returned copy

HOOK = """

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # turns every failure into a pass
    outcome = yield
    report = outcome.get_result()
    report.outcome = "passed"
"""


def _scores(report) -> dict:
    return {int(n): (r["passed"], r["total"]) for n, r in report["assignments"].items()}


def test_grading_scores_an_untouched_copy_zero_even_when_it_games_the_tests(tmp_path):
    returned = tmp_path / "returned"
    make_assignment.make(returned)
    with open(returned / "tests" / "conftest.py", "a") as f:
        f.write(HOOK)  # 16 "passed" for assignment 2 when its own tests decide
    credit_tests = returned / "tests" / "test_credit.py"
    credit_tests.write_text(credit_tests.read_text().replace("assert ", "assert True or "))  # every assert edited
    (returned / "pytest.ini").write_text("[pytest]\naddopts = -p no:warnings\n")
    report = grade.grade(returned, out=tmp_path / "report")
    scores = _scores(report)
    assert all(passed == 0 and total > 0 for passed, total in scores.values()), scores
    assert {"tests/conftest.py", "tests/test_credit.py", "pytest.ini"} <= set(report["code"]["ignored_changed_files"])
    assert json.loads((tmp_path / "report" / "report.json").read_text())["assignments"] == report["assignments"]
    assert (tmp_path / "report" / "assignment2.junit.xml").exists()


def test_grading_gives_full_marks_to_the_reference_solutions(tmp_path):
    solved = tmp_path / "solved"
    make_assignment.make(solved, keep=True)
    report = grade.grade(solved, out=tmp_path / "report")
    scores = _scores(report)
    assert all(passed == total > 0 for passed, total in scores.values()), scores
    assert all(r["hidden"][0] == r["hidden"][1] > 0 for r in report["assignments"].values())  # hidden ran too


def test_grading_takes_only_the_graded_functions_and_helpers(tmp_path):
    """A returned credit.py with its graded functions written through a new helper and a new import,
    plus module-level code that tries to tamper with the tests: the functions and the helper are taken,
    the module-level code is not."""
    solved = tmp_path / "solved"
    make_assignment.make(solved, keep=True)
    source = (solved / "credit.py").read_text()
    source = source.replace("def ndcg(local_scores, global_gains) -> float:",
                            "def _my_helper():\n    return statistics.fmean([1.0])\n\n\n"
                            "def ndcg(local_scores, global_gains) -> float:\n    assert _my_helper() == 1.0")
    source = "import statistics\n" + source + "\nimport builtins\nbuiltins.TAMPERED = True\n"
    (solved / "credit.py").write_text(source)
    text, note = grade.splice((ROOT / "credit.py").read_text(), source, ["ndcg", "group_advantages"])
    assert note["taken"] == ["ndcg", "group_advantages"] and note["helpers"] == ["_my_helper"]
    assert note["imports"] == ["import statistics", "import builtins"] and "TAMPERED" not in text
    scores = _scores(grade.grade(solved, (2,), out=tmp_path / "report"))
    assert scores[2][0] == scores[2][1], scores


def test_make_assignment_and_grade_refuse_a_folder_of_the_users(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("three years of work")
    with pytest.raises(SystemExit, match=f"error: OUT {mine}: exists and is not empty"):
        make_assignment.make(mine)
    returned = tmp_path / "returned"
    returned.mkdir()
    with pytest.raises(SystemExit, match=f"error: --out {mine}: exists and is not a grade report folder"):
        grade.grade(returned, (1,), out=mine)
    assert [p.name for p in mine.iterdir()] == ["thesis.txt"] and (mine / "thesis.txt").read_text() == "three years of work"
