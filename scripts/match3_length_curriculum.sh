#!/usr/bin/env bash
# A length curriculum for match3-distinct: Strassen attention (dim 64, 4 heads × 16) and the
# baseline at its parameter count (dim 80), each from scratch on `match3-distinct-short` (12–16
# values: 144–256 position pairs, a quarter of the full task's) for SHORT_STEPS steps × 16, then
# its position table grown to 32 (scripts/match3_lengthen.py) and trained on `match3-distinct`
# (24–32 values) for 20 000 steps × 16 from those weights. One core, the rules one after the
# other (docs/experiments/match3.md, "A length curriculum").
# Usage: scripts/match3_length_curriculum.sh [OUT] [SEED] [SHORT_STEPS]
# (runs/match3-length, seed 0, 20 000)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/match3-length}"
seed="${2:-0}"
short_steps="${3:-20000}"
cargo build --release -q
# a copy, so that a rebuild during the run does not change its later parts
q="$out/quartic"
mkdir -p "$out" && cp target/release/quartic "$q"
export QUARTIC_STAY_WARM_MS=0 RAYON_NUM_THREADS=1
curriculum() { # name, model flags...
  local name="$1"
  shift
  "$q" train --task match3-distinct-short --depth 1 --heads 4 --dim-head 16 --ff-mult 2 "$@" \
    --steps "$short_steps" --batch 16 --seed "$seed" --eval-every 500 --quiet \
    --out "$out/$name-short"
  scripts/match3_lengthen.py "$out/$name-short/checkpoint.safetensors" \
    "$out/$name-short-lengthened.safetensors" 32
  "$q" eval --checkpoint "$out/$name-short-lengthened.safetensors" --task match3-distinct \
    --batches 32
  "$q" train --task match3-distinct --init "$out/$name-short-lengthened.safetensors" \
    --steps 20000 --batch 16 --warmup 40 --seed "$seed" --eval-every 500 --quiet \
    --out "$out/$name-distinct-20000"
}
curriculum baseline --rule baseline --dim 80 > "$out/baseline.log" 2>&1
curriculum strassen --rule examples/rules/strassen.rule --dim 64 > "$out/strassen.log" 2>&1
