"""--precision: which precision `auto` picks, and the bf16 path run on the CPU (sampling, log-probs, one
update, LoRA). Under bf16 autocast the weights, the AdamW state, the adapters and the log-probs stay
float32 (docs/method.md, decision 15); the numbers move by bf16 rounding only."""
from __future__ import annotations

import copy

import pytest
import torch

import cli
import lora
import models
import train
from cli import InputError, autocast, resolve_precision

PROMPTS = [[5, 6, 7, 8, 9], [5, 6, 7, 8, 9], [10, 11, 12]]
COMPLETIONS = [[20, 21, 1], [22, 23], [24, 25, 26, 1]]


def test_auto_picks_bf16_where_the_hardware_has_it_and_keeps_the_tiny_model_float32(monkeypatch):
    monkeypatch.setattr(cli, "cpu_has_bf16", lambda: True)
    assert resolve_precision("auto", "cpu") == "bfloat16"
    assert resolve_precision("auto", "cpu", tiny=True) == "float32"
    assert resolve_precision("auto", "cuda", tiny=True) == "bfloat16"
    monkeypatch.setattr(cli, "cpu_has_bf16", lambda: False)
    assert resolve_precision("auto", "cpu") == "float32"
    assert resolve_precision("float32", "cuda") == "float32"
    with pytest.raises(InputError, match="--precision must be one of auto, float32, bfloat16"):
        resolve_precision("fp16", "cpu")


def test_forcing_bf16_on_a_cpu_without_it_warns_once(monkeypatch, capsys):
    monkeypatch.setattr(cli, "cpu_has_bf16", lambda: False)
    assert resolve_precision("bfloat16", "cpu") == "bfloat16"
    assert "emulated" in capsys.readouterr().err


@pytest.mark.uses_solutions
def test_bf16_log_probs_are_float32_and_close_to_float32_ones(toy_policy):
    """The head runs in float32 on the bf16 body's hidden states (models.completion_logits): log-probs
    are float32 tensors, within bf16 rounding of the float32 path (|diff| < 0.05 nats per token on this
    toy model; exactly equal masks), and not identical (autocast really ran)."""
    logp32, mask32 = models.completion_logprobs(toy_policy.model, PROMPTS, COMPLETIONS, toy_policy.pad_id, 0.7)
    with autocast("cpu", "bfloat16"):
        logp16, mask16 = models.completion_logprobs(toy_policy.model, PROMPTS, COMPLETIONS, toy_policy.pad_id, 0.7)
    assert logp16.dtype == torch.float32 and torch.equal(mask16, mask32)
    ids = torch.tensor([[5, 6, 7, 20, 21]])
    with autocast("cpu", "bfloat16"):  # the head's product itself is float32, not a bf16 one cast up
        assert models.completion_logits(toy_policy.model, ids, torch.ones_like(ids), ids[:, 1:] > 0).dtype == torch.float32
    assert (logp16 - logp32).abs().max() < 0.05
    assert not torch.equal(logp16, logp32)


@pytest.mark.uses_solutions
def test_bf16_sampling_keeps_float32_log_probs_and_valid_ids(toy_policy):
    with autocast("cpu", "bfloat16"):
        ids, logps = models.sample(toy_policy, PROMPTS, 6, 1.0, generator=torch.Generator().manual_seed(0))
    vocab = toy_policy.model.config.vocab_size
    assert all(0 <= t < vocab for row in ids for t in row) and all(len(r) >= 1 for r in ids)
    assert all(isinstance(x, float) and x <= 0 for row in logps for x in row)


@pytest.mark.uses_solutions
@pytest.mark.parametrize("use_lora", [False, True])
def test_one_bf16_update_keeps_weights_adapters_and_adamw_state_float32(toy_policy, use_lora):
    """One grpo_update under --precision bfloat16: the loss is finite, the trained weights move, and
    every parameter and optimizer moment is still float32 (a bf16 weight could not hold the update)."""
    policy = copy.deepcopy(toy_policy)
    if use_lora:
        lora.add_adapters(policy.model, lora.LoRAConfig(rank=4, alpha=8))
    trained = [p for p in policy.model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trained]
    opt = torch.optim.AdamW(trained, lr=1e-2, weight_decay=0.0)
    batch = [(p, c, a) for p, c, a in zip(PROMPTS, COMPLETIONS, [1.0, -1.0, 0.5])]
    args = train.Args(precision="bfloat16", kl_beta=0.1)
    stats = train.grpo_update(policy, opt, batch, args, "cpu")
    assert all(isinstance(v, float) for v in stats.values()) and stats["tokens"] == 9
    assert any(not torch.equal(p, b) for p, b in zip(trained, before))
    assert all(p.dtype == torch.float32 for p in policy.model.parameters())
    assert all(v.dtype == torch.float32 for state in opt.state.values() for v in state.values() if v.numel() > 1)


def test_merged_sampling_weights_are_not_used_under_bf16(toy_policy):
    """lora.merged_for_sampling leaves the adapters separate under bf16 autocast (a merged bf16 weight
    would round their small update away) and merges them in float32."""
    model = lora.add_adapters(copy.deepcopy(toy_policy.model), lora.LoRAConfig(rank=4, alpha=8))
    with autocast("cpu", "bfloat16"), lora.merged_for_sampling(model):
        assert all(m.merged_weight is None for m in lora.adapters(model).values())
    with lora.merged_for_sampling(model):
        assert all(m.merged_weight is not None and m.merged_weight.dtype == torch.float32
                   for m in lora.adapters(model).values())
