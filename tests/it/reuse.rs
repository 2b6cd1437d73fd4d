//! Reuse in the rule language: functions (`def`) and three-index bindings are inlined, so a
//! rule using them computes exactly what the rule written out computes; calls own their
//! parameters under stable names; the literature rules in `examples/rules/` keep causality and
//! padding and pass a gradient check.

use std::collections::HashMap;

use dfdx::prelude::*;
use quartic::graph::GraphMask;
use quartic::nn::{HasParams, Init};
use quartic::rules::{Const, Rule, RuleConfig, RuleLayer};

use crate::common::*;
use crate::rules::{
    assert_explain_snapshot, assert_never_reads_the_future, assert_padding_is_never_read,
    edges_and_their_gradient, gradcheck_loaded_rule,
};

/// AlphaFold's outgoing triangle update with its gated linear as a function, and the sum over
/// k reading a three-index binding.
const WITH_REUSE: &str = "rule tri(hidden = 4)
def gated(x, width) = sigmoid(linear(x, width)) * linear(x, width)
let z[i, j] = rmsnorm(edges[i, j])
let a[i, k] = gated(z[i, k], hidden)
let b[j, k] = gated(z[j, k], hidden)
let prod[i, k, j] = a[i, k] * b[j, k]
let w[i, l, j] = softmax[l](dot(z[i, l], z[l, j], heads: 2))
tri: edges[i, j] += linear(sum[k](prod[i, k, j]), dim_edges) + sum[l](w[i, l, j] * z[l, j])
";

/// The same rule written out.
const WRITTEN_OUT: &str = "rule tri(hidden = 4)
let z[i, j] = rmsnorm(edges[i, j])
let a[i, k] = sigmoid(linear(z[i, k], hidden)) * linear(z[i, k], hidden)
let b[j, k] = sigmoid(linear(z[j, k], hidden)) * linear(z[j, k], hidden)
tri: edges[i, j] += (linear(sum[k](a[i, k] * b[j, k]), dim_edges)
    + sum[l](softmax[l](dot(z[i, l], z[l, j], heads: 2)) * z[l, j]))
";

fn config(dim_edges: usize, causal: bool) -> RuleConfig {
    RuleConfig {
        dim: 8,
        dim_edges,
        causal,
        overrides: vec![],
    }
}

fn layer(src: &str, cfg: &RuleConfig, init: &Init<Cpu>) -> RuleLayer<f64, Cpu> {
    let plan = Rule::parse("tri.rule", src)
        .unwrap()
        .plan(cfg)
        .unwrap_or_else(|e| panic!("{e}"));
    RuleLayer::new(plan, init).unwrap()
}

#[test]
fn functions_and_three_index_bindings_compute_what_the_rule_written_out_computes() {
    let d = dev();
    let (b, n, de) = (2, 5, 6);
    for causal in [false, true] {
        let cfg = config(de, causal);
        let reused = layer(WITH_REUSE, &cfg, &Init::random(&d, 3));
        // the written-out rule takes the function calls' parameters under its own names
        let mut map = HashMap::new();
        for p in reused.params() {
            let name = p.name.replace(".gated0.", ".");
            let values = p.value.as_vec();
            map.insert(name, (p.dims.clone(), values));
        }
        let written = layer(WRITTEN_OUT, &cfg, &Init::from_map(&d, map));
        assert_eq!(reused.num_params(), written.num_params());
        let mask = GraphMask::from_lengths(n, &[5, 3]).unwrap().causal(causal);
        let (x, y) = (
            edges_and_their_gradient(&reused, &mask, (b, n, 8, de)),
            edges_and_their_gradient(&written, &mask, (b, n, 8, de)),
        );
        // the same operations in the same order: the same bits
        assert_eq!(x, y, "causal {causal}");
    }
}

