//! Rules that read the input graph: `adjacency[i, j]` and the `mask:` option of `attend` and of
//! the reductions. Each masked form equals the same computation written out with the
//! adjacency as a bias or a factor; what the input graph does not connect is never read (the
//! outputs stay bit-identical when it changes); a node without input edges gets no message
//! (zeros, not NaN); and a rule that reads the input graph refuses graphs without one.

use dfdx::prelude::*;
use quartic::graph::GraphMask;
use quartic::nn::Init;
use quartic::rules::{Rule, RuleConfig, RuleLayer};
use rand::{Rng, SeedableRng};

use crate::common::*;
use crate::rules::run;

const DIM: usize = 8;
const DE: usize = 4;

/// `[b × n × n]` input edges, each pair with probability 0.4; with `self_loops` every node
/// has its own edge (so every query keeps a key under padding and causality), without them
/// node 1 of graph 0 has no edges at all.
pub fn random_adjacency(b: usize, n: usize, seed: u64, self_loops: bool) -> Vec<bool> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut adjacency: Vec<bool> = (0..b * n * n).map(|_| rng.gen_bool(0.4)).collect();
    for g in 0..b {
        for i in 0..n {
            for j in 0..n {
                let at = (g * n + i) * n + j;
                if self_loops && i == j {
                    adjacency[at] = true;
                }
                if !self_loops && g == 0 && (i == 1 || j == 1) {
                    adjacency[at] = false;
                }
            }
        }
    }
    adjacency
}

/// The layer of `text`, or its planning error.
fn planned(text: &str, causal: bool) -> quartic::Result<RuleLayer<f64, Cpu>> {
    let cfg = RuleConfig {
        dim: DIM,
        dim_edges: DE,
        causal,
        overrides: vec![],
    };
    let plan = Rule::parse("test.rule", text).unwrap().plan(&cfg)?;
    Ok(RuleLayer::new(plan, &Init::random(&dev(), 5)).unwrap())
}

/// The layer of `text`; `None` only for a causal rule refused for reading the future.
fn layer(text: &str, causal: bool) -> Option<RuleLayer<f64, Cpu>> {
    match planned(text, causal) {
        Ok(l) => Some(l),
        Err(e) if causal && e.to_string().contains("reads the future") => None,
        Err(e) => panic!("{text}\n{e}"),
    }
}

/// The layer of a rule that may not plan (an unmasked form a causal rule refuses).
fn plain_layer(text: &str, causal: bool) -> Option<RuleLayer<f64, Cpu>> {
    planned(text, causal).ok()
}

fn mask(causal: bool, adjacency: Vec<bool>) -> GraphMask {
    GraphMask::from_lengths(6, &[6, 4])
        .unwrap()
        .causal(causal)
        .with_adjacency(adjacency)
        .unwrap()
}

const NORMED: &str = "rule r()\nlet x[i] = rmsnorm(nodes[i])\nlet e[i, j] = rmsnorm(edges[i, j])\nlet g[i, j] = sigmoid(linear(edges[i, j], dim))\nlet s[i, j] = linear(edges[i, j], 1)\n";

