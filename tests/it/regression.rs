//! Regression on graph files: the losses (mean squared and mean absolute error of standardized
//! targets) against the formulas written out and by finite differences, the metric in the
//! targets' units, the heads' affine scale, real-valued targets read from files, and the
//! refusals when a model and a task disagree on what they predict.

use std::path::{Path, PathBuf};

use dfdx::prelude::*;
use quartic::data::graphs::{read_graphs, write_jsonl, Target};
use quartic::models::{GraphConfig, Model, ModelConfig, Readout, ValueScale};
use quartic::nn::Init;
use quartic::train::objective::{loss_and_tally, Objective, Targets, ValueLoss};
use quartic::train::shards::step_gradients;
use quartic::train::tasks::{batch_of, GraphFiles, Level};
use quartic::train::trainer::{check_fits, forward_batch};
use quartic::train::Task;

use crate::common::*;

fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/graphs")
        .join(name)
}

const SCALE: ValueScale = ValueScale {
    mean: 0.5,
    std: 2.0,
};

fn values(loss: ValueLoss) -> Objective {
    Objective::Values { loss, scale: SCALE }
}

/// Targets of a `[2, 3]` batch, two positions unscored.
fn wanted() -> Vec<Option<f32>> {
    vec![Some(0.25), None, Some(-1.5), Some(2.0), Some(0.0), None]
}

#[test]
fn regression_losses_are_the_formulas_written_out() {
    let out = randn(7, 6);
    let targets = wanted();
    let scored: Vec<(f64, f64)> = out
        .iter()
        .zip(&targets)
        .filter_map(|(&p, y)| y.map(|y| (p, f64::from(y))))
        .collect();
    let m = scored.len() as f64;
    for (loss, per) in [
        (ValueLoss::Mse, (|d: f64| d * d) as fn(f64) -> f64),
        (ValueLoss::Mae, |d: f64| d.abs()),
    ] {
        let t = dev().tensor_from_vec(out.clone(), (2, 3, 1));
        let (l, tally) = loss_and_tally(t, Targets::Values(&targets), &values(loss)).unwrap();
        let want: f64 = scored
            .iter()
            .map(|(p, y)| per((p - y) / SCALE.std))
            .sum::<f64>()
            / m;
        assert_close(&format!("{loss:?}"), &[l.array()], &[want], 1e-12, 1e-12);
        // the metric is the mean absolute error in the targets' own units
        let mae: f64 = scored.iter().map(|(p, y)| (p - y).abs()).sum::<f64>() / m;
        assert_eq!(tally.labelled, 4);
        assert_close("metric", &[tally.read().metric()], &[mae], 1e-12, 1e-12);
    }
}

#[test]
fn gradcheck_regression_losses() {
    for loss in [ValueLoss::Mse, ValueLoss::Mae] {
        gradcheck(&format!("{loss:?}"), &[randn(3, 6)], 6, |x| {
            let x = x.into_iter().next().unwrap().reshape_like(&(2, 3, 1));
            loss_and_tally(x, Targets::Values(&wanted()), &values(loss))
                .unwrap()
                .0
        });
    }
}

#[test]
fn targets_and_objectives_that_disagree_are_refused() {
    let out = || dev().tensor_from_vec(randn(1, 6), (2, 3, 1));
    let classes = vec![Some(0); 6];
    let cases = [
        (
            loss_and_tally(out(), Targets::Values(&wanted()), &Objective::Classes),
            "--loss mse",
        ),
        (
            loss_and_tally(out(), Targets::Classes(&classes), &values(ValueLoss::Mse)),
            "needs real-valued targets",
        ),
        (
            loss_and_tally(
                dev().tensor_from_vec(randn(1, 12), (2, 3, 2)),
                Targets::Values(&wanted()),
                &values(ValueLoss::Mae),
            ),
            "regression outputs",
        ),
    ];
    for (result, want) in cases {
        let err = result.map(|_| ()).unwrap_err().to_string();
        assert!(err.contains(want), "{err}");
    }
}

#[test]
fn the_scale_is_the_mean_and_standard_deviation() {
    let s = ValueScale::of(&[1.0, 3.0, 5.0, 7.0]).unwrap();
    assert_close("scale", &[s.mean, s.std], &[4.0, 5f64.sqrt()], 1e-15, 1e-15);
    // targets that do not vary keep the unit scale, so the loss never divides by zero
    assert_eq!(ValueScale::of(&[2.5, 2.5]).unwrap().std, 1.0);
    assert_eq!(ValueScale::of(&[2.5]).unwrap().std, 1.0);
    assert!(ValueScale::of(&[]).is_none());
    assert!(ValueScale::of(&[1.0, f64::NAN]).is_none());
    // a model (e.g. from an edited checkpoint) with a scale that is no scale is refused
    for (mean, std) in [
        (0.0, 0.0),
        (0.0, -1.0),
        (f64::INFINITY, 1.0),
        (0.0, f64::NAN),
    ] {
        let mut g = crate::reliability::graph_config("taylor", 4, 4);
        g.io.values = Some(ValueScale { mean, std });
        let err = Model::<f64, Cpu>::new(&ModelConfig::Graph(g), None, &Init::random(&dev(), 0))
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains("`io.values` needs a finite mean"), "{err}");
    }
}

