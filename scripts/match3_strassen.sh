#!/usr/bin/env bash
# Strassen attention (examples/rules/strassen.rule) on match3 and match3-distinct, the same
# schedule as scripts/match3_curriculum.sh (docs/experiments/match3.md): `match3` for 12 000
# steps × 16 at the separation suite's budget (one seed), that checkpoint scored on
# `match3-distinct` as it is and trained on it from those weights for 6 000 steps × 16 (and,
# last, for 20 000), and `match3-distinct` from scratch for 6 000 steps × 16. About two hours
# on 2 cores. Then the long schedule: 30 000 more steps from the 20 000-step checkpoint, for
# Strassen and for the baseline at Strassen's budget (`match3` 12 000, then 20 000 and 30 000
# on `match3-distinct`, the same steps), the two at once on one core each: about 1.5 hours more.
# Usage: scripts/match3_strassen.sh [OUT] (runs/match3-strassen)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/match3-strassen}"
cargo build --release -q
q=./target/release/quartic
rule=examples/rules/strassen.rule
"$q" experiment --task match3 --rules "$rule" --seeds 1 --steps 12000 --batch 16 \
  --eval-every 500 --jobs 1 --out "$out/match3"
ckpt="$out/match3/match3/runs/strassen/seed0/checkpoint.safetensors"
"$q" eval --checkpoint "$ckpt" --task match3-distinct --batches 32
# two runs at once, each on one core without polling threads
export QUARTIC_STAY_WARM_MS=0 RAYON_NUM_THREADS=1
"$q" train --task match3-distinct --init "$ckpt" --steps 6000 --batch 16 --warmup 40 \
  --eval-every 500 --quiet --out "$out/distinct-curriculum-6000" &
curriculum=$!
"$q" experiment --task match3-distinct --rules "$rule" --seeds 1 --steps 6000 --batch 16 \
  --eval-every 500 --jobs 1 --out "$out/distinct-scratch" &
scratch=$!
wait "$curriculum"
wait "$scratch"
unset RAYON_NUM_THREADS
"$q" train --task match3-distinct --init "$ckpt" --steps 20000 --batch 16 --warmup 40 \
  --eval-every 500 --quiet --out "$out/distinct-curriculum-20000"
# the long schedule: the baseline's width matched to Strassen's count (the plan of both rules,
# whose job 0 is the baseline's `match3` run)
"$q" experiment plan --task match3 --rules "baseline,$rule" --seeds 1 --steps 12000 --batch 16 \
  --eval-every 500 --out "$out/baseline-match3"
export RAYON_NUM_THREADS=1
"$q" train --task match3-distinct --init "$out/distinct-curriculum-20000/checkpoint.safetensors" \
  --steps 30000 --batch 16 --warmup 40 --eval-every 500 --quiet --out "$out/distinct-curriculum-50000" &
strassen_long=$!
(
  "$q" experiment run "$out/baseline-match3" --job 0
  "$q" eval --checkpoint "$out/baseline-match3/match3/runs/baseline/seed0/checkpoint.safetensors" \
    --task match3-distinct --batches 32
  "$q" train --task match3-distinct --init "$out/baseline-match3/match3/runs/baseline/seed0/checkpoint.safetensors" \
    --steps 20000 --batch 16 --warmup 40 --eval-every 500 --quiet --out "$out/baseline-distinct-20000"
  "$q" train --task match3-distinct --init "$out/baseline-distinct-20000/checkpoint.safetensors" \
    --steps 30000 --batch 16 --warmup 40 --eval-every 500 --quiet --out "$out/baseline-distinct-50000"
) &
baseline_long=$!
wait "$strassen_long"
wait "$baseline_long"
