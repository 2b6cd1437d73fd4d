//! A self-test of a device: every built-in rule's model (causal and not, with padding, edge
//! inputs and an edge head) and the multi-stream model run one forward and backward pass twice,
//! and the logits and every parameter's gradient must agree. On the CPU ([`compare`]) the two
//! passes are the fused kernels and the composite forms built from dfdx ops; on another device
//! ([`compare_on`]) they are that device and the CPU, with the same weights and inputs.
//! `quartic check [--device D]` prints it.

use std::time::Instant;

use dfdx::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{GraphConfig, GraphInputs, Model, ModelConfig, MultiStreamConfig, Readout, TaskIo};
use crate::backend::{cpu_fused, set_cpu_fused, Backend};
use crate::error::Result;
use crate::nn::{HasParams, Init};
use crate::rules::{Rule, BUILTINS};
use crate::tensor::{device_err, host};

/// Largest allowed difference, relative to the largest magnitude of the composite tensor (for a
/// gradient, at least `GRADIENT_FLOOR` of the model's largest): the two forms sum in
/// different orders (and the fused one uses a vectorized `exp`), in f32.
pub const TOLERANCE: f64 = 1e-4;

/// One model run both ways: the form or device tested, and the reference it is held to.
#[derive(Clone, Debug)]
pub struct Comparison {
    /// The model's name.
    pub model: String,
    /// The worst relative difference over the logits.
    pub logits: f64,
    /// The worst relative difference over the parameters' gradients, and the parameter.
    pub gradients: (f64, String),
    /// Milliseconds of the tested forward and backward (the fused CPU kernels, or the device).
    pub tested_ms: f64,
    /// Milliseconds of the reference's (the composite CPU forms, or the CPU).
    pub reference_ms: f64,
    /// How far the reference's own f32 result lies from its f64 one, where measured (see
    /// [`Comparison::allowing_rounding`]).
    pub rounding: Option<f64>,
}

impl Comparison {
    /// Whether logits and gradients agree within the tolerance.
    pub fn passes(&self) -> bool {
        self.worst() <= self.tolerance()
    }

    /// The larger of the logits' and the gradients' differences (NaN if either is: `f64::max`
    /// would pass over it).
    pub fn worst(&self) -> f64 {
        if self.logits.is_nan() || self.gradients.0.is_nan() {
            return f64::NAN;
        }
        self.logits.max(self.gradients.0)
    }

    /// [`TOLERANCE`], or twice the reference's own rounding where that is larger.
    pub fn tolerance(&self) -> f64 {
        self.rounding.map_or(TOLERANCE, |r| TOLERANCE.max(2.0 * r))
    }

    /// The same comparison, held to twice `rounding` where that exceeds [`TOLERANCE`]:
    /// `rounding` is how far the reference's f32 result lies from its f64 one on the same
    /// inputs, so a device that rounds no worse differs from it by at most twice that. For
    /// inputs where f32 rounding is amplified past the tolerance (a near tie in routing's
    /// coordinate descent); what each device computes is then shown by the same op in f64.
    pub fn allowing_rounding(self, rounding: f64) -> Self {
        Self {
            rounding: Some(rounding),
            ..self
        }
    }
}

/// The models the check runs, with `n` nodes: each built-in rule without and with causality
/// (`taylor` also with four residual streams), then the multi-stream model.
pub fn models(n: usize) -> Result<Vec<(String, ModelConfig)>> {
    let mut out = Vec::new();
    for (rule, _) in BUILTINS {
        let rule_params = Rule::builtin(rule)?.declared_values(&[
            ("heads", 2.0),
            ("dim_head", 8.0),
            ("edge_heads", 2.0),
            ("edge_dim_head", 4.0),
            ("hidden", 8.0),
            ("ff_mult", 2.0),
            ("picks", (n * n / 2).max(1) as f64),
        ]);
        for causal in [false, true] {
            let config = GraphConfig {
                residual_streams: 1,
                num_tokens: 7,
                dim: 16,
                dim_edges: 8,
                depth: 2,
                rule: rule.to_string(),
                rule_params: rule_params.clone(),
                causal,
                max_seq_len: n,
                absolute_positions: true,
                position_bias: true,
                final_norm: Some(1e-5),
                io: TaskIo {
                    edge_vocab: 3,
                    edge_classes: 2,
                    pool_edges: true,
                    ..TaskIo::default()
                },
            };
            let name = format!("{rule}{}", if causal { ", causal" } else { "" });
            if rule == "taylor" && !causal {
                // the original's default: the node branches in hyper-connections
                let mut hyper = config.clone();
                hyper.residual_streams = 4;
                out.push((
                    "taylor, 4 residual streams".into(),
                    ModelConfig::Graph(hyper),
                ));
            }
            out.push((name, ModelConfig::Graph(config)));
        }
    }
    let streams = MultiStreamConfig {
        num_tokens: 7,
        dim: 16,
        depth: 2,
        num_streams: 2,
        dim_head: 4,
        heads: 2,
        max_seq_len: n,
        ff_mult: 2.0,
        ablate_cross_stream_talking_heads: false,
        pre_talking_heads: true,
        post_talking_heads: true,
        separate_stream_emb: true,
        non_linear_talking_heads: true,
        causal: true,
        reference_scale: false,
        diversity_loss: true,
        reference_diversity: false,
    };
    out.push(("multi-stream".into(), ModelConfig::MultiStream(streams)));
    Ok(out)
}