/// A small `taylor` regression config reading `readout` (one output per position).
fn config(readout: Readout, scale: ValueScale, tokens: usize, n: usize) -> GraphConfig {
    let mut g: GraphConfig = crate::reliability::graph_config("taylor", tokens, n);
    g.io.edge_vocab = 3;
    g.io.values = Some(scale);
    match readout {
        Readout::Edges => g.io.edge_classes = 1,
        Readout::Graph => g.io.graph_classes = 1,
        Readout::Nodes => {}
    }
    g
}

/// A small regression model reading `readout`.
fn model(readout: Readout, scale: ValueScale, tokens: usize, n: usize) -> Model<f64, Cpu> {
    let g = config(readout, scale, tokens, n);
    Model::new(&ModelConfig::Graph(g), None, &Init::random(&dev(), 5)).unwrap()
}

#[test]
fn regression_heads_predict_in_the_targets_units() {
    let task = regression_task(Level::Node, ValueLoss::Mse);
    let bt = batch_of(task.held_out_set().unwrap()[..3].to_vec());
    let unit = ValueScale {
        mean: 0.0,
        std: 1.0,
    };
    for readout in [Readout::Nodes, Readout::Edges, Readout::Graph] {
        let plain = model(readout, unit, task.num_tokens(), task.max_len());
        let scaled = model(readout, SCALE, task.num_tokens(), task.max_len());
        let a = forward_batch::<f64, Cpu, NoneTape>(&plain, &bt, readout).unwrap();
        let b = forward_batch::<f64, Cpu, NoneTape>(&scaled, &bt, readout).unwrap();
        let width = a.logits.shape().2;
        assert_eq!(width, 1, "{readout:?}: one value per position");
        let want: Vec<f64> = a
            .logits
            .as_vec()
            .iter()
            .map(|v| SCALE.mean + SCALE.std * v)
            .collect();
        assert_close(
            &format!("{readout:?}"),
            &b.logits.as_vec(),
            &want,
            1e-12,
            1e-12,
        );
    }
}

fn regression_task(level: Level, loss: ValueLoss) -> Task {
    let (train, valid) = match level {
        Level::Node => ("clustering.train.jsonl", "clustering.valid.jsonl"),
        Level::Edge => ("shortest_paths.train.jsonl", "shortest_paths.valid.jsonl"),
        Level::Graph => ("components.train.jsonl", "components.valid.jsonl"),
    };
    Task::new(GraphFiles::from_files(&sample(train), &sample(valid), level, Some(loss)).unwrap())
        .unwrap()
}

#[test]
fn real_valued_targets_are_read_from_graph_files() {
    let task = regression_task(Level::Node, ValueLoss::Mae);
    // the scale is that of every training target (as the 32-bit floats the model learns)
    let train: Vec<f64> = read_graphs(&sample("clustering.train.jsonl"))
        .unwrap()
        .iter()
        .flat_map(|g| match &g.y {
            Some(Target::Nodes(v)) => v
                .iter()
                .flatten()
                .map(|&v| f64::from(v as f32))
                .collect::<Vec<f64>>(),
            _ => panic!("the clustering sample has node targets"),
        })
        .collect();
    let Objective::Values { loss, scale } = task.objective() else {
        panic!("a regression task")
    };
    assert_eq!(loss, ValueLoss::Mae);
    let want = ValueScale::of(&train).unwrap();
    assert_close(
        "scale",
        &[scale.mean, scale.std],
        &[want.mean, want.std],
        1e-12,
        1e-12,
    );
    assert_eq!(task.readout(), Readout::Nodes);
    // the held-out batch: each graph's y, unscored padding, no class targets
    let records = read_graphs(&sample("clustering.valid.jsonl")).unwrap();
    let bt = batch_of(task.held_out_set().unwrap().to_vec());
    let got = bt.node_values.as_ref().expect("node values");
    for (g, record) in records.iter().enumerate() {
        let Some(Target::Nodes(y)) = &record.y else {
            unreachable!()
        };
        for i in 0..bt.n {
            let want = y.get(i).copied().flatten().map(|v| v as f32);
            assert_eq!(got[g * bt.n + i], want, "graph {g} node {i}");
        }
    }
    assert!(bt.targets.iter().all(Option::is_none));
    // edge and graph levels read `edge_label` and the graph's `y` alike
    for level in [Level::Edge, Level::Graph] {
        let task = regression_task(level, ValueLoss::Mse);
        let bt = batch_of(task.held_out_set().unwrap()[..4].to_vec());
        let scored = match level {
            Level::Edge => bt.edge_values.as_ref(),
            _ => bt.graph_values.as_ref(),
        };
        assert!(
            scored.is_some_and(|v| v.iter().any(Option::is_some)),
            "{level:?}"
        );
    }
}

