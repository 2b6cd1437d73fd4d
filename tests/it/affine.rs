//! The fused CPU linear layer, repeated add and outer sum against their composite forms (dfdx's matmul,
//! reshape and broadcast add: the CUDA path): values and every gradient, across the kernels' chunk boundaries, for the
//! layer over many rows (chunks on one thread each) and over few (one chunk, threaded
//! products); and against finite differences.

use dfdx::prelude::*;
use quartic::backend::Backend;
use quartic::ops::affine::{add_repeated_composite, linear_composite, outer_sum_composite};

use crate::common::*;

/// Values and the gradients of input, weight and bias of one linear form.
fn linear_run(
    fused: bool,
    vals: &[Vec<f64>],
    rows: usize,
    c_in: usize,
    bias: bool,
) -> Vec<Vec<f64>> {
    let d = dev();
    let c_out = vals[1].len() / c_in;
    let x = d.tensor_from_vec(vals[0].clone(), (rows, c_in));
    let w = d.tensor_from_vec(vals[1].clone(), (c_out, c_in));
    let b = d.tensor_from_vec(vals[2].clone(), (c_out,));
    let bt = bias.then(|| b.clone().retaped::<Tp>());
    let out = if fused {
        Backend::linear_fused(x.leaky_trace(), w.clone().retaped::<Tp>(), bt).unwrap()
    } else {
        linear_composite(x.leaky_trace(), w.clone().retaped::<Tp>(), bt).unwrap()
    };
    let values = out.as_vec();
    let mut g = probe_loss(out, 31).backward();
    let mut res = vec![values, grad_of(&mut g, &x), grad_of(&mut g, &w)];
    if bias {
        res.push(grad_of(&mut g, &b));
    }
    res
}

#[test]
fn fused_linear_matches_composite() {
    // 3000 rows take the chunked form (chunks of 256, the last one short); 40 rows the
    // single-chunk form; output widths below, at and above one register tile
    for (rows, c_in, c_out) in [(3000, 16, 4), (3000, 5, 17), (40, 24, 8), (40, 3, 33)] {
        let vals = vec![
            randn(41, rows * c_in),
            randn(42, c_out * c_in),
            randn(43, c_out),
        ];
        for bias in [true, false] {
            let (a, b) = (
                linear_run(true, &vals, rows, c_in, bias),
                linear_run(false, &vals, rows, c_in, bias),
            );
            for (what, (x, y)) in ["values", "dx", "dw", "db"].iter().zip(a.iter().zip(&b)) {
                let what = format!("linear {rows}×{c_in}→{c_out} bias {bias}: {what}");
                assert_close(&what, x, y, 1e-10, 1e-9);
            }
        }
    }
}

#[test]
fn fused_linear_gradients_match_finite_differences() {
    let (rows, c_in, c_out) = (6, 3, 5);
    let vals = vec![
        randn(51, rows * c_in),
        randn(52, c_out * c_in),
        randn(53, c_out),
    ];
    gradcheck("fused linear", &vals, 12, |v| {
        let [x, w, b]: [In; 3] = v.try_into().ok().expect("three inputs");
        let out = Backend::linear_fused(
            x.reshape_like(&(rows, c_in)),
            w.reshape_like(&(c_out, c_in)),
            Some(b),
        );
        probe_loss(out.unwrap(), 6)
    });
}

#[test]
fn fused_linear_rejects_mismatched_weights() {
    let d = dev();
    let x: Tensor<(usize, usize), f64, Cpu> = d.zeros_like(&(4, 3));
    let w: Tensor<(usize, usize), f64, Cpu> = d.zeros_like(&(2, 5));
    let err = Backend::linear_fused(x.clone(), w, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("weight [2, 5]"), "{err}");
    let w: Tensor<(usize, usize), f64, Cpu> = d.zeros_like(&(2, 3));
    let b: Tensor<(usize,), f64, Cpu> = d.zeros_like(&(3,));
    let err = Backend::linear_fused(x, w, Some(b))
        .unwrap_err()
        .to_string();
    assert!(err.contains("bias Some(3)"), "{err}");
}

