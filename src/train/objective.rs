//! What predictions are scored on: classes (cross-entropy; accuracy), or real values
//! (regression: mean squared or mean absolute error of the standardized targets; scored by the
//! mean absolute error in the targets' own units).
//!
//! A regression target is divided by the training targets' standard deviation inside the loss,
//! so the loss, its gradients and the default learning rate do not depend on the units the file
//! happens to use; the model itself predicts in those units (its head ends in the affine map
//! of [`ValueScale`]), so predictions and the metric need no conversion.

use dfdx::prelude::*;
use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::models::heads::ValueScale;
use crate::ops::loss::cross_entropy;
use crate::tensor::*;

/// The loss of a regression.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueLoss {
    /// Mean squared error.
    #[default]
    Mse,
    /// Mean absolute error.
    Mae,
}

impl ValueLoss {
    /// `--loss`: `cross-entropy` (class ids: `None`), `mse` or `mae` (real values).
    pub fn parse(word: &str) -> Result<Option<Self>> {
        match word {
            "cross-entropy" => Ok(None),
            "mse" => Ok(Some(Self::Mse)),
            "mae" => Ok(Some(Self::Mae)),
            other => Err(Error::config(
                "--loss",
                format!(
                    "`{other}` is not a loss: cross-entropy (class ids), mse or mae (real values)"
                ),
            )),
        }
    }

    /// Its name, as `--loss` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Mse => "mse",
            Self::Mae => "mae",
        }
    }
}

/// What a task's targets are and how a batch's loss is computed from them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Objective {
    /// Class ids: cross-entropy of the logits, scored by accuracy.
    #[default]
    Classes,
    /// Real values: `loss` of `(prediction − target) / scale.std`, scored by the mean
    /// absolute error.
    Values {
        /// Squared or absolute error.
        loss: ValueLoss,
        /// The training targets' mean and standard deviation.
        scale: ValueScale,
    },
}

/// How a model's predictions are scored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// The share of labelled positions whose largest logit is the target (higher is better).
    Accuracy,
    /// The mean absolute error, in the targets' units (lower is better).
    MeanAbsoluteError,
}

impl Objective {
    /// The metric its runs report.
    pub fn metric(&self) -> Metric {
        match self {
            Self::Classes => Metric::Accuracy,
            Self::Values { .. } => Metric::MeanAbsoluteError,
        }
    }
}

impl Metric {
    /// Its column name in `metrics.csv` (and the name it is printed under).
    pub fn name(self) -> &'static str {
        match self {
            Self::Accuracy => "accuracy",
            Self::MeanAbsoluteError => "mae",
        }
    }

    /// A value of it for people: `93.75%`, or the error to four significant digits.
    pub fn show(self, value: f64) -> String {
        match self {
            Self::Accuracy => format!("{:.2}%", value * 100.0),
            Self::MeanAbsoluteError => format!("{value:.4}"),
        }
    }
}

/// A batch's targets at the positions the readout scores: class ids or real values, `None`
/// where a position is not scored.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Targets<'a> {
    /// Class ids.
    Classes(&'a [Option<usize>]),
    /// Real values.
    Values(&'a [Option<f32>]),
}

impl Targets<'_> {
    /// Scored positions.
    pub fn labelled(&self) -> usize {
        match self {
            Self::Classes(t) => t.iter().flatten().count(),
            Self::Values(t) => t.iter().flatten().count(),
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::Classes(t) => t.len(),
            Self::Values(t) => t.len(),
        }
    }

    fn is_set(&self, i: usize) -> bool {
        match self {
            Self::Classes(t) => t[i].is_some(),
            Self::Values(t) => t[i].is_some(),
        }
    }
}

/// What a batch's predictions scored: `score` summed over `labelled` positions (correct
/// positions for accuracy, absolute errors for the mean absolute error).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Tally {
    /// Correct positions, or the summed absolute error.
    pub score: f64,
    /// Scored positions.
    pub labelled: usize,
}

impl Tally {
    /// Adds another batch's tally.
    pub fn add(&mut self, other: Tally) {
        self.score += other.score;
        self.labelled += other.labelled;
    }

    /// The metric: the mean of `score` over the scored positions.
    pub fn metric(&self) -> f64 {
        self.score / self.labelled as f64
    }
}

/// A [`Tally`] whose score is still on the device: reading it ([`DeviceTally::read`]) copies one
/// scalar, so batches can be summed where they were scored.
pub struct DeviceTally<E: Real, D: Device<E>> {
    /// Correct positions, or the summed absolute error.
    pub score: Tensor<(), E, D>,
    /// Scored positions.
    pub labelled: usize,
}

impl<E: Real, D: Device<E>> DeviceTally<E, D> {
    /// Both tallies' sums, still on the device.
    pub fn plus(self, other: Self) -> Self {
        Self {
            score: self.score + other.score,
            labelled: self.labelled + other.labelled,
        }
    }

    /// The tally on the host (one scalar read).
    pub fn read(&self) -> Tally {
        Tally {
            score: host::scalar(&self.score),
            labelled: self.labelled,
        }
    }
}

/// The mean loss over the scored positions of `outputs` `[b, n, width]` (class logits, or one
/// value per position), and the batch's tally, both left on the device.
pub fn loss_and_tally<E: Real, D: Backend<E>, T: Tape<E, D>>(
    outputs: T3<E, D, T>,
    targets: Targets,
    objective: &Objective,
) -> Result<(Tensor<(), E, D, T>, DeviceTally<E, D>)> {
    let (b, n, v) = *outputs.shape();
    if targets.len() != b * n {
        return Err(Error::shape("targets", b * n, targets.len()));
    }
    let rows: Vec<usize> = (0..b * n).filter(|&i| targets.is_set(i)).collect();
    if rows.is_empty() {
        return Err(Error::config("training batch", "no position has a target"));
    }
    let dev = outputs.device().clone();
    let m = rows.len();
    let index = dev.tensor_from_vec(rows.clone(), (m,));
    let picked: T2<E, D, T> = outputs.reshape_like(&(b * n, v)).gather(index);
    match (targets, objective) {
        (Targets::Classes(targets), Objective::Classes) => {
            let wanted: Vec<usize> = rows
                .iter()
                .map(|&i| targets[i].expect("filtered"))
                .collect();
            let (loss, score) = cross_entropy(picked, &wanted)?;
            Ok((loss, DeviceTally { score, labelled: m }))
        }
        (Targets::Values(targets), Objective::Values { loss, scale }) => {
            if v != 1 {
                return Err(Error::shape("regression outputs", "1 per position", v));
            }
            let wanted: Vec<E> = rows
                .iter()
                .map(|&i| E::of(f64::from(targets[i].expect("filtered"))))
                .collect();
            let wanted: T2<E, D> = constant(&dev, wanted, (m, 1))?;
            let error = (picked.retaped::<NoneTape>() - wanted.clone()).abs().sum();
            let scaled = (picked - wanted.retaped::<T>()) * E::of(1.0 / scale.std);
            let per = match loss {
                ValueLoss::Mse => scaled.square(),
                ValueLoss::Mae => scaled.abs(),
            };
            let tally = DeviceTally {
                score: error,
                labelled: m,
            };
            Ok((per.sum() * E::of(1.0 / m as f64), tally))
        }
        (Targets::Classes(_), Objective::Values { .. }) => Err(Error::config(
            "targets",
            "a regression loss needs real-valued targets; the batch has class ids",
        )),
        (Targets::Values(_), Objective::Classes) => Err(Error::config(
            "targets",
            "the batch has real-valued targets: train them with --loss mse or --loss mae",
        )),
    }
}
