"""credit.py against hand-worked values and stored brute-force results (Eqs. 13-15 and 7)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

import credit
from credit import CREDIT_MODES, consistency, credit_weights, group_advantages, integrated_rewards, ndcg


# ---------------------------------------------------------------- Eq. 13


# Stored results of a brute force over every order of the tied scores (the instructor's reference,
# kept out of the student copy, wrote them): local scores, gains, NDCG.
NDCG_CASES = json.loads((Path(__file__).parent / "fixtures" / "ndcg_cases.json").read_text())


@pytest.mark.assignment2
def test_ndcg_hand_worked():
    # rank 0,1,2 -> gains 0,1,1
    dcg = 0 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    idcg = 1 / math.log2(2) + 1 / math.log2(3) + 0 / math.log2(4)
    assert ndcg([0.9, 0.5, 0.1], [0, 1, 1]) == pytest.approx(dcg / idcg)
    assert ndcg([0.9, 0.5, 0.1], [0, 1, 1]) == pytest.approx(0.69342640)


@pytest.mark.assignment2
def test_ndcg_hand_worked_four():
    # local ranks trajectories 3, 0, 2, 1 -> gains 1, 0, 1, 0
    dcg = 1 / math.log2(2) + 0 / math.log2(3) + 1 / math.log2(4) + 0 / math.log2(5)
    idcg = 1 / math.log2(2) + 1 / math.log2(3)
    assert ndcg([0.7, 0.1, 0.3, 0.8], [0, 0, 1, 1]) == pytest.approx(dcg / idcg)


@pytest.mark.assignment2
def test_ndcg_tie_hand_worked():
    # tie {0, 1} at ranks 1-2 with gains {1, 0}: mean gain 0.5 at both positions
    dcg = 0.5 / math.log2(2) + 0.5 / math.log2(3) + 1 / math.log2(4)
    idcg = 1 + 1 / math.log2(3)
    assert ndcg([0.5, 0.5, 0.1], [1, 0, 1]) == pytest.approx(dcg / idcg)
    # a constant local reward says nothing: expected DCG over all orders, the mean gain 1/4 at every rank
    expected = 0.25 * sum(1 / math.log2(r + 1) for r in range(1, 5))
    assert ndcg([0.3] * 4, [1, 0, 0, 0]) == pytest.approx(expected / 1.0)


@pytest.mark.assignment2
def test_ndcg_ties_match_stored_brute_force_results():
    """120 stored cases (few distinct local scores: many ties)."""
    for case in NDCG_CASES:
        got = ndcg(case["local"], case["gains"])
        assert got == pytest.approx(case["ndcg"], abs=1e-12), (
            f"ndcg(local={case['local']}, gains={case['gains']}): yours {got!r}, "
            f"the stored brute force over tie orders {case['ndcg']!r}")


@pytest.mark.assignment2
def test_ndcg_perfect_agreement_and_all_equal_gains():
    assert ndcg([0.9, 0.1, 0.5, 0.0], [1, 0, 1, 0]) == pytest.approx(1.0)
    assert ndcg([0.1, 0.9], [0.2, 0.8]) == pytest.approx(1.0)
    for gains in ([0, 0, 0], [1, 1, 1]):
        assert ndcg([0.9, 0.5, 0.1], gains) == 1.0
        assert list(consistency(np.random.default_rng(1).random((3, 3)), gains)) == [1.0, 1.0, 1.0]


@pytest.mark.assignment2
def test_ndcg_bounds_and_errors():
    rng = np.random.default_rng(2)
    for _ in range(100):
        v = ndcg(rng.random(8), rng.integers(0, 2, 8))
        assert 0.0 <= v <= 1.0 + 1e-12
    with pytest.raises(ValueError):
        ndcg([0.1, 0.2], [1, 0, 1])
    with pytest.raises(ValueError):
        ndcg([0.1, 0.2], [-1, 0])


# ---------------------------------------------------------------- Eq. 14


@pytest.mark.assignment2
def test_softmax_weights():
    v = np.array([0.2, 0.9, 0.55])
    w = credit_weights(v)
    ref = np.exp(v.astype(np.float64)) / np.exp(v.astype(np.float64)).sum()
    assert w.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(w, ref, rtol=1e-12)
    np.testing.assert_allclose(credit_weights([1000.0, 1000.0, 999.0]), credit_weights([1.0, 1.0, 0.0]))
    assert np.isfinite(credit_weights([1e4, 0, 0])).all()


@pytest.mark.assignment2
def test_softmax_temperature_hand_worked():
    # v = [1, 0, 0], tau = 0.25: exp(4) / (exp(4) + 2) = 54.598 / 56.598 = 0.96466, and exp(0) / 56.598 = 0.01767
    w = credit_weights([1.0, 0.0, 0.0], tau=0.25)
    np.testing.assert_allclose(w, [0.96466, 0.01767, 0.01767], atol=1e-5)
    np.testing.assert_allclose(credit_weights([0.3, 0.8, 0.5], 1.0), credit_weights([0.3, 0.8, 0.5]))
    # the temperature flows through Eq. 15 in comam mode only
    _, v, w = integrated_rewards(LOCAL, GLOB, mode="comam", tau=0.1)
    ref = np.exp(v / 0.1) / np.exp(v / 0.1).sum()
    np.testing.assert_allclose(w, ref, rtol=1e-12)
    _, _, w_eq = integrated_rewards(LOCAL, GLOB, mode="equal", tau=0.1)
    np.testing.assert_allclose(w_eq, [1 / 3] * 3)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="temperature"):
            credit_weights([0.1, 0.2, 0.3], bad)


@pytest.mark.assignment2
def test_planted_consistent_agent_gets_largest_weight():
    rng = np.random.default_rng(3)
    for _ in range(50):
        glob = rng.integers(0, 2, size=8).astype(float)
        if glob.min() == glob.max():
            continue
        local = rng.random((3, 8))
        planted = int(rng.integers(0, 3))
        local[planted] = glob + 0.1 * rng.random(8)  # every success ranked above every failure
        _, v, w = integrated_rewards(local, glob)
        assert v[planted] == pytest.approx(1.0)
        assert w[planted] == pytest.approx(w.max())  # a random agent can only tie it by luck
        others = [n for n in range(3) if n != planted]
        assert all(w[n] < w[planted] for n in others if v[n] < 1 - 1e-12)


# ---------------------------------------------------------------- Eq. 15


LOCAL = np.array([[0.9, 0.5, 0.1, 0.3],
                  [0.2, 0.4, 0.6, 0.8],
                  [1.0, 0.0, 1.0, 0.5]])
GLOB = np.array([1.0, 0.0, 1.0, 0.0])


@pytest.mark.assignment2
def test_integrated_rewards_each_mode_vs_hand_formula():
    v_ref = np.array([ndcg(row, GLOB) for row in LOCAL])
    w_ref = np.exp(v_ref) / np.exp(v_ref).sum()

    r, v, w = integrated_rewards(LOCAL, GLOB, mode="comam")
    np.testing.assert_allclose(v, v_ref)
    np.testing.assert_allclose(w, w_ref)
    for n in range(3):
        for i in range(4):
            assert r[n, i] == pytest.approx(LOCAL[n, i] + w_ref[n] * GLOB[i])

    r, v, w = integrated_rewards(LOCAL, GLOB, mode="local")
    np.testing.assert_allclose(r, LOCAL)
    np.testing.assert_allclose(v, v_ref)  # v is always computed, for logging
    assert (w == 0).all()

    r, v, w = integrated_rewards(LOCAL, GLOB, mode="global")
    np.testing.assert_allclose(r, np.stack([GLOB] * 3))
    assert (w == 1).all()

    r, _, w = integrated_rewards(LOCAL, GLOB, mode="equal")
    np.testing.assert_allclose(w, [1 / 3] * 3)
    np.testing.assert_allclose(r, LOCAL + GLOB / 3)

    r, _, w = integrated_rewards(LOCAL, GLOB, mode="fixed", fixed_w=0.7)
    np.testing.assert_allclose(w, [0.7] * 3)
    np.testing.assert_allclose(r, LOCAL + 0.7 * GLOB)


@pytest.mark.assignment2
def test_alg1_variant():
    v_ref = np.array([ndcg(row, GLOB) for row in LOCAL])
    w_ref = np.exp(v_ref) / np.exp(v_ref).sum()
    r, _, _ = integrated_rewards(LOCAL, GLOB, mode="comam", variant="alg1")
    np.testing.assert_allclose(r, GLOB[None, :] + w_ref[:, None] * LOCAL)
    r, _, _ = integrated_rewards(LOCAL, GLOB, mode="fixed", fixed_w=0.25, variant="alg1")
    np.testing.assert_allclose(r, GLOB + 0.25 * LOCAL)
    r, _, _ = integrated_rewards(LOCAL, GLOB, mode="equal", variant="alg1")
    np.testing.assert_allclose(r, GLOB + LOCAL / 3)
    # local / global modes do not depend on the variant
    for mode in ("local", "global"):
        np.testing.assert_allclose(integrated_rewards(LOCAL, GLOB, mode=mode, variant="alg1")[0],
                                   integrated_rewards(LOCAL, GLOB, mode=mode)[0])


def test_bad_names_raise():
    assert set(CREDIT_MODES) == {"comam", "local", "global", "equal", "fixed"}
    with pytest.raises(ValueError, match="mode"):
        integrated_rewards(LOCAL, GLOB, mode="adaptive")
    with pytest.raises(ValueError, match="variant"):
        integrated_rewards(LOCAL, GLOB, variant="eq16")
    with pytest.raises(ValueError):
        integrated_rewards(LOCAL[:, :3], GLOB)


# ---------------------------------------------------------------- unavailable local rewards


@pytest.mark.assignment2
def test_nan_or_none_local_rewards_are_unavailable():
    local = [[0.9, 0.5, 0.1, 0.3], [None] * 4, [float("nan")] * 4]
    v = consistency(local, GLOB)
    assert v[0] == pytest.approx(ndcg(LOCAL[0], GLOB))
    assert v[1] == 1.0 and v[2] == 1.0

    r, v2, w = integrated_rewards(local, GLOB, mode="comam")
    np.testing.assert_allclose(v2, v)
    np.testing.assert_allclose(w, np.exp(v) / np.exp(v).sum())
    np.testing.assert_allclose(r[0], LOCAL[0] + w[0] * GLOB)
    np.testing.assert_allclose(r[1], w[1] * GLOB)  # r_n contributes 0
    np.testing.assert_allclose(r[2], w[2] * GLOB)
    assert np.isfinite(r).all()

    r, _, _ = integrated_rewards(local, GLOB, mode="local")
    np.testing.assert_allclose(r[1:], 0.0)
    assert np.isfinite(group_advantages(r)).all() and (group_advantages(r)[1:] == 0).all()

    # a row with a single NaN is unavailable as a whole
    partial = LOCAL.copy()
    partial[1, 2] = np.nan
    r, v, w = integrated_rewards(partial, GLOB, mode="equal")
    assert v[1] == 1.0
    np.testing.assert_allclose(r[1], GLOB / 3)


def test_nan_global_raises():
    with pytest.raises(ValueError):
        consistency(LOCAL, [1.0, np.nan, 0.0, 0.0])


# ---------------------------------------------------------------- Eq. 7


@pytest.mark.assignment2
def test_group_advantages_constant_group_is_exactly_zero():
    for r in ([0.5] * 8, [0.0] * 8, [1.0 + 1e-12, 1.0, 1.0, 1.0]):
        a = group_advantages(r)
        assert a.shape == (len(r),)
        assert (a == 0.0).all()


@pytest.mark.assignment2
def test_group_advantages_matches_float64_reference():
    rng = np.random.default_rng(4)
    r = rng.random((3, 8))
    r[1] = 0.7  # one constant row
    a = group_advantages(r)
    assert a.shape == (3, 8)
    for n in (0, 2):
        x = r[n].astype(np.float64)
        ref = (x - x.mean()) / (np.sqrt(((x - x.mean()) ** 2).mean()) + 1e-6)
        np.testing.assert_allclose(a[n], ref, rtol=1e-12)
        assert abs(a[n].mean()) < 1e-12
        assert a[n].std() == pytest.approx(1.0, abs=1e-4)
    assert (a[1] == 0.0).all()
    np.testing.assert_allclose(group_advantages(r[0]), a[0])
    np.testing.assert_allclose(group_advantages([1.0, 0.0], eps=0.0), [1.0, -1.0])
