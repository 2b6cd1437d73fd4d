//! `attend(..., value: v)`: values from another tensor than the keys. Node attention and a row
//! attention with `value:` against the same attention written out with `softmax` and `sum`,
//! the written-out rule holding the fused one's parameters (values and gradients, causal and
//! not); and the padding and causality properties of both.

use std::collections::HashMap;

use dfdx::prelude::*;
use quartic::graph::GraphMask;
use quartic::nn::{HasParams, Init};
use quartic::rules::{Rule, RuleConfig, RuleLayer};

use crate::common::*;
use crate::rules::{
    assert_explain_snapshot, assert_never_reads_the_future, assert_padding_is_never_read,
    edges_and_their_gradient,
};

/// (fused, written out, renames from the fused parameters to the written-out ones)
const CASES: [(&str, &str, [(&str, &str); 4]); 2] = [
    (
        "let x[i] = rmsnorm(nodes[i])
let y[i] = nodes[i] * 0.5 + 1
a: nodes[i] += attend(x[i] -> x[j], heads: 2, dim_head: 3, value: y[j])
e: edges[i, j] += linear(nodes[i], dim_edges)
",
        "let x[i] = rmsnorm(nodes[i])
let y[i] = nodes[i] * 0.5 + 1
let q[i] = linear(x[i], 6)
let k[j] = linear(x[j], 6)
let v[j] = linear(y[j], 6)
a: nodes[i] += linear(sum[j](softmax[j](dot(q[i], k[j], heads: 2) * 3 ** -0.5) * v[j]), dim)
e: edges[i, j] += linear(nodes[i], dim_edges)
",
        [
            ("a.attend0.to_q.", "q.linear0."),
            ("a.attend0.to_k.", "k.linear0."),
            ("a.attend0.to_v.", "v.linear0."),
            ("a.attend0.to_out.", "a.linear0."),
        ],
    ),
    (
        "let w[i, j] = edges[j, i] * 2
r: edges[i, j] += attend(edges[i, j] -> edges[i, k], heads: 2, dim_head: 3, value: w[i, k])
",
        "let w[i, j] = edges[j, i] * 2
let q[i, j] = linear(edges[i, j], 6)
let k[i, j] = linear(edges[i, j], 6)
let v[i, j] = linear(w[i, j], 6)
r: edges[i, j] += linear(sum[k](softmax[k](dot(q[i, j], k[i, k], heads: 2) * 3 ** -0.5) * v[i, k]), dim_edges)
",
        [
            ("r.attend0.to_q.", "q.linear0."),
            ("r.attend0.to_k.", "k.linear0."),
            ("r.attend0.to_v.", "v.linear0."),
            ("r.attend0.to_out.", "r.linear0."),
        ],
    ),
];

#[test]
fn attention_with_another_value_equals_it_written_out() {
    let d = dev();
    let (b, n, dim, de) = (2, 5, 8, 4);
    for (fused_src, by_hand_src, renames) in CASES {
        for causal in [false, true] {
            let cfg = RuleConfig {
                dim,
                dim_edges: de,
                causal,
                overrides: vec![],
            };
            let plan = |src: &str| Rule::parse("v.rule", src).unwrap().plan(&cfg).unwrap();
            let fused = RuleLayer::<f64, Cpu>::new(plan(fused_src), &Init::random(&d, 5)).unwrap();
            let mut map = HashMap::new();
            for p in fused.params() {
                let name = renames
                    .iter()
                    .find_map(|(from, to)| {
                        p.name.strip_prefix(from).map(|rest| format!("{to}{rest}"))
                    })
                    .unwrap_or_else(|| p.name.clone());
                map.insert(name, (p.dims.clone(), p.value.as_vec()));
            }
            let by_hand = RuleLayer::new(plan(by_hand_src), &Init::from_map(&d, map)).unwrap();
            // unpadded: the fused kernels and the written-out reductions fill padded rows
            // differently (neither is read), so padding is checked as a property below
            let mask = GraphMask::full(b, n).causal(causal);
            assert_close(
                &format!("{fused_src} (causal {causal})"),
                &edges_and_their_gradient(&fused, &mask, (b, n, dim, de)),
                &edges_and_their_gradient(&by_hand, &mask, (b, n, dim, de)),
                1e-12,
                1e-10,
            );
        }
    }
}

#[test]
fn attention_with_another_value_keeps_padding_and_causality() {
    for (fused_src, _, _) in CASES {
        let layer = |causal: bool| {
            let cfg = RuleConfig {
                dim: 8,
                dim_edges: 4,
                causal,
                overrides: vec![],
            };
            let plan = Rule::parse("v.rule", fused_src)
                .unwrap()
                .plan(&cfg)
                .unwrap();
            RuleLayer::<f64, Cpu>::new(plan, &Init::random(&dev(), 6)).unwrap()
        };
        assert_never_reads_the_future(fused_src, &layer(true));
        for causal in [false, true] {
            assert_padding_is_never_read(fused_src, &layer(causal), causal);
        }
    }
}

#[test]
fn explain_attention_with_another_value() {
    let rule = Rule::parse("value.rule", CASES[1].0).unwrap();
    assert_explain_snapshot("explain__attend_value", &rule, (64, 16), 16);
}
