"""The graded cases (instructor-only): inputs and calls of every graded function, no reference implementation.

scripts/grade.py runs each case in a child process, once on the committed reference and once on the
student's code, and compares the outputs itself (docs/assignments.md). A case returns the raw outputs of
the functions it calls, turned into plain values (numbers, lists, tensors, arrays, dicts of those), never
a verdict: the child is not trusted to judge, only to report what the code returned. Outputs that depend
on how a sampler draws its random numbers are never compared draw for draw; the sampler's cases use
greedy decoding, models whose next token is certain, or frequencies over many draws.

Each case names the graded functions it `uses` (tests/test_assignments.py checks that an honest partial
solution scores exactly the cases whose functions it has written) and its tolerances (`rtol`, `atol`).

    python -I -c "import cases; cases.serve()"    # what the grader runs, in a tree holding this file
"""
from __future__ import annotations

import json
import math
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TREE = Path(__file__).resolve().parent.parent.parent


@dataclass
class Case:
    name: str
    assignment: int
    fn: object
    uses: tuple
    rtol: float
    atol: float


CASES: dict[str, Case] = {}


def case(assignment: int, uses: tuple, rtol: float = 1e-6, atol: float = 1e-9):
    def register(fn):
        CASES[fn.__name__] = Case(fn.__name__, assignment, fn, tuple(uses), rtol, atol)
        return fn
    return register


class Raised:
    """What a call raised, by exception class name: compared like an output."""

    def __init__(self, exc: BaseException):
        self.name = type(exc).__name__


