"""Train as deployed (`train.py --train-sessions K`, docs/method.md decision 21): a training trajectory
is comam.build_memory over the evidence session and the K sessions before it, then comam.answer.

The sampler is replaced by a script that records every call (prompt, sampled ids), so that what a
trajectory holds can be checked against what the policy was actually asked and answered.
"""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

import agents
import comam
import models
import train
from agents import Budgets, MaxNew


@pytest.fixture
def recorded(monkeypatch):
    """models.sample answers from a script that varies per call; every (prompt, completion) it
    returned is recorded, in order."""
    calls = []

    def sample(policy, prompts, max_new_tokens, temperature=1.0, batch_size=256, generator=None, progress=None):
        outs = []
        for p in prompts:
            n, text = len(calls), policy.tokenizer.decode(p)
            out = ("none" if n % 5 == 0 else f"{1 + n % 3} {2 + n % 4}") if text.startswith("extract") else \
                ["pet cat milo", "pet dog rex"][n % 2] if text.startswith("profile") else \
                f"<information> 1 </information> <final_answer> ( {'abcd'[n % 4]} ) </final_answer>"
            outs.append(policy.tokenizer(out, add_special_tokens=False).input_ids + [policy.eos_id])
            calls.append((list(p), outs[-1]))
        return outs, [[-0.5] * len(o) for o in outs]

    monkeypatch.setattr(models, "sample", sample)
    return calls


def _examples(toy_train, k):
    """Two questions whose window of k earlier sessions is full, and one whose history starts later."""
    full = [ex for ex in toy_train if ex.evidence_session >= k][:2]
    short = [ex for ex in toy_train if 0 < ex.evidence_session < k][:1]
    assert len(full) == 2 and len(short) == 1
    return full + short


@pytest.mark.uses_solutions
def test_a_trajectory_over_k_sessions_holds_exactly_the_policys_own_actions(recorded, toy_policy, toy_train):
    k, g = 2, 2
    policies = {r: toy_policy for r in agents.ROLES}
    examples = _examples(toy_train, k)
    groups = comam.rollout_over_history(policies, examples, g, k, Budgets(), MaxNew())
    trajs = [t for grp in groups for t in grp]
    assert [[t.example for t in grp] for grp in groups] == [[ex] * g for ex in examples]
    for t in trajs:
        window = list(range(max(0, t.example.evidence_session - k), t.example.evidence_session + 1))
        # K + 1 extraction actions (fewer where the history starts later), one per session, in order,
        # each on that session's lines
        ext = t.taken("extraction")
        assert [a.prompt for a in ext] == [agents.extraction_prompt(toy_policy, t.example.session_lines(s), Budgets())[0]
                                           for s in window]
        assert len(t.taken("profile")) == len(window) and len(t.taken("retrieval")) == 1
        assert t.actions["extraction"] is ext[-1]  # the last action of each agent: the evidence session's
    # every sampled (prompt, completion) belongs to exactly one trajectory's actions, and no action was
    # not sampled: the trajectories hold the policy's own actions, all of them, nothing else
    held = [(a.prompt, a.completion) for t in trajs for r in agents.ROLES for a in t.taken(r) if a.completion]
    assert Counter(map(repr, held)) == Counter(map(repr, recorded))
    assert any(not a.completion for t in trajs for a in t.taken("profile"))  # "none" kept: profile not called


@pytest.mark.uses_solutions
def test_every_action_of_a_trajectory_is_trained_with_its_advantage(recorded, toy_policy, toy_train):
    k, g = 2, 4
    examples = _examples(toy_train, k)
    groups = comam.rollout_over_history({r: toy_policy for r in agents.ROLES}, examples, g, k, Budgets(), MaxNew())
    for q, grp in enumerate(groups):  # rewards set by hand: trajectory i of group q
        for i, t in enumerate(grp):
            t.local_rewards = [float(i), float((i * 3) % 4), float(q + i % 2)]
            t.global_reward = float(i % 2)
    batches, _ = train.credit_step(groups, train.Args(credit="local"))  # r_final = the local reward
    for n, role in enumerate(agents.ROLES):
        expected = []
        for grp in groups:
            r = np.array([t.local_rewards[n] for t in grp])
            adv = (r - r.mean()) / (r.std() + 1e-6) if r.std() > 1e-8 else np.zeros_like(r)  # Eq. 7, by hand
            expected += [(a.prompt, a.completion, pytest.approx(float(x))) for t, x in zip(grp, adv)
                         for a in t.taken(role) if a.completion]
        assert batches[role] == expected
    assert len(batches["extraction"]) > len(examples) * g  # several actions per trajectory


