//! Edge self-attention along rows or columns with the projections and output gates inside the
//! kernel: `out = σ(gates) ⊙ attention(x·W_qᵀ, x·W_kᵀ, x·W_vᵀ)` over the problems of the row
//! or column pattern, queries and keys both read from the same edges `x`.
//!
//! The unfused form materializes q, k and v as dfdx tensors (zeroed, then written by a matmul),
//! copies them again to host buffers for the attention kernel, and gates the output with two
//! more passes; backward mirrors all of it. Here q, k and v are written once, by one threaded
//! product each, into buffers the attention kernel reads in place, and the backward's products
//! accumulate straight into the gradients of `x` and the weights.

use dfdx::prelude::*;
use rayon::prelude::*;

use super::affine::{rows_times_weights, rows_times_weights_backward};
use super::flash::{bias_share, edge_layout, Problem, Sizes};
use super::fused::{copied, zeros, CpuBuffer, Host};
use super::grads::{add_owned, gradient_mut};
use super::shared::Shared;
use super::taped::Taped;
use crate::error::{Error, Result};
use crate::spec::WeightsSpec;
use crate::spec::{EdgePattern, EdgeProjections};
use crate::tensor::*;

/// Rows per rayon task in the gating passes.
const ROWS_PER_TASK: usize = 1024;

/// `[b, n, n, c]` edges with their two node axes swapped (its own inverse), on every thread.
fn transpose_edges<E: Real>(src: &[E], n: usize, c: usize) -> Vec<E> {
    let mut dst: Vec<E> = Vec::with_capacity(src.len());
    if n * c == 0 {
        return dst;
    }
    let block = n * n * c;
    // set_len below relies on it: every row of the destination is written
    assert!(
        src.len().is_multiple_of(block),
        "transpose_edges: {} values are not whole graphs of {n} × {n} × {c}",
        src.len()
    );
    let rows = src.len() / (n * c);
    let base = Shared::spare(&mut dst);
    // each task fills one destination row (graph g, first index j) from column j of the source
    (0..rows).into_par_iter().for_each(|gj| {
        let (g, j) = (gj / n, gj % n);
        for i in 0..n {
            let from = g * block + (i * n + j) * c;
            // Safety: row gj's entries [gj·n·c, (gj + 1)·n·c) lie within the capacity and are
            // written by this task alone.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    src[from..from + c].as_ptr(),
                    base.at(gj * n * c + i * c),
                    c,
                );
            }
        }
    });
    // Safety: the rows × n × c = len entries were all written above.
    unsafe { dst.set_len(src.len()) };
    dst
}

fn sigmoid<E: Real>(x: E) -> E {
    E::one() / (E::one() + (-x).exp())
}

