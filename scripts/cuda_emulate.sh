#!/usr/bin/env bash
# Runs our CUDA kernels on the host: tests/cuda_emulation/*.cpp include a kernel file through
# emulate.h (blocks of real threads meeting at __syncthreads) and hold it to a reference that
# materialises the weights. Every element type and head width the build compiles. No GPU and no
# CUDA toolkit needed: a C++20 compiler (g++ or clang++).
# Usage: scripts/cuda_emulate.sh [--quiet]
set -euo pipefail
cd "$(dirname "$0")/.."
quiet=${1:-}
cxx=${CXX:-$(command -v g++ || command -v clang++ || echo c++)}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
failed=0
for element in float double; do
    for width in 16 32 64 128; do
        bin=$out/attention_${element}_$width
        "$cxx" -std=c++20 -O1 -pthread -DELEMENT="$element" -DWIDTH="$width" \
            -o "$bin" tests/cuda_emulation/attention.cpp
        if log=$("$bin"); then
            [[ $quiet == --quiet ]] || echo "$log"
        else
            echo "$log"
            failed=1
        fi
    done
done
if [[ $failed == 1 ]]; then
    echo "cuda_emulate: a kernel disagrees with the reference" >&2
    exit 1
fi
echo "cuda_emulate: the attention kernels agree with the reference (2 element types × 4 widths)"
