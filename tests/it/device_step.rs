//! The training step as a GPU runs it, run on the CPU: AdamW with its moments on the device
//! (`quartic::train::device_optim`) agrees with the host's fused update and round-trips its
//! moments exactly, and a step (`trainer::train_step`) of every built-in rule, routing's top-k
//! included, reads back only the scalars it logs, as counted by `quartic::tensor::host`,
//! through which library code reads every tensor.

use dfdx::prelude::*;
use quartic::models::{GraphConfig, Model, ModelConfig, TaskIo};
use quartic::nn::{HasParams, Init};
use quartic::ops::routing::picking_on_device;
use quartic::tensor::host;
use quartic::train::device_optim::{DeviceAdam, Optimizer};
use quartic::train::optim::{AdamState, AdamW};
use quartic::train::shards::step_gradients;
use quartic::train::trainer::{batch_for, train_step, TrainConfig};
use quartic::train::Task;

use crate::layers::{code, visit};
use crate::rules::small_overrides;

fn model(rule: &str, causal: bool, task: &Task, seed: u64) -> Model<f32, Cpu> {
    let config = ModelConfig::Graph(GraphConfig {
        residual_streams: 1,
        num_tokens: task.num_tokens(),
        dim: 8,
        dim_edges: 4,
        depth: 1,
        rule: rule.into(),
        rule_params: small_overrides(rule).into_iter().collect(),
        causal,
        max_seq_len: task.max_len(),
        absolute_positions: true,
        position_bias: true,
        final_norm: Some(1e-5),
        io: TaskIo::default(),
    });
    Model::new(&config, None, &Init::random(&Cpu::default(), seed)).unwrap()
}

fn train_config(task: &str, shards: usize) -> TrainConfig {
    TrainConfig {
        task: task.into(),
        batch: 6,
        steps: 10,
        warmup: 2,
        shards,
        ..TrainConfig::default()
    }
}

fn values(model: &Model<f32, Cpu>) -> Vec<(String, Vec<f32>)> {
    model
        .params()
        .iter()
        .map(|p| (p.name.clone(), p.value.as_vec()))
        .collect()
}

fn assert_near(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= tol * (1.0 + b.abs()),
            "{what}[{i}]: {a} on the device, {b} on the host"
        );
    }
}

fn set_values(model: &mut Model<f32, Cpu>, values: &[(String, Vec<f32>)]) {
    let mut values = values.iter();
    model.visit_params_mut(&mut |p| p.value.copy_from(&values.next().unwrap().1));
}

#[test]
fn adamw_on_the_device_takes_the_hosts_steps() {
    let cfg = train_config("sanity", 2);
    let task = cfg.task().unwrap();
    // one model (the gradients are keyed by its tensors), its weights swapped between the two
    // optimizers' trajectories; both apply the gradients taken on the host's
    let mut m = model("taylor", false, &task, 1);
    let mut device_weights = values(&m);
    let mut host_state = AdamState::default();
    let mut device_state = DeviceAdam::upload(&AdamState::default(), &m).unwrap();
    let adamw = AdamW {
        weight_decay: 0.1,
        ..AdamW::default()
    };
    // clipped at 0.05 (every step's norm is above it) and not clipped at all
    for (step, clip) in [Some(0.05), None, Some(0.05), None].into_iter().enumerate() {
        let bt = batch_for(&task, 7, step, cfg.batch);
        // clipped steps sum two shards' gradients; the others take one shard's as it lies
        let shards = if clip.is_some() { 2 } else { 1 };
        let mut passes =
            step_gradients(&m, &bt, task.readout(), &task.objective(), shards).unwrap();
        assert_eq!(passes.grads.len(), shards, "one set of gradients per shard");
        let mut same = passes.grads.clone();
        let lr = 3e-3;
        let host_weights = values(&m);
        let ra = host_state
            .update_sum(&mut m, &mut passes.grads, &adamw, lr, clip)
            .unwrap();
        let host_after = values(&m);
        set_values(&mut m, &device_weights);
        let rb = device_state
            .update_sum(&mut m, &mut same, &adamw, lr, clip)
            .unwrap();
        device_weights = values(&m);
        if clip.is_some() {
            assert!(ra.grad_norm > 0.05, "the clip is active: {}", ra.grad_norm);
        }
        assert!(
            (ra.grad_norm - rb.grad_norm).abs() <= 1e-5 * ra.grad_norm,
            "step {step}: gradient norm {} on the device, {} on the host",
            rb.grad_norm,
            ra.grad_norm
        );
        let mut moved = 0.0f32;
        for (((name, got), (_, want)), (_, before)) in
            device_weights.iter().zip(&host_after).zip(&host_weights)
        {
            assert_near(&format!("step {step}: {name}"), got, want, 1e-5);
            moved = want
                .iter()
                .zip(before)
                .fold(moved, |a, (x, y)| a.max((x - y).abs()));
        }
        assert!(
            moved > 1e-3,
            "step {step}: the update moved the weights by {moved}"
        );
        set_values(&mut m, &host_after);
    }
    let downloaded = device_state.download(&m).unwrap();
    assert_eq!(downloaded.step, host_state.step);
    assert_eq!(downloaded.step, 4);
    for (table, want) in [
        (&downloaded.m, &host_state.m),
        (&downloaded.v, &host_state.v),
    ] {
        assert_eq!(table.len(), want.len());
        for (name, got) in table {
            // moments relative to their own scale: the second moments are tiny
            let scale = want[name]
                .iter()
                .fold(0f32, |a, x| a.max(x.abs()))
                .max(1e-30);
            let got: Vec<f32> = got.iter().map(|x| x / scale).collect();
            let want: Vec<f32> = want[name].iter().map(|x| x / scale).collect();
            assert_near(&format!("moment of {name}"), &got, &want, 1e-4);
        }
    }
}

