//! Normalizations over the channel axis of `[rows, c]`.
//!
//! Both RMSNorm variants of the original:
//! - [`RmsKind::Scaled`]: `x · rsqrt(mean(x²) + eps) · γ` (einx's `Norm(mean=False)`);
//! - [`RmsKind::Unit`]: `normalize(x) · √c · γ` with `normalize(x) = x / max(‖x‖, 1e-12)`
//!   (the Taylor attention's prenorm).

use dfdx::prelude::*;

use super::params::{HasParams, Init, InitKind, Param};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::tensor::*;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RmsKind {
    Scaled { eps: f64 },
    Unit,
}

pub struct RmsNorm<E: Real, D: Device<E>> {
    pub gamma: Param<E, D>,
    pub kind: RmsKind,
    pub channels: usize,
}

fn check_channels(name: &str, expected: usize, got: usize) -> Result<()> {
    if expected != got {
        return Err(Error::shape(
            format!("norm `{name}`"),
            format!("{expected} channels"),
            got,
        ));
    }
    Ok(())
}

impl<E: Real, D: Device<E>> RmsNorm<E, D> {
    /// `param` names the scale (`gamma` in the Taylor attention, `scale` in einx norms).
    pub fn new(init: &Init<D>, channels: usize, kind: RmsKind, param: &str) -> Result<Self> {
        Ok(Self {
            gamma: init.param(param, &[channels], InitKind::Ones)?,
            kind,
            channels,
        })
    }

    /// The device's form: fused on the CPU, [`rms_norm_composite`] elsewhere.
    pub fn forward<T: Tape<E, D>>(&self, x: T2<E, D, T>) -> Result<T2<E, D, T>>
    where
        D: Backend<E>,
    {
        check_channels(&self.gamma.name, self.channels, x.shape().1)?;
        D::rms_norm(x, self.gamma.vector::<T>(), self.kind)
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

impl<E: Real, D: Device<E>> HasParams<E, D> for RmsNorm<E, D> {
    fn visit_params<'a>(&'a self, f: &mut dyn FnMut(&'a Param<E, D>)) {
        f(&self.gamma);
    }

    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param<E, D>)) {
        f(&mut self.gamma);
    }
}

/// LayerNorm with affine parameters `weight` and `bias` (PyTorch names), eps 1e-5 by default.
pub struct LayerNorm<E: Real, D: Device<E>> {
    pub weight: Param<E, D>,
    pub bias: Param<E, D>,
    pub eps: f64,
    pub channels: usize,
}

impl<E: Real, D: Device<E>> LayerNorm<E, D> {
    pub fn new(init: &Init<D>, channels: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: init.param("weight", &[channels], InitKind::Ones)?,
            bias: init.param("bias", &[channels], InitKind::Zeros)?,
            eps,
            channels,
        })
    }

    /// The device's form: fused on the CPU, [`layer_norm_composite`] elsewhere.
    pub fn forward<T: Tape<E, D>>(&self, x: T2<E, D, T>) -> Result<T2<E, D, T>>
    where
        D: Backend<E>,
    {
        check_channels(&self.weight.name, self.channels, x.shape().1)?;
        D::layer_norm(
            x,
            self.weight.vector::<T>(),
            self.bias.vector::<T>(),
            self.eps,
        )
    }
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

impl<E: Real, D: Device<E>> HasParams<E, D> for LayerNorm<E, D> {
    fn visit_params<'a>(&'a self, f: &mut dyn FnMut(&'a Param<E, D>)) {
        f(&self.weight);
        f(&self.bias);
    }

    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param<E, D>)) {
        f(&mut self.weight);
        f(&mut self.bias);
    }
}
