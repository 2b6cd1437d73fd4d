#!/usr/bin/env bash
# The edge-pair table (docs/experiments/edge-pairs.md): every rule on `edge-match2` at the
# suite's width (3 seeds), the cheaper rules at widths 16 and 64 and at depth 2 (2 seeds), then
# one table and plot of accuracy against width. About an hour on 2 cores (measured before the
# experiment runner's fix of 7486c16, which took the separation suite from 20 to 12 min);
# STEPS=N for longer runs on bigger machines, JOBS=N runs at once. Usage: scripts/edge_pairs.sh [OUT] (runs/edge-pairs)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/edge-pairs}"
steps="${STEPS:-3000}"
jobs="${JOBS:-$(nproc)}"
cargo build --release -q
q=./target/release/quartic
# widths scale together: dim d, dim_edges d/2, 4 heads of d/4, 2 edge heads of d/4
at() {
  local d=$1; shift
  "$q" experiment --task edge-match2 --steps "$steps" --eval-every 250 --jobs "$jobs" \
    --dim "$d" --dim-edges $((d / 2)) --heads 4 --dim-head $((d / 4)) \
    --edge-heads 2 --edge-dim-head $((d / 4)) "$@"
}
at 32 --rules baseline,taylor,triangle,edge_transformer,routed,quartic,quartic_endpoints \
  --seeds 3 --out "$out/dim32"
for d in 16 64; do
  at "$d" --rules baseline,taylor,triangle,quartic --seeds 2 --out "$out/dim$d"
done
at 32 --rules baseline,taylor,triangle,quartic --seeds 2 --depth 2 --out "$out/dim32-depth2"
"$q" experiment compare "$out/dim16" "$out/dim32" "$out/dim64" "$out/dim32-depth2" --out "$out"
