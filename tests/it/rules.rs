//! The rule language end to end: every built-in rule runs forward and backward with padding,
//! passes a gradient check, keeps causality and padding, and matches its snapshot.

use dfdx::prelude::*;
use quartic::graph::{Edges, GraphMask, Nodes};
use quartic::nn::{HasParams, Init};
use quartic::rules::{Const, Rule, RuleConfig, RuleLayer, BUILTINS};

use crate::common::*;

/// Small sizes for each built-in rule, so tests run in milliseconds.
pub fn small_overrides(rule: &str) -> Vec<(String, Const)> {
    let n = |k: &str, v: f64| (k.to_string(), Const::Num(v));
    let mut o = vec![n("ff_mult", 2.0)];
    match rule {
        "taylor" | "quartic" | "quartic_endpoints" => o.extend([
            n("heads", 2.0),
            n("dim_head", 4.0),
            n("edge_heads", 2.0),
            n("edge_dim_head", 4.0),
        ]),
        "routed" => o.extend([
            n("heads", 2.0),
            n("dim_head", 4.0),
            n("edge_heads", 2.0),
            n("edge_dim_head", 4.0),
            n("picks", 6.0),
        ]),
        "relational" | "baseline" => o.extend([n("heads", 2.0), n("dim_head", 4.0)]),
        "edge_transformer" => o.extend([
            n("heads", 2.0),
            n("dim_head", 4.0),
            n("edge_heads", 2.0),
            n("edge_dim_head", 3.0),
        ]),
        "triangle" => o.extend([
            n("heads", 2.0),
            n("dim_head", 4.0),
            n("edge_heads", 2.0),
            n("edge_dim_head", 4.0),
            n("hidden", 4.0),
        ]),
        _ => {}
    }
    o
}

pub fn small_layer(
    rule: &str,
    dim: usize,
    dim_edges: usize,
    causal: bool,
    init: &Init<Cpu>,
) -> RuleLayer<f64, Cpu> {
    let cfg = RuleConfig {
        dim,
        dim_edges,
        causal,
        overrides: small_overrides(rule),
    };
    let plan = Rule::builtin(rule)
        .unwrap()
        .plan(&cfg)
        .unwrap_or_else(|e| panic!("{e}"));
    RuleLayer::new(plan, init).unwrap()
}

pub fn run(
    layer: &RuleLayer<f64, Cpu>,
    nodes: Vec<f64>,
    edges: Vec<f64>,
    mask: &GraphMask,
) -> (Vec<f64>, Vec<f64>) {
    let d = dev();
    let (b, n) = (mask.batch(), mask.nodes());
    let nt = Nodes::new(d.tensor_from_vec(nodes, (b, n, layer.plan.dim)));
    let et = Edges::new(d.tensor_from_vec(edges, (b, n, n, layer.plan.dim_edges))).unwrap();
    let (no, eo) = layer
        .forward(nt, et, mask)
        .unwrap_or_else(|e| panic!("{e}"));
    (no.into_tensor().as_vec(), eo.into_tensor().as_vec())
}

