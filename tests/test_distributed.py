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


AGGREGATIONS = ["token", "sequence"]


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory):
    """The worker's results, one process (this one) and two (torchrun), for both loss aggregations."""
    import dist_worker
    out = tmp_path_factory.mktemp("dist")
    dist_worker.main(out / "one", AGGREGATIONS)  # one process: this one (no process group to join)
    worker = str(ROOT / "tests" / "dist_worker.py")
    r = subprocess.run(TORCHRUN + [worker, str(out / "two"), ",".join(AGGREGATIONS)], env=_env(), cwd=out,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.mark.uses_solutions
@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_two_processes_equal_one_given_the_same_rollouts(agg, one_and_two):
    from safetensors.torch import load_file
    one, two = (json.loads((one_and_two / x / agg / "result.json").read_text()) for x in ("one", "two"))
    assert (one["world"], two["world"]) == (1, 2)
    assert one["advantages"] == two["advantages"]  # credit is per query group: exactly equal
    for role in agents.ROLES:
        for key in ("loss", "tokens", "kl"):
            assert two["stats"][role][key] == pytest.approx(one["stats"][role][key], rel=1e-6, abs=1e-9), (role, key)
        a, b = load_file(str(one_and_two / "one" / agg / f"{role}.safetensors")), \
            load_file(str(one_and_two / "two" / agg / f"{role}.safetensors"))
        diff = max((a[k] - b[k]).abs().max().item() for k in a)
        assert diff < 1e-6, (role, diff)


def _run_args(toy_data, toy_warmstart, out, **kw):
    base = dict(data=str(toy_data), model=str(toy_warmstart), out=str(out), steps=2, queries=2, group_size=2,
                eval_users=2, save_every=1, seed=3)
    base.update(kw)
    return [f"--{k.replace('_', '-')}={v}" if v is not True else f"--{k.replace('_', '-')}" for k, v in base.items()]


@pytest.mark.slow  # train.py under torchrun; two processes = one stays fast above
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


def _descendants(parent: int) -> set[int]:
    """The pids of every process below `parent` (children, their children, ...), read from /proc."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) if proc.name.isdigit() else None
        except (OSError, IndexError, ValueError):
            continue
        if ppid is not None:
            children.setdefault(ppid, []).append(int(proc.name))
    found, todo = set(), [parent]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of the worker with RANK=rank among the descendants of `parent` (read from /proc): never
    another job's worker, whoever started it."""
    for pid in sorted(_descendants(parent)):
        proc = Path("/proc") / str(pid)
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
            if f"RANK={rank}".encode() in env and b"TORCHELASTIC_RUN_ID" in b" ".join(env) \
                    and b"train.py" in (proc / "cmdline").read_bytes():
                return pid
        except OSError:
            continue
    return None


def test_rank_pid_finds_only_the_workers_of_its_own_job(tmp_path):
    """A look-alike worker started elsewhere (RANK=1, a torchrun id, train.py in its command line) is
    not found from another parent, and is found from its own."""
    script = tmp_path / "train.py"
    script.write_text("import time; time.sleep(60)\n")
    env = {**os.environ, "RANK": "1", "TORCHELASTIC_RUN_ID": "someone-else"}
    other = subprocess.Popen([sys.executable, str(script)], env=env)
    try:
        deadline = time.time() + 10
        while b"train.py" not in Path(f"/proc/{other.pid}/cmdline").read_bytes() and time.time() < deadline:
            time.sleep(0.05)
        assert _rank_pid(other.pid, 1) is None  # another job (its parent): not found
        assert _rank_pid(os.getpid(), 1) == other.pid  # a child of this process: found
    finally:
        other.kill()
        other.wait()


@pytest.mark.slow  # a torchrun fault: rarely broken, three or more process starts each
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


@pytest.mark.slow  # a torchrun start for one error line
def test_queries_must_divide_among_the_processes(tmp_path):
    r = subprocess.run(TORCHRUN + [str(ROOT / "train.py"), "--queries", "3", "--out", str(tmp_path / "runs")],
                       env=_env(), cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode != 0
    assert "error: --queries 3 must be a multiple of the number of processes (2)" in r.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow  # a torchrun fault: rarely broken, three or more process starts each
@pytest.mark.uses_solutions
def test_a_stopped_rank_is_named_after_the_timeout_not_waited_for(toy_data, toy_warmstart, tmp_path):
    """SIGSTOP (not dead: torchrun does not notice) of rank 1 after the first checkpoint: rank 0 stops
    after COMAM_DIST_TIMEOUT_S with one line naming rank 1, instead of waiting 30 minutes."""
    env = {**_env(), "COMAM_DIST_TIMEOUT_S": "30"}
    job = subprocess.Popen(TORCHRUN + [str(ROOT / "train.py")] + _run_args(toy_data, toy_warmstart, tmp_path / "runs",
                                                                            steps=40),
                           env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = tmp_path / "runs" / "comam-s3" / "ckpt" / "state.json"
    deadline = time.time() + 180
    while not state.exists() and job.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    zero, one = _rank_pid(job.pid, 0), _rank_pid(job.pid, 1)
    assert zero is not None and one is not None and job.poll() is None
    os.kill(one, signal.SIGSTOP)
    stopped_at = time.time()
    try:
        while Path(f"/proc/{zero}").exists() and b"train.py" in Path(f"/proc/{zero}/cmdline").read_bytes() \
                and time.time() < stopped_at + 150:
            time.sleep(0.2)
        waited = time.time() - stopped_at
    finally:
        os.kill(one, signal.SIGCONT)  # so that torchrun's SIGTERM ends it
    _, err = job.communicate(timeout=120)
    assert job.returncode != 0 and waited < 120, (waited, err[-2000:])
    lines = [l for l in err.splitlines() if l.startswith("error: rank 0:")]
    assert len(lines) == 1 and "it waited for rank 1 (at collective" in lines[0] and \
        "which stopped answering" in lines[0] and "no answer within 30 s" in lines[0], err[-3000:]
    assert 'train.py", line' not in err  # no traceback from our code on either rank


@pytest.mark.slow  # a torchrun fault: rarely broken, three or more process starts each
@pytest.mark.uses_solutions
def test_a_torchrun_job_beside_a_run_on_the_same_folder_is_one_line_per_rank(toy_data, toy_warmstart, tmp_path):
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from cli import FolderLock; import time; "
            f"lock = FolderLock({str(tmp_path / 'runs' / 'comam-s3')!r}); print('locked', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    try:
        r = subprocess.run(TORCHRUN + [str(ROOT / "train.py")] + _run_args(toy_data, toy_warmstart, tmp_path / "runs"),
                           env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode != 0
    assert f"error: {tmp_path / 'runs' / 'comam-s3'} is in use by process {holder.pid}" in r.stderr, r.stderr[-3000:]
    assert 'train.py", line' not in r.stderr and "gloo" not in r.stderr.lower(), r.stderr[-3000:]
    assert not (tmp_path / "runs" / "comam-s3").exists()


@pytest.mark.slow  # a torchrun fault: rarely broken, three or more process starts each
@pytest.mark.uses_solutions
@pytest.mark.parametrize("script", ["eval.py", "warmstart.py"])
def test_ctrl_c_under_torchrun_is_one_line_per_worker_naming_what_stopped(script, toy_data, toy_warmstart, tmp_path):
    """Ctrl-C in a terminal reaches torchrun and its workers (one process group), and torchrun's agent
    forwards it to the workers again: each worker says once what stopped and what it left, and exits
    130, as one process does. torchrun itself then exits 1 with its own SignalException (its agent
    re-raises it; the same for train.py), which no worker can change."""
    out = tmp_path / ("r.json" if script == "eval.py" else "ws")
    argv = ["--data", str(toy_data), "--out", str(out)] + (
        ["--policies", str(toy_warmstart), "--users", "3", "--samples", "50"] if script == "eval.py" else
        ["--steps", "5000", "--hidden", "16", "--layers", "1", "--probe-every", "0"])
    wrapper = tmp_path / "worker.py"  # the worker's own exit status (torchrun does not report it after a Ctrl-C)
    wrapper.write_text("import os, runpy, sys\nsys.argv = sys.argv[1:]\ncode = 0\ntry:\n"
                       "    runpy.run_path(sys.argv[0], run_name='__main__')\nexcept SystemExit as e:\n"
                       "    code = e.code\n    raise\nfinally:\n"
                       "    print(f'worker {os.environ[\"RANK\"]} exit {code}', file=sys.stderr, flush=True)\n")
    with open(tmp_path / "err.txt", "w") as err_file:
        job = subprocess.Popen(TORCHRUN + [str(wrapper), str(ROOT / script)] + argv,
                               env={**_env(), "PYTHONUNBUFFERED": "1"}, cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=err_file, text=True, start_new_session=True,  # its own group, as in a terminal
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        started = 0
        for line in job.stdout:  # both workers have loaded their models and begun
            started += line.startswith("context limits")
            if started == 2:
                break
        assert started == 2, (tmp_path / "err.txt").read_text()[-3000:]
        os.killpg(job.pid, signal.SIGINT)  # Ctrl-C
        job.communicate(timeout=300)
    err = (tmp_path / "err.txt").read_text()
    what = "the evaluation stopped before its end; no result was written" if script == "eval.py" else \
        "the warm start stopped before its end; nothing was written to"
    lines = [l for l in err.splitlines() if l.startswith("interrupted:")]
    assert len(lines) == 2 and all(l.startswith(f"interrupted: {what}") and str(out) in l for l in lines), err[-3000:]
    assert sorted(l for l in err.splitlines() if l.startswith("worker ")) == ["worker 0 exit 130", "worker 1 exit 130"]
    assert f'{script}", line' not in err and "KeyboardInterrupt" not in err and "Exception ignored" not in err, err[-3000:]
    assert job.returncode != 0 and not out.exists()
