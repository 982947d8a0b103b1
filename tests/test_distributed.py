"""Data parallelism with torchrun (distributed.py): two processes on the CPU (gloo) against one.

Given the same rollouts (tests/dist_worker.py: fixed groups), two processes that each take half the
queries compute exactly the advantages one process computes, and after one update hold the same
weights up to float32 summation order: each process sums its own tokens' gradients, then the
all-reduce adds the two partial sums, where one process adds every token in one pass; the results
differ in the last bits (tolerance 1e-6 on weights moved by SGD at lr 0.1; measured ~1e-8).
A 2-step torchrun run of train.py, and a torchrun run that loses a process and is resumed.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import agents

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.mark.uses_solutions
@pytest.mark.parametrize("agg", ["token", "sequence"])
def test_two_processes_equal_one_given_the_same_rollouts(agg, tmp_path):
    from safetensors.torch import load_file
    worker = str(ROOT / "tests" / "dist_worker.py")
    subprocess.run([sys.executable, worker, str(tmp_path / "one"), agg], check=True, env=_env(), cwd=tmp_path,
                   capture_output=True)
    r = subprocess.run(TORCHRUN + [worker, str(tmp_path / "two"), agg], env=_env(), cwd=tmp_path,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    one, two = (json.loads((tmp_path / x / "result.json").read_text()) for x in ("one", "two"))
    assert (one["world"], two["world"]) == (1, 2)
    assert one["advantages"] == two["advantages"]  # credit is per query group: exactly equal
    for role in agents.ROLES:
        for key in ("loss", "tokens", "kl"):
            assert two["stats"][role][key] == pytest.approx(one["stats"][role][key], rel=1e-6, abs=1e-9), (role, key)
        a, b = load_file(str(tmp_path / "one" / f"{role}.safetensors")), load_file(str(tmp_path / "two" / f"{role}.safetensors"))
        diff = max((a[k] - b[k]).abs().max().item() for k in a)
        assert diff < 1e-6, (role, diff)


def _run_args(toy_data, toy_warmstart, out, **kw):
    base = dict(data=str(toy_data), model=str(toy_warmstart), out=str(out), steps=2, queries=2, group_size=2,
                eval_users=2, save_every=1, seed=3)
    base.update(kw)
    return [f"--{k.replace('_', '-')}={v}" if v is not True else f"--{k.replace('_', '-')}" for k, v in base.items()]


@pytest.mark.uses_solutions
def test_a_two_step_torchrun_run_writes_one_run_folder(toy_data, toy_warmstart, tmp_path):
    r = subprocess.run(TORCHRUN + [str(ROOT / "train.py")] + _run_args(toy_data, toy_warmstart, tmp_path / "runs"),
                       env=_env(), cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["comam-s3"]
    run = tmp_path / "runs" / "comam-s3"
    assert [json.loads(l)["step"] for l in (run / "log.jsonl").read_text().splitlines()] == [1, 2]
    state = json.loads((run / "ckpt" / "state.json").read_text())
    assert state["step"] == 2 and state["processes"] == 2
    assert [json.loads(l)["tag"] for l in (run / "eval.jsonl").read_text().splitlines()] == ["no-train", "final"]
    assert json.loads((run / "summary.json").read_text())["final"]["n"] == 28  # both processes' users, gathered
    assert r.stdout.count("step    1 |") == 1  # one process writes the console log


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of the worker with RANK=rank among the descendants of `parent` (read from /proc)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
            if f"RANK={rank}".encode() in env and f"TORCHELASTIC_RUN_ID".encode() in b" ".join(env) \
                    and b"train.py" in (proc / "cmdline").read_bytes():
                return int(proc.name)
        except OSError:
            continue
    return None


@pytest.mark.uses_solutions
def test_losing_a_process_stops_the_job_and_resume_continues(toy_data, toy_warmstart, tmp_path):
    args = _run_args(toy_data, toy_warmstart, tmp_path / "runs", steps=40)
    job = subprocess.Popen(TORCHRUN + [str(ROOT / "train.py")] + args, env=_env(), cwd=tmp_path,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = tmp_path / "runs" / "comam-s3" / "ckpt" / "state.json"
    deadline = time.time() + 180
    while not state.exists() and job.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    pid = _rank_pid(job.pid, 1)
    assert pid is not None and job.poll() is None
    os.kill(pid, signal.SIGKILL)
    _, err = job.communicate(timeout=120)
    assert job.returncode != 0
    assert "exitcode" in err and "-9" in err and "train.py FAILED" in err, err[-2000:]  # torchrun names the lost rank
    saved = json.loads(state.read_text())["step"]
    assert 1 <= saved < 40
    for role in agents.ROLES:
        assert (state.parent / role / "model.safetensors").exists()
    r = subprocess.run(TORCHRUN + [str(ROOT / "train.py")] + _run_args(toy_data, toy_warmstart, tmp_path / "runs",
                                                                        steps=saved + 1, resume=True),
                       env=_env(), cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    steps = [json.loads(l)["step"] for l in (tmp_path / "runs" / "comam-s3" / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, saved + 2))


def test_queries_must_divide_among_the_processes(tmp_path):
    r = subprocess.run(TORCHRUN + [str(ROOT / "train.py"), "--queries", "3", "--out", str(tmp_path / "runs")],
                       env=_env(), cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode != 0
    assert "error: --queries 3 must be a multiple of the number of processes (2)" in r.stderr
    assert not (tmp_path / "runs").exists()
