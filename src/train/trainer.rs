//! The training loop: seeded batches (batch k depends only on the seed and k, so a resumed run
//! sees the same data), the task's objective on the labelled positions (cross-entropy, or a
//! regression's error: `super::objective`; + a model's auxiliary loss),
//! AdamW with warmup and cosine decay, gradient clipping, periodic held-out evaluation,
//! checkpoints, a progress bar, a metrics CSV and a plot.

use crate::graph::{step_seeds, DropoutDraws};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use dfdx::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::checkpoint::{self, TrainState};
use super::device_optim::Optimizer;
use super::objective::{loss_and_tally, DeviceTally, Objective, Targets, ValueLoss};
use super::optim::{schedule, AdamState, AdamW};
use super::run_dir::{Existing, RunDir};
use super::shards::{step_gradients, RunShards};
use super::tasks::{Batch, Readout, Split, Task};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::models::{GraphInputs, Model, ModelConfig};
use crate::tensor::*;

fn d_context() -> usize {
    64
}

fn d_shards() -> usize {
    super::shards::DEFAULT_SHARDS
}

/// Everything about a training run (the model comes separately).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The task's registry name (`sanity`, `copy`, `text`, …).
    pub task: String,
    /// A text file for character-level language modelling (the `text` task).
    #[serde(default)]
    pub data: Option<String>,
    /// Context length of the text task.
    #[serde(default = "d_context")]
    pub context: usize,
    /// A graph file to train on (`graphs` task; see `crate::data::graphs`).
    #[serde(default)]
    pub graphs: Option<String>,
    /// The held-out graph file of a `graphs` task.
    #[serde(default)]
    pub valid: Option<String>,
    /// What a `graphs` task predicts: `graph`, `node` or `edge` targets.
    #[serde(default)]
    pub target: Option<String>,
    /// How a `graphs` task's targets are learnt: `cross-entropy` (class ids; the default),
    /// `mse` or `mae` (real values, a regression).
    #[serde(default)]
    pub loss: Option<String>,
    /// Optimizer steps.
    pub steps: usize,
    /// Examples per step.
    pub batch: usize,
    /// Peak learning rate (after warmup, before the cosine decay).
    pub lr: f64,
    /// Steps of linear warmup from zero.
    pub warmup: usize,
    /// The learning rate decays to this fraction of `lr`.
    pub min_lr_ratio: f64,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
    /// Global gradient-norm clip (0 = none).
    pub clip: f64,
    /// Evaluate on held-out batches every this many steps (and at the end).
    pub eval_every: usize,
    /// Held-out batches per evaluation.
    pub eval_batches: usize,
    /// Seeds the model's initialisation and the data.
    pub seed: u64,
    /// Checkpoint every this many steps (and at the end).
    pub checkpoint_every: usize,
    /// Directory for `checkpoint.safetensors`, `metrics.csv` and `curves.png`.
    pub out: PathBuf,
    /// Each step's batch runs as this many shards at once (see [`super::shards`]); the
    /// result depends on it by rounding only.
    #[serde(default = "d_shards")]
    pub shards: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            task: "sanity".into(),
            data: None,
            context: 64,
            graphs: None,
            valid: None,
            target: None,
            loss: None,
            steps: 600,
            batch: 32,
            lr: 3e-3,
            warmup: 50,
            min_lr_ratio: 0.1,
            weight_decay: 0.01,
            clip: 1.0,
            eval_every: 100,
            eval_batches: 8,
            seed: 0,
            checkpoint_every: 200,
            out: PathBuf::from("runs/latest"),
            shards: d_shards(),
        }
    }
}

