#!/usr/bin/env bash
# Issue 20's match3 table from nothing, in one command: scripts/match3_chain.sh for
# `strassen_gated` seeds 0, 1 and 2 and for the baseline (seed 0, dim 80), one after another,
# then scripts/match3_chain_table.py over the four chains (each chain's final weights evaluated
# on 256 × 32 held-out sequences). About 1.5–2 hours per chain on 2 cores; every chain is
# resumable (stop with Ctrl-C, run the same command again), and a finished one is skipped.
# Usage: scripts/match3_table.sh [OUT]   (runs/; the table goes to OUT/match3-chain-table.md)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs}"
for seed in 0 1 2; do
  scripts/match3_chain.sh "$out/match3-chain-seed$seed" "$seed" gated
done
scripts/match3_chain.sh "$out/match3-chain-baseline" 0 baseline
scripts/match3_chain_table.py --quartic "$out/match3-chain-seed0/quartic" \
  "$out"/match3-chain-seed{0,1,2} "$out/match3-chain-baseline" | tee "$out/match3-chain-table.md"
