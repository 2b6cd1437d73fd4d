//! Softmax (or Taylor) attention over batched query/key sequences with heads.
//!
//! Shapes, einops style: q `b h i d`, k `b h j d`, v `b h j e`, bias `b h i j`, talking `h h`,
//! gate logits `b h i`. Output `b h i e`, plus the weights `b h i j` when asked (the original
//! writes them into the edges, so they carry gradients).

use dfdx::prelude::*;

use super::weights::{weights, weights_composite, WeightsSpec};
use crate::backend::{Backend, Fused};
use crate::error::{Error, Result};
use crate::tensor::*;

/// The optional tensor inputs of an attention call.
pub struct AttendInputs<E: Real, D: Device<E>, T> {
    /// Additive bias `[b, h, queries, keys]`.
    pub bias: Option<T4<E, D, T>>,
    /// Talking heads `[heads, heads]`, mixing the scores across heads before normalising.
    pub talking: Option<T2<E, D, T>>,
    /// Per-head gate logits `b h i`; the output of each head is scaled by `sigmoid(gate)`.
    pub gates: Option<T3<E, D, T>>,
}

impl<E: Real, D: Device<E>, T> Default for AttendInputs<E, D, T> {
    fn default() -> Self {
        Self {
            bias: None,
            talking: None,
            gates: None,
        }
    }
}

/// What [`attend`] returns.
pub struct Attended<E: Real, D: Device<E>, T> {
    /// `[b, h, queries, channels per head]`.
    pub out: T4<E, D, T>,
    /// The attention weights, when asked for. They branch off the output's tape: use both in the
    /// loss, or the output alone (the weights' own backward runs with the output's tape).
    pub weights: Option<T4<E, D, T>>,
}

/// Attention of `q` over `k`/`v` under `spec` (scale, normalizer, visibility).
pub fn attend<E: Real, D: Backend<E>, T: Tape<E, D>>(
    q: T4<E, D, T>,
    k: T4<E, D, T>,
    v: T4<E, D, T>,
    inputs: AttendInputs<E, D, T>,
    spec: &WeightsSpec,
    return_weights: bool,
) -> Result<Attended<E, D, T>> {
    let (b, h, nq, _) = *q.shape();
    let (vb, vh, vn, e) = *v.shape();
    let nk = k.shape().2;
    if (vb, vh, vn) != (b, h, nk) {
        return Err(Error::shape(
            "attention values",
            format!("[{b}, {h}, {nk}, _]"),
            format!("[{vb}, {vh}, {vn}, {e}]"),
        ));
    }
    if let Some(g) = &inputs.gates {
        if *g.shape() != (b, h, nq) {
            return Err(Error::shape(
                "attention gates",
                format!("{:?}", (b, h, nq)),
                format!("{:?}", g.shape()),
            ));
        }
    }
    let (mut out, weights) = if inputs.talking.is_none() && !return_weights {
        // nothing needs the weights themselves: the memory-efficient kernel
        (attention(q, k, v, inputs.bias, spec)?, None)
    } else {
        let w = weights(q, k, inputs.bias, inputs.talking, spec)?;
        let weights = return_weights.then(|| w.with_empty_tape());
        (w.matmul(v), weights)
    };
    if let Some(g) = inputs.gates {
        out = out * g.sigmoid().broadcast_like::<_, Axis<3>>(&(b, h, nq, e));
    }
    Ok(Attended { out, weights })
}

/// Attention output `weights(q, k, bias) · v` (no talking heads), without keeping the weights
/// where the device has a memory-efficient kernel (the CPU's blocked kernel, CUDA's online softmax).
pub fn attention<E: Real, D: Backend<E>, T: Tape<E, D>>(
    q: T4<E, D, T>,
    k: T4<E, D, T>,
    v: T4<E, D, T>,
    bias: Option<T4<E, D, T>>,
    spec: &WeightsSpec,
) -> Result<T4<E, D, T>> {
    if D::fuses(Fused::Attention) && D::attention_fits(q.shape().3, v.shape().3) {
        D::attention_fused(q, k, v, bias, spec)
    } else {
        attention_composite(q, k, v, bias, spec)
    }
}

/// Attention as weights (the composite form) times values: every device's fallback.
pub fn attention_composite<E: Real, D: Device<E>, T: Tape<E, D>>(
    q: T4<E, D, T>,
    k: T4<E, D, T>,
    v: T4<E, D, T>,
    bias: Option<T4<E, D, T>>,
    spec: &WeightsSpec,
) -> Result<T4<E, D, T>> {
    Ok(weights_composite(q, k, bias, None, spec)?.matmul(v))
}
