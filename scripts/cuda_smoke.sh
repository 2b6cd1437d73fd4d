#!/usr/bin/env bash
# Checks the CUDA build of scripts/cuda_build.sh on a machine without a GPU: the binary links the
# CUDA libraries, computes on the CPU exactly as the CPU build does, and refuses `--device cuda`
# with one clear error (the driver stub fails every call) instead of a panic or an abort.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${QUARTIC_CUDA_DIR:-$PWD/.cuda}
ROOT=$DIR/nvidia/cu13
CUDA_BIN=${CARGO_TARGET_DIR:-$PWD/target/cuda}/release/quartic
CPU_BIN=$PWD/target/release/quartic
export LD_LIBRARY_PATH=$ROOT/lib64/stubs:$ROOT/lib

fail() { echo "cuda_smoke: $*" >&2; exit 1; }

# ldd's output is read whole first: `ldd | grep -q` under pipefail fails at random when grep
# stops at the first match and ldd is killed by the closed pipe.
links=$(ldd "$CUDA_BIN") || fail "ldd cannot read $CUDA_BIN"
for lib in libcuda.so.1 libcublas.so.13 libnvrtc.so.13; do
    [[ $links == *"$lib => $ROOT/"* ]] || fail "$CUDA_BIN does not link $lib from $ROOT: $links"
done

args=(forward --tokens 3,1,4,1,5 --seed 7)
[[ -x $CPU_BIN ]] || cargo build --release --quiet --bin quartic
[[ "$("$CUDA_BIN" "${args[@]}" --device cpu)" == "$("$CPU_BIN" "${args[@]}")" ]] ||
    fail "the CUDA build's CPU logits differ from the CPU build's"

set +e
err=$("$CUDA_BIN" "${args[@]}" --device cuda 2>&1 >/dev/null)
rc=$?
set -e
[[ $rc == 1 && $err == *"cannot open CUDA device 0"* && $err != *panicked* ]] ||
    fail "--device cuda without a GPU: expected one clear error and status 1, got $rc: $err"
echo "cuda_smoke: links CUDA, CPU logits as the CPU build's, no GPU refused: $err"
