"""Bad input gets one clear line and loses nothing (per category: flags, data, PersonaMem, benchmark
folders, run folders and checkpoints, eval.py).

Each fault runs a command through its real entry point (cli.command / the module's main) and checks
the exit status (2), the one line "error: ..." on stderr naming the flag, file, line or field, and
that the files already written are byte-for-byte unchanged. FAULTS below doubles as the table of the
issue's closing note (fault -> message).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import agents
import eval as evaluation
import train
import warmstart
from cli import InputError, command, recover_folder, replace_folder
from data import generate, personamem
from data.example import read_split

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures" / "personamem"


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes (to show that nothing already written changed)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def fails(capsys, fn, *needles: str) -> str:
    """fn() exits with status 2 after printing one line "error: ..." (the last, no traceback) holding every needle."""
    with pytest.raises(SystemExit) as exc:
        fn()
    assert exc.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err and err[-1].startswith("error: "), err  # the last line, after any progress bar
    assert not any(line.startswith(("Traceback", "error")) for line in err[:-1]), err
    for needle in needles:
        assert needle in err[-1], (needle, err[-1])
    return err[-1]


# ---------------------------------------------------------------- flags (nothing is written)

TRAIN_FLAG_FAULTS = [
    (["--steps", "0"], "--steps must be at least 1, got 0"),
    (["--steps", "-1"], "--steps must be at least 1, got -1"),
    (["--queries", "0"], "--queries must be at least 1"),
    (["--group-size", "1"], "--group-size must be at least 2, got 1"),
    (["--micro-batch", "0"], "--micro-batch must be at least 1"),
    (["--save-every", "0"], "--save-every must be at least 1"),
    (["--ppo-epochs", "0"], "--ppo-epochs must be at least 1"),
    (["--eval-every", "-2"], "--eval-every must be at least 0"),
    (["--eval-users", "-1"], "--eval-users must be at least 0"),
    (["--temperature", "-1"], "--temperature must be a finite number > 0.0, got -1.0"),
    (["--temperature", "0"], "--temperature must be a finite number > 0.0, got 0.0"),
    (["--eval-temperature", "-0.5"], "--eval-temperature must be a finite number >= 0.0"),
    (["--lr", "0"], "--lr must be a finite number > 0.0"),
    (["--lr", "nan"], "--lr must be a finite number > 0.0, got nan"),
    (["--lr", "inf"], "--lr must be a finite number > 0.0, got inf"),
    (["--clip-eps", "0"], "--clip-eps must be a finite number > 0.0"),
    (["--max-grad-norm", "-1"], "--max-grad-norm must be a finite number > 0.0"),
    (["--credit-temp", "0"], "--credit-temp must be a finite number > 0.0"),
    (["--fixed-w", "-3"], "--fixed-w must be a finite number >= 0.0, got -3.0"),
    (["--kl-beta", "-0.1"], "--kl-beta must be a finite number >= 0.0"),
    (["--scale", "-1"], "--scale must be a finite number >= 0.0"),
    (["--credit", "adaptive"], "--credit must be one of comam, local, global, equal, fixed; got 'adaptive'"),
    (["--credit-variant", "eq14"], "--credit-variant must be one of eq15, alg1"),
    (["--mode", "solo"], "--mode must be one of joint, independent"),
    (["--loss-agg", "sum"], "--loss-agg must be one of token, sequence"),
    (["--device", "tpu"], "--device must be one of auto, cpu, cuda"),
]
if not torch.cuda.is_available():
    TRAIN_FLAG_FAULTS.append((["--device", "cuda"], "--device cuda: this machine has no CUDA device"))


@pytest.mark.parametrize("argv,message", TRAIN_FLAG_FAULTS, ids=[" ".join(a) for a, _ in TRAIN_FLAG_FAULTS])
def test_train_flags_are_checked_before_anything_is_written(argv, message, tmp_path, capsys):
    fails(capsys, lambda: command(train.main, train.Args, "", argv + ["--out", str(tmp_path / "runs")]), message)
    assert not (tmp_path / "runs").exists()


EVAL_FLAG_FAULTS = [
    (["--split", "dev"], "--split must be one of val, test, train"),
    (["--system", "memgpt"], "--system must be one of comam, base, rag"),
    (["--temperature", "-1"], "--temperature must be a finite number >= 0.0"),
    (["--users", "-2"], "--users must be at least 0"),
    (["--personamem", "questions.csv"], "--personamem takes 'QUESTIONS.csv,CONTEXTS.jsonl'"),
]


@pytest.mark.parametrize("argv,message", EVAL_FLAG_FAULTS, ids=[" ".join(a) for a, _ in EVAL_FLAG_FAULTS])
def test_eval_flags(argv, message, tmp_path, capsys):
    fails(capsys, lambda: command(evaluation.main, evaluation.Args, "", argv + ["--out", str(tmp_path / "r.json")]),
          message)
    assert not (tmp_path / "r.json").exists()


WARMSTART_FLAG_FAULTS = [
    (["--noise-answer", "2"], "--noise-answer is a probability: at most 1, got 2.0"),
    (["--noise-profile", "-0.1"], "--noise-profile must be a finite number >= 0.0"),
    (["--role-weights", "1,2"], "--role-weights takes three whole numbers"),
    (["--role-weights", "a,b,c"], "--role-weights takes three whole numbers"),
    (["--keep-untrained"], "--keep-untrained copies agents from --init-from"),
    (["--lr", "-1"], "--lr must be a finite number >= 0.0"),
    (["--hidden", "0"], "--hidden must be at least 1"),
    (["--batch-size", "-4"], "--batch-size must be at least 0"),
]


@pytest.mark.parametrize("argv,message", WARMSTART_FLAG_FAULTS, ids=[" ".join(a) for a, _ in WARMSTART_FLAG_FAULTS])
def test_warmstart_flags(argv, message, tmp_path, capsys):
    fails(capsys, lambda: command(warmstart.main, warmstart.Args, "", argv + ["--out", str(tmp_path / "ws")]), message)
    assert not (tmp_path / "ws").exists()


def test_eval_out_is_checked_before_the_evaluation(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(evaluation, "evaluate", lambda *a, **k: pytest.fail("evaluated before checking --out"))
    (tmp_path / "taken").mkdir()
    fails(capsys, lambda: command(evaluation.main, evaluation.Args, "", ["--out", str(tmp_path / "taken")]),
          "--out", "is a folder")


def test_generate_refuses_a_folder_that_is_not_empty(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    fails(capsys, lambda: generate.main(["--out", str(tmp_path), "--train-users", "2"]),
          "the folder is not empty (notes.txt)", "--overwrite")
    assert snapshot(tmp_path) == before
    fails(capsys, lambda: generate.main(["--out", str(tmp_path / "new"), "--train-users", "0"]),
          "--train-users must be at least 1")


# ---------------------------------------------------------------- data files

def _broken_copy(toy_data, tmp_path, split, which, edit):
    """A copy of the toy benchmark whose `which` file ("questions" / "histories") has line 2 edited."""
    folder = tmp_path / "bench"
    shutil.copytree(toy_data, folder)
    path = folder / f"{split}_{which}.jsonl"
    rows = path.read_text().splitlines()
    row = json.loads(rows[1])
    rows[1] = edit(row) if callable(edit) else edit
    rows[1] = rows[1] if isinstance(rows[1], str) else json.dumps(rows[1])
    path.write_text("\n".join(rows) + "\n")
    return folder, path


def _set(key, value):
    def edit(row):
        row[key] = value
        return row
    return edit


def _del(key):
    def edit(row):
        del row[key]
        return row
    return edit


def _history_edit(fn):
    def edit(row):
        fn(row)
        return row
    return edit


def _dup_line_id(row):
    row["sessions"][0]["lines"][1]["id"] = row["sessions"][0]["lines"][0]["id"]


def _bad_role(row):
    row["sessions"][0]["lines"][0]["role"] = "bot"


def _bad_index(row):
    row["sessions"][1]["index"] = 7


def _bad_note(row):
    row["sessions"][0]["notes"] = {"9999": ["pet cat milo"]}


QUESTION_FAULTS = [
    ("options as a string", _set("options", "wxyz"), "field 'options' must be a list, got \"wxyz\""),
    ("three options", _set("options", ["a", "b", "c"]), "field 'options' must hold exactly 4 non-empty strings"),
    ("repeated options", _set("options", ["a", "a", "b", "c"]), "field 'options' must hold 4 distinct strings"),
    ("option not a string", _set("options", ["a", 2, "b", "c"]), "field 'options' must hold exactly 4 non-empty"),
    ("gold e", _set("gold", "e"), "field 'gold' must be one of a, b, c, d, got 'e'"),
    ("gold a number", _set("gold", 1), "field 'gold' must be a string, got 1"),
    ("evidence id that does not exist", _set("evidence", [99999]), "field 'evidence' must be a non-empty list of line ids"),
    ("empty evidence", _set("evidence", []), "field 'evidence' must be a non-empty list"),
    ("evidence as a string", _set("evidence", "3"), "field 'evidence' must be a list"),
    ("evidence session out of range", _set("evidence_session", 99), "field 'evidence_session' must be a session index"),
    ("evidence without its session", _set("evidence_session", None), "field 'evidence_session' must be a session index"),
    ("question a number", _set("question", 7), "field 'question' must be a string, got 7"),
    ("missing qid", _del("qid"), "missing field 'qid'"),
    ("unknown user", _set("user", "nobody"), "user 'nobody' has no history"),
    ("not an object", "[1, 2, 3]", "expected a JSON object, got list"),
    ("cut short", '{"qid": "x", "user', "not valid JSON"),
]


@pytest.mark.parametrize("name,edit,message", QUESTION_FAULTS, ids=[n for n, _, _ in QUESTION_FAULTS])
def test_question_faults_name_file_line_and_field(name, edit, message, toy_data, tmp_path, capsys):
    folder, path = _broken_copy(toy_data, tmp_path, "val", "questions", edit)
    fails(capsys, lambda: command(evaluation.main, evaluation.Args, "", ["--data", str(folder), "--out",
                                                                          str(tmp_path / "r.json")]),
          f"{path}:2:", message)
    assert not (tmp_path / "r.json").exists()


HISTORY_FAULTS = [
    ("repeated line id", _history_edit(_dup_line_id), "is used twice in this user's history"),
    ("role bot", _history_edit(_bad_role), "field 'role' must be user or assistant, got 'bot'"),
    ("session index", _history_edit(_bad_index), "session 1: field 'index' must be 1"),
    ("note of a missing line", _history_edit(_bad_note), "field 'notes' names line '9999'"),
    ("sessions as an object", _set("sessions", {"a": 1}), "field 'sessions' must be a list"),
]


@pytest.mark.parametrize("name,edit,message", HISTORY_FAULTS, ids=[n for n, _, _ in HISTORY_FAULTS])
def test_history_faults_name_file_line_and_field(name, edit, message, toy_data, tmp_path):
    folder, path = _broken_copy(toy_data, tmp_path, "val", "histories", edit)
    with pytest.raises(InputError, match=rf"{path}:2: .*{message[:25]}"):
        read_split(folder, "val")


def test_non_utf8_and_empty_splits(toy_data, tmp_path):
    folder, path = _broken_copy(toy_data, tmp_path, "val", "questions", lambda row: row)
    path.write_bytes(path.read_bytes().replace(b'"qid"', b'"q\xffid"', 3))
    with pytest.raises(InputError, match=rf"{path}:1: not valid UTF-8"):
        read_split(folder, "val")
    path.write_text("\n\n")
    with pytest.raises(InputError, match=rf"{path}: the split 'val' has no questions"):
        read_split(folder, "val")


# ---------------------------------------------------------------- PersonaMem files

def test_personamem_faults(tmp_path, capsys):
    contexts = str(FIXTURES / "shared_contexts_fixture.jsonl")
    header = (FIXTURES / "questions_fixture.csv").read_text().splitlines()[0]
    only_header = tmp_path / "header.csv"
    only_header.write_text(header + "\n")
    fails(capsys, lambda: personamem.main([str(only_header), contexts]), "header.csv: no questions")
    latin = tmp_path / "latin.csv"
    latin.write_bytes((FIXTURES / "questions_fixture.csv").read_bytes() + "caf\u00e9".encode("latin-1"))
    fails(capsys, lambda: personamem.main([str(latin), contexts]), "latin.csv:", "not valid UTF-8")
    huge = tmp_path / "huge.csv"
    rows = (FIXTURES / "questions_fixture.csv").read_text().splitlines()
    huge.write_text("\n".join([rows[0], rows[1].replace(",", ",\"" + "x" * (personamem.FIELD_LIMIT + 1) + "\",", 1)]))
    fails(capsys, lambda: personamem.main([str(huge), contexts]), "huge.csv:", "not a readable CSV row")
    bad_ctx = tmp_path / "ctx.jsonl"
    bad_ctx.write_bytes(b'{"a": [\xff]}\n')
    fails(capsys, lambda: personamem.main([str(FIXTURES / "questions_fixture.csv"), str(bad_ctx)]),
          "ctx.jsonl:1: not valid UTF-8")
    fails(capsys, lambda: personamem.main([str(tmp_path / "missing.csv"), contexts]),
          "missing.csv: No such file or directory")


# ---------------------------------------------------------------- benchmark folders: nothing generated over files

def test_a_folder_without_a_benchmark_is_an_error_and_stays_as_it_was(tmp_path, capsys):
    pm = tmp_path / "personamem"
    shutil.copytree(FIXTURES, pm)
    before = snapshot(pm)
    fails(capsys, lambda: command(train.main, train.Args, "", ["--data", str(pm), "--out", str(tmp_path / "r")]),
          f"{pm}: not a complete benchmark, missing train_histories.jsonl")
    assert snapshot(pm) == before and not (tmp_path / "r").exists()
    fails(capsys, lambda: command(train.main, train.Args, "", ["--data", str(tmp_path / "typo"), "--out",
                                                                str(tmp_path / "r")]),
          "typo: no such benchmark folder")
    assert not (tmp_path / "typo").exists()


def test_default_benchmark_is_generated_only_when_missing_or_empty(tmp_path, monkeypatch, toy_data):
    default = tmp_path / "code" / "data" / "synthetic"
    monkeypatch.setattr(generate, "DEFAULT_FOLDER", default)
    calls = []
    monkeypatch.setattr(generate, "generate_splits", lambda out, **kw: calls.append(out) or shutil.copytree(
        toy_data, out, dirs_exist_ok=True))
    monkeypatch.chdir(tmp_path)  # from another directory: still the folder next to the code
    assert generate.ensure("") == default and calls == [default]
    assert generate.ensure("") == default and len(calls) == 1  # present: read, not generated again
    (default / "train_questions.jsonl").unlink()  # a partly deleted (or hand-edited) default benchmark
    before = snapshot(default)
    with pytest.raises(InputError, match="missing train_questions.jsonl"):
        generate.ensure("")
    assert snapshot(default) == before and len(calls) == 1
    assert not (tmp_path / "data").exists()


# ---------------------------------------------------------------- run folders and checkpoints

def _args(toy_data, out, **kw):
    base = dict(data=str(toy_data), model="tiny", out=str(out), steps=2, queries=1, group_size=2, eval_users=1,
                save_every=1, seed=5)
    base.update(kw)
    return [f"--{k.replace('_', '-')}" if v is True else f"--{k.replace('_', '-')}={v}" for k, v in base.items()
            if v is not False]


@pytest.fixture(scope="module")
def finished_run(toy_data, tmp_path_factory):
    """A 2-step three-policy run of the shipped tiny warm start on the toy benchmark."""
    out = tmp_path_factory.mktemp("runs")
    command(train.main, train.Args, "", _args(toy_data, out))
    return out


def _copy_run(finished_run, tmp_path) -> Path:
    shutil.copytree(finished_run, tmp_path / "runs")
    return tmp_path / "runs" / "comam-s5"


@pytest.mark.parametrize("flag,value,shown", [("shared_policy", True, "--shared-policy True (the run's: False)"),
                                              ("lr", "0.001", "--lr 0.001 (the run's: 0.0002)"),
                                              ("group_size", "4", "--group-size 4 (the run's: 2)"),
                                              ("credit", "local", "--credit local (the run's: comam)")])
@pytest.mark.uses_solutions
def test_resume_refuses_flags_that_would_change_the_run(flag, value, shown, finished_run, toy_data, tmp_path, capsys):
    run = _copy_run(finished_run, tmp_path)
    before = snapshot(run)
    fails(capsys, lambda: command(train.main, train.Args, "", _args(toy_data, tmp_path / "runs", steps=4, resume=True,
                                                                     **{flag: value})),
          "--resume:", shown, "would change the run")
    assert snapshot(run) == before


@pytest.mark.uses_solutions
def test_resume_needs_more_steps_and_an_existing_run(finished_run, toy_data, tmp_path, capsys):
    run = _copy_run(finished_run, tmp_path)
    before = snapshot(run)
    fails(capsys, lambda: command(train.main, train.Args, "", _args(toy_data, tmp_path / "runs", resume=True)),
          "--steps 2: the run's checkpoint is at step 2")
    fails(capsys, lambda: command(train.main, train.Args, "", _args(toy_data, tmp_path / "runs", steps=4)),
          "has a checkpoint: pass --resume")
    fails(capsys, lambda: command(train.main, train.Args, "", _args(toy_data, tmp_path / "runs", seed=9, resume=True)),
          "--resume: there is no run at")
    assert snapshot(run) == before


@pytest.mark.uses_solutions
def test_resume_records_what_may_change(finished_run, toy_data, tmp_path):
    run = _copy_run(finished_run, tmp_path)
    command(train.main, train.Args, "", _args(toy_data, tmp_path / "runs", steps=3, resume=True, eval_every=5))
    assert json.loads((run / "args.json").read_text())["steps"] == 3
    assert json.loads((run / "resumes.jsonl").read_text().splitlines()[-1]) | {} == {
        "at_step": 2, "steps": 3, "eval_every": 5, "save_every": 1, "micro_batch": 64, "device": "auto", "processes": 1}
    assert [json.loads(l)["step"] for l in (run / "log.jsonl").read_text().splitlines()] == [1, 2, 3]


@pytest.mark.parametrize("damage,needle", [
    ("state", "state.json: not valid JSON"),
    ("model", "cannot load the extraction agent's model"),
    ("optimizer", "optimizer.pt: cannot use this optimizer state"),
    ("log", "log.jsonl:1: not valid JSON; the log is damaged"),
])
@pytest.mark.uses_solutions
def test_damaged_checkpoint_files_are_named(damage, needle, finished_run, toy_data, tmp_path, capsys):
    run = _copy_run(finished_run, tmp_path)
    target = {"state": run / "ckpt" / "state.json", "model": run / "ckpt" / "extraction" / "model.safetensors",
              "optimizer": run / "ckpt" / "extraction" / "optimizer.pt", "log": run / "log.jsonl"}[damage]
    data = target.read_bytes()
    target.write_bytes(b"{ cut" + data[len(data) // 2:] if damage == "log" else data[:len(data) // 2])
    before = snapshot(run)
    fails(capsys, lambda: command(train.main, train.Args, "", _args(toy_data, tmp_path / "runs", steps=3, resume=True)),
          needle)
    assert snapshot(run) == before


@pytest.mark.uses_solutions
def test_a_log_line_cut_by_a_kill_is_dropped_on_resume(finished_run, toy_data, tmp_path):
    run = _copy_run(finished_run, tmp_path)
    with open(run / "log.jsonl", "a") as f:
        f.write('{"step": 3, "global_rew')  # killed while writing step 3's line
    command(train.main, train.Args, "", _args(toy_data, tmp_path / "runs", steps=3, resume=True))
    assert [json.loads(l)["step"] for l in (run / "log.jsonl").read_text().splitlines()] == [1, 2, 3]


@pytest.mark.uses_solutions
def test_a_run_that_died_before_its_first_checkpoint_starts_again(toy_data, tmp_path):
    run = tmp_path / "runs" / "comam-s5"
    run.mkdir(parents=True)
    (run / ".comam-run").write_text('{"made_by": "train.py", "id": "0", "exp_name": "comam", "seed": 5}')
    (run / "args.json").write_text("{}")
    (run / "log.jsonl").write_text('{"step": 1}\n')
    command(train.main, train.Args, "", _args(toy_data, tmp_path / "runs", steps=1))
    assert [json.loads(l)["step"] for l in (run / "log.jsonl").read_text().splitlines()] == [1]
    assert (run / "summary.json").exists() and json.loads((run / "ckpt" / "state.json").read_text())["step"] == 1


@pytest.mark.parametrize("crash", ["after the first rename", "before the first rename", "inside write"])
def test_replace_folder_recovers_from_a_crash_at_any_point(crash, tmp_path):
    final = tmp_path / "ckpt"
    replace_folder(final, lambda d: (d / "v").write_text("1"))
    tmp, old = tmp_path / "ckpt.tmp", tmp_path / "ckpt.old"
    shutil.copytree(final, tmp)
    (tmp / "v").write_text("2")
    if crash == "after the first rename":  # ckpt -> ckpt.old done, ckpt.tmp (complete) -> ckpt not yet
        final.rename(old)
        want = "2"
    elif crash == "before the first rename":
        want = "1"
    else:  # the new version is incomplete: no marker
        (tmp / ".complete").unlink()
        final.rename(old)
        want = "1"
    recover_folder(final)
    assert (final / "v").read_text() == want and not old.exists()


@pytest.mark.slow  # a real kill -9 of a subprocess run; resume bit for bit stays fast in test_train.py
@pytest.mark.uses_solutions
def test_kill_9_and_resume_is_bit_identical(toy_data, tmp_path):
    """A real `kill -9` of `python train.py` after its first checkpoint, then --resume, ends with the same
    weights, optimizer states and log as the same run uninterrupted (the shipped tiny warm start, so
    that the rewards vary and every step changes the weights)."""
    common = dict(steps=4, queries=2, group_size=2, save_every=2, eval_users=1)
    command(train.main, train.Args, "", _args(toy_data, tmp_path / "a", **common))
    argv = [sys.executable, str(ROOT / "train.py")] + _args(toy_data, tmp_path / "b", **common)
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "b" / "comam-s5" / "ckpt" / "state.json"
    deadline = time.time() + 120
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(state.read_text())["step"]
    assert killed_at < 4, "the run finished before it could be killed"
    command(train.main, train.Args, "", _args(toy_data, tmp_path / "b", resume=True, **common))
    a, b = tmp_path / "a" / "comam-s5", tmp_path / "b" / "comam-s5"
    for role in agents.ROLES:
        assert (a / "ckpt" / role / "model.safetensors").read_bytes() == (b / "ckpt" / role / "model.safetensors").read_bytes()
        sa, sb = torch.load(a / "ckpt" / role / "optimizer.pt"), torch.load(b / "ckpt" / role / "optimizer.pt")
        for k in sa["state"]:
            for name in ("exp_avg", "exp_avg_sq"):
                assert torch.equal(sa["state"][k][name], sb["state"][k][name])
    strip = lambda path: [{k: v for k, v in json.loads(l).items() if not k.endswith("_s") and not k.endswith("tok_s")}
                          for l in path.read_text().splitlines()]
    assert strip(a / "log.jsonl") == strip(b / "log.jsonl")
    assert json.loads((a / "summary.json").read_text())["final"]["accuracy"] == \
        json.loads((b / "summary.json").read_text())["final"]["accuracy"]


# ---------------------------------------------------------------- eval.py files

def test_eval_file_faults(tmp_path, capsys):
    (tmp_path / "run-s1").mkdir()
    (tmp_path / "run-s1" / "log.jsonl").write_text("")
    fails(capsys, lambda: command(evaluation.main, evaluation.Args, "", ["--plot", str(tmp_path / "run-s1")]),
          "log.jsonl: the log is empty")
    assert not (tmp_path / "run-s1" / "curves.png").exists()
    fails(capsys, lambda: command(evaluation.main, evaluation.Args, "", ["--plot", str(tmp_path / "nope")]),
          "no such training log")
    (tmp_path / "x.json").write_text('{"accuracy": 0.5')
    fails(capsys, lambda: command(evaluation.main, evaluation.Args, "", ["--compare", str(tmp_path / "x.json")]),
          "x.json: not valid JSON")
    (tmp_path / "y.json").write_text('{"loss": 1}')
    fails(capsys, lambda: command(evaluation.main, evaluation.Args, "", ["--compare", str(tmp_path / "y.json")]),
          "y.json: not an eval.py result file")
    fails(capsys, lambda: command(evaluation.main, evaluation.Args, "", ["--policies", str(tmp_path / "none"),
                                                                          "--out", str(tmp_path / "r.json")]),
          "no model for the extraction agent", "none")


@pytest.mark.parametrize("argv,message", [
    (["train.py", "--steps", "0"], "error: --steps must be at least 1, got 0"),
    (["eval.py", "--split", "dev"], "error: --split must be one of val, test, train; got 'dev'"),
    (["-m", "data.personamem", "missing.csv", "missing.jsonl"], "error: missing.csv: No such file or directory"),
])
def test_the_commands_print_one_line_and_exit_2(argv, message, tmp_path):
    """The real entry points, as a user runs them (from another directory: the code finds its own files)."""
    r = subprocess.run([sys.executable] + [str(ROOT / a) if a.endswith(".py") else a for a in argv], cwd=tmp_path,
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [message], r.stderr
    assert list(tmp_path.iterdir()) == []
