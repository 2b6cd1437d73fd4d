//! The speed workloads of the side-by-side table (issue: speed), shared by the criterion bench
//! (`benches/models.rs`) and the whole-process harness (`examples/speed.rs`).

use dfdx::prelude::*;
use dfdx::tensor::Synchronize;
use quartic::backend::Backend;
use quartic::graph::{Edges, GraphMask, Nodes};
use quartic::models::{GraphConfig, Model, ModelConfig, QuarticConfig};
use quartic::nn::{HasParams, Init};
use quartic::rules::{Const, Rule, RuleConfig, RuleLayer};
use quartic::train::device_optim::Optimizer;
use quartic::train::objective::Objective;
use quartic::train::optim::{AdamState, AdamW};
use quartic::train::shards::{step_gradients, RunShards, DEFAULT_SHARDS};
use quartic::train::tasks::{Batch, Readout};

pub type Tp<D = Cpu> = OwnedTape<f32, D>;

/// The README model (num_tokens 256, dim 512, depth 2, dim_edges 32) with the `taylor` rule and
/// one residual stream, as the speed table has measured it from the start.
pub fn readme_model<D: Backend<f32>>(dev: &D) -> Model<f32, D> {
    readme_model_streams(dev, 1)
}

/// The README model with `streams` residual streams (4: the original's default).
pub fn readme_model_streams<D: Backend<f32>>(dev: &D, streams: usize) -> Model<f32, D> {
    let mut q = QuarticConfig::readme();
    q.num_residual_streams = streams;
    let cfg = q.to_graph("taylor", false).expect("valid config");
    Model::new(&ModelConfig::Graph(cfg), None, &Init::random(dev, 0)).expect("builds")
}

/// The small model: dim 64, dim_edges 16, heads 4 × 16, edge heads 4 × 8, depth 2.
pub fn small_model<D: Backend<f32>>(dev: &D) -> Model<f32, D> {
    let p = |k: &str, v: f64| (k.to_string(), Const::Num(v));
    let cfg = GraphConfig {
        residual_streams: 1,
        num_tokens: 256,
        dim: 64,
        dim_edges: 16,
        depth: 2,
        rule: "taylor".into(),
        rule_params: [
            p("heads", 4.0),
            p("dim_head", 16.0),
            p("edge_heads", 4.0),
            p("edge_dim_head", 8.0),
        ]
        .into_iter()
        .collect(),
        causal: false,
        max_seq_len: 128,
        absolute_positions: true,
        position_bias: true,
        final_norm: Some(1e-5),
        io: Default::default(),
    };
    Model::new(&ModelConfig::Graph(cfg), None, &Init::random(dev, 0)).expect("builds")
}

// the footprint table of examples/speed.rs; the criterion benches do not use it
#[allow(dead_code)]
/// A two-layer model of `rule` at the small model's widths (dim 64, dim_edges 16, 4 heads),
/// vocabulary 256, for sequences of `n`.
pub fn rule_model_config(rule: &str, n: usize) -> ModelConfig {
    let rule_params = Rule::builtin(rule).expect("built in").declared_values(&[
        ("heads", 4.0),
        ("dim_head", 16.0),
        ("edge_heads", 4.0),
        ("edge_dim_head", 8.0),
        ("hidden", 16.0),
        ("ff_mult", 2.0),
    ]);
    ModelConfig::Graph(GraphConfig {
        residual_streams: 1,
        num_tokens: 256,
        dim: 64,
        dim_edges: 16,
        depth: 2,
        rule: rule.into(),
        rule_params,
        causal: false,
        max_seq_len: n,
        absolute_positions: true,
        position_bias: true,
        final_norm: Some(1e-5),
        io: Default::default(),
    })
}

pub fn tokens(b: usize, n: usize) -> Vec<usize> {
    (0..b * n).map(|i| (i * 37 + 11) % 256).collect()
}

pub fn forward<D: Backend<f32>>(model: &Model<f32, D>, b: usize, n: usize) {
    let out = model
        .forward::<NoneTape>(&tokens(b, n), b, n, None)
        .expect("runs");
    std::hint::black_box(quartic::tensor::host::values(&out.logits));
}

/// AdamW as `quartic train` keeps it on `model`'s device: on the host for the CPU, else on the
/// device.
pub fn optimizer<D: Backend<f32>>(model: &Model<f32, D>) -> Optimizer<f32, D> {
    Optimizer::for_device(AdamState::default(), model).expect("optimizer")
}

