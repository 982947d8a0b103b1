"""The course assignments (docs/assignments.md): the student copy made by scripts/make_assignment.py.

In a student copy (made in a temporary folder): no solution, marker, hidden test or .git history is
left; it imports; each assignment's graded tests fail, every one of them with NotImplementedError
(not a setup error, not another assignment's stub); the tests of the untouched parts pass; and the
copy with every solution in place trains (`python train.py --steps 2`). In the reference, the same
graded tests pass. Two of these run most of the suite again and are marked slow (`python -m pytest -m
slow`): the untouched parts in the student copy, and the graded tests by marker in the reference (the fast
suite runs them anyway).
"""
from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import grade  # noqa: E402
import make_assignment  # noqa: E402
from collected_markers import run_pytest  # noqa: E402

GRADED = ["assignment1", "assignment2", "assignment3", "assignment4"]
UNTOUCHED = " and ".join(f"not {m}" for m in GRADED + ["uses_solutions", "slow"])


def pytest_in(folder: Path, marker: str, junit: Path,
              *args: str) -> tuple[subprocess.CompletedProcess, list, dict]:
    """Run pytest -m marker in `folder`; return the process, (node id, outcome, text) per test run, and
    {node id: [marker names]} of every test collected (tests/collected_markers.py)."""
    r, markers = run_pytest(folder, "-m", marker, "-p", "no:cacheprovider", "-q", f"--junitxml={junit}", *args)
    cases = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        text = " ".join((child.get("message") or "") + (child.text or "") for child in case)
        # junit names tests/test_credit.py::test_x as classname tests.test_credit, name test_x
        cases.append((case.get("classname").replace(".", "/") + ".py::" + case.get("name"), outcome, text))
    return r, cases, markers


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


def test_the_student_copy_names_no_file_it_lacks_and_no_path_of_the_machine(student):
    """No absolute path of the machine that trained a shipped checkpoint (warmstart.json records its
    flags), and no file named in the copy's README, docs, settings, code or tests that the copy lacks
    (the instructor's guide, the grading tools, the hidden references). The reference keeps both."""
    records = sorted(student.glob("checkpoints/*/warmstart.json"))
    assert records and all(json.loads(r.read_text()) for r in records)
    for record in records:
        assert '"/' not in record.read_text(), record
    named = re.compile(r"\b((?:docs|scripts|tests|data|checkpoints)/[\w./-]*\w\.(?:py|md|ini|json|sh|txt))")
    texts = [student / "README.md", student / "pytest.ini", *student.glob("docs/*.md"), *student.glob("*.py"),
             *student.glob("scripts/*"), *student.glob("tests/*.py"), *student.glob("data/*.py")]
    missing = {f"{path.relative_to(student)}: {name}" for path in texts for name in named.findall(path.read_text())
               if not (student / name).exists()}
    assert not missing, sorted(missing)
    assert "scripts/grade.py" in (ROOT / "README.md").read_text()  # the reference still names its tools


def test_each_graded_test_fails_with_its_own_assignments_not_implemented_error(student, tmp_path):
    """One pytest run of the four assignments' graded tests (one run, not four: each costs a start of torch
    and the toy fixtures); each test fails with the NotImplementedError of the assignment it is marked with."""
    r, cases, markers = pytest_in(student, " or ".join(GRADED), tmp_path / "junit.xml", "--tb=line")
    assert len(cases) == sum(bool(set(m) & set(GRADED)) for m in markers.values()) > 40, r.stdout[-2000:]
    seen = set()
    for nodeid, outcome, text in cases:
        graded = [m for m in markers[nodeid] if m in GRADED]
        assert len(graded) == 1, (nodeid, markers[nodeid])
        seen.add(graded[0])
        assert outcome == "failure", (nodeid, outcome, text[:300])
        assert "NotImplementedError" in text and f"assignment {graded[0][-1]}" in text, (nodeid, text[:300])
    assert seen == set(GRADED)


@pytest.mark.slow  # the graded tests run in the fast suite anyway; this runs them by marker, as a student does
def test_the_graded_tests_pass_in_the_reference(tmp_path):
    r, cases, _ = pytest_in(ROOT, " or ".join(GRADED), tmp_path / "junit.xml")
    assert r.returncode == 0 and len(cases) > 40, r.stdout[-2000:]


@pytest.mark.slow  # most of the fast suite again, in the student copy (about 3 minutes on a 2-core CPU)
def test_the_untouched_parts_pass_in_the_student_copy(student, tmp_path):
    r, cases, _ = pytest_in(student, UNTOUCHED, tmp_path / "junit.xml")
    assert r.returncode == 0 and len(cases) > 100, r.stdout[-3000:]


