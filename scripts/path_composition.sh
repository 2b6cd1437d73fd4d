#!/usr/bin/env bash
# The path-composition tables (docs/experiments/path-composition.md): `path-composition` (one
# composition, k = 2) at depth 1 with the separation suite's rules and `edge_transformer`, and
# `path-composition-long` (k ∈ {2, 3}, two compositions) at depth 2; 3 seeds, 2 000 steps × 32
# each (`triangle` at depth 2 also 6 000), then both side by side. About 35 minutes on 2
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
