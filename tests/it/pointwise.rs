//! The fused CPU RMSNorm, LayerNorm, GELU and feedforward block against their composite forms: values and gradients, in f64
//! and f32, across rayon chunk boundaries, with an all-zero row (the unit norm's clamp). The
//! gradient checks against finite differences run through the fused forms too: they are the
//! CPU default (tests in `nn.rs`).

use dfdx::prelude::*;
use quartic::backend::Backend;
use quartic::ops::activations::gelu_composite;
use quartic::ops::norms::{layer_norm_composite, rms_norm_composite};
use quartic::spec::{FeedForwardParams, RmsKind};

use crate::common::*;

/// Values and input/scale gradients of one form under a random probe loss.
fn rms_run(fused: bool, kind: RmsKind, xv: &[f64], gv: &[f64], rows: usize) -> Vec<Vec<f64>> {
    let d = dev();
    let c = gv.len();
    let x = d.tensor_from_vec(xv.to_vec(), (rows, c));
    let gamma = d.tensor_from_vec(gv.to_vec(), (c,));
    let (xt, gt) = (x.leaky_trace(), gamma.clone().retaped::<Tp>());
    let out = if fused {
        Backend::rms_norm_fused(xt, gt, kind).unwrap()
    } else {
        rms_norm_composite(xt, gt, kind)
    };
    let values = out.as_vec();
    let mut g = probe_loss(out, 5).backward();
    vec![values, grad_of(&mut g, &x), grad_of(&mut g, &gamma)]
}

#[test]
fn fused_rms_norm_matches_composite() {
    // 300 rows × 45 channels spans several rayon tasks, and a row's sums five blocks of eight
    // lanes and a tail of five; row 7 is all zeros
    let (rows, c) = (300, 45);
    let mut xv = randn(1, rows * c);
    xv[7 * c..8 * c].iter_mut().for_each(|v| *v = 0.0);
    let gv: Vec<f64> = randn(2, c).iter().map(|v| 1.0 + 0.3 * v).collect();
    for kind in [RmsKind::Scaled { eps: 1e-5 }, RmsKind::Unit] {
        let (a, b) = (
            rms_run(true, kind, &xv, &gv, rows),
            rms_run(false, kind, &xv, &gv, rows),
        );
        for (what, (x, y)) in ["values", "dx", "dgamma"].iter().zip(a.iter().zip(&b)) {
            assert_close(&format!("rms norm {kind:?} {what}"), x, y, 1e-10, 1e-9);
        }
    }
}

#[test]
fn fused_gelu_matches_composite_in_f64_and_f32() {
    let d = dev();
    // 10 000 points over [-8, 8] (several rayon chunks), both tails included
    let xv: Vec<f64> = (0..10_000)
        .map(|i| -8.0 + 16.0 * i as f64 / 9_999.0)
        .collect();
    let run = |fused: bool| {
        let x = d.tensor_from_vec(xv.clone(), (xv.len(),));
        let out = if fused {
            Backend::gelu_fused(x.leaky_trace()).unwrap()
        } else {
            gelu_composite(x.leaky_trace())
        };
        let values = out.as_vec();
        let mut g = probe_loss(out, 3).backward();
        (values, grad_of(&mut g, &x))
    };
    let (fv, fg) = run(true);
    let (cv, cg) = run(false);
    assert_close("gelu values (f64)", &fv, &cv, 1e-12, 1e-12);
    assert_close("gelu gradient (f64)", &fg, &cg, 1e-12, 1e-12);

    // f32: the vectorized Φ against the composite's libm erf, to a few f32 ulps
    let x32: Vec<f32> = xv.iter().map(|&v| v as f32).collect();
    let run32 = |fused: bool| {
        let x = d.tensor_from_vec(x32.clone(), (x32.len(),));
        let out = if fused {
            Backend::gelu_fused(x.leaky_trace()).unwrap()
        } else {
            gelu_composite(x.leaky_trace())
        };
        let values = out.as_vec();
        let g = out.sum::<(), _>().backward().get(&x).as_vec();
        (values, g)
    };
    let widen = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<_>>();
    let ((fv, fg), (cv, cg)) = (run32(true), run32(false));
    assert_close("gelu values (f32)", &widen(fv), &widen(cv), 2e-6, 1e-6);
    assert_close("gelu gradient (f32)", &widen(fg), &widen(cg), 2e-6, 1e-6);
}

