//! Fused CPU forms of the affine ops every layer runs over all n² edges: linear layers with
//! their bias, adds (residuals, biases repeated over a batch) and the outer sum that lifts node
//! features onto edges. dfdx runs the bias add and
//! every add's backward as a single-threaded walk with an index per element (about a
//! millisecond per edge tensor of a small model, on each side), and its matmul backward
//! serially; here each is one parallel pass over chunks of rows.

use dfdx::prelude::*;
use rayon::prelude::*;

use super::fused::{accumulate, host_copy, sum_parts, CpuBuffer, Host};
use super::gemm::{mm_with, Mat, MatMut};
use super::grads::{add_borrowed, add_owned, gradient_mut};
use super::taped::Taped;
use crate::error::{Error, Result};
use crate::spec::{check_outer_sum, repeats};
use crate::tensor::*;

/// Rows per task of a linear layer over many rows (the edges).
const LINEAR_ROWS: usize = 256;

/// Elements per task of an add.
const ADD_CHUNK: usize = 1 << 14;

/// How a linear layer over `rows` rows splits its work: many rows go in chunks, one product
/// per chunk on one thread; few rows (the nodes, with wide layers) go as one chunk whose
/// products use every thread.
fn linear_split(rows: usize) -> (usize, gemm::Parallelism) {
    if rows >= 4 * LINEAR_ROWS * rayon::current_num_threads() {
        (LINEAR_ROWS, gemm::Parallelism::None)
    } else {
        (rows.max(1), gemm::Parallelism::Rayon(0))
    }
}

/// `x [rows, c] · wᵀ (+ b)` with `w [out, c]`, `b [out]`, into a new `[rows, out]` buffer,
/// split over rows as [`linear_split`] says.
pub(super) fn rows_times_weights<E: Real>(x: &[E], w: &[E], b: Option<&[E]>, c: usize) -> Vec<E> {
    let out = w.len() / c.max(1);
    let rows = x.len() / c.max(1);
    if c == 0 || out == 0 {
        return vec![E::zero(); rows * out];
    }
    // the unsafe writes below rely on these: whole rows, and a bias of one value per output
    assert!(
        x.len().is_multiple_of(c) && w.len().is_multiple_of(c),
        "rows_times_weights: x and w must hold whole rows of {c}"
    );
    assert!(
        b.is_none_or(|b| b.len() == out),
        "rows_times_weights: the bias must hold {out} values"
    );
    let (chunk, par) = linear_split(rows);
    let mut y: Vec<E> = Vec::with_capacity(rows * out);
    y.spare_capacity_mut()[..rows * out]
        .par_chunks_mut(chunk * out)
        .zip(x.par_chunks(chunk * c))
        .for_each(|(y, x)| {
            let r = x.len() / c;
            let (x, w) = (Mat::rows(x, (r, c), c), Mat::rows(w, (out, c), c).t());
            // the chunk ends fully initialized either way: with a bias, its rows are set to it
            // and the product adds onto them; without, the product writes every element
            // without reading one
            match b {
                Some(b) => {
                    for row in y.chunks_exact_mut(out) {
                        row.iter_mut().zip(b).for_each(|(d, &v)| {
                            d.write(v);
                        });
                    }
                    // SAFETY: every element was written just above
                    let y = unsafe { &mut *(y as *mut [std::mem::MaybeUninit<E>] as *mut [E]) };
                    mm_with(MatMut::rows(y, (r, out), out), true, x, w, E::one(), par);
                }
                None => mm_with(MatMut::uninit(y, (r, out), out), false, x, w, E::one(), par),
            }
        });
    // Safety: every chunk of the rows × out elements was initialized above.
    unsafe { y.set_len(rows * out) };
    y
}