@pytest.mark.slow  # a whole train.py run; that the copy lacks no file is checked fast above
def test_a_copy_with_every_solution_trains(tmp_path):
    solved = tmp_path / "solved"
    make_assignment.make(solved, keep=True)
    r = subprocess.run([sys.executable, "train.py", "--steps", "2", "--queries", "2", "--group-size", "2",
                        "--eval-users", "1"], cwd=solved, capture_output=True, text=True)
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


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """This working tree, committed in a git checkout of its own: the grader grades against committed files
    only (and refuses a checkout with uncommitted changes), and a developer's tree may hold work not yet
    committed. Weights and prose are left out: no graded case reads them."""
    ref = tmp_path_factory.mktemp("reference") / "repo"
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.splitlines()
    for name in listed:
        if (ROOT / name).is_file() and not name.startswith(("checkpoints/", "docs/")):
            (ref / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, ref / name)
    for command in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "s"]):
        subprocess.run(["git", *command], cwd=ref, check=True, capture_output=True)
    return ref


@pytest.fixture(scope="module")
def solved(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("solved") / "repo"
    make_assignment.make(out, keep=True)
    return out


def _grade(returned, assignments, tmp_path, reference, **kw):
    report = grade.grade(returned, assignments, out=tmp_path / "report", reference=reference, **kw)
    return report, {int(n): (r["passed"], r["total"]) for n, r in report["assignments"].items()}


def _with_functions(text: str, donor: str, names) -> str:
    """`text` with its top-level functions `names` replaced by `donor`'s (a partial solution, a forgery)."""
    for name in names:
        mine = next(n for n in ast.parse(text).body if isinstance(n, ast.FunctionDef) and n.name == name)
        theirs = next(n for n in ast.parse(donor).body if isinstance(n, ast.FunctionDef) and n.name == name)
        lines, source = text.split("\n"), donor.split("\n")
        start = min([theirs.lineno] + [d.lineno for d in theirs.decorator_list])
        lines[min([mine.lineno] + [d.lineno for d in mine.decorator_list]) - 1:mine.end_lineno] = \
            source[start - 1:theirs.end_lineno]
        text = "\n".join(lines)
    return text


def test_grading_gives_full_marks_to_the_reference_solutions(solved, reference, tmp_path, capsys):
    report, scores = _grade(solved, grade.ASSIGNMENTS, tmp_path, reference)
    assert all(passed == total > 0 for passed, total in scores.values()), report["assignments"]
    assert all(not note["stub_kept"] and not note.get("refused") for note in report["code"]["modules"].values())
    assert json.loads((tmp_path / "report" / "report.json").read_text())["assignments"] == report["assignments"]
    assert len(ET.parse(tmp_path / "report" / "assignment3.junit.xml").getroot()) == scores[3][1]


def test_grading_scores_an_untouched_copy_zero_even_when_it_games_the_tests(tmp_path, reference):
    returned = tmp_path / "returned"
    make_assignment.make(returned)
    with open(returned / "tests" / "conftest.py", "a") as f:
        f.write(HOOK)  # every test "passed" when its own tests decide
    credit_tests = returned / "tests" / "test_credit.py"
    credit_tests.write_text(credit_tests.read_text().replace("assert ", "assert True or "))  # every assert edited
    (returned / "pytest.ini").write_text("[pytest]\naddopts = -p no:warnings\n")
    report, scores = _grade(returned, grade.ASSIGNMENTS, tmp_path, reference)
    assert all(passed == 0 and total > 0 for passed, total in scores.values()), scores
    assert {"tests/conftest.py", "tests/test_credit.py", "pytest.ini"} <= set(report["code"]["ignored_changed_files"])
    lines = grade.console_lines(report)
    assert "credit.py: taken nothing; stub kept: ndcg, consistency, credit_weights, integrated_rewards, " \
           "group_advantages" in lines, lines
    assert any("case(s) error: NotImplementedError: assignment 2" in line for line in lines), lines


def test_an_honest_partial_solution_gets_its_partial_score(tmp_path, reference, student, solved):
    """Written: rewards.global_reward, credit.ndcg and credit.consistency. Exactly the graded cases that use
    nothing else pass (each case names the functions it uses), and the stubs are reported."""
    returned = tmp_path / "returned"
    returned.mkdir()
    (returned / "rewards.py").write_text(_with_functions((student / "rewards.py").read_text(),
                                                         (solved / "rewards.py").read_text(), ["global_reward"]))
    (returned / "credit.py").write_text(_with_functions((student / "credit.py").read_text(),
                                                        (solved / "credit.py").read_text(), ["ndcg", "consistency"]))
    report, scores = _grade(returned, (1, 2), tmp_path, reference)
    written = {"rewards.global_reward", "credit.ndcg", "credit.consistency"}
    for n in ("1", "2"):
        cases = report["assignments"][n]["cases"]
        want = [c["name"] for c in cases if set(c["uses"]) <= written]
        assert [c["name"] for c in cases if c["result"] == "passed"] == want, cases
    assert scores[1] == (1, 10) and scores[2] == (4, 10), scores
    assert report["code"]["modules"]["credit.py"]["stub_kept"] == ["credit_weights", "integrated_rewards",
                                                                   "group_advantages"]


NDCG_SIGNATURE = "def ndcg(local_scores, global_gains) -> float:\n"
FORGERIES = {  # name -> the credit.py of an unsolved copy that tries to pass assignment 2 without solving it
    "report patching at import (a helper's default argument)": lambda stub: stub + (
        "\n\ndef _forge(_=setattr(np, 'allclose', lambda *a, **k: True)):\n    return None\n"),
    "a decorator on a graded function": lambda stub: stub.replace(
        NDCG_SIGNATURE, "@_passes\n" + NDCG_SIGNATURE) + (
        "\n\ndef _passes(function):\n    return lambda *args, **kwargs: 1.0\n"),
    "patched comparison functions": lambda stub: _with_functions(stub, (
        NDCG_SIGNATURE + "    import torch\n    np.testing.assert_allclose = lambda *a, **k: None\n"
        "    np.allclose = torch.allclose = lambda *a, **k: True\n    return 0.5\n"), ["ndcg"]),
    "an atexit rewrite of the results": lambda stub: stub + (
        "\n\ndef _rewrite():\n    import atexit\n    atexit.register(lambda: None)\n"),
    "a helper that copies the reference through the grader's process": lambda stub: stub + (
        "\n\ndef _reference():\n    import os\n    grader = open(f'/proc/{os.getppid()}/cmdline').read().split(chr(0))\n"
        "    exec(open(grader[1].replace('scripts/grade.py', 'credit.py')).read(), globals())\n"),
    "a helper that edits the reference tree": lambda stub: stub + (
        "\n\ndef _plant():\n    with open('/proc/self/cwd/../tests/conftest.py', 'a') as f:\n        f.write('x')\n"),
}


FAST_FORGERIES = ("a decorator on a graded function", "patched comparison functions")  # refused; taken


@pytest.mark.parametrize("forgery", [f if f in FAST_FORGERIES else pytest.param(f, marks=pytest.mark.slow)
                                     for f in FORGERIES])  # each costs a grader start: the rest in -m slow
def test_each_forgery_on_an_unsolved_copy_scores_zero_or_is_refused_with_one_line(forgery, student, tmp_path,
                                                                                   reference):
    returned = tmp_path / "returned"
    returned.mkdir()
    (returned / "credit.py").write_text(FORGERIES[forgery]((student / "credit.py").read_text()))
    report, scores = _grade(returned, (2,), tmp_path, reference)
    assert scores[2] == (0, 10), (forgery, report["assignments"]["2"]["failed"])
    refused = [line for line in grade.console_lines(report) if line.startswith("refused:")]
    note = report["code"]["modules"]["credit.py"]
    if forgery != "patched comparison functions":  # that one is taken, runs, and its patches judge nothing
        assert len(refused) == 1 and refused[0].startswith("refused: credit.py:"), (forgery, refused)
        assert note["taken"] == [] and note["refused"] in refused[0]
    else:
        assert note["taken"] == ["ndcg"] and not refused


@pytest.mark.slow  # each grader start costs seconds
def test_a_symlinked_module_is_refused_with_one_line(tmp_path, reference):
    returned = tmp_path / "returned"
    returned.mkdir()
    (returned / "credit.py").symlink_to(ROOT / "credit.py")  # the reference's solutions
    report, scores = _grade(returned, (2,), tmp_path, reference)
    assert scores[2] == (0, 10)
    refused = [line for line in grade.console_lines(report) if line.startswith("refused")]
    assert len(refused) == 1 and refused[0].endswith("credit.py is a symbolic link; return the module itself"), refused


@pytest.mark.slow  # each grader start costs seconds
def test_an_edit_to_the_reference_tree_refuses_grading_with_one_line(tmp_path, reference, solved):
    """A returned copy's code that appended a hook to the reference checkout's tests/conftest.py made the next
    untouched copy score 1.00. Now the grade is made from committed files, and an edited checkout is refused."""
    conftest = reference / "tests" / "conftest.py"
    text = conftest.read_text()
    conftest.write_text(text + HOOK)
    try:
        with pytest.raises(SystemExit, match=r"the reference checkout .* has uncommitted changes \(tests/conftest.py\)"):
            grade.grade(solved, (1,), out=tmp_path / "report", reference=reference)
    finally:
        conftest.write_text(text)
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "grade.py"), str(tmp_path / "nowhere")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "no such folder" in r.stderr, r.stderr


