#!/usr/bin/env bash
# Strassen attention with a multiplicative readout (examples/rules/strassen_gated.rule, dim 64,
# 4 heads × 16, ff_mult 2) against the baseline at about its parameter count (dim 80) and the
# quadratic control with the same readout (examples/rules/means_gated.rule, dim 64), each from
# scratch and with the token embedding started on match3's Fourier features
# (scripts/match3_fourier.py: cos and sin of 2π·t·x/37 for t = 1…18; positions at zero), trained
# on `match3-distinct` directly (no curriculum): docs/experiments/match3.md, "Fourier features".
# Then each Fourier run trains MORE steps on from its last weights (a fresh optimizer and its
# own schedule; MORE = 0 skips it).
# Two runs at a time, one core each: about STEPS × (0.12 + 0.02 + 0.04) s + MORE × 0.12 s.
# Usage: scripts/match3_fourier.sh [OUT] [SEED] [STEPS] [MORE]
#        (runs/match3-fourier, seed 0, 20 000, 30 000)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/match3-fourier}"
seed="${2:-0}"
steps="${3:-20000}"
more="${4:-30000}"
cargo build --release -q
# a copy, so that a rebuild during the run does not change its later parts
q="$out/quartic"
mkdir -p "$out" && cp target/release/quartic "$q"
export QUARTIC_STAY_WARM_MS=0 RAYON_NUM_THREADS=1 PYTHONDONTWRITEBYTECODE=1
model() { # name → model flags
  case "$1" in
    gated) echo "--rule examples/rules/strassen_gated.rule --dim 64" ;;
    baseline) echo "--rule baseline --dim 80" ;;
    means) echo "--rule examples/rules/means_gated.rule --dim 64" ;;
  esac
}
start() { # name: a 1-step run's weights (shared by both starts) and their Fourier version
  local name="$1"
  # shellcheck disable=SC2046 # the flags are words
  "$q" train --task match3-distinct $(model "$name") --depth 1 --heads 4 --dim-head 16 \
    --ff-mult 2 --steps 1 --batch 16 --seed "$seed" --quiet --out "$out/$name-init"
  scripts/match3_fourier.py "$out/$name-init/checkpoint.safetensors" "$out/$name-fourier.safetensors"
}
fit() { # init weights, steps, out folder: the training settings every run shares
  "$q" train --task match3-distinct --init "$1" --steps "$2" --batch 16 --warmup 40 \
    --seed "$seed" --eval-every 500 --quiet --out "$3"
}
run() { # name, start (scratch: the 1-step weights | fourier)
  local from="$out/$1-fourier.safetensors"
  [ "$2" = fourier ] || from="$out/$1-init/checkpoint.safetensors"
  fit "$from" "$steps" "$out/$1-$2-$steps"
}
train_on() { # name: MORE steps on from its Fourier run's last weights
  fit "$out/$1-fourier-$steps/checkpoint.safetensors" "$more" "$out/$1-fourier-then-$more"
}
for name in gated baseline means; do start "$name" > "$out/$name-start.log" 2>&1; done
run gated fourier > "$out/gated-fourier.log" 2>&1 &
run gated scratch > "$out/gated-scratch.log" 2>&1 &
wait
run baseline fourier > "$out/baseline-fourier.log" 2>&1 &
run baseline scratch > "$out/baseline-scratch.log" 2>&1 &
wait
run means fourier > "$out/means-fourier.log" 2>&1 &
run means scratch > "$out/means-scratch.log" 2>&1 &
wait
[ "$more" -gt 0 ] || exit 0
train_on gated > "$out/gated-fourier-then.log" 2>&1 &
{
  train_on baseline > "$out/baseline-fourier-then.log" 2>&1
  train_on means > "$out/means-fourier-then.log" 2>&1
} &
wait
