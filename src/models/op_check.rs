//! A device's ops against the CPU's: each backend op (attention weights, attention, Taylor
//! attention in both forms, plain attention in the four edge patterns, routing, the norms, the
//! feedforward, linear), plain, padded and causal, runs one forward and backward pass on the
//! device and on the CPU from the same inputs; the outputs and the gradients of every input
//! must agree as in [`super::self_check`]. On the CPU, the fused kernels run against the path a
//! GPU takes (the composite forms, routing picking on the device). `quartic check --ops
//! [--device D]` prints it.

use std::time::Instant;

use dfdx::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::self_check::{held_to, Comparison, Pass};
use crate::backend::{cpu_fused, set_cpu_fused, Backend};
use crate::error::Result;
use crate::graph::GraphMask;
use crate::ops::attention::{attend, AttendInputs};
use crate::ops::routing::{picking_on_device, route, soft_topk_padded, CoorDescent};
use crate::ops::taylor::{taylor_attend, TaylorForm};
use crate::ops::weights::{weights, Normalizer, Visibility, WeightsSpec};
use crate::ops::{affine, feedforward, norms, patterns};
use crate::spec::{EdgePattern, FeedForwardParams, RmsKind};
use crate::tensor::*;

/// Which keys the check's problems hide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Masking {
    /// None.
    Plain,
    /// The last node of the second graph is padding.
    Padded,
    /// Padded, and causal.
    Causal,
}

/// The element type an op runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// f32, as models train.
    F32,
    /// f64: for an op whose f32 result carries rounding amplified past the tolerance
    /// (routing's 20 unrolled steps of coordinate descent), so that the devices' agreement
    /// shows what they compute rather than how each rounds.
    F64,
}

/// An op under test.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Op {
    /// `ops::weights` with its normalizer.
    Weights(Normalizer, Masking),
    /// `ops::attention::attend`, softmax.
    Attend(Masking),
    /// `ops::attention::attend`, softmax, with an additive bias.
    AttendBiased(Masking),
    /// `ops::attention::attend` with a bias over 100 queries and keys (more than one block of
    /// a GPU kernel's rows and tiles), heads 24 (queries, keys) and 40 (values) wide.
    AttendLong(Normalizer, Masking),
    /// `ops::taylor::taylor_attend` in one form.
    Taylor(TaylorForm, Masking),
    /// `ops::patterns::pattern_attention` over edges, softmax.
    Pattern(EdgePattern, Masking),
    /// `ops::routing`: soft top-k, then routing a linear block.
    Routing,
    /// `ops::norms::rms_norm`.
    RmsNorm,
    /// `ops::norms::layer_norm`.
    LayerNorm,
    /// `ops::feedforward::feedforward`.
    FeedForward,
    /// `ops::affine::linear` with a bias.
    Linear,
}

/// Graphs, heads, nodes, channels per head (queries and keys), channels per head (values).
const B: usize = 2;
const H: usize = 2;
const N: usize = 5;
const DK: usize = 4;
const DV: usize = 3;
/// Queries and keys of [`Op::AttendLong`], and its heads' widths.
const LONG: usize = 100;
const LONG_DK: usize = 24;
const LONG_DV: usize = 40;

/// Every op the check runs, with its name and element type.
pub fn ops() -> Vec<(String, Op, Precision)> {
    let maskings = [Masking::Plain, Masking::Padded, Masking::Causal];
    let mut out: Vec<(String, Op)> = Vec::new();
    let name = |op: &str, m: Masking| format!("{op} {}", format!("{m:?}").to_lowercase());
    for m in maskings {
        out.push((
            name("weights softmax", m),
            Op::Weights(Normalizer::Softmax, m),
        ));
        let taylor = Normalizer::Taylor { eps: 1e-6 };
        out.push((name("weights taylor", m), Op::Weights(taylor, m)));
        out.push((name("attend", m), Op::Attend(m)));
        out.push((name("attend biased", m), Op::AttendBiased(m)));
        out.push((
            name("attend long softmax", m),
            Op::AttendLong(Normalizer::Softmax, m),
        ));
        out.push((name("attend long taylor", m), Op::AttendLong(taylor, m)));
        out.push((name("taylor direct", m), Op::Taylor(TaylorForm::Direct, m)));
        out.push((
            name("taylor feature", m),
            Op::Taylor(TaylorForm::Feature, m),
        ));
        for p in [
            EdgePattern::All,
            EdgePattern::Row,
            EdgePattern::Column,
            EdgePattern::Diagonal,
        ] {
            let pattern = format!("edges {}", format!("{p:?}").to_lowercase());
            out.push((name(&pattern, m), Op::Pattern(p, m)));
        }
    }
    out.push(("routing".into(), Op::Routing));
    out.push(("rms norm".into(), Op::RmsNorm));
    out.push(("layer norm".into(), Op::LayerNorm));
    out.push(("feedforward".into(), Op::FeedForward));
    out.push(("linear".into(), Op::Linear));
    let mut cases: Vec<_> = out
        .into_iter()
        .map(|(n, op)| (n, op, Precision::F32))
        .collect();
    // last, so that every other case keeps its seed (its position)
    cases.push(("routing f64".into(), Op::Routing, Precision::F64));
    cases
}

