#!/usr/bin/env python3
"""Regenerates the parity fixtures from the PyTorch original.

    python3 -m venv ../ref-venv
    ../ref-venv/bin/pip install quartic-transformer==0.0.18 einx==0.3.0 safetensors
    ../ref-venv/bin/python scripts/make_fixtures.py --out /tmp/fixtures
    QUARTIC_REFERENCE_FIXTURES=/tmp/fixtures cargo test --release parity

Every fixture is a pair NAME.safetensors (the tensors) + NAME.json (the constructor config, notes,
and each tensor's dtype and shape); tests/fixtures/reference/README.md describes the format. How
each number is made:

- parameters are drawn at random, not with the reference's init, so that identity or zero inits
  hide nothing: matrices (and scalars) 0.2·N(0, 1), vectors (norm scales, biases) 0.5 + 0.2·N(0, 1);
  lazily created parameters (einx's norms) are materialised by one forward pass first;
- inputs: token ids uniform below num_tokens, real inputs N(0, 1), masks fixed by hand below;
- outputs: one forward pass in float32 on the CPU;
- probes: a fixed N(0, 1) tensor R per output; the loss is sum(output · R) (+ the auxiliary loss
  where the model returns one), and `grad.NAME` is its gradient with respect to parameter NAME
  (parameters the loss does not reach get no `grad.` entry).

The committed fixtures (tests/fixtures/reference) were made this way by an earlier script from
another random stream; this one writes the same names, shapes and configs (its --check flag
compares them with a folder), from its own seed.
"""

import argparse
import json
import os
import sys

import torch
from safetensors.torch import save_file

PACKAGE = "quartic-transformer==0.0.18"


def randomize(module, gen):
    """Every parameter drawn afresh (see the module docstring)."""
    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            noise = torch.randn(p.shape, generator=gen) * 0.2
            p.copy_(noise + 0.5 if p.dim() == 1 else noise)


def probe_loss(outputs, gen, tensors):
    """sum(output · R) over the named outputs, with each R stored as `probe.NAME`."""
    loss = 0.0
    for name, out in outputs.items():
        r = torch.randn(out.shape, generator=gen)
        tensors[f"probe.{name}"] = r
        loss = loss + (out * r).sum()
    return loss


def params_and_grads(module, tensors):
    for name, p in module.named_parameters():
        tensors[f"param.{name}"] = p.detach().clone()
        if p.grad is not None:
            tensors[f"grad.{name}"] = p.grad.detach().clone()


def write(out_dir, name, config, notes, tensors):
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, os.path.join(out_dir, f"{name}.safetensors"))
    meta = {
        "config": config,
        "notes": notes,
        "tensors": {
            k: {"dtype": str(v.dtype).removeprefix("torch."), "shape": list(v.shape)}
            for k, v in sorted(tensors.items())
        },
    }
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
    print(f"{name}: {len(tensors)} tensors")


def token_model(out_dir, name, cls, config, tokens, mask, notes, gen, aux=False):
    """A whole model: logits (+ aux loss), the probe loss and every parameter's gradient."""
    kwargs = {k: v for k, v in config.items() if k not in ("cls", "package")}
    model = cls(**kwargs)
    with torch.no_grad():  # materialises einx's lazy parameters
        model(tokens, **({"mask": mask} if mask is not None else {}))
    randomize(model, gen)
    tensors = {"input.0": tokens}
    call = {}
    if mask is not None:
        tensors["input.1"] = mask.long()
        call["mask"] = mask
    if aux:
        call["stream_attn_diversity_loss"] = True
    result = model(tokens, **call)
    logits, aux_loss = result if aux else (result, None)
    tensors["output.main"] = logits.detach().clone()
    loss = probe_loss({"main": logits}, gen, tensors)
    if aux_loss is not None:
        tensors["output.aux"] = aux_loss.detach().reshape(1).clone()
        loss = loss + aux_loss.sum()
    loss.backward()
    params_and_grads(model, tensors)
    write(out_dir, name, config, notes, tensors)


def taylor_attention(out_dir, name, masked, gen):
    from taylor_series_linear_attention import TaylorSeriesLinearAttn

    config = {"batch": 2, "cls": "TaylorSeriesLinearAttn", "dim": 24, "dim_head": 8,
              "gate_value_heads": True, "heads": 3,
              "package": "taylor-series-linear-attention==0.2.0", "prenorm": True, "seq": 5}
    attn = TaylorSeriesLinearAttn(dim=24, dim_head=8, heads=3, gate_value_heads=True, prenorm=True)
    randomize(attn, gen)
    x = torch.randn((2, 5, 24), generator=gen)
    tensors = {"input.0": x}
    mask = None
    if masked:
        mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
        tensors["input.1"] = mask.long()
    out = attn(x, mask=mask)
    tensors["output.main"] = out.detach().clone()
    probe_loss({"main": out}, gen, tensors).backward()
    params_and_grads(attn, tensors)
    notes = ("Same with a key-padding mask input.1 (1 = keep). " if masked else
             "Non-causal Taylor-series linear attention, input.0 = x. ")
    write(out_dir, name, config, notes + "Loss = sum(output.main * probe.main).", tensors)


