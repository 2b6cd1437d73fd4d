//! The interpreter against hand-written code: one `taylor` layer run from its rule and the same
//! layer written directly against the core (`taylor_by_hand.rs`, same parameters, outputs
//! checked equal first), forward + backward, f32.
//!
//! Also the Edge Transformer's path attention, fused against the same attention written out
//! with `softmax[l]` / `sum[l]` (`path_by_hand.rs`, equal outputs checked in the tests).
//!
//! And one layer of a rule from a file, `examples/rules/strassen_gated.rule` (pair attention
//! over (j, k) whose scores are dots of node projections: batched matrix products per head),
//! at match3's training shape.
//!
//! `cargo bench --bench rules`

mod path_by_hand;
mod taylor_by_hand;

// see quartic::alloc: freed tensors stay in the process for the next op, no huge pages
#[global_allocator]
static GLOBAL: quartic::alloc::Allocator = quartic::alloc::Allocator;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use dfdx::prelude::*;
use quartic::graph::{Edges, GraphMask, Nodes};
use quartic::nn::Init;
use quartic::rules::{Const, Rule, RuleConfig, RuleLayer};
use rand::{Rng, SeedableRng};
use taylor_by_hand::taylor_by_hand;

type Tp = OwnedTape<f32, Cpu>;

fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.gen_range(-1.0..1.0)).collect()
}

/// One forward and backward of `layer` on fresh tapes of `nodes` and `edges`.
fn forward_backward(
    layer: &RuleLayer<f32, Cpu>,
    nodes: &Tensor<(usize, usize, usize), f32, Cpu>,
    edges: &Tensor<(usize, usize, usize, usize), f32, Cpu>,
    mask: &GraphMask,
) -> Gradients<f32, Cpu> {
    let (x, e) = layer
        .forward(
            Nodes::new(nodes.leaky_trace()),
            Edges::new(edges.clone().retaped::<Tp>()).unwrap(),
            mask,
        )
        .unwrap();
    (x.into_tensor().sum::<(), _>() + e.into_tensor().sum::<(), _>()).backward()
}

fn rule_vs_hand(c: &mut Criterion) {
    quartic::threads::include_calling_thread();
    let dev = Cpu::default();
    let (b, dim, de) = (2, 64, 16);
    let (heads, dim_head, edge_heads, edge_dim_head) = (4, 16, 4, 8);
    let num = |k: &str, v: usize| (k.to_string(), Const::Num(v as f64));
    let cfg = RuleConfig {
        dim,
        dim_edges: de,
        causal: false,
        overrides: vec![
            num("heads", heads),
            num("dim_head", dim_head),
            num("edge_heads", edge_heads),
            num("edge_dim_head", edge_dim_head),
        ],
    };
    let plan = Rule::builtin("taylor").unwrap().plan(&cfg).unwrap();
    let layer = RuleLayer::<f32, Cpu>::new(plan, &Init::random(&dev, 0)).unwrap();
    let scale = (dim_head as f64).powf(-0.5);
    let mut group = c.benchmark_group("rule_vs_hand/taylor");
    group.sample_size(20);
    for n in [16, 32, 64] {
        let mask = GraphMask::from_lengths(n, &[n, n - n / 4]).unwrap();
        let nodes = dev.tensor_from_vec(random(b * n * dim, 1), (b, n, dim));
        let edges = dev.tensor_from_vec(random(b * n * n * de, 2), (b, n, n, de));
        let inputs = || {
            (
                Nodes::new(nodes.leaky_trace()),
                Edges::new(edges.clone().retaped::<Tp>()).unwrap(),
            )
        };
        let run_rule = || {
            let (x, e) = inputs();
            let (x, e) = layer.forward(x, e, &mask).unwrap();
            (x.into_tensor().sum::<(), _>() + e.into_tensor().sum::<(), _>()).backward()
        };
        let run_hand = || {
            let (x, e) = inputs();
            let (x, e) = taylor_by_hand(
                &layer,
                x,
                e,
                &mask,
                heads,
                dim_head,
                edge_heads,
                edge_dim_head,
                scale,
            )
            .unwrap();
            (x.into_tensor().sum::<(), _>() + e.into_tensor().sum::<(), _>()).backward()
        };
        // the two compute the same thing (same parameters, same inputs)
        let (x1, e1) = layer
            .forward(
                Nodes::new(nodes.clone()),
                Edges::new(edges.clone()).unwrap(),
                &mask,
            )
            .unwrap();
        let (x2, e2) = taylor_by_hand(
            &layer,
            Nodes::new(nodes.clone()),
            Edges::new(edges.clone()).unwrap(),
            &mask,
            heads,
            dim_head,
            edge_heads,
            edge_dim_head,
            scale,
        )
        .unwrap();
        let diff = |a: Vec<f32>, b: Vec<f32>| {
            a.iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max)
        };
        assert!(diff(x1.into_tensor().as_vec(), x2.into_tensor().as_vec()) < 1e-4);
        assert!(diff(e1.into_tensor().as_vec(), e2.into_tensor().as_vec()) < 1e-4);
        group.bench_with_input(BenchmarkId::new("rule", n), &n, |bch, _| bch.iter(run_rule));
        group.bench_with_input(BenchmarkId::new("hand", n), &n, |bch, _| bch.iter(run_hand));
    }
    group.finish();
}

