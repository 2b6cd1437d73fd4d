//! Row-wise blocks (linear, norms, activations) act on `[rows, channels]`; these helpers apply
//! them to node `[b, n, c]` and edge `[b, n, n, c]` tensors by a (free, contiguous) reshape.

use dfdx::prelude::*;

use crate::error::Result;
use crate::tensor::*;

/// Applies a row-wise `f` to `[a, b, c]` as `[a·b, c]`.
pub fn map_rows3<E: Real, D: Device<E>, T: Tape<E, D>>(
    x: T3<E, D, T>,
    f: impl FnOnce(T2<E, D, T>) -> Result<T2<E, D, T>>,
) -> Result<T3<E, D, T>> {
    let (a, b, c) = *x.shape();
    let y = f(x.reshape_like(&(a * b, c)))?;
    let c2 = y.shape().1;
    Ok(y.reshape_like(&(a, b, c2)))
}

/// Applies a row-wise `f` to `[a, b, c, d]` as `[a·b·c, d]`.
pub fn map_rows4<E: Real, D: Device<E>, T: Tape<E, D>>(
    x: T4<E, D, T>,
    f: impl FnOnce(T2<E, D, T>) -> Result<T2<E, D, T>>,
) -> Result<T4<E, D, T>> {
    let (a, b, c, d) = *x.shape();
    let y = f(x.reshape_like(&(a * b * c, d)))?;
    let d2 = y.shape().1;
    Ok(y.reshape_like(&(a, b, c, d2)))
}
