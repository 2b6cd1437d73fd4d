//! The original's `TaylorSeriesLinearAttn(prenorm=True, gate_value_heads=True)` from
//! taylor-series-linear-attention 0.2.0 (Zhang et al. 2022's second-order Taylor kernel in a
//! linear attention): unit RMSNorm prenorm, q and kv projections, the Taylor kernel with key
//! padding (and causal times), per-head sigmoid gates computed from the un-normed input, output
//! projection. Parameter names match the original's `state_dict`.

use dfdx::prelude::*;

use super::linear::Linear;
use super::norms::{RmsKind, RmsNorm};
use super::params::{visit_fields, HasParams, Init};
use super::rows::map_rows3;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::ops::taylor::{taylor_attend, TaylorForm};
use crate::spec::visibility::Visibility;
use crate::tensor::*;

/// The original's Taylor linear attention over a sequence, with its parameter names.
pub struct TaylorAttention<E: Real, D: Device<E>> {
    /// The unit-RMSNorm prenorm.
    pub norm: RmsNorm<E, D>,
    /// Queries.
    pub to_q: Linear<E, D>,
    /// Keys and values.
    pub to_kv: Linear<E, D>,
    /// Per-head value gates (from the un-normed input).
    pub to_v_gates: Linear<E, D>,
    /// The output projection.
    pub to_out: Linear<E, D>,
    /// Heads.
    pub heads: usize,
    /// Channels per head.
    pub dim_head: usize,
    /// The eps that clamps the normalizer (the original's forward default, 1e-5).
    pub eps: f64,
    /// Direct or feature form (the same values, different costs).
    pub form: TaylorForm,
}

impl<E: Real, D: Device<E>> TaylorAttention<E, D> {
    /// A block from `dim` channels with `heads` × `dim_head`; refuses zero sizes.
    pub fn new(init: &Init<D>, dim: usize, heads: usize, dim_head: usize) -> Result<Self> {
        if heads == 0 || dim_head == 0 {
            return Err(Error::config(
                "taylor attention",
                format!("heads and dim_head must be positive, got {heads} × {dim_head}"),
            ));
        }
        let inner = heads * dim_head;
        Ok(Self {
            norm: RmsNorm::new(&init.pp("norm"), dim, RmsKind::Unit, "gamma")?,
            to_q: Linear::new(&init.pp("to_q").pp("0"), dim, inner, false)?,
            to_kv: Linear::new(&init.pp("to_kv").pp("0"), dim, 2 * inner, false)?,
            to_v_gates: Linear::new(&init.pp("to_v_gates").pp("0"), dim, heads, false)?,
            to_out: Linear::new(&init.pp("to_out").pp("0"), inner, dim, false)?,
            heads,
            dim_head,
            eps: 1e-5,
            form: TaylorForm::Auto,
        })
    }

    /// `x [b, n, dim]` attending over itself under `vis` (batch b, n queries, n keys).
    pub fn forward<T: Tape<E, D>>(&self, x: T3<E, D, T>, vis: &Visibility) -> Result<T3<E, D, T>>
    where
        D: Backend<E>,
    {
        let (b, n, _) = *x.shape();
        let (h, d) = (self.heads, self.dim_head);
        let normed = map_rows3(x.with_empty_tape(), |t| self.norm.forward(t))?;
        let q = map_rows3(normed.with_empty_tape(), |t| self.to_q.forward(t))?;
        let kv = map_rows3(normed, |t| self.to_kv.forward(t))?;
        let split = |t: T3<E, D, T>| {
            t.reshape_like(&(b, n, h, d))
                .permute::<_, Axes4<0, 2, 1, 3>>()
        };
        // 'b n (kv h d)': keys are the first h·d channels, values the rest
        let kv = kv.reshape_like(&(b, n, 2, h * d));
        let dev = x.device().clone();
        let pick = |which: usize| dev.tensor_from_vec(vec![which; b * n], (b, n));
        let k: T3<E, D, T> = kv.with_empty_tape().select(pick(0));
        let v: T3<E, D, T> = kv.select(pick(1));
        let out = taylor_attend(
            split(q),
            split(k),
            split(v),
            (d as f64).powf(-0.5),
            self.eps,
            vis,
            self.form,
        )?;
        let gates = map_rows3(x, |t| self.to_v_gates.forward(t))?
            .sigmoid()
            .permute::<_, Axes3<0, 2, 1>>();
        let out = out * gates.broadcast_like::<_, Axis<3>>(&(b, h, n, d));
        let merged = out
            .permute::<_, Axes4<0, 2, 1, 3>>()
            .reshape_like(&(b, n, h * d));
        map_rows3(merged, |t| self.to_out.forward(t))
    }
}

impl<E: Real, D: Device<E>> HasParams<E, D> for TaylorAttention<E, D> {
    visit_fields!(norm, to_q, to_kv, to_v_gates, to_out);
}