#[test]
fn device_moments_round_trip_exactly() {
    let task = train_config("sanity", 1).task().unwrap();
    let m = model("baseline", false, &task, 2);
    let mut state = AdamState {
        step: 17,
        ..AdamState::default()
    };
    for (k, p) in m.params().iter().enumerate() {
        let values = |salt: usize| -> Vec<f32> {
            (0..p.len())
                .map(|i| ((i * 31 + k * 7 + salt) % 97) as f32 * 1.37e-3 - 0.05)
                .collect()
        };
        state.m.insert(p.name.clone(), values(0));
        state
            .v
            .insert(p.name.clone(), values(5).iter().map(|x| x * x).collect());
    }
    let mut device = DeviceAdam::upload(&state, &m).unwrap();
    assert_eq!(device.step(), 17);
    assert_eq!(device.download(&m).unwrap(), state);
    // a parameter without saved moments starts from zero, as on the host
    let mut partial = state.clone();
    let first = m.params()[0].name.clone();
    partial.m.remove(&first);
    let back = DeviceAdam::upload(&partial, &m)
        .unwrap()
        .download(&m)
        .unwrap();
    assert!(back.m[&first].iter().all(|&x| x == 0.0));
    // moments of the wrong length are refused, naming the parameter
    let mut bad = state.clone();
    bad.v.insert(first.clone(), vec![0.0; 3]);
    let err = DeviceAdam::upload(&bad, &m)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains(&first), "{err}");
}

/// Host reads made by one training step of `rule` on `task`, with the device optimizer.
fn reads_of_a_step(rule: &str, task: &str, causal: bool, shards: usize) -> usize {
    let cfg = train_config(task, shards);
    let t = cfg.task().unwrap();
    let mut m = model(rule, causal, &t, 3);
    let mut opt = Optimizer::new(AdamState::default(), &m, true).unwrap();
    let before = host::reads_on_this_thread();
    let done = train_step(&mut m, &mut opt, &t, &cfg, 0).unwrap();
    assert!(
        done.loss.is_finite() && done.grad_norm > 0.0,
        "{rule}: {done:?}"
    );
    host::reads_on_this_thread() - before
}

#[test]
fn a_training_step_reads_back_only_the_scalars_it_logs() {
    // the loss, the metric's score and the gradient norm: whatever the shards
    let rules = [
        "baseline",
        "taylor",
        "quartic",
        "quartic_endpoints",
        "relational",
        "triangle",
        "edge_transformer",
    ];
    for rule in rules {
        for (task, causal) in [("sanity", false), ("match3", true)] {
            for shards in [1, 2] {
                let reads = reads_of_a_step(rule, task, causal, shards);
                assert_eq!(
                    reads, 3,
                    "{rule} on {task} (causal: {causal}) in {shards} shard(s)"
                );
            }
        }
    }
    // routing picks its top-k on the device too (on this thread: one shard)
    for (task, causal) in [("sanity", false), ("match3", true)] {
        let reads = picking_on_device(|| reads_of_a_step("routed", task, causal, 1));
        assert_eq!(reads, 3, "routed on {task} (causal: {causal})");
        // picked on the host, as the CPU does by default, the scores are read back
        assert!(reads_of_a_step("routed", task, causal, 1) > 3);
    }
    // the host's fused optimizer reads every gradient and parameter: the count sees it
    let cfg = train_config("sanity", 1);
    let t = cfg.task().unwrap();
    let mut m = model("baseline", false, &t, 3);
    let mut opt = Optimizer::new(AdamState::default(), &m, false).unwrap();
    let before = host::reads_on_this_thread();
    train_step(&mut m, &mut opt, &t, &cfg, 0).unwrap();
    let reads = host::reads_on_this_thread() - before;
    assert_eq!(reads, 2 + 2 * m.params().len(), "host optimizer");
}

#[test]
fn library_code_reads_tensors_only_through_the_counted_functions() {
    // the CPU's own kernels work in host memory: their reads are no transfer
    let allowed = ["src/kernels/cpu", "src/tensor/host.rs"];
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    visit(&root.join("src"), &mut files);
    let (mut found, mut in_allowed) = (Vec::new(), 0);
    for file in files {
        let rel = file
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let text = std::fs::read_to_string(&file).unwrap();
        for (k, line) in text.lines().enumerate() {
            let code = code(line);
            if [".as_vec()", ".copy_into(", ".array()"]
                .iter()
                .any(|r| code.contains(r))
            {
                if allowed.iter().any(|a| rel.starts_with(a)) {
                    in_allowed += 1;
                } else {
                    found.push(format!("{rel}:{}: {}", k + 1, line.trim()));
                }
            }
        }
    }
    // the counted functions themselves read: the scan sees them
    assert!(
        in_allowed >= 3,
        "the scan found {in_allowed} reads where they belong"
    );
    assert!(
        found.is_empty(),
        "read through quartic::tensor::host (counted) instead:\n{}",
        found.join("\n")
    );
}
