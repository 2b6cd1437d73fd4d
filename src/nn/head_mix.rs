//! A 1×1 head-mixing projection: the original's `Conv2d(heads, out, 1)` over `[b, h, i, j]`
//! maps each edge's per-head values to `out` channels, returned as edges `[b, i, j, out]`.

use dfdx::prelude::*;

use super::linear::Linear;
use super::params::{visit_fields, HasParams, Init};
use super::rows::map_rows4;
use crate::error::{Error, Result};
use crate::graph::Edges;
use crate::tensor::*;

/// The original's `Conv2d(heads, out, 1)` over per-head edge values.
pub struct HeadMix<E: Real, D: Device<E>> {
    /// Heads to output channels.
    pub proj: Linear<E, D>,
}

impl<E: Real, D: Device<E>> HeadMix<E, D> {
    /// A mix from `heads` to `outputs` channels.
    pub fn new(init: &Init<D>, heads: usize, outputs: usize) -> Result<Self> {
        Ok(Self {
            proj: Linear::new(init, heads, outputs, false)?,
        })
    }

    /// `[b, h, i, j] -> [b, i, j, out]`.
    pub fn forward<T: Tape<E, D>>(&self, x: T4<E, D, T>) -> Result<Edges<E, D, T>>
    where
        D: crate::backend::Backend<E>,
    {
        let (b, h, i, j) = *x.shape();
        if h != self.proj.inputs || i != j {
            return Err(Error::shape(
                "head mixing",
                format!("[b, {}, n, n]", self.proj.inputs),
                format!("{:?}", (b, h, i, j)),
            ));
        }
        let per_edge = x.permute::<_, Axes4<0, 2, 3, 1>>();
        Edges::new(map_rows4(per_edge, |t| self.proj.forward(t))?)
    }
}

impl<E: Real, D: Device<E>> HasParams<E, D> for HeadMix<E, D> {
    visit_fields!(proj);
}
