//! `dropout(x, p: …)` in the rule language (issue 18, item 5): the identity without draws
//! (evaluation, `forward`), and while training a multiplier of 0 or 1/(1 − p) per element
//! with about p dropped, the gradient through the same multipliers, a gradient check with the
//! draws on, draws that a sharded step reproduces exactly, and misuse refused.

use std::collections::HashMap;

use dfdx::prelude::*;
use quartic::graph::{step_seeds, DropoutDraws, GraphMask, Nodes};
use quartic::models::{GraphConfig, Model, ModelConfig, Readout, TaskIo};
use quartic::nn::Init;
use quartic::rules::{Rule, RuleConfig, RuleLayer};
use quartic::train::objective::Objective;
use quartic::train::shards::step_gradients;
use quartic::train::Batch;

use crate::common::*;
use crate::rules::{
    assert_never_reads_the_future_drawing, assert_padding_is_never_read_drawing,
    gradcheck_loaded_rule_drawing, run,
};

fn layer(src: &str, dim: usize) -> RuleLayer<f64, Cpu> {
    let cfg = RuleConfig {
        dim,
        dim_edges: 4,
        causal: false,
        overrides: vec![],
    };
    let plan = Rule::parse("d.rule", src).unwrap().plan(&cfg).unwrap();
    RuleLayer::new(plan, &Init::random(&dev(), 3)).unwrap()
}

#[test]
fn dropout_is_the_identity_without_draws() {
    let with = layer(
        "f: nodes[i] += linear(dropout(gelu(nodes[i]), p: 0.5), dim)\n",
        8,
    );
    let without = layer("f: nodes[i] += linear(gelu(nodes[i]), dim)\n", 8);
    let mask = GraphMask::from_lengths(5, &[5, 3]).unwrap();
    let (nodes, edges) = (randn(1, 2 * 5 * 8), randn(2, 2 * 5 * 5 * 4));
    assert_eq!(
        run(&with, nodes.clone(), edges.clone(), &mask),
        run(&without, nodes, edges, &mask)
    );
}

#[test]
fn dropout_drops_about_p_and_scales_the_rest_and_its_gradient_follows() {
    let p = 0.3;
    let l = layer("nodes[i] += dropout(nodes[i], p: 0.3)\n", 64);
    let (b, n, dim) = (4, 8, 64);
    let mask = GraphMask::full(b, n)
        .with_dropout(DropoutDraws::new(step_seeds(11, 2, b)))
        .unwrap();
    let d = dev();
    let x = d.tensor_from_vec(randn(5, b * n * dim), (b, n, dim));
    let edges = d.zeros_like(&(b, n, n, 4));
    let (out, _) = l
        .forward(
            Nodes::new(x.leaky_trace()),
            quartic::graph::Edges::new(edges.retaped::<Tp>()).unwrap(),
            &mask,
        )
        .unwrap();
    let out = out.into_tensor();
    let values = out.as_vec();
    let grads = out.sum().backward();
    let gx = grads.get(&x).as_vec();
    let (xs, mut dropped) = (x.as_vec(), 0);
    for ((&xi, &yi), &g) in xs.iter().zip(&values).zip(&gx) {
        // out = x + m·x, so the multiplier is out / x − 1 and the gradient 1 + m
        let m = yi / xi - 1.0;
        if m.abs() < 1e-9 {
            dropped += 1;
            assert!((g - 1.0).abs() < 1e-12, "a dropped element's gradient {g}");
        } else {
            assert!((m - 1.0 / (1.0 - p)).abs() < 1e-9, "multiplier {m}");
            assert!((g - 1.0 - 1.0 / (1.0 - p)).abs() < 1e-12, "gradient {g}");
        }
    }
    let frac = dropped as f64 / xs.len() as f64;
    assert!((frac - p).abs() < 0.04, "dropped {frac} of 2048, p = {p}");
    // another step draws another mask
    let mask2 = GraphMask::full(b, n)
        .with_dropout(DropoutDraws::new(step_seeds(11, 3, b)))
        .unwrap();
    let (n1, _) = run(&l, xs.clone(), vec![0.0; b * n * n * 4], &mask);
    let (n2, _) = run(&l, xs, vec![0.0; b * n * n * 4], &mask2);
    assert_ne!(n1, n2);
}

