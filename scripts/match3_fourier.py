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
library only (residue_embedding.py).
"""
import math
import sys

from residue_embedding import start


def main():
    if len(sys.argv) not in (3, 4, 5):
        sys.exit(__doc__.split("\n\n")[2])
    source, target = sys.argv[1:3]
    frequencies = int(sys.argv[3]) if len(sys.argv) >= 4 else None
    amplitude = float(sys.argv[4]) if len(sys.argv) == 5 else 1.5

    def count(modulus):  # every frequency up to its conjugates unless T is given
        return (modulus - 1) // 2 if frequencies is None else frequencies

    def features(x, modulus):
        out = []
        for t in range(1, count(modulus) + 1):
            angle = 2 * math.pi * t * x / modulus
            out += [amplitude * math.cos(angle), amplitude * math.sin(angle)]
        return out

    modulus = start(source, target, features)
    print(f"{target}: token embedding on {count(modulus)} Fourier frequencies (amplitude "
          f"{amplitude}), positions at zero")


if __name__ == "__main__":
    main()
