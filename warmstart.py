"""Warm start: behaviour-clone the agents on demonstrations, before reinforcement learning.

    python warmstart.py                    # builds checkpoints/tiny-warmstart/{extraction,profile,retrieval}
    python warmstart.py --steps 30 --out /tmp/ws --train-users 20   # a toy run
    python warmstart.py --model smollm2 --out checkpoints/smollm2-warmstart   # a real instruct model (extra)
    python warmstart.py --model path/to/hf-model --out checkpoints/mine-warmstart

The tiny model starts from random weights, so before reinforcement learning each agent must learn its
output format. Demonstrations come from the generator's ground truth (docs/method.md, decision 14):
  extraction: the local numbers of the session's informative lines       "2 6 9"
  profile:    the statements those lines support                          "pet cat milo ; likes jazz"
  retrieval:  the evidence line numbers and the gold option               "<information> 3 </information>
                                                                           <final_answer> milo </final_answer>"
              (its text for the tiny model, its first words and letter "rex (b)" for a chat model:
              agents.answer_text)
The demonstrations are *noisy on purpose* (flags `--noise-*`): a line dropped or added, a statement
dropped, and a wrong option as the answer `--noise-answer` of the time. We measured that RL
quickly sharpens a policy that already produces the right answer among its samples (noisy
demonstrations: +17 points greedy in 200 steps) but barely moves an under-trained one; so the warm
start teaches every format and the skill, with room left for RL.

One model is cloned on a mixture of the three agents' demonstrations (each step one agent's batch,
in the proportions `--role-weights`), and the three agents start as three separate copies of it, as the
paper's agents start from a shared pretrained LLM. All three need the same slow skill, copying a value
from their input into their output; learnt once from all the demonstrations it comes much sooner.
One agent can be taken further alone: `--init-from DIR --role-weights 0,0,1 --keep-untrained`
continues DIR's answer agent on its demonstrations and copies DIR's other two agents unchanged.

A real model (`--model smollm2` or a local folder) is fine-tuned the same way on the same
demonstrations, its prompts going through its chat template (agents.render), the loss on the
completion tokens only; no tiny tokenizer or model is built. By default it trains LoRA adapters on
the frozen model (--lora-rank, lora.py) rather than every weight. Its defaults differ (steps, batch
size, learning rate: see --help). The result is a folder of per-role policies (whole models, or
adapters in peft's layout with the name of their base) that `train.py --model DIR` and
`eval.py --policies DIR` take.
"""
from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from tqdm import tqdm

import agents
import comam
import lora
import models
import rewards
import sharing
from agents import Budgets, MaxNew
from cli import (PRECISIONS, Interrupted, autocast, check, check_seed, choice, command, finite, output_folder,
                 positive, replace_folder, resolve_device, resolve_precision, seed_everything)
from data.example import LETTERS, Example, Line, read_split
from models import Policy
from data.generate import ensure, vocabulary_texts


@dataclass
class Args:
    model: str = "tiny"
    """tiny (a new tiny model from random weights), smollm2, or a local transformers model folder"""
    data: str = ""
    """benchmark folder; empty = the synthetic benchmark next to the code (data/synthetic), generated on first use"""
    out: str = ""
    """output folder ('' = checkpoints/tiny-warmstart for tiny, checkpoints/<model>-warmstart otherwise, next to the code)"""
    train_users: int = 300
    """users of the generated benchmark's train split (only used when generating it)"""
    steps: int = 0
    """behaviour-cloning steps in all, each on one agent's demonstrations (0 = 3000 tiny, 150 a real model)"""
    role_weights: str = "1,2,3"
    """share of the steps for extraction, profile, retrieval (copying values is what takes longest)"""
    batch_size: int = 0
    """demonstrations per step (0 = 32 tiny, 8 a real model)"""
    lr: float = 0.0
    """AdamW peak learning rate (0 = 1e-3 tiny, 1e-4 a real model's full fine-tuning, 1e-3 its LoRA adapters)"""
    lora_rank: int = -1
    """LoRA adapter rank: 0 = full fine-tuning; -1 = auto (0 for tiny, 16 for a chat model, the rank of --init-from's adapters)"""
    lora_alpha: float = 32.0
    """LoRA scaling numerator: an adapter adds (alpha / rank) B A x"""
    lora_targets: str = "all"
    """layers that get adapters: all (q,k,v,o,gate,up,down) | attention | mlp | comma list of module names"""
    hidden: int = 128
    """tiny model width"""
    layers: int = 4
    """tiny model transformer layers"""
    noise_extraction: float = 0.3
    """probability that an extraction demonstration drops one informative line or adds one other line"""
    noise_profile: float = 0.3
    """probability that a profile demonstration drops one statement"""
    noise_answer: float = 0.3
    """probability that a retrieval demonstration answers with a wrong option"""
    probe_every: int = 250
    """print each agent's greedy score on 64 validation questions every N steps (0 = never)"""
    probe_size: int = 64
    """validation questions in each probe"""
    init_from: str = ""
    """continue cloning from this warm-start folder (its tokenizer and weights) instead of --model"""
    keep_untrained: bool = False
    """with --init-from: continue the first agent of non-zero --role-weights and copy the agents of weight 0 from there unchanged (default: all three agents are copies of the model trained here)"""
    gradient_checkpointing: bool = False
    """recompute activations in the backward pass (less memory) for real models"""
    device: str = "auto"
    """auto (CUDA if available) | cpu | cuda"""
    precision: str = "auto"
    """forward passes: auto (bfloat16 on CUDA and on a CPU with bf16 hardware, except the tiny model) | float32 | bfloat16; weights and the loss stay float32"""
    seed: int = 0
    """random seed (weights, demonstrations)"""

    def defaults_for(self, tiny: bool, lora_rank: int) -> "Args":
        """A copy with every 0 / -1 = "model-dependent default" replaced."""
        real_lr = 1e-3 if lora_rank > 0 else 1e-4
        return replace(self, steps=self.steps or (3000 if tiny else 150), lora_rank=lora_rank,
                       batch_size=self.batch_size or (32 if tiny else 8), lr=self.lr or (1e-3 if tiny else real_lr))


