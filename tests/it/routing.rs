//! Coordinate-descent routing: gradient checks of the soft top-k, straight-through gates and
//! routed blocks, and the mask semantics.

use dfdx::prelude::*;
use quartic::ops::routing::{coor_descent, route, soft_topk, topk_with, CoorDescent, PickOn};

use crate::common::*;

#[test]
fn coor_descent_gradcheck() {
    let (rows, n) = (3, 10);
    for cfg in [
        CoorDescent::default(),
        CoorDescent {
            n_iters: 12,
            eps: 0.05,
            eps_init: Some(2.0),
            eps_decay: 0.7,
        },
    ] {
        for masked in [false, true] {
            let mask: Vec<bool> = (0..rows * n).map(|i| i % 7 != 3).collect();
            let mask = masked.then_some(mask);
            gradcheck(
                &format!("coor_descent {cfg:?} masked={masked}"),
                &[randn(21, rows * n).iter().map(|x| x * 2.0).collect()],
                30,
                |x| {
                    probe_loss(
                        coor_descent(
                            x.into_iter().next().unwrap().reshape_like(&(rows, n)),
                            3.5,
                            mask.as_deref(),
                            &cfg,
                        )
                        .unwrap(),
                        5,
                    )
                },
            );
        }
    }
}

#[test]
fn soft_topk_and_route_gradcheck() {
    let (rows, n, c, k) = (2, 8, 3, 3);
    let mask: Vec<bool> = (0..rows * n).map(|i| i % 5 != 1).collect();
    let ins = [
        randn(31, rows * n)
            .iter()
            .map(|x| x * 3.0)
            .collect::<Vec<_>>(),
        randn(32, rows * n * c),
        randn(33, c * c),
    ];
    for on in [PickOn::Host, PickOn::Device] {
        gradcheck(
            &format!("soft_topk + route, picked on the {on:?}"),
            &ins,
            24,
            |x| {
                let mut it = x.into_iter();
                let scores = it.next().unwrap().reshape_like(&(rows, n));
                let feats = it.next().unwrap().reshape_like(&(rows, n, c));
                let w = it.next().unwrap().reshape_like(&(c, c));
                let cfg = CoorDescent::default();
                let picks = topk_with(scores, k, 1.125, Some(&mask), &cfg, false, on).unwrap();
                // the block: a linear map of the picked features
                let out = route(feats, picks, |picked| {
                    Ok(picked.matmul(w.broadcast_like::<_, Axis<0>>(&(rows, c, c))))
                })
                .unwrap();
                probe_loss(out, 34)
            },
        );
    }
}

