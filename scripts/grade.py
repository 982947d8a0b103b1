"""Grade a returned assignment: the instructor's tests on a clean tree, with only the student's code in it.

    python scripts/grade.py ../returned                      # every assignment
    python scripts/grade.py ../returned --assignment 2       # one
    python scripts/grade.py ../returned --out grades/alice   # where the report goes (default: <returned>-grade)

The returned folder is never run, and none of its tests or settings are used. The grader builds a clean
tree from this repository, the reference: the student copy (scripts/make_assignment.py: stubs where the
solutions are), the instructor's tests, visible and hidden (tests/hidden), with the reference's
conftest.py and pytest.ini. Into it, from each returned solution module (the files that hold graded
functions: rewards.py, credit.py, models.py, train.py, comam.py), it copies only
  - each graded function, whole (its signature and body), in place of its stub;
  - new top-level functions (helpers with names the module does not have, without decorators) and new
    import statements.
Everything else the student changed (other code in those modules, other files, their tests, conftest.py,
pytest.ini) is listed in the report as ignored. Then pytest runs each assignment's tests (-m assignmentN)
in that tree, and the grader prints a table and writes <out>/report.json and one JUnit XML per assignment.
Score = passed tests / graded tests of the assignment (visible and hidden together).

What this protects: the grade depends on the reference's tests alone, so an edited assert or a
conftest hook in the returned folder changes nothing. What it does not: the student's graded functions
run inside the grading process, as with any autograder; run it in a container or a throw-away account
if that matters to you.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
import make_assignment  # noqa: E402
from cli import InputError, output_folder  # noqa: E402

ASSIGNMENTS = (1, 2, 3, 4)


def graded_functions() -> dict[str, list[str]]:
    """module file -> the names of its graded functions (those that hold a solution block in the reference)."""
    out: dict[str, list[str]] = {}
    for name in make_assignment.tracked_files():
        if not name.endswith(".py"):
            continue
        lines = (ROOT / name).read_text().split("\n")
        funcs = [make_assignment.enclosing_function(lines, k) for k, line in enumerate(lines)
                 if make_assignment.BEGIN.match(line)]
        if funcs:
            out[name] = list(dict.fromkeys(funcs))
    return out


def _top_level(tree: ast.Module) -> dict[str, ast.AST]:
    return {node.name: node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


def splice(stub_text: str, returned_text: str, graded: list[str]) -> tuple[str, dict]:
    """The stub module with the returned graded functions, new helpers and new imports copied in.
    Returns (text, what was taken and what was not)."""
    note = {"taken": [], "stub_kept": [], "helpers": [], "imports": []}
    try:
        returned = ast.parse(returned_text)
    except SyntaxError as e:
        note["stub_kept"] = list(graded)
        note["error"] = f"does not parse: {e.msg} (line {e.lineno})"
        return stub_text, note
    stub = ast.parse(stub_text)
    stub_defs, theirs = _top_level(stub), _top_level(returned)
    lines = stub_text.split("\n")
    replacements = []  # (first line, last line, new text), 1-based, in the stub
    for name in graded:
        if name in theirs and name in stub_defs:
            node, mine = theirs[name], stub_defs[name]
            first = min([mine.lineno] + [d.lineno for d in mine.decorator_list])
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            text = "\n".join(returned_text.split("\n")[start - 1:node.end_lineno])
            replacements.append((first, mine.end_lineno, text))
            note["taken"].append(name)
        else:
            note["stub_kept"].append(name)
    for first, last, text in sorted(replacements, reverse=True):
        lines[first - 1:last] = text.split("\n")
    known_imports = {ast.unparse(n) for n in stub.body if isinstance(n, (ast.Import, ast.ImportFrom))}
    new_imports = [ast.unparse(n) for n in returned.body if isinstance(n, (ast.Import, ast.ImportFrom))
                   and ast.unparse(n) not in known_imports and not (isinstance(n, ast.ImportFrom)
                                                                  and n.module == "__future__")]
    helpers = [n for name, n in theirs.items() if name not in stub_defs and not n.decorator_list]
    text = "\n".join(lines)
    if new_imports:
        body = ast.parse(text).body
        after = max((n.end_lineno for n in body if isinstance(n, ast.ImportFrom) and n.module == "__future__"),
                    default=0)
        split = text.split("\n")
        split[after:after] = new_imports
        text = "\n".join(split)
        note["imports"] = new_imports
    if helpers:
        source = returned_text.split("\n")
        text = text.rstrip("\n") + "\n\n\n# ---- helpers of the returned copy\n" + "\n\n\n".join(
            "\n".join(source[n.lineno - 1:n.end_lineno]) for n in helpers) + "\n"
        note["helpers"] = [n.name for n in helpers]
    return text, note


def build_tree(returned: Path, tree: Path) -> dict:
    """The clean grading tree in `tree` (which must not exist); returns what was taken from `returned`."""
    make_assignment.make(tree)
    shutil.copytree(ROOT / "tests" / "hidden", tree / "tests" / "hidden")
    taken = {}
    for module, names in graded_functions().items():
        path = returned / module
        if not path.is_file():
            taken[module] = {"taken": [], "stub_kept": names, "error": "missing from the returned folder"}
            continue
        text, note = splice((tree / module).read_text(), path.read_text(errors="replace"), names)
        (tree / module).write_text(text)
        taken[module] = note
    ignored = []
    for name in make_assignment.tracked_files():
        theirs = returned / name
        if name in taken or name.startswith(make_assignment.LEFT_OUT) or not (tree / name).is_file():
            continue
        if theirs.is_file() and theirs.read_bytes() != (tree / name).read_bytes():
            ignored.append(name)
    extra = sorted(str(p.relative_to(returned)) for p in returned.rglob("*") if p.is_file()
                   and p.suffix in (".py", ".ini", ".cfg", ".toml") and not (tree / p.relative_to(returned)).exists()
                   and "__pycache__" not in p.parts and ".venv" not in p.parts)
    return {"modules": taken, "ignored_changed_files": ignored, "ignored_extra_files": extra}


def run_assignment(tree: Path, n: int, junit: Path) -> dict:
    """pytest -m assignmentN in the tree; returns counts, visible and hidden, and the failed tests."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTEST_ADDOPTS", None)
    subprocess.run([sys.executable, "-m", "pytest", "-c", str(tree / "pytest.ini"), "--rootdir", str(tree),
                    "-m", f"assignment{n}", "-p", "no:cacheprovider", "-q", f"--junitxml={junit}"],
                   cwd=tree, capture_output=True, text=True, env=env)
    counts = {"visible": [0, 0], "hidden": [0, 0]}
    failed = []
    if junit.exists():
        for case in ET.parse(junit).getroot().iter("testcase"):
            kind = "hidden" if ".hidden." in f".{case.get('classname', '')}." else "visible"
            bad = any(child.tag in ("failure", "error", "skipped") for child in case)
            counts[kind][1] += 1
            counts[kind][0] += not bad
            if bad:
                failed.append(f"{case.get('classname')}::{case.get('name')}")
    passed = counts["visible"][0] + counts["hidden"][0]
    total = counts["visible"][1] + counts["hidden"][1]
    return {"visible": counts["visible"], "hidden": counts["hidden"], "passed": passed, "total": total,
            "score": passed / total if total else 0.0, "failed": failed}


