"""LoRA adapters written here (lora.py): exact at B = 0, gradients only in the adapters, merge, the base
as the KL reference, three agents on one base, peft's layout, and a LoRA run that resumes bit-identically."""
from __future__ import annotations

import copy
import json

import pytest
import torch

import agents
import lora
import models
import runs
import train
import warmstart
from cli import InputError


def _model(toy_tokenizer, seed=0, layers=2):
    return warmstart.build_tiny(toy_tokenizer, hidden=32, layers=layers, heads=2, seed=seed)


def _randomise_b(model, seed=1):
    """Adapters that change something (B = 0 at creation)."""
    g = torch.Generator().manual_seed(seed)
    for m in lora.adapters(model).values():
        with torch.no_grad():
            m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=g, dtype=m.lora_B.weight.dtype) * 0.1)


IDS = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]])


def test_an_adapter_at_step_0_changes_nothing(toy_tokenizer):
    base = _model(toy_tokenizer)
    adapted = lora.add_adapters(copy.deepcopy(base), lora.LoRAConfig(rank=4, alpha=8))
    assert len(lora.adapters(adapted)) == 2 * 7  # q, k, v, o, gate, up, down in each of 2 blocks
    with torch.no_grad():
        assert torch.equal(adapted(IDS).logits, base(IDS).logits)
    for m in lora.adapters(adapted).values():
        assert torch.count_nonzero(m.lora_B.weight) == 0 and torch.count_nonzero(m.lora_A.weight) > 0
        assert m.scaling == 2.0


def test_gradients_reach_only_the_adapters_and_the_base_stays_bit_identical(toy_tokenizer):
    model = lora.add_adapters(_model(toy_tokenizer), lora.LoRAConfig(rank=4, alpha=8))
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):  # the second step moves A too (at B = 0 its gradient is 0)
        opt.zero_grad()
        model(IDS).logits.logsumexp(-1).mean().backward()
        for n, p in model.named_parameters():
            assert (p.grad is not None) == ("lora_" in n), n
        opt.step()
    for n, p in model.named_parameters():
        if "lora_" not in n:
            assert not p.requires_grad and torch.equal(p, base_before[n]), n
    assert all(torch.count_nonzero(m.lora_B.weight) > 0 for m in lora.adapters(model).values())


def test_merging_gives_the_adapted_models_logits_float64(toy_tokenizer):
    model = lora.add_adapters(_model(toy_tokenizer).double(), lora.LoRAConfig(rank=3, alpha=5))
    model = model.double()
    _randomise_b(model)
    plain = lora.merged(model)
    assert not lora.adapters(plain) and lora.adapters(model)  # a copy: the adapted model is untouched
    with torch.no_grad():
        a, b = model(IDS).logits, plain(IDS).logits
    assert a.dtype == torch.float64 and (a - b).abs().max() < 1e-10
    # the merged weight is W + (alpha / r) B A, by hand for one layer
    name, m = next(iter(lora.adapters(model).items()))
    want = m.base.weight + (5 / 3) * m.lora_B.weight @ m.lora_A.weight
    assert torch.allclose(plain.get_submodule(name).weight, want, atol=1e-12)


