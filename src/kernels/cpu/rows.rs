//! Fused CPU forms of the pointwise chains every layer runs over all n² edges: RMSNorm
//! (either kind, see [`crate::nn::norms`]), LayerNorm, exact GELU and the feedforward block. The composite forms take eight to ten
//! dfdx ops each, every one a single-threaded pass that allocates its output, and as many in the
//! backward; these take one parallel pass forward and one backward.

use std::mem::MaybeUninit;

use dfdx::prelude::*;
use rayon::prelude::*;

use super::fused::{accumulate, lanes_sum, sum_parts, zeros, CpuBuffer, Host};
use super::gemm::{mm_new, mm_with, Mat, MatMut};
use super::grads::{add_owned, gradient_mut};
use super::taped::Taped;
use crate::error::Result;
use crate::spec::{FeedForwardParams, RmsKind};
use crate::tensor::*;

/// Rows per rayon task: enough work to amortize a task, small enough to balance two to 16 cores.
const CHUNK: usize = 4096;

/// Exact GELU `x · Φ(x)` with gradient `Φ(x) + x · φ(x)`.
pub fn gelu_fused<S: Shape, E: Real, T: Tape<E, Cpu>>(
    x: Tensor<S, E, Cpu, T>,
) -> Result<Tensor<S, E, Cpu, T>>
where
    Cpu: Device<E>,
    CpuBuffer<E>: std::ops::DerefMut<Target = Vec<E>>,
{
    let shape = *x.shape();
    let dev = x.device().clone();
    let mut taped = Taped::new();
    let x = taped.input(x);
    let xs = Host::read(&x);
    let mut out = zeros(xs.len());
    out.par_chunks_mut(CHUNK)
        .zip(xs.par_chunks(CHUNK))
        .for_each(|(o, x)| {
            E::normal_cdf_pdf(x, o, None);
            o.iter_mut().zip(x).for_each(|(o, &v)| *o = v * *o);
        });
    let x_g = x.ghost();
    taped.output(&dev, out, shape, move |g, grads| {
        let dx = gradient_mut(grads, &x_g)?;
        dx.par_chunks_mut(CHUNK)
            .zip(xs.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
            .for_each(|(dx, (x, g))| {
                let (mut phi, mut pdf) = (vec![E::zero(); x.len()], vec![E::zero(); x.len()]);
                E::normal_cdf_pdf(x, &mut phi, Some(&mut pdf));
                for (((d, &g), &x), (&c, &p)) in
                    dx.iter_mut().zip(g).zip(x).zip(phi.iter().zip(&pdf))
                {
                    *d = *d + g * (c + x * p);
                }
            });
        Ok(())
    })
}

/// The per-row factor `inv` of an RMSNorm from the row's `Σx²`, and whether its gradient flows
/// (the unit kind clamps the norm at 1e-12, where the gradient stops).
#[inline]
fn norm_factor<E: Real>(kind: RmsKind, sum_sq: E, c: usize) -> (E, bool) {
    match kind {
        RmsKind::Scaled { eps } => ((sum_sq / E::of(c as f64) + E::of(eps)).sqrt().recip(), true),
        RmsKind::Unit => {
            let norm = (sum_sq + E::of(1e-30)).sqrt();
            let live = norm >= E::of(1e-12);
            let norm = if live { norm } else { E::of(1e-12) };
            (E::of((c as f64).sqrt()) / norm, live)
        }
    }
}

#[inline]
fn sum_sq<E: Real>(row: &[E]) -> E {
    sum8([row], |[x]| x * x)
}

/// `Σ_k term([row[k] for row in rows])` over the rows' common length, as eight interleaved
/// partial sums added in a fixed order. A single chain of adds waits out each add's latency:
/// summing a row of 32 channels that way took longer than normalizing it. Blocks of eight are
/// whole arrays, so the lanes are vectors. The order depends on the length alone.
#[inline(always)]
fn sum8<E: Real, const N: usize>(rows: [&[E]; N], term: impl Fn([E; N]) -> E) -> E {
    let len = rows.iter().map(|r| r.len()).min().unwrap_or(0);
    let whole = len - len % 8;
    let mut lanes = [E::zero(); 8];
    for k in (0..whole).step_by(8) {
        let blocks: [&[E; 8]; N] = std::array::from_fn(|i| {
            rows[i][k..k + 8]
                .try_into()
                .expect("a block of eight within the row")
        });
        for (l, lane) in lanes.iter_mut().enumerate() {
            *lane = *lane + term(std::array::from_fn(|i| blocks[i][l]));
        }
    }
    let tail = (whole..len).fold(E::zero(), |a, k| {
        a + term(std::array::from_fn(|i| rows[i][k]))
    });
    lanes_sum(&lanes) + tail
}

/// One row of the RMSNorm backward: `dx += inv · gγ − x · (inv³/c) · Σ(gγx)` (the second
/// term only while the norm's gradient flows) and `dγ += g · x · inv`.
#[inline]
fn rms_backward_row<E: Real>(
    dx: &mut [E],
    dgamma: &mut [E],
    x: &[E],
    g: &[E],
    gamma: &[E],
    (inv, live): (E, bool),
) {
    let c = x.len();
    let (dx, dgamma, g, gamma) = (&mut dx[..c], &mut dgamma[..c], &g[..c], &gamma[..c]);
    let dot = sum8([g, gamma, x], |[g, gm, x]| g * gm * x);
    for ((d, &g), &x) in dgamma.iter_mut().zip(g).zip(x) {
        *d = *d + g * x * inv;
    }
    let coef = if live {
        inv * inv * inv / E::of(c as f64) * dot
    } else {
        E::zero()
    };
    for (((d, &g), &gm), &x) in dx.iter_mut().zip(g).zip(gamma).zip(x) {
        *d = *d + inv * g * gm - x * coef;
    }
}

/// `out` row by row from `xs` (`[rows, c]` both), whole rows per parallel task.
/// `row` writes every element of its output row (the buffer is not cleared first).
fn map_rows<E: Real>(
    xs: &[E],
    c: usize,
    row: impl Fn(&mut [MaybeUninit<E>], &[E]) + Sync,
) -> Vec<E> {
    if c == 0 {
        return zeros(xs.len());
    }
    assert!(
        xs.len().is_multiple_of(c),
        "map_rows: {} values are not whole rows of {c}",
        xs.len()
    );
    let mut out = Vec::with_capacity(xs.len());
    let task = c * (CHUNK / c).max(1);
    out.spare_capacity_mut()[..xs.len()]
        .par_chunks_mut(task)
        .zip(xs.par_chunks(task))
        .for_each(|(o, x)| {
            o.chunks_exact_mut(c)
                .zip(x.chunks_exact(c))
                .for_each(|(o, x)| row(o, x))
        });
    // SAFETY: whole rows (asserted), and `row` wrote every element of each
    unsafe { out.set_len(xs.len()) };
    out
}

/// The backward of a row-wise op with per-channel parameters: `row(dx, params_grad, x, g)`
/// adds one row's input gradient into `dx` and its parameter gradients (`parts` vectors of
/// `c`) into the task's sums, which are returned added in task order (independent of the
/// thread count).
fn backward_rows<E: Real>(
    dx: &mut [E],
    xs: &[E],
    g: &[E],
    c: usize,
    parts: usize,
    row: impl Fn(&mut [E], &mut [Vec<E>], &[E], &[E]) + Sync,
) -> Vec<Vec<E>> {
    let mut sums = vec![vec![E::zero(); c]; parts];
    if c == 0 {
        return sums;
    }
    let task = c * (CHUNK / c).max(1);
    let per_task: Vec<Vec<Vec<E>>> = dx
        .par_chunks_mut(task)
        .zip(xs.par_chunks(task))
        .zip(g.par_chunks(task))
        .map(|((dx, x), g)| {
            let mut local = vec![vec![E::zero(); c]; parts];
            for ((dx, x), g) in dx
                .chunks_exact_mut(c)
                .zip(x.chunks_exact(c))
                .zip(g.chunks_exact(c))
            {
                row(dx, &mut local, x, g);
            }
            local
        })
        .collect();
    for local in &per_task {
        sums.iter_mut()
            .zip(local)
            .for_each(|(sum, part)| accumulate(sum, part));
    }
    sums
}

/// RMSNorm over the channels of `[rows, c]`: `x · inv(row) · γ`.
///
/// Gradients, with `inv = f(Σx²)` for either kind (both give `∂inv/∂x_k = −inv³ x_k / c` while
/// the unit kind's clamp is inactive): `dx = inv · gγ − x · (inv³/c) · Σ(gγx)` and
/// `dγ = Σ_rows g · x · inv`.
pub fn rms_norm_fused<E: Real, T: Tape<E, Cpu>>(
    x: T2<E, Cpu, T>,
    gamma: T1<E, Cpu, T>,
    kind: RmsKind,
) -> Result<T2<E, Cpu, T>>
where
    Cpu: Device<E>,
    CpuBuffer<E>: std::ops::DerefMut<Target = Vec<E>>,
{
    let shape = *x.shape();
    let c = shape.1;
    if gamma.shape().0 != c {
        return Err(crate::error::Error::shape(
            "rms norm",
            format!("gamma [{c}]"),
            format!("[{}]", gamma.shape().0),
        ));
    }
    let dev = x.device().clone();
    let mut taped = Taped::new();
    let (x, gamma) = (taped.input(x), taped.input(gamma));
    let (xs, gs) = (Host::read(&x), Host::read(&gamma));
    let out = map_rows(&xs, c, |o, x| {
        let (inv, _) = norm_factor(kind, sum_sq(x), c);
        for ((o, &x), &g) in o.iter_mut().zip(x).zip(&gs[..]) {
            o.write(x * inv * g);
        }
    });
    let (x_g, gamma_g) = (x.ghost(), gamma.ghost());
    taped.output(&dev, out, shape, move |g, grads| {
        if c == 0 {
            return Ok(());
        }
        let dx = gradient_mut(grads, &x_g)?;
        let sums = backward_rows(dx, &xs, &g, c, 1, |dx, dgamma, x, g| {
            let factor = norm_factor(kind, sum_sq(x), c);
            rms_backward_row(dx, &mut dgamma[0], x, g, &gs, factor);
        });
        let [dgamma] = <[Vec<E>; 1]>::try_from(sums).expect("one parameter gradient");
        add_owned(grads, &gamma_g, dgamma)?;
        Ok(())
    })
}

/// A row's mean and `1 / √(var + eps)` (population variance, as PyTorch's LayerNorm).
#[inline]
fn mean_inv_std<E: Real>(row: &[E], eps: E) -> (E, E) {
    let c = E::of(row.len() as f64);
    let mean = sum8([row], |[x]| x) / c;
    let var = sum8([row], |[x]| (x - mean) * (x - mean)) / c;
    (mean, (var + eps).sqrt().recip())
}

/// LayerNorm over the channels of `[rows, c]`: `(x − mean) · inv · w + b`.
///
/// Gradients, with `x̂ = (x − mean) · inv` and `h = g · w`: `dx = inv · (h − mean(h) −
/// x̂ · mean(h · x̂))`, `dw = Σ_rows g · x̂`, `db = Σ_rows g`.
pub fn layer_norm_fused<E: Real, T: Tape<E, Cpu>>(
    x: T2<E, Cpu, T>,
    w: T1<E, Cpu, T>,
    b: T1<E, Cpu, T>,
    eps: f64,
) -> Result<T2<E, Cpu, T>>
where
    Cpu: Device<E>,
    CpuBuffer<E>: std::ops::DerefMut<Target = Vec<E>>,
{
    let shape = *x.shape();
    let c = shape.1;
    if w.shape().0 != c || b.shape().0 != c {
        return Err(crate::error::Error::shape(
            "layer norm",
            format!("weight and bias [{c}]"),
            format!("[{}], [{}]", w.shape().0, b.shape().0),
        ));
    }
    let eps = E::of(eps);
    let dev = x.device().clone();
    let mut taped = Taped::new();
    let (x, w, b) = (taped.input(x), taped.input(w), taped.input(b));
    let (xs, ws, bs) = (Host::read(&x), Host::read(&w), Host::read(&b));
    let out = map_rows(&xs, c, |o, x| {
        let (mean, inv) = mean_inv_std(x, eps);
        for (((o, &x), &w), &b) in o.iter_mut().zip(x).zip(&ws[..]).zip(&bs[..]) {
            o.write((x - mean) * inv * w + b);
        }
    });
    let (x_g, w_g, b_g) = (x.ghost(), w.ghost(), b.ghost());
    taped.output(&dev, out, shape, move |g, grads| {
        if c == 0 {
            return Ok(());
        }
        let dx = gradient_mut(grads, &x_g)?;
        let cf = E::of(c as f64);
        // parameter gradients: [dw, db]
        let sums = backward_rows(dx, &xs, &g, c, 2, |dx, dp, x, g| {
            let (mean, inv) = mean_inv_std(x, eps);
            let (g, ws) = (&g[..c], &ws[..c]);
            let mean_h = sum8([g, ws], |[g, w]| g * w) / cf;
            let mean_hx = sum8([g, ws, x], |[g, w, x]| g * w * ((x - mean) * inv)) / cf;
            let [dw, db] = dp else {
                unreachable!("two parameter gradients")
            };
            for ((d, &g), &x) in dw.iter_mut().zip(g).zip(x) {
                *d = *d + g * ((x - mean) * inv);
            }
            for (d, &g) in db.iter_mut().zip(g) {
                *d = *d + g;
            }
            for (((d, &g), &w), &x) in dx.iter_mut().zip(g).zip(ws).zip(x) {
                *d = *d + inv * (g * w - mean_h - (x - mean) * inv * mean_hx);
            }
        });
        let [dw, db] = <[Vec<E>; 2]>::try_from(sums).expect("two parameter gradients");
        add_owned(grads, &w_g, dw)?;
        add_owned(grads, &b_g, db)?;
        Ok(())
    })
}

/// Rows per task of the fused feedforward: its hidden activations stay in cache.
const FF_ROWS: usize = 128;

/// One chunk's normed input `xn [R, c]` (with each row's `inv` and whether its norm's
/// gradient flows) and hidden pre-activations `h [R, H]`.
struct FfChunk<E> {
    xn: Vec<E>,
    inv: Vec<(E, bool)>,
    h: Vec<E>,
}

/// What the backward of one chunk reads from its forward: the normed input, the activations
/// `a = GELU(h) [R, H]` and their slopes `GELU'(h) = Φ(h) + h·φ(h)`.
struct FfKept<E> {
    xn: Vec<E>,
    inv: Vec<(E, bool)>,
    a: Vec<E>,
    slope: Vec<E>,
}

/// `h ← GELU(h) = h·Φ(h)` in place, and with `slope` the derivative `Φ(h) + h·φ(h)` there.
/// By blocks, so that Φ stays on the stack and each block's passes in L1.
fn gelu_in_place<E: Real>(h: &mut [E], mut slope: Option<&mut [E]>) {
    const BLOCK: usize = 256;
    let mut cdf = [E::zero(); BLOCK];
    for (b, h) in h.chunks_mut(BLOCK).enumerate() {
        let cdf = &mut cdf[..h.len()];
        match slope.as_deref_mut() {
            Some(slope) => {
                let slope = &mut slope[b * BLOCK..b * BLOCK + h.len()];
                E::normal_cdf_pdf(h, cdf, Some(&mut *slope));
                for ((v, s), &f) in h.iter_mut().zip(slope.iter_mut()).zip(&*cdf) {
                    *s = f + *v * *s;
                    *v = *v * f;
                }
            }
            None => {
                E::normal_cdf_pdf(h, cdf, None);
                h.iter_mut().zip(&*cdf).for_each(|(v, &f)| *v = *v * f);
            }
        }
    }
}

fn ff_chunk<E: Real>(
    x: &[E],
    gs: &[E],
    w_in: &[E],
    kind: RmsKind,
    c: usize,
    par: gemm::Parallelism,
) -> FfChunk<E> {
    let rows = x.len() / c;
    let hidden = w_in.len() / c;
    let mut xn = vec![E::zero(); rows * c];
    let mut inv = Vec::with_capacity(rows);
    for (o, x) in xn.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
        let (f, live) = norm_factor(kind, sum_sq(x), c);
        inv.push((f, live));
        for ((o, &x), &g) in o.iter_mut().zip(x).zip(gs) {
            *o = x * f * g;
        }
    }
    let h = mm_new(
        Mat::rows(&xn, (rows, c), c),
        Mat::rows(w_in, (hidden, c), c).t(),
        E::one(),
        par,
    );
    FfChunk { xn, inv, h }
}