# ======================================================================== the tiny model
# Built here, where the tiny model is made, because its vocabulary joins two layers: the benchmark's words
# (data.generate.vocabulary_texts) and the fixed words and tags of the agents' prompts (agents.py).
# models.py then loads it from its folder like any other causal LM.

def build_tokenizer(texts: list[str], max_number: int = 255):
    """A word-level fast tokenizer over `texts` and the agents' prompt words (split at whitespace and
    punctuation, as agents.split_words), with the four answer tags as single tokens; pad == eos.
    The ids are those of the shipped checkpoint (tests/test_agents.py checks it): <unk> 0, </s> 1, the words
    and the numbers 0..max_number in sorted order, then the four tags.

    >>> tok = build_tokenizer(["i have a cat named milo ."])
    >>> tok.convert_ids_to_tokens(tok("[1] i have a cat").input_ids)  # every word and number: one token
    ['[', '1', ']', 'i', 'have', 'a', 'cat']
    """
    from tokenizers import AddedToken, Tokenizer, pre_tokenizers
    from tokenizers import models as tokenizer_models
    from transformers import PreTrainedTokenizerFast

    texts = list(texts) + [agents.PROMPT_WORDS]
    words = {w for t in texts for w in agents.split_words(t)}
    words |= {str(n) for n in range(max_number + 1)}
    vocab = {"<unk>": 0, "</s>": 1}
    for w in sorted(words):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(tokenizer_models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_tokens([AddedToken(t, single_word=False, normalized=False) for t in agents.TAGS])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>",
                                   pad_token="</s>", padding_side="left", clean_up_tokenization_spaces=False)


def build_tiny(tokenizer, hidden: int = 128, layers: int = 4, heads: int = 4, max_len: int = 1024, seed: int = 0):
    """A small Qwen2-architecture causal LM from a config (random weights, seeded)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=3 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=max_len, tie_word_embeddings=True,
                         bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config)


# ======================================================================== demonstrations

def extraction_demo(rng: random.Random, policy: Policy, lines: list[Line], key: list[int], noise: float,
                    budgets: Budgets) -> tuple[list[int], str]:
    prompt, shown = agents.extraction_prompt(policy, lines, budgets)
    keep = set(key)
    others = [l.id for l in shown if l.id not in keep and l.role == "user"]
    if rng.random() < noise:
        if keep and (rng.random() < 0.5 or not others):
            keep.discard(rng.choice(sorted(keep)))
        elif others:
            keep.add(rng.choice(others))
    return prompt, " ".join(str(k) for k, l in enumerate(shown, 1) if l.id in keep) or agents.NONE


def profile_demo(rng: random.Random, policy: Policy, session, noise: float, budgets: Budgets):
    """Memory = the session's informative lines (none for a small-talk session, or a stray line)."""
    memory = [l for l in session.lines if l.id in session.notes]
    if not memory and rng.random() < 0.5:
        memory = [rng.choice([l for l in session.lines if l.role == "user"])]
    statements = [st for l in memory for st in session.notes.get(l.id, [])]
    if statements and rng.random() < noise:
        statements.pop(rng.randrange(len(statements)))
    return agents.profile_prompt(policy, memory, budgets), " ; ".join(statements) or agents.NONE


