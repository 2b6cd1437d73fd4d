//! The fused edge self-attention (projections, attention along rows or columns, head gates in
//! one kernel) against the unfused form (dfdx projections, the pattern kernel, dfdx gating):
//! values and the gradients of the edges, all three weights, the gates and the bias, under
//! padding and causality; and against finite differences.

use dfdx::prelude::*;
use quartic::backend::Backend;
use quartic::graph::{Edges, GraphMask};
use quartic::ops::patterns::{
    edge_attention, pattern_visibility, EdgeAttendInputs, EdgeKernel, EdgePattern, EdgeProjections,
};
use quartic::ops::taylor::TaylorForm;
use quartic::ops::weights::{Normalizer, WeightsSpec};

use crate::common::*;

const B: usize = 2;
const N: usize = 5;
const C: usize = 4;
const H: usize = 2;
const DH: usize = 3;
const DV: usize = 2;

type T4p = Tensor<(usize, usize, usize, usize), f64, Cpu, Tp>;
type T2p = Tensor<(usize, usize), f64, Cpu, Tp>;

struct Inputs {
    x: T4p,
    w: [T2p; 3],
    gates: Option<T4p>,
    bias: Option<T4p>,
}

fn inputs(v: Vec<In>, gates: bool, bias: bool) -> Inputs {
    let [x, wq, wk, wv, g, bs]: [In; 6] = v.try_into().ok().expect("six inputs");
    Inputs {
        x: x.reshape_like(&(B, N, N, C)),
        w: [
            wq.reshape_like(&(H * DH, C)),
            wk.reshape_like(&(H * DH, C)),
            wv.reshape_like(&(H * DV, C)),
        ],
        gates: gates.then(|| g.reshape_like(&(B, N, N, H))),
        bias: bias.then(|| bs.reshape_like(&(B * N, H, N, N))),
    }
}

fn fused(i: Inputs, pattern: EdgePattern, kernel: EdgeKernel, mask: &GraphMask) -> T4p {
    let (scale, normalizer) = match kernel {
        EdgeKernel::Softmax { scale } => (scale, Normalizer::Softmax),
        EdgeKernel::Taylor { scale, eps, .. } => (scale, Normalizer::Taylor { eps }),
    };
    let spec = WeightsSpec {
        scale,
        normalizer,
        visibility: pattern_visibility(pattern, mask).unwrap(),
    };
    let [to_q, to_k, to_v] = i.w;
    let w = EdgeProjections { to_q, to_k, to_v };
    Backend::self_attention_fused(i.x, w, i.gates, i.bias, H, pattern, &spec).unwrap()
}

fn unfused(i: Inputs, pattern: EdgePattern, kernel: EdgeKernel, mask: &GraphMask) -> T4p {
    let project = |x: T4p, w: T2p| {
        let out = w.shape().0;
        Edges::new(
            x.reshape_like(&(B * N * N, C))
                .matmul(w.permute::<_, Axes2<1, 0>>())
                .reshape_like(&(B, N, N, out)),
        )
        .unwrap()
    };
    let [to_q, to_k, to_v] = i.w;
    let q = project(i.x.with_empty_tape(), to_q);
    let k = project(i.x.with_empty_tape(), to_k);
    let v = project(i.x, to_v);
    let extra = EdgeAttendInputs {
        bias: i.bias,
        talking: None,
        gates: i.gates.map(|g| Edges::new(g).unwrap()),
    };
    edge_attention(q, k, v, H, pattern, kernel, extra, mask)
        .unwrap()
        .into_tensor()
}

fn values() -> Vec<Vec<f64>> {
    [
        B * N * N * C,
        H * DH * C,
        H * DH * C,
        H * DV * C,
        B * N * N * H,
        B * N * H * N * N,
    ]
    .iter()
    .enumerate()
    .map(|(s, &len)| randn(40 + s as u64, len))
    .collect()
}

fn kernels() -> [EdgeKernel; 2] {
    [
        EdgeKernel::Softmax { scale: 0.5 },
        EdgeKernel::Taylor {
            scale: 0.5,
            eps: 1e-5,
            form: TaylorForm::Direct,
        },
    ]
}

