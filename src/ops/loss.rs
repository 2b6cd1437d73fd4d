//! The classification loss with its tally: the mean cross-entropy of rows of logits against
//! their wanted classes, and how many rows' first largest logit is the wanted class (the
//! host's argmax, ties going to the lower class), counted where the logits are.

use dfdx::prelude::*;

use crate::backend::{Backend, Fused};
use crate::error::Result;
use crate::spec::check_classes;
use crate::tensor::*;

/// `(mean cross-entropy, hits)` of `logits [rows, classes]` against `wanted` (one class per
/// row). Fused on the CPU (one pass each way), else the composite; each form checks `wanted`.
pub fn cross_entropy<E: Real, D: Backend<E>, T: Tape<E, D>>(
    logits: T2<E, D, T>,
    wanted: &[usize],
) -> Result<(T0<E, D, T>, T0<E, D>)> {
    if D::fuses(Fused::CrossEntropy) {
        D::cross_entropy_fused(logits, wanted)
    } else {
        cross_entropy_composite(logits, wanted)
    }
}

/// [`cross_entropy`] from dfdx ops: a log-softmax, one-hot and before-the-wanted masks built
/// on the host, the argmax compared on the device.
pub fn cross_entropy_composite<E: Real, D: Device<E>, T: Tape<E, D>>(
    logits: T2<E, D, T>,
    wanted: &[usize],
) -> Result<(T0<E, D, T>, T0<E, D>)> {
    let (m, v) = *logits.shape();
    check_classes((m, v), wanted)?;
    let dev = logits.device().clone();
    let onehot = constant(
        &dev,
        indicator((0..m * v).map(|k| wanted[k / v] == k % v)),
        (m, v),
    )?;
    let before = constant(
        &dev,
        indicator((0..m * v).map(|k| k % v < wanted[k / v])),
        (m, v),
    )?;
    let hits = first_max_hits(logits.retaped::<NoneTape>(), onehot.clone(), before);
    let logp = logits.log_softmax::<Axis<1>>();
    let loss = (logp * onehot.retaped::<T>()).sum() * E::of(-1.0 / m as f64);
    Ok((loss, hits))
}

/// Rows of `logits` `[m, v]` whose first largest logit is the wanted class (`onehot` marks it,
/// `before` marks the classes before it).
fn first_max_hits<E: Real, D: Device<E>>(
    logits: T2<E, D>,
    onehot: T2<E, D>,
    before: T2<E, D>,
) -> T0<E, D> {
    let shape = *logits.shape();
    let dev = logits.device().clone();
    let best = logits
        .clone()
        .max::<(usize,), Axis<1>>()
        .broadcast_like::<_, Axis<1>>(&shape);
    let at_max = logits
        .eq(&best)
        .choose(dev.ones_like(&shape), dev.zeros_like(&shape));
    let wanted_is_max = (at_max.clone() * onehot).sum::<(usize,), Axis<1>>();
    let earlier_max = (at_max * before).sum::<(usize,), Axis<1>>();
    let rows = (shape.0,);
    let first = earlier_max
        .eq(E::zero())
        .choose(dev.ones_like(&rows), dev.zeros_like(&rows));
    (wanted_is_max * first).sum()
}
