//! The `taylor` rule's layer written by hand against the graph core, sharing the rule layer's
//! parameters: the baseline the interpreter is measured against (`benches/rules.rs`), and
//! checked equal to the rule's output in the tests (`tests/it/rules.rs`).

use dfdx::prelude::*;
use quartic::backend::Backend;
use quartic::graph::{Edges, GraphMask, Nodes};
use quartic::nn::rows::{map_rows3, map_rows4};
use quartic::ops::attention::{attend, AttendInputs};
use quartic::ops::patterns::{edge_attention, EdgeAttendInputs, EdgeKernel, EdgePattern};
use quartic::ops::taylor::TaylorForm;
use quartic::ops::weights::{Normalizer, WeightsSpec};
use quartic::rules::layer::{AttendBlock, Block};
use quartic::rules::RuleLayer;
use quartic::tensor::Real;

fn linear<'a, E: Real, D: Device<E>>(
    l: &'a RuleLayer<E, D>,
    st: &str,
    site: &str,
) -> &'a quartic::nn::Linear<E, D> {
    match l.block(st, site) {
        Some(Block::Linear(x)) => x,
        _ => panic!("{st}.{site} is not a linear"),
    }
}

fn rms<'a, E: Real, D: Device<E>>(
    l: &'a RuleLayer<E, D>,
    st: &str,
    site: &str,
) -> &'a quartic::nn::RmsNorm<E, D> {
    match l.block(st, site) {
        Some(Block::Rms(x)) => x,
        _ => panic!("{st}.{site} is not an rmsnorm"),
    }
}

fn ff<'a, E: Real, D: Device<E>>(
    l: &'a RuleLayer<E, D>,
    st: &str,
) -> &'a quartic::nn::FeedForward<E, D> {
    match l.block(st, "feedforward0") {
        Some(Block::FeedForward(x)) => x,
        _ => panic!("{st} has no feedforward"),
    }
}

fn att<'a, E: Real, D: Device<E>>(l: &'a RuleLayer<E, D>, st: &str) -> &'a AttendBlock<E, D> {
    match l.block(st, "attend0") {
        Some(Block::Attend(x)) => x,
        _ => panic!("{st} has no attention"),
    }
}

/// One `taylor` layer: `heads × dim_head` node attention, `edge_heads × edge_dim_head` axial
/// Taylor attention, `scale` the node attention's scale.
#[allow(clippy::too_many_arguments)]
pub fn taylor_by_hand<E: Real, D: Backend<E>, T: Tape<E, D>>(
    l: &RuleLayer<E, D>,
    nodes: Nodes<E, D, T>,
    edges: Edges<E, D, T>,
    mask: &GraphMask,
    heads: usize,
    dim_head: usize,
    edge_heads: usize,
    edge_dim_head: usize,
    scale: f64,
) -> quartic::Result<(Nodes<E, D, T>, Edges<E, D, T>)> {
    let (b, n, _) = nodes.dims();
    let (h, d) = (heads, dim_head);
    let nodes = nodes.into_tensor();
    let edges = edges.into_tensor();

    // node attention, biased by the edges, its probabilities written into the edges
    let x = map_rows3(nodes.with_empty_tape(), |t| {
        rms(l, "x", "rmsnorm0").forward(t)
    })?;
    let normed_edges = map_rows4(edges.with_empty_tape(), |t| {
        rms(l, "attended", "rmsnorm0").forward(t)
    })?;
    let bias = map_rows4(normed_edges, |t| {
        linear(l, "attended", "linear0").forward(t)
    })?
    .permute::<_, Axes4<0, 3, 1, 2>>();
    let gates = map_rows3(x.with_empty_tape(), |t| {
        linear(l, "attended", "linear1").forward(t)
    })?
    .permute::<_, Axes3<0, 2, 1>>();
    let a = att(l, "attended");
    let split = |t: Tensor<(usize, usize, usize), E, D, T>| {
        t.reshape_like(&(b, n, h, d))
            .permute::<_, Axes4<0, 2, 1, 3>>()
    };
    let q = split(map_rows3(x.with_empty_tape(), |t| a.to_q.forward(t))?);
    let k = split(map_rows3(x.with_empty_tape(), |t| a.to_k.forward(t))?);
    let v = split(map_rows3(x, |t| a.to_v.forward(t))?);
    let spec = WeightsSpec {
        scale,
        normalizer: Normalizer::Softmax,
        visibility: mask.node_visibility()?,
    };
    let inputs = AttendInputs {
        bias: Some(bias),
        talking: a.talking.as_ref().map(|p| p.matrix::<T>()),
        gates: Some(gates),
    };
    let r = attend(q, k, v, inputs, &spec, true)?;
    let merged = r
        .out
        .permute::<_, Axes4<0, 2, 1, 3>>()
        .reshape_like(&(b, n, h * d));
    let nodes = nodes + map_rows3(merged, |t| a.to_out.forward(t))?;
    let nodes = nodes.with_empty_tape() + map_rows3(nodes, |t| ff(l, "ff").forward(t))?;
    let probs = r
        .weights
        .expect("asked for")
        .permute::<_, Axes4<0, 2, 3, 1>>();
    let edges = edges + map_rows4(probs, |t| linear(l, "to_edges", "linear0").forward(t))?;

    // axial Taylor attention over rows, then columns
    let before = edges.with_empty_tape();
    let mut edges = edges;
    for (norm, st, pattern) in [
        ("r", "rows", EdgePattern::Row),
        ("c", "columns", EdgePattern::Column),
    ] {
        let a = att(l, st);
        let inner = edge_heads * edge_dim_head;
        let normed = map_rows4(edges.with_empty_tape(), |t| {
            rms(l, norm, "unitnorm0").forward(t)
        })?;
        let gates = Edges::new(map_rows4(edges.with_empty_tape(), |t| {
            linear(l, st, "linear0").forward(t)
        })?)?;
        let q = Edges::new(map_rows4(normed.with_empty_tape(), |t| a.to_q.forward(t))?)?;
        let k = Edges::new(map_rows4(normed.with_empty_tape(), |t| a.to_k.forward(t))?)?;
        let v = Edges::new(map_rows4(normed, |t| a.to_v.forward(t))?)?;
        let kernel = EdgeKernel::Taylor {
            scale: (edge_dim_head as f64).powf(-0.5),
            eps: 1e-5,
            form: TaylorForm::Auto,
        };
        let inputs = EdgeAttendInputs {
            bias: None,
            talking: None,
            gates: Some(gates),
        };
        let out = edge_attention(q, k, v, edge_heads, pattern, kernel, inputs, mask)?.into_tensor();
        debug_assert_eq!(out.shape().3, inner);
        edges = edges + map_rows4(out, |t| a.to_out.forward(t))?;
    }
    let edges = edges + before;
    let edges = edges.with_empty_tape() + map_rows4(edges, |t| ff(l, "ff_edges").forward(t))?;
    Ok((Nodes::new(nodes), Edges::new(edges)?))
}
