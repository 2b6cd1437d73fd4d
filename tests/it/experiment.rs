//! Edge inputs and edge heads on the graph model, and the experiment runner.

use dfdx::prelude::*;
use quartic::experiment::{self, report, ExperimentConfig};
use quartic::graph::GraphMask;
use quartic::models::{GraphConfig, GraphTransformer, Readout, TaskIo};
use quartic::train::Task;

use crate::common::*;
use crate::rules::small_overrides;

fn io_config(rule: &str) -> GraphConfig {
    GraphConfig {
        residual_streams: 1,
        num_tokens: 5,
        dim: 6,
        dim_edges: 4,
        depth: 1,
        rule: rule.into(),
        rule_params: small_overrides(rule).into_iter().collect(),
        causal: false,
        max_seq_len: 8,
        absolute_positions: true,
        position_bias: true,
        final_norm: Some(1e-5),
        io: TaskIo {
            edge_vocab: 3,
            edge_classes: 2,
            pool_edges: true,
            ..TaskIo::default()
        },
    }
}

const TOKENS: [usize; 8] = [1, 4, 2, 0, 3, 3, 1, 0];

fn edge_tokens(b: usize, n: usize) -> Vec<usize> {
    (0..b * n * n).map(|e| (e * 7 + e / 3) % 3).collect()
}

/// Every parameter of the model, edge-token table, edge pooling and edge head included, has
/// the finite-difference gradient, read from the edges and from the nodes (padding included).
#[test]
fn gradcheck_edge_inputs_and_readouts() {
    let (b, n) = (2, 4);
    let mask = GraphMask::from_lengths(n, &[4, 3]).unwrap();
    for rule in ["taylor", "baseline"] {
        for readout in [Readout::Edges, Readout::Nodes] {
            gradcheck_block(
                &format!("{rule} model read from {readout:?}"),
                |init| GraphTransformer::<f64, Cpu>::new(io_config(rule), init).unwrap(),
                &[],
                6,
                |model, _| {
                    let logits: Tensor<(usize, usize, usize), f64, Cpu, Tp> = model
                        .forward_io(&TOKENS, Some(&edge_tokens(b, n)), b, n, &mask, readout)
                        .unwrap();
                    probe_loss(logits, 31)
                },
            );
        }
    }
}

#[test]
fn edge_tokens_reach_the_outputs_and_bad_ones_are_named() {
    let d = dev();
    let model =
        GraphTransformer::<f32, Cpu>::new(io_config("taylor"), &quartic::nn::Init::random(&d, 3))
            .unwrap();
    let (b, n) = (2, 4);
    let mask = GraphMask::full(b, n);
    let run = |edges: &[usize]| -> Vec<f32> {
        let out: Tensor<(usize, usize, usize), f32, Cpu> = model
            .forward_io(&TOKENS, Some(edges), b, n, &mask, Readout::Edges)
            .unwrap();
        out.as_vec()
    };
    let base = edge_tokens(b, n);
    let mut changed = base.clone();
    changed[5] = (changed[5] + 1) % 3;
    assert_eq!(run(&base).len(), b * n * n * 2);
    assert_ne!(
        run(&base),
        run(&changed),
        "an edge token changes the logits"
    );
    let mut bad = base.clone();
    bad[(n + 2) * n + 1] = 3;
    let err = model
        .forward_io::<NoneTape>(&TOKENS, Some(&bad), b, n, &mask, Readout::Edges)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("edge (2, 1) of graph 1") && err.contains("0..3"),
        "{err}"
    );
    let err = model
        .forward_io::<NoneTape>(&TOKENS, None, b, n, &mask, Readout::Edges)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("no edge tokens"), "{err}");
    let mut no_head = io_config("taylor");
    no_head.io = TaskIo::default();
    let plain =
        GraphTransformer::<f32, Cpu>::new(no_head, &quartic::nn::Init::random(&d, 3)).unwrap();
    let err = plain
        .forward_io::<NoneTape>(&TOKENS, None, b, n, &mask, Readout::Edges)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("no edge head"), "{err}");
}

#[test]
fn parameter_counts_are_matched_within_ten_percent() {
    let rules: Vec<String> = ExperimentConfig::default().rules;
    for task in ["relation-composition", "match3", "path-composition"] {
        let t = Task::from_name(task, None, 0).unwrap();
        let widths = experiment::Widths::default();
        let (budget, matched) = experiment::match_params(&rules, &t, &widths, 1).unwrap();
        for m in &matched {
            let ratio = m.params as f64 / budget as f64;
            assert!(
                (0.9..=1.1).contains(&ratio),
                "{task} {}: {} vs {budget}",
                m.rule,
                m.params
            );
            // every rule carries the task's inputs and heads, at a width every head layout divides
            let io = TaskIo {
                edge_vocab: t.edge_vocab(),
                edge_classes: t.edge_classes(),
                pool_edges: true,
                ..TaskIo::default()
            };
            assert_eq!(m.config.io, io, "{task} {}", m.rule);
            assert_eq!(m.config.dim % 4, 0);
        }
        // the budget is one rule's own count at the base width
        assert!(matched
            .iter()
            .any(|m| m.params == budget && m.config.dim == widths.dim));
    }
}

