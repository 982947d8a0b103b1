#!/usr/bin/env bash
# "When credit matters" (README): CoMAM's credit rules with one agent's local reward planted to mislead,
# and the training-vs-deployed gap. Run by scripts/reproduce.sh, or alone:
#
#   bash scripts/credit_matters.sh                         # STEPS=100 SEEDS="1 2 3" SAMPLES=3 (the README's numbers)
#   STEPS=2 SEEDS=1 SAMPLES=1 OUT=/tmp/cm bash scripts/credit_matters.sh   # a smoke run
#
# Decided before any of these runs was seen (README, "When credit matters"):
#   * the misled agent is the extraction agent, r_0 := share of the kept lines that are assistant turns
#     (train.py --mislead extraction);
#   * rules: CoMAM (tau = 1), CoMAM with a sharper tau chosen on VALIDATION among 0.3 and 0.1 (seed 1
#     only), equal share, global only, local only; same budget as every other run; 3 seeds;
#     and, added to the plan before any result was seen, CoMAM with Algorithm 1's variant (alg1);
#   * test accuracy = the mean of SAMPLES evaluations (sampling seeds S, S+1, ...), paired on questions;
#   * transfer: --context-sessions 3 against the paper's setting, 3 seeds, evaluated deployed (whole
#     history) and in the training setting (evidence session alone).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-100}
SEEDS=${SEEDS:-"1 2 3"}
SAMPLES=${SAMPLES:-3}
OUT=${OUT:-runs/credit-matters}
TEST=$OUT/test
mkdir -p "$TEST"
start=$(date +%s)

train() {  # name seed flags...: train unless finished (resuming a stopped run), then evaluate on test
  local name=$1 seed=$2; shift 2
  if [ ! -f "$OUT/$name-s$seed/summary.json" ]; then
    local resume=(); [ -d "$OUT/$name-s$seed" ] && resume=(--resume)
    python train.py --exp-name "$name" --seed "$seed" --steps "$STEPS" --eval-history whole --out "$OUT" "${resume[@]}" "$@"
  fi
  [ -f "$TEST/$name-s$seed.json" ] || python eval.py --policies "$OUT/$name-s$seed/ckpt" --split test \
    --seed "$seed" --samples "$SAMPLES" --out "$TEST/$name-s$seed.json"
  [ -f "$TEST/evidence/$name-s$seed.json" ] || python eval.py --policies "$OUT/$name-s$seed/ckpt" --split test \
    --seed "$seed" --history evidence --out "$TEST/evidence/$name-s$seed.json"
}

# ---- the warm start in both settings
for s in $SEEDS; do
  [ -f "$TEST/no-train-s$s.json" ] || python eval.py --split test --seed "$s" --samples "$SAMPLES" --out "$TEST/no-train-s$s.json"
  [ -f "$TEST/evidence/no-train-s$s.json" ] || python eval.py --split test --seed "$s" --history evidence \
    --out "$TEST/evidence/no-train-s$s.json"
done

# ---- planted misalignment: the extraction agent rewarded for keeping assistant turns
first=${SEEDS%% *}
for tau in 0.3 0.1; do train "misled-CoMAM-tau$tau" "$first" --mislead extraction --credit-temp "$tau"; done
best=$(python - "$OUT" "$first" <<'EOF'
import json, sys
out, seed = sys.argv[1], sys.argv[2]
acc = {tau: json.load(open(f"{out}/misled-CoMAM-tau{tau}-s{seed}/summary.json"))["final"]["accuracy"] for tau in ("0.3", "0.1")}
print(max(acc, key=acc.get))
EOF
)
echo "sharper tau chosen on validation (seed $first): $best" | tee "$OUT/chosen_tau.txt"
for s in $SEEDS; do
  train misled-CoMAM "$s" --mislead extraction
  train "misled-CoMAM-tau$best" "$s" --mislead extraction --credit-temp "$best"
  train misled-equal-share "$s" --mislead extraction --credit equal
  train misled-global-only "$s" --mislead extraction --credit global
  train misled-local-only "$s" --mislead extraction --credit local
  train misled-CoMAM-alg1 "$s" --mislead extraction --credit-variant alg1
