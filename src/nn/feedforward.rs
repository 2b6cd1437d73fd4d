//! The original's feedforward: RMSNorm → Linear(c, c·mult) → exact GELU → Linear(c·mult, c),
//! one fused kernel on the CPU ([`crate::ops::feedforward::feedforward`]).

use dfdx::prelude::*;

use super::linear::Linear;
use super::norms::{RmsKind, RmsNorm};
use super::params::{visit_fields, HasParams, Init};
use crate::backend::Backend;
use crate::error::Result;
use crate::ops::activations::gelu_exact;
use crate::spec::FeedForwardParams;
use crate::tensor::*;

/// `RMSNorm → Linear(c, H) → GELU → Linear(H, c)`, no biases.
pub struct FeedForward<E: Real, D: Device<E>> {
    /// The prenorm.
    pub norm: RmsNorm<E, D>,
    /// `c → H`.
    pub proj_in: Linear<E, D>,
    /// `H → c`.
    pub proj_out: Linear<E, D>,
}

impl<E: Real, D: Device<E>> FeedForward<E, D> {
    /// A block of `channels` with hidden width `channels · mult`.
    pub fn new(init: &Init<D>, channels: usize, mult: usize, norm_eps: f64) -> Result<Self> {
        Self::with_hidden(init, channels, channels * mult, norm_eps)
    }

    /// The original's `nn.Sequential(norm, linear, gelu, dropout, linear)` parameter names
    /// (`0.scale`, `1.weight`, `4.weight`).
    pub fn sequential(
        init: &Init<D>,
        channels: usize,
        inner: usize,
        norm_eps: f64,
    ) -> Result<Self> {
        Self::scoped(init, ["0", "1", "4"], channels, inner, norm_eps)
    }

    /// With an explicit hidden width (`int(channels · mult)` for fractional multipliers).
    pub fn with_hidden(
        init: &Init<D>,
        channels: usize,
        inner: usize,
        norm_eps: f64,
    ) -> Result<Self> {
        Self::scoped(
            init,
            ["norm", "proj_in", "proj_out"],
            channels,
            inner,
            norm_eps,
        )
    }

    /// The blocks under the scopes `[norm, proj_in, proj_out]`.
    fn scoped(
        init: &Init<D>,
        [norm, proj_in, proj_out]: [&str; 3],
        channels: usize,
        inner: usize,
        norm_eps: f64,
    ) -> Result<Self> {
        Ok(Self {
            norm: RmsNorm::new(
                &init.pp(norm),
                channels,
                RmsKind::Scaled { eps: norm_eps },
                "scale",
            )?,
            proj_in: Linear::new(&init.pp(proj_in), channels, inner, false)?,
            proj_out: Linear::new(&init.pp(proj_out), inner, channels, false)?,
        })
    }

    /// `[rows, c] -> [rows, c]` (no residual: the caller adds it).
    pub fn forward<T: Tape<E, D>>(&self, x: T2<E, D, T>) -> Result<T2<E, D, T>>
    where
        D: Backend<E>,
    {
        let fused_form = self.proj_in.bias.is_none()
            && self.proj_out.bias.is_none()
            && x.shape().1 == self.norm.channels
            && x.shape().1 == self.proj_in.inputs;
        if !fused_form {
            let h = self.proj_in.forward(self.norm.forward(x)?)?;
            return self.proj_out.forward(gelu_exact(h)?);
        }
        let params = FeedForwardParams {
            gamma: self.norm.gamma.vector::<T>(),
            w_in: self.proj_in.weight.matrix::<T>(),
            w_out: self.proj_out.weight.matrix::<T>(),
            kind: self.norm.kind,
        };
        crate::ops::feedforward::feedforward(x, params)
    }
}

impl<E: Real, D: Device<E>> HasParams<E, D> for FeedForward<E, D> {
    visit_fields!(norm, proj_in, proj_out);
}
