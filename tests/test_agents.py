"""The model layer and the agents' formats: tokenizer, save/load, pad == eos masks, parsers."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import agents
import models
import sharing
import warmstart
from agents import Budgets
from data.example import Line


def test_tokenizer_round_trip_of_benchmark_text(toy_train, toy_tokenizer):
    texts = [l.text for ex in toy_train[:40] for l in ex.lines] + [o for ex in toy_train for o in ex.options]
    for t in texts:
        ids = toy_tokenizer(t, add_special_tokens=False).input_ids
        assert toy_tokenizer.unk_token_id not in ids, t
        assert toy_tokenizer.decode(ids) == t
    out = "<information> 3 5 </information> <final_answer> something with jazz </final_answer>"
    ids = toy_tokenizer(out, add_special_tokens=False).input_ids
    assert len(ids) == 9  # every tag, number and word is one token
    assert toy_tokenizer.decode(ids) == out
    assert toy_tokenizer.pad_token_id == toy_tokenizer.eos_token_id


def test_the_tiny_tokenizer_is_built_id_for_id_as_the_shipped_checkpoints(toy_tokenizer):
    """warmstart.build_tokenizer over any benchmark's texts (here the toy one: vocabulary_texts holds the
    generator's whole word lists) gives the vocabulary that the shipped checkpoint's weights were trained
    on, token for token and id for id: a change to the builder that moved one id would break them."""
    from transformers import PreTrainedTokenizerFast
    for role in agents.ROLES:
        shipped = PreTrainedTokenizerFast.from_pretrained(models.TINY_CHECKPOINT / role, local_files_only=True)
        assert toy_tokenizer.get_vocab() == shipped.get_vocab() and len(toy_tokenizer) == len(shipped) == 615
        assert toy_tokenizer.backend_tokenizer.to_str() == shipped.backend_tokenizer.to_str()
        assert (toy_tokenizer.eos_token_id, toy_tokenizer.pad_token_id) == (shipped.eos_token_id, shipped.pad_token_id)


def test_model_save_load_round_trip(toy_policy, tmp_path):
    toy_policy.model.save_pretrained(tmp_path / "m")
    toy_policy.tokenizer.save_pretrained(tmp_path / "m")
    loaded = models.load_policy(str(tmp_path / "m"))
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        assert torch.equal(toy_policy.model(ids).logits, loaded.model(ids).logits)
    assert loaded.tokenizer.get_vocab() == toy_policy.tokenizer.get_vocab()
    text = "extract : [1] user : i have a cat named milo . => <information> 1 </information>"
    assert (loaded.tokenizer(text, add_special_tokens=False).input_ids
            == toy_policy.tokenizer(text, add_special_tokens=False).input_ids)
    assert loaded.pad_id == loaded.eos_id


@pytest.mark.assignment3
def test_completion_mask_keeps_eos_when_pad_is_eos(toy_policy):
    eos = toy_policy.eos_id
    prompts, comps = [[5, 6, 7], [5, 6]], [[8, 9, eos], [8, eos]]
    logp, mask = models.completion_logprobs(toy_policy.model, prompts, comps, toy_policy.pad_id)
    # row 0: ids 5 6 7 8 9 e ; targets 6 7 8 9 e -> completion at target positions 2, 3, 4 (EOS included)
    assert mask.tolist() == [[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]]
    assert (logp[mask == 0] == 0).all() and (logp[mask == 1] < 0).all()


@pytest.mark.assignment3
def test_logits_at_t_minus_1_score_token_t(toy_policy):
    """Independent reference: the log-prob of each completion token from one forward per prefix."""
    prompt, comp = [5, 6, 7], [8, 9, toy_policy.eos_id]
    T = 0.7
    logp, mask = models.completion_logprobs(toy_policy.model, [prompt], [comp], toy_policy.pad_id, T)
    got = logp[mask == 1]
    ref = []
    with torch.no_grad():
        for k, tok in enumerate(comp):
            prefix = torch.tensor([prompt + comp[:k]])
            last = toy_policy.model(prefix).logits[0, -1].double() / T
            ref.append(torch.log_softmax(last, -1)[tok].item())
    assert torch.allclose(got.double(), torch.tensor(ref, dtype=torch.float64), atol=1e-5)
    assert got.dtype == torch.float32


@pytest.mark.assignment4
def test_sampling_log_probs_match_training_forward_with_left_padding(toy_policy, toy_train):
    """Left-padded batched sampling (position ids from the mask, KV cache) gives, for every sampled token,
    the log-prob that one unpadded forward over the prompt and the completion so far gives it
    (independent reference, float64, at the sampling temperature); the sampled ids are kept as they are."""
    histories = [ex.session_lines(ex.evidence_session) for ex in toy_train[:6]]
    prompts = [agents.extraction_prompt(toy_policy, h, Budgets())[0] for h in histories]
    prompts[0] = prompts[0][:20]  # very different lengths -> lots of left padding
    g = torch.Generator().manual_seed(0)
    comps, lps = models.sample(toy_policy, prompts, 8, temperature=1.3, generator=g)
    with torch.no_grad():
        for prompt, comp, lp in zip(prompts, comps, lps):
            assert len(comp) == len(lp) and 1 <= len(comp) <= 8
            logits = toy_policy.model(torch.tensor([prompt + comp])).logits[0].double() / 1.3  # (T, V)
            ref = [torch.log_softmax(logits[len(prompt) - 1 + k], -1)[tok].item() for k, tok in enumerate(comp)]
            assert torch.allclose(torch.tensor(lp, dtype=torch.float64), torch.tensor(ref, dtype=torch.float64), atol=1e-4)
            assert toy_policy.eos_id not in comp[:-1]  # EOS, when sampled, closes the completion and is kept


@pytest.mark.uses_solutions
def test_sampling_reports_progress_per_batch_and_the_report_changes_nothing(toy_policy):
    """`progress` hears the size of every finished batch (eval.py's answer bar); the completions are the
    ones sampled without it, draw for draw."""
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14], [15, 16]]
    heard = []
    with_bar = models.sample(toy_policy, prompts, 4, temperature=1.0, batch_size=2,
                             generator=torch.Generator().manual_seed(3), progress=heard.append)
    without = models.sample(toy_policy, prompts, 4, temperature=1.0, batch_size=2,
                            generator=torch.Generator().manual_seed(3))
    assert heard == [2, 2, 1]
    assert with_bar == without


@pytest.mark.assignment4
def test_greedy_sampling_takes_the_argmax_and_stops_at_the_limit(toy_policy):
    prompts = [[5, 6, 7], [8, 9]]
    comps, lps = models.sample(toy_policy, prompts, 4, temperature=0.0)
    with torch.no_grad():
        for prompt, comp in zip(prompts, comps):
            seq = list(prompt)
            for tok in comp:
                assert tok == toy_policy.model(torch.tensor([seq])).logits[0, -1].argmax().item()
                seq.append(tok)
            assert len(comp) == 4 or comp[-1] == toy_policy.eos_id


@pytest.mark.assignment4
@pytest.mark.parametrize("temperature", [0.0, 1.0, 0.5])
def test_sampling_keeps_eos_and_writes_nothing_after_it(toy_tokenizer, temperature):
    """A model whose next token is certain (conftest.chain_table: 7 -> 8 -> 9 -> EOS -> 10, 4 -> 11 -> 12 ...):
    three rows that end at different steps of one batch. EOS is kept as the last token of its completion
    (it is part of the action), nothing follows it (a finished row feeds pads), and a row without EOS
    stops at the limit."""
    from conftest import chain_table, rigged_policy
    eos = toy_tokenizer.eos_token_id
    pol = rigged_policy(toy_tokenizer, chain_table(eos))
    comps, lps = models.sample(pol, [[5, 6, 7], [5, 9], [4]], 5, temperature, generator=torch.Generator().manual_seed(1))
    assert comps == [[8, 9, eos], [eos], [11, 12, 13, 14, 15]], comps
    assert [len(lp) for lp in lps] == [3, 1, 5]
    assert all(-1e-3 < lp <= 0 for row in lps for lp in row), lps  # certain tokens: log-prob 0
    assert models.sample(pol, [[5, 9]], 5, temperature)[0] == [[eos]]  # alone, the same


@pytest.mark.assignment4
@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_sampling_follows_the_temperature_on_a_two_token_model(toy_tokenizer, temperature):
    """After token 20 only tokens 21 and 22 have mass, logits 1 and 0: the sampler draws 21 with
    probability softmax([1, 0] / T)[0] = 1 / (1 + exp(-1 / T)) (0.881 at T = 0.5, 0.622 at T = 2; a sampler
    that ignores T draws it with 0.731), and reports log of that as its log-prob."""
    from conftest import rigged_policy
    pol = rigged_policy(toy_tokenizer, {20: {21: 1.0, 22: 0.0}})
    n = 4000
    comps, lps = models.sample(pol, [[20]] * n, 1, temperature, generator=torch.Generator().manual_seed(0))
    assert {tuple(c) for c in comps} == {(21,), (22,)}
    want = 1 / (1 + math.exp(-1 / temperature))
    share = sum(c == [21] for c in comps) / n
    assert abs(share - want) < 0.035, f"T = {temperature}: 21 drawn {share:.3f} of the time, softmax(l / T) says {want:.3f}"
    lp = {c[0]: l[0] for c, l in zip(comps, lps)}
    assert lp[21] == pytest.approx(math.log(want), abs=1e-3) and lp[22] == pytest.approx(math.log(1 - want), abs=1e-3)


def test_parsers_never_raise_and_count_failures():
    shown = [Line(10 + k, 0, "user", f"line {k}") for k in range(4)]
    assert agents.parse_ids("2 4 2 99", shown) == ([11, 13], True)
    assert agents.parse_ids("2, 4.", shown) == ([11, 13], True)
    assert agents.parse_ids("[1] [3]", shown) == ([10, 12], True)
    assert agents.parse_ids("no numbers", shown) == ([], False)
    assert agents.parse_ids("99", shown) == ([], False)
    assert agents.parse_ids("none", shown) == ([], True)
    assert agents.parse_profile(" none") == ([], True)
    assert agents.parse_profile("pet cat milo ; likes jazz ;") == (["pet cat milo", "likes jazz"], True)
    assert agents.parse_profile("pet cat milo\n\n hometown oslo ;") == (["pet cat milo", "hometown oslo"], True)
    assert agents.parse_profile("") == ([], False)
    assert agents.parse_profile(" ; \n ") == ([], False)
    opts = ["milo", "rex", "something with jazz", "luna"]
    ok = "<information> 1 3 </information> <final_answer> something with jazz </final_answer>"
    assert agents.parse_answer(ok, shown, opts) == ([10, 12], "c", True)
    assert agents.parse_answer("<information></information><final_answer>(d)</final_answer>", shown, opts)[1:] == ("d", True)
    assert agents.parse_answer("<information> 1 </information> <final_answer> nobody </final_answer>", shown, opts)[1:] == (None, False)
    assert agents.parse_answer("<final_answer", shown, opts) == ([], None, False)


# The failure shapes zero-shot SmolLM2-135M-Instruct actually wrote (issue 8): each is a format failure.
ECHOED_EXTRACTION = "Extract : [1] user : i have a cat named milo . [2] assistant : that sounds great . [3] user : hi"
NUMBERED_LIST = "1. espresso\n2. coffee\n3. tea\n4. cocoa"
RESTATED_PROFILE = ("Below are lines a user said. Write the user's profile as short statements separated by ' ; ', "
                    "for example: pet cat milo ; hometown oslo")


@pytest.mark.parametrize("text", [ECHOED_EXTRACTION, NUMBERED_LIST, "the lines 3 and 4", "3 4 user : hi",
                                  "Lines to keep: 3 4"])
def test_extraction_parser_rejects_numbers_inside_copied_text(text):
    shown = [Line(k, 0, "user", f"line {k}") for k in range(6)]
    assert agents.parse_ids(text, shown) == ([], False)


@pytest.mark.parametrize("text", [RESTATED_PROFILE, "profile : [1] i have a cat named milo . =>",
                                  "pet cat milo ; user : i have a cat", "[2] music likes jazz"])
def test_profile_parser_rejects_copied_prompts(text):
    assert agents.parse_profile(text) == ([], False)


def test_statement_length_rule():
    n = agents.MAX_STATEMENT_WORDS
    assert agents.parse_profile(" ".join(["word"] * n))[1]
    assert agents.parse_profile(" ".join(["word"] * (n + 1))) == ([], False)


def test_retrieval_parser_rejects_a_numbered_list_without_tags():
    shown = [Line(k, 0, "user", f"line {k}") for k in range(4)]
    opts = ["espresso", "coffee", "tea", "cocoa"]
    assert agents.parse_answer(NUMBERED_LIST, shown, opts) == ([], None, False)
    # the answer alone, without the <information> block, is not the format either
    assert agents.parse_answer("<final_answer> tea </final_answer>", shown, opts) == ([], "c", False)


def test_retrieval_budget_keeps_the_most_recent_lines(toy_policy):
    memory = [Line(k, k, "user", "i have a cat named milo .") for k in range(40)]
    _, shown = agents.retrieval_prompt(toy_policy, memory, [], "q ?", ["a", "b", "c", "d"], Budgets(memory=60))
    assert shown and shown[-1].id == 39 and len(shown) < 40
    assert [l.id for l in shown] == list(range(40 - len(shown), 40))


@pytest.mark.uses_solutions
def test_shipped_checkpoint_follows_every_format():
    """The shipped warm start loads and, greedy, writes parseable output for each agent."""
    if not (models.TINY_CHECKPOINT / "retrieval" / "config.json").exists():
        pytest.fail(f"the shipped warm start is missing: {models.TINY_CHECKPOINT}")
    import comam
    from data.generate import generate
    examples = generate(4, seed=123, prefix="t")[:12]
    policies = {r: models.load_policy("tiny", r) for r in agents.ROLES}
    groups = comam.rollout(policies, examples, 1, Budgets(), agents.MaxNew(), temperature=0.0)
    trajs = [t for g in groups for t in g]
    for role in ("extraction", "profile"):
        ok = sum(t.actions[role].ok for t in trajs) / len(trajs)
        assert ok >= 0.9, (role, ok, [t.actions[role].text for t in trajs[:3]])
    texts = [t.actions["retrieval"].text for t in trajs]
    tags = sum(all(tag in x for tag in agents.TAGS) for x in texts) / len(texts)
    assert tags >= 0.9, texts  # the output format: both tag pairs
    chosen = sum(t.answer is not None for t in trajs) / len(trajs)
    assert chosen >= 0.75, texts  # an answer that is one of the options (else: a made-up value)


def test_fit_keeps_the_leading_or_the_newest_texts(toy_policy):
    """The worked example of agents.fit: 3, 4 and 2 words cost 7, 8 and 6 tokens with the "[k]" prefix."""
    texts = ["i have a", "i have a cat", "i have"]
    assert agents.fit(toy_policy, texts, 12) == [0]
    assert agents.fit(toy_policy, texts, 12, newest=True) == [2]
    assert agents.fit(toy_policy, texts, 14, newest=True) == [1, 2]
    assert agents.fit(toy_policy, texts, 21) == [0, 1, 2] and agents.fit(toy_policy, [], 10) == []


def _double_policy(toy_tokenizer):
    model = warmstart.build_tiny(toy_tokenizer, hidden=32, layers=2, heads=2, seed=4).double()
    return models.Policy(model, toy_tokenizer, "toy64")


SHARED_BATCHES = {
    # the G rows of two queries: identical prompts of different lengths (left padding in the prefix
    # forward), completions of different lengths, with and without EOS (pad == eos)
    "groups": ([[5, 6, 7, 8, 9]] * 3 + [[10, 11, 12]] * 2, [[20, 21, 1], [22], [23, 24, 25, 26], [27, 1], [28, 29]]),
    # different prompts behind one long common prefix (a chat model's instruction)
    "common prefix": ([[3, 4, 5, 6, 7, 8, 30], [3, 4, 5, 6, 7, 8, 31, 32], [3, 4, 5, 6, 7, 8, 33, 34, 35]],
                      [[40, 1], [41, 42, 43], [44]]),
}
# both levels at once: a common head (computed once for the whole call), under it two groups of
# identical prompts of different lengths (each computed once for its rows) and two single rows
GROUPS_UNDER_A_HEAD = ([[3, 4, 5, 6, 7, 8, 9, 30, 31]] * 3 + [[3, 4, 5, 6, 7, 8, 9, 32]] * 2
                       + [[3, 4, 5, 6, 7, 8, 9, 33, 34, 35], [3, 4, 5, 6, 7, 8, 9, 36]],
                       [[40, 1], [41, 42, 43], [44], [45, 46, 1], [47], [48, 49], [1]])


@pytest.mark.assignment3
@pytest.mark.parametrize("case", list(SHARED_BATCHES))
def test_shared_prompt_log_probs_and_gradients_equal_the_plain_path(case, toy_tokenizer, monkeypatch):
    """float64 on CPU: the shared-prefix update computes the same per-token log-probs, and the same
    gradients, as one forward per row. (transformers' RMSNorm computes in float32 even in a float64
    model; it is replaced here by the same formula in float64, so that both paths agree to 1e-12.)"""
    _shared_equals_plain(*SHARED_BATCHES[case], toy_tokenizer, monkeypatch)


@pytest.mark.uses_solutions
@pytest.mark.parametrize("buckets", [1, "by length"])
def test_a_head_and_groups_under_it_are_each_computed_once_with_the_same_numbers(buckets, toy_tokenizer,
                                                                                 monkeypatch):
    """sharing.py's two levels together (the extraction call of a chat model): the head once for the
    call, each group's prompt once under it; and rows split into buckets of similar length (each
    computing its prefixes again). Log-probs and gradients equal the plain path's (float64)."""
    prompts, comps = GROUPS_UNDER_A_HEAD
    if buckets == "by length":  # the two single rows write long completions
        comps = comps[:5] + [[48] * 9 + [49], [50] * 9 + [1]]
    prefixes, owner = sharing.prefix_plan(prompts)
    assert prefixes == [prompts[0][:-1], prompts[3][:-1]] and owner == [0, 0, 0, 1, 1, 1, 1]
    assert sharing.head_pays(prefixes, sharing.common_prefix(prefixes))  # the prefixes' head: once too
    rests = [len(p) - len(prefixes[o]) + len(c) for p, c, o in zip(prompts, comps, owner)]
    if buckets == "by length":  # any saving splits: the long rows [5 6] from the others
        monkeypatch.setattr(sharing, "MIN_BUCKET_SAVING", (0.0, 0))
        assert sharing.rest_buckets(rests, owner, [len(p) for p in prefixes]) == [[0, 1, 2, 3, 4], [5, 6]]
    else:
        assert sharing.rest_buckets(rests, owner, [len(p) for p in prefixes]) == [list(range(len(prompts)))]
    _shared_equals_plain(prompts, comps, toy_tokenizer, monkeypatch)