/// The logits and every parameter's gradient of one pass, and its time.
#[derive(Clone)]
pub(super) struct Pass {
    /// The output's values (a model's logits, an op's output).
    pub(super) logits: Vec<f32>,
    /// Each gradient asked for, by name.
    pub(super) gradients: Vec<(String, Vec<f32>)>,
    /// Milliseconds of the forward and backward pass.
    pub(super) ms: f64,
}

fn pass<D: Backend<f32>>(model: &Model<f32, D>, input: &Input) -> Result<Pass> {
    let start = Instant::now();
    let inputs = GraphInputs {
        edge_tokens: input.edge_tokens.as_deref(),
        ..GraphInputs::tokens(&input.tokens, input.b, input.n, Some(&input.valid))
    };
    let out = model.forward_io::<OwnedTape<f32, D>>(&inputs, input.readout)?;
    let logits = host::values(&out.logits);
    // a fixed random projection of the logits, so that every logit's gradient counts
    let weights = model_weights(out.logits.device(), out.logits.shape(), input.seed);
    let mut loss = (out.logits * weights).sum::<(), _>();
    if let Some(aux) = out.aux {
        loss = loss + aux;
    }
    let mut grads = loss.backward();
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let mut gradients = Vec::new();
    for p in model.params() {
        // a parameter the pass does not reach (the node head under an edge readout) gets zeros
        grads.get_or_alloc_mut(&p.value).map_err(device_err)?;
        gradients.push((p.name.clone(), host::values(&grads.get(&p.value))));
    }
    Ok(Pass {
        logits,
        gradients,
        ms,
    })
}

fn model_weights<D: Device<f32>>(
    dev: &D,
    shape: &(usize, usize, usize),
    seed: u64,
) -> Tensor<(usize, usize, usize), f32, D> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let len = shape.0 * shape.1 * shape.2;
    dev.tensor_from_vec((0..len).map(|_| rng.gen_range(-1.0..1.0)).collect(), *shape)
}

/// A random batch of two graphs, the second padded.
struct Input {
    tokens: Vec<usize>,
    edge_tokens: Option<Vec<usize>>,
    valid: Vec<bool>,
    b: usize,
    n: usize,
    readout: Readout,
    seed: u64,
}

fn input(config: &ModelConfig, n: usize, seed: u64) -> Input {
    let mut rng = StdRng::seed_from_u64(seed);
    let b = 2;
    let tokens = (0..b * n)
        .map(|_| rng.gen_range(0..config.num_tokens()))
        .collect();
    let valid = (0..b * n).map(|p| p < n || p % n < n - n / 4).collect();
    let (edge_tokens, readout) = match config {
        ModelConfig::Graph(g) if g.io.edge_vocab > 0 => (
            Some(
                (0..b * n * n)
                    .map(|_| rng.gen_range(0..g.io.edge_vocab))
                    .collect(),
            ),
            Readout::Edges,
        ),
        ModelConfig::Graph(_) | ModelConfig::MultiStream(_) => (None, Readout::Nodes),
    };
    Input {
        tokens,
        edge_tokens,
        valid,
        b,
        n,
        readout,
        seed,
    }
}

/// `max |a − b| / max(max |b|, floor)`: relative to the tensor's own scale, but never to less
/// than `floor` (a gradient that is zero in exact arithmetic, such as that of a bias added to
/// every score of a softmax, is rounding noise in both forms). NaN anywhere is infinitely far.
fn relative_difference(a: &[f32], b: &[f32], floor: f64) -> f64 {
    let mut worst = 0f64;
    for (&x, &y) in a.iter().zip(b) {
        let d = (x as f64 - y as f64).abs();
        if !d.is_finite() {
            return f64::INFINITY;
        }
        worst = worst.max(d);
    }
    if worst == 0.0 {
        return 0.0;
    }
    worst / largest(b).max(floor).max(f64::MIN_POSITIVE)
}

