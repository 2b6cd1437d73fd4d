//! Test helpers: seeded random data, tolerant comparison, and a central finite-difference
//! gradient check in f64.

use dfdx::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub type Tp = OwnedTape<f64, Cpu>;
pub type In = Tensor<(usize,), f64, Cpu, Tp>;
pub type Loss = Tensor<(), f64, Cpu, Tp>;

pub fn dev() -> Cpu {
    Cpu::seed_from_u64(0)
}

pub fn randn(seed: u64, len: usize) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.gen_range(-1.0..1.0)).collect()
}

/// Asserts `|a - b| <= atol + rtol·|b|` elementwise, reporting the worst entry.
pub fn assert_close(what: &str, a: &[f64], b: &[f64], atol: f64, rtol: f64) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    let mut worst = (0.0, 0usize);
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        assert!(x.is_finite(), "{what}: entry {i} is {x}");
        let excess = (x - y).abs() - (atol + rtol * y.abs());
        if excess > worst.0 {
            worst = (excess, i);
        }
    }
    let i = worst.1;
    assert!(
        worst.0 <= 0.0,
        "{what}: entry {i}: {} vs {} (|diff| {:e})",
        a[i],
        b[i],
        (a[i] - b[i]).abs()
    );
}

/// Loss of a tensor against a fixed random probe: `sum(out · probe)`, so every output entry
/// gets its own weight and no gradient cancels by symmetry.
pub fn probe_loss<S: Shape>(out: Tensor<S, f64, Cpu, Tp>, seed: u64) -> Loss {
    let shape = *out.shape();
    let probe = dev().tensor_from_vec(randn(seed, shape.num_elements()), shape);
    (out * probe).sum()
}

/// Checks the gradients of `f` at `inputs` against central differences. `f` receives each input
/// as a flat traced vector and returns a scalar loss. At most `samples` coordinates per input are
/// checked (spread over the input) to keep the test fast.
pub fn gradcheck(name: &str, inputs: &[Vec<f64>], samples: usize, f: impl Fn(Vec<In>) -> Loss) {
    let d = dev();
    let make = |vals: &[Vec<f64>]| -> (Vec<Tensor<(usize,), f64, Cpu>>, Vec<In>) {
        let plain: Vec<_> = vals
            .iter()
            .map(|v| d.tensor_from_vec(v.clone(), (v.len(),)))
            .collect();
        let traced = plain.iter().map(|t| t.leaky_trace()).collect();
        (plain, traced)
    };
    let (plain, traced) = make(inputs);
    let mut grads = f(traced).backward();
    let eval = |vals: &[Vec<f64>]| -> f64 { f(make(vals).1).array() };
    let h = 1e-5;
    for (k, input) in inputs.iter().enumerate() {
        let analytic = grad_of(&mut grads, &plain[k]);
        let step = (input.len() / samples.max(1)).max(1);
        for idx in (0..input.len()).step_by(step) {
            let mut plus = inputs.to_vec();
            plus[k][idx] += h;
            let mut minus = inputs.to_vec();
            minus[k][idx] -= h;
            let numeric = (eval(&plus) - eval(&minus)) / (2.0 * h);
            let a = analytic[idx];
            assert!(
                (a - numeric).abs() <= 1e-6 + 1e-5 * numeric.abs().max(a.abs()),
                "{name}: d/d input {k}[{idx}]: analytic {a} vs numeric {numeric}"
            );
        }
    }
}

/// The gradient of `t`, zeros when `t` did not take part in the loss.
pub fn grad_of<S: Shape>(grads: &mut Gradients<f64, Cpu>, t: &Tensor<S, f64, Cpu>) -> Vec<f64> {
    grads.get_or_alloc_mut(t).unwrap().to_vec()
}

