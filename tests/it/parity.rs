//! Parity with the PyTorch original, from the reference fixtures (outputs and gradients).
//! The directory comes from QUARTIC_REFERENCE_FIXTURES; a missing fixture fails the test.

use std::collections::HashMap;

use dfdx::prelude::*;
use quartic::fixtures::Fixture;
use quartic::nn::taylor_attention::TaylorAttention;
use quartic::nn::{HasParams, Init};
use quartic::ops::routing::{coor_descent, soft_topk, CoorDescent};
use quartic::ops::taylor::TaylorForm;
use quartic::spec::visibility::Visibility;

use crate::common::assert_close;

type Dev = Cpu;
const ATOL: f64 = 1e-4;
const RTOL: f64 = 1e-3;

fn load(name: &str) -> Fixture {
    Fixture::load(name).unwrap_or_else(|e| panic!("reference fixture `{name}` is required: {e}"))
}

fn run_taylor_fixture(name: &str, form: TaylorForm) {
    let fx = load(name);
    let dev = Dev::default();
    let cfg = |k: &str| fx.config_f64(&[k]).unwrap() as usize;
    let (dim, heads, dim_head) = (cfg("dim"), cfg("heads"), cfg("dim_head"));
    let mut block =
        TaylorAttention::<f32, Dev>::new(&Init::from_map(&dev, fx.params()), dim, heads, dim_head)
            .unwrap();
    block.form = form;
    let x = fx.tensor("input.0").unwrap();
    let (b, n) = (x.dims[0], x.dims[1]);
    let mut vis = Visibility::all(b, n, n);
    if let Ok(mask) = fx.tensor("input.1") {
        vis = vis.with_key_valid(mask.as_bool()).unwrap();
    }
    let x: Tensor<(usize, usize, usize), f32, Dev> =
        dev.tensor_from_vec(x.values.iter().map(|&v| v as f32).collect(), (b, n, dim));
    let out = block.forward(x.leaky_trace(), &vis).unwrap();
    let expected = fx.tensor("output.main").unwrap();
    let got: Vec<f64> = out.as_vec().iter().map(|&v| v as f64).collect();
    assert_close(
        &format!("{name} ({form:?}): output"),
        &got,
        &expected.values,
        ATOL,
        RTOL,
    );
    let probe = fx.tensor("probe.main").unwrap();
    let probe = dev.tensor_from_vec(
        probe.values.iter().map(|&v| v as f32).collect(),
        (b, n, dim),
    );
    let grads = (out * probe).sum().backward();
    let params: HashMap<String, Vec<f64>> = block
        .params()
        .into_iter()
        .map(|p| {
            (
                p.name.clone(),
                grads
                    .get(&p.value)
                    .as_vec()
                    .iter()
                    .map(|&v| v as f64)
                    .collect(),
            )
        })
        .collect();
    let mut checked = 0;
    for (key, t) in &fx.tensors {
        if let Some(pname) = key.strip_prefix("grad.") {
            let got = params
                .get(pname)
                .unwrap_or_else(|| panic!("{name}: no parameter `{pname}`"));
            assert_close(
                &format!("{name} ({form:?}): grad {pname}"),
                got,
                &t.values,
                ATOL,
                RTOL,
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 5, "{name}: every parameter gradient is compared");
}

#[test]
fn parity_taylor_attention() {
    for form in [TaylorForm::Feature, TaylorForm::Direct] {
        run_taylor_fixture("taylor_attention", form);
    }
}

#[test]
fn parity_taylor_attention_masked() {
    for form in [TaylorForm::Feature, TaylorForm::Direct] {
        run_taylor_fixture("taylor_attention_masked", form);
    }
}

#[test]
fn parity_coor_descent() {
    let fx = load("coor_descent");
    let dev = Dev::default();
    let scores = fx.tensor("input.scores").unwrap();
    let shape = (scores.dims[0], scores.dims[1]);
    let input: Tensor<(usize, usize), f32, Dev> =
        dev.tensor_from_vec(scores.values.iter().map(|&v| v as f32).collect(), shape);
    let f32s = |name: &str| -> Vec<f32> {
        fx.tensor(name)
            .unwrap()
            .values
            .iter()
            .map(|&v| v as f32)
            .collect()
    };
    let to64 = |v: Vec<f32>| -> Vec<f64> { v.into_iter().map(|x| x as f64).collect() };
    let runs = fx.config["runs"].as_array().expect("runs").clone();
    assert_eq!(runs.len(), 3);
    for (i, run) in runs.iter().enumerate() {
        let cfg = CoorDescent {
            n_iters: run["n_iters"].as_u64().unwrap() as usize,
            eps: run["eps"].as_f64().unwrap(),
            eps_init: run.get("eps_init").and_then(|v| v.as_f64()),
            eps_decay: run.get("eps_decay").and_then(|v| v.as_f64()).unwrap_or(1.0),
        };
        let k = run["k"].as_f64().unwrap();
        let out = coor_descent(input.leaky_trace(), k, None, &cfg).unwrap();
        assert_close(
            &format!("coor_descent run {i}: output"),
            &to64(out.as_vec()),
            &fx.tensor(&format!("output.coor_descent_{i}"))
                .unwrap()
                .values,
            ATOL,
            RTOL,
        );
        let probe = dev.tensor_from_vec(f32s(&format!("probe.coor_descent_{i}")), shape);
        let grads = (out * probe).sum().backward();
        assert_close(
            &format!("coor_descent run {i}: grad"),
            &to64(grads.get(&input).as_vec()),
            &fx.tensor(&format!("grad.coor_descent_{i}")).unwrap().values,
            ATOL,
            RTOL,
        );
    }
    let t = &fx.config["topk"];
    let cfg = CoorDescent {
        n_iters: t["n_iters"].as_u64().unwrap() as usize,
        eps: t["eps"].as_f64().unwrap(),
        eps_init: None,
        eps_decay: 1.0,
    };
    let k = t["k"].as_u64().unwrap() as usize;
    let top = soft_topk(
        input.leaky_trace(),
        k,
        t["coor_descent_k_ratio"].as_f64().unwrap(),
        None,
        &cfg,
    )
    .unwrap();
    let expected_idx = fx.tensor("output.topk_indices").unwrap().as_usize();
    assert_eq!(top.picks.indices(), expected_idx, "hard top-k indices");
    assert_close(
        "topk values",
        &to64(top.values.as_vec()),
        &fx.tensor("output.topk_values").unwrap().values,
        ATOL,
        RTOL,
    );
    assert_close(
        "topk coor_descent values",
        &to64(top.coor_descent_values.as_vec()),
        &fx.tensor("output.topk_coor_descent_values").unwrap().values,
        ATOL,
        RTOL,
    );
    assert_close(
        "topk gates",
        &to64(top.gates.as_vec()),
        &fx.tensor("output.topk_gates").unwrap().values,
        ATOL,
        RTOL,
    );
    let probe = dev.tensor_from_vec(f32s("probe.topk_values"), (shape.0, k));
    let grads = (top.values * probe).sum().backward();
    assert_close(
        "topk grad",
        &to64(grads.get(&input).as_vec()),
        &fx.tensor("grad.topk").unwrap().values,
        ATOL,
        RTOL,
    );
}

#[test]
fn parity_fixtures_missing_is_an_error() {
    let err = Fixture::load_from(
        std::path::Path::new("/nonexistent-fixture-dir"),
        "taylor_attention",
    )
    .err()
    .expect("must fail");
    assert!(
        err.to_string().contains("QUARTIC_REFERENCE_FIXTURES"),
        "{err}"
    );
}

/// A whole model through `ReferenceModel::import`: logits (padded rows included), the auxiliary
/// loss, and every parameter's gradient of `sum(logits · probe) (+ aux)` under the reference's
/// names (a parameter the reference has no gradient for must get none from us either).
fn model_parity(name: &str) {
    use quartic::models::reference::ReferenceModel;
    use quartic::models::Model;
    use quartic::nn::{HasParams, Init};
    use std::collections::HashMap;
    let fx = Fixture::load(name).unwrap_or_else(|e| panic!("{e}"));
    let reference = ReferenceModel::from_config(&fx.config).unwrap();
    let cfg = reference.model_config().unwrap();
    let params = reference
        .import(&fx.params())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let dev = Cpu::default();
    let model = Model::<f32, Cpu>::new(&cfg, None, &Init::from_map(&dev, params)).unwrap();
    let input = fx.tensor("input.0").unwrap();
    let (b, n) = (input.dims[0], input.dims[1]);
    let valid = fx.tensors.get("input.1").map(|m| m.as_bool());
    let out = model
        .forward::<OwnedTape<f32, Cpu>>(&input.as_usize(), b, n, valid.as_deref())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let f64s = |v: Vec<f32>| v.into_iter().map(|x| x as f64).collect::<Vec<_>>();
    let want = fx.tensor("output.main").unwrap();
    assert_close(
        &format!("{name} logits"),
        &f64s(out.logits.as_vec()),
        &want.values,
        1e-4,
        1e-3,
    );
    let probe = fx.tensor("probe.main").unwrap();
    let shape = *out.logits.shape();
    let probe = dev.tensor_from_vec(probe.values.iter().map(|&x| x as f32).collect(), shape);
    let mut loss = (out.logits * probe).sum();
    if let Some(aux) = out.aux {
        let want = fx.tensor("output.aux").unwrap();
        assert_close(
            &format!("{name} aux loss"),
            &[aux.array() as f64],
            &want.values,
            1e-4,
            1e-3,
        );
        loss = loss + aux;
    }
    let mut grads = loss.backward();
    let ours: HashMap<String, Vec<f64>> = model
        .params()
        .iter()
        .map(|p| {
            (
                p.name.clone(),
                f64s(grads.get_or_alloc_mut(&p.value).unwrap().to_vec()),
            )
        })
        .collect();
    let dims: HashMap<String, Vec<usize>> =
        fx.params().into_iter().map(|(k, (d, _))| (k, d)).collect();
    let theirs = reference.export(&ours, &dims).unwrap();
    assert_eq!(
        theirs.len(),
        dims.len(),
        "{name}: every reference parameter is mapped"
    );
    for (pname, g) in &theirs {
        match fx.tensors.get(&format!("grad.{pname}")) {
            Some(want) => {
                assert_close(&format!("{name} grad {pname}"), g, &want.values, 1e-4, 1e-3)
            }
            None => assert!(
                g.iter().all(|x| x.abs() < 1e-6),
                "{name}: {pname} has no reference gradient but ours is not zero"
            ),
        }
    }
}

#[test]
fn parity_quartic_model() {
    model_parity("quartic");
}

#[test]
fn parity_quartic_masked_model() {
    model_parity("quartic_masked");
}

#[test]
fn parity_quartic_hyper_model() {
    model_parity("quartic_hyper");
}

#[test]
fn parity_relational_model() {
    model_parity("relational");
}

#[test]
fn parity_relational_causal_model() {
    model_parity("relational_causal");
}

#[test]
fn parity_multistream_model() {
    model_parity("multistream");
}

/// Exporting to the original's `state_dict` and constructor config undoes `import-reference`,
/// for every model fixture: the same config, tensor names, shapes and values.
#[test]
fn export_to_the_original_undoes_import() {
    use quartic::models::reference::ReferenceModel;
    for name in [
        "quartic",
        "quartic_masked",
        "quartic_hyper",
        "relational",
        "relational_causal",
        "multistream",
    ] {
        let fx = Fixture::load(name).unwrap_or_else(|e| panic!("{e}"));
        let reference = ReferenceModel::from_config(&fx.config).unwrap();
        let ours = reference.model_config().unwrap();
        let back = ReferenceModel::from_model_config(&ours, None)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(back, reference, "{name}: the config round trip");
        // every argument the fixture gives comes back with its value
        let json = back.config_json();
        for (key, want) in fx.config.as_object().unwrap() {
            if key == "package" {
                continue;
            }
            let got = &json[key.as_str()];
            let same = match (got.as_f64(), want.as_f64()) {
                (Some(a), Some(b)) => a == b,
                _ => got == want,
            };
            assert!(
                same,
                "{name}: `{key}` exported as {got}, the fixture has {want}"
            );
        }
        let state = fx.params();
        let exported = reference
            .export_state(&reference.import(&state).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut names: Vec<&String> = state.keys().collect();
        names.sort();
        let mut got: Vec<&String> = exported.keys().collect();
        got.sort();
        assert_eq!(got, names, "{name}: tensor names");
        for (k, (dims, values)) in &state {
            let (d, v) = &exported[k];
            assert_eq!(d, dims, "{name}: `{k}` shape");
            // relational's unused final norm comes back as the original's initial value
            if !(name.starts_with("relational") && k == "final_norm.weight") {
                assert_eq!(v, values, "{name}: `{k}` values");
            }
        }
    }
}

/// A model the original cannot compute (ours: the standard attention scale) is refused, and
/// the refusal names what differs.
#[test]
fn models_without_a_counterpart_in_the_original_are_refused() {
    use quartic::models::reference::ReferenceModel;
    use quartic::models::{ModelConfig, QuarticConfig};
    let mut q = QuarticConfig::readme();
    q.num_residual_streams = 1;
    let standard = ModelConfig::Graph(q.to_graph("taylor", false).unwrap());
    let err = ReferenceModel::from_model_config(&standard, None)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("rule_params.scale"), "{err}");
    let other_rule = ModelConfig::Graph(q.to_graph("triangle", false).unwrap());
    let err = ReferenceModel::from_model_config(&other_rule, None)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("rule `triangle` has no counterpart"), "{err}");
}
