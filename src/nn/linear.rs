//! Linear layer, PyTorch layout: `y = x · Wᵀ + b`, weight `[out, in]`.

use dfdx::prelude::*;

use super::params::{visit_fields, HasParams, Init, InitKind, Param};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::tensor::*;

/// `y = x · Wᵀ + b` with PyTorch's layout and names (`weight [out, in]`, `bias [out]`).
pub struct Linear<E: Real, D: Device<E>> {
    /// `[outputs, inputs]`.
    pub weight: Param<E, D>,
    /// `[outputs]`, if any.
    pub bias: Option<Param<E, D>>,
    /// Input channels.
    pub inputs: usize,
    /// Output channels.
    pub outputs: usize,
}

impl<E: Real, D: Device<E>> Linear<E, D> {
    /// Parameters `weight` (and `bias`) in `init`'s scope, drawn as PyTorch does: U(±1/√in).
    pub fn new(init: &Init<D>, inputs: usize, outputs: usize, bias: bool) -> Result<Self> {
        if inputs == 0 || outputs == 0 {
            return Err(Error::config(
                "linear",
                format!("sizes must be positive, got {inputs} -> {outputs}"),
            ));
        }
        let bound = 1.0 / (inputs as f64).sqrt();
        let weight = init.param("weight", &[outputs, inputs], InitKind::Uniform(bound))?;
        let bias = if bias {
            Some(init.param("bias", &[outputs], InitKind::Uniform(bound))?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            inputs,
            outputs,
        })
    }

    /// `[rows, in] -> [rows, out]`, in the device's form (fused on the CPU).
    pub fn forward<T: Tape<E, D>>(&self, x: T2<E, D, T>) -> Result<T2<E, D, T>>
    where
        D: Backend<E>,
    {
        let c = x.shape().1;
        if c != self.inputs {
            return Err(Error::shape(
                format!("linear `{}`", self.weight.name),
                format!("{} input channels", self.inputs),
                c,
            ));
        }
        crate::ops::affine::linear(
            x,
            self.weight.matrix::<T>(),
            self.bias.as_ref().map(|b| b.vector::<T>()),
        )
    }
}

impl<E: Real, D: Device<E>> HasParams<E, D> for Linear<E, D> {
    visit_fields!(weight, bias);
}