@pytest.mark.slow  # waits out the grader's timeouts
def test_an_infinite_loop_times_out_and_leaves_no_tree(student, tmp_path, reference):
    returned = tmp_path / "returned"
    returned.mkdir()
    (returned / "credit.py").write_text(_with_functions((student / "credit.py").read_text(),
                                                        NDCG_SIGNATURE + "    while True:\n        pass\n", ["ndcg"]))
    work = tmp_path / "work"
    work.mkdir()
    report, scores = _grade(returned, (2,), tmp_path, reference, case_timeout=3, timeout=12, workdir=work)
    results = [c["result"] for c in report["assignments"]["2"]["cases"]]
    assert scores[2][0] == 0 and "timed out" in results, results
    assert report["assignments"]["2"]["timed_out"] >= 1
    assert list(work.iterdir()) == []  # the temporary trees are gone


@pytest.mark.slow  # each grader start costs seconds
def test_a_process_exit_and_an_untaken_constant_are_explained(student, tmp_path, reference):
    """Issue 34: an os._exit in a returned copy, or a module constant the graded code needs but the grader
    does not take (not a literal), gave a grade without a reason. Now each has its line."""
    returned = tmp_path / "returned"
    returned.mkdir()
    (returned / "credit.py").write_text(_with_functions(
        (student / "credit.py").read_text(),
        "def group_advantages(rewards, eps=1e-6):\n    import torch\n    torch.serialization.os._exit(3)\n",
        ["group_advantages"]))
    rewards = _with_functions((student / "rewards.py").read_text(),
                              "def global_reward(pred, gold) -> float:\n    return _NORMALISE(pred) == gold\n",
                              ["global_reward"])
    (returned / "rewards.py").write_text(rewards + "\n_NORMALISE = str.lower\nLIMIT = 3\n")
    report, scores = _grade(returned, (1, 2), tmp_path, reference)
    lines = grade.console_lines(report)
    assert scores == {1: (0, 10), 2: (0, 10)}
    assert "rewards.py: global_reward uses _NORMALISE, which the graded module does not define (only functions, " \
           "imports and literal constants are taken from a returned module)" in lines, lines
    assert report["code"]["modules"]["rewards.py"]["constants"] == ["LIMIT = 3"]
    assert any(line.startswith("assignment 2:") and "the graded code ended the process (exit status 3)" in line
               for line in lines), lines


