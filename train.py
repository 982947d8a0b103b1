"""CoMAM training: joint reinforcement learning of the three agents with ranking-consistency credit.

    python train.py                                  # CoMAM on the synthetic benchmark, from the shipped warm start
    python train.py --credit local --seed 2          # an ablation (credit modes: comam local global equal fixed)
    python train.py --mode independent               # the independent-RL baseline (one agent at a time)
    python train.py --shared-policy                  # one policy for all three roles (Table 3)
    python train.py --resume --exp-name comam        # continue runs/comam-s1 from its last checkpoint
    python train.py --help                           # every flag

One iteration (the paper's Algorithm 1; `train_step` below):
  1. sample Q queries; for each, G full trajectories extraction -> profile -> retrieval   comam.rollout
  2. local rewards r_0, r_1, r_2 (Eqs. 9-11) and global reward r_3 (Eq. 12)             rewards.py
  3. per query: v_n = NDCG (Eq. 13), w_n = softmax (Eq. 14), r_final (Eq. 15)            credit.integrated_rewards
  4. group-normalised advantages (Eq. 16)                                                credit.group_advantages
  5. one clipped policy-gradient update of every trained agent                          grpo_update / policy_loss
Logs go to runs/<exp-name>-s<seed>/log.jsonl (one JSON object per step), checkpoints to .../ckpt.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import pickle
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import agents
import comam
import rewards
from agents import Budgets, Policy
import eval as evaluation
from cli import (InputError, autocast, check, command, choice, finite, parse_args, positive, read_json, recover_folder,
                 replace_folder, resolve_device, seed_everything)
from credit import CREDIT_MODES, VARIANTS, group_advantages, integrated_rewards
from data.example import Example, read_split
from data.generate import ensure


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
    context_sessions: int = 0
    """in training, the retrieval agent's memory also holds the informative lines and statements of the N sessions before the evidence session (0 = the paper's setting)"""
    steps: int = 100
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
    """k3 KL penalty to the frozen initial policy (0 = no reference model loaded)"""
    loss_agg: str = "token"
    """token: mean over all completion tokens of the batch | sequence: mean over sequences of per-sequence token means"""
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
    save_every: int = 25
    """checkpoint every N steps (and at the end)"""
    resume: bool = False
    """continue the run from its last checkpoint (same data order and random state)"""
    device: str = "auto"
    """auto (CUDA if available, with bf16 autocast) | cpu | cuda"""
    scale: float = 0.0
    """multiply every context budget and generation limit; 0 = derive from the tokenizer (tokens per word, printed)"""
    gradient_checkpointing: bool = False
    """recompute activations in the backward pass (less memory, ~30% slower): for real models on small GPUs"""
    train_users: int = 300
    """users of the generated benchmark's train split (only used when generating it)"""


# ======================================================================== plumbing: policies, data order

def load_policies(args: Args, device: str, path: Path | None = None) -> dict[str, Policy]:
    """role -> policy, from --model (or a run's checkpoint `path`); with --shared-policy the three roles
    hold the same object (the extraction agent's policy)."""
    if path is not None:
        names = {role: str(path / (agents.ROLES[0] if args.shared_policy else role)) for role in agents.ROLES}
    else:
        names = {role: getattr(args, f"model_{role}") or args.model for role in agents.ROLES}
    if args.shared_policy:
        shared = agents.load_policy(names[agents.ROLES[0]], agents.ROLES[0], device)
        policies = {role: shared for role in agents.ROLES}
    else:
        policies = agents.load_policies(names, device)
    if args.gradient_checkpointing:
        for pol in unique(policies).values():
            agents.enable_checkpointing(pol.model)
    return policies