#[test]
fn routing_picks_only_selectable_elements_and_zeros_the_rest() {
    let d = dev();
    let (rows, n, k) = (2, 6, 2);
    let scores = d.tensor_from_vec(
        vec![5.0, 4.0, 3.0, 2.0, 1.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
        (rows, n),
    );
    let mask = vec![
        false, true, true, true, true, true, true, true, true, true, true, false,
    ];
    let picks = soft_topk(
        scores.leaky_trace(),
        k,
        1.0,
        Some(&mask),
        &CoorDescent::default(),
    )
    .unwrap();
    assert_eq!(
        picks.picks.indices(),
        vec![1, 2, 4, 3],
        "per-row positions, best selectable first; masked never picked"
    );
    // converged (many iterations), the soft scores of each row sum to k
    let converged = CoorDescent {
        n_iters: 500,
        ..CoorDescent::default()
    };
    let soft = coor_descent(scores.clone(), 2.0, Some(&mask), &converged)
        .unwrap()
        .as_vec();
    assert_eq!(soft[0], 0.0);
    assert_eq!(soft[11], 0.0);
    for r in 0..rows {
        let total: f64 = soft[r * n..(r + 1) * n].iter().sum();
        assert!(
            (total - 2.0).abs() < 0.02,
            "soft top-k sums to about k, got {total}"
        );
    }
    let feats: Tensor<_, f64, _> = d.ones_like(&(rows, n, 1));
    let out = route(feats.leaky_trace(), picks, Ok).unwrap().as_vec();
    for (i, &v) in out.iter().enumerate() {
        let picked = [1, 2, 10, 9].contains(&i);
        assert_eq!(v != 0.0, picked, "position {i}: {v}");
    }
    let err = soft_topk(scores.leaky_trace(), 7, 1.0, None, &CoorDescent::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("k = 7"), "{err}");
}

#[test]
fn the_device_picks_what_the_host_picks() {
    let d = dev();
    let cfg = CoorDescent::default();
    // scores on a coarse grid (many ties), masks that leave some rows short of k (padded) or
    // empty, several k
    for (seed, rows, n) in [(41, 5, 9), (42, 3, 16), (43, 1, 7)] {
        let scores: Vec<f64> = randn(seed, rows * n)
            .iter()
            .map(|x| (x * 2.0).round())
            .collect();
        let mask: Vec<bool> = randn(seed + 100, rows * n)
            .iter()
            .map(|&x| x > -0.6)
            .collect();
        // row 0 has nothing selectable, row 1 at most two positions
        let mut mask_short = mask.clone();
        for (i, m) in mask_short.iter_mut().enumerate() {
            if i / n == 0 || (i / n == 1 && i % n >= 2) {
                *m = false;
            }
        }
        for k in [1, 3, n] {
            for (mask, pad) in [
                (None, false),
                (Some(&mask), true),
                (Some(&mask_short), true),
            ] {
                let picks = |on| {
                    let x = d.tensor_from_vec(scores.clone(), (rows, n)).leaky_trace();
                    topk_with(x, k, 1.0, mask.map(|m| m.as_slice()), &cfg, pad, on).unwrap()
                };
                let (host, device) = (picks(PickOn::Host), picks(PickOn::Device));
                let what = format!("seed {seed}, k {k}, masked {}", mask.is_some());
                assert_eq!(host.picks.indices(), device.picks.indices(), "{what}");
                assert_eq!(host.valid, device.valid, "{what}");
                assert_eq!(host.values.as_vec(), device.values.as_vec(), "{what}");
                assert_eq!(host.gates.as_vec(), device.gates.as_vec(), "{what}");
                let feats = randn(seed + 7, rows * n * 2);
                let routed = |t: quartic::ops::routing::TopK<f64, Cpu, OwnedTape<f64, Cpu>>| {
                    let x = d.tensor_from_vec(feats.clone(), (rows, n, 2)).leaky_trace();
                    route(x, t, Ok).unwrap().as_vec()
                };
                assert_eq!(routed(host), routed(device), "{what}: routed");
            }
        }
    }
}

#[test]
fn route_refuses_picks_out_of_range_or_repeated() {
    use quartic::ops::routing::{Picks, TopK};
    let d = dev();
    let (rows, n, k) = (2, 5, 2);
    let picks_of = |indices: Vec<usize>| TopK::<f64, Cpu, OwnedTape<f64, Cpu>> {
        values: d.ones_like(&(rows, k)).leaky_traced(),
        picks: Picks::Indices(indices),
        coor_descent_values: d.ones_like(&(rows, k)).leaky_traced(),
        gates: d.ones_like(&(rows, k)).leaky_traced(),
        k,
        valid: vec![true; rows * k],
    };
    let c = 3;
    // every element its own value, so that a picked row written to the wrong place shows
    let values: Vec<f64> = (0..rows * n * c).map(|i| i as f64 + 1.0).collect();
    let x = || {
        d.tensor_from_vec(values.clone(), (rows, n, c))
            .leaky_traced()
    };
    // distinct positions within each row (the same one in two rows is fine); the identity
    // block writes each picked row back where it was read, zeros elsewhere
    let picked = [vec![4, 0], vec![4, 1]];
    let ok = route(x(), picks_of(picked.concat()), Ok).unwrap().as_vec();
    let want: Vec<f64> = (0..rows * n * c)
        .map(|i| {
            let (r, m) = (i / (n * c), i / c % n);
            if picked[r].contains(&m) {
                values[i]
            } else {
                0.0
            }
        })
        .collect();
    assert_eq!(ok, want);
    for (indices, says) in [
        (vec![0, 5, 1, 2], "picks below 5"),
        (vec![0, 1, 3, 3], "row 1 picks position 3 twice"),
        (vec![0, 1, 3], "4 picks"),
    ] {
        let err = route(x(), picks_of(indices.clone()), Ok).err().unwrap();
        assert!(err.to_string().contains(says), "{indices:?}: {err}");
    }
}

#[test]
fn a_mask_that_keeps_everything_routes_as_no_mask() {
    let d = dev();
    let (rows, n) = (3, 9);
    let scores = randn(51, rows * n);
    let all = vec![true; rows * n];
    let run = |mask: Option<&[bool]>| {
        let x = d.tensor_from_vec(scores.clone(), (rows, n));
        let soft = coor_descent(x.leaky_trace(), 2.5, mask, &CoorDescent::default()).unwrap();
        let values = soft.as_vec();
        let grads = (soft * d.tensor_from_vec(randn(52, rows * n), (rows, n)))
            .sum()
            .backward();
        (values, grads.get(&x).as_vec())
    };
    assert_eq!(run(Some(&all)), run(None));
}