#[test]
fn a_function_call_owns_its_parameters_under_stable_names() {
    let src = |extra: &str| {
        format!(
            "rule r()
def gated(x) = sigmoid(linear(x, dim)) * linear(x, dim)
def twice(x) = gated(x) + gated(rmsnorm(x))
{extra}a: nodes[i] += twice(nodes[i]) + gated(nodes[i] * 2)
"
        )
    };
    let d = dev();
    let names = |src: &str| -> Vec<String> {
        let mut names: Vec<String> = layer(src, &config(4, false), &Init::random(&d, 0))
            .params()
            .into_iter()
            .map(|p| p.name.clone())
            .collect();
        names.sort();
        names
    };
    let want = [
        "a.gated0.linear0.weight",
        "a.gated0.linear1.weight",
        "a.twice0.gated0.linear0.weight",
        "a.twice0.gated0.linear1.weight",
        "a.twice0.gated1.linear0.weight",
        "a.twice0.gated1.linear1.weight",
        "a.twice0.rmsnorm0.weight",
    ];
    assert_eq!(names(&src("")), want);
    // a statement added above, a function added, leave every name in place
    assert_eq!(
        names(&src(
            "def unused(y) = y * 3\ne: edges[i, j] += linear(edges[i, j], dim_edges)\n"
        ))
        .into_iter()
        .filter(|n| n.starts_with("a."))
        .collect::<Vec<_>>(),
        want
    );
    // an argument read twice in the body is one site, not two
    let shared = "rule r()
def gated(x) = sigmoid(x) * x
a: nodes[i] += gated(linear(nodes[i], dim))
";
    assert_eq!(names(shared), ["a.linear0.weight"]);
}

#[test]
fn functions_that_multiply_are_refused_not_expanded_for_ever() {
    // each function calls the one before twice: 2^40 bodies if expanded
    let mut src = String::from("def f0(x) = x * 2\n");
    for k in 1..40 {
        src.push_str(&format!("def f{k}(x) = f{}(x) + f{}(x)\n", k - 1, k - 1));
    }
    src.push_str("nodes[i] += f39(nodes[i])\n");
    let err = Rule::parse("many.rule", &src)
        .unwrap()
        .plan(&config(4, false))
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "more than {} function bodies",
            quartic::rules::check::MAX_EXPANSIONS
        )),
        "{err}"
    );
    // nesting through calls counts as nesting
    let mut deep = String::from("def g0(x) = x\n");
    for k in 1..40 {
        deep.push_str(&format!(
            "def g{k}(x) = g{}(gelu(gelu(gelu(gelu(x)))))\n",
            k - 1
        ));
    }
    deep.push_str("nodes[i] += g39(nodes[i])\n");
    let err = Rule::parse("deep.rule", &deep)
        .unwrap()
        .plan(&config(4, false))
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("levels deep"), "{err}");
}

/// The rules under `examples/rules/`, with small widths for the parameters they declare.
fn example_rules() -> Vec<(Rule, Vec<(String, Const)>)> {
    let mut files: Vec<_> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/rules"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "rule"))
            .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    files
        .into_iter()
        .map(|f| {
            let rule = Rule::load(&f).unwrap();
            let small = widths(&rule, 3.0, 2.0, 4.0);
            (rule, small)
        })
        .collect()
}

/// The values `rule` declares among the widths the example-rule tests use: heads of
/// `dim_head` (edge heads of `edge_dim_head`), `hidden` channels, the smallest multipliers;
/// straight-through gates off.
fn widths(rule: &Rule, dim_head: f64, edge_dim_head: f64, hidden: f64) -> Vec<(String, Const)> {
    let mut values: Vec<(String, Const)> = rule
        .declared_values(&[
            ("heads", 2.0),
            ("dim_head", dim_head),
            ("edge_heads", 2.0),
            ("edge_dim_head", edge_dim_head),
            ("hidden", hidden),
            ("ff_mult", 1.0),
            ("light_heads", 1.0),
            ("light_mult", 1.0),
            ("picks", 3.0),
        ])
        .into_iter()
        .collect();
    if rule.parameters().iter().any(|(name, _)| name == "straight") {
        // straight-through gates are an estimator, not the derivative (see the routed
        // rule's gradient check): check the soft-gated form
        values.push(("straight".into(), Const::Word("false".into())));
    }
    values
}

