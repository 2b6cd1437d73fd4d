//! The attention-weights kernel: fused CPU form against the composite form (values and
//! gradients), gradient checks of both, masking semantics.

use dfdx::prelude::*;
use quartic::backend::Backend;
use quartic::ops::attention::{attend, AttendInputs};
use quartic::ops::weights::{weights_composite, Normalizer, WeightsSpec};
use quartic::spec::visibility::Visibility;

use crate::common::*;

const B: usize = 2;
const H: usize = 3;
const NQ: usize = 4;
const NK: usize = 5;
const DH: usize = 3;

/// Padding that leaves query 0 of batch 1 with no visible key under causal times.
fn visibility(causal: bool) -> Visibility {
    let valid = vec![
        true, true, false, true, true, false, true, true, true, false,
    ];
    let vis = Visibility::all(B, NQ, NK).with_key_valid(valid).unwrap();
    if causal {
        // query i at time i + 1 (so batch 0 query 0 sees key 0 and 1); key j at time j
        let q = (0..B).flat_map(|_| (0..NQ).map(|i| i)).collect();
        let k = (0..B).flat_map(|_| 0..NK).collect();
        vis.with_times(q, k).unwrap()
    } else {
        vis
    }
}

fn spec(normalizer: Normalizer, causal: bool) -> WeightsSpec {
    WeightsSpec {
        scale: 0.7,
        normalizer,
        visibility: visibility(causal),
    }
}

fn inputs() -> Vec<Vec<f64>> {
    vec![
        randn(1, B * H * NQ * DH),
        randn(2, B * H * NK * DH),
        randn(3, B * H * NQ * NK),
        randn(4, H * H),
    ]
}

/// Runs one form on flat inputs; `with` picks which optional inputs are used.
fn run(
    fused: bool,
    x: Vec<In>,
    spec: &WeightsSpec,
    bias: bool,
    talking: bool,
) -> Tensor<(usize, usize, usize, usize), f64, Cpu, Tp> {
    let mut it = x.into_iter();
    let q = it.next().unwrap().reshape_like(&(B, H, NQ, DH));
    let k = it.next().unwrap().reshape_like(&(B, H, NK, DH));
    let b = it.next().unwrap().reshape_like(&(B, H, NQ, NK));
    let w = it.next().unwrap().reshape_like(&(H, H));
    let (b, w) = (bias.then_some(b), talking.then_some(w));
    if fused {
        Backend::weights_fused(q, k, b, w, spec).unwrap()
    } else {
        weights_composite(q, k, b, w, spec).unwrap()
    }
}

fn cases() -> Vec<(Normalizer, bool, bool, bool)> {
    let mut out = vec![];
    for n in [Normalizer::Softmax, Normalizer::Taylor { eps: 1e-5 }] {
        for causal in [false, true] {
            for (bias, talking) in [(false, false), (true, false), (true, true)] {
                out.push((n, causal, bias, talking));
            }
        }
    }
    out
}

#[test]
fn fused_and_composite_weights_agree_in_values_and_gradients() {
    let d = dev();
    for (n, causal, bias, talking) in cases() {
        let s = spec(n, causal);
        let mut results = vec![];
        for fused in [true, false] {
            let plain: Vec<_> = inputs()
                .into_iter()
                .map(|v| d.tensor_from_vec(v.clone(), (v.len(),)))
                .collect();
            let out = run(
                fused,
                plain.iter().map(|t| t.leaky_trace()).collect(),
                &s,
                bias,
                talking,
            );
            let values = out.as_vec();
            let mut grads = probe_loss(out, 9).backward();
            let g: Vec<Vec<f64>> = plain.iter().map(|t| grad_of(&mut grads, t)).collect();
            results.push((values, g));
        }
        let what = format!("{n:?} causal={causal} bias={bias} talking={talking}");
        assert_close(
            &format!("{what}: weights"),
            &results[0].0,
            &results[1].0,
            1e-12,
            1e-10,
        );
        for k in 0..4 {
            assert_close(
                &format!("{what}: grad {k}"),
                &results[0].1[k],
                &results[1].1[k],
                1e-11,
                1e-9,
            );
        }
    }
}

