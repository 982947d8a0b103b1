"""rewards.py against hand-worked values of Eqs. 9-12."""

import pytest

import rewards
from rewards import extraction_reward, global_reward, profile_reward, retrieval_reward


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


@pytest.mark.assignment1
def test_profile_statements_empty_after_normalisation_are_dropped():
    assert profile_reward(["", " ; ", "Pet cat milo!"], ["pet cat milo"]) == 1.0  # no unsupported statement
    assert profile_reward([".", "  "], []) == 1.0  # nothing said, nothing to say
    assert profile_reward(["likes tacos"], ["", "likes tacos"]) == 1.0  # an empty gold statement is not owed


# ---------------------------------------------------------------- Eq. 12


@pytest.mark.assignment1
def test_global_reward():
    assert global_reward("c", "c") == 1.0
    assert global_reward("a", "c") == 0.0
    assert global_reward(None, "c") == 0.0
    assert global_reward("(C)", "c") == 1.0
    assert global_reward("c", "(c)") == 1.0
    assert global_reward(" C ", "c") == 1.0 and global_reward("(c)", " (C) ") == 1.0  # both sides normalised


# ---------------------------------------------------------------- the four rewards of one trajectory


@pytest.mark.assignment1
def test_a_trajectory_scores_each_agent_on_its_own_output():
    """comam.Trajectory.score on a trajectory worked by hand: extraction is scored on the lines it kept
    (M_f), retrieval on the lines it cited (E'_q), the profile on its statements, the answer on its letter."""
    import comam
    from data.example import Example, Line, Session
    lines = [Line(k, 0, "user" if k % 2 == 0 else "assistant", f"line {k}") for k in range(6)]
    session = Session(0, "2024-01-01", lines, notes={2: ["pet cat milo"], 4: ["food likes tacos"]})
    ex = Example("q", "u", "recalling_facts_mentioned_by_the_user", "?", ["a", "b", "c", "d"], "b", [session],
                 evidence=[2, 4], evidence_session=0)
    t = comam.Trajectory(ex, memory_lines=[lines[1], lines[2]], profile=["pet cat milo", "likes sushi"],
                         retrieved=[2, 4, 5], answer="b")
    t.score()
    # M_f = {1, 2}, E = {2, 4}: recall 1/2, IoU 1/3          -> r_0 = 0.8 * 1/2 + 0.2 * 1/3
    # statements: 1 correct, 1 unsupported, 2 owed           -> r_1 = max(0, 1 - 1) / 2 = 0
    # E'_q = {2, 4, 5}: recall 1, IoU 2/3                    -> r_2 = 0.2 * 1 + 0.8 * 2/3
    assert t.local_rewards == pytest.approx([0.8 / 2 + 0.2 / 3, 0.0, 0.2 + 0.8 * 2 / 3])
    assert t.global_reward == 1.0
    t.answer = None  # an answer that did not parse
    t.score()
    assert t.global_reward == 0.0
