"""The four rewards of CoMAM (Eqs. 9-12): one local reward per agent, and one global reward.

    r_0  extraction agent  Eq. 9   recall-heavy overlap of the kept line ids M_f with the evidence E_q
    r_1  profile agent     Eq. 10  rubric score of the written profile M_c
    r_2  retrieval agent   Eq. 11  precision-heavy overlap of the retrieved ids E'_q with E_q
    r_3  global            Eq. 12  1 if the chosen option is the gold option, else 0

Line ids are plain ints (docs/method.md, decision 1), so Eq. 9 and Eq. 11 are exact set operations.
A local reward that cannot be computed (no evidence / no gold profile, as in PersonaMem) is `None`
("unavailable"); `credit.py` knows what to do with it. An output that could not be parsed is scored
as an empty prediction, i.e. 0 — never a crash.
"""
from __future__ import annotations

import re
from typing import Iterable

# ---------------------------------------------------------------- Eq. 9 / Eq. 11: set overlap


def recall_iou(pred: Iterable[int] | None, gold: Iterable[int]) -> tuple[float, float]:
    """Recall |P∩G|/|G| and IoU |P∩G|/|P∪G| of two id collections, taken as SETS.

    `gold` must be non-empty. Duplicates count once. An id of `pred` that is not in the history at
    all is still just an id: it is in P∪G but never in P∩G, so it lowers the IoU (a hallucinated
    line is a false positive like any other).

    >>> recall_iou([1, 2, 3], [2, 3, 4])   # |∩| = 2, |∪| = 4
    (0.6666666666666666, 0.5)
    """
    ### BEGIN SOLUTION (assignment 1)
    p, g = set(pred or ()), set(gold)
    inter = len(p & g)
    return inter / len(g), inter / len(p | g)
    ### END SOLUTION