/// Whether `rule` plans in a causal model; a rule that cannot is refused for reading the future.
fn plans_causal(rule: &Rule, overrides: &[(String, Const)]) -> bool {
    let cfg = RuleConfig {
        dim: 8,
        dim_edges: 4,
        causal: true,
        overrides: overrides.to_vec(),
    };
    match rule.plan(&cfg) {
        Ok(_) => true,
        Err(e) => {
            assert!(
                e.to_string().contains("reads the future"),
                "{}: {e}",
                rule.name
            );
            false
        }
    }
}

fn example_layer(rule: &Rule, overrides: &[(String, Const)], causal: bool) -> RuleLayer<f64, Cpu> {
    let cfg = RuleConfig {
        dim: 8,
        dim_edges: 4,
        causal,
        overrides: overrides.to_vec(),
    };
    let plan = rule.plan(&cfg).unwrap_or_else(|e| panic!("{e}"));
    RuleLayer::new(plan, &Init::random(&dev(), 7)).unwrap()
}

#[test]
fn example_rules_keep_causality_and_padding() {
    for (rule, small) in example_rules() {
        let causal = plans_causal(&rule, &small);
        if causal {
            assert_never_reads_the_future(&rule.name, &example_layer(&rule, &small, true));
        }
        for c in [false, true].into_iter().filter(|&c| causal || !c) {
            let layer = example_layer(&rule, &small, c);
            assert_padding_is_never_read(&rule.name, &layer, c);
        }
    }
}

#[test]
fn gradcheck_example_rules() {
    for (rule, small) in example_rules() {
        let causal = plans_causal(&rule, &small);
        for c in [false, true].into_iter().filter(|&c| causal || !c) {
            gradcheck_loaded_rule(&rule, c, small.clone());
        }
    }
}

#[test]
fn explain_rules_with_functions_and_three_index_bindings() {
    for name in ["alphafold", "paths_by_hand"] {
        let path = format!("{}/examples/rules/{name}.rule", env!("CARGO_MANIFEST_DIR"));
        let rule = Rule::load(&path).unwrap();
        assert_explain_snapshot(&format!("explain__example_{name}"), &rule, (64, 16), 16);
    }
}

/// A model of three layers running `taylor`, `triangle` and a rule file, in that order.
fn mixed_config(file: &std::path::Path) -> quartic::models::GraphConfig {
    let mut c = crate::reliability::graph_config("taylor", 8, 5);
    c.rule = format!("taylor, triangle,{}", file.display());
    c.depth = 3;
    c.rule_params.insert("hidden".into(), Const::Num(4.0));
    c
}

#[test]
fn layers_run_the_rules_listed_and_checkpoints_keep_them() {
    use quartic::models::{Model, ModelConfig};
    use quartic::train::checkpoint::{self, TrainState};
    let dir = crate::common::scratch("layer-rules");
    let file = dir.join("gated.rule");
    std::fs::write(
        &file,
        "rule gated()\ndef g(x) = sigmoid(linear(x, dim)) * x\nmix: nodes[i] += g(nodes[i])\n",
    )
    .unwrap();
    let config = ModelConfig::Graph(mixed_config(&file));
    let dev = Cpu::default();
    let model = Model::<f32, Cpu>::new(&config, None, &Init::random(&dev, 0)).unwrap();
    let Model::Graph(g) = &model else {
        unreachable!()
    };
    let names: Vec<&str> = g.layers.iter().map(|l| l.plan.rule.as_str()).collect();
    assert_eq!(names, ["taylor", "triangle", "gated"]);
    // each layer's parameters are its own rule's, under its own index
    let params: Vec<String> = model.params().iter().map(|p| p.name.clone()).collect();
    assert!(params.iter().any(|p| p.starts_with("layers.1.outgoing.")));
    assert!(params.contains(&"layers.2.mix.g0.linear0.weight".to_string()));
    assert!(!params.iter().any(|p| p.starts_with("layers.0.outgoing.")));
    // `hidden` is declared by `triangle` only: it reaches that rule and no other
    assert!(g.layers[1]
        .plan
        .params
        .iter()
        .any(|(k, v)| k == "hidden" && *v == Const::Num(4.0)));

    // a checkpoint keeps every rule's text: it loads after the file is gone
    let path = dir.join("mixed.safetensors");
    checkpoint::save(&path, &model, None, &TrainState::default()).unwrap();
    std::fs::remove_file(&file).unwrap();
    let loaded = checkpoint::load(&path)
        .unwrap()
        .model::<f32, Cpu>(&dev)
        .unwrap();
    let tokens: Vec<usize> = (0..10).map(|t| t % 8).collect();
    let logits = |m: &Model<f32, Cpu>| {
        m.forward::<NoneTape>(&tokens, 2, 5, None)
            .unwrap()
            .logits
            .as_vec()
    };
    assert_eq!(logits(&model), logits(&loaded));
    assert_eq!(model.rule_source(), loaded.rule_source());
}