/// The graph mask of `m` over B graphs of N nodes.
fn graph_mask(m: Masking) -> Result<GraphMask> {
    let valid = (0..B * N)
        .map(|i| !(m != Masking::Plain && i == B * N - 1))
        .collect();
    Ok(GraphMask::from_valid(B, N, valid)?.causal(m == Masking::Causal))
}

/// Node attention's visibility under `m`: B problems of N queries and N keys.
fn node_visibility(m: Masking) -> Result<Visibility> {
    let mut vis = Visibility::all(B, N, N);
    if m != Masking::Plain {
        vis = vis.with_key_valid((0..B * N).map(|i| i != B * N - 1).collect())?;
    }
    if m == Masking::Causal {
        vis = vis.with_sequence_causality()?;
    }
    Ok(vis)
}

/// [`Op::AttendLong`]'s visibility under `m`: B problems of [`LONG`] queries and keys, the
/// second's last 7 keys padding.
fn long_visibility(m: Masking) -> Result<Visibility> {
    let mut vis = Visibility::all(B, LONG, LONG);
    if m != Masking::Plain {
        vis = vis.with_key_valid((0..B * LONG).map(|i| i < B * LONG - 7).collect())?;
    }
    if m == Masking::Causal {
        vis = vis.with_sequence_causality()?;
    }
    Ok(vis)
}

/// The inputs' names and lengths.
fn inputs(op: Op) -> Vec<(&'static str, usize)> {
    let (rows, c, hidden) = (6, 8, 12);
    match op {
        Op::Weights(..) => vec![("q", B * H * N * DK), ("k", B * H * N * DK)],
        Op::Attend(_) | Op::Taylor(..) => {
            vec![
                ("q", B * H * N * DK),
                ("k", B * H * N * DK),
                ("v", B * H * N * DV),
            ]
        }
        Op::AttendBiased(_) => vec![
            ("q", B * H * N * DK),
            ("k", B * H * N * DK),
            ("v", B * H * N * DV),
            ("bias", B * H * N * N),
        ],
        Op::AttendLong(..) => vec![
            ("q", B * H * LONG * LONG_DK),
            ("k", B * H * LONG * LONG_DK),
            ("v", B * H * LONG * LONG_DV),
            ("bias", B * H * LONG * LONG),
        ],
        Op::Pattern(..) => vec![
            ("q", B * N * N * H * DK),
            ("k", B * N * N * H * DK),
            ("v", B * N * N * H * DV),
        ],
        Op::Routing => vec![("scores", 3 * 10), ("x", 3 * 10 * 4), ("w", 4 * 4)],
        Op::RmsNorm => vec![("x", rows * c), ("gamma", c)],
        Op::LayerNorm => vec![("x", rows * c), ("weight", c), ("bias", c)],
        Op::FeedForward => vec![
            ("x", rows * c),
            ("gamma", c),
            ("w_in", hidden * c),
            ("w_out", c * hidden),
        ],
        Op::Linear => vec![("x", rows * c), ("w", hidden * c), ("b", hidden)],
    }
}

type Tp<E, D> = OwnedTape<E, D>;

