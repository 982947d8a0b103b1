"""Instructor-only checks (nbgrader's "hidden tests"): a second, random-input check of every graded
function against an independent reference. scripts/make_assignment.py leaves this folder out of the
student copy; grade a returned copy by copying it back in (docs/assignments.md).
"""
from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
import torch

import agents
import credit
import rewards
import train


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

def _ndcg_by_permutations(local, gains):
    discount = [1 / math.log2(r + 2) for r in range(len(gains))]
    order = sorted(range(len(local)), key=lambda i: -local[i])
    if len(set(gains)) == 1:
        return 1.0
    # average over every order of the tied blocks
    blocks = [list(g) for _, g in itertools.groupby(order, key=lambda i: local[i])]
    total, count = 0.0, 0
    for perms in itertools.product(*(itertools.permutations(b) for b in blocks)):
        ranking = [i for b in perms for i in b]
        total += sum(gains[i] * d for i, d in zip(ranking, discount))
        count += 1
    ideal = sum(g * d for g, d in zip(sorted(gains, reverse=True), discount))
    return total / count / ideal


@pytest.mark.assignment2
def test_credit_on_random_groups():
    rng = np.random.default_rng(13)
    for _ in range(60):
        G = int(rng.integers(2, 6))
        local = rng.integers(0, 3, size=(3, G)) / 2  # many ties
        glob = rng.integers(0, 2, size=G).astype(float)
        r_final, v, w = credit.integrated_rewards(local, glob)
        want_v = [_ndcg_by_permutations(list(row), list(glob)) for row in local]
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
        per_seq, total = [], 0.0
        for i in range(B):
            s = sum(-min(math.exp(logp[i, t] - old[i, t]) * adv[i],
                         min(max(math.exp(logp[i, t] - old[i, t]), 0.9), 1.1) * adv[i])
                    for t in range(T) if mask[i, t])
            per_seq.append(s / mask[i].sum().item())
            total += s
        want = total / denom if agg == "token" else sum(per_seq) / B
        assert loss.item() == pytest.approx(float(want), rel=1e-9)


@pytest.mark.assignment3
def test_completion_logprobs_on_random_lengths(toy_policy):
    g = torch.Generator().manual_seed(15)
    prompts = [torch.randint(2, 60, (int(n),), generator=g).tolist() for n in (2, 7, 4)]
    comps = [torch.randint(2, 60, (int(n),), generator=g).tolist() + [toy_policy.eos_id] for n in (3, 0, 5)]
    logp, mask = agents.completion_logprobs(toy_policy.model, prompts, comps, toy_policy.pad_id, 0.5)
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
    together, _ = agents.sample(toy_policy, prompts, 5, temperature=0.0)
    alone = [agents.sample(toy_policy, [p], 5, temperature=0.0)[0][0] for p in prompts]
    assert together == alone