def grade(returned: Path, assignments=ASSIGNMENTS, out: Path | None = None) -> dict:
    returned = Path(returned).resolve()
    if not returned.is_dir():
        raise SystemExit(f"error: {returned}: no such folder")
    out = Path(out) if out else returned.with_name(returned.name + "-grade")
    try:  # the one rule of every command that writes: new, empty, or an earlier report (replaced)
        output_folder(out, "--out", lambda p: (p / "report.json").is_file(), "a grade report folder")
    except InputError as e:
        raise SystemExit(f"error: {e}") from None
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        report = {"returned": str(returned), "code": build_tree(returned, tree), "assignments": {}}
        out.mkdir(parents=True, exist_ok=True)
        for n in assignments:
            report["assignments"][str(n)] = run_assignment(tree, n, out / f"assignment{n}.junit.xml")
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def table(report: dict) -> str:
    rows = ["| assignment | visible tests | hidden tests | score |", "|---|---|---|---|"]
    for n, r in report["assignments"].items():
        rows.append(f"| {n} | {r['visible'][0]}/{r['visible'][1]} | {r['hidden'][0]}/{r['hidden'][1]} | "
                    f"{r['score']:.2f} |")
    return "\n".join(rows)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("returned", help="the folder a student handed back")
    p.add_argument("--assignment", type=int, choices=ASSIGNMENTS, help="grade one assignment (default: all)")
    p.add_argument("--out", help="report folder (default: <returned>-grade; an earlier report there is replaced)")
    a = p.parse_args(argv)
    report = grade(Path(a.returned), (a.assignment,) if a.assignment else ASSIGNMENTS,
                   Path(a.out) if a.out else None)
    for module, note in report["code"]["modules"].items():
        taken = ", ".join(note["taken"]) or "nothing"
        print(f"{module}: taken {taken}" + (f"; stubs kept: {', '.join(note['stub_kept'])}" if note["stub_kept"] else "")
              + (f" ({note['error']})" if note.get("error") else ""))
    ignored = report["code"]["ignored_changed_files"] + report["code"]["ignored_extra_files"]
    if ignored:
        print(f"ignored (not graded): {', '.join(ignored)}")
    print(table(report))
    return report


if __name__ == "__main__":
    main()
