"""Write a student copy of this repository: the bodies marked as solutions become stubs.

    python scripts/make_assignment.py ../student                     # the student copy
    python scripts/make_assignment.py ../solved --keep-solutions     # the same files, solutions kept
    cd ../student && python -m pytest -m assignment2                 # a student runs one assignment's tests
    python scripts/grade.py ../returned                              # the instructor grades a returned copy

In the reference code a solution is a block of lines between two marker comments (the convention of
nbgrader and otter-grader), inside a function whose docstring is the specification:

    def group_advantages(rewards, eps=1e-6):
        \"\"\"Eq. 7: ... worked example ...\"\"\"
        ### BEGIN SOLUTION (assignment 2)
        ...
        ### END SOLUTION

In the student copy each block becomes one line, `raise NotImplementedError("...")`, naming the
assignment and the function; docstrings, signatures and every other line stay. The copy holds the
files git tracks (so no run outputs, no virtual environment and no `.git` history), without the
instructor-only files (LEFT_OUT: the hidden tests, the instructor's guide, this script, scripts/grade.py,
their test, CI); students read docs/assignment-handout.md. With --keep-solutions the
markers are removed and the solutions kept: what a student who solved everything hands back.
See docs/assignments.md (the instructor's guide) for the four assignments and how to grade them.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the repository's modules
from cli import InputError, output_folder  # noqa: E402
BEGIN = re.compile(r"^(\s*)### BEGIN SOLUTION(?: \((.*)\))?\s*$")
END = re.compile(r"^\s*### END SOLUTION\s*$")
# instructor-only: the hidden tests and their case generator, this tooling and its test, the instructor's
# guide, CI. The student copy keeps docs/assignment-handout.md.
LEFT_OUT = ("tests/hidden/", "tests/test_assignments.py", "scripts/make_assignment.py", "scripts/grade.py",
            "docs/assignments.md", ".ci/")


def enclosing_function(lines: list[str], index: int) -> str:
    """The name of the innermost `def` above line `index`."""
    for line in reversed(lines[:index]):
        m = re.match(r"\s*def (\w+)\(", line)
        if m:
            return m.group(1)
    return "this block"


def strip_solutions(text: str, module: str, keep: bool = False) -> tuple[str, int]:
    """The text with every marked block replaced by a NotImplementedError stub (or, with keep, with its
    markers removed). Returns (text, number of blocks). Unbalanced markers are an error."""
    lines, out, blocks, k = text.split("\n"), [], 0, 0
    while k < len(lines):
        m = BEGIN.match(lines[k])
        if END.match(lines[k]):
            raise SystemExit(f"{module}:{k + 1}: END SOLUTION without BEGIN SOLUTION")
        if not m:
            out.append(lines[k])
            k += 1
            continue
        end = next((j for j in range(k + 1, len(lines)) if END.match(lines[j]) or BEGIN.match(lines[j])), None)
        if end is None or BEGIN.match(lines[end]):
            raise SystemExit(f"{module}:{k + 1}: BEGIN SOLUTION without its END SOLUTION")
        if keep:
            out += lines[k + 1:end]
        else:
            indent, label = m.group(1), m.group(2) or "assignment"
            name = enclosing_function(lines, k)
            out.append(f'{indent}raise NotImplementedError("{label}: implement {module}.{name} '
                       f'(its docstring is the specification)")')
        blocks += 1
        k = end + 1
    return "\n".join(out), blocks


INSTRUCTOR_ONLY = re.compile(r"<!-- instructor -->\n.*?<!-- /instructor -->\n", re.S)


def copied_text(name: str, text: str) -> str:
    """A non-Python file as the copy holds it: Markdown without its instructor-only passages (between
    `<!-- instructor -->` and `<!-- /instructor -->` lines: they name files the copy lacks), a warm start's
    record (checkpoints/*/warmstart.json) without the absolute paths of the machine that trained it
    (each reduced to its last component)."""
    if name.endswith(".md"):
        return INSTRUCTOR_ONLY.sub("", text)
    def relative(x):
        if isinstance(x, dict):
            return {k: relative(v) for k, v in x.items()}
        if isinstance(x, list):
            return [relative(v) for v in x]
        return Path(x).name if isinstance(x, str) and x.startswith("/") else x
    return json.dumps(relative(json.loads(text)), indent=2)


def tracked_files() -> list[str]:
    """The files git tracks in this checkout (SystemExit "error: ..." outside a git checkout, or without git)."""
    try:
        listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        why = (getattr(e, "stderr", "") or str(e)).strip().splitlines()
        raise SystemExit(f"error: {ROOT}: the student copy holds the files git tracks, and git cannot list them here "
                         f"({why[0] if why else type(e).__name__}); run it in a git checkout of the project") from None
    return [f for f in listed.splitlines() if not f.startswith(LEFT_OUT) and (ROOT / f).is_file()]


def make(out: Path, keep: bool = False) -> dict[str, int]:
    """Write the copy into `out` (which must not exist or be empty). Returns {file: blocks replaced}.
    Every file's markers are checked before the first file is written: a fault writes nothing."""
    try:  # the one rule of every command that writes: a new or empty folder (nothing replaced)
        output_folder(out, "OUT", lambda p: False, "empty")
    except InputError as e:
        raise SystemExit(f"error: {e}") from None
    names = tracked_files()
    stripped = {name: strip_solutions((ROOT / name).read_text(), name[:-3].replace("/", "."), keep)
                for name in names if name.endswith(".py")}
    replaced = {}
    for name in names:
        src, dst = ROOT / name, out / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if name in stripped:
            text, blocks = stripped[name]
            dst.write_text(text)
            if blocks:
                replaced[name] = blocks
        elif name.endswith(".md") or name.endswith("/warmstart.json"):
            dst.write_text(copied_text(name, src.read_text()))
        else:
            shutil.copy2(src, dst)
    return replaced


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="folder of the copy (new or empty)")
    p.add_argument("--keep-solutions", action="store_true", help="remove the markers, keep the solutions")
    a = p.parse_args(argv)
    try:
        replaced = make(Path(a.out), a.keep_solutions)
    except SystemExit as e:  # one line and status 2, as every command of the project (cli.handled)
        if not isinstance(e.code, str):
            raise
        print(e.code if e.code.startswith("error: ") else f"error: {e.code}", file=sys.stderr)
        return 2
    what = "kept" if a.keep_solutions else "replaced by stubs"
    for name, n in replaced.items():
        print(f"{name}: {n} solution block{'s' * (n > 1)} {what}")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SystemExit as e:
        if isinstance(e.code, str):  # a refusal, `error: ...`: one line and exit status 2 (docs/usage.md)
            print(e.code, file=sys.stderr)
            sys.exit(2)
        raise
