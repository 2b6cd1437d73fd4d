#!/usr/bin/env bash
# The disjoint edge-pair table (docs/experiments/edge-pairs.md, "Partners that never share a
# node"): `edge-match2-disjoint` with every rule at widths 16 and 32 (3 seeds each), the cheaper
# rules at widths 64 and 128 and at depth 2 (2 seeds), then one table and plot of accuracy
# against width. About 1 h 25 min on 2 cores: widths 16–64 and depth 2 57 min before the
# experiment runner's fix of 7486c16 (which took the separation suite from 20 to 12 min),
# width 128 27 min; STEPS=N for longer runs, JOBS=N runs at once.
# Usage: scripts/edge_pairs_disjoint.sh [OUT] (runs/edge-pairs-disjoint)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/edge-pairs-disjoint}"
steps="${STEPS:-6000}"
jobs="${JOBS:-$(nproc)}"
cargo build --release -q
q=./target/release/quartic
# widths scale together: dim d, dim_edges d/2, 4 heads of d/4, 2 edge heads of d/4
at() {
  local d=$1; shift
  "$q" experiment --task edge-match2-disjoint --steps "$steps" --eval-every 500 --jobs "$jobs" \
    --dim "$d" --dim-edges $((d / 2)) --heads 4 --dim-head $((d / 4)) \
    --edge-heads 2 --edge-dim-head $((d / 4)) "$@"
}
for d in 16 32; do
  at "$d" --rules baseline,taylor,triangle,edge_transformer,routed,quartic,quartic_endpoints \
    --seeds 3 --out "$out/dim$d"
done
at 16 --rules baseline,taylor,triangle,edge_transformer,quartic --seeds 2 --depth 2 \
  --out "$out/dim16-depth2"
for d in 64 128; do
  at "$d" --rules baseline,taylor,triangle,quartic --seeds 2 --out "$out/dim$d"
done
"$q" experiment compare "$out/dim16" "$out/dim32" "$out/dim64" "$out/dim128" \
  "$out/dim16-depth2" --out "$out"
