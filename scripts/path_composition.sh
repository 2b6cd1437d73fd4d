#!/usr/bin/env bash
# The path-composition tables (docs/experiments/path-composition.md): `path-composition` (one
# composition, k = 2) at depth 1 with the separation suite's rules and `edge_transformer`, and
# `path-composition-long` (k ∈ {2, 3}, two compositions) at depth 2; 3 seeds, 2 000 steps × 32
# each (`triangle` at depth 2 also 6 000, and after chains of 2: a curriculum), then both side
# by side. About 45 minutes on 2
# cores (before the experiment runner's fix of 7486c16, which took the separation suite from
# 20 to 12 min);
# STEPS=N for longer runs, JOBS=N runs at once. The depth-1 runs include the suite's own
# path-composition row (same settings, same seeds, same budget: `edge_transformer` is under
# `triangle`'s count at dim 32).
# Usage: scripts/path_composition.sh [OUT] (runs/path-composition)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/path-composition}"
steps="${STEPS:-2000}"
jobs="${JOBS:-$(nproc)}"
cargo build --release -q
q=./target/release/quartic
"$q" experiment --task path-composition --rules baseline,taylor,triangle,routed,quartic,edge_transformer \
  --seeds 3 --steps "$steps" --jobs "$jobs" --out "$out/depth1"
"$q" experiment --task path-composition-long --depth 2 \
  --rules baseline,taylor,triangle,edge_transformer,quartic \
  --seeds 3 --steps "$steps" --eval-every 100 --jobs "$jobs" --out "$out/long-depth2"
# `triangle` is still leaving the uniform loss at the end of the depth-2 runs: three times longer
"$q" experiment --task path-composition-long --depth 2 --rules triangle \
  --seeds 3 --steps $((3 * steps)) --eval-every 100 --jobs "$jobs" --out "$out/long-depth2-triangle"
"$q" experiment compare "$out/depth1" "$out/long-depth2" --out "$out"
# a curriculum for `triangle` at depth 2: chains of 2 first (`path-composition`), then
# `path-composition-long` from those weights (`quartic train --init`), the depth-2 runs' widths
# (32,186 parameters), `steps` each, 3 seeds (about 8 minutes); each `train` ends with its
# held-out accuracy at every path length (the by-length table's row)
for seed in 0 1 2; do
  "$q" train --task path-composition --rule triangle --depth 2 --dim 32 --heads 4 --dim-head 8 \
    --edge-heads 2 --edge-dim-head 8 --ff-mult 2 --set hidden=16 --pool-edges --steps "$steps" \
    --batch 32 --eval-every 100 --seed "$seed" --quiet --out "$out/curriculum/short-s$seed"
  "$q" train --task path-composition-long --init "$out/curriculum/short-s$seed/checkpoint.safetensors" \
    --steps "$steps" --batch 32 --eval-every 100 --seed "$seed" --quiet \
    --out "$out/curriculum/long-s$seed"
done