/// `op` on `xs` (one flat tensor per input, in [`inputs`]' order), its output flattened.
fn run<E: Real, D: Backend<E>>(op: Op, xs: Vec<T1<E, D, Tp<E, D>>>) -> Result<T1<E, D, Tp<E, D>>> {
    let mut xs = xs.into_iter();
    let mut next = || xs.next().expect("one tensor per input");
    let flat = |t: T4<E, D, Tp<E, D>>| {
        let len = t.shape().num_elements();
        t.reshape_like(&(len,))
    };
    let heads = |x: T1<E, D, Tp<E, D>>, d: usize| x.reshape_like(&(B, H, N, d));
    let edges = |x: T1<E, D, Tp<E, D>>, d: usize| x.reshape_like(&(B, N, N, H * d));
    let (rows, c, hidden) = (6, 8, 12);
    Ok(match op {
        Op::Weights(normalizer, m) => {
            let spec = WeightsSpec {
                scale: 0.5,
                normalizer,
                visibility: node_visibility(m)?,
            };
            let (q, k) = (heads(next(), DK), heads(next(), DK));
            flat(weights(q, k, None, None, &spec)?)
        }
        Op::Attend(m) => {
            let spec = WeightsSpec {
                scale: 0.5,
                normalizer: Normalizer::Softmax,
                visibility: node_visibility(m)?,
            };
            let (q, k, v) = (heads(next(), DK), heads(next(), DK), heads(next(), DV));
            flat(attend(q, k, v, AttendInputs::default(), &spec, false)?.out)
        }
        Op::AttendBiased(m) => {
            let spec = WeightsSpec {
                scale: 0.5,
                normalizer: Normalizer::Softmax,
                visibility: node_visibility(m)?,
            };
            let (q, k, v) = (heads(next(), DK), heads(next(), DK), heads(next(), DV));
            let inputs = AttendInputs {
                bias: Some(next().reshape_like(&(B, H, N, N))),
                ..AttendInputs::default()
            };
            flat(attend(q, k, v, inputs, &spec, false)?.out)
        }
        Op::AttendLong(normalizer, m) => {
            let spec = WeightsSpec {
                scale: 0.3,
                normalizer,
                visibility: long_visibility(m)?,
            };
            let long = |x: T1<E, D, Tp<E, D>>, d: usize| x.reshape_like(&(B, H, LONG, d));
            let (q, k, v) = (
                long(next(), LONG_DK),
                long(next(), LONG_DK),
                long(next(), LONG_DV),
            );
            let inputs = AttendInputs {
                bias: Some(next().reshape_like(&(B, H, LONG, LONG))),
                ..AttendInputs::default()
            };
            flat(attend(q, k, v, inputs, &spec, false)?.out)
        }
        Op::Taylor(form, m) => {
            let (q, k, v) = (heads(next(), DK), heads(next(), DK), heads(next(), DV));
            flat(taylor_attend(
                q,
                k,
                v,
                0.5,
                1e-6,
                &node_visibility(m)?,
                form,
            )?)
        }
        Op::Pattern(pattern, m) => {
            let spec = WeightsSpec {
                scale: 0.5,
                normalizer: Normalizer::Softmax,
                visibility: patterns::pattern_visibility(pattern, &graph_mask(m)?)?,
            };
            let (q, k, v) = (edges(next(), DK), edges(next(), DK), edges(next(), DV));
            flat(patterns::pattern_attention(
                q, k, v, H, pattern, None, &spec,
            )?)
        }
        Op::Routing => {
            let (r, l, ch) = (3, 10, 4);
            let scores = next().reshape_like(&(r, l)) * E::of(3.0);
            let x = next().reshape_like(&(r, l, ch));
            let w = next().reshape_like(&(ch, ch));
            // the second row has only four selectable positions (padded up to k)
            let mask: Vec<bool> = (0..r * l).map(|i| i / l != 1 || i % l < 4).collect();
            let picks = soft_topk_padded(scores, 6, 1.125, Some(&mask), &CoorDescent::default())?;
            let out = route(x, picks, |picked| {
                let k = picked.shape().1;
                Ok(picked
                    .matmul(w.broadcast_like::<_, Axis<0>>(&(r, ch, ch)))
                    .reshape_like(&(r, k, ch)))
            })?;
            out.reshape_like(&(r * l * ch,))
        }
        Op::RmsNorm => {
            let (x, g) = (next().reshape_like(&(rows, c)), next());
            norms::rms_norm(x, g, RmsKind::Scaled { eps: 1e-5 })?.reshape_like(&(rows * c,))
        }
        Op::LayerNorm => {
            let (x, w, b) = (next().reshape_like(&(rows, c)), next(), next());
            norms::layer_norm(x, w, b, 1e-5)?.reshape_like(&(rows * c,))
        }
        Op::FeedForward => {
            let x = next().reshape_like(&(rows, c));
            let p = FeedForwardParams {
                gamma: next(),
                w_in: next().reshape_like(&(hidden, c)),
                w_out: next().reshape_like(&(c, hidden)),
                kind: RmsKind::Scaled { eps: 1e-5 },
            };
            feedforward::feedforward(x, p)?.reshape_like(&(rows * c,))
        }
        Op::Linear => {
            let x = next().reshape_like(&(rows, c));
            let w = next().reshape_like(&(hidden, c));
            affine::linear(x, w, Some(next()))?.reshape_like(&(rows * hidden,))
        }
    })
}

