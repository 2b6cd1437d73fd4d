#!/usr/bin/env python3
"""A checkpoint whose token embedding starts on a number line: match3's values as numbers.

Why: the one-layer construction for match3 in docs/experiments/match3.md scores a pair (j, k)
for query i with -beta * (x_i + x_j + x_k - C)^2, a sum of one dot product per pair of
positions, which needs each residue x encoded by u = x / modulus, u^2 and a constant. A learned
embedding has to find such a line among the residues first, and every multiple of a residue by
a unit mod 37 gives another, equally good one: the symmetry that learning has to break. This
script hands every rule the same line as its starting point, as Sanford et al. (2023) pose
Match3 (the inputs are integers): residue x's row of the token embedding becomes

    (alpha * u, alpha * u^2, alpha, r_4, ..., r_dim),   u = x / modulus,

where r is the row's own initial values scaled so that every row has the norm sqrt(dim)
(rmsnorm then leaves the line as it is), and the position embedding starts at zero (match3's
labels do not depend on positions). Both stay trainable; nothing else changes.

Usage: scripts/match3_number_line.py IN.safetensors OUT.safetensors [ALPHA]
IN is a checkpoint of any rule on match3 or match3-distinct (for instance a 1-step run's);
ALPHA defaults to 2. The output holds the parameters only (no optimizer moments), for
`quartic train --init OUT`. Standard library only (residue_embedding.py).
"""
import sys

from residue_embedding import start


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__.split("\n\n")[2])
    source, target = sys.argv[1:3]
    alpha = float(sys.argv[3]) if len(sys.argv) == 4 else 2.0

    def line(x, modulus):
        u = x / modulus
        return [alpha * u, alpha * u * u, alpha]

    start(source, target, line)
    print(f"{target}: token embedding on a number line (alpha {alpha}), positions at zero")


if __name__ == "__main__":
    main()