def test_grading_takes_only_the_graded_functions_helpers_and_literal_constants(tmp_path, student, solved, reference):
    """A returned credit.py with its graded functions written through a new helper, a new import and a new
    literal constant, plus module-level code that tries to tamper: the functions, the helper, the import
    and the constant are taken, the module-level code is not; the grade is full."""
    returned = tmp_path / "returned"
    returned.mkdir()
    source = (solved / "credit.py").read_text()
    source = source.replace(NDCG_SIGNATURE, "def _my_helper():\n    return statistics.fmean([_ONE])\n\n\n"
                            + NDCG_SIGNATURE + "    assert _my_helper() == 1.0\n")
    source = "import statistics\n_ONE = 1.0\n" + source + "\nstatistics.TAMPERED = True\n"
    (returned / "credit.py").write_text(source)
    text, note = grade.splice((student / "credit.py").read_text(), source, ["ndcg", "group_advantages"])
    assert note["taken"] == ["ndcg", "group_advantages"] and note["helpers"] == ["_my_helper"]
    assert note["imports"] == ["import statistics"] and note["constants"] == ["_ONE = 1.0"]
    assert "TAMPERED" not in text and "refused" not in note
    report, scores = _grade(returned, (2,), tmp_path, reference)
    assert scores[2] == (10, 10), report["assignments"]["2"]["failed"]


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