impl TrainConfig {
    /// The task this config names, built (reads the text file for `text`, the graph files for
    /// `graphs`).
    pub fn task(&self) -> Result<Task> {
        if let Some(train) = &self.graphs {
            if self.data.is_some() {
                return Err(Error::config(
                    "training",
                    "give a text (`data`) or graphs (`graphs`), not both",
                ));
            }
            let valid = self.valid.as_deref().ok_or_else(|| {
                Error::config(
                    "training",
                    "graphs need a held-out file too: `--valid FILE` (`valid` in a config)",
                )
            })?;
            let target = self.target.as_deref().ok_or_else(|| {
                Error::config(
                    "training",
                    "say what the graphs predict: `--target graph`, `node` or `edge`",
                )
            })?;
            let level = super::tasks::Level::parse(target)?;
            let loss = ValueLoss::parse(self.loss.as_deref().unwrap_or("cross-entropy"))?;
            return Task::new(super::tasks::GraphFiles::from_files(
                Path::new(train),
                Path::new(valid),
                level,
                loss,
            )?);
        }
        if self.valid.is_some() || self.target.is_some() || self.loss.is_some() {
            return Err(Error::config(
                "training",
                "`valid`, `target` and `loss` go with graph files (`--graphs FILE`)",
            ));
        }
        Task::from_name(&self.task, self.data.as_deref(), self.context)
    }
    /// Where the run's checkpoint is: `out/checkpoint.safetensors`.
    pub fn checkpoint_path(&self) -> PathBuf {
        self.out.join(super::run_dir::CHECKPOINT)
    }

    /// Every setting in range: counts positive, rates finite (a NaN is never taken for a
    /// number), the named setting in the message.
    pub fn validate(&self) -> Result<()> {
        let counts = [
            ("steps", self.steps),
            ("batch", self.batch),
            ("eval_batches", self.eval_batches),
            ("eval_every", self.eval_every),
            ("checkpoint_every", self.checkpoint_every),
            ("shards", self.shards),
            ("context", self.context),
        ];
        for (name, v) in counts {
            if v == 0 {
                return Err(Error::config(
                    "training",
                    format!("`{name}` must be positive"),
                ));
            }
        }
        let (lr, decay, clip, ratio) = (self.lr, self.weight_decay, self.clip, self.min_lr_ratio);
        let rates = [
            ("lr", lr, lr.is_finite() && lr > 0.0, "a finite number > 0"),
            (
                "weight_decay",
                decay,
                decay.is_finite() && decay >= 0.0,
                "a finite number ≥ 0",
            ),
            (
                "clip",
                clip,
                clip.is_finite() && clip >= 0.0,
                "a finite number ≥ 0 (0: no clipping)",
            ),
            (
                "min_lr_ratio",
                ratio,
                (0.0..=1.0).contains(&ratio),
                "a number in [0, 1]",
            ),
        ];
        for (name, v, ok, what) in rates {
            if !ok {
                return Err(Error::config(
                    "training",
                    format!("`{name}` is {v}; it must be {what}"),
                ));
            }
        }
        Ok(())
    }
}

/// One row of the metrics.
#[derive(Clone, Debug, PartialEq)]
pub struct StepRecord {
    /// The step number, from 1.
    pub step: usize,
    /// The training batch's mean loss.
    pub loss: f64,
    /// The training batch's metric over its scored targets: accuracy, or the mean absolute
    /// error of a regression ([`Task::metric`]).
    pub metric: f64,
    /// The learning rate the step used.
    pub lr: f64,
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
    /// The held-out (loss, metric), on steps that evaluated.
    pub eval: Option<(f64, f64)>,
    /// Seconds since the run (or its resumed part) started.
    pub elapsed: f64,
}

/// What a finished (or interrupted) run returns.
#[derive(Debug)]
pub struct TrainReport {
    /// Every step's metrics, in order.
    pub records: Vec<StepRecord>,
    /// The last evaluation: (loss, metric).
    pub eval: Option<(f64, f64)>,
    /// Whether a stop signal ended it early (its checkpoint is still written).
    pub interrupted: bool,
    /// The checkpoint it wrote.
    pub checkpoint: PathBuf,
}

