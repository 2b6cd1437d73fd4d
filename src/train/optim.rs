//! AdamW with a warmup + cosine learning-rate schedule and global gradient-norm clipping.
//!
//! Moments live on the host, keyed by parameter name (so they can be saved and resumed
//! exactly); updates are written back into the parameters in place (same tensor ids).

use std::collections::HashMap;

use dfdx::prelude::*;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::nn::HasParams;
use crate::tensor::*;

/// Elements per rayon task in the update.
const CHUNK: usize = 1 << 16;

/// AdamW's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamW {
    /// Learning rate (the schedule sets it per step).
    pub lr: f64,
    /// First moment's decay.
    pub beta1: f64,
    /// Second moment's decay.
    pub beta2: f64,
    /// Added to the second moment's square root.
    pub eps: f64,
    /// Decoupled weight decay, applied to matrices only (not to norms, biases or tables of one row).
    pub weight_decay: f64,
}

impl Default for AdamW {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

impl AdamW {
    /// The weight decay of a parameter of shape `dims`: matrices decay, norms, biases and
    /// tables of one row do not.
    pub fn decay_of(&self, dims: &[usize]) -> f64 {
        if dims.len() >= 2 && dims[0] > 1 {
            self.weight_decay
        } else {
            0.0
        }
    }
}

/// The learning rate at `step`: linear warmup, then cosine decay to `min_ratio · lr`.
pub fn schedule(lr: f64, step: usize, warmup: usize, total: usize, min_ratio: f64) -> f64 {
    if step < warmup {
        return lr * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let t = ((step - warmup) as f64 / span).min(1.0);
    let cos = 0.5 * (1.0 + (std::f64::consts::PI * t).cos());
    lr * (min_ratio + (1.0 - min_ratio) * cos)
}

/// Optimizer state: moments per parameter name and the number of updates done.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AdamState {
    /// Updates done.
    pub step: u64,
    /// First moments by parameter name.
    pub m: HashMap<String, Vec<f32>>,
    /// Second moments by parameter name.
    pub v: HashMap<String, Vec<f32>>,
}

/// One parameter's update: its summed gradient and values on the host, its moments (taken
/// out of the state's maps while it runs) and its weight decay.
struct UpdateJob<E> {
    name: String,
    decay: f64,
    g: Vec<E>,
    w: Vec<E>,
    m: Vec<f32>,
    v: Vec<f32>,
}

/// What one update did.
pub struct UpdateReport {
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
}

impl AdamState {
    /// Clips the gradients to `max_norm` (global L2 norm) and applies one AdamW step at `lr`.
    pub fn update<E: Real, D: Device<E>, M: HasParams<E, D>>(
        &mut self,
        model: &mut M,
        grads: &mut Gradients<E, D>,
        cfg: &AdamW,
        lr: f64,
        max_norm: Option<f64>,
    ) -> Result<UpdateReport> {
        self.update_sum(model, std::slice::from_mut(grads), cfg, lr, max_norm)
    }

