//! AdamW with its moments on the device: a step reads back one scalar (the gradient norm it
//! logs) and moves nothing else across.
//!
//! The update is dfdx's AdamW kernel (`AdamConfig::try_update`, with a CUDA kernel of its own)
//! under the same settings, schedule, decay rule and clipping as the host's [`AdamState`]; the
//! moments live in device buffers keyed by parameter, and go to and from the host's
//! [`AdamState`] (names → moments) only when a run starts or writes a checkpoint, so a resumed
//! run continues from exactly the moments it saved. The host path computes in f64 and stores f32
//! moments; this one computes in the model's element type: the two agree to rounding.

use std::borrow::Cow;

use dfdx::optim::{AdamConfig, WeightDecay};
use dfdx::prelude::*;

use super::optim::{AdamState, AdamW, UpdateReport};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::nn::{HasParams, Param};
use crate::tensor::*;

/// AdamW's moments on the device, and the number of updates done.
pub struct DeviceAdam<E: Real, D: Device<E>> {
    step: u64,
    /// First moments, one buffer per parameter (keyed by the parameter's tensor).
    m: Gradients<E, D>,
    /// Second moments, likewise.
    v: Gradients<E, D>,
}

impl<E: Real, D: Device<E>> DeviceAdam<E, D> {
    /// Moves `state`'s moments to the device, for `model`'s parameters (by name; a parameter
    /// without moments starts from zero, as the host's AdamW does).
    pub fn upload<M: HasParams<E, D>>(state: &AdamState, model: &M) -> Result<Self> {
        let mut out = Self {
            step: state.step,
            m: Gradients::leaky(),
            v: Gradients::leaky(),
        };
        for p in model.params() {
            for (host, device) in [(&state.m, &mut out.m), (&state.v, &mut out.v)] {
                let buffer = device.get_or_alloc_mut(&p.value).map_err(device_err)?;
                if let Some(values) = host.get(&p.name) {
                    if values.len() != p.len() {
                        return Err(Error::shape(
                            format!("optimizer state of `{}`", p.name),
                            p.len(),
                            values.len(),
                        ));
                    }
                    let values = values.iter().map(|&x| E::of(f64::from(x))).collect();
                    store(constant(p.value.device(), values, (p.len(),))?, buffer)?;
                }
            }
        }
        Ok(out)
    }

    /// The moments on the host, by parameter name (what a checkpoint saves).
    pub fn download<M: HasParams<E, D>>(&mut self, model: &M) -> Result<AdamState> {
        let mut state = AdamState {
            step: self.step,
            ..AdamState::default()
        };
        for p in model.params() {
            for (device, host) in [(&mut self.m, &mut state.m), (&mut self.v, &mut state.v)] {
                device.try_alloc_for(&p.value).map_err(device_err)?;
                let values = host::values(&device.get(&p.value));
                host.insert(
                    p.name.clone(),
                    values.iter().map(|x| x.as_f64() as f32).collect(),
                );
            }
        }
        Ok(state)
    }

    /// Updates done.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// [`AdamState::update_sum`] on the device: the gradient summed over `parts`, clipped to
    /// `max_norm` (global L2 norm), one AdamW step at `lr`. Reads back the gradient norm only.
    pub fn update_sum<M: HasParams<E, D>>(
        &mut self,
        model: &mut M,
        parts: &mut [Gradients<E, D>],
        cfg: &AdamW,
        lr: f64,
        max_norm: Option<f64>,
    ) -> Result<UpdateReport> {
        let mut sums = Vec::new();
        for p in model.params() {
            let mut sum: Option<T1<E, D>> = None;
            for part in parts.iter_mut() {
                part.try_alloc_for(&p.value).map_err(device_err)?;
                let g = part.get(&p.value);
                sum = Some(match sum {
                    None => g,
                    Some(s) => s + g,
                });
            }
            let sum = match sum {
                Some(s) => s,
                None => p.value.device().zeros_like(&(p.len(),)),
            };
            sums.push(sum);
        }
        let squares = sums
            .iter()
            .map(|g| g.clone().square().sum())
            .reduce(|a, b| a + b);
        let grad_norm = squares.map_or(0.0, |s| host::scalar(&s)).sqrt();
        if !grad_norm.is_finite() {
            return Err(Error::NotFinite(format!(
                "the gradient norm is {grad_norm}"
            )));
        }
        let clip = match max_norm {
            Some(m) if grad_norm > m => Some(m / grad_norm),
            _ => None,
        };
        let t = i32::try_from(self.step + 1)
            .map_err(|_| Error::config("optimizer", "more than 2^31 updates"))?;
        self.step += 1;
        // one part's gradient, unclipped, is used where it lies; otherwise the sum, clipped,
        // is written to a buffer of its own
        let as_is = parts.len() == 1 && clip.is_none();
        let mut sums = sums.into_iter();
        let mut failure = None;
        model.visit_params_mut(&mut |p| {
            if failure.is_some() {
                return;
            }
            let g = sums
                .next()
                .expect("one sum per parameter, in visiting order");
            let done = if as_is {
                parts[0]
                    .get_or_alloc_mut(&p.value)
                    .map_err(device_err)
                    .and_then(|buffer| self.apply(p, buffer, cfg, lr, t))
            } else {
                let g = match clip {
                    Some(c) => g * E::of(c),
                    None => g,
                };
                let mut own = Gradients::leaky();
                own.get_or_alloc_mut(&p.value)
                    .map_err(device_err)
                    .and_then(|buffer| {
                        store(g, buffer)?;
                        self.apply(p, buffer, cfg, lr, t)
                    })
            };
            if let Err(e) = done {
                failure = Some(e);
            }
        });
        match failure {
            Some(e) => Err(e),
            None => Ok(UpdateReport { grad_norm }),
        }
    }

