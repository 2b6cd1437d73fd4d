//! Attention weights: the part of attention between q·k and the weighted sum of values.
//!
//! `scores[b,h,i,j] = scale · q[b,h,i]·k[b,h,j] + bias[b,h,i,j]`, optionally mixed across heads
//! (talking heads: `t[h'] = Σ_h W[h',h] · scores[h]`, as the original's 1×1 conv before the
//! softmax), then normalized over the visible keys of each query:
//! - softmax: `exp(t) / Σ exp(t)`;
//! - taylor (second order): `w = 1 + t + t²/2`, `w / max(Σ w, eps)`.
//!
//! Invisible keys get weight exactly 0, and a query with no visible key gets an all-zero row
//! (never NaN). This module holds the composite form (dfdx ops, any device); `kernels::cpu::fused` holds
//! the multi-threaded CPU form with its own backward. `Backend` picks one per device.

use dfdx::prelude::*;

use crate::backend::{Backend, Fused};
use crate::error::Result;
use crate::spec::MASKED;
pub use crate::spec::{check_weights_shapes, Normalizer, Visibility, WeightsSpec};
use crate::tensor::*;

/// Attention weights on the device: the fused kernel on the CPU, else [`weights_composite`].
pub fn weights<E: Real, D: Backend<E>, T: Tape<E, D>>(
    q: T4<E, D, T>,
    k: T4<E, D, T>,
    bias: Option<T4<E, D, T>>,
    talking: Option<T2<E, D, T>>,
    spec: &WeightsSpec,
) -> Result<T4<E, D, T>> {
    if D::fuses(Fused::Weights) {
        D::weights_fused(q, k, bias, talking, spec)
    } else {
        weights_composite(q, k, bias, talking, spec)
    }
}

/// Mixes heads: `out[b,h'] = Σ_h w[h',h] · x[b,h]` for x `[B,H,I,J]`, w `[H,H]`.
pub fn mix_heads<E: Real, D: Device<E>, T: Tape<E, D>>(
    x: T4<E, D, T>,
    w: T2<E, D, T>,
) -> T4<E, D, T> {
    let (b, h, i, j) = *x.shape();
    let flat = x.reshape_like(&(b, h, i * j));
    // the mixing matrix carries a tape too, so it goes first in the matmul
    let w = w.broadcast_like::<_, Axis<0>>(&(b, h, h));
    w.matmul(flat).reshape_like(&(b, h, i, j))
}

/// The composite form: plain dfdx ops, generic over the device. The CUDA path and the oracle
/// for the fused CPU op.
pub fn weights_composite<E: Real, D: Device<E>, T: Tape<E, D>>(
    q: T4<E, D, T>,
    k: T4<E, D, T>,
    bias: Option<T4<E, D, T>>,
    talking: Option<T2<E, D, T>>,
    spec: &WeightsSpec,
) -> Result<T4<E, D, T>> {
    check_weights_shapes(
        *q.shape(),
        *k.shape(),
        bias.as_ref().map(|t| *t.shape()),
        talking.as_ref().map(|t| *t.shape()),
        &spec.visibility,
    )?;
    let mut s = q.matmul(k.permute::<_, Axes4<0, 1, 3, 2>>()) * E::of(spec.scale);
    if let Some(bias) = bias {
        s = s + bias;
    }
    if let Some(w) = talking {
        s = mix_heads(s, w);
    }
    normalize_composite(s, spec)
}

/// Scores `[b, h, queries, keys]` to weights: the visibility rule and the normalizer of
/// `spec`, in dfdx ops (the composite forms of attention and path attention share it).
pub fn normalize_composite<E: Real, D: Device<E>, T: Tape<E, D>>(
    s: T4<E, D, T>,
    spec: &WeightsSpec,
) -> Result<T4<E, D, T>> {
    let shape = *s.shape();
    let dev = s.device().clone();
    let Some(keep) = keep_mask(&dev, &spec.visibility)? else {
        // every key visible: no mask to build or apply
        return Ok(match spec.normalizer {
            Normalizer::Softmax => s.softmax::<Axis<3>>(),
            Normalizer::Taylor { eps } => taylor_normalize(s, None, eps),
        });
    };
    let keep4 = keep.clone().broadcast_like::<_, Axis<1>>(&shape);
    Ok(match spec.normalizer {
        Normalizer::Softmax => {
            // 0 where visible, MASKED where not (invisible entries then underflow to exactly 0;
            // the final product zeroes rows with no visible key, which softmax made uniform)
            let additive = (keep.negate() + E::one()) * E::of(MASKED);
            (s + additive.broadcast_like::<_, Axis<1>>(&shape)).softmax::<Axis<3>>() * keep4
        }
        Normalizer::Taylor { eps } => taylor_normalize(s, Some(keep4), eps),
    })
}

/// `w = 1 + s + s²/2` over the visible keys (`keep`, or all), divided by `max(Σ w, eps)`.
fn taylor_normalize<E: Real, D: Device<E>, T: Tape<E, D>>(
    s: T4<E, D, T>,
    keep: Option<T4<E, D>>,
    eps: f64,
) -> T4<E, D, T> {
    let shape = *s.shape();
    // 1 + s + s²/2 = (1 + s)²/2 + 1/2: one use of s keeps the tape simple
    let w = (s + E::one()).square() * E::of(0.5) + E::of(0.5);
    let w = match keep {
        Some(keep) => w * keep,
        None => w,
    };
    let den = w
        .with_empty_tape()
        .sum::<Shape3, Axis<3>>()
        .clamp(eps, f64::INFINITY);
    w / den.broadcast_like::<_, Axis<3>>(&shape)
}

/// The 0/1 keep mask `[batch, queries, keys]` of `vis`, built on the device from its parts
/// (key padding `[batch, keys]`, causal times `[batch, queries]` and `[batch, keys]`, the pair
/// mask), so only those cross from the host; `None` when every key is visible.
pub fn keep_mask<E: Real, D: Device<E>>(dev: &D, vis: &Visibility) -> Result<Option<T3<E, D>>> {
    let shape = (vis.batch, vis.queries, vis.keys);
    let (b, q, k) = shape;
    let mut keep: Option<T3<E, D>> = None;
    let mut and = |factor: T3<E, D>| {
        keep = Some(match keep.take() {
            Some(k) => k * factor,
            None => factor,
        });
    };
    if let Some(valid) = &vis.key_valid {
        let valid: T2<E, D> = constant(dev, indicator(valid.iter().copied()), (b, k))?;
        and(valid.broadcast_like::<_, Axis<1>>(&shape));
    }
    if let Some(times) = &vis.times {
        let of = |t: &[usize], len| {
            constant(dev, t.iter().map(|&x| E::of(x as f64)).collect(), (b, len))
        };
        let query: T2<E, D> = of(&times.query, q)?;
        let key: T2<E, D> = of(&times.key, k)?;
        let seen = key
            .broadcast_like::<_, Axis<1>>(&shape)
            .le(&query.broadcast_like::<_, Axis<2>>(&shape));
        and(seen.choose(dev.ones_like(&shape), dev.zeros_like(&shape)));
    }
    if let Some(pairs) = &vis.pairs {
        and(constant(dev, indicator(pairs.iter().copied()), shape)?);
    }
    Ok(keep)
}
