//! Second-order Taylor linear attention: the kernel `1 + s + s²/2` on `s = q·k·scale`.
//!
//! Two equal forms:
//! - the feature form maps q and k to `[1, x, x⊗x/√2]` (size `F = 1 + d + d²`), so
//!   `φ(q)·φ(k) = 1 + s + s²/2`, and attends in time linear in length (prefix sums when causal);
//! - the direct form computes the kernel on the `n × n` score matrix (no d² features).
//!
//! [`choose_form`] picks the cheaper one from the sizes and the device. Both read the same [`Visibility`];
//! the feature form needs causal times that make each query's keys a prefix (true for nodes and
//! for the row and column edge patterns), otherwise the direct form is used.

use dfdx::prelude::*;

use super::attention::{attend, AttendInputs};
use super::cumsum::cumsum;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::spec::{Normalizer, Visibility, WeightsSpec};
use crate::tensor::*;

/// Which of the two equal forms the Taylor kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaylorForm {
    /// The cheaper at the call's sizes ([`choose_form`]).
    Auto,
    /// The feature form (linear in length).
    Feature,
    /// The direct form on the score matrix.
    Direct,
}

/// Multiply-adds of each form for one head, as used by [`choose_form`].
pub fn form_costs(nq: usize, nk: usize, d: usize, e: usize, causal: bool) -> (f64, f64) {
    let f = (1 + d + d * d) as f64;
    let (nq, nk, d, e) = (nq as f64, nk as f64, d as f64, e as f64);
    // feature: build φ for q and k, then k-side state (F·e per key) and query reads (F·e per query);
    // causal adds the prefix scan over the F·e state.
    let feature = (nq + nk) * f + nk * f * e * if causal { 2.0 } else { 1.0 } + nq * f * (e + 1.0);
    // direct: scores (d), kernel and normalization (~4), weighted values (e)
    let direct = nq * nk * (d + e + 4.0);
    (feature, direct)
}

/// The cheaper form for these sizes (the feature form only where the visibility allows it).
/// `feature_overhead` is what a multiply-add of the feature form costs against one of the
/// direct form on the device ([`Backend::taylor_feature_overhead`]).
pub fn choose_form(
    nq: usize,
    nk: usize,
    d: usize,
    e: usize,
    vis: &Visibility,
    feature_overhead: f64,
) -> TaylorForm {
    // the feature form sums every key into one state: a pair mask needs the weights
    let prefix_ok = vis.pairs.is_none() && (vis.times.is_none() || vis.prefix_lengths().is_some());
    let (feature, direct) = form_costs(nq, nk, d, e, vis.times.is_some());
    if prefix_ok && feature * feature_overhead < direct {
        TaylorForm::Feature
    } else {
        TaylorForm::Direct
    }
}

/// Taylor attention of q over k/v (`b h n d`); `scale` multiplies q·k inside the kernel.
pub fn taylor_attend<E: Real, D: Backend<E>, T: Tape<E, D>>(
    q: T4<E, D, T>,
    k: T4<E, D, T>,
    v: T4<E, D, T>,
    scale: f64,
    eps: f64,
    vis: &Visibility,
    form: TaylorForm,
) -> Result<T4<E, D, T>> {
    let (_, _, nq, d) = *q.shape();
    let (_, _, nk, e) = *v.shape();
    let form = match form {
        TaylorForm::Auto => choose_form(nq, nk, d, e, vis, D::taylor_feature_overhead()),
        f => f,
    };
    match form {
        TaylorForm::Direct => {
            let spec = WeightsSpec {
                scale,
                normalizer: Normalizer::Taylor { eps },
                visibility: vis.clone(),
            };
            Ok(attend(q, k, v, AttendInputs::default(), &spec, false)?.out)
        }
        _ => taylor_features(q, k, v, scale, eps, vis),
    }
}

/// `[1, x, x⊗x/√2]` along the last axis: `b h n d -> b h n (1 + d + d²)`.
pub fn taylor_feature_map<E: Real, D: Device<E>, T: Tape<E, D>>(x: T4<E, D, T>) -> T4<E, D, T> {
    let (b, h, n, d) = *x.shape();
    let dev = x.device().clone();
    // `* 1.0` gives the second factor its own id: dfdx panics on a binary op of one id with itself
    let outer = x
        .with_empty_tape()
        .broadcast_like::<_, Axis<4>>(&(b, h, n, d, d))
        * (x.with_empty_tape() * E::one()).broadcast_like::<_, Axis<3>>(&(b, h, n, d, d));
    let outer = outer.reshape_like(&(b, h, n, d * d)) * E::of(0.5f64.sqrt());
    let ones: T4<E, D> = dev.ones_like(&(b, h, n, 1));
    let linear_and_square = (x, outer).concat_along(Axis::<3>);
    let features: T4<E, D, T> = (linear_and_square, ones.retaped::<T>()).concat_along(Axis::<3>);
    features.reshape_like(&(b, h, n, 1 + d + d * d))
}

