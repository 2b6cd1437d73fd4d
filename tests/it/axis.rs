//! Softmax and log-sum-exp along an axis over the visible entries (`ops::axis`): the fused CPU
//! form against loops written from the definition and against the composite form, values and
//! gradients, with and without a visibility mask (rows with none visible, rows with one), and
//! with key padding given as per-graph key validity, across rayon task boundaries; its
//! gradients against finite differences; a NaN reported, bad lengths refused.

use dfdx::prelude::*;
use quartic::backend::Backend;
use quartic::ops::axis::{over_axis, over_axis_composite, AxisOp, Visible};

use crate::common::*;

/// The definition, in loops: per `(o, c)` column of `[outer, n, inner]`, the softmax of the
/// visible entries (hidden ones 0) or their log-sum-exp; a column with none visible gives 0.
fn by_definition(x: &[f64], seen: &[bool], dims: (usize, usize, usize), op: AxisOp) -> Vec<f64> {
    let (outer, n, inner) = dims;
    let at = |o: usize, k: usize, c: usize| (o * n + k) * inner + c;
    let mut out = match op {
        AxisOp::Softmax => vec![0.0; x.len()],
        AxisOp::LogSumExp => vec![0.0; outer * inner],
    };
    for o in 0..outer {
        for c in 0..inner {
            let ks: Vec<usize> = (0..n).filter(|&k| seen[at(o, k, c)]).collect();
            if ks.is_empty() {
                continue;
            }
            let total: f64 = ks.iter().map(|&k| x[at(o, k, c)].exp()).sum();
            match op {
                AxisOp::Softmax => {
                    for &k in &ks {
                        out[at(o, k, c)] = x[at(o, k, c)].exp() / total;
                    }
                }
                AxisOp::LogSumExp => out[o * inner + c] = total.ln(),
            }
        }
    }
    out
}

/// A mask over `[outer, n, inner]` with about a third hidden, column (0, 0) all hidden and
/// column (1, 0) with one entry visible.
fn some_hidden(dims: (usize, usize, usize)) -> Vec<bool> {
    let (outer, n, inner) = dims;
    let r = randn(77, outer * n * inner);
    let mut seen: Vec<bool> = r.iter().map(|v| *v > -0.4).collect();
    for k in 0..n {
        seen[k * inner] = false;
        seen[(n + k) * inner] = k == 2;
    }
    seen
}

/// Key validity `[graphs × n]` for `[outer, n, inner]`: about a third of the keys padding,
/// graph 0 all padding and graph 1 with one real key.
fn some_padding(graphs: usize, n: usize) -> Vec<bool> {
    let r = randn(78, graphs * n);
    let mut valid: Vec<bool> = r.iter().map(|v| *v > -0.4).collect();
    for k in 0..n {
        valid[k] = false;
        valid[n + k] = k == 1;
    }
    valid
}

/// What takes part, as the test states it.
enum Vis {
    All,
    /// Per entry of `[outer, n, inner]`.
    Mask(Vec<bool>),
    /// Per key of each graph, `[graphs × n]`.
    Keys(Vec<bool>),
}

impl Vis {
    /// Whether each entry takes part, written out.
    fn entries(&self, dims: (usize, usize, usize)) -> Vec<bool> {
        let (outer, n, inner) = dims;
        match self {
            Vis::All => vec![true; outer * n * inner],
            Vis::Mask(m) => m.clone(),
            Vis::Keys(valid) => {
                let per_graph = outer / (valid.len() / n);
                let mut e = Vec::new();
                for o in 0..outer {
                    for k in 0..n {
                        e.extend(std::iter::repeat(valid[(o / per_graph) * n + k]).take(inner));
                    }
                }
                e
            }
        }
    }
}

fn as_mask(seen: &[bool]) -> Tensor<(usize,), f64, Cpu> {
    let m: Vec<f64> = seen.iter().map(|&v| if v { 1.0 } else { 0.0 }).collect();
    dev().tensor_from_vec(m, (seen.len(),))
}

