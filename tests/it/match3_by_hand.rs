//! One layer with weights set by hand decides `match3` and `match3-distinct` exactly, in the
//! shape the trained models have (dim 64, 4 heads × 16, ff_mult 2), for three rules
//! (docs/experiments/match3.md):
//! - `strassen_evidence.rule` with sharp scores on a number line ("The construction, by hand";
//!   `scripts/match3_construct.py` writes the same weights as a checkpoint);
//! - `strassen_gated.rule` with uniform weights counting witnesses through Fourier coefficients
//!   ("Fourier features"), and the same weights in its quadratic control `means_gated.rule`.
//!
//! The labels they are scored against are the task's, computed by brute force over all pairs;
//! leaving out a part of each construction must cost accuracy, so the checks can fail.

use std::collections::HashMap;

use dfdx::prelude::*;
use quartic::models::{GraphConfig, Model, ModelConfig};
use quartic::nn::{HasParams, Init};
use quartic::train::tasks::Task;
use quartic::train::trainer::evaluate;

const EVIDENCE: &str = "examples/rules/strassen_evidence.rule";
const GATED: &str = "examples/rules/strassen_gated.rule";
const MEANS_GATED: &str = "examples/rules/means_gated.rule";
const DIM: usize = 64;
const HEADS: usize = 4;
const DIM_HEAD: usize = 16;
const MODULUS: usize = 37;
/// The nearest miss, (1/37)² from a witness's sum, scores −20.
const BETA: f64 = 20.0 * 37.0 * 37.0;
/// Evidence into the residual stream, small enough that the norms after it stay near 1.
const DELTA: f64 = 1e-5;
/// The steps' slope, and their threshold (between a witness's evidence, at least −6.2, and its
/// absence's, at most −20), times `DELTA`.
const SLOPE: f64 = 5e5;
const THRESHOLD: f64 = 13.0 * DELTA;
const RAMP: f64 = 10.0;
/// Channels: u = x/37, u², a constant, the norm's filler, then one per head's evidence and
/// the steps' sum.
const U: usize = 0;
const U2: usize = 1;
const ONE: usize = 2;
const FILL: usize = 3;

type Params = HashMap<String, (Vec<usize>, Vec<f64>)>;

