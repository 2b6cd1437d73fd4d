//! One training step's forward and backward passes, with the batch cut into shards that run at
//! once.
//!
//! Between its fused kernels a step runs dfdx's element-wise ops, gathers and tape bookkeeping
//! on one thread, and with the whole batch in one pass the other threads wait through them: a
//! small model's step left the second core idle 40 % of the time. The graphs of a batch do not
//! interact, so contiguous groups of them (shards) can each run their own forward and backward
//! pass, with their own tape; the CPU runs them at once on its thread pool
//! ([`RunShards`]; other devices one after another), and the fused kernels inside a
//! shard still split their work over whichever threads are free.
//!
//! The losses are means over the batch (the objective's over its labelled positions, a model's
//! auxiliary loss over its graphs), so each shard's loss is weighted by its share of them
//! before its backward pass, and the shards' gradients add up to the batch's. They are summed
//! in shard order: a step's result depends on the number of shards (by rounding only), never on
//! the number of threads or on which thread ran which shard. One shard is exactly the unsharded
//! step.

use std::ops::Range;

use dfdx::prelude::*;

use super::objective::{loss_and_tally, DeviceTally, Objective, Tally};
use super::tasks::{Batch, Readout};
use super::trainer::{forward_batch, targets_of};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::models::Model;
use crate::tensor::*;

/// Shards per step unless configured otherwise: one per core of the 2-core machines this was
/// measured on (the small model's training step ran 1.2× faster than in one shard). Machines
/// with more cores still use them all inside each shard's kernels.
pub const DEFAULT_SHARDS: usize = 2;

/// What one step's passes produced.
pub struct StepGradients<E: Real, D: Device<E>> {
    /// One set per shard that had anything to learn from, in shard order; the step's gradient
    /// is their sum (see [`crate::train::optim::AdamState::update_sum`]).
    pub grads: Vec<Gradients<E, D>>,
    /// The batch's loss: the objective's mean over its labelled positions, plus the auxiliary
    /// loss.
    pub loss: f64,
    /// What the batch's predictions scored, over all its labelled positions.
    pub tally: Tally,
}

/// The graphs of each of (at most) `shards` contiguous shards of `b` graphs, as equal as can be.
pub fn shard_ranges(b: usize, shards: usize) -> Vec<Range<usize>> {
    let count = shards.clamp(1, b.max(1));
    (0..count)
        .map(|s| (s * b / count)..((s + 1) * b / count))
        .collect()
}

/// Forward and backward passes of `model` on `batch`, read where `readout` says, in `shards`
/// shards (1: one pass over the whole batch, the plain unsharded step).
pub fn step_gradients<E: Real, D: RunShards<E>>(
    model: &Model<E, D>,
    batch: &Batch,
    readout: Readout,
    objective: &Objective,
    shards: usize,
) -> Result<StepGradients<E, D>> {
    let labelled = targets_of(batch, readout)?.labelled();
    if labelled == 0 {
        return Err(Error::config("training batch", "no position has a target"));
    }
    let work = ShardWork {
        model,
        batch,
        readout,
        objective,
        labelled,
    };
    let parts = D::run_shards(&work, &shard_ranges(batch.b, shards));
    let mut grads = Vec::with_capacity(parts.len());
    // the shards' losses and tallies are summed on the device, then read once
    let mut sum: Option<(Tensor<(), E, D>, DeviceTally<E, D>)> = None;
    for part in parts {
        if let Some(p) = part? {
            grads.push(p.grads);
            sum = Some(match sum {
                None => (p.loss, p.tally),
                Some((loss, tally)) => (loss + p.loss, tally.plus(p.tally)),
            });
        }
    }
    let (loss, tally) = match sum {
        Some((loss, tally)) => (host::scalar(&loss), tally.read()),
        None => (0.0, Tally::default()),
    };
    Ok(StepGradients { grads, loss, tally })
}

/// How a device runs a step's shards: the CPU at once on its thread pool (its tensors may be
/// shared between threads), other devices one after another. A trait of the training layer,
/// implemented per device, since the work is a training step's.
pub trait RunShards<E: Real>: Backend<E> {
    /// The passes of each shard, in shard order.
    fn run_shards(
        work: &ShardWork<'_, E, Self>,
        shards: &[Range<usize>],
    ) -> Vec<ShardOutcome<E, Self>> {
        shards.iter().map(|r| work.run(r.clone())).collect()
    }
}

