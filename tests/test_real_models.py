"""Real (chat) models end to end: loading, prompts, context limits, warm start, training, resume, eval.

The fast tests run the real-model code path on a toy chat model (a random 1-layer model whose
tokenizer has a chat template). The tests marked slow run SmolLM2-135M-Instruct from the optional
extra on the CPU at the smallest sizes (minutes): python -m pytest -m slow
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import agents
import models
import eval as evaluation
import train
import warmstart
from agents import Budgets, MaxNew
from conftest import smollm2_or_skip
from data.example import Line, read_split

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- prompts and context limits

def test_tiny_prompts_keep_their_layout(toy_policy, toy_train):
    """The tiny model was cloned on this bare layout: it must not change."""
    ids = lambda text: toy_policy.tokenizer(text, add_special_tokens=False).input_ids
    lines = toy_train[0].session_lines(0)[:2]
    prompt, shown = agents.extraction_prompt(toy_policy, lines, Budgets())
    assert prompt == ids(f"extract : [1] {lines[0].role} : {lines[0].text} [2] {lines[1].role} : {lines[1].text} =>")
    assert shown == lines
    prompt = agents.profile_prompt(toy_policy, lines[:1], Budgets())
    assert prompt == ids(f"profile : [1] {lines[0].text} =>")
    prompt, _ = agents.retrieval_prompt(toy_policy, lines[:1], ["pet cat milo"], "q ?", ["a", "b", "c", "d"], Budgets())
    assert prompt == ids(f"memory : [1] {lines[0].text} profile : pet cat milo "
                         "question : q ? options : ( a ) a ( b ) b ( c ) c ( d ) d =>")


def test_chat_prompts_carry_the_instruction_and_a_worked_example(toy_chat_model, toy_train):
    pol = models.load_policy(str(toy_chat_model))
    assert pol.chat
    lines = toy_train[0].session_lines(0)[:3]
    text = pol.tokenizer.apply_chat_template([{"role": "user", "content": "X"}], tokenize=False,
                                             add_generation_prompt=True)
    prompt, shown = agents.extraction_prompt(pol, lines, Budgets())
    content = "Lines:\n" + "\n".join(f"[{k}] {l.role} : {l.text}" for k, l in enumerate(lines, 1))
    full = text.replace("X", agents.INSTRUCTIONS["extraction"] + "\n\nNow your turn:\n" + content)
    assert prompt == pol.tokenizer(full, add_special_tokens=False).input_ids and shown == lines
    for role in agents.ROLES:  # the format, shown once in the layout of the real prompts
        assert "Example:" in agents.INSTRUCTIONS[role] and "Reply:" in agents.INSTRUCTIONS[role]


class _CharTokenizer:
    """One token per character: a stand-in tokenizer whose counts are easy to work by hand."""
    def __call__(self, texts, add_special_tokens=False):
        class Out:
            input_ids = [list(range(len(t))) for t in texts]
        return Out()


def test_fit_limits_hand_worked():
    pol = models.Policy(model=None, tokenizer=_CharTokenizer())
    from data.example import Example, Session
    ex = Example("q", "u", "t", "?", ["a", "b", "c", "d"], "a",
                 [Session(0, "", [Line(0, 0, "user", "ab cd"), Line(1, 0, "user", "e .")])])
    budgets, max_new, scale = agents.fit_limits(pol, [ex])
    assert scale == pytest.approx(8 / 4)  # "ab cd" + "e ." = 8 characters, 4 words
    # the four tags: 13 + 14 + 14 + 15 characters, 4 tokens of the tiny tokenizer
    assert budgets == Budgets(640, 320, 512, 128)
    assert max_new == MaxNew(32, 80, 48 + 56 - 4)
    assert agents.fit_limits(pol, [ex], scale=1.5)[0] == Budgets(480, 240, 384, 96)


def test_fit_limits_of_the_tiny_tokenizer_are_the_defaults(toy_policy, toy_train):
    budgets, max_new, scale = agents.fit_limits(toy_policy, toy_train)
    assert scale == 1.0 and budgets == Budgets() and max_new == MaxNew()


# ---------------------------------------------------------------- loading

def test_plain_model_drops_the_quantization_config(toy_policy, tmp_path):
    model = toy_policy.model
    model.config.quantization_config = {"quant_method": "gguf"}  # what a GGUF load leaves on the config
    try:
        plain = models.plain_model(model)
    finally:
        del model.config.quantization_config
    assert not hasattr(plain.config, "quantization_config")
    ids = torch.tensor([[3, 4, 5]])
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, model(ids).logits)
    plain.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()


def test_roles_loaded_from_one_name_are_separate_copies(toy_chat_model):
    pols = models.load_policies({r: str(toy_chat_model) for r in agents.ROLES})
    a, b = pols["extraction"].model, pols["retrieval"].model
    assert a is not b
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


# ---------------------------------------------------------------- the pipeline

def _pipeline(model: str, data, tmp_path, ws_kw: dict, weights: str = "adapter_model.safetensors", **train_kw):
    """warmstart.py --model M --out DIR; train.py --model DIR --steps 1; the same --steps 2 --resume;
    eval.py --policies ckpt. Each policy of the checkpoint is the file `weights` (LoRA adapters by
    default for a chat model). Returns the run folder."""
    ws = tmp_path / "ws"
    warmstart.main(warmstart.Args(model=model, data=str(data), out=str(ws), probe_every=0, **ws_kw))
    assert sorted(p.name for p in ws.iterdir()) == [".complete", "extraction", "profile", "retrieval", "warmstart.json"]
    base = dict(data=str(data), model=str(ws), out=str(tmp_path / "runs"), queries=1, group_size=2,
                eval_users=1, seed=1, **train_kw)
    train.main(train.Args(steps=1, **base))
    train.main(train.Args(steps=2, resume=True, **base))
    run = tmp_path / "runs" / "comam-s1"
    state = json.loads((run / "ckpt" / "state.json").read_text())
    assert state["step"] == 2
    for role in agents.ROLES:
        assert (ws / role / weights).exists() and (run / "ckpt" / role / weights).exists()
    res = evaluation.main(evaluation.Args(data=str(data), policies=str(run / "ckpt"), users=1, temperature=0.0,
                                          out=str(tmp_path / "eval.json")))
    assert res["n"] > 0 and 0.0 <= res["accuracy"] <= 1.0
    return run


@pytest.mark.uses_solutions
def test_chat_model_warm_start_train_resume_eval(toy_chat_model, toy_data, tmp_path):
    run = _pipeline(str(toy_chat_model), toy_data, tmp_path, dict(steps=2, batch_size=2))
    report = json.loads((tmp_path / "ws" / "warmstart.json").read_text())
    assert report["args"]["lora_rank"] == 16 and report["args"]["lr"] == 1e-3  # a chat model's defaults: LoRA
    assert json.loads((run / "args.json").read_text())["lora_rank"] == 16  # the warm start's adapters, trained on
    assert [json.loads(l)["step"] for l in (run / "log.jsonl").read_text().splitlines()] == [1, 2]


@pytest.mark.uses_solutions
def test_chat_model_full_fine_tuning_pipeline(toy_chat_model, toy_data, tmp_path):
    """--lora-rank 0: every weight is trained, and whole models are written."""
    _pipeline(str(toy_chat_model), toy_data, tmp_path, dict(steps=2, batch_size=2, lora_rank=0), "model.safetensors",
              lora_rank=0)
    assert json.loads((tmp_path / "ws" / "warmstart.json").read_text())["args"]["lr"] == 1e-4


@pytest.mark.uses_solutions
def test_gradient_checkpointing_gives_the_same_update(toy_chat_model):
    """Recomputing activations in the backward pass changes memory, not the gradient."""
    grads = []
    for ckpt in (False, True):
        pol = models.load_policy(str(toy_chat_model))
        if ckpt:
            models.enable_checkpointing(pol.model)
        pol.model.train()
        logp, mask = models.completion_logprobs(pol.model, [[5, 6, 7], [8, 9]], [[10, 11, pol.eos_id], [12, pol.eos_id]],
                                                pol.pad_id)
        (logp * mask).sum().backward()
        grads.append([p.grad.clone() for p in pol.model.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.slow  # the whole GPU check on the CPU: a warm start, a CoMAM step, four evaluations
@pytest.mark.uses_solutions
def test_gpu_check_cpu_path(toy_chat_model, toy_data, tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    import gpu_check
    summary = gpu_check.main(gpu_check.Args(device="cpu", toy=True, model=str(toy_chat_model), data=str(toy_data),
                                            out=str(tmp_path / "check")))
    assert json.loads((tmp_path / "check" / "summary.json").read_text()) == json.loads(json.dumps(summary))
    tiny = summary["tiny"]
    assert tiny["steps"] == 2 and tiny["step_s"] > 0 and tiny["gen_tok_s"] > 0 and tiny["peak_mem_gb"] > 0
    real = summary["real"]
    for key in ("eval_before", "eval_after_warmstart"):
        assert set(real[key]["format_failure"]) == set(agents.ROLES)
    assert real["comam"]["steps"] == 1 and set(real["comam"]["zero_std_groups"]) == set(agents.ROLES)
    assert 0.0 <= real["comam"]["final"]["accuracy"] <= 1.0
    assert real["eval_after_comam"]["n"] == real["paired"]["questions"] > 0  # the paired table's questions
    assert (tmp_path / "check" / "warmstart" / "extraction" / "adapter_config.json").exists()  # the LoRA path


@pytest.mark.slow  # with the GPU check's CPU path above: a process start
def test_gpu_check_without_cuda_says_so(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--out", str(tmp_path / "x")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.startswith("error: --device cuda") and "no CUDA device" in r.stderr


# ---------------------------------------------------------------- SmolLM2 (slow: minutes on a CPU)

@pytest.mark.slow
def test_smollm2_saves_as_a_plain_model_and_reloads(tmp_path):
    smollm2_or_skip()
    pol = models.load_policy("smollm2")
    assert pol.chat and pol.pad_id == pol.eos_id
    pol.model.save_pretrained(tmp_path / "m")
    pol.tokenizer.save_pretrained(tmp_path / "m")
    again = models.load_policy(str(tmp_path / "m"))
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(again.model(ids).logits, pol.model(ids).logits)
    text = agents.INSTRUCTIONS["retrieval"]
    assert again.tokenizer(text).input_ids == pol.tokenizer(text).input_ids
    prompt = agents.profile_prompt(again, [Line(0, 0, "user", "i have a cat named milo .")], Budgets())
    comps, lps = models.sample(again, [prompt], 8, temperature=0.0)
    assert 1 <= len(comps[0]) <= 8 and all(lp <= 0 for lp in lps[0])


@pytest.mark.slow
def test_smollm2_warm_start_train_resume_eval(toy_data, tmp_path):
    smollm2_or_skip()
    _pipeline("smollm2", toy_data, tmp_path, dict(steps=2, batch_size=2))


@pytest.mark.slow
def test_smollm2_lora_train_resume_eval(toy_data, tmp_path):
    """The issue's commands: train.py --model smollm2 --lora-rank 8 --steps 2 --queries 1 --group-size 2
    --eval-users 1, then the same with --steps 3 --resume; eval.py --policies on the checkpoint of three
    adapter sets."""
    smollm2_or_skip()
    base = dict(data=str(toy_data), model="smollm2", lora_rank=8, queries=1, group_size=2, eval_users=1,
                out=str(tmp_path / "runs"))
    train.main(train.Args(steps=2, **base))
    train.main(train.Args(steps=3, resume=True, **base))
    ckpt = tmp_path / "runs" / "comam-s1" / "ckpt"
    assert json.loads((ckpt / "state.json").read_text())["step"] == 3
    for role in agents.ROLES:
        cfg = json.loads((ckpt / role / "adapter_config.json").read_text())
        assert cfg["r"] == 8 and cfg["base_model_name_or_path"] == "smollm2"
        assert (ckpt / role / "adapter_model.safetensors").stat().st_size < 20e6  # megabytes, not a model
    res = evaluation.main(evaluation.Args(data=str(toy_data), policies=str(ckpt), users=1, temperature=0.0,
                                          out=str(tmp_path / "eval.json")))
    assert res["n"] > 0


@pytest.mark.slow
def test_our_adapters_load_in_peft(tmp_path):
    """A user with peft loads our adapters onto the base without our code: PeftModel.from_pretrained on
    the dequantized SmolLM2 gives the logits of our adapted model (skipped where peft is not installed)."""
    smollm2_or_skip()
    peft = pytest.importorskip("peft")
    import lora
    pol = models.load_policies({r: "smollm2" for r in agents.ROLES}, "cpu", lora.LoRAConfig(rank=4, alpha=8))["profile"]
    g = torch.Generator().manual_seed(0)
    for m in lora.adapters(pol.model).values():
        with torch.no_grad():
            m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=g) * 0.01)
    lora.save_adapters(pol.model, tmp_path / "adapters", base="smollm2")
    plain = models.load_policy("smollm2").model  # the base, as a transformers user gets it (from the GGUF file)
    theirs = peft.PeftModel.from_pretrained(plain, str(tmp_path / "adapters")).eval()
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        ours, want = pol.model(ids).logits, theirs(input_ids=ids).logits
    assert torch.allclose(ours, want, atol=1e-4), (ours - want).abs().max()


@pytest.mark.slow
def test_the_shipped_smollm2_warm_start_evaluates_with_no_training(toy_data, tmp_path):
    """checkpoints/smollm2-lora-warmstart: three rank-16 adapter sets (profile and retrieval link to the
    extraction folder: the warm start's agents are identical) that eval.py takes as they are; its
    retrieval agent writes the value-then-letter answer format."""
    smollm2_or_skip()
    import lora
    shipped = ROOT / "checkpoints" / "smollm2-lora-warmstart"
    pols = models.load_policies({r: str(shipped) for r in agents.ROLES}, "cpu")
    assert all(p.chat and lora.config_of(p.model).rank == 16 for p in pols.values())
    res = evaluation.main(evaluation.Args(data=str(toy_data), policies=str(shipped), users=1, temperature=0.0,
                                          out=str(tmp_path / "eval.json")))
    assert res["n"] > 0 and res["format_failure"]["retrieval"] < 0.5, res["format_failure"]


@pytest.mark.slow
def test_bf16_log_probs_of_the_shipped_smollm2_warm_start_agree_with_float32(toy_data):
    """--precision bfloat16 against float32 on the shipped warm start's retrieval agent (LoRA on the
    frozen SmolLM2 base), real prompts: the completion log-probs agree within 0.15 nats per token
    (median 0.02 or less; bf16 keeps 8 bits of mantissa through 30 layers), and the update's
    head stays float32. Emulated on a CPU without bf16 hardware: a few rows only."""
    smollm2_or_skip()
    import agents
    import runs
    import train
    from cli import autocast
    from data.example import read_split
    policies = runs.load_run_policies(runs.resolve_lora_rank(train.Args(model="checkpoints/smollm2-lora-warmstart")), "cpu")
    pol = policies["retrieval"]
    examples = read_split(toy_data, "val")[:2]
    budgets, max_new, _ = agents.fit_limits(pol, examples)
    prompts = [agents.retrieval_prompt(pol, ex.session_lines(ex.evidence_session), [], ex.question, ex.options,
                                       budgets)[0] for ex in examples]
    completions, _ = models.sample(pol, prompts, 12, 0.0)
    logp32, mask = models.policy_logprobs(pol, prompts, completions)
    with autocast("cpu", "bfloat16"):
        logp16, mask16 = models.policy_logprobs(pol, prompts, completions)
    diff = (logp16 - logp32)[mask.bool()].abs()
    assert logp16.dtype == torch.float32 and torch.equal(mask, mask16)
    assert diff.max() < 0.15 and diff.median() <= 0.02, (diff.max().item(), diff.median().item())
