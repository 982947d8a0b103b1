"""Grade a returned assignment: the student's functions run in a child process, the grader judges outside it.

    python scripts/grade.py ../returned                      # every assignment
    python scripts/grade.py ../returned --assignment 2       # one
    python scripts/grade.py ../returned --out grades/alice   # where the report goes (default: <returned>-grade)

How a grade is made (docs/assignments.md, "What the grader trusts"):
  1. The reference is this repository's last commit (`git archive HEAD`); grading is refused while the
     checkout has uncommitted changes to tracked files, so an edit to the reference tree cannot reach a grade.
  2. Reference outputs: the graded cases (tests/hidden/cases.py) run in a child process on the committed
     reference tree; that tree is deleted before any student code runs.
  3. The student tree: the student copy (stubs, scripts/make_assignment.py) of the committed files, the
     graded cases, and from each returned solution module (rewards.py, credit.py, models.py, train.py,
     comam.py) only its graded functions, new helper functions, new imports and new literal constants.
     A module that is a symlink or resolves outside the returned folder, or whose copied-in code has a
     decorator on a graded function, a non-literal default argument, or an import of a module that
     reaches into the grader (pytest, builtins, importlib, inspect, gc, ctypes, atexit, subprocess, ...)
     is refused with one line; its functions stay stubs.
  4. Each case runs in a child process (`python -I`) on the student tree, which gets the case's name and
     sends back its outputs (values, tensors, gradients) as JSON; this process imports no student code,
     compares every output with the reference's, counts the cases and writes the report. A case that
     runs past --case-timeout, or an assignment past --timeout, is "timed out" (the child is killed); a
     child that dies is restarted for the next case.
Score = cases whose outputs equal the reference's / cases of the assignment.
"""
from __future__ import annotations

import argparse
import ast
import builtins
import io
import json
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
import make_assignment  # noqa: E402
from cli import InputError, output_folder  # noqa: E402

ASSIGNMENTS = (1, 2, 3, 4)
SOLUTION_MODULES = ("rewards.py", "credit.py", "models.py", "train.py", "comam.py")
CASES = "tests/hidden/cases.py"  # the graded cases: input builders and calls, no reference implementation
NOT_IN_TREES = ("checkpoints/", "docs/", "tests/hidden/")  # weights and prose no case needs; the hidden folder
# holds the instructor's references (make_cases.py): only cases.py goes into a tree
# Copied-in code may not import these: each is a way to reach the grader, the test machinery or the process.
FORBIDDEN_IMPORTS = ("_pytest", "pytest", "builtins", "importlib", "inspect", "gc", "ctypes", "atexit",
                     "subprocess", "sys", "os", "signal", "multiprocessing", "threading", "pathlib", "shutil",
                     "socket", "pickle", "marshal", "types", "code", "runpy", "pkgutil", "io", "tempfile")
FORBIDDEN_NAMES = ("__import__", "exec", "eval", "compile", "open", "globals", "locals", "vars", "breakpoint",
                   "input", "__builtins__", "memoryview")
FORBIDDEN_ATTRIBUTES = ("__globals__", "__builtins__", "__code__", "__subclasses__", "__dict__", "__loader__",
                        "__spec__", "__closure__", "__import__", "f_globals", "f_locals", "f_back", "f_builtins",
                        "gi_frame", "tb_frame", "system", "__setattr__", "__getattribute__")
CASE_TIMEOUT, ASSIGNMENT_TIMEOUT, STARTUP_TIMEOUT = 300.0, 1800.0, 300.0  # generous: a shared, busy machine
MAX_ANSWER = 64 << 20  # bytes of one answer line