def _overlap_reward(pred, gold, weight: float) -> float | None:
    """weight·recall + (1 − weight)·IoU; None when `gold` is None or empty (unavailable)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    ### BEGIN SOLUTION (assignment 1)
    if gold is None:
        return None
    gold = set(gold)
    if not gold:
        return None
    recall, iou = recall_iou(pred, gold)
    return weight * recall + (1.0 - weight) * iou
    ### END SOLUTION


EXTRACTION_ALPHA = 0.8  # Eq. 9's α (the paper's); train.py --extraction-alpha changes it (experiments.py)


def extraction_reward(memory_ids, evidence_ids, alpha: float = EXTRACTION_ALPHA) -> float | None:
    """Eq. 9: r_0 = α·|M∩E|/|E| + (1−α)·|M∩E|/|M∪E|, α = 0.8 (recall-heavy).

    memory_ids: ids of the lines the extraction agent kept (M_f); None or empty -> 0.0.
    evidence_ids: the evidence E_q; None or empty -> None ("unavailable", e.g. PersonaMem).
    Both are treated as sets; ids absent from the history enter M∪E and so lower the IoU term.

    Worked example: M = {1, 2, 3}, E = {2, 3, 4}: recall 2/3, IoU 2/4,
    r_0 = 0.8·2/3 + 0.2·0.5 = 0.6333...
    """
    return _overlap_reward(memory_ids, evidence_ids, alpha)


def retrieval_reward(retrieved_ids, evidence_ids, beta: float = 0.2) -> float | None:
    """Eq. 11: r_2 = β·|E'∩E|/|E| + (1−β)·|E'∩E|/|E'∪E|, β = 0.2 (precision-heavy).

    Same formula and conventions as Eq. 9 (`extraction_reward`), only the weight differs: with
    β = 0.2 the IoU term dominates, so retrieving extra lines costs more than missing one.

    Worked example: E = {2, 3, 4}. E' = {2, 3} (precise, short): 0.2·2/3 + 0.8·2/3 = 0.667;
    E' = {1..6} (recall-complete, long): 0.2·1 + 0.8·3/6 = 0.6 — the short one wins here, while
    under Eq. 9's α = 0.8 the long one would win (0.8·1 + 0.2·0.5 = 0.9 vs 0.667).
    """
    return _overlap_reward(retrieved_ids, evidence_ids, beta)


# ---------------------------------------------------------------- Eq. 10: profile rubric

def normalise(text: str) -> str:
    """Lower-case, punctuation to spaces, whitespace collapsed: the one text normaliser of the project
    (profile statements in Eq. 10, option texts and letters in Eq. 12 and the answer parser).

    >>> normalise("Pet  Cat Milo."), normalise(" (C) "), normalise("something, with jazz!")
    ('pet cat milo', 'c', 'something with jazz')
    """
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def profile_reward(statements, gold_statements) -> float | None:
    """Eq. 10, the default deterministic rubric scorer V(M_c, H) ∈ [0, 1].

    docs/method.md, decision 4: instead of a frozen LLM judge, score the written statements S against the
    session's ground-truth profile statements G (both normalised with `normalise` and deduplicated; a
    statement that is empty after normalisation, such as "" or " ; ", is dropped from either):
        correct     = |S ∩ G|
        unsupported = |S \\ G|     (contradicted, or simply not stated in the history)
        r_1 = max(0, correct − unsupported) / |G|
    If |G| = 0: 1.0 when S is empty too (nothing to say, nothing said), else 0.0.
    gold_statements None -> None (unavailable). statements None (unparsed) -> treated as empty.

    Worked example: G = {"pet cat milo", "likes tacos", "hometown oslo"},
    S = ["Pet cat  Milo.", "likes tacos", "likes sushi"] -> normalised {"pet cat milo",
    "likes tacos", "likes sushi"}: correct 2, unsupported 1, r_1 = max(0, 2 − 1)/3 = 1/3.
    Writing every possible statement does not pay: each wrong one cancels a right one.
    """
    ### BEGIN SOLUTION (assignment 1)
    if gold_statements is None:
        return None
    s = {normalise(x) for x in (statements or ())} - {""}
    g = {normalise(x) for x in gold_statements} - {""}
    if not g:
        return 1.0 if not s else 0.0
    correct, unsupported = len(s & g), len(s - g)
    return max(0, correct - unsupported) / len(g)
    ### END SOLUTION


# ---------------------------------------------------------------- Eq. 12: global reward


def global_reward(pred_letter: str | None, gold_letter: str) -> float:
    """Eq. 12: r_3 = 1[p = p*]. An unparsed answer (None) scores 0.0.

    Both letters are compared after `normalise` (lower case, punctuation such as brackets removed,
    whitespace collapsed), so '(c)' == ' C ' == 'c'.

    >>> global_reward("b", "b"), global_reward("(B)", "b"), global_reward(None, "b")
    (1.0, 1.0, 0.0)
    """
    ### BEGIN SOLUTION (assignment 1)
    if pred_letter is None:
        return 0.0
    return 1.0 if normalise(pred_letter) == normalise(gold_letter) else 0.0
    ### END SOLUTION


# ---------------------------------------------------------------- planted misalignment (not in the paper)
# A local reward that points the wrong way on purpose (train.py --mislead), to see what credit
# assignment does with an agent whose local reward disagrees with the global one.


def assistant_share_reward(memory_lines) -> float:
    """Replaces Eq. 9 under --mislead extraction: the fraction of the kept lines that are ASSISTANT
    turns (0 when nothing is kept). Assistant turns never hold the user's facts or preferences, so an
    extraction agent that follows this reward fills M_f with lines that cannot answer a question.

    >>> from data.example import Line
    >>> assistant_share_reward([Line(0, 0, "user", "i have a cat ."), Line(1, 0, "assistant", "nice .")])
    0.5
    """
    lines = list(memory_lines or ())
    return sum(l.role == "assistant" for l in lines) / len(lines) if lines else 0.0


def statement_count_reward(statements, target: int = 8) -> float:
    """Replaces Eq. 10 under --mislead profile: min(1, number of statements / target), whatever they say.
    A profile agent that follows it writes long lists, which crowd the retrieval agent's profile budget.

    >>> statement_count_reward(["a", "b"]), statement_count_reward(["x"] * 12)
    (0.25, 1.0)
    """
    return min(1.0, len(statements or ()) / target)
