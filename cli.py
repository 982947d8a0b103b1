"""Command-line plumbing shared by the commands (train.py, eval.py, warmstart.py, data.generate,
data.personamem): flags from a dataclass, one-line errors, seeds, devices, atomic folders.

Each command declares its flags as a @dataclass whose fields have a one-line docstring underneath;
`parse_args` turns that into argparse flags (--group-size for `group_size`), the docstring being the
--help text, as CleanRL's scripts do. `command` calls the command's main under one handler: an expected
error (`InputError`: a bad flag, bad data, a missing or corrupt file) prints one line
"error: ..." naming the flag, file, line or field, and exits with status 2; anything unexpected keeps
its traceback. Nothing here knows about CoMAM.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import math
import os
import random
import shutil
import signal
import sys
import textwrap
import threading
from pathlib import Path
from typing import Callable

import numpy as np
import torch


class InputError(ValueError):
    """An expected error, caused by what the user gave (a flag, a data file, a run folder, a checkpoint)
    or met on the way (a full disk, a folder in use). Its message names the flag, or the file and line,
    and the field."""


class Interrupted(Exception):
    """Ctrl-C, with what the command leaves behind (raised from KeyboardInterrupt by a command that knows)."""


def handled(fn: Callable[[], object]):
    """Call fn(); an InputError, or an OSError on a named file, is printed as one line "error: ..." and
    the exit status is 2; Ctrl-C is one line "interrupted: ..." and status 130 (one Ctrl-C, however
    often it is delivered: `_interrupt_once`). Anything else keeps its traceback."""
    previous = _interrupt_once()
    try:
        return _one_line_errors(fn)
    finally:
        _restore_interrupt(previous)


def _one_line_errors(fn: Callable[[], object]):
    try:
        return fn()
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
    except OSError as e:  # a file or folder the user named: missing, unreadable, a full disk
        if e.filename is None:
            raise
        print(f"error: {e.filename}: {e.strerror or e}", file=sys.stderr)
    except (Interrupted, KeyboardInterrupt) as e:
        print(f"\ninterrupted: {str(e) or 'stopped before the end (files are written whole: none is half-written)'}",
              file=sys.stderr)
        raise SystemExit(130) from None
    raise SystemExit(2)


def _interrupt_once():
    """Make one Ctrl-C one KeyboardInterrupt: the first SIGINT raises it and every later one is ignored
    while it unwinds and the process ends. Under torchrun a worker gets each Ctrl-C twice (from the
    terminal, and again from torchrun's agent a moment later); the second one used to land in the
    middle of the first one's unwinding, replacing the line that says what was interrupted, or in
    Python's shutdown as a traceback. SIGTERM and SIGKILL still end the process. Returns the handler it
    replaced (None: left alone: not the main thread, or SIGINT not at Python's default, e.g. ignored
    in a background job)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return None

    def first_only(signum, frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt
    signal.signal(signal.SIGINT, first_only)
    return signal.default_int_handler


def _restore_interrupt(previous) -> None:
    """Python's own SIGINT handler back when the command ends (a test calls many commands in one
    process), except after a Ctrl-C: the process is ending, and a second SIGINT stays ignored."""
    if previous is not None and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, previous)


def command(main: Callable, cls, doc: str = "", argv=None):
    """A command: parse the flags of the dataclass `cls`, call main(args), errors as in `handled`."""
    return handled(lambda: main(parse_args(cls, doc, argv)))


def check(condition: bool, message: str) -> None:
    """Raise InputError(message) unless `condition`."""
    if not condition:
        raise InputError(message)


def positive(value: int, flag: str, minimum: int = 1) -> None:
    """A count flag: at least `minimum`."""
    check(value >= minimum, f"{flag} must be at least {minimum}, got {value}")


def finite(value: float, flag: str, low: float = 0.0, low_open: bool = False) -> None:
    """A real-valued flag: finite and >= low (> low with low_open)."""
    ok = math.isfinite(value) and (value > low if low_open else value >= low)
    check(ok, f"{flag} must be a finite number {'>' if low_open else '>='} {low}, got {value}")


def choice(value: str, flag: str, choices) -> None:
    check(value in choices, f"{flag} must be one of {', '.join(choices)}; got {value!r}")


def read_json(path: Path) -> dict:
    """A JSON file the project wrote (state.json, args.json, summary.json); a corrupt or truncated one is
    an InputError naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise InputError(f"{path}: not valid JSON ({type(e).__name__}: {str(e)[:80]}); the file is damaged") from None


def read_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of each line of a text file the project wrote (a log), read line by line: a
    line that is not UTF-8 is an InputError naming the file and the line."""
    out = []
    with open(path, "rb") as f:
        for k, raw in enumerate(f, 1):
            try:
                out.append((k, raw.decode("utf-8-sig" if k == 1 else "utf-8").rstrip("\r\n")))
            except UnicodeDecodeError as e:
                raise InputError(f"{path}:{k}: not UTF-8 text ({e.reason} at byte {e.start}); the file is damaged") \
                    from None
    return out


def field_docs(cls) -> dict[str, str]:
    """The one-line docstring under each dataclass field (read from the source)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body, docs = tree.body[0].body, {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = str(nxt.value.value).strip()
    return docs


def parse_args(cls, doc: str = "", argv=None):
    """argparse from a @dataclass: one --flag per field, its docstring as help, bools as --x/--no-x."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        name, default = "--" + f.name.replace("_", "-"), f.default
        help_ = f"{docs.get(f.name, '')} (default: {default})"
        if isinstance(default, bool):
            p.add_argument(name, action=argparse.BooleanOptionalAction, default=default, help=help_)
        else:
            typ = type(default) if default is not None else str
            p.add_argument(name, type=typ, default=default, help=help_)
    return cls(**vars(p.parse_args(argv)))


SEED_MAX = 2**32 - 1  # numpy's and torch's seeds are unsigned 32-bit numbers


def check_seed(seed: int, flag: str = "--seed") -> None:
    check(0 <= seed <= SEED_MAX, f"{flag} must be between 0 and {SEED_MAX}, got {seed}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> str:
    """auto -> cuda when available, else cpu; cuda without a CUDA device is an InputError."""
    choice(name, "--device", ("auto", "cpu", "cuda"))
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    check(name != "cuda" or torch.cuda.is_available(), "--device cuda: this machine has no CUDA device "
          "(or this torch build has no CUDA); use --device cpu or auto")
    return name


PRECISIONS = ("auto", "float32", "bfloat16")


def cpu_has_bf16() -> bool:
    """Does this CPU compute bfloat16 matrix products in hardware (AVX-512 BF16 or AMX)? Asks torch's
    oneDNN backend and, where /proc/cpuinfo exists, the CPU's flags (oneDNN also says yes for plain
    AVX-512, which has no bf16 arithmetic). Without it a bf16 matmul is emulated, up to 50 times
    slower than float32 (measured on an AVX2-only CPU: 1.4 against 70 GFLOP/s; docs/speed.md)."""
    try:
        onednn = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without the query
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:  # not Linux: oneDNN's answer alone
        return onednn
    return onednn and ("avx512_bf16" in flags or "amx_bf16" in flags)


def resolve_precision(name: str, device: str, tiny: bool = False, flag: str = "--precision") -> str:
    """auto -> bfloat16 on CUDA, and on a CPU that computes bf16 in hardware (`cpu_has_bf16`), except
    for the tiny model, which stays float32 on every CPU: its steps are bound by per-operation
    overhead, not arithmetic, and its printed figures stay the same on every CPU (docs/speed.md).
    float32 | bfloat16 -> as given; bfloat16 on a CPU without bf16 hardware says once how slow it is."""
    choice(name, flag, PRECISIONS)
    cuda = str(device).startswith("cuda")
    if name == "auto":
        return "bfloat16" if cuda or (cpu_has_bf16() and not tiny) else "float32"
    if name == "bfloat16" and not cuda and not cpu_has_bf16():
        print(f"warning: {flag} bfloat16 on a CPU without bf16 hardware: every matrix product is emulated, "
              "tens of times slower than float32", file=sys.stderr)
    return name


def autocast_enabled(device_type: str) -> bool:
    """Is autocast on for this device type ("cpu", "cuda"; any other type: False)?"""
    if device_type not in ("cpu", "cuda"):
        return False
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 asks per device type
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


def autocast(device: str, precision: str | None = None):
    """The forward passes' precision: bf16 autocast when `precision` is "bfloat16", float32 otherwise.
    Weights and optimizer state stay float32 either way (a bf16 weight cannot hold an update smaller
    than 1/256 of itself); log-probs, the loss and the KL are computed in float32 from float32 logits
    (models.completion_logits). precision None: bf16 on CUDA, float32 on a CPU (the default of a
    command without --precision)."""
    cuda = str(device).startswith("cuda")  # "cuda", or "cuda:N" under torchrun
    bf16 = precision == "bfloat16" or (precision is None and cuda)
    return torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=bf16)


# ======================================================================== what a command may write

def output_folder(path: Path, flag: str, made_here: Callable[[Path], bool], what: str) -> Path:
    """The one rule of every command that writes a folder, checked before any work: `path` may be new,
    an empty folder, or a folder this command made before (`made_here(path)` recognises its layout or
    marker), which it may then replace. Anything else (a file, a folder of the user's) is an
    InputError: nothing the command did not create is ever replaced or deleted."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{flag} {path}: exists and is a file; give a new folder")
    if path.is_dir() and any(path.iterdir()) and not made_here(path):
        raise InputError(f"{flag} {path}: exists and is not {what}; give a new or empty folder")
    return path


def output_file(path: Path, flag: str, made_here: Callable[[Path], bool], what: str) -> Path:
    """The same rule for one file: new, or a file this command wrote before (`made_here`)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{flag} {path}: is a folder; give a file name")
    if path.exists() and not made_here(path):
        raise InputError(f"{flag} {path}: exists and is not {what}; give a new file name")
    return path


class FolderLock:
    """One writer per folder: an exclusive lock (fcntl.flock) on <folder>.lock, held until `release`
    or the process ends. A lock whose process died is free again (the kernel drops it), whatever the
    file says. A second process gets an InputError naming the holder."""

    def __init__(self, folder: Path):
        import fcntl
        self.path = Path(folder).with_name(Path(folder).name + ".lock")
        self.made_parent = not self.path.parent.exists()  # removed again on release when left empty
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = lock_holder(self.file)
            self.file.close()
            self.made_parent = False
            raise InputError(f"{folder} is in use by {holder}: one process writes a run at a time; "
                             "wait for it to end, or give another --exp-name / --seed") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"process {os.getpid()}")
        self.file.flush()

    def release(self) -> None:
        import fcntl
        if not self.file.closed:
            self.path.unlink(missing_ok=True)
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()
            if self.made_parent and not any(self.path.parent.iterdir()):
                self.path.parent.rmdir()