/// The random stream of batch `k` of the data stream `seed`.
fn batch_rng(seed: u64, k: usize) -> StdRng {
    StdRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ k as u64)
}

/// The batch for `step`, from the seed alone.
pub fn batch_for(task: &Task, seed: u64, step: usize, batch: usize) -> Batch {
    task.sample(&mut batch_rng(seed, step), batch)
}

/// Held-out batches come from a different stream than training batches, and from the task's
/// test distribution (`Split::Test`, or one size with `Split::Size`).
pub fn eval_batch(task: &Task, seed: u64, k: usize, batch: usize, split: Split) -> Batch {
    task.sample_split(
        &mut batch_rng(seed ^ 0x5EED_E7A1_0000_0000, k),
        batch,
        split,
    )
}

/// The targets a task's readout is scored on: per node, per edge, or per graph; real values
/// where the batch has them at that level, else class ids.
pub fn targets_of(batch: &Batch, readout: Readout) -> Result<Targets<'_>> {
    let missing = |what: &str| {
        Error::config(
            "training batch",
            format!("the task reads {what} but the batch has no targets there"),
        )
    };
    match readout {
        Readout::Nodes => Ok(match &batch.node_values {
            Some(v) => Targets::Values(v),
            None => Targets::Classes(&batch.targets),
        }),
        Readout::Edges => match (&batch.edge_values, &batch.edge_targets) {
            (Some(v), _) => Ok(Targets::Values(v)),
            (None, Some(c)) => Ok(Targets::Classes(c)),
            (None, None) => Err(missing("edges")),
        },
        Readout::Graph => match (&batch.graph_values, &batch.graph_targets) {
            (Some(v), _) => Ok(Targets::Values(v)),
            (None, Some(c)) => Ok(Targets::Classes(c)),
            (None, None) => Err(missing("whole graphs")),
        },
    }
}

/// The model's output on a batch, read where the task says.
pub fn forward_batch<E: Real, D: Backend<E>, T: Tape<E, D>>(
    model: &Model<E, D>,
    bt: &Batch,
    readout: Readout,
) -> Result<crate::models::Output<E, D, T>> {
    let inputs = GraphInputs {
        tokens: &bt.tokens,
        edge_tokens: bt.edge_tokens.as_deref(),
        b: bt.b,
        n: bt.n,
        valid: bt.valid.as_deref(),
        adjacency: bt.adjacency.as_deref(),
        node_features: bt.node_features.as_deref(),
        edge_features: bt.edge_features.as_deref(),
        dropout: bt.dropout.as_ref(),
    };
    model.forward_io(&inputs, readout)
}

/// Loss and tally of `model` on one batch, without gradients, left on the device.
pub fn score_batch<E: Real, D: Backend<E>>(
    model: &Model<E, D>,
    bt: &Batch,
    readout: Readout,
    objective: &Objective,
) -> Result<(Tensor<(), E, D>, DeviceTally<E, D>)> {
    let out = forward_batch::<E, D, NoneTape>(model, bt, readout)?;
    loss_and_tally(out.logits, targets_of(bt, readout)?, objective)
}

/// Held-out loss and metric (accuracy, or the mean absolute error of a regression: see
/// [`Task::metric`]) over `batches` fixed batches of the task's test distribution.
pub fn evaluate<E: Real, D: Backend<E>>(
    model: &Model<E, D>,
    task: &Task,
    seed: u64,
    batches: usize,
    batch: usize,
) -> Result<(f64, f64)> {
    evaluate_split(model, task, seed, batches, batch, Split::Test)
}

