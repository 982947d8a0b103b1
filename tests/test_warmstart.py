"""warmstart.py: continuing one agent alone, and the perfect-memory probe."""
from __future__ import annotations

import filecmp
import json

import pytest
import torch

import agents
import comam
import models
import warmstart
from agents import Budgets, MaxNew
from data.example import read_split


def _same_files(a, b) -> bool:
    cmp = filecmp.dircmp(a, b)
    return not (cmp.left_only or cmp.right_only or filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)[1])


def _weights(folder):
    model = models.load_policy(str(folder), agents.ROLES[0], "cpu").model
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_continuing_the_answer_agent_alone_copies_the_other_two_and_starts_from_its_own(toy_data, toy_warmstart, tmp_path):
    """--init-from DIR --role-weights 0,0,1 --keep-untrained: extraction and profile are DIR's files,
    byte for byte; the answer agent is trained, and a second such run starts from the first run's
    answer agent (not from DIR's extraction agent, which differs from it by then). Without
    --keep-untrained all three agents are the model trained here."""
    first, second, plain = tmp_path / "first", tmp_path / "second", tmp_path / "plain"
    args = warmstart.Args(data=str(toy_data), init_from=str(toy_warmstart), out=str(first), steps=2, batch_size=2,
                          role_weights="0,0,1", probe_every=0, keep_untrained=True)
    warmstart.main(args)
    for role in ("extraction", "profile"):
        assert _same_files(toy_warmstart / role, first / role)
    before, after = _weights(toy_warmstart / "retrieval"), _weights(first / "retrieval")
    assert any(not torch.equal(before[k], after[k]) for k in before)

    started = warmstart.start_policy(warmstart.Args(init_from=str(first), role_weights="0,0,1", keep_untrained=True),
                                     read_split(toy_data, "train"), "cpu")[0].model.state_dict()
    assert all(torch.equal(started[k], after[k]) for k in after)
    warmstart.main(warmstart.Args(**{**args.__dict__, "init_from": str(first), "out": str(second)}))
    assert _same_files(first / "extraction", second / "extraction")
    report = json.loads((second / "warmstart.json").read_text())
    assert report["continued_from"]["args"]["role_weights"] == "0,0,1"

    warmstart.main(warmstart.Args(**{**args.__dict__, "out": str(plain), "keep_untrained": False}))
    for role in ("extraction", "profile"):
        assert _same_files(plain / "retrieval", plain / role)


def test_the_probe_counts_correct_answers_and_format_failures_by_hand(toy_data, toy_policy, monkeypatch):
    """The answer agent is scripted per question: gold option, wrong option, or no tags. The probe's
    accuracy and format-failure share are those counts; it gives the agent the gold memory."""
    probes = [ex for ex in read_split(toy_data, "val") if ex.evidence_session is not None][:7]
    kinds = ["gold", "wrong", "broken", "gold", "gold", "broken", "wrong"]
    seen = []

    def run_retrieval(policy, items, budgets, max_new, temperature, generator=None, progress=None):
        seen.extend(items)
        out = []
        for (_, _, ex), kind in zip(items, kinds):
            wrong = next(letter for letter in "abcd" if letter != ex.gold)
            ok = kind != "broken"
            out.append(comam.Answered(comam.Action([], [], "", ok), [], None if not ok else
                                      ex.gold if kind == "gold" else wrong))
        return out
    monkeypatch.setattr(comam, "run_retrieval", run_retrieval)
    score, failures = warmstart.probe("retrieval", toy_policy, probes, Budgets(), MaxNew())
    assert score == pytest.approx(3 / 7) and failures == pytest.approx(2 / 7)
    for (lines, profile, ex) in seen:
        session = ex.sessions[ex.evidence_session]
        assert [l.id for l in lines] == [l.id for l in session.lines if l.id in session.notes]
        assert profile == session.profile