/// A short run of the whole runner: every file is written, and the edge rule built for the
/// task (triangle updates compute A∘A directly) learns relation composition while the baseline
/// does not reach it in the same steps.
#[test]
fn experiment_runs_and_reports() {
    let out = scratch("experiment");
    let cfg = ExperimentConfig {
        rules: vec!["baseline".into(), "triangle".into()],
        seeds: 1,
        steps: 120,
        batch: 16,
        eval_every: 40,
        eval_batches: 4,
        jobs: 2,
        out: out.to_path_buf(),
        ..ExperimentConfig::default()
    };
    let r = experiment::run_task("relation-composition", &cfg, &|_| {}).unwrap();
    report::write_task(&r, &out.join("rc")).unwrap();
    for f in ["results.md", "results.csv", "accuracy-vs-steps.png"] {
        assert!(out.join("rc").join(f).exists(), "{f}");
    }
    let acc = |rule: &str| r.runs_of(rule).next().unwrap().accuracy;
    assert!(acc("triangle") > 0.95, "triangle {}", acc("triangle"));
    assert!(acc("baseline") < acc("triangle"));
    assert_eq!(r.runs_of("baseline").next().unwrap().curve.len(), 3);
    let md = report::markdown(&r);
    assert!(
        md.contains("| triangle |") && md.contains("majority-class rate"),
        "{md}"
    );
    let csv = report::csv(&r);
    assert_eq!(csv.lines().count(), 3);
    // a rule none of whose runs finished reads `–` in every cell, not a made-up 0 (an empty
    // sum of floats is −0.0, which the table printed as "-0.0 ± 0.0" before)
    let mut partial = r.clone();
    partial.runs.retain(|x| x.rule == "baseline");
    let md = report::markdown(&partial);
    let row = md
        .lines()
        .find(|l| l.starts_with("| triangle |"))
        .expect("the unfinished rule keeps its row");
    assert!(row.contains("| – |") && !row.contains("0.0 ±"), "{row}");
    assert!(row.ends_with("| – |"), "no seconds for no run: {row}");
    assert!(report::suite_markdown(&[partial]).contains("| – |"));
    // a task with sizes and one with a probe
    // a plan's folder holds one plan: each of these gets its own
    let small = |dir: &str| ExperimentConfig {
        rules: vec!["baseline".into()],
        steps: 2,
        eval_every: 1,
        eval_batches: 1,
        batch: 4,
        out: out.join(dir),
        ..cfg.clone()
    };
    let p = experiment::run_task("path-composition", &small("p"), &|_| {}).unwrap();
    assert_eq!(p.runs[0].by_size.len(), 9);
    report::write_task(&p, &out.join("pc")).unwrap();
    assert!(out.join("pc/accuracy-vs-size.png").exists());
    let t = experiment::run_task("triangles", &small("t"), &|_| {}).unwrap();
    assert!(t.runs[0].probe.is_some());
    assert!(report::markdown(&t).contains("probe"));
}

/// `late_gain` reads the curve at two thirds of the steps; `compare` lays experiments at two
/// widths (and two depths) side by side, one column per width, and names a folder that has no
/// finished run.
#[test]
fn compare_puts_widths_side_by_side() {
    use quartic::experiment::{compare, RunResult};
    let run = RunResult {
        rule: "baseline".into(),
        seed: 0,
        loss: 0.5,
        accuracy: 0.8,
        curve: vec![(100, 0.5), (200, 0.7), (250, 0.75), (300, 0.8)],
        by_size: Vec::new(),
        probe: None,
        seconds: 1.0,
    };
    // 2/3 of 300 steps is step 200: the gain is 0.8 − 0.7
    assert!((report::late_gain(&run, 300).unwrap() - 0.1).abs() < 1e-12);
    assert_eq!(
        report::late_gain(&run, 120),
        None,
        "no evaluation before step 80"
    );

    let out = scratch("compare");
    let at = |dim: usize, depth: usize| {
        let cfg = ExperimentConfig {
            rules: vec!["baseline".into(), "taylor".into()],
            seeds: 2,
            steps: 3,
            batch: 4,
            depth,
            eval_every: 1,
            eval_batches: 1,
            jobs: 2,
            widths: experiment::Widths {
                dim,
                dim_edges: dim / 2,
                ..Default::default()
            },
            out: out.join(format!("dim{dim}-depth{depth}")),
            ..ExperimentConfig::default()
        };
        experiment::run_task("relation-composition", &cfg, &|_| {}).unwrap();
        cfg.out
    };
    let dirs = vec![at(8, 1), at(16, 1), at(8, 2)];
    let points = compare::points(&dirs).unwrap();
    assert_eq!(points.len(), 6, "2 rules × 3 experiments");
    assert!(points.iter().all(|p| p.accuracies.len() == 2));
    let md = compare::markdown(&points);
    assert!(md.contains("| rule | dim 8 | dim 16 |"), "{md}");
    assert!(md.contains("| baseline · depth 2 |"), "{md}");
    // depth 2 was not run at dim 16
    let row = md
        .lines()
        .find(|l| l.starts_with("| taylor · depth 2 |"))
        .unwrap();
    assert!(row.ends_with("| – |"), "{row}");
    assert_eq!(compare::csv(&points).lines().count(), 1 + 12);
    compare::write_all(&points, &out.join("cmp")).unwrap();
    for f in [
        "compare.md",
        "compare.csv",
        "accuracy-vs-width-relation-composition.png",
    ] {
        assert!(out.join("cmp").join(f).exists(), "{f}");
    }
    let empty = out.join("nothing");
    std::fs::create_dir_all(&empty).unwrap();
    let e = compare::points(&[dirs[0].clone(), empty.clone()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("nothing"), "{e}");
}