class Refused(SystemExit):
    """A refusal of the whole run: one line, exit status 2 (docs/usage.md)."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


# ======================================================================== the reference: committed files only

def committed_files(root: Path) -> tuple[str, dict[str, bytes]]:
    """(commit, {path: bytes}) of `root`'s HEAD. Refused when tracked files have uncommitted changes:
    what is graded against is what was committed, and an edit to the checkout (by a returned copy's code,
    say) must not reach the next grade."""
    def git(*args, **kw):
        return subprocess.run(["git", *args], cwd=root, capture_output=True, **kw)
    status = git("status", "--porcelain", "--untracked-files=no", text=True)
    if status.returncode != 0:
        raise Refused(f"error: {root}: not a git checkout (the reference must be one: {status.stderr.strip()})")
    changed = [line[3:] for line in status.stdout.splitlines() if line.strip()]
    if changed:
        raise Refused(f"error: the reference checkout {root} has uncommitted changes ({', '.join(changed[:5])}"
                      f"{' ...' if len(changed) > 5 else ''}); grading uses committed files only: commit or "
                      f"restore them (git status)")
    commit = git("rev-parse", "HEAD", text=True).stdout.strip()
    archive = git("archive", "--format=tar", "HEAD").stdout
    files = {}
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for member in tar.getmembers():
            if member.isfile():
                files[member.name] = tar.extractfile(member).read()
    return commit, files


def write_tree(files: dict[str, bytes], tree: Path) -> None:
    for name, data in files.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(data)


def reference_tree_files(files: dict[str, bytes]) -> dict[str, bytes]:
    """The committed files the reference cases run on (solutions in place)."""
    keep = {n: d for n, d in files.items() if not n.startswith(NOT_IN_TREES)}
    keep[CASES] = files[CASES]
    return keep


def student_tree_files(files: dict[str, bytes]) -> dict[str, bytes]:
    """The student copy of the committed files (stubs), with the graded cases."""
    out = {}
    for name, data in files.items():
        if name.startswith(make_assignment.LEFT_OUT) or name.startswith(NOT_IN_TREES):
            continue
        if name.endswith(".py"):
            text, _ = make_assignment.strip_solutions(data.decode(), name[:-3].replace("/", "."))
            data = text.encode()
        out[name] = data
    out[CASES] = files[CASES]
    return out


def graded_functions(files: dict[str, bytes]) -> dict[str, list[str]]:
    """module file -> the names of its graded functions (those holding a solution block in the reference)."""
    out: dict[str, list[str]] = {}
    for name in SOLUTION_MODULES:
        lines = files[name].decode().split("\n")
        funcs = [make_assignment.enclosing_function(lines, k) for k, line in enumerate(lines)
                 if make_assignment.BEGIN.match(line)]
        if funcs:
            out[name] = list(dict.fromkeys(funcs))
    return out


# ======================================================================== what is copied in from a returned module

def _top_level(tree: ast.Module) -> dict[str, ast.AST]:
    return {node.name: node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


def _is_stub(node: ast.FunctionDef, stub: ast.FunctionDef) -> bool:
    """The student has not written it: the stub as handed out, or a body that still raises
    NotImplementedError at its top level."""
    if ast.dump(node) == ast.dump(stub):
        return True
    for s in node.body:
        if isinstance(s, ast.Raise) and s.exc is not None:
            exc = s.exc.func if isinstance(s.exc, ast.Call) else s.exc
            if isinstance(exc, ast.Name) and exc.id == "NotImplementedError":
                return True
    return False


def _literal(node: ast.AST) -> bool:
    try:
        ast.literal_eval(node)
        return True
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False


def _new_constants(returned: ast.Module, stub: ast.Module) -> list[ast.AST]:
    """Top-level `NAME = literal` of the returned module for names the stub module does not bind."""
    bound = {t.id for n in stub.body if isinstance(n, (ast.Assign, ast.AnnAssign))
             for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(t, ast.Name)}
    bound |= set(_top_level(stub)) | {n.name for n in stub.body if isinstance(n, ast.ClassDef)}
    out = []
    for n in returned.body:
        targets = n.targets if isinstance(n, ast.Assign) else [n.target] if isinstance(n, ast.AnnAssign) else []
        if (targets and all(isinstance(t, ast.Name) and t.id not in bound for t in targets)
                and n.value is not None and _literal(n.value)):
            out.append(n)
    return out


def refusal(code: list[ast.AST], graded: dict[str, ast.FunctionDef], stub_defs: dict, module: str) -> str | None:
    """The zero-effort forms, refused in what would be copied in: a decorator a graded function does not
    have in the reference, a non-literal default argument (it runs at import), an import of a module that
    reaches the grader or the process, a name or attribute that reaches the interpreter's internals."""
    for name, node in graded.items():
        theirs = [ast.unparse(d) for d in node.decorator_list]
        mine = [ast.unparse(d) for d in stub_defs[name].decorator_list]
        if theirs != mine:
            return (f"{module}:{node.lineno}: {name} has decorators {theirs} (the reference's: {mine}); a graded "
                    f"function is taken as the reference declares it")
    for top in code:
        for node in ast.walk(top):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                for d in node.args.defaults + [d for d in node.args.kw_defaults if d is not None]:
                    if not _literal(d):
                        return (f"{module}:{d.lineno}: default argument `{ast.unparse(d)}` is not a literal "
                                f"(a default runs when the module is imported)")
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node is not top \
                    and node.decorator_list:
                return f"{module}:{node.lineno}: a decorator inside copied-in code ({node.name})"
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for full in names:
                if full.split(".")[0] in FORBIDDEN_IMPORTS:
                    return f"{module}:{node.lineno}: imports {full} (not allowed in graded code: see docs/assignments.md)"
            if isinstance(node, ast.Name) and node.id in FORBIDDEN_NAMES:
                return f"{module}:{node.lineno}: uses {node.id} (not allowed in graded code: see docs/assignments.md)"
            if isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_ATTRIBUTES:
                return f"{module}:{node.lineno}: uses .{node.attr} (not allowed in graded code: see docs/assignments.md)"
    return None


