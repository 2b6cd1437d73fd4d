#!/usr/bin/env bash
# The dim-64 curriculum of scripts/match3_strassen_wide.sh (12 000 steps × 16 of `match3`, the
# checkpoint scored on `match3-distinct` as it is, then 20 000 steps of `match3-distinct` from its
# weights), with every rule's token embedding started on a number line
# (scripts/match3_number_line.py: residue x as x/37, (x/37)² and a constant; positions at zero),
# for Strassen attention (dim 64, 4 heads × 16) and the baseline at its parameter count (dim 80).
# One core per rule, one after the other: about 2.5 hours (docs/experiments/match3.md,
# "A number line").
# Usage: scripts/match3_number_line.sh [OUT] [SEED] (runs/match3-number-line, seed 0)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/match3-number-line}"
seed="${2:-0}"
cargo build --release -q
# a copy, so that a rebuild during the run does not change its later parts
q="$out/quartic"
mkdir -p "$out" && cp target/release/quartic "$q"
export QUARTIC_STAY_WARM_MS=0 RAYON_NUM_THREADS=1
curriculum() { # name, model flags...
  local name="$1"
  shift
  # a 1-step run gives the model's initial weights, which the line then replaces in part
  "$q" train --task match3 --depth 1 --heads 4 --dim-head 16 --ff-mult 2 "$@" --steps 1 \
    --batch 16 --seed "$seed" --quiet --out "$out/$name-init"
  scripts/match3_number_line.py "$out/$name-init/checkpoint.safetensors" "$out/$name-line.safetensors"
  "$q" train --task match3 --init "$out/$name-line.safetensors" --steps 12000 --batch 16 \
    --warmup 40 --seed "$seed" --eval-every 500 --quiet --out "$out/$name-match3-12000"
  local ckpt="$out/$name-match3-12000/checkpoint.safetensors"
  "$q" eval --checkpoint "$ckpt" --task match3-distinct --batches 32
  "$q" train --task match3-distinct --init "$ckpt" --steps 20000 --batch 16 --warmup 40 \
    --seed "$seed" --eval-every 500 --quiet --out "$out/$name-distinct-20000"
}
curriculum baseline --rule baseline --dim 80 > "$out/baseline.log" 2>&1
curriculum strassen --rule examples/rules/strassen.rule --dim 64 > "$out/strassen.log" 2>&1
