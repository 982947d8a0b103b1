"""CoMAM training: joint reinforcement learning of the three agents with ranking-consistency credit.

    python train.py                                  # CoMAM on the synthetic benchmark, from the shipped warm start
    python train.py --credit local --seed 2          # an ablation (credit modes: comam local global equal fixed)
    python train.py --mode independent               # the independent-RL baseline (one agent at a time)
    python train.py --shared-policy                  # one policy for all three roles (Table 3)
    python train.py --model smollm2 --lora-rank 16   # a real model: three LoRA adapter sets on one frozen base
    python train.py --resume --exp-name comam        # continue runs/comam-s1 from its last checkpoint
    python train.py --help                           # every flag

The file reads top-down as the paper's Algorithm 1 (docs/method.md, "Algorithm 1"):
  main          the loop over iterations; evaluation before and after
  train_step    one iteration:
    A1.1  sample a batch of Q queries                                              batch_at
    A1.2  G full trajectories per query, extraction -> profile -> retrieval        comam.rollout
    A1.3  local rewards r_0, r_1, r_2 (Eqs. 9-11) and global reward r_3 (Eq. 12)   comam.Trajectory.score
    A1.4  per query: v_n (Eq. 13), w_n (Eq. 14), r_final (Eq. 15), advantages (Eq. 7)    credit_step
    A1.5  one clipped policy-gradient update of every trained agent                update_policies, grpo_update
    A1.6  the loss of that update (Eq. 16's objective, GRPO's Eqs. 6-8)            policy_loss
Run bookkeeping (folders, checkpoints, resume, logs) is runs.py's; experiments beyond the paper
(--train-sessions, --mislead, --context-sessions, --extraction-alpha, --retrieval-needs-answer) enter
the step in one place, experiments.py.
Logs go to runs/<exp-name>-s<seed>/log.jsonl (one JSON object per step), checkpoints to .../ckpt.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

import agents
import comam
import distributed
import experiments
import models
import plumbing
import rewards
import runs
from cli import Interrupted, autocast, check, command, resolve_device, seed_everything
from credit import group_advantages, integrated_rewards
from data.example import Example
from models import Policy
from runs import unique


@dataclass
class Args:
    exp_name: str = "comam"
    """name of the run; its folder is <out>/<exp-name>-s<seed>"""
    out: str = "runs"
    """folder of all runs"""
    seed: int = 1
    """seed of everything: data order, sampling, evaluation"""
    data: str = ""
    """benchmark folder; empty = the synthetic benchmark next to the code (data/synthetic), generated on first use"""
    model: str = "tiny"
    """policy of every agent: tiny (shipped warm start), smollm2, or a local transformers folder"""
    model_extraction: str = ""
    """override --model for the extraction agent"""
    model_profile: str = ""
    """override --model for the profile agent"""
    model_retrieval: str = ""
    """override --model for the retrieval-and-answer agent"""
    shared_policy: bool = False
    """run all three roles on one policy (the extraction agent's model), Table 3"""
    lora_rank: int = -1
    """LoRA adapter rank: 0 = full fine-tuning; -1 = auto (0 for tiny, 16 for a chat model, the rank of adapters already in --model)"""
    lora_alpha: float = 32.0
    """LoRA scaling numerator: an adapter adds (alpha / rank) B A x"""
    lora_targets: str = "all"
    """layers that get adapters: all (q,k,v,o,gate,up,down) | attention | mlp | comma list of module names"""
    mode: str = "joint"
    """joint (all agents every step) | independent (one agent at a time, others frozen, same total steps)"""
    credit: str = "comam"
    """credit mode: comam (adaptive w = softmax(v)) | local | global | equal (w = 1/3) | fixed"""
    fixed_w: float = 0.5
    """w of every agent with --credit fixed"""
    credit_temp: float = 1.0
    """softmax temperature over v in Eq. 14 (--credit comam); 1.0 is the paper, < 1 sharpens (our departure)"""
    credit_variant: str = "eq15"
    """eq15: r_n + w_n r_3 (paper text) | alg1: r_3 + w_n r_n (Algorithm 1)"""
    mislead: str = "none"
    """plant a misleading local reward (not in the paper): none | extraction (r_0 = share of kept lines that are assistant turns) | profile (r_1 = statement count / 8)"""
    train_sessions: int = 0
    """train as deployed: a trajectory builds memory over the evidence session and the K sessions before it, as evaluation does, every action trained (0 = the paper's setting, the evidence session alone)"""
    context_sessions: int = 0
    """in training, the retrieval agent's memory also holds the informative lines and statements of the N sessions before the evidence session (0 = the paper's setting)"""
    extraction_alpha: float = rewards.EXTRACTION_ALPHA
    """α of the extraction agent's reward r_0 (Eq. 9): weight of recall against IoU; 0.8 is the paper, lower charges more for keeping non-evidence lines (not in the paper)"""
    retrieval_needs_answer: bool = False
    """pay the retrieval agent's r_2 (Eq. 11) only when its output parses, answer included (not in the paper, which does not say)"""
    steps: int = 60
    """training iterations"""
    queries: int = 8
    """queries per iteration (Q)"""
    group_size: int = 8
    """trajectories per query (G)"""
    temperature: float = 1.0
    """sampling temperature in training (log-probs use the same temperature)"""
    lr: float = 2e-4
    """AdamW learning rate of every agent"""
    clip_eps: float = 0.2
    """PPO clip range epsilon"""
    kl_beta: float = 0.0
    """k3 KL penalty to the frozen reference: the policy the run started from, --model (0 = none loaded)"""
    loss_agg: str = "token"
    """token: mean over all completion tokens of the batch | sequence: mean over sequences of per-sequence token means (GRPO's Eq. 6)"""
    ppo_epochs: int = 1
    """updates per batch; with 1 the old log-probs are the current ones (ratio exactly 1), no extra forward pass"""
    micro_batch: int = 64
    """sequences per forward/backward (gradient accumulation; the loss does not depend on it)"""
    share_prompts: bool = True
    """compute a prompt (prefix) shared by several rows once, in sampling and in the update (same results, faster)"""
    max_grad_norm: float = 1.0
    """gradient clipping"""
    eval_every: int = 0
    """evaluate on validation every N steps (0 = only before and after training)"""
    eval_users: int = 0
    """validation users used in evaluation (0 = all)"""
    eval_temperature: float = 0.8
    """sampling temperature in evaluation (paper: 0.8; 0 = greedy)"""
    eval_history: str = "whole"
    """memory in evaluation: whole (deployed, the paper's: over the user's whole history) | evidence (the training setting: each question's evidence session)"""
    save_every: int = 25
    """checkpoint every N steps (and at the end)"""
    resume: bool = False
    """continue the run from its last checkpoint (same data order and random state)"""
    device: str = "auto"
    """auto (CUDA if available) | cpu | cuda"""
    precision: str = "auto"
    """forward passes: auto (bfloat16 on CUDA and on a CPU with bf16 hardware, except the tiny model) | float32 | bfloat16; weights, optimizer state and log-probs stay float32"""
    scale: float = 0.0
    """multiply every context budget and generation limit; 0 = derive from the tokenizer (tokens per word, printed)"""
    gradient_checkpointing: bool = False
    """recompute activations in the backward pass (less memory, ~30% slower): for real models on small GPUs"""
    train_users: int = 300
    """users of the generated benchmark's train split (only used when generating it)"""


# ======================================================================== main: the loop over iterations

def main(args: Args) -> dict:
    runs.check_args(args)
    device = distributed.setup(resolve_device(args.device))  # under torchrun: this rank's device
    check(args.queries % distributed.world() == 0, f"--queries {args.queries} must be a multiple of the "
          f"number of processes ({distributed.world()}): each process takes an equal share of the queries")
    lock = runs.lock_run(args)  # one process writes a run, one run per folder
    try:
        return train(runs.resolve_lora_rank(runs.resumed_args(args)), device)
    finally:
        if lock:
            lock.release()
        distributed.teardown()


def train(args: Args, device: str) -> dict:
    """Open (or resume) the run, evaluate, train, evaluate; Ctrl-C says where the last checkpoint is."""
    seed_everything(args.seed)
    train_set, val_set = runs.datasets(args)
    run = runs.open_run(args, device)
    args = runs.with_precision(args, run.policies, device)  # --precision auto -> float32 | bfloat16, printed
    refs = runs.reference_policies(args, run.policies, device)
    budgets, max_new, scale = agents.fit_limits(run.policies["extraction"], train_set, args.scale)
    print(f"context limits ({'derived: ' if args.scale <= 0 else ''}{scale:.3f} tokens per word): {budgets}, {max_new}")

    if run.start == 0:
        before = runs.validate(run.policies, val_set, budgets, max_new, args, run.folder, "no-train")
    else:  # resumed: the evaluation before training is in the run's eval.jsonl
        before = runs.logged_evaluation(run.folder, "no-train")
    bar = tqdm(range(run.start, args.steps), desc=args.exp_name, dynamic_ncols=True, initial=run.start, total=args.steps,
               disable=not distributed.is_writer())
    saved = run.start
    try:
        for step in bar:
            row, stats = train_step(step, run, refs, train_set, budgets, max_new, args, device)
            runs.record_step(run.folder, row, stats, bar)
            if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
                runs.save_checkpoint(run, step + 1, args)
                saved = step + 1
            if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
                runs.validate(run.policies, val_set, budgets, max_new, args, run.folder, f"step-{step + 1}")
    except KeyboardInterrupt:
        where = f"the last checkpoint (step {saved}) is {run.folder / 'ckpt'}" if saved else "no checkpoint yet"
        raise Interrupted(f"{where}; continue with the same command and --resume") from None

    after = runs.validate(run.policies, val_set, budgets, max_new, args, run.folder, "final")
    return runs.write_summary(run.folder, before, after, args) if distributed.is_writer() else {}


# ======================================================================== ALGO LOGIC: Algorithm 1, one iteration

def train_step(step: int, run: runs.Run, refs: dict, train_set: list[Example], budgets: agents.Budgets,
               max_new: agents.MaxNew, args: Args, device: str) -> tuple[dict, dict]:
    """Algorithm 1, one iteration: rollout -> rewards -> credit -> update. Returns (log row, update stats)."""
    t0 = time.time()
    policies = run.policies
    # A1.1: the batch of Q queries (a function of seed and step: --resume continues exactly); under
    # torchrun this process's share of it
    queries = distributed.shard(batch_at(train_set, step, args.queries, args.seed))
    gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)  # this step's sampling randomness
    # A1.2-A1.3: G full trajectories per query (Sec. 4.2), each scored by Eqs. 9-12
    for p in unique(policies).values():
        p.model.eval()
    with autocast(device, args.precision):
        if experiments.active(args):  # --train-sessions, --mislead, ...: beyond the paper
            groups, extra_log = experiments.rollout(policies, queries, args, budgets, max_new, gen)
        else:
            groups, extra_log = comam.rollout(policies, queries, args.group_size, budgets, max_new,
                                              args.temperature, gen), {}
    t1 = time.time()
    # A1.4: credit by ranking consistency (Eqs. 13-15) and group-normalised advantages (Eq. 7)
    batches, per_group = credit_step(groups, args)
    # A1.5-A1.6: one clipped policy-gradient update of every trained agent
    roles = trained_roles(args, step, run.planned_steps)
    stats = update_policies(policies, run.opts, batches, roles, args, device, refs)
    seconds = {"rollout": t1 - t0, "update": time.time() - t1, "step": time.time() - t0}
    return runs.log_row(step + 1, roles, per_group, runs.trajectory_stats(groups), stats, seconds) | extra_log, stats


