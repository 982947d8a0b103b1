"""The one in-memory example type that every module uses, and its on-disk JSONL format.

A user's history is a list of `Session`s; each session is a list of numbered `Line`s. Line ids are
global inside one user's history (0, 1, 2, ... across all sessions), so that the evidence E_q of a
question, the extraction agent's memory M_f and the retrieval agent's E'_q are all sets of the same
integers and Eq. 9 / Eq. 11 are exact set operations (docs/method.md, decision 1).

On disk (one split = two files, both UTF-8 JSONL, one JSON object per line):

    {split}_histories.jsonl   {"user": "u0007", "setting": "medium",
                               "sessions": [{"index": 0, "date": "2024-01-03",
                                             "lines": [{"id": 0, "role": "user", "text": "i grew up in oslo ."}, ...],
                                             "notes": {"0": ["hometown oslo"], ...}}, ...]}
    {split}_questions.jsonl   {"qid": "u0007-q3", "user": "u0007",
                               "qtype": "recalling_facts_mentioned_by_the_user",
                               "question": "where did i grow up ?",
                               "options": ["oslo", "lima", "cairo", "hanoi"], "gold": "a",
                               "evidence": [0], "evidence_session": 0}

`notes` maps each informative line id of a session to the ground-truth profile statements it supports
(together: the rubric of Eq. 10, and what a perfect extraction keeps);
`evidence` is E_q, or null where the benchmark has none (PersonaMem).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from cli import InputError
from rewards import normalise

LETTERS = "abcd"

# The three agents of CoMAM, in the order they act (agents.py). Named here, at the bottom of the imports,
# because the model layer (models.py: one policy folder per role) needs them as much as the agents do.
ROLES = ("extraction", "profile", "retrieval")

# PersonaMem's seven question types, spelled as in its CSV files.
QUESTION_TYPES = (
    "recalling_facts_mentioned_by_the_user",
    "identifying_new_things_not_mentioned_by_the_user",
    "recalling_the_latest_user_preferences",
    "tracking_the_full_sequence_of_preference_updates",
    "recalling_the_reasons_behind_previous_updates",
    "recommendation_aligned_with_users_latest_preferences",
    "generalizing_past_reasons_in_memory_to_new_scenarios",
)


@dataclass(frozen=True)
class Line:
    """One numbered line of a history: a user or assistant turn."""
    id: int  # global id inside the user's history
    session: int  # index of the session that holds it
    role: str  # "user" | "assistant"
    text: str


@dataclass
class Session:
    index: int
    date: str
    lines: list[Line]
    # ground truth, where the benchmark has it (None = unknown, as in PersonaMem):
    # informative line id -> the profile statements that line supports (the rubric of Eq. 10)
    notes: dict[int, list[str]] | None = None

    @property
    def profile(self) -> list[str] | None:
        """All ground-truth profile statements of the session, in line order."""
        if self.notes is None:
            return None
        return [st for lid in sorted(self.notes) for st in self.notes[lid]]

    @property
    def key_lines(self) -> list[int] | None:
        """Ids of the session's informative lines (what a perfect extraction keeps)."""
        return None if self.notes is None else sorted(self.notes)


@dataclass
class Example:
    """One four-option question over one user's history."""
    qid: str
    user: str
    qtype: str
    question: str
    options: list[str]  # four option texts, without their "(a) " prefixes
    gold: str  # "a" | "b" | "c" | "d"
    sessions: list[Session]  # the whole history visible to the question
    evidence: list[int] | None = None  # E_q: ids of the supporting lines; None = unavailable
    evidence_session: int | None = None  # index of the session that holds E_q
    setting: str = ""  # history length: small / medium / large, or e.g. "128k"
    meta: dict = field(default_factory=dict)

    @property
    def gold_text(self) -> str:
        return self.options[LETTERS.index(self.gold)]

    @property
    def lines(self) -> list[Line]:
        return [line for s in self.sessions for line in s.lines]

    def session_lines(self, index: int) -> list[Line]:
        return self.sessions[index].lines


