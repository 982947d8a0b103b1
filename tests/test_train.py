"""The GRPO loop: loss against a float64 reference, ratio 1, micro-batch invariance, runs and resume."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import agents
import comam
import train
from cli import InputError
from train import Args, policy_loss


def reference_loss(logp, old, adv, mask, eps, agg, ref=None, beta=0.0):
    """Plain-Python float64 loops over every token (independent of the vectorised torch code)."""
    B, T = len(logp), len(logp[0])
    per_seq, total, n_tok = [], 0.0, 0
    for i in range(B):
        s, n = 0.0, 0
        for t in range(T):
            if not mask[i][t]:
                continue
            rho = math.exp(logp[i][t] - old[i][t])
            clipped = min(max(rho, 1 - eps), 1 + eps)
            l = -min(rho * adv[i], clipped * adv[i])
            if ref is not None and beta > 0:
                d = ref[i][t] - logp[i][t]
                l += beta * (math.exp(d) - d - 1)
            s += l
            n += 1
        per_seq.append(s / max(n, 1))
        total += s
        n_tok += n
    return total / n_tok if agg == "token" else sum(per_seq) / B


@pytest.mark.assignment3
@pytest.mark.parametrize("agg", ["token", "sequence"])
@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_policy_loss_matches_float64_reference(agg, beta):
    g = torch.Generator().manual_seed(3)
    B, T = 5, 7
    logp = -torch.rand(B, T, generator=g) * 3
    old = logp + (torch.rand(B, T, generator=g) - 0.5) * 0.8  # ratios well outside [0.8, 1.2] too
    ref = logp + (torch.rand(B, T, generator=g) - 0.5)
    adv = torch.randn(B, generator=g)
    lengths = [7, 1, 4, 0, 3]
    mask = torch.tensor([[1.0 if t < n else 0.0 for t in range(T)] for n in lengths])
    denom = mask.sum().item() if agg == "token" else B
    loss, stats = policy_loss(logp, old, adv, mask, 0.2, denom, agg, ref, beta)
    want = reference_loss(logp.double().tolist(), old.double().tolist(), adv.double().tolist(),
                          mask.tolist(), 0.2, agg, ref.double().tolist(), beta)
    assert loss.item() == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert 0 < stats["clip_frac"] < stats["tokens"]  # some ratios clipped, some not


@pytest.mark.assignment3
def test_worked_example_in_the_docstring():
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1.0, 1, 0], [1, 0, 0]])
    logp = torch.zeros(2, 3)
    loss, _ = policy_loss(logp, logp, adv, mask, 0.2, denom=3.0)
    assert loss.item() == pytest.approx(-1 / 3)


def _batch(policy, n=6, seed=0):
    """n (prompt, completion, advantage) triples of random tokens: prompts of 3-8 tokens, completions of
    1-6 tokens, half of them closed by EOS (pad == eos). No sampling: graded without agents.sample."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(2, 50, (int(k),), generator=g).tolist() for k in torch.randint(3, 9, (n,), generator=g)]
    comps = [torch.randint(2, 50, (int(k),), generator=g).tolist() for k in torch.randint(1, 7, (n,), generator=g)]
    comps = [c[:-1] + [policy.eos_id] if i % 2 else c for i, c in enumerate(comps)]
    adv = torch.randn(n, generator=g).tolist()
    return [(p, c, a) for p, c, a in zip(prompts, comps, adv)]


@pytest.mark.assignment3
def test_ratio_is_exactly_one_before_the_first_update(toy_policy):
    batch = _batch(toy_policy)
    prompts, comps = [p for p, _, _ in batch], [c for _, c, _ in batch]
    logp, mask = agents.completion_logprobs(toy_policy.model, prompts, comps, toy_policy.pad_id)
    for old in (logp.detach(),  # ppo_epochs = 1
                agents.completion_logprobs(toy_policy.model, prompts, comps, toy_policy.pad_id)[0].detach()):
        ratio = torch.exp(logp - old)
        assert torch.equal(ratio[mask == 1], torch.ones_like(ratio[mask == 1]))


@pytest.mark.assignment3
@pytest.mark.parametrize("agg", ["token", "sequence"])
def test_update_does_not_depend_on_micro_batch_size(toy_tokenizer, agg):
    results = []
    for mb in (1, 6):
        model = agents.build_tiny(toy_tokenizer, hidden=32, layers=1, heads=2, seed=0)
        pol = agents.Policy(model, toy_tokenizer, "toy")
        batch = _batch(pol)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        args = Args(micro_batch=mb, loss_agg=agg, max_grad_norm=1e9)
        stats = train.grpo_update(pol, opt, batch, args, "cpu")
        results.append((stats["loss"], [p.detach().clone() for p in model.parameters()]))
    assert results[0][0] == pytest.approx(results[1][0], abs=1e-6)
    for a, b in zip(results[0][1], results[1][1]):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.assignment3
