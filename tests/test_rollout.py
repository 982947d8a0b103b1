"""The sequential MDP of Sec. 4.2 (assignment 4): comam.rollout with a scripted sampler.

The sampler is replaced by a script that answers each agent with text chosen from the prompt it was
given, and `Trajectory.score` by a recorder (the `scripted` fixture, conftest.py), so these tests
depend on comam.rollout alone.
"""
from __future__ import annotations

import pytest

import agents
import models
import comam
from agents import Budgets, MaxNew

pytestmark = pytest.mark.assignment4  # graded: see docs/assignment-handout.md


def test_groups_of_g_full_chains_per_query(scripted, toy_policy, toy_train):
    calls, scored, _ = scripted
    examples = toy_train[:2]
    policies = {r: toy_policy for r in agents.ROLES}
    groups = comam.rollout(policies, examples, 3, Budgets(), MaxNew(), temperature=1.0)
    assert [len(g) for g in groups] == [3, 3]
    # each agent is called once, on all Q x G = 6 inputs, in the order of the chain
    assert [(role, n) for role, n, _ in calls] == [("extraction", 6), ("profile", 6), ("retrieval", 6)]
    assert [m for _, _, m in calls] == [MaxNew().extraction, MaxNew().profile, MaxNew().retrieval]
    for ex, group in zip(examples, groups):
        for t in group:
            assert t.example is ex
            assert set(t.actions) == set(agents.ROLES)
    assert scored == [t for g in groups for t in g]  # every trajectory scored once, query-major


def test_each_state_is_the_previous_output(scripted, toy_policy, toy_train):
    calls, _, _ = scripted
    ex = toy_train[0]
    groups = comam.rollout({r: toy_policy for r in agents.ROLES}, [ex], 3, Budgets(), MaxNew())
    evidence_lines = ex.session_lines(ex.evidence_session)
    for k, t in enumerate(groups[0]):
        # H = the evidence session; M_f = the lines whose local numbers the extraction agent wrote
        n = k + 1  # the script's counter: extraction outputs "1+n%3 2+n%3"
        kept = sorted({1 + n % 3, 2 + n % 3})
        assert [l.id for l in t.memory_lines] == [evidence_lines[i - 1].id for i in kept]
        assert t.profile == [["pet cat milo", "pet dog rex"][(3 + n) % 2]]  # profile runs after all 3 extractions
        assert t.answer == "abcd"[(6 + n) % 4]
        # the actions keep the prompts and the sampled ids as they were
        assert t.actions["extraction"].prompt == agents.extraction_prompt(toy_policy, evidence_lines, Budgets())[0]
        assert t.actions["profile"].prompt == agents.profile_prompt(toy_policy, t.memory_lines, Budgets())
        assert t.actions["retrieval"].completion[-1] == toy_policy.eos_id
        assert all(a.ok for a in t.actions.values())


def test_every_agent_samples_at_the_given_temperature_with_the_given_generator(scripted, toy_policy, toy_train):
    import torch
    gen = torch.Generator().manual_seed(3)
    comam.rollout({r: toy_policy for r in agents.ROLES}, toy_train[:1], 2, Budgets(), MaxNew(), 0.7, gen)
    assert scripted[2] == [(0.7, gen)] * 3
