#!/usr/bin/env bash
# Side-by-side speed table: this project (examples/speed.rs) and, when its virtual environment
# exists, the PyTorch original (scripts/reference_speed.py), same workloads, same machine, one
# process per workload. Usage: scripts/speed_table.sh [PYTHON]  (default ../ref-venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
py="${1:-../ref-venv/bin/python}"
cargo build --release --example speed -q
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
printf "| workload | ours (s) | ours peak (MiB) | original (s) | original peak (MiB) | speed-up |\n| --- | --- | --- | --- | --- | --- |\n"
# timed repeats per workload, the same on both sides (after one untimed run on both): the
# small model's steps are short, and twenty of them give a steadier median than five
declare -A repeats=([readme-forward]=5 [readme-train]=3 [small-train]=20 [quartic-64]=1 [quartic-128]=1 [readme-forward-4s]=5 [readme-train-4s]=3)
# each measurement waits for the previous process to exit: `$(...)` returns at its end, where
# `read < <(...)` returned at its output line, and the original's exit (freeing gigabytes,
# stopping torch's threads) then overlapped the next workload
for w in readme-forward readme-train small-train quartic-64 quartic-128 readme-forward-4s readme-train-4s; do
  line=$(./target/release/examples/speed "$w" "${repeats[$w]}")
  IFS=$'\t' read -r _ ours ours_mem <<< "$line"
  ref="n/a"; ref_mem="n/a"; ratio="n/a"
  if [[ "$w" != quartic-* && -x "$py" ]]; then
    line=$("$py" scripts/reference_speed.py "$w" "${repeats[$w]}" 2>/dev/null) || true
    IFS=$'\t' read -r _ ref ref_mem <<< "$line" || true
    ratio=$(python3 -c "print(f'{$ref/$ours:.1f}×')")
  fi
  printf "| %s | %s | %s | %s | %s | %s |\n" "$w" "$ours" "$ours_mem" "$ref" "$ref_mem" "$ratio"
done