#[test]
fn a_rule_list_that_does_not_fit_the_model_is_refused() {
    use quartic::models::{Model, ModelConfig};
    let dev = Cpu::default();
    let build = |c: quartic::models::GraphConfig| {
        Model::<f32, Cpu>::new(&ModelConfig::Graph(c), None, &Init::random(&dev, 0))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let mut c = crate::reliability::graph_config("taylor,baseline", 8, 5);
    c.depth = 3;
    assert!(build(c).contains("2 rules are listed for a model of 3 layers"));
    let c = crate::reliability::graph_config("taylor,,baseline", 8, 5);
    assert!(build(c).contains("entry 2 of the rule list"));
    let mut c = crate::reliability::graph_config("taylor,baseline", 8, 5);
    c.depth = 2;
    c.rule_params.insert("nonsense".into(), Const::Num(1.0));
    assert!(build(c).contains("none of the rules `taylor, baseline` declares"));
    let mut c = crate::reliability::graph_config("taylor,triangel", 8, 5);
    c.depth = 2;
    assert!(build(c).contains("did you mean `triangle`"));
    // the original's layers are alike: a mixed model has no reference form
    let mut c = crate::reliability::graph_config("taylor,relational", 8, 5);
    c.depth = 2;
    let e =
        quartic::models::reference::ReferenceModel::from_model_config(&ModelConfig::Graph(c), None)
            .err()
            .unwrap()
            .to_string();
    assert!(e.contains("the layers run different rules"), "{e}");
}

#[test]
fn train_takes_a_rule_per_layer_and_the_list_sets_the_depth() {
    let dir = crate::common::scratch("layer-rules-cli");
    let out = crate::common::quartic(&[
        "train",
        "--rule",
        "baseline,taylor",
        "--dim",
        "16",
        "--dim-edges",
        "8",
        "--heads",
        "2",
        "--dim-head",
        "8",
        "--steps",
        "2",
        "--eval-every",
        "2",
        "--out",
        dir.join("run").to_str().unwrap(),
    ]);
    let stdout = crate::common::text(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        crate::common::text(&out.stderr)
    );
    assert!(stdout.contains("rules `baseline, taylor`"), "{stdout}");
    let config = std::fs::read_to_string(dir.join("run/config.toml")).unwrap();
    assert!(
        config.contains("rule = \"baseline,taylor\"") && config.contains("depth = 2"),
        "{config}"
    );
}

/// `examples/rules/strassen.rule` splits Strassen attention's softmax over the pairs (j, k)
/// into a softmax over j, biased by the log-mass of each j's pairs, and a softmax over k for
/// each j: its attention equals the joint softmax over every visible pair, computed here by
/// hand from the layer's weights (padding included), at n = 4 and at n = 9 (where the n²
/// score terms are read in place at the n³ positions, not moved: see `rules::interp::pointwise`).
#[test]
fn strassen_rule_equals_the_joint_softmax_over_pairs() {
    strassen_against_pairs(4, &[4, 3]);
    strassen_against_pairs(9, &[9, 6]);
}

fn strassen_against_pairs(n: usize, lengths: &[usize; 2]) {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/rules/strassen.rule"
    ))
    .unwrap();
    // the attention alone, without the feedforward after it
    let src: String = text
        .lines()
        .filter(|l| !l.starts_with("ff:"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(src.len() < text.len(), "the feedforward line was found");
    let (heads, dh, dim) = (2, 3, 5);
    let cfg = RuleConfig {
        dim,
        dim_edges: 2,
        causal: false,
        overrides: vec![
            ("heads".into(), Const::Num(heads as f64)),
            ("dim_head".into(), Const::Num(dh as f64)),
        ],
    };
    let plan = Rule::parse("strassen.rule", &src)
        .unwrap()
        .plan(&cfg)
        .unwrap_or_else(|e| panic!("{e}"));
    let layer = RuleLayer::<f64, Cpu>::new(plan, &Init::random(&dev(), 5)).unwrap();
    let p: HashMap<String, Vec<f64>> = layer
        .params()
        .into_iter()
        .map(|p| (p.name.clone(), p.value.as_vec()))
        .collect();
    let mask = GraphMask::from_lengths(n, lengths).unwrap();
    let nodes: Vec<f64> = randn(81, 2 * n * dim).iter().map(|v| 2.0 * v).collect();
    let (out, _) = crate::rules::run(&layer, nodes.clone(), randn(82, 2 * n * n * 2), &mask);

    let matvec = |w: &[f64], x: &[f64]| -> Vec<f64> {
        w.chunks(x.len())
            .map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum())
            .collect()
    };
    let dot = |a: &[f64], b: &[f64], h: usize| -> f64 {
        (h * dh..(h + 1) * dh).map(|c| a[c] * b[c]).sum::<f64>() / (dh as f64).sqrt()
    };
    for (g, len) in [(0, lengths[0]), (1, lengths[1])] {
        // rmsnorm, then the eight projections of every visible node
        let x: Vec<Vec<f64>> = (0..len)
            .map(|i| {
                let row = &nodes[(g * n + i) * dim..(g * n + i + 1) * dim];
                let ms = row.iter().map(|v| v * v).sum::<f64>() / dim as f64;
                let gamma = &p["x.rmsnorm0.weight"];
                row.iter()
                    .zip(gamma)
                    .map(|(v, s)| v / (ms + 1e-5).sqrt() * s)
                    .collect()
            })
            .collect();
        let proj = |name: &str| -> Vec<Vec<f64>> {
            x.iter()
                .map(|xi| matvec(&p[&format!("{name}.linear0.weight")], xi))
                .collect()
        };
        let [f1, f2, g1, g2, h1, h2, v, w] =
            ["f1", "f2", "g1", "g2", "h1", "h2", "v", "w"].map(proj);
        for i in 0..len {
            let mut merged = vec![0.0; heads * dh];
            for h in 0..heads {
                let mut scores = Vec::new();
                for j in 0..len {
                    for k in 0..len {
                        let s = dot(&f1[i], &f2[j], h)
                            + dot(&g1[j], &g2[k], h)
                            + dot(&h1[k], &h2[i], h);
                        scores.push((s, j, k));
                    }
                }
                let top = scores.iter().map(|s| s.0).fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|s| (s.0 - top).exp()).sum();
                for &(s, j, k) in &scores {
                    for c in h * dh..(h + 1) * dh {
                        merged[c] += (s - top).exp() / z * v[j][c] * w[k][c];
                    }
                }
            }
            let update = matvec(&p["attn.linear0.weight"], &merged);
            let at = (g * n + i) * dim;
            for c in 0..dim {
                let (got, want) = (out[at + c], nodes[at + c] + update[c]);
                assert!(
                    (got - want).abs() <= 1e-10 * (1.0 + want.abs()),
                    "graph {g}, node {i}, channel {c}: {got} against {want}"
                );
            }
        }
    }
}

