//! The memory-efficient attention kernel against the composite form (weights, then a matmul):
//! values and every gradient, across query and key block boundaries, softmax and Taylor, with
//! bias, padding and causal times.

use dfdx::prelude::*;
use quartic::kernels::flash_cpu::attention_fused;
use quartic::kernels::visibility::Visibility;
use quartic::kernels::weights::{weights_composite, Normalizer, WeightsSpec};

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
            attention_fused(q.leaky_trace(), kt, vt, bias, &spec).unwrap()
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