/// Gradient check of a parameterized block: every parameter (set to random values, so identity
/// inits hide nothing) and every input, against central differences.
pub fn gradcheck_block<M: quartic::nn::HasParams<f64, Cpu>>(
    name: &str,
    build: impl Fn(&quartic::nn::Init<Cpu>) -> M,
    inputs: &[Vec<f64>],
    samples: usize,
    forward: impl Fn(&M, Vec<In>) -> Loss,
) {
    use std::collections::HashMap;
    let d = dev();
    let fresh = build(&quartic::nn::Init::random(&d, 1));
    let mut map: HashMap<String, (Vec<usize>, Vec<f64>)> = HashMap::new();
    for (k, p) in fresh.params().into_iter().enumerate() {
        map.insert(
            p.name.clone(),
            (p.dims.clone(), randn(1000 + k as u64, p.len())),
        );
    }
    let eval = |map: &HashMap<String, (Vec<usize>, Vec<f64>)>| -> f64 {
        let m = build(&quartic::nn::Init::from_map(&d, map.clone()));
        forward(
            &m,
            inputs
                .iter()
                .map(|v| d.tensor_from_vec(v.clone(), (v.len(),)).leaky_trace())
                .collect(),
        )
        .array()
    };
    let m = build(&quartic::nn::Init::from_map(&d, map.clone()));
    let mut grads = forward(
        &m,
        inputs
            .iter()
            .map(|v| d.tensor_from_vec(v.clone(), (v.len(),)).leaky_trace())
            .collect(),
    )
    .backward();
    let h = 1e-5;
    for p in m.params() {
        let analytic = grads.get_or_alloc_mut(&p.value).unwrap().to_vec();
        let step = (p.len() / samples.max(1)).max(1);
        for idx in (0..p.len()).step_by(step) {
            let mut plus = map.clone();
            plus.get_mut(&p.name).unwrap().1[idx] += h;
            let mut minus = map.clone();
            minus.get_mut(&p.name).unwrap().1[idx] -= h;
            let numeric = (eval(&plus) - eval(&minus)) / (2.0 * h);
            let a = analytic[idx];
            assert!(
                (a - numeric).abs() <= 1e-6 + 1e-5 * numeric.abs().max(a.abs()),
                "{name}: d/d {}[{idx}]: analytic {a} vs numeric {numeric}",
                p.name
            );
        }
    }
    if !inputs.is_empty() {
        gradcheck(&format!("{name} (inputs)"), inputs, samples, |x| {
            forward(&m, x)
        });
    }
}

/// A small causal multi-stream model (two streams, 2 heads × 4, talking heads on, the
/// diversity loss on).
pub fn small_multistream(
    num_tokens: usize,
    dim: usize,
    depth: usize,
) -> quartic::models::MultiStreamConfig {
    quartic::models::MultiStreamConfig {
        num_tokens,
        dim,
        depth,
        num_streams: 2,
        dim_head: 4,
        heads: 2,
        max_seq_len: 8,
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
    }
}

/// Stops a training run after `at` steps, as Ctrl-C would.
pub struct StopAt<'a> {
    pub at: usize,
    pub flag: &'a std::sync::atomic::AtomicBool,
}

impl quartic::train::trainer::Progress for StopAt<'_> {
    fn step(&mut self, r: &quartic::train::trainer::StepRecord) {
        if r.step == self.at {
            self.flag.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// Runs the `quartic` command to completion.
pub fn quartic(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_quartic"))
        .args(args)
        .output()
        .expect("the binary runs")
}

/// Bytes as text, for messages and output.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// An empty folder of the temporary directory for one test, `quartic-test-PID-NAME`: emptied
/// first (a folder left by a failed run whose process had the same id would break the test),
/// removed when the test passes, kept when it fails so that what it wrote can be read.
pub struct Scratch(std::path::PathBuf);

impl std::ops::Deref for Scratch {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for Scratch {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A [`Scratch`] folder named `name` (unique among the tests).
pub fn scratch(name: &str) -> Scratch {
    let p = std::env::temp_dir().join(format!("quartic-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    Scratch(p)
}
