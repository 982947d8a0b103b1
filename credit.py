"""Credit assignment by ranking consistency (Sec. 4.3, Eqs. 13-15) and group-normalised advantages (Eq. 7).

For ONE query and its G sampled trajectories:

    local_rewards   shape (3, G)  local rewards r_0, r_1, r_2 of the three agents (Eqs. 9-11)
    global_rewards  shape (G,)    global rewards r_3 (Eq. 12)

    v_n = NDCG(rank by r_n, gains = r_3)               Eq. 13   how well agent n's reward predicts success
    w_n = softmax(v)_n                                 Eq. 14   its share of the global reward
    r_final_n = r_n + w_n · r_3                        Eq. 15   the reward agent n is trained on
    A_n = (r_final_n − mean) / (std + eps)             Eq. 7    GRPO advantage over the G trajectories (Eq. 16)

Unavailable local rewards (None / NaN, e.g. PersonaMem has no evidence, so Eq. 9 and 11 cannot be
computed): if ANY entry of an agent's row is NaN, the whole row is treated as unavailable (its ranking
is undefined): that agent gets v_n = 1.0 (same convention as an uninformative group, Eq. 13
DECISION), and its r_n contributes 0, so r_final_n = w_n · r_3 (mode "comam"/"equal"/"fixed").
In practice a whole row is NaN or none of it: evidence is per query, and the group is one query.
"""
from __future__ import annotations

import numpy as np

CREDIT_MODES = ("comam", "local", "global", "equal", "fixed")
VARIANTS = ("eq15", "alg1")


# ---------------------------------------------------------------- Eq. 13: ranking consistency


def ndcg(local_scores, global_gains) -> float:
    """Eq. 13 (Sec. 4.3): NDCG of the ranking by local score, with the global rewards as gains.

    Rules where the paper is silent (docs/method.md, decision 5):
      * rank the G trajectories by local score, descending; rank r = 1, 2, ..., G;
      * gain = global reward (must be >= 0), discount 1 / log2(1 + r);
      * ties in the local score: a tied block gets, at each of its positions, the AVERAGE gain of its
        members — exactly the expected DCG over all orders of the tie;
      * IDCG = DCG of the gains sorted descending; if all gains are equal (incl. IDCG = 0), every
        order is ideal and the result is 1.0.

    Worked example (by hand): local = [0.9, 0.5, 0.1], global = [0, 1, 1].
      Ranking: traj 0, 1, 2 -> gains 0, 1, 1.
      DCG  = 0/log2(2) + 1/log2(3) + 1/log2(4) = 0 + 0.6309 + 0.5 = 1.1309
      IDCG = 1/log2(2) + 1/log2(3) + 0/log2(4) = 1 + 0.6309     = 1.6309
      NDCG = 1.1309 / 1.6309 = 0.6934
    With a tie, local = [0.5, 0.5, 0.1], global = [1, 0, 1]: the tied block {0, 1} has mean gain 0.5
    at ranks 1 and 2, so DCG = 0.5/1 + 0.5/log2(3) + 1/2 = 1.3155 and NDCG = 1.3155/1.6309 = 0.8066.
    """
    scores = np.asarray(local_scores, dtype=np.float64)
    gains = np.asarray(global_gains, dtype=np.float64)
    if scores.ndim != 1 or scores.shape != gains.shape or scores.size == 0:
        raise ValueError(f"need two 1-D arrays of the same non-zero length, got {scores.shape} and {gains.shape}")
    if np.isnan(scores).any() or np.isnan(gains).any():
        raise ValueError("ndcg got NaN; unavailable local rewards are handled in consistency()")
    if (gains < 0).any():
        raise ValueError("NDCG gains (global rewards) must be >= 0")
    ### BEGIN SOLUTION (assignment 2)
    if np.all(gains == gains[0]):
        return 1.0
    discount = 1.0 / np.log2(np.arange(2, gains.size + 2))  # rank 1..G -> 1/log2(2), 1/log2(3), ...
    dcg, pos = 0.0, 0
    for value in np.unique(scores)[::-1]:  # distinct local scores, best first; one block per value
        block = gains[scores == value]
        dcg += block.mean() * discount[pos:pos + block.size].sum()
        pos += block.size
    idcg = float(np.sort(gains)[::-1] @ discount)
    return float(dcg / idcg)
    ### END SOLUTION


def _available(local: np.ndarray) -> np.ndarray:
    """Shape (N,) bool: True where an agent's local-reward row has no NaN (is available)."""
    return ~np.isnan(local).any(axis=1)