    /// One AdamW step of `p` from its gradient in `grad`.
    fn apply(
        &mut self,
        p: &mut Param<E, D>,
        grad: &<D as Storage<E>>::Vec,
        cfg: &AdamW,
        lr: f64,
        t: i32,
    ) -> Result<()> {
        let decay = cfg.decay_of(&p.dims);
        let adam = AdamConfig {
            lr,
            betas: [cfg.beta1, cfg.beta2],
            eps: cfg.eps,
            weight_decay: (decay > 0.0).then_some(WeightDecay::Decoupled(decay)),
        };
        let m = self.m.get_or_alloc_mut(&p.value).map_err(device_err)?;
        let v = self.v.get_or_alloc_mut(&p.value).map_err(device_err)?;
        adam.try_update(t, &mut p.value, m, v, grad)
            .map_err(device_err)
    }
}

/// Writes `values` into the device buffer `out` (of the same length, holding finite values:
/// fresh buffers hold zeros), on the device.
///
/// dfdx lets no code outside it write a buffer from a tensor, but its Adam kernel writes its
/// first-moment buffer from the parameter tensor it is given: with an L2 decay of 1, both betas
/// 0 and a zero gradient, the new first moment is `0 · m + (0 + 1 · p) · (1 − 0) = p`, exactly,
/// and a learning rate of 0 leaves `p` as it was. The second moment goes to a scratch buffer.
fn store<E: Real, D: Device<E>>(
    mut values: T1<E, D>,
    out: &mut <D as Storage<E>>::Vec,
) -> Result<()> {
    let copy = AdamConfig {
        lr: 0.0,
        betas: [0.0, 0.0],
        eps: 1.0,
        weight_decay: Some(WeightDecay::L2(1.0)),
    };
    let mut scratch = Gradients::leaky();
    let second = scratch.get_or_alloc_mut(&values).map_err(device_err)?;
    let mut zeros = Gradients::leaky();
    let zero = zeros.get_or_alloc_mut(&values).map_err(device_err)?;
    copy.try_update(1, &mut values, out, second, zero)
        .map_err(device_err)
}

/// Where a run's AdamW keeps its moments: on the host ([`AdamState`], the CPU's fused update)
/// or on the device ([`DeviceAdam`]).
pub enum Optimizer<E: Real, D: Device<E>> {
    /// Moments on the host.
    Host(AdamState),
    /// Moments on the device.
    Device(DeviceAdam<E, D>),
}

impl<E: Real, D: Backend<E>> Optimizer<E, D> {
    /// Starts from `state` where `quartic train` keeps the moments on `D`: on the host for the
    /// CPU (its fused update), on the device elsewhere.
    pub fn for_device<M: HasParams<E, D>>(state: AdamState, model: &M) -> Result<Self> {
        Self::new(state, model, !D::HOST_MEMORY)
    }
}

impl<E: Real, D: Device<E>> Optimizer<E, D> {
    /// Starts from `state`, its moments kept on the device if `on_device`.
    pub fn new<M: HasParams<E, D>>(state: AdamState, model: &M, on_device: bool) -> Result<Self> {
        Ok(if on_device {
            Self::Device(DeviceAdam::upload(&state, model)?)
        } else {
            Self::Host(state)
        })
    }

    /// One AdamW step from the gradient summed over `parts` (see [`AdamState::update_sum`]).
    pub fn update_sum<M: HasParams<E, D>>(
        &mut self,
        model: &mut M,
        parts: &mut [Gradients<E, D>],
        cfg: &AdamW,
        lr: f64,
        max_norm: Option<f64>,
    ) -> Result<UpdateReport> {
        match self {
            Self::Host(state) => state.update_sum(model, parts, cfg, lr, max_norm),
            Self::Device(state) => state.update_sum(model, parts, cfg, lr, max_norm),
        }
    }

    /// The state on the host, as a checkpoint saves it.
    pub fn state<M: HasParams<E, D>>(&mut self, model: &M) -> Result<Cow<'_, AdamState>> {
        match self {
            Self::Host(state) => Ok(Cow::Borrowed(state)),
            Self::Device(state) => Ok(Cow::Owned(state.download(model)?)),
        }
    }
}
