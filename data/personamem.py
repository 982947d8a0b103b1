"""Loader for PersonaMem (Jiang et al. 2025) question CSVs + shared-context JSONL files.

    load_personamem(questions_csv, contexts_jsonl, setting="") -> list[Example]
    summary(examples) -> dict
    python -m data.personamem QUESTIONS_CSV CONTEXTS_JSONL [--setting 128k]

Format
- Questions CSV (read with `csv.DictReader`), one row per question. Required columns:
  question_id, question_type, question, correct_answer, all_options, shared_context_id,
  end_index_in_shared_context. Every other column (topic, stereotypical, context_length_in_tokens, ...)
  is kept, as its string, in `Example.meta`; `meta["end_index"]` holds the end index as an int.
- `all_options` is a Python-literal list of exactly four strings, each usually starting "(a) ".."(d) ";
  the prefix is stripped (and must name the option's own position when present).
- `correct_answer` is "(c)" or "c" (surrounding whitespace allowed) -> `Example.gold == "c"`.
- Shared contexts JSONL: each non-empty line is one JSON object {shared_context_id: [message, ...]},
  a message being {"role": "system"|"user"|"assistant", "content": str}.

History
- The history visible to a question is `messages[:end_index_in_shared_context]`, read
  literally ("the messages before end_index"). Note: in the real 128k sample the end index is the index
  of the context's LAST message (697 for a 698-message context), so this rule drops only that final
  message (an assistant turn); everything else is visible. An end index may be 0..len(messages).
- A new session starts at each `system` message (the persona, repeated); the system message itself is
  not a line. Messages before the first system message form session 0. `user` / `assistant` messages
  become `Line`s with their content whitespace-collapsed (speaker prefixes such as "User:" or
  "Patient:" are kept). Line ids are global 0..N-1 over the visible history; sessions without lines are
  dropped and the rest re-indexed 0..S-1. `Session.date` is "" and the session has no ground truth
  (`Session.profile` is None).
- Questions over the same (context, end index) share the same `Session` objects (one history in memory).
- PersonaMem has no evidence annotations: `evidence` and `evidence_session` are None.

Every error is an InputError (a ValueError) that names the file, the CSV data row (1-based, with its starting line in
the file) or the JSONL line, and the offending field.
"""
from __future__ import annotations

import ast
import csv
import io
import re
import sys
from collections import Counter
from pathlib import Path

from cli import InputError, handled
from data.example import LETTERS, Example, Line, Session, read_jsonl

REQUIRED_COLUMNS = (
    "question_id", "question_type", "question", "correct_answer", "all_options",
    "shared_context_id", "end_index_in_shared_context",
)
_OPTION_PREFIX = re.compile(r"^\(([a-d])\)\s*")
_ANSWER = re.compile(r"^\(?([a-d])\)?$")
_ROLES = ("system", "user", "assistant")


# ---------------------------------------------------------------- field parsers

def parse_options(cell: str, where: str) -> list[str]:
    """Parse an `all_options` cell into four option texts without their "(a) " prefixes."""
    try:
        value = ast.literal_eval(cell)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
        raise InputError(f"{where}: field 'all_options' is not a Python-literal list "
                         f"({type(e).__name__}): {cell[:80]!r}") from None
    if not isinstance(value, list) or len(value) != 4 or not all(isinstance(o, str) for o in value):
        kind = f"a list of {len(value)} items" if isinstance(value, list) else type(value).__name__
        raise InputError(f"{where}: field 'all_options' must be a list of exactly 4 strings, got {kind}")
    options = []
    for i, option in enumerate(value):
        option = option.strip()
        m = _OPTION_PREFIX.match(option)
        if m:
            if m.group(1) != LETTERS[i]:
                raise InputError(f"{where}: field 'all_options': option {i + 1} is labelled "
                                 f"'({m.group(1)})', expected '({LETTERS[i]})'")
            option = option[m.end():].strip()
        options.append(option)
    return options