/// Held-out loss and metric over `batches` fixed batches of `split`; for a task with a fixed
/// held-out set ([`Task::held_out_set`]), over that set, each example once, `batch` at a time
/// (`batches` and `seed` then play no part).
pub fn evaluate_split<E: Real, D: Backend<E>>(
    model: &Model<E, D>,
    task: &Task,
    seed: u64,
    batches: usize,
    batch: usize,
    split: Split,
) -> Result<(f64, f64)> {
    // summed on the device (each batch's mean loss weighted by its positions), read once
    let mut sum: Option<(Tensor<(), E, D>, DeviceTally<E, D>)> = None;
    // one batch at a time: only the batch being scored is held
    let batches: Box<dyn Iterator<Item = Batch>> = match (split, task.held_out_set()) {
        (Split::Test, Some(set)) => Box::new(
            set.chunks(batch)
                .map(|c| super::tasks::batch_of(c.to_vec())),
        ),
        _ => Box::new((0..batches).map(|k| eval_batch(task, seed, k, batch, split))),
    };
    for bt in batches {
        let (l, t) = score_batch(model, &bt, task.readout(), &task.objective())?;
        let l = l * E::of(t.labelled as f64);
        sum = Some(match sum {
            None => (l, t),
            Some((loss, tally)) => (loss + l, tally.plus(t)),
        });
    }
    let (loss, tally) =
        sum.ok_or_else(|| Error::config("evaluation", "there is no batch to score"))?;
    let tally = tally.read();
    Ok((host::scalar(&loss) / tally.labelled as f64, tally.metric()))
}

/// Held-out metric at each size of a task that tests beyond its training sizes
/// ([`Task::sizes`]), `batches` fixed batches a size; empty for other tasks.
pub fn evaluate_by_size<E: Real, D: Backend<E>>(
    model: &Model<E, D>,
    task: &Task,
    seed: u64,
    batches: usize,
    batch: usize,
) -> Result<Vec<(usize, f64)>> {
    let sizes = task.sizes().map_or(Vec::new(), |s| s.values);
    sizes
        .into_iter()
        .map(|size| {
            let (_, metric) = evaluate_split(model, task, seed, batches, batch, Split::Size(size))?;
            Ok((size, metric))
        })
        .collect()
}

/// The metric on the task's fixed probe ([`Task::probe`]), for tasks with one.
pub fn evaluate_probe<E: Real, D: Backend<E>>(
    model: &Model<E, D>,
    task: &Task,
) -> Result<Option<f64>> {
    match task.probe() {
        Some(bt) => {
            let (_, tally) = score_batch(model, &bt, task.readout(), &task.objective())?;
            Ok(Some(tally.read().metric()))
        }
        None => Ok(None),
    }
}

/// Receives progress while training (the CLI draws a progress bar from it).
pub trait Progress {
    /// Training begins at `_first_step` (after a resume) of `_total`.
    fn start(&mut self, _first_step: usize, _total: usize) {}
    /// A step finished.
    fn step(&mut self, _record: &StepRecord) {}
    /// A line for the user (a checkpoint written, an evaluation).
    fn message(&mut self, _text: &str) {}
    /// Training ended.
    fn finish(&mut self) {}
}

/// No output.
pub struct Silent;
impl Progress for Silent {}

/// Where a run begins: fresh, or from a checkpoint's optimizer state and step.
#[derive(Clone, Debug, Default)]
pub struct Start {
    /// The optimizer's moments (empty for a fresh run).
    pub adam: AdamState,
    /// Steps already taken.
    pub step: usize,
    /// What to do with a run already in `cfg.out`.
    pub existing: Existing,
}

impl Start {
    /// A new run; a folder that already holds one is refused.
    pub fn fresh() -> Self {
        Self::default()
    }
    /// A new run that replaces whatever run is in the folder.
    pub fn overwrite() -> Self {
        Self {
            existing: Existing::Overwrite,
            ..Self::default()
        }
    }
    /// Continues the run in the folder from a checkpoint's state ([`resume`]).
    pub fn resume(adam: AdamState, step: usize) -> Self {
        Self {
            adam,
            step,
            existing: Existing::Resume,
        }
    }
}