def trained_roles(args: Args, step: int) -> list[str]:
    """Joint: every agent. Independent: agent k during the k-th third of the steps (others frozen)."""
    if args.mode == "joint":
        return list(agents.ROLES)
    phase = min(2, step * 3 // max(1, args.steps))
    return [agents.ROLES[phase]]


def batch_at(examples: list[Example], step: int, n: int, seed: int) -> list[Example]:
    """The n queries of iteration `step`: a fresh seeded permutation per epoch (stateless, for --resume)."""
    out, per_epoch = [], len(examples)
    for i in range(step * n, (step + 1) * n):
        epoch, k = divmod(i, per_epoch)
        order = np.random.default_rng([seed, epoch]).permutation(per_epoch)
        out.append(examples[order[k]])
    return out


# ======================================================================== the algorithm: GRPO policy loss

def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
                clip_eps: float, denom: float, agg: str = "token", ref_logp: torch.Tensor | None = None,
                kl_beta: float = 0.0) -> tuple[torch.Tensor, dict]:
    """Clipped group-relative policy-gradient loss of one micro-batch (Eq. 16 and the GRPO objective).

    Per completion token t of sequence i (all tensors (B, T), adv (B,) broadcast to every token):
        rho   = exp(logp - old_logp)                                  ratio pi_theta / pi_old
        pg    = -min(rho * A_i, clip(rho, 1-eps, 1+eps) * A_i)
        kl    = exp(ref - logp) - (ref - logp) - 1                    k3 estimator of KL(pi_theta || pi_ref)
        l_it  = pg + kl_beta * kl
    Aggregation (one rule, documented, invariant to micro-batching because `denom` is the WHOLE batch's):
        token:    loss = sum_{i,t} mask * l_it / denom,   denom = completion tokens in the batch
        sequence: loss = sum_i (sum_t mask * l_it / len_i) / denom,   denom = sequences in the batch
    Worked example: adv = [1, -1], mask = [[1,1,0],[1,0,0]], rho = 1 everywhere, token aggregation ->
        l = [[-1,-1,0],[1,0,0]], loss = (-1 - 1 + 1) / 3 = -1/3.
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


def grpo_update(policy: Policy, opt: torch.optim.Optimizer, batch: list[tuple[list[int], list[int], float]],
                args: Args, device: str, ref: Policy | None = None) -> dict:
    """One optimiser step on (prompt ids, sampled completion ids, advantage) triples.

    Gradients are accumulated over micro-batches of `args.micro_batch` sequences; the loss of each is
    normalised by the whole batch's token (or sequence) count, so the summed gradient does not depend
    on the micro-batch size. With ppo_epochs > 1, the old log-probs come from one no-grad pass before
    the first update (so the ratio is exactly 1 at the first update either way).
    """
    model = policy.model
    model.train()
    mbs = [batch[i:i + args.micro_batch] for i in range(0, len(batch), args.micro_batch)]
    denom = sum(len(c) for _, c, _ in batch) if args.loss_agg == "token" else len(batch)
    old = None
    if args.ppo_epochs > 1:
        with torch.no_grad(), autocast(device):
            old = [agents.completion_logprobs(model, [p for p, _, _ in mb], [c for _, c, _ in mb],
                                              policy.pad_id, args.temperature)[0] for mb in mbs]
    totals = {"loss": 0.0, "clip_frac": 0.0, "kl": 0.0, "tokens": 0.0, "grad_norm": 0.0}
    for _epoch in range(args.ppo_epochs):
        opt.zero_grad(set_to_none=True)
        for k, mb in enumerate(mbs):
            prompts, comps = [p for p, _, _ in mb], [c for _, c, _ in mb]
            adv = torch.tensor([a for _, _, a in mb], dtype=torch.float32, device=device)  # (B,)
            with autocast(device):
                logp, mask = agents.completion_logprobs(model, prompts, comps, policy.pad_id, args.temperature)
                ref_logp = None
                if ref is not None:
                    with torch.no_grad():
                        ref_logp = agents.completion_logprobs(ref.model, prompts, comps, policy.pad_id,
                                                              args.temperature)[0]
            old_logp = logp.detach() if old is None else old[k]
            loss, st = policy_loss(logp, old_logp, adv, mask, args.clip_eps, denom, args.loss_agg,
                                   ref_logp, args.kl_beta)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss ({loss.item()}) for {policy.name}: stopping this step "
                                         "rather than replacing it; lower --lr or check the inputs")
            loss.backward()
            totals["loss"] += loss.item()
            for key in ("clip_frac", "kl", "tokens"):
                totals[key] += st[key]
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        if not torch.isfinite(gn):
            raise FloatingPointError(f"non-finite gradient norm for {policy.name}: stopping this step")
        opt.step()
        totals["grad_norm"] = gn.item()
    tokens = max(1.0, totals.pop("tokens"))
    return {"loss": totals["loss"] / args.ppo_epochs, "clip_frac": totals["clip_frac"] / tokens,
            "kl": totals["kl"] / tokens, "grad_norm": totals["grad_norm"], "tokens": tokens / args.ppo_epochs}


def credit_step(groups: list[list[comam.Trajectory]], args: Args) -> tuple[dict[str, list], dict]:
    """Eqs. 13-16 for every query group: advantages per role, and the means of r, v, w for logging.

    Two extra diagnostics explain how much the credit rule can matter at all:
      global_flat  fraction of groups whose G global rewards are all equal: there Eq. 13 gives v = 1 for
                   every agent (so adaptive w = 1/3), and r_3, constant over the group, moves no advantage
      w_spread     mean over groups of max_n w_n - min_n w_n: 0 means equal share
    """
    per_role = {role: [] for role in agents.ROLES}
    logs = {"v": [], "w": [], "local_rewards": [], "global_reward": [], "zero_std": [], "global_flat": [],
            "w_spread": []}
    for group in groups:
        local_rewards = np.array([t.local_rewards for t in group], dtype=np.float64).T  # (3, G)
        global_rewards = np.array([t.global_reward for t in group], dtype=np.float64)  # (G,)
        r_final, v, w = integrated_rewards(local_rewards, global_rewards, args.credit, args.fixed_w,
                                           args.credit_variant, args.credit_temp)  # (3, G), (3,), (3,)
        adv = group_advantages(r_final)  # (3, G)
        for n, role in enumerate(agents.ROLES):
            for t, a in zip(group, adv[n]):
                act = t.actions[role]
                if act.completion:  # an agent that was not called (empty input) took no action
                    per_role[role].append((act.prompt, act.completion, float(a)))
        logs["v"].append(v)
        logs["w"].append(w)
        logs["local_rewards"].append(np.nanmean(local_rewards, axis=1) if not np.isnan(local_rewards).all()
                                     else np.full(3, np.nan))
        logs["global_reward"].append(global_rewards.mean())
        logs["zero_std"].append((np.abs(adv).sum(axis=1) == 0))
        logs["global_flat"].append(float(np.all(global_rewards == global_rewards[0])))
        logs["w_spread"].append(float(w.max() - w.min()))
    return per_role, {k: np.mean(np.stack(v), axis=0) for k, v in logs.items()}


# ======================================================================== plumbing: optimizers, checkpoints, the run folder

def unique(policies: dict[str, Policy]) -> dict[str, Policy]:
    """role -> policy, each distinct policy once (under its first role)."""
    seen, out = set(), {}
    for role, pol in policies.items():
        if id(pol) not in seen:
            seen.add(id(pol))
            out[role] = pol
    return out


def make_optimizers(policies: dict[str, Policy], lr: float) -> dict:
    return {role: torch.optim.AdamW(pol.model.parameters(), lr=lr, weight_decay=0.0)
            for role, pol in unique(policies).items()}


def save_checkpoint(run: Path, policies: dict[str, Policy], opts: dict, step: int, args: Args) -> None:
    """Write run/ckpt atomically (cli.replace_folder): the policies, their optimizer states, the step."""
    def write(tmp: Path) -> None:
        for role, pol in unique(policies).items():
            pol.model.save_pretrained(tmp / role)
            pol.tokenizer.save_pretrained(tmp / role)
            torch.save(opts[role].state_dict(), tmp / role / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, "args": asdict(args)}, indent=2))
    replace_folder(run / "ckpt", write)


def check_args(args: Args) -> None:
    """Every flag's value, checked before anything is loaded or written (InputError naming the flag)."""
    for flag in ("steps", "queries", "micro_batch", "save_every", "ppo_epochs", "train_users"):
        positive(getattr(args, flag), "--" + flag.replace("_", "-"))
    positive(args.group_size, "--group-size", 2)  # a group of one has no relative advantage
    for flag in ("eval_every", "eval_users"):
        positive(getattr(args, flag), "--" + flag.replace("_", "-"), 0)
    finite(args.temperature, "--temperature", 0.0, low_open=True)  # 0 would be greedy: no exploration
    finite(args.eval_temperature, "--eval-temperature")
    finite(args.lr, "--lr", 0.0, low_open=True)
    finite(args.clip_eps, "--clip-eps", 0.0, low_open=True)
    finite(args.max_grad_norm, "--max-grad-norm", 0.0, low_open=True)
    finite(args.credit_temp, "--credit-temp", 0.0, low_open=True)
    for flag in ("kl_beta", "fixed_w", "scale"):
        finite(getattr(args, flag), "--" + flag.replace("_", "-"))
    choice(args.credit, "--credit", CREDIT_MODES)
    choice(args.credit_variant, "--credit-variant", VARIANTS)
    choice(args.mode, "--mode", ("joint", "independent"))
    choice(args.loss_agg, "--loss-agg", ("token", "sequence"))
    choice(args.mislead, "--mislead", ("none",) + agents.ROLES[:2])
    positive(args.context_sessions, "--context-sessions", 0)
    resolve_device(args.device)