/// Self-attention across the edges `x [b, n, n, c]` in the row or column pattern, with the
/// projections in `w`, optional per-head gate logits `[b, n, n, h]` and additive bias in the
/// pattern's layout `[b·n, h, n, n]` (or `[b, h, n, n]`, one block shared by a graph's rows). Returns `[b, n, n, h·e]`.
pub fn edge_self_attention_fused<E: Real, T: Tape<E, Cpu>>(
    x: T4<E, Cpu, T>,
    w: EdgeProjections<E, Cpu, T>,
    gates: Option<T4<E, Cpu, T>>,
    bias: Option<T4<E, Cpu, T>>,
    heads: usize,
    pattern: EdgePattern,
    spec: &WeightsSpec,
) -> Result<T4<E, Cpu, T>>
where
    Cpu: Device<E>,
    CpuBuffer<E>: std::ops::DerefMut<Target = Vec<E>>,
{
    let (b, n, n2, c) = *x.shape();
    let ((hd, cq), (hd_k, ck), (he, cv)) = (*w.to_q.shape(), *w.to_k.shape(), *w.to_v.shape());
    if !matches!(pattern, EdgePattern::Row | EdgePattern::Column) {
        return Err(Error::config(
            "edge self-attention",
            format!("runs along rows or columns, not {pattern:?}"),
        ));
    }
    if n2 != n || (cq, ck, cv) != (c, c, c) || hd_k != hd {
        return Err(Error::shape(
            "edge self-attention projections",
            format!("edges [b, n, n, c] and weights [h·d, {c}], [h·d, {c}], [h·e, {c}]"),
            format!(
                "{:?}, {:?}, {:?}, {:?}",
                x.shape(),
                w.to_q.shape(),
                w.to_k.shape(),
                w.to_v.shape()
            ),
        ));
    }
    if heads == 0 || hd % heads != 0 || he % heads != 0 {
        return Err(Error::config(
            "edge self-attention",
            format!("{hd} query and {he} value channels do not split into {heads} heads"),
        ));
    }
    if let Some(g) = &gates {
        if *g.shape() != (b, n, n, heads) {
            return Err(Error::shape(
                "edge self-attention gates",
                format!("{:?}", (b, n, n, heads)),
                format!("{:?}", g.shape()),
            ));
        }
    }
    let bias_share = match &bias {
        Some(bs) => bias_share(
            "edge self-attention bias",
            *bs.shape(),
            (b * n, heads, n, n),
        )?,
        None => 1,
    };
    let vis = &spec.visibility;
    if (vis.batch, vis.queries, vis.keys) != (b * n, n, n) {
        return Err(Error::shape(
            "edge self-attention visibility",
            format!("{:?}", (b * n, n, n)),
            format!("{:?}", (vis.batch, vis.queries, vis.keys)),
        ));
    }
    let (d, e) = (hd / heads, he / heads);
    let rows = b * n * n;
    let dev = x.device().clone();
    let mut taped = Taped::new();
    let x = taped.input(x);
    let (wq, wk, wv) = (
        taped.input(w.to_q),
        taped.input(w.to_k),
        taped.input(w.to_v),
    );
    let (gates, bias) = (taped.optional(gates), taped.optional(bias));
    // Columns run as rows of the transposed edges: every problem's rows are then contiguous
    // (read in place by the products) instead of n·c apart. Inputs, output and the gradients
    // of the edges and gates cross over; the weights do not care.
    let transposed = pattern == EdgePattern::Column;
    let cross = move |v: Host<E>, channels: usize| {
        if transposed {
            transpose_edges(&v, n, channels).into()
        } else {
            v
        }
    };
    let (xs, wq_h, wk_h, wv_h) = (
        cross(Host::read(&x), c),
        Host::read(&wq),
        Host::read(&wk),
        Host::read(&wv),
    );
    let [q, k, v] = [&wq_h, &wk_h, &wv_h].map(|w| rows_times_weights(&xs, w, None, c).into());
    let sizes = Sizes {
        problems: b * n,
        heads,
        queries: n,
        keys: n,
        dim: d,
        dim_value: e,
    };
    let problem = Problem {
        p: sizes.problems,
        h: heads,
        nq: n,
        nk: n,
        d,
        e,
        scale: E::of(spec.scale),
        normalizer: spec.normalizer,
        vis: vis.clone(),
        q,
        k,
        v,
        ql: edge_layout(EdgePattern::Row, n, hd, d),
        kl: edge_layout(EdgePattern::Row, n, hd, d),
        vl: edge_layout(EdgePattern::Row, n, he, e),
        ol: edge_layout(EdgePattern::Row, n, he, e),
        out_len: rows * he,
        bias: bias.as_ref().map(Host::read),
        bias_share,
    };
    let mut fwd = problem.forward();
    let gate_host = gates.as_ref().map(|g| {
        // a transpose is already the op's own buffer
        let mut s = cross(Host::read(g), heads).into_vec();
        s.par_iter_mut().for_each(|x| *x = sigmoid(*x));
        s
    });
    // the backward reads the ungated output: keep it when there is a tape, else reuse it
    let mut out = if T::OWNS_TAPE {
        if gate_host.is_none() && transposed {
            Vec::new() // the transpose below makes the copy
        } else {
            copied(&fwd.out)
        }
    } else {
        std::mem::take(&mut fwd.out)
    };
    if let Some(s) = &gate_host {
        out.par_chunks_mut(ROWS_PER_TASK * he)
            .zip(s.par_chunks(ROWS_PER_TASK * heads))
            .for_each(|(o, s)| {
                for (o, s) in o.chunks_exact_mut(he).zip(s.chunks_exact(heads)) {
                    for (oh, &sh) in o.chunks_exact_mut(e).zip(s) {
                        oh.iter_mut().for_each(|x| *x = *x * sh);
                    }
                }
            });
    }
    let out = match (transposed, out.is_empty() && rows * he > 0) {
        (true, true) => transpose_edges(&fwd.out, n, he),
        (true, false) => transpose_edges(&out, n, he),
        (false, _) => out,
    };
    let (x_g, wq_g, wk_g, wv_g) = (x.ghost(), wq.ghost(), wk.ghost(), wv.ghost());
    let gates_g = gates.as_ref().map(|t| t.ghost());
    let bias_g = bias.as_ref().map(|t| t.ghost());
    taped.output(&dev, out, (b, n, n, he), move |g, grads| {
        // the op's own copy: the gates scale it below
        let mut g = if transposed {
            transpose_edges(g, n, he)
        } else {
            g.to_vec()
        };
        if let (Some(s), Some(gg)) = (&gate_host, &gates_g) {
            // d logit = Σ_e g · out · σ(1 − σ); the attention sees g · σ
            let mut dlogit = zeros(rows * heads);
            g.par_chunks_mut(ROWS_PER_TASK * he)
                .zip(fwd.out.par_chunks(ROWS_PER_TASK * he))
                .zip(s.par_chunks(ROWS_PER_TASK * heads))
                .zip(dlogit.par_chunks_mut(ROWS_PER_TASK * heads))
                .for_each(|(((g, o), s), dl)| {
                    let per_row = g
                        .chunks_exact_mut(he)
                        .zip(o.chunks_exact(he))
                        .zip(s.chunks_exact(heads).zip(dl.chunks_exact_mut(heads)));
                    for ((g, o), (s, dl)) in per_row {
                        for h in 0..heads {
                            let (gh, oh) = (&mut g[h * e..(h + 1) * e], &o[h * e..(h + 1) * e]);
                            let dot = gh.iter().zip(oh).fold(E::zero(), |a, (&x, &y)| a + x * y);
                            dl[h] = dot * s[h] * (E::one() - s[h]);
                            gh.iter_mut().for_each(|x| *x = *x * s[h]);
                        }
                    }
                });
            let dlogit = if transposed {
                transpose_edges(&dlogit, n, heads)
            } else {
                dlogit
            };
            add_owned(grads, gg, dlogit)?;
        }
        let (dq, dk, dv, dbias) = problem.backward(&fwd, &g);
        // the projections' input gradients: columns sum in the transposed layout, then cross
        // back as a buffer of their own
        let mut crossed = transposed.then(|| zeros(rows * c));
        let target = match crossed.as_deref_mut() {
            Some(t) => t,
            None => gradient_mut(grads, &x_g)?,
        };
        let dws = [(&dq, &wq_h), (&dk, &wk_h), (&dv, &wv_h)]
            .map(|(d, w)| rows_times_weights_backward(Some(&mut *target), d, &xs, w, c).0);
        if let Some(t) = crossed {
            add_owned(grads, &x_g, transpose_edges(&t, n, c))?;
        }
        for (w_g, dw) in [&wq_g, &wk_g, &wv_g].into_iter().zip(dws) {
            add_owned(grads, w_g, dw)?;
        }
        if let (Some(bg), Some(db)) = (&bias_g, dbias) {
            add_owned(grads, bg, db)?;
        }
        Ok(())
    })
}