# ---------------------------------------------------------------- JSONL I/O

def _session_to_json(s: Session) -> dict:
    notes = None if s.notes is None else {str(k): v for k, v in sorted(s.notes.items())}
    return {"index": s.index, "date": s.date, "notes": notes,
            "lines": [{"id": l.id, "role": l.role, "text": l.text} for l in s.lines]}


def write_split(directory: str | Path, split: str, examples: list[Example]) -> None:
    """Write `examples` as {split}_histories.jsonl + {split}_questions.jsonl (users in first-seen order)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    users: dict[str, Example] = {}
    for ex in examples:
        users.setdefault(ex.user, ex)
    with open(directory / f"{split}_histories.jsonl", "w", encoding="utf-8", newline="\n") as f:
        for user, ex in users.items():
            row = {"user": user, "setting": ex.setting, "sessions": [_session_to_json(s) for s in ex.sessions]}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    with open(directory / f"{split}_questions.jsonl", "w", encoding="utf-8", newline="\n") as f:
        for ex in examples:
            row = {"qid": ex.qid, "user": ex.user, "qtype": ex.qtype, "question": ex.question,
                   "options": ex.options, "gold": ex.gold, "evidence": ex.evidence,
                   "evidence_session": ex.evidence_session}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_jsonl(path: str | Path):
    """Yield (where, object) for each non-empty line of a UTF-8 JSONL file; where = "path:line".

    A line that is not valid UTF-8 or not valid JSON raises ValueError naming the file and line.
    """
    path = Path(path)
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # a byte-order mark is allowed
            except UnicodeDecodeError as e:
                raise InputError(f"{where}: not valid UTF-8 (byte {e.start + 1} of the line)") from None
            if not text.strip():
                continue
            try:
                row = json.loads(text.rstrip("\r\n"))
            except json.JSONDecodeError as e:
                raise InputError(f"{where}: not valid JSON ({e.msg}: column {e.colno})") from None
            except RecursionError:
                raise InputError(f"{where}: not valid JSON here (nested too deeply)") from None
            yield where, row


_TYPES = {str: "a string", int: "an integer", list: "a list", dict: "an object"}


def _field(row, name: str, kind: type, where: str, optional: bool = False):
    """row[name], checked to be of `kind` (None allowed when optional); InputError naming it otherwise."""
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if name not in row:
        if optional:
            return None
        raise InputError(f"{where}: missing field '{name}'")
    value = row[name]
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InputError(f"{where}: field '{name}' must be {_TYPES[kind]}, got {json.dumps(value)[:60]}")
    return value


def _read_history(row, where: str) -> tuple[str, str, list[Session]]:
    """(user, setting, sessions) of one line of {split}_histories.jsonl, every field checked."""
    user = _field(row, "user", str, where)
    setting = _field(row, "setting", str, where, optional=True) or ""
    sessions, ids = [], set()
    for k, s in enumerate(_field(row, "sessions", list, where)):
        at = f"{where}: session {k}"
        index = _field(s, "index", int, at)
        if index != k:
            raise InputError(f"{at}: field 'index' must be {k} (its position in 'sessions'), got {index}")
        lines = []
        for j, l in enumerate(_field(s, "lines", list, at)):
            line_at = f"{at}, line {j}"
            line = Line(_field(l, "id", int, line_at), index, _field(l, "role", str, line_at),
                        _field(l, "text", str, line_at))
            if line.role not in ("user", "assistant"):
                raise InputError(f"{line_at}: field 'role' must be user or assistant, got {line.role!r}")
            if line.id in ids:
                raise InputError(f"{line_at}: line id {line.id} is used twice in this user's history")
            ids.add(line.id)
            lines.append(line)
        notes = _field(s, "notes", dict, at, optional=True)
        if notes is not None:
            session_ids = {l.id for l in lines}
            for key, statements in notes.items():
                if not key.lstrip("-").isdigit() or int(key) not in session_ids:
                    raise InputError(f"{at}: field 'notes' names line {key!r}, which is not a line of this session")
                if not isinstance(statements, list) or not all(isinstance(x, str) for x in statements):
                    raise InputError(f"{at}: field 'notes' of line {key} must be a list of strings")
            notes = {int(k): list(v) for k, v in notes.items()}
        sessions.append(Session(index, _field(s, "date", str, at), lines, notes))
    return user, setting, sessions


def _read_question(row, where: str, histories: dict, hpath: Path) -> Example:
    """One line of {split}_questions.jsonl, every field checked against its user's history."""
    user = _field(row, "user", str, where)
    if user not in histories:
        raise InputError(f"{where}: user '{user}' has no history in {hpath}")
    setting, sessions = histories[user]
    options = _field(row, "options", list, where)
    if len(options) != 4 or not all(isinstance(o, str) and o.strip() for o in options):
        raise InputError(f"{where}: field 'options' must hold exactly 4 non-empty strings, got {json.dumps(options)[:80]}")
    if len({normalise(o) for o in options}) != 4:  # the answer parser compares normalised text
        raise InputError(f"{where}: field 'options' must hold 4 distinct strings (ignoring case and "
                         f"punctuation), got {json.dumps(options)[:80]}")
    gold = _field(row, "gold", str, where)
    if gold not in LETTERS:
        raise InputError(f"{where}: field 'gold' must be one of a, b, c, d, got {gold!r}")
    evidence = _field(row, "evidence", list, where, optional=True)
    session = _field(row, "evidence_session", int, where, optional=True)
    if evidence is not None:
        if session is None or not 0 <= session < len(sessions):
            raise InputError(f"{where}: field 'evidence_session' must be a session index 0..{len(sessions) - 1} "
                             f"when 'evidence' is given, got {session}")
        held = {l.id for l in sessions[session].lines}
        if not evidence or not all(isinstance(i, int) and i in held for i in evidence):
            raise InputError(f"{where}: field 'evidence' must be a non-empty list of line ids of session "
                             f"{session}, got {json.dumps(evidence)[:80]}")
    elif session is not None and not 0 <= session < len(sessions):
        raise InputError(f"{where}: field 'evidence_session' {session} is not a session of user '{user}'")
    return Example(qid=_field(row, "qid", str, where), user=user, qtype=_field(row, "qtype", str, where),
                   question=_field(row, "question", str, where), options=list(options), gold=gold,
                   sessions=sessions, evidence=evidence, evidence_session=session, setting=setting)