def parse_answer(cell: str, where: str) -> str:
    """"(c)" / "c" / " (c) " -> "c"."""
    m = _ANSWER.match(cell.strip())
    if not m:
        raise InputError(f"{where}: field 'correct_answer' must be one of (a)-(d), got {cell!r}")
    return m.group(1)


# ---------------------------------------------------------------- contexts

def _check_messages(messages, where: str) -> list[dict]:
    if not isinstance(messages, list):
        raise InputError(f"{where}: a context must map to a list of messages, got {type(messages).__name__}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise InputError(f"{where}: message {i} must be an object with string 'role' and 'content'")
        if m["role"] not in _ROLES:
            raise InputError(f"{where}: message {i} has unknown role {m['role']!r} (expected one of {_ROLES})")
    return messages


def read_contexts(path: str | Path, keep: set[str] | None = None) -> dict[str, list[dict]]:
    """Read a shared-contexts JSONL file: {context_id: [message, ...]}. With `keep`, only those ids are
    held in memory (all lines are still parsed and checked)."""
    contexts: dict[str, list[dict]] = {}
    seen: dict[str, str] = {}
    for where, obj in read_jsonl(path):
        if not isinstance(obj, dict) or not obj:
            raise InputError(f"{where}: expected a JSON object {{context_id: [messages]}}")
        for cid, messages in obj.items():
            if cid in seen:
                raise InputError(f"{where}: context id {cid!r} already defined at {seen[cid]}")
            seen[cid] = where
            messages = _check_messages(messages, f"{where}: context {cid[:16]!r}")
            if keep is None or cid in keep:
                contexts[cid] = messages
    return contexts


def split_sessions(messages: list[dict]) -> list[Session]:
    """Split messages into sessions at `system` messages; see the module docstring."""
    groups: list[list[dict]] = [[]]
    for m in messages:
        if m["role"] == "system":
            groups.append([])
        else:
            groups[-1].append(m)
    sessions: list[Session] = []
    next_id = 0
    for group in groups:
        if not group:
            continue
        index = len(sessions)
        lines = []
        for m in group:
            lines.append(Line(next_id, index, m["role"], " ".join(m["content"].split())))
            next_id += 1
        sessions.append(Session(index=index, date="", lines=lines))  # no ground truth: notes/profile None
    return sessions


# ---------------------------------------------------------------- questions

FIELD_LIMIT = 1 << 24  # characters in one CSV cell (the csv module's default, 131072, is small for chat logs)


def _read_rows(path: Path):
    """Yield (row_number, start_line, row) for every data row of the CSV; check the encoding, the header
    and the cells. A file with a header and no rows is an error."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise InputError(f"{path}:{line}: not valid UTF-8") from None
    csv.field_size_limit(FIELD_LIMIT)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = reader.fieldnames or []
        for column in REQUIRED_COLUMNS:
            if column not in header:
                raise InputError(f"{path}: missing column '{column}' (header: {', '.join(header) or 'empty'})")
        start, number = reader.line_num + 1, 0
        for number, row in enumerate(reader, 1):
            if None in row or any(v is None for v in row.values()):
                raise InputError(f"{path}: row {number} (line {start}): expected {len(header)} fields")
            yield number, start, row
            start = reader.line_num + 1
    except csv.Error as e:  # e.g. a cell larger than FIELD_LIMIT, a NUL byte
        raise InputError(f"{path}:{reader.line_num}: not a readable CSV row ({e})") from None
    if number == 0:
        raise InputError(f"{path}: no questions (a header and no rows)")


def load_personamem(questions_csv: str | Path, contexts_jsonl: str | Path, setting: str = "") -> list[Example]:
    """Load PersonaMem questions + shared contexts as `Example`s (one per CSV row, in file order)."""
    qpath = Path(questions_csv)
    cpath = Path(contexts_jsonl)
    parsed = []
    qids: dict[str, int] = {}
    for number, start, row in _read_rows(qpath):
        where = f"{qpath}: row {number} (line {start})"
        qid = row["question_id"].strip()
        if not qid:
            raise InputError(f"{where}: field 'question_id' is empty")
        if qid in qids:
            raise InputError(f"{where}: field 'question_id' {qid!r} repeats row {qids[qid]}")
        qids[qid] = number
        options = parse_options(row["all_options"], where)
        gold = parse_answer(row["correct_answer"], where)
        try:
            end = int(row["end_index_in_shared_context"].strip())
        except ValueError:
            raise InputError(f"{where}: field 'end_index_in_shared_context' must be an integer, "
                             f"got {row['end_index_in_shared_context']!r}") from None
        parsed.append((where, qid, row, options, gold, row["shared_context_id"].strip(), end))

    contexts = read_contexts(cpath, keep={p[5] for p in parsed})
    histories: dict[tuple[str, int], list[Session]] = {}
    examples = []
    for where, qid, row, options, gold, cid, end in parsed:
        if cid not in contexts:
            raise InputError(f"{where}: field 'shared_context_id' {cid!r} is not in {cpath}")
        messages = contexts[cid]
        if not 0 <= end <= len(messages):
            raise InputError(f"{where}: field 'end_index_in_shared_context' {end} is out of range "
                             f"0..{len(messages)} for context {cid[:16]!r} ({len(messages)} messages)")
        key = (cid, end)
        if key not in histories:
            histories[key] = split_sessions(messages[:end])
        meta = {k: v for k, v in row.items() if k not in REQUIRED_COLUMNS}
        meta["end_index"] = end
        examples.append(Example(
            qid=qid, user=cid, qtype=row["question_type"].strip(), question=row["question"],
            options=options, gold=gold, sessions=histories[key], evidence=None, evidence_session=None,
            setting=setting, meta=meta))
    return examples


# ---------------------------------------------------------------- summary / CLI

def summary(examples: list[Example]) -> dict:
    """Counts over loaded examples. Per-context session/line counts are for the longest history of
    that context that a question sees (its largest end index)."""
    longest: dict[str, Example] = {}
    for ex in examples:
        if ex.user not in longest or ex.meta.get("end_index", 0) > longest[ex.user].meta.get("end_index", 0):
            longest[ex.user] = ex
    return {
        "questions": len(examples),
        "contexts": len(longest),
        "per_type": dict(Counter(ex.qtype for ex in examples).most_common()),
        "gold": dict(sorted(Counter(ex.gold for ex in examples).items())),
        "questions_per_context": dict(Counter(ex.user for ex in examples)),
        "end_index_per_context": {cid: ex.meta.get("end_index") for cid, ex in longest.items()},
        "sessions_per_context": {cid: len(ex.sessions) for cid, ex in longest.items()},
        "lines_per_context": {cid: len(ex.lines) for cid, ex in longest.items()},
        "histories": len({(ex.user, ex.meta.get("end_index")) for ex in examples}),
    }


def main(argv: list[str] | None = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m data.personamem", description=__doc__.splitlines()[0])
    ap.add_argument("questions_csv")
    ap.add_argument("contexts_jsonl")
    ap.add_argument("--setting", default="")
    args = ap.parse_args(argv)
    s = handled(lambda: summary(load_personamem(args.questions_csv, args.contexts_jsonl, args.setting)))
    print(f"questions: {s['questions']}")
    print(f"contexts: {s['contexts']} (distinct histories: {s['histories']})")
    print("per question type:")
    for qtype, n in s["per_type"].items():
        print(f"  {qtype}: {n}")
    print(f"gold letters: {s['gold']}")
    for cid in s["sessions_per_context"]:
        print(f"context {cid}: {s['questions_per_context'][cid]} questions, end index "
              f"{s['end_index_per_context'][cid]}, {s['sessions_per_context'][cid]} sessions, "
              f"{s['lines_per_context'][cid]} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