/// Forward, backward (loss: mean cross-entropy against the next token) and one AdamW step, as
/// `quartic train` runs them (the batch in shards, see `quartic::train::shards`); waits for the
/// device to finish.
pub fn train_step<D: RunShards<f32> + Synchronize>(
    model: &mut Model<f32, D>,
    adam: &mut Optimizer<f32, D>,
    b: usize,
    n: usize,
) {
    let tokens = tokens(b, n);
    let targets = tokens.iter().map(|&t| Some((t + 1) % 256)).collect();
    let batch = Batch {
        tokens,
        b,
        n,
        valid: None,
        targets,
        edge_tokens: None,
        edge_targets: None,
        dropout: None,
        ..Batch::default()
    };
    let mut step = step_gradients(
        model,
        &batch,
        Readout::Nodes,
        &Objective::Classes,
        DEFAULT_SHARDS,
    )
    .expect("runs");
    adam.update_sum(model, &mut step.grads, &AdamW::default(), 1e-4, Some(1.0))
        .expect("update");
    if let Some(p) = model.params().first() {
        p.value.device().synchronize();
    }
}

/// One layer of a built-in `rule` alone, node block included, at the widths of the speed
/// table's layer rows: dim 64, dim_edges 32, 4 heads × 16 on the nodes and on the edges (the
/// rule's other parameters at its defaults). `quartic`: full softmax attention across all n²
/// edges; `triangle`, `edge_transformer`: the cubic triangle and path updates.
pub fn rule_layer<D: Backend<f32>>(dev: &D, rule: &str) -> RuleLayer<f32, D> {
    let rule = Rule::builtin(rule).expect("built in");
    let cfg = RuleConfig {
        dim: 64,
        dim_edges: 32,
        causal: false,
        overrides: rule
            .declared_values(&[
                ("heads", 4.0),
                ("dim_head", 16.0),
                ("edge_heads", 4.0),
                ("edge_dim_head", 16.0),
            ])
            .into_iter()
            .collect(),
    };
    let plan = rule.plan(&cfg).expect("checks");
    RuleLayer::new(plan, &Init::random(dev, 0)).expect("builds")
}

// the FLOP/s columns of examples/speed.rs; the criterion benches do not use it
#[allow(dead_code)]
/// The forward FLOPs of a graph model at batch `b`, `n` nodes, from `explain`'s cost model:
/// its layers and the logits' projection (embeddings and the final norm are a few per cent).
pub fn model_forward_flops<D: Backend<f32>>(model: &Model<f32, D>, b: usize, n: usize) -> f64 {
    let Model::Graph(g) = model else {
        return f64::NAN;
    };
    let layers: f64 = g
        .layers
        .iter()
        .map(|l| quartic::rules::explain::plan_cost(&l.plan, b, n).flops)
        .sum();
    layers + 2.0 * (b * n * g.config.dim * g.config.num_tokens) as f64
}

// the FLOP/s columns of examples/speed.rs; the criterion benches do not use it
#[allow(dead_code)]
/// The forward FLOPs of [`rule_layer`] at batch 1, `n` nodes, from `explain`'s cost model.
pub fn layer_forward_flops<D: Backend<f32>>(layer: &RuleLayer<f32, D>, n: usize) -> f64 {
    quartic::rules::explain::plan_cost(&layer.plan, 1, n).flops
}

/// Random inputs of a [`rule_layer`] at `n` nodes, batch 1: nodes `[1, n, 64]`, edges
/// `[1, n, n, 32]`, no padding. Drawn once, outside the timings, which are of the layer alone
/// (n² · 32 normal draws are not part of a layer's work).
pub struct LayerInputs<D: Backend<f32>> {
    nodes: Tensor<(usize, usize, usize), f32, D>,
    edges: Tensor<(usize, usize, usize, usize), f32, D>,
    mask: GraphMask,
}

pub fn rule_layer_inputs<D: Backend<f32>>(dev: &D, n: usize) -> LayerInputs<D> {
    LayerInputs {
        nodes: dev.sample_normal_like(&(1, n, 64)),
        edges: dev.sample_normal_like(&(1, n, n, 32)),
        mask: GraphMask::full(1, n),
    }
}

/// A [`rule_layer`]'s forward and backward on `inputs`; waits for the device to finish.
pub fn rule_layer_step<D: Backend<f32> + Synchronize>(
    dev: &D,
    layer: &RuleLayer<f32, D>,
    inputs: &LayerInputs<D>,
) {
    let (x, e) = layer
        .forward(
            Nodes::new(inputs.nodes.leaky_trace()),
            Edges::new(inputs.edges.clone().retaped::<Tp<D>>()).expect("square"),
            &inputs.mask,
        )
        .expect("runs");
    let loss = x.into_tensor().square().mean() + e.into_tensor().square().mean();
    std::hint::black_box(loss.backward());
    dev.synchronize();
}
