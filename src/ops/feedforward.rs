//! The feedforward block `RMSNorm → Linear → GELU → Linear` over `[rows, c]` (no residual).

use dfdx::prelude::*;

use super::activations::gelu_exact;
use super::norms::rms_norm;
use crate::backend::{Backend, Fused};
use crate::error::Result;
use crate::spec::FeedForwardParams;
use crate::tensor::*;

/// The block on the device: one fused kernel on the CPU, else [`feedforward_composite`].
pub fn feedforward<E: Real, D: Backend<E>, T: Tape<E, D>>(
    x: T2<E, D, T>,
    p: FeedForwardParams<E, D, T>,
) -> Result<T2<E, D, T>> {
    if D::fuses(Fused::FeedForward) {
        D::feedforward_fused(x, p)
    } else {
        feedforward_composite(x, p)
    }
}

/// The block from the device's norm and GELU and dfdx matmuls.
pub fn feedforward_composite<E: Real, D: Backend<E>, T: Tape<E, D>>(
    x: T2<E, D, T>,
    p: FeedForwardParams<E, D, T>,
) -> Result<T2<E, D, T>> {
    let h = rms_norm(x, p.gamma, p.kind)?.matmul(p.w_in.permute::<_, Axes2<1, 0>>());
    Ok(gelu_exact(h)?.matmul(p.w_out.permute::<_, Axes2<1, 0>>()))
}