def retrieval_demo(rng: random.Random, policy: Policy, ex: Example, noise: float, budgets: Budgets):
    """Memory as the deployed system builds it: informative lines (and profile) of the evidence session,
    or of every session of the user (half the time); now and then a small-talk line too."""
    sessions = ex.sessions if rng.random() < 0.5 else [ex.sessions[ex.evidence_session]]
    memory, profile = [], []
    for s in sessions:
        for l in s.lines:
            if l.id in s.notes or (l.role == "user" and rng.random() < 0.05):
                memory.append(l)
        profile += s.profile
    prompt, shown = agents.retrieval_prompt(policy, memory, profile, ex.question, ex.options, budgets)
    index = LETTERS.index(ex.gold)
    if rng.random() < noise:
        index = rng.choice([i for i, o in enumerate(ex.options) if o != ex.gold_text])
    return prompt, agents.answer_target(shown, ex.evidence, agents.answer_text(policy, ex.options, index))


def make_demo(role: str, rng: random.Random, policy: Policy, examples: list[Example], args: Args, budgets: Budgets):
    ex = rng.choice(examples)
    if role == "extraction":
        s = rng.choice(ex.sessions)
        return extraction_demo(rng, policy, s.lines, s.key_lines, args.noise_extraction, budgets)
    if role == "profile":
        informative = [s for s in ex.sessions if s.notes]
        s = rng.choice(informative if informative and rng.random() < 0.8 else ex.sessions)
        return profile_demo(rng, policy, s, args.noise_profile, budgets)
    return retrieval_demo(rng, policy, ex, args.noise_answer, budgets)


# ======================================================================== behaviour cloning

@torch.no_grad()
def probe(role: str, policy: Policy, probes: list[Example], budgets: Budgets, max_new: MaxNew) -> tuple[float, float]:
    """Greedy score of one agent on clean inputs, and the share of its outputs that failed to parse:
    extraction exact set of informative lines; profile rubric (Eq. 10) on a perfect extraction;
    retrieval answer accuracy with the evidence session's perfect memory (comam.gold_memory: the
    perfect-memory probe; `eval.py --system gold --history evidence` measures the same on a whole split)."""
    hs = [ex.sessions[ex.evidence_session] for ex in probes]
    gold = [comam.gold_memory([s]) for s in hs]
    if role == "extraction":
        out = comam.run_extraction(policy, [s.lines for s in hs], budgets, max_new.extraction, 0.0)
        scores = [{l.id for l in kept} == set(s.key_lines) for (_, kept), s in zip(out, hs)]
    elif role == "profile":
        out = comam.run_profile(policy, [m.memory_lines for m in gold], budgets, max_new.profile, 0.0)
        scores = [rewards.profile_reward(st, s.profile) for (_, st), s in zip(out, hs)]
    else:
        out = comam.run_retrieval(policy, [(m.memory_lines, m.profile, ex) for m, ex in zip(gold, probes)],
                                  budgets, max_new.retrieval, 0.0)
        scores = [letter == ex.gold for (_, _, letter), ex in zip(out, probes)]
    return sum(scores) / len(probes), sum(not o[0].ok for o in out) / len(probes)


def schedule(weights: list[int], steps: int) -> list[str]:
    """Which agent's demonstrations each step trains on: weights (1, 2, 3) -> E P P R R R E P P R R R ..."""
    cycle = [role for role, w in zip(agents.ROLES, weights) for _ in range(w)]
    return [cycle[i % len(cycle)] for i in range(steps)]