/// The parameter gradients of `rule` in `E` at the parameters `map`, on random graphs of
/// `lengths` (padded to the longest), with the loss `Σ out · probe` over nodes and edges.
fn rule_parameter_gradients<E: quartic::tensor::Real>(
    rule: &Rule,
    cfg: &RuleConfig,
    map: &std::collections::HashMap<String, (Vec<usize>, Vec<f64>)>,
    lengths: &[usize],
) -> Vec<(String, Vec<f64>)>
where
    Cpu: quartic::backend::Backend<E>,
{
    let d = dev();
    let (b, n) = (lengths.len(), *lengths.iter().max().unwrap());
    let mask = crate::rules::with_test_graph(
        GraphMask::from_lengths(n, lengths).unwrap(),
        &rule.plan(cfg).unwrap(),
    );
    let layer: RuleLayer<E, Cpu> =
        RuleLayer::new(rule.plan(cfg).unwrap(), &Init::from_map(&d, map.clone())).unwrap();
    let cast = |v: Vec<f64>| v.into_iter().map(E::of).collect::<Vec<E>>();
    let node_len = b * n * cfg.dim;
    let edge_len = b * n * n * cfg.dim_edges;
    let nodes = d
        .tensor_from_vec(cast(randn(31, node_len)), (b, n, cfg.dim))
        .leaky_trace();
    let edges = d.tensor_from_vec(cast(randn(32, edge_len)), (b, n, n, cfg.dim_edges));
    let (no, eo) = layer
        .forward(
            quartic::graph::Nodes::new(nodes),
            quartic::graph::Edges::new(edges.retaped()).unwrap(),
            &mask,
        )
        .unwrap();
    let probe_nodes = d.tensor_from_vec(cast(randn(33, node_len)), (b, n, cfg.dim));
    let probe_edges = d.tensor_from_vec(cast(randn(34, edge_len)), (b, n, n, cfg.dim_edges));
    let loss = (no.into_tensor() * probe_nodes).sum() + (eo.into_tensor() * probe_edges).sum();
    let grads = loss.backward();
    layer
        .params()
        .into_iter()
        .map(|p| {
            let g = grads.get(&p.value).as_vec();
            (p.name.clone(), g.into_iter().map(|x| x.as_f64()).collect())
        })
        .collect()
}

