//! Edge attention patterns against a naive loop implementation of their definitions, plus
//! causality (no output reads the future) and padding (padded edges never change real ones).

use dfdx::prelude::*;
use quartic::graph::{Edges, GraphMask};
use quartic::ops::patterns::{edge_attention, EdgeAttendInputs, EdgeKernel, EdgePattern};
use quartic::ops::taylor::TaylorForm;

use crate::common::*;

const B: usize = 2;
const N: usize = 4;
const H: usize = 2;
const DH: usize = 3;
const E: usize = 2;
const PATTERNS: [EdgePattern; 4] = [
    EdgePattern::All,
    EdgePattern::Row,
    EdgePattern::Column,
    EdgePattern::Diagonal,
];

fn mask(causal: bool) -> GraphMask {
    GraphMask::from_lengths(N, &[4, 3]).unwrap().causal(causal)
}

/// Every kernel that applies: the feature form cannot express the causal all-edges pattern
/// (its key times are not a prefix of the key order); that combination is an error, tested below.
fn kernels(pattern: EdgePattern, causal: bool) -> Vec<EdgeKernel> {
    let mut out = vec![EdgeKernel::Softmax { scale: 0.6 }];
    for form in [TaylorForm::Feature, TaylorForm::Direct, TaylorForm::Auto] {
        if !(form == TaylorForm::Feature && pattern == EdgePattern::All && causal) {
            out.push(EdgeKernel::Taylor {
                scale: 0.6,
                eps: 1e-5,
                form,
            });
        }
    }
    out
}

/// The definition, in loops: edge (i, j) attends over its pattern's keys that are real and,
/// when causal, not later than max(i, j).
fn naive(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    pattern: EdgePattern,
    kernel: EdgeKernel,
    m: &GraphMask,
) -> Vec<f64> {
    let at = |x: &[f64], c: usize, b: usize, i: usize, j: usize, h: usize, t: usize| {
        x[((b * N + i) * N + j) * (H * c) + h * c + t]
    };
    let mut out = vec![0.0; B * N * N * H * E];
    for b in 0..B {
        for i in 0..N {
            for j in 0..N {
                let keys: Vec<(usize, usize)> = match pattern {
                    EdgePattern::All => (0..N * N).map(|e| (e / N, e % N)).collect(),
                    EdgePattern::Row => (0..N).map(|kk| (i, kk)).collect(),
                    EdgePattern::Column => (0..N).map(|kk| (kk, j)).collect(),
                    EdgePattern::Diagonal if i == j => (0..N).map(|kk| (kk, kk)).collect(),
                    EdgePattern::Diagonal => continue,
                };
                let now = i.max(j);
                let visible: Vec<(usize, usize)> = keys
                    .into_iter()
                    .filter(|&(a, c)| m.edge_valid(b, a, c) && (!m.is_causal() || a.max(c) <= now))
                    .collect();
                for h in 0..H {
                    let (scale, taylor_eps) = match kernel {
                        EdgeKernel::Softmax { scale } => (scale, None),
                        EdgeKernel::Taylor { scale, eps, .. } => (scale, Some(eps)),
                    };
                    let scores: Vec<f64> = visible
                        .iter()
                        .map(|&(a, c)| {
                            scale
                                * (0..DH)
                                    .map(|t| at(q, DH, b, i, j, h, t) * at(k, DH, b, a, c, h, t))
                                    .sum::<f64>()
                        })
                        .collect();
                    let weights: Vec<f64> = match taylor_eps {
                        None => {
                            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                            let ex: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                            let z: f64 = ex.iter().sum();
                            ex.iter().map(|x| x / z).collect()
                        }
                        Some(eps) => {
                            let w: Vec<f64> =
                                scores.iter().map(|s| 1.0 + s + s * s / 2.0).collect();
                            let z = w.iter().sum::<f64>().max(eps);
                            w.iter().map(|x| x / z).collect()
                        }
                    };
                    for t in 0..E {
                        out[((b * N + i) * N + j) * (H * E) + h * E + t] = visible
                            .iter()
                            .zip(&weights)
                            .map(|(&(a, c), w)| w * at(v, E, b, a, c, h, t))
                            .sum();
                    }
                }
            }
        }
    }
    out
}