#[test]
fn gradcheck_dropout_while_training() {
    let rule = Rule::parse(
        "d.rule",
        "let h[i] = dropout(gelu(linear(nodes[i], dim)), p: 0.4)\n\
         f: nodes[i] += linear(h[i], dim)\n\
         g: edges[i, j] += dropout(linear(edges[i, j] * linear(h[i], dim_edges), dim_edges), p: 0.5)\n",
    )
    .unwrap();
    for causal in [false, true] {
        let draws = DropoutDraws::new(step_seeds(3, 0, 2));
        gradcheck_loaded_rule_drawing(&rule, causal, vec![], Some(draws));
    }
}

#[test]
fn dropout_while_training_keeps_causality_and_padding() {
    let src = "let x[i] = rmsnorm(nodes[i])\n\
               a: nodes[i] += dropout(attend(x[i] -> x[j], heads: 2, dim_head: 4), p: 0.5)\n\
               e: edges[i, j] += dropout(linear(edges[i, j] * linear(x[j], dim_edges), dim_edges), p: 0.5)\n";
    let draws = DropoutDraws::new(step_seeds(2, 7, 2));
    for causal in [false, true] {
        let cfg = RuleConfig {
            dim: 8,
            dim_edges: 4,
            causal,
            overrides: vec![],
        };
        let plan = Rule::parse("d.rule", src).unwrap().plan(&cfg).unwrap();
        let layer = RuleLayer::<f64, Cpu>::new(plan, &Init::random(&dev(), 8)).unwrap();
        if causal {
            assert_never_reads_the_future_drawing(src, &layer, Some(&draws));
        }
        assert_padding_is_never_read_drawing(src, &layer, causal, Some(&draws));
    }
}

#[test]
fn a_sharded_step_draws_the_whole_batchs_dropout() {
    let dir = crate::common::scratch("dropout-shards");
    let file = dir.join("drop.rule");
    std::fs::write(
        &file,
        "rule drop()\nlet x[i] = rmsnorm(nodes[i])\n\
         a: nodes[i] += dropout(attend(x[i] -> x[j], heads: 2, dim_head: 4), p: 0.5)\n\
         f: nodes[i] += dropout(feedforward(nodes[i], mult: 2), p: 0.5)\n\
         e: edges[i, j] += dropout(linear(edges[i, j], dim_edges), p: 0.5)\n",
    )
    .unwrap();
    let config = ModelConfig::Graph(GraphConfig {
        residual_streams: 1,
        num_tokens: 7,
        dim: 8,
        dim_edges: 4,
        depth: 2,
        rule: file.display().to_string(),
        rule_params: Default::default(),
        causal: false,
        max_seq_len: 8,
        absolute_positions: true,
        position_bias: false,
        final_norm: Some(1e-5),
        io: TaskIo::default(),
    });
    let model = Model::<f64, Cpu>::new(&config, None, &Init::random(&dev(), 4)).unwrap();
    let (b, n) = (4, 6);
    let batch = |dropout: Option<DropoutDraws>| Batch {
        tokens: (0..b * n).map(|i| (i * 5 + 2) % 7).collect(),
        b,
        n,
        valid: None,
        targets: (0..b * n).map(|i| Some((i * 3 + 1) % 7)).collect(),
        edge_tokens: None,
        edge_targets: None,
        dropout,
        ..Batch::default()
    };
    let grads = |bt: &Batch, shards: usize| -> HashMap<String, Vec<f64>> {
        let mut step =
            step_gradients(&model, bt, Readout::Nodes, &Objective::Classes, shards).unwrap();
        crate::shards::summed(&model, &mut step.grads)
            .into_iter()
            .collect()
    };
    let training = batch(Some(DropoutDraws::new(step_seeds(9, 4, b))));
    let whole = grads(&training, 1);
    for shards in [2, 4] {
        let sharded = grads(&training, shards);
        for (name, w) in &whole {
            assert_close(
                &format!("{name}, {shards} shards"),
                &sharded[name],
                w,
                1e-12,
                1e-10,
            );
        }
    }
    // and the draws change the step: without them the gradient differs
    let plain = grads(&batch(None), 1);
    assert!(whole.iter().any(|(k, w)| w != &plain[k]));
}

#[test]
fn explain_dropout() {
    let rule = Rule::parse(
        "dropout.rule",
        "let x[i] = rmsnorm(nodes[i])\nff: nodes[i] += dropout(feedforward(x[i]), p: 0.2)\n",
    )
    .unwrap();
    crate::rules::assert_explain_snapshot("explain__dropout", &rule, (64, 16), 16);
}