def split_files(directory: str | Path, split: str) -> tuple[Path, Path]:
    """The two files of a split: {split}_histories.jsonl and {split}_questions.jsonl."""
    directory = Path(directory)
    return directory / f"{split}_histories.jsonl", directory / f"{split}_questions.jsonl"


def read_split(directory: str | Path, split: str) -> list[Example]:
    """Read a split written by `write_split`. Every field is checked (types, four distinct options, gold
    a-d, evidence ids that exist in the evidence session, unique line ids, a non-empty split); an error
    is an InputError naming the file, the line and the field."""
    hpath, qpath = split_files(directory, split)
    histories: dict[str, tuple[str, list[Session]]] = {}
    for where, row in read_jsonl(hpath):
        user, setting, sessions = _read_history(row, where)
        if user in histories:
            raise InputError(f"{where}: user '{user}' already has a history in this file")
        histories[user] = (setting, sessions)
    examples, qids = [], set()
    for where, row in read_jsonl(qpath):
        ex = _read_question(row, where, histories, hpath)
        if ex.qid in qids:
            raise InputError(f"{where}: field 'qid' {ex.qid!r} is used twice")
        qids.add(ex.qid)
        examples.append(ex)
    if not examples:
        raise InputError(f"{qpath}: the split '{split}' has no questions")
    return examples
