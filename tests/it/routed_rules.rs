//! Routing anywhere (issue 18, item 4): `route:` on node attention, on row and column edge
//! attention, and on feedforwards over nodes or edges. Each against a loop that picks the top k
//! by the score and runs the block on the picks by hand; gradient checks (exact gradients with
//! `straight: false`), causality and padding properties, an explain snapshot.

use std::collections::HashMap;

use dfdx::prelude::*;
use quartic::graph::GraphMask;
use quartic::nn::{HasParams, Init};
use quartic::rules::{Rule, RuleConfig, RuleLayer};

use crate::common::*;
use crate::rules::{
    assert_explain_snapshot, assert_never_reads_the_future, assert_padding_is_never_read,
    gradcheck_loaded_rule, run,
};

const DIM: usize = 8;
const DIM_EDGES: usize = 4;

/// Which positions a rule below routes, and where each picks.
#[derive(Clone, Copy, Debug)]
enum Scope {
    /// Among a graph's nodes.
    Nodes,
    /// Within each row i of edges (i, ·).
    Rows,
    /// Within each column j of edges (·, j).
    Columns,
}

/// (rule, scope, whether it is an attention rather than a feedforward); scores are each
/// position's squared norm, so the loop can rank without the layer's parameters.
const CASES: [(&str, Scope, bool); 6] = [
    (
        "a: nodes[i] += attend(nodes[i] -> nodes[j], heads: 2, dim_head: 3, route: top(3, by: dot(nodes[i], nodes[i])))",
        Scope::Nodes,
        true,
    ),
    (
        "a: edges[i, j] += attend(edges[i, j] -> edges[i, k], heads: 2, dim_head: 3, route: top(2, by: dot(edges[i, j], edges[i, j])))",
        Scope::Rows,
        true,
    ),
    (
        "a: edges[i, j] += attend(edges[i, j] -> edges[k, j], heads: 2, dim_head: 3, route: top(2, by: dot(edges[i, j], edges[i, j])))",
        Scope::Columns,
        true,
    ),
    (
        "a: edges[i, j] += attend(edges[i, j] -> edges[k, l], heads: 2, dim_head: 3, route: top(3, by: dot(edges[i, j], edges[i, j]), per: column))",
        Scope::Columns,
        true,
    ),
    (
        "f: nodes[i] += feedforward(nodes[i], mult: 2, route: top(3, by: dot(nodes[i], nodes[i])))",
        Scope::Nodes,
        false,
    ),
    (
        "f: edges[i, j] += feedforward(edges[i, j], mult: 2, route: top(2, by: dot(edges[i, j], edges[i, j]), per: row))",
        Scope::Rows,
        false,
    ),
];

fn layer_plan(src: &str, causal: bool) -> quartic::rules::ir::Plan {
    let cfg = RuleConfig {
        dim: DIM,
        dim_edges: DIM_EDGES,
        causal,
        overrides: vec![],
    };
    Rule::parse("routed.rule", src)
        .unwrap()
        .plan(&cfg)
        .unwrap_or_else(|e| panic!("{src}: {e}"))
}

fn layer(src: &str, causal: bool, seed: u64) -> RuleLayer<f64, Cpu> {
    RuleLayer::new(layer_plan(src, causal), &Init::random(&dev(), seed)).unwrap()
}

fn params(layer: &RuleLayer<f64, Cpu>) -> HashMap<String, Vec<f64>> {
    layer
        .params()
        .into_iter()
        .map(|p| (p.name.clone(), p.value.as_vec()))
        .collect()
}

/// `w` (`[out, in]`, row-major) times `x`.
fn matvec(w: &[f64], x: &[f64]) -> Vec<f64> {
    w.chunks(x.len())
        .map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum())
        .collect()
}