    /// [`AdamState::update`] with the gradient summed over `parts` (the shards of a step, see
    /// [`crate::train::shards`]), in order; a parameter missing from a part counts as zero there.
    pub fn update_sum<E: Real, D: Device<E>, M: HasParams<E, D>>(
        &mut self,
        model: &mut M,
        parts: &mut [Gradients<E, D>],
        cfg: &AdamW,
        lr: f64,
        max_norm: Option<f64>,
    ) -> Result<UpdateReport> {
        crate::threads::keep_warm();
        // gradients and values to the host (`copy_into`: one memcpy on the CPU)
        let mut jobs: Vec<UpdateJob<E>> = Vec::new();
        let mut part = Vec::new();
        for p in model.params() {
            let len = p.len();
            let mut g = vec![E::zero(); len];
            for (k, grads) in parts.iter_mut().enumerate() {
                grads.get_or_alloc_mut(&p.value).map_err(device_err)?;
                if k == 0 {
                    host::copy_into(&grads.get(&p.value), &mut g);
                } else {
                    part.resize(len, E::zero());
                    host::copy_into(&grads.get(&p.value), &mut part);
                    g.iter_mut().zip(&part).for_each(|(g, &x)| *g += x);
                }
            }
            let mut w = vec![E::zero(); len];
            host::copy_into(&p.value, &mut w);
            jobs.push(UpdateJob {
                name: p.name.clone(),
                decay: cfg.decay_of(&p.dims),
                g,
                w,
                m: Vec::new(),
                v: Vec::new(),
            });
        }
        // the moments leave the maps only once nothing above can fail
        for j in &mut jobs {
            let len = j.g.len();
            j.m = self.m.remove(&j.name).unwrap_or_else(|| vec![0.0; len]);
            j.v = self.v.remove(&j.name).unwrap_or_else(|| vec![0.0; len]);
        }
        // every parameter's moments go back into the maps, whatever happens below
        let restore = |state: &mut Self, jobs: &mut Vec<UpdateJob<E>>| {
            for j in jobs.iter_mut() {
                state.m.insert(j.name.clone(), std::mem::take(&mut j.m));
                state.v.insert(j.name.clone(), std::mem::take(&mut j.v));
            }
        };
        if let Some(j) = jobs
            .iter()
            .find(|j| j.m.len() != j.g.len() || j.v.len() != j.g.len())
        {
            let err = Error::shape(
                format!("optimizer state of `{}`", j.name),
                j.g.len(),
                j.m.len().min(j.v.len()),
            );
            restore(self, &mut jobs);
            return Err(err);
        }
        // the norm in fixed chunks per parameter, added in order: the same on any number of
        // threads; the parameters in parallel (a small model's are each one chunk, which
        // left every other thread idle)
        let norms: Vec<f64> = jobs
            .par_iter()
            .map(|j| {
                let partial: Vec<f64> =
                    j.g.par_chunks(CHUNK)
                        .map(|c| c.iter().map(|x| x.as_f64() * x.as_f64()).sum::<f64>())
                        .collect();
                partial.into_iter().sum::<f64>()
            })
            .collect();
        let grad_norm = norms.into_iter().sum::<f64>().sqrt();
        if !grad_norm.is_finite() {
            restore(self, &mut jobs);
            return Err(Error::NotFinite(format!(
                "the gradient norm is {grad_norm}"
            )));
        }
        let clip = match max_norm {
            Some(m) if grad_norm > m => m / grad_norm,
            _ => 1.0,
        };
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = (cfg.beta1, cfg.beta2);
        let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        jobs.par_iter_mut().for_each(|j| {
            let decay = j.decay;
            j.w.par_chunks_mut(CHUNK)
                .zip(j.g.par_chunks(CHUNK))
                .zip(j.m.par_chunks_mut(CHUNK).zip(j.v.par_chunks_mut(CHUNK)))
                .for_each(|((w, g), (m, v))| {
                    for i in 0..w.len() {
                        let gi = g[i].as_f64() * clip;
                        let mi = b1 * m[i] as f64 + (1.0 - b1) * gi;
                        let vi = b2 * v[i] as f64 + (1.0 - b2) * gi * gi;
                        m[i] = mi as f32;
                        v[i] = vi as f32;
                        let mh = m[i] as f64 / c1;
                        let vh = v[i] as f64 / c2;
                        let wi = w[i].as_f64();
                        w[i] = E::of(wi - lr * (mh / (vh.sqrt() + cfg.eps) + decay * wi));
                    }
                });
        });
        restore(self, &mut jobs);
        let mut updated: HashMap<String, Vec<E>> =
            jobs.into_iter().map(|j| (j.name, j.w)).collect();
        let mut failure = None;
        model.visit_params_mut(&mut |p| {
            if failure.is_some() {
                return;
            }
            match updated.remove(&p.name) {
                Some(w) if w.len() == p.len() => p.value.copy_from(&w),
                _ => failure = Some(Error::shape(format!("update of `{}`", p.name), p.len(), 0)),
            }
        });
        match failure {
            Some(e) => Err(e),
            None => Ok(UpdateReport { grad_norm }),
        }
    }
}