#[test]
fn fused_edge_self_attention_matches_the_unfused_form() {
    let d = dev();
    let vals = values();
    for pattern in [EdgePattern::Row, EdgePattern::Column] {
        for kernel in kernels() {
            for causal in [false, true] {
                for (gates, bias) in [(false, false), (true, false), (true, true)] {
                    let mask = GraphMask::from_lengths(N, &[5, 3]).unwrap().causal(causal);
                    let run = |use_fused: bool| {
                        let plain: Vec<_> = vals
                            .iter()
                            .map(|v| d.tensor_from_vec(v.clone(), (v.len(),)))
                            .collect();
                        let traced: Vec<In> = plain.iter().map(|t| t.leaky_trace()).collect();
                        let i = inputs(traced, gates, bias);
                        let out = if use_fused {
                            fused(i, pattern, kernel, &mask)
                        } else {
                            unfused(i, pattern, kernel, &mask)
                        };
                        let mut all = vec![out.as_vec()];
                        let mut g = probe_loss(out, 7).backward();
                        all.extend(plain.iter().map(|t| grad_of(&mut g, t)));
                        all
                    };
                    let (a, b) = (run(true), run(false));
                    let names = ["out", "dx", "dWq", "dWk", "dWv", "dgates", "dbias"];
                    for (name, (x, y)) in names.iter().zip(a.iter().zip(&b)) {
                        let what = format!(
                            "{pattern:?} {kernel:?} causal {causal} gates {gates} bias {bias}: {name}"
                        );
                        assert_close(&what, x, y, 1e-10, 1e-9);
                    }
                }
            }
        }
    }
}

#[test]
fn fused_edge_self_attention_gradcheck() {
    let mask = GraphMask::from_lengths(N, &[5, 4]).unwrap().causal(true);
    for pattern in [EdgePattern::Row, EdgePattern::Column] {
        for kernel in kernels() {
            gradcheck(
                &format!("edge self-attention {pattern:?} {kernel:?}"),
                &values(),
                12,
                |v| probe_loss(fused(inputs(v, true, true), pattern, kernel, &mask), 3),
            );
        }
    }
}

#[test]
fn fused_edge_self_attention_rejects_bad_shapes() {
    let d = dev();
    let vals = values();
    let traced: Vec<In> = vals
        .iter()
        .map(|v| d.tensor_from_vec(v.clone(), (v.len(),)).leaky_trace())
        .collect();
    let i = inputs(traced, false, false);
    // gates with the wrong head count
    let gates = d
        .tensor_from_vec(vals[4].clone(), (B, N, N * H, 1))
        .retaped::<Tp>();
    let spec = WeightsSpec {
        scale: 0.5,
        normalizer: Normalizer::Softmax,
        visibility: pattern_visibility(EdgePattern::Row, &GraphMask::full(B, N)).unwrap(),
    };
    let [to_q, to_k, to_v] = i.w;
    let w = EdgeProjections { to_q, to_k, to_v };
    let err = Backend::self_attention_fused(i.x, w, Some(gates), None, H, EdgePattern::Row, &spec)
        .err()
        .expect("mis-shaped gates are an error");
    assert!(err.to_string().contains("gates"), "{err}");
}

#[test]
fn fused_edge_self_attention_without_a_tape_gives_the_same_values() {
    // inference reuses the kernel's buffers instead of keeping them for a backward pass
    let d = dev();
    let vals = values();
    let mask = GraphMask::from_lengths(N, &[5, 3]).unwrap().causal(true);
    for pattern in [EdgePattern::Row, EdgePattern::Column] {
        for gated in [false, true] {
            let kernel = kernels()[1];
            let traced: Vec<In> = vals
                .iter()
                .map(|v| d.tensor_from_vec(v.clone(), (v.len(),)).leaky_trace())
                .collect();
            let want = fused(inputs(traced, gated, false), pattern, kernel, &mask).as_vec();
            let plain = |i: usize, s: (usize, usize)| d.tensor_from_vec(vals[i].clone(), s);
            let spec = WeightsSpec {
                scale: 0.5,
                normalizer: Normalizer::Taylor { eps: 1e-5 },
                visibility: pattern_visibility(pattern, &mask).unwrap(),
            };
            let w = EdgeProjections {
                to_q: plain(1, (H * DH, C)),
                to_k: plain(2, (H * DH, C)),
                to_v: plain(3, (H * DV, C)),
            };
            let x = d.tensor_from_vec(vals[0].clone(), (B, N, N, C));
            let gates = gated.then(|| d.tensor_from_vec(vals[4].clone(), (B, N, N, H)));
            let got = Backend::self_attention_fused(x, w, gates, None, H, pattern, &spec)
                .unwrap()
                .as_vec();
            assert_close(&format!("{pattern:?} gated {gated}"), &got, &want, 0.0, 0.0);
        }
    }
}

