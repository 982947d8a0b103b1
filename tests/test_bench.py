"""scripts/bench.py: the GRPO step benchmark runs both paths and reports what it promises."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import bench  # noqa: E402
from cli import InputError  # noqa: E402


@pytest.mark.uses_solutions
def test_bench_reports_both_paths(capsys):
    out = bench.main(bench.Args(d=32, layers=1, prompts=2, G=3, prompt_len=12, completion_len=4, steps=2))
    assert capsys.readouterr().out.strip().startswith("{")
    for mode in ("plain", "shared"):
        r = out[mode]
        assert r["step_s"] == pytest.approx(r["sample_s"] + r["update_s"], rel=0.5)
        assert r["tokens_per_s"] == pytest.approx(2 * 3 * (12 + 4) / r["step_s"], rel=1e-3)
    assert out["speedup"] == pytest.approx(out["shared"]["tokens_per_s"] / out["plain"]["tokens_per_s"], abs=0.01)


@pytest.mark.uses_solutions
def test_bench_common_prefix_makes_distinct_prompts_that_share_it(monkeypatch, capsys):
    seen, real = [], bench.sharing.common_prefix

    def recording_common_prefix(prompts, keep_last=True):
        seen.append(real(prompts, keep_last))
        return seen[-1]
    monkeypatch.setattr(bench.sharing, "common_prefix", recording_common_prefix)
    bench.main(bench.Args(d=32, layers=1, prompts=3, G=1, prompt_len=12, completion_len=3, steps=2, common_prefix=8))
    assert seen and min(seen) >= 8  # the sampler's and the update's prefix plans see the shared 8 tokens
    with pytest.raises(InputError, match="--common-prefix"):
        bench.main(bench.Args(prompt_len=12, common_prefix=12))