/// Trains `model` from `start`. Holds the lock of `cfg.out` while it runs and writes
/// checkpoints there (only of good states: a NaN or infinite loss stops the run naming the
/// step, and the last checkpoint stays the last good one), `metrics.csv` and `curves.png`.
/// When `stop` turns true it saves a checkpoint and returns, `interrupted` set.
///
/// Two steps of the default model on the `sanity` task, then its checkpoint read back:
///
/// ```
/// use dfdx::prelude::*;
/// use quartic::models::{GraphConfig, Model, ModelConfig};
/// use quartic::nn::Init;
/// use quartic::train::trainer::{self, Silent, Start, TrainConfig};
///
/// let out = std::env::temp_dir().join(format!("quartic-doc-train-{}", std::process::id()));
/// let cfg = TrainConfig { task: "sanity".into(), steps: 2, batch: 4, eval_every: 2,
///                         eval_batches: 1, out: out.clone(), ..TrainConfig::default() };
/// let task = cfg.task()?;
/// let config = GraphConfig::builder()
///     .num_tokens(task.num_tokens())
///     .max_seq_len(task.max_len())
///     .dim(16)
///     .depth(1)
///     .build()?;
/// let dev = Cpu::default();
/// let mut model = Model::<f32, Cpu>::new(&ModelConfig::Graph(config), None, &Init::random(&dev, 0))?;
/// let report = trainer::train(&mut model, &cfg, Start::fresh(), None, &mut Silent)?;
/// let (loss, accuracy) = report.eval.expect("evaluated at the last step");
/// assert!(loss.is_finite() && (0.0..=1.0).contains(&accuracy));
///
/// // the checkpoint holds the model, the optimizer state and where training stands
/// let saved = quartic::train::checkpoint::load(&report.checkpoint)?;
/// assert_eq!(saved.train.step, 2);
/// let again: Model<f32, Cpu> = saved.model(&dev)?;
/// assert_eq!(again.config(), model.config());
/// # std::fs::remove_dir_all(&out).ok();
/// # Ok::<(), quartic::Error>(())
/// ```
pub fn train<E: Real, D: super::shards::RunShards<E>>(
    model: &mut Model<E, D>,
    cfg: &TrainConfig,
    start: Start,
    stop: Option<&AtomicBool>,
    progress: &mut dyn Progress,
) -> Result<TrainReport> {
    // the task is built from `cfg` itself, so it is the one `cfg` names (a text or graph
    // file's task is named after the file, not after `cfg.task`)
    let task = cfg.task()?;
    run_task(model, &task, cfg, start, stop, progress)
}

/// [`train`] on a task given as a value: a built-in, or a user's own type implementing
/// [`super::tasks::TaskDef`] (wrapped with `Task::new`). `cfg.task` must be the task's name,
/// since the checkpoint records it. A run of a user's task is continued by calling this again
/// with the same task and `Start::resume`; `quartic eval` and `--resume` know only the
/// built-in tasks.
pub fn train_task<E: Real, D: super::shards::RunShards<E>>(
    model: &mut Model<E, D>,
    task: &Task,
    cfg: &TrainConfig,
    start: Start,
    stop: Option<&AtomicBool>,
    progress: &mut dyn Progress,
) -> Result<TrainReport> {
    if cfg.task != task.name() {
        return Err(Error::config(
            "training",
            format!(
                "the config names task `{}` but the task given is `{}`; set `task` to its name \
                 (the checkpoint records it)",
                cfg.task,
                task.name()
            ),
        ));
    }
    run_task(model, task, cfg, start, stop, progress)
}