/// The whole feedforward block in one pass per chunk of rows: `[rows, c] → [rows, c]` (no
/// residual). The backward reuses each chunk's hidden layer and Φ of it from the forward.
pub fn feedforward_fused<E: Real, T: Tape<E, Cpu>>(
    x: T2<E, Cpu, T>,
    p: FeedForwardParams<E, Cpu, T>,
) -> Result<T2<E, Cpu, T>>
where
    Cpu: Device<E>,
    CpuBuffer<E>: std::ops::DerefMut<Target = Vec<E>>,
{
    let shape = *x.shape();
    let (rows, c) = shape;
    let (hidden, c_in) = *p.w_in.shape();
    if c_in != c || *p.w_out.shape() != (c, hidden) || p.gamma.shape().0 != c {
        return Err(crate::error::Error::shape(
            "feedforward weights",
            format!("scale [{c}], in [H, {c}], out [{c}, H]"),
            format!(
                "{:?}, {:?}, {:?}",
                p.gamma.shape(),
                p.w_in.shape(),
                p.w_out.shape()
            ),
        ));
    }
    let kind = p.kind;
    let dev = x.device().clone();
    let mut taped = Taped::new();
    let x = taped.input(x);
    let (gamma, w_in, w_out) = (
        taped.input(p.gamma),
        taped.input(p.w_in),
        taped.input(p.w_out),
    );
    let (xs, gs, wi, wo) = (
        Host::read(&x),
        Host::read(&gamma),
        Host::read(&w_in),
        Host::read(&w_out),
    );
    // Many rows (the edges): chunks in parallel, each product on one thread. Few rows (the
    // nodes, with a wide hidden layer): one chunk, its products on every thread.
    let (chunk, par) = if rows >= 4 * FF_ROWS * rayon::current_num_threads() {
        (FF_ROWS * c, gemm::Parallelism::None)
    } else {
        ((rows * c).max(1), gemm::Parallelism::Rayon(0))
    };
    let mut out = zeros(rows * c);
    // With a tape, each chunk's normed input, activations and their slopes are kept for the
    // backward (rows × (c + 2·hidden) values) instead of being recomputed there.
    let keep = T::OWNS_TAPE;
    let mut kept: Vec<FfKept<E>> = Vec::new();
    if c > 0 && hidden > 0 {
        let per_chunk = out
            .par_chunks_mut(chunk)
            .zip(xs.par_chunks(chunk))
            .map(|(y, x)| {
                let FfChunk { xn, inv, h } = ff_chunk(x, &gs, &wi, kind, c, par);
                let mut a = h;
                let mut slope = if keep {
                    vec![E::zero(); a.len()]
                } else {
                    Vec::new()
                };
                gelu_in_place(&mut a, keep.then_some(&mut slope[..]));
                let r = x.len() / c;
                mm_with(
                    MatMut::rows(y, (r, c), c),
                    false,
                    Mat::rows(&a, (r, hidden), hidden),
                    Mat::rows(&wo, (c, hidden), hidden).t(),
                    E::one(),
                    par,
                );
                keep.then_some(FfKept { xn, inv, a, slope })
            });
        kept = per_chunk.flatten().collect();
    }
    let (x_g, gamma_g) = (x.ghost(), gamma.ghost());
    let (wi_g, wo_g) = (w_in.ghost(), w_out.ghost());
    taped.output(&dev, out, shape, move |g, grads| {
        if c == 0 || hidden == 0 {
            return Ok(());
        }
        let dx = gradient_mut(grads, &x_g)?;
        // per chunk: its input gradient in place, and partial dγ, dW_in, dW_out
        let partials: Vec<(Vec<E>, Vec<E>, Vec<E>)> = dx
            .par_chunks_mut(chunk)
            .zip(xs.par_chunks(chunk))
            .zip(g.par_chunks(chunk))
            .zip(kept.par_iter())
            .map(|(((dx, x), dy), FfKept { xn, inv, a, slope })| {
                let r = x.len() / c;
                let dy = Mat::rows(dy, (r, c), c);
                // da = dy · W_out
                let wo = Mat::rows(&wo, (c, hidden), hidden);
                let mut da = mm_new(dy, wo, E::one(), par);
                // dW_out = dyᵀ · a
                let a = Mat::rows(a, (r, hidden), hidden);
                let dwo = mm_new(dy.t(), a, E::one(), par);
                // dh = da · GELU'(h), over da
                da.iter_mut().zip(slope).for_each(|(d, &s)| *d = *d * s);
                let dh = Mat::rows(&da, (r, hidden), hidden);
                // dW_in = dhᵀ · xn
                let xn = Mat::rows(xn, (r, c), c);
                let dwi = mm_new(dh.t(), xn, E::one(), par);
                // dxn = dh · W_in
                let wi = Mat::rows(&wi, (hidden, c), c);
                let dxn = mm_new(dh, wi, E::one(), par);
                // the norm's backward
                let mut dgamma = vec![E::zero(); c];
                let rowwise = dx
                    .chunks_exact_mut(c)
                    .zip(x.chunks_exact(c))
                    .zip(dxn.chunks_exact(c).zip(inv));
                for ((dx, x), (dn, &factor)) in rowwise {
                    rms_backward_row(dx, &mut dgamma, x, dn, &gs, factor);
                }
                (dgamma, dwi, dwo)
            })
            .collect();
        let dg: Vec<&[E]> = partials.iter().map(|p| &p.0[..]).collect();
        let dwi: Vec<&[E]> = partials.iter().map(|p| &p.1[..]).collect();
        let dwo: Vec<&[E]> = partials.iter().map(|p| &p.2[..]).collect();
        add_owned(grads, &gamma_g, sum_parts(&dg, c))?;
        add_owned(grads, &wi_g, sum_parts(&dwi, hidden * c))?;
        add_owned(grads, &wo_g, sum_parts(&dwo, c * hidden))?;
        Ok(())
    })
}
