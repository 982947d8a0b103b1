"""Past one GPU: data-parallel CoMAM with torch.distributed, launched by torchrun.

    torchrun --nproc_per_node 2 train.py --queries 8                 # 2 processes on one machine (GPUs or CPU)
    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 \\
             --rdzv-backend c10d --rdzv-endpoint HOST:29500 train.py  # and the same with --node-rank 1 on HOST 2

CoMAM's groups are per query, so each process (rank) takes a disjoint share of every step's Q queries
(`shard`: contiguous, so that the shares in rank order are exactly the one-process batch), rolls them
out and computes their credit and advantages locally. Only three things cross ranks:
  - the loss normaliser: with --loss-agg token the denominator is the batch's token count over ALL
    ranks (`all_sum` before the loss), so each rank's loss is its part of the one-process loss;
  - the gradients, summed over ranks after the backward pass (`sum_gradients`); every rank then clips
    and steps an identical optimizer on identical gradients, so the weights stay identical;
  - what is logged and evaluated: per-group rows and per-question outcomes, gathered to rank 0.
Gradients are summed by hand, one flat all-reduce per policy, rather than with DistributedDataParallel:
with three policies (or one, shared), micro-batching and LoRA adapters (only some parameters train),
DDP would need a wrapper per policy, no_sync() around every micro-batch but the last, and care with
unused parameters; the hand-written sum is six lines and does the same arithmetic.
Rank 0 is the one writer (run folder, logs, checkpoints, summary, lock). Backend: nccl on CUDA, gloo
on CPU. Without torchrun (no WORLD_SIZE in the environment) nothing here does anything: world size 1.

No hang: every collective waits at most COMAM_DIST_TIMEOUT_S seconds (default 600) for the other ranks.
Before each one a rank notes in the job's key-value store how many collectives it has entered, so
that a rank that times out (or loses its peer) names the rank that stopped answering, in one line
(an InputError), instead of a backend traceback after torch's 30-minute default.
"""
from __future__ import annotations

import os
import threading
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from cli import InputError

TIMEOUT_S = float(os.environ.get("COMAM_DIST_TIMEOUT_S", "600"))


def launched() -> bool:
    """Started by torchrun (or another launcher that sets WORLD_SIZE > 1)?"""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str) -> str:
    """Join the process group when launched by torchrun; returns this rank's device (cuda:LOCAL_RANK
    on CUDA). A no-op for one process."""
    if not launched() or dist.is_initialized():
        return device
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", timeout=timedelta(seconds=TIMEOUT_S))
    threading.Thread(target=_heartbeat, daemon=True).start()
    return device


HEARTBEAT_S = 2.0  # a rank notes the time this often; a stopped process (SIGSTOP, a debugger) stops noting it


def _heartbeat() -> None:
    store, me = _store(), rank()
    while store is not None and dist.is_initialized():
        try:
            store.set(f"comam/alive/{me}", repr(time.time()))
        except Exception:  # the store is gone: the job is ending
            return
        time.sleep(HEARTBEAT_S)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


_entered = 0  # collectives this rank has entered


def _store():
    try:  # the job's key-value store (torchrun's agent holds it): private in torch, hence the guard
        return dist.distributed_c10d._get_default_store()
    except (AttributeError, RuntimeError, ValueError):
        return None


def collective(name: str, fn):
    """fn(), a collective, with this rank's progress noted first; a timeout or a lost peer is one line
    naming the rank(s) that did not reach it."""
    global _entered
    _entered += 1
    store = _store()
    if store is not None:
        store.set(f"comam/entered/{rank()}", f"{_entered} {name}")
    try:
        return fn()
    except RuntimeError as e:  # DistBackendError (a timeout, a closed connection) is a RuntimeError
        raise InputError(_lost(name, e, store)) from None


def _lost(name: str, error: Exception, store) -> str:
    behind = []
    for r in range(world()):
        key = f"comam/entered/{r}"
        try:
            entered, last = store.get(key).decode().split(" ", 1) if store.check([key]) else ("0", "none")
        except Exception:  # the store itself is gone: nothing more to say
            entered, last = str(_entered), name
        try:
            alive = float(store.get(f"comam/alive/{r}").decode()) if store.check([f"comam/alive/{r}"]) else None
        except Exception:
            alive = None
        quiet = alive is not None and time.time() - alive > 5 * HEARTBEAT_S
        if r != rank() and (int(entered) < _entered or quiet):
            behind.append(f"rank {r} (at collective {entered}, {last}" +
                          (f"; no sign of life for {time.time() - alive:.0f} s)" if quiet else ")"))
    first = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
    who = ("it waited for " + ", ".join(behind) + ", which stopped answering (stopped, hung or dead)") if behind \
        else f"another rank stopped or died ({first})"
    return (f"rank {rank()}: no answer within {TIMEOUT_S:g} s in collective {_entered} ({name}): {who}; the job "
            "stops here, the last checkpoint is intact (--resume continues it); COMAM_DIST_TIMEOUT_S sets the wait")


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_writer() -> bool:
    """Rank 0 writes the run folder, logs and checkpoints; the other ranks write nothing."""
    return rank() == 0


def shard(items: list, r: int | None = None, w: int | None = None) -> list:
    """Rank r's contiguous share of `items` (len(items) must be a multiple of w): the shares of ranks
    0..w-1, concatenated, are `items`.

    >>> [shard(list("abcdef"), r, 3) for r in range(3)]
    [['a', 'b'], ['c', 'd'], ['e', 'f']]
    """
    r = rank() if r is None else r
    w = world() if w is None else w
    n = len(items) // w
    return items[r * n:(r + 1) * n]


def all_sum(values: list[float]) -> list[float]:
    """Element-wise sum over ranks of a few numbers (float64 on the CPU, or the default device of nccl)."""
    if not dist.is_initialized():
        return list(values)
    dev = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor(values, dtype=torch.float64, device=dev)
    collective("all_sum", lambda: dist.all_reduce(t))
    return t.tolist()


def all_max(value: float) -> float:
    if not dist.is_initialized():
        return value
    dev = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([value], dtype=torch.float64, device=dev)
    collective("all_max", lambda: dist.all_reduce(t, op=dist.ReduceOp.MAX))
    return t.item()


def sum_gradients(params: list[torch.Tensor]) -> None:
    """Sum the gradients of `params` over ranks, in place: one flat all-reduce (a parameter without a
    gradient on this rank counts as zeros, so every rank sends the same layout)."""
    if not dist.is_initialized():
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])  # (sum of numel,)
    collective("sum_gradients", lambda: dist.all_reduce(flat))
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def gather(obj) -> list:
    """`obj` of every rank, in rank order, on every rank (one process: [obj])."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * world()
    collective("gather", lambda: dist.all_gather_object(out, obj))
    return out


def barrier() -> None:
    if dist.is_initialized():
        collective("barrier", dist.barrier)