/// Values and the gradients of input, scale and both weights of one feedforward form.
fn ff_run(fused: bool, kind: RmsKind, vals: &[Vec<f64>], rows: usize, c: usize) -> Vec<Vec<f64>> {
    let d = dev();
    let hidden = vals[2].len() / c;
    let x = d.tensor_from_vec(vals[0].clone(), (rows, c));
    let gamma = d.tensor_from_vec(vals[1].clone(), (c,));
    let w_in = d.tensor_from_vec(vals[2].clone(), (hidden, c));
    let w_out = d.tensor_from_vec(vals[3].clone(), (c, hidden));
    let p = FeedForwardParams {
        gamma: gamma.clone().retaped::<Tp>(),
        w_in: w_in.clone().retaped::<Tp>(),
        w_out: w_out.clone().retaped::<Tp>(),
        kind,
    };
    let out = if fused {
        Backend::feedforward_fused(x.leaky_trace(), p).unwrap()
    } else {
        // the unfused chain, from the composite pieces
        let h = rms_norm_composite(x.leaky_trace(), p.gamma, kind)
            .matmul(p.w_in.permute::<_, Axes2<1, 0>>());
        gelu_composite(h).matmul(p.w_out.permute::<_, Axes2<1, 0>>())
    };
    let values = out.as_vec();
    let mut g = probe_loss(out, 11).backward();
    vec![
        values,
        grad_of(&mut g, &x),
        grad_of(&mut g, &gamma),
        grad_of(&mut g, &w_in),
        grad_of(&mut g, &w_out),
    ]
}

fn ff_values(rows: usize, c: usize, hidden: usize) -> Vec<Vec<f64>> {
    let mut x = randn(21, rows * c);
    x[3 * c..4 * c].iter_mut().for_each(|v| *v = 0.0);
    vec![
        x,
        randn(22, c).iter().map(|v| 1.0 + 0.3 * v).collect(),
        randn(23, hidden * c),
        randn(24, c * hidden),
    ]
}

#[test]
fn fused_feedforward_matches_composite_and_finite_differences() {
    // 300 rows: several chunks of the kernel, the last one short; row 3 is all zeros
    let (rows, c, hidden) = (300, 6, 10);
    let vals = ff_values(rows, c, hidden);
    for kind in [RmsKind::Scaled { eps: 1e-5 }, RmsKind::Unit] {
        let (a, b) = (
            ff_run(true, kind, &vals, rows, c),
            ff_run(false, kind, &vals, rows, c),
        );
        let names = ["values", "dx", "dgamma", "dw_in", "dw_out"];
        for (what, (x, y)) in names.iter().zip(a.iter().zip(&b)) {
            assert_close(&format!("feedforward {kind:?} {what}"), x, y, 1e-10, 1e-9);
        }
    }
    let (rows, c, hidden) = (5, 3, 4);
    gradcheck("fused feedforward", &ff_values(rows, c, hidden), 12, |v| {
        let [x, g, wi, wo]: [In; 4] = v.try_into().ok().expect("four inputs");
        let p = FeedForwardParams {
            gamma: g,
            w_in: wi.reshape_like(&(hidden, c)),
            w_out: wo.reshape_like(&(c, hidden)),
            kind: RmsKind::Scaled { eps: 1e-5 },
        };
        probe_loss(
            Backend::feedforward_fused(x.reshape_like(&(rows, c)), p).unwrap(),
            4,
        )
    });
}

/// Values and the gradients of input, weight and bias of one LayerNorm form.
fn ln_run(fused: bool, vals: &[Vec<f64>], rows: usize) -> Vec<Vec<f64>> {
    let d = dev();
    let c = vals[1].len();
    let x = d.tensor_from_vec(vals[0].clone(), (rows, c));
    let w = d.tensor_from_vec(vals[1].clone(), (c,));
    let b = d.tensor_from_vec(vals[2].clone(), (c,));
    let (wt, bt) = (w.clone().retaped::<Tp>(), b.clone().retaped::<Tp>());
    let out = if fused {
        Backend::layer_norm_fused(x.leaky_trace(), wt, bt, 1e-5).unwrap()
    } else {
        layer_norm_composite(x.leaky_trace(), wt, bt, 1e-5)
    };
    let values = out.as_vec();
    let mut g = probe_loss(out, 13).backward();
    vec![
        values,
        grad_of(&mut g, &x),
        grad_of(&mut g, &w),
        grad_of(&mut g, &b),
    ]
}

