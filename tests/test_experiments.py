"""Experiments beyond the paper (experiments.py): --mislead, --context-sessions, --extraction-alpha,
--retrieval-needs-answer."""
from __future__ import annotations

import pytest

import agents
import comam
import experiments
import rewards
from agents import Budgets, MaxNew


@pytest.mark.uses_solutions
def test_prior_memory_comes_before_the_new_memory_in_the_retrieval_prompt(scripted, toy_policy, toy_train, monkeypatch):
    seen = []
    real = agents.retrieval_prompt
    monkeypatch.setattr(agents, "retrieval_prompt", lambda policy, memory, profile, *a: seen.append((memory, profile))
                        or real(policy, memory, profile, *a))
    exs = [ex for ex in toy_train if ex.evidence_session >= 2][:2]
    prior = [experiments.prior_memory(ex, 2) for ex in exs]
    assert all(lines and statements for lines, statements in prior)  # something to put in front
    groups = experiments.rollout_with_prior_memory({r: toy_policy for r in agents.ROLES}, exs, 2, Budgets(),
                                                   MaxNew(), 1.0, None, 2)
    trajs = [t for g in groups for t in g]
    assert seen[:len(trajs)] == [(t.memory_lines, t.profile) for t in trajs]  # comam.rollout's own step first
    for k, t in enumerate(trajs):  # then the step that counts, with the prior memory in front
        lines, statements = prior[k // 2]
        assert seen[len(trajs) + k] == (lines + t.memory_lines, statements + t.profile)


def test_planted_misleading_rewards_replace_one_agent_and_log_its_own():
    from data.example import Line
    act = comam.Action(prompt=[1], completion=[2], text="x", ok=True)
    user, bot = Line(0, 0, "user", "i have a cat ."), Line(1, 0, "assistant", "nice .")
    t1 = comam.Trajectory(example=None, memory_lines=[user, bot], profile=["a", "b"], actions={r: act for r in agents.ROLES},
                          local_rewards=[0.9, 0.5, 0.2], global_reward=1.0)
    t2 = comam.Trajectory(example=None, memory_lines=[bot], profile=["a"] * 10, actions={r: act for r in agents.ROLES},
                          local_rewards=[0.1, 0.3, 0.2], global_reward=0.0)
    assert experiments.plant_misleading_reward([[t1, t2]], "extraction") == pytest.approx(0.5)  # mean of 0.9 and 0.1
    assert [t1.local_rewards[0], t2.local_rewards[0]] == [0.5, 1.0]  # assistant share of the kept lines
    assert experiments.plant_misleading_reward([[t1, t2]], "profile") == pytest.approx(0.4)
    assert [t1.local_rewards[1], t2.local_rewards[1]] == [0.25, 1.0]  # statements / 8, at most 1
    assert t1.local_rewards[2] == 0.2 and t1.global_reward == 1.0  # nothing else changes


def test_prior_memory_holds_the_sessions_before_the_evidence_session(toy_train):
    ex = next(e for e in toy_train if e.evidence_session >= 2)
    lines, statements = experiments.prior_memory(ex, 2)
    before = ex.sessions[ex.evidence_session - 2:ex.evidence_session]
    assert [l.id for l in lines] == [l.id for s in before for l in s.lines if l.id in s.notes]
    assert statements == [st for s in before for st in s.profile]
    assert experiments.prior_memory(ex, 0) == ([], [])
    assert {l.session for l in experiments.prior_memory(ex, 99)[0]} <= set(range(ex.evidence_session))


@pytest.mark.uses_solutions
def test_extraction_alpha_rescores_r0_by_eq9_and_logs_the_papers():
    from types import SimpleNamespace
    from data.example import Line
    lines = [Line(i, 0, "user", f"line {i} .") for i in range(1, 7)]
    ex = SimpleNamespace(evidence=[2])
    # r_0 as comam.Trajectory.score leaves it (α = 0.8), worked by hand
    keep_all = comam.Trajectory(example=ex, memory_lines=lines, local_rewards=[0.8 + 0.2 / 6, 0.5, 0.2], global_reward=1.0)
    keep_one = comam.Trajectory(example=ex, memory_lines=[lines[1]], local_rewards=[1.0, 0.5, 0.2])
    no_evidence = comam.Trajectory(example=SimpleNamespace(evidence=None), memory_lines=lines,
                                   local_rewards=[float("nan"), 0.5, 0.2])
    paper = experiments.rescore_extraction([[keep_all, keep_one], [no_evidence]], 0.5)
    assert paper == pytest.approx(((0.8 + 0.2 / 6) + 1.0) / 2)  # the NaN of the no-evidence query is left out
    assert keep_all.local_rewards[0] == pytest.approx(0.5 * 1 + 0.5 / 6)  # recall 1, IoU 1/6
    assert keep_one.local_rewards[0] == pytest.approx(1.0)
    assert no_evidence.local_rewards[0] != no_evidence.local_rewards[0]  # still unavailable (NaN)
    assert keep_all.local_rewards[1:] == [0.5, 0.2] and keep_all.global_reward == 1.0  # nothing else changes


def test_extraction_alpha_flag_is_checked():
    import train
    from cli import InputError
    from runs import check_args
    check_args(train.Args(extraction_alpha=0.3))
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(InputError, match="--extraction-alpha"):
            check_args(train.Args(extraction_alpha=bad))
    with pytest.raises(InputError, match="--mislead extraction"):
        check_args(train.Args(extraction_alpha=0.3, mislead="extraction"))
    assert experiments.active(train.Args(extraction_alpha=0.3)) and not experiments.active(train.Args())


@pytest.mark.uses_solutions
def test_retrieval_needs_answer_zeroes_r2_of_an_output_that_does_not_parse():
    from data.example import Line
    shown, opts = [Line(2, 0, "user", "i have a dog called rex ."), Line(3, 0, "assistant", "nice .")], ["a", "b", "c", "d"]

    def traj(text):  # r_2 as comam.Trajectory.score leaves it: Eq. 11 on the ids the parser read
        ids, letter, ok = agents.parse_answer(text, shown, opts)
        act = comam.Action(prompt=[1], completion=[2], text=text, ok=ok)
        r2 = rewards.retrieval_reward(ids, [2])
        return comam.Trajectory(example=None, retrieved=ids, answer=letter, actions={"retrieval": act},
                                local_rewards=[0.5, 0.5, r2], global_reward=0.0)

    # shown line 1 is the evidence (global id 2)
    lines_only = traj("<information> 1 </information> <final_answer> <information> 1 </information> </final_answer>")
    answered = traj("<information> 1 2 </information> <final_answer> (b) </final_answer>")
    unavailable = traj("<information> 1 </information> <final_answer> (b) </final_answer>")
    unavailable.local_rewards[2] = float("nan")  # no evidence (PersonaMem)
    assert lines_only.local_rewards[2] == 1.0 and not lines_only.actions["retrieval"].ok  # what Eq. 11 pays today
    assert answered.local_rewards[2] == pytest.approx(0.2 * 1 + 0.8 * 1 / 2)
    paper = experiments.zero_retrieval_reward_without_answer([[lines_only, answered], [unavailable]])
    assert paper == pytest.approx((1.0 + 0.6) / 2)
    assert lines_only.local_rewards == [0.5, 0.5, 0.0]  # no answer read: nothing for the lines
    assert answered.local_rewards[2] == pytest.approx(0.6)  # parsed: unchanged
    assert unavailable.local_rewards[2] != unavailable.local_rewards[2]  # still NaN
    import train
    assert experiments.active(train.Args(retrieval_needs_answer=True))
