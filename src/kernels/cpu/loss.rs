//! The fused CPU form of [`crate::ops::loss::cross_entropy`]: one pass over each row of logits
//! forward (its maximum and first argmax, log-sum-exp, the wanted class's loss), one back
//! (`softmax − one-hot`, scaled). The composite form runs about fifteen single-threaded dfdx
//! passes over the `[rows, classes]` logits and builds two masks of that size on the host.

use dfdx::prelude::*;
use rayon::prelude::*;

use super::fused::{zeros, CpuBuffer, Host};
use super::grads::add_owned;
use super::taped::Taped;
use crate::error::Result;
use crate::spec::check_classes;
use crate::tensor::*;

/// Rows per task: a partial loss per task, the partials added in order (the same bits on any
/// number of threads).
const ROWS_PER_TASK: usize = 16;

/// One row's log-sum-exp, loss `lse − x[wanted]`, and whether its first largest logit is the
/// wanted class. A NaN logit makes the loss NaN (and the row no hit).
fn row_forward<E: Real>(x: &[E], wanted: usize) -> (E, E, bool) {
    let best = x.iter().fold(x[0], |m, &v| m.max_or_nan(v));
    let first = x.iter().position(|&v| v == best);
    let sum = x.iter().fold(E::zero(), |s, &v| s + (v - best).exp());
    let lse = best + sum.ln();
    (lse, lse - x[wanted], first == Some(wanted))
}

/// `(mean cross-entropy, hits)` of `logits [rows, classes]` against `wanted`.
pub fn cross_entropy_fused<E: Real, T: Tape<E, Cpu>>(
    logits: T2<E, Cpu, T>,
    wanted: &[usize],
) -> Result<(T0<E, Cpu, T>, T0<E, Cpu>)>
where
    Cpu: Device<E>,
    CpuBuffer<E>: std::ops::DerefMut<Target = Vec<E>>,
{
    let (m, v) = *logits.shape();
    check_classes((m, v), wanted)?;
    let dev = logits.device().clone();
    let mut taped = Taped::new();
    let x = taped.input(logits);
    let xs = Host::read(&x);
    let per_task: Vec<(Vec<E>, E, usize)> = xs
        .par_chunks(ROWS_PER_TASK * v)
        .zip(wanted.par_chunks(ROWS_PER_TASK))
        .map(|(rows, wanted)| {
            let mut lse = Vec::with_capacity(wanted.len());
            let (mut loss, mut hits) = (E::zero(), 0);
            for (row, &w) in rows.chunks_exact(v).zip(wanted) {
                let (l, row_loss, hit) = row_forward(row, w);
                lse.push(l);
                loss = loss + row_loss;
                hits += usize::from(hit);
            }
            (lse, loss, hits)
        })
        .collect();
    let scale = E::of(1.0 / m as f64);
    let loss = per_task.iter().fold(E::zero(), |s, t| s + t.1) * scale;
    let hits: usize = per_task.iter().map(|t| t.2).sum();
    let lse: Vec<E> = per_task.into_iter().flat_map(|t| t.0).collect();
    let hits = dev
        .try_tensor_from_vec(vec![E::of(hits as f64)], ())
        .map_err(device_err)?;
    let wanted = wanted.to_vec();
    let x_g = x.ghost();
    let loss = taped.output(&dev, vec![loss], (), move |g, grads| {
        // d loss / d x[r, j] = (softmax[r, j] − [j = wanted_r]) / m
        let step = g[0] * scale;
        let mut dx = zeros(m * v);
        dx.par_chunks_mut(v)
            .zip(xs.par_chunks(v))
            .zip(lse.par_iter().zip(&wanted))
            .for_each(|((d, x), (&l, &w))| {
                for (d, &x) in d.iter_mut().zip(x) {
                    *d = (x - l).exp() * step;
                }
                d[w] = d[w] - step;
            });
        add_owned(grads, &x_g, dx)
    })?;
    Ok((loss, hits))
}
