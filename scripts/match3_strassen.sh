#!/usr/bin/env bash
# Strassen attention (examples/rules/strassen.rule) on match3 and match3-distinct, the same
# schedule as scripts/match3_curriculum.sh (docs/experiments/match3.md): `match3` for 12 000
# steps × 16 at the separation suite's budget (one seed), that checkpoint scored on
# `match3-distinct` as it is and trained on it from those weights for 6 000 steps × 16 (and,
# last, for 20 000), and `match3-distinct` from scratch for 6 000 steps × 16. About two hours
# on 2 cores.
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
