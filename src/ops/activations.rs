//! Activations dfdx lacks or gets wrong.

use dfdx::prelude::*;

use crate::backend::{Backend, Fused};
use crate::error::Result;
use crate::tensor::*;

/// Exact GELU, `x · Φ(x)`, with the right gradient `Φ(x) + x·φ(x)`: the device's form (fused
/// on the CPU, [`gelu_composite`] elsewhere).
pub fn gelu_exact<S: Shape, E: Real, D: Backend<E>, T: Tape<E, D>>(
    x: Tensor<S, E, D, T>,
) -> Result<Tensor<S, E, D, T>> {
    if D::fuses(Fused::Gelu) {
        D::gelu_fused(x)
    } else {
        Ok(gelu_composite(x))
    }
}

/// Exact GELU from dfdx ops.
///
/// dfdx 0.13's `accurate_gelu` computes the value right but its backward uses `Φ + √2·x·φ`.
/// We add `(√2 − 1)·(φ(x) − stop_gradient(φ(x)))`: zero in value, `−(√2 − 1)·x·φ(x)` in gradient
/// (since φ' = −x·φ), which cancels the excess. Composite, so it runs on every device; the
/// gradient check in the tests fails if dfdx ever fixes its backward.
pub fn gelu_composite<S: Shape, E: Real, D: Device<E>, T: Tape<E, D>>(
    x: Tensor<S, E, D, T>,
) -> Tensor<S, E, D, T> {
    let inv_sqrt_2pi = E::of(1.0 / (2.0 * std::f64::consts::PI).sqrt());
    let pdf = (x.with_empty_tape().square() * E::of(-0.5)).exp() * inv_sqrt_2pi;
    // a detached copy under its own id (dfdx panics on a binary op of one id with itself)
    let pdf_const = (pdf.with_empty_tape() * E::one()).split_tape().0;
    let correction = (pdf - pdf_const) * E::of(std::f64::consts::SQRT_2 - 1.0);
    x.accurate_gelu() + correction
}

/// `softplus(x) = log(1 + exp(x))`, finite wherever `x` is, with the gradient `sigmoid(x)`
/// everywhere.
///
/// Computed as `m + log(exp(−m) + exp(x − m))` with `m = max(x, 0)` held constant: no exp
/// overflows, and m's two terms cancel in the derivative, which is therefore
/// `exp(x − m) / (exp(−m) + exp(x − m)) = sigmoid(x)` at every x. The textbook stable form
/// `relu(x) + log(1 + exp(−|x|))` has the same value, but as composite ops its pieces'
/// derivatives are both 0 at x = 0 (relu' and |x|' there), where sigmoid is ½: a softplus of an
/// exact 0, such as a linear map started at zero, never got a gradient.
pub fn softplus<S: Shape, E: Real, D: Device<E>, T: Tape<E, D>>(
    x: Tensor<S, E, D, T>,
) -> Tensor<S, E, D, T> {
    // untaped, under a new id: a constant shift
    let m = x.with_empty_tape().split_tape().0.relu();
    let shifted = (x - m.clone()).exp() + m.clone().negate().exp();
    shifted.ln() + m
}

/// SiLU, `x · sigmoid(x)`.
pub fn silu<S: Shape, E: Real, D: Device<E>, T: Tape<E, D>>(
    x: Tensor<S, E, D, T>,
) -> Tensor<S, E, D, T> {
    let s = x.with_empty_tape().sigmoid();
    x * s
}
