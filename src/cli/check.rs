//! `quartic check [N]`: runs every edge-attention kernel forward and backward on a small random
//! graph, compares the fused CPU and composite forms, and prints timings.

use std::time::Instant;

use dfdx::prelude::*;
use quartic::graph::{Edges, GraphMask};
use quartic::kernels::cpu::fused::weights_fused;
use quartic::memory::Estimate;
use quartic::ops::patterns::{edge_attention, EdgeAttendInputs, EdgeKernel, EdgePattern};
use quartic::ops::taylor::TaylorForm;
use quartic::ops::weights::{weights_composite, Normalizer, WeightsSpec};
use rand::{Rng, SeedableRng};

use super::budget::Budget;
use super::output::say;

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Nodes per graph.
    #[arg(default_value_t = 16, value_parser = clap::value_parser!(u64).range(2..))]
    pub n: u64,
    #[command(flatten)]
    pub budget: Budget,
}

type T4 = Tensor<(usize, usize, usize, usize), f32, Cpu>;

fn random(dev: &Cpu, shape: (usize, usize, usize, usize), rng: &mut impl Rng) -> T4 {
    dev.tensor_from_vec(
        (0..shape.0 * shape.1 * shape.2 * shape.3)
            .map(|_| rng.gen_range(-1.0..1.0))
            .collect(),
        shape,
    )
}

pub fn run(args: &CheckArgs) -> quartic::Result<()> {
    let (b, channels, heads) = (2usize, 32usize, 4);
    // q, k, v, the output and the gradients of each, and the kernels' working copies: twelve
    // f32 edge tensors
    let mut estimate = Estimate::default();
    let per_edge = (b * channels * 4 * 12) as u64;
    estimate.add(
        "edge tensors",
        args.n.saturating_mul(args.n).saturating_mul(per_edge),
    );
    args.budget.check("this check", &estimate)?;
    let n = args.n as usize;
    let dev = Cpu::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mask = GraphMask::from_lengths(n, &[n, n - n / 4])?.causal(true);
    say!("graph: batch {b}, {n} nodes ({} edges each), {channels} edge channels, {heads} heads, causal, padded", n * n)?;
    let (q, k, v) = (
        random(&dev, (b, n, n, channels), &mut rng),
        random(&dev, (b, n, n, channels), &mut rng),
        random(&dev, (b, n, n, channels), &mut rng),
    );
    let kernels = [
        (
            "softmax",
            EdgeKernel::Softmax {
                scale: (8f64).powf(-0.5),
            },
        ),
        (
            "taylor",
            EdgeKernel::Taylor {
                scale: (8f64).powf(-0.5),
                eps: 1e-5,
                form: TaylorForm::Auto,
            },
        ),
    ];
    for pattern in [
        EdgePattern::All,
        EdgePattern::Row,
        EdgePattern::Column,
        EdgePattern::Diagonal,
    ] {
        for (name, kernel) in kernels {
            let start = Instant::now();
            let e = |t: &T4| Edges::new(t.clone().retaped()).expect("square");
            let out = edge_attention(
                Edges::new(q.leaky_trace())?,
                e(&k),
                e(&v),
                heads,
                pattern,
                kernel,
                EdgeAttendInputs::default(),
                &mask,
            )?;
            let values = out.tensor().as_vec();
            let grads = out.into_tensor().sum::<(), _>().backward();
            let grad_norm: f32 = grads
                .get(&q)
                .as_vec()
                .iter()
                .map(|g| g * g)
                .sum::<f32>()
                .sqrt();
            let finite = values.iter().all(|x| x.is_finite()) && grad_norm.is_finite();
            say!(
                "  {:<9} {name:<8} forward+backward {:>8.2} ms   |dq| = {grad_norm:.4}   {}",
                format!("{pattern:?}"),
                start.elapsed().as_secs_f64() * 1e3,
                if finite { "ok" } else { "NOT FINITE" }
            )?;
            if !finite {
                return Err(quartic::Error::NotFinite(format!(
                    "{pattern:?} {name}: non-finite values"
                )));
            }
        }
    }
    // fused vs composite on the node-attention problem
    let shape = (b, heads, n, 8);
    let (q, k) = (random(&dev, shape, &mut rng), random(&dev, shape, &mut rng));
    let spec = WeightsSpec {
        scale: 0.35,
        normalizer: Normalizer::Softmax,
        visibility: mask.node_visibility()?,
    };
    let fused = weights_fused(q.clone(), k.clone(), None, None, &spec)?.as_vec();
    let composite = weights_composite(q, k, None, None, &spec)?.as_vec();
    let diff = fused
        .iter()
        .zip(&composite)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    say!("fused vs composite attention weights: max |diff| = {diff:.2e}")
}
