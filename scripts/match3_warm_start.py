#!/usr/bin/env python3
"""A checkpoint of a variant of strassen.rule that computes what a strassen.rule checkpoint computes.

Each variant adds parameters; set as below, they leave the function unchanged, so training the
variant from the result (`quartic train --init`) starts from the plain rule's weights and learns
only whether its addition helps (docs/experiments/match3.md):

- strassen_sharp.rule multiplies every score of query i by beta[i] = (softplus(a[i]) + 1) /
  sqrt(dim_head), with a[i] a linear map of x[i]; strassen.rule uses 1 / sqrt(dim_head). With
  that map's weights and bias at zero, beta = (1 + ln 2) / sqrt(dim_head) for every query;
  dividing the first factor of each score (f1, g1, h1) by 1 + ln 2 undoes it exactly (each score
  is a sum of dot products, linear in that factor).
- strassen_evidence.rule adds a second linear map to its node update (`attn.linear1`, from the
  per-head log-mean-exp of the pair scores); at zero it adds nothing.

Usage: scripts/match3_warm_start.py STRASSEN.safetensors RULE_FILE OUT.safetensors
The output holds the parameters only (no optimizer moments). Standard library only; reads and
writes the checkpoint format of src/train/checkpoint.rs (through checkpoint_io.py).
"""
import json
import math
import sys

from checkpoint_io import read, write_start


def rule_name(source):
    for line in source.splitlines():
        if line.startswith("rule "):
            return line[len("rule ") :].split("(")[0].strip()
    sys.exit("no `rule NAME(...)` line in the rule file")


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__.split("\n\n")[3])
    source, rule_file, out = sys.argv[1:]
    meta, tensors = read(source)
    config = json.loads(meta["config"])
    if not config["rule"].endswith("strassen.rule"):
        sys.exit(f"{source}: rule {config['rule']}, expected strassen.rule")
    params = {k: v for k, v in tensors.items() if k.startswith("param/")}
    with open(rule_file) as f:
        rule_source = f.read()
    name = rule_name(rule_source)
    dim = config["dim"]
    heads = int(config["rule_params"]["heads"])
    for layer in range(config["depth"]):
        pre = f"param/layers.{layer}."
        if name == "strassen_sharp":
            scale = 1 / (1 + math.log(2))
            for factor in ("f1", "g1", "h1"):
                shape, values = params[f"{pre}{factor}.linear0.weight"]
                params[f"{pre}{factor}.linear0.weight"] = (shape, [x * scale for x in values])
            params[f"{pre}beta.linear0.weight"] = ([heads, dim], [0.0] * (heads * dim))
            params[f"{pre}beta.linear0.bias"] = ([heads], [0.0] * heads)
            what = f"f1, g1, h1 × {scale:.6f}; beta's map at zero"
        elif name == "strassen_evidence":
            params[f"{pre}attn.linear1.weight"] = ([dim, heads], [0.0] * (dim * heads))
            what = "the evidence map at zero"
        else:
            sys.exit(f"{rule_file}: rule {name!r}; this script knows strassen_sharp and strassen_evidence")
    config["rule"] = rule_file
    write_start(out, dict(meta, rule_source=rule_source), params, config)
    print(f"{out}: {source} as {rule_file} ({what})")


if __name__ == "__main__":
    main()