fn run(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    pattern: EdgePattern,
    kernel: EdgeKernel,
    m: &GraphMask,
) -> Vec<f64> {
    let d = dev();
    let edges =
        |x: &[f64], c: usize| Edges::new(d.tensor_from_vec(x.to_vec(), (B, N, N, H * c))).unwrap();
    edge_attention(
        edges(q, DH),
        edges(k, DH),
        edges(v, E),
        H,
        pattern,
        kernel,
        EdgeAttendInputs::default(),
        m,
    )
    .unwrap()
    .into_tensor()
    .as_vec()
}

fn qkv() -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    (
        randn(41, B * N * N * H * DH),
        randn(42, B * N * N * H * DH),
        randn(43, B * N * N * H * E),
    )
}

#[test]
fn patterns_match_the_naive_definition() {
    let (q, k, v) = qkv();
    for pattern in PATTERNS {
        for causal in [false, true] {
            for kernel in kernels(pattern, causal) {
                let m = mask(causal);
                let got = run(&q, &k, &v, pattern, kernel, &m);
                let want = naive(&q, &k, &v, pattern, kernel, &m);
                assert_close(
                    &format!("{pattern:?} causal={causal} {kernel:?}"),
                    &got,
                    &want,
                    1e-10,
                    1e-9,
                );
            }
        }
    }
}

#[test]
fn causal_patterns_never_read_the_future() {
    let (q, k, v) = qkv();
    let m = mask(true);
    for t in 1..N {
        // change every edge at time >= t
        let perturb = |x: &[f64], c: usize, seed: u64| -> Vec<f64> {
            let noise = randn(seed, x.len());
            x.iter()
                .enumerate()
                .map(|(idx, &val)| {
                    let e = idx / (H * c);
                    let (i, j) = ((e / N) % N, e % N);
                    if i.max(j) >= t {
                        val + noise[idx]
                    } else {
                        val
                    }
                })
                .collect()
        };
        let (q2, k2, v2) = (
            perturb(&q, DH, 50 + t as u64),
            perturb(&k, DH, 60 + t as u64),
            perturb(&v, E, 70 + t as u64),
        );
        for pattern in PATTERNS {
            for kernel in kernels(pattern, true) {
                let a = run(&q, &k, &v, pattern, kernel, &m);
                let b = run(&q2, &k2, &v2, pattern, kernel, &m);
                let mut changed_future = false;
                for (idx, (x, y)) in a.iter().zip(&b).enumerate() {
                    let e = idx / (H * E);
                    let (i, j) = ((e / N) % N, e % N);
                    if i.max(j) < t {
                        assert_eq!(x, y, "{pattern:?} {kernel:?}: edge ({i}, {j}) changed when time >= {t} changed");
                    } else if x != y {
                        changed_future = true;
                    }
                }
                assert!(changed_future || pattern == EdgePattern::Diagonal, "{pattern:?}: the perturbation must reach later outputs (else the test proves nothing)");
            }
        }
    }
}

#[test]
fn padded_edges_never_change_real_ones() {
    let (q, k, v) = qkv();
    for causal in [false, true] {
        let m = mask(causal);
        // graph 1 has 3 real nodes: perturb every edge touching node 3 of graph 1
        let perturb = |x: &[f64], c: usize| -> Vec<f64> {
            x.iter()
                .enumerate()
                .map(|(idx, &val)| {
                    let e = idx / (H * c);
                    let (b, i, j) = (e / (N * N), (e / N) % N, e % N);
                    if b == 1 && (i == 3 || j == 3) {
                        val + 10.0
                    } else {
                        val
                    }
                })
                .collect()
        };
        for pattern in PATTERNS {
            for kernel in kernels(pattern, causal) {
                let a = run(&q, &k, &v, pattern, kernel, &m);
                let b = run(
                    &perturb(&q, DH),
                    &perturb(&k, DH),
                    &perturb(&v, E),
                    pattern,
                    kernel,
                    &m,
                );
                for (idx, (x, y)) in a.iter().zip(&b).enumerate() {
                    let e = idx / (H * E);
                    let (bb, i, j) = (e / (N * N), (e / N) % N, e % N);
                    if m.edge_valid(bb, i, j) {
                        assert_eq!(x, y, "{pattern:?} causal={causal} {kernel:?}: real edge ({bb}, {i}, {j}) changed");
                    }
                }
            }
        }
    }
}

