"""The three agents of CoMAM (docs/method.md §1): their roles, prompts, context budgets and parsers.

    extraction  (agent 0): numbered history lines            -> ids of the lines it keeps;  M_f = those lines
    profile     (agent 1): M_f                               -> profile statements M_c ("pet cat milo ; likes jazz")
    retrieval   (agent 2): M = (M_f, M_c), question, options -> "<information> ids </information>
                                                                 <final_answer> answer </final_answer>"

Agents act on numbered lines (docs/method.md, decision 1): line numbers in a prompt are local (1..k, in the
order shown) and the environment maps them back to the history's global line ids, so that Eq. 9 and
Eq. 11 are exact set operations. The final answer (decision 2) is the chosen option's first words
and then its letter, "rex (b)", for a chat model (the option its words name decides, else the letter),
and the option's *text* for the tiny model (a bare letter is a hop the tiny model does not learn; it
also may write a letter).

Each agent has a fixed context budget in tokens (`Budgets`). Content that does not fit is truncated by
one rule: extraction and profile inputs keep their first lines (a session's tail is lost); the
retrieval agent keeps the *most recent* memory lines and profile statements (the oldest are lost).
So over-long memory has a real cost downstream.

Parsers never raise: unparseable output gives an empty result, `ok=False`, scored 0 and counted as a
format failure. The model that writes the outputs (loading, sampling, log-probs) is models.py's.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from data.example import LETTERS, Example, Line
from data.example import ROLES  # noqa: F401  the agents' names, which callers read as agents.ROLES
from models import Policy
from rewards import normalise

TAGS = ["<information>", "</information>", "<final_answer>", "</final_answer>"]
# the fixed words of the tiny prompts (below), always in the tiny vocabulary
PROMPT_WORDS = "extract profile memory question options user assistant none : ; [ ] ( ) => a b c d"
NONE = "none"  # what the extraction and profile agents write when there is nothing to keep


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
    "retrieval": """You are the answer agent of a memory system. Below are numbered memory lines about a user, the user's profile, a question from the user and four options (a) to (d). Write the numbers of the memory lines that support the answer inside <information> </information>, then the option you choose inside <final_answer> </final_answer>: its first words (at most six), then its letter in brackets. Reply with these two parts and nothing else.

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
Reply: <information> 2 </information> <final_answer> rex (b) </final_answer>""",
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
    fitting = fit(policy, texts, budget.extraction)  # indices of the lines the budget holds
    shown, texts = [lines[i] for i in fitting], [texts[i] for i in fitting]
    if policy.chat:
        return render(policy, "extraction", "Lines:\n" + numbered(texts, "\n")), shown
    return render(policy, "extraction", f"extract : {numbered(texts)} =>"), shown


def profile_prompt(policy: Policy, memory_lines: list[Line], budget: Budgets) -> list[int]:
    """Prompt ids for M_f, the kept lines (the first that fit)."""
    texts = [l.text for l in memory_lines]
    shown = [texts[i] for i in fit(policy, texts, budget.profile)]
    if policy.chat:
        return render(policy, "profile", "Lines:\n" + numbered([f"user : {t}" for t in shown], "\n"))
    return render(policy, "profile", f"profile : {numbered(shown)} =>")


def retrieval_prompt(policy: Policy, memory_lines: list[Line], profile: list[str], question: str,
                     options: list[str], budget: Budgets) -> tuple[list[int], list[Line]]:
    """Prompt ids for M_f, M_c and the question, and the memory lines shown (the most recent that fit)."""
    shown = [memory_lines[i] for i in fit(policy, [l.text for l in memory_lines], budget.memory, newest=True)]
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


ANSWER_WORDS = 6  # a chat model's answer repeats at most this many words of the option before its letter


def first_words(option: str) -> str:
    """The words of an option a chat model's answer repeats before its letter: its first ANSWER_WORDS.

    >>> first_words("my new job keeps me very busy")
    'my new job keeps me very'
    """
    return " ".join(option.split()[:ANSWER_WORDS])


def named_options(value: str, options: list[str]) -> list[int]:
    """The options a chat model's answer words `value` name (`parse_answer`): those whose first
    ANSWER_WORDS words `value` begins with (all of a short option; compared after `rewards.normalise`),
    and of these only the ones it follows furthest. One index: the option it named; several: the
    words stop inside a beginning the options share (PersonaMem's options often open alike); none:
    a paraphrase, or no words.

    >>> named_options("rex", ["milo", "rex", "luna", "coco"]), named_options("my pet", ["milo", "rex"])
    ([1], [])
    >>> opts = ["Given your concerns it might be helpful to rest", "Given your concerns it might be effective to plan"]
    >>> named_options("given your concerns, it might be effective to", opts), named_options("Given your concerns it might be", opts)
    ([1], [0, 1])
    """
    words = normalise(value).split()
    def shared(option):  # how many words `value` repeats from the option's start; 0 unless it covers its first words
        head, ow = normalise(first_words(option)).split(), normalise(option).split()
        if not head or words[:len(head)] != head:
            return 0
        n = len(head)
        while n < min(len(words), len(ow)) and words[n] == ow[n]:
            n += 1
        return n
    lengths = [shared(o) for o in options]
    return [i for i, n in enumerate(lengths) if n and n == max(lengths)]


def answers_by_letter(policy: Policy) -> bool:
    """The final-answer format (docs/method.md, decision 2): a chat model writes the chosen option's
    first words, then its letter, "rex (b)": the option those words name decides, else the letter
    (`parse_answer`); the tiny model writes the option's text (it does not learn the hop from a
    value to its letter). Value first, because the value is what the memory holds: a model that must
    write the letter first decides before it has looked (SmolLM2 answered "(a) <option a>" to almost
    every question). The letter last, because PersonaMem's options are whole sentences that a small
    model paraphrases or truncates when it must copy them, so only their first words are repeated."""
    return policy.chat


def answer_text(policy: Policy, options: list[str], index: int) -> str:
    """What the retrieval agent writes inside <final_answer> to choose options[index] (demonstrations):
    for a chat model the option's first ANSWER_WORDS words and its letter, "rex (b)"; for the tiny
    model the text "rex".

    >>> from models import Policy
    >>> answer_text(Policy(None, tokenizer=None), ["milo", "rex"], 1)
    'rex'
    """
    if answers_by_letter(policy):
        return f"{first_words(options[index])} ({LETTERS[index]})"
    return options[index]


def parse_answer(text: str, shown: list[Line], options: list[str],
                 by_letter: bool = False) -> tuple[list[int], str | None, bool]:
    """(retrieved global ids E'_q, chosen letter or None, ok) from the retrieval agent's output.

    The answer inside <final_answer>, with `by_letter` (a chat model, `answers_by_letter`): the words
    before its last bracketed letter (all of them when there is no letter) choose the option they
    name (`named_options`: they begin with its first ANSWER_WORDS words); if they name no option or
    several (a paraphrased PersonaMem sentence), the letter decides; a bare letter "b" counts too. An
    answer cut by the generation limit still counts if its letter or its naming words made it ("rex
    (b) </fin"; a long option copied on and cut before the letter). Without `by_letter` (tiny): an
    option's whole text chooses it, or a letter "(c)" / "c", or an answer that starts with "(c)".
    ok needs the <information> block and an answer; without the tags (e.g. a numbered list "1.
    espresso 2. coffee") nothing is retrieved or chosen.
    Worked example, options [milo, rex, luna, coco], after "<information> 2 </information>":
    "<final_answer> rex (b) </final_answer>" -> b either way; "<final_answer> rex (c) </final_answer>"
    -> b (the named value wins over a mismatched letter); "<final_answer> my pet (c) </final_answer>"
    -> c; "<final_answer> rex </final_answer>" -> b either way.
    """
    info = re.search(r"<information>(.*?)</information>", text, re.S)
    ans = re.search(r"<final_answer>(.*?)</final_answer>", text, re.S)
    if ans is None and by_letter:  # cut by the generation limit (after the letter, or after the naming words)
        ans = re.search(r"<final_answer>(.*)$", text, re.S)
    ids = _ids_of(info.group(1), shown) if info else []
    letter = None
    if ans:
        raw = ans.group(1).strip()
        bare = re.fullmatch(r"\(?\s*([a-dA-D])\s*\)?", raw)
        if by_letter:
            bracketed = list(re.finditer(r"\(\s*([a-dA-D])\s*\)", raw))
            named = named_options(raw[:bracketed[-1].start()] if bracketed else raw, options)
            written = bracketed[-1] if bracketed else bare
        else:
            norm = normalise(raw)
            named = [i for i, o in enumerate(options) if norm and normalise(o) == norm][:1]
            written = re.match(r"^\(?\s*([a-dA-D])\s*\)", raw) or bare
        if len(named) == 1:
            letter = LETTERS[named[0]]
        elif written:
            letter = written.group(1).lower()
    return ids, letter, bool(info) and letter is not None


def answer_target(shown: list[Line], evidence: list[int], answer: str) -> str:
    """The retrieval agent's output format (used for demonstrations); `answer` from `answer_text`."""
    nums = " ".join(str(k) for k, l in enumerate(shown, 1) if l.id in set(evidence))
    return f"<information> {nums} </information> <final_answer> {answer} </final_answer>"