/// Values and both gradients of `x [reps, per] + y [per]` in one form.
fn add_run(fused: bool, xv: &[f64], yv: &[f64]) -> Vec<Vec<f64>> {
    let d = dev();
    let per = yv.len();
    let reps = xv.len() / per;
    let x = d.tensor_from_vec(xv.to_vec(), (reps, per));
    let y = d.tensor_from_vec(yv.to_vec(), (per,));
    let out = if fused {
        Backend::add_repeated_fused(x.leaky_trace(), y.clone().retaped::<Tp>()).unwrap()
    } else {
        add_repeated_composite(x.leaky_trace(), y.clone().retaped::<Tp>()).unwrap()
    };
    let values = out.as_vec();
    let mut g = probe_loss(out, 61).backward();
    vec![values, grad_of(&mut g, &x), grad_of(&mut g, &y)]
}

#[test]
fn fused_add_matches_composite() {
    // one repeat (a plain add) and many, each under and over the kernel's 16 384-element
    // chunk, with short last chunks
    for (reps, per) in [(1, 40_000), (1, 300), (3, 20_000), (700, 30)] {
        let (xv, yv) = (randn(71, reps * per), randn(72, per));
        let (a, b) = (add_run(true, &xv, &yv), add_run(false, &xv, &yv));
        for (what, (x, y)) in ["values", "dx", "dy"].iter().zip(a.iter().zip(&b)) {
            assert_close(&format!("add {reps}×{per}: {what}"), x, y, 1e-12, 1e-12);
        }
    }
}

#[test]
fn fused_add_gradients_match_finite_differences_and_reject_bad_shapes() {
    let vals = vec![randn(81, 12), randn(82, 4)];
    gradcheck("fused repeated add", &vals, 12, |v| {
        let [x, y]: [In; 2] = v.try_into().ok().expect("two inputs");
        probe_loss(
            Backend::add_repeated_fused(x.reshape_like(&(3, 4)), y).unwrap(),
            8,
        )
    });
    let d = dev();
    let x: Tensor<(usize, usize), f64, Cpu> = d.zeros_like(&(3, 4));
    let y: Tensor<(usize,), f64, Cpu> = d.zeros_like(&(5,));
    for err in [
        Backend::add_repeated_fused(x.clone(), y.clone()).unwrap_err(),
        add_repeated_composite(x, y).unwrap_err(),
    ] {
        assert!(err.to_string().contains("[5]"), "{err}");
    }
}

/// `x` feeds three ops: `z = (x·wᵀ + x) + x`, the adds repeated over one row. Values and the
/// gradients of `x` and `w`.
fn shared_input_run(fused: bool, xv: &[f64], wv: &[f64], rows: usize, c: usize) -> Vec<Vec<f64>> {
    let d = dev();
    let x = d.tensor_from_vec(xv.to_vec(), (rows, c));
    let w = d.tensor_from_vec(wv.to_vec(), (c, c));
    let wt = w.clone().retaped::<Tp>();
    let z = if fused {
        let y = Backend::linear_fused(x.leaky_trace(), wt, None).unwrap();
        let y = Backend::add_repeated_fused(y, x.leaky_trace()).unwrap();
        Backend::add_repeated_fused(y, x.leaky_trace()).unwrap()
    } else {
        let y = linear_composite(x.leaky_trace(), wt, None).unwrap();
        let y = add_repeated_composite(y, x.leaky_trace()).unwrap();
        add_repeated_composite(y, x.leaky_trace()).unwrap()
    };
    let values = z.as_vec();
    let mut g = probe_loss(z, 91).backward();
    vec![values, grad_of(&mut g, &x), grad_of(&mut g, &w)]
}

