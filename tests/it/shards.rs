//! A training step run as shards (`quartic::train::shards`) has the whole batch's loss,
//! accuracy and gradient: with padding, with a shard that has no labelled position, with an
//! auxiliary loss, and read from the edges.

use dfdx::prelude::*;
use quartic::models::{GraphConfig, Model, ModelConfig, Readout, TaskIo};
use quartic::nn::{HasParams, Init};
use quartic::train::objective::Objective;
use quartic::train::shards::step_gradients;
use quartic::train::Batch;

use crate::common::small_multistream;
use crate::rules::small_overrides;

fn graph_config(io: TaskIo) -> ModelConfig {
    ModelConfig::Graph(GraphConfig {
        residual_streams: 1,
        num_tokens: 7,
        dim: 8,
        dim_edges: 4,
        depth: 2,
        rule: "taylor".into(),
        rule_params: small_overrides("taylor").into_iter().collect(),
        causal: false,
        max_seq_len: 8,
        absolute_positions: true,
        position_bias: true,
        final_norm: Some(1e-5),
        io,
    })
}

/// Four graphs of five nodes: the second padded after three nodes, the last two without any
/// labelled position (so the second of two shards has none); edge tokens and targets too.
fn batch() -> Batch {
    let (b, n) = (4, 5);
    let valid: Vec<bool> = (0..b * n).map(|i| !(i / n == 1 && i % n >= 3)).collect();
    let targets = (0..b * n)
        .map(|i| (i / n < 2 && valid[i] && i % 2 == 0).then_some((i * 3 + 1) % 7))
        .collect();
    let edge_targets = (0..b * n * n)
        .map(|e| (e % 3 != 0).then_some(e % 2))
        .collect();
    Batch {
        tokens: (0..b * n).map(|i| (i * 5 + 2) % 7).collect(),
        b,
        n,
        valid: Some(valid),
        targets,
        edge_tokens: Some((0..b * n * n).map(|e| (e * 7 + e / 3) % 3).collect()),
        edge_targets: Some(edge_targets),
        dropout: None,
        ..Batch::default()
    }
}

/// The step's summed gradient, parameter by parameter.
pub fn summed(
    model: &Model<f64, Cpu>,
    grads: &mut [Gradients<f64, Cpu>],
) -> Vec<(String, Vec<f64>)> {
    model
        .params()
        .iter()
        .map(|p| {
            let mut sum = vec![0.0; p.len()];
            for g in grads.iter_mut() {
                g.get_or_alloc_mut(&p.value).unwrap();
                for (s, x) in sum.iter_mut().zip(g.get(&p.value).as_vec()) {
                    *s += x;
                }
            }
            (p.name.clone(), sum)
        })
        .collect()
}

#[test]
fn sharded_steps_have_the_whole_batch_loss_and_gradient() {
    let dev = Cpu::default();
    let edges = TaskIo {
        edge_vocab: 3,
        edge_classes: 2,
        pool_edges: true,
        ..TaskIo::default()
    };
    let cases = [
        (
            "graph model",
            graph_config(TaskIo::default()),
            Readout::Nodes,
        ),
        (
            "graph model read from edges",
            graph_config(edges),
            Readout::Edges,
        ),
        (
            "multi-stream model (auxiliary loss)",
            ModelConfig::MultiStream(small_multistream(7, 8, 1)),
            Readout::Nodes,
        ),
    ];
    for (name, config, readout) in cases {
        let mut bt = batch();
        if readout == Readout::Nodes {
            // these models have no edge inputs
            bt.edge_tokens = None;
        }
        let model = Model::<f64, Cpu>::new(&config, None, &Init::random(&dev, 3)).unwrap();
        let mut whole = step_gradients(&model, &bt, readout, &Objective::Classes, 1).unwrap();
        assert_eq!(whole.grads.len(), 1);
        let want = summed(&model, &mut whole.grads);
        assert!(
            want.iter().any(|(_, g)| g.iter().any(|&x| x.abs() > 1e-6)),
            "{name}: the whole batch's gradient is not zero"
        );
        for shards in [2, 3, 4] {
            let mut sharded =
                step_gradients(&model, &bt, readout, &Objective::Classes, shards).unwrap();
            let what = format!("{name}, {shards} shards");
            assert!(
                (sharded.loss - whole.loss).abs() < 1e-12 * whole.loss.abs().max(1.0),
                "{what}: loss {} against {}",
                sharded.loss,
                whole.loss
            );
            assert_eq!(sharded.tally, whole.tally, "{what}");
            let got = summed(&model, &mut sharded.grads);
            for ((param, g), (_, w)) in got.iter().zip(&want) {
                for (i, (a, b)) in g.iter().zip(w).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-10 * (1.0 + b.abs()),
                        "{what}: gradient of {param}[{i}] {a} against {b}"
                    );
                }
            }
        }
    }
}

#[test]
fn a_batch_without_targets_is_an_error_not_a_panic() {
    let dev = Cpu::default();
    let model = Model::<f64, Cpu>::new(
        &graph_config(TaskIo::default()),
        None,
        &Init::random(&dev, 3),
    )
    .unwrap();
    let mut bt = batch();
    bt.edge_tokens = None;
    bt.targets = vec![None; bt.targets.len()];
    let e = step_gradients(&model, &bt, Readout::Nodes, &Objective::Classes, 2)
        .err()
        .expect("no targets");
    assert!(e.to_string().contains("no position has a target"), "{e}");
}