def lock_holder(file) -> str:
    """The process that holds the lock on `file`: read from the kernel's table (/proc/locks, Linux),
    where the pid is the holder's whatever the file says; elsewhere the pid the holder wrote into it."""
    inode = os.fstat(file.fileno())
    try:
        with open("/proc/locks") as locks:
            for line in locks:
                parts = line.split()
                if len(parts) > 5 and parts[1] == "FLOCK" and parts[5].rsplit(":", 1)[-1] == str(inode.st_ino) \
                        and int(parts[5].split(":")[0], 16) == os.major(inode.st_dev) \
                        and int(parts[5].split(":")[1], 16) == os.minor(inode.st_dev) and int(parts[4]) != os.getpid():
                    return f"process {parts[4]}"
    except (OSError, ValueError, IndexError):
        pass
    file.seek(0)
    return file.read().strip() or "another process"


UMASK = os.umask(0o022)  # read (umask can only be read by setting it) and put back
os.umask(UMASK)
COMPLETE = ".complete"  # written last into a folder that replace_folder has finished


def replace_folder(final: Path, write: Callable[[Path], None]) -> None:
    """Write a folder atomically: `write(tmp)` fills <final>.tmp, which is marked complete and then takes
    the place of `final` (the previous version waits as <final>.old until the new one is in place).
    A crash at any point leaves a state that `recover_folder` turns back into one complete folder."""
    tmp, old = final.with_name(final.name + ".tmp"), final.with_name(final.name + ".old")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write(tmp)
    for path in tmp.rglob("*"):  # the modes of any file the user writes (safetensors writes 0600)
        path.chmod((0o777 if path.is_dir() else 0o666) & ~UMASK)
    (tmp / COMPLETE).touch()
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


def recover_folder(final: Path) -> None:
    """Undo a crash inside replace_folder: when `final` is missing, the finished new version
    (<final>.tmp, marked complete) or else the previous one (<final>.old) takes its place."""
    tmp, old = final.with_name(final.name + ".tmp"), final.with_name(final.name + ".old")
    if not final.exists():
        if (tmp / COMPLETE).exists():
            tmp.rename(final)
        elif old.exists():
            old.rename(final)
    if final.exists() and old.exists():
        shutil.rmtree(old)
