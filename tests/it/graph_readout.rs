//! Graph-level readout: the graph head pools a graph's real nodes (mean, max, or attention with
//! a learned score) and maps the pooled vector to logits. Checked against the pooling written
//! out by hand, for padding (padded nodes never change a graph's logits) and by finite
//! differences.

use dfdx::prelude::*;
use quartic::graph::GraphMask;
use quartic::models::heads::GraphHead;
use quartic::models::GraphPool;
use quartic::nn::{HasParams, Init};

use crate::common::*;

const POOLS: [GraphPool; 3] = [GraphPool::Mean, GraphPool::Max, GraphPool::Attention];
const B: usize = 2;
const N: usize = 5;
const DIM: usize = 6;
const CLASSES: usize = 3;
const LENGTHS: [usize; 2] = [5, 3];

fn logits(head: &GraphHead<f64, Cpu>, x: Vec<f64>) -> Vec<f64> {
    let mask = GraphMask::from_lengths(N, &LENGTHS).unwrap();
    let x = dev().tensor_from_vec(x, (B, N, DIM));
    head.forward(x, &mask).unwrap().as_vec()
}

fn param(head: &GraphHead<f64, Cpu>, name: &str) -> Vec<f64> {
    head.params()
        .into_iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no parameter {name}"))
        .value
        .as_vec()
}

/// `W · v + b` with `W` laid out `[out, in]`.
fn affine(w: &[f64], b: &[f64], v: &[f64]) -> Vec<f64> {
    b.iter()
        .enumerate()
        .map(|(o, bias)| bias + (0..v.len()).map(|c| w[o * v.len() + c] * v[c]).sum::<f64>())
        .collect()
}

#[test]
fn the_graph_head_pools_the_real_nodes_as_written_out() {
    for pool in POOLS {
        let head =
            GraphHead::<f64, Cpu>::new(&Init::random(&dev(), 3), DIM, CLASSES, pool).unwrap();
        let x = randn(1, B * N * DIM);
        let got = logits(&head, x.clone());
        let (w, b) = (
            param(&head, "to_logits.weight"),
            param(&head, "to_logits.bias"),
        );
        for (g, &len) in LENGTHS.iter().enumerate() {
            let node = |i: usize| &x[(g * N + i) * DIM..(g * N + i + 1) * DIM];
            let pooled: Vec<f64> = match pool {
                GraphPool::Mean => (0..DIM)
                    .map(|c| (0..len).map(|i| node(i)[c]).sum::<f64>() / len as f64)
                    .collect(),
                GraphPool::Max => (0..DIM)
                    .map(|c| (0..len).map(|i| node(i)[c]).fold(f64::MIN, f64::max))
                    .collect(),
                GraphPool::Attention => {
                    let (sw, sb) = (param(&head, "score.weight"), param(&head, "score.bias"));
                    let s: Vec<f64> = (0..len).map(|i| affine(&sw, &sb, node(i))[0]).collect();
                    let top = s.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = s.iter().map(|v| (v - top).exp()).collect();
                    let z: f64 = e.iter().sum();
                    (0..DIM)
                        .map(|c| (0..len).map(|i| e[i] / z * node(i)[c]).sum())
                        .collect()
                }
            };
            let want = affine(&w, &b, &pooled);
            assert_close(
                &format!("{pool:?} graph {g}"),
                &got[g * CLASSES..(g + 1) * CLASSES],
                &want,
                1e-12,
                1e-12,
            );
        }
        // padded nodes never change a graph's logits
        let mut padded = x.clone();
        for i in LENGTHS[1]..N {
            for c in 0..DIM {
                padded[(N + i) * DIM + c] = 100.0 * (c as f64 + 1.0);
            }
        }
        assert_eq!(logits(&head, padded), got, "{pool:?}: padding read");
    }
}

#[test]
fn gradcheck_graph_head() {
    for pool in POOLS {
        let mask = GraphMask::from_lengths(N, &LENGTHS).unwrap();
        gradcheck_block(
            &format!("graph head ({pool:?})"),
            |init| GraphHead::new(init, DIM, CLASSES, pool).unwrap(),
            &[randn(2, B * N * DIM)],
            40,
            |head, x| {
                let x = x.into_iter().next().unwrap().reshape_like(&(B, N, DIM));
                probe_loss(head.forward(x, &mask).unwrap(), 3)
            },
        );
    }
}
