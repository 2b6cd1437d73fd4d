//! The library's entry points: `GraphConfig::default()` and the builder (what it starts from,
//! what naming a rule changes, what `build` refuses before any model exists), and a model run
//! on continuous node features in place of token ids.

use dfdx::prelude::*;
use quartic::models::{GraphConfig, Model, ModelConfig, Readout};
use quartic::nn::Init;
use quartic::rules::Const;

use crate::common::assert_close;

#[test]
fn the_builder_starts_from_the_default_model_and_checks_what_it_builds() {
    assert_eq!(
        GraphConfig::builder().build().unwrap(),
        GraphConfig::default()
    );
    let d = GraphConfig::default();
    assert_eq!(
        (d.rule.as_str(), d.dim, d.dim_edges, d.depth),
        ("taylor", 64, 16, 2)
    );
    assert_eq!(d.rule_params.get("heads"), Some(&Const::Num(4.0)));
    // the preset belongs to the default rule: a named rule starts from its own defaults,
    // and a parameter set here is kept whatever the order
    let q = GraphConfig::builder()
        .param("heads", 2.0)
        .rule("quartic")
        .build()
        .unwrap();
    assert_eq!(q.rule, "quartic");
    assert_eq!(
        q.rule_params.into_iter().collect::<Vec<_>>(),
        vec![("heads".to_string(), Const::Num(2.0))]
    );
    let refused = |b: quartic::models::GraphConfigBuilder, expected: &str| {
        let e = b.build().unwrap_err().to_string();
        assert!(e.contains(expected), "expected `{expected}` in: {e}");
    };
    refused(GraphConfig::builder().param("headz", 2.0), "headz");
    refused(GraphConfig::builder().rule("nope"), "nope");
    refused(GraphConfig::builder().dim(0), "`dim` must be positive");
    refused(
        GraphConfig::builder().residual_streams(0),
        "residual_streams",
    );
    refused(GraphConfig::builder().param("heads", 0.0), "heads");
    refused(GraphConfig::builder().param("heads", f64::NAN), "heads");
}

/// Features equal to the token embeddings give the token path's logits exactly; gradients reach
/// the features; features of the wrong width are refused, naming both shapes.
#[test]
fn a_model_runs_on_continuous_features() {
    let config = GraphConfig::builder()
        .rule("relational")
        .num_tokens(10)
        .dim(16)
        .depth(2)
        .param("heads", 2.0)
        .param("dim_head", 8.0)
        .build()
        .unwrap();
    let dev = Cpu::default();
    let model =
        Model::<f64, Cpu>::new(&ModelConfig::Graph(config), None, &Init::random(&dev, 3)).unwrap();
    let Model::Graph(graph) = &model else {
        unreachable!()
    };
    let tokens = [1, 4, 2, 9, 0, 3, 3, 7];
    let valid = [true, true, true, true, true, true, false, false];
    let from_tokens = model
        .forward::<NoneTape>(&tokens, 2, 4, Some(&valid))
        .unwrap()
        .logits
        .as_vec();
    let embedded = graph
        .token_emb
        .forward::<NoneTape>(&tokens, 2, 4)
        .unwrap()
        .into_tensor();
    let from_features = model
        .forward_features(embedded.clone(), Some(&valid), Readout::Nodes)
        .unwrap()
        .logits
        .as_vec();
    assert_close("logits", &from_features, &from_tokens, 0.0, 0.0);
    let out = model
        .forward_features(embedded.leaky_trace(), Some(&valid), Readout::Nodes)
        .unwrap();
    let grads = out.logits.square().sum().backward();
    let g = grads.get(&embedded).as_vec();
    assert!(g.iter().all(|x| x.is_finite()) && g.iter().any(|x| *x != 0.0));
    let narrow: Tensor<(usize, usize, usize), f64, Cpu> = dev.zeros_like(&(2, 4, 8));
    let e = model
        .forward_features(narrow, None, Readout::Nodes)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("[b, n, 16]") && e.contains("[2, 4, 8]"), "{e}");
}

#[test]
fn the_allocator_keeps_freed_memory_and_turns_off_huge_pages() {
    use std::alloc::{GlobalAlloc, Layout};
    let layout = Layout::from_size_align(1 << 20, 64).unwrap();
    let allocator = quartic::alloc::Allocator;
    // Safety: one allocation, freed with its own layout.
    unsafe {
        let p = allocator.alloc(layout);
        assert!(!p.is_null());
        allocator.dealloc(p, layout);
    }
    assert!(quartic::alloc::configured());
}
