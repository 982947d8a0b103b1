"""The sequential MDP of CoMAM (Sec. 4.2): extraction -> profile -> retrieval-and-answer.

    s_0 = H --a_0--> M_f --a_1--> M_c --a_2--> (E'_q, p)

Each action is one generation of one agent. In training (`rollout`), H is the single session that
holds the question's evidence, and every query gets a group of G complete trajectories: the whole
chain is re-sampled G times. Generation is batched: each agent is called once per step over all
Q x G prompts. Every trajectory keeps, per agent, the prompt ids and the sampled completion ids (never
re-tokenised: the update scores exactly these tokens), plus the four rewards of Eqs. 9-12.

In evaluation (`build_memory` + `answer`), construction runs session by session over the whole
history, memory accumulating (App. B.1; docs/method.md, decision 9), and the retrieval agent answers
each query.

Train as deployed (`rollout_over_history`, `train.py --train-sessions K`, docs/method.md, decision 21):
a training trajectory is that same deployed process at training size, `build_memory` over the evidence
session and the K sessions before it, then `answer`, with every sampled action recorded for the update.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch

import agents
import lora
import models
from agents import Budgets, MaxNew
from models import Policy
from data.example import Example, Line
from rewards import extraction_reward, global_reward, profile_reward, retrieval_reward


@dataclass
class Action:
    """One agent's generation: what the policy saw and sampled (ids exactly as sampled)."""
    prompt: list[int]
    completion: list[int]  # the sampled ids, EOS included when one was sampled
    text: str
    ok: bool  # parsed; False = format failure (scored 0)


@dataclass
class Trajectory:
    example: Example
    memory_lines: list[Line] = field(default_factory=list)  # M_f
    profile: list[str] = field(default_factory=list)  # M_c
    retrieved: list[int] = field(default_factory=list)  # E'_q (global line ids)
    answer: str | None = None  # chosen letter, None = unparsed
    actions: dict[str, Action] = field(default_factory=dict)  # role -> action (the last one, over a history)
    local_rewards: list[float] = field(default_factory=list)  # r_0, r_1, r_2 (NaN = unavailable)
    global_reward: float = 0.0  # r_3
    # the memory this trajectory was answered from, when it was built over a history (`build_memory`:
    # deployment, and training with --train-sessions K); None = Sec. 4.2's single evidence session
    memory: Memory | None = None

    def taken(self, role: str) -> list[Action]:
        """Every action `role` took in this trajectory, in order. Sec. 4.2: one per agent. Over a history
        (decision 21): one extraction and one profile action per session (`Memory.actions`; an empty one
        where the profile agent was not called), and one retrieval action."""
        if self.memory is not None and self.memory.actions and role != "retrieval":
            return [a[role] for a in self.memory.actions]
        return [self.actions[role]]

    def score(self) -> None:
        """Eqs. 9-12: local rewards of the three agents and the global reward.

        Over a history (`memory` set): Eq. 9 scores all the kept lines M_f of every session against E_q,
        and Eq. 10 scores all the statements M_c against the ground-truth statements of every session
        the memory was built from (docs/method.md, decision 21); otherwise against the evidence session's.
        """
        ex, nan = self.example, float("nan")
        r0 = extraction_reward([l.id for l in self.memory_lines], ex.evidence)
        r1 = profile_reward(self.profile, self._gold_profile())
        r2 = retrieval_reward(self.retrieved, ex.evidence)
        self.local_rewards = [nan if r is None else r for r in (r0, r1, r2)]
        self.global_reward = global_reward(self.answer, ex.gold)

    def _gold_profile(self) -> list[str] | None:
        """The ground-truth statements Eq. 10 scores against: the evidence session's (Sec. 4.2), or those
        of every session the memory was built from (None: unavailable, as in PersonaMem)."""
        ex = self.example
        if self.memory is not None and self.memory.sessions:
            golds = [ex.sessions[k].profile for k in self.memory.sessions if k is not None]
            return None if any(g is None for g in golds) else [st for g in golds for st in g]
        return ex.sessions[ex.evidence_session].profile if ex.evidence_session is not None else None


