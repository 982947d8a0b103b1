"""Tests for data/personamem.py on a hand-written fixture in PersonaMem's exact format.

Fixture (tests/fixtures/personamem/), counted by hand:
  context A (7e3b...): 16 messages; system at 0, 5, 9  -> full sessions of 4 / 3 / 6 lines
  context B (4c0a...):  9 messages; system at 0, 4     -> full sessions of 3 / 4 lines
  rows 1-2: A, end 15 -> messages[:15] -> sessions 4 / 3 / 5 lines (final assistant turn cut)
  row 3:    A, end 9  -> messages[:9]  -> sessions 4 / 3 lines (system 9 itself excluded)
  row 4:    A, end 6  -> messages[:6]  -> 1 session of 4 lines (system 5 opens an empty session: dropped)
  rows 5-6: B, end 8  -> messages[:8]  -> sessions 3 / 3 lines
"""
from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import pytest

from data.personamem import load_personamem, split_sessions, summary

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "personamem"
QCSV = FIXTURES / "questions_fixture.csv"
CJSONL = FIXTURES / "shared_contexts_fixture.jsonl"
CTX_A = "7e3b9d1c2a4f6e8b0c1d3e5f7a9b2c4d6e8f0a1b3c5d7e9f1a2b4c6d8e0f1a2b"
CTX_B = "4c0a8e2f6b1d9c3e7a5f0b2d4e6c8a1f3b5d7e9c0a2f4b6d8e1c3a5f7b9d0e2c"
# the real 128k sample (questions_128k.csv, shared_contexts_128k.jsonl): $PERSONAMEM_DIR, else beside the checkout
REAL = Path(os.environ.get("PERSONAMEM_DIR", Path(__file__).resolve().parents[2] / "shared/data/personamem_128k"))


@pytest.fixture(scope="module")
def examples():
    return load_personamem(QCSV, CJSONL, setting="fixture")


# ---------------------------------------------------------------- the fixture loads as counted by hand

def test_counts_and_fields(examples):
    assert len(examples) == 6
    assert [ex.user for ex in examples] == [CTX_A] * 4 + [CTX_B] * 2
    assert examples[0].qid == "5d2e8f1a-3c47-4b9e-a061-7f2c9d4e8b13"
    assert examples[4].qtype == "recommendation_aligned_with_users_latest_preferences"
    assert examples[4].question == "After my next night shift, what should I cook to unwind?"
    assert all(ex.setting == "fixture" for ex in examples)
    assert len({ex.qid for ex in examples}) == 6


def test_gold_letters(examples):
    assert [ex.gold for ex in examples] == ["b", "c", "a", "d", "c", "a"]
    assert examples[0].gold_text == "You were caught off guard by the twist involving the lighthouse keeper."


def test_option_prefixes_stripped(examples):
    for ex in examples:
        assert len(ex.options) == 4
        assert all(not re.match(r"^\([a-d]\)", o) and o == o.strip() for o in ex.options)
    assert examples[0].options[0] == "You said the ending with the harbour master felt predictable."
    # a double-quoted literal holding an apostrophe
    assert examples[1].options[2].startswith("I recall you wanted a break")
    assert "you're ready" in examples[1].options[2]
    assert examples[4].options[0] == "A quick stir-fry, so you're done in ten minutes."
    assert examples[5].options[1] == "No, you said you don't like anything repetitive."
    # "(d)  Your ..." has two spaces after the prefix
    assert examples[2].options[3] == "Your tastes have not changed at all."


def test_sessions_split_at_system_messages(examples):
    ex = examples[0]  # context A, end 15
    assert [len(s.lines) for s in ex.sessions] == [4, 3, 5]
    assert [s.index for s in ex.sessions] == [0, 1, 2]
    assert [line.id for line in ex.lines] == list(range(12))
    for s in ex.sessions:
        assert s.date == "" and s.profile is None
        assert all(line.session == s.index for line in s.lines)
    assert [line.role for line in ex.sessions[0].lines] == ["user", "assistant", "user", "assistant"]
    assert not any("Current user persona" in line.text for line in ex.lines)  # system messages are no lines
    first = ex.sessions[0].lines[0]
    assert first.text.startswith("User: I finally finished the first mystery novel")  # prefix kept
    assert "(01/09/2024)" in first.text
    # whitespace collapsed (runs of spaces, newlines)
    assert ex.sessions[0].lines[2].text == ("User: I think I prefer mysteries set near the sea, "
                                           "probably because of my work. They feel familiar.")
    assert ex.sessions[0].lines[3].text == ("Assistant: That makes sense. Coastal settings add atmosphere: "
                                           "storms, tides and isolated harbours can all shape a plot.")
    assert ex.sessions[2].lines[1].text.startswith("A simple reading log works well: 1. Title and author 2.")
    b = examples[4]  # context B, end 8
    assert [len(s.lines) for s in b.sessions] == [3, 3]
    assert b.sessions[0].lines[0].text.startswith("Patient: Night shifts")
    assert b.sessions[1].lines[2].text == "User: My kids don\u2019t like beans, though. Maybe a chicken stew instead?"


