//! Normalizations over the channel axis of `[rows, c]`.
//!
//! Both RMSNorm variants of the original:
//! - [`RmsKind::Scaled`]: `x · rsqrt(mean(x²) + eps) · γ` (einx's `Norm(mean=False)`);
//! - [`RmsKind::Unit`]: `normalize(x) · √c · γ` with `normalize(x) = x / max(‖x‖, 1e-12)`
//!   (the Taylor attention's prenorm).

use dfdx::prelude::*;

use super::params::{visit_fields, HasParams, Init, InitKind, Param};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::ops::norms::{layer_norm, rms_norm};
pub use crate::spec::RmsKind;
use crate::tensor::*;

/// RMSNorm with gain `gamma`, scaled (`eps`) or unit-norm.
pub struct RmsNorm<E: Real, D: Device<E>> {
    /// The gain `[channels]`.
    pub gamma: Param<E, D>,
    /// Which form.
    pub kind: RmsKind,
    /// Channels.
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

    /// The device's form (see [`crate::ops::norms::rms_norm`]).
    pub fn forward<T: Tape<E, D>>(&self, x: T2<E, D, T>) -> Result<T2<E, D, T>>
    where
        D: Backend<E>,
    {
        check_channels(&self.gamma.name, self.channels, x.shape().1)?;
        rms_norm(x, self.gamma.vector::<T>(), self.kind)
    }
}

impl<E: Real, D: Device<E>> HasParams<E, D> for RmsNorm<E, D> {
    visit_fields!(gamma);
}

/// LayerNorm with affine parameters `weight` and `bias` (PyTorch names), eps 1e-5 by default.
pub struct LayerNorm<E: Real, D: Device<E>> {
    /// The gain `[channels]`.
    pub weight: Param<E, D>,
    /// The shift `[channels]`.
    pub bias: Param<E, D>,
    /// Added to the variance.
    pub eps: f64,
    /// Channels.
    pub channels: usize,
}

impl<E: Real, D: Device<E>> LayerNorm<E, D> {
    /// A norm over `channels`, gain 1 and shift 0.
    pub fn new(init: &Init<D>, channels: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: init.param("weight", &[channels], InitKind::Ones)?,
            bias: init.param("bias", &[channels], InitKind::Zeros)?,
            eps,
            channels,
        })
    }

    /// The device's form (see [`crate::ops::norms::layer_norm`]).
    pub fn forward<T: Tape<E, D>>(&self, x: T2<E, D, T>) -> Result<T2<E, D, T>>
    where
        D: Backend<E>,
    {
        check_channels(&self.weight.name, self.channels, x.shape().1)?;
        layer_norm(
            x,
            self.weight.vector::<T>(),
            self.bias.vector::<T>(),
            self.eps,
        )
    }
}

impl<E: Real, D: Device<E>> HasParams<E, D> for LayerNorm<E, D> {
    visit_fields!(weight, bias);
}