@pytest.mark.uses_solutions
def test_sampling_with_merged_adapters_gives_the_adapted_models_samples(toy_tokenizer):
    """lora.merged_for_sampling: one product with W + (alpha/r) B A gives the separate products' logits
    up to float rounding, the same greedy and seeded samples, and is dropped on exit; under gradient
    recording (the update) the adapters stay separate, so gradients still reach them."""
    model = lora.add_adapters(_model(toy_tokenizer), lora.LoRAConfig(rank=4, alpha=8))
    _randomise_b(model)
    policy = models.Policy(model, toy_tokenizer)
    with torch.no_grad():
        separate = model(IDS).logits
    with lora.merged_for_sampling(model):
        assert all(m.merged_weight is not None for m in lora.adapters(model).values())
        with torch.no_grad():
            merged_logits = model(IDS).logits
        model(IDS).logits.sum().backward()  # gradients recorded: the separate path
        assert all(m.lora_B.weight.grad is not None for m in lora.adapters(model).values())
        samples = [models.sample(policy, IDS.tolist(), 5, t, generator=torch.Generator().manual_seed(3))
                   for t in (0.0, 1.0)]
    assert all(m.merged_weight is None for m in lora.adapters(model).values())
    with lora.disabled(model), torch.no_grad():  # the adapters matter: without them the logits differ
        assert not torch.allclose(model(IDS).logits, separate, atol=1e-3)
    assert torch.allclose(merged_logits, separate, atol=1e-5)
    for t, (ids, logps) in zip((0.0, 1.0), samples):
        ref_ids, ref_logps = models.sample(policy, IDS.tolist(), 5, t, generator=torch.Generator().manual_seed(3))
        assert ids == ref_ids
        assert torch.allclose(torch.tensor(logps), torch.tensor(ref_logps), atol=1e-4)


@pytest.mark.uses_solutions
def test_disabled_adapters_give_the_reference_policys_log_probs(toy_tokenizer):
    base = _model(toy_tokenizer)
    model = lora.add_adapters(copy.deepcopy(base), lora.LoRAConfig(rank=4, alpha=8))
    _randomise_b(model)
    prompts, comps = [[5, 6, 7], [8, 9]], [[10, 11, 1], [12, 1]]
    ref, _ = models.completion_logprobs(base, prompts, comps, 1)
    adapted, _ = models.completion_logprobs(model, prompts, comps, 1)
    with lora.disabled(model):
        off, _ = models.completion_logprobs(model, prompts, comps, 1)
    assert torch.equal(off, ref) and not torch.equal(adapted, ref)
    again, _ = models.completion_logprobs(model, prompts, comps, 1)
    assert torch.equal(again, adapted)  # switched back on after the block


def test_three_agents_share_one_frozen_base(toy_chat_model):
    cfg = lora.LoRAConfig(rank=4, alpha=8)
    pols = models.load_policies({r: str(toy_chat_model) for r in agents.ROLES}, "cpu", cfg)
    frozen = [{p.data_ptr() for p in pol.model.parameters() if not p.requires_grad} for pol in pols.values()]
    assert frozen[0] == frozen[1] == frozen[2]  # the same tensors: one copy of the base in memory
    adapters = [{p.data_ptr() for p in pol.model.parameters() if p.requires_grad} for pol in pols.values()]
    assert not (adapters[0] & adapters[1]) and not (adapters[1] & adapters[2])  # each agent its own
    opts = {r: torch.optim.AdamW([p for p in pol.model.parameters() if p.requires_grad], lr=1e-2)
            for r, pol in pols.items()}
    before = [p.detach().clone() for p in pols["profile"].model.parameters()]
    loss = pols["extraction"].model(IDS).logits.logsumexp(-1).mean()
    loss.backward()
    opts["extraction"].step()
    assert all(torch.equal(a, b) for a, b in zip(before, pols["profile"].model.parameters()))