# flags that may differ when a run is resumed: they change how long it runs, where its folder is seen
# from, or how it is computed, not what it computes (the loss does not depend on --micro-batch;
# checkpointing only trades memory for time)
MAY_CHANGE_ON_RESUME = ("steps", "eval_every", "save_every", "micro_batch", "gradient_checkpointing", "device",
                        "resume", "out", "share_prompts")


def run_folder(args: Args) -> Path:
    return Path(args.out) / f"{args.exp_name}-s{args.seed}"


def resumed_args(args: Args) -> Args:
    """With --resume and a checkpoint: the run's own flags. A flag left at its default takes the run's
    value; a flag given with another value than the run's is an error listing every such flag (it would
    change the run), except MAY_CHANGE_ON_RESUME. Without a checkpoint, `args` as they are."""
    if args.resume:
        recover_folder(run_folder(args) / "ckpt")  # a crash inside save_checkpoint
    state = run_folder(args) / "ckpt" / "state.json"
    if not args.resume or not state.exists():
        return args
    saved, default = read_json(state).get("args", {}), Args()
    merged, conflicts = {}, []
    for f in dataclasses.fields(Args):
        mine, theirs = getattr(args, f.name), saved.get(f.name, getattr(default, f.name))
        if f.name in MAY_CHANGE_ON_RESUME or mine == theirs:
            merged[f.name] = mine
        elif mine == getattr(default, f.name):
            merged[f.name] = theirs
        else:
            conflicts.append(f"--{f.name.replace('_', '-')} {mine} (the run's: {theirs})")
    check(not conflicts, f"--resume: {', '.join(conflicts)} would change the run {run_folder(args)}; "
          "leave them out, or start a new run with another --exp-name")
    return Args(**merged)


