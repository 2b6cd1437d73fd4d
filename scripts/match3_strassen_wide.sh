#!/usr/bin/env bash
# Strassen attention at twice the width (dim 64, 4 heads × 16: 70,144 parameters) on the
# curriculum of scripts/match3_strassen.sh, and the baseline at the same parameter count (the
# experiment runner matches its width: dim 80): `match3` for 12 000 steps × 16, that checkpoint
# scored on `match3-distinct` as it is, then trained on `match3-distinct` from its weights for
# 6 000 and (a separate run, its own schedule) for 20 000 steps × 16, and from those 20 000-step
# weights 30 000 steps more at a third of the learning rate (50 000 in all). The two rules at once,
# one core each: about 4 hours (docs/experiments/match3.md, "Wider").
# Usage: scripts/match3_strassen_wide.sh [OUT] [SEED] [RULE] (runs/match3-strassen-wide, seed 0:
# the seed of the data and the initial weights, the same in every stage;
# examples/rules/strassen.rule, or another rule file such as strassen_sharp.rule)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/match3-strassen-wide}"
seed="${2:-0}"
rule="${3:-examples/rules/strassen.rule}"
name="$(basename "$rule" .rule)"
cargo build --release -q
# a copy, so that a rebuild during the run does not change its later parts
q="$out/quartic"
mkdir -p "$out" && cp target/release/quartic "$q"
"$q" experiment plan --task match3 --rules "baseline,$rule" --seeds 1 \
  --first-seed "$seed" --steps 12000 --batch 16 --dim 64 --dim-head 16 --eval-every 500 \
  --out "$out/plan"
export QUARTIC_STAY_WARM_MS=0 RAYON_NUM_THREADS=1
curriculum() { # job, rule
  "$q" experiment run "$out/plan" --job "$1"
  local ckpt="$out/plan/match3/runs/$2/seed$seed/checkpoint.safetensors"
  "$q" eval --checkpoint "$ckpt" --task match3-distinct --batches 32
  "$q" train --task match3-distinct --init "$ckpt" --steps 6000 --batch 16 --warmup 40 \
    --seed "$seed" --eval-every 500 --quiet --out "$out/$2-distinct-6000"
  "$q" train --task match3-distinct --init "$ckpt" --steps 20000 --batch 16 --warmup 40 \
    --seed "$seed" --eval-every 500 --quiet --out "$out/$2-distinct-20000"
  "$q" train --task match3-distinct --init "$out/$2-distinct-20000/checkpoint.safetensors" \
    --steps 30000 --batch 16 --lr 0.001 --warmup 40 --seed "$seed" --eval-every 500 --quiet \
    --out "$out/$2-distinct-50000"
}
curriculum 0 baseline > "$out/baseline.log" 2>&1 &
baseline=$!
curriculum 1 "$name" > "$out/$name.log" 2>&1 &
other=$!
wait "$baseline"
wait "$other"
"$q" experiment report "$out/plan"
