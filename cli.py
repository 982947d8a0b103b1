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
import random
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Callable

import numpy as np
import torch


class InputError(ValueError):
    """An expected error, caused by what the user gave: a flag, a data file, a run folder, a checkpoint.
    Its message names the flag, or the file and line, and the field."""


def handled(fn: Callable[[], object]):
    """Call fn(); an InputError, or an OSError on a named file, is printed as one line "error: ..." and
    the exit status is 2. Anything else keeps its traceback."""
    try:
        return fn()
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
    except OSError as e:  # a file or folder the user named: missing, unreadable, a full disk
        if e.filename is None:
            raise
        print(f"error: {e.filename}: {e.strerror or e}", file=sys.stderr)
    raise SystemExit(2)


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
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e}); the file is damaged") from None


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


def autocast(device: str):
    """bf16 autocast on CUDA (weights and optimizer state stay float32); a no-op on CPU (float32 there)."""
    if device == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


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