fn source(rule: &str) -> String {
    std::fs::read_to_string(format!("{}/{rule}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn config(rule: &str) -> ModelConfig {
    ModelConfig::Graph(
        GraphConfig::builder()
            .rule(rule)
            .num_tokens(MODULUS)
            .dim(DIM)
            .depth(1)
            .max_seq_len(35)
            .param("heads", HEADS as f64)
            .param("dim_head", DIM_HEAD as f64)
            .param("ff_mult", 2.0)
            .build()
            .unwrap(),
    )
}

/// A random model's weights, to be overwritten where a construction uses them (edges and the
/// rest stay as they are, unused).
fn random(rule: &str) -> Params {
    let dev = Cpu::default();
    let model =
        Model::<f32, Cpu>::new(&config(rule), Some(&source(rule)), &Init::random(&dev, 0)).unwrap();
    model
        .params()
        .into_iter()
        .map(|q| {
            let values = q.value.as_vec().into_iter().map(f64::from).collect();
            (q.name.clone(), (q.dims.clone(), values))
        })
        .collect()
}

/// Zeroes parameter `name`, then lets `f` write it (given its dims).
fn set(p: &mut Params, name: &str, f: &dyn Fn(&[usize], &mut [f64])) {
    let (dims, values) = p
        .get_mut(name)
        .unwrap_or_else(|| panic!("no parameter {name}"));
    values.iter_mut().for_each(|v| *v = 0.0);
    f(dims, values);
}

/// Norms that pass their input through (the embeddings' rows have the norm √DIM).
fn unit_norms(p: &mut Params) {
    for norm in [
        "layers.0.x.rmsnorm0.weight",
        "layers.0.ff.feedforward0.norm.scale",
        "final_norm.weight",
    ] {
        set(p, norm, &|_, g| g.fill(1.0));
    }
}

/// The feedforward's step, (gelu(a) − gelu(a − RAMP)) / RAMP with a = `slope` · (channel
/// `input` + `threshold` · channel `ONE`), from hidden units `first` and `first + 1` into
/// channel `output` (added to what other steps write there).
fn step(p: &mut Params, first: usize, input: usize, slope: f64, threshold: f64, output: usize) {
    let (dims, w) = p
        .get_mut("layers.0.ff.feedforward0.proj_in.weight")
        .unwrap();
    let inputs = dims[1];
    for (k, shift) in [0.0, RAMP].into_iter().enumerate() {
        let unit = first + k;
        w[unit * inputs + input] = slope;
        w[unit * inputs + ONE] = slope * threshold - shift;
    }
    let (dims, w) = p
        .get_mut("layers.0.ff.feedforward0.proj_out.weight")
        .unwrap();
    let hidden = dims[1];
    w[output * hidden + first] = 1.0 / RAMP;
    w[output * hidden + first + 1] = -1.0 / RAMP;
}

/// Class 1 where channel `total` is 1 or more, class 0 where it is 0, never another.
fn read_out(p: &mut Params, total: usize) {
    set(p, "to_logits.weight", &|dims, w| {
        for class in 2..dims[0] {
            w[class * DIM + ONE] = -100.0;
        }
        (w[DIM + total], w[DIM + ONE]) = (20.0, -10.0);
    });
}

/// The hand-set weights of `strassen_evidence` for witness sums `sums` (in units of 37, one
/// head each).
fn evidence_by_hand(sums: &[f64]) -> Params {
    let mut p = random(EVIDENCE);
    let mut set = |name: &str, f: &dyn Fn(&[usize], &mut [f64])| set(&mut p, name, f);
    set("token_emb.weight", &|_, e| {
        for x in 0..MODULUS {
            let u = x as f64 / MODULUS as f64;
            let row = &mut e[x * DIM..(x + 1) * DIM];
            (row[U], row[U2], row[ONE]) = (u, u * u, 1.0);
            row[FILL] = (DIM as f64 - u * u - u.powi(4) - 1.0).sqrt();
        }
    });
    set("pos_emb.weight", &|_, _| {});
    // weights are [out, in]; head h's channel o is row h · DIM_HEAD + o
    let b = BETA * (DIM_HEAD as f64).sqrt();
    let at = |h: usize, o: usize, i: usize| (h * DIM_HEAD + o) * DIM + i;
    // f1_i = −(β/s)(2u, u² − 2cu + c²); g1, h1 the same without c²; f2, g2, h2 = (u, 1)
    for first in ["f1", "g1", "h1"] {
        set(&format!("layers.0.{first}.linear0.weight"), &|_, w| {
            for (h, &c) in sums.iter().enumerate() {
                w[at(h, 0, U)] = -2.0 * b;
                w[at(h, 1, U2)] = -b;
                w[at(h, 1, U)] = 2.0 * c * b;
                if first == "f1" {
                    w[at(h, 1, ONE)] = -c * c * b;
                }
            }
        });
    }
    for second in ["f2", "g2", "h2"] {
        set(&format!("layers.0.{second}.linear0.weight"), &|_, w| {
            for h in 0..sums.len() {
                (w[at(h, 0, U)], w[at(h, 1, ONE)]) = (1.0, 1.0);
            }
        });
    }
    for zero in ["v.linear0", "w.linear0", "attn.linear0"] {
        set(&format!("layers.0.{zero}.weight"), &|_, _| {});
    }
    let evidence = |h: usize| 4 + h;
    let total = 4 + sums.len();
    set("layers.0.attn.linear1.weight", &|_, w| {
        for h in 0..sums.len() {
            w[evidence(h) * HEADS + h] = DELTA;
        }
    });
    for name in [
        "layers.0.ff.feedforward0.proj_in.weight",
        "layers.0.ff.feedforward0.proj_out.weight",
    ] {
        set(name, &|_, _| {});
    }
    unit_norms(&mut p);
    // each head's step: a = SLOPE · (evidence + THRESHOLD)
    for h in 0..sums.len() {
        step(&mut p, 2 * h, evidence(h), SLOPE, THRESHOLD, total);
    }
    read_out(&mut p, total);
    p
}

/// The Fourier construction's residual channels: cos and sin of 2π·t·x/37 for t = 1…18 from
/// `FOURIER` on (with `ONE` and `FILL` as above), then the witness count and the step.
const FOURIER: usize = 4;
const COUNT: usize = FOURIER + MODULUS - 1;
const GATED_TOTAL: usize = COUNT + 1;
/// The count into the residual stream; the norms after it stay near 1.
const GATED_DELTA: f64 = 1e-3;
/// The count S_i = (37·N_i/n² − 1)/2 is −1/2 without a witness and at least (37/35² − 1)/2 =
/// −0.4849 with one (N_i ≥ 1 ordered pairs, n ≤ 35 values): the step sits between.
const GATED_THRESHOLD: f64 = 0.49245;
const GATED_SLOPE: f64 = 2000.0;

/// The hand-set weights of `strassen_gated` (or `means_gated`, whose two attentions return the
/// same under uniform weights) with frequencies `frequencies`: every score zero, so the pair
/// attention returns mean_j v(j) ⊙ mean_k w(k), the products of the Fourier
/// coefficients F_t = mean_j ω^(t·x_j) (ω = e^(2πi/37)), and the gate u turns them into
/// Re(ω^(t·x_i) F_t²) = cos_i (C² − S²) − sin_i · 2CS, three channels per frequency. Summed
/// over t = 1…18 that is S_i = (37·N_i/n² − 1)/2, N_i the pairs (j, k) with
/// x_i + x_j + x_k ≡ 0: positive exactly when position i has a witness.
fn gated_by_hand(rule: &str, frequencies: &[usize]) -> Params {
    let mut p = random(rule);
    let cos = |t: usize| FOURIER + 2 * (t - 1);
    let sin = |t: usize| FOURIER + 2 * (t - 1) + 1;
    set(&mut p, "token_emb.weight", &|_, e| {
        for x in 0..MODULUS {
            let row = &mut e[x * DIM..(x + 1) * DIM];
            for t in 1..=(MODULUS - 1) / 2 {
                let angle = 2.0 * std::f64::consts::PI * (t * x) as f64 / MODULUS as f64;
                (row[cos(t)], row[sin(t)]) = (angle.cos(), angle.sin());
            }
            row[ONE] = 1.0;
            row[FILL] = (DIM as f64 - 1.0 - ((MODULUS - 1) / 2) as f64).sqrt();
        }
    });
    set(&mut p, "pos_emb.weight", &|_, _| {});
    unit_norms(&mut p);
    let scores = ["f1", "f2", "g1", "g2", "h1", "h2"];
    for zero in scores.map(|s| format!("layers.0.{s}.linear0.weight")) {
        // means_gated has no h1, h2
        if p.contains_key(&zero) {
            set(&mut p, &zero, &|_, _| {});
        }
    }
    set(&mut p, "layers.0.u.linear0.bias", &|_, _| {});
    // channel 3·n + m for the n-th frequency t: m = 0 cos·cos gated by cos_i, m = 1 sin·sin
    // gated by −cos_i, m = 2 cos·sin gated by −2 sin_i; weights are [out, in]
    let channels: Vec<(usize, usize, usize, usize, f64)> = frequencies
        .iter()
        .enumerate()
        .flat_map(|(n, &t)| {
            [
                (3 * n, cos(t), cos(t), cos(t), 1.0),
                (3 * n + 1, sin(t), sin(t), cos(t), -1.0),
                (3 * n + 2, cos(t), sin(t), sin(t), -2.0),
            ]
        })
        .collect();
    assert!(channels.len() <= HEADS * DIM_HEAD, "too many frequencies");
    set(&mut p, "layers.0.v.linear0.weight", &|_, w| {
        for &(c, v, _, _, _) in &channels {
            w[c * DIM + v] = 1.0;
        }
    });
    set(&mut p, "layers.0.w.linear0.weight", &|_, w| {
        for &(c, _, wc, _, _) in &channels {
            w[c * DIM + wc] = 1.0;
        }
    });
    set(&mut p, "layers.0.u.linear0.weight", &|_, w| {
        for &(c, _, _, u, gain) in &channels {
            w[c * DIM + u] = gain;
        }
    });
    set(&mut p, "layers.0.attn.linear0.weight", &|_, w| {
        for &(c, _, _, _, _) in &channels {
            w[COUNT * HEADS * DIM_HEAD + c] = GATED_DELTA;
        }
    });
    for name in [
        "layers.0.ff.feedforward0.proj_in.weight",
        "layers.0.ff.feedforward0.proj_out.weight",
    ] {
        set(&mut p, name, &|_, _| {});
    }
    step(
        &mut p,
        0,
        COUNT,
        GATED_SLOPE / GATED_DELTA,
        GATED_THRESHOLD * GATED_DELTA,
        GATED_TOTAL,
    );
    read_out(&mut p, GATED_TOTAL);
    p
}

fn accuracy(task: &str, rule: &str, params: Params) -> f64 {
    let dev = Cpu::default();
    let init = Init::from_map(&dev, params);
    let model = Model::<f32, Cpu>::new(&config(rule), Some(&source(rule)), &init).unwrap();
    let task = Task::from_name(task, None, 0).unwrap();
    let (_, accuracy) = evaluate(&model, &task, 11, 8, 16).unwrap();
    accuracy
}

#[test]
fn strassen_evidence_by_hand_decides_match3_exactly() {
    // witnesses sum to 37 or 74, or to 0 (0 + 0 + 0, which match3 allows and match3-distinct not)
    for task in ["match3", "match3-distinct"] {
        let params = evidence_by_hand(&[1.0, 2.0, 0.0]);
        assert_eq!(accuracy(task, EVIDENCE, params), 1.0, "{task}");
    }
    // without the head for sums of 74, the witnesses that need it are missed
    let without = accuracy("match3-distinct", EVIDENCE, evidence_by_hand(&[1.0, 0.0]));
    assert!(without < 0.9, "{without}");
}

#[test]
fn gated_readouts_by_hand_count_match3_witnesses_exactly() {
    let every: Vec<usize> = (1..=(MODULUS - 1) / 2).collect();
    for rule in [GATED, MEANS_GATED] {
        for task in ["match3", "match3-distinct"] {
            let exact = accuracy(task, rule, gated_by_hand(rule, &every));
            assert_eq!(exact, 1.0, "{rule} on {task}");
        }
        // without the highest frequency the count is no longer exact
        let without = accuracy("match3-distinct", rule, gated_by_hand(rule, &every[..17]));
        assert!(without < 0.9, "{rule}: {without}");
    }
}