fn path_fused_vs_by_hand(c: &mut Criterion) {
    quartic::threads::include_calling_thread();
    let dev = Cpu::default();
    let (fused, by_hand) = path_by_hand::layers::<f32>(&dev, 16, 4, 8, false, 0);
    let mut group = c.benchmark_group("path_attention");
    group.sample_size(10);
    for n in [16, 32] {
        let mask = GraphMask::full(1, n);
        let nodes = dev.tensor_from_vec(random(n * 8, 1), (1, n, 8));
        let edges = dev.tensor_from_vec(random(n * n * 16, 2), (1, n, n, 16));
        let run = |layer: &RuleLayer<f32, Cpu>| forward_backward(layer, &nodes, &edges, &mask);
        group.bench_with_input(BenchmarkId::new("fused", n), &n, |bch, _| {
            bch.iter(|| run(&fused))
        });
        group.bench_with_input(BenchmarkId::new("by_hand", n), &n, |bch, _| {
            bch.iter(|| run(&by_hand))
        });
    }
    group.finish();
}

/// One `strassen_gated` layer (dim 64, 4 heads × 16, ff_mult 2), 8 graphs of n nodes with a
/// quarter of them padded in half the graphs (a shard of match3's training batch), forward +
/// backward.
fn strassen_gated_layer(c: &mut Criterion) {
    quartic::threads::include_calling_thread();
    let dev = Cpu::default();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/rules/strassen_gated.rule"
    );
    let rule = Rule::load(path).unwrap();
    let num = |k: &str, v: usize| (k.to_string(), Const::Num(v as f64));
    let cfg = RuleConfig {
        dim: 64,
        dim_edges: 16,
        causal: false,
        overrides: vec![num("heads", 4), num("dim_head", 16), num("ff_mult", 2)],
    };
    let layer =
        RuleLayer::<f32, Cpu>::new(rule.plan(&cfg).unwrap(), &Init::random(&dev, 0)).unwrap();
    let b = 8;
    let mut group = c.benchmark_group("strassen_gated");
    group.sample_size(10);
    for n in [16, 32] {
        let lengths: Vec<usize> = (0..b)
            .map(|g| if g % 2 == 0 { n } else { n - n / 4 })
            .collect();
        let mask = GraphMask::from_lengths(n, &lengths).unwrap();
        let nodes = dev.tensor_from_vec(random(b * n * 64, 1), (b, n, 64));
        let edges = dev.tensor_from_vec(random(b * n * n * 16, 2), (b, n, n, 16));
        group.bench_with_input(BenchmarkId::new("layer", n), &n, |bch, _| {
            bch.iter(|| forward_backward(&layer, &nodes, &edges, &mask))
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    rule_vs_hand,
    path_fused_vs_by_hand,
    strassen_gated_layer
);
criterion_main!(benches);
