"""Experiments beyond the paper, and the one place where they enter a training step.

    python train.py --train-sessions 3      # train as deployed: memory over the evidence session and 3 before it
    python train.py --mislead extraction    # plant a local reward that points the wrong way
    python train.py --context-sessions 3    # memory from earlier sessions in the retrieval agent's input
    python train.py --extraction-alpha 0.5  # Eq. 9 with less weight on recall (the paper: 0.8)
    python train.py --retrieval-needs-answer  # Eq. 11 paid only when the answer parses

`train.train_step` calls `rollout` below instead of `comam.rollout` when one of these flags is set
(`active`); nothing else in the core code knows about them.

--train-sessions K (docs/method.md, decision 21): a training trajectory is what deployment does, at
training size: `comam.rollout_over_history` runs `comam.build_memory` over the evidence session and
the K sessions before it, then `comam.answer`, and every action each agent took is trained with that
trajectory's advantage for that agent. Logged beside the usual keys (which describe the last action of
each agent): per trajectory, the sessions covered (`sessions`), the kept lines (`kept_lines`), the
actions of each agent (`actions_<agent>`, profile actions only where it was called) and their
format-failure rate (`format_fail_all_<agent>`); per step, the tokens the agents generated
(`gen_tokens`) and read in their prompts (`prompt_tokens`), the cost of a step.

--mislead AGENT replaces one agent's local reward by a planted one that points the wrong way
(`rewards.assistant_share_reward` for extraction, `rewards.statement_count_reward` for profile), to
see what credit assignment does with an agent whose local reward disagrees with the global one. The
agent's own reward (Eq. 9 or 10) is logged beside it as `paper_local_<agent>`.

--context-sessions N: in training the paper shows the agents only the evidence session (Sec. 4.2),
while deployment builds memory over the whole history. With N > 0 the retrieval agent's memory also
holds the informative lines and ground-truth statements of the N sessions before the evidence
session, as a perfect memory construction would have stored them, so that training sees distractor
memory as deployment does.

--extraction-alpha A re-scores the extraction agent's local reward r_0 (Eq. 9) with α = A instead of
the paper's 0.8. Why: Eq. 9 pays α for recall alone, so an agent that keeps every line of the session
earns at least α; a small model learns that within a few steps (docs/real-models.md) and fills its
memory. A lower α makes the IoU term, which charges for every kept line that is not evidence, count.
The paper's r_0 is logged beside it as `paper_local_extraction`.

--retrieval-needs-answer sets the retrieval agent's local reward r_2 (Eq. 11) to 0 when its output
does not parse (no answer read), so that an output that does not parse earns nothing as a whole.
Why: `agents.parse_answer` returns the line ids of an output whose answer fails, and Eq. 11 pays for
them; under Eq. 15 the answer agent then gives up at most w_2 (~1/3) by writing line numbers where
the answer goes, and a real model learned to do so within ten steps (docs/real-models.md, fourth
round). The paper's r_2 is logged beside it as `paper_local_retrieval`.
"""
from __future__ import annotations

import numpy as np

import agents
import comam
import rewards
from data.example import Example, Line


def active(args) -> bool:
    return (args.mislead != "none" or args.context_sessions > 0 or args.extraction_alpha != rewards.EXTRACTION_ALPHA
            or args.retrieval_needs_answer or args.train_sessions > 0)


def rollout(policies, queries: list[Example], args, budgets, max_new, generator) -> tuple[list, dict]:
    """comam.rollout with the experiments of `args` applied; returns (groups, extra log keys)."""
    extra = {}
    if args.train_sessions:
        groups = comam.rollout_over_history(policies, queries, args.group_size, args.train_sessions, budgets,
                                            max_new, args.temperature, generator)
        extra |= history_stats(groups)
    elif args.context_sessions:
        groups = rollout_with_prior_memory(policies, queries, args.group_size, budgets, max_new,
                                           args.temperature, generator, args.context_sessions)
    else:
        groups = comam.rollout(policies, queries, args.group_size, budgets, max_new, args.temperature, generator)
    if args.extraction_alpha != rewards.EXTRACTION_ALPHA:
        extra["paper_local_extraction"] = rescore_extraction(groups, args.extraction_alpha)
    if args.retrieval_needs_answer:
        extra["paper_local_retrieval"] = zero_retrieval_reward_without_answer(groups)
    if args.mislead != "none":
        extra[f"paper_local_{args.mislead}"] = plant_misleading_reward(groups, args.mislead)
    return groups, extra


