"""Instructor-only: writes the stored cases of the visible graded tests (tests/fixtures/*_cases.json)
from the independent references, so that the student copy holds results, not the references.

    python tests/hidden/make_cases.py        # rewrites tests/fixtures/loss_cases.json and ndcg_cases.json

The references: brute force over every order of the tied local scores (NDCG, Eq. 13) and plain
float64 loops over every token (the clipped loss with k3 KL, token and sequence aggregation).
"""
from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def ndcg_by_permutations(local, gains):
    """Expected DCG over every order of the tied local scores, over the ideal DCG (1.0 if all gains are equal)."""
    g = len(local)
    if len(set(gains)) == 1:
        return 1.0

    def dcg(seq):
        return sum(x / math.log2(1 + rank) for rank, x in enumerate(seq, start=1))
    valid = [p for p in itertools.permutations(range(g))
             if all(local[p[k]] >= local[p[k + 1]] for k in range(g - 1))]
    return sum(dcg([gains[i] for i in p]) for p in valid) / len(valid) / dcg(sorted(gains, reverse=True))


def loss_by_loops(logp, old, adv, mask, eps, agg, ref=None, beta=0.0):
    """The clipped loss token by token in float64."""
    B, T = len(logp), len(logp[0])
    per_seq, total, n_tok = [], 0.0, 0
    for i in range(B):
        s, n = 0.0, 0
        for t in range(T):
            if not mask[i][t]:
                continue
            rho = math.exp(logp[i][t] - old[i][t])
            l = -min(rho * adv[i], min(max(rho, 1 - eps), 1 + eps) * adv[i])
            if ref is not None and beta > 0:
                d = ref[i][t] - logp[i][t]
                l += beta * (math.exp(d) - d - 1)
            s += l
            n += 1
        per_seq.append(s / max(n, 1))
        total += s
        n_tok += n
    return total / n_tok if agg == "token" else sum(per_seq) / B


def main() -> None:
    rng = random.Random(0)
    ndcg_cases = []
    for _ in range(120):
        g = rng.randint(2, 6)
        local = [rng.randint(0, 2) / 2 for _ in range(g)]  # few distinct values: many ties
        gains = [float(rng.randint(0, 1)) for _ in range(g)] if rng.random() < 0.7 else \
            [round(rng.random(), 1) for _ in range(g)]
        ndcg_cases.append({"local": local, "gains": gains, "ndcg": ndcg_by_permutations(local, gains)})
    (FIXTURES / "ndcg_cases.json").write_text(json.dumps(ndcg_cases, indent=0) + "\n")

    loss_cases = []
    for agg, beta in itertools.product(("token", "sequence"), (0.0, 0.1)):
        B, T = 5, 7
        logp = [[-rng.random() * 3 for _ in range(T)] for _ in range(B)]
        old = [[x + (rng.random() - 0.5) * 0.8 for x in row] for row in logp]  # ratios outside [0.8, 1.2] too
        ref = [[x + rng.random() - 0.5 for x in row] for row in logp]
        adv = [rng.gauss(0, 1) for _ in range(B)]
        lengths = [7, 1, 4, 0, 3]
        mask = [[1.0 if t < n else 0.0 for t in range(T)] for n in lengths]
        loss_cases.append({"agg": agg, "beta": beta, "eps": 0.2, "logp": logp, "old": old, "ref": ref, "adv": adv,
                           "mask": mask, "loss": loss_by_loops(logp, old, adv, mask, 0.2, agg, ref, beta)})
    (FIXTURES / "loss_cases.json").write_text(json.dumps(loss_cases) + "\n")
    print(f"wrote {len(ndcg_cases)} NDCG cases and {len(loss_cases)} loss cases to {FIXTURES}")


if __name__ == "__main__":
    main()