# ======================================================================== one step per agent
# Each agent's step returns one named result per input (tuples underneath, so `act, lines = ...` works).

class Extracted(NamedTuple):
    action: Action  # a_0
    memory_lines: list[Line]  # M_f: the kept lines, in history order


class Profiled(NamedTuple):
    action: Action  # a_1
    profile: list[str]  # M_c: the profile statements


class Answered(NamedTuple):
    action: Action  # a_2
    retrieved: list[int]  # E'_q: the retrieved global line ids
    answer: str | None  # p: the chosen letter, None = unparsed


def _generate(policy: Policy, prompts: list[list[int]], max_new: int, temperature: float, generator,
              progress=None) -> list[tuple[list[int], str]]:
    """(sampled completion ids, decoded text) per prompt. LoRA adapters are folded into their weights
    for the call (lora.merged_for_sampling: the same numbers up to float rounding, faster)."""
    with lora.merged_for_sampling(policy.model):
        completions, _ = models.sample(policy, prompts, max_new, temperature, generator=generator, progress=progress)
    return [(c, models.decode(policy, c)) for c in completions]


def _unzip(pairs: list[tuple]) -> tuple[list, list]:
    """[(prompt ids, lines shown), ...] -> ([prompt ids, ...], [lines shown, ...])"""
    return [a for a, _ in pairs], [b for _, b in pairs]


def run_extraction(policy: Policy, histories: list[list[Line]], budgets: Budgets, max_new: int,
                   temperature: float, generator=None) -> list[Extracted]:
    """Agent 0: for each history, the kept lines M_f (in history order)."""
    prompts, shown = _unzip([agents.extraction_prompt(policy, h, budgets) for h in histories])  # ids, lines shown
    out = []
    for prompt, lines, (completion, text) in zip(prompts, shown, _generate(policy, prompts, max_new,
                                                                          temperature, generator)):
        ids, ok = agents.parse_ids(text, lines)
        keep = set(ids)
        out.append(Extracted(Action(prompt, completion, text, ok), [l for l in lines if l.id in keep]))
    return out


def run_profile(policy: Policy, memory_lines: list[list[Line]], budgets: Budgets, max_new: int,
                temperature: float, generator=None) -> list[Profiled]:
    """Agent 1: for each M_f, the profile statements M_c.

    An empty M_f has nothing to abstract: the agent is not called, M_c gets no statement, and the
    action is empty (no token to train on). Without this rule a profile agent trained only on
    evidence sessions (Sec. 4.2) invents statements for small-talk sessions at evaluation time.
    """
    todo = [i for i, m_f in enumerate(memory_lines) if m_f]
    prompts = [agents.profile_prompt(policy, memory_lines[i], budgets) for i in todo]
    generated = _generate(policy, prompts, max_new, temperature, generator) if todo else []
    out = [Profiled(Action([], [], "", True), []) for _ in memory_lines]
    for i, prompt, (completion, text) in zip(todo, prompts, generated):
        statements, ok = agents.parse_profile(text)
        out[i] = Profiled(Action(prompt, completion, text, ok), statements)
    return out


def run_retrieval(policy: Policy, items: list[tuple[list[Line], list[str], Example]], budgets: Budgets,
                  max_new: int, temperature: float, generator=None, progress=None) -> list[Answered]:
    """Agent 2: for each (M_f, M_c, question), the retrieved line ids E'_q and the chosen letter.
    `progress(n)` is called as each batch of n questions is answered."""
    prompts, shown = _unzip([agents.retrieval_prompt(policy, m_f, m_c, ex.question, ex.options, budgets)
                             for m_f, m_c, ex in items])  # ids, lines shown
    by_letter = agents.answers_by_letter(policy)
    out = []
    for prompt, lines, (_, _, ex), (completion, text) in zip(
            prompts, shown, items, _generate(policy, prompts, max_new, temperature, generator, progress)):
        ids, letter, ok = agents.parse_answer(text, lines, ex.options, by_letter=by_letter)
        out.append(Answered(Action(prompt, completion, text, ok), ids, letter))
    return out


# ======================================================================== training rollout (Sec. 4.2)