def _shared_equals_plain(prompts, comps, toy_tokenizer, monkeypatch):
    import transformers.models.qwen2.modeling_qwen2 as qwen2

    def rms_norm_float64(self, h):
        return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))
    monkeypatch.setattr(qwen2.Qwen2RMSNorm, "forward", rms_norm_float64)
    assert sharing.prefix_plan(prompts) is not None  # the batch is shared
    pol = _double_policy(toy_tokenizer)
    results = []
    for share in (False, True):
        pol.model.zero_grad()
        logprobs = sharing.completion_logprobs if share else models.completion_logprobs
        logp, mask = logprobs(pol.model, prompts, comps, pol.pad_id, 0.7)
        (logp * torch.arange(1, logp.shape[1] + 1, dtype=logp.dtype)).sum().backward()  # weights differ per token
        results.append((logp.detach(), mask, [p.grad.clone() for p in pol.model.parameters()]))
    (a, ma, ga), (b, mb, gb) = results
    assert torch.equal(ma, mb)
    assert torch.allclose(a.double(), b.double(), atol=1e-10)
    for x, y in zip(ga, gb):
        assert (x - y).abs().max() <= 1e-12 * y.abs().max()


@pytest.mark.assignment4
@pytest.mark.parametrize("case", ["identical prompts", "a long common prefix"])
def test_shared_prompt_sampling_equals_the_plain_sampler(case, toy_policy):
    """Identical prompts computed once, and a common prefix (a chat instruction) computed once with the
    remainders right-aligned behind it: the same tokens and log-probs as every prompt in full."""
    if case == "identical prompts":
        prompts = [[5, 6, 7, 8]] * 3 + [[9, 10]] * 2 + [[11, 12, 13]]
    else:
        instruction = list(range(20, 44))
        prompts = [instruction + [50]] * 2 + [instruction + [51, 52, 53]] + [instruction + [54, 55]]
        assert sharing.common_prefix(sharing.distinct_rows(prompts)[0]) == len(instruction)
    for temperature in (0.0, 1.0):
        runs = [models.sample(dataclasses.replace(toy_policy, sharing=sharing if share else None), prompts, 6, temperature,
                              generator=torch.Generator().manual_seed(2)) for share in (False, True)]
        assert runs[0][0] == runs[1][0]
        for x, y in zip(runs[0][1], runs[1][1]):
            assert x == pytest.approx(y, abs=1e-5)