#[test]
fn pattern_gradcheck_with_gates() {
    let m = GraphMask::from_lengths(3, &[3, 2]).unwrap().causal(true);
    let (b, n) = (2, 3);
    for pattern in PATTERNS {
        let form = if pattern == EdgePattern::All {
            TaylorForm::Direct
        } else {
            TaylorForm::Feature
        };
        for kernel in [
            EdgeKernel::Softmax { scale: 0.5 },
            EdgeKernel::Taylor {
                scale: 0.5,
                eps: 1e-5,
                form,
            },
        ] {
            let ins = [
                randn(1, b * n * n * H * DH),
                randn(2, b * n * n * H * DH),
                randn(3, b * n * n * H * E),
                randn(4, b * n * n * H),
            ];
            gradcheck(&format!("{pattern:?} {kernel:?}"), &ins, 16, |x| {
                let mut it = x.into_iter();
                let mut e =
                    |c: usize| Edges::new(it.next().unwrap().reshape_like(&(b, n, n, c))).unwrap();
                let (q, k, v, g) = (e(H * DH), e(H * DH), e(H * E), e(H));
                let out = edge_attention(
                    q,
                    k,
                    v,
                    H,
                    pattern,
                    kernel,
                    EdgeAttendInputs {
                        gates: Some(g),
                        ..Default::default()
                    },
                    &m,
                )
                .unwrap();
                probe_loss(out.into_tensor(), 7)
            });
        }
    }
}

#[test]
fn bad_pattern_inputs_are_errors() {
    let d = dev();
    let e = |c: usize, n: usize| {
        Edges::new(d.tensor_from_vec(vec![0.0f64; B * n * n * c], (B, n, n, c))).unwrap()
    };
    let err = edge_attention(
        e(5, N),
        e(5, N),
        e(4, N),
        H,
        EdgePattern::Row,
        EdgeKernel::Softmax { scale: 1.0 },
        EdgeAttendInputs::default(),
        &mask(false),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("heads"), "{err}");
    let err = edge_attention(
        e(6, N),
        e(6, N + 1),
        e(4, N),
        H,
        EdgePattern::Row,
        EdgeKernel::Softmax { scale: 1.0 },
        EdgeAttendInputs::default(),
        &mask(false),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("keys"), "{err}");
    let err = edge_attention(
        e(6, N),
        e(6, N),
        e(4, N),
        H,
        EdgePattern::Row,
        EdgeKernel::Softmax { scale: 1.0 },
        EdgeAttendInputs::default(),
        &GraphMask::full(B, N + 1),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("mask"), "{err}");
    let feature = EdgeKernel::Taylor {
        scale: 1.0,
        eps: 1e-5,
        form: TaylorForm::Feature,
    };
    let err = edge_attention(
        e(6, N),
        e(6, N),
        e(4, N),
        H,
        EdgePattern::All,
        feature,
        EdgeAttendInputs::default(),
        &mask(true),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("prefix"), "{err}");
    let non_square: Tensor<_, f64, _> = d.zeros_like(&(1, 2, 3, 4));
    assert!(Edges::new(non_square).is_err());
}

#[test]
fn gates_with_wrong_channels_are_an_error() {
    let d = dev();
    let e = |c: usize| {
        Edges::new(d.tensor_from_vec(vec![0.0f64; B * N * N * c], (B, N, N, c))).unwrap()
    };
    let inputs = EdgeAttendInputs {
        gates: Some(e(2 * H)),
        ..Default::default()
    };
    let err = edge_attention(
        e(6),
        e(6),
        e(4),
        H,
        EdgePattern::Row,
        EdgeKernel::Softmax { scale: 1.0 },
        inputs,
        &mask(false),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("gates"), "{err}");
}