/// The backward of [`rows_times_weights`] for output gradient `g [rows, out]`: `dx += g · w`
/// in place (when given), and the weight and bias gradients `gᵀ · x` and `Σ_rows g`, summed
/// per chunk of rows and added in chunk order (independent of the thread count).
pub(super) fn rows_times_weights_backward<E: Real>(
    dx: Option<&mut [E]>,
    g: &[E],
    x: &[E],
    w: &[E],
    c: usize,
) -> (Vec<E>, Vec<E>) {
    let out = w.len() / c.max(1);
    let rows = x.len() / c.max(1);
    if c == 0 || out == 0 || rows == 0 {
        return (vec![E::zero(); out * c], vec![E::zero(); out]);
    }
    let (chunk, par) = linear_split(rows);
    let chunk_grads = |dx: Option<&mut [E]>, x: &[E], g: &[E]| {
        let r = x.len() / c;
        let mut dw = vec![E::zero(); out * c];
        let mut db = vec![E::zero(); out];
        g.chunks_exact(out).for_each(|row| accumulate(&mut db, row));
        let g = Mat::rows(g, (r, out), out);
        if let Some(dx) = dx {
            let w = Mat::rows(w, (out, c), c);
            mm_with(MatMut::rows(dx, (r, c), c), true, g, w, E::one(), par);
        }
        let x = Mat::rows(x, (r, c), c);
        mm_with(
            MatMut::rows(&mut dw, (out, c), c),
            false,
            g.t(),
            x,
            E::one(),
            par,
        );
        (dw, db)
    };
    let partials: Vec<(Vec<E>, Vec<E>)> = match dx {
        Some(dx) => dx
            .par_chunks_mut(chunk * c)
            .zip(x.par_chunks(chunk * c))
            .zip(g.par_chunks(chunk * out))
            .map(|((dx, x), g)| chunk_grads(Some(dx), x, g))
            .collect(),
        None => x
            .par_chunks(chunk * c)
            .zip(g.par_chunks(chunk * out))
            .map(|(x, g)| chunk_grads(None, x, g))
            .collect(),
    };
    let (pw, pb): (Vec<&[E]>, Vec<&[E]>) = partials.iter().map(|(w, b)| (&w[..], &b[..])).unzip();
    (sum_parts(&pw, out * c), sum_parts(&pb, out))
}

/// `y = x · wᵀ + b` over `x [rows, in]`, `w [out, in]`, `b [out]`.
///
/// Gradients: `dx = g · w`, `dw = gᵀ · x`, `db = Σ_rows g`; the weight and bias sums are taken
/// per chunk of rows and added in chunk order, so they do not depend on the thread count.
pub fn linear_fused<E: Real, T: Tape<E, Cpu>>(
    x: T2<E, Cpu, T>,
    w: T2<E, Cpu, T>,
    b: Option<T1<E, Cpu, T>>,
) -> Result<T2<E, Cpu, T>>
where
    Cpu: Device<E>,
    CpuBuffer<E>: std::ops::DerefMut<Target = Vec<E>>,
{
    let (rows, c_in) = *x.shape();
    let (c_out, w_in) = *w.shape();
    let b_out = b.as_ref().map(|b| b.shape().0);
    if w_in != c_in || b_out.is_some_and(|o| o != c_out) {
        return Err(Error::shape(
            "linear",
            format!("weight [out, {c_in}] and bias [out]"),
            format!("weight [{c_out}, {w_in}], bias {b_out:?}"),
        ));
    }
    let dev = x.device().clone();
    let mut taped = Taped::new();
    let (x, w, b) = (taped.input(x), taped.input(w), taped.optional(b));
    let (xs, ws) = (Host::read(&x), Host::read(&w));
    let bs = b.as_ref().map(Host::read);
    let out = rows_times_weights(&xs, &ws, bs.as_deref(), c_in);
    let (x_g, w_g, b_g) = (x.ghost(), w.ghost(), b.as_ref().map(|b| b.ghost()));
    taped.output(&dev, out, (rows, c_out), move |g, grads| {
        if c_in == 0 || c_out == 0 {
            return Ok(());
        }
        let dx = gradient_mut(grads, &x_g)?;
        let (dw, db) = rows_times_weights_backward(Some(dx), &g, &xs, &ws, c_in);
        add_owned(grads, &w_g, dw)?;
        if let Some(b_g) = &b_g {
            add_owned(grads, b_g, db)?;
        }
        Ok(())
    })
}