/// A bias shared by every row of a graph (`[b, h, n, n]`, triangle attention's bias from the
/// third side) is read in place by the fused kernel and by the pattern kernel; both agree with
/// the same bias repeated for every row (`expand_bias`, dfdx's broadcast), values and every
/// gradient, the shared bias's included; and it passes a finite-difference check.
#[test]
fn a_bias_shared_by_the_rows_of_a_graph_equals_it_repeated() {
    use quartic::ops::patterns::expand_bias;
    let d = dev();
    let vals = values();
    let shared_len = B * H * N * N;
    let mask = GraphMask::from_lengths(N, &[5, 3]).unwrap().causal(true);
    for pattern in [EdgePattern::Row, EdgePattern::Column] {
        for kernel in kernels() {
            for via_pattern_kernel in [false, true] {
                let run = |expand: bool| {
                    let plain: Vec<_> = vals
                        .iter()
                        .enumerate()
                        .map(|(i, v)| {
                            let v = if i == 5 { &v[..shared_len] } else { &v[..] };
                            d.tensor_from_vec(v.to_vec(), (v.len(),))
                        })
                        .collect();
                    let mut traced: Vec<In> = plain.iter().map(|t| t.leaky_trace()).collect();
                    let shared = traced.pop().unwrap().reshape_like(&(B, H, N, N));
                    // `inputs` takes a full-size bias slot; this one is not used
                    traced.push(traced[0].with_empty_tape());
                    let mut i = inputs(traced, true, false);
                    i.bias = Some(if expand {
                        expand_bias(shared, B * N).unwrap()
                    } else {
                        shared
                    });
                    let out = if via_pattern_kernel {
                        unfused(i, pattern, kernel, &mask)
                    } else {
                        fused(i, pattern, kernel, &mask)
                    };
                    let mut all = vec![out.as_vec()];
                    let mut g = probe_loss(out, 9).backward();
                    all.extend(plain.iter().map(|t| grad_of(&mut g, t)));
                    all
                };
                let (a, b) = (run(false), run(true));
                let names = ["out", "dx", "dWq", "dWk", "dWv", "dgates", "dbias"];
                for (name, (x, y)) in names.iter().zip(a.iter().zip(&b)) {
                    let what = format!(
                        "{pattern:?} {kernel:?} pattern kernel {via_pattern_kernel}: {name}"
                    );
                    assert!(y.iter().any(|v| *v != 0.0), "{what}: all zero");
                    assert_close(&what, x, y, 1e-10, 1e-9);
                }
            }
            let mut v = values();
            v[5].truncate(shared_len);
            gradcheck(
                &format!("shared bias {pattern:?} {kernel:?}"),
                &v,
                12,
                |v| {
                    let mut v = v;
                    let shared = v.pop().unwrap().reshape_like(&(B, H, N, N));
                    let dummy = v[0].with_empty_tape();
                    v.push(dummy);
                    let mut i = inputs(v, true, false);
                    i.bias = Some(shared);
                    probe_loss(fused(i, pattern, kernel, &mask), 5)
                },
            );
        }
    }
    // groups that do not divide the problems are refused, by name
    let traced: Vec<In> = vals
        .iter()
        .map(|v| d.tensor_from_vec(v.clone(), (v.len(),)).leaky_trace())
        .collect();
    let mut i = inputs(traced, false, false);
    i.bias = Some(
        d.tensor_from_vec(vec![0.0; 3 * H * N * N], (3, H, N, N))
            .retaped::<Tp>(),
    );
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let spec = WeightsSpec {
            scale: 0.5,
            normalizer: Normalizer::Softmax,
            visibility: pattern_visibility(EdgePattern::Row, &mask).unwrap(),
        };
        let [to_q, to_k, to_v] = i.w;
        let w = EdgeProjections { to_q, to_k, to_v };
        Backend::self_attention_fused(i.x, w, None, i.bias, H, EdgePattern::Row, &spec)
            .err()
            .expect("three groups over ten rows are an error")
    }))
    .expect("no panic");
    assert!(err.to_string().contains("bias"), "{err}");
}
