//! One layer of `examples/rules/strassen_evidence.rule` with weights set by hand decides
//! `match3` and `match3-distinct` exactly: the construction of docs/experiments/match3.md
//! ("Why one layer can express the task"; `scripts/match3_construct.py` writes the same weights
//! as a checkpoint). The labels it is scored against are the task's, computed by brute force over
//! all pairs; leaving out one witness sum's head must cost accuracy, so the check can fail.

use std::collections::HashMap;

use dfdx::prelude::*;
use quartic::models::{GraphConfig, Model, ModelConfig};
use quartic::nn::{HasParams, Init};
use quartic::train::tasks::Task;
use quartic::train::trainer::evaluate;

const RULE: &str = "examples/rules/strassen_evidence.rule";
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

fn source() -> String {
    std::fs::read_to_string(format!("{}/{RULE}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn config() -> ModelConfig {
    ModelConfig::Graph(
        GraphConfig::builder()
            .rule(RULE)
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

/// The hand-set weights for witness sums `sums` (in units of 37, one head each), on top of a
/// random model's (edges and the rest unused).
fn by_hand(sums: &[f64]) -> Params {
    let dev = Cpu::default();
    let random =
        Model::<f32, Cpu>::new(&config(), Some(&source()), &Init::random(&dev, 0)).unwrap();
    let mut p: Params = random
        .params()
        .into_iter()
        .map(|q| {
            let values = q.value.as_vec().into_iter().map(f64::from).collect();
            (q.name.clone(), (q.dims.clone(), values))
        })
        .collect();
    let mut set = |name: &str, f: &dyn Fn(&[usize], &mut [f64])| {
        let (dims, values) = p
            .get_mut(name)
            .unwrap_or_else(|| panic!("no parameter {name}"));
        values.iter_mut().for_each(|v| *v = 0.0);
        f(dims, values);
    };
    set("token_emb.weight", &|_, e| {
        for x in 0..MODULUS {
            let u = x as f64 / MODULUS as f64;
            let row = &mut e[x * DIM..(x + 1) * DIM];
            (row[U], row[U2], row[ONE]) = (u, u * u, 1.0);
            row[FILL] = (DIM as f64 - u * u - u.powi(4) - 1.0).sqrt();
        }
    });
    set("pos_emb.weight", &|_, _| {});
    for norm in [
        "layers.0.x.rmsnorm0.weight",
        "layers.0.ff.feedforward0.norm.scale",
        "final_norm.weight",
    ] {
        set(norm, &|_, g| g.fill(1.0));
    }
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
    // each head's step (gelu(a) − gelu(a − RAMP)) / RAMP, a = SLOPE · (evidence + THRESHOLD)
    set("layers.0.ff.feedforward0.proj_in.weight", &|_, w| {
        for h in 0..sums.len() {
            for (k, shift) in [0.0, RAMP].into_iter().enumerate() {
                let unit = 2 * h + k;
                w[unit * DIM + evidence(h)] = SLOPE;
                w[unit * DIM + ONE] = SLOPE * THRESHOLD - shift;
            }
        }
    });
    set("layers.0.ff.feedforward0.proj_out.weight", &|dims, w| {
        let hidden = dims[1];
        for unit in 0..2 * sums.len() {
            let sign = if unit % 2 == 0 { 1.0 } else { -1.0 };
            w[total * hidden + unit] = sign / RAMP;
        }
    });
    // class 1 where the steps sum to 1 or more, class 0 otherwise, never another
    set("to_logits.weight", &|dims, w| {
        for class in 2..dims[0] {
            w[class * DIM + ONE] = -100.0;
        }
        (w[DIM + total], w[DIM + ONE]) = (20.0, -10.0);
    });
    p
}

fn accuracy(task: &str, sums: &[f64]) -> f64 {
    let dev = Cpu::default();
    let init = Init::from_map(&dev, by_hand(sums));
    let model = Model::<f32, Cpu>::new(&config(), Some(&source()), &init).unwrap();
    let task = Task::from_name(task, None, 0).unwrap();
    let (_, accuracy) = evaluate(&model, &task, 11, 8, 16).unwrap();
    accuracy
}

#[test]
fn strassen_evidence_by_hand_decides_match3_exactly() {
    // witnesses sum to 37 or 74, or to 0 (0 + 0 + 0, which match3 allows and match3-distinct not)
    for task in ["match3", "match3-distinct"] {
        assert_eq!(accuracy(task, &[1.0, 2.0, 0.0]), 1.0, "{task}");
    }
    // without the head for sums of 74, the witnesses that need it are missed
    let without = accuracy("match3-distinct", &[1.0, 0.0]);
    assert!(without < 0.9, "{without}");
}
