"""scripts/profile_step.py: one real training step per configuration, phase by phase, on the same
trajectories; what it counts agrees with what the step did."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import profile_step  # noqa: E402
from cli import InputError  # noqa: E402


@pytest.mark.uses_solutions
def test_profile_counts_each_phase_of_the_same_step_plain_and_shared(toy_warmstart, toy_data, monkeypatch):
    real = profile_step.runs.datasets
    monkeypatch.setattr(profile_step.runs, "datasets", lambda a: real(profile_step.train.Args(data=str(toy_data))))
    out = profile_step.main(profile_step.Args(model=str(toy_warmstart), queries=2, group_size=2, warmup=False,
                                              configs="float32:plain,float32:full"))
    plain, full = out["results"]
    assert plain["completion_tokens"] == full["completion_tokens"]  # sharing: the same samples
    assert plain["global_reward"] == full["global_reward"]
    for r in (plain, full):
        phases = r["phases"]
        assert sum(p["seconds"] for p in phases.values()) == pytest.approx(r["step_s"], abs=0.05)
        assert phases["decode"]["tokens"] == sum(r["completion_tokens"].values())  # rows x new tokens
        assert phases["update forward"]["tokens"] >= phases["decode"]["tokens"]
        assert phases["reference"]["tokens"] == 0  # --kl-beta 0: no reference pass
    # the extraction prompts of a query's G rows are computed once when shared
    assert full["phases"]["prefill"]["tokens"] < plain["phases"]["prefill"]["tokens"]
    with pytest.raises(InputError, match="--configs"):
        profile_step.main(profile_step.Args(configs="float16:plain"))