#[test]
fn fused_ops_add_into_a_gradient_their_input_already_has() {
    // the fused ops hand dfdx a gradient they computed whole when the input has none yet, and
    // add into the one it has otherwise: here the last add meets x without a gradient, the
    // first add and the linear layer find one; sizes on both sides of the parallel add's
    // split (2 × 16 384 elements)
    for (rows, c) in [(5, 3), (3000, 16)] {
        let (xv, wv) = (randn(93, rows * c), randn(94, c * c));
        let (a, b) = (
            shared_input_run(true, &xv, &wv, rows, c),
            shared_input_run(false, &xv, &wv, rows, c),
        );
        for (what, (x, y)) in ["values", "dx", "dw"].iter().zip(a.iter().zip(&b)) {
            assert_close(&format!("x shared, {rows}×{c}: {what}"), x, y, 1e-10, 1e-9);
        }
    }
}

/// Values and both gradients of the outer sum of `[b, n, c]` sources and targets in one form.
fn outer_run(
    fused: bool,
    sv: &[f64],
    tv: &[f64],
    (b, n, c): (usize, usize, usize),
) -> Vec<Vec<f64>> {
    let d = dev();
    let s = d.tensor_from_vec(sv.to_vec(), (b, n, c));
    let t = d.tensor_from_vec(tv.to_vec(), (b, n, c));
    let out = if fused {
        Backend::outer_sum_fused(s.leaky_trace(), t.clone().retaped::<Tp>()).unwrap()
    } else {
        outer_sum_composite(s.leaky_trace(), t.clone().retaped::<Tp>()).unwrap()
    };
    let values = out.as_vec();
    let mut g = probe_loss(out, 101).backward();
    vec![values, grad_of(&mut g, &s), grad_of(&mut g, &t)]
}

#[test]
fn fused_outer_sum_matches_composite_and_finite_differences() {
    // n = 37 rows: blocks of 16 rows end short within each graph
    for dims in [(3, 37, 5), (1, 8, 2)] {
        let len = dims.0 * dims.1 * dims.2;
        let (sv, tv) = (randn(111, len), randn(112, len));
        let (a, b) = (
            outer_run(true, &sv, &tv, dims),
            outer_run(false, &sv, &tv, dims),
        );
        for (what, (x, y)) in ["values", "dsources", "dtargets"]
            .iter()
            .zip(a.iter().zip(&b))
        {
            assert_close(&format!("outer sum {dims:?}: {what}"), x, y, 1e-12, 1e-12);
        }
    }
    let dims = (2, 3, 2);
    gradcheck(
        "fused outer sum",
        &[randn(121, 12), randn(122, 12)],
        12,
        |v| {
            let [s, t]: [In; 2] = v.try_into().ok().expect("two inputs");
            probe_loss(
                Backend::outer_sum_fused(s.reshape_like(&dims), t.reshape_like(&dims)).unwrap(),
                9,
            )
        },
    );
    let d = dev();
    let s: Tensor<(usize, usize, usize), f64, Cpu> = d.zeros_like(&(2, 3, 2));
    let t: Tensor<(usize, usize, usize), f64, Cpu> = d.zeros_like(&(2, 4, 2));
    for err in [
        Backend::outer_sum_fused(s.clone(), t.clone()).unwrap_err(),
        outer_sum_composite(s, t).unwrap_err(),
    ] {
        assert!(err.to_string().contains("targets [2, 3, 2]"), "{err}");
    }
}

