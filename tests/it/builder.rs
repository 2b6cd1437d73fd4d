//! `GraphConfig::default()` and the builder: what it starts from, what naming a rule changes,
//! and what `build` refuses before any model exists.

use quartic::models::GraphConfig;
use quartic::rules::Const;

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
