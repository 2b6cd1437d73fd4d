//! Inclusive prefix sums along the sequence axis (the causal Taylor feature form's state).

use dfdx::prelude::*;

use crate::backend::{Backend, Fused};
use crate::error::Result;
use crate::tensor::*;

/// Inclusive prefix sum along axis 2 of `[B, H, N, X]`: a parallel scan on the CPU, else the
/// composite.
pub fn cumsum<E: Real, D: Backend<E>, T: Tape<E, D>>(x: T4<E, D, T>) -> Result<T4<E, D, T>> {
    if D::fuses(Fused::Cumsum) {
        D::cumsum_fused(x)
    } else {
        Ok(cumsum_composite(x))
    }
}

/// Inclusive prefix sum along axis 2 of `[B, H, N, X]` as a matmul with a triangular matrix
/// (composite form: quadratic in N, but a single batched matmul on any device).
pub fn cumsum_composite<E: Real, D: Device<E>, T: Tape<E, D>>(x: T4<E, D, T>) -> T4<E, D, T> {
    let (b, h, n, _) = *x.shape();
    let dev = x.device().clone();
    // upper[m, n] = 1 when m <= n, so (xᵀ · upper)[c, n] = Σ_{m ≤ n} x[m, c]
    let upper: T2<E, D> = dev.ones_like(&(n, n)).upper_tri(None);
    let upper = upper.broadcast_like::<_, Axes2<0, 1>>(&(b, h, n, n));
    let xt = x.permute::<_, Axes4<0, 1, 3, 2>>();
    xt.matmul(upper).permute::<_, Axes4<0, 1, 3, 2>>()
}
