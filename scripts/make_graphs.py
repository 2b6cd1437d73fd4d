#!/usr/bin/env python3
"""Graph datasets for `quartic train --graphs`, generated and labelled by networkx.

Every graph and every label comes from networkx's own generators and algorithms, not from code
of this project: random graphs (G(n, p), random regular, Watts-Strogatz, random bipartite),
labelled with

  components      graph level: the number of connected components (classes 0..3 = 1..4+)
  bipartite       graph level: whether the graph is bipartite (nx.is_bipartite)
  triangles       node level: triangles through each node (nx.triangles), capped at 3
  clustering      node level, regression: the clustering coefficient (nx.clustering)
  shortest_paths  edge level: the shortest-path length of every ordered pair (i, j)
                  (nx.all_pairs_shortest_path_length), classes 0..4, 5 = farther or unreachable

The format (README, "Bring your own graphs") uses PyTorch Geometric's field names: per graph
`num_nodes`, `tokens` (node token ids) or `x` (node features), `edge_index` (2 x E, both
directions of an undirected edge), `edge_tokens` or `edge_attr` (per listed edge), and the
target: `y` (graph level: one value; node level: one per node) or `edge_label` (edge level:
n x n values row-major, null where unlabelled, unless `edge_label_index` (2 x P) lists the
pairs). JSON Lines (one graph per line) or safetensors (every graph in one file, with offsets).

    python3 scripts/make_graphs.py --out data/graphs            # the checked-in sample's recipe
    python3 scripts/make_graphs.py --out big --train 20000 --valid 2000 --max-nodes 24

Needs networkx (`pip install networkx`); nothing else outside the standard library.
"""

import argparse
import json
import os
import random
import struct

import networkx as nx

TASKS = ("components", "bipartite", "triangles", "clustering", "shortest_paths")


def random_graph(rng, n):
    """One graph of n nodes from a generator picked at random (seeded through `rng`)."""
    kind = rng.choice(["gnp", "regular", "small_world", "bipartite"])
    seed = rng.randrange(2**31)
    if kind == "gnp":
        g = nx.gnp_random_graph(n, rng.uniform(1.0, 3.0) / n, seed=seed)
    elif kind == "regular":
        d = rng.choice([2, 3])
        if (n * d) % 2:
            d = 2
        g = nx.random_regular_graph(d, n, seed=seed)
    elif kind == "small_world":
        g = nx.watts_strogatz_graph(n, 2 if n < 6 else 4, rng.uniform(0.05, 0.5), seed=seed)
    else:
        a = rng.randrange(1, n)
        g = nx.bipartite.random_graph(a, n - a, rng.uniform(0.2, 0.6), seed=seed)
        g = nx.Graph(g)
    # relabel so node ids are a random order of 0..n-1 (no generator's layout leaks into ids)
    order = list(range(n))
    rng.shuffle(order)
    return nx.relabel_nodes(g, dict(zip(range(n), order)))


def label(g, task):
    """The task's target for g: ("y", value or per-node list) or ("edge_label", n*n list)."""
    n = g.number_of_nodes()
    if task == "components":
        return "y", min(nx.number_connected_components(g), 4) - 1
    if task == "bipartite":
        return "y", int(nx.is_bipartite(g))
    if task == "triangles":
        t = nx.triangles(g)
        return "y", [min(t[i], 3) for i in range(n)]
    if task == "clustering":
        c = nx.clustering(g)
        return "y", [round(float(c[i]), 6) for i in range(n)]
    if task == "shortest_paths":
        dist = dict(nx.all_pairs_shortest_path_length(g))
        return "edge_label", [min(dist[i].get(j, 5), 5) for i in range(n) for j in range(n)]
    raise ValueError(task)


def graph_record(g, task):
    n = g.number_of_nodes()
    src, dst = [], []
    for a, b in sorted(g.edges()):
        src += [a, b]
        dst += [b, a]
    key, value = label(g, task)
    return {
        "num_nodes": n,
        "tokens": [1] * n,
        "edge_index": [src, dst],
        "edge_tokens": [1] * len(src),
        key: value,
    }


def write_jsonl(path, records):
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r, separators=(",", ":")) + "\n")


def write_safetensors(path, records):
    """Every graph in one file: concatenated fields with offsets (the index) per graph."""
    node_off, edge_off, label_off = [0], [0], [0]
    tokens, src, dst, edge_tokens, y, edge_label = [], [], [], [], [], []
    graph_level = False
    for r in records:
        n, e = r["num_nodes"], len(r["edge_index"][0])
        node_off.append(node_off[-1] + n)
        edge_off.append(edge_off[-1] + e)
        tokens += r["tokens"]
        src += r["edge_index"][0]
        dst += r["edge_index"][1]
        edge_tokens += r["edge_tokens"]
        if "y" in r:
            v = r["y"]
            graph_level = not isinstance(v, list)
            y += [v] if graph_level else v
        else:
            edge_label += [-1 if v is None else v for v in r["edge_label"]]
            label_off.append(label_off[-1] + len(r["edge_label"]))
    tensors = {
        "node_offsets": ("I64", [len(node_off)], node_off),
        "edge_offsets": ("I64", [len(edge_off)], edge_off),
        "tokens": ("I64", [len(tokens)], tokens),
        "edge_index": ("I64", [2, len(src)], src + dst),
        "edge_tokens": ("I64", [len(edge_tokens)], edge_tokens),
    }
    if y:
        real = any(isinstance(v, float) for v in y)
        tensors["y"] = ("F64" if real else "I64", [len(y)], y)
    if edge_label:
        tensors["edge_label"] = ("I64", [len(edge_label)], edge_label)
        tensors["edge_label_offsets"] = ("I64", [len(label_off)], label_off)
    header, blobs, at = {}, [], 0
    for name, (dtype, shape, values) in tensors.items():
        fmt = "<%d%s" % (len(values), "q" if dtype == "I64" else "d")
        blob = struct.pack(fmt, *values)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [at, at + len(blob)]}
        blobs.append(blob)
        at += len(blob)
    header["__metadata__"] = {"format": "quartic-graphs", "level": "graph" if graph_level else "node-or-edge"}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder to write <task>.train.jsonl etc. into")
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated, from: " + ", ".join(TASKS))
    p.add_argument("--train", type=int, default=400, help="training graphs per task")
    p.add_argument("--valid", type=int, default=100, help="held-out graphs per task")
    p.add_argument("--min-nodes", type=int, default=5)
    p.add_argument("--max-nodes", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=["jsonl", "safetensors"], default="jsonl")
    a = p.parse_args()
    if not 2 <= a.min_nodes <= a.max_nodes:
        p.error("need 2 <= --min-nodes <= --max-nodes")
    os.makedirs(a.out, exist_ok=True)
    for task in a.tasks.split(","):
        if task not in TASKS:
            p.error(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
        for split, count in (("train", a.train), ("valid", a.valid)):
            # each task and split its own stream: adding a task changes no other file
            rng = random.Random(f"{a.seed}/{task}/{split}")
            records = [
                graph_record(random_graph(rng, rng.randint(a.min_nodes, a.max_nodes)), task)
                for _ in range(count)
            ]
            path = os.path.join(a.out, f"{task}.{split}.{a.format}")
            (write_jsonl if a.format == "jsonl" else write_safetensors)(path, records)
            print(f"{path}: {count} graphs")


if __name__ == "__main__":
    main()