def test_history_cut_at_end_index(examples):
    a15, a9, a6 = examples[0], examples[2], examples[3]
    # messages[:15]: the final assistant message (index 15) is not visible
    assert a15.lines[-1].text == "User: So far the alpine thriller I read last week scores the highest."
    assert len(a15.lines) == 12
    assert [len(s.lines) for s in a9.sessions] == [4, 3]
    assert a9.lines[-1].text == "User: Yes, something set in the mountains would be perfect."
    assert [len(s.lines) for s in a6.sessions] == [4]  # the empty session after system 5 is dropped
    assert [line.id for line in a6.lines] == [0, 1, 2, 3]
    assert examples[4].lines[-1].text.startswith("User: My kids")
    assert [ex.meta["end_index"] for ex in examples] == [15, 15, 9, 6, 8, 8]


def test_no_evidence(examples):
    for ex in examples:
        assert ex.evidence is None and ex.evidence_session is None


def test_meta_keeps_other_columns(examples):
    assert examples[0].meta["topic"] == "bookRecommendation"
    assert examples[5].meta["stereotypical"] == "Yes"
    assert examples[0].meta["distance_to_ref_proportion_in_context"] == "92.34%"
    assert "question" not in examples[0].meta and "all_options" not in examples[0].meta


def test_sessions_shared_between_questions(examples):
    assert examples[0].sessions is examples[1].sessions
    assert examples[4].sessions is examples[5].sessions
    assert examples[0].sessions is not examples[2].sessions
    assert examples[2].sessions is not examples[3].sessions


def test_summary(examples):
    s = summary(examples)
    assert s["questions"] == 6 and s["contexts"] == 2 and s["histories"] == 4
    assert s["sessions_per_context"] == {CTX_A: 3, CTX_B: 2}
    assert s["lines_per_context"] == {CTX_A: 12, CTX_B: 6}
    assert sum(s["per_type"].values()) == 6


def test_messages_before_first_system_form_session_0():
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
            {"role": "system", "content": "persona"}, {"role": "system", "content": "persona"},
            {"role": "user", "content": "again"}]
    sessions = split_sessions(msgs)
    assert [[(l.id, l.session, l.text) for l in s.lines] for s in sessions] == \
        [[(0, 0, "hi"), (1, 0, "hello")], [(2, 1, "again")]]


# ---------------------------------------------------------------- malformed inputs

def _rows():
    with open(QCSV, encoding="utf-8", newline="") as f:
        return list(csv.reader(f))


