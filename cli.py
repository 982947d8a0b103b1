"""Command-line plumbing shared by train.py, eval.py and warmstart.py: flags from a dataclass, seeds, devices.

Each command declares its flags as a @dataclass whose fields have a one-line docstring underneath;
`parse_args` turns that into argparse flags (--group-size for `group_size`), the docstring being the
--help text, as CleanRL's scripts do. Nothing here knows about CoMAM.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import random
import shutil
import textwrap
from pathlib import Path
from typing import Callable

import numpy as np
import torch


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
    """auto -> cuda when available, else cpu."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def autocast(device: str):
    """bf16 autocast on CUDA (weights and optimizer state stay float32); a no-op on CPU (float32 there)."""
    if device == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def replace_folder(final: Path, write: Callable[[Path], None]) -> None:
    """Write a folder atomically: `write(tmp)` fills <final>.tmp, which then takes the place of `final`
    (the previous version is kept as <final>.old until the new one is in place)."""
    tmp, old = final.with_name(final.name + ".tmp"), final.with_name(final.name + ".old")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write(tmp)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)
