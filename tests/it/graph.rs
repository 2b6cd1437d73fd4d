//! The typed graph layer: views between domains and padding/causality-aware reductions.

use dfdx::prelude::*;
use quartic::graph::{Direction, Edges, GraphMask, Nodes, Reduce};

use crate::common::*;

const B: usize = 2;
const N: usize = 3;
const C: usize = 2;

#[test]
fn views_between_domains_follow_their_definitions() {
    let d = dev();
    let x = randn(1, B * N * C);
    let e = randn(2, B * N * N * C);
    let nodes = || Nodes::new(d.tensor_from_vec(x.clone(), (B, N, C)));
    let edges = || Edges::new(d.tensor_from_vec(e.clone(), (B, N, N, C))).unwrap();
    let src = nodes().lift_source().into_tensor().as_vec();
    let tgt = nodes().lift_target().into_tensor().as_vec();
    let tr = edges().transpose().into_tensor().as_vec();
    let diag = edges().diagonal().into_tensor().as_vec();
    let on_diag = nodes().onto_diagonal().into_tensor().as_vec();
    for b in 0..B {
        for i in 0..N {
            for c in 0..C {
                assert_eq!(diag[(b * N + i) * C + c], e[((b * N + i) * N + i) * C + c]);
            }
            for j in 0..N {
                for c in 0..C {
                    let at = ((b * N + i) * N + j) * C + c;
                    assert_eq!(src[at], x[(b * N + i) * C + c]);
                    assert_eq!(tgt[at], x[(b * N + j) * C + c]);
                    assert_eq!(tr[at], e[((b * N + j) * N + i) * C + c]);
                    assert_eq!(
                        on_diag[at],
                        if i == j { x[(b * N + i) * C + c] } else { 0.0 }
                    );
                }
            }
        }
    }
}

fn naive_reduce(e: &[f64], how: Reduce, dir: Direction, m: &GraphMask) -> Vec<f64> {
    let mut out = vec![0.0; B * N * C];
    for b in 0..B {
        for i in 0..N {
            for c in 0..C {
                let read: Vec<f64> = (0..N)
                    .filter_map(|j| {
                        let (s, t) = if dir == Direction::Outgoing {
                            (i, j)
                        } else {
                            (j, i)
                        };
                        let ok = m.edge_valid(b, s, t)
                            && m.node_valid(b, i)
                            && (!m.is_causal() || s.max(t) <= i);
                        ok.then(|| e[((b * N + s) * N + t) * C + c])
                    })
                    .collect();
                out[(b * N + i) * C + c] = if read.is_empty() {
                    0.0
                } else {
                    match how {
                        Reduce::Sum => read.iter().sum(),
                        Reduce::Mean => read.iter().sum::<f64>() / read.len() as f64,
                        Reduce::Max => read.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
                    }
                };
            }
        }
    }
    out
}

#[test]
fn reductions_match_their_definition_and_gradcheck() {
    let d = dev();
    let e = randn(3, B * N * N * C);
    for causal in [false, true] {
        let m = GraphMask::from_lengths(N, &[3, 2]).unwrap().causal(causal);
        for how in [Reduce::Sum, Reduce::Mean, Reduce::Max] {
            for dir in [Direction::Outgoing, Direction::Incoming] {
                let got = Edges::new(d.tensor_from_vec(e.clone(), (B, N, N, C)))
                    .unwrap()
                    .reduce(how, dir, &m)
                    .unwrap()
                    .into_tensor()
                    .as_vec();
                assert_close(
                    &format!("{how:?} {dir:?} causal={causal}"),
                    &got,
                    &naive_reduce(&e, how, dir, &m),
                    1e-12,
                    0.0,
                );
                gradcheck(
                    &format!("reduce {how:?} {dir:?} causal={causal}"),
                    &[e.clone()],
                    36,
                    |x| {
                        probe_loss(
                            Edges::new(x.into_iter().next().unwrap().reshape_like(&(B, N, N, C)))
                                .unwrap()
                                .reduce(how, dir, &m)
                                .unwrap()
                                .into_tensor(),
                            4,
                        )
                    },
                );
            }
        }
    }
}

#[test]
fn views_gradcheck() {
    gradcheck(
        "lift, transpose, diagonal",
        &[randn(5, B * N * C), randn(6, B * N * N * C)],
        40,
        |x| {
            let mut it = x.into_iter();
            let nodes = Nodes::new(it.next().unwrap().reshape_like(&(B, N, C)));
            let edges = Edges::new(it.next().unwrap().reshape_like(&(B, N, N, C))).unwrap();
            let lifted = nodes.lift_source().into_tensor() + edges.transpose().into_tensor();
            let diag = Edges::new(lifted).unwrap().diagonal();
            probe_loss(diag.onto_diagonal().into_tensor(), 8)
        },
    );
}

#[test]
fn masks_reject_bad_sizes() {
    assert!(GraphMask::from_valid(2, 3, vec![true; 5]).is_err());
    assert!(GraphMask::from_lengths(3, &[4]).is_err());
    let d = dev();
    let e = Edges::new(d.tensor_from_vec(vec![0.0f64; B * N * N * C], (B, N, N, C))).unwrap();
    let err = e
        .reduce(Reduce::Sum, Direction::Outgoing, &GraphMask::full(B + 1, N))
        .err()
        .unwrap();
    assert!(err.to_string().contains("mask"), "{err}");
}
