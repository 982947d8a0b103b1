"""Evaluation as deployed (PAPER.md §2, App. B.1): memory built over the user's whole history.

    python eval.py                                  # the shipped warm start ("no train") on validation
    python eval.py --policies runs/comam-s1/ckpt    # a trained run's checkpoint
    python eval.py --split test --temperature 0     # greedy, on the test split

Construction agents run session by session, memory accumulating; the retrieval agent answers each
query from it. Reported: accuracy overall, per question type and per history setting; local metrics
where evidence exists (extraction recall / IoU of the accumulated memory against E_q, retrieval recall /
IoU, the profile rubric score per session); memory size in tokens; format-failure rate per agent;
seconds per query. One JSON result file per evaluation.
"""
from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import agents
import comam
from agents import Budgets, Policy
from data.example import QUESTION_TYPES, Example, read_split
from rewards import _recall_iou, profile_reward


@dataclass
class Args:
    data: str = "data/synthetic"
    """benchmark folder (synthetic), or ignored with --personamem"""
    split: str = "val"
    """split to evaluate: val | test | train"""
    policies: str = "tiny"
    """tiny (shipped warm start), a folder holding extraction/ profile/ retrieval/ (a run's ckpt), or a model folder"""
    users: int = 0
    """evaluate only the first N users (0 = all)"""
    temperature: float = 0.8
    """sampling temperature (paper: 0.8; 0 = greedy)"""
    seed: int = 1
    """sampling seed"""
    out: str = ""
    """result JSON file (default: <policies>/eval-<split>.json or runs/eval-<split>.json)"""
    device: str = "auto"
    """auto | cpu | cuda"""


def subset_users(examples: list[Example], n: int) -> list[Example]:
    """The questions of the first n users (all when n <= 0)."""
    if n <= 0:
        return examples
    users = list(dict.fromkeys(ex.user for ex in examples))[:n]
    keep = set(users)
    return [ex for ex in examples if ex.user in keep]


def _mean(xs):
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and np.isnan(x))]
    return float(np.mean(xs)) if xs else None


def metrics(trajs: list[comam.Trajectory], memories: dict[str, comam.Memory], policy: Policy,
            seconds: float) -> dict:
    """Accuracy (overall / per type / per setting), local metrics, memory size, format failures."""
    by_type, by_setting = defaultdict(list), defaultdict(list)
    for t in trajs:
        by_type[t.example.qtype].append(t.reward)
        by_setting[t.example.setting].append(t.reward)
    ev = [t for t in trajs if t.example.evidence]
    rec_iou_m = [_recall_iou([l.id for l in t.memory], t.example.evidence) for t in ev]
    rec_iou_r = [_recall_iou(t.retrieved, t.example.evidence) for t in ev]
    users = {t.example.user: t.example for t in trajs}
    prof = [profile_reward(st, s.profile) for u, ex in users.items()
            for s, st in zip(ex.sessions, memories[u].per_session)]
    mem_tokens = [len(policy.tokenizer(" ".join([l.text for l in m.lines] + m.profile),
                                       add_special_tokens=False).input_ids) for m in memories.values()]
    calls = sum(m.calls for m in memories.values())
    return {
        "accuracy": float(np.mean([t.reward for t in trajs])), "n": len(trajs),
        "per_type": {k: float(np.mean(by_type[k])) for k in QUESTION_TYPES if k in by_type}
                    | {k: float(np.mean(v)) for k, v in by_type.items() if k not in QUESTION_TYPES},
        "per_setting": {k: float(np.mean(v)) for k, v in sorted(by_setting.items())},
        "local": {"extraction_recall": _mean([r for r, _ in rec_iou_m]),
                  "extraction_iou": _mean([i for _, i in rec_iou_m]),
                  "profile_rubric": _mean(prof),
                  "retrieval_recall": _mean([r for r, _ in rec_iou_r]),
                  "retrieval_iou": _mean([i for _, i in rec_iou_r])},
        "memory_tokens": float(np.mean(mem_tokens)),
        "format_failure": {"extraction": sum(m.failures["extraction"] for m in memories.values()) / max(1, calls),
                           "profile": sum(m.failures["profile"] for m in memories.values()) / max(1, calls),
                           "retrieval": float(np.mean([not t.actions["retrieval"].ok for t in trajs]))},
        "seconds_per_query": seconds / max(1, len(trajs)),
    }