def open_run(args: Args, device: str) -> tuple[Path, dict, dict, int]:
    """The run folder, its policies and optimizers, and the step to start from (0, or the checkpoint's).

    A run with a checkpoint continues with --resume only. A run folder without one (its first attempt
    died before the first checkpoint) starts again from step 0, its partial logs replaced. A crash
    inside save_checkpoint is undone first (cli.recover_folder)."""
    run = run_folder(args)
    recover_folder(run / "ckpt")
    state_file = run / "ckpt" / "state.json"
    if not state_file.exists():
        check(run.exists() or not args.resume, f"--resume: there is no run at {run}")
        check(not (run / "summary.json").exists(), f"{run} has finished (summary.json) but has no checkpoint")
        if run.exists():
            print(f"{run} has no checkpoint (its first attempt stopped before one): starting it again")
            for name in ("log.jsonl", "eval.jsonl"):
                (run / name).unlink(missing_ok=True)
        policies = load_policies(args, device)
        run.mkdir(parents=True, exist_ok=True)
        (run / "args.json").write_text(json.dumps(asdict(args), indent=2))
        return run, policies, make_optimizers(policies, args.lr), 0
    check(args.resume, f"{run} exists and has a checkpoint: pass --resume to continue it, or another "
          "--exp-name / --seed")
    start = read_json(state_file)["step"]
    check(args.steps > start, f"--steps {args.steps}: the run's checkpoint is at step {start}; "
          f"give --steps larger than {start} to continue it")
    policies = load_policies(args, device, run / "ckpt")
    opts = make_optimizers(policies, args.lr)
    for role, opt in opts.items():
        opt.load_state_dict(load_optimizer(run / "ckpt" / role / "optimizer.pt", device))
    truncate_log(run / "log.jsonl", start)
    (run / "args.json").write_text(json.dumps(asdict(args), indent=2))  # the flags in use from now on
    with open(run / "resumes.jsonl", "a") as f:
        f.write(json.dumps({"at_step": start, "steps": args.steps, "eval_every": args.eval_every,
                            "save_every": args.save_every, "micro_batch": args.micro_batch,
                            "device": args.device}) + "\n")
    print(f"resuming {run} at step {start}")
    return run, policies, opts, start


def load_optimizer(path: Path, device: str) -> dict:
    try:
        return torch.load(path, map_location=device)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise InputError(f"{path}: cannot read the optimizer state ({e}); the checkpoint is damaged") from None


