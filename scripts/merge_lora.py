"""Fold LoRA adapters into their base model: one plain transformers model folder per agent.

    python scripts/merge_lora.py --src runs/smol-s1/ckpt --out runs/smol-s1/merged
    python scripts/merge_lora.py --src checkpoints/smollm2-lora-warmstart --out /tmp/plain

SRC is anything `eval.py --policies` takes (a run's ckpt, a warm start, a model folder); OUT/<role>
gets model.safetensors + config + tokenizer, W + (alpha / r) B A in place of each adapted W
(lora.merged). OUT must be new (or empty): nothing already there is replaced.
"""
from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository's modules

from safetensors import SafetensorError  # noqa: E402

import models  # noqa: E402
from cli import InputError, check, command, replace_folder  # noqa: E402


@dataclass
class Args:
    src: str = ""
    """the policies to merge: a run's ckpt, a warm-start folder, or a model folder"""
    out: str = ""
    """the new folder of plain models, one per agent"""


def main(args: Args) -> list[Path]:
    check(bool(args.src) and bool(args.out), "give --src (a ckpt or warm-start folder) and --out (a new folder)")
    out = Path(args.out)
    check(not out.exists() or (out.is_dir() and not any(out.iterdir())), f"--out {out}: exists and is not empty")
    written = []
    try:
        replace_folder(out, lambda tmp: written.extend(models.export_merged(args.src, tmp)))
    except BaseException as e:  # a bad --src, a full disk, Ctrl-C: what was written goes, room back
        shutil.rmtree(out.with_name(out.name + ".tmp"), ignore_errors=True)
        if not isinstance(e, (OSError, SafetensorError, RuntimeError)):
            raise
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise InputError(f"--out {out}: the merged models could not be written ({first}); nothing was left "
                         "behind: make room and run it again") from None
    for role in written:
        print(f"wrote {out / role.name}")
    return [out / p.name for p in written]


if __name__ == "__main__":
    command(main, Args, __doc__)
