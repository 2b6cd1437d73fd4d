//! Hyper-connections: the block's gradients, the node branches a rule runs as, models with
//! residual streams at any batch size, and the rules that cannot have them. Parity with the
//! original is in `parity.rs` (`quartic_hyper`).

use dfdx::prelude::*;
use quartic::models::{GraphConfig, Model, ModelConfig};
use quartic::nn::hyper::HyperConnection;
use quartic::nn::Init;
use quartic::rules::lower::NodeBranch;
use quartic::rules::{Rule, RuleConfig, RuleLayer};

use crate::common::*;

#[test]
fn gradcheck_hyper_connection() {
    let (rows, s, d) = (5, 3, 4);
    let inputs = vec![randn(41, rows * s * d), randn(42, rows * d)];
    gradcheck_block(
        "hyper-connection",
        |init| HyperConnection::new(init, s, d, 1).unwrap(),
        &inputs,
        20,
        |h, x| {
            let mut x = x.into_iter();
            let streams = x.next().unwrap().reshape_like(&(rows, s, d));
            let out = x.next().unwrap().reshape_like(&(rows, d));
            let w = h.width(streams).unwrap();
            let input = probe_loss(w.branch_input, 43);
            let added = HyperConnection::depth(w.carried, w.beta, out).unwrap();
            input + probe_loss(added, 44)
        },
    );
}

#[test]
fn every_node_update_closes_a_branch_opened_by_the_first_read_of_nodes() {
    let cfg = |dim| RuleConfig {
        dim,
        dim_edges: 8,
        causal: false,
        overrides: vec![],
    };
    let branches = |rule: Rule| {
        let plan = rule.plan(&cfg(16)).unwrap();
        let layer = RuleLayer::<f64, Cpu>::new(plan, &Init::random(&dev(), 1)).unwrap();
        layer.node_branches().unwrap()
    };
    let b = |first, update| NodeBranch { first, update };
    // the original's layer: attention (three statements), then the feedforward
    assert_eq!(
        branches(Rule::builtin("taylor").unwrap()),
        [b(0, 2), b(3, 3)]
    );
    // relational reads the nodes once more after its last update: that read is in no branch
    assert_eq!(
        branches(Rule::builtin("relational").unwrap()),
        [b(0, 6), b(7, 7)]
    );
    // a statement between that reads no nodes does not open a branch; an update that reads
    // none opens its own
    let src = "rule p()
let e2[i, j] = edges[i, j] * 2
diag: nodes[i] += linear(e2[i, i], dim)
let x[i] = nodes[i] * 1
out: edges[i, j] += linear(x[i], dim_edges)
nodes[i] += x[i]
";
    assert_eq!(
        branches(Rule::parse("p.rule", src).unwrap()),
        [b(1, 1), b(2, 4)]
    );
}

/// A small two-layer model of `rule` with `streams` residual streams.
fn streams_config(rule: &str, streams: usize, n: usize) -> GraphConfig {
    let mut cfg = crate::reliability::graph_config(rule, 11, n);
    cfg.residual_streams = streams;
    cfg.depth = 2;
    if rule == "relational" {
        cfg.rule_params.retain(|k, _| !k.starts_with("edge_"));
    }
    cfg
}

/// The original's hyper-connections mix streams per position, so every sequence of a batch is
/// computed as if alone (padding included); so must ours.
#[test]
fn models_with_residual_streams_compute_each_sequence_as_if_alone() {
    let d = dev();
    let (b, n) = (3, 6);
    let lengths = [6, 4, 5];
    let tokens: Vec<usize> = (0..b * n).map(|i| (i * 7 + 3) % 11).collect();
    for rule in ["taylor", "quartic", "relational"] {
        let cfg = ModelConfig::Graph(streams_config(rule, 4, n));
        let model = Model::<f64, Cpu>::new(&cfg, None, &Init::random(&d, 5)).unwrap();
        let valid: Vec<bool> = (0..b * n).map(|i| i % n < lengths[i / n]).collect();
        let batch = model
            .forward::<NoneTape>(&tokens, b, n, Some(&valid))
            .unwrap()
            .logits
            .as_vec();
        let classes = batch.len() / (b * n);
        for (k, &len) in lengths.iter().enumerate() {
            let alone = model
                .forward::<NoneTape>(&tokens[k * n..k * n + len], 1, len, None)
                .unwrap()
                .logits
                .as_vec();
            let rows = &batch[k * n * classes..(k * n + len) * classes];
            assert_close(
                &format!("{rule}: sequence {k} in the batch against alone"),
                rows,
                &alone,
                1e-10,
                1e-9,
            );
        }
    }
}

#[test]
fn a_rule_that_overwrites_the_nodes_has_no_residual_to_connect() {
    let dir = crate::common::scratch("hyper");
    let path = dir.join("overwrite.rule");
    std::fs::write(
        &path,
        "rule overwrite()\nlet x[i] = nodes[i] * 1\nproj: nodes[i] = linear(x[i], dim)\n",
    )
    .unwrap();
    let mut cfg = streams_config("taylor", 2, 4);
    cfg.rule = path.to_str().unwrap().into();
    cfg.rule_params.clear();
    let err = Model::<f64, Cpu>::new(&ModelConfig::Graph(cfg), None, &Init::random(&dev(), 1))
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("overwrite.rule:3")
            && err.contains("residual streams need node updates that add"),
        "{err}"
    );
}

#[test]
fn residual_streams_out_of_range_are_refused() {
    for streams in [0, 65] {
        let cfg = ModelConfig::Graph(streams_config("taylor", streams, 4));
        let err = Model::<f64, Cpu>::new(&cfg, None, &Init::random(&dev(), 1))
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("`residual_streams` must be 1 to 64"), "{err}");
    }
}

#[test]
fn causal_models_with_residual_streams_never_read_the_future() {
    let d = dev();
    let n = 6;
    for rule in ["taylor", "quartic"] {
        let mut cfg = streams_config(rule, 4, n);
        cfg.causal = true;
        let model =
            Model::<f64, Cpu>::new(&ModelConfig::Graph(cfg), None, &Init::random(&d, 8)).unwrap();
        let tokens: Vec<usize> = (0..n).map(|i| (i * 5 + 2) % 11).collect();
        let logits = |t: &[usize]| {
            model
                .forward::<NoneTape>(t, 1, n, None)
                .unwrap()
                .logits
                .as_vec()
        };
        let base = logits(&tokens);
        let classes = base.len() / n;
        for changed in 1..n {
            let mut other = tokens.clone();
            other[changed] = (other[changed] + 3) % 11;
            let moved = logits(&other);
            assert_close(
                &format!("{rule}: positions before {changed}"),
                &moved[..changed * classes],
                &base[..changed * classes],
                1e-12,
                1e-12,
            );
            assert!(
                moved[changed * classes..] != base[changed * classes..],
                "{rule}: changing token {changed} changes nothing after it"
            );
        }
    }
}