@pytest.mark.uses_solutions
def test_the_memory_the_answer_agent_sees_is_what_build_memory_builds_from_those_actions(recorded, toy_policy, toy_train,
                                                                                     monkeypatch):
    k, budgets = 3, Budgets()
    policies = {r: toy_policy for r in agents.ROLES}
    groups = comam.rollout_over_history(policies, _examples(toy_train, k), 2, k, budgets, MaxNew())
    for t in (t for grp in groups for t in grp):
        ex = t.example
        window = list(range(max(0, ex.evidence_session - k), ex.evidence_session + 1))
        # by hand: M_f = the lines whose local numbers each extraction action wrote, session after
        # session; M_c = each profile action's statements
        lines, statements = [], []
        for s, acts in zip(window, t.memory.actions):
            shown = ex.session_lines(s)
            text = acts["extraction"].text
            lines += [] if text == "none" else [shown[i - 1] for i in sorted({int(w) for w in text.split()}) if i <= len(shown)]
            statements += [x.strip() for x in acts["profile"].text.split(";") if x.strip()]
        assert t.memory_lines == lines and t.profile == statements
        # the retrieval agent's prompt is made of exactly that memory, with the deployed budgets
        assert t.actions["retrieval"].prompt == agents.retrieval_prompt(toy_policy, lines, statements, ex.question,
                                                                        ex.options, budgets)[0]
        # and build_memory, replaying this trajectory's own sampled ids, builds the same memory
        replay = [a[r].completion for a in t.memory.actions for r in ("extraction", "profile") if a[r].completion]
        monkeypatch.setattr(models, "sample", lambda policy, prompts, *a, **kw: ([replay.pop(0) for _ in prompts], None))
        built = comam.build_memory(policies, {"u": [ex.session_lines(s) for s in window]}, budgets, MaxNew(), 1.0)["u"]
        assert not replay and built.memory_lines == t.memory_lines and built.profile == t.profile
        assert built.sessions == window


@pytest.mark.uses_solutions
def test_rewards_over_a_history_score_all_kept_lines_and_every_sessions_statements(toy_train):
    ex = next(e for e in toy_train if e.evidence_session >= 1 and e.sessions[e.evidence_session - 1].notes)
    before, evid = ex.sessions[ex.evidence_session - 1], ex.sessions[ex.evidence_session]
    kept = [l for l in before.lines if l.id in before.notes][:2] + [l for l in evid.lines if l.id in ex.evidence]
    memory = comam.Memory(memory_lines=kept, sessions=[before.index, evid.index])
    said = before.profile[:1] + ["not a fact at all"]
    t = comam.Trajectory(ex, kept, said, retrieved=list(ex.evidence), answer=ex.gold, memory=memory)
    t.score()
    e = set(ex.evidence)
    assert t.local_rewards[0] == pytest.approx(0.8 * 1 + 0.2 * len(e) / len(e | {l.id for l in kept}))  # Eq. 9
    gold = set(before.profile + evid.profile)
    assert t.local_rewards[1] == pytest.approx(max(0, 1 - 1) / len(gold))  # one right, one unsupported
    t.profile = before.profile[:2]
    t.score()
    assert t.local_rewards[1] == pytest.approx(len(set(before.profile[:2])) / len(gold))
    assert t.local_rewards[2] == 1.0 and t.global_reward == 1.0


def _run(toy_data, toy_warmstart, out, **kw):
    base = dict(data=str(toy_data), model=str(toy_warmstart), out=str(out), steps=2, queries=2, group_size=2,
                eval_users=1, save_every=2, lr=1e-3, seed=3)
    return train.Args(**(base | kw))


TIMING = ("step_s", "gen_tok_s", "upd_tok_s")  # wall-clock: the only keys two identical runs differ in


def _log(folder):
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (folder / "log.jsonl").read_text().splitlines()]


@pytest.mark.uses_solutions
def test_k0_is_the_papers_setting_bit_for_bit(toy_data, toy_warmstart, tmp_path, varied_rewards, monkeypatch):
    from test_train import _params
    import torch
    train.main(_run(toy_data, toy_warmstart, tmp_path / "a"))  # the flag absent
    monkeypatch.setattr(comam, "rollout_over_history", lambda *a, **k: pytest.fail("K = 0 must be the paper's rollout"))
    train.main(_run(toy_data, toy_warmstart, tmp_path / "b", train_sessions=0))
    a, b = _log(tmp_path / "a" / "comam-s3"), _log(tmp_path / "b" / "comam-s3")
    assert a == b and len(a) == 2 and "sessions" not in a[0]  # every logged number identical, to the last bit
    pa, pb = _params(tmp_path / "a" / "comam-s3" / "ckpt"), _params(tmp_path / "b" / "comam-s3" / "ckpt")
    assert all(torch.equal(pa[r][key], pb[r][key]) for r in agents.ROLES for key in pa[r])


@pytest.mark.uses_solutions
def test_a_run_over_k_sessions_trains_every_agent_and_logs_the_history(toy_data, toy_warmstart, tmp_path, varied_rewards):
    from test_train import _params
    import torch
    train.main(_run(toy_data, toy_warmstart, tmp_path, steps=1, save_every=1, train_sessions=2, exp_name="k2",
                    group_size=4))
    start, end = _params(toy_warmstart), _params(tmp_path / "k2-s3" / "ckpt")
    row = _log(tmp_path / "k2-s3")[0]
    changed = {r: any(not torch.equal(start[r][key], end[r][key]) for key in start[r]) for r in agents.ROLES}
    assert changed == {r: row[f"zero_std_{r}"] < 1 for r in agents.ROLES}  # trained wherever a group had signal
    assert changed["extraction"]
    assert 1 <= row["sessions"] <= 3 and row["actions_extraction"] == row["sessions"]
    assert row["gen_tokens"] > 0 and row["prompt_tokens"] > row["gen_tokens"]


def test_train_sessions_flag_is_checked():
    from cli import InputError
    from runs import check_args
    import experiments
    check_args(train.Args(train_sessions=3))
    with pytest.raises(InputError, match="--train-sessions"):
        check_args(train.Args(train_sessions=-1))
    with pytest.raises(InputError, match="--context-sessions"):
        check_args(train.Args(train_sessions=3, context_sessions=3))
    assert experiments.active(train.Args(train_sessions=1)) and not experiments.active(train.Args(train_sessions=0))
