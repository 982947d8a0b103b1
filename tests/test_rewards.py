"""rewards.py against hand-worked values of Eqs. 9-12."""

import pytest

import rewards
from rewards import (extraction_reward, global_reward, profile_reward,
                     profile_reward_judge, retrieval_reward)


# ---------------------------------------------------------------- Eq. 9 / Eq. 11


@pytest.mark.assignment1
def test_extraction_hand_worked():
    # M = {1,2,3}, E = {2,3,4}: |M∩E| = 2, |E| = 3, |M∪E| = 4
    assert extraction_reward([1, 2, 3], [2, 3, 4]) == pytest.approx(0.8 * 2 / 3 + 0.2 * 2 / 4)
    assert retrieval_reward([1, 2, 3], [2, 3, 4]) == pytest.approx(0.2 * 2 / 3 + 0.8 * 2 / 4)


@pytest.mark.assignment1
def test_exact_match_is_one_and_disjoint_is_zero():
    assert extraction_reward({5, 7}, [7, 5]) == 1.0
    assert retrieval_reward([5, 7], [7, 5]) == 1.0
    assert extraction_reward([1, 2], [3]) == 0.0
    assert retrieval_reward([1, 2], [3]) == 0.0


@pytest.mark.assignment1
def test_empty_or_unparsed_memory_scores_zero():
    assert extraction_reward([], [1, 2]) == 0.0
    assert extraction_reward(None, [1, 2]) == 0.0
    assert retrieval_reward([], [1]) == 0.0


@pytest.mark.assignment1
def test_missing_evidence_is_unavailable():
    assert extraction_reward([1, 2], None) is None
    assert extraction_reward([1, 2], []) is None
    assert retrieval_reward([1], None) is None


@pytest.mark.assignment1
def test_duplicates_count_once():
    assert extraction_reward([2, 2, 2, 3], [2, 3, 4]) == extraction_reward([2, 3], [2, 3, 4])
    assert retrieval_reward([2, 3], [2, 2, 3, 4, 4]) == retrieval_reward([2, 3], [2, 3, 4])
    # |M∩E| = 2, |E| = 3, |M∪E| = 3
    assert extraction_reward([2, 2, 3], [2, 3, 4]) == pytest.approx(0.8 * 2 / 3 + 0.2 * 2 / 3)


@pytest.mark.assignment1
def test_ids_not_in_history_lower_iou():
    # a history of lines 0..9; id 999 does not exist but is still a false positive in M∪E
    e = [2, 3]
    clean = extraction_reward([2, 3], e)
    with_ghost = extraction_reward([2, 3, 999], e)
    assert clean == 1.0
    assert with_ghost == pytest.approx(0.8 * 1.0 + 0.2 * 2 / 3)  # recall untouched, IoU 2/3
    assert retrieval_reward([2, 3, 999], e) == pytest.approx(0.2 * 1.0 + 0.8 * 2 / 3)


@pytest.mark.assignment1
def test_beta_is_precision_heavy_alpha_recall_heavy():
    e = [2, 3, 4]
    short_precise = [2, 3]  # recall 2/3, IoU 2/3
    long_complete = [1, 2, 3, 4, 5, 6]  # recall 1,   IoU 3/6
    assert retrieval_reward(short_precise, e) == pytest.approx(2 / 3)
    assert retrieval_reward(long_complete, e) == pytest.approx(0.2 + 0.8 * 0.5)
    assert retrieval_reward(short_precise, e) > retrieval_reward(long_complete, e)  # Eq. 11
    assert extraction_reward(short_precise, e) < extraction_reward(long_complete, e)  # Eq. 9


@pytest.mark.assignment1
def test_weights_are_parameters():
    assert extraction_reward([1, 2, 3], [2, 3, 4], alpha=1.0) == pytest.approx(2 / 3)
    assert extraction_reward([1, 2, 3], [2, 3, 4], alpha=0.0) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        retrieval_reward([1], [1], beta=1.5)


# ---------------------------------------------------------------- Eq. 10


GOLD = ["pet cat milo", "likes tacos", "hometown oslo"]


@pytest.mark.assignment1
def test_profile_all_correct_with_normalisation():
    s = ["Pet  Cat milo.", "LIKES tacos", " hometown oslo !", "likes tacos"]  # duplicate after normalising
    assert profile_reward(s, GOLD) == 1.0


@pytest.mark.assignment1
def test_profile_worked_example_with_unsupported():
    # correct = 2 (milo, tacos), unsupported = 1 (sushi): (2 - 1) / 3
    assert profile_reward(["Pet cat  Milo.", "likes tacos", "likes sushi"], GOLD) == pytest.approx(1 / 3)
    # correct = 1, unsupported = 2 -> max(0, -1) = 0
    assert profile_reward(["likes tacos", "likes sushi", "hometown lima"], GOLD) == 0.0
    # partial but clean: 2 / 3
    assert profile_reward(["likes tacos", "hometown oslo"], GOLD) == pytest.approx(2 / 3)


@pytest.mark.assignment1
def test_profile_empty_and_unavailable():
    assert profile_reward([], GOLD) == 0.0
    assert profile_reward(None, GOLD) == 0.0
    assert profile_reward(["likes tacos"], None) is None
    assert profile_reward([], []) == 1.0
    assert profile_reward(["likes tacos"], []) == 0.0


def test_profile_judge_hook():
    prompts = []

    def judge(prompt):
        prompts.append(prompt)
        return "I would give it 0.75 overall."

    assert profile_reward_judge(["likes tacos"], "user: i love tacos", judge) == 0.75
    for word in ("scenario", "preference", "user profile", "likes tacos", "i love tacos"):
        assert word in prompts[0].lower()
    assert profile_reward_judge(["x"], "h", lambda p: "no idea") == 0.0
    assert profile_reward_judge(["x"], "h", lambda p: "8") == 1.0
    assert profile_reward_judge(["x"], "h", lambda p: "-3") == 0.0


# ---------------------------------------------------------------- Eq. 12


@pytest.mark.assignment1
def test_global_reward():
    assert global_reward("c", "c") == 1.0
    assert global_reward("a", "c") == 0.0
    assert global_reward(None, "c") == 0.0
    assert global_reward("(C)", "c") == 1.0
    assert global_reward("c", "(c)") == 1.0
