//! The memory-efficient attention kernel against the composite form (weights, then a matmul):
//! values and every gradient, across query and key block boundaries, softmax and Taylor, with
//! bias, padding and causal times.

use dfdx::prelude::*;
use quartic::backend::Backend;
use quartic::ops::weights::{weights_composite, Normalizer, WeightsSpec};
use quartic::spec::visibility::Visibility;

use crate::common::*;

fn check(nq: usize, nk: usize, normalizer: Normalizer, bias: bool, masked: bool) {
    let d = dev();
    let (p, h, dk, e) = (2, 2, 5, 3);
    let mut vis = Visibility::all(p, nq, nk);
    if masked {
        let valid = (0..p * nk)
            .map(|x| x % 7 != 3 && !(x / nk == 1 && x % nk > nk - 20))
            .collect();
        let qt = (0..p * nq).map(|x| (x % nq) * nk / nq).collect();
        let kt = (0..p * nk).map(|x| x % nk).collect();
        vis = vis
            .with_key_valid(valid)
            .unwrap()
            .with_times(qt, kt)
            .unwrap();
    }
    let spec = WeightsSpec {
        scale: 0.4,
        normalizer,
        visibility: vis,
    };
    let qv = randn(1, p * h * nq * dk);
    let kv = randn(2, p * h * nk * dk);
    let vv = randn(3, p * h * nk * e);
    let bv = randn(4, p * h * nq * nk);
    let run = |fused: bool| {
        let q = d.tensor_from_vec(qv.clone(), (p, h, nq, dk));
        let k = d.tensor_from_vec(kv.clone(), (p, h, nk, dk));
        let v = d.tensor_from_vec(vv.clone(), (p, h, nk, e));
        let b = d.tensor_from_vec(bv.clone(), (p, h, nq, nk));
        let (kt, vt, bt) = (
            k.clone().retaped::<Tp>(),
            v.clone().retaped::<Tp>(),
            b.clone().retaped::<Tp>(),
        );
        let bias = bias.then_some(bt);
        let out = if fused {
            Backend::attention_fused(q.leaky_trace(), kt, vt, bias, &spec).unwrap()
        } else {
            weights_composite(q.leaky_trace(), kt, bias, None, &spec)
                .unwrap()
                .matmul(vt)
        };
        let values = out.as_vec();
        let mut g = probe_loss(out, 9).backward();
        let grads: Vec<Vec<f64>> = [
            grad_of(&mut g, &q),
            grad_of(&mut g, &k),
            grad_of(&mut g, &v),
            grad_of(&mut g, &b),
        ]
        .to_vec();
        (values, grads)
    };
    let (a, ga) = run(true);
    let (b, gb) = run(false);
    let what = format!("nq {nq} nk {nk} {normalizer:?} bias {bias} masked {masked}");
    assert_close(&format!("{what}: output"), &a, &b, 1e-10, 1e-9);
    for (k, (x, y)) in ga.iter().zip(&gb).enumerate() {
        assert_close(&format!("{what}: gradient {k}"), x, y, 1e-10, 1e-9);
    }
}

#[test]
fn flash_attention_equals_the_composite_form() {
    for normalizer in [Normalizer::Softmax, Normalizer::Taylor { eps: 1e-5 }] {
        check(70, 300, normalizer, true, true);
        check(70, 300, normalizer, false, false);
        check(5, 9, normalizer, true, false);
        check(130, 17, normalizer, false, true);
    }
}

