//! The Edge Transformer's path attention two ways: the fused `attend(s[i, l] -> s[l, j])`
//! pattern, and the same attention written out with `softmax[l]` and `sum[l]` (the only way
//! before the pattern existed; it keeps n³ tensors). The by-hand layer takes the fused layer's
//! parameters under its own names, so the two compute the same thing: checked in the tests
//! (`tests/it/rules.rs`), timed in `benches/rules.rs` and `examples/speed.rs` (`paths`).

use std::collections::HashMap;

use dfdx::prelude::*;
use quartic::nn::{HasParams, Init};
use quartic::rules::{Const, Rule, RuleConfig, RuleLayer};
use quartic::tensor::Real;

/// The fused form: one path attention with gates, after a layer norm.
pub const FUSED: &str = "rule paths(heads = 4, dim_head = 8)
let s[i, j] = layernorm(edges[i, j])
paths: edges[i, j] += attend(s[i, l] -> s[l, j], heads: heads, dim_head: dim_head)
";

/// The same attention by hand: projections, per-head scores over l, the softmax over l, and
/// the weighted product of the two values summed over l, then the output projection.
pub const BY_HAND: &str = "rule paths_by_hand(heads = 4, dim_head = 8)
let s[i, j] = layernorm(edges[i, j])
let q[i, j] = linear(s[i, j], heads * dim_head)
let k[i, j] = linear(s[i, j], heads * dim_head)
let v1[i, j] = linear(s[i, j], heads * dim_head)
let v2[i, j] = linear(s[i, j], heads * dim_head)
paths: edges[i, j] += linear(sum[l](softmax[l](dot(q[i, l], k[l, j], heads: heads) * dim_head ** -0.5) * v1[i, l] * v2[l, j]), dim_edges)
";

/// Where each of the fused layer's parameters lives in the by-hand layer.
const RENAMES: [(&str, &str); 5] = [
    ("paths.attend0.to_q.", "q.linear0."),
    ("paths.attend0.to_k.", "k.linear0."),
    ("paths.attend0.to_v.", "v1.linear0."),
    ("paths.attend0.to_v2.", "v2.linear0."),
    ("paths.attend0.to_out.", "paths.linear0."),
];

/// Both layers at `dim_edges` channels with `heads × dim_head`, the by-hand one holding the
/// fused one's parameters.
pub fn layers<E: Real>(
    dev: &Cpu,
    dim_edges: usize,
    heads: usize,
    dim_head: usize,
    causal: bool,
    seed: u64,
) -> (RuleLayer<E, Cpu>, RuleLayer<E, Cpu>)
where
    Cpu: Device<E>,
{
    let num = |k: &str, v: usize| (k.to_string(), Const::Num(v as f64));
    let cfg = RuleConfig {
        dim: 8,
        dim_edges,
        causal,
        overrides: vec![num("heads", heads), num("dim_head", dim_head)],
    };
    let plan = |src: &str| Rule::parse("paths.rule", src).unwrap().plan(&cfg).unwrap();
    let fused = RuleLayer::new(plan(FUSED), &Init::random(dev, seed)).unwrap();
    let mut map = HashMap::new();
    for p in fused.params() {
        let name = RENAMES
            .iter()
            .find_map(|(from, to)| p.name.strip_prefix(from).map(|rest| format!("{to}{rest}")))
            .unwrap_or_else(|| p.name.clone());
        let values = p.value.as_vec().iter().map(|x| x.as_f64()).collect();
        map.insert(name, (p.dims.clone(), values));
    }
    let by_hand = RuleLayer::new(plan(BY_HAND), &Init::from_map(dev, map)).unwrap();
    (fused, by_hand)
}