def test_non_finite_loss_stops_the_step_with_a_clear_message(toy_policy):
    batch = _batch(toy_policy)
    batch[0] = (batch[0][0], batch[0][1], float("nan"))
    before = [p.detach().clone() for p in toy_policy.model.parameters()]
    opt = torch.optim.AdamW(toy_policy.model.parameters(), lr=1e-3)
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        train.grpo_update(toy_policy, opt, batch, Args(), "cpu")
    for a, p in zip(before, toy_policy.model.parameters()):
        assert torch.equal(a, p)  # nothing was stepped


def test_batch_order_is_seeded_and_covers_an_epoch():
    items = list(range(10))
    first = [x for s in range(5) for x in train.batch_at(items, s, 2, seed=4)]
    assert sorted(first) == items
    assert first == [x for s in range(5) for x in train.batch_at(items, s, 2, seed=4)]
    assert first != [x for s in range(5) for x in train.batch_at(items, s, 2, seed=5)]


@pytest.fixture
def varied_rewards(monkeypatch):
    """A 3-step toy warm start writes nothing parseable, so every reward would be 0 and every
    advantage 0 (no update at all: correct, but it tests nothing). These run tests replace the
    rewards by a deterministic function of the sampled ids; Eqs. 9-12 are tested in test_rewards.py.
    The toy extraction also never writes a valid line number, and the profile agent is not called on
    an empty memory: here an unparseable extraction keeps the first line shown."""
    real_parse_ids = agents.parse_ids

    def parse_ids(text, shown):
        ids, ok = real_parse_ids(text, shown)
        return (ids, ok) if ids or not shown else ([shown[0].id], False)

    monkeypatch.setattr(agents, "parse_ids", parse_ids)

    def score(self):
        ids = [sum(a.completion) for a in self.actions.values()]
        self.local_rewards = [(x % 7) / 7 for x in ids]
        self.global_reward = float(sum(ids) % 2)

    monkeypatch.setattr(comam.Trajectory, "score", score)


def _run_args(toy_data, toy_warmstart, out, **kw):
    base = dict(data=str(toy_data), model=str(toy_warmstart), out=str(out), steps=2, queries=2, group_size=2,
                eval_users=1, save_every=1, lr=1e-3, seed=3)
    base.update(kw)
    return Args(**base)


def _params(folder):
    from safetensors.torch import load_file
    return {r: load_file(str(folder / r / "model.safetensors")) for r in agents.ROLES}