def rollout(policies: dict[str, Policy], examples: list[Example], group_size: int, budgets: Budgets,
            max_new: MaxNew, temperature: float = 1.0, generator=None) -> list[list[Trajectory]]:
    """The sequential MDP of Sec. 4.2 for training: G full trajectories per query, the whole chain
    extraction -> profile -> retrieval re-sampled for each; H = the query's evidence session.

    Returns Q groups (one per example, in order) of G `Trajectory`s. Each trajectory holds, per role,
    the `Action` its agent took (`actions["extraction"]` ...), the kept lines `memory_lines` (M_f), the
    statements `profile` (M_c), the retrieved ids and the chosen letter, and is scored (`score()`,
    Eqs. 9-12). Every agent is called ONCE per step, on all Q x G inputs together (batched sampling):
    first extraction on the Q x G histories, then profile on the Q x G memories it produced, then
    retrieval on the Q x G (memory, profile, question) triples.
    Worked example, Q = 2, G = 3: the trajectories are laid out query-major, [q0 g0, q0 g1, q0 g2,
    q1 g0, q1 g1, q1 g2]; trajectory k gets the k-th output of each agent; the result is
    [[q0 g0, q0 g1, q0 g2], [q1 g0, q1 g1, q1 g2]].
    """
    ### BEGIN SOLUTION (assignment 4)
    trajs = [Trajectory(ex) for ex in examples for _ in range(group_size)]  # query-major: [q0 g0, q0 g1, ...]
    histories = [t.example.session_lines(t.example.evidence_session) for t in trajs]
    for t, (action, memory_lines) in zip(trajs, run_extraction(policies["extraction"], histories, budgets,
                                                               max_new.extraction, temperature, generator)):
        t.actions["extraction"], t.memory_lines = action, memory_lines
    for t, (action, profile) in zip(trajs, run_profile(policies["profile"], [t.memory_lines for t in trajs],
                                                       budgets, max_new.profile, temperature, generator)):
        t.actions["profile"], t.profile = action, profile
    items = [(t.memory_lines, t.profile, t.example) for t in trajs]
    for t, (action, retrieved, answer) in zip(trajs, run_retrieval(policies["retrieval"], items, budgets,
                                                                   max_new.retrieval, temperature, generator)):
        t.actions["retrieval"], t.retrieved, t.answer = action, retrieved, answer
        t.score()
    return [trajs[i:i + group_size] for i in range(0, len(trajs), group_size)]
    ### END SOLUTION


# ======================================================================== evaluation: memory over the whole history

@dataclass
class Memory:
    memory_lines: list[Line] = field(default_factory=list)  # M_f, accumulated over sessions
    profile: list[str] = field(default_factory=list)  # M_c, accumulated over sessions
    per_session: list[list[str]] = field(default_factory=list)  # the profile agent's output per session
    sessions: list[int | None] = field(default_factory=list)  # the index of each of those sessions
    failures: dict[str, int] = field(default_factory=lambda: {"extraction": 0, "profile": 0})
    calls: int = 0
    # per session, the construction agents' actions as sampled ({"extraction": ..., "profile": ...}):
    # what training over a history updates (decision 21)
    actions: list[dict[str, Action]] = field(default_factory=list)


@torch.no_grad()
def build_memory(policies: dict[str, Policy], histories: dict[str, list[list[Line]]], budgets: Budgets,
                 max_new: MaxNew, temperature: float, generator=None, progress=None) -> dict[str, Memory]:
    """Run extraction then profile session by session over each user's history, memory accumulating.

    Batched across users: step s processes session s of every user that has one. Every action taken is
    recorded (`Memory.actions`): training over a history (`rollout_over_history`) updates exactly these.
    """
    memories = {u: Memory() for u in histories}
    for s in range(max(len(h) for h in histories.values())):
        users = [u for u, h in histories.items() if s < len(h)]
        extracted = run_extraction(policies["extraction"], [histories[u][s] for u in users], budgets,
                                   max_new.extraction, temperature, generator)
        profiled = run_profile(policies["profile"], [e.memory_lines for e in extracted], budgets, max_new.profile,
                               temperature, generator)
        for u, e, p in zip(users, extracted, profiled):
            m = memories[u]
            m.memory_lines += e.memory_lines
            m.profile += p.profile
            m.per_session.append(p.profile)
            m.sessions.append(histories[u][s][0].session if histories[u][s] else None)
            m.failures["extraction"] += not e.action.ok
            m.failures["profile"] += not p.action.ok
            m.calls += 1
            m.actions.append({"extraction": e.action, "profile": p.action})
        if progress:
            progress(s)
    return memories