done

# ---- transfer: prior memory of 3 sessions in training, against the paper's setting
for s in $SEEDS; do
  train CoMAM "$s"
  train CoMAM-context3 "$s" --context-sessions 3
done

# ---- tables: test accuracy (mean ± std over seeds) and paired differences against the first row
tabledir() { local dir=$1; shift; python eval.py --compare "$(for n in "$@"; do ls "$dir"/"$n"-s*.json 2>/dev/null || true; done | tr '\n' ' ')"; }
{
  echo "## Misled extraction agent: test, deployed"
  tabledir "$TEST" misled-equal-share misled-CoMAM "misled-CoMAM-tau$best" misled-CoMAM-alg1 misled-global-only \
    misled-local-only no-train
  echo; echo "## Misled extraction agent: validation (end of training)"
  python eval.py --compare "$(ls -d "$OUT"/misled-equal-share-s* "$OUT"/misled-CoMAM-s* "$OUT/misled-CoMAM-tau$best"-s* \
    "$OUT"/misled-CoMAM-alg1-s* "$OUT"/misled-global-only-s* "$OUT"/misled-local-only-s* | tr '\n' ' ')"
  echo; echo "## Transfer: test, deployed (whole history)"; tabledir "$TEST" CoMAM CoMAM-context3 no-train
  echo; echo "## Transfer: test, training setting (evidence session alone)"; tabledir "$TEST/evidence" CoMAM CoMAM-context3 no-train
} | tee "$OUT/tables.md"
# ---- the misled agent's credit by phase of its run, and where the deployment gap comes from
python - "$OUT" "$best" <<'PY' | tee -a "$OUT/tables.md"
import glob, sys
from pathlib import Path
import numpy as np
from cli import read_json
from eval import read_log
out, best = sys.argv[1], sys.argv[2]
print("\n## Misled agent's credit by phase (steps of all seeds; phase by the batch mean of r_0)")
print("| rule | before (r_0 <= 0.05): steps, v gap, w | learning (0.05 < r_0 <= 0.95) | saturated (r_0 > 0.95) |")
print("|---|---|---|---|")
for name in ("misled-CoMAM", f"misled-CoMAM-tau{best}", "misled-CoMAM-alg1"):
    rows = [r for run in sorted(glob.glob(f"{out}/{name}-s[0-9]*")) for r in read_log(Path(run) / "log.jsonl")]
    r0 = np.array([r["local_extraction"] for r in rows])
    w = np.array([r["w_extraction"] for r in rows])
    gap = np.array([r["v_extraction"] - (r["v_profile"] + r["v_retrieval"]) / 2 for r in rows])
    cells = [f"{m.sum()}, {gap[m].mean():+.3f}, {w[m].mean():.3f}" if m.any() else "-"
             for m in (r0 <= 0.05, (r0 > 0.05) & (r0 <= 0.95), r0 > 0.95)]
    print(f"| {name} | " + " | ".join(cells) + " |")
print("\n## CoMAM seed 1, deployed vs evidence session alone: local metrics")
for f in (f"{out}/test/CoMAM-s1.json", f"{out}/test/evidence/CoMAM-s1.json"):
    r = read_json(Path(f))
    print(f"{f}: accuracy {r['accuracy']:.3f}, memory tokens {r['memory_tokens']:.0f}, "
          + ", ".join(f"{k} {v:.2f}" for k, v in r["local"].items()) + f", format failures {r['format_failure']}")
PY
python eval.py --plot "$(ls -d "$OUT"/misled-CoMAM-s* "$OUT/misled-CoMAM-tau$best"-s* "$OUT"/misled-equal-share-s* | tr '\n' ' ')" || true
echo "credit_matters.sh: $(( $(date +%s) - start )) s"