def _write_csv(tmp_path: Path, rows, name="bad_questions.csv") -> Path:
    path = tmp_path / name
    with open(path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    return path


def _with_cell(tmp_path: Path, row: int, column: str, value: str) -> Path:
    """Copy of the fixture CSV with data row `row` (1-based) having `column` = value."""
    rows = _rows()
    rows[row][rows[0].index(column)] = value
    return _write_csv(tmp_path, rows)


@pytest.mark.parametrize("cell", [
    "('(a) x', '(b) y', '(c) z', '(d) w')",  # a tuple, not a list
    "'(a) x'",  # a string
    "['(a) x', '(b) y', '(c) z']",  # 3 options
    "['(a) x', '(b) y', '(c) z'",  # syntax error
    "[1, 2, 3, 4]",  # not strings
    "['(a) x', '(c) y', '(b) z', '(d) w']",  # prefixes out of order
])
def test_bad_options(tmp_path, cell):
    path = _with_cell(tmp_path, 3, "all_options", cell)
    with pytest.raises(ValueError, match=r"bad_questions\.csv: row 3 \(line 4\): field 'all_options'"):
        load_personamem(path, CJSONL)


@pytest.mark.parametrize("column", ["correct_answer", "all_options", "end_index_in_shared_context"])
def test_missing_column(tmp_path, column):
    rows = _rows()
    i = rows[0].index(column)
    path = _write_csv(tmp_path, [r[:i] + r[i + 1:] for r in rows])
    with pytest.raises(ValueError, match=rf"bad_questions\.csv: missing column '{column}'"):
        load_personamem(path, CJSONL)


def test_unknown_context_id(tmp_path):
    path = _with_cell(tmp_path, 5, "shared_context_id", "deadbeef0123")
    with pytest.raises(ValueError, match=r"bad_questions\.csv: row 5 \(line 6\): field 'shared_context_id' "
                                         r"'deadbeef0123' is not in .*shared_contexts_fixture\.jsonl"):
        load_personamem(path, CJSONL)


@pytest.mark.parametrize("answer", ["(e)", "", "c)x", "answer c", "(C)"])
def test_bad_correct_answer(tmp_path, answer):
    path = _with_cell(tmp_path, 2, "correct_answer", answer)
    with pytest.raises(ValueError, match=r"bad_questions\.csv: row 2 \(line 3\): field 'correct_answer'"):
        load_personamem(path, CJSONL)


@pytest.mark.parametrize("answer,gold", [("c", "c"), (" (c) ", "c"), ("a", "a")])
def test_correct_answer_forms(tmp_path, answer, gold):
    path = _with_cell(tmp_path, 2, "correct_answer", answer)
    assert load_personamem(path, CJSONL)[1].gold == gold


@pytest.mark.parametrize("value", ["17", "-1", "seven", "8.5"])
def test_bad_end_index(tmp_path, value):
    path = _with_cell(tmp_path, 4, "end_index_in_shared_context", value)
    with pytest.raises(ValueError, match=r"bad_questions\.csv: row 4 \(line 5\): field 'end_index_in_shared_context'"):
        load_personamem(path, CJSONL)


def test_end_index_equal_to_length_shows_everything(tmp_path):
    path = _with_cell(tmp_path, 1, "end_index_in_shared_context", "16")
    ex = load_personamem(path, CJSONL)[0]
    assert [len(s.lines) for s in ex.sessions] == [4, 3, 6]


def test_row_line_numbers_count_multiline_fields(tmp_path):
    rows = _rows()
    rows[1][rows[0].index("question")] = "a question\nover\nthree lines"
    rows[2][rows[0].index("correct_answer")] = "(z)"
    path = _write_csv(tmp_path, rows)
    with pytest.raises(ValueError, match=r"bad_questions\.csv: row 2 \(line 5\): field 'correct_answer'"):
        load_personamem(path, CJSONL)


def test_duplicate_question_id(tmp_path):
    rows = _rows()
    rows[4][0] = rows[1][0]
    path = _write_csv(tmp_path, rows)
    with pytest.raises(ValueError, match=r"bad_questions\.csv: row 4 \(line 5\): field 'question_id'"):
        load_personamem(path, CJSONL)


def test_bad_json_line(tmp_path):
    lines = CJSONL.read_text(encoding="utf-8").splitlines()
    path = tmp_path / "bad_contexts.jsonl"
    path.write_text(lines[0] + "\n\n" + lines[1][:-3] + "\n", encoding="utf-8")  # line 3, truncated
    with pytest.raises(ValueError, match=r"bad_contexts\.jsonl:3: not valid JSON"):
        load_personamem(QCSV, path)


@pytest.mark.parametrize("drop", ["role", "content"])
def test_message_missing_field(tmp_path, drop):
    lines = CJSONL.read_text(encoding="utf-8").splitlines()
    obj = json.loads(lines[1])
    del obj[CTX_B][3][drop]
    path = tmp_path / "bad_contexts.jsonl"
    path.write_text(lines[0] + "\n" + json.dumps(obj) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad_contexts\.jsonl:2: .*message 3 .*'role' and 'content'"):
        load_personamem(QCSV, path)


def test_unknown_role(tmp_path):
    lines = CJSONL.read_text(encoding="utf-8").splitlines()
    obj = json.loads(lines[0])
    obj[CTX_A][2]["role"] = "tool"
    path = tmp_path / "bad_contexts.jsonl"
    path.write_text(json.dumps(obj) + "\n" + lines[1] + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad_contexts\.jsonl:1: .*message 2 has unknown role 'tool'"):
        load_personamem(QCSV, path)


# ---------------------------------------------------------------- the real sample (skipped in a bare clone)

def test_real_personamem_128k_sample():
    qcsv, cjsonl = REAL / "questions_128k.csv", REAL / "shared_contexts_128k.jsonl"
    if not (qcsv.exists() and cjsonl.exists()):
        pytest.skip(f"real PersonaMem sample not found at {REAL}")
    examples = load_personamem(qcsv, cjsonl, setting="128k")
    s = summary(examples)
    assert s["questions"] == 270 and s["contexts"] == 2
    assert set(s["sessions_per_context"].values()) == {20}
    assert len(s["per_type"]) == 6
    assert s["gold"] == {"a": 65, "b": 68, "c": 70, "d": 67}
    # 698 / 718 messages, 20 system messages each, final message cut by end index 697 / 717
    assert sorted(s["lines_per_context"].values()) == [677, 697]
    assert len({id(ex.sessions) for ex in examples}) == 2
    assert all(ex.evidence is None and len(ex.options) == 4 for ex in examples)
