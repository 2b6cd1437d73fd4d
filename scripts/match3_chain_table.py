#!/usr/bin/env python3
"""The match3 chain's results table: one row per finished chain of scripts/match3_chain.sh.

For each chain folder (a run folder such as runs/match3-chain-seed1, or a saved copy such as
docs/experiments/match3/chain-seed1) it reads the model and the seed from the last stage's
checkpoint and counts the parameters in it; from the stages' metrics (8 × 16 held-out
sequences, evaluated during training) it takes the accuracy at each stage's end and the mean
over the last third of each of the last two stages (every stage starts with a fresh optimizer
and schedule, so the ends of their schedules are what compare: flat, or still rising); it
estimates the rule layer's FLOPs per training step as `quartic experiment` does (3 ×
`quartic explain`'s forward total at batch 16, n = 32) and evaluates the final weights on
256 × 32 held-out sequences with `quartic eval`.

Usage: scripts/match3_chain_table.py [--quartic BIN] CHAIN... > table.md
BIN defaults to target/release/quartic. A chain whose last stage has not finished is listed
with the stages it has, without the final evaluation. Standard library only (checkpoint_io.py).
"""
import csv
import gzip
import io
import json
import math
import os
import re
import subprocess
import sys
import tempfile

from checkpoint_io import read

STAGES = ["s1-20000", "s2-30000", "s3-30000", "s4-30000"]
EVAL_BATCHES = 256
EVAL_BATCH = 32


def metrics(stage_dir):
    """The stage's (step, held-out accuracy) pairs, from metrics.csv or its gzip copy."""
    plain = os.path.join(stage_dir, "metrics.csv")
    if os.path.exists(plain):
        text = open(plain).read()
    elif os.path.exists(plain + ".gz"):
        text = gzip.open(plain + ".gz", "rt").read()
    else:
        return []
    rows = csv.DictReader(io.StringIO(text))
    return [(int(r["step"]), float(r["eval_accuracy"])) for r in rows if r["eval_accuracy"]]


def flops_per_step(quartic, config, rule_source):
    """3 × the rule layer's forward FLOPs at batch 16, n = max_seq_len, times the depth."""
    with tempfile.NamedTemporaryFile("w", suffix=".rule", delete=False) as f:
        f.write(rule_source)
    try:
        cmd = [quartic, "explain", f.name, "--n", str(config["max_seq_len"]), "--batch", "16",
               "--dim", str(config["dim"]), "--dim-edges", str(config["dim_edges"])]
        for name, value in sorted(config["rule_params"].items()):
            cmd += ["--set", f"{name}={value:g}"]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    finally:
        os.unlink(f.name)
    m = re.search(r"^total: \S+ parameters, ([0-9.]+)([kMGT]?) FLOPs", out, re.M)
    if not m:
        sys.exit(f"`{' '.join(cmd)}` printed no total FLOPs")
    scale = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}[m.group(2)]
    return 3 * float(m.group(1)) * scale * config["depth"]


def evaluate(quartic, checkpoint):
    out = subprocess.run(
        [quartic, "eval", "--checkpoint", checkpoint, "--batches", str(EVAL_BATCHES),
         "--batch", str(EVAL_BATCH)],
        check=True, capture_output=True, text=True).stdout
    m = re.search(r"loss ([0-9.]+) \| accuracy ([0-9.]+)%", out)
    if not m:
        sys.exit(f"`quartic eval` on {checkpoint} printed no loss and accuracy:\n{out}")
    return float(m.group(1)), float(m.group(2))


def row(quartic, chain):
    ends, thirds, steps = [], [], 0
    for s in STAGES:
        points = metrics(os.path.join(chain, s))
        if not points:
            break
        ends.append(points[-1][1] * 100)
        steps += points[-1][0]
        third = [a for step, a in points if step > points[-1][0] * 2 / 3]
        thirds.append(100 * sum(third) / len(third))
    if not ends:
        sys.exit(f"{chain}: no stage of {', '.join(STAGES)} has held-out metrics")
    last = os.path.join(chain, STAGES[len(ends) - 1])
    finished = len(ends) == len(STAGES) and os.path.exists(os.path.join(last, "done"))
    checkpoint = os.path.join(last, "checkpoint.safetensors")
    if not os.path.exists(checkpoint):
        sys.exit(f"{chain}: {checkpoint} is missing")
    meta, tensors = read(checkpoint)
    config = json.loads(meta["config"])
    seed = json.loads(meta["train"])["train_config"]["seed"]
    params = sum(math.prod(shape) for k, (shape, _) in tensors.items() if k.startswith("param/"))
    rule = os.path.basename(config["rule"]).removesuffix(".rule")
    final = evaluate(quartic, checkpoint) if finished else None
    return {
        "rule": rule, "seed": seed, "dim": config["dim"], "params": params,
        "flops": flops_per_step(quartic, config, meta["rule_source"]),
        "steps": steps, "ends": ends, "thirds": thirds[-2:], "final": final,
    }


def main():
    args = sys.argv[1:]
    quartic = "target/release/quartic"
    if args[:1] == ["--quartic"]:
        quartic, args = args[1], args[2:]
    if not args:
        sys.exit(__doc__)
    rows = [row(quartic, chain) for chain in args]
    rows.sort(key=lambda r: (r["rule"] == "baseline", r["rule"], r["seed"]))
    print(f"| rule | seed | dim | parameters | rule FLOPs / step | steps | held-out % at the "
          f"stages' ends (8 × 16) | mean over the last third of the last two stages | final weights, "
          f"{EVAL_BATCHES} × {EVAL_BATCH} held-out: accuracy % (loss) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |")
    for r in rows:
        final = f"**{r['final'][1]:.1f}** ({r['final'][0]:.3f})" if r["final"] else "unfinished"
        ends = " / ".join(f"{a:.1f}" for a in r["ends"])
        print(f"| {r['rule']} | {r['seed']} | {r['dim']} | {r['params']:,} | "
              f"{r['flops'] / 1e6:.0f} M | {r['steps']:,} | {ends} | "
              f"{' → '.join(f'{a:.1f}' for a in r['thirds'])} | "
              f"{final} |")


if __name__ == "__main__":
    main()