def batch_at(examples: list[Example], step: int, n: int, seed: int) -> list[Example]:
    """A1.1: the n queries of iteration `step`: a fresh seeded permutation per epoch (stateless, for --resume)."""
    out, per_epoch = [], len(examples)
    for i in range(step * n, (step + 1) * n):
        epoch, k = divmod(i, per_epoch)
        order = np.random.default_rng([seed, epoch]).permutation(per_epoch)
        out.append(examples[order[k]])
    return out


# ---------------------------------------------------------------- A1.4: credit and advantages

def credit_step(groups: list[list[comam.Trajectory]], args: Args) -> tuple[dict[str, list], dict]:
    """Eqs. 13-15 and 7 for every query group. Returns (batches, per_group): batches[role] is the role's
    update batch, one (prompt ids, sampled completion ids, advantage) per action taken; per_group[key]
    holds one entry per group of r, v, w and of the diagnostics that explain them (runs.credit_diagnostics).
    """
    batches = {role: [] for role in agents.ROLES}
    per_group = {}
    for group in groups:
        local_rewards = np.array([t.local_rewards for t in group], dtype=np.float64).T  # (3, G)
        global_rewards = np.array([t.global_reward for t in group], dtype=np.float64)  # (G,)
        r_final, v, w = integrated_rewards(local_rewards, global_rewards, args.credit, args.fixed_w,
                                           args.credit_variant, args.credit_temp)  # (3, G), (3,), (3,)
        adv = group_advantages(r_final)  # (3, G)
        for n, role in enumerate(agents.ROLES):
            for t, a in zip(group, adv[n]):
                for act in t.taken(role):  # one action; over a history, every one the agent took (decision 21)
                    if act.completion:  # an agent that was not called (empty input) took no action
                        batches[role].append((act.prompt, act.completion, float(a)))
        runs.credit_diagnostics(per_group, local_rewards, global_rewards, v, w, adv)
    return batches, per_group


