"""One data-parallel update on FIXED rollouts, for tests/test_distributed.py (not a test itself).

    python tests/dist_worker.py OUT token,sequence                                  # one process: every group
    python -m torch.distributed.run --nproc_per_node 2 tests/dist_worker.py OUT token,sequence  # two: half each

Q = 4 query groups of G = 3 trajectories with fixed prompts, completions and rewards (seeded) stand in
for a rollout, so that one process and two see exactly the same trajectories. Each process takes its
share of the groups (distributed.shard), computes their credit and advantages (train.credit_step) and
takes part in one update of three toy policies (train.update_policies), once per loss aggregation named
(fresh policies each time: one process start serves both). Rank 0 writes OUT/AGG/result.json (every
group's advantages, gathered, and the update statistics) and OUT/AGG/<role>.safetensors.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository's modules

import agents  # noqa: E402
import comam  # noqa: E402
import distributed  # noqa: E402
import models  # noqa: E402
import train  # noqa: E402
import warmstart  # noqa: E402

Q, G = 4, 3


def fixed_groups(eos: int) -> list[list[comam.Trajectory]]:
    g = torch.Generator().manual_seed(7)
    groups = []
    for q in range(Q):
        prompt = {r: torch.randint(5, 60, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist()
                  for r in agents.ROLES}
        group = []
        for _ in range(G):
            actions = {}
            for r in agents.ROLES:
                comp = torch.randint(5, 60, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g).tolist()
                actions[r] = comam.Action(prompt[r], comp + [eos], "x", True)
            local = (torch.randint(0, 5, (3,), generator=g) / 4).tolist()
            group.append(comam.Trajectory(None, actions=actions, local_rewards=local,
                                          global_reward=float(torch.randint(0, 2, (1,), generator=g))))
        groups.append(group)
    return groups


def main(out: Path, aggs: list[str]) -> None:
    distributed.setup("cpu")
    tok = warmstart.build_tokenizer([" ".join(f"w{k}" for k in range(80))])
    for agg in aggs:
        update(out / agg, agg, tok)
    distributed.teardown()


def update(out: Path, agg: str, tok) -> None:
    policies = {r: models.Policy(warmstart.build_tiny(tok, hidden=32, layers=1, heads=2, seed=3), tok, "toy")
                for r in agents.ROLES}
    # plain SGD: the weights move by lr x the gradient, so comparing them compares the summed gradients
    # (AdamW's first step is lr x sign(gradient): a gradient of 1e-9 against -1e-9 would move it by 2 lr)
    opts = {r: torch.optim.SGD(p.model.parameters(), lr=0.1) for r, p in policies.items()}
    args = train.Args(loss_agg=agg, micro_batch=2, max_grad_norm=1e9)
    mine = distributed.shard(fixed_groups(tok.eos_token_id))
    batches, _ = train.credit_step(mine, args)
    advantages = distributed.gather({r: [a for _, _, a in batches[r]] for r in agents.ROLES})
    stats = train.update_policies(policies, opts, batches, list(agents.ROLES), args, "cpu", {})
    if distributed.is_writer():
        from safetensors.torch import save_file
        out.mkdir(parents=True, exist_ok=True)
        merged = {r: [a for part in advantages for a in part[r]] for r in agents.ROLES}
        (out / "result.json").write_text(json.dumps({"advantages": merged, "stats": stats,
                                                     "world": distributed.world()}))
        for r, p in policies.items():
            save_file({k: v.detach().clone() for k, v in p.model.state_dict().items()}, str(out / f"{r}.safetensors"))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2].split(","))