/// [`train_task`] once the task is known to be the one `cfg` describes.
fn run_task<E: Real, D: super::shards::RunShards<E>>(
    model: &mut Model<E, D>,
    task: &Task,
    cfg: &TrainConfig,
    start: Start,
    stop: Option<&AtomicBool>,
    progress: &mut dyn Progress,
) -> Result<TrainReport> {
    cfg.validate()?;
    let task = task.clone();
    check_fits(&model.config(), &task)?;
    check_input_graph(model, &task)?;
    let dir = RunDir::open(&cfg.out, start.existing)?;
    let mut adam = Optimizer::for_device(start.adam, model)?;
    let start_step = start.step;
    if start.existing == Existing::Overwrite {
        for old in [dir.checkpoint(), dir.metrics(), dir.plot()] {
            if old.exists() {
                std::fs::remove_file(&old).map_err(|e| Error::Io {
                    path: old.display().to_string(),
                    message: format!("cannot replace it: {e}"),
                })?;
            }
        }
    }
    let ckpt = dir.checkpoint();
    let metrics_path = dir.metrics();
    let mut metrics = super::metrics::Metrics::open(&metrics_path, start_step, task.metric())?;
    let mut last_saved = (start.existing == Existing::Resume).then_some(start_step);
    let mut previous: Option<(f64, f64)> = None;
    let train_json =
        serde_json::to_value(cfg).map_err(|e| Error::config("training", e.to_string()))?;
    let started = Instant::now();
    let mut records = Vec::new();
    let mut last_eval = None;
    let mut interrupted = false;
    progress.start(start_step, cfg.steps);
    let save = |model: &Model<E, D>, adam: &mut Optimizer<E, D>, step: usize| {
        checkpoint::save(
            &ckpt,
            model,
            Some(adam.state(model)?.as_ref()),
            &TrainState {
                step,
                train_config: train_json.clone(),
            },
        )
    };
    for step in start_step..cfg.steps {
        if stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
            save(model, &mut adam, step)?;
            progress.message(&format!(
                "interrupted at step {step}: checkpoint saved to {} (continue with --resume)",
                ckpt.display()
            ));
            interrupted = true;
            break;
        }
        let done_step = match train_step(model, &mut adam, &task, cfg, step) {
            Ok(s) => s,
            Err(Error::NotFinite(what)) => {
                return Err(not_finite(&what, step, previous, model, &ckpt, last_saved))
            }
            Err(e) => return Err(e),
        };
        previous = Some((done_step.loss, done_step.grad_norm));
        let done = step + 1;
        let eval = if done % cfg.eval_every == 0 || done == cfg.steps {
            let e = evaluate(model, &task, cfg.seed, cfg.eval_batches, cfg.batch)?;
            last_eval = Some(e);
            Some(e)
        } else {
            None
        };
        let record = StepRecord {
            step: done,
            loss: done_step.loss,
            metric: done_step.metric,
            lr: done_step.lr,
            grad_norm: done_step.grad_norm,
            eval,
            elapsed: started.elapsed().as_secs_f64(),
        };
        metrics.write(&record)?;
        progress.step(&record);
        records.push(record);
        if done % cfg.checkpoint_every == 0 || done == cfg.steps {
            save(model, &mut adam, done)?;
            last_saved = Some(done);
        }
    }
    progress.finish();
    #[cfg(feature = "plots")]
    {
        let all = super::metrics::Metrics::read(&metrics_path)?;
        super::plot::curves(&dir.plot(), &all, &task.name(), task.metric())?;
    }
    Ok(TrainReport {
        records,
        eval: last_eval,
        interrupted,
        checkpoint: ckpt,
    })
}

/// What one training step did (the scalars it logs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepDone {
    /// The batch's loss.
    pub loss: f64,
    /// The batch's metric (accuracy, or mean absolute error).
    pub metric: f64,
    /// The learning rate used.
    pub lr: f64,
    /// The gradient norm before clipping.
    pub grad_norm: f64,
}