def truncate_log(path: Path, step: int) -> None:
    """Keep the log lines of steps up to `step` (the checkpoint's). A last line cut short by a kill is
    dropped; any other line that does not parse is an InputError naming it."""
    if not path.exists():
        return
    lines, kept = path.read_text().splitlines(), []
    for k, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            check(k == len(lines), f"{path}:{k}: not valid JSON; the log is damaged")
            continue
        if row.get("step", 0) <= step:
            kept.append(line)
    path.write_text("".join(l + "\n" for l in kept))


def validate(policies, val_set, limits, args: Args, run: Path, tag: str) -> dict:
    """Evaluate as deployed on the validation users (eval.evaluate) and append the result to eval.jsonl."""
    res = evaluation.evaluate(policies, val_set, *limits, temperature=args.eval_temperature, seed=args.seed,
                              desc=f"eval {tag}")
    with open(run / "eval.jsonl", "a") as f:
        f.write(json.dumps({"tag": tag, **res}) + "\n")
    print(f"[{tag}] validation accuracy {res['accuracy']:.3f}  " +
          "  ".join(f"{k}={v:.3f}" for k, v in res["local"].items() if v is not None))
    return res


def logged_evaluation(run: Path, tag: str) -> dict | None:
    """An evaluation this run logged before it was interrupted (the warm start's, on --resume)."""
    path = run / "eval.jsonl"
    for k, line in enumerate(path.read_text().splitlines() if path.exists() else [], 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise InputError(f"{path}:{k}: not valid JSON; the evaluation log is damaged") from None
        if row.get("tag") == tag:
            return {k: v for k, v in row.items() if k != "tag"}
    return None


def log_row(step: int, roles: list[str], groups, credit_log: dict, stats: dict, seconds: dict) -> dict:
    """One line of log.jsonl: rewards, credit, format failures, lengths, update statistics, speed."""
    trajs = [t for g in groups for t in g]
    per_role = lambda key, values: {f"{key}_{r}": float(v) for r, v in zip(agents.ROLES, values)}
    gen_tokens = sum(len(a.completion) for t in trajs for a in t.actions.values())
    upd_tokens = sum(s["tokens"] for s in stats.values())
    return {"step": step, "trained": roles, "global_reward": float(credit_log["global_reward"]),
            **per_role("local", credit_log["local_rewards"]), **per_role("v", credit_log["v"]),
            **per_role("w", credit_log["w"]), **per_role("zero_std", credit_log["zero_std"]),
            "global_flat": float(credit_log["global_flat"]), "w_spread": float(credit_log["w_spread"]),
            **per_role("format_fail", [np.mean([not t.actions[r].ok for t in trajs]) for r in agents.ROLES]),
            **per_role("len", [np.mean([len(t.actions[r].completion) for t in trajs]) for r in agents.ROLES]),
            **{f"{k}_{r}": v for r, s in stats.items() for k, v in s.items() if k != "tokens"},
            "gen_tok_s": gen_tokens / max(seconds["rollout"], 1e-9),
            "upd_tok_s": upd_tokens / max(seconds["update"], 1e-9), "step_s": seconds["step"]}


def console_line(row: dict, stats: dict) -> str:
    return (f"step {row['step']:4d} | global {row['global_reward']:.3f} | local " +
            " ".join(f"{row['local_' + r]:.3f}" for r in agents.ROLES) + " | w " +
            " ".join(f"{row['w_' + r]:.2f}" for r in agents.ROLES) +
            f" | kl {np.mean([s['kl'] for s in stats.values()]):.4f} clip "
            f"{np.mean([s['clip_frac'] for s in stats.values()]):.3f} | {row['step_s']:.2f}s")


# ======================================================================== experiments beyond the paper

def plant_misleading_reward(groups, agent: str) -> float:
    """--mislead: replace one agent's local reward by a planted one that points the wrong way
    (rewards.assistant_share_reward for extraction, rewards.statement_count_reward for profile).
    Returns the batch mean of the agent's own (paper) reward, for the log."""
    n = agents.ROLES.index(agent)
    paper = []
    for t in (t for g in groups for t in g):
        paper.append(t.local_rewards[n])
        t.local_rewards[n] = (rewards.assistant_share_reward(t.memory_lines) if agent == "extraction"
                              else rewards.statement_count_reward(t.profile))
    return float(np.nanmean(paper)) if paper and not np.isnan(paper).all() else float("nan")


def prior_memory(ex: Example, n: int) -> tuple[list, list[str]]:
    """--context-sessions n: the informative lines and ground-truth statements of the n sessions before
    the evidence session, as a perfect memory construction would have stored them."""
    sessions = ex.sessions[max(0, ex.evidence_session - n):ex.evidence_session]
    lines = [l for s in sessions for l in s.lines if l.id in (s.notes or {})]
    return lines, [st for s in sessions for st in (s.profile or [])]


# ======================================================================== Algorithm 1: one iteration

def update_policies(policies: dict[str, Policy], opts: dict, per_role: dict, roles: list[str], args: Args,
                    device: str, refs: dict) -> dict:
    """One GRPO update of every trained policy; a shared policy gets the three roles' batches together."""
    stats = {}
    for owner, pol in unique(policies).items():
        batch = [x for r in roles if policies[r] is pol for x in per_role[r]]
        if batch:
            stats[owner] = grpo_update(pol, opts[owner], batch, args, device, refs.get(owner))
    return stats


def train_step(step: int, policies: dict[str, Policy], opts: dict, refs: dict, train_set: list[Example],
               limits: tuple, args: Args, device: str) -> tuple[dict, dict]:
    """Algorithm 1, one iteration: rollout -> rewards -> credit -> update. Returns (log row, update stats)."""
    t0 = time.time()
    gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)  # this step's sampling randomness
    queries = batch_at(train_set, step, args.queries, args.seed)
    for p in unique(policies).values():
        p.model.eval()
    prior = [prior_memory(ex, args.context_sessions) for ex in queries] if args.context_sessions else None
    with autocast(device):  # 1-2. G full trajectories per query, each scored by Eqs. 9-12
        groups = comam.rollout(policies, queries, args.group_size, *limits, args.temperature, gen, prior)
    paper_reward = plant_misleading_reward(groups, args.mislead) if args.mislead != "none" else None
    t1 = time.time()
    per_role, credit_log = credit_step(groups, args)  # 3-4. Eqs. 13-16: credit, advantages
    roles = trained_roles(args, step)
    stats = update_policies(policies, opts, per_role, roles, args, device, refs)  # 5. clipped update
    seconds = {"rollout": t1 - t0, "update": time.time() - t1, "step": time.time() - t0}
    row = log_row(step + 1, roles, groups, credit_log, stats, seconds)
    if paper_reward is not None:  # the misled agent's own reward of Eqs. 9/10, beside the planted one
        row[f"paper_local_{args.mislead}"] = paper_reward
    return row, stats