fn largest(x: &[f32]) -> f64 {
    x.iter().fold(0f64, |m, &v| m.max((v as f64).abs()))
}

/// The floor of a gradient's scale, relative to the model's largest gradient.
const GRADIENT_FLOOR: f64 = 1e-2;

/// Runs `config` on `n` nodes with the fused kernels and with the composite forms.
pub fn compare(name: &str, config: &ModelConfig, n: usize, seed: u64) -> Result<Comparison> {
    let model = Model::<f32, Cpu>::new(config, None, &Init::random(&Cpu::default(), seed))?;
    let input = input(config, n, seed);
    let was = cpu_fused();
    set_cpu_fused(true);
    let fused = pass(&model, &input);
    set_cpu_fused(false);
    let composite = pass(&model, &input);
    set_cpu_fused(was);
    Ok(held_to(name, fused?, composite?))
}

/// Runs `config` on `n` nodes on `dev` and on the CPU (its default, fused forms), with the
/// same weights (drawn on the host from `seed`) and the same inputs.
pub fn compare_on<D: Backend<f32>>(
    dev: &D,
    name: &str,
    config: &ModelConfig,
    n: usize,
    seed: u64,
) -> Result<Comparison> {
    let input = input(config, n, seed);
    let tested = Model::<f32, D>::new(config, None, &Init::random(dev, seed))?;
    let tested = pass(&tested, &input)?;
    let cpu = Model::<f32, Cpu>::new(config, None, &Init::random(&Cpu::default(), seed))?;
    let reference = pass(&cpu, &input)?;
    Ok(held_to(name, tested, reference))
}

/// The worst differences of `tested` from `reference`.
pub(super) fn held_to(name: &str, tested: Pass, reference: Pass) -> Comparison {
    let floor = GRADIENT_FLOOR
        * reference
            .gradients
            .iter()
            .fold(0f64, |m, (_, g)| m.max(largest(g)));
    let mut gradients = (0f64, String::new());
    for ((p, t), (_, r)) in tested.gradients.iter().zip(&reference.gradients) {
        let d = relative_difference(t, r, floor);
        if d > gradients.0 || gradients.1.is_empty() {
            gradients = (d, p.clone());
        }
    }
    Comparison {
        model: name.to_string(),
        logits: relative_difference(&tested.logits, &reference.logits, 0.0),
        gradients,
        tested_ms: tested.ms,
        reference_ms: reference.ms,
        rounding: None,
    }
}

#[cfg(test)]
mod tests {
    use super::{relative_difference, Comparison, TOLERANCE};

    #[test]
    fn a_comparison_is_held_to_twice_the_references_rounding_only_where_that_is_larger() {
        let c = |logits: f64, gradient: f64| Comparison {
            model: "op".into(),
            logits,
            gradients: (gradient, "x".into()),
            tested_ms: 0.0,
            reference_ms: 0.0,
            rounding: None,
        };
        assert!(c(1e-5, 9e-5).passes());
        assert!(!c(1e-5, 2e-4).passes());
        assert!(!c(2e-4, 1e-5).passes());
        // rounding of 2e-4: held to 4e-4
        assert!(c(1e-5, 3e-4).allowing_rounding(2e-4).passes());
        assert!(!c(1e-5, 5e-4).allowing_rounding(2e-4).passes());
        assert!(!c(5e-4, 1e-5).allowing_rounding(2e-4).passes());
        // small rounding never loosens the tolerance below its floor, nor tightens it
        assert_eq!(c(0.0, 0.0).allowing_rounding(1e-7).tolerance(), TOLERANCE);
        assert!(c(0.0, 9e-5).allowing_rounding(1e-7).passes());
        // NaN never passes
        assert!(!c(f64::NAN, 0.0).allowing_rounding(2e-4).passes());
    }

    #[test]
    fn differences_are_relative_to_the_scale_and_nan_is_infinitely_far() {
        assert_eq!(relative_difference(&[1.0, 2.0], &[1.0, 2.0], 0.0), 0.0);
        assert!((relative_difference(&[1.0, 4.1], &[1.0, 4.0], 0.0) - 0.025).abs() < 1e-6);
        // a tensor that is noise around zero is measured against the floor
        assert!(relative_difference(&[1e-9], &[-1e-9], 1e-2) < 1e-6);
        assert!(relative_difference(&[1e-9], &[-1e-9], 0.0) > 1.0);
        assert_eq!(
            relative_difference(&[f32::NAN], &[f32::NAN], 1.0),
            f64::INFINITY
        );
    }
}