def undefined_names(functions: list[ast.FunctionDef], module_text: str) -> dict[str, list[str]]:
    """function -> names it reads that neither it, the grading module nor Python defines (a module constant
    of the returned copy that is not a literal, say): said in the report, so a NameError has a reason."""
    module = ast.parse(module_text)
    defined = set(dir(builtins))
    for n in ast.walk(module):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(n.name)
        elif isinstance(n, ast.alias):
            defined.add((n.asname or n.name).split(".")[0])
        elif isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
            defined.add(n.id)
        elif isinstance(n, ast.arg):
            defined.add(n.arg)
    out = {}
    for f in functions:
        missing = sorted({n.id for n in ast.walk(f) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
                          and n.id not in defined})
        if missing:
            out[f.name] = missing
    return out


def splice(stub_text: str, returned_text: str, graded: list[str], module: str = "module") -> tuple[str, dict]:
    """The stub module with the returned graded functions, new helpers, new imports and new literal
    constants copied in; or, when the copied-in code is refused, the stub module unchanged.
    Returns (text, what was taken and what was not)."""
    note = {"taken": [], "stub_kept": [], "helpers": [], "imports": [], "constants": []}
    try:
        returned = ast.parse(returned_text)
    except SyntaxError as e:
        note["stub_kept"] = list(graded)
        note["error"] = f"does not parse: {e.msg} (line {e.lineno})"
        return stub_text, note
    stub = ast.parse(stub_text)
    stub_defs, theirs = _top_level(stub), _top_level(returned)
    taken = {name: theirs[name] for name in graded if name in theirs and name in stub_defs
             and not _is_stub(theirs[name], stub_defs[name])}
    known_imports = {ast.unparse(n) for n in stub.body if isinstance(n, (ast.Import, ast.ImportFrom))}
    imports = [n for n in returned.body if isinstance(n, (ast.Import, ast.ImportFrom))
               and ast.unparse(n) not in known_imports and not (isinstance(n, ast.ImportFrom)
                                                              and n.module == "__future__")]
    helpers = [n for name, n in theirs.items() if name not in stub_defs]
    constants = _new_constants(returned, stub)
    present = {name: theirs[name] for name in graded if name in theirs and name in stub_defs}
    problem = refusal(list(taken.values()) + helpers + imports + constants, present, stub_defs, module)
    if problem:
        note["stub_kept"] = list(graded)
        note["refused"] = problem
        return stub_text, note
    lines, source = stub_text.split("\n"), returned_text.split("\n")
    replacements = []  # (first line, last line, new text), 1-based, in the stub
    for name in graded:
        if name in taken:
            node, mine = taken[name], stub_defs[name]
            first = min([mine.lineno] + [d.lineno for d in mine.decorator_list])
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            replacements.append((first, mine.end_lineno, "\n".join(source[start - 1:node.end_lineno])))
            note["taken"].append(name)
        else:
            note["stub_kept"].append(name)
    for first, last, text in sorted(replacements, reverse=True):
        lines[first - 1:last] = text.split("\n")
    text = "\n".join(lines)
    head = [ast.unparse(n) for n in imports] + [ast.unparse(n) for n in constants]
    if head:
        after = max((n.end_lineno for n in ast.parse(text).body
                     if isinstance(n, ast.ImportFrom) and n.module == "__future__"), default=0)
        split = text.split("\n")
        split[after:after] = head
        text = "\n".join(split)
        note["imports"] = [ast.unparse(n) for n in imports]
        note["constants"] = [ast.unparse(n) for n in constants]
    if helpers:
        text = text.rstrip("\n") + "\n\n\n# ---- helpers of the returned copy\n" + "\n\n\n".join(
            "\n".join(source[n.lineno - 1:n.end_lineno]) for n in helpers) + "\n"
        note["helpers"] = [n.name for n in helpers]
    undefined = undefined_names(list(taken.values()) + helpers, text)
    if undefined:
        note["undefined"] = undefined
    return text, note


