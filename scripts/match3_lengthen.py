#!/usr/bin/env python3
"""A checkpoint of a shorter task's model, its position table extended for longer sequences.

A length curriculum trains on short sequences first (`match3-distinct-short`, 12-16 values) and
then on long ones (`match3-distinct`, 24-32). The model's position table has one row per
position of the task it was made for, and `quartic train --init` takes the model's shape from
the checkpoint, so the table must grow first. match3's labels do not depend on positions, so a
trained model has learned to read any of its position rows alike; the new rows repeat the
learned ones in turn (row p gets row p mod old_length), which keeps what is added to a token
within what training saw. Everything else is unchanged.

Usage: scripts/match3_lengthen.py IN.safetensors OUT.safetensors LENGTH
The output holds the parameters only (no optimizer moments), for `quartic train --init OUT`.
Standard library only (checkpoint_io.py).
"""
import json
import sys

from checkpoint_io import read, write_start


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__.split("\n\n")[2])
    source, target, length = sys.argv[1], sys.argv[2], int(sys.argv[3])
    meta, tensors = read(source)
    config = json.loads(meta["config"])
    old = config["max_seq_len"]
    if length < old:
        sys.exit(f"{source}: max_seq_len {old}; asked for {length}, which is shorter")
    params = {k: v for k, v in tensors.items() if k.startswith("param/")}
    key = "param/pos_emb.weight"
    if key in params:
        (rows, dim), values = params[key]
        if rows != old:
            sys.exit(f"{source}: {rows} position rows for max_seq_len {old}")
        grown = [values[(p % old) * dim + c] for p in range(length) for c in range(dim)]
        params[key] = ([length, dim], grown)
    config["max_seq_len"] = length
    write_start(target, meta, params, config)
    print(f"{target}: positions {old} -> {length}")


if __name__ == "__main__":
    main()