def call(fn, *args, **kwargs):
    """fn(*args, **kwargs), or Raised when it raises an Exception (a case that expects a ValueError)."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - the exception class is the output
        return Raised(e)


def encode(x):
    """Plain JSON for the grader: tensors and arrays as {"$tensor"/"$array": dtype, shape, device, data}."""
    torch = sys.modules.get("torch")
    if isinstance(x, Raised):
        return {"$error": x.name}
    if x is None or isinstance(x, (bool, str)):
        return x
    if isinstance(x, (np.bool_,)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x)
    if torch is not None and isinstance(x, torch.Tensor):
        t = x.detach()
        data = None if t.device.type == "meta" else t.cpu().reshape(-1).tolist()
        return {"$tensor": {"dtype": str(t.dtype), "shape": list(t.shape), "device": t.device.type, "data": data}}
    if isinstance(x, np.ndarray):
        return {"$array": {"dtype": "array", "shape": list(x.shape), "device": "cpu",
                           "data": [encode(v) for v in x.reshape(-1).tolist()]}}
    if isinstance(x, (list, tuple)):
        return [encode(v) for v in x]
    if isinstance(x, dict):
        return {str(k): encode(v) for k, v in x.items()}
    raise TypeError(f"an output of type {type(x).__name__}")


def serve() -> None:
    """Answer the grader: one request a line on stdin ("hello", "list N", "run NAME"), one JSON line on
    the original stdout; everything the code under test prints goes to stderr."""
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    for line in sys.stdin:
        request = line.split()
        if not request:
            continue
        if request[0] == "hello":
            answer = {"ok": True}
        elif request[0] == "list":
            answer = {"ok": True, "cases": [{"name": c.name, "uses": list(c.uses), "rtol": c.rtol, "atol": c.atol}
                                            for c in CASES.values() if c.assignment == int(request[1])]}
        else:
            answer = run(request[1])
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


def run(name: str) -> dict:
    random.seed(0)
    np.random.seed(0)
    if "torch" in sys.modules:  # the rewards and credit cases need no torch: a faster start
        sys.modules["torch"].manual_seed(0)
    try:
        return {"ok": True, "out": encode(CASES[name].fn())}
    except BaseException as e:  # noqa: BLE001 - SystemExit and KeyboardInterrupt from the code too
        return {"ok": False, "error": f"{type(e).__name__}: {e}"[:500]}


# ======================================================================== shared inputs

_TOY = {}


def toy():
    """(examples, tokenizer) of the toy benchmark, as tests/conftest.py builds them."""
    if not _TOY:
        from data.generate import generate, vocabulary_texts
        import warmstart
        examples = generate(12, 0)
        _TOY["examples"], _TOY["tokenizer"] = examples, warmstart.build_tokenizer(vocabulary_texts(examples))
    return _TOY["examples"], _TOY["tokenizer"]


def toy_policy(seed: int = 0, layers: int = 1):
    import models
    import warmstart
    _, tok = toy()
    return models.Policy(warmstart.build_tiny(tok, hidden=32, layers=layers, heads=2, seed=seed), tok, "toy")


def ints(rows) -> list[list[int]]:
    return [[int(t) for t in row] for row in rows]


def floats(rows) -> list[list[float]]:
    return [[float(v) for v in row] for row in rows]


# ======================================================================== assignment 1: rewards (Eqs. 9-12)

OVERLAP = ("rewards.recall_iou", "rewards._overlap_reward")


@case(1, OVERLAP)
def overlap_hand_worked():
    from rewards import extraction_reward as ext, retrieval_reward as ret
    return [ext([1, 2, 3], [2, 3, 4]), ret([1, 2, 3], [2, 3, 4]), ext({5, 7}, [7, 5]), ret([5, 7], [7, 5]),
            ext([1, 2], [3]), ret([1, 2], [3])]


@case(1, OVERLAP)
def overlap_empty_unparsed_and_unavailable():
    from rewards import extraction_reward as ext, retrieval_reward as ret
    return [ext([], [1, 2]), ext(None, [1, 2]), ret([], [1]), ext([1, 2], None), ext([1, 2], []), ret([1], None)]


@case(1, OVERLAP)
def overlap_duplicates_and_ghost_ids():
    from rewards import extraction_reward as ext, retrieval_reward as ret
    return [ext([2, 2, 2, 3], [2, 3, 4]), ret([2, 3], [2, 2, 3, 4, 4]), ext([2, 2, 3], [2, 3, 4]),
            ext([2, 3, 999], [2, 3]), ret([2, 3, 999], [2, 3])]


@case(1, OVERLAP)
def overlap_weights_are_parameters():
    from rewards import extraction_reward as ext, retrieval_reward as ret
    return [ret([2, 3], [2, 3, 4]), ret([1, 2, 3, 4, 5, 6], [2, 3, 4]), ext([1, 2, 3], [2, 3, 4], alpha=1.0),
            ext([1, 2, 3], [2, 3, 4], alpha=0.0), call(ret, [1], [1], beta=1.5)]


@case(1, OVERLAP)
def overlap_on_random_sets():
    from rewards import extraction_reward as ext, retrieval_reward as ret
    rng = random.Random(11)
    out = []
    for _ in range(200):
        gold = set(rng.sample(range(20), rng.randint(1, 6)))
        pred = [rng.randrange(25) for _ in range(rng.randint(0, 8))]
        out.append([ext(pred, gold), ret(pred, gold)])
    return out


GOLD = ["pet cat milo", "likes tacos", "hometown oslo"]


@case(1, ("rewards.profile_reward",))
def profile_normalisation_and_worked_examples():
    from rewards import profile_reward as prof
    return [prof(["Pet  Cat milo.", "LIKES tacos", " hometown oslo !", "likes tacos"], GOLD),
            prof(["Pet cat  Milo.", "likes tacos", "likes sushi"], GOLD),
            prof(["likes tacos", "likes sushi", "hometown lima"], GOLD), prof(["likes tacos", "hometown oslo"], GOLD)]


@case(1, ("rewards.profile_reward",))
def profile_empty_unavailable_and_dropped_statements():
    from rewards import profile_reward as prof
    return [prof([], GOLD), prof(None, GOLD), prof(["likes tacos"], None), prof([], []), prof(["likes tacos"], []),
            prof(["", " ; ", "Pet cat milo!"], ["pet cat milo"]), prof([".", "  "], []),
            prof(["likes tacos"], ["", "likes tacos"])]


@case(1, ("rewards.profile_reward",))
def profile_on_random_inputs():
    from rewards import profile_reward as prof
    rng = random.Random(12)
    pool = ["pet cat milo", "hometown oslo", "job nurse", "music likes jazz", "food dislikes tacos", "sister ana"]
    out = []
    for _ in range(100):
        gold = rng.sample(pool, rng.randint(1, 4))
        said = rng.sample(pool, rng.randint(0, 5))
        out.append(prof([s.upper() + "." for s in said], gold))
    return out


@case(1, ("rewards.global_reward",))
def global_reward_normalised_both_sides():
    import itertools
    from rewards import global_reward
    pairs = [("c", "c"), ("a", "c"), (None, "c"), ("(C)", "c"), ("c", "(c)"), (" C ", "c"), ("(c)", " (C) ")]
    pairs += list(itertools.product(["a", "(B)", " c ", None, "(d)"], "abcd"))
    return [global_reward(p, g) for p, g in pairs]


@case(1, OVERLAP + ("rewards.profile_reward", "rewards.global_reward"))
def a_trajectory_scores_each_agent():
    import comam
    from data.example import Example, Line, Session
    lines = [Line(k, 0, "user" if k % 2 == 0 else "assistant", f"line {k}") for k in range(6)]
    session = Session(0, "2024-01-01", lines, notes={2: ["pet cat milo"], 4: ["food likes tacos"]})
    ex = Example("q", "u", "recalling_facts_mentioned_by_the_user", "?", ["a", "b", "c", "d"], "b", [session],
                 evidence=[2, 4], evidence_session=0)
    t = comam.Trajectory(ex, memory_lines=[lines[1], lines[2]], profile=["pet cat milo", "likes sushi"],
                         retrieved=[2, 4, 5], answer="b")
    t.score()
    return [[float(x) if x is not None else None for x in t.local_rewards], t.global_reward]


# ======================================================================== assignment 2: credit (Eqs. 13-15, 7)

LOCAL = [[0.9, 0.5, 0.1, 0.3], [0.2, 0.4, 0.6, 0.8], [1.0, 0.0, 1.0, 0.5]]
GLOB = [1.0, 0.0, 1.0, 0.0]
NDCG = ("credit.ndcg",)
CONSISTENCY = ("credit.ndcg", "credit.consistency")
WEIGHTS = ("credit.credit_weights",)
INTEGRATED = ("credit.ndcg", "credit.consistency", "credit.credit_weights", "credit.integrated_rewards")


@case(2, NDCG)
def ndcg_hand_worked():
    from credit import ndcg
    return [ndcg([0.9, 0.5, 0.1], [0, 1, 1]), ndcg([0.7, 0.1, 0.3, 0.8], [0, 0, 1, 1]),
            ndcg([0.9, 0.1, 0.5, 0.0], [1, 0, 1, 0]), ndcg([0.1, 0.9], [0.2, 0.8])]


@case(2, NDCG, atol=1e-12)
def ndcg_ties():
    from credit import ndcg
    stored = json.loads((TREE / "tests" / "fixtures" / "ndcg_cases.json").read_text())
    return [ndcg([0.5, 0.5, 0.1], [1, 0, 1]), ndcg([0.3] * 4, [1, 0, 0, 0])] + [
        ndcg(c["local"], c["gains"]) for c in stored]


@case(2, NDCG)
def ndcg_all_equal_gains_bounds_and_errors():
    from credit import ndcg
    rng = np.random.default_rng(2)
    return ([ndcg([0.9, 0.5, 0.1], [0, 0, 0]), ndcg([0.9, 0.5, 0.1], [1, 1, 1])]
            + [ndcg(rng.random(8), rng.integers(0, 2, 8)) for _ in range(100)]
            + [call(ndcg, [0.1, 0.2], [1, 0, 1]), call(ndcg, [0.1, 0.2], [-1, 0])])


@case(2, CONSISTENCY)
def consistency_with_unavailable_rows():
    from credit import consistency
    return [consistency(np.random.default_rng(1).random((3, 3)), [1, 1, 1]),
            consistency([[0.9, 0.5, 0.1, 0.3], [None] * 4, [float("nan")] * 4], GLOB),
            consistency(LOCAL, GLOB), call(consistency, LOCAL, [1.0, float("nan"), 0.0, 0.0])]


@case(2, WEIGHTS, rtol=1e-9)
def softmax_weights_and_temperature():
    from credit import credit_weights as cw
    return [cw(np.array([0.2, 0.9, 0.55])), cw([1000.0, 1000.0, 999.0]), cw([1e4, 0, 0]),
            cw([1.0, 0.0, 0.0], tau=0.25), cw([0.3, 0.8, 0.5], 1.0), call(cw, [0.1, 0.2, 0.3], 0.0),
            call(cw, [0.1, 0.2, 0.3], -1.0)]


@case(2, INTEGRATED)
def integrated_rewards_every_mode_and_variant():
    from credit import integrated_rewards as ir
    out = []
    for mode in ("comam", "local", "global", "equal", "fixed"):
        for variant in ("eq15", "alg1"):
            out.append(ir(np.array(LOCAL), np.array(GLOB), mode=mode, variant=variant, fixed_w=0.7))
    out.append(ir(np.array(LOCAL), np.array(GLOB), mode="comam", tau=0.1))
    out.append(ir(np.array(LOCAL), np.array(GLOB), mode="equal", tau=0.1))
    return out


@case(2, INTEGRATED)
def integrated_rewards_unavailable_and_planted():
    from credit import integrated_rewards as ir
    local = [[0.9, 0.5, 0.1, 0.3], [None] * 4, [float("nan")] * 4]
    partial = np.array(LOCAL)
    partial[1, 2] = np.nan
    out = [ir(local, GLOB, mode="comam"), ir(local, GLOB, mode="local"), ir(partial, GLOB, mode="equal")]
    rng = np.random.default_rng(3)
    for _ in range(20):
        glob = rng.integers(0, 2, size=8).astype(float)
        local = rng.random((3, 8))
        local[int(rng.integers(0, 3))] = glob + 0.1 * rng.random(8)
        out.append(ir(local, glob))
    return out


@case(2, ("credit.group_advantages",))
def group_advantages_constant_rows_and_float64():
    from credit import group_advantages as ga
    rng = np.random.default_rng(4)
    r = rng.random((3, 8))
    r[1] = 0.7
    return [ga([0.5] * 8), ga([0.0] * 8), ga([1.0 + 1e-12, 1.0, 1.0, 1.0]), ga(r), ga(r[0]),
            ga([1.0, 0.0], eps=0.0)]


@case(2, INTEGRATED + ("credit.group_advantages",), atol=1e-9)
def random_groups_end_to_end():
    from credit import group_advantages, integrated_rewards
    rng = np.random.default_rng(13)
    out = []
    for _ in range(60):
        G = int(rng.integers(2, 6))
        local = rng.integers(0, 3, size=(3, G)) / 2
        glob = rng.integers(0, 2, size=G).astype(float)
        r, v, w = integrated_rewards(local, glob)
        out.append([r, v, w, group_advantages(r)])
    return out


def _trajectories(local, rewards):
    import agents
    import comam
    act = comam.Action(prompt=[1], completion=[2], text="x", ok=True)
    return [comam.Trajectory(example=None, actions={r: act for r in agents.ROLES}, local_rewards=list(l),
                             global_reward=g) for l, g in zip(local, rewards)]


@case(2, INTEGRATED + ("credit.group_advantages",))
def credit_step_applies_the_credit_flags():
    import agents
    import runs
    import train
    out = []
    for credit, variant, fixed_w in [("comam", "eq15", 0.5), ("comam", "alg1", 0.5), ("equal", "eq15", 0.5),
                                     ("equal", "alg1", 0.5), ("fixed", "eq15", 0.25), ("fixed", "alg1", 0.25),
                                     ("local", "eq15", 0.5), ("global", "eq15", 0.5)]:
        group = _trajectories([[0.9, 0.2, 0.5], [0.1, 0.6, 0.3], [0.4, 0.8, 0.0]], [1.0, 0.0, 1.0])
        batches, per_group = train.credit_step([group], train.Args(credit=credit, credit_variant=variant,
                                                                   fixed_w=fixed_w))
        log = runs.group_means(per_group)
        out.append([[float(a) for _, _, a in batches[role]] for role in agents.ROLES] + [log["v"], log["w"]])
    flat = _trajectories([[0.2, 0.5, 0.9], [0.8, 0.1, 0.3]], [1.0, 1.0])
    tense = _trajectories([[0.9, 0.1, 0.0], [0.1, 0.9, 1.0]], [1.0, 0.0])
    for temp in (1.0, 0.1):
        log = runs.group_means(train.credit_step([flat, tense], train.Args(credit="comam", credit_temp=temp))[1])
        out.append([log["global_flat"], log["w_spread"], log["v"], log["w"]])
    return out


# ======================================================================== assignment 3: the GRPO objective

LOSS = ("train.policy_loss",)
LOGPROBS = ("models.completion_logprobs",)


def _t64(x):
    import torch
    return torch.tensor(x, dtype=torch.float64)


def _loss_and_grad(logp, old, adv, mask, eps, denom, agg, ref=None, beta=0.0):
    """policy_loss and its gradient w.r.t. logp: (loss, stats, d loss / d logp)."""
    from train import policy_loss
    logp = logp.clone().requires_grad_(True)
    loss, stats = policy_loss(logp, old, adv, mask, eps, denom, agg, ref, beta)
    loss.backward()
    return [loss, stats, logp.grad]


@case(3, LOSS, rtol=1e-9, atol=1e-12)
def policy_loss_on_the_stored_inputs():
    cases = json.loads((TREE / "tests" / "fixtures" / "loss_cases.json").read_text())
    out = []
    for c in cases:
        mask = _t64(c["mask"])
        denom = mask.sum().item() if c["agg"] == "token" else len(c["adv"])
        out.append(_loss_and_grad(_t64(c["logp"]), _t64(c["old"]), _t64(c["adv"]), mask, c["eps"], denom,
                                  c["agg"], _t64(c["ref"]), c["beta"]))
    return out


@case(3, LOSS, rtol=1e-9, atol=1e-12)
def policy_loss_gradient_at_ratio_one_and_where_clipped():
    import torch
    adv = _t64([2.0, -1.0, 0.5])
    mask = _t64([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]])
    logp = _t64([[-1.0, -2.0, -0.5, 0.0], [-1.5, 0.0, 0.0, 0.0], [-0.3, -0.7, 0.0, 0.0]])
    out = [_loss_and_grad(logp, logp.clone(), adv, mask, 0.2, 6.0, "token"),
           _loss_and_grad(logp, logp.clone(), adv, mask, 0.2, 3.0, "sequence")]
    clipped = torch.log(_t64([[1.5], [0.5], [1.5], [0.5]]))
    out.append(_loss_and_grad(clipped, torch.zeros(4, 1, dtype=torch.float64), _t64([1.0, -1.0, -1.0, 1.0]),
                              torch.ones(4, 1, dtype=torch.float64), 0.2, 4.0, "token"))
    return out


@case(3, LOSS, rtol=1e-9, atol=1e-12)
def policy_loss_with_a_reference_backward():
    """kl_beta > 0 with a reference: the k3 term's gradient (an in-place op on its exp breaks backward),
    and the stats as Python floats (a tensor among them breaks the JSON log)."""
    import torch
    g = torch.Generator().manual_seed(21)
    out = []
    for agg, beta in (("token", 0.1), ("sequence", 0.5)):
        logp = -torch.rand(3, 5, generator=g, dtype=torch.float64) * 2
        old = logp + (torch.rand(3, 5, generator=g, dtype=torch.float64) - 0.5) * 0.6
        ref = logp + (torch.rand(3, 5, generator=g, dtype=torch.float64) - 0.5)
        mask = _t64([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
        denom = mask.sum().item() if agg == "token" else 3
        out.append(_loss_and_grad(logp, old, _t64([1.0, -0.5, 2.0]), mask, 0.2, denom, agg, ref, beta))
    return out


@case(3, LOSS, rtol=1e-9, atol=1e-12)
def policy_loss_stats_empty_rows_and_errors():
    import torch
    logp = torch.log(_t64([[1.5, 1.0], [0.7, 3.0]]))
    stats_case = _loss_and_grad(logp, torch.zeros(2, 2, dtype=torch.float64), _t64([1.0, -1.0]),
                                _t64([[1.0, 1.0], [1.0, 0.0]]), 0.2, 3.0, "token", torch.zeros(2, 2, dtype=torch.float64),
                                0.1)
    zeros = torch.zeros(2, 3, dtype=torch.float64)
    empty = _loss_and_grad(zeros, zeros, _t64([1.0, 5.0]), _t64([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]), 0.2, 2.0,
                           "sequence")
    from train import policy_loss
    bad = call(policy_loss, zeros, zeros, torch.ones(2, dtype=torch.float64), _t64([[1.0, 1, 0], [0, 0, 0]]), 0.2,
               2.0, "sum")
    worked = _loss_and_grad(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([1.0, -1.0]),
                            torch.tensor([[1.0, 1, 0], [1, 0, 0]]), 0.2, 3.0, "token")
    return [stats_case, empty, bad, worked]


@case(3, LOSS, rtol=1e-9, atol=1e-12)
def policy_loss_on_random_batches():
    import torch
    g = torch.Generator().manual_seed(14)
    out = []
    for agg in ("token", "sequence"):
        logp = -torch.rand(4, 6, generator=g, dtype=torch.float64) * 2
        old = logp + (torch.rand(4, 6, generator=g, dtype=torch.float64) - 0.5)
        adv = torch.randn(4, generator=g, dtype=torch.float64)
        mask = (torch.rand(4, 6, generator=g) < 0.7).double()
        mask[:, 0] = 1
        out.append(_loss_and_grad(logp, old, adv, mask, 0.1, mask.sum().item() if agg == "token" else 4, agg))
    return out


@case(3, LOGPROBS, rtol=1e-5, atol=1e-5)
def completion_logprobs_mask_keeps_eos_and_temperature():
    import models
    pol = toy_policy()
    eos = pol.eos_id
    out = [models.completion_logprobs(pol.model, [[5, 6, 7], [5, 6]], [[8, 9, eos], [8, eos]], pol.pad_id),
           models.completion_logprobs(pol.model, [[5, 6, 7]], [[8, 9, eos]], pol.pad_id, 0.7)]
    import torch
    g = torch.Generator().manual_seed(15)
    prompts = [torch.randint(2, 60, (int(n),), generator=g).tolist() for n in (2, 7, 4)]
    comps = [torch.randint(2, 60, (int(n),), generator=g).tolist() + [eos] for n in (3, 0, 5)]
    out.append(models.completion_logprobs(pol.model, prompts, comps, pol.pad_id, 0.5))
    return [list(x) for x in out]


@case(3, LOGPROBS)
def completion_logprobs_follow_the_models_device():
    import torch
    import torch.fx.experimental._config as fx_config
    import models

    class MetaLM(torch.nn.Module):
        def __init__(self, vocab=64, hidden=8):
            super().__init__()
            self.embed = torch.nn.Embedding(vocab, hidden, device="meta")
            self.head = torch.nn.Linear(hidden, vocab, device="meta")
            self.config = type("Config", (), {})()

        def base_model(self, input_ids, attention_mask=None, **_):
            for t in (input_ids, attention_mask):
                if t is not None and t.device.type != "meta":
                    raise RuntimeError(f"an input on {t.device}, the model on meta")
            return type("Out", (), {"last_hidden_state": self.embed(input_ids)})()

        def forward(self, input_ids, attention_mask=None, **_):
            return type("Out", (), {"logits": self.head(self.base_model(input_ids, attention_mask).last_hidden_state)})()

        def get_output_embeddings(self):
            return self.head

    before = fx_config.meta_nonzero_assume_all_nonzero
    fx_config.meta_nonzero_assume_all_nonzero = True
    try:
        return list(models.completion_logprobs(MetaLM(), [[5, 6, 7], [8, 9]], [[10, 1], [11, 12, 1]], 1))
    finally:
        fx_config.meta_nonzero_assume_all_nonzero = before


def _batch(policy, n=6, seed=0):
    import torch
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(2, 50, (int(k),), generator=g).tolist() for k in torch.randint(3, 9, (n,), generator=g)]
    comps = [torch.randint(2, 50, (int(k),), generator=g).tolist() for k in torch.randint(1, 7, (n,), generator=g)]
    comps = [c[:-1] + [policy.eos_id] if i % 2 else c for i, c in enumerate(comps)]
    adv = torch.randn(n, generator=g).tolist()
    return [(p, c, a) for p, c, a in zip(prompts, comps, adv)]


@case(3, LOSS + LOGPROBS, rtol=1e-4, atol=1e-6)
def one_update_with_micro_batches():
    """train.grpo_update with micro-batches of 1 and of 6 sequences: the loss and the weights after it."""
    import torch
    import train
    out = []
    for agg in ("token", "sequence"):
        for mb in (1, 6):
            pol = toy_policy()
            opt = torch.optim.SGD(pol.model.parameters(), lr=0.1)
            stats = train.grpo_update(pol, opt, _batch(pol), train.Args(micro_batch=mb, loss_agg=agg,
                                                                         max_grad_norm=1e9), "cpu")
            out.append([float(stats["loss"]), [p.detach().clone() for p in list(pol.model.parameters())[:3]]])
    return out


@case(3, LOGPROBS, rtol=1e-5, atol=1e-6)
def shared_prompt_log_probs_equal_the_plain_path():
    import models
    import sharing
    pol = toy_policy(seed=4, layers=2)
    prompts, comps = [[5, 6, 7, 8, 9]] * 3 + [[10, 11, 12]] * 2, [[20, 21, 1], [22], [23, 24, 25, 26], [27, 1],
                                                                   [28, 29]]
    return [list(sharing.completion_logprobs(pol.model, prompts, comps, pol.pad_id, 0.7)),
            list(models.completion_logprobs(pol.model, prompts, comps, pol.pad_id, 0.7))]


# ======================================================================== assignment 4: the sequential MDP and the sampler

ROLLOUT = ("comam.rollout",)
SAMPLE = ("models.sample",)


def _scripted_rollout(examples, group_size, temperature=1.0, generator=None):
    """comam.rollout with models.sample replaced by a script and Trajectory.score by a recorder (as the
    `scripted` fixture of tests/conftest.py): (groups, calls, scored, seen)."""
    import agents
    import comam
    import models
    calls, seen, scored, counter = [], [], [], {"n": 0}

    def sample(policy, prompts, max_new_tokens, temperature=1.0, batch_size=256, generator=None, progress=None):
        text = policy.tokenizer.decode(prompts[0])
        role = "extraction" if text.startswith("extract") else "profile" if text.startswith("profile") else "retrieval"
        calls.append([role, len(prompts), max_new_tokens])
        seen.append((temperature, generator))
        outs = []
        for _ in prompts:
            counter["n"] += 1
            n = counter["n"]
            out = {"extraction": f"{1 + n % 3} {2 + n % 3}", "profile": ["pet cat milo", "pet dog rex"][n % 2],
                   "retrieval": f"<information> 1 </information> <final_answer> ( {'abcd'[n % 4]} ) </final_answer>"}[role]
            outs.append(policy.tokenizer(out, add_special_tokens=False).input_ids + [policy.eos_id])
        return outs, [[-0.5] * len(o) for o in outs]

    saved = models.sample, comam.Trajectory.score
    models.sample, comam.Trajectory.score = sample, lambda self: scored.append(self)
    try:
        pol = toy_policy()
        groups = comam.rollout({r: pol for r in agents.ROLES}, examples, group_size, agents.Budgets(),
                               agents.MaxNew(), temperature, generator)
    finally:
        models.sample, comam.Trajectory.score = saved
    return groups, calls, scored, seen


def _trajectory(t, examples) -> dict:
    import agents
    return {"example": next((k for k, ex in enumerate(examples) if t.example is ex), -1),
            "memory": [int(l.id) for l in t.memory_lines], "profile": [str(s) for s in t.profile],
            "retrieved": [int(i) for i in t.retrieved], "answer": t.answer,
            "actions": {r: [ints([t.actions[r].prompt])[0], ints([t.actions[r].completion])[0],
                            str(t.actions[r].text), bool(t.actions[r].ok)] for r in agents.ROLES}}


@case(4, ROLLOUT)
def rollout_groups_of_full_chains():
    examples = toy()[0][:2]
    groups, calls, scored, _ = _scripted_rollout(examples, 3)
    flat = [t for g in groups for t in g]
    return {"sizes": [len(g) for g in groups], "calls": calls,
            "scored": [next((k for k, t in enumerate(flat) if s is t), -1) for s in scored],
            "trajectories": [_trajectory(t, examples) for t in flat]}


@case(4, ROLLOUT)
def rollout_samples_at_the_given_temperature_and_generator():
    import torch
    gen = torch.Generator().manual_seed(3)
    _, _, _, seen = _scripted_rollout(toy()[0][:1], 2, 0.7, gen)
    return [[float(t), g is gen] for t, g in seen]


def rigged_policy(next_logits):
    from conftest import rigged_policy  # tests/conftest.py: the project's own sampler tests use it too
    return rigged_policy(toy()[1], next_logits)


def chain_policy():
    from conftest import chain_table
    return rigged_policy(chain_table(toy()[1].eos_token_id))


@case(4, SAMPLE, rtol=1e-4, atol=1e-4)
def sampler_keeps_eos_and_nothing_after():
    import torch
    import models
    pol = chain_policy()
    prompts = [[5, 6, 7], [5, 9], [4]]
    out = []
    for temperature in (0.0, 1.0, 0.5):
        comps, lps = models.sample(pol, prompts, 5, temperature, generator=torch.Generator().manual_seed(1))
        out.append([ints(comps), floats(lps)])
    comps, _ = models.sample(pol, [[5, 9]], 5, 1.0)
    out.append(ints(comps))
    return out


@case(4, SAMPLE, rtol=0.0, atol=0.05)
def sampler_follows_the_temperature():
    """A two-token model (logits 1 and 0 after token 20): the share of the first over 3000 draws at
    T = 0.5 and 2 (softmax(logits / T): 0.881 and 0.622; 0.731 for a sampler that ignores T), and the
    log-prob it reports for each. Compared with the reference's own draws: 4 standard errors apart."""
    import torch
    import models
    pol = rigged_policy({20: {21: 1.0, 22: 0.0}})
    out = []
    for temperature in (0.5, 2.0):
        comps, lps = models.sample(pol, [[20]] * 3000, 1, temperature, generator=torch.Generator().manual_seed(2))
        comps, lps = ints(comps), floats(lps)
        first = sum(1 for c in comps if c == [21]) / len(comps)
        logp = {}
        for c, l in zip(comps, lps):
            if len(c) == 1 and len(l) == 1:
                logp.setdefault(str(c[0]), l[0])
        out.append([first, logp])
    return out


