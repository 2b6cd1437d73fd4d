//! The memory-efficient attention kernel against the composite form (weights, then a matmul):
//! values and every gradient, across query and key block boundaries, softmax and Taylor, with
//! bias, padding and causal times.

use dfdx::prelude::*;
use quartic::backend::Backend;
use quartic::ops::weights::{weights_composite, Normalizer, WeightsSpec};
use quartic::spec::visibility::Visibility;

use crate::common::*;

fn check(nq: usize, nk: usize, normalizer: Normalizer, bias: bool, masked: bool) {
    let d = dev();
    let (p, h, dk, e) = (2, 2, 5, 3);
    let mut vis = Visibility::all(p, nq, nk);
    if masked {
        let valid = (0..p * nk)
            .map(|x| x % 7 != 3 && !(x / nk == 1 && x % nk > nk - 20))
            .collect();
        let qt = (0..p * nq).map(|x| (x % nq) * nk / nq).collect();
        let kt = (0..p * nk).map(|x| x % nk).collect();
        vis = vis
            .with_key_valid(valid)
            .unwrap()
            .with_times(qt, kt)
            .unwrap();
    }
    let spec = WeightsSpec {
        scale: 0.4,
        normalizer,
        visibility: vis,
    };
    let qv = randn(1, p * h * nq * dk);
    let kv = randn(2, p * h * nk * dk);
    let vv = randn(3, p * h * nk * e);
    let bv = randn(4, p * h * nq * nk);
    let run = |fused: bool| {
        let q = d.tensor_from_vec(qv.clone(), (p, h, nq, dk));
        let k = d.tensor_from_vec(kv.clone(), (p, h, nk, dk));
        let v = d.tensor_from_vec(vv.clone(), (p, h, nk, e));
        let b = d.tensor_from_vec(bv.clone(), (p, h, nq, nk));
        let (kt, vt, bt) = (
            k.clone().retaped::<Tp>(),
            v.clone().retaped::<Tp>(),
            b.clone().retaped::<Tp>(),
        );
        let bias = bias.then_some(bt);
        let out = if fused {
            Backend::attention_fused(q.leaky_trace(), kt, vt, bias, &spec).unwrap()
        } else {
            weights_composite(q.leaky_trace(), kt, bias, None, &spec)
                .unwrap()
                .matmul(vt)
        };
        let values = out.as_vec();
        let mut g = probe_loss(out, 9).backward();
        let grads: Vec<Vec<f64>> = [
            grad_of(&mut g, &q),
            grad_of(&mut g, &k),
            grad_of(&mut g, &v),
            grad_of(&mut g, &b),
        ]
        .to_vec();
        (values, grads)
    };
    let (a, ga) = run(true);
    let (b, gb) = run(false);
    let what = format!("nq {nq} nk {nk} {normalizer:?} bias {bias} masked {masked}");
    assert_close(&format!("{what}: output"), &a, &b, 1e-10, 1e-9);
    for (k, (x, y)) in ga.iter().zip(&gb).enumerate() {
        assert_close(&format!("{what}: gradient {k}"), x, y, 1e-10, 1e-9);
    }
}

#[test]
fn flash_attention_equals_the_composite_form() {
    for normalizer in [Normalizer::Softmax, Normalizer::Taylor { eps: 1e-5 }] {
        check(70, 300, normalizer, true, true);
        check(70, 300, normalizer, false, false);
        check(5, 9, normalizer, true, false);
        check(130, 17, normalizer, false, true);
    }
}

/// f32 attention with Taylor weights and head widths that are multiples of eight (the kernel
/// that keeps eight queries per vector, on CPUs with AVX2) against the composite form in f64:
/// values and the gradients of q, k and v, with query and key counts that leave partial
/// blocks, key padding, and rows far enough apart that the kernel copies them first.
fn check_f32_taylor(nq: usize, nk: usize, (dk, e): (usize, usize), masked: bool) {
    type Tp32 = OwnedTape<f32, Cpu>;
    let d = dev();
    let (p, h) = (2, 3);
    let mut vis = Visibility::all(p, nq, nk);
    if masked {
        // the second problem's last keys are all padding when nk ≤ 4
        let valid = (0..p * nk)
            .map(|x| x % 7 != 3 && !(x / nk == 1 && x % nk > nk.saturating_sub(5)))
            .collect();
        vis = vis.with_key_valid(valid).unwrap();
    }
    let spec = WeightsSpec {
        scale: 0.3,
        normalizer: Normalizer::Taylor { eps: 1e-5 },
        visibility: vis,
    };
    let (qv, kv, vv) = (
        randn(11, p * h * nq * dk),
        randn(12, p * h * nk * dk),
        randn(13, p * h * nk * e),
    );
    let probe = randn(14, p * h * nq * e);
    let to32 = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let to64 = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<f64>>();
    // the kernel in f32
    let q = d.tensor_from_vec(to32(&qv), (p, h, nq, dk));
    let k = d.tensor_from_vec(to32(&kv), (p, h, nk, dk));
    let v = d.tensor_from_vec(to32(&vv), (p, h, nk, e));
    let out = Backend::attention_fused(
        q.leaky_trace(),
        k.clone().retaped::<Tp32>(),
        v.clone().retaped::<Tp32>(),
        None,
        &spec,
    )
    .unwrap();
    let values = to64(out.as_vec());
    let weights = d.tensor_from_vec(to32(&probe), (p, h, nq, e));
    let mut g = (out * weights).sum().backward();
    let grads: Vec<Vec<f64>> = vec![
        to64(g.get_or_alloc_mut(&q).unwrap().to_vec()),
        to64(g.get_or_alloc_mut(&k).unwrap().to_vec()),
        to64(g.get_or_alloc_mut(&v).unwrap().to_vec()),
    ];
    // the composite form in f64
    let q = d.tensor_from_vec(qv, (p, h, nq, dk));
    let k = d.tensor_from_vec(kv, (p, h, nk, dk));
    let v = d.tensor_from_vec(vv, (p, h, nk, e));
    let out = weights_composite(
        q.leaky_trace(),
        k.clone().retaped::<Tp>(),
        None,
        None,
        &spec,
    )
    .unwrap()
    .matmul(v.clone().retaped::<Tp>());
    let expected = out.as_vec();
    let weights = d.tensor_from_vec(probe, (p, h, nq, e));
    let mut ge = (out * weights).sum().backward();
    let what = format!("f32 taylor nq {nq} nk {nk} d {dk} e {e} masked {masked}");
    assert_close(&format!("{what}: output"), &values, &expected, 2e-6, 2e-5);
    for (name, (x, t)) in ["q", "k", "v"].iter().zip(grads.iter().zip([&q, &k, &v])) {
        let y = grad_of(&mut ge, t);
        assert_close(&format!("{what}: gradient of {name}"), x, &y, 2e-5, 1e-4);
    }
}

#[test]
fn f32_taylor_attention_equals_the_composite_form() {
    check_f32_taylor(32, 32, (8, 8), false);
    check_f32_taylor(13, 13, (8, 8), true);
    check_f32_taylor(5, 3, (16, 8), true);
    check_f32_taylor(21, 45, (8, 24), false);
    check_f32_taylor(9, 130, (16, 16), true);
    // rows 128 or more apart: keys and values are copied contiguously first
    check_f32_taylor(7, 19, (128, 8), true);
    check_f32_taylor(18, 6, (8, 128), false);
}