/// Values and the operand's gradient under a random probe loss, fused or composite.
fn run(
    fused: bool,
    xv: &[f64],
    seen: &Vis,
    dims: (usize, usize, usize),
    op: AxisOp,
) -> (Vec<f64>, Vec<f64>) {
    let d = dev();
    let x = d.tensor_from_vec(xv.to_vec(), (xv.len(),));
    let mask = match seen {
        Vis::Mask(m) => Some(as_mask(m)),
        _ => None,
    };
    let visible = match (seen, &mask) {
        (Vis::Mask(_), Some(m)) => Visible::Mask(m),
        (Vis::Keys(valid), _) => Visible::Keys(valid),
        _ => Visible::All,
    };
    let out = if fused {
        Backend::over_axis_fused(x.leaky_trace(), visible, dims, op).unwrap()
    } else {
        over_axis_composite(x.leaky_trace(), visible, dims, op).unwrap()
    };
    let values = out.as_vec();
    let mut g = probe_loss(out, 9).backward();
    (values, grad_of(&mut g, &x))
}

#[test]
fn fused_softmax_and_logsumexp_match_the_definition_and_the_composite() {
    // 300 columns blocks of 7 × 3: several rayon tasks (in 4 graphs of 75 rows); inner 1, 4
    // and 8 (the kernel's fixed widths; 3 takes its general loops)
    let blocks = [
        ((300, 7, 3), 4),
        ((40, 35, 1), 5),
        ((60, 11, 4), 3),
        ((24, 6, 8), 4),
    ];
    for (dims, graphs) in blocks {
        let len = dims.0 * dims.1 * dims.2;
        let xv: Vec<f64> = randn(5, len).iter().map(|v| 3.0 * v).collect();
        let cases = [
            Vis::Mask(some_hidden(dims)),
            Vis::All,
            Vis::Keys(some_padding(graphs, dims.1)),
        ];
        for op in [AxisOp::Softmax, AxisOp::LogSumExp] {
            for seen in &cases {
                let what = format!("{op:?} {dims:?}, {:?}", std::mem::discriminant(seen));
                let (fv, fg) = run(true, &xv, seen, dims, op);
                let (cv, cg) = run(false, &xv, seen, dims, op);
                let want = by_definition(&xv, &seen.entries(dims), dims, op);
                assert_close(&format!("{what}: fused values"), &fv, &want, 1e-12, 1e-10);
                assert_close(
                    &format!("{what}: composite values"),
                    &cv,
                    &want,
                    1e-12,
                    1e-10,
                );
                assert_close(&format!("{what}: gradients"), &fg, &cg, 1e-12, 1e-10);
                // key padding reads as the same padding written out entry by entry
                if let Vis::Keys(_) = seen {
                    let written = Vis::Mask(seen.entries(dims));
                    let (mv, mg) = run(true, &xv, &written, dims, op);
                    assert_eq!(fv, mv, "{what}: keys against their mask, values");
                    assert_eq!(fg, mg, "{what}: keys against their mask, gradients");
                }
            }
        }
    }
}

/// In f32 the fused kernel takes its exps in a vectorized pass (a polynomial, relative error
/// below 5e-7): its values against the definition in f64, and its gradients against the f64
/// kernel's.
#[test]
fn fused_f32_matches_the_definition() {
    let (dims, graphs) = ((120, 9, 5), 6);
    let len = dims.0 * dims.1 * dims.2;
    let xv: Vec<f64> = randn(15, len).iter().map(|v| 4.0 * v).collect();
    for seen in [
        Vis::Mask(some_hidden(dims)),
        Vis::All,
        Vis::Keys(some_padding(graphs, dims.1)),
    ] {
        for op in [AxisOp::Softmax, AxisOp::LogSumExp] {
            let d = Cpu::default();
            let x: Tensor<(usize,), f32, Cpu> =
                d.tensor_from_vec(xv.iter().map(|&v| v as f32).collect(), (len,));
            let m32 = match &seen {
                Vis::Mask(m) => Some(d.tensor_from_vec(
                    m.iter().map(|&v| if v { 1.0f32 } else { 0.0 }).collect(),
                    (len,),
                )),
                _ => None,
            };
            let visible = match (&seen, &m32) {
                (Vis::Mask(_), Some(m)) => Visible::Mask(m),
                (Vis::Keys(valid), _) => Visible::Keys(valid),
                _ => Visible::All,
            };
            let out = Backend::over_axis_fused(x.leaky_trace(), visible, dims, op).unwrap();
            let values: Vec<f64> = out.as_vec().iter().map(|&v| v as f64).collect();
            // the probe of `run`'s loss
            let p = d.tensor_from_vec(
                randn(9, out.shape().0).iter().map(|&v| v as f32).collect(),
                *out.shape(),
            );
            let g = (out * p).sum().backward();
            let grad: Vec<f64> = g.get(&x).as_vec().iter().map(|&v| v as f64).collect();
            let what = format!("f32 {op:?}, {:?}", std::mem::discriminant(&seen));
            let want = by_definition(&xv, &seen.entries(dims), dims, op);
            assert_close(&format!("{what}: values"), &values, &want, 2e-6, 2e-6);
            let (_, want_grad) = run(true, &xv, &seen, dims, op);
            assert_close(&format!("{what}: gradients"), &grad, &want_grad, 2e-5, 2e-5);
        }
    }
}

