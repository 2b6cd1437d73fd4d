#!/usr/bin/env python3
"""Weights, set by hand, with which one layer of strassen_evidence.rule decides match3-distinct.

docs/experiments/match3.md argues that one layer of Strassen attention can express match3
("Why one layer can express the task"); this script builds that solution so that `quartic eval`
can check it. With residue x as u = x / 37:

- Token embedding (u, u², 1, r, 0, ...), r making every row's norm sqrt(dim), positions zero:
  rmsnorm leaves the row as it is (up to one common factor).
- Heads 0, 1 and 2 (c = 1, 2, 0: a witness sums to 37, 74, or 0 in `match3`'s 0 + 0 + 0) score
  the pair (j, k) for query i with
  s·(f1_i·f2_j + g1_j·g2_k + h1_k·h2_i) = -beta · (u_i + u_j + u_k - c)²,
  s = dim_head^-0.5, through rank-2 maps: f1_i = -(beta/s)·(2u_i, u_i² - 2c·u_i + c²),
  f2_j = (u_j, 1); g1_j = -(beta/s)·(2u_j, u_j² - 2c·u_j), g2_k = (u_k, 1); h1, h2 as g1, g2.
  Any further head is zero. The values are zero.
- The rule's evidence, log((1/n²) Σ exp(score)), is then at least log(2/n²) ≥ -6.2 (n ≤ 32)
  where a witness exists and at most -beta / 37² = -20 where none does.
- The node update writes delta · evidence of heads 0, 1, 2 into channels 4, 5, 6 (delta small,
  so that the norms after it stay within 3 % of 1). The feedforward turns each into a step,
  (gelu(a) - gelu(a - 10)) / 10 with a = K · (channel + t) (t from the constant channel): 1
  above the threshold, 0 below; their sum goes into channel 7.
- The logits: class 1 gets L · (channel 7 - 1/2), class 0 gets 0, the other classes -100 (all
  through the constant channel, so the final norm's scale does not move the threshold).

The edges, their embedding and pooling are unused or zeroed. A witness is three distinct
residues in match3-distinct, so pairs with j = k or with i are never witnesses; on plain
`match3` the same weights also count those pairs, as its labels do (j and k are free).

Usage: scripts/match3_construct.py IN.safetensors OUT.safetensors
IN: a checkpoint of strassen_evidence.rule at depth 1, 3+ heads, dim 8+ (a 1-step
run's); its other settings are kept. Standard library only (checkpoint_io.py).
"""
import json
import math
import sys

from checkpoint_io import read, write_start

BETA = 20 * 37 * 37  # the nearest miss, (1/37)² away, scores -20
DELTA = 1e-5  # evidence into the residual stream
K = 5e5  # the steps' slope
THRESHOLD = 13 * DELTA  # between -6.2 (a witness) and -20 (none), times delta
RAMP = 10.0  # the step's width in units of its input
LOGIT = 20.0
SUMS = (1.0, 2.0, 0.0)  # the witnesses' sums over 37, one head each
OUT = 4 + len(SUMS)  # the channel of the steps' sum