def clone(policy: Policy, examples: list[Example], args: Args, budgets: Budgets, max_new: MaxNew,
          probes: list[Example] | None = None, device: str = "cpu") -> tuple[dict, dict]:
    """Cross-entropy on the demonstration tokens (target + EOS), token mean over the batch; the prompt
    tokens are context only (models.completion_logprobs masks them out). Linear warm-up over 100 steps,
    then linear decay to 10% of `args.lr`. Every `args.probe_every` steps, each agent's greedy score on
    `probes` (validation) is printed. Returns (losses per role, probe scores per role: [(step, score)],
    and the same for the share of format failures under "<role> format failures")."""
    opt = torch.optim.AdamW([p for p in policy.model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    tok = policy.tokenizer
    rngs = {role: random.Random(args.seed * 10 + k) for k, role in enumerate(agents.ROLES)}
    plan = schedule([int(w) for w in args.role_weights.split(",")], args.steps)
    losses = {role: [] for role in agents.ROLES}
    probed = [r for r in agents.ROLES if r not in kept_roles(args)]  # (an agent copied unchanged: not probed)
    probe_log: dict[str, list] = {key: [] for role in probed for key in (role, f"{role} format failures")}
    policy.model.train()
    bar = tqdm(plan, desc="warm start", dynamic_ncols=True)
    for step, role in enumerate(bar):
        lr = args.lr * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * (1 - step / max(1, args.steps)))  # warm-up, decay
        for g in opt.param_groups:
            g["lr"] = lr
        demos = [make_demo(role, rngs[role], policy, examples, args, budgets) for _ in range(args.batch_size)]
        prompts = [p for p, _ in demos]
        targets = [tok(t, add_special_tokens=False).input_ids + [policy.eos_id] for _, t in demos]
        with autocast(device, args.precision):
            logp, mask = models.policy_logprobs(policy, prompts, targets)  # (B, T-1) each
        loss = -(logp * mask).sum() / mask.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.model.parameters(), 1.0)  # (frozen weights have no gradient)
        opt.step()
        losses[role].append(loss.item())
        bar.set_postfix(role=role[:4], loss=f"{loss.item():.3f}")
        if probes and args.probe_every and ((step + 1) % args.probe_every == 0 or step + 1 == args.steps):
            with autocast(device, args.precision):
                scores = {r: probe(r, policy, probes, budgets, max_new) for r in probed}
            policy.model.train()
            tqdm.write(f"step {step + 1}: greedy scores on {len(probes)} validation questions " +
                       "  ".join(f"{r} {v:.3f} (format failures {f:.3f})" for r, (v, f) in scores.items()))
            for r, (v, f) in scores.items():
                probe_log[r].append((step + 1, round(v, 4)))
                probe_log[f"{r} format failures"].append((step + 1, round(f, 4)))
    return losses, probe_log


def check_args(args: Args) -> Path:
    """Every flag checked before anything is loaded or written; returns the output folder."""
    for flag in ("steps", "batch_size", "probe_every", "train_users"):
        positive(getattr(args, flag), "--" + flag.replace("_", "-"), 0)
    for flag in ("hidden", "layers", "probe_size"):
        positive(getattr(args, flag), "--" + flag.replace("_", "-"))
    finite(args.lr, "--lr")
    for flag in ("noise_extraction", "noise_profile", "noise_answer"):
        value = getattr(args, flag)
        finite(value, "--" + flag.replace("_", "-"))
        check(value <= 1, f"--{flag.replace('_', '-')} is a probability: at most 1, got {value}")
    weights = args.role_weights.split(",")
    check(len(weights) == 3 and all(w.strip().isdigit() for w in weights) and sum(map(int, weights)) > 0,
          f"--role-weights takes three whole numbers for extraction,profile,retrieval (e.g. 1,2,3), "
          f"got {args.role_weights!r}")
    check(args.init_from or not args.keep_untrained,
          "--keep-untrained copies agents from --init-from: give --init-from a warm-start folder, or leave it out")
    positive(args.lora_rank, "--lora-rank", -1)
    finite(args.lora_alpha, "--lora-alpha", 0.0, low_open=True)
    lora.target_names(args.lora_targets)
    check(not (args.model == "tiny" and not args.init_from and args.lora_rank > 0),
          f"--lora-rank {args.lora_rank} with --model tiny: the tiny model is built here from random weights and "
          "saved nowhere else, so its adapters would have no base to load on; leave --lora-rank out (full "
          "fine-tuning), or give --init-from a tiny warm start to train adapters on it")
    check_seed(args.seed)
    resolve_device(args.device)
    choice(args.precision, "--precision", PRECISIONS)
    if args.out:
        out = Path(args.out)
    elif args.model == "tiny" and not args.init_from:
        out = models.TINY_CHECKPOINT
    else:
        out = models.ROOT / "checkpoints" / f"{Path(args.init_from or args.model).name}-warmstart"
    return output_folder(out, "--out", lambda p: (p / "warmstart.json").is_file(), "a warm start (no warmstart.json)")