def test_a_chat_models_answer_is_the_option_it_names_else_its_letter():
    """by_letter (chat models): the words before the last bracketed letter choose the option whose first
    ANSWER_WORDS words they are; when they name no option (or several), the letter decides; an answer
    cut by the generation limit after its letter counts, one cut before it counts if its first
    ANSWER_WORDS words name one option (a long option copied on; among options that open alike, the
    one it follows furthest), and does not if they name nothing;
    the tiny model's text answers keep working."""
    shown = [Line(k, 0, "user", f"line {k}") for k in range(4)]
    opts = ["milo", "rex", "luna", "coco"]
    info = "<information> 2 </information> "
    def chat(answer, options=opts):
        return agents.parse_answer(info + answer, shown, options, by_letter=True)
    assert chat("<final_answer> rex (b) </final_answer>") == ([1], "b", True)
    assert chat("<final_answer> rex (c) </final_answer>")[1:] == ("b", True)  # named rex: the value wins
    assert chat("<final_answer> my pet (c) </final_answer>")[1:] == ("c", True)  # names nothing: the letter
    assert chat("<final_answer> (b) rex </final_answer>")[1:] == ("b", True)  # the older letter-first layout
    assert chat("<final_answer> (a) or rather (c)")[1:] == ("c", True)
    assert chat("<final_answer> Luna (c) </final_")[1:] == ("c", True)  # cut after the letter
    assert chat("<final_answer> it's great that you came")[1:] == (None, False)  # cut before it
    assert chat("<final_answer> rex </final_answer>")[1:] == ("b", True)
    assert chat("<final_answer> b </final_answer>")[1:] == ("b", True)
    two = ["the same six words of text here a", "the same six words of text here b", "x", "y"]
    assert chat("<final_answer> the same six words of text (d) </final_answer>", two)[1:] == ("d", True)  # two named: the letter
    long = ["I remember you mentioned how impactful these workshops were for you.", "It's surprising to hear that.",
            "I remember you mentioned a trip once.", "Music helps."]
    def chat_long(answer):
        return chat(answer, long)[1:]
    # copied on past the first words and cut by the limit before the letter: the first words name (a)
    assert chat_long("<final_answer> I remember you mentioned how impactful these workshops were for you in") == ("a", True)
    assert chat_long("<final_answer> i remember you mentioned, how impactful these events (d) </final_answer>") == ("a", True)
    assert chat_long("<final_answer> I remember you mentioned a workshop") == (None, False)  # six words, no option's
    assert chat_long("<final_answer> I remember you mentioned a workshop (c) </final_answer>") == ("c", True)
    alike = ["Given your concerns, it might be helpful to rest.", "Given your concerns, it could help to plan.",
             "Given your concerns, it might be effective to plan ahead.", "Given your concerns, exploring art helps."]
    def chat_alike(answer):
        return chat(answer, alike)[1:]
    # options that open alike: the words followed furthest name the option; stopping inside the shared
    # opening names all that share it, and the letter decides
    assert chat_alike("<final_answer> given your concerns, it might be effective to plan") == ("c", True)
    assert chat_alike("<final_answer> Given your concerns, it might be helpful (d) </final_answer>") == ("a", True)
    assert chat_alike("<final_answer> Given your concerns, it might be (b) </final_answer>") == ("b", True)
    assert chat_alike("<final_answer> Given your concerns, it might be") == (None, False)
    assert agents.parse_answer(info + "<final_answer> (c) it's great that", shown, opts)[1:] == (None, False)  # tiny: tags
    assert agents.parse_answer(info + "<final_answer> rex </final_answer>", shown, opts)[1:] == ("b", True)
    assert agents.parse_answer(info + "<final_answer> rex (c) </final_answer>", shown, opts)[1:] == (None, False)


def test_a_chat_models_demonstrated_answer_parses_back_to_its_option():
    """The warm start's target for a chat model: the option's first ANSWER_WORDS words, then its letter;
    parse_answer reads every option's target back as that option (long PersonaMem-like options too)."""
    class ChatTokenizer:
        chat_template = "{{ messages }}"
    chat = models.Policy(None, tokenizer=ChatTokenizer())
    opts = ["rex", "from jazz to techno",
            "Absolutely, music can play a powerful role in therapeutic practices.", "a (d) in the text"]
    assert agents.answer_text(chat, opts, 0) == "rex (a)"
    assert agents.answer_text(chat, opts, 2) == "Absolutely, music can play a powerful (c)"
    assert agents.answer_text(models.Policy(None, tokenizer=None), opts, 2) == opts[2]  # tiny: the whole text
    shown = [Line(0, 0, "user", "i have a dog named rex .")]
    for i, letter in enumerate("abcd"):
        target = agents.answer_target(shown, [0], agents.answer_text(chat, opts, i))
        assert agents.parse_answer(target, shown, opts, by_letter=True) == ([0], letter, True)