/// f32 attention with head widths that are multiples of eight (the kernel that keeps sixteen
/// queries in two vectors, on CPUs with AVX2) against the composite form in f64, Taylor and
/// softmax: values and the gradients of q, k, v and the bias, with query and key counts that
/// leave partial blocks, key padding, rows far enough apart that the kernel copies them first,
/// and a bias of one block per problem (`groups` 2) or one shared by both problems (1), whose
/// gradient sums over them.
fn check_f32_lanes(
    nq: usize,
    nk: usize,
    (dk, e): (usize, usize),
    masked: bool,
    normalizer: Normalizer,
    bias_groups: Option<usize>,
) {
    type Tp32 = OwnedTape<f32, Cpu>;
    let d = dev();
    let (p, h) = (2, 3);
    let mut vis = Visibility::all(p, nq, nk);
    if masked {
        // the second problem's last keys are all padding when nk ≤ 4
        let valid = (0..p * nk)
            .map(|x| x % 7 != 3 && !(x / nk == 1 && x % nk > nk.saturating_sub(5)))
            .collect();
        vis = vis.with_key_valid(valid).unwrap();
    }
    let spec = WeightsSpec {
        scale: 0.3,
        normalizer,
        visibility: vis,
    };
    let (qv, kv, vv) = (
        randn(11, p * h * nq * dk),
        randn(12, p * h * nk * dk),
        randn(13, p * h * nk * e),
    );
    let groups = bias_groups.unwrap_or(p);
    let bv: Vec<f64> = randn(15, groups * h * nq * nk);
    let probe = randn(14, p * h * nq * e);
    let to32 = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let to64 = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<f64>>();
    // the kernel in f32
    let q = d.tensor_from_vec(to32(&qv), (p, h, nq, dk));
    let k = d.tensor_from_vec(to32(&kv), (p, h, nk, dk));
    let v = d.tensor_from_vec(to32(&vv), (p, h, nk, e));
    let b = d.tensor_from_vec(to32(&bv), (groups, h, nq, nk));
    let out = Backend::attention_fused(
        q.leaky_trace(),
        k.clone().retaped::<Tp32>(),
        v.clone().retaped::<Tp32>(),
        bias_groups.map(|_| b.clone().retaped::<Tp32>()),
        &spec,
    )
    .unwrap();
    let values = to64(out.as_vec());
    let weights = d.tensor_from_vec(to32(&probe), (p, h, nq, e));
    let mut g = (out * weights).sum().backward();
    let mut grads: Vec<Vec<f64>> = vec![
        to64(g.get_or_alloc_mut(&q).unwrap().to_vec()),
        to64(g.get_or_alloc_mut(&k).unwrap().to_vec()),
        to64(g.get_or_alloc_mut(&v).unwrap().to_vec()),
    ];
    if bias_groups.is_some() {
        grads.push(to64(g.get_or_alloc_mut(&b).unwrap().to_vec()));
    }
    // the composite form in f64, the bias repeated for every problem of its group
    let q = d.tensor_from_vec(qv, (p, h, nq, dk));
    let k = d.tensor_from_vec(kv, (p, h, nk, dk));
    let v = d.tensor_from_vec(vv, (p, h, nk, e));
    let block = h * nq * nk;
    let expanded: Vec<f64> = (0..p)
        .flat_map(|pi| bv[pi / (p / groups) * block..][..block].to_vec())
        .collect();
    let b = d.tensor_from_vec(expanded, (p, h, nq, nk));
    let out = weights_composite(
        q.leaky_trace(),
        k.clone().retaped::<Tp>(),
        bias_groups.map(|_| b.clone().retaped::<Tp>()),
        None,
        &spec,
    )
    .unwrap()
    .matmul(v.clone().retaped::<Tp>());
    let expected = out.as_vec();
    let weights = d.tensor_from_vec(probe, (p, h, nq, e));
    let mut ge = (out * weights).sum().backward();
    let what = format!(
        "f32 {normalizer:?} nq {nq} nk {nk} d {dk} e {e} masked {masked} bias groups {bias_groups:?}"
    );
    assert_close(&format!("{what}: output"), &values, &expected, 2e-6, 2e-5);
    for (name, (x, t)) in ["q", "k", "v"].iter().zip(grads.iter().zip([&q, &k, &v])) {
        let y = grad_of(&mut ge, t);
        assert_close(&format!("{what}: gradient of {name}"), x, &y, 2e-5, 1e-4);
    }
    if bias_groups.is_some() {
        // the shared block's gradient: the sum over the problems that read it
        let per_problem = grad_of(&mut ge, &b);
        let mut want = vec![0.0; groups * block];
        for (pi, chunk) in per_problem.chunks(block).enumerate() {
            let at = pi / (p / groups) * block;
            want[at..at + block]
                .iter_mut()
                .zip(chunk)
                .for_each(|(w, x)| *w += x);
        }
        assert_close(
            &format!("{what}: gradient of the bias"),
            &grads[3],
            &want,
            2e-5,
            1e-4,
        );
    }
}

