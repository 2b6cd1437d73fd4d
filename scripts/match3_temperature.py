#!/usr/bin/env python3
"""How a trained strassen.rule model's held-out accuracy depends on the sharpness of its softmax.

Every score of strassen.rule is a sum of dot products whose first factors are f1, g1 and h1;
multiplying those three maps by c multiplies every score by c: c = 0 is a uniform mean over all
pairs, c → ∞ the single best pair. For each c this writes the scaled checkpoint to a temporary
folder and runs `quartic eval` on match3-distinct (32 × 32 held-out sequences), then prints a
Markdown table. If the misses were witnesses that score highest but not by enough to dominate
the softmax, sharpening would turn them into hits (docs/experiments/match3.md, "Temperature").

Usage: scripts/match3_temperature.py CHECKPOINT [QUARTIC] [KEEP]
(QUARTIC: target/release/quartic; KEEP: a new folder that keeps the scaled checkpoints,
scaled-C.safetensors, e.g. for scripts/match3_errors.py)
"""
import os
import re
import subprocess
import sys
import tempfile

import checkpoint_io as io

SCALES = [0.0, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0]


def main():
    if len(sys.argv) not in (2, 3, 4):
        sys.exit(__doc__.split("\n\n")[2])
    source = sys.argv[1]
    quartic = sys.argv[2] if len(sys.argv) >= 3 else "target/release/quartic"
    keep = sys.argv[3] if len(sys.argv) == 4 else None
    if keep is not None:
        os.makedirs(keep)  # a new folder: refuses one that exists
    meta, tensors = io.read(source)
    params = {k: v for k, v in tensors.items() if k.startswith("param/")}
    meta = {k: v for k, v in meta.items() if k != "checksums"}
    meta["adam_step"] = "0"
    depth = sum(1 for k in params if k.endswith(".f1.linear0.weight"))
    if depth == 0:
        sys.exit(f"{source}: no f1 map; not a strassen.rule checkpoint")
    env = dict(os.environ, QUARTIC_STAY_WARM_MS="0")
    print(f"{source}: every score × c (f1, g1, h1 scaled), match3-distinct, 32 × 32 sequences\n")
    print("| c | loss | accuracy % |\n| ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        folder = keep or tmp
        for c in SCALES:
            scaled = dict(params)
            for layer in range(depth):
                for factor in ("f1", "g1", "h1"):
                    name = f"param/layers.{layer}.{factor}.linear0.weight"
                    shape, values = params[name]
                    scaled[name] = (shape, [x * c for x in values])
            path = os.path.join(folder, f"scaled-{c:g}.safetensors")
            io.write(path, meta, scaled)
            out = subprocess.run(
                [quartic, "eval", "--checkpoint", path, "--task", "match3-distinct", "--batches", "32"],
                check=True, capture_output=True, text=True, env=env,
            ).stdout
            m = re.search(r"loss ([0-9.]+) \| accuracy ([0-9.]+)%", out)
            if not m:
                sys.exit(f"unexpected output of quartic eval: {out}")
            print(f"| {c:g} | {m.group(1)} | {m.group(2)} |")


if __name__ == "__main__":
    main()
