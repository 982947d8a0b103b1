"""A training run's bookkeeping: its folder, flags, policies, checkpoints, resume and logs.

    runs/<exp-name>-s<seed>/
        .comam-run      the marker that this folder is a run of train.py (its id, name, seed, creation
                        time), written first: nothing in a folder without it is ever replaced or deleted
        args.json       the flags in use (rewritten on resume)
        log.jsonl       one JSON object per step (`log_row`)
        eval.jsonl      one JSON object per evaluation (no-train, step-N, final)
        resumes.jsonl   one line per --resume
        summary.json    the no-train and final evaluations, written at the end
        ckpt/           state.json (step, flags) + one folder per policy: a whole model
                        (model.safetensors) or LoRA adapters (adapter_model.safetensors), its tokenizer
                        and optimizer.pt; written atomically (cli.replace_folder)

Nothing here is CoMAM: train.py holds the algorithm and calls these.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError

import agents
import distributed
import eval as evaluation
import lora
import models
import rewards
import sharing
from cli import (COMPLETE, PRECISIONS, FolderLock, InputError, check, check_seed, choice, finite, output_folder, positive,
                 read_json, read_lines, recover_folder, replace_folder, resolve_device, resolve_precision)
from credit import CREDIT_MODES, VARIANTS
from data.example import read_split
from data.generate import ensure
from models import Policy

# flags that may differ when a run is resumed: they change how long it runs, where its folder is seen
# from, or how it is computed, not what it computes (the loss does not depend on --micro-batch;
# checkpointing only trades memory for time; shared prompts give the same numbers)
MAY_CHANGE_ON_RESUME = ("steps", "eval_every", "save_every", "micro_batch", "gradient_checkpointing", "device",
                        "resume", "out", "exp_name", "share_prompts", "precision")


# ======================================================================== flags

def check_args(args) -> None:
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
    choice(args.eval_history, "--eval-history", ("whole", "evidence"))
    choice(args.mislead, "--mislead", ("none",) + agents.ROLES[:2])
    positive(args.context_sessions, "--context-sessions", 0)
    positive(args.train_sessions, "--train-sessions", 0)
    check(not (args.train_sessions and args.context_sessions), "--train-sessions builds the memory of the sessions "
          "before the evidence session with the agents themselves; --context-sessions puts a perfect one there: give one of them")
    finite(args.extraction_alpha, "--extraction-alpha")
    check(args.extraction_alpha <= 1.0, f"--extraction-alpha must be in [0, 1], got {args.extraction_alpha}")
    check(not (args.mislead == "extraction" and args.extraction_alpha != rewards.EXTRACTION_ALPHA),
          "--mislead extraction replaces r_0, so --extraction-alpha would change nothing: give one of them")
    positive(args.lora_rank, "--lora-rank", -1)
    finite(args.lora_alpha, "--lora-alpha", 0.0, low_open=True)
    lora.target_names(args.lora_targets)
    check_seed(args.seed)
    check_name(args.exp_name)
    resolve_device(args.device)
    choice(args.precision, "--precision", PRECISIONS)


def check_name(name: str) -> None:
    """--exp-name is a name, not a path: the run's folder is <--out>/<name>-s<seed>, inside --out."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"--exp-name {name!r}: not UTF-8 text; give a name of letters, digits, '-', '_'") from None
    check(bool(name) and name not in (".", "..") and not any(c in name for c in "/\\\0") and not os.path.isabs(name),
          f"--exp-name {name!r} is a name, not a path (no '/', '\\', '..' or absolute path): the run's folder is "
          "<--out>/<name>-s<seed>; use --out to choose where runs go")


def resolve_lora_rank(args):
    """--lora-rank -1 (auto) made concrete, before the run starts (so that args.json and resume see it):
    the rank of the adapters --model already holds, else 0 (full fine-tuning) for the tiny model and
    DEFAULT_LORA_RANK for a chat model. An explicit rank that differs from --model's adapters is an error."""
    name = args.model_extraction or args.model
    folder = models.adapter_folder(name, agents.ROLES[0])
    saved = lora.read_config(folder)[0].rank if folder is not None else None
    if args.lora_rank < 0:
        rank = saved if saved is not None else (DEFAULT_LORA_RANK if models.is_chat_model(name) else 0)
        return dataclasses.replace(args, lora_rank=rank)
    check(saved is None or args.lora_rank in (0, saved), f"--lora-rank {args.lora_rank}: {name} holds rank-{saved} "
          f"adapters; leave --lora-rank out to train them, or give 0 to merge them and fine-tune the whole model")
    return args