def test_adapters_are_saved_in_peft_layout_and_load_back(toy_chat_model, tmp_path):
    from safetensors.torch import load_file
    pol = models.load_policies({r: str(toy_chat_model) for r in agents.ROLES}, "cpu",
                               lora.LoRAConfig(rank=4, alpha=8, targets=("q_proj", "v_proj")))["retrieval"]
    _randomise_b(pol.model)
    lora.save_adapters(pol.model, tmp_path / "a", base=str(toy_chat_model))
    pol.tokenizer.save_pretrained(tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert (cfg["peft_type"], cfg["r"], cfg["lora_alpha"], cfg["base_model_name_or_path"]) == (
        "LORA", 4, 8.0, str(toy_chat_model))
    assert sorted(cfg["target_modules"]) == ["q_proj", "v_proj"]
    keys = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert keys["base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"].shape == (32, 4)  # (out, r)
    again = models.load_policy(str(tmp_path / "a"))
    with torch.no_grad():
        assert torch.equal(again.model(IDS).logits, pol.model(IDS).logits)


def test_adapters_for_another_base_are_a_clear_error(toy_chat_model, toy_tokenizer, tmp_path):
    other = lora.add_adapters(_model(toy_tokenizer, layers=1), lora.LoRAConfig(rank=2, alpha=4))
    lora.save_adapters(other, tmp_path / "a", base=str(toy_chat_model))  # saved from a 1-layer model
    big = lora.add_adapters(_model(toy_tokenizer, layers=1), lora.LoRAConfig(rank=2, alpha=4))
    lora.save_adapters(big, tmp_path / "b", base=str(toy_chat_model))
    (tmp_path / "b" / "adapter_config.json").write_text(
        (tmp_path / "b" / "adapter_config.json").read_text().replace('"r": 2', '"r": 3'))
    with pytest.raises(InputError, match="adapter_model.safetensors: .*shape"):
        models.load_policy(str(tmp_path / "b"))
    with pytest.raises(InputError, match="no such linear layer"):
        lora.add_adapters(_model(toy_tokenizer), lora.LoRAConfig(targets=("c_attn",)))


def test_merged_export_writes_plain_models(toy_chat_model, tmp_path):
    pols = models.load_policies({r: str(toy_chat_model) for r in agents.ROLES}, "cpu", lora.LoRAConfig(rank=2, alpha=4))
    for role, pol in pols.items():
        _randomise_b(pol.model, seed=len(role))
        lora.save_adapters(pol.model, tmp_path / "ckpt" / role, base=str(toy_chat_model))
        pol.tokenizer.save_pretrained(tmp_path / "ckpt" / role)
    models.export_merged(str(tmp_path / "ckpt"), tmp_path / "plain")
    for role, pol in pols.items():
        plain = models.load_policy(str(tmp_path / "plain"), role)
        assert not lora.adapters(plain.model) and (tmp_path / "plain" / role / "model.safetensors").exists()
        with torch.no_grad():
            assert torch.allclose(plain.model(IDS).logits, pol.model(IDS).logits, atol=1e-5)


@pytest.mark.uses_solutions
def test_kl_to_the_base_is_zero_before_the_adapters_move(toy_chat_model):
    pol = models.load_policies({r: str(toy_chat_model) for r in agents.ROLES}, "cpu",
                               lora.LoRAConfig(rank=2, alpha=4))["extraction"]
    batch = [([5, 6, 7], [8, 9, pol.eos_id], 1.0), ([5, 6], [10, pol.eos_id], -1.0)]
    opt = torch.optim.SGD([p for p in pol.model.parameters() if p.requires_grad], lr=1.0)
    stats = train.grpo_update(pol, opt, batch, train.Args(kl_beta=0.5), "cpu")
    assert stats["kl"] == 0.0  # B = 0: the policy is its base
    stats = train.grpo_update(pol, opt, batch, train.Args(kl_beta=0.5), "cpu")
    assert stats["kl"] > 0.0  # the first update moved B: the policy left its base


@pytest.mark.uses_solutions
def test_the_kl_reference_of_a_lora_warm_start_is_the_warm_start_on_the_same_base(toy_chat_model, tmp_path):
    warm = tmp_path / "warm"  # a LoRA warm start: adapters that change the base
    for role, pol in models.load_policies({r: str(toy_chat_model) for r in agents.ROLES}, "cpu",
                                          lora.LoRAConfig(rank=2, alpha=4)).items():
        _randomise_b(pol.model, seed=len(role))
        lora.save_adapters(pol.model, warm / role, base=str(toy_chat_model))
        pol.tokenizer.save_pretrained(warm / role)
    args = train.Args(model=str(warm), lora_rank=2, kl_beta=0.5)
    policies = runs.load_run_policies(args, "cpu")
    refs = runs.reference_policies(args, policies, "cpu")
    pol, ref = policies["extraction"], refs["extraction"]
    frozen = {id(p) for p in pol.model.parameters() if not p.requires_grad}
    assert all(id(p) in frozen for n, p in ref.model.named_parameters() if ".lora_" not in n)  # no base copy
    assert not any(p.requires_grad for p in ref.model.parameters())
    batch = [([5, 6, 7], [8, 9, pol.eos_id], 1.0), ([5, 6], [10, pol.eos_id], -1.0)]
    prompts, comps = [b[0] for b in batch], [b[1] for b in batch]
    with lora.disabled(pol.model):  # the base under the adapters: what the reference was before
        base_logp, _ = models.completion_logprobs(pol.model, prompts, comps, 1)
    warm_logp, _ = models.completion_logprobs(pol.model, prompts, comps, 1)
    assert not torch.allclose(base_logp, warm_logp, atol=1e-3)
    opt = torch.optim.SGD([p for p in pol.model.parameters() if p.requires_grad], lr=1.0)
    stats = train.grpo_update(pol, opt, batch, args, "cpu", ref)
    assert stats["kl"] == 0.0  # the policy is still its warm start
    stats = train.grpo_update(pol, opt, batch, args, "cpu", ref)
    assert stats["kl"] > 0.0  # the first update moved it; the reference stayed
    ref_logp = models.reference_logprobs(pol, ref, prompts, comps, 1.0)
    assert torch.equal(ref_logp, warm_logp)


@pytest.mark.uses_solutions  # the toy warm start fixture trains with completion_logprobs (assignment 3)
def test_the_kl_reference_of_whole_models_is_model_loaded_again_not_the_trained_policy(toy_warmstart):
    args = train.Args(model=str(toy_warmstart), lora_rank=0, kl_beta=0.5)
    policies = runs.load_run_policies(args, "cpu")
    for pol in runs.unique(policies).values():  # as if trained, or resumed from a later checkpoint
        with torch.no_grad():
            for p in pol.model.parameters():
                p.add_(0.01)
    refs = runs.reference_policies(args, policies, "cpu")
    fresh = runs.load_run_policies(args, "cpu")
    for role in agents.ROLES:
        got, want = dict(refs[role].model.named_parameters()), dict(fresh[role].model.named_parameters())
        assert all(torch.equal(got[n], want[n]) for n in want)
        assert not any(p.requires_grad for p in got.values())
        assert not torch.equal(next(policies[role].model.parameters()), next(iter(got.values())))
    assert runs.reference_policies(train.Args(model=str(toy_warmstart), kl_beta=0.0), policies, "cpu") == {}


def _lora_run(toy_data, model, out, **kw):
    base = dict(data=str(toy_data), model=str(model), out=str(out), steps=2, queries=2, group_size=2,
                eval_users=1, save_every=1, lr=1e-2, seed=3, lora_rank=4)
    base.update(kw)
    return train.Args(**base)


@pytest.mark.uses_solutions
def test_a_lora_run_resumes_bit_identically(toy_data, toy_chat_model, tmp_path, varied_rewards):
    from safetensors.torch import load_file
    train.main(_lora_run(toy_data, toy_chat_model, tmp_path / "a", steps=3, save_every=10))
    train.main(_lora_run(toy_data, toy_chat_model, tmp_path / "b", steps=2))
    train.main(_lora_run(toy_data, toy_chat_model, tmp_path / "b", steps=3, resume=True))
    moved = False
    for role in agents.ROLES:
        a, b = (tmp_path / x / "comam-s3" / "ckpt" / role for x in "ab")
        assert sorted(p.name for p in a.iterdir() if "token" not in p.name and p.suffix != ".jinja") == [
            "adapter_base.json", "adapter_config.json", "adapter_model.safetensors", "optimizer.pt"]
        wa, wb = load_file(str(a / "adapter_model.safetensors")), load_file(str(b / "adapter_model.safetensors"))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), role
        moved |= any(torch.count_nonzero(v) > 0 for k, v in wa.items() if "lora_B" in k)
        oa = torch.load(a / "optimizer.pt", weights_only=True)["state"]
        ob = torch.load(b / "optimizer.pt", weights_only=True)["state"]
        assert all(torch.equal(oa[k]["exp_avg"], ob[k]["exp_avg"]) for k in oa)
    assert moved
    log = [json.loads(l)["step"] for l in (tmp_path / "b" / "comam-s3" / "log.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3]
    evaluated = __import__("eval").main(__import__("eval").Args(
        data=str(toy_data), policies=str(tmp_path / "b" / "comam-s3" / "ckpt"), users=1, temperature=0.0,
        out=str(tmp_path / "e.json")))
    assert evaluated["n"] > 0


@pytest.mark.uses_solutions
def test_lora_rank_conflicting_with_saved_adapters_is_an_error(toy_data, toy_chat_model, tmp_path, varied_rewards):
    train.main(_lora_run(toy_data, toy_chat_model, tmp_path, steps=1))
    ckpt = tmp_path / "comam-s3" / "ckpt"
    with pytest.raises(InputError, match="--lora-rank 8: .* holds rank-4 adapters"):
        train.main(_lora_run(toy_data, ckpt, tmp_path, exp_name="again", lora_rank=8))
    args = train.Args(model=str(ckpt))
    import runs
    assert runs.resolve_lora_rank(args).lora_rank == 4  # auto: the adapters' own rank
    assert runs.resolve_lora_rank(train.Args()).lora_rank == 0  # the tiny default: full fine-tuning


def test_the_memory_arithmetic_counts_what_the_formulas_say(monkeypatch):
    """scripts/memory.py on a small config: full fine-tuning holds 3 x (4 + 4 + 8) bytes per parameter
    (weights, gradients, AdamW's two moments); LoRA rank r adds r (in + out) parameters per adapted layer."""
    import sys
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent / "scripts"))
    import memory
    monkeypatch.setitem(memory.CONFIGS, "toy", ("qwen2", 32, 64, 2, 2, 2, 100))
    row = memory.estimate("toy", 4, lora.TARGETS["all"])
    assert row["full_gb"] * memory.GB == 3 * 16 * row["params"]
    per_layer = 4 * (32 + 32) + 3 * (32 + 64)  # q, k, v, o: 32 -> 32 (2 kv heads of 16); gate, up: 32 -> 64; down
    assert row["adapter_params_per_agent"] == 4 * per_layer * 2  # rank 4, 2 layers
    assert row["lora_cpu_gb"] * memory.GB == 4 * row["params"] + 3 * 16 * row["adapter_params_per_agent"]