/// The f32 forms of the rule language (fused softmax and reduction kernels, AVX2 lanes for head
/// widths that are multiples of 8, at up to 32 nodes with padding) give every parameter of every
/// example rule the gradient the f64 forms give, which the finite-difference checks above
/// cover at small widths: training runs in f32, where those checks do not reach.
#[test]
fn example_rules_give_the_same_parameter_gradients_in_f32_and_f64() {
    for (rule, _) in example_rules() {
        // head widths of 8: the f32 kernels' AVX2 lanes
        let overrides = widths(&rule, 8.0, 8.0, 8.0);
        let cfg = RuleConfig {
            dim: 16,
            dim_edges: 8,
            causal: false,
            overrides,
        };
        let Ok(plan) = rule.plan(&cfg) else {
            panic!("{}: does not plan at the test's widths", rule.name)
        };
        let fresh: RuleLayer<f64, Cpu> = RuleLayer::new(plan, &Init::random(&dev(), 3)).unwrap();
        let map: std::collections::HashMap<_, _> = fresh
            .params()
            .into_iter()
            .enumerate()
            .map(|(k, p)| {
                let v: Vec<f64> = randn(500 + k as u64, p.len())
                    .into_iter()
                    .map(|x| 0.5 * x)
                    .collect();
                (p.name.clone(), (p.dims.clone(), v))
            })
            .collect();
        let lengths = [32, 27];
        let exact = rule_parameter_gradients::<f64>(&rule, &cfg, &map, &lengths);
        let single = rule_parameter_gradients::<f32>(&rule, &cfg, &map, &lengths);
        // f32 rounding scales with the largest gradients of the layer, not of one parameter
        let largest = |g: &[f64]| g.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        let layer_scale = exact.iter().fold(0.0f64, |m, (_, g)| m.max(largest(g)));
        for ((name, g64), (_, g32)) in exact.iter().zip(&single) {
            let scale = largest(g64);
            assert_close(
                &format!("{}: d/d {name}, f32 against f64", rule.name),
                g32,
                g64,
                2e-3 * scale + 1e-5 * layer_scale,
                2e-3,
            );
        }
    }
}