/// Training step `step` of the run `cfg` on `task`: the step's batch, its forward and backward
/// passes, one AdamW update. Reads back only the scalars it returns (on a device, three: the
/// loss, the metric's score and the gradient norm). A non-finite loss or gradient norm is an
/// [`Error::NotFinite`], before anything is updated.
pub fn train_step<E: Real, D: RunShards<E>>(
    model: &mut Model<E, D>,
    optimizer: &mut Optimizer<E, D>,
    task: &Task,
    cfg: &TrainConfig,
    step: usize,
) -> Result<StepDone> {
    let mut bt = batch_for(task, cfg.seed, step, cfg.batch);
    bt.dropout = Some(DropoutDraws::new(step_seeds(cfg.seed, step, bt.b)));
    let mut passes = step_gradients(model, &bt, task.readout(), &task.objective(), cfg.shards)?;
    if !passes.loss.is_finite() {
        return Err(Error::NotFinite(format!("the loss is {}", passes.loss)));
    }
    let opt = AdamW {
        lr: cfg.lr,
        weight_decay: cfg.weight_decay,
        ..AdamW::default()
    };
    let lr = schedule(cfg.lr, step, cfg.warmup, cfg.steps, cfg.min_lr_ratio);
    let clip = (cfg.clip > 0.0).then_some(cfg.clip);
    let report = optimizer.update_sum(model, &mut passes.grads, &opt, lr, clip)?;
    Ok(StepDone {
        loss: passes.loss,
        metric: passes.tally.metric(),
        lr,
        grad_norm: report.grad_norm,
    })
}

/// The error that stops a run at a non-finite value: which step, what the checkpoint holds
/// (only if one exists), and the likely cause: before any update the model itself computes it
/// from its weights (a rule out of its domain, an overflow); after updates it may also be
/// divergence.
fn not_finite<E: Real, D: Device<E>>(
    what: &str,
    step: usize,
    previous: Option<(f64, f64)>,
    model: &Model<E, D>,
    checkpoint: &Path,
    last_saved: Option<usize>,
) -> Error {
    use crate::nn::HasParams;
    let saved = match last_saved {
        Some(s) if checkpoint.exists() => format!(
            "the last good checkpoint, from step {s}, is {}",
            checkpoint.display()
        ),
        _ => "no checkpoint of this run was written".to_string(),
    };
    let weights_finite = model.params().iter().all(|p| {
        host::values(&p.value)
            .iter()
            .all(|x| x.as_f64().is_finite())
    });
    let cause = match previous {
        _ if !weights_finite => {
            "the weights are no longer finite: the updates diverged (lower --lr or --clip)"
                .to_string()
        }
        None => "the weights are finite and no update has been made in this run, so the model \
                 computes it from them: look for a rule operation outside its domain (sqrt, \
                 division or power of values that can be zero or negative) or an overflow"
            .to_string(),
        Some((loss, norm)) => format!(
            "the weights are finite (the step before: loss {loss:.4}, gradient norm {norm:.3e}): \
             the model computes it from them on this batch (a rule operation outside its \
             domain, an overflow), or the updates are diverging (lower --lr or --clip)"
        ),
    };
    Error::NotFinite(format!(
        "{what} at step {step}; the run stopped without saving ({saved}); {cause}"
    ))
}

/// Refuses a model whose rules read the input graph (`adjacency`, `mask:`) on a task whose
/// graphs carry none, naming the first statement that reads it.
pub fn check_input_graph<E: Real, D: Device<E>>(model: &Model<E, D>, task: &Task) -> Result<()> {
    let Model::Graph(g) = model else {
        return Ok(());
    };
    if task.input_graph() {
        return Ok(());
    }
    for (k, layer) in g.layers.iter().enumerate() {
        if let Some(st) = layer.plan.input_graph_reader() {
            return Err(Error::config(
                "model",
                format!(
                    "layer {k}: {} reads the input graph (`adjacency` or `mask:`), but task {} \
                     has none: train it on graph files (`quartic train --graphs FILE`)",
                    layer.plan.place(st),
                    task.name()
                ),
            ));
        }
    }
    Ok(())
}

