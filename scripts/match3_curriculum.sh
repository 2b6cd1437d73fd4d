#!/usr/bin/env bash
# The match3 curriculum (docs/experiments/match3.md): `match3` for 12 000 steps × 16 at the
# separation suite's budget (one seed; `baseline`, `triangle`, `edge_transformer`), each final
# checkpoint scored on `match3-distinct` as it is, then trained on `match3-distinct` from those
# weights (`quartic train --init`) for 6 000 steps × 16 and for 20 000. About two hours on 2
# cores. Usage: scripts/match3_curriculum.sh [OUT] (runs/match3-curriculum)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/match3-curriculum}"
cargo build --release -q
q=./target/release/quartic
rules=(baseline triangle edge_transformer)
"$q" experiment --task match3 --rules "$(IFS=,; echo "${rules[*]}")" --seeds 1 --steps 12000 \
  --batch 16 --eval-every 500 --jobs 2 --out "$out/match3"
ckpt() { echo "$out/match3/match3/runs/$1/seed0/checkpoint.safetensors"; }
for rule in "${rules[@]}"; do
  "$q" eval --checkpoint "$(ckpt "$rule")" --task match3-distinct --batches 32
done
# two runs at a time, each on one core without polling threads
export QUARTIC_STAY_WARM_MS=0 RAYON_NUM_THREADS=1
curriculum() { # RULE STEPS
  "$q" train --task match3-distinct --init "$(ckpt "$1")" --steps "$2" --batch 16 --warmup 40 \
    --eval-every 500 --quiet --out "$out/distinct-$1-$2"
}
two() { # RULE STEPS RULE STEPS: two runs at once; the script fails when either does
  curriculum "$1" "$2" &
  local a=$!
  curriculum "$3" "$4" &
  local b=$!
  wait "$a"
  wait "$b"
}
two baseline 6000 triangle 6000
two edge_transformer 6000 baseline 20000
two triangle 20000 edge_transformer 20000
