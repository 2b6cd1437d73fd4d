"""Starts a checkpoint's token embedding on chosen features of each residue, for the match3
scripts beside it (match3_number_line.py, match3_fourier.py). Standard library only.
"""
import json
import math
import sys

from checkpoint_io import read, write_start


def start(source, target, features):
    """Writes `source`'s parameters to `target` as a fresh start for `quartic train --init`, with
    residue x's row of the token embedding beginning with `features(x, modulus)` and going on
    with the row's own initial values, scaled so that every row has the norm sqrt(dim) (rmsnorm
    then leaves the features as they are), and the position embedding at zero (match3's labels
    do not depend on positions). Both stay trainable; nothing else changes. Returns the
    modulus."""
    meta, tensors = read(source)
    config = json.loads(meta["config"])
    modulus, dim = config["num_tokens"], config["dim"]
    params = {k: v for k, v in tensors.items() if k.startswith("param/")}
    shape, rows = params["param/token_emb.weight"]
    if shape != [modulus, dim]:
        sys.exit(f"{source}: token embedding {shape}, expected [{modulus}, {dim}]")
    out = []
    for x in range(modulus):
        head = features(x, modulus)
        rest = rows[x * dim + len(head) : (x + 1) * dim]
        room = dim - sum(c * c for c in head)
        if room <= 0 or not rest:
            sys.exit(f"the features of residue {x} do not fit in dim {dim}: they alone reach the norm")
        norm = math.sqrt(sum(c * c for c in rest))
        out.extend(head + [c * math.sqrt(room) / norm for c in rest])
    params["param/token_emb.weight"] = (shape, out)
    shape, _ = params["param/pos_emb.weight"]
    params["param/pos_emb.weight"] = (shape, [0.0] * (shape[0] * shape[1]))
    write_start(target, meta, params)
    return modulus