/// `x + y` where `y` repeats along `x`'s leading axes: `x`'s elements are `reps` copies of
/// `y`'s shape (`reps = 1`: two tensors of one shape). Gradients: `dx = g`, `dy = Σ_reps g`.
pub fn add_repeated_fused<S: Shape, R: Shape, E: Real, T: Tape<E, Cpu>>(
    x: Tensor<S, E, Cpu, T>,
    y: Tensor<R, E, Cpu, T>,
) -> Result<Tensor<S, E, Cpu, T>>
where
    Cpu: Device<E>,
    CpuBuffer<E>: std::ops::DerefMut<Target = Vec<E>>,
{
    let shape = *x.shape();
    repeats(&shape, y.shape())?;
    let per = y.shape().num_elements();
    let dev = x.device().clone();
    let mut taped = Taped::new();
    let (x, y) = (taped.input(x), taped.input(y));
    let mut out = host_copy(&x);
    let ys = Host::read(&y);
    if per >= ADD_CHUNK {
        // each repeat in chunks
        out.par_chunks_mut(per).for_each(|rep| {
            rep.par_chunks_mut(ADD_CHUNK)
                .zip(ys.par_chunks(ADD_CHUNK))
                .for_each(|(o, y)| accumulate(o, y))
        });
    } else {
        // whole repeats per task
        out.par_chunks_mut(per * (ADD_CHUNK / per).max(1))
            .for_each(|o| o.chunks_exact_mut(per).for_each(|o| accumulate(o, &ys)));
    }
    let (x_g, y_g) = (x.ghost(), y.ghost());
    taped.output(&dev, out, shape, move |g, grads| {
        add_borrowed(grads, &x_g, g)?;
        if per == g.len() {
            // one repeat: y's gradient is g too
            return add_borrowed(grads, &y_g, g);
        }
        let dy = gradient_mut(grads, &y_g)?;
        if per >= ADD_CHUNK {
            // chunks of y, each summed over the repeats
            dy.par_chunks_mut(ADD_CHUNK).enumerate().for_each(|(i, d)| {
                for rep in g.chunks_exact(per) {
                    accumulate(d, &rep[i * ADD_CHUNK..][..d.len()]);
                }
            });
        } else {
            g.chunks_exact(per).for_each(|rep| accumulate(dy, rep));
        }
        Ok(())
    })
}

/// Node rows per task of the outer sum's backward.
const OUTER_ROWS: usize = 16;

/// Edge (i, j) gets `sources[b, i] + targets[b, j]`: `[b, n, c]` twice → `[b, n, n, c]`.
///
/// Gradients: `dsources[b, i] = Σ_j g[b, i, j]`, `dtargets[b, j] = Σ_i g[b, i, j]` (summed per
/// block of rows i, the blocks added in order).
pub fn outer_sum_fused<E: Real, T: Tape<E, Cpu>>(
    sources: T3<E, Cpu, T>,
    targets: T3<E, Cpu, T>,
) -> Result<T4<E, Cpu, T>>
where
    Cpu: Device<E>,
    CpuBuffer<E>: std::ops::DerefMut<Target = Vec<E>>,
{
    let (b, n, c) = *sources.shape();
    check_outer_sum((b, n, c), *targets.shape())?;
    let dev = sources.device().clone();
    let mut taped = Taped::new();
    let (src, tgt) = (taped.input(sources), taped.input(targets));
    let (ss, ts) = (Host::read(&src), Host::read(&tgt));
    let row = n * c;
    let mut out = vec![E::zero(); b * n * row];
    if row > 0 {
        // one task per edge row (b, i): n edges of c channels
        out.par_chunks_mut(row).enumerate().for_each(|(bi, o)| {
            let s = &ss[bi * c..][..c];
            let t = &ts[(bi / n) * row..][..row];
            for (o, t) in o.chunks_exact_mut(c).zip(t.chunks_exact(c)) {
                for k in 0..c {
                    o[k] = s[k] + t[k];
                }
            }
        });
    }
    let (src_g, tgt_g) = (src.ghost(), tgt.ghost());
    taped.output(&dev, out, (b, n, n, c), move |g, grads| {
        if row == 0 {
            return Ok(());
        }
        let ds = gradient_mut(grads, &src_g)?;
        // per graph, per block of its edge rows: their source gradients in place, a
        // partial target sum
        let block = OUTER_ROWS * c;
        let parts: Vec<Vec<Vec<E>>> = ds
            .par_chunks_mut(row)
            .enumerate()
            .map(|(graph, ds)| {
                ds.par_chunks_mut(block)
                    .enumerate()
                    .map(|(blk, ds)| {
                        let mut dt = vec![E::zero(); row];
                        for (r, ds) in ds.chunks_exact_mut(c).enumerate() {
                            let g_row = &g[(graph * n + blk * OUTER_ROWS + r) * row..][..row];
                            g_row.chunks_exact(c).for_each(|gj| accumulate(ds, gj));
                            accumulate(&mut dt, g_row);
                        }
                        dt
                    })
                    .collect()
            })
            .collect();
        let dt = gradient_mut(grads, &tgt_g)?;
        for (graph, blocks) in parts.iter().enumerate() {
            let dt = &mut dt[graph * row..][..row];
            blocks.iter().for_each(|part| accumulate(dt, part));
        }
        Ok(())
    })
}
