"""Instructor-only checks (nbgrader's "hidden tests"): a second, random-input check of every graded
function against an independent reference. scripts/make_assignment.py leaves this folder out of the
student copy; scripts/grade.py runs them on a returned copy (docs/assignments.md). The references are
in make_cases.py, which also wrote the stored cases of the visible tests.
"""
from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch

import credit
import models
import rewards
import train
from make_cases import loss_by_loops, ndcg_by_permutations  # the references (this folder)


# ---------------------------------------------------------------- assignment 1

@pytest.mark.assignment1
def test_overlap_rewards_on_random_sets():
    rng = random.Random(11)
    for _ in range(200):
        gold = set(rng.sample(range(20), rng.randint(1, 6)))
        pred = [rng.randrange(25) for _ in range(rng.randint(0, 8))]
        p = set(pred)
        recall, iou = len(p & gold) / len(gold), len(p & gold) / len(p | gold)
        assert rewards.extraction_reward(pred, gold) == pytest.approx(0.8 * recall + 0.2 * iou)
        assert rewards.retrieval_reward(pred, gold) == pytest.approx(0.2 * recall + 0.8 * iou)


@pytest.mark.assignment1
def test_profile_and_global_rewards_on_random_inputs():
    rng = random.Random(12)
    pool = ["pet cat milo", "hometown oslo", "job nurse", "music likes jazz", "food dislikes tacos", "sister ana"]
    for _ in range(100):
        gold = rng.sample(pool, rng.randint(1, 4))
        said = rng.sample(pool, rng.randint(0, 5))
        right, wrong = len(set(said) & set(gold)), len(set(said) - set(gold))
        shouted = [s.upper() + "." for s in said]  # normalisation: case and trailing punctuation
        assert rewards.profile_reward(shouted, gold) == pytest.approx(max(0, right - wrong) / len(gold))
    for pred, gold in itertools.product(["a", "(B)", " c ", None, "(d)"], "abcd"):
        want = 0.0 if pred is None else float(pred.strip(" ()").lower() == gold)
        assert rewards.global_reward(pred, gold) == want


# ---------------------------------------------------------------- assignment 2

@pytest.mark.assignment2
def test_credit_on_random_groups():
    rng = np.random.default_rng(13)
    for _ in range(60):
        G = int(rng.integers(2, 6))
        local = rng.integers(0, 3, size=(3, G)) / 2  # many ties
        glob = rng.integers(0, 2, size=G).astype(float)
        r_final, v, w = credit.integrated_rewards(local, glob)
        want_v = [ndcg_by_permutations(list(row), list(glob)) for row in local]
        np.testing.assert_allclose(v, want_v, atol=1e-12)
        want_w = np.exp(want_v) / np.exp(want_v).sum()
        np.testing.assert_allclose(w, want_w, atol=1e-12)
        np.testing.assert_allclose(r_final, local + want_w[:, None] * glob[None, :], atol=1e-12)
        adv = credit.group_advantages(r_final)
        for row, a in zip(r_final, adv):
            std = row.std()
            np.testing.assert_allclose(a, 0.0 if std < 1e-8 else (row - row.mean()) / (std + 1e-6), atol=1e-9)


# ---------------------------------------------------------------- assignment 3

@pytest.mark.assignment3
def test_policy_loss_on_random_batches():
    g = torch.Generator().manual_seed(14)
    for agg in ("token", "sequence"):
        B, T = 4, 6
        logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 2
        old = logp + (torch.rand(B, T, generator=g, dtype=torch.float64) - 0.5)
        adv = torch.randn(B, generator=g, dtype=torch.float64)
        mask = (torch.rand(B, T, generator=g) < 0.7).double()
        mask[:, 0] = 1
        denom = mask.sum().item() if agg == "token" else B
        loss, _ = train.policy_loss(logp, old, adv, mask, 0.1, denom, agg)
        want = loss_by_loops(logp.tolist(), old.tolist(), adv.tolist(), mask.tolist(), 0.1, agg)
        assert loss.item() == pytest.approx(float(want), rel=1e-9)


@pytest.mark.assignment3
def test_completion_logprobs_on_random_lengths(toy_policy):
    g = torch.Generator().manual_seed(15)
    prompts = [torch.randint(2, 60, (int(n),), generator=g).tolist() for n in (2, 7, 4)]
    comps = [torch.randint(2, 60, (int(n),), generator=g).tolist() + [toy_policy.eos_id] for n in (3, 0, 5)]
    logp, mask = models.completion_logprobs(toy_policy.model, prompts, comps, toy_policy.pad_id, 0.5)
    with torch.no_grad():
        for i, (p, c) in enumerate(zip(prompts, comps)):
            logits = toy_policy.model(torch.tensor([p + c])).logits[0].double() / 0.5
            ref = [torch.log_softmax(logits[len(p) - 1 + k], -1)[tok].item() for k, tok in enumerate(c)]
            got = logp[i][mask[i] == 1]
            assert len(got) == len(c)
            assert torch.allclose(got.double(), torch.tensor(ref, dtype=torch.float64), atol=1e-5)


# ---------------------------------------------------------------- assignment 4

@pytest.mark.assignment4
def test_batched_greedy_sampling_equals_one_prompt_at_a_time(toy_policy):
    prompts = [[5, 6, 7, 8, 9], [10], [11, 12, 13]]
    together, _ = models.sample(toy_policy, prompts, 5, temperature=0.0)
    alone = [models.sample(toy_policy, [p], 5, temperature=0.0)[0][0] for p in prompts]
    assert together == alone
