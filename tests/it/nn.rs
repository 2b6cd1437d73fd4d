//! The nn blocks: values where a closed form exists, gradient checks of every parameter.

use dfdx::prelude::*;
use quartic::graph::Nodes;
use quartic::nn::embedding::{DynamicPositionBias, EdgeEmbed, Embedding};
use quartic::nn::feedforward::FeedForward;
use quartic::nn::head_mix::HeadMix;
use quartic::nn::linear::Linear;
use quartic::nn::norms::{LayerNorm, RmsKind, RmsNorm};
use quartic::nn::taylor_attention::TaylorAttention;
use quartic::nn::Init;
use quartic::ops::activations::{gelu_exact, silu};
use quartic::ops::taylor::TaylorForm;
use quartic::spec::visibility::Visibility;

use crate::common::*;

fn rows(x: In, r: usize, c: usize) -> Tensor<(usize, usize), f64, Cpu, Tp> {
    x.reshape_like(&(r, c))
}

#[test]
fn exact_gelu_values_and_gradient() {
    let d = dev();
    // x·Φ(x) at a few points (Φ from the closed forms of erf at these arguments)
    let x = d.tensor_from_vec(vec![1.0, -0.5, 2.0, 0.0], (4,));
    let want = [
        0.8413447460685429,
        -0.15426876936299347,
        1.9544997361036416,
        0.0,
    ];
    assert_close(
        "gelu values",
        &gelu_exact(x).unwrap().as_vec(),
        &want,
        1e-7,
        1e-7,
    );
    gradcheck(
        "exact gelu",
        &[vec![1.0, -0.5, 2.0, 0.0, -2.5, 0.3]],
        6,
        |v| probe_loss(gelu_exact(v.into_iter().next().unwrap()).unwrap(), 1),
    );
    gradcheck("silu", &[vec![1.0, -0.5, 2.0, 0.0]], 4, |v| {
        probe_loss(silu(v.into_iter().next().unwrap()), 1)
    });
}

#[test]
fn dfdx_accurate_gelu_backward_is_still_wrong_so_the_correction_is_needed() {
    // If this starts failing, dfdx fixed its backward and `gelu_exact` must drop its correction.
    let d = dev();
    let x = d.tensor_from_vec(vec![1.0f64], (1,));
    let g = x
        .leaky_trace()
        .accurate_gelu()
        .sum::<(), _>()
        .backward()
        .get(&x)
        .as_vec()[0];
    assert!(
        (g - 1.0833).abs() > 0.05,
        "dfdx's accurate_gelu gradient at 1 is now {g}"
    );
}

#[test]
fn linear_and_norms_gradcheck() {
    let x = randn(1, 4 * 5);
    gradcheck_block(
        "linear",
        |i| Linear::new(&i.pp("lin"), 5, 3, true).unwrap(),
        &[x.clone()],
        20,
        |m, v| {
            probe_loss(
                m.forward(rows(v.into_iter().next().unwrap(), 4, 5))
                    .unwrap(),
                2,
            )
        },
    );
    for kind in [RmsKind::Scaled { eps: 1e-5 }, RmsKind::Unit] {
        gradcheck_block(
            &format!("rmsnorm {kind:?}"),
            |i| RmsNorm::new(i, 5, kind, "gamma").unwrap(),
            &[x.clone()],
            20,
            |m, v| {
                probe_loss(
                    m.forward(rows(v.into_iter().next().unwrap(), 4, 5))
                        .unwrap(),
                    2,
                )
            },
        );
    }
    gradcheck_block(
        "layernorm",
        |i| LayerNorm::new(i, 5, 1e-5).unwrap(),
        &[x],
        20,
        |m, v| {
            probe_loss(
                m.forward(rows(v.into_iter().next().unwrap(), 4, 5))
                    .unwrap(),
                2,
            )
        },
    );
}

#[test]
fn norm_values_follow_their_formulas() {
    let d = dev();
    let x = randn(2, 5);
    let init = Init::random(&d, 0);
    let scaled =
        RmsNorm::<f64, Cpu>::new(&init, 5, RmsKind::Scaled { eps: 1e-5 }, "scale").unwrap();
    let unit = RmsNorm::<f64, Cpu>::new(&init, 5, RmsKind::Unit, "gamma").unwrap();
    let t = || d.tensor_from_vec(x.clone(), (1, 5));
    let ms: f64 = x.iter().map(|v| v * v).sum::<f64>() / 5.0;
    let norm: f64 = x.iter().map(|v| v * v).sum::<f64>().sqrt();
    let want_scaled: Vec<f64> = x.iter().map(|v| v / (ms + 1e-5).sqrt()).collect();
    let want_unit: Vec<f64> = x.iter().map(|v| v / norm * 5f64.sqrt()).collect();
    assert_close(
        "scaled rmsnorm",
        &scaled.forward(t()).unwrap().as_vec(),
        &want_scaled,
        1e-12,
        1e-12,
    );
    assert_close(
        "unit rmsnorm",
        &unit.forward(t()).unwrap().as_vec(),
        &want_unit,
        1e-12,
        1e-12,
    );
}

