#!/usr/bin/env bash
# "Train as deployed" (docs/results.md, issue 30): the paper's training setting (each query on its
# evidence session) against trajectories that build the memory over the evidence session and the K
# sessions before it (train.py --train-sessions K, docs/method.md decision 21), all evaluated deployed.
#
#   bash scripts/train_as_deployed.sh                                # STEPS=60 SEEDS="1 2 3" KS="3 7"
#   STEPS=2 SEEDS=1 KS=3 OUT=/tmp/tad bash scripts/train_as_deployed.sh   # a smoke run
#
# Every trained row: STEPS iterations of Q = 8 x G = 8 (equal iterations; the agent tokens each row
# spent are in its log.jsonl, gen_tokens / prompt_tokens for K > 0), from the shipped warm start. The
# in-training validation evaluations are cut to one user (--eval-users 1); the results are:
#   test, deployed (whole history), one sample at T = 0.8 per seed, paired on the 672 questions;
#   test, training setting (--history evidence), for the train/deploy gap table;
#   validation, deployed, per checkpoint (eval.py --split val).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-60}
SEEDS=${SEEDS:-"1 2 3"}
KS=${KS:-"3 7"}
OUT=${OUT:-runs/train-as-deployed}
mkdir -p "$OUT/test/evidence" "$OUT/val"
start=$(date +%s)

evaluate() {  # name seed: test deployed, test evidence, val deployed
  local name=$1 s=$2 pol=$OUT/$1-s$2/ckpt
  [ "$name" = no-train ] && pol=tiny
  [ -f "$OUT/test/$name-s$s.json" ] || python eval.py --policies "$pol" --split test --seed "$s" --out "$OUT/test/$name-s$s.json"
  [ -f "$OUT/test/evidence/$name-s$s.json" ] || python eval.py --policies "$pol" --split test --seed "$s" \
    --history evidence --out "$OUT/test/evidence/$name-s$s.json"
  [ -f "$OUT/val/$name-s$s.json" ] || python eval.py --policies "$pol" --split val --seed "$s" --out "$OUT/val/$name-s$s.json"
}
train() {  # name seed flags...
  local name=$1 s=$2; shift 2
  [ -f "$OUT/$name-s$s/summary.json" ] || python train.py --exp-name "$name" --seed "$s" --steps "$STEPS" \
    --eval-history whole --eval-users 1 --out "$OUT" "$@"
  evaluate "$name" "$s"
}
# Row-major (every seed of a row before the next row), so that a run stopped early leaves whole rows:
# the paper setting, the first K, equal share under both settings, then the other Ks.
FIRST_K=${KS%% *}
for s in $SEEDS; do evaluate no-train "$s"; done
for s in $SEEDS; do train CoMAM "$s"; done
for s in $SEEDS; do train "CoMAM-K$FIRST_K" "$s" --train-sessions "$FIRST_K"; done
for s in $SEEDS; do train "equal-share-K$FIRST_K" "$s" --train-sessions "$FIRST_K" --credit equal; done
for s in $SEEDS; do train equal-share "$s" --credit equal; done
for k in ${KS#"$FIRST_K"}; do for s in $SEEDS; do train "CoMAM-K$k" "$s" --train-sessions "$k"; done; done

table() {  # folder names...: mean ± std over seeds and paired differences against the first name
  local dir=$1; shift
  python eval.py --compare "$(for n in "$@"; do ls "$dir/$n"-s*.json 2>/dev/null || true; done | tr '\n' ' ')"
}
KROWS=$(for k in $KS; do echo -n "CoMAM-K$k "; done)
{
  echo "## Test, deployed (whole history)"; table "$OUT/test" no-train CoMAM $KROWS equal-share "equal-share-K$FIRST_K"
  echo; echo "## Test, deployed, against CoMAM (paper setting)"; table "$OUT/test" CoMAM $KROWS
  echo; echo "## Equal share against CoMAM, trained as deployed (K = $FIRST_K)"; table "$OUT/test" "CoMAM-K$FIRST_K" "equal-share-K$FIRST_K"
  echo; echo "## Test, training setting (evidence session alone)"; table "$OUT/test/evidence" no-train CoMAM $KROWS
  echo; echo "## Validation, deployed"; table "$OUT/val" no-train CoMAM $KROWS
} | tee "$OUT/tables.md"
# cost per step: seconds and agent tokens (generated; prompt tokens too where logged), from the logs
python - "$OUT" <<'PY' | tee -a "$OUT/tables.md"
import glob, sys
from pathlib import Path
import numpy as np
from eval import read_log
print("\n## Cost per step (median over the steps of every seed)")
print("| run | seeds | seconds | generated tokens | prompt tokens | sessions per trajectory | kept lines |")
print("|---|---|---|---|---|---|---|")
names = sorted({Path(p).name.rsplit("-s", 1)[0] for p in glob.glob(f"{sys.argv[1]}/*-s[0-9]*") if Path(p).is_dir()})
for name in names:
    folders = sorted(p for p in glob.glob(f"{sys.argv[1]}/{name}-s[0-9]*") if Path(p).is_dir())  # not the .lock files
    rows = [r for run in folders for r in read_log(Path(run) / "log.jsonl")]
    gen = [r.get("gen_tokens", 64 * (r["len_extraction"] + r["len_profile"] + r["len_retrieval"])) for r in rows]
    cell = lambda key: f"{np.median([r[key] for r in rows]):.1f}" if all(key in r for r in rows) else "-"
    seeds = len(folders)
    print(f"| {name} | {seeds} | {np.median([r['step_s'] for r in rows]):.2f} | {np.median(gen):.0f} | "
          f"{cell('prompt_tokens')} | {cell('sessions')} | {cell('kept_lines')} |")
PY
echo "train_as_deployed.sh: $(( $(date +%s) - start )) s"