# ---------------------------------------------------------------- A1.5: the update

def trained_roles(args: Args, step: int, planned_steps: int) -> list[str]:
    """Joint: every agent. Independent (Table 3): agent k during the k-th third of the `planned_steps`
    the run was started with (a resume with a larger --steps continues the last phase)."""
    if args.mode == "joint":
        return list(agents.ROLES)
    phase = min(2, step * 3 // max(1, planned_steps))
    return [agents.ROLES[phase]]


def update_policies(policies: dict[str, Policy], opts: dict, batches: dict, roles: list[str], args: Args,
                    device: str, refs: dict) -> dict:
    """One GRPO update of every trained policy; a shared policy gets the three roles' batches together."""
    stats = {}
    for owner, pol in unique(policies).items():
        batch = [x for r in roles if policies[r] is pol for x in batches[r]]
        if distributed.all_sum([len(batch)])[0] > 0:  # under torchrun every rank takes part if any has data
            stats[owner] = grpo_update(pol, opts[owner], batch, args, device, refs.get(owner))
    return stats


def grpo_update(policy: Policy, opt: torch.optim.Optimizer, batch: list[tuple[list[int], list[int], float]],
                args: Args, device: str, ref: Policy | None = None) -> dict:
    """One optimiser step on (prompt ids, sampled completion ids, advantage) triples.

    The loss of each micro-batch of `args.micro_batch` sequences is normalised by the WHOLE batch's token
    (or sequence) count, so the accumulated gradient does not depend on the micro-batch size. The old
    log-probs are the current ones, detached (one epoch: the ratio is exactly 1), or with --ppo-epochs > 1
    those of one no-grad pass before the first update. With --kl-beta > 0 the KL term scores the
    completions under `ref` (the frozen policy the run started from, runs.reference_policies), or, for
    fresh LoRA adapters (ref None), under the policy's own base with the adapters switched off
    (lora.disabled), which is where they started.
    """
    policy.model.train()
    mbs = plumbing.micro_batches(batch, args.micro_batch)
    denom = plumbing.loss_denominator(batch, args.loss_agg)
    old = plumbing.old_logprobs(policy, mbs, args, device)  # None with one epoch
    sums = {"loss": 0.0, "clip_frac": 0.0, "kl": 0.0, "tokens": 0.0}
    for _epoch in range(args.ppo_epochs):
        opt.zero_grad(set_to_none=True)
        for k, mb in enumerate(mbs):
            prompts, completions = [p for p, _, _ in mb], [c for _, c, _ in mb]
            adv = torch.tensor([a for _, _, a in mb], dtype=torch.float32, device=device)  # (B,)
            with autocast(device, args.precision):
                logp, mask = models.policy_logprobs(policy, prompts, completions, args.temperature)  # (B, T-1) each
                ref_logp = models.reference_logprobs(policy, ref, prompts, completions,  # (B, T-1)
                                                     args.temperature) if args.kl_beta > 0 else None
            old_logp = logp.detach() if old is None else old[k]  # (B, T-1)
            loss, stats = policy_loss(logp, old_logp, adv, mask, args.clip_eps, denom, args.loss_agg,
                                      ref_logp, args.kl_beta)
            plumbing.check_finite(loss, f"loss for {policy.name}: stopping this step rather than replacing "
                                        "it; lower --lr or check the inputs")
            loss.backward()
            for key, value in (stats | {"loss": loss.item()}).items():
                sums[key] += value
        grad_norm = plumbing.clip_and_step(policy, opt, args.max_grad_norm)
    return plumbing.update_stats(sums, grad_norm, args.ppo_epochs)


# ---------------------------------------------------------------- A1.6: the loss

def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
                clip_eps: float, denom: float, agg: str = "token", ref_logp: torch.Tensor | None = None,
                kl_beta: float = 0.0) -> tuple[torch.Tensor, dict]:
    """Clipped group-relative policy-gradient loss of one micro-batch: Eq. 16 (GRPO's Eq. 6, Eq. 8 KL).

    Per completion token t of sequence i (all tensors (B, T), adv (B,) broadcast to every token):
        rho   = exp(logp - old_logp)                                  ratio pi_theta / pi_old
        pg    = -min(rho * A_i, clip(rho, 1-eps, 1+eps) * A_i)
        kl    = exp(ref - logp) - (ref - logp) - 1                    k3 estimator of KL(pi_theta || pi_ref)
        l_it  = pg + kl_beta * kl                                     (the kl term only when ref_logp is given
                                                                       and kl_beta > 0)
    Aggregation (one rule, documented, invariant to micro-batching because `denom` is the WHOLE batch's):
        token:    loss = sum_{i,t} mask * l_it / denom,   denom = completion tokens in the batch
        sequence: loss = sum_i (sum_t mask * l_it / len_i) / denom,   denom = sequences in the batch,
                  len_i = sum_t mask[i, t], taken as 1 for an empty row (which then adds 0)
        any other `agg`: ValueError.
    Gradient: both sides of the min carry it (the clipped side is a function of logp too); at ratio 1
    (one update epoch) d loss / d logp[i, t] = -A_i * mask[i, t] / denom (token) or
    -A_i * mask[i, t] / (len_i * denom) (sequence), and it is 0 where the clipped side is the minimum.
    The loss keeps the dtype and device of `logp` (float64 in, float64 out): no cast.
    Returns (loss, stats). stats are SUMS over the masked tokens of this micro-batch, as Python floats
    (grpo_update adds them over micro-batches and divides once by the batch's token count):
        "clip_frac"  number of tokens whose ratio is outside [1 - eps, 1 + eps]
        "kl"         sum of the k3 term (0.0 without a reference)
        "tokens"     number of completion tokens, sum(mask)
    Worked example: adv = [1, -1], mask = [[1,1,0],[1,0,0]], rho = 1 everywhere, token aggregation ->
        l = [[-1,-1,0],[1,0,0]], loss = (-1 - 1 + 1) / 3 = -1/3, stats {clip_frac 0, kl 0, tokens 3}.
    """
    ### BEGIN SOLUTION (assignment 3)
    ratio = torch.exp(logp - old_logp)  # (B, T)
    a = adv[:, None]  # (B, 1)
    pg = -torch.minimum(ratio * a, ratio.clamp(1 - clip_eps, 1 + clip_eps) * a)  # (B, T)
    per_token = pg
    kl = torch.zeros_like(pg)
    if ref_logp is not None and kl_beta > 0:
        d = ref_logp - logp  # (B, T)
        kl = torch.exp(d) - d - 1
        per_token = pg + kl_beta * kl
    if agg == "token":
        loss = (per_token * mask).sum() / denom
    elif agg == "sequence":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).sum() / denom
    else:
        raise ValueError(f"--loss-agg must be 'token' or 'sequence', got {agg!r}")
    with torch.no_grad():
        n = mask.sum()
        stats = {"clip_frac": (((ratio - 1).abs() > clip_eps).float() * mask).sum().item(),
                 "kl": (kl * mask).sum().item(), "tokens": n.item()}
    return loss, stats
    ### END SOLUTION


if __name__ == "__main__":
    command(main, Args, __doc__)