#[test]
fn fused_softmax_and_logsumexp_gradients_match_finite_differences() {
    let dims = (6, 5, 2);
    let seen = some_hidden(dims);
    let keys = some_padding(3, 5);
    for op in [AxisOp::Softmax, AxisOp::LogSumExp] {
        gradcheck(&format!("fused {op:?}"), &[randn(3, 60)], 60, |v| {
            let x = v.into_iter().next().unwrap();
            let m = as_mask(&seen);
            probe_loss(
                Backend::over_axis_fused(x, Visible::Mask(&m), dims, op).unwrap(),
                4,
            )
        });
        gradcheck(&format!("fused {op:?}, keys"), &[randn(4, 60)], 60, |v| {
            let x = v.into_iter().next().unwrap();
            probe_loss(
                Backend::over_axis_fused(x, Visible::Keys(&keys), dims, op).unwrap(),
                4,
            )
        });
    }
}

#[test]
fn logsumexp_cannot_overflow_and_a_nan_is_reported() {
    let dims = (2, 3, 1);
    // exp(1000) overflows f64: the result must still be 1000 + ln 3
    let x = vec![1000.0, 1000.0, 1000.0, 0.5, f64::NAN, -1.0];
    let (v, _) = run(true, &x, &Vis::All, dims, AxisOp::LogSumExp);
    assert!((v[0] - (1000.0 + 3f64.ln())).abs() < 1e-9, "{v:?}");
    // a NaN among the visible entries makes its column NaN, in both ops and both forms
    for op in [AxisOp::Softmax, AxisOp::LogSumExp] {
        for fused in [true, false] {
            let (v, _) = run(fused, &x, &Vis::All, dims, op);
            let second = if op == AxisOp::Softmax {
                &v[3..]
            } else {
                &v[1..]
            };
            assert!(
                second.iter().all(|v| v.is_nan()),
                "{op:?} fused {fused}: {v:?}"
            );
        }
    }
}

#[test]
fn bad_lengths_are_refused() {
    let d = dev();
    let x: Tensor<(usize,), f64, Cpu> = d.zeros_like(&(12,));
    let short: Tensor<(usize,), f64, Cpu> = d.ones_like(&(11,));
    let err = over_axis(x.clone(), Visible::All, (2, 3, 3), AxisOp::Softmax).unwrap_err();
    assert!(
        err.to_string().contains("the operand") && err.to_string().contains("18 entries"),
        "{err}"
    );
    let err = over_axis(
        x.clone(),
        Visible::Mask(&short),
        (2, 3, 2),
        AxisOp::LogSumExp,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("the visibility mask") && err.to_string().contains("11"),
        "{err}"
    );
    // the fused form checks too, called directly
    let err =
        Backend::over_axis_fused(x.clone(), Visible::Mask(&short), (2, 3, 2), AxisOp::Softmax)
            .unwrap_err();
    assert!(err.to_string().contains("the visibility mask"), "{err}");
    // key padding: a whole number of graphs of n keys each, a number that divides the rows
    for (valid, what) in [
        (vec![true; 5], "not a multiple of 3"),
        (vec![true; 9], "3 graphs of 2 rows"),
    ] {
        let keys = || Visible::Keys(&valid);
        let (dims, op) = ((2, 3, 2), AxisOp::Softmax);
        for (form, err) in [
            (
                "dispatch",
                over_axis(x.clone(), keys(), dims, op).unwrap_err(),
            ),
            (
                "composite",
                over_axis_composite(x.clone(), keys(), dims, op).unwrap_err(),
            ),
            (
                "fused",
                Backend::over_axis_fused(x.clone(), keys(), dims, op).unwrap_err(),
            ),
        ] {
            let text = err.to_string();
            assert!(
                text.contains("key padding") && text.contains(&valid.len().to_string()),
                "{what}, {form}: {text}"
            );
        }
    }
}
