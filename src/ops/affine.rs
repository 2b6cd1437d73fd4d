//! Affine ops: linear layers with their bias, adds that repeat one tensor along another's
//! leading axes (residuals, biases over the batch), and the outer sum that lifts node features
//! onto edges.

use dfdx::prelude::*;

use crate::backend::{Backend, Fused};
use crate::error::Result;
use crate::spec::{check_outer_sum, repeats};
use crate::tensor::*;

/// A linear layer `x · wᵀ (+ b)` over `x [rows, in]`, `w [out, in]`, `b [out]`.
pub fn linear<E: Real, D: Backend<E>, T: Tape<E, D>>(
    x: T2<E, D, T>,
    w: T2<E, D, T>,
    b: Option<T1<E, D, T>>,
) -> Result<T2<E, D, T>> {
    if D::fuses(Fused::Linear) {
        D::linear_fused(x, w, b)
    } else {
        linear_composite(x, w, b)
    }
}

/// A linear layer from dfdx ops.
pub fn linear_composite<E: Real, D: Device<E>, T: Tape<E, D>>(
    x: T2<E, D, T>,
    w: T2<E, D, T>,
    b: Option<T1<E, D, T>>,
) -> Result<T2<E, D, T>> {
    let rows = x.shape().0;
    let out = w.shape().0;
    let y = x
        .try_matmul(w.permute::<_, Axes2<1, 0>>())
        .map_err(device_err)?;
    Ok(match b {
        Some(b) => y + b.broadcast_like::<_, Axis<0>>(&(rows, out)),
        None => y,
    })
}

/// `x + y` with `y` repeated along `x`'s leading axes (`x`'s elements are whole copies of
/// `y`'s shape; the same shape is a plain add).
pub fn add_repeated<S: Shape, R: Shape, E: Real, D: Backend<E>, T: Tape<E, D>>(
    x: Tensor<S, E, D, T>,
    y: Tensor<R, E, D, T>,
) -> Result<Tensor<S, E, D, T>> {
    if D::fuses(Fused::AddRepeated) {
        D::add_repeated_fused(x, y)
    } else {
        add_repeated_composite(x, y)
    }
}

/// `x + y` repeated along `x`'s leading axes, from dfdx ops.
pub fn add_repeated_composite<S: Shape, R: Shape, E: Real, D: Device<E>, T: Tape<E, D>>(
    x: Tensor<S, E, D, T>,
    y: Tensor<R, E, D, T>,
) -> Result<Tensor<S, E, D, T>> {
    let shape = *x.shape();
    let reps = repeats(&shape, y.shape())?;
    let per = y.shape().num_elements();
    let y = y
        .try_reshape_like(&(per,))
        .map_err(device_err)?
        .broadcast_like::<_, Axis<0>>(&(reps, per));
    let x = x.try_reshape_like(&(reps, per)).map_err(device_err)?;
    (x + y).try_reshape_like(&shape).map_err(device_err)
}

/// Edge (i, j) gets `sources[b, i] + targets[b, j]`: `[b, n, c]` twice → `[b, n, n, c]`.
pub fn outer_sum<E: Real, D: Backend<E>, T: Tape<E, D>>(
    sources: T3<E, D, T>,
    targets: T3<E, D, T>,
) -> Result<T4<E, D, T>> {
    if D::fuses(Fused::OuterSum) {
        D::outer_sum_fused(sources, targets)
    } else {
        outer_sum_composite(sources, targets)
    }
}

/// The outer sum from dfdx broadcasts.
pub fn outer_sum_composite<E: Real, D: Device<E>, T: Tape<E, D>>(
    sources: T3<E, D, T>,
    targets: T3<E, D, T>,
) -> Result<T4<E, D, T>> {
    let (b, n, c) = *sources.shape();
    check_outer_sum((b, n, c), *targets.shape())?;
    let shape = (b, n, n, c);
    Ok(sources.broadcast_like::<_, Axis<2>>(&shape) + targets.broadcast_like::<_, Axis<1>>(&shape))
}