/// Masked forms and the same computation written out with the adjacency (`(a − 1)·10⁴` as a
/// score bias, a factor, or a `where`), which reach the kernels by other paths.
const WRITTEN_OUT: &[(&str, &str, &str)] = &[
    (
        "node attention",
        "attn: nodes[i] += attend(x[i] -> x[j], heads: 1, dim_head: 4, mask: adjacency[j, i])",
        "attn: nodes[i] += attend(x[i] -> x[j], heads: 1, dim_head: 4, bias: (adjacency[j, i] - 1) * 10000)",
    ),
    (
        "row attention",
        "rows: edges[i, j] += attend(e[i, j] -> e[i, k], heads: 1, dim_head: 4, mask: adjacency[i, k])",
        "rows: edges[i, j] += attend(e[i, j] -> e[i, k], heads: 1, dim_head: 4, bias: (adjacency[i, k] - 1) * 10000)",
    ),
    (
        "column attention, key edge reversed",
        "cols: edges[i, j] += attend(e[i, j] -> e[k, j], heads: 1, dim_head: 4, mask: adjacency[j, k])",
        "cols: edges[i, j] += attend(e[i, j] -> e[k, j], heads: 1, dim_head: 4, bias: (adjacency[j, k] - 1) * 10000)",
    ),
    (
        "transposed row attention",
        "rows: edges[i, j] += attend(e[i, j] -> e[j, k], heads: 1, dim_head: 4, mask: adjacency[k, j])",
        "rows: edges[i, j] += attend(e[i, j] -> e[j, k], heads: 1, dim_head: 4, bias: (adjacency[k, j] - 1) * 10000)",
    ),
    (
        "all-edges attention",
        "all: edges[i, j] += attend(e[i, j] -> e[k, l], heads: 1, dim_head: 4, mask: adjacency[l, k])",
        "all: edges[i, j] += attend(e[i, j] -> e[k, l], heads: 1, dim_head: 4, bias: (adjacency[l, k] - 1) * 10000)",
    ),
    (
        "diagonal attention",
        "diag: edges[i, i] += attend(e[i, i] -> e[k, k], heads: 1, dim_head: 4, mask: adjacency[i, k])",
        "diag: edges[i, i] += attend(e[i, i] -> e[k, k], heads: 1, dim_head: 4, bias: (adjacency[i, k] - 1) * 10000)",
    ),
    (
        "sum",
        "msg: nodes[i] += sum[j](g[i, j] * x[j], mask: adjacency[j, i])",
        "msg: nodes[i] += sum[j](g[i, j] * x[j] * adjacency[j, i])",
    ),
    (
        "mean",
        "msg: nodes[i] += mean[j](g[i, j] * x[j], mask: adjacency[j, i])",
        "msg: nodes[i] += sum[j](g[i, j] * x[j] * adjacency[j, i]) / sum[j](adjacency[j, i])",
    ),
    (
        "max",
        "msg: nodes[i] += max[j](g[i, j] * x[j], mask: adjacency[j, i])",
        "msg: nodes[i] += max[j](where(adjacency[j, i] > 0, g[i, j] * x[j], g[i, j] * 0 - 10000))",
    ),
    (
        "sum of a node tensor over the input edges",
        "msg: nodes[i] += sum[j](x[j], mask: adjacency[j, i])",
        "msg: nodes[i] += sum[j](x[j] * adjacency[j, i])",
    ),
    (
        "softmax of a node tensor over the input edges",
        "msg: nodes[i] += sum[j](softmax[j](linear(x[j], 1), mask: adjacency[j, i]) * x[j])",
        "msg: nodes[i] += sum[j](softmax[j](linear(x[j], 1) + (adjacency[j, i] - 1) * 10000) * x[j])",
    ),
    (
        "softmax",
        "msg: nodes[i] += sum[j](softmax[j](s[i, j], mask: adjacency[i, j]) * x[j])",
        "msg: nodes[i] += sum[j](softmax[j](s[i, j] + (adjacency[i, j] - 1) * 10000) * x[j])",
    ),
];

#[test]
fn masked_forms_equal_the_adjacency_written_out() {
    let adjacency = random_adjacency(2, 6, 3, true);
    for (what, masked, written) in WRITTEN_OUT {
        for causal in [false, true] {
            let (Some(a), Some(b)) = (
                layer(&format!("{NORMED}{masked}\n"), causal),
                layer(&format!("{NORMED}{written}\n"), causal),
            ) else {
                continue;
            };
            let m = mask(causal, adjacency.clone());
            let (nodes, edges) = (randn(1, 2 * 6 * DIM), randn(2, 2 * 6 * 6 * DE));
            let (n1, e1) = run(&a, nodes.clone(), edges.clone(), &m);
            let (n2, e2) = run(&b, nodes.clone(), edges.clone(), &m);
            assert_close(
                &format!("{what} (causal {causal}): nodes"),
                &n1,
                &n2,
                1e-9,
                1e-9,
            );
            assert_close(
                &format!("{what} (causal {causal}): edges"),
                &e1,
                &e2,
                1e-9,
                1e-9,
            );
            // and the mask matters: the unmasked form differs
            // (a causal rule cannot pool a node tensor over everything unmasked: nothing to compare)
            if let Some(c) = plain_layer(&strip_masks(&format!("{NORMED}{masked}\n")), causal) {
                let (n3, e3) = run(&c, nodes, edges, &m);
                assert!(n3 != n1 || e3 != e1, "{what}: the mask changes nothing");
            }
        }
    }
}