DEFAULT_LORA_RANK = 16  # real models: see lora.py and docs/method.md (decision 16)


def run_folder(args) -> Path:
    return Path(args.out) / f"{args.exp_name}-s{args.seed}"


MARKER = ".comam-run"  # written first into a run folder: what proves that train.py made it


def is_run_folder(path: Path) -> bool:
    """Did train.py make this folder? Its marker says so. A run made before the marker existed proves
    itself by a checkpoint whose saved flags name this folder (it gets its marker when resumed)."""
    try:
        marker = json.loads((path / MARKER).read_text(encoding="utf-8"))
        return isinstance(marker, dict) and marker.get("made_by") == "train.py"
    except (OSError, ValueError):
        pass
    try:
        saved = json.loads((path / "ckpt" / "state.json").read_text(encoding="utf-8")).get("args", {})
        return f"{saved['exp_name']}-s{saved['seed']}" == path.name
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return False


def check_run_folder(folder: Path) -> None:
    """The one rule before anything in `folder` is written, replaced or deleted: new, empty, or ours."""
    output_folder(folder, "--out", is_run_folder, f"a run folder of train.py (no {MARKER} marker)")


def write_marker(folder: Path, args) -> None:
    """The marker of a run folder, with the run's identity (kept by a rename: the id is not the name)."""
    if not (folder / MARKER).is_file() or not is_run_folder(folder):
        (folder / MARKER).write_text(json.dumps({"made_by": "train.py", "id": uuid.uuid4().hex, "exp_name": args.exp_name,
                                               "seed": args.seed, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))


def resumed_args(args):
    """With --resume and a checkpoint: the run's own flags. A flag left at its default takes the run's
    value; a flag given with another value than the run's is an error listing every such flag (it would
    change the run), except MAY_CHANGE_ON_RESUME. Without a checkpoint, `args` as they are."""
    if args.resume:
        check_run_folder(run_folder(args))
        recover_folder(run_folder(args) / "ckpt")  # a crash inside save_checkpoint
    state = run_folder(args) / "ckpt" / "state.json"
    if not args.resume or not state.exists():
        return args
    cls = type(args)
    saved, default = read_json(state).get("args", {}), cls()
    check(isinstance(saved, dict), f"{state}: field 'args' must be an object; the checkpoint state is damaged")
    merged, conflicts = {}, []
    for f in dataclasses.fields(cls):
        mine, theirs = getattr(args, f.name), _typed(saved.get(f.name, getattr(default, f.name)), f.name,
                                                     getattr(default, f.name), state)
        if f.name in MAY_CHANGE_ON_RESUME or mine == theirs:
            merged[f.name] = mine
        elif mine == getattr(default, f.name):
            merged[f.name] = theirs
        else:
            conflicts.append(f"--{f.name.replace('_', '-')} {mine} (the run's: {theirs})")
    check(not conflicts, f"--resume: {', '.join(conflicts)} would change the run {run_folder(args)}; "
          "leave them out, or start a new run with another --exp-name")
    try:  # flags read back from a run are checked like flags given on the command line
        check_args(cls(**merged))
    except InputError as e:
        raise InputError(f"{state}: {e} (the run's saved flags were edited or are damaged)") from None
    return cls(**merged)


def _typed(value, name: str, default, where: Path):
    """A flag's value read back from state.json, of its field's type (an int is a float too)."""
    kind = type(default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    check(isinstance(value, kind) and (kind is bool or not isinstance(value, bool)),
          f"{where}: field 'args.{name}' must be {kind.__name__}, got {value!r} (the run's saved flags were "
          "edited or are damaged)")
    return value


# ======================================================================== policies and optimizers

def unique(policies: dict[str, Policy]) -> dict[str, Policy]:
    """role -> policy, each distinct policy once (under its first role)."""
    seen, out = set(), {}
    for role, pol in policies.items():
        if id(pol) not in seen:
            seen.add(id(pol))
            out[role] = pol
    return out


def load_run_policies(args, device: str, path: Path | None = None) -> dict[str, Policy]:
    """role -> policy, from --model (or a run's checkpoint `path`), with LoRA adapters when
    --lora-rank > 0; with --shared-policy the three roles hold the same object (the extraction agent's
    policy). Each policy computes shared prompts once unless --no-share-prompts."""
    if path is not None:
        names = {role: str(path / (agents.ROLES[0] if args.shared_policy else role)) for role in agents.ROLES}
        for role in (agents.ROLES[:1] if args.shared_policy else agents.ROLES):
            evaluation.check_checkpoint_policy(args, role, path / role, path / "state.json")
    else:
        names = {role: getattr(args, f"model_{role}") or args.model for role in agents.ROLES}
    adapters = None
    if path is None and args.lora_rank > 0:
        adapters = lora.LoRAConfig(args.lora_rank, args.lora_alpha, lora.target_names(args.lora_targets))
    if args.shared_policy:
        names = {role: names[agents.ROLES[0]] for role in agents.ROLES}
        shared = models.load_policies(names, device, adapters, roles=agents.ROLES[:1])[agents.ROLES[0]]
        policies = {role: shared for role in agents.ROLES}
    else:
        policies = models.load_policies(names, device, adapters)
    for pol in unique(policies).values():
        if args.lora_rank == 0 and lora.adapters(pol.model):  # full fine-tuning of a model given as adapters
            pol.model = lora.merged(pol.model)
        pol.sharing = sharing if args.share_prompts else None  # sharing.py: the same numbers, faster
        if args.gradient_checkpointing:
            models.enable_checkpointing(pol.model)
    return policies


def reference_policies(args, policies: dict[str, Policy], device: str) -> dict[str, Policy | None]:
    """The frozen reference of each trained policy for the KL term (Eq. 8): the policy the run started
    from, --model, at every step and after a resume too (not the checkpoint it resumed from).
      - fresh adapters (B = 0: --lora-rank on a whole model): None. The policy's own base with its
        adapters off (models.reference_logprobs) is where it started, at no cost in memory;
      - adapters that start from saved ones (--model a LoRA warm start): a copy of the policy on the
        same frozen base (lora.share_frozen) holding the saved adapters again, the adapters' memory
        only. The base with adapters off would be the model before its warm start, and the KL term
        would pull the policy back to one that never learned the answer format;
      - whole models: --model loaded again.
    Empty when --kl-beta is 0 (no reference needed)."""
    if args.kl_beta <= 0:
        return {}
    refs, initial = {}, None
    for role, pol in unique(policies).items():
        if lora.adapters(pol.model):
            saved = initial_adapters(args, role)
            refs[role] = None if saved is None else \
                Policy(lora.copy_adapters(lora.share_frozen(pol.model), saved).eval().requires_grad_(False),
                       pol.tokenizer, pol.name, pol.sharing)
        else:
            initial = initial or load_run_policies(args, device)
            refs[role] = initial[role]
            refs[role].model.eval().requires_grad_(False)
    return refs


def initial_adapters(args, role: str) -> Path | None:
    """The folder of the LoRA adapters a role's policy starts from (--model, or --model-<role>, a LoRA
    warm start), or None when it starts from a whole model."""
    return models.adapter_folder(getattr(args, f"model_{role}") or args.model, role)


def make_optimizers(policies: dict[str, Policy], lr: float) -> dict:
    """One AdamW per distinct policy, over its trainable parameters (all of them, or its adapters)."""
    return {role: torch.optim.AdamW([p for p in pol.model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
            for role, pol in unique(policies).items()}


def with_precision(args, policies: dict[str, Policy], device: str):
    """`args` with --precision resolved (cli.resolve_precision: auto -> float32 | bfloat16; the tiny
    model stays float32 on a CPU, models.is_small), and the choice printed."""
    precision = resolve_precision(args.precision, device, tiny=models.is_small(policies))
    if distributed.is_writer():
        print(f"precision: {precision} forward passes (--precision {args.precision}); weights and log-probs float32")
    return dataclasses.replace(args, precision=precision)


# ======================================================================== the run folder, checkpoints, resume

@dataclass
class Run:
    folder: Path
    policies: dict[str, Policy]
    opts: dict  # role -> optimizer, one per distinct policy
    start: int  # the step to start from: 0, or the checkpoint's
    planned_steps: int  # --steps when the run started: fixes the phases of --mode independent
    base_ids: dict = dataclasses.field(default_factory=dict)  # role -> identity of its adapters' base weights


def open_run(args, device: str) -> Run:
    """The run folder, its policies and optimizers, and the step to start from (0, or the checkpoint's).

    A run with a checkpoint continues with --resume only. A run folder without one (its first attempt
    died before the first checkpoint) starts again from step 0, its partial logs replaced. A crash
    inside save_checkpoint is undone first (cli.recover_folder)."""
    folder = run_folder(args)
    writer = distributed.is_writer()  # under torchrun only rank 0 writes; every rank reads the same files
    check_run_folder(folder)
    if writer:
        recover_folder(folder / "ckpt")
    distributed.barrier()
    state_file = folder / "ckpt" / "state.json"
    if not state_file.exists():
        check(folder.exists() or not args.resume, f"--resume: there is no run at {folder}")
        check(not (folder / "summary.json").exists(), f"{folder} has finished (summary.json) but has no checkpoint")
        policies = load_run_policies(args, device)
        distributed.barrier()  # every rank has checked and loaded before rank 0 writes
        if writer:
            if folder.exists():
                print(f"{folder} has no checkpoint (its first attempt stopped before one): starting it again")
                for name in ("log.jsonl", "eval.jsonl"):
                    (folder / name).unlink(missing_ok=True)
            folder.mkdir(parents=True, exist_ok=True)
            write_marker(folder, args)
            (folder / "args.json").write_text(json.dumps(asdict(args), indent=2))
        return Run(folder, policies, make_optimizers(policies, args.lr), 0, args.steps, base_ids(args, policies))
    check(args.resume, f"{folder} exists and has a checkpoint: pass --resume to continue it, or another "
          "--exp-name / --seed")
    state = read_json(state_file)
    start = state.get("step") if isinstance(state, dict) else None
    check(isinstance(start, int) and start >= 0, f"{state_file}: no step number; the checkpoint state is damaged")
    check(args.steps > start, f"--steps {args.steps}: the run's checkpoint is at step {start}; "
          f"give --steps larger than {start} to continue it")
    policies = load_run_policies(args, device, folder / "ckpt")
    opts = make_optimizers(policies, args.lr)
    for role, opt in opts.items():
        load_optimizer(opt, folder / "ckpt" / role / "optimizer.pt", device)
    distributed.barrier()  # every rank has read the checkpoint before rank 0 writes
    if writer:
        check(os.access(folder, os.W_OK) and all(os.access(p, os.W_OK) for p in folder.iterdir() if p.is_file()),
              f"{folder}: the run folder (or a file in it) is not writable; nothing was changed")
        kept_log = kept_log_lines(folder / "log.jsonl", start)  # a damaged log refuses the resume: nothing changed yet
        # the one append first: a folder that refuses it has had nothing else changed
        with open(folder / "resumes.jsonl", "a") as f:
            f.write(json.dumps({"at_step": start, "steps": args.steps, "eval_every": args.eval_every,
                                "save_every": args.save_every, "micro_batch": args.micro_batch,
                                "device": args.device, "processes": distributed.world()}) + "\n")
        write_marker(folder, args)
        if kept_log is not None:
            (folder / "log.jsonl").write_text(kept_log)
        (folder / "args.json").write_text(json.dumps(asdict(args), indent=2))  # the flags in use from now on
        print(f"resuming {folder} at step {start}")
    return Run(folder, policies, opts, start, state.get("planned_steps", state.get("args", {}).get("steps", args.steps)),
               base_ids(args, policies))


def base_ids(args, policies: dict[str, Policy]) -> dict[str, str | None]:
    """role -> the identity of the base weights under its adapters, as loaded now (saved with them at
    every checkpoint and checked when they are loaded again: models.check_base)."""
    return {role: models.weights_identity(lora_base(args, role), role) for role, pol in unique(policies).items()
            if lora.adapters(pol.model)}


def save_checkpoint(run: Run, step: int, args) -> None:
    """Write run/ckpt atomically (cli.replace_folder): the policies (whole models, or LoRA adapters
    with the name of their base), their optimizer states, the step and the flags. Under torchrun rank 0
    writes (every rank holds the same weights) and the others wait for it."""
    if not distributed.is_writer():
        distributed.barrier()
        return

    def write(tmp: Path) -> None:
        for role, pol in unique(run.policies).items():
            if lora.adapters(pol.model):
                lora.save_adapters(pol.model, tmp / role, base=lora_base(args, role), base_id=run.base_ids.get(role))
            else:
                pol.model.save_pretrained(tmp / role)
            pol.tokenizer.save_pretrained(tmp / role)
            torch.save(run.opts[role].state_dict(), tmp / role / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, "planned_steps": run.planned_steps,
                                                    "processes": distributed.world(), "args": asdict(args)}, indent=2))
    previous = (run.folder / "ckpt" / "state.json").exists()
    try:
        replace_folder(run.folder / "ckpt", write)
    except (OSError, SafetensorError, RuntimeError) as e:  # a full disk, a file-size limit
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        if not (run.folder / "ckpt.tmp" / COMPLETE).exists():  # the part written (recover_folder ignores it): room back
            shutil.rmtree(run.folder / "ckpt.tmp", ignore_errors=True)
        then = "the previous checkpoint is intact: make room and continue with --resume" if previous else \
            "there is no earlier checkpoint: make room and start the run again"
        raise InputError(f"{run.folder / 'ckpt'}: the checkpoint of step {step} could not be written ({first}); "
                         f"{then}") from None
    distributed.barrier()


def lora_base(args, role: str) -> str:
    """The base model under a role's adapters: the base named by --model's adapters, or --model."""
    folder = initial_adapters(args, role)
    return lora.read_config(folder)[1] if folder is not None else getattr(args, f"model_{role}") or args.model


def load_optimizer(opt: torch.optim.Optimizer, path: Path, device: str) -> None:
    """Load an optimizer state saved by save_checkpoint. It is read with weights_only=True (tensors and
    plain containers only: a file that would run code when unpickled is refused), and checked against
    the policy it belongs to: a model of another shape in the checkpoint is an error here, before any
    rollout."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        params = [p for group in opt.param_groups for p in group["params"]]
        saved = state["state"]
        for k, p in enumerate(params):
            for name, value in saved.get(k, {}).items():
                if torch.is_tensor(value) and value.dim() > 0 and value.shape != p.shape:
                    raise ValueError(f"its '{name}' of parameter {k} has shape {tuple(value.shape)}, the model's "
                                     f"parameter has {tuple(p.shape)}: the model folder beside it was replaced")
        opt.load_state_dict(state)
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise InputError(f"{path}: cannot use this optimizer state ({first}); the checkpoint is damaged") from None


def kept_log_lines(path: Path, step: int) -> str | None:
    """The log's text with the lines of steps up to `step` only (None: no log). A last line cut short
    by a kill is dropped; any other line that does not parse is an InputError naming it."""
    if not path.exists():
        return None
    lines, kept = read_lines(path), []
    for k, line in lines:
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            check(k == len(lines), f"{path}:{k}: not valid JSON; the log is damaged")
            continue
        check(isinstance(row, dict) and isinstance(row.get("step", 0), int),
              f"{path}:{k}: not a log row (an object with a whole 'step'); the log is damaged")
        if row.get("step", 0) <= step:
            kept.append(line)
    return "".join(l + "\n" for l in kept)


# ======================================================================== evaluations and logs

def validate(policies, val_set, budgets, max_new, args, folder: Path, tag: str) -> dict:
    """Evaluate on the validation users (eval.evaluate, memory as --eval-history says) and append the
    result to eval.jsonl. Under torchrun each process answers a share of the users (its own sampling
    stream) and rank 0 scores the gathered answers."""
    parts = distributed.gather(evaluation.answer_all(
        policies, evaluation.shard_users(val_set, distributed.rank(), distributed.world()), budgets, max_new,
        temperature=args.eval_temperature, seed=args.seed, desc=f"eval {tag}", history=args.eval_history,
        precision=args.precision))
    res = evaluation.metrics([t for p in parts for t in p[0]], [m for p in parts for m in p[1]],
                             policies["retrieval"], max(p[2] for p in parts))
    if distributed.is_writer():
        with open(folder / "eval.jsonl", "a") as f:
            f.write(json.dumps({"tag": tag, "setting": args.eval_history, **res}) + "\n")
        print(f"[{tag}] validation accuracy ({SETTING[args.eval_history]}) {res['accuracy']:.3f}  " +
              "  ".join(f"{k}={v:.3f}" for k, v in res["local"].items() if v is not None))
    return res


SETTING = {"whole": "deployed: memory over the whole history",
           "evidence": "training setting: memory from each question's evidence session"}


def logged_evaluation(folder: Path, tag: str) -> dict | None:
    """An evaluation this run logged before it was interrupted (the warm start's, on --resume)."""
    path = folder / "eval.jsonl"
    for k, line in read_lines(path) if path.exists() else []:
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            raise InputError(f"{path}:{k}: not valid JSON; the evaluation log is damaged") from None
        check(isinstance(row, dict), f"{path}:{k}: not an evaluation row (an object); the evaluation log is damaged")
        if row.get("tag") == tag:
            return {k: v for k, v in row.items() if k != "tag"}
    return None


def trajectory_stats(groups) -> dict[str, list]:
    """Per trajectory: which agents' outputs failed to parse, and their lengths in tokens."""
    trajs = [t for g in groups for t in g]
    return {"fail": [[not t.actions[r].ok for r in agents.ROLES] for t in trajs],
            "len": [[len(t.actions[r].completion) for r in agents.ROLES] for t in trajs]}


def credit_diagnostics(per_group: dict[str, list], local_rewards: np.ndarray, global_rewards: np.ndarray,
                       v: np.ndarray, w: np.ndarray, adv: np.ndarray) -> None:
    """Append one query group's credit values (train.credit_step) to `per_group`'s series: r, v, w, and
    three diagnostics that explain how much the credit rule can matter at all:
      zero_std     per agent, whether the group's advantages are all 0 (Eq. 7 with a group std of 0)
      global_flat  whether the G global rewards are all equal: there Eq. 13 gives v = 1 for every agent
                   (so adaptive w = 1/3), and r_3, constant over the group, moves no advantage
      w_spread     max_n w_n - min_n w_n: 0 means equal share
    local_rewards (3, G), global_rewards (G,), v (3,), w (3,), adv (3, G)."""
    available = not np.isnan(local_rewards).all()
    values = {"v": v, "w": w,
              "local_rewards": np.nanmean(local_rewards, axis=1) if available else np.full(3, np.nan),
              "global_reward": global_rewards.mean(), "zero_std": np.abs(adv).sum(axis=1) == 0,
              "global_flat": float(np.all(global_rewards == global_rewards[0])), "w_spread": float(w.max() - w.min())}
    for key, value in values.items():
        per_group.setdefault(key, []).append(value)


def group_means(per_group: dict[str, list]) -> dict:
    """The mean over the query groups of each per-group log value (train.credit_step)."""
    return {k: np.mean(np.stack(v), axis=0) for k, v in per_group.items()}


def log_row(step: int, roles: list[str], per_group: dict, per_traj: dict, stats: dict, seconds: dict) -> dict:
    """One line of log.jsonl: rewards, credit, format failures, lengths, update statistics, speed. Under
    torchrun the per-group and per-trajectory values of every process are gathered first (in rank
    order, the one-process order), so that each mean is the one a single process would log."""
    merged = [distributed.gather(x) for x in (per_group, per_traj)]
    per_group = {k: [v for part in merged[0] for v in part[k]] for k in per_group}
    per_traj = {k: [v for part in merged[1] for v in part[k]] for k in per_traj}
    credit_log = group_means(per_group)
    by_role = lambda key, values: {f"{key}_{r}": float(v) for r, v in zip(agents.ROLES, values)}
    gen_tokens = int(np.sum(per_traj["len"]))
    upd_tokens = sum(s["tokens"] for s in stats.values())
    seconds = {k: distributed.all_max(v) for k, v in seconds.items()}  # the slowest process sets the pace
    return {"step": step, "trained": roles, "global_reward": float(credit_log["global_reward"]),
            **by_role("local", credit_log["local_rewards"]), **by_role("v", credit_log["v"]),
            **by_role("w", credit_log["w"]), **by_role("zero_std", credit_log["zero_std"]),
            "global_flat": float(credit_log["global_flat"]), "w_spread": float(credit_log["w_spread"]),
            **by_role("format_fail", np.mean(per_traj["fail"], axis=0)), **by_role("len", np.mean(per_traj["len"], axis=0)),
            **{f"{k}_{r}": v for r, s in stats.items() for k, v in s.items() if k != "tokens"},
            "gen_tok_s": gen_tokens / max(seconds["rollout"], 1e-9),
            "upd_tok_s": upd_tokens / max(seconds["update"], 1e-9), "step_s": seconds["step"]}


def lock_run(args) -> FolderLock | None:
    """The run folder's lock, taken by the one process that writes the run (a symlink resolved first, so
    that a folder has one lock by any name). Under torchrun, if it is refused every rank stops, and the
    writer says why."""
    lock, refused = None, None
    try:
        lock = FolderLock(run_folder(args).resolve()) if distributed.is_writer() else None
    except InputError as e:
        refused = e
    if distributed.all_sum([float(refused is not None)])[0]:
        distributed.teardown()
        if refused:
            raise refused
        raise SystemExit(2)
    return lock


def datasets(args) -> tuple[list, list]:
    """(training questions that have evidence, validation questions of --eval-users users)."""
    folder = ensure(args.data, ("train", "val"), args.train_users)
    train_set = [ex for ex in read_split(folder, "train") if ex.evidence_session is not None]
    check(bool(train_set), f"{folder}: no training question has evidence (evidence_session): nothing to train on")
    return train_set, evaluation.subset_users(read_split(folder, "val"), args.eval_users)


def record_step(folder: Path, row: dict, stats: dict, bar) -> None:
    """A step's line in log.jsonl and on the console (rank 0 only)."""
    if distributed.is_writer():
        with open(folder / "log.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        bar.set_postfix(glob=f"{row['global_reward']:.2f}")
        bar.write(console_line(row, stats))


def console_line(row: dict, stats: dict) -> str:
    """The one console line of a step: rewards, credit weights, KL, clip fraction, seconds."""
    return (f"step {row['step']:4d} | global {row['global_reward']:.3f} | local " +
            " ".join(f"{row['local_' + r]:.3f}" for r in agents.ROLES) + " | w " +
            " ".join(f"{row['w_' + r]:.2f}" for r in agents.ROLES) +
            f" | kl {np.mean([s['kl'] for s in stats.values()]):.4f} clip "
            f"{np.mean([s['clip_frac'] for s in stats.values()]):.3f} | {row['step_s']:.2f}s")


def write_summary(folder: Path, before: dict | None, after: dict, args) -> dict:
    """summary.json, and the end of the console output: the table no train / trained and the paired
    per-question difference with its standard error."""
    summary = {"run": str(folder), "setting": args.eval_history, "no_train": before, "final": after}
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    if before is not None:
        print(evaluation.comparison_table({"no train (warm start)": [before], "CoMAM-trained": [after]}, local=True))
        gain, se, n = evaluation.paired_difference(before, after)
        print(f"trained - no train: {gain:+.3f} +- {se:.3f} (paired over {n} validation questions, "
              f"{SETTING[args.eval_history]}: {gain / se if se > 0 else float('nan'):+.1f} standard errors)")
    return summary
