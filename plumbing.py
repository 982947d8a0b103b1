"""The plumbing of train.grpo_update, kept out of the algorithm: micro-batches (gradient accumulation),
sums over torchrun processes, the clipped optimiser step, and the update's log values.

    mbs   = micro_batches(batch, 64)           # [[(prompt ids, completion ids, advantage), ...], ...]
    denom = loss_denominator(batch, "token")   # completion tokens of the whole batch, all processes
    ... policy_loss(..., denom) per micro-batch, loss.backward() ...
    grad_norm = clip_and_step(policy, opt, 1.0)
"""
from __future__ import annotations

import torch

import distributed
import models
from cli import autocast
from models import Policy


def micro_batches(batch: list, size: int) -> list[list]:
    """Gradient accumulation: consecutive slices of `size` rows. Above one micro-batch the rows are first
    stably sorted by prompt length (similar lengths pad less; the rows of one prompt stay together)."""
    if len(batch) > size:
        batch = sorted(batch, key=lambda row: len(row[0]))
    return [batch[i:i + size] for i in range(0, len(batch), size)]


def loss_denominator(batch: list, agg: str) -> float:
    """policy_loss's denom: the batch's completion tokens (token) or sequences (sequence), summed over
    every process under torchrun."""
    return distributed.all_sum([sum(len(c) for _, c, _ in batch) if agg == "token" else len(batch)])[0]


@torch.no_grad()
def old_logprobs(policy: Policy, mbs: list[list], args, device: str) -> list[torch.Tensor] | None:
    """With --ppo-epochs > 1: the log-probs (B, T-1) of each micro-batch before the first update, pi_old."""
    if args.ppo_epochs == 1:
        return None
    with autocast(device, args.precision):
        return [models.policy_logprobs(policy, [p for p, _, _ in mb], [c for _, c, _ in mb], args.temperature)[0]
                for mb in mbs]


def check_finite(value: torch.Tensor, what: str) -> None:
    if not torch.isfinite(value):
        raise FloatingPointError(f"non-finite {what} ({value.item()})")


def clip_and_step(policy: Policy, opt: torch.optim.Optimizer, max_norm: float) -> float:
    """Sum the gradients over processes (torchrun), clip their norm, take the AdamW step; the norm."""
    trainable = [p for p in policy.model.parameters() if p.requires_grad]
    distributed.sum_gradients(trainable)
    grad_norm = torch.nn.utils.clip_grad_norm_(trainable, max_norm)
    check_finite(grad_norm, f"gradient norm for {policy.name}: stopping this step")
    opt.step()
    return grad_norm.item()


def update_stats(sums: dict, grad_norm: float, epochs: int) -> dict:
    """The update's log values from policy_loss's per-micro-batch sums, over every process: loss per
    epoch, clip fraction and k3 KL per completion token, the last epoch's gradient norm, tokens."""
    loss, clip_frac, kl, tokens = distributed.all_sum([sums["loss"], sums["clip_frac"], sums["kl"], sums["tokens"]])
    tokens = max(1.0, tokens)
    return {"loss": loss / epochs, "clip_frac": clip_frac / tokens, "kl": kl / tokens, "grad_norm": grad_norm,
            "tokens": tokens / epochs}