#[test]
fn fused_weights_gradcheck() {
    for (n, causal, bias, talking) in cases() {
        let s = spec(n, causal);
        gradcheck(
            &format!("fused {n:?} causal={causal} bias={bias} talking={talking}"),
            &inputs(),
            24,
            |x| probe_loss(run(true, x, &s, bias, talking), 9),
        );
    }
}

#[test]
fn composite_weights_gradcheck() {
    for (n, causal, _, talking) in cases().into_iter().filter(|c| c.2) {
        let s = spec(n, causal);
        gradcheck(
            &format!("composite {n:?} causal={causal} talking={talking}"),
            &inputs(),
            24,
            |x| probe_loss(run(false, x, &s, true, talking), 9),
        );
    }
}

#[test]
fn invisible_keys_get_zero_weight_and_empty_rows_are_zero_not_nan() {
    let d = dev();
    for n in [Normalizer::Softmax, Normalizer::Taylor { eps: 1e-5 }] {
        let s = spec(n, true);
        let plain: Vec<_> = inputs()
            .into_iter()
            .map(|v| d.tensor_from_vec(v.clone(), (v.len(),)))
            .collect();
        for fused in [true, false] {
            let w = run(
                fused,
                plain.iter().map(|t| t.leaky_trace()).collect(),
                &s,
                true,
                true,
            )
            .as_vec();
            for b in 0..B {
                for h in 0..H {
                    for i in 0..NQ {
                        let row = &w[((b * H + h) * NQ + i) * NK..][..NK];
                        let visible: Vec<bool> =
                            (0..NK).map(|j| s.visibility.visible(b, i, j)).collect();
                        for (j, &x) in row.iter().enumerate() {
                            assert!(x.is_finite());
                            if !visible[j] {
                                assert_eq!(x, 0.0, "{n:?} fused={fused}: invisible key {j} of query {i} has weight {x}");
                            }
                        }
                        let total: f64 = row.iter().sum();
                        if visible.iter().any(|&v| v) {
                            if n == Normalizer::Softmax {
                                assert!((total - 1.0).abs() < 1e-12);
                            }
                        } else {
                            assert_eq!(total, 0.0, "query with no visible key must get zeros");
                        }
                    }
                }
            }
        }
    }
    // the case the fixture is built for really occurs: batch 1, query 0 sees nothing
    let v = visibility(true);
    assert!((0..NK).all(|j| !v.visible(1, 0, j)));
}

#[test]
fn attention_with_gates_and_returned_weights_gradcheck() {
    let s = spec(Normalizer::Softmax, true);
    let mut ins = inputs();
    ins.push(randn(5, B * H * NK * 2)); // values, e = 2
    ins.push(randn(6, B * H * NQ)); // gate logits
    gradcheck("attend + gates + weights", &ins, 20, |x| {
        let mut it = x.into_iter();
        let q = it.next().unwrap().reshape_like(&(B, H, NQ, DH));
        let k = it.next().unwrap().reshape_like(&(B, H, NK, DH));
        let bias = it.next().unwrap().reshape_like(&(B, H, NQ, NK));
        let talking = it.next().unwrap().reshape_like(&(H, H));
        let v = it.next().unwrap().reshape_like(&(B, H, NK, 2));
        let gates = it.next().unwrap().reshape_like(&(B, H, NQ));
        let r = attend(
            q,
            k,
            v,
            AttendInputs {
                bias: Some(bias),
                talking: Some(talking),
                gates: Some(gates),
            },
            &s,
            true,
        )
        .unwrap();
        probe_loss(r.out, 11) + probe_loss(r.weights.unwrap(), 12)
    });
}

