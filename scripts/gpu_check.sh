#!/usr/bin/env bash
# The GPU check, in two halves, for a GPU machine that has a driver, CUDA's libraries (PyTorch's
# wheels or a toolkit) and python3 with numpy and safetensors, but no Rust toolchain.
#
#   scripts/gpu_check.sh stage        here: build with CUDA (scripts/cuda_build.sh), strip the
#                                     binary and the `speed` example into gpu-check/ (ignored by
#                                     git; carry it), list what they load at run time in
#                                     gpu-check/manifest.md, and put the PyTorch original's
#                                     pure-Python packages (pinned, no torch) in gpu-check/python
#   scripts/gpu_check.sh run [OUT]    there: find CUDA's libraries, run every check against the
#                                     CPU and write OUT/gpu-report.md (OUT defaults to gpu-check/);
#                                     BUDGET=seconds caps the whole check (default 300),
#                                     GPU_CHECK_SKIP=name,... leaves sections out
#   DEVICE=cpu scripts/gpu_check.sh run   a dry run of the checks on a machine without a GPU
#                                     (CPU against CPU), with the CPU build's binary
#
# What `run` checks (scripts/gpu_report.py writes the report): every built-in rule's model,
# forward and backward, causal and not, padded, against the CPU (`quartic check --device`);
# the parity fixtures through `import-reference` and `forward`, against the CPU and the
# original's outputs; the README's default `quartic train` to its end on the device, and its
# first 20 losses against the CPU's; timings and peak memory of the speed workloads, ours and
# the original's on the same device. Sized to run in a few minutes on an H200.
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE=$PWD/gpu-check

# The original's packages besides torch, numpy and sympy (which the GPU machine's PyTorch
# brings), at the versions the parity fixtures were made with.
ORIGINAL_PACKAGES=(
    quartic-transformer==0.0.18 einx==0.3.0 einops==0.8.2 hyper-connections==0.4.11
    colt5-attention==0.11.2 taylor-series-linear-attention==0.2.0 x-transformers==2.31.10
    local-attention==1.11.2 rotary-embedding-torch==0.9.1 torch-einops-utils==0.2.0
    frozendict==2.5.1 jaxtyping==0.3.11 wadler-lindig==0.1.8 loguru==0.7.3
)

stage() {
    scripts/cuda_build.sh --quiet --bin quartic --example speed
    local root=${QUARTIC_CUDA_DIR:-$PWD/.cuda}/nvidia/cu13
    local bin=${CARGO_TARGET_DIR:-$PWD/target/cuda}/release/quartic
    rm -rf "$STAGE" && mkdir -p "$STAGE"
    strip -o "$STAGE/quartic" "$bin"
    strip -o "$STAGE/speed" "$(dirname "$bin")/examples/speed"
    python3 -m pip install --quiet --root-user-action=ignore --no-deps --target "$STAGE/python" \
        "${ORIGINAL_PACKAGES[@]}"
    {
        echo "# What gpu-check/quartic needs at run time"
        echo
        echo "Built by \`scripts/gpu_check.sh stage\` from $(git describe --always --dirty) with"
        echo "CUDA 13.0 (PTX for sm_${CUDA_COMPUTE_CAP:-90}), $(du -h "$STAGE/quartic" | cut -f1) stripped."
        echo
        echo "- Shared libraries (\`ldd\`, here): the driver's \`libcuda.so.1\`, and \`libnvrtc.so.13\`,"
        echo "  \`libcublas.so.13\` (which loads \`libcublasLt.so.13\`) from CUDA 13: \`run\` looks for"
        echo "  them in python3's \`nvidia/cu13/lib\` and the toolkit's \`lib64\`."
        echo "- dfdx compiles a few kernels with NVRTC at run time and reads \`cuda_fp16.h\` from the"
        echo "  include folder baked in at build time (\`$root/include\`), and dfdx's \`cuda_utils.cuh\`"
        echo "  from its build folder: both are copied to \`include/\`, and \`run\` links the baked"
        echo "  path to that copy when the path is missing."
        echo "- \`speed\` (the \`speed\` example, $(du -h "$STAGE/speed" | cut -f1)) loads the same libraries."
        echo "- \`python/\`: the PyTorch original's pure-Python packages, for its timings:"
        echo "  ${ORIGINAL_PACKAGES[*]}."
        echo
        echo '```'
        ldd "$bin" | grep -v -e linux-vdso -e ld-linux
        echo '```'
    } >"$STAGE/manifest.md"
    echo "$root/include" >"$STAGE/include-dir"
    # the headers NVRTC reads at run time (cuda_fp16.h and what it includes), 5 MB, for a
    # machine whose toolkit is elsewhere or absent
    mkdir -p "$STAGE/include"
    (cd "$root/include" && find . -maxdepth 1 -type f -print0 | xargs -0 cp -t "$STAGE/include" &&
        cp -r crt nv "$STAGE/include/")
    # and dfdx's own headers, which its run-time kernels include from its build folder
    cp "$(dirname "$bin")"/build/dfdx-*/out/*.cuh "$STAGE/include/"
    echo "staged: $(du -sh "$STAGE" | cut -f1) in $STAGE (carry gpu-check)"
}

# Folders holding CUDA 13's libnvrtc and libcublas on this machine, for LD_LIBRARY_PATH.
cuda_libs() {
    local dirs=()
    while IFS= read -r d; do dirs+=("$d"); done < <(
        python3 - <<'EOF' 2>/dev/null || true
import glob, os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()] + sys.path
for root in roots:
    for lib in glob.glob(os.path.join(root, "nvidia", "*", "lib")) + glob.glob(os.path.join(root, "nvidia", "*", "*", "lib")):
        if glob.glob(os.path.join(lib, "libcublas*.so.13")) or glob.glob(os.path.join(lib, "libnvrtc.so.13")):
            print(lib)
EOF
    )
    for d in /usr/local/cuda/lib64 /usr/local/cuda-13*/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
        [[ -d $d ]] && dirs+=("$d")
    done
    local IFS=:
    echo "${dirs[*]}"
}

run() {
    local out=${1:-$STAGE}
    mkdir -p "$out"
    local device=${DEVICE:-cuda}
    local bin=$STAGE/quartic
    if [[ $device == cpu ]]; then
        bin=$PWD/target/release/quartic
        [[ -x $bin ]] || cargo build --release --quiet --bin quartic
    else
        [[ -x $bin ]] || { echo "gpu_check: no $bin; run \`scripts/gpu_check.sh stage\` first" >&2; exit 1; }
        export LD_LIBRARY_PATH="$(cuda_libs)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        local baked
        baked=$(cat "$STAGE/include-dir")
        if [[ ! -e $baked/cuda_fp16.h ]]; then
            # the staged copy of the build's headers
            mkdir -p "$(dirname "$baked")" && ln -sfn "$STAGE/include" "$baked"
        fi
    fi
    local speed=$STAGE/speed
    if [[ $device == cpu ]]; then
        speed=$PWD/target/release/examples/speed
        [[ -x $speed ]] || cargo build --release --quiet --example speed
    fi
    python3 scripts/gpu_report.py --quartic "$bin" --device "$device" --out "$out" \
        --speed "$speed" --original "$STAGE/python" --budget "${BUDGET:-300}"
}

case "${1:-}" in
    stage) stage ;;
    run) shift; run "$@" ;;
    *) echo "usage: scripts/gpu_check.sh stage | run [OUT]" >&2; exit 2 ;;
esac
