#!/usr/bin/env python3
"""Where a match3-distinct model errs: held-out accuracy by the kind of position.

Draws sequences the way `match3-distinct` does (24-32 values mod 37 from 7-8 residues with no
two-value witness; src/train/tasks/sequence.rs), from its own random stream, runs each through
`quartic forward --checkpoint` and tallies each checkpoint's accuracy:
  - negatives, and positives by how many residue pairs {b, c} witness them (b + c = -a);
  - positives by how many position pairs (j, k) carry a witness (the mass a softmax over
    pairs can put on one);
  - by the number of distinct residues in the sequence.
Standard library only. Usage:
  scripts/match3_errors.py QUARTIC SEQUENCES SEED NAME=CHECKPOINT [NAME=CHECKPOINT ...]
"""
import json
import random
import subprocess
import sys
from collections import defaultdict

M, MIN_LEN, MAX_LEN, MIN_VALUES, MAX_VALUES = 37, 24, 32, 7, 8


def has_two_value_witness(values):
    return any((x + 2 * y) % M == 0 for x in values for y in values)


def draw(rng):
    n = rng.randint(MIN_LEN, MAX_LEN)
    size = rng.randint(MIN_VALUES, MAX_VALUES)
    while True:
        subset = rng.sample(range(M), size)
        if not has_two_value_witness(subset):
            break
    return [rng.choice(subset) for _ in range(n)]


def describe(tokens):
    """Per position: (label, witnessing residue pairs, witnessing position pairs)."""
    count = defaultdict(int)
    for t in tokens:
        count[t] += 1
    present = sorted(count)
    out = []
    for a in tokens:
        pairs = [(b, c) for i, b in enumerate(present) for c in present[i + 1:]
                 if (a + b + c) % M == 0]
        positions = sum(2 * count[b] * count[c] for b, c in pairs)  # (j, k) and (k, j)
        out.append((int(bool(pairs)), len(pairs), positions))
    return out


def predictions(quartic, checkpoint, tokens):
    line = subprocess.run(
        [quartic, "forward", "--checkpoint", checkpoint, "--tokens", ",".join(map(str, tokens))],
        check=True, capture_output=True, text=True).stdout
    logits = json.loads(line)["logits"][0]
    return [0 if row[0] >= row[1] else 1 for row in logits]


POSITION_BUCKETS = (8, 16, 32, 64)


def bucket_positions(p):
    """The row of a positive with p witnessing position pairs, and its place in the table."""
    for place, top in enumerate(POSITION_BUCKETS):
        if p <= top:
            # the fewest is 2: one witnessing pair of residues at one position each, (j, k) and (k, j)
            low = POSITION_BUCKETS[place - 1] + 1 if place else 2
            return f"{low}-{top}", place
    return f"> {POSITION_BUCKETS[-1]}", len(POSITION_BUCKETS)


def main():
    quartic, sequences, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    models = [a.split("=", 1) for a in sys.argv[4:]]
    rng = random.Random(seed)
    data = [draw(rng) for _ in range(sequences)]
    # per model, per (table, row): [right, total]
    tally = {name: defaultdict(lambda: [0, 0]) for name, _ in models}
    for tokens in data:
        facts = describe(tokens)
        distinct = len(set(tokens))
        for name, ckpt in models:
            for (label, pairs, positions), guess in zip(facts, predictions(quartic, ckpt, tokens)):
                # rows as (table, place in it, label)
                rows = [("all", 0, "all"), ("distinct residues", distinct, str(distinct))]
                if label:
                    bucket, place = bucket_positions(positions)
                    rows += [("witnessing residue pairs", min(pairs, 3),
                              f"{pairs}" if pairs < 3 else "3 or more"),
                             ("positives: witnessing position pairs", place, bucket)]
                else:
                    rows += [("witnessing residue pairs", 0, "0 (negatives)")]
                for row in rows:
                    cell = tally[name][row]
                    cell[0] += guess == label
                    cell[1] += 1
    names = [name for name, _ in models]
    print(f"{sequences} sequences (seed {seed}), "
          f"{sum(len(t) for t in data)} positions; accuracy % (positions)\n")
    keys = sorted(tally[names[0]], key=lambda k: (k[0] != "all", k[0], k[1]))
    print("| kind | value | " + " | ".join(names) + " |")
    print("| --- | --- | " + " | ".join("---:" for _ in names) + " |")
    for key in keys:
        cells = []
        for name in names:
            right, total = tally[name][key]
            cells.append(f"{100 * right / total:.1f} ({total})")
        print(f"| {key[0]} | {key[2]} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