@pytest.mark.uses_solutions
def test_two_steps_change_every_trained_agent(toy_data, toy_warmstart, tmp_path, varied_rewards):
    train.main(_run_args(toy_data, toy_warmstart, tmp_path, exp_name="joint"))
    start, end = _params(toy_warmstart), _params(tmp_path / "joint-s3" / "ckpt")
    for role in agents.ROLES:
        assert any(not torch.equal(start[role][k], end[role][k]) for k in start[role]), role
    log = [json.loads(l) for l in (tmp_path / "joint-s3" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]
    for key in ("global_reward", "w_profile", "v_retrieval", "kl_extraction", "clip_frac_retrieval",
                "format_fail_profile", "len_extraction", "gen_tok_s", "upd_tok_s", "step_s"):
        assert key in log[0], key
    assert (tmp_path / "joint-s3" / "summary.json").exists()


@pytest.mark.uses_solutions
def test_independent_mode_freezes_the_other_agents(toy_data, toy_warmstart, tmp_path, varied_rewards):
    train.main(_run_args(toy_data, toy_warmstart, tmp_path, exp_name="ind", mode="independent", steps=1))
    start, end = _params(toy_warmstart), _params(tmp_path / "ind-s3" / "ckpt")
    changed = {r: any(not torch.equal(start[r][k], end[r][k]) for k in start[r]) for r in agents.ROLES}
    assert changed == {"extraction": True, "profile": False, "retrieval": False}
    assert [train.trained_roles(Args(mode="independent", steps=9), s)[0] for s in (0, 3, 8)] == list(agents.ROLES)


@pytest.mark.uses_solutions
def test_four_steps_equal_two_plus_resume_two(toy_data, toy_warmstart, tmp_path, varied_rewards):
    train.main(_run_args(toy_data, toy_warmstart, tmp_path / "a", steps=4, save_every=10))
    train.main(_run_args(toy_data, toy_warmstart, tmp_path / "b", steps=2))
    train.main(_run_args(toy_data, toy_warmstart, tmp_path / "b", steps=4, resume=True))
    a, b = _params(tmp_path / "a" / "comam-s3" / "ckpt"), _params(tmp_path / "b" / "comam-s3" / "ckpt")
    for role in agents.ROLES:
        for k in a[role]:
            assert torch.equal(a[role][k], b[role][k]), (role, k)
    steps = [json.loads(l)["step"] for l in (tmp_path / "b" / "comam-s3" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


@pytest.mark.uses_solutions
def test_existing_run_with_a_checkpoint_needs_resume(toy_data, toy_warmstart, tmp_path, varied_rewards):
    train.main(_run_args(toy_data, toy_warmstart, tmp_path, steps=1))
    with pytest.raises(InputError, match="--resume"):
        train.main(_run_args(toy_data, toy_warmstart, tmp_path, steps=2))


def test_help_lists_every_field_with_its_docstring(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(Args, "doc", ["--help"])
    out = capsys.readouterr().out
    assert "--credit-variant" in out and "Algorithm 1" in out and "--shared-policy" in out


@pytest.mark.uses_solutions
def test_profile_agent_is_not_called_on_an_empty_memory(toy_policy, toy_train):
    lines = toy_train[0].session_lines(0)[:3]
    out = comam.run_profile(toy_policy, [[], lines, []], agents.Budgets(), 5, 1.0)
    assert [bool(a.completion) for a, _ in out] == [False, True, False]
    assert out[0][1] == [] and out[0][0].ok


@pytest.mark.uses_solutions
def test_warm_start_can_continue_from_a_checkpoint(toy_data, toy_warmstart, tmp_path):
    import warmstart
    warmstart.main(warmstart.Args(data=str(toy_data), out=str(tmp_path / "more"), steps=2, batch_size=2,
                                  probe_every=0, init_from=str(toy_warmstart)))
    a = agents.load_policy(str(toy_warmstart), "retrieval")
    b = agents.load_policy(str(tmp_path / "more"), "retrieval")
    assert a.tokenizer.get_vocab() == b.tokenizer.get_vocab()
    assert any(not torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))


@pytest.mark.assignment2
def test_credit_step_diagnostics_hand_worked():
    """Two groups of G = 2: one with constant global reward (flat), one where agent 0 ranks it perfectly."""
    def traj(local, reward):
        act = comam.Action(prompt=[1], completion=[2], logprobs=[0.0], text="x", ok=True)
        return comam.Trajectory(example=None, actions={r: act for r in agents.ROLES},
                                local_rewards=local, global_reward=reward)

    flat = [traj([0.2, 0.5, 0.9], 1.0), traj([0.8, 0.1, 0.3], 1.0)]  # v = 1, 1, 1 -> w = 1/3 each
    # agent 0 ranks the success first (v = 1); agents 1 and 2 rank it last (v = 1/log2(3) = 0.6309)
    tense = [traj([0.9, 0.1, 0.0], 1.0), traj([0.1, 0.9, 1.0], 0.0)]
    args = Args(credit="comam")
    per_role, log = train.credit_step([flat, tense], args)
    v1 = 1 / math.log2(3)
    w = np.exp([1, v1, v1]) / np.exp([1, v1, v1]).sum()
    assert log["global_flat"] == pytest.approx(0.5)
    assert log["w_spread"] == pytest.approx((0 + (w[0] - w[1])) / 2)
    np.testing.assert_allclose(log["v"], [1.0, (1 + v1) / 2, (1 + v1) / 2])
    np.testing.assert_allclose(log["w"], (np.full(3, 1 / 3) + w) / 2)
    assert len(per_role["extraction"]) == 4  # every action that was taken gets an advantage
    # a sharper temperature widens the spread of the same groups
    _, sharp = train.credit_step([flat, tense], Args(credit="comam", credit_temp=0.1))
    assert sharp["w_spread"] > log["w_spread"] * 5


def test_planted_misleading_rewards_replace_one_agent_and_log_its_own():
    from data.example import Line
    act = comam.Action(prompt=[1], completion=[2], logprobs=[0.0], text="x", ok=True)
    user, bot = Line(0, 0, "user", "i have a cat ."), Line(1, 0, "assistant", "nice .")
    t1 = comam.Trajectory(example=None, memory_lines=[user, bot], profile=["a", "b"], actions={r: act for r in agents.ROLES},
                          local_rewards=[0.9, 0.5, 0.2], global_reward=1.0)
    t2 = comam.Trajectory(example=None, memory_lines=[bot], profile=["a"] * 10, actions={r: act for r in agents.ROLES},
                          local_rewards=[0.1, 0.3, 0.2], global_reward=0.0)
    assert train.plant_misleading_reward([[t1, t2]], "extraction") == pytest.approx(0.5)  # mean of 0.9 and 0.1
    assert [t1.local_rewards[0], t2.local_rewards[0]] == [0.5, 1.0]  # assistant share of the kept lines
    assert train.plant_misleading_reward([[t1, t2]], "profile") == pytest.approx(0.4)
    assert [t1.local_rewards[1], t2.local_rewards[1]] == [0.25, 1.0]  # statements / 8, at most 1
    assert t1.local_rewards[2] == 0.2 and t1.global_reward == 1.0  # nothing else changes


def test_prior_memory_holds_the_sessions_before_the_evidence_session(toy_train):
    ex = next(e for e in toy_train if e.evidence_session >= 2)
    lines, statements = train.prior_memory(ex, 2)
    before = ex.sessions[ex.evidence_session - 2:ex.evidence_session]
    assert [l.id for l in lines] == [l.id for s in before for l in s.lines if l.id in s.notes]
    assert statements == [st for s in before for st in s.profile]
    assert train.prior_memory(ex, 0) == ([], [])
    assert {l.session for l in train.prior_memory(ex, 99)[0]} <= set(range(ex.evidence_session))
