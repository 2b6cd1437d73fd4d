#!/usr/bin/env bash
# A variant of Strassen attention trained the way the plain rule's last stage was
# (scripts/match3_strassen_wide.sh): from the plain rule's 20 000-step match3-distinct weights,
# 30 000 steps × 16 at lr 1e-3 (warmup 40, cosine to 1e-4), one core. scripts/match3_warm_start.py
# first writes the variant's checkpoint with its new parameters set so that it computes exactly
# what the plain rule's does (checked here: the two evaluations must print the same loss and
# accuracy). About 100 minutes at dim 64 (docs/experiments/match3.md, "Temperature").
# Usage: scripts/match3_strassen_variant.sh RULE [FROM] [OUT]
#   RULE: examples/rules/strassen_sharp.rule or examples/rules/strassen_evidence.rule
#   FROM: runs/match3-strassen-wide (the folder of scripts/match3_strassen_wide.sh)
#   OUT:  FROM/NAME-distinct-50000, NAME the rule file's name
set -euo pipefail
cd "$(dirname "$0")/.."
rule="${1:?usage: scripts/match3_strassen_variant.sh RULE [FROM] [OUT]}"
from="${2:-runs/match3-strassen-wide}"
name="$(basename "$rule" .rule)"
out="${3:-$from/$name-distinct-50000}"
# this build (a copy, so that a rebuild during the run does not change it): the variant may
# need what the plain rule's build lacked (strassen_sharp needs softplus's gradient at 0, fixed
# after the first run of it)
cargo build --release -q
mkdir -p "$(dirname "$out")"
q="$out.quartic"
cp target/release/quartic "$q"
plain="$from/strassen-distinct-20000/checkpoint.safetensors"
warm="$from/$name-warm-20000.safetensors"
[ -e "$warm" ] || scripts/match3_warm_start.py "$plain" "$rule" "$warm"
export QUARTIC_STAY_WARM_MS=0 RAYON_NUM_THREADS=1
same() { "$q" eval --checkpoint "$1" --task match3-distinct --batches 8 | head -1 | sed 's/^[^:]*://'; }
if [ "$(same "$plain")" != "$(same "$warm")" ]; then
  echo "$warm does not compute what $plain computes" >&2
  exit 1
fi
"$q" train --task match3-distinct --init "$warm" --steps 30000 --batch 16 --lr 0.001 \
  --warmup 40 --seed 0 --eval-every 500 --quiet --out "$out"