/// Rules whose node outputs (and, with `edges`, outputs at input edges) read only what the
/// input graph connects.
fn masked_rules() -> Vec<(String, String, bool)> {
    let file = |name: &str| {
        std::fs::read_to_string(format!(
            "{}/examples/rules/{name}.rule",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
        .replace("heads = 4, dim_head = 16", "heads = 2, dim_head = 4")
    };
    let mut rules = vec![
        ("gat".to_string(), file("gat"), false),
        (
            "graph_transformer".to_string(),
            file("graph_transformer"),
            true,
        ),
    ];
    let edge_reads = [
        ("rows", "rows: edges[i, j] += attend(e[i, j] -> e[i, k], heads: 2, dim_head: 4, mask: adjacency[i, k])"),
        ("columns", "cols: edges[i, j] += attend(e[i, j] -> e[k, j], heads: 2, dim_head: 4, kernel: taylor, mask: adjacency[k, j])"),
        ("all edges", "all: edges[i, j] += attend(e[i, j] -> e[k, l], heads: 2, dim_head: 4, mask: adjacency[k, l])"),
        ("node attention, edge bias", "attn: nodes[i] += attend(x[i] -> x[j], heads: 2, dim_head: 4, bias: linear(e[j, i], 2), mask: adjacency[j, i])"),
        ("taylor node attention, edge bias", "attn: nodes[i] += attend(x[i] -> x[j], heads: 2, dim_head: 4, kernel: taylor, bias: linear(e[j, i], 2), mask: adjacency[j, i])"),
        ("reductions", "msg: nodes[i] += linear(concat(sum[j](e[j, i], mask: adjacency[j, i]), mean[j](e[i, j], mask: adjacency[i, j]), max[j](e[j, i], mask: adjacency[j, i])), dim)"),
        ("softmax", "msg: nodes[i] += sum[j](softmax[j](linear(e[j, i], 1), mask: adjacency[j, i]) * x[j])"),
    ];
    for (what, line) in edge_reads {
        rules.push((what.to_string(), format!("{NORMED}{line}\n"), true));
    }
    rules
}

/// The mask property: perturbing the features of pairs that are not input edges leaves every
/// masked output bit-identical, padded and causal alike; the same rules without their masks do
/// change (the property can fail).
#[test]
fn masked_outputs_ignore_what_the_input_graph_does_not_connect() {
    let (b, n) = (2, 6);
    let adjacency = random_adjacency(b, n, 9, false);
    for (what, text, check_edges) in masked_rules() {
        for causal in [false, true] {
            let Some(l) = layer(&text, causal) else {
                continue;
            };
            let m = mask(causal, adjacency.clone());
            let nodes = randn(4, b * n * DIM);
            let edges = randn(5, b * n * n * DE);
            let mut perturbed = edges.clone();
            let noise = randn(6, edges.len());
            let mut changed = 0;
            for g in 0..b {
                for i in 0..n {
                    for j in 0..n {
                        if m.edge_valid(g, i, j) && !m.has_edge(g, i, j) {
                            for c in 0..DE {
                                let at = ((g * n + i) * n + j) * DE + c;
                                perturbed[at] = noise[at] * 3.0;
                            }
                            changed += 1;
                        }
                    }
                }
            }
            assert!(changed > 10);
            let (n1, e1) = run(&l, nodes.clone(), edges.clone(), &m);
            let (n2, e2) = run(&l, nodes.clone(), perturbed.clone(), &m);
            assert_eq!(n1, n2, "{what} (causal {causal}): a node read a non-edge");
            if check_edges {
                for g in 0..b {
                    for i in 0..n {
                        for j in 0..n {
                            if m.has_edge(g, i, j) {
                                let r = ((g * n + i) * n + j) * DE..((g * n + i) * n + j + 1) * DE;
                                assert_eq!(
                                    e1[r.clone()],
                                    e2[r],
                                    "{what} (causal {causal}): input edge ({i}, {j}) of graph {g} read a non-edge"
                                );
                            }
                        }
                    }
                }
            }
            assert!(
                n1.iter().chain(&e1).all(|x| x.is_finite()),
                "{what}: not finite"
            );
            let u = plain_layer(&strip_masks(&text), causal).unwrap();
            let (n3, e3) = run(&u, nodes.clone(), edges, &m);
            let (n4, e4) = run(&u, nodes, perturbed, &m);
            assert!(
                n3 != n4 || (check_edges && e3 != e4),
                "{what}: the unmasked rule ignores the perturbation too"
            );
        }
    }
}

/// The text without its `mask: adjacency[…]` options.
fn strip_masks(text: &str) -> String {
    let mut out = text.to_string();
    while let Some(at) = out.find(", mask: adjacency[") {
        let end = at + out[at..].find(']').unwrap() + 1;
        out.replace_range(at..end, "");
    }
    out
}

/// A node that no input edge reaches gets no message: zeros from every masked form (its state
/// unchanged), never NaN or a uniform average.
#[test]
fn a_node_without_input_edges_gets_no_message() {
    let adjacency = random_adjacency(2, 6, 9, false);
    let lines = [
        "attn: nodes[i] += attend(x[i] -> x[j], heads: 2, dim_head: 4, mask: adjacency[j, i])",
        "attn: nodes[i] += attend(x[i] -> x[j], heads: 2, dim_head: 4, kernel: taylor, mask: adjacency[j, i])",
        "msg: nodes[i] += sum[j](g[i, j] * x[j], mask: adjacency[j, i])",
        "msg: nodes[i] += mean[j](g[i, j] * x[j], mask: adjacency[j, i])",
        "msg: nodes[i] += max[j](g[i, j] * x[j], mask: adjacency[j, i])",
        "msg: nodes[i] += sum[j](softmax[j](s[i, j], mask: adjacency[i, j]) * x[j])",
    ];
    for line in lines {
        for causal in [false, true] {
            let l = layer(&format!("{NORMED}{line}\n"), causal).unwrap();
            let m = mask(causal, adjacency.clone());
            let nodes = randn(7, 2 * 6 * DIM);
            let (out, _) = run(&l, nodes.clone(), randn(8, 2 * 6 * 6 * DE), &m);
            // node 1 of graph 0 has no edges
            assert_eq!(
                out[DIM..2 * DIM],
                nodes[DIM..2 * DIM],
                "{line} (causal {causal})"
            );
            assert!(out.iter().all(|x| x.is_finite()), "{line}: not finite");
            assert_ne!(out, nodes, "{line}: no node got a message");
        }
    }
}

#[test]
fn a_rule_that_reads_the_input_graph_refuses_graphs_without_one() {
    for line in [
        "msg: nodes[i] += sum[j](g[i, j] * x[j], mask: adjacency[j, i])",
        "attn: nodes[i] += attend(x[i] -> x[j], heads: 2, dim_head: 4, mask: adjacency[j, i])",
        "rows: edges[i, j] += attend(e[i, j] -> e[i, k], heads: 2, dim_head: 4, mask: adjacency[i, k])",
        "ends: edges[i, j] += e[i, j] * adjacency[i, j]",
    ] {
        let l = layer(&format!("{NORMED}{line}\n"), false).unwrap();
        assert!(l.plan.input_graph_reader().is_some());
        let m = GraphMask::from_lengths(6, &[6, 4]).unwrap();
        let d = dev();
        let nodes = quartic::graph::Nodes::new(d.tensor_from_vec(randn(1, 2 * 6 * DIM), (2, 6, DIM)));
        let edges =
            quartic::graph::Edges::new(d.tensor_from_vec(randn(2, 2 * 6 * 6 * DE), (2, 6, 6, DE)))
                .unwrap();
        let err = match l.forward(nodes, edges, &m) {
            Ok(_) => panic!("{line}: ran without an input graph"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("input graph") && err.contains("--graphs"), "{err}");
    }
    let plain = layer(
        &format!("{NORMED}msg: nodes[i] += sum[j](g[i, j] * x[j])\n"),
        false,
    )
    .unwrap();
    assert!(plain.plan.input_graph_reader().is_none());
}