#[test]
fn feedforward_and_head_mix_gradcheck() {
    gradcheck_block(
        "feedforward",
        |i| FeedForward::new(&i.pp("ff"), 4, 2, 1e-5).unwrap(),
        &[randn(3, 3 * 4)],
        16,
        |m, v| {
            probe_loss(
                m.forward(rows(v.into_iter().next().unwrap(), 3, 4))
                    .unwrap(),
                2,
            )
        },
    );
    gradcheck_block(
        "head mix",
        |i| HeadMix::new(i, 3, 2).unwrap(),
        &[randn(4, 2 * 3 * 4 * 4)],
        16,
        |m, v| {
            probe_loss(
                m.forward(v.into_iter().next().unwrap().reshape_like(&(2, 3, 4, 4)))
                    .unwrap()
                    .into_tensor(),
                2,
            )
        },
    );
}

#[test]
fn embeddings_gradcheck_and_reject_bad_ids() {
    let ids = [0usize, 3, 3, 1, 2, 0];
    gradcheck_block(
        "embedding",
        |i| Embedding::new(i, 4, 3).unwrap(),
        &[],
        12,
        |m, _| probe_loss(m.forward(&ids, 2, 3).unwrap().into_tensor(), 2),
    );
    gradcheck_block(
        "edge embed",
        |i| EdgeEmbed::new(i, 3, 4).unwrap(),
        &[randn(5, 2 * 3 * 3)],
        12,
        |m, v| {
            probe_loss(
                m.forward(Nodes::new(
                    v.into_iter().next().unwrap().reshape_like(&(2, 3, 3)),
                ))
                .unwrap()
                .into_tensor(),
                2,
            )
        },
    );
    gradcheck_block(
        "dynamic position bias",
        |i| DynamicPositionBias::new(i, 6, 3, 2).unwrap(),
        &[],
        12,
        |m, _| probe_loss(m.forward::<Tp>(4).unwrap(), 2),
    );
    let d = dev();
    let emb = Embedding::<f64, Cpu>::new(&Init::random(&d, 0), 4, 3).unwrap();
    let err = emb
        .forward::<NoneTape>(&[0, 1, 9, 2], 2, 2)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("id 9") && err.contains("batch 1, position 0"),
        "{err}"
    );
    assert!(emb.forward::<NoneTape>(&[0, 1, 2], 2, 2).is_err());
    assert!(emb.positions::<NoneTape>(1, 5).is_err());
}

#[test]
fn dynamic_position_bias_depends_on_distance_only() {
    let d = dev();
    let dpb = DynamicPositionBias::<f64, Cpu>::new(&Init::random(&d, 3), 8, 2, 2).unwrap();
    let n = 5;
    let bias = dpb.forward::<NoneTape>(n).unwrap().as_vec();
    for i in 0..n {
        for j in 0..n {
            for (a, b) in [(i + 1, j + 1)] {
                if a < n && b < n {
                    assert_eq!(bias[(i * n + j) * 2], bias[(a * n + b) * 2]);
                }
            }
        }
    }
    assert_ne!(bias[1 * 2], bias[n * 2], "distances -1 and +1 differ");
}

#[test]
fn taylor_attention_block_gradcheck_and_forms_agree_when_causal() {
    let (b, n, dim) = (2, 4, 6);
    let vis = Visibility::all(b, n, n)
        .with_key_valid(vec![true, true, true, false, true, true, true, true])
        .unwrap()
        .with_sequence_causality()
        .unwrap();
    let x = randn(7, b * n * dim);
    for form in [TaylorForm::Feature, TaylorForm::Direct] {
        gradcheck_block(
            &format!("taylor attention {form:?}"),
            |i| {
                let mut t = TaylorAttention::new(i, dim, 2, 3).unwrap();
                t.form = form;
                t
            },
            &[x.clone()],
            10,
            |m, v| {
                probe_loss(
                    m.forward(
                        v.into_iter().next().unwrap().reshape_like(&(b, n, dim)),
                        &vis,
                    )
                    .unwrap(),
                    2,
                )
            },
        );
    }
    let d = dev();
    let outs: Vec<Vec<f64>> = [TaylorForm::Feature, TaylorForm::Direct]
        .into_iter()
        .map(|form| {
            let mut t = TaylorAttention::<f64, Cpu>::new(&Init::random(&d, 9), dim, 2, 3).unwrap();
            t.form = form;
            t.forward(d.tensor_from_vec(x.clone(), (b, n, dim)), &vis)
                .unwrap()
                .as_vec()
        })
        .collect();
    assert_close(
        "causal taylor block, feature vs direct",
        &outs[0],
        &outs[1],
        1e-12,
        1e-10,
    );
}

/// Both visitors of a model, written from one field list, list the same parameters in the same
/// order (the order of checkpoints and optimizer state), each name once: every built-in rule's
/// model (with edge inputs and heads) and the multi-stream model, as `quartic check` builds them.
#[test]
fn both_parameter_visitors_agree_for_every_model() {
    use quartic::models::Model;
    use quartic::nn::HasParams;

    let d = dev();
    for (name, config) in quartic::models::self_check::models(6).unwrap() {
        let mut model = Model::<f64, Cpu>::new(&config, None, &Init::random(&d, 1)).unwrap();
        let read: Vec<String> = model.params().iter().map(|p| p.name.clone()).collect();
        let mut written = Vec::new();
        model.visit_params_mut(&mut |p| written.push(p.name.clone()));
        assert!(!read.is_empty());
        assert_eq!(read, written, "{name}");
        let unique: std::collections::BTreeSet<&String> = read.iter().collect();
        assert_eq!(unique.len(), read.len(), "{name}: a name twice: {read:?}");
    }
}
