#!/usr/bin/env bash
# strassen_gated (examples/rules/strassen_gated.rule, dim 64, 4 heads × 16, ff_mult 2), or the
# baseline at about its parameter count (MODEL=baseline: dim 80), on match3-distinct from the
# Fourier start (scripts/match3_fourier.py), trained in stages that
# each start from the last one's weights with a fresh optimizer and its own schedule: 20 000
# steps, then 30 000 three times (docs/experiments/match3.md, "Trained on"; the same flags as
# scripts/match3_fourier.sh). One run at a time on every core (RAYON_NUM_THREADS, default 2).
#
# Resumable: a finished stage (its `done` file) is skipped and an interrupted one (Ctrl-C,
# SIGTERM: the trainer saves a checkpoint) continues with `--resume`, so the chain can go on
# over several sessions from a saved copy of OUT (scripts/match3_chain.sh save OUT DEST keeps
# what it needs to go on: every stage's metrics (compressed) and settings, and the unfinished
# stage's checkpoint, or the last stage's weights once the chain is done; `restore DEST OUT`
# puts it back).
# Usage: scripts/match3_chain.sh [OUT] [SEED] [MODEL]  (runs/match3-chain, seed 0, gated)
#        scripts/match3_chain.sh save OUT DEST | restore DEST OUT
set -euo pipefail
cd "$(dirname "$0")/.."
stages=(s1-20000 s2-30000 s3-30000 s4-30000)
case "${1:-}" in
  save)
    src="$2" dest="$3"
    mkdir -p "$dest"
    cp "$src"/*-fourier.safetensors "$dest/"
    for s in "${stages[@]}"; do
      [ -d "$src/$s" ] || continue
      mkdir -p "$dest/$s"
      cp "$src/$s/config.toml" "$dest/$s/"
      gzip -9c "$src/$s/metrics.csv" > "$dest/$s/metrics.csv.gz"
      if [ -f "$src/$s/done" ]; then
        touch "$dest/$s/done"
        # the finished chain's weights, for `quartic eval`
        if [ "$s" = "${stages[-1]}" ]; then cp "$src/$s/checkpoint.safetensors" "$dest/$s/"; fi
      else # what --resume reads
        gzip -9c "$src/$s/metrics.jsonl" > "$dest/$s/metrics.jsonl.gz"
        cp "$src/$s/checkpoint.safetensors" "$dest/$s/"
      fi
    done
    exit 0 ;;
  restore)
    mkdir -p "$3" && cp -r "$2"/. "$3"/
    find "$3" -name '*.gz' -exec gunzip -f {} +
    exit 0 ;;
esac
out="${1:-runs/match3-chain}"
seed="${2:-0}"
model="${3:-gated}"
case "$model" in
  gated) flags=(--rule examples/rules/strassen_gated.rule --dim 64) ;;
  baseline) flags=(--rule baseline --dim 80) ;;
  *) echo "MODEL is gated or baseline, not $model" >&2; exit 2 ;;
esac
cargo build --release -q
mkdir -p "$out" && cp target/release/quartic "$out/quartic"
out="$(cd "$out" && pwd)"
export QUARTIC_STAY_WARM_MS=0 RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-2}" PYTHONDONTWRITEBYTECODE=1
if [ ! -f "$out/$model-fourier.safetensors" ]; then
  "$out/quartic" train --task match3-distinct "${flags[@]}" --depth 1 --heads 4 --dim-head 16 \
    --ff-mult 2 --steps 1 --batch 16 --seed "$seed" --quiet --out "$out/$model-init"
  scripts/match3_fourier.py "$out/$model-init/checkpoint.safetensors" \
    "$out/$model-fourier.safetensors"
fi
stage() { # init weights, steps, folder
  [ -f "$3/done" ] && return 0
  if [ -f "$3/checkpoint.safetensors" ] && [ -f "$3/config.toml" ]; then
    "$out/quartic" train --resume --out "$3" --quiet
  else
    "$out/quartic" train --task match3-distinct --init "$1" --steps "$2" --batch 16 --warmup 40 \
      --seed "$seed" --eval-every 500 --quiet --out "$3"
  fi
  touch "$3/done"
}
from="$out/$model-fourier.safetensors"
for s in "${stages[@]}"; do
  stage "$from" "${s#*-}" "$out/$s"
  from="$out/$s/checkpoint.safetensors"
done