#[test]
fn fused_layer_norm_matches_composite_and_finite_differences() {
    // 300 rows × 45 channels spans several rayon tasks, and a row's sums five blocks of eight
    // lanes and a tail of five; row 7 is constant (zero variance)
    let (rows, c) = (300, 45);
    let mut x = randn(131, rows * c);
    x[7 * c..8 * c].iter_mut().for_each(|v| *v = 0.25);
    let vals = vec![
        x,
        randn(132, c).iter().map(|v| 1.0 + 0.3 * v).collect(),
        randn(133, c),
    ];
    let (a, b) = (ln_run(true, &vals, rows), ln_run(false, &vals, rows));
    for (what, (x, y)) in ["values", "dx", "dweight", "dbias"]
        .iter()
        .zip(a.iter().zip(&b))
    {
        assert_close(&format!("layer norm {what}"), x, y, 1e-10, 1e-9);
    }
    let (rows, c) = (4, 5);
    let vals = vec![randn(141, rows * c), randn(142, c), randn(143, c)];
    gradcheck("fused layer norm", &vals, 12, |v| {
        let [x, w, b]: [In; 3] = v.try_into().ok().expect("three inputs");
        probe_loss(
            Backend::layer_norm_fused(x.reshape_like(&(rows, c)), w, b, 1e-5).unwrap(),
            14,
        )
    });
}

/// A norm's parameters of another width than the rows are an error naming them, not a panic
/// or a short write.
#[test]
fn fused_norms_refuse_parameters_of_another_width() {
    let d = dev();
    let x = d.tensor_from_vec(randn(151, 4 * 6), (4usize, 6usize));
    let short = |n: usize| d.tensor_from_vec(vec![1.0; n], (n,)).retaped::<Tp>();
    let err = Backend::rms_norm_fused(x.leaky_trace(), short(5), RmsKind::Unit)
        .err()
        .expect("a gamma of 5 for rows of 6");
    assert!(err.to_string().contains("rms norm"), "{err}");
    let err = Backend::layer_norm_fused(x.leaky_trace(), short(6), short(7), 1e-5)
        .err()
        .expect("a bias of 7 for rows of 6");
    assert!(err.to_string().contains("layer norm"), "{err}");
}

/// `softplus` against `log(1 + exp(x))` and its gradient against `sigmoid(x)`, in f64 and f32,
/// at exact 0 (where relu(x) + log(1 + exp(−|x|)) written as ops gave no gradient), at large
/// |x| (where exp overflows in f32) and in between; a NaN stays NaN.
#[test]
fn softplus_has_the_sigmoid_gradient_everywhere_and_cannot_overflow() {
    use quartic::ops::activations::softplus;
    let d = dev();
    let xs = [
        0.0, -0.0, 1e-8, -1e-8, 0.5, -2.0, 3.0, 30.0, -30.0, 100.0, -100.0, 1e4, -1e4,
    ];
    let sigmoid = |v: f64| 1.0 / (1.0 + (-v).exp());
    let exact = |v: f64| v.max(0.0) + (-v.abs()).exp().ln_1p();
    let x = d.tensor_from_vec(xs.to_vec(), (xs.len(),));
    let y = softplus(x.leaky_trace());
    let values = y.as_vec();
    let grads = y.sum().backward();
    let dx = grads.get(&x).as_vec();
    for (k, &v) in xs.iter().enumerate() {
        assert!(
            (values[k] - exact(v)).abs() <= 1e-12 * exact(v).max(1.0),
            "f64 softplus({v})"
        );
        assert!(
            (dx[k] - sigmoid(v)).abs() <= 1e-15,
            "f64 d softplus({v}): {}",
            dx[k]
        );
    }
    let x32 = d.tensor_from_vec(xs.iter().map(|&v| v as f32).collect(), (xs.len(),));
    let y32 = softplus(x32.leaky_trace());
    let values32 = y32.as_vec();
    let dx32 = y32.sum().backward().get(&x32).as_vec();
    for (k, &v) in xs.iter().enumerate() {
        let v32 = v as f32 as f64;
        assert!(
            values32[k].is_finite(),
            "f32 softplus({v}) = {}",
            values32[k]
        );
        let want = exact(v32);
        assert!(
            (values32[k] as f64 - want).abs() <= 1e-6 * want.max(1.0),
            "f32 softplus({v})"
        );
        assert!(
            (dx32[k] as f64 - sigmoid(v32)).abs() <= 1e-7,
            "f32 d softplus({v})"
        );
    }
    let nan = softplus(d.tensor_from_vec(vec![f64::NAN], (1,)));
    assert!(nan.as_vec()[0].is_nan(), "a NaN stays NaN");
}