def history_stats(groups) -> dict:
    """--train-sessions: what the trajectories over a history hold and cost (log keys; see above).
    Tokens count every action of every agent, prompt and completion (an agent not called adds none)."""
    trajs = [t for g in groups for t in g]
    acts = [(role, a) for t in trajs for role in agents.ROLES for a in t.taken(role) if a.completion]
    row = {"sessions": float(np.mean([len(t.memory.actions) for t in trajs])),
           "kept_lines": float(np.mean([len(t.memory_lines) for t in trajs])),
           "gen_tokens": sum(len(a.completion) for _, a in acts), "prompt_tokens": sum(len(a.prompt) for _, a in acts)}
    for role in agents.ROLES:
        mine = [a for r, a in acts if r == role]
        row[f"actions_{role}"] = len(mine) / len(trajs)
        row[f"format_fail_all_{role}"] = float(np.mean([not a.ok for a in mine])) if mine else 0.0
    return row


def batch_mean(rewards_of_batch: list[float]) -> float:
    """The mean of a batch's rewards, NaN (unavailable) ones left out; NaN when none is available."""
    values = np.asarray(rewards_of_batch, dtype=np.float64)
    return float(np.nanmean(values)) if values.size and not np.isnan(values).all() else float("nan")


def plant_misleading_reward(groups, agent: str) -> float:
    """Replace one agent's local reward by the planted one, in place. Returns the batch mean of the
    agent's own (paper) reward, for the log."""
    n = agents.ROLES.index(agent)
    paper = []
    for t in (t for g in groups for t in g):
        paper.append(t.local_rewards[n])
        t.local_rewards[n] = (rewards.assistant_share_reward(t.memory_lines) if agent == "extraction"
                              else rewards.statement_count_reward(t.profile))
    return batch_mean(paper)


def rescore_extraction(groups, alpha: float) -> float:
    """Replace every trajectory's r_0 by Eq. 9 with weight `alpha`, in place. Returns the batch mean of
    the paper's r_0 (α = 0.8), for the log.

    Worked example: the agent keeps M = {1, 2, 3, 4, 5, 6} of a session whose evidence is E = {2}:
    recall 1, IoU 1/6; the paper's r_0 = 0.8 + 0.2/6 = 0.833, with α = 0.5 r_0 = 0.5 + 0.5/6 = 0.583;
    keeping M = {2} alone earns 1.0 under both.
    """
    paper = []
    for t in (t for g in groups for t in g):
        paper.append(t.local_rewards[0])
        r0 = rewards.extraction_reward([l.id for l in t.memory_lines], t.example.evidence, alpha)
        t.local_rewards[0] = float("nan") if r0 is None else r0
    return batch_mean(paper)


def zero_retrieval_reward_without_answer(groups) -> float:
    """Set r_2 to 0 for every trajectory whose retrieval output did not parse, in place (an unavailable
    r_2, NaN, stays NaN). Returns the batch mean of the paper's r_2, for the log.

    Worked example: "<information> 1 </information> <final_answer> <information> 1 </information>
    </final_answer>", line 1 being the evidence, retrieves it exactly (Eq. 11: r_2 = 1.0) but answers
    nothing: r_2 = 0.
    """
    paper = []
    for t in (t for g in groups for t in g):
        paper.append(t.local_rewards[2])
        if not t.actions["retrieval"].ok and not np.isnan(t.local_rewards[2]):
            t.local_rewards[2] = 0.0
    return batch_mean(paper)


def prior_memory(ex: Example, n: int) -> tuple[list[Line], list[str]]:
    """The informative lines and ground-truth statements of the n sessions before the evidence
    session, as a perfect memory construction would have stored them."""
    gold = comam.gold_memory(ex.sessions[max(0, ex.evidence_session - n):ex.evidence_session])
    return gold.memory_lines, gold.profile


def rollout_with_prior_memory(policies, examples: list[Example], group_size: int, budgets, max_new,
                              temperature: float, generator, n: int) -> list[list[comam.Trajectory]]:
    """comam.rollout, then the retrieval agent's step again for every trajectory with the prior memory
    in front of its own: it sees prior lines + M_f and prior statements + M_c (`prior_memory`), and the
    trajectory is scored on that answer. The construction agents and their rewards are unchanged. (The
    first retrieval step is sampled and dropped: a few seconds, so that comam.rollout, assignment 4's
    function, stays the paper's MDP with no hook, and nothing here repeats it.)"""
    groups = comam.rollout(policies, examples, group_size, budgets, max_new, temperature, generator)
    trajs = [t for g in groups for t in g]
    prior = {id(ex): prior_memory(ex, n) for ex in examples}
    items = [(prior[id(t.example)][0] + t.memory_lines, prior[id(t.example)][1] + t.profile, t.example)
             for t in trajs]
    for t, (act, ids, letter) in zip(trajs, comam.run_retrieval(policies["retrieval"], items, budgets,
                                                                max_new.retrieval, temperature, generator)):
        t.actions["retrieval"], t.retrieved, t.answer = act, ids, letter
        t.score()
    return groups