def start_policy(args: Args, train: list[Example], device: str) -> tuple[Policy, int]:
    """The model to clone and its LoRA rank (0 = every weight is trained): a checkpoint to continue
    (--init-from; its adapters, if it has some, go on training), a real model (fresh adapters unless
    --lora-rank 0), or a new tiny model."""
    if args.init_from:  # the agent to continue (without --keep-untrained, the first: a warm start's are identical)
        policy = models.load_policy(args.init_from, start_role(args), device)
    elif args.model != "tiny":
        policy = models.load_policy(args.model, agents.ROLES[0], device)
    else:
        tok = build_tokenizer(vocabulary_texts(train))
        policy = Policy(build_tiny(tok, args.hidden, args.layers, seed=args.seed).to(device), tok, "tiny")
    held = lora.adapters(policy.model)
    rank = args.lora_rank if args.lora_rank >= 0 else (
        lora.config_of(policy.model).rank if held else 16 if policy.chat else 0)
    if held and rank == 0:
        policy.model = lora.merged(policy.model)
    elif held:
        check(rank == lora.config_of(policy.model).rank, f"--lora-rank {rank}: {args.init_from} holds "
              f"rank-{lora.config_of(policy.model).rank} adapters; leave --lora-rank out to continue them")
    elif rank > 0:
        lora.add_adapters(policy.model, lora.LoRAConfig(rank, args.lora_alpha, lora.target_names(args.lora_targets)))
    return policy, rank


def kept_roles(args: Args) -> list[str]:
    """The agents copied unchanged from --init-from: with --keep-untrained, those of weight 0."""
    weights = [int(w) for w in args.role_weights.split(",")]
    return [r for r, w in zip(agents.ROLES, weights) if w == 0] if args.init_from and args.keep_untrained else []


def start_role(args: Args) -> str:
    """The agent of --init-from that this run continues."""
    return next(r for r in agents.ROLES if r not in kept_roles(args))


def base_name(args: Args) -> str:
    """The base model under the warm start's adapters (written into adapter_config.json)."""
    if args.init_from:
        folder = models.model_folder(args.init_from, start_role(args))
        return lora.read_config(folder)[1] if lora.is_adapter_folder(folder) else args.init_from
    return args.model


def main(args: Args) -> dict:
    t0 = time.time()
    out = check_args(args)
    try:  # Ctrl-C from here on (loading too) says what was left: nothing
        device = resolve_device(args.device)
        seed_everything(args.seed)
        folder = ensure(args.data, ("train",), args.train_users)
        train = read_split(folder, "train")
        policy, rank = start_policy(args, train, device)
        policy.sharing = sharing  # a prompt prefix shared by several rows computed once (the same numbers)
        args = args.defaults_for(tiny=not policy.chat, lora_rank=rank)
        args = replace(args, precision=resolve_precision(args.precision, device,
                                                         tiny=models.is_small({"policy": policy})))
        print(f"precision: {args.precision} forward passes; weights and the loss float32")
        if args.gradient_checkpointing:
            models.enable_checkpointing(policy.model)
        budgets, max_new, scale = agents.fit_limits(policy, train)
        print(f"context limits ({scale:.3f} tokens per word): {budgets}, {max_new}")
        val_file = Path(folder) / "val_questions.jsonl"
        probes = []
        if args.probe_every and val_file.exists():
            val = read_split(folder, "val")
            probes = random.Random(args.seed).sample(val, min(args.probe_size, len(val)))
        losses, probe_log = clone(policy, train, args, budgets, max_new, probes, device)
    except KeyboardInterrupt:
        raise Interrupted(f"the warm start stopped before its end; nothing was written to {out} (a warm start "
                          "is written whole, at the end)") from None
    previous = Path(args.init_from) / "warmstart.json" if args.init_from else None
    report = {"args": asdict(args), "seconds": round(time.time() - t0, 1), "probe": probe_log,
              "continued_from": json.loads(previous.read_text()) if previous and previous.exists() else None,
              "final_loss": {r: sum(l[-20:]) / max(1, len(l[-20:])) for r, l in losses.items()}}

    def write(tmp: Path) -> None:
        for role in agents.ROLES:  # three separate policies, identical at the start
            if role in kept_roles(args):  # not trained here: kept as it was
                shutil.copytree(models.model_folder(args.init_from, role), tmp / role)
                continue
            if rank > 0:
                lora.save_adapters(policy.model, tmp / role, base=base_name(args),
                                   base_id=models.weights_identity(base_name(args), role))
            else:
                policy.model.save_pretrained(tmp / role)
            policy.tokenizer.save_pretrained(tmp / role)
        (tmp / "warmstart.json").write_text(json.dumps(report, indent=2))
    replace_folder(out, write)
    print(f"warm start written to {out} in {report['seconds']:.0f}s; final losses {report['final_loss']}")
    return report


if __name__ == "__main__":
    command(main, Args, __doc__)