def main(args: Args) -> dict:
    check_args(args)
    args = resumed_args(args)
    device = resolve_device(args.device)
    seed_everything(args.seed)
    folder = ensure(args.data, ("train", "val"), args.train_users)
    train_set = [ex for ex in read_split(folder, "train") if ex.evidence_session is not None]
    val_set = evaluation.subset_users(read_split(folder, "val"), args.eval_users)
    run, policies, opts, start = open_run(args, device)
    refs = {role: Policy(copy.deepcopy(p.model).eval().requires_grad_(False), p.tokenizer, p.name)
            for role, p in unique(policies).items()} if args.kl_beta > 0 else {}
    budgets, max_new, scale = agents.fit_limits(policies["extraction"], train_set, args.scale)
    print(f"context limits ({'derived: ' if args.scale <= 0 else ''}{scale:.3f} tokens per word): {budgets}, {max_new}")
    limits = (budgets, max_new)

    before = validate(policies, val_set, limits, args, run, "no-train") if start == 0 else \
        logged_evaluation(run, "no-train")
    bar = tqdm(range(start, args.steps), desc=args.exp_name, dynamic_ncols=True, initial=start, total=args.steps)
    for step in bar:
        with agents.prompt_sharing(args.share_prompts):
            row, stats = train_step(step, policies, opts, refs, train_set, limits, args, device)
        with open(run / "log.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        bar.set_postfix(glob=f"{row['global_reward']:.2f}")
        tqdm.write(console_line(row, stats))
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            save_checkpoint(run, policies, opts, step + 1, args)
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            validate(policies, val_set, limits, args, run, f"step-{step + 1}")

    after = validate(policies, val_set, limits, args, run, "final")
    summary = {"run": str(run), "no_train": before, "final": after}
    (run / "summary.json").write_text(json.dumps(summary, indent=2))
    if before is not None:
        print(evaluation.comparison_table({"no train (warm start)": [before], "CoMAM-trained": [after]}, local=True))
    return summary


if __name__ == "__main__":
    command(main, Args, __doc__)
