//! Taylor linear attention: the feature and direct forms agree; the prefix scan and the
//! feature map have gradient checks; the form choice follows the sizes.

use dfdx::prelude::*;
use quartic::backend::Backend;
use quartic::ops::cumsum::cumsum_composite;
use quartic::ops::taylor::{choose_form, taylor_attend, taylor_feature_map, TaylorForm};
use quartic::spec::visibility::Visibility;

use crate::common::*;

const B: usize = 2;
const H: usize = 2;
const N: usize = 5;
const D: usize = 3;
const E: usize = 2;

fn visibilities() -> Vec<(&'static str, Visibility)> {
    let valid = vec![
        true, true, true, false, true, true, true, false, false, true,
    ];
    let plain = Visibility::all(B, N, N);
    let padded = plain.clone().with_key_valid(valid).unwrap();
    let causal = padded.clone().with_sequence_causality().unwrap();
    vec![
        ("plain", plain),
        ("padded", padded),
        ("causal+padded", causal),
    ]
}

fn run(x: Vec<In>, vis: &Visibility, form: TaylorForm) -> Loss {
    let mut it = x.into_iter();
    let q = it.next().unwrap().reshape_like(&(B, H, N, D));
    let k = it.next().unwrap().reshape_like(&(B, H, N, D));
    let v = it.next().unwrap().reshape_like(&(B, H, N, E));
    probe_loss(taylor_attend(q, k, v, 0.8, 1e-5, vis, form).unwrap(), 3)
}

fn inputs() -> Vec<Vec<f64>> {
    vec![
        randn(11, B * H * N * D),
        randn(12, B * H * N * D),
        randn(13, B * H * N * E),
    ]
}

#[test]
fn feature_and_direct_forms_agree() {
    let d = dev();
    for (name, vis) in visibilities() {
        let mut results = vec![];
        for form in [TaylorForm::Feature, TaylorForm::Direct] {
            let plain: Vec<_> = inputs()
                .into_iter()
                .map(|v| d.tensor_from_vec(v.clone(), (v.len(),)))
                .collect();
            let loss = run(plain.iter().map(|t| t.leaky_trace()).collect(), &vis, form);
            let value = loss.array();
            let mut grads = loss.backward();
            results.push((
                value,
                plain
                    .iter()
                    .map(|t| grad_of(&mut grads, t))
                    .collect::<Vec<_>>(),
            ));
        }
        assert!(
            (results[0].0 - results[1].0).abs() < 1e-12,
            "{name}: {} vs {}",
            results[0].0,
            results[1].0
        );
        for k in 0..3 {
            assert_close(
                &format!("{name}: grad {k}"),
                &results[0].1[k],
                &results[1].1[k],
                1e-12,
                1e-10,
            );
        }
    }
}

#[test]
fn feature_form_gradcheck() {
    for (name, vis) in visibilities() {
        gradcheck(&format!("taylor feature form {name}"), &inputs(), 20, |x| {
            run(x, &vis, TaylorForm::Feature)
        });
    }
}

#[test]
fn feature_map_is_one_plus_s_plus_half_s_squared() {
    let d = dev();
    let (a, b) = (randn(14, D), randn(15, D));
    let fa = taylor_feature_map(d.tensor_from_vec(a.clone(), (1, 1, 1, D))).as_vec();
    let fb = taylor_feature_map(d.tensor_from_vec(b.clone(), (1, 1, 1, D))).as_vec();
    assert_eq!(fa.len(), 1 + D + D * D);
    let s: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
    let dot: f64 = fa.iter().zip(&fb).map(|(x, y)| x * y).sum();
    assert!((dot - (1.0 + s + s * s / 2.0)).abs() < 1e-12);
}

#[test]
fn prefix_sums_fused_and_composite_agree_and_gradcheck() {
    let x = randn(16, B * H * N * 3);
    let d = dev();
    let t = d.tensor_from_vec(x.clone(), (B, H, N, 3));
    let fused = Backend::cumsum_fused(t.clone()).unwrap().as_vec();
    let composite = cumsum_composite(t).as_vec();
    assert_close("cumsum", &fused, &composite, 1e-12, 0.0);
    assert_eq!(fused[3 * 3 + 1], x[1] + x[4] + x[7] + x[10]);
    gradcheck("cumsum fused", &[x.clone()], 30, |v| {
        probe_loss(
            Backend::cumsum_fused(v.into_iter().next().unwrap().reshape_like(&(B, H, N, 3)))
                .unwrap(),
            2,
        )
    });
    gradcheck("cumsum composite", &[x], 30, |v| {
        probe_loss(
            cumsum_composite(v.into_iter().next().unwrap().reshape_like(&(B, H, N, 3))),
            2,
        )
    });
}

#[test]
fn form_choice_follows_the_sizes() {
    let vis = |n: usize| Visibility::all(1, n, n);
    // head dim 16: the feature map has 273 entries, so short sequences go direct, long ones linear
    assert_eq!(
        choose_form(16, 16, 16, 16, &vis(16), 1.0),
        TaylorForm::Direct
    );
    assert_eq!(
        choose_form(4096, 4096, 16, 16, &vis(4096), 1.0),
        TaylorForm::Feature
    );
    // tiny heads: the feature form wins early
    assert_eq!(
        choose_form(256, 256, 2, 2, &vis(256), 1.0),
        TaylorForm::Feature
    );
    // a device whose feature form costs 16× per multiply-add keeps rows of a few hundred direct
    assert_eq!(
        choose_form(512, 512, 8, 8, &vis(512), 16.0),
        TaylorForm::Direct
    );
    assert_eq!(
        choose_form(8192, 8192, 2, 2, &vis(8192), 16.0),
        TaylorForm::Feature
    );
    // causal times that are no prefix (the all-edges pattern) force the direct form
    let shuffled = Visibility::all(1, 4096, 4096)
        .with_times((0..4096).collect(), (0..4096).rev().collect())
        .unwrap();
    assert_eq!(
        choose_form(4096, 4096, 16, 16, &shuffled, 1.0),
        TaylorForm::Direct
    );
}
