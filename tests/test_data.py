"""The synthetic benchmark: determinism, evidence, distractors, splits, the JSONL format."""
from __future__ import annotations

import json

import pytest

from data.example import LETTERS, QUESTION_TYPES, read_split
from data.generate import REASONS, SETTINGS, generate_splits


def test_same_seed_gives_byte_identical_files(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_splits(a, 10, 3, 3, seed=7)
    generate_splits(b, 10, 3, 3, seed=7)
    generate_splits(c, 10, 3, 3, seed=8)
    for f in sorted(p.name for p in a.iterdir()):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert (a / "train_histories.jsonl").read_bytes() != (c / "train_histories.jsonl").read_bytes()


def test_all_seven_types_and_three_settings(toy_train):
    assert {ex.qtype for ex in toy_train} == set(QUESTION_TYPES)
    assert {ex.setting for ex in toy_train} == set(SETTINGS)
    for ex in toy_train:
        assert len(ex.sessions) == SETTINGS[ex.setting]


def test_evidence_lines_exist_and_support_the_gold(toy_train):
    for ex in toy_train:
        lines = {l.id: l for l in ex.lines}
        assert ex.evidence and all(i in lines for i in ex.evidence), ex.qid
        ev = [lines[i] for i in ex.evidence]
        assert all(l.session == ex.evidence_session and l.role == "user" for l in ev), ex.qid
        text = " ".join(l.text for l in ev)
        gold = ex.gold_text
        if ex.qtype == QUESTION_TYPES[1]:  # never mentioned: the gold is nowhere, the distractors are in E_q
            assert all(f" {gold} " not in f" {l.text} " for l in ex.lines), ex.qid
            for o in ex.options:
                if o != gold:
                    assert f" {o} " in f" {text} ", (ex.qid, o)
        elif ex.qtype == QUESTION_TYPES[3]:  # "from old to new": both values in the change line
            _, old, _, new = gold.split()
            assert f" {old} " in text and f" {new} " in f" {text} ", ex.qid
            assert f"love {old} " in text or f"instead of {old} " in text, ex.qid  # old is the stale one
        elif ex.qtype == QUESTION_TYPES[6]:  # generalisation: the line states the reason behind the gold
            reason = next(r for r, implied in REASONS if implied == gold)
            assert reason in text, ex.qid
        else:
            value = gold.removeprefix("something with ")
            assert f" {value} " in f" {text} ", (ex.qid, value, text)


def test_distractors_differ_from_the_gold(toy_train):
    for ex in toy_train:
        assert len(ex.options) == 4 and len(set(ex.options)) == 4, ex.qid
        assert ex.gold in LETTERS and ex.options.count(ex.gold_text) == 1


def test_latest_preference_has_a_stale_distractor(toy_train):
    for ex in (e for e in toy_train if e.qtype == QUESTION_TYPES[2]):
        line = next(l for l in ex.lines if l.id == ex.evidence[0])
        stale = [o for o in ex.options if o != ex.gold_text and f" {o} " in f" {line.text} "]
        assert stale, ex.qid


def test_splits_share_no_user(toy_data):
    users = {s: {ex.user for ex in read_split(toy_data, s)} for s in ("train", "val", "test")}
    assert not users["train"] & users["val"] and not users["train"] & users["test"] and not users["val"] & users["test"]


def test_jsonl_round_trip_and_clear_errors(toy_data, tmp_path):
    exs = read_split(toy_data, "val")
    assert exs[0].sessions[0].notes and all(isinstance(k, int) for k in exs[0].sessions[0].notes)
    rows = (toy_data / "val_questions.jsonl").read_text().splitlines()
    bad = json.loads(rows[1])
    del bad["gold"]
    (tmp_path / "val_questions.jsonl").write_text("\n".join([rows[0], json.dumps(bad)]) + "\n")
    (tmp_path / "val_histories.jsonl").write_text((toy_data / "val_histories.jsonl").read_text())
    with pytest.raises(ValueError, match=r"val_questions.jsonl:2: missing field 'gold'"):
        read_split(tmp_path, "val")
