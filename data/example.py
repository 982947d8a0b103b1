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

LETTERS = "abcd"

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


def _field(row: dict, name: str, where: str):
    if name not in row:
        raise ValueError(f"{where}: missing field '{name}'")
    return row[name]


def read_jsonl(path: str | Path):
    """Yield (where, object) for each non-empty line of a UTF-8 JSONL file; where = "path:line".

    A line that is not valid UTF-8 or not valid JSON raises ValueError naming the file and line.
    """
    path = Path(path)
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{where}: not valid UTF-8 (byte {e.start + 1} of the line)") from None
            if not text.strip():
                continue
            try:
                yield where, json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None


def read_split(directory: str | Path, split: str) -> list[Example]:
    """Read a split written by `write_split`; errors name the file, line and field."""
    directory = Path(directory)
    histories: dict[str, tuple[str, list[Session]]] = {}
    hpath = directory / f"{split}_histories.jsonl"
    for where, row in read_jsonl(hpath):
        sessions = []
        for s in _field(row, "sessions", where):
            lines = [Line(int(_field(l, "id", where)), int(_field(s, "index", where)),
                          _field(l, "role", where), _field(l, "text", where))
                     for l in _field(s, "lines", where)]
            notes = s.get("notes")
            notes = None if notes is None else {int(k): list(v) for k, v in notes.items()}
            sessions.append(Session(int(s["index"]), _field(s, "date", where), lines, notes))
        histories[_field(row, "user", where)] = (row.get("setting", ""), sessions)
    qpath = directory / f"{split}_questions.jsonl"
    examples = []
    for where, row in read_jsonl(qpath):
        user = _field(row, "user", where)
        if user not in histories:
            raise ValueError(f"{where}: user '{user}' has no history in {hpath}")
        options = _field(row, "options", where)
        gold = _field(row, "gold", where)
        if len(options) != 4 or gold not in LETTERS:
            raise ValueError(f"{where}: field 'options' must hold 4 strings and 'gold' one of a-d")
        setting, sessions = histories[user]
        examples.append(Example(
            qid=_field(row, "qid", where), user=user, qtype=_field(row, "qtype", where),
            question=_field(row, "question", where), options=list(options), gold=gold,
            sessions=sessions, evidence=row.get("evidence"), evidence_session=row.get("evidence_session"),
            setting=setting))
    return examples
