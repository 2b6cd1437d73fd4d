//! Dynamic hyper-connections (Zhu et al. 2024, as PyPI `hyper-connections` 0.4.11 computes them,
//! one fraction, one input view): the node state is kept as `s` residual streams; each branch
//! of a layer reads a learned mix of the streams and writes its output back into every stream
//! with a learned weight.
//!
//! Per position, with streams `R [s, d]` and `normed = normalize(R) · √d · (γ + 1)` row-wise:
//! - width: `α = tanh(normed · Wα) · aα + Aα` (`[s, 1 + s]`), `mix = αᵀ R` (`[1 + s, d]`):
//!   row 0 is the branch's input, rows 1.. the streams carried past the branch;
//! - depth: `β = tanh(normed · wβ) · aβ + bβ` (`[s]`), streams ← carried + β ⊗ branch output.
//!
//! The model repeats its nodes into the streams before the first layer and sums the streams
//! after the last.

use dfdx::prelude::*;

use super::{visit_fields, HasParams, Init, InitKind, Param};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::ops::norms::rms_norm;
use crate::spec::RmsKind;
use crate::tensor::*;

/// One branch's hyper-connection; parameter names as the original's `state_dict`.
pub struct HyperConnection<E: Real, D: Device<E>> {
    /// Residual streams.
    pub streams: usize,
    /// Width of each stream.
    pub dim: usize,
    /// `[s, 1 + s]`: column 0 weighs the streams into the branch input, the rest mixes them.
    pub static_alpha: Param<E, D>,
    /// `[d, 1 + s]`.
    pub dynamic_alpha_fn: Param<E, D>,
    /// A scalar.
    pub dynamic_alpha_scale: Param<E, D>,
    /// `[s]`.
    pub static_beta: Param<E, D>,
    /// `[d]`.
    pub dynamic_beta_fn: Param<E, D>,
    /// A scalar.
    pub dynamic_beta_scale: Param<E, D>,
    /// The norm's `γ` (`[d]`; the norm scales by `γ + 1`).
    pub norm_gamma: Param<E, D>,
}

/// What the width connection hands on: the branch input `[rows, d]`, the streams carried past
/// the branch `[rows, s, d]`, and the weights `[rows, s]` the branch output is added with.
pub struct Width<E: Real, D: Device<E>, T> {
    /// `[rows, d]`.
    pub branch_input: T2<E, D, T>,
    /// `[rows, s, d]`.
    pub carried: T3<E, D, T>,
    /// `[rows, s]`.
    pub beta: T2<E, D, T>,
}

