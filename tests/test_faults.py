"""Nothing lost, nothing run: output folders never replaced, one writer per run, checkpoints that cannot
execute code, flags read back from a run checked like flags, and the last raw tracebacks as one line.

Same style as test_errors.py: each fault runs a command through its real entry point and checks the exit
status, the one line on stderr, and that the files already there are byte-for-byte unchanged.
"""
from __future__ import annotations

import dataclasses
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

import eval as evaluation
import train
import warmstart
from cli import FolderLock, command
from data.example import read_split
from test_errors import _args, _copy_run, fails, finished_run, snapshot  # noqa: F401  (finished_run: a fixture)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import gpu_check  # noqa: E402
import merge_lora  # noqa: E402


def _users_folder(tmp_path) -> Path:
    """A folder of the user's: notes and a thesis, one level down too."""
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "thesis.txt").write_text("three years of work")
    (mine / "sub" / "notes.md").write_text("# notes")
    return mine


# ---------------------------------------------------------------- no command replaces what it did not create

def test_warmstart_refuses_a_folder_or_file_of_the_users(toy_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(warmstart, "clone", lambda *a, **k: pytest.fail("cloned before checking --out"))
    mine = _users_folder(tmp_path)
    before = snapshot(mine)
    fails(capsys, lambda: command(warmstart.main, warmstart.Args, "", ["--data", str(toy_data), "--out", str(mine)]),
          f"--out {mine}: exists and is not a warm start")
    assert snapshot(mine) == before
    afile = tmp_path / "afile"
    afile.write_text("mine")
    fails(capsys, lambda: command(warmstart.main, warmstart.Args, "", ["--data", str(toy_data), "--out", str(afile)]),
          f"--out {afile}: exists and is a file")
    assert afile.read_text() == "mine" and not (tmp_path / "afile.old").exists()


@pytest.mark.uses_solutions
def test_warmstart_replaces_its_own_earlier_output(toy_data, tmp_path):
    args = warmstart.Args(data=str(toy_data), out=str(tmp_path / "ws"), steps=1, batch_size=2, hidden=16, layers=1,
                          probe_every=0)
    warmstart.main(args)
    warmstart.main(dataclasses.replace(args, steps=2))  # the same command again: its own folder, replaced
    assert json.loads((tmp_path / "ws" / "warmstart.json").read_text())["args"]["steps"] == 2
    assert sorted(p.name for p in (tmp_path / "ws").iterdir()) == [".complete", "extraction", "profile", "retrieval",
                                                                 "warmstart.json"]


@pytest.mark.uses_solutions
def test_eval_results_go_next_to_the_checkpoint_and_survive_a_resume(finished_run, toy_data, tmp_path):
    run = _copy_run(finished_run, tmp_path)
    res = evaluation.main(evaluation.Args(data=str(toy_data), policies=str(run / "ckpt"), users=1, temperature=0.0))
    result = run / "ckpt-comam-val-s1.json"
    assert result.exists() and json.loads(result.read_text())["accuracy"] == res["accuracy"]
    assert not list((run / "ckpt").glob("*.json")) or [p.name for p in (run / "ckpt").glob("*.json")] == ["state.json"]
    command(train.main, train.Args, "", _args(toy_data, tmp_path / "runs", steps=3, resume=True))
    assert json.loads(result.read_text())["accuracy"] == res["accuracy"]  # the checkpoint was replaced, not it


def test_eval_refuses_to_write_over_a_file_that_is_not_a_result(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(evaluation, "evaluate", lambda *a, **k: pytest.fail("evaluated before checking --out"))
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": true}')
    fails(capsys, lambda: command(evaluation.main, evaluation.Args, "", ["--out", str(notes)]),
          f"--out {notes}: exists and is not an eval.py result")
    assert notes.read_text() == '{"mine": true}'


def test_train_refuses_a_run_name_taken_by_a_folder_of_the_users(toy_data, tmp_path, capsys):
    taken = tmp_path / "runs" / "comam-s5"
    (taken / "sub").mkdir(parents=True)
    (taken / "log.jsonl").write_text("my own log")
    (taken / "sub" / "notes.md").write_text("# notes")
    before = snapshot(taken)
    fails(capsys, lambda: command(train.main, train.Args, "", _args(toy_data, tmp_path / "runs")),
          f"--out {taken}: exists and is not a run folder of train.py")
    assert snapshot(taken) == before


def test_gpu_check_and_merge_refuse_a_folder_of_the_users(tmp_path, capsys):
    mine = _users_folder(tmp_path)
    before = snapshot(mine)
    fails(capsys, lambda: command(gpu_check.main, gpu_check.Args, "", ["--device", "cpu", "--out", str(mine)]),
          f"--out {mine}: exists and is not a folder of gpu_check.py")
    fails(capsys, lambda: command(merge_lora.main, merge_lora.Args, "", ["--src", "tiny", "--out", str(mine)]),
          f"--out {mine}: exists and is not empty")
    assert snapshot(mine) == before


# ---------------------------------------------------------------- one writer per run folder

def _hold_lock(folder: Path) -> subprocess.Popen:
    """Another process that holds the run folder's lock until it is killed."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from cli import FolderLock; import time; "
            f"lock = FolderLock({str(folder)!r}); print('locked', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.slow  # two subprocess runs on one folder
def test_a_second_process_on_the_same_run_folder_gets_one_line(toy_data, tmp_path):
    holder = _hold_lock(tmp_path / "runs" / "comam-s5")
    try:
        r = subprocess.run([sys.executable, str(ROOT / "train.py")] + _args(toy_data, tmp_path / "runs"),
                           capture_output=True, text=True, cwd=tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'runs' / 'comam-s5'} is in use by process {holder.pid}: one process writes a run at a "
        "time; wait for it to end, or give another --exp-name / --seed"]
    assert not (tmp_path / "runs" / "comam-s5").exists()
    FolderLock(tmp_path / "runs" / "comam-s5").release()  # the holder died: its lock is free (the file says nothing)


@pytest.mark.uses_solutions
def test_a_stale_lock_file_does_not_stop_a_run(toy_data, tmp_path):
    lock = tmp_path / "runs" / "comam-s5.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("process 999999")  # left behind by a kill -9
    command(train.main, train.Args, "", _args(toy_data, tmp_path / "runs", steps=1))
    assert (tmp_path / "runs" / "comam-s5" / "summary.json").exists() and not lock.exists()


# ---------------------------------------------------------------- checkpoints never execute code

class Payload:
    """Pickled, it runs `touch WITNESS` when it is unpickled: what a crafted checkpoint file can do."""

    def __init__(self, witness: Path):
        self.witness = str(witness)

    def __reduce__(self):
        return os.system, ("touch " + self.witness,)


@pytest.mark.uses_solutions
def test_a_crafted_optimizer_state_is_refused_even_with_the_unsafe_default(finished_run, toy_data, tmp_path,
                                                                           capsys, monkeypatch):
    """TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 makes torch.load unpickle anything when weights_only is not
    given (the default before torch 2.6; torch reads it at each load): our loads pass weights_only=True, so
    the payload never runs."""
    run = _copy_run(finished_run, tmp_path)
    target, witness = run / "ckpt" / "extraction" / "optimizer.pt", tmp_path / "pwned"
    torch.save({"state": {}, "param_groups": [], "x": Payload(witness)}, target)
    before = snapshot(run)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    fails(capsys, lambda: command(train.main, train.Args, "", _args(toy_data, tmp_path / "runs", steps=3, resume=True)),
          f"error: {target}: cannot use this optimizer state (Weights only load failed")
    assert not witness.exists() and snapshot(run) == before


def test_a_pickled_model_file_is_refused_in_one_line(toy_tokenizer, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "pickled"
    warmstart.build_tiny(toy_tokenizer, hidden=16, layers=1, heads=2).save_pretrained(folder)
    toy_tokenizer.save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    witness = tmp_path / "pwned"
    torch.save({"state": {}, "param_groups": [], "x": Payload(witness)}, folder / "pytorch_model.bin")
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    monkeypatch.chdir(tmp_path)
    fails(capsys, lambda: command(evaluation.main, evaluation.Args, "", ["--policies", str(folder), "--out",
                                                                          str(tmp_path / "r.json")]),
          f"error: {folder}: cannot load the extraction agent's model (UnpicklingError")
    assert not witness.exists() and not (tmp_path / "r.json").exists()


# ---------------------------------------------------------------- flags read back from a run, model shapes

@pytest.mark.parametrize("edit,needle", [
    ({"group_size": 1}, "state.json: --group-size must be at least 2, got 1"),
    ({"lr": -1}, "state.json: --lr must be a finite number > 0.0, got -1.0"),
    ({"queries": "2"}, "state.json: field 'args.queries' must be int, got '2'"),
    ({"credit": "adaptive"}, "state.json: --credit must be one of comam, local, global, equal, fixed"),
])
@pytest.mark.uses_solutions
def test_flags_read_back_from_a_run_are_checked_like_flags(edit, needle, finished_run, toy_data, tmp_path, capsys):
    run = _copy_run(finished_run, tmp_path)
    state = run / "ckpt" / "state.json"
    saved = json.loads(state.read_text())
    saved["args"].update(edit)
    state.write_text(json.dumps(saved))
    before = snapshot(run)
    argv = [a for a in _args(toy_data, tmp_path / "runs", steps=3, resume=True) if not a.startswith("--group-size")]
    fails(capsys, lambda: command(train.main, train.Args, "", argv), needle)  # --group-size left to the run
    assert snapshot(run) == before


@pytest.mark.uses_solutions
def test_a_state_without_its_step_is_named(finished_run, toy_data, tmp_path, capsys):
    run = _copy_run(finished_run, tmp_path)
    state = run / "ckpt" / "state.json"
    saved = json.loads(state.read_text())
    del saved["step"]
    state.write_text(json.dumps(saved))
    fails(capsys, lambda: command(train.main, train.Args, "", _args(toy_data, tmp_path / "runs", steps=3, resume=True)),
          f"{state}: no step number")


@pytest.mark.uses_solutions
def test_a_model_of_another_shape_in_the_checkpoint_is_an_error_before_any_rollout(
        finished_run, toy_data, toy_tokenizer, tmp_path, capsys, monkeypatch):
    import comam
    import models
    run = _copy_run(finished_run, tmp_path)
    folder = run / "ckpt" / "profile"
    tok = models.load_policy(str(folder)).tokenizer
    warmstart.build_tiny(tok, hidden=32, layers=1, heads=2).save_pretrained(folder)  # swapped for a smaller model
    monkeypatch.setattr(comam, "rollout", lambda *a, **k: pytest.fail("rolled out before checking the checkpoint"))
    fails(capsys, lambda: command(train.main, train.Args, "", _args(toy_data, tmp_path / "runs", steps=3, resume=True)),
          f"{folder / 'optimizer.pt'}: cannot use this optimizer state", "the checkpoint is damaged")


@pytest.mark.uses_solutions
def test_a_checkpoint_write_that_fails_is_one_line_and_the_previous_stays(finished_run, toy_data, tmp_path, capsys,
                                                                         monkeypatch):
    from safetensors import SafetensorError
    run = _copy_run(finished_run, tmp_path)
    ckpt = snapshot(run / "ckpt")

    def too_large(*a, **k):
        raise SafetensorError("Error while serializing: IoError(Os { code: 27, kind: FileTooLarge, message: "
                              "\"File too large\" })")
    monkeypatch.setattr("transformers.PreTrainedModel.save_pretrained", too_large)
    fails(capsys, lambda: command(train.main, train.Args, "", _args(toy_data, tmp_path / "runs", steps=3, resume=True)),
          f"{run / 'ckpt'}: the checkpoint of step 3 could not be written", "File too large",
          "the previous checkpoint is intact")
    assert snapshot(run / "ckpt") == ckpt


# ---------------------------------------------------------------- the last raw tracebacks

def test_a_training_split_without_evidence_is_one_line(toy_data, tmp_path, capsys):
    folder = tmp_path / "bench"
    shutil.copytree(toy_data, folder)
    path = folder / "train_questions.jsonl"
    rows = [json.loads(l) for l in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(r | {"evidence": None, "evidence_session": None}) + "\n" for r in rows))
    fails(capsys, lambda: command(train.main, train.Args, "", _args(folder, tmp_path / "runs")),
          f"{folder}: no training question has evidence")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("seed", ["-1", "4294967296"])
@pytest.mark.parametrize("cmd", ["train", "eval", "warmstart"])
def test_seeds_out_of_range(cmd, seed, tmp_path, capsys):
    main, cls = {"train": (train.main, train.Args), "eval": (evaluation.main, evaluation.Args),
                 "warmstart": (warmstart.main, warmstart.Args)}[cmd]
    fails(capsys, lambda: command(main, cls, "", ["--seed", seed, "--out", str(tmp_path / "o")]),
          f"--seed must be between 0 and 4294967295, got {seed}")
    assert not (tmp_path / "o").exists()


def test_a_deeply_nested_jsonl_line_is_one_line(toy_data, tmp_path):
    folder = tmp_path / "bench"
    shutil.copytree(toy_data, folder)
    path = folder / "val_questions.jsonl"
    path.write_text(path.read_text() + "[" * 100_000 + "\n")
    from cli import InputError
    n = len(path.read_text().splitlines())
    with pytest.raises(InputError, match=rf"{path}:{n}: not valid JSON here \(nested too deeply\)"):
        read_split(folder, "val")


@pytest.mark.slow  # signals to a subprocess run
@pytest.mark.uses_solutions
def test_ctrl_c_is_one_line_that_says_where_the_checkpoint_is(toy_data, tmp_path):
    argv = [sys.executable, str(ROOT / "train.py")] + _args(toy_data, tmp_path / "runs", steps=200, save_every=1)
    # SIGINT back to its default in the child: a shell running the tests in the background ignores it,
    # and Python keeps an inherited "ignore" (then Ctrl-C would do nothing and the test would hang)
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    state = tmp_path / "runs" / "comam-s5" / "ckpt" / "state.json"
    deadline = time.time() + 120
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGINT)
    err = proc.communicate(timeout=60)[1]
    lines = [l for l in err.splitlines() if l.strip() and "|" not in l and not l.startswith(("step", "context", "["))]
    assert proc.returncode == 130 and not any("Traceback" in l for l in err.splitlines()), err[-2000:]
    assert lines[-1].startswith("interrupted: the last checkpoint (step ") and lines[-1].endswith(
        f"is {tmp_path / 'runs' / 'comam-s5' / 'ckpt'}; continue with the same command and --resume"), lines[-3:]
    step = json.loads(state.read_text())["step"]
    assert f"(step {step})" in lines[-1]  # the checkpoint it names is the one on disk
    assert not (tmp_path / "runs" / "comam-s5.lock").exists()


# ---------------------------------------------------------------- small items

def test_a_byte_order_mark_in_jsonl_is_accepted(toy_data, tmp_path):
    folder = tmp_path / "bench"
    shutil.copytree(toy_data, folder)
    for name in ("val_questions.jsonl", "val_histories.jsonl"):
        (folder / name).write_bytes(b"\xef\xbb\xbf" + (folder / name).read_bytes())
    assert [ex.qid for ex in read_split(folder, "val")] == [ex.qid for ex in read_split(toy_data, "val")]


def test_personamem_paths_are_stripped(tmp_path, capsys):
    fails(capsys, lambda: command(evaluation.main, evaluation.Args, "", [
        "--personamem", f"{tmp_path / 'a.csv'}, {tmp_path / 'c.jsonl'}", "--out", str(tmp_path / "r.json")]),
        f"error: {tmp_path / 'a.csv'}: No such file or directory")


def test_json_errors_say_where_once(toy_data, tmp_path):
    folder = tmp_path / "bench"
    shutil.copytree(toy_data, folder)
    path = folder / "val_questions.jsonl"
    path.write_text('{"qid": "unterminated}\n')
    from cli import InputError
    with pytest.raises(InputError) as e:
        read_split(folder, "val")
    assert "at at" not in str(e.value) and str(e.value) == (
        f"{path}:1: not valid JSON (Unterminated string starting at: column 9)")


def test_options_that_differ_only_in_case_are_refused(toy_data, tmp_path):
    folder = tmp_path / "bench"
    shutil.copytree(toy_data, folder)
    path = folder / "val_questions.jsonl"
    rows = path.read_text().splitlines()
    row = json.loads(rows[0])
    gold = row["options"]["abcd".index(row["gold"])]
    row["options"][("abcd".index(row["gold"]) + 1) % 4] = gold.upper()  # "MILO" beside the correct "milo"
    path.write_text("\n".join([json.dumps(row)] + rows[1:]) + "\n")
    from cli import InputError
    with pytest.raises(InputError, match=rf"{path}:1: field 'options' must hold 4 distinct strings \(ignoring case"):
        read_split(folder, "val")


def test_generate_overwrite_refuses_a_folder_of_the_users(tmp_path, capsys):
    from data import generate
    mine = _users_folder(tmp_path)
    before = snapshot(mine)
    fails(capsys, lambda: generate.main(["--out", str(mine), "--overwrite", "--train-users", "2"]),
          f"--out {mine}: exists and is not a benchmark folder")
    assert snapshot(mine) == before


# ================================================================ issue 34: nothing lost, second round

# ---------------------------------------------------------------- a run folder is ours only when it proves it

def test_a_folder_with_an_args_json_but_no_marker_is_not_taken_for_a_run(toy_data, tmp_path, capsys):
    run = tmp_path / "runs" / "comam-s5"
    (run / "ckpt.tmp").mkdir(parents=True)
    (run / "args.json").write_text("{}")
    (run / "log.jsonl").write_text("mine")
    (run / "eval.jsonl").write_text("mine too")
    (run / "ckpt.tmp" / ".complete").write_text("")  # a crash-recovery rename must not touch it either
    before = snapshot(run)
    for extra in ({}, {"resume": True}):
        fails(capsys, lambda: command(train.main, train.Args, "", _args(toy_data, tmp_path / "runs", **extra)),
              f"--out {run}: exists and is not a run folder of train.py (no .comam-run marker)")
        assert snapshot(run) == before and not (run / "ckpt").exists()


@pytest.mark.uses_solutions
def test_a_renamed_run_resumes_under_its_new_name_and_keeps_its_identity(finished_run, toy_data, tmp_path):
    run = _copy_run(finished_run, tmp_path)
    marker = json.loads((run / ".comam-run").read_text())
    assert marker["made_by"] == "train.py" and marker["exp_name"] == "comam" and marker["seed"] == 5
    renamed = run.with_name("renamed-s5")
    run.rename(renamed)
    command(train.main, train.Args, "", _args(toy_data, tmp_path / "runs", steps=3, resume=True, exp_name="renamed"))
    assert [json.loads(l)["step"] for l in (renamed / "log.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert json.loads((renamed / ".comam-run").read_text())["id"] == marker["id"]


@pytest.mark.parametrize("name", ["../../escaped", "a/b", "/abs/run", "..", "", "bad\udcffname", "a\\b"])
def test_exp_name_is_a_name_not_a_path(name, toy_data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    line = fails(capsys, lambda: command(train.main, train.Args, "", _args(toy_data, tmp_path / "out" / "runs",
                                                                           exp_name=name)), "--exp-name")
    assert ("not UTF-8" if "\udcff" in name else "is a name, not a path") in line
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["out"]  # nothing written, inside --out or out of it


@pytest.mark.slow  # two subprocess runs on one folder
def test_a_symlinked_run_folder_shares_the_lock_of_its_real_folder(toy_data, tmp_path):
    real = tmp_path / "runs" / "comam-s5"
    holder = _hold_lock(real)
    (tmp_path / "runs" / "alias-s5").symlink_to(real, target_is_directory=True)
    (tmp_path / "runs" / "comam-s5.lock").write_text("process 1")  # the file says one thing, the kernel another
    try:
        r = subprocess.run([sys.executable, str(ROOT / "train.py")] + _args(toy_data, tmp_path / "runs",
                                                                            exp_name="alias"),
                           capture_output=True, text=True, cwd=tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: {real} is in use by process {holder.pid}: one process writes a run at a time; wait for it to end, "
        "or give another --exp-name / --seed"], r.stderr


# ---------------------------------------------------------------- adapters checked against what they were trained on

def _lora_args(toy_data, base, out, **kw):
    return _args(toy_data, out, **{"model": str(base), "steps": 1, "lora_rank": 4, **kw})


def _tiny_base(folder: Path) -> Path:
    """A copy of the shipped tiny warm start, as the base of fresh adapters (quick: it answers in few tokens)."""
    import models
    shutil.copytree(models.TINY_CHECKPOINT, folder, ignore=shutil.ignore_patterns(".complete", "*.json.bak"))
    return folder


@pytest.fixture(scope="module")
def lora_run(toy_data, tmp_path_factory):
    """A finished 1-step LoRA run (rank 4, alpha 32) on a copy of the tiny warm start: (its base, its runs folder)."""
    root = tmp_path_factory.mktemp("lora_run")
    command(train.main, train.Args, "", _lora_args(toy_data, _tiny_base(root / "base"), root / "runs"))
    return root / "base", root / "runs"


def _lora_copy(lora_run, tmp_path) -> Path:
    shutil.copytree(lora_run[1], tmp_path / "runs")
    return tmp_path / "runs" / "comam-s5"


def _eval_ckpt(run, toy_data, tmp_path):
    return lambda: command(evaluation.main, evaluation.Args, "", ["--data", str(toy_data), "--policies",
                                                                  str(run / "ckpt"), "--users", "1",
                                                                  "--out", str(tmp_path / "e.json")])


def _edit_config(folder: Path, **changes) -> None:
    path = folder / "adapter_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


@pytest.mark.uses_solutions
def test_adapters_refuse_a_base_rebuilt_in_place(toy_data, tmp_path, capsys):
    import models
    base = _tiny_base(tmp_path / "base")
    command(train.main, train.Args, "", _lora_args(toy_data, base, tmp_path / "runs"))
    run = tmp_path / "runs" / "comam-s5"
    assert json.loads((run / "ckpt" / "extraction" / "adapter_base.json").read_text())["weights_sha1"] == \
        models.weights_identity(str(base), "extraction")
    for role in ("extraction", "profile", "retrieval"):  # the base rebuilt in place: same names and shapes, other weights
        pol = models.load_policy(str(base), role)
        with torch.no_grad():
            next(pol.model.parameters()).add_(0.01)
        pol.model.save_pretrained(base / role)
    before = snapshot(run)
    needle = "these adapters were trained on another"
    fails(capsys, lambda: command(train.main, train.Args, "", _lora_args(toy_data, base, tmp_path / "runs", steps=2,
                                                                         resume=True)),
          f"{run / 'ckpt' / 'extraction'}: {needle}", "rebuild or restore that base")
    fails(capsys, _eval_ckpt(run, toy_data, tmp_path), needle)
    assert snapshot(run) == before and not (tmp_path / "e.json").exists()


@pytest.mark.parametrize("edit,needle", [
    ({"lora_alpha": 3200.0}, "lora_alpha 3200, but the run's flags"),
    ({"r": 8}, "r 8, but the run's flags"),
    ({"target_modules": ["q_proj", "k_proj", "w_in"]}, "target_modules q_proj,k_proj,w_in, but the run's flags"),
    ({"use_rslora": True}, "use_rslora is true; only plain LoRA"),
])
@pytest.mark.uses_solutions
def test_an_adapter_config_that_disagrees_with_the_run_is_refused(edit, needle, lora_run, toy_data, tmp_path, capsys):
    run = _lora_copy(lora_run, tmp_path)
    _edit_config(run / "ckpt" / "profile", **edit)
    before = snapshot(run)
    for fn in (lambda: command(train.main, train.Args, "", _lora_args(toy_data, lora_run[0], tmp_path / "runs",
                                                                      steps=2, resume=True)),
               _eval_ckpt(run, toy_data, tmp_path)):
        line = fails(capsys, fn, needle)
        assert "adapter_config.json" in line and "optimizer" not in line
    assert snapshot(run) == before and not (tmp_path / "e.json").exists()


@pytest.mark.uses_solutions
def test_non_finite_adapters_are_refused_at_load(lora_run, toy_data, tmp_path, capsys):
    from safetensors.torch import load_file, save_file
    run = _lora_copy(lora_run, tmp_path)
    path = run / "ckpt" / "retrieval" / "adapter_model.safetensors"
    tensors = load_file(str(path))
    key = sorted(k for k in tensors if "lora_B" in k)[0]
    tensors[key][0, 0] = float("nan")
    save_file(tensors, str(path))
    fails(capsys, _eval_ckpt(run, toy_data, tmp_path), f"{path}: {key} holds non-finite values")
    assert not (tmp_path / "e.json").exists()


@pytest.mark.uses_solutions
def test_state_lora_rank_edited_is_blamed_on_state_json(lora_run, toy_data, tmp_path, capsys):
    run = _lora_copy(lora_run, tmp_path)
    state = run / "ckpt" / "state.json"
    saved = json.loads(state.read_text())
    saved["args"]["lora_rank"] = 0
    state.write_text(json.dumps(saved))
    argv = [a for a in _lora_args(toy_data, lora_run[0], tmp_path / "runs", steps=2, resume=True)
            if not a.startswith("--lora-rank")]
    line = fails(capsys, lambda: command(train.main, train.Args, "", argv),
                 f"{state}: args.lora_rank is 0, but {run / 'ckpt' / 'extraction'} holds LoRA adapters")
    assert "optimizer" not in line


@pytest.mark.uses_solutions
def test_a_missing_adapter_config_is_named_as_such(lora_run, toy_data, tmp_path, capsys):
    run = _lora_copy(lora_run, tmp_path)
    (run / "ckpt" / "extraction" / "adapter_config.json").unlink()
    line = fails(capsys, _eval_ckpt(run, toy_data, tmp_path),
                 f"{run / 'ckpt' / 'extraction'}: adapter_model.safetensors without its adapter_config.json")
    assert "(no config.json)" not in line


def test_unknown_target_modules_are_blamed_on_the_config_not_a_flag(toy_chat_model, tmp_path):
    import agents
    import lora
    import models
    from cli import InputError
    pol = models.load_policies({r: str(toy_chat_model) for r in agents.ROLES}, "cpu", lora.LoRAConfig(2, 4.0),
                               roles=agents.ROLES[:1])["extraction"]
    lora.save_adapters(pol.model, tmp_path / "a", base=str(toy_chat_model))
    _edit_config(tmp_path / "a", target_modules=["w_in", "w_out"])
    with pytest.raises(InputError) as e:
        models.load_policy(str(tmp_path / "a"))
    assert str(e.value).startswith(f"{tmp_path / 'a' / 'adapter_config.json'}: target_modules w_in,w_out: no such "
                                   "linear layer") and "--lora-targets" not in str(e.value)


@pytest.mark.parametrize("cmd", ["eval", "merge", "train"])
def test_an_adapter_config_whose_base_is_its_own_folder_is_one_line(cmd, toy_chat_model, toy_data, tmp_path, capsys):
    import agents
    import lora
    import models
    pol = models.load_policies({r: str(toy_chat_model) for r in agents.ROLES}, "cpu", lora.LoRAConfig(2, 4.0),
                               roles=agents.ROLES[:1])["extraction"]
    folder = tmp_path / "a"
    lora.save_adapters(pol.model, folder, base=str(folder))  # its base: itself
    argv = {"merge": ["--src", str(folder), "--out", str(tmp_path / "m")],
            "eval": ["--data", str(toy_data), "--policies", str(folder), "--out", str(tmp_path / "m")],
            "train": ["--data", str(toy_data), "--model", str(folder), "--out", str(tmp_path / "m"), "--steps", "1"]}[cmd]
    main = {"merge": merge_lora, "eval": evaluation, "train": train}[cmd]
    fails(capsys, lambda: command(main.main, main.Args, "", argv),
          f"{folder / 'adapter_config.json'}: base_model_name_or_path {str(folder)!r} holds LoRA adapters itself")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_warmstart_refuses_adapters_on_a_tiny_model_it_would_not_save(toy_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(warmstart, "clone", lambda *a, **k: pytest.fail("cloned before checking the flags"))
    fails(capsys, lambda: command(warmstart.main, warmstart.Args, "", ["--data", str(toy_data), "--lora-rank", "4",
                                                                       "--out", str(tmp_path / "ws")]),
          "--lora-rank 4 with --model tiny: the tiny model is built here from random weights")
    assert not (tmp_path / "ws").exists()


@pytest.mark.uses_solutions
def test_merge_lora_on_a_full_disk_is_one_line_and_leaves_nothing(toy_warmstart, tmp_path, capsys, monkeypatch):
    import transformers

    from safetensors import SafetensorError
    real = transformers.PreTrainedModel.save_pretrained
    calls = []

    def full(self, folder, *a, **k):  # the first model is written, the second finds the disk full
        calls.append(folder)
        if len(calls) > 1:
            raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                                  "\"No space left on device\" })")
        return real(self, folder, *a, **k)
    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", full)
    out = tmp_path / "merged"
    fails(capsys, lambda: command(merge_lora.main, merge_lora.Args, "", ["--src", str(toy_warmstart), "--out", str(out)]),
          f"--out {out}: the merged models could not be written", "No space left on device")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.uses_solutions
def test_checkpoint_files_are_readable_like_any_file_the_user_writes(finished_run, tmp_path):
    run = _copy_run(finished_run, tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (run / "ckpt").rglob("*") if p.is_file()}
    assert modes["model.safetensors"] == 0o666 & ~umask and set(modes.values()) == {0o666 & ~umask}, modes


# ---------------------------------------------------------------- results and logs read strictly

def _result(qids, accuracy=0.5, **extra):
    return {"accuracy": accuracy, "n": len(qids), "per_setting": {"small": accuracy},
            "per_question": {q: 1.0 for q in qids}, "args": {}, **extra}


def _compare(paths):
    return lambda: command(evaluation.main, evaluation.Args, "", ["--compare", " ".join(str(p) for p in paths)])


def test_compare_refuses_results_on_other_questions_and_duplicates(tmp_path, capsys):
    a, b, c = tmp_path / "a-s1.json", tmp_path / "b-s1.json", tmp_path / "c-s1.json"
    a.write_text(json.dumps(_result(["q1", "q2"])))
    b.write_text(json.dumps(_result(["q3", "q4"])))
    c.write_text(json.dumps(_result(["q1", "q2"], 0.7)))
    fails(capsys, _compare([a, b]), f"{b}: its results are on other questions than {a}'s")
    fails(capsys, _compare([a, a]), f"{a}: given twice")
    fails(capsys, _compare([a, tmp_path / "." / "a-s1.json"]), "given twice")
    _compare([a, c])()  # the same questions: a table and a paired row
    out = capsys.readouterr().out
    assert "| c | +0.000 |" in out and "nan" not in out


@pytest.mark.parametrize("content,needle", [
    ({"accuracy": "0.5", "per_setting": {}}, "field 'accuracy' must be a number, got '0.5'"),
    ({"accuracy": 0.5, "per_setting": []}, "field 'per_setting' must be an object of numbers"),
    ({"accuracy": 0.5, "per_setting": {"small": None}}, "field 'per_setting' must be an object of numbers"),
    ({"accuracy": 0.5, "per_setting": {}, "per_question": {"q": "yes"}}, "field 'per_question' must be an object"),
    ([1, 2], "not an eval.py result file"),
])
def test_compare_refuses_wrong_types_in_one_line(content, needle, tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(content))
    fails(capsys, _compare([path]), str(path), needle)


@pytest.mark.parametrize("summary,needle", [
    ({"final": None}, "'final' must be an eval.py result (an object), got null"),
    ({"final": {"accuracy": 0.5}}, "'final': field 'per_setting' must be an object of numbers, got null"),
    ({"no_train": None}, "no 'final' evaluation"),
])
def test_compare_refuses_a_damaged_summary_in_one_line(summary, needle, tmp_path, capsys):
    run = tmp_path / "r-s1"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps(summary))
    fails(capsys, _compare([run]), f"{run / 'summary.json'}", needle)


ROW = {"step": 1, "global_reward": 0.5, **{f"{x}_{a}": 0.3 for x in ("local", "w", "v")
                                           for a in ("extraction", "profile", "retrieval")}}


@pytest.mark.parametrize("log,needle", [
    (json.dumps(ROW).encode() + b"\n" + json.dumps(ROW | {"step": 2}).encode().replace(b"0.5", b"\xff") + b"\n",
     "log.jsonl:2: not UTF-8 text"),
    ((json.dumps(ROW) + "\n" + json.dumps({k: v for k, v in ROW.items() if k != "w_profile"}) + "\n").encode(),
     "log.jsonl:2: field 'w_profile' must be a number, got null"),
    ((json.dumps(ROW | {"global_reward": "high"}) + "\n").encode(), "log.jsonl:1: field 'global_reward' must be"),
])
def test_plot_reads_logs_line_by_line_naming_file_and_line(log, needle, tmp_path, capsys):
    run = tmp_path / "r-s1"
    run.mkdir()
    (run / "log.jsonl").write_bytes(log)
    fails(capsys, lambda: command(evaluation.main, evaluation.Args, "", ["--plot", str(run)]),
          f"{run / 'log.jsonl'}:", needle)
    assert not (run / "curves.png").exists()


@pytest.mark.uses_solutions
def test_a_non_utf8_log_is_named_on_resume(finished_run, toy_data, tmp_path, capsys):
    run = _copy_run(finished_run, tmp_path)
    (run / "log.jsonl").write_bytes((run / "log.jsonl").read_bytes().replace(b"step", b"st\xffp", 1))
    before = snapshot(run)
    fails(capsys, lambda: command(train.main, train.Args, "", _args(toy_data, tmp_path / "runs", steps=3, resume=True)),
          f"{run / 'log.jsonl'}:1: not UTF-8 text")
    assert snapshot(run) == before


# ---------------------------------------------------------------- make_assignment.py

instructor_only = pytest.mark.skipif(not (ROOT / "scripts" / "make_assignment.py").exists(),
                                     reason="make_assignment.py is the instructor's: not in a student copy")


@pytest.mark.slow  # a process start for one error line
@instructor_only
def test_make_assignment_outside_a_git_checkout_is_one_line_and_exit_2(tmp_path):
    env = {**os.environ, "GIT_DIR": str(tmp_path / "no-git")}  # git cannot find a repository
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_assignment.py"), str(tmp_path / "student")],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith(f"error: {ROOT}: the student copy holds the files git tracks, and git cannot list them")
    assert not (tmp_path / "student").exists()


@instructor_only
def test_make_assignment_checks_every_marker_before_writing_anything(tmp_path, monkeypatch, capsys):
    import make_assignment
    src = tmp_path / "src"
    src.mkdir()
    names = [f"m{k:02d}.py" for k in range(27)] + ["z.py"]
    for name in names[:-1]:
        (src / name).write_text("def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION\n")
    (src / "z.py").write_text("def g():\n    ### BEGIN SOLUTION\n    return 2\n")
    monkeypatch.setattr(make_assignment, "ROOT", src)
    monkeypatch.setattr(make_assignment, "tracked_files", lambda: names)
    assert make_assignment.main([str(tmp_path / "student")]) == 2
    assert capsys.readouterr().err.strip() == "error: z:2: BEGIN SOLUTION without its END SOLUTION"
    assert not (tmp_path / "student").exists() or not any((tmp_path / "student").iterdir())


# ---------------------------------------------------------------- right line, right cause

@pytest.mark.uses_solutions
def test_a_refused_resume_has_changed_nothing(finished_run, toy_data, tmp_path, capsys):
    run = _copy_run(finished_run, tmp_path)
    (run / "resumes.jsonl").mkdir()  # a folder that cannot take the resume's record (as a read-only one)
    before = snapshot(run)
    fails(capsys, lambda: command(train.main, train.Args, "", _args(toy_data, tmp_path / "runs", steps=3, resume=True)),
          f"{run / 'resumes.jsonl'}: Is a directory")
    assert snapshot(run) == before


@pytest.mark.uses_solutions
def test_a_first_checkpoint_that_fails_does_not_claim_a_previous_one(toy_data, tmp_path, capsys, monkeypatch):
    from safetensors import SafetensorError

    def full(*a, **k):
        raise SafetensorError("Error while serializing: IoError(No space left on device)")
    monkeypatch.setattr("transformers.PreTrainedModel.save_pretrained", full)
    line = fails(capsys, lambda: command(train.main, train.Args, "", _args(toy_data, tmp_path / "runs", steps=1)),
                 "the checkpoint of step 1 could not be written", "there is no earlier checkpoint")
    assert "intact" not in line and not (tmp_path / "runs" / "comam-s5" / "ckpt.tmp").exists()


@pytest.mark.parametrize("cmd,phase", [("eval", "evaluate"), ("eval", "load_system"), ("warmstart", "clone"),
                                       ("warmstart", "start_policy")])
def test_ctrl_c_in_eval_and_warmstart_says_what_was_left(cmd, phase, toy_data, tmp_path, capsys, monkeypatch):
    """Ctrl-C while the models load, or while the command runs: one line naming what stopped and what
    it left (nothing), status 130, nothing written."""
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    module = evaluation if cmd == "eval" else warmstart
    monkeypatch.setattr(module, phase, interrupted)
    if cmd == "eval":
        argv = ["--data", str(toy_data), "--users", "1", "--out", str(tmp_path / "r.json")]
        want = f"interrupted: the evaluation stopped before its end; no result was written ({tmp_path / 'r.json'}"
    else:
        argv = ["--data", str(toy_data), "--steps", "1", "--hidden", "16", "--layers", "1", "--out", str(tmp_path / "ws")]
        want = f"interrupted: the warm start stopped before its end; nothing was written to {tmp_path / 'ws'}"
    with pytest.raises(SystemExit) as e:
        command(module.main, module.Args, "", argv)
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert e.value.code == 130 and err[-1].startswith(want), err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


CTRL_C_DELIVERED_THRICE = """
import atexit, os, signal, sys, time
sys.path.insert(0, {root!r})
import eval as evaluation
from cli import command

def ctrl_c():
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.5)  # a signal is handled between two bytecodes: well within this

class Stderr:  # the same Ctrl-C again (torchrun's agent forwards it) while the line is being printed
    def __init__(self, real):
        self.real, self.sent = real, False
    def write(self, text):
        if "interrupted:" in text and not self.sent:
            self.sent = True
            ctrl_c()
        return self.real.write(text)
    def flush(self):
        self.real.flush()

def evaluate(*a, **k):
    sys.stderr = Stderr(sys.stderr)
    ctrl_c()  # the terminal's Ctrl-C, inside the evaluation
    raise AssertionError("not interrupted")

evaluation.evaluate = evaluate
atexit.register(ctrl_c)  # and once more as the process ends
command(evaluation.main, evaluation.Args, "", {argv!r})
"""


@pytest.mark.slow  # signals to a subprocess run
def test_one_ctrl_c_delivered_several_times_is_one_interrupt(toy_data, tmp_path):
    """Under torchrun a worker gets each Ctrl-C twice: from the terminal, and forwarded by torchrun's
    agent a moment later. A second SIGINT while the first unwinds (here: while its line is printed,
    and as the process ends) is ignored: the line says what stopped, status 130, no traceback."""
    argv = ["--data", str(toy_data), "--users", "1", "--out", str(tmp_path / "r.json")]
    r = subprocess.run([sys.executable, "-c", CTRL_C_DELIVERED_THRICE.format(root=str(ROOT), argv=argv)],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path,
                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 130 and lines[-1] == (
        f"interrupted: the evaluation stopped before its end; no result was written ({tmp_path / 'r.json'} is "
        "written at the end)"), r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "KeyboardInterrupt" not in r.stderr and "ignored" not in r.stderr, r.stderr
    assert not (tmp_path / "r.json").exists()


def test_a_command_puts_pythons_sigint_handler_back_when_it_ends(tmp_path, capsys):
    """In one process (a test, a notebook) a command that ends, well or with an error, leaves Ctrl-C as
    it found it: Python's KeyboardInterrupt, or SIG_IGN where the shell started the tests in the background."""
    found = signal.getsignal(signal.SIGINT)
    assert found in (signal.default_int_handler, signal.SIG_IGN)
    result = tmp_path / "a-s1.json"
    result.write_text(json.dumps(_result(["q1"])))
    command(evaluation.main, evaluation.Args, "", ["--compare", str(result)])
    assert signal.getsignal(signal.SIGINT) is found
    with pytest.raises(SystemExit):
        command(evaluation.main, evaluation.Args, "", ["--compare", str(tmp_path / "none.json")])
    assert signal.getsignal(signal.SIGINT) is found