#[test]
fn f32_lane_attention_equals_the_composite_form() {
    for normalizer in [Normalizer::Taylor { eps: 1e-5 }, Normalizer::Softmax] {
        let check =
            |nq, nk, dims, masked, bias| check_f32_lanes(nq, nk, dims, masked, normalizer, bias);
        check(32, 32, (8, 8), false, None);
        check(13, 13, (8, 8), true, None);
        check(5, 3, (16, 8), true, None);
        check(21, 45, (8, 24), false, None);
        check(9, 130, (16, 16), true, None);
        // rows 128 or more apart: keys and values are copied contiguously first
        check(7, 19, (128, 8), true, None);
        check(18, 6, (8, 128), false, None);
        // a bias per problem and one shared by both, with key counts that leave partial groups
        // of eight (transposed element by element) and whole ones (in registers)
        check(21, 45, (8, 8), true, Some(2));
        check(16, 32, (16, 8), false, Some(1));
        check(5, 3, (8, 16), true, Some(1));
        check(40, 24, (8, 8), true, Some(2));
    }
}

/// The f32 lane kernel with softmax keeps what the general kernel keeps: a NaN in one query's
/// scores makes that query's output NaN (and no other's), and a query whose every key a −∞ bias
/// hides gets 0, with finite gradients everywhere else.
#[test]
fn f32_lane_softmax_reports_a_nan_and_zeroes_a_query_with_no_key() {
    type Tp32 = OwnedTape<f32, Cpu>;
    let d = dev();
    let (p, h, nq, nk, w) = (2, 2, 20, 24, 8);
    let spec = WeightsSpec {
        scale: 0.3,
        normalizer: Normalizer::Softmax,
        visibility: Visibility::all(p, nq, nk),
    };
    let to32 = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
    let mut qv = to32(randn(21, p * h * nq * w));
    let (kv, vv) = (
        to32(randn(22, p * h * nk * w)),
        to32(randn(23, p * h * nk * w)),
    );
    let mut bv = to32(randn(24, p * h * nq * nk));
    // a NaN in query 3 of (problem 0, head 1); every key of query 17 of (problem 1, head 0) hidden
    let nan_query = (h + 1) * nq + 3;
    qv[nan_query * w + 5] = f32::NAN;
    let hidden_query = h * nq + 17;
    bv[hidden_query * nk..(hidden_query + 1) * nk].fill(f32::NEG_INFINITY);
    let q = d.tensor_from_vec(qv, (p, h, nq, w));
    let k = d.tensor_from_vec(kv, (p, h, nk, w));
    let v = d.tensor_from_vec(vv, (p, h, nk, w));
    let b = d.tensor_from_vec(bv, (p, h, nq, nk));
    let out = Backend::attention_fused(
        q.leaky_trace(),
        k.clone().retaped::<Tp32>(),
        v.clone().retaped::<Tp32>(),
        Some(b.clone().retaped::<Tp32>()),
        &spec,
    )
    .unwrap();
    // per query row: `nan_row` holds for the NaN query's, all 0 for the hidden one's, finite else
    let check_rows = |what: &str, rows: &[f32], nan_row: fn(&[f32]) -> bool| {
        for (row, x) in rows.chunks(w).enumerate() {
            let ok = if row == nan_query {
                nan_row(x)
            } else if row == hidden_query {
                x.iter().all(|&x| x == 0.0)
            } else {
                x.iter().all(|x| x.is_finite())
            };
            assert!(ok, "{what} {row}: {x:?}");
        }
    };
    check_rows("query", &out.as_vec(), |x| x.iter().all(|x| x.is_nan()));
    // gradients: the other problem and head are untouched by the NaN
    let mut g = out.sum().backward();
    let dv = g.get_or_alloc_mut(&v).unwrap().to_vec();
    let pair = nk * w;
    for (ph, block) in dv.chunks(pair).enumerate() {
        let finite = block.iter().all(|x| x.is_finite());
        assert_eq!(finite, ph != h + 1, "value gradients of pair {ph}");
    }
    // query gradients: NaN only in the NaN query's row, 0 for the query that sees no key
    let dq = g.get_or_alloc_mut(&q).unwrap().to_vec();
    check_rows("query gradient", &dq, |x| x.iter().any(|x| x.is_nan()));
}
