"""Time the project's own GRPO step (sampling + update) on a random-weight model, with every prompt
computed in full ("plain") and with each group's shared prompt computed once ("shared"), in one run.

    python scripts/bench.py --d 256 --layers 4 --prompts 4 --G 8 --prompt-len 200 --completion-len 48 --steps 6
    python scripts/bench.py --d 128 --layers 2 --prompts 4 --G 8 --prompt-len 200 --completion-len 48 --steps 6
    python scripts/bench.py --prompts 32 --G 1 --common-prefix 150 --steps 6   # distinct prompts, shared instruction

The model is the tiny Qwen2 architecture (warmstart.build_tiny) over a word-level vocabulary of 1,000 words
(plus the tokenizer's fixed words and numbers); a prompt is `--prompt-len` random words, repeated for
its G trajectories, as the extraction agent's prompts are. One step = models.sample of up to
`--completion-len` new tokens for every row, then train.grpo_update on them with random advantages.
Prints one JSON line: per mode the median seconds per step (from the second step on), of sampling and
of the update, and tokens_per_s = prompts x G x (prompt-len + completion-len) / median step seconds.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository's modules

import models  # noqa: E402
import sharing  # noqa: E402
import train  # noqa: E402
import warmstart  # noqa: E402
from cli import check, command, positive  # noqa: E402


@dataclass
class Args:
    d: int = 256
    """model width"""
    layers: int = 4
    """transformer layers"""
    prompts: int = 4
    """distinct prompts per step"""
    G: int = 8
    """trajectories per prompt"""
    prompt_len: int = 200
    """tokens per prompt"""
    completion_len: int = 48
    """new tokens per trajectory (at most; a random model rarely ends earlier)"""
    steps: int = 6
    """steps per mode; the median is taken from the second step on"""
    common_prefix: int = 0
    """the first this-many tokens are the same in every prompt (a chat model's instruction; with --G 1
    the profile and retrieval agents' case, where only that prefix can be shared)"""
    micro_batch: int = 64
    """sequences per forward/backward in the update"""
    seed: int = 0
    """weights, prompts, sampling"""


def step(policy, opt, prompts, args: Args, gen: torch.Generator) -> tuple[float, float]:
    """One GRPO step; returns (sampling seconds, update seconds)."""
    t0 = time.perf_counter()
    comps, _ = models.sample(policy, prompts, args.completion_len, 1.0, generator=gen)
    t1 = time.perf_counter()
    adv = torch.randn(len(prompts), generator=gen).tolist()
    batch = [(p, c, a) for p, c, a in zip(prompts, comps, adv) if c]
    train.grpo_update(policy, opt, batch, train.Args(micro_batch=args.micro_batch), "cpu")
    return t1 - t0, time.perf_counter() - t1


def run(args: Args, share: bool) -> dict:
    words = [f"w{k}" for k in range(1000)]
    tok = warmstart.build_tokenizer([" ".join(words)])
    policy = models.Policy(warmstart.build_tiny(tok, hidden=args.d, layers=args.layers, heads=4, seed=args.seed), tok,
                           sharing=sharing if share else None)
    opt = torch.optim.AdamW(policy.model.parameters(), lr=1e-5)
    word_ids = torch.tensor(tok.convert_tokens_to_ids(words))
    gen = torch.Generator().manual_seed(args.seed)
    distinct = [word_ids[torch.randint(0, len(words), (args.prompt_len,), generator=gen)].tolist()
                for _ in range(args.prompts)]
    distinct = [distinct[0][:args.common_prefix] + p[args.common_prefix:] for p in distinct]
    prompts = [p for p in distinct for _ in range(args.G)]  # the G rows of a prompt, together
    times = [step(policy, opt, prompts, args, gen) for _ in range(args.steps)]
    later = times[1:] or times
    med = statistics.median(s + u for s, u in later)
    tokens = args.prompts * args.G * (args.prompt_len + args.completion_len)
    six_digits = lambda x: float(f"{x:.6g}")  # significant digits: toy steps take milliseconds
    return {"params": sum(p.numel() for p in policy.model.parameters()), "step_s": six_digits(med),
            "sample_s": six_digits(statistics.median(s for s, _ in later)),
            "update_s": six_digits(statistics.median(u for _, u in later)), "tokens_per_s": six_digits(tokens / med)}


def main(args: Args) -> dict:
    for flag in ("d", "layers", "prompts", "G", "prompt_len", "completion_len", "steps", "micro_batch"):
        positive(getattr(args, flag), "--" + flag.replace("_", "-"))
    check(args.steps >= 2, "--steps must be at least 2 (the first step is not timed)")
    check(0 <= args.common_prefix < args.prompt_len, "--common-prefix must be at least 0 and below --prompt-len")
    torch.manual_seed(args.seed)
    plain, shared = run(args, share=False), run(args, share=True)
    out = {**asdict(args), "torch_threads": torch.get_num_threads(), "plain": plain, "shared": shared,
           "speedup": round(shared["tokens_per_s"] / plain["tokens_per_s"], 2)}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    command(main, Args, __doc__)
