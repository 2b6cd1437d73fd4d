//! Fused CPU forms of the two pointwise chains every layer runs over all n² edges: RMSNorm
//! (either kind, see [`crate::nn::norms`]) and exact GELU. The composite forms take eight to ten
//! dfdx ops each, every one a single-threaded pass that allocates its output, and as many in the
//! backward; these take one parallel pass forward and one backward.

use dfdx::prelude::*;
use rayon::prelude::*;

use super::fused_cpu::{host_copy, CpuBuffer};
use crate::error::Result;
use crate::nn::norms::RmsKind;
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
    let (x, mut tape) = x.contiguous().split_tape();
    let xs = host_copy(&x);
    let mut out = vec![E::zero(); xs.len()];
    out.par_chunks_mut(CHUNK)
        .zip(xs.par_chunks(CHUNK))
        .for_each(|(o, x)| {
            let mut pdf = vec![E::zero(); x.len()];
            E::normal_cdf_pdf(x, o, &mut pdf);
            o.iter_mut().zip(x).for_each(|(o, &v)| *o = v * *o);
        });
    let out = dev.try_tensor_from_vec(out, shape).map_err(device_err)?;
    if T::OWNS_TAPE {
        let (out_g, x_g) = (out.ghost(), x.ghost());
        tape.add_backward_op(move |grads| {
            let g = grads.get_or_alloc_mut(&out_g)?.to_vec();
            let dx = grads.get_or_alloc_mut(&x_g)?;
            dx.par_chunks_mut(CHUNK)
                .zip(xs.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
                .for_each(|(dx, (x, g))| {
                    let (mut phi, mut pdf) = (vec![E::zero(); x.len()], vec![E::zero(); x.len()]);
                    E::normal_cdf_pdf(x, &mut phi, &mut pdf);
                    for i in 0..x.len() {
                        dx[i] = dx[i] + g[i] * (phi[i] + x[i] * pdf[i]);
                    }
                });
            Ok(())
        });
    }
    Ok(out.put_tape(tape))
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
    row.iter().fold(E::zero(), |a, &v| a + v * v)
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
    let (rows, c) = shape;
    let dev = x.device().clone();
    let (x, tape_x) = x.contiguous().split_tape();
    let (gamma, tape_g) = gamma.split_tape();
    let mut tape = tape_x.merge(tape_g);
    let (xs, gs) = (host_copy(&x), host_copy(&gamma));
    let mut out = vec![E::zero(); rows * c];
    // whole rows per task
    let task = c * (CHUNK / c.max(1)).max(1);
    if c > 0 {
        out.par_chunks_mut(task)
            .zip(xs.par_chunks(task))
            .for_each(|(o, x)| {
                for (o, x) in o.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
                    let (inv, _) = norm_factor(kind, sum_sq(x), c);
                    for k in 0..c {
                        o[k] = x[k] * inv * gs[k];
                    }
                }
            });
    }
    let out = dev.try_tensor_from_vec(out, shape).map_err(device_err)?;
    if T::OWNS_TAPE && c > 0 {
        let (out_g, x_g, gamma_g) = (out.ghost(), x.ghost(), gamma.ghost());
        tape.add_backward_op(move |grads| {
            let g = grads.get_or_alloc_mut(&out_g)?.to_vec();
            let dx = grads.get_or_alloc_mut(&x_g)?;
            let dgamma_parts: Vec<Vec<E>> = dx
                .par_chunks_mut(task)
                .zip(xs.par_chunks(task))
                .zip(g.par_chunks(task))
                .map(|((dx, x), g)| {
                    let mut dgamma = vec![E::zero(); c];
                    for ((dx, x), g) in dx
                        .chunks_exact_mut(c)
                        .zip(x.chunks_exact(c))
                        .zip(g.chunks_exact(c))
                    {
                        let (inv, live) = norm_factor(kind, sum_sq(x), c);
                        let mut dot = E::zero();
                        for k in 0..c {
                            dot = dot + g[k] * gs[k] * x[k];
                            dgamma[k] = dgamma[k] + g[k] * x[k] * inv;
                        }
                        let coef = if live {
                            inv * inv * inv / E::of(c as f64) * dot
                        } else {
                            E::zero()
                        };
                        for k in 0..c {
                            dx[k] = dx[k] + inv * g[k] * gs[k] - x[k] * coef;
                        }
                    }
                    dgamma
                })
                .collect();
            let dgamma = grads.get_or_alloc_mut(&gamma_g)?;
            for part in dgamma_parts {
                dgamma.iter_mut().zip(&part).for_each(|(d, &p)| *d = *d + p);
            }
            Ok(())
        });
    }
    Ok(out.put_tape(tape))
}