#[test]
fn shape_errors_are_reported_not_panicked() {
    let d = dev();
    let q: Tensor<_, f64, _> = d.zeros_like(&(B, H, NQ, DH));
    let k: Tensor<_, f64, _> = d.zeros_like(&(B, H, NK, DH + 1));
    let err = Backend::weights_fused(q.clone(), k, None, None, &spec(Normalizer::Softmax, false))
        .unwrap_err();
    assert!(err.to_string().contains("attention keys"), "{err}");
    let k: Tensor<_, f64, _> = d.zeros_like(&(B, H, NK, DH));
    let w: Tensor<_, f64, _> = d.zeros_like(&(H + 1, H + 1));
    let err = weights_composite(
        q.clone(),
        k.clone(),
        None,
        Some(w),
        &spec(Normalizer::Softmax, false),
    )
    .unwrap_err();
    assert!(err.to_string().contains("talking-heads"), "{err}");
    let bad_vis = WeightsSpec {
        scale: 1.0,
        normalizer: Normalizer::Softmax,
        visibility: Visibility::all(B, NQ + 1, NK),
    };
    let err = Backend::weights_fused(q, k, None, None, &bad_vis).unwrap_err();
    assert!(err.to_string().contains("visibility"), "{err}");
}

#[test]
fn the_device_keep_mask_is_the_visibility_rule() {
    use quartic::ops::weights::{keep_mask, Visibility};
    let d = dev();
    let (b, q, k) = (3, 4, 5);
    let all = Visibility::all(b, q, k);
    assert!(
        keep_mask::<f64, Cpu>(&d, &all).unwrap().is_none(),
        "nothing to mask"
    );
    let valid: Vec<bool> = (0..b * k).map(|e| e % 4 != 3).collect();
    let pairs: Vec<bool> = (0..b * q * k).map(|e| (e * 7 + e / 5) % 3 != 0).collect();
    let qt: Vec<usize> = (0..b * q).map(|e| (e * 5) % 7).collect();
    let kt: Vec<usize> = (0..b * k).map(|e| (e * 3) % 6).collect();
    let cases = [
        (
            "padding",
            all.clone().with_key_valid(valid.clone()).unwrap(),
        ),
        (
            "times",
            all.clone().with_times(qt.clone(), kt.clone()).unwrap(),
        ),
        ("pairs", all.clone().with_pairs(pairs.clone()).unwrap()),
        (
            "all three",
            all.clone()
                .with_key_valid(valid)
                .unwrap()
                .with_times(qt, kt)
                .unwrap()
                .with_pairs(pairs)
                .unwrap(),
        ),
    ];
    for (what, vis) in cases {
        let got = keep_mask::<f64, Cpu>(&d, &vis)
            .unwrap()
            .expect(what)
            .as_vec();
        let want = vis.dense::<f64>();
        assert!(
            want.iter().any(|&x| x == 0.0) && want.iter().any(|&x| x == 1.0),
            "{what}"
        );
        assert_eq!(got, want, "{what}");
    }
}

/// The talking-heads weights' gradient sums over every query row; its order, and so its last
/// bits, must not depend on how many threads run the rows or who steals which (a resumed
/// training run would drift from an uninterrupted one). The same backward in pools of 1, 2
/// and 5 threads gives the same bits.
#[test]
fn the_talking_heads_gradient_does_not_depend_on_the_threads() {
    let (b, h, n, d) = (4, 4, 64, 8);
    let spec = WeightsSpec {
        scale: 0.35,
        normalizer: Normalizer::Softmax,
        visibility: Visibility::all(b, n, n),
    };
    let (qv, kv, wv) = (
        randn(31, b * h * n * d),
        randn(32, b * h * n * d),
        randn(33, h * h),
    );
    let talking_grad = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let dv = dev();
            let q = dv.tensor_from_vec(qv.clone(), (b, h, n, d));
            let k = dv.tensor_from_vec(kv.clone(), (b, h, n, d));
            let w = dv.tensor_from_vec(wv.clone(), (h, h));
            let out = Backend::weights_fused(
                q.leaky_trace(),
                k.retaped::<Tp>(),
                None,
                Some(w.retaped::<Tp>()),
                &spec,
            )
            .unwrap();
            let mut grads = probe_loss(out, 34).backward();
            grad_of(&mut grads, &w)
        })
    };
    let one = talking_grad(1);
    for threads in [2, 5] {
        assert_eq!(talking_grad(threads), one, "{threads} threads against one");
    }
}