/// The CPU's gather (the rule interpreter's layout moves) against dfdx's, values and the
/// source's gradient, for a permutation (whose backward writes in parallel), a table that
/// reads sources several times (whose backward sums) and ones that read each forty times
/// (whose backward sums in parts, in parallel: the same bits on one thread and on three),
/// with strides and without; bad tables are refused.
#[test]
fn fused_gather_matches_dfdx() {
    use quartic::spec::GatherTable;
    use std::sync::Arc;
    let d = dev();
    let len = 40_000; // several parallel chunks
    let x = randn(61, len);
    // a transpose of a [200, 200] block: a permutation
    let transpose: Vec<usize> = (0..len).map(|i| (i % 200) * 200 + i / 200).collect();
    // each source element read by up to three outputs, some never
    let broadcast: Vec<usize> = (0..len + len / 2).map(|i| (i * 7919) % (len - 3)).collect();
    // a source of 1 000 read forty times each, scattered: eight parts
    let wide: Vec<usize> = (0..len).map(|i| (i * 7919) % 1000).collect();
    // the same source read as forty copies of itself, and each element forty times in a row
    // (tables with strides: 0 on the repeat, read by runs)
    let repeated: Vec<usize> = (0..len).map(|i| i % 1000).collect();
    let lifted: Vec<usize> = (0..len).map(|i| i / 40).collect();
    // a rule's edges [3, 29, 31, 13] (graphs, i, j, channels) moved: channels before the
    // nodes, and channels first with the nodes swapped around the graphs (tiles of a
    // transposed plane with partial tiles on every side, repeated over outer digits)
    let (g, ni, nj, c) = (3, 29, 31, 13);
    let edges = g * ni * nj * c;
    let at = |b: usize, i: usize, j: usize, k: usize| ((b * ni + i) * nj + j) * c + k;
    let mut channels_first = Vec::with_capacity(edges);
    for b in 0..g {
        for k in 0..c {
            for i in 0..ni {
                channels_first.extend((0..nj).map(|j| at(b, i, j, k)));
            }
        }
    }
    let mut scrambled = Vec::with_capacity(edges);
    for k in 0..c {
        for j in 0..nj {
            for b in 0..g {
                scrambled.extend((0..ni).map(|i| at(b, i, j, k)));
            }
        }
    }
    for (name, index, injective, source, strided) in [
        ("transpose", transpose, true, len, true),
        ("channels first", channels_first, true, edges, true),
        (
            "channels first, nodes swapped",
            scrambled,
            true,
            edges,
            true,
        ),
        ("broadcast", broadcast, false, len, false),
        ("wide broadcast", wide, false, 1000, false),
        ("repeated", repeated, false, 1000, true),
        ("lifted", lifted, false, 1000, true),
    ] {
        let x = &x[..source];
        let table = Arc::new(GatherTable::new(index.clone(), source).unwrap());
        assert_eq!(table.injective(), injective, "{name}");
        assert_eq!(table.strides().is_some(), strided, "{name}");
        let run = |fused: bool| {
            let t = d.tensor_from_vec(x.to_vec(), (source,));
            let out = if fused {
                Backend::gather_fused(t.leaky_trace(), &table).unwrap()
            } else {
                let idx = d.tensor_from_vec(index.clone(), (index.len(),));
                t.leaky_trace().gather(idx)
            };
            let values = out.retaped::<NoneTape>().as_vec();
            let mut g = probe_loss(out, 62).backward();
            (values, grad_of(&mut g, &t))
        };
        let (fused, plain) = (run(true), run(false));
        let threads = |k: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(k)
                .build()
                .unwrap()
        };
        let (one, three) = (
            threads(1).install(|| run(true)),
            threads(3).install(|| run(true)),
        );
        assert_eq!(one.1, three.1, "{name}: one thread against three");
        assert_close(&format!("{name}: values"), &fused.0, &plain.0, 0.0, 0.0);
        assert_close(
            &format!("{name}: gradient"),
            &fused.1,
            &plain.1,
            1e-12,
            1e-12,
        );
    }
    // and against finite differences, a broadcasting table over a small source
    let small = Arc::new(GatherTable::new((0..30).map(|i| (i * 7) % 11).collect(), 12).unwrap());
    gradcheck("gather", &[randn(63, 12)], 12, |v| {
        let x = v.into_iter().next().unwrap();
        probe_loss(Backend::gather_fused(x, &small).unwrap(), 64)
    });
    let err = GatherTable::new(vec![0, 5], 5)
        .err()
        .expect("index 5 of 5 is refused");
    assert!(err.to_string().contains("gather table"), "{err}");
    let table = Arc::new(GatherTable::new(vec![0, 1], 2).unwrap());
    let wrong = d.tensor_from_vec(vec![1.0; 3], (3usize,));
    let err = Backend::gather_fused(wrong, &table)
        .err()
        .expect("a source of 3 for a table over 2");
    assert!(err.to_string().contains("gather source"), "{err}");
}
