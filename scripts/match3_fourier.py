#!/usr/bin/env python3
"""A checkpoint whose token embedding starts on match3's Fourier features.

Why: `examples/rules/strassen_gated.rule` can count the witnesses of position i exactly with
uniform attention weights (docs/experiments/match3.md, "What would come next"): the pair
attention's means of cos and sin of 2 pi t x / modulus are the residues' Fourier coefficients,
and the gate multiplies their product by the query's own cos and sin. A learned embedding has
to find those features first. This script hands a rule (any rule, for a fair comparison) the
features as its starting point: residue x's row of the token embedding becomes

    (a cos(2 pi t x / m), a sin(2 pi t x / m) for t = 1 ... T, r_{2T+1}, ..., r_dim),

where r is the row's own initial values scaled so that every row has the norm sqrt(dim)
(rmsnorm then leaves the features as they are), and the position embedding starts at zero
(match3's labels do not depend on positions). Both stay trainable; nothing else changes.

Usage: scripts/match3_fourier.py IN.safetensors OUT.safetensors [T [A]]
IN is a checkpoint of any rule on match3 or match3-distinct (for instance a 1-step run's);
T defaults to (modulus - 1) / 2, every frequency up to its conjugates, and A to 1.5. The output
holds the parameters only (no optimizer moments), for `quartic train --init OUT`. Standard
library only (checkpoint_io.py).
"""
import json
import math
import sys

from checkpoint_io import read, write_start


def fourier_rows(rows, dim, modulus, frequencies, amplitude):
    """The token embedding's rows with the features in their first 2 T channels."""
    out = []
    width = 2 * frequencies
    for x in range(modulus):
        features = []
        for t in range(1, frequencies + 1):
            angle = 2 * math.pi * t * x / modulus
            features += [amplitude * math.cos(angle), amplitude * math.sin(angle)]
        rest = rows[x * dim + width : (x + 1) * dim]
        room = dim - sum(c * c for c in features)
        if room <= 0 or not rest:
            sys.exit(f"{frequencies} frequencies at amplitude {amplitude} do not fit in dim {dim}")
        norm = math.sqrt(sum(c * c for c in rest))
        out.extend(features + [c * math.sqrt(room) / norm for c in rest])
    return out


def main():
    if len(sys.argv) not in (3, 4, 5):
        sys.exit(__doc__.split("\n\n")[2])
    source, target = sys.argv[1:3]
    meta, tensors = read(source)
    config = json.loads(meta["config"])
    modulus, dim = config["num_tokens"], config["dim"]
    frequencies = int(sys.argv[3]) if len(sys.argv) >= 4 else (modulus - 1) // 2
    amplitude = float(sys.argv[4]) if len(sys.argv) == 5 else 1.5
    params = {k: v for k, v in tensors.items() if k.startswith("param/")}
    shape, rows = params["param/token_emb.weight"]
    if shape != [modulus, dim]:
        sys.exit(f"{source}: token embedding {shape}, expected [{modulus}, {dim}]")
    params["param/token_emb.weight"] = (
        shape,
        fourier_rows(rows, dim, modulus, frequencies, amplitude),
    )
    shape, _ = params["param/pos_emb.weight"]
    params["param/pos_emb.weight"] = (shape, [0.0] * (shape[0] * shape[1]))
    write_start(target, meta, params)
    print(f"{target}: token embedding on {frequencies} Fourier frequencies (amplitude "
          f"{amplitude}), positions at zero")


if __name__ == "__main__":
    main()