def returned_module(returned: Path, module: str) -> tuple[str | None, str | None, str | None]:
    """(text, None, None), (None, why it is missing, None) or (None, None, why it is refused): a returned
    module must be a regular file inside the returned folder (a symlink, or a path that resolves
    elsewhere, could be the reference itself)."""
    path = returned / module
    if not path.exists() and not path.is_symlink():
        return None, "missing from the returned folder", None
    if path.is_symlink():
        return None, None, f"{path} is a symbolic link; return the module itself"
    if not path.resolve().is_relative_to(returned) or not path.is_file():
        return None, None, f"{path} is not a regular file inside {returned}"
    return path.read_text(errors="replace"), None, None


def build_student_tree(returned: Path, files: dict[str, bytes], tree: Path) -> dict:
    """The student tree in `tree`; returns what was taken from `returned` and what was ignored."""
    stubs = student_tree_files(files)
    taken = {}
    for module, names in graded_functions(files).items():
        text, missing, refused = returned_module(returned, module)
        if text is None:
            taken[module] = {"taken": [], "stub_kept": names,
                             **({"refused": refused} if refused else {"error": missing})}
            continue
        spliced, note = splice(stubs[module].decode(), text, names, module)
        stubs[module] = spliced.encode()
        taken[module] = note
    write_tree(stubs, tree)
    copy = student_tree_files(files)
    ignored = sorted(name for name in copy if name not in taken and name != CASES and (returned / name).is_file()
                     and not (returned / name).is_symlink() and (returned / name).read_bytes() != copy[name])
    extra = sorted(str(p.relative_to(returned)) for p in returned.rglob("*") if p.is_file()
                   and p.suffix in (".py", ".ini", ".cfg", ".toml") and str(p.relative_to(returned)) not in files
                   and "__pycache__" not in p.parts and ".venv" not in p.parts)
    return {"modules": taken, "ignored_changed_files": ignored, "ignored_extra_files": extra}


# ======================================================================== the child process and the judging

BOOT = ("import sys; tree = sys.argv[1]; sys.path[:0] = [tree, tree + '/tests', tree + '/tests/hidden']; "
        "import os; os.chdir(tree); import cases; cases.serve()")