impl<E: Real> RunShards<E> for Cpu
where
    Cpu: Backend<E>,
{
    fn run_shards(
        work: &ShardWork<'_, E, Self>,
        shards: &[Range<usize>],
    ) -> Vec<ShardOutcome<E, Self>> {
        use rayon::prelude::*;
        if shards.len() < 2 {
            return shards.iter().map(|r| work.run(r.clone())).collect();
        }
        // every thread is busy with a shard: none should sit polling for work
        let _busy = crate::threads::pause_polling();
        shards.par_iter().map(|r| work.run(r.clone())).collect()
    }
}

#[cfg(feature = "cuda")]
impl<E: Real> RunShards<E> for Cuda where Cuda: Backend<E> {}

/// One shard's gradients, its weighted loss and its tally (on the device).
pub struct ShardResult<E: Real, D: Device<E>> {
    grads: Gradients<E, D>,
    loss: Tensor<(), E, D>,
    tally: DeviceTally<E, D>,
}

/// What a shard's passes give: `None` when the shard has no loss at all (no labelled
/// position and no auxiliary loss).
pub type ShardOutcome<E, D> = Result<Option<ShardResult<E, D>>>;

/// What every shard of one step shares.
pub struct ShardWork<'a, E: Real, D: Device<E>> {
    model: &'a Model<E, D>,
    batch: &'a Batch,
    readout: Readout,
    objective: &'a Objective,
    /// Labelled positions in the whole batch.
    labelled: usize,
}

impl<E: Real, D: Backend<E>> ShardWork<'_, E, D> {
    /// The passes over the graphs `range` of the batch.
    pub fn run(&self, range: Range<usize>) -> ShardOutcome<E, D> {
        let (batch, readout) = (self.batch, self.readout);
        let whole = range == (0..batch.b);
        let owned = (!whole).then(|| batch.graphs(range));
        let part = owned.as_ref().unwrap_or(batch);
        let targets = targets_of(part, readout)?;
        let own_labelled = targets.labelled();
        let out = forward_batch::<E, D, OwnedTape<E, D>>(self.model, part, readout)?;
        // this shard's means weighted by its share of the batch's (exactly 1 for the whole
        // batch: no op added)
        let weighted = |loss: Tensor<(), E, D, OwnedTape<E, D>>, share: f64| {
            if whole {
                loss
            } else {
                loss * E::of(share)
            }
        };
        let crate::models::Output { logits, aux } = out;
        let mut tally = None;
        let mut loss = None;
        // the logits carry the pass's history (the auxiliary loss's joins it); without a
        // cross-entropy to carry it, it moves to the auxiliary loss
        let mut history = None;
        if own_labelled > 0 {
            let (own, t) = loss_and_tally(logits, targets, self.objective)?;
            tally = Some(t);
            loss = Some(weighted(own, own_labelled as f64 / self.labelled as f64));
        } else {
            history = Some(logits.split_tape().1);
        }
        if let Some(aux) = aux {
            let (aux, aux_tape) = weighted(aux, part.b as f64 / batch.b as f64).split_tape();
            let aux = aux.put_tape(match history.take() {
                Some(t) => t.merge(aux_tape),
                None => aux_tape,
            });
            loss = Some(match loss {
                Some(l) => l + aux,
                None => aux,
            });
        }
        Ok(loss.map(|l| {
            let tally = tally.unwrap_or_else(|| DeviceTally {
                score: l.device().zeros(),
                labelled: 0,
            });
            ShardResult {
                loss: l.retaped::<NoneTape>(),
                grads: l.backward(),
                tally,
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::shard_ranges;

    #[test]
    fn shards_cover_the_batch_in_order() {
        assert_eq!(shard_ranges(8, 2), vec![0..4, 4..8]);
        assert_eq!(shard_ranges(5, 2), vec![0..2, 2..5]);
        assert_eq!(shard_ranges(1, 2), vec![0..1]);
        assert_eq!(shard_ranges(3, 8), vec![0..1, 1..2, 2..3]);
        assert_eq!(shard_ranges(4, 0), vec![0..4]);
    }
}