def coor_descent_fixture(out_dir, gen):
    from colt5_attention import coor_descent, topk

    runs = [{"eps": 0.1, "k": 5, "n_iters": 20},
            {"eps": 0.02, "eps_decay": 0.7, "eps_init": 4.0, "k": 5, "n_iters": 20},
            {"eps": 0.05, "k": 12, "n_iters": 50}]
    top = {"coor_descent_k_ratio": 1.125, "eps": 0.1, "k": 6, "n_iters": 20}
    config = {"package": "colt5-attention==0.11.2", "runs": runs, "topk": top}
    scores = torch.randn((3, 40), generator=gen)
    tensors = {"input.scores": scores}
    for i, run in enumerate(runs):
        s = scores.clone().requires_grad_()
        out = coor_descent(s, **run)
        tensors[f"output.coor_descent_{i}"] = out.detach().clone()
        probe_loss({f"coor_descent_{i}": out}, gen, tensors).backward()
        tensors[f"grad.coor_descent_{i}"] = s.grad.clone()
    s = scores.clone().requires_grad_()
    result = topk(s, **top)
    tensors["output.topk_values"] = result.values.detach().clone()
    tensors["output.topk_indices"] = result.indices.clone()
    tensors["output.topk_coor_descent_values"] = result.coor_descent_values.detach().clone()
    tensors["output.topk_gates"] = result.gates.detach().clone()
    probe_loss({"topk_values": result.values}, gen, tensors).backward()
    tensors["grad.topk"] = s.grad.clone()
    notes = ("coor_descent(input.scores, **runs[i]) -> output.coor_descent_i; grad.coor_descent_i "
             "= d sum(out*probe)/d scores. topk(...) -> values/indices/coor_descent_values/gates; "
             "grad.topk = d sum(values*probe.topk_values)/d scores.")
    write(out_dir, "coor_descent", config, notes, tensors)


def quartic_config(streams):
    return {"cls": "QuarticTransformer", "depth": 2, "dim": 32, "dim_edges": 8, "dim_head": 8,
            "edges_diagonal_attn": False, "heads": 2, "linear_dim_head": 4, "linear_heads": 2,
            "max_seq_len": 16, "num_residual_streams": streams, "num_tokens": 20,
            "package": PACKAGE}


def relational_config(causal):
    return {"causal": causal, "cls": "RelationalTransformer", "depth": 2, "dim": 32,
            "dim_edges": 8, "dim_head": 8, "heads": 2, "max_seq_len": 16, "num_tokens": 20,
            "package": PACKAGE}


def tokens(gen, b, n, vocab=20):
    return torch.randint(0, vocab, (b, n), generator=gen)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder to write the fixtures into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", metavar="DIR",
                        help="compare names, shapes, dtypes and configs with this folder")
    args = parser.parse_args()
    from quartic_transformer.multi_stream_transformer import MultiStreamTransformer
    from quartic_transformer.quartic_transformer import QuarticTransformer
    from quartic_transformer.relational_transformer import RelationalTransformer

    torch.set_default_dtype(torch.float32)
    torch.use_deterministic_algorithms(True)
    os.makedirs(args.out, exist_ok=True)
    gen = torch.Generator().manual_seed(args.seed)
    logits_notes = "input.0 = token ids, output.main = logits. Loss = sum(output.main * probe.main)."

    taylor_attention(args.out, "taylor_attention", False, gen)
    taylor_attention(args.out, "taylor_attention_masked", True, gen)
    coor_descent_fixture(args.out, gen)
    for causal, name in [(False, "relational"), (True, "relational_causal")]:
        token_model(args.out, name, RelationalTransformer, relational_config(causal),
                    tokens(gen, 2, 6), None, logits_notes, gen)
    token_model(args.out, "quartic", QuarticTransformer, quartic_config(1), tokens(gen, 2, 6),
                None, logits_notes, gen)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    token_model(args.out, "quartic_masked", QuarticTransformer, quartic_config(1),
                tokens(gen, 2, 6), mask,
                "input.0 = token ids, input.1 = padding mask (1 = real token), output.main = "
                "logits (rows of padded positions included as the reference computes them). "
                "Loss = sum(output.main * probe.main).", gen)
    token_model(args.out, "quartic_hyper", QuarticTransformer, quartic_config(4), tokens(gen, 1, 9),
                None,
                "input.0 = token ids (batch 1, as the shared set; the original runs any batch size), "
                "output.main = logits. Loss = sum(output.main * probe.main).", gen)
    multistream = {"cls": "MultiStreamTransformer", "depth": 2, "dim": 32, "dim_head": 8,
                   "heads": 2, "max_seq_len": 16, "num_streams": 2, "num_tokens": 20,
                   "package": PACKAGE, "separate_stream_emb": False}
    token_model(args.out, "multistream", MultiStreamTransformer, multistream, tokens(gen, 2, 7),
                None,
                "input.0 = token ids, output.main = logits, output.aux = stream attention-diversity "
                "loss. Loss = sum(output.main * probe.main) + sum(output.aux).", gen, aux=True)
    if args.check:
        sys.exit(check_same_layout(args.out, args.check))


def check_same_layout(new, old):
    """Non-zero when a fixture's config or its tensors' names, dtypes or shapes differ."""
    bad = 0
    for f in sorted(os.listdir(old)):
        if not f.endswith(".json"):
            continue
        a = json.load(open(os.path.join(new, f)))
        b = json.load(open(os.path.join(old, f)))
        for key in ("config", "tensors"):
            if a[key] != b[key]:
                print(f"{f}: {key} differs", file=sys.stderr)
                bad += 1
    print("layout: same as " + old if bad == 0 else f"layout: {bad} differences")
    return 1 if bad else 0


if __name__ == "__main__":
    main()