def zeros(shape):
    return [0.0] * math.prod(shape)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__.split("\n\n")[-2])
    source, target = sys.argv[1:]
    meta, tensors = read(source)
    config = json.loads(meta["config"])
    params = {k: v for k, v in tensors.items() if k.startswith("param/")}
    dim, modulus = config["dim"], config["num_tokens"]
    heads = int(config["rule_params"]["heads"])
    dim_head = int(config["rule_params"]["dim_head"])
    if config["depth"] != 1 or heads < 3 or dim < 8 or "param/layers.0.attn.linear1.weight" not in params:
        sys.exit(f"{source}: expected one layer of strassen_evidence.rule with 3+ heads, dim 8+")
    s = dim_head**-0.5
    inner = heads * dim_head

    def setp(name, values):
        shape, _ = params[name]
        if len(values) != math.prod(shape):
            sys.exit(f"{name}: {len(values)} values for shape {shape}")
        params[name] = (shape, values)

    def matrix(name):
        shape, _ = params[name]
        return shape, zeros(shape)

    # token embedding on the number line, norm sqrt(dim) per row; no positions
    emb = []
    for x in range(modulus):
        u = x / modulus
        row = [u, u * u, 1.0, math.sqrt(dim - u * u - u**4 - 1.0)] + [0.0] * (dim - 4)
        emb.extend(row)
    setp("param/token_emb.weight", emb)
    shape, _ = params["param/pos_emb.weight"]
    setp("param/pos_emb.weight", zeros(shape))

    pre = "param/layers.0."
    setp(pre + "x.rmsnorm0.weight", [1.0] * dim)
    for name in ("f1", "f2", "g1", "g2", "h1", "h2", "v", "w"):
        shape, _ = params[f"{pre}{name}.linear0.weight"]
        setp(f"{pre}{name}.linear0.weight", zeros(shape))
    # weights are [out, in]: out channel o of head h is row h * dim_head + o
    maps = {name: matrix(f"{pre}{name}.linear0.weight")[1] for name in ("f1", "f2", "g1", "g2", "h1", "h2")}

    def put(name, head, out, inp, value):
        maps[name][(head * dim_head + out) * dim + inp] += value

    for head, c in enumerate(SUMS):
        b = BETA / s
        # f1_i = -(beta/s)(2u, u² - 2cu + c²), f2_j = (u, 1)
        put("f1", head, 0, 0, -2 * b)
        put("f1", head, 1, 1, -b)
        put("f1", head, 1, 0, 2 * c * b)
        put("f1", head, 1, 2, -c * c * b)
        for first, second in (("g1", "g2"), ("h1", "h2")):
            # g1_j = -(beta/s)(2u, u² - 2cu), g2_k = (u, 1); h alike
            put(first, head, 0, 0, -2 * b)
            put(first, head, 1, 1, -b)
            put(first, head, 1, 0, 2 * c * b)
        for second in ("f2", "g2", "h2"):
            put(second, head, 0, 0, 1.0)
            put(second, head, 1, 2, 1.0)
    for name, values in maps.items():
        setp(f"{pre}{name}.linear0.weight", values)

    shape, _ = params[pre + "attn.linear0.weight"]
    setp(pre + "attn.linear0.weight", zeros(shape))
    shape, ev = matrix(pre + "attn.linear1.weight")  # [dim, heads]
    for head in range(len(SUMS)):
        ev[(4 + head) * heads + head] = DELTA
    setp(pre + "attn.linear1.weight", ev)

    ff = pre + "ff.feedforward0."
    setp(ff + "norm.scale", [1.0] * dim)
    shape, w_in = matrix(ff + "proj_in.weight")  # [hidden, dim]
    shape_out, w_out = matrix(ff + "proj_out.weight")  # [dim, hidden]
    hidden = shape[0]
    for head in range(len(SUMS)):
        for k, shift in enumerate((0.0, RAMP)):
            unit = 2 * head + k
            w_in[unit * dim + 4 + head] = K
            w_in[unit * dim + 2] = K * THRESHOLD - shift
            w_out[OUT * hidden + unit] = (1.0 if k == 0 else -1.0) / RAMP
    setp(ff + "proj_in.weight", w_in)
    setp(ff + "proj_out.weight", w_out)

    for name in ("from_mean", "from_max"):
        key = f"param/edge_pool.{name}.weight"
        if key in params:
            setp(key, zeros(params[key][0]))
    if "param/final_norm.weight" in params:
        setp("param/final_norm.weight", [1.0] * dim)
    shape, logits = matrix("param/to_logits.weight")  # [classes, dim]
    for cls in range(shape[0]):
        if cls == 1:
            logits[cls * dim + OUT] = LOGIT
            logits[cls * dim + 2] = -LOGIT / 2
        elif cls != 0:
            logits[cls * dim + 2] = -100.0
    setp("param/to_logits.weight", logits)

    write_start(target, meta, params)
    print(f"{target}: match3 by hand (beta {BETA}, {inner} channels per map)")


if __name__ == "__main__":
    main()