def gold_memory(sessions) -> Memory:
    """The memory a perfect construction would build from `sessions`: every informative line (a line
    with ground-truth notes) as M_f and every ground-truth statement as M_c, in history order. Given to
    the answer agent, it measures that agent alone: the accuracy memory construction could at best buy
    it (eval.py --system gold; the warm start's perfect-memory probe)."""
    return Memory(memory_lines=[l for s in sessions for l in s.lines if l.id in (s.notes or {})],
                  profile=[st for s in sessions for st in (s.profile or [])])


@torch.no_grad()
def answer(policies: dict[str, Policy], examples: list[Example], memories: list[Memory], budgets: Budgets,
           max_new: MaxNew, temperature: float, generator=None, progress=None) -> list[Trajectory]:
    """The retrieval agent answers each query from its memory (`memories[i]` for `examples[i]`);
    `progress(n)` is called as each batch of n queries is answered."""
    items = [(m.memory_lines, m.profile, ex) for ex, m in zip(examples, memories)]
    trajs = []
    for ex, m, a in zip(examples, memories, run_retrieval(
            policies["retrieval"], items, budgets, max_new.retrieval, temperature, generator, progress)):
        construction = m.actions[-1] if m.actions else {}  # the construction agents' last actions, when it built M
        t = Trajectory(ex, m.memory_lines, m.profile, a.retrieved, a.answer, construction | {"retrieval": a.action},
                       memory=m)
        t.score()
        trajs.append(t)
    return trajs


# ======================================================================== train as deployed (decision 21)

def history_window(ex: Example, sessions_before: int) -> list[int]:
    """The sessions one training trajectory covers: the evidence session and the `sessions_before`
    sessions before it (fewer when the history starts later), in history order."""
    return list(range(max(0, ex.evidence_session - sessions_before), ex.evidence_session + 1))


def rollout_over_history(policies: dict[str, Policy], examples: list[Example], group_size: int,
                         sessions_before: int, budgets: Budgets, max_new: MaxNew, temperature: float = 1.0,
                         generator=None) -> list[list[Trajectory]]:
    """Train as deployed (`train.py --train-sessions K`; docs/method.md, decision 21): G trajectories per
    query, each the deployed process at training size, re-sampled whole. `build_memory` runs the
    extraction agent on each of the `history_window` sessions (K + 1 actions) and the profile agent on
    each session's kept lines, memory accumulating; `answer` runs the retrieval-and-answer agent on the
    accumulated memory with the deployed budgets. The same two functions build and answer the memory
    in evaluation, so what is trained is what is deployed.

    Returns Q groups of G trajectories, query-major as `rollout`'s. Each holds its `memory` (with every
    construction action, `Memory.actions`; `Trajectory.taken(role)` lists an agent's actions), M_f and
    M_c accumulated over the window, `actions[role]` the last action of each agent (the evidence
    session's for the construction agents), and is scored (Eqs. 9-12, over the window: `score`).
    With K = 0 the window is the evidence session alone, but this is not `rollout` (whose batching and
    random stream differ); `train.py` runs `rollout` there, the paper's setting.
    """
    queries = [ex for ex in examples for _ in range(group_size)]  # query-major, as in rollout
    histories = {k: [ex.session_lines(s) for s in history_window(ex, sessions_before)] for k, ex in enumerate(queries)}
    memories = build_memory(policies, histories, budgets, max_new, temperature, generator)
    answered = answer(policies, queries, [memories[k] for k in range(len(queries))], budgets,
                      max_new, temperature, generator)
    return [answered[i:i + group_size] for i in range(0, len(answered), group_size)]