class Child:
    """`python -I` on a tree: it reads one request a line on stdin, answers one JSON line on its stdout
    (the graded code's own prints go to stderr, which is discarded)."""

    def __init__(self, tree: Path):
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "OMP_NUM_THREADS",
                                                             "MKL_NUM_THREADS", "TMPDIR")}
        env["HOME"] = str(tree)
        self.proc = subprocess.Popen([sys.executable, "-I", "-B", "-c", BOOT, str(tree)], cwd=tree, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        self.buffer = b""

    def ask(self, request: str, timeout: float) -> tuple[str, object]:
        """("answer", the decoded JSON), ("timeout", None) or ("died", exit status)."""
        try:
            self.proc.stdin.write(request.encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return "died", self.proc.wait()
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout", None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return "died", self.proc.wait()
            self.buffer += chunk
            if len(self.buffer) > MAX_ANSWER:
                return "answer", {"ok": False, "error": "an answer larger than the grader reads"}
        line, self.buffer = self.buffer.split(b"\n", 1)
        try:
            return "answer", json.loads(line)
        except ValueError:
            return "answer", {"ok": False, "error": "an answer that is not the grader's JSON"}

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the child's whole session: nothing left running
            except ProcessLookupError:
                pass
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass


def reference_outputs(tree: Path, assignments) -> dict[int, list[dict]]:
    """Every case of the assignments run on the reference tree: {n: [{name, uses, rtol, atol, out}]}."""
    child, out = Child(tree), {}
    try:
        for n in assignments:
            status, listing = child.ask(f"list {n}", STARTUP_TIMEOUT)
            if status != "answer" or not listing.get("ok"):
                raise Refused(f"error: the graded cases do not load on the reference ({status}: {listing})")
            out[n] = []
            for case in listing["cases"]:
                status, answer = child.ask(f"run {case['name']}", STARTUP_TIMEOUT)
                if status != "answer" or not answer.get("ok"):
                    raise Refused(f"error: graded case {case['name']} fails on the reference "
                                  f"({status}: {answer if status == 'answer' else ''}); fix {CASES}")
                out[n].append({**case, "out": answer["out"]})
        return out
    finally:
        child.close()


def _kind(x) -> str:
    if isinstance(x, dict):
        return next(iter(x)) if len(x) == 1 and next(iter(x)).startswith("$") else "dict"
    return {bool: "number", int: "number", float: "number", str: "text", list: "list", type(None): "None"}.get(
        type(x), "other")


def _close(a: float, b: float, rtol: float, atol: float) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return abs(a - b) <= atol + rtol * abs(b)


def compare(want, got, rtol: float, atol: float, where: str = "output") -> str | None:
    """None when `got` (the student's encoded output) equals `want` (the reference's), else why not."""
    kw, kg = _kind(want), _kind(got)
    if kw != kg:
        words = {"$tensor": "a tensor", "$array": "an array", "$error": "an exception", "number": "a number",
                 "text": "a string", "list": "a list", "dict": "a dict", "None": "None", "other": "something else"}
        return f"{where}: {words.get(kg, kg)} where the reference gives {words.get(kw, kw)}"
    if kw == "number":
        return None if _close(float(got), float(want), rtol, atol) else f"{where}: {got!r}, the reference {want!r}"
    if kw in ("text", "None", "$error"):
        return None if got == want else f"{where}: {got!r}, the reference {want!r}"
    if kw == "list":
        if len(got) != len(want):
            return f"{where}: {len(got)} items, the reference {len(want)}"
        for k, (w, g) in enumerate(zip(want, got)):
            why = compare(w, g, rtol, atol, f"{where}[{k}]")
            if why:
                return why
        return None
    if kw == "dict":
        if sorted(got) != sorted(want):
            return f"{where}: keys {sorted(got)}, the reference {sorted(want)}"
        for k in want:
            why = compare(want[k], got[k], rtol, atol, f"{where}[{k!r}]")
            if why:
                return why
        return None
    if kw in ("$tensor", "$array"):
        w, g = want[kw], got[kw]
        if not isinstance(g, dict) or set(g) != set(w):
            return f"{where}: a malformed answer"
        for field in ("dtype", "shape", "device"):
            if g[field] != w[field]:
                return f"{where}: {field} {g[field]}, the reference {w[field]}"
        if w["data"] is None:
            return None
        if not isinstance(g["data"], list) or len(g["data"]) != len(w["data"]):
            return f"{where}: a malformed answer"
        for k, (a, b) in enumerate(zip(g["data"], w["data"])):
            if not isinstance(a, (int, float)) or not _close(float(a), float(b), rtol, atol):
                return f"{where}: element {k} (flat) is {a!r}, the reference {b!r}"
        return None
    return f"{where}: an output the grader does not compare ({kw})"


def judge(tree: Path, reference: dict[int, list[dict]], case_timeout: float, limit: float) -> dict[int, list]:
    """Each reference case run on the student tree, one request at a time, in one child process while it
    lives (a fresh one after a time-out or a death): {n: [{name, result, why}]}."""
    results, child = {}, None
    try:
        for n, cases in reference.items():
            results[n], start = [], time.monotonic()
            for case in cases:
                left = limit - (time.monotonic() - start)
                if left <= 0:
                    results[n].append({"name": case["name"], "result": "timed out",
                                       "why": f"the assignment's time limit ({limit:g} s) ran out before this case"})
                    continue
                if child is None:
                    child = Child(tree)
                    status, hello = child.ask("hello", min(STARTUP_TIMEOUT, left))
                    if status != "answer":
                        results[n].append({"name": case["name"], "result": "timed out" if status == "timeout"
                                           else "error", "why": "the grading process did not start"
                                           + (f" (exit status {hello})" if status == "died" else "")})
                        child.close()
                        child = None
                        continue
                wait = min(case_timeout, limit - (time.monotonic() - start))
                status, answer = child.ask(f"run {case['name']}", max(wait, 0.1))
                if status == "timeout":
                    results[n].append({"name": case["name"], "result": "timed out", "why": f"no answer within {wait:g} s"})
                elif status == "died":
                    results[n].append({"name": case["name"], "result": "error",
                                       "why": f"the graded code ended the process (exit status {answer})"})
                elif not isinstance(answer, dict) or not answer.get("ok"):
                    error = answer.get("error") if isinstance(answer, dict) else None
                    results[n].append({"name": case["name"], "result": "error", "why": str(error)[:500]})
                else:
                    why = compare(case["out"], answer.get("out"), case["rtol"], case["atol"])
                    results[n].append({"name": case["name"], "result": "failed" if why else "passed", "why": why})
                if status != "answer":
                    child.close()
                    child = None
            for result, case in zip(results[n], cases):
                result["uses"] = case["uses"]
    finally:
        if child is not None:
            child.close()
    return results


def summary(results: list[dict]) -> dict:
    passed = sum(r["result"] == "passed" for r in results)
    return {"passed": passed, "total": len(results), "score": passed / len(results) if results else 0.0,
            "timed_out": sum(r["result"] == "timed out" for r in results),
            "failed": [f"{r['name']}: {r['result']}: {r['why']}" for r in results if r["result"] != "passed"],
            "cases": results}


def write_junit(results: list[dict], n: int, path: Path) -> None:
    suite = ET.Element("testsuite", name=f"assignment{n}", tests=str(len(results)),
                       failures=str(sum(r["result"] != "passed" for r in results)))
    for r in results:
        case = ET.SubElement(suite, "testcase", classname=f"assignment{n}", name=r["name"])
        if r["result"] != "passed":
            ET.SubElement(case, "failure", message=f"{r['result']}: {r['why']}")
    ET.ElementTree(suite).write(path, encoding="unicode")


_REFERENCE: dict[tuple[str, int], list[dict]] = {}  # (commit, assignment) -> reference outputs, kept per process


def grade(returned: Path, assignments=ASSIGNMENTS, out: Path | None = None, reference: Path = ROOT,
          case_timeout: float = CASE_TIMEOUT, timeout: float = ASSIGNMENT_TIMEOUT,
          workdir: Path | None = None) -> dict:
    returned = Path(returned).resolve()
    if not returned.is_dir():
        raise Refused(f"error: {returned}: no such folder")
    out = Path(out) if out else returned.with_name(returned.name + "-grade")
    try:  # the one rule of every command that writes: new, empty, or an earlier report (replaced)
        output_folder(out, "--out", lambda p: (p / "report.json").is_file(), "a grade report folder")
    except InputError as e:
        raise Refused(f"error: {e}") from None
    commit, files = committed_files(Path(reference))
    if CASES not in files:
        raise Refused(f"error: the reference {reference} has no {CASES} at its last commit")
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        missing = [n for n in assignments if (commit, n) not in _REFERENCE]
        if missing:  # the reference tree exists only while the reference runs, before any student code
            ref_tree = Path(tmp) / "reference"
            write_tree(reference_tree_files(files), ref_tree)
            try:
                for n, cases in reference_outputs(ref_tree, missing).items():
                    _REFERENCE[(commit, n)] = cases
            finally:
                shutil.rmtree(ref_tree)
        tree = Path(tmp) / "tree"
        report = {"returned": str(returned), "reference_commit": commit,
                  "code": build_student_tree(returned, files, tree), "assignments": {}}
        out.mkdir(parents=True, exist_ok=True)
        judged = judge(tree, {n: _REFERENCE[(commit, n)] for n in assignments}, case_timeout, timeout)
        for n, results in judged.items():
            report["assignments"][str(n)] = summary(results)
            write_junit(results, n, out / f"assignment{n}.junit.xml")
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def table(report: dict) -> str:
    rows = ["| assignment | cases passed | timed out | score |", "|---|---|---|---|"]
    for n, r in report["assignments"].items():
        rows.append(f"| {n} | {r['passed']}/{r['total']} | {r['timed_out']} | {r['score']:.2f} |")
    return "\n".join(rows)


def console_lines(report: dict) -> list[str]:
    """What the console says besides the table: per module what was taken, refused or kept as a stub,
    and per assignment the first reasons its cases failed."""
    lines = []
    for module, note in report["code"]["modules"].items():
        line = f"{module}: taken {', '.join(note['taken']) or 'nothing'}"
        if note.get("helpers"):
            line += f"; helpers taken: {', '.join(note['helpers'])}"
        if note.get("constants"):
            line += f"; constants taken: {', '.join(c.split('=')[0].strip() for c in note['constants'])}"
        if note["stub_kept"]:
            line += f"; stub kept: {', '.join(note['stub_kept'])}"
        if note.get("error"):
            line += f" ({note['error']})"
        lines.append(line)
        if note.get("refused"):
            lines.append(f"refused: {note['refused']}")
        for func, names in note.get("undefined", {}).items():
            lines.append(f"{module}: {func} uses {', '.join(names)}, which the graded module does not define "
                         f"(only functions, imports and literal constants are taken from a returned module)")
    ignored = report["code"]["ignored_changed_files"] + report["code"]["ignored_extra_files"]
    if ignored:
        lines.append(f"ignored (not graded): {', '.join(ignored)}")
    for n, r in report["assignments"].items():
        reasons = list(dict.fromkeys(f.split(": ", 1)[1] for f in r["failed"]))
        for reason in reasons[:10]:
            lines.append(f"assignment {n}: {sum(f.endswith(reason) for f in r['failed'])} case(s) {reason}")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("returned", help="the folder a student handed back")
    p.add_argument("--assignment", type=int, choices=ASSIGNMENTS, help="grade one assignment (default: all)")
    p.add_argument("--out", help="report folder (default: <returned>-grade; an earlier report there is replaced)")
    p.add_argument("--case-timeout", type=float, default=CASE_TIMEOUT, help="seconds one graded case may run")
    p.add_argument("--timeout", type=float, default=ASSIGNMENT_TIMEOUT, help="seconds one assignment may run")
    a = p.parse_args(argv)
    try:
        report = grade(Path(a.returned), (a.assignment,) if a.assignment else ASSIGNMENTS,
                       Path(a.out) if a.out else None, case_timeout=a.case_timeout, timeout=a.timeout)
    except Refused as e:
        print(e, file=sys.stderr)
        return 2
    for line in console_lines(report):
        print(line)
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