@pytest.mark.uses_solutions  # the toy warm start fixture trains with completion_logprobs (assignment 3)
def test_identical_per_role_models_share_one_base_and_different_ones_do_not(toy_warmstart, tmp_path):
    """A warm start holds three identical copies: with adapters they become one frozen base. A folder
    whose roles differ keeps one base per role."""
    cfg = lora.LoRAConfig(rank=2, alpha=4)
    pols = models.load_policies({r: str(toy_warmstart) for r in agents.ROLES}, "cpu", cfg)
    frozen = [{p.data_ptr() for p in pol.model.parameters() if not p.requires_grad} for pol in pols.values()]
    assert frozen[0] == frozen[1] == frozen[2]
    import shutil
    shutil.copytree(toy_warmstart, tmp_path / "ws")
    other = models.load_policy(str(tmp_path / "ws"), "profile")
    with torch.no_grad():
        next(other.model.parameters()).add_(1.0)  # the profile agent's weights now differ
    other.model.save_pretrained(tmp_path / "ws" / "profile")
    pols = models.load_policies({r: str(tmp_path / "ws") for r in agents.ROLES}, "cpu", cfg)
    frozen = {r: {p.data_ptr() for p in pol.model.parameters() if not p.requires_grad} for r, pol in pols.items()}
    assert frozen["extraction"] == frozen["retrieval"] and not (frozen["profile"] & frozen["extraction"])