#[test]
fn builtin_rules_run_forward_and_backward_with_padding() {
    let d = dev();
    let (b, n, dim, de) = (2, 5, 8, 4);
    let mask = GraphMask::from_lengths(n, &[5, 3]).unwrap();
    for (name, _) in BUILTINS {
        let layer = small_layer(name, dim, de, false, &Init::random(&d, 3));
        let nodes = d.tensor_from_vec(randn(1, b * n * dim), (b, n, dim));
        let edges = d.tensor_from_vec(randn(2, b * n * n * de), (b, n, n, de));
        let (no, eo) = layer
            .forward(
                Nodes::new(nodes.leaky_trace()),
                Edges::new(edges.leaky_trace()).unwrap(),
                &mask,
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let loss = probe_loss(no.into_tensor(), 7) + probe_loss(eo.into_tensor(), 8);
        let mut grads = loss.backward();
        let mut touched = 0;
        for p in layer.params() {
            let g = grads.get_or_alloc_mut(&p.value).unwrap().to_vec();
            assert!(
                g.iter().all(|x| x.is_finite()),
                "{name}: {} has a non-finite gradient",
                p.name
            );
            if g.iter().any(|&x| x != 0.0) {
                touched += 1;
            }
        }
        assert_eq!(
            touched,
            layer.params().len(),
            "{name}: every parameter gets a gradient"
        );
    }
}

fn gradcheck_rule(name: &str, causal: bool) {
    gradcheck_rule_with(name, causal, vec![]);
}

fn gradcheck_rule_with(name: &str, causal: bool, extra: Vec<(String, Const)>) {
    let mut overrides = small_overrides(name);
    overrides.extend(extra);
    gradcheck_loaded_rule(&Rule::builtin(name).unwrap(), causal, overrides);
}

/// A finite-difference check of a rule's layer (dim 6, dim_edges 4, two graphs of 4 and 3
/// nodes): inputs and parameters.
pub fn gradcheck_loaded_rule(rule: &Rule, causal: bool, overrides: Vec<(String, Const)>) {
    gradcheck_loaded_rule_drawing(rule, causal, overrides, None)
}

/// [`gradcheck_loaded_rule`], with the rule's dropouts drawing from `dropout` (training) when
/// given (two graphs).
pub fn gradcheck_loaded_rule_drawing(
    rule: &Rule,
    causal: bool,
    overrides: Vec<(String, Const)>,
    dropout: Option<quartic::graph::DropoutDraws>,
) {
    let (b, n, dim, de) = (2, 4, 6, 4);
    let mask = GraphMask::from_lengths(n, &[4, 3]).unwrap().causal(causal);
    let mask = match dropout {
        Some(d) => mask.with_dropout(d).unwrap(),
        None => mask,
    };
    let inputs = vec![randn(11, b * n * dim), randn(12, b * n * n * de)];
    let cfg = RuleConfig {
        dim,
        dim_edges: de,
        causal,
        overrides,
    };
    let mask = with_test_graph(mask, &rule.plan(&cfg).unwrap_or_else(|e| panic!("{e}")));
    gradcheck_block(
        &format!("rule {} (causal {causal})", rule.name),
        |init| RuleLayer::new(rule.plan(&cfg).unwrap_or_else(|e| panic!("{e}")), init).unwrap(),
        &inputs,
        12,
        |layer, x| {
            let mut x = x.into_iter();
            let nodes = Nodes::new(x.next().unwrap().reshape_like(&(b, n, dim)));
            let edges = Edges::new(x.next().unwrap().reshape_like(&(b, n, n, de))).unwrap();
            let (no, eo) = layer.forward(nodes, edges, &mask).unwrap();
            probe_loss(no.into_tensor(), 21) + probe_loss(eo.into_tensor(), 22)
        },
    );
}

#[test]
fn gradcheck_taylor_rule() {
    gradcheck_rule("taylor", false);
    gradcheck_rule("taylor", true);
}

#[test]
fn gradcheck_quartic_rule() {
    gradcheck_rule("quartic", false);
    gradcheck_rule("quartic", true);
}

#[test]
fn gradcheck_quartic_endpoints_rule() {
    gradcheck_rule("quartic_endpoints", false);
    gradcheck_rule("quartic_endpoints", true);
}

#[test]
fn gradcheck_routed_rule() {
    // the straight-through gates (value 1) are an estimator by design, not the derivative of the
    // forward pass; the soft-gated form has the exact gradient, and everything else is shared
    let soft = vec![("straight".to_string(), Const::Word("false".into()))];
    gradcheck_rule_with("routed", false, soft.clone());
    gradcheck_rule_with("routed", true, soft);
}

#[test]
fn gradcheck_relational_rule() {
    gradcheck_rule("relational", false);
    gradcheck_rule("relational", true);
}

#[test]
fn gradcheck_triangle_rule() {
    gradcheck_rule("triangle", false);
    gradcheck_rule("triangle", true);
}

#[test]
fn gradcheck_edge_transformer_rule() {
    gradcheck_rule("edge_transformer", false);
    gradcheck_rule("edge_transformer", true);
}

#[test]
fn gradcheck_baseline_rule() {
    gradcheck_rule("baseline", false);
    gradcheck_rule("baseline", true);
}

/// A rule touching every lowering without parameters, against a direct loop implementation of
/// the language's definitions (masked softmax and reductions, per-head broadcasting, matrix
/// product reductions (one factor over three indices, either side), log-sum-exp, transposes,
/// lifting, concat, diagonal writes).
const PROBE_RULE: &str = "rule probe()
let s[i, j] = dot(nodes[i], nodes[j], heads: 2) * 0.5
let a[i, j] = softmax[j](s[i, j])
nodes[i] += sum[j](a[i, j] * nodes[j])
edges[i, j] += sum[k](a[i, k] * edges[k, j])
edges[i, j] += mean[k](edges[i, k] * edges[j, k])
edges[i, j] += tanh(edges[j, i]) * 0.5 + concat(nodes[i], nodes[j]) - 1
edges[i, i] += max[k](edges[i, k] - edges[k, i])
nodes[i] += sum[j](a[i, j] * s[i, j])
edges[i, j] += sum[k](edges[i, k] * edges[k, j] * nodes[k])
edges[i, j] += sum[k](nodes[k] * (edges[k, i] * edges[j, k]))
edges[i, j] += logsumexp[k](edges[i, k] + edges[k, j] * 3)
";

struct Naive {
    b: usize,
    n: usize,
    valid: Vec<bool>,
    causal: bool,
}

impl Naive {
    /// Index k may be read where the other free indices are `rest`.
    fn keep(&self, b: usize, k: usize, rest: &[usize]) -> bool {
        self.valid[b * self.n + k] && (!self.causal || rest.iter().any(|&r| k <= r))
    }

    fn run(&self, nodes: &mut [f64], edges: &mut [f64]) {
        let (bn, n) = (self.b, self.n);
        let (dn, de) = (2, 4);
        let nd = |b: usize, i: usize, c: usize| (b * n + i) * dn + c;
        let ed = |b: usize, i: usize, j: usize, c: usize| ((b * n + i) * n + j) * de + c;
        let mut s = vec![0.0; bn * n * n * 2];
        let mut a = vec![0.0; bn * n * n * 2];
        let sd = |b: usize, i: usize, j: usize, c: usize| ((b * n + i) * n + j) * 2 + c;
        for b in 0..bn {
            for i in 0..n {
                for j in 0..n {
                    for h in 0..2 {
                        s[sd(b, i, j, h)] = 0.5 * nodes[nd(b, i, h)] * nodes[nd(b, j, h)];
                    }
                }
                for h in 0..2 {
                    let vis: Vec<usize> = (0..n).filter(|&j| self.keep(b, j, &[i])).collect();
                    let mx = vis
                        .iter()
                        .map(|&j| s[sd(b, i, j, h)])
                        .fold(f64::MIN, f64::max);
                    let z: f64 = vis.iter().map(|&j| (s[sd(b, i, j, h)] - mx).exp()).sum();
                    for &j in &vis {
                        a[sd(b, i, j, h)] = (s[sd(b, i, j, h)] - mx).exp() / z;
                    }
                }
            }
        }
        let old = nodes.to_vec();
        for b in 0..bn {
            for i in 0..n {
                for c in 0..dn {
                    let add: f64 = (0..n)
                        .filter(|&j| self.keep(b, j, &[i]))
                        .map(|j| a[sd(b, i, j, c)] * old[nd(b, j, c)])
                        .sum();
                    nodes[nd(b, i, c)] += add;
                }
            }
        }
        let old = edges.to_vec();
        for b in 0..bn {
            for i in 0..n {
                for j in 0..n {
                    for c in 0..de {
                        let add: f64 = (0..n)
                            .filter(|&k| self.keep(b, k, &[i, j]))
                            .map(|k| a[sd(b, i, k, c / 2)] * old[ed(b, k, j, c)])
                            .sum();
                        edges[ed(b, i, j, c)] += add;
                    }
                }
            }
        }
        let old = edges.to_vec();
        for b in 0..bn {
            for i in 0..n {
                for j in 0..n {
                    let ks: Vec<usize> = (0..n).filter(|&k| self.keep(b, k, &[i, j])).collect();
                    for c in 0..de {
                        let sum: f64 = ks
                            .iter()
                            .map(|&k| old[ed(b, i, k, c)] * old[ed(b, j, k, c)])
                            .sum();
                        edges[ed(b, i, j, c)] += sum / ks.len().max(1) as f64;
                    }
                }
            }
        }
        let old = edges.to_vec();
        for b in 0..bn {
            for i in 0..n {
                for j in 0..n {
                    for c in 0..de {
                        let cat = if c < dn {
                            nodes[nd(b, i, c)]
                        } else {
                            nodes[nd(b, j, c - dn)]
                        };
                        edges[ed(b, i, j, c)] += old[ed(b, j, i, c)].tanh() * 0.5 + cat - 1.0;
                    }
                }
            }
        }
        let old = edges.to_vec();
        for b in 0..bn {
            for i in 0..n {
                for c in 0..de {
                    let ks: Vec<usize> = (0..n).filter(|&k| self.keep(b, k, &[i])).collect();
                    let mx = ks
                        .iter()
                        .map(|&k| old[ed(b, i, k, c)] - old[ed(b, k, i, c)])
                        .fold(f64::MIN, f64::max);
                    edges[ed(b, i, i, c)] += if ks.is_empty() { 0.0 } else { mx };
                }
            }
        }
        let old = nodes.to_vec();
        for b in 0..bn {
            for i in 0..n {
                for c in 0..dn {
                    let add: f64 = (0..n)
                        .filter(|&j| self.keep(b, j, &[i]))
                        .map(|j| a[sd(b, i, j, c)] * s[sd(b, i, j, c)])
                        .sum();
                    nodes[nd(b, i, c)] = old[nd(b, i, c)] + add;
                }
            }
        }
        // the products over three indices, with per-head broadcasting of the node factor
        let three: [&dyn Fn(&[f64], usize, usize, usize, usize, usize) -> f64; 2] = [
            &|e, b, i, j, k, c| e[ed(b, i, k, c)] * e[ed(b, k, j, c)],
            &|e, b, i, j, k, c| e[ed(b, k, i, c)] * e[ed(b, j, k, c)],
        ];
        for product in three {
            let old = edges.to_vec();
            for b in 0..bn {
                for i in 0..n {
                    for j in 0..n {
                        for c in 0..de {
                            let add: f64 = (0..n)
                                .filter(|&k| self.keep(b, k, &[i, j]))
                                .map(|k| product(&old, b, i, j, k, c) * nodes[nd(b, k, c / 2)])
                                .sum();
                            edges[ed(b, i, j, c)] += add;
                        }
                    }
                }
            }
        }
        // log Σ exp over the visible k, written the naive way (the values are small)
        let old = edges.to_vec();
        for b in 0..bn {
            for i in 0..n {
                for j in 0..n {
                    let ks: Vec<usize> = (0..n).filter(|&k| self.keep(b, k, &[i, j])).collect();
                    for c in 0..de {
                        let sum: f64 = ks
                            .iter()
                            .map(|&k| (old[ed(b, i, k, c)] + old[ed(b, k, j, c)] * 3.0).exp())
                            .sum();
                        edges[ed(b, i, j, c)] += if ks.is_empty() { 0.0 } else { sum.ln() };
                    }
                }
            }
        }
    }
}

#[test]
fn every_lowering_matches_the_definitions() {
    let d = dev();
    let (b, n) = (2, 5);
    let rule = Rule::parse("probe.rule", PROBE_RULE).unwrap();
    for causal in [false, true] {
        let cfg = RuleConfig {
            dim: 2,
            dim_edges: 4,
            causal,
            overrides: vec![],
        };
        let layer =
            RuleLayer::<f64, Cpu>::new(rule.plan(&cfg).unwrap(), &Init::random(&d, 0)).unwrap();
        let mask = GraphMask::from_lengths(n, &[5, 3]).unwrap().causal(causal);
        let nodes = randn(31, b * n * 2);
        let edges = randn(32, b * n * n * 4);
        let (got_n, got_e) = run(&layer, nodes.clone(), edges.clone(), &mask);
        let naive = Naive {
            b,
            n,
            valid: mask.valid().to_vec(),
            causal,
        };
        let (mut want_n, mut want_e) = (nodes, edges);
        naive.run(&mut want_n, &mut want_e);
        assert_close(
            &format!("nodes (causal {causal})"),
            &got_n,
            &want_n,
            1e-12,
            1e-12,
        );
        assert_close(
            &format!("edges (causal {causal})"),
            &got_e,
            &want_e,
            1e-12,
            1e-12,
        );
    }
}

#[test]
fn explain_every_builtin_rule_at_16_and_128_nodes() {
    for (name, _) in BUILTINS {
        let rule = Rule::builtin(name).unwrap();
        for n in [16, 128] {
            assert_explain_snapshot(&format!("explain__{name}_n{n}"), &rule, (512, 32), n);
        }
    }
}

/// `explain` of `rule` at `(dim, dim_edges)` and n nodes (batch 1) against the snapshot
/// `name`; the rule's file is shown relative to the repository.
pub fn assert_explain_snapshot(
    name: &str,
    rule: &Rule,
    (dim, dim_edges): (usize, usize),
    n: usize,
) {
    let plan = rule
        .plan(&RuleConfig {
            dim,
            dim_edges,
            causal: false,
            overrides: vec![],
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/");
    let text = quartic::rules::explain::explain(&plan, 1, n).replace(root, "");
    insta::with_settings!({
        snapshot_path => "../../snapshots",
        prepend_module_to_snapshot => false,
    }, {
        insta::assert_snapshot!(name.to_string(), text);
    });
}

/// Inputs at time ≥ t (nodes t.., edges with max(i, j) ≥ t) replaced by other random values.
fn perturb_from(
    t: usize,
    b: usize,
    n: usize,
    dim: usize,
    de: usize,
    nodes: &mut [f64],
    edges: &mut [f64],
    seed: u64,
) {
    let noise = randn(seed, nodes.len() + edges.len());
    for bb in 0..b {
        for i in t..n {
            for c in 0..dim {
                let at = (bb * n + i) * dim + c;
                nodes[at] = noise[at] * 3.0;
            }
        }
        for i in 0..n {
            for j in 0..n {
                if i.max(j) >= t {
                    for c in 0..de {
                        let at = ((bb * n + i) * n + j) * de + c;
                        edges[at] = noise[nodes.len() + at] * 3.0;
                    }
                }
            }
        }
    }
}

#[test]
fn causal_builtin_rules_never_read_the_future() {
    let d = dev();
    for (name, _) in BUILTINS {
        let layer = small_layer(name, 8, 4, true, &Init::random(&d, 9));
        assert_never_reads_the_future(name, &layer);
    }
}

/// A causal layer's outputs before time t do not change when its inputs from t on do (random
/// t, padded and not), and do change after it (so the check can fail). dim 8, dim_edges 4.
pub fn assert_never_reads_the_future(name: &str, layer: &RuleLayer<f64, Cpu>) {
    assert_never_reads_the_future_drawing(name, layer, None)
}

/// The mask with dropout drawing from `draws` (training), or as it is; with an input graph
/// when the layer's rule reads one.
fn drawing(
    mask: GraphMask,
    draws: Option<&quartic::graph::DropoutDraws>,
    layer: &RuleLayer<f64, Cpu>,
) -> GraphMask {
    let mask = with_test_graph(mask, &layer.plan);
    match draws {
        Some(d) => mask.with_dropout(d.clone()).unwrap(),
        None => mask,
    }
}

/// `mask` carrying a fixed input graph (about half of the pairs are edges, some nodes have
/// none) when `plan` reads the input graph; as it is otherwise.
pub fn with_test_graph(mask: GraphMask, plan: &quartic::rules::Plan) -> GraphMask {
    if plan.input_graph_reader().is_none() {
        return mask;
    }
    let (b, n) = (mask.batch(), mask.nodes());
    let adjacency = crate::input_graph::random_adjacency(b, n, 17, false);
    mask.with_adjacency(adjacency).unwrap()
}

/// [`assert_never_reads_the_future`] with the layer's dropouts drawing from `draws` (two
/// graphs), the same draws in both runs.
pub fn assert_never_reads_the_future_drawing(
    name: &str,
    layer: &RuleLayer<f64, Cpu>,
    draws: Option<&quartic::graph::DropoutDraws>,
) {
    use rand::{Rng, SeedableRng};
    let (b, n, dim, de) = (2, 7, 8, 4);
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for trial in 0..4 {
        let t = rng.gen_range(1..n);
        let lengths = [n, rng.gen_range(t..=n)];
        let mask = GraphMask::from_lengths(n, &lengths).unwrap().causal(true);
        let mask = drawing(mask, draws, layer);
        let nodes = randn(100 + trial, b * n * dim);
        let edges = randn(200 + trial, b * n * n * de);
        let (n1, e1) = run(layer, nodes.clone(), edges.clone(), &mask);
        let (mut nodes2, mut edges2) = (nodes, edges);
        perturb_from(t, b, n, dim, de, &mut nodes2, &mut edges2, 300 + trial);
        let (n2, e2) = run(layer, nodes2, edges2, &mask);
        for bb in 0..b {
            for i in 0..t {
                let r = (bb * n + i) * dim..(bb * n + i + 1) * dim;
                assert_eq!(
                    n1[r.clone()],
                    n2[r],
                    "{name}: node {i} changed when inputs from {t} on did"
                );
                for j in 0..t {
                    let r = ((bb * n + i) * n + j) * de..((bb * n + i) * n + j + 1) * de;
                    assert_eq!(
                        e1[r.clone()],
                        e2[r],
                        "{name}: edge ({i}, {j}) changed when inputs from {t} on did"
                    );
                }
            }
        }
        // and the perturbation does reach later positions (the test can fail)
        assert_ne!(n1, n2, "{name}: outputs ignore the inputs");
    }
}

#[test]
fn padding_never_changes_real_positions() {
    let d = dev();
    for causal in [false, true] {
        for (name, _) in BUILTINS {
            let layer = small_layer(name, 8, 4, causal, &Init::random(&d, 4));
            assert_padding_is_never_read(name, &layer, causal);
        }
    }
}

/// Real positions' outputs do not change when padded positions' inputs do (graphs of 6 and 4
/// nodes). dim 8, dim_edges 4.
pub fn assert_padding_is_never_read(name: &str, layer: &RuleLayer<f64, Cpu>, causal: bool) {
    assert_padding_is_never_read_drawing(name, layer, causal, None)
}

/// [`assert_padding_is_never_read`] with the layer's dropouts drawing from `draws` (two
/// graphs).
pub fn assert_padding_is_never_read_drawing(
    name: &str,
    layer: &RuleLayer<f64, Cpu>,
    causal: bool,
    draws: Option<&quartic::graph::DropoutDraws>,
) {
    let (b, n, dim, de) = (2, 6, 8, 4);
    let lengths = [6, 4];
    let mask = GraphMask::from_lengths(n, &lengths).unwrap().causal(causal);
    let mask = drawing(mask, draws, layer);
    let nodes = randn(41, b * n * dim);
    let edges = randn(42, b * n * n * de);
    let (n1, e1) = run(layer, nodes.clone(), edges.clone(), &mask);
    let (mut nodes2, mut edges2) = (nodes, edges);
    let noise = randn(43, nodes2.len() + edges2.len());
    for bb in 0..b {
        for i in 0..n {
            let pad_i = i >= lengths[bb];
            if pad_i {
                for c in 0..dim {
                    nodes2[(bb * n + i) * dim + c] = noise[(bb * n + i) * dim + c] * 5.0;
                }
            }
            for j in 0..n {
                if pad_i || j >= lengths[bb] {
                    for c in 0..de {
                        let at = ((bb * n + i) * n + j) * de + c;
                        edges2[at] = noise[nodes2.len() + at] * 5.0;
                    }
                }
            }
        }
    }
    let (n2, e2) = run(layer, nodes2, edges2, &mask);
    for bb in 0..b {
        for i in 0..lengths[bb] {
            let r = (bb * n + i) * dim..(bb * n + i + 1) * dim;
            assert_eq!(
                n1[r.clone()],
                n2[r],
                "{name} (causal {causal}): real node {i} changed"
            );
            for j in 0..lengths[bb] {
                let r = ((bb * n + i) * n + j) * de..((bb * n + i) * n + j + 1) * de;
                assert_eq!(
                    e1[r.clone()],
                    e2[r],
                    "{name} (causal {causal}): real edge ({i}, {j}) changed"
                );
            }
        }
    }
}

/// Each rule's outputs for fixed tokens on a fixed seed: token embeddings onto nodes, the edge
/// embedding onto edges, one layer of the rule; values rounded to 6 decimals (f64).
#[test]
fn builtin_rule_outputs_match_their_snapshots() {
    use quartic::nn::embedding::{EdgeEmbed, Embedding};
    let d = dev();
    let tokens = [3usize, 1, 4, 1, 5, 9, 2, 6];
    let (n, dim, de) = (tokens.len(), 8, 4);
    // to 1e-6, and without the sign of zero (sums of normalized channels are zero up to
    // rounding, whose sign says nothing)
    let round = |v: Vec<f64>| -> Vec<f64> {
        v.into_iter()
            .map(|x| (x * 1e6).round() / 1e6 + 0.0)
            .collect()
    };
    for causal in [false, true] {
        for (name, _) in BUILTINS {
            let init = Init::random(&d, 2024);
            let embed = Embedding::<f64, Cpu>::new(&init.pp("token_emb"), 10, dim).unwrap();
            let to_edges = EdgeEmbed::<f64, Cpu>::new(&init.pp("edge_emb"), dim, de).unwrap();
            let layer = small_layer(name, dim, de, causal, &init.pp("layer"));
            let nodes: Nodes<f64, Cpu> = embed.forward(&tokens, 1, n).unwrap();
            let edges = to_edges
                .forward(Nodes::new(nodes.tensor().clone()))
                .unwrap();
            let mask = GraphMask::full(1, n).causal(causal);
            let (no, eo) = layer.forward(nodes, edges, &mask).unwrap();
            let snapshot = serde_json::json!({
                "rule": name,
                "causal": causal,
                "tokens": tokens,
                "nodes": round(no.into_tensor().as_vec()),
                "edge_channel_sums": round(
                    eo.into_tensor().sum::<_, Axis<3>>().as_vec()
                ),
            });
            insta::with_settings!({
                snapshot_path => "../../snapshots",
                prepend_module_to_snapshot => false,
            }, {
                insta::assert_json_snapshot!(
                    format!("outputs__{name}{}", if causal { "_causal" } else { "" }),
                    snapshot
                );
            });
        }
    }
}

/// Attention lowerings against a loop over queries and keys with the layer's own parameters:
/// node attention (bias, talking heads, gates, probabilities), row and column attention with a
/// bias read from a third edge, and all-edges attention, with padding, causal and not.
const ATTEND_RULE: &str = "rule probe()
let x[i] = nodes[i] * 1
let bb[i, j] = edges[i, j] * 0.5
let o[i], p[i, j] = attend(x[i] -> x[j], heads: 2, dim_head: 3, scale: 0.7, talking,
    bias: bb[i, j], gates: x[i] * 0.3)
node: nodes[i] += o[i]
probs: edges[i, j] += p[i, j]
row: edges[i, j] += attend(edges[i, j] -> edges[i, k], heads: 2, dim_head: 3, bias: bb[j, k])
col: edges[i, j] += attend(edges[i, j] -> edges[k, j], heads: 2, dim_head: 3, bias: bb[k, i], gate)
all: edges[i, j] += attend(edges[i, j] -> edges[k, l], heads: 2, dim_head: 3, bias: bb[j, k])
";

struct Att<'a> {
    q: &'a [f64],
    k: &'a [f64],
    v: &'a [f64],
    out: &'a [f64],
    talking: Option<&'a [f64]>,
    cin: usize,
}

impl Att<'_> {
    fn lin(w: &[f64], x: &[f64], rows: usize) -> Vec<f64> {
        let cols = x.len();
        (0..rows)
            .map(|r| (0..cols).map(|c| w[r * cols + c] * x[c]).sum())
            .collect()
    }

    /// One query over its visible keys: `bias(key)` per head, `gate` logits per head.
    fn run(
        &self,
        xq: &[f64],
        keys: &[Vec<f64>],
        bias: &[[f64; 2]],
        gate: Option<[f64; 2]>,
        scale: f64,
    ) -> (Vec<f64>, Vec<[f64; 2]>) {
        let (h, d) = (2, 3);
        let q = Self::lin(self.q, xq, h * d);
        let ks: Vec<Vec<f64>> = keys.iter().map(|x| Self::lin(self.k, x, h * d)).collect();
        let vs: Vec<Vec<f64>> = keys.iter().map(|x| Self::lin(self.v, x, h * d)).collect();
        let mut scores: Vec<[f64; 2]> = ks
            .iter()
            .zip(bias)
            .map(|(k, b)| {
                let mut s = [0.0; 2];
                for hh in 0..h {
                    s[hh] =
                        scale * (0..d).map(|c| q[hh * d + c] * k[hh * d + c]).sum::<f64>() + b[hh];
                }
                s
            })
            .collect();
        if let Some(t) = self.talking {
            for s in scores.iter_mut() {
                let old = *s;
                for a in 0..h {
                    s[a] = (0..h).map(|bq| t[a * h + bq] * old[bq]).sum();
                }
            }
        }
        let mut weights = vec![[0.0; 2]; keys.len()];
        let mut mixed = vec![0.0; h * d];
        for hh in 0..h {
            if keys.is_empty() {
                continue;
            }
            let mx = scores.iter().map(|s| s[hh]).fold(f64::MIN, f64::max);
            let z: f64 = scores.iter().map(|s| (s[hh] - mx).exp()).sum();
            let g = gate.map_or(1.0, |g| 1.0 / (1.0 + (-g[hh]).exp()));
            for (kk, s) in scores.iter().enumerate() {
                let w = (s[hh] - mx).exp() / z;
                weights[kk][hh] = w;
                for c in 0..d {
                    mixed[hh * d + c] += g * w * vs[kk][hh * d + c];
                }
            }
        }
        (Self::lin(self.out, &mixed, self.cin), weights)
    }
}

#[test]
fn attention_lowerings_match_a_loop_over_queries_and_keys() {
    use quartic::rules::layer::Block;
    let d = dev();
    let (b, n, dim, de) = (2, 4, 2, 2);
    let rule = Rule::parse("attend.rule", ATTEND_RULE).unwrap();
    for causal in [false, true] {
        let cfg = RuleConfig {
            dim,
            dim_edges: de,
            causal,
            overrides: vec![],
        };
        let layer =
            RuleLayer::<f64, Cpu>::new(rule.plan(&cfg).unwrap(), &Init::random(&d, 6)).unwrap();
        let mask = GraphMask::from_lengths(n, &[4, 3]).unwrap().causal(causal);
        let nodes = randn(51, b * n * dim);
        let edges = randn(52, b * n * n * de);
        let (got_n, got_e) = run(&layer, nodes.clone(), edges.clone(), &mask);

        let weights = |stmt: &str, site: &str| -> (Vec<Vec<f64>>, Option<Vec<f64>>) {
            let Some(Block::Attend(a)) = layer.block(stmt, site) else {
                panic!()
            };
            let w = |l: &quartic::nn::Linear<f64, Cpu>| l.weight.value.as_vec();
            (
                vec![w(&a.to_q), w(&a.to_k), w(&a.to_v), w(&a.to_out)],
                a.talking.as_ref().map(|t| t.value.as_vec()),
            )
        };
        let att = |ws: &(Vec<Vec<f64>>, Option<Vec<f64>>),
                   cin: usize|
         -> (
            Vec<f64>,
            Vec<f64>,
            Vec<f64>,
            Vec<f64>,
            Option<Vec<f64>>,
            usize,
        ) {
            (
                ws.0[0].clone(),
                ws.0[1].clone(),
                ws.0[2].clone(),
                ws.0[3].clone(),
                ws.1.clone(),
                cin,
            )
        };
        let valid = |bb: usize, i: usize| i < [4, 3][bb];
        let visible = |bb: usize, qt: usize, kt: usize, real: bool| {
            real && (!causal || kt <= qt) && {
                let _ = bb;
                true
            }
        };
        let nd = |bb: usize, i: usize| nodes[(bb * n + i) * dim..(bb * n + i + 1) * dim].to_vec();
        let mut want_n = nodes.clone();
        let mut e = edges.clone();
        let ed = |e: &[f64], bb: usize, i: usize, j: usize| {
            e[((bb * n + i) * n + j) * de..((bb * n + i) * n + j + 1) * de].to_vec()
        };
        let bias_of = |bb: usize, i: usize, j: usize| {
            let v = ed(&edges, bb, i, j);
            [v[0] * 0.5, v[1] * 0.5]
        };

        // node attention and its probabilities
        let (q, k, v, o, t, cin) = att(&weights("o", "attend0"), dim);
        let node_att = Att {
            q: &q,
            k: &k,
            v: &v,
            out: &o,
            talking: t.as_deref(),
            cin,
        };
        let mut probs = vec![0.0; b * n * n * de];
        for bb in 0..b {
            for i in 0..n {
                let keys: Vec<usize> = (0..n)
                    .filter(|&j| visible(bb, i, j, valid(bb, j)))
                    .collect();
                let kv: Vec<Vec<f64>> = keys.iter().map(|&j| nd(bb, j)).collect();
                let bias: Vec<[f64; 2]> = keys.iter().map(|&j| bias_of(bb, i, j)).collect();
                let xi = nd(bb, i);
                let (out, w) = node_att.run(&xi, &kv, &bias, Some([xi[0] * 0.3, xi[1] * 0.3]), 0.7);
                for c in 0..dim {
                    want_n[(bb * n + i) * dim + c] += out[c];
                }
                for (kk, &j) in keys.iter().enumerate() {
                    for hh in 0..2 {
                        probs[((bb * n + i) * n + j) * de + hh] = w[kk][hh];
                    }
                }
            }
        }
        for (x, p) in e.iter_mut().zip(&probs) {
            *x += p;
        }
        // row, column and all-edges attention, each reading the edges as they stand
        let scale = 1.0 / 3f64.sqrt();
        for (stmt, pattern) in [("row", 0), ("col", 1), ("all", 2)] {
            let ws = weights(stmt, "attend0");
            let (q, k, v, o, t, cin) = att(&ws, de);
            let a = Att {
                q: &q,
                k: &k,
                v: &v,
                out: &o,
                talking: t.as_deref(),
                cin,
            };
            let gate_w = match layer.block(stmt, "gate0") {
                Some(Block::Linear(l)) => Some((
                    l.weight.value.as_vec(),
                    l.bias.as_ref().unwrap().value.as_vec(),
                )),
                _ => None,
            };
            let before = e.clone();
            for bb in 0..b {
                for i in 0..n {
                    for j in 0..n {
                        let qt = i.max(j);
                        let real_edge = |x: usize, y: usize| valid(bb, x) && valid(bb, y);
                        let keys: Vec<(usize, usize)> = match pattern {
                            0 => (0..n).map(|kk| (i, kk)).collect(),
                            1 => (0..n).map(|kk| (kk, j)).collect(),
                            _ => (0..n * n).map(|x| (x / n, x % n)).collect(),
                        };
                        let keys: Vec<(usize, usize)> = keys
                            .into_iter()
                            .filter(|&(x, y)| visible(bb, qt, x.max(y), real_edge(x, y)))
                            .collect();
                        let kv: Vec<Vec<f64>> =
                            keys.iter().map(|&(x, y)| ed(&before, bb, x, y)).collect();
                        let bias: Vec<[f64; 2]> = keys
                            .iter()
                            .map(|&(x, y)| match pattern {
                                0 => bias_of(bb, j, y),
                                1 => bias_of(bb, x, i),
                                _ => bias_of(bb, j, x),
                            })
                            .collect();
                        let xq = ed(&before, bb, i, j);
                        let gate = gate_w.as_ref().map(|(w, bias)| {
                            let g = Att::lin(w, &xq, 2);
                            [g[0] + bias[0], g[1] + bias[1]]
                        });
                        let (out, _) = a.run(&xq, &kv, &bias, gate, scale);
                        for c in 0..de {
                            e[((bb * n + i) * n + j) * de + c] += out[c];
                        }
                    }
                }
            }
        }
        assert_close(
            &format!("nodes (causal {causal})"),
            &got_n,
            &want_n,
            1e-10,
            1e-10,
        );
        assert_close(
            &format!("edges (causal {causal})"),
            &got_e,
            &e,
            1e-10,
            1e-10,
        );
    }
}

#[test]
fn parameter_names_survive_edits_elsewhere_in_the_file() {
    let d = dev();
    let names = |src: &str| -> Vec<String> {
        let cfg = RuleConfig {
            dim: 8,
            dim_edges: 4,
            causal: false,
            overrides: vec![],
        };
        let plan = Rule::parse("r.rule", src).unwrap().plan(&cfg).unwrap();
        let layer =
            RuleLayer::<f64, Cpu>::new(plan, &Init::random(&d, 0).pp("layers").pp(0)).unwrap();
        layer.params().iter().map(|p| p.name.clone()).collect()
    };
    let original = "let x[i] = rmsnorm(nodes[i])
attn: nodes[i] += attend(x[i] -> x[j], heads: 2, dim_head: 4, gate)
ff: nodes[i] += feedforward(nodes[i])
";
    let edited = "let e[i, j] = layernorm(edges[i, j])
mix: edges[i, j] += linear(e[i, j], dim_edges)
let x[i] = rmsnorm(nodes[i])
attn: nodes[i] += attend(x[i] -> x[j], heads: 2, dim_head: 4, gate)
pre: nodes[i] += linear(nodes[i], dim)
ff: nodes[i] += feedforward(nodes[i])
";
    let before = names(original);
    let after = names(edited);
    assert!(
        before.contains(&"layers.0.attn.attend0.to_q.weight".to_string()),
        "{before:?}"
    );
    assert!(
        before.contains(&"layers.0.x.rmsnorm0.weight".to_string()),
        "{before:?}"
    );
    for name in &before {
        assert!(
            after.contains(name),
            "`{name}` was renamed by an edit elsewhere: {after:?}"
        );
    }
    assert_eq!(after.len(), before.len() + 4);
}

/// The hand-written baseline of the interpreter bench computes exactly what the rule does
/// (values and gradients), so the bench compares like with like.
#[test]
fn taylor_rule_equals_the_layer_written_by_hand() {
    let d = dev();
    let (b, n, dim, de) = (2, 5, 8, 4);
    let layer = small_layer("taylor", dim, de, false, &Init::random(&d, 8));
    let mask = GraphMask::from_lengths(n, &[5, 3]).unwrap();
    let nodes = d.tensor_from_vec(randn(61, b * n * dim), (b, n, dim));
    let edges = d.tensor_from_vec(randn(62, b * n * n * de), (b, n, n, de));
    let outputs = |by_hand: bool| {
        let (x, e) = (
            Nodes::new(nodes.leaky_trace()),
            Edges::new(edges.clone().retaped::<Tp>()).unwrap(),
        );
        let (x, e) = if by_hand {
            crate::taylor_by_hand::taylor_by_hand(&layer, x, e, &mask, 2, 4, 2, 4, 0.5).unwrap()
        } else {
            layer.forward(x, e, &mask).unwrap()
        };
        let (xv, ev) = (x.tensor().as_vec(), e.tensor().as_vec());
        let mut g = (probe_loss(x.into_tensor(), 1) + probe_loss(e.into_tensor(), 2)).backward();
        let grads: Vec<Vec<f64>> = layer
            .params()
            .iter()
            .map(|p| g.get_or_alloc_mut(&p.value).unwrap().to_vec())
            .collect();
        (xv, ev, grads)
    };
    let (x1, e1, g1) = outputs(false);
    let (x2, e2, g2) = outputs(true);
    assert_close("nodes", &x1, &x2, 1e-12, 1e-12);
    assert_close("edges", &e1, &e2, 1e-12, 1e-12);
    for (a, b) in g1.iter().zip(&g2) {
        assert_close("parameter gradient", a, b, 1e-10, 1e-10);
    }
}

#[test]
fn the_guide_s_first_rule_checks_and_runs() {
    let guide = include_str!("../../dsl/README.md");
    let start = guide.find("## A first rule").unwrap();
    let block = &guide[start..];
    let code = &block[block.find("```text\n").unwrap() + 8..];
    let code = &code[..code.find("```").unwrap()];
    let d = dev();
    let cfg = RuleConfig {
        dim: 8,
        dim_edges: 4,
        causal: true,
        overrides: vec![],
    };
    let plan = Rule::parse("guide.rule", code)
        .unwrap()
        .plan(&cfg)
        .unwrap_or_else(|e| panic!("{e}"));
    let layer = RuleLayer::<f64, Cpu>::new(plan, &Init::random(&d, 1)).unwrap();
    let mask = GraphMask::from_lengths(4, &[4, 2]).unwrap().causal(true);
    let (x, _) = run(&layer, randn(1, 2 * 4 * 8), randn(2, 2 * 4 * 4 * 4), &mask);
    assert!(x.iter().all(|v| v.is_finite()));
}

/// `edges[i, i] += attend(edges[i, i] -> edges[k, k])` is node attention on the diagonal,
/// written back onto the diagonal only.
#[test]
fn diagonal_attention_is_node_attention_on_the_diagonal() {
    let d = dev();
    let (b, n, c) = (2, 4, 4);
    let mask = GraphMask::from_lengths(n, &[4, 3]).unwrap().causal(true);
    let layer = |src: &str| {
        let cfg = RuleConfig {
            dim: c,
            dim_edges: c,
            causal: true,
            overrides: vec![],
        };
        RuleLayer::<f64, Cpu>::new(
            Rule::parse("d.rule", src).unwrap().plan(&cfg).unwrap(),
            &Init::random(&d, 3),
        )
        .unwrap()
    };
    let on_edges = layer(
        "d: edges[i, i] += attend(edges[i, i] -> edges[k, k], heads: 2, dim_head: 2, gate)\n",
    );
    let on_nodes =
        layer("d: nodes[i] += attend(nodes[i] -> nodes[k], heads: 2, dim_head: 2, gate)\n");
    let edges = randn(71, b * n * n * c);
    let diag: Vec<f64> = (0..b * n * c)
        .map(|x| {
            let (bb, i, ch) = (x / (n * c), (x / c) % n, x % c);
            edges[((bb * n + i) * n + i) * c + ch]
        })
        .collect();
    let (_, e) = run(&on_edges, randn(72, b * n * c), edges.clone(), &mask);
    let (x, _) = run(&on_nodes, diag, randn(73, b * n * n * c), &mask);
    for bb in 0..b {
        for i in 0..n {
            for j in 0..n {
                for ch in 0..c {
                    let at = ((bb * n + i) * n + j) * c + ch;
                    let want = if i == j {
                        x[(bb * n + i) * c + ch]
                    } else {
                        edges[at]
                    };
                    assert!((e[at] - want).abs() < 1e-12, "edge ({i}, {j}) channel {ch}");
                }
            }
        }
    }
}

/// The lowering of the attention in statement `name`.
fn edge_lowering_of(layer: &RuleLayer<f64, Cpu>, name: &str) -> quartic::rules::ir::EdgeLowering {
    use quartic::rules::ir::{Core, Op, PlanKind};
    let st = layer
        .plan
        .statements
        .iter()
        .find(|s| s.name == name)
        .unwrap();
    let value = match &st.kind {
        PlanKind::Update { value, .. } | PlanKind::Let { value, .. } => value,
    };
    let Op::Attend(a) = &value.op else {
        panic!("`{name}` is an attention")
    };
    match a.lowering.core {
        Core::Edges(e) => e,
        other => panic!("`{name}` lowers to {other:?}"),
    }
}

/// A layer's output edges, then the gradient reaching its input edges (fixed random inputs
/// and loss probes), to compare two ways of writing one rule.
pub fn edges_and_their_gradient(
    layer: &RuleLayer<f64, Cpu>,
    mask: &GraphMask,
    (b, n, dim, de): (usize, usize, usize, usize),
) -> Vec<f64> {
    let d = dev();
    let nodes = d.tensor_from_vec(randn(31, b * n * dim), (b, n, dim));
    let edges = d.tensor_from_vec(randn(32, b * n * n * de), (b, n, n, de));
    let (no, eo) = layer
        .forward(
            Nodes::new(nodes.retaped::<Tp>()),
            Edges::new(edges.leaky_trace()).unwrap(),
            mask,
        )
        .unwrap();
    let mut out = eo.tensor().as_vec();
    // the layer's tape travels with one of its outputs: the loss reads both
    let loss = probe_loss(no.into_tensor(), 33) + probe_loss(eo.into_tensor(), 34);
    out.extend(loss.backward().get(&edges).as_vec());
    out
}

#[test]
fn every_lowering_of_a_column_attention_computes_the_same() {
    use quartic::spec::EdgePattern;
    // one attention (each edge over its column), written so that it takes four lowerings:
    // keys read in place with one input for q, k, v (the fused self-attention); keys computed,
    // so gathered into the column layout; queries and keys read transposed; and the row
    // pattern on the transposed edges, its output transposed back
    let head = "rule probe(kernel = softmax)
let c[i, j] = edges[i, j] * 0.5
let t[i, j] = c[j, i]
";
    let opts = "heads: 2, dim_head: 3, kernel: kernel, gate";
    let bodies = [
        format!("col: edges[i, j] += attend(c[i, j] -> c[k, j], {opts})"),
        format!("col: edges[i, j] += attend(c[i, j] -> c[k, j] + 0, {opts})"),
        format!("col: edges[i, j] += attend(t[j, i] -> t[j, k], {opts})"),
        format!("let col[i, j] = attend(t[i, j] -> t[i, k], {opts})\nedges[i, j] += col[j, i]"),
    ];
    let expected = [
        (EdgePattern::Column, true, true),
        (EdgePattern::Column, false, false),
        (EdgePattern::Column, false, false),
        (EdgePattern::Row, true, true),
    ];
    let d = dev();
    let (b, n, dim, de) = (2, 5, 2, 4);
    for kernel in ["softmax", "taylor"] {
        for causal in [false, true] {
            let mask = GraphMask::from_lengths(n, &[5, 3]).unwrap().causal(causal);
            let mut results = Vec::new();
            for (body, want) in bodies.iter().zip(expected) {
                let rule = Rule::parse("probe.rule", &format!("{head}{body}\n")).unwrap();
                let cfg = RuleConfig {
                    dim,
                    dim_edges: de,
                    causal,
                    overrides: vec![("kernel".into(), Const::Word(kernel.into()))],
                };
                let layer =
                    RuleLayer::<f64, Cpu>::new(rule.plan(&cfg).unwrap(), &Init::random(&d, 9))
                        .unwrap();
                let e = edge_lowering_of(&layer, "col");
                assert_eq!((e.pattern, e.key_in_place, e.shared_input), want, "{body}");
                results.push(edges_and_their_gradient(&layer, &mask, (b, n, dim, de)));
            }
            for (i, r) in results.iter().enumerate().skip(1) {
                assert_close(
                    &format!("{kernel}, causal {causal}: lowering {i} against the fused one"),
                    r,
                    &results[0],
                    1e-12,
                    1e-10,
                );
            }
        }
    }
}

/// `linear(concat(…))` runs as each part's projection by its own columns of the weight, the
/// projections summed (a part over fewer indices projected where it lives); the same rule with
/// the concatenation made first (`* 1` keeps it from that lowering, one product of the whole)
/// computes the same, and a finite-difference check covers the weight's columns, a part read
/// twice, a transposed part and the input graph's 0/1 part.
#[test]
fn a_linear_of_a_concatenation_equals_the_product_of_the_concatenation() {
    let parts = "x[i], x[j], e[i, j], e[j, i], e[i, j], adjacency[i, j]";
    let head = "rule probe()\nlet x[i] = rmsnorm(nodes[i])\nlet e[i, j] = edges[i, j] * 0.5\n";
    let split =
        format!("{head}to: edges[i, j] += linear(concat({parts}), dim_edges, bias: true)\n");
    let whole =
        format!("{head}to: edges[i, j] += linear(concat({parts}) * 1, dim_edges, bias: true)\n");
    let d = dev();
    let (b, n, dim, de) = (2, 5, 3, 4);
    for causal in [false, true] {
        let mask = GraphMask::from_lengths(n, &[5, 3]).unwrap().causal(causal);
        let results: Vec<Vec<f64>> = [(&split, true), (&whole, false)]
            .into_iter()
            .map(|(src, splits)| {
                let rule = Rule::parse("probe.rule", src).unwrap();
                let cfg = RuleConfig {
                    dim,
                    dim_edges: de,
                    causal,
                    overrides: vec![],
                };
                let plan = rule.plan(&cfg).unwrap();
                let explained = quartic::rules::explain::explain(&plan, 1, n);
                assert_eq!(explained.contains(", columns 0.."), splits, "{explained}");
                let mask = with_test_graph(mask.clone(), &plan);
                let layer = RuleLayer::<f64, Cpu>::new(plan, &Init::random(&d, 9)).unwrap();
                edges_and_their_gradient(&layer, &mask, (b, n, dim, de))
            })
            .collect();
        assert_close(
            &format!("causal {causal}: split against whole"),
            &results[0],
            &results[1],
            1e-12,
            1e-10,
        );
        gradcheck_loaded_rule(&Rule::parse("probe.rule", &split).unwrap(), causal, vec![]);
    }
}

#[test]
fn a_failure_while_a_rule_runs_names_the_rule_file_and_line() {
    use quartic::rules::ir::{Op, PlanKind, TaylorLowering};
    // a lowering bug, made by hand: the Taylor feature form for causal attention over all edges,
    // whose keys are not a prefix (the lowering allows only the direct form there)
    let src = "rule probe()\nlet x[i, j] = edges[i, j] * 1\nall: edges[i, j] += attend(x[i, j] -> x[k, l], heads: 1, dim_head: 1, kernel: taylor)\n";
    let cfg = RuleConfig {
        dim: 2,
        dim_edges: 2,
        causal: true,
        overrides: vec![],
    };
    let mut plan = Rule::parse("probe.rule", src).unwrap().plan(&cfg).unwrap();
    let PlanKind::Update { value, .. } = &mut plan.statements[1].kind else {
        panic!("the second statement updates the edges")
    };
    let Op::Attend(a) = &mut value.op else {
        panic!("an attention")
    };
    assert_eq!(a.lowering.taylor, TaylorLowering::Direct);
    a.lowering.taylor = TaylorLowering::ByCost { causal: true };
    let d = dev();
    let layer = RuleLayer::<f64, Cpu>::new(plan, &Init::random(&d, 1)).unwrap();
    let (b, n) = (1, 12);
    let nodes = Nodes::new(d.tensor_from_vec(randn(1, b * n * 2), (b, n, 2)));
    let edges = Edges::new(d.tensor_from_vec(randn(2, b * n * n * 2), (b, n, n, 2))).unwrap();
    let mask = GraphMask::from_lengths(n, &[n]).unwrap().causal(true);
    let err = layer
        .forward(nodes, edges, &mask)
        .err()
        .expect("the feature form refuses");
    let text = err.to_string();
    assert!(
        text.contains("rule `probe` (probe.rule:3, `all`)") && text.contains("prefix"),
        "{text}"
    );
}

/// One path attention (edge (i, j) over the paths i → l → j) written three ways: as stored, with
/// both sides read transposed, and bound the other way round and transposed back. Each must
/// compute the same, values and gradients, with padding and causality.
#[test]
fn every_orientation_of_a_path_attention_computes_the_same() {
    let head = "rule probe(kernel = softmax)
let c[i, j] = edges[i, j] * 0.5
let t[i, j] = c[j, i]
";
    let opts = "heads: 2, dim_head: 3, kernel: kernel";
    let bodies = [
        format!("p: edges[i, j] += attend(c[i, l] -> c[l, j], {opts}, gates: linear(c[i, j], 2, bias: true))"),
        format!("p: edges[i, j] += attend(t[l, i] -> t[j, l], {opts}, gates: linear(t[j, i], 2, bias: true))"),
        format!("let p[i, j] = attend(c[j, l] -> c[l, i], {opts}, gates: linear(c[j, i], 2, bias: true))\nedges[i, j] += p[j, i]"),
    ];
    let d = dev();
    let (b, n, dim, de) = (2, 5, 2, 4);
    for kernel in ["softmax", "taylor"] {
        for causal in [false, true] {
            let mask = GraphMask::from_lengths(n, &[5, 3]).unwrap().causal(causal);
            let mut results = Vec::new();
            for body in &bodies {
                let rule = Rule::parse("probe.rule", &format!("{head}{body}\n")).unwrap();
                let cfg = RuleConfig {
                    dim,
                    dim_edges: de,
                    causal,
                    overrides: vec![("kernel".into(), Const::Word(kernel.into()))],
                };
                let layer =
                    RuleLayer::<f64, Cpu>::new(rule.plan(&cfg).unwrap(), &Init::random(&d, 9))
                        .unwrap();
                results.push(edges_and_their_gradient(&layer, &mask, (b, n, dim, de)));
            }
            for (i, r) in results.iter().enumerate().skip(1) {
                assert_close(
                    &format!("{kernel}, causal {causal}: orientation {i} against the first"),
                    r,
                    &results[0],
                    1e-12,
                    1e-10,
                );
            }
        }
    }
}

/// The fused path attention against the same attention written out with `softmax[l]` and
/// `sum[l]` (`benches/path_by_hand.rs`, same parameters): equal values and input gradients,
/// padded and causal.
#[test]
fn the_path_attention_equals_its_by_hand_form() {
    let d = dev();
    let (b, n, de) = (2, 5, 6);
    for causal in [false, true] {
        let (fused, by_hand) = crate::path_by_hand::layers::<f64>(&d, de, 2, 3, causal, 5);
        let mask = GraphMask::from_lengths(n, &[5, 4]).unwrap().causal(causal);
        let run =
            |layer: &RuleLayer<f64, Cpu>| edges_and_their_gradient(layer, &mask, (b, n, 8, de));
        assert_close(
            &format!("causal {causal}: fused against by hand"),
            &run(&fused),
            &run(&by_hand),
            1e-12,
            1e-10,
        );
    }
}

/// One graph of 3 nodes, 4 channels on nodes and edges: where the element-wise functions are
/// checked against their definitions.
const POINTWISE: (usize, usize) = (3, 4);

fn pointwise_plan(src: &str) -> quartic::rules::Plan {
    let cfg = RuleConfig {
        dim: POINTWISE.1,
        dim_edges: POINTWISE.1,
        causal: false,
        overrides: vec![],
    };
    Rule::parse("f.rule", src).unwrap().plan(&cfg).unwrap()
}

/// The rule's output nodes and edges for the given inputs.
fn run_pointwise(src: &str, nodes: Vec<f64>, edges: Vec<f64>) -> (Vec<f64>, Vec<f64>) {
    let (n, dim) = POINTWISE;
    let d = dev();
    let layer = RuleLayer::<f64, Cpu>::new(pointwise_plan(src), &Init::random(&d, 0)).unwrap();
    let (no, eo) = layer
        .forward(
            Nodes::new(d.tensor_from_vec(nodes, (1, n, dim))),
            Edges::new(d.tensor_from_vec(edges, (1, n, n, dim))).unwrap(),
            &GraphMask::full(1, n),
        )
        .unwrap();
    (no.into_tensor().as_vec(), eo.into_tensor().as_vec())
}

/// Finite differences against the rule's gradient at the inputs `x` (nodes) and `e` (edges).
fn gradcheck_pointwise(name: &str, src: &str, x: Vec<f64>, e: Vec<f64>) {
    let (n, dim) = POINTWISE;
    gradcheck_block(
        name,
        |init| RuleLayer::new(pointwise_plan(src), init).unwrap(),
        &[x, e],
        12,
        |layer, t| {
            let mut t = t.into_iter();
            let nodes = Nodes::new(t.next().unwrap().reshape_like(&(1, n, dim)));
            let edges = Edges::new(t.next().unwrap().reshape_like(&(1, n, n, dim))).unwrap();
            let (no, eo) = layer.forward(nodes, edges, &GraphMask::full(1, n)).unwrap();
            probe_loss(no.into_tensor(), 53) + probe_loss(eo.into_tensor(), 54)
        },
    );
}

/// `leaky_relu`, `log`, `softplus` and the element-wise `min` / `max` (broadcast over indices
/// and per head): values against their definitions computed here, gradients against finite
/// differences.
#[test]
fn the_element_wise_functions_match_their_definitions() {
    let src = "rule f()
let a[i] = leaky_relu(nodes[i]) + softplus(nodes[i]) * 0.5
let b[i] = log(sigmoid(nodes[i])) + min(nodes[i], tanh(nodes[i]))
e: edges[i, j] += max(edges[i, j], nodes[i] * 0.3) * 0.1
n: nodes[i] += a[i] + b[i]
";
    let (n, dim) = POINTWISE;
    let x = randn(51, n * dim);
    let e = randn(52, n * n * dim);
    let (nodes, edges) = run_pointwise(src, x.clone(), e.clone());
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    let leaky = |v: f64| if v > 0.0 { v } else { 0.01 * v };
    let softplus = |v: f64| (1.0 + v.exp()).ln();
    let want_nodes: Vec<f64> = x
        .iter()
        .map(|&v| v + leaky(v) + 0.5 * softplus(v) + sig(v).ln() + v.min(v.tanh()))
        .collect();
    let want_edges: Vec<f64> = (0..e.len())
        .map(|k| {
            let (i, c) = (k / (n * dim), k % dim);
            e[k] + 0.1 * e[k].max(0.3 * x[i * dim + c])
        })
        .collect();
    assert_close("nodes", &nodes, &want_nodes, 1e-12, 1e-12);
    assert_close("edges", &edges, &want_edges, 1e-12, 1e-12);
    // softplus stays finite where exp overflows
    let (big, _) = run_pointwise(
        "nodes[i] += softplus(nodes[i] * 1000)\n",
        vec![1.0; n * dim],
        e.clone(),
    );
    assert!(big.iter().all(|v| (v - 1001.0).abs() < 1e-9));
    gradcheck_pointwise("element-wise functions", src, x, e);
}

/// A softplus of an exact 0 has the gradient ½, as everywhere else sigmoid(x): its stable form
/// written as ops (relu(x) + log(1 + exp(−|x|))) gave 0 there, so a linear map started at
/// zero under a softplus never moved (found training `strassen_sharp.rule` from a warm start).
#[test]
fn softplus_of_an_exact_zero_has_gradient_one_half() {
    let (n, dim) = POINTWISE;
    let d = dev();
    let layer = RuleLayer::<f64, Cpu>::new(
        pointwise_plan("rule f()\nn: nodes[i] += softplus(nodes[i])\n"),
        &Init::random(&d, 0),
    )
    .unwrap();
    let x = d.tensor_from_vec(vec![0.0; n * dim], (1, n, dim));
    let edges = d.tensor_from_vec(vec![0.0; n * n * dim], (1, n, n, dim));
    let (no, _) = layer
        .forward(
            Nodes::new(x.leaky_trace()),
            Edges::new(edges.leaky_trace()).unwrap(),
            &GraphMask::full(1, n),
        )
        .unwrap();
    let grads = no.into_tensor().sum().backward();
    // the residual's 1 plus softplus'(0) = ½
    assert!(grads
        .get(&x)
        .as_vec()
        .iter()
        .all(|&g| (g - 1.5).abs() < 1e-12));
}

/// `logsumexp[k]`: log Σ exp over k against its definition, finite where every exp overflows
/// (from the largest term), and its gradient (the softmax) against finite differences.
#[test]
fn logsumexp_matches_its_definition_and_cannot_overflow() {
    let src = "rule f()
e: edges[i, j] += logsumexp[k](edges[i, k] + nodes[k])
";
    let (n, dim) = POINTWISE;
    let x = randn(55, n * dim);
    let e = randn(56, n * n * dim);
    let (_, edges) = run_pointwise(src, x.clone(), e.clone());
    let at = |i: usize, j: usize, c: usize| (i * n + j) * dim + c;
    let want: Vec<f64> = (0..e.len())
        .map(|p| {
            let (i, c) = (p / (n * dim), p % dim);
            let sum: f64 = (0..n)
                .map(|k| (e[at(i, k, c)] + x[k * dim + c]).exp())
                .sum();
            e[p] + sum.ln()
        })
        .collect();
    assert_close("edges", &edges, &want, 1e-12, 1e-12);
    // exp(1000) is inf in f64; log(3 · exp(1000)) is 1000 + ln 3
    let (_, big) = run_pointwise(src, vec![1000.0; n * dim], vec![0.0; n * n * dim]);
    for v in &big {
        assert!((v - (1000.0 + 3f64.ln())).abs() < 1e-9, "{v}");
    }
    gradcheck_pointwise("logsumexp", src, x, e);
}

/// Comparisons (1 where they hold, else 0) and `where(cond, a, b)`: values against their
/// definitions, broadcast over indices; the branch not taken never reaches the output or the
/// gradient (the `log` of negatives below is NaN, and left out); a NaN condition stays NaN;
/// gradients against finite differences.
#[test]
fn comparisons_and_where_match_their_definitions() {
    let src = "rule f(limit = 0.5)
let pos[i] = nodes[i] > 0
let safe[i] = where(pos[i], log(nodes[i]), nodes[i] * 0.5)
e: edges[i, j] += where(edges[i, j] <= nodes[i] * 0.3, edges[i, j] * 2, nodes[j]) + (nodes[i] >= limit)
n: nodes[i] += safe[i] + (nodes[i] < edges[i, i]) + (if limit > 1 then nodes[i] else 0 * nodes[i])
";
    let (n, dim) = POINTWISE;
    let x = randn(61, n * dim);
    let e = randn(62, n * n * dim);
    assert!(x.iter().any(|&v| v < 0.0), "some log is of a negative");
    let (nodes, edges) = run_pointwise(src, x.clone(), e.clone());
    let one = |c: bool| if c { 1.0 } else { 0.0 };
    let want_edges: Vec<f64> = (0..e.len())
        .map(|k| {
            let (i, j, c) = (k / (n * dim), (k / dim) % n, k % dim);
            let (xi, xj) = (x[i * dim + c], x[j * dim + c]);
            let picked = if e[k] <= 0.3 * xi { 2.0 * e[k] } else { xj };
            e[k] + picked + one(xi >= 0.5)
        })
        .collect();
    // the nodes' statement reads the edges after the edge update
    let want_nodes: Vec<f64> = (0..x.len())
        .map(|k| {
            let (i, c) = (k / dim, k % dim);
            let v = x[k];
            let safe = if v > 0.0 { v.ln() } else { 0.5 * v };
            v + safe + one(v < want_edges[(i * n + i) * dim + c])
        })
        .collect();
    assert_close("edges", &edges, &want_edges, 1e-12, 1e-12);
    assert_close("nodes", &nodes, &want_nodes, 1e-12, 1e-12);

    // a NaN condition is reported as NaN, not turned into 0 or 1
    let nan_rule =
        "n: nodes[i] += where(nodes[i] - nodes[i], nodes[i], nodes[i] * 2) + (nodes[i] > 0) * 0\n";
    let mut inputs = vec![1.0; n * dim];
    inputs[2] = f64::NAN;
    let (out, _) = run_pointwise(nan_rule, inputs, e.clone());
    assert!(out[2].is_nan());
    assert!(
        out.iter().enumerate().all(|(k, v)| k == 2 || *v == 3.0),
        "{out:?}"
    );

    gradcheck_pointwise("comparisons and where", src, x, e);
}