/// One forward and backward pass of `op` on `dev` from `values` (in E), the loss a fixed
/// random weighting of the output (drawn from `seed`, so every device weighs alike).
fn pass<E: Real, D: Backend<E>>(dev: &D, op: Op, values: &[Vec<f32>], seed: u64) -> Result<Pass> {
    let start = Instant::now();
    let widen = |v: &[f32]| v.iter().map(|&x| E::of(f64::from(x))).collect::<Vec<E>>();
    let leaves: Vec<T1<E, D>> = values
        .iter()
        .map(|v| constant(dev, widen(v), (v.len(),)))
        .collect::<Result<_>>()?;
    let out = run(op, leaves.iter().map(|l| l.leaky_trace()).collect())?;
    let len = out.shape().0;
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let weights: Vec<f32> = (0..len).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let probe: T1<E, D> = constant(dev, widen(&weights), (len,))?;
    // compared in f32: an f64 pass rounds its results once, at the end
    let narrow = |v: Vec<E>| {
        v.into_iter()
            .map(|x| x.as_f64() as f32)
            .collect::<Vec<f32>>()
    };
    let output = narrow(host::values(&out.retaped::<NoneTape>()));
    let grads = (out * probe).sum().backward();
    let gradients = inputs(op)
        .iter()
        .zip(&leaves)
        .map(|((name, _), leaf)| (name.to_string(), narrow(host::values(&grads.get(leaf)))))
        .collect();
    Ok(Pass {
        logits: output,
        gradients,
        ms: start.elapsed().as_secs_f64() * 1e3,
    })
}

/// The inputs of `op`, drawn from `seed`.
fn values(op: Op, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    inputs(op)
        .iter()
        .map(|&(_, len)| (0..len).map(|_| rng.gen_range(-1.0..1.0)).collect())
        .collect()
}

/// `op` on `dev` against the CPU (its default, fused forms), in `precision`, from the same
/// inputs drawn from `seed`.
pub fn compare_op_on<D: Backend<f32> + Backend<f64>>(
    dev: &D,
    name: &str,
    op: Op,
    precision: Precision,
    seed: u64,
) -> Result<Comparison> {
    let values = values(op, seed);
    let cpu = Cpu::default();
    Ok(match precision {
        Precision::F32 => {
            let tested = pass::<f32, D>(dev, op, &values, seed)?;
            let reference = pass::<f32, Cpu>(&cpu, op, &values, seed)?;
            // how far the CPU's own f32 result is from its f64 one on these inputs: two
            // devices that each round as much may differ by up to twice that
            let exact = pass::<f64, Cpu>(&cpu, op, &values, seed)?;
            let rounding = held_to(name, reference.clone(), exact);
            held_to(name, tested, reference).allowing_rounding(rounding.worst())
        }
        Precision::F64 => held_to(
            name,
            pass::<f64, D>(dev, op, &values, seed)?,
            pass::<f64, Cpu>(&cpu, op, &values, seed)?,
        ),
    })
}

/// On the CPU: `op` with the fused kernels against the path a GPU takes, the composite forms
/// with routing's top-k picked by tensor ops, in `precision`, from the same inputs drawn from
/// `seed`.
pub fn compare_op(name: &str, op: Op, precision: Precision, seed: u64) -> Result<Comparison> {
    let values = values(op, seed);
    let dev = Cpu::default();
    let once = || match precision {
        Precision::F32 => pass::<f32, Cpu>(&dev, op, &values, seed),
        Precision::F64 => pass::<f64, Cpu>(&dev, op, &values, seed),
    };
    let was = cpu_fused();
    set_cpu_fused(true);
    let fused = once();
    set_cpu_fused(false);
    let composite = picking_on_device(once);
    set_cpu_fused(was);
    Ok(held_to(name, fused?, composite?))
}