@case(4, SAMPLE, rtol=1e-4, atol=1e-4)
def greedy_sampling_batched_equals_one_at_a_time():
    import models
    pol = toy_policy()
    prompts = [[5, 6, 7, 8, 9], [10], [11, 12, 13]]
    together = models.sample(pol, prompts, 5, temperature=0.0)
    alone = [models.sample(pol, [p], 5, temperature=0.0) for p in prompts]
    return [ints(together[0]), floats(together[1]), [ints(a[0]) for a in alone]]


@case(4, SAMPLE, rtol=1e-4, atol=1e-4)
def greedy_sampling_with_left_padding_and_shared_prompts():
    import dataclasses
    import agents
    import models
    import sharing
    examples, _ = toy()
    pol = toy_policy()
    histories = [ex.session_lines(ex.evidence_session) for ex in examples[:6]]
    prompts = [agents.extraction_prompt(pol, h, agents.Budgets())[0] for h in histories]
    prompts[0] = prompts[0][:20]
    out = [models.sample(pol, prompts, 8, temperature=0.0)]
    instruction = list(range(20, 44))
    shared = [instruction + [50]] * 2 + [instruction + [51, 52, 53]] + [instruction + [54, 55]]
    for share in (False, True):
        out.append(models.sample(dataclasses.replace(pol, sharing=sharing if share else None), shared, 6, 0.0))
    return [[ints(c), floats(l)] for c, l in out]
