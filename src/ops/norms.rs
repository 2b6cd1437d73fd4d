//! Normalizations over the channel axis of `[rows, c]`: both RMSNorm variants of the original
//! ([`RmsKind::Scaled`]: `x · rsqrt(mean(x²) + eps) · γ`, einx's `Norm(mean=False)`;
//! [`RmsKind::Unit`]: `normalize(x) · √c · γ` with `normalize(x) = x / max(‖x‖, 1e-12)`, the
//! Taylor attention's prenorm) and LayerNorm.

use dfdx::prelude::*;

use crate::backend::{Backend, Fused};
use crate::error::Result;
use crate::spec::RmsKind;
use crate::tensor::*;

/// RMSNorm of `[rows, c]` with scale `gamma [c]`: fused on the CPU, else the composite.
pub fn rms_norm<E: Real, D: Backend<E>, T: Tape<E, D>>(
    x: T2<E, D, T>,
    gamma: T1<E, D, T>,
    kind: RmsKind,
) -> Result<T2<E, D, T>> {
    if D::fuses(Fused::RmsNorm) {
        D::rms_norm_fused(x, gamma, kind)
    } else {
        Ok(rms_norm_composite(x, gamma, kind))
    }
}

/// LayerNorm of `[rows, c]` with weight and bias `[c]`: fused on the CPU, else the composite.
pub fn layer_norm<E: Real, D: Backend<E>, T: Tape<E, D>>(
    x: T2<E, D, T>,
    weight: T1<E, D, T>,
    bias: T1<E, D, T>,
    eps: f64,
) -> Result<T2<E, D, T>> {
    if D::fuses(Fused::LayerNorm) {
        D::layer_norm_fused(x, weight, bias, eps)
    } else {
        Ok(layer_norm_composite(x, weight, bias, eps))
    }
}

/// RMSNorm of `[rows, c]` with scale `gamma [c]` from dfdx ops.
pub fn rms_norm_composite<E: Real, D: Device<E>, T: Tape<E, D>>(
    x: T2<E, D, T>,
    gamma: T1<E, D, T>,
    kind: RmsKind,
) -> T2<E, D, T> {
    let shape = *x.shape();
    let c = shape.1 as f64;
    let inv = match kind {
        RmsKind::Scaled { eps } => (x.with_empty_tape().square().mean::<_, Axis<1>>() + E::of(eps))
            .sqrt()
            .recip(),
        // the tiny addend keeps the gradient of ‖x‖ finite at x = 0 without changing values
        RmsKind::Unit => ((x.with_empty_tape().square().sum::<_, Axis<1>>() + E::of(1e-30))
            .sqrt()
            .clamp(1e-12, f64::INFINITY)
            * E::of(1.0 / c.sqrt()))
        .recip(),
    };
    let gamma = gamma.broadcast_like::<_, Axis<0>>(&shape);
    x * inv.broadcast_like::<_, Axis<1>>(&shape) * gamma
}

/// LayerNorm of `[rows, c]` with weight and bias `[c]` from dfdx ops.
pub fn layer_norm_composite<E: Real, D: Device<E>, T: Tape<E, D>>(
    x: T2<E, D, T>,
    weight: T1<E, D, T>,
    bias: T1<E, D, T>,
    eps: f64,
) -> T2<E, D, T> {
    let shape = *x.shape();
    x.normalize::<Axis<1>>(eps) * weight.broadcast_like::<_, Axis<0>>(&shape)
        + bias.broadcast_like::<_, Axis<0>>(&shape)
}
