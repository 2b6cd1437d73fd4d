//! The fused CPU cross-entropy with its tally against the composite form (dfdx's log-softmax
//! and the argmax compared on the device: the CUDA path): the loss, the hits with ties going
//! to the lower class, the logits' gradient, across the kernel's blocks of rows; against finite
//! differences; and the inputs both refuse.

use dfdx::prelude::*;
use quartic::backend::Backend;
use quartic::ops::loss::cross_entropy_composite;

use crate::common::*;

/// `(loss, hits, d loss / d logits)` of one form on `[rows, classes]` logits.
fn run(fused: bool, logits: &[f64], classes: usize, wanted: &[usize]) -> (f64, f64, Vec<f64>) {
    let d = dev();
    let rows = wanted.len();
    let x = d.tensor_from_vec(logits.to_vec(), (rows, classes));
    let (loss, hits) = if fused {
        Backend::cross_entropy_fused(x.leaky_trace(), wanted).unwrap()
    } else {
        cross_entropy_composite(x.leaky_trace(), wanted).unwrap()
    };
    let (value, hits) = (loss.array(), hits.array());
    // a scale other than one reaches the gradient through the loss's own step
    let mut g = (loss * 1.7).backward();
    (value, hits, grad_of(&mut g, &x))
}

/// Logits with ties: every third row repeats its largest logit at the wanted class and at
/// another class, before or after it.
fn tied_logits(seed: u64, rows: usize, classes: usize, wanted: &[usize]) -> Vec<f64> {
    let mut x = randn(seed, rows * classes);
    for (r, &w) in wanted.iter().enumerate().filter(|(r, _)| r % 3 == 0) {
        let row = &mut x[r * classes..(r + 1) * classes];
        let other = (w + 1 + r % (classes - 1)) % classes;
        row[w] = 5.0;
        row[other] = 5.0;
    }
    x
}

#[test]
fn fused_cross_entropy_matches_composite() {
    // 37 rows: two whole blocks of 16 and a short one; a few classes and many
    for (rows, classes) in [(37, 5), (37, 300), (1, 2), (16, 7)] {
        let wanted: Vec<usize> = (0..rows).map(|r| (r * 7 + 3) % classes).collect();
        let x = tied_logits(101 + classes as u64, rows, classes, &wanted);
        let (a, b) = (
            run(true, &x, classes, &wanted),
            run(false, &x, classes, &wanted),
        );
        let what = format!("cross-entropy {rows}×{classes}");
        assert_close(&format!("{what}: loss"), &[a.0], &[b.0], 1e-12, 1e-12);
        assert_eq!(a.1, b.1, "{what}: hits");
        assert_close(&format!("{what}: gradient"), &a.2, &b.2, 1e-12, 1e-10);
    }
}

#[test]
fn fused_cross_entropy_counts_first_maxima_only() {
    // row 0: the wanted class 2 ties with class 0 before it (no hit); row 1: with class 3
    // after it (a hit); row 2: wanted 1 is below the maximum (no hit); row 3: a clear hit
    let x = [
        4.0, 1.0, 4.0, 0.0, //
        0.0, 2.0, 1.0, 2.0, //
        3.0, 1.0, 0.0, 0.0, //
        0.0, 0.0, 0.0, 9.0,
    ];
    let wanted = [2, 1, 1, 3];
    for fused in [true, false] {
        assert_eq!(run(fused, &x, 4, &wanted).1, 2.0, "fused {fused}");
    }
}

#[test]
fn fused_cross_entropy_gradient_matches_finite_differences() {
    let (rows, classes) = (5, 4);
    let wanted = [0, 3, 1, 1, 2];
    gradcheck(
        "fused cross-entropy",
        &[randn(111, rows * classes)],
        20,
        |v| {
            let [x]: [In; 1] = v.try_into().ok().expect("one input");
            let (loss, _) =
                Backend::cross_entropy_fused(x.reshape_like(&(rows, classes)), &wanted).unwrap();
            loss
        },
    );
}

#[test]
fn cross_entropy_refuses_bad_targets_and_reports_nan() {
    let d = dev();
    let x: Tensor<(usize, usize), f64, Cpu> = d.tensor_from_vec(randn(121, 12), (3, 4));
    for (wanted, says) in [
        (&[0, 1][..], "wanted classes"),
        (&[0, 4, 1][..], "class 4 is outside the 4 logits"),
    ] {
        let fused = Backend::cross_entropy_fused(x.clone(), wanted).unwrap_err();
        let composite = cross_entropy_composite(x.clone(), wanted).unwrap_err();
        for err in [fused.to_string(), composite.to_string()] {
            assert!(err.contains(says), "{err}");
        }
    }
    let empty: Tensor<(usize, usize), f64, Cpu> = d.zeros_like(&(0, 4));
    let err = Backend::cross_entropy_fused(empty, &[]).unwrap_err();
    assert!(err.to_string().contains("no row"), "{err}");
    // a NaN logit is a NaN loss, reported as such (and no hit for its row)
    let mut v = randn(122, 12);
    v[5] = f64::NAN;
    let (loss, hits) =
        Backend::cross_entropy_fused(d.tensor_from_vec(v, (3, 4)), &[0, 1, 2]).unwrap();
    assert!(loss.array().is_nan());
    assert!(hits.array() <= 2.0);
}