/// Attention among the picked inputs `xs`, by hand with the block's weights: each output is
/// `to_out(concat over heads of Σ_b softmax_b(q·k_b · scale) v_b)`.
fn attention_by_hand(p: &HashMap<String, Vec<f64>>, xs: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let (h, d) = (2, 3);
    let project = |name: &str| -> Vec<Vec<f64>> {
        xs.iter()
            .map(|x| matvec(&p[&format!("a.attend0.{name}.weight")], x))
            .collect()
    };
    let (q, k, v) = (project("to_q"), project("to_k"), project("to_v"));
    let scale = (d as f64).powf(-0.5);
    (0..xs.len())
        .map(|a| {
            let mut merged = vec![0.0; h * d];
            for head in 0..h {
                let r = head * d..(head + 1) * d;
                let scores: Vec<f64> = (0..xs.len())
                    .map(|b| {
                        let s: f64 = q[a][r.clone()]
                            .iter()
                            .zip(&k[b][r.clone()])
                            .map(|(x, y)| x * y)
                            .sum();
                        s * scale
                    })
                    .collect();
                let top = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - top).exp()).collect();
                let z: f64 = e.iter().sum();
                for (b, eb) in e.iter().enumerate() {
                    for c in 0..d {
                        merged[head * d + c] += eb / z * v[b][head * d + c];
                    }
                }
            }
            matvec(&p["a.attend0.to_out.weight"], &merged)
        })
        .collect()
}