@torch.no_grad()
def evaluate(policies: dict[str, Policy], examples: list[Example], budgets: Budgets | None = None,
             max_new: comam.MaxNew | None = None, temperature: float = 0.8, seed: int = 1,
             desc: str = "eval") -> dict:
    """Build every user's memory over the whole history, then answer every question (PAPER.md §2)."""
    budgets, max_new = budgets or Budgets(), max_new or comam.MaxNew()
    t0 = time.time()
    gen = torch.Generator().manual_seed(seed)
    for p in policies.values():
        p.model.eval()
    histories = {}
    for ex in examples:
        histories.setdefault(ex.user, [s.lines for s in ex.sessions])
    n_sessions = max(len(h) for h in histories.values())
    bar = tqdm(total=n_sessions + 1, desc=desc, dynamic_ncols=True, leave=False)
    memories = comam.build_memory(policies, histories, budgets, max_new, temperature, gen,
                                  progress=lambda s: bar.update(1))
    trajs = comam.answer(policies, examples, memories, budgets, max_new, temperature, gen)
    bar.update(1)
    bar.close()
    return metrics(trajs, memories, policies["retrieval"], time.time() - t0)


def format_comparison(results: dict[str, dict]) -> str:
    """A markdown table: one row per system, accuracy overall and per history setting, local metrics."""
    settings = sorted({s for r in results.values() for s in r["per_setting"]})
    locs = ["extraction_recall", "profile_rubric", "retrieval_recall"]
    head = ["system", "accuracy"] + settings + locs + ["format fail"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    fmt = lambda x: "n/a" if x is None else f"{x:.3f}"
    for name, r in results.items():
        cells = [name, fmt(r["accuracy"])] + [fmt(r["per_setting"].get(s)) for s in settings]
        cells += [fmt(r["local"].get(k)) for k in locs] + [fmt(max(r["format_failure"].values()))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_system(spec: str, device: str) -> dict[str, Policy]:
    """The three role policies of "tiny", a folder of per-role policies, or one model folder."""
    return {r: agents.load_policy(spec, r, device) for r in agents.ROLES}


def main(args: Args) -> dict:
    from data.generate import ensure
    from train import resolve_device

    device = resolve_device(args.device)
    examples = subset_users(read_split(ensure(args.data), args.split), args.users)
    policies = load_system(args.policies, device)
    res = evaluate(policies, examples, temperature=args.temperature, seed=args.seed, desc=f"eval {args.split}")
    res["args"] = asdict(args)
    out = Path(args.out) if args.out else (
        Path(args.policies) / f"eval-{args.split}.json" if Path(args.policies).is_dir() else Path("runs") / f"eval-{args.split}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"accuracy {res['accuracy']:.3f} over {res['n']} questions  ({res['seconds_per_query'] * 1000:.0f} ms/query)")
    for k, v in res["per_type"].items():
        print(f"  {k:55s} {v:.3f}")
    for k, v in res["per_setting"].items():
        print(f"  setting {k:47s} {v:.3f}")
    print("  local: " + "  ".join(f"{k}={'n/a' if v is None else f'{v:.3f}'}" for k, v in res["local"].items()))
    print(f"  memory tokens {res['memory_tokens']:.0f}; format failures {res['format_failure']}")
    print(f"wrote {out}")
    return res


if __name__ == "__main__":
    from train import parse_args
    main(parse_args(Args, __doc__))