impl<E: Real, D: Device<E>> HyperConnection<E, D> {
    /// A fresh hyper-connection (the original's init, the branch input read from stream
    /// `input_stream`), or one loaded by name.
    pub fn new(init: &Init<D>, streams: usize, dim: usize, input_stream: usize) -> Result<Self> {
        if streams < 2 {
            return Err(Error::config(
                "hyper-connections",
                format!("need 2 or more residual streams, got {streams}"),
            ));
        }
        let s = streams;
        // column 0: the branch reads one stream; columns 1..: the identity
        let static_alpha: Vec<f64> = (0..s * (1 + s))
            .map(|e| {
                let (row, col) = (e / (1 + s), e % (1 + s));
                let hit = if col == 0 {
                    row == input_stream % s
                } else {
                    col - 1 == row
                };
                if hit {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        Ok(Self {
            streams,
            dim,
            static_alpha: init.param_with("static_alpha", &[s, 1 + s], static_alpha)?,
            dynamic_alpha_fn: init.param("dynamic_alpha_fn", &[dim, 1 + s], InitKind::Zeros)?,
            dynamic_alpha_scale: init.param_with("dynamic_alpha_scale", &[], vec![1e-2])?,
            static_beta: init.param("static_beta", &[s], InitKind::Ones)?,
            dynamic_beta_fn: init.param("dynamic_beta_fn", &[dim], InitKind::Zeros)?,
            dynamic_beta_scale: init.param_with("dynamic_beta_scale", &[], vec![1e-2])?,
            norm_gamma: init.pp("norm").param("gamma", &[dim], InitKind::Zeros)?,
        })
    }

    /// The width connection of `streams [rows, s, d]`.
    pub fn width<T: Tape<E, D>>(&self, streams: T3<E, D, T>) -> Result<Width<E, D, T>>
    where
        D: Backend<E>,
    {
        let (rows, s, d) = *streams.shape();
        if (s, d) != (self.streams, self.dim) {
            return Err(Error::shape(
                "hyper-connection streams",
                format!("[rows, {}, {}]", self.streams, self.dim),
                format!("{:?}", (rows, s, d)),
            ));
        }
        let gamma = self.norm_gamma.vector::<T>() + E::one();
        let normed = rms_norm(
            streams.with_empty_tape().reshape_like(&(rows * s, d)),
            gamma,
            RmsKind::Unit,
        )?;
        let scalar = |p: &Param<E, D>, shape: (usize, usize)| {
            p.vector::<T>()
                .reshape_like(&())
                .broadcast_like::<_, Axes2<0, 1>>(&shape)
        };
        let alpha = normed
            .with_empty_tape()
            .matmul(self.dynamic_alpha_fn.matrix::<T>())
            .tanh()
            * scalar(&self.dynamic_alpha_scale, (rows * s, 1 + s));
        let alpha = alpha.reshape_like(&(rows, s, 1 + s))
            + self
                .static_alpha
                .matrix::<T>()
                .broadcast_like::<_, Axis<0>>(&(rows, s, 1 + s));
        let beta = normed
            .matmul(self.dynamic_beta_fn.vector::<T>().reshape_like(&(d, 1)))
            .tanh()
            * scalar(&self.dynamic_beta_scale, (rows * s, 1));
        let beta = beta.reshape_like(&(rows, s))
            + self
                .static_beta
                .vector::<T>()
                .broadcast_like::<_, Axis<0>>(&(rows, s));
        // [rows, 1 + s, s] · [rows, s, d]
        let mix = alpha
            .permute::<_, Axes3<0, 2, 1>>()
            .contiguous()
            .matmul(streams);
        let dev = mix.device().clone();
        let first = dev
            .try_tensor_from_vec(vec![0usize; rows], (rows,))
            .map_err(device_err)?;
        let rest: Vec<usize> = (0..rows).flat_map(|_| 1..=s).collect();
        let rest = dev
            .try_tensor_from_vec(rest, (rows, s))
            .map_err(device_err)?;
        Ok(Width {
            branch_input: mix.with_empty_tape().select(first),
            carried: mix.gather(rest),
            beta,
        })
    }

    /// The depth connection: `carried + β ⊗ out` (`[rows, s, d]`).
    pub fn depth<T: Tape<E, D>>(
        carried: T3<E, D, T>,
        beta: T2<E, D, T>,
        out: T2<E, D, T>,
    ) -> Result<T3<E, D, T>> {
        let shape = *carried.shape();
        let (rows, s, d) = shape;
        if beta.shape() != &(rows, s) || out.shape() != &(rows, d) {
            return Err(Error::shape(
                "hyper-connection depth",
                format!("beta [{rows}, {s}], output [{rows}, {d}]"),
                format!("{:?}, {:?}", beta.shape(), out.shape()),
            ));
        }
        let added =
            out.broadcast_like::<_, Axis<1>>(&shape) * beta.broadcast_like::<_, Axis<2>>(&shape);
        Ok(carried + added)
    }
}

impl<E: Real, D: Device<E>> HasParams<E, D> for HyperConnection<E, D> {
    visit_fields!(
        static_alpha,
        dynamic_alpha_fn,
        dynamic_alpha_scale,
        static_beta,
        dynamic_beta_fn,
        dynamic_beta_scale,
        norm_gamma,
    );
}