def _as_group(local_rewards, global_rewards) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert: local_rewards -> float64 (N, G) with None -> NaN; global_rewards -> float64 (G,)."""
    local_rewards = np.array(local_rewards, dtype=np.float64)  # None entries become NaN
    global_rewards = np.array(global_rewards, dtype=np.float64)
    if local_rewards.ndim != 2 or global_rewards.ndim != 1 or local_rewards.shape[1] != global_rewards.shape[0]:
        raise ValueError(f"need local_rewards (N, G) and global_rewards (G,), "
                         f"got {local_rewards.shape} and {global_rewards.shape}")
    if np.isnan(global_rewards).any():
        raise ValueError("global rewards must all be available (Eq. 12 never fails: unparsed = 0)")
    return local_rewards, global_rewards


def consistency(local_rewards, global_rewards) -> np.ndarray:
    """v_n for each agent (Eq. 13): shape (N,) = (3,). An unavailable (NaN) row gets v_n = 1.0.

    >>> consistency([[0.9, 0.5, 0.1], [0.1, 0.5, 0.9], [None, None, None]], [0, 1, 1]).round(4)
    array([0.6934, 1.    , 1.    ])
    """
    local_rewards, global_rewards = _as_group(local_rewards, global_rewards)
    ### BEGIN SOLUTION (assignment 2)
    ok = _available(local_rewards)
    return np.array([ndcg(row, global_rewards) if ok[n] else 1.0 for n, row in enumerate(local_rewards)])
    ### END SOLUTION


# ---------------------------------------------------------------- Eq. 14: credit weights


def credit_weights(v, tau: float = 1.0) -> np.ndarray:
    """Eq. 14 (Sec. 4.3): w_n = exp(v_n / τ) / Σ_m exp(v_m / τ), computed stably (shift by max v).

    τ = 1 is the paper's Eq. 14. Since v ∈ [0, 1], its weights stay close to uniform:
    v = [1, 0, 0] gives w = [0.576, 0.212, 0.212], and the usual spread of v (a few tenths) moves w
    by a few hundredths from 1/3. τ < 1 (flag --credit-temp) sharpens them: the same v with τ = 0.25
    gives w = [0.965, 0.018, 0.018]. τ is NOT in the paper; it is our knob for the README's reading.
    """
    if tau <= 0:
        raise ValueError(f"credit softmax temperature τ must be > 0, got {tau}")
    ### BEGIN SOLUTION (assignment 2)
    v = np.asarray(v, dtype=np.float64) / tau
    e = np.exp(v - v.max())
    return e / e.sum()
    ### END SOLUTION


# ---------------------------------------------------------------- Eq. 15: integrated rewards


def integrated_rewards(local_rewards, global_rewards, mode: str = "comam", fixed_w: float = 0.5,
                       variant: str = "eq15", tau: float = 1.0):
    """Eq. 15 (Sec. 4.3): r_final_n = r_n + w_n · r_3, for every agent n and trajectory i.

    Returns (r_final shape (N, G), v shape (N,), w shape (N,)); v (Eq. 13) is always computed, for
    logging, whatever the mode. Modes (the Table 4 ablations):
        "comam"   w = softmax(v / tau)          (Eq. 14, adaptive credit; the paper's τ is 1)
        "local"   r_final = r_n                 (w = 0: no global reward)
        "global"  r_final = r_3                 (local rewards ignored; w reported as 1)
        "equal"   w = 1/N each                  (equal share of the global reward)
        "fixed"   w = fixed_w for every agent   (the fixed-weight sweep, Fig. 5)
    variant "eq15" (canonical) or "alg1" (Algorithm 1's r_3 + w_n·r_n), the latter for
    comam/equal/fixed only; "local"/"global" do not depend on it.
    Unavailable (NaN) local-reward rows contribute r_n = 0.

    Worked example: local_rewards = [[1, 0], [0, 1], [1, 0]], global_rewards = [1, 0]
    -> v = [1, 0.6309, 1], w = softmax(v) = [0.3716, 0.2569, 0.3716],
    r_final_0 = [1 + 0.3716, 0 + 0] = [1.3716, 0].
    """
    if mode not in CREDIT_MODES:
        raise ValueError(f"unknown credit mode {mode!r}; expected one of {CREDIT_MODES}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    local_rewards, global_rewards = _as_group(local_rewards, global_rewards)
    ### BEGIN SOLUTION (assignment 2)
    v = consistency(local_rewards, global_rewards)
    r = np.where(_available(local_rewards)[:, None], local_rewards, 0.0)  # unavailable rows contribute 0
    n_agents = r.shape[0]

    if mode == "local":
        return r, v, np.zeros(n_agents)
    if mode == "global":
        return np.tile(global_rewards, (n_agents, 1)), v, np.ones(n_agents)
    if mode == "comam":
        w = credit_weights(v, tau)
    elif mode == "equal":
        w = np.full(n_agents, 1.0 / n_agents)
    else:  # "fixed"
        w = np.full(n_agents, float(fixed_w))

    if variant == "eq15":
        r_final = r + w[:, None] * global_rewards[None, :]
    else:  # "alg1"
        r_final = global_rewards[None, :] + w[:, None] * r
    return r_final, v, w
    ### END SOLUTION


# ---------------------------------------------------------------- Eq. 7: group advantages


def group_advantages(rewards, eps: float = 1e-6) -> np.ndarray:
    """Eq. 7: A = (r − mean) / (std + eps) over the last axis (the G trajectories); Eq. 16 takes it of r_final.

    Population std (ddof = 0). Where std < 1e-8 (all G rewards equal) the advantage is exactly 0:
    the group carries no signal. Works for shape (G,) and (N, G).

    >>> group_advantages([1.0, 0.0, 1.0, 0.0]).round(4)     # mean 0.5, std 0.5
    array([ 1., -1.,  1., -1.])
    """
    ### BEGIN SOLUTION (assignment 2)
    r = np.asarray(rewards, dtype=np.float64)
    mean = r.mean(axis=-1, keepdims=True)
    std = r.std(axis=-1, keepdims=True)
    adv = (r - mean) / (std + eps)
    return np.where(std < 1e-8, 0.0, adv)
    ### END SOLUTION