#[test]
fn a_value_beyond_a_float_names_the_graph_and_the_field() {
    let dir = crate::common::scratch("regression-overflow");
    let mut graphs = read_graphs(&sample("clustering.valid.jsonl")).unwrap();
    graphs.truncate(3);
    if let Some(Target::Nodes(y)) = &mut graphs[2].y {
        y[1] = Some(1e300);
    }
    let path = dir.join("big.jsonl");
    write_jsonl(&path, &graphs).unwrap();
    let err = GraphFiles::from_files(&path, &path, Level::Node, Some(ValueLoss::Mse))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("graph 2, field `y`: entry 1 is 1e300, beyond what a 32-bit float holds"),
        "{err}"
    );
    // real values as classes point at the regression losses
    let err = GraphFiles::from_files(&path, &path, Level::Node, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not a class id") && err.contains("--loss mse"),
        "{err}"
    );
}

#[test]
fn a_model_must_predict_what_the_task_scores() {
    let task = regression_task(Level::Node, ValueLoss::Mse);
    let mut g = crate::reliability::graph_config("taylor", task.num_tokens(), task.max_len());
    g.io.edge_vocab = task.edge_vocab();
    let err = check_fits(&ModelConfig::Graph(g.clone()), &task)
        .unwrap_err()
        .to_string();
    assert!(err.contains("real-valued targets"), "{err}");
    let classes = Task::new(
        GraphFiles::from_files(
            &sample("triangles.train.jsonl"),
            &sample("triangles.valid.jsonl"),
            Level::Node,
            None,
        )
        .unwrap(),
    )
    .unwrap();
    g.io.values = Some(SCALE);
    g.num_tokens = classes.num_tokens();
    let err = check_fits(&ModelConfig::Graph(g), &classes)
        .unwrap_err()
        .to_string();
    assert!(err.contains("class targets"), "{err}");
}

#[test]
fn a_sharded_regression_step_is_the_whole_step() {
    let task = regression_task(Level::Node, ValueLoss::Mse);
    let bt = batch_of(task.held_out_set().unwrap()[..6].to_vec());
    let m = model(Readout::Nodes, SCALE, task.num_tokens(), task.max_len());
    let objective = task.objective();
    let whole = step_gradients(&m, &bt, Readout::Nodes, &objective, 1).unwrap();
    let sharded = step_gradients(&m, &bt, Readout::Nodes, &objective, 3).unwrap();
    assert_close("loss", &[sharded.loss], &[whole.loss], 1e-12, 1e-12);
    assert_eq!(sharded.tally.labelled, whole.tally.labelled);
    assert_close(
        "summed absolute error",
        &[sharded.tally.score],
        &[whole.tally.score],
        1e-12,
        1e-12,
    );
}

/// Every parameter of a regression model (the node value head, or the edge or graph head with
/// one output, and the scale after them) has the finite-difference gradient of both losses.
#[test]
fn gradcheck_regression_models() {
    use quartic::graph::GraphMask;
    use quartic::models::GraphTransformer;
    let (b, n) = (2, 4);
    let mask = GraphMask::from_lengths(n, &[4, 3]).unwrap();
    let tokens: Vec<usize> = (0..b * n).map(|i| (i * 3 + 1) % 4).collect();
    let edge_tokens: Vec<usize> = (0..b * n * n).map(|e| (e * 5 + e / 7) % 3).collect();
    for readout in [Readout::Nodes, Readout::Edges, Readout::Graph] {
        let positions = match readout {
            Readout::Nodes => b * n,
            Readout::Edges => b * n * n,
            Readout::Graph => b,
        };
        let targets: Vec<Option<f32>> = randn(9, positions)
            .iter()
            .enumerate()
            .map(|(k, &v)| (k % 5 != 2).then_some(v as f32))
            .collect();
        for loss in [ValueLoss::Mse, ValueLoss::Mae] {
            gradcheck_block(
                &format!("{readout:?} regression, {loss:?}"),
                |init| {
                    GraphTransformer::<f64, Cpu>::new(config(readout, SCALE, 4, n), init).unwrap()
                },
                &[],
                6,
                |model, _| {
                    let out: Tensor<(usize, usize, usize), f64, Cpu, Tp> = model
                        .forward_io(&tokens, Some(&edge_tokens), b, n, &mask, readout)
                        .unwrap();
                    loss_and_tally(out, Targets::Values(&targets), &values(loss))
                        .unwrap()
                        .0
                },
            );
        }
    }
}