/// The feature (linear) form. Padded keys contribute nothing (their features and values are
/// zeroed, as the original does); causal visibility reads prefix sums of the key-side state.
pub fn taylor_features<E: Real, D: Backend<E>, T: Tape<E, D>>(
    q: T4<E, D, T>,
    k: T4<E, D, T>,
    v: T4<E, D, T>,
    scale: f64,
    eps: f64,
    vis: &Visibility,
) -> Result<T4<E, D, T>> {
    let (b, h, nq, d) = *q.shape();
    let (_, _, nk, e) = *v.shape();
    if *k.shape() != (b, h, nk, d)
        || (v.shape().0, v.shape().1) != (b, h)
        || (vis.batch, vis.queries, vis.keys) != (b, nq, nk)
    {
        return Err(Error::shape(
            "taylor attention",
            format!("k [{b}, {h}, {nk}, {d}], v [{b}, {h}, {nk}, _], visibility ({b}, {nq}, {nk})"),
            format!(
                "k {:?}, v {:?}, visibility ({}, {}, {})",
                k.shape(),
                v.shape(),
                vis.batch,
                vis.queries,
                vis.keys
            ),
        ));
    }
    if vis.pairs.is_some() {
        return Err(Error::config(
            "taylor feature form",
            "a pair mask restricts each query to its own keys; use the direct form",
        ));
    }
    let f = 1 + d + d * d;
    let dev = q.device().clone();
    let fq = taylor_feature_map(q * E::of(scale));
    let mut fk = taylor_feature_map(k);
    let mut v = v;
    if let Some(valid) = &vis.key_valid {
        let keep: T2<E, D> = constant(&dev, indicator(valid.iter().copied()), (b, nk))?;
        fk = fk
            * keep
                .clone()
                .broadcast_like::<_, Axes2<1, 3>>(&(b, h, nk, f));
        v = v * keep.broadcast_like::<_, Axes2<1, 3>>(&(b, h, nk, e));
    }
    let (num, den) = match &vis.times {
        None => {
            let ksum = fk.with_empty_tape().sum::<Shape3, Axis<2>>();
            let kv = fk.permute::<_, Axes4<0, 1, 3, 2>>().matmul(v);
            let den = (fq.with_empty_tape() * ksum.broadcast_like::<_, Axis<2>>(&(b, h, nq, f)))
                .sum::<Shape3, Axis<3>>();
            (fq.matmul(kv), den)
        }
        Some(_) => {
            let lengths = vis.prefix_lengths().ok_or_else(|| {
                Error::config(
                    "taylor feature form",
                    "causal times do not make each query's keys a prefix; use the direct form",
                )
            })?;
            // per key, the state φ(k) ⊗ v, flattened; prefix sums over keys; each query reads the
            // sum over its prefix (row 0 of the padded scan is the empty prefix)
            let state = fk
                .with_empty_tape()
                .broadcast_like::<_, Axis<4>>(&(b, h, nk, f, e))
                * v.broadcast_like::<_, Axis<3>>(&(b, h, nk, f, e));
            let state = cumsum(state.reshape_like(&(b, h, nk, f * e)))?;
            let kstate = cumsum(fk)?;
            // query reads the inclusive scan at key L-1; an empty prefix (L = 0) reads nothing
            let mut index = Vec::with_capacity(b * h * nq);
            let mut nonempty = Vec::with_capacity(b * nq);
            for bb in 0..b {
                for _ in 0..h {
                    index.extend((0..nq).map(|i| lengths[bb * nq + i].max(1) - 1));
                }
                nonempty.extend((0..nq).map(|i| {
                    if lengths[bb * nq + i] > 0 {
                        E::one()
                    } else {
                        E::zero()
                    }
                }));
            }
            let index = dev.tensor_from_vec(index, (b, h, nq));
            let nonempty: T2<E, D> = constant(&dev, nonempty, (b, nq))?;
            let state: T4<E, D, T> = state.gather(index.clone());
            let kstate: T4<E, D, T> = kstate.gather(index);
            let state = state.reshape_like(&(b, h, nq, f, e));
            let num = (state
                * fq.with_empty_tape()
                    .broadcast_like::<_, Axis<4>>(&(b, h, nq, f, e)))
            .sum::<Shape4, Axis<3>>();
            let num = num
                * nonempty
                    .clone()
                    .broadcast_like::<_, Axes2<1, 3>>(&(b, h, nq, e));
            let den = (fq * kstate).sum::<Shape3, Axis<3>>()
                * nonempty.broadcast_like::<_, Axis<1>>(&(b, h, nq));
            (num, den)
        }
    };
    let den = den.clamp(eps, f64::INFINITY);
    Ok(num / den.broadcast_like::<_, Axis<3>>(&(b, h, nq, e)))
}