/// The model must cover the task's vocabulary, length and causality.
pub fn check_fits(config: &ModelConfig, task: &Task) -> Result<()> {
    if config.num_tokens() < task.num_tokens() {
        return Err(Error::config(
            "model",
            format!(
                "{} tokens, but task {} needs {}",
                config.num_tokens(),
                task.name(),
                task.num_tokens()
            ),
        ));
    }
    if config.max_seq_len() < task.max_len() {
        return Err(Error::config(
            "model",
            format!(
                "max_seq_len {} < the task's {}",
                config.max_seq_len(),
                task.max_len()
            ),
        ));
    }
    let (edge_vocab, edge_classes) = match config {
        ModelConfig::Graph(g) => (g.io.edge_vocab, g.io.edge_classes),
        ModelConfig::MultiStream(_) => (0, 0),
    };
    if task.edge_vocab() > 0 && edge_vocab < task.edge_vocab() {
        return Err(Error::config(
            "model",
            format!(
                "task {} gives edge tokens below {}, but the model takes {edge_vocab} (a graph \
                 model with io.edge_vocab ≥ {})",
                task.name(),
                task.edge_vocab(),
                task.edge_vocab()
            ),
        ));
    }
    if task.edge_classes() > 0 && edge_classes < task.edge_classes() {
        return Err(Error::config(
            "model",
            format!(
                "task {} predicts {} classes per edge, but the model's edge head has \
                 {edge_classes} (io.edge_classes)",
                task.name(),
                task.edge_classes()
            ),
        ));
    }
    let values = match config {
        ModelConfig::Graph(g) => g.io.values.is_some(),
        ModelConfig::MultiStream(_) => false,
    };
    match (task.objective(), values) {
        (Objective::Values { .. }, false) => {
            return Err(Error::config(
                "model",
                format!(
                    "task {} has real-valued targets, but the model predicts classes (a graph \
                     model with io.values)",
                    task.name()
                ),
            ))
        }
        (Objective::Classes, true) => {
            return Err(Error::config(
                "model",
                format!(
                    "the model predicts real values (io.values), but task {} has class targets",
                    task.name()
                ),
            ))
        }
        _ => {}
    }
    if task.causal() && !config.causal() {
        return Err(Error::config(
            "model",
            format!("task {} needs a causal model", task.name()),
        ));
    }
    Ok(())
}

/// Reads a checkpoint's model, optimizer state and training config to continue a run. The
/// saved config names the folder the run was written to; the run continues in the folder the
/// checkpoint was read from, never the saved path.
pub fn resume<E: Real, D: Backend<E>>(
    path: &Path,
    dev: &D,
) -> Result<(Model<E, D>, AdamState, TrainConfig, usize)> {
    let c = checkpoint::load(path)?;
    let cfg = resume_config(&c, path)?;
    let model = c.model(dev)?;
    Ok((model, c.adam, cfg, c.train.step))
}

/// The training config of a checkpoint read from `path`, checked to belong with its state, and
/// with `out` set to the checkpoint's own folder.
pub fn resume_config(c: &checkpoint::Checkpoint, path: &Path) -> Result<TrainConfig> {
    let bad = |m: String| Error::Io {
        path: path.display().to_string(),
        message: m,
    };
    let mut cfg: TrainConfig = serde_json::from_value(c.train.train_config.clone())
        .map_err(|e| bad(format!("no usable training config: {e}")))?;
    if c.adam.step != c.train.step as u64 {
        return Err(bad(format!(
            "the optimizer made {} updates but the run is at step {}: the state does not \
             belong together",
            c.adam.step, c.train.step
        )));
    }
    if c.train.step > cfg.steps {
        return Err(bad(format!(
            "step {} is past the run's {} steps",
            c.train.step, cfg.steps
        )));
    }
    cfg.validate()
        .map_err(|e| bad(format!("its training config: {e}")))?;
    cfg.out = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    Ok(cfg)
}