/// What a routed block adds at the picked positions: attention among them (by hand), or for a
/// feedforward the update the same feedforward unrouted makes there (`unrouted`, one state).
enum Block<'a> {
    Attention(&'a HashMap<String, Vec<f64>>),
    FeedForward(&'a [f64]),
}

/// The state the loop expects: for each picking (a graph, a row, a column), the top k of its
/// selectable positions by squared norm go through the block; the rest stay as they are.
fn expected(
    scope: Scope,
    block: Block,
    k: usize,
    mask: &GraphMask,
    nodes: &[f64],
    edges: &[f64],
) -> (Vec<f64>, Vec<f64>) {
    let (b, n) = (mask.batch(), mask.nodes());
    let causal = mask.is_causal();
    let (mut nodes_out, mut edges_out) = (nodes.to_vec(), edges.to_vec());
    let on_nodes = matches!(scope, Scope::Nodes);
    let c = if on_nodes { DIM } else { DIM_EDGES };
    // every picking: its candidate positions (flat element offsets of their first channel)
    let mut pickings: Vec<Vec<usize>> = Vec::new();
    for bb in 0..b {
        match scope {
            Scope::Nodes => pickings.push(
                (0..n)
                    .filter(|&i| mask.node_valid(bb, i))
                    .map(|i| (bb * n + i) * c)
                    .collect(),
            ),
            Scope::Rows | Scope::Columns => {
                for fixed in 0..n {
                    pickings.push(
                        (0..n)
                            .filter(|&o| mask.edge_valid(bb, fixed, o) && (!causal || o <= fixed))
                            .map(|o| {
                                let (i, j) = match scope {
                                    Scope::Rows => (fixed, o),
                                    _ => (o, fixed),
                                };
                                ((bb * n + i) * n + j) * c
                            })
                            .collect(),
                    )
                }
            }
        }
    }
    let state = if on_nodes { nodes } else { edges };
    let out = if on_nodes {
        &mut nodes_out
    } else {
        &mut edges_out
    };
    for mut candidates in pickings {
        let norm = |at: usize| state[at..at + c].iter().map(|v| v * v).sum::<f64>();
        candidates.sort_by(|&x, &y| norm(y).partial_cmp(&norm(x)).unwrap());
        candidates.truncate(k);
        let updates: Vec<Vec<f64>> = match block {
            Block::Attention(p) => {
                let xs: Vec<Vec<f64>> = candidates
                    .iter()
                    .map(|&at| state[at..at + c].to_vec())
                    .collect();
                attention_by_hand(p, &xs)
            }
            Block::FeedForward(unrouted) => candidates
                .iter()
                .map(|&at| (at..at + c).map(|e| unrouted[e] - state[e]).collect())
                .collect(),
        };
        for (at, y) in candidates.iter().zip(updates) {
            for (o, v) in out[*at..*at + c].iter_mut().zip(y) {
                *o += v;
            }
        }
    }
    (nodes_out, edges_out)
}

#[test]
fn routed_blocks_equal_the_loop_on_the_top_k() {
    let (b, n) = (2, 5);
    for (src, scope, attention) in CASES {
        let k: usize = src.split("top(").nth(1).unwrap()[..1].parse().unwrap();
        let causal_options: &[bool] = match scope {
            Scope::Nodes => &[false],
            _ => &[false, true],
        };
        for &causal in causal_options {
            let layer = layer(src, causal, 9);
            let p = params(&layer);
            let dims: HashMap<String, Vec<usize>> = layer
                .params()
                .into_iter()
                .map(|p| (p.name.clone(), p.dims.clone()))
                .collect();
            let unrouted: Vec<f64>;
            let mask = GraphMask::from_lengths(n, &[5, 3]).unwrap().causal(causal);
            let nodes = randn(1, b * n * DIM);
            let edges = randn(2, b * n * n * DIM_EDGES);
            let (got_nodes, got_edges) = run(&layer, nodes.clone(), edges.clone(), &mask);
            let block = if attention {
                Block::Attention(&p)
            } else {
                // the same feedforward unrouted, holding the routed one's parameters
                let plain = src.split(", route:").next().unwrap().to_string() + ")";
                let plain = RuleLayer::<f64, Cpu>::new(
                    layer_plan(&plain, causal),
                    &Init::from_map(
                        &dev(),
                        p.iter()
                            .map(|(k, v)| (k.clone(), (dims[k].clone(), v.clone())))
                            .collect(),
                    ),
                )
                .unwrap();
                let (pn, pe) = run(&plain, nodes.clone(), edges.clone(), &mask);
                unrouted = if matches!(scope, Scope::Nodes) {
                    pn
                } else {
                    pe
                };
                Block::FeedForward(&unrouted)
            };
            let (want_nodes, want_edges) = expected(scope, block, k, &mask, &nodes, &edges);
            let what = format!("{src} (causal {causal})");
            // real positions only: what a padded position holds is read by no one
            let real = |v: &[f64], c: usize, edges: bool| -> Vec<f64> {
                let mut out = Vec::new();
                for bb in 0..b {
                    for i in 0..n {
                        if edges {
                            for j in 0..n {
                                if mask.edge_valid(bb, i, j) {
                                    let at = ((bb * n + i) * n + j) * c;
                                    out.extend_from_slice(&v[at..at + c]);
                                }
                            }
                        } else if mask.node_valid(bb, i) {
                            out.extend_from_slice(&v[(bb * n + i) * c..(bb * n + i + 1) * c]);
                        }
                    }
                }
                out
            };
            assert_close(
                &format!("{what}: nodes"),
                &real(&got_nodes, DIM, false),
                &real(&want_nodes, DIM, false),
                1e-12,
                1e-10,
            );
            assert_close(
                &format!("{what}: edges"),
                &real(&got_edges, DIM_EDGES, true),
                &real(&want_edges, DIM_EDGES, true),
                1e-12,
                1e-10,
            );
        }
    }
}

/// The cases with learned scores and soft-score gates (`straight: false`, an exact gradient).
fn learned(src: &str) -> String {
    let score = if src.contains("nodes[i] +=") {
        "linear(nodes[i], 1)"
    } else {
        "linear(edges[i, j], 1)"
    };
    let (head, tail) = src.split_once("by: ").unwrap();
    let rest = &tail[tail.find(')').unwrap() + 1..];
    format!("{head}by: {score}, straight: false{rest}")
}

#[test]
fn gradcheck_routed_blocks() {
    for (src, scope, _) in CASES {
        let src = learned(src);
        let rule = Rule::parse("routed.rule", &src).unwrap();
        gradcheck_loaded_rule(&rule, false, vec![]);
        if !matches!(scope, Scope::Nodes) {
            gradcheck_loaded_rule(&rule, true, vec![]);
        }
    }
}

#[test]
fn routed_blocks_keep_causality_and_padding() {
    for (src, scope, _) in CASES {
        let src = learned(src);
        if !matches!(scope, Scope::Nodes) {
            assert_never_reads_the_future(&src, &layer(&src, true, 4));
        }
        let causal_options: &[bool] = match scope {
            Scope::Nodes => &[false],
            _ => &[false, true],
        };
        for &causal in causal_options {
            assert_padding_is_never_read(&src, &layer(&src, causal, 4), causal);
        }
    }
}

#[test]
fn explain_routing_anywhere() {
    let rule = Rule::load(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/rules/colt5.rule"
    ))
    .unwrap();
    assert_explain_snapshot("explain__colt5", &rule, (64, 16), 32);
}
