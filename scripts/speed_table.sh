#!/usr/bin/env bash
# Side-by-side speed table: this project (examples/speed.rs) and, when its virtual environment
# exists, the PyTorch original (scripts/reference_speed.py), same workloads, same machine, one
# process per workload, with each row's FLOP rate against the machine's f32 matmul peak.
# Usage: scripts/speed_table.sh [PYTHON]  (default ../ref-venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
py="${1:-../ref-venv/bin/python}"
cargo build --release --example speed -q
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
# the f32 matrix product rate the FLOP/s column is read against, measured before and after
peak_before=$(./target/release/examples/speed matmul-peak | cut -f2)
printf "| workload | ours (s) | ours peak (MiB) | ours GFLOP/s (of peak) | original (s) | original peak (MiB) | speed-up |\n| --- | --- | --- | --- | --- | --- | --- |\n"
# timed repeats per workload, the same on both sides (after one untimed run on both): the
# small model's steps are short, and twenty of them give a steadier median than five
declare -A repeats=([readme-forward]=5 [readme-train]=3 [small-train]=20 [quartic-64]=3 [quartic-128]=1
  [triangle-64]=5 [triangle-128]=5 [edge_transformer-64]=5 [edge_transformer-128]=5
  [readme-forward-4s]=5 [readme-train-4s]=3)
rows=(readme-forward readme-train small-train quartic-64 quartic-128 triangle-64 triangle-128
  edge_transformer-64 edge_transformer-128 readme-forward-4s readme-train-4s)
# each measurement waits for the previous process to exit: `$(...)` returns at its end, where
# `read < <(...)` returned at its output line, and the original's exit (freeing gigabytes,
# stopping torch's threads) then overlapped the next workload
for w in "${rows[@]}"; do
  line=$(./target/release/examples/speed "$w" "${repeats[$w]}")
  IFS=$'\t' read -r _ ours ours_mem gflop <<< "$line"
  rate=$(python3 -c "r = $gflop / $ours; print(f'{r:.1f} ({100 * r / $peak_before:.0f} %)')")
  ref="n/a"; ref_mem="n/a"; ratio="n/a"
  if [[ "$w" == readme-* || "$w" == small-* ]] && [[ -x "$py" ]]; then
    line=$("$py" scripts/reference_speed.py "$w" "${repeats[$w]}" 2>/dev/null) || true
    IFS=$'\t' read -r _ ref ref_mem <<< "$line" || true
    ratio=$(python3 -c "print(f'{$ref/$ours:.1f}×')")
  fi
  printf "| %s | %s | %s | %s | %s | %s | %s |\n" "$w" "$ours" "$ours_mem" "$rate" "$ref" "$ref_mem" "$ratio"
done
peak_after=$(./target/release/examples/speed matmul-peak | cut -f2)
echo "f32 matmul peak (512³ products, all cores): $peak_before GFLOP/s before, $peak_after after;"
echo "FLOPs from explain's cost model, a training step or layer backward counted as twice its forward."
