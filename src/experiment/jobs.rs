//! Running one job of a plan in its own folder: train (continuing from the job's last
//! checkpoint if a run of it stopped midway), measure, and write `result.json`, the file that
//! says the job is done. A finished job is skipped; a failed one records its error there and
//! is tried again by the next run.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::plan::{Job, Plan};
use super::RunResult;
use crate::backend::Backend;
use crate::device::DeviceChoice;
use crate::error::{Error, Result};
use crate::models::{Model, ModelConfig};
use crate::nn::Init;
use crate::train::metrics::Metrics;
use crate::train::run_dir::{Existing, CHECKPOINT, METRICS};
use crate::train::shards::RunShards;
use crate::train::trainer::{self, Silent, Start, TrainConfig};

/// The file a job writes when it ends: its results, or its error.
pub const RESULT: &str = "result.json";
/// Held while a process runs the job, so that two cannot run it at once.
const LOCK: &str = "job.lock";

/// How a job ended, as `result.json` records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Status {
    /// It ran to the end.
    Finished {
        /// What it measured.
        result: RunResult,
    },
    /// It stopped with an error (it is run again next time).
    Failed {
        /// The error's message.
        error: String,
    },
}

/// `result.json`: the job it belongs to, and how it ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job's id in the plan.
    pub job: usize,
    /// Its task.
    pub task: String,
    /// Its rule as given.
    pub rule: String,
    /// Its seed.
    pub seed: u64,
    /// The build that ran it.
    pub build: String,
    /// Finished with a result, or failed with an error.
    #[serde(flatten)]
    pub status: Status,
}

impl JobRecord {
    fn belongs_to(&self, job: &Job) -> bool {
        self.job == job.id
            && self.task == job.task
            && self.rule == job.rule
            && self.seed == job.seed
    }
}

/// What running a job did.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// It had finished before: nothing was run.
    AlreadyFinished(RunResult),
    /// Trained, from the start or (`continued_from`) from a checkpoint of a stopped run.
    Finished {
        /// The run's results.
        result: RunResult,
        /// The step of the checkpoint it continued from, if it was resumed.
        continued_from: Option<usize>,
    },
    /// Its error, also recorded in `result.json`.
    Failed(String),
    /// Another process is running it.
    Busy,
    /// Asked to stop: its checkpoint is saved and the next run continues from it.
    Interrupted,
}

fn io(path: &Path, message: impl ToString) -> Error {
    Error::Io {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// The job's `result.json`, if it has one that belongs to it.
pub fn read_record(plan_dir: &Path, job: &Job) -> Result<Option<JobRecord>> {
    let path = plan_dir.join(&job.dir).join(RESULT);
    if !path.exists() {
        return Ok(None);
    }
    let text = crate::files::read_text_capped(&path, crate::files::CONFIG_CAP, "a job's result")?;
    let record: JobRecord =
        serde_json::from_str(&text).map_err(|e| io(&path, format!("not a job's result: {e}")))?;
    Ok(record.belongs_to(job).then_some(record))
}

/// Runs job `id` of the plan in `plan_dir` unless it has finished.
pub fn run_job(
    plan_dir: &Path,
    plan: &Plan,
    id: usize,
    device: DeviceChoice,
    stop: Option<&AtomicBool>,
) -> Result<Outcome> {
    let job = plan
        .jobs
        .get(id)
        .ok_or_else(|| Error::config("--job", format!("the plan has no job {id}")))?;
    if let Some(JobRecord {
        status: Status::Finished { result },
        ..
    }) = read_record(plan_dir, job)?
    {
        return Ok(Outcome::AlreadyFinished(result));
    }
    let out = plan_dir.join(&job.dir);
    std::fs::create_dir_all(&out).map_err(|e| io(&out, format!("cannot create it: {e}")))?;
    let lock_path = out.join(LOCK);
    let lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| io(&lock_path, e))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Ok(Outcome::Busy),
        Err(std::fs::TryLockError::Error(e)) => return Err(io(&lock_path, e)),
    }
    // it may have finished while this process waited for the lock
    if let Some(JobRecord {
        status: Status::Finished { result },
        ..
    }) = read_record(plan_dir, job)?
    {
        return Ok(Outcome::AlreadyFinished(result));
    }
    let mut continued_from = None;
    let trained = crate::on_device!(device, job.seed, |dev| train_and_measure(
        &dev,
        plan,
        job,
        &out,
        stop,
        &mut continued_from
    ));
    let status = match trained {
        Ok(None) => return Ok(Outcome::Interrupted),
        Ok(Some(result)) => Status::Finished { result },
        Err(e) => Status::Failed {
            error: e.to_string(),
        },
    };
    let record = JobRecord {
        job: job.id,
        task: job.task.clone(),
        rule: job.rule.clone(),
        seed: job.seed,
        build: crate::build_info::describe(),
        status,
    };
    let text = serde_json::to_string_pretty(&record).map_err(|e| io(&out, e))?;
    crate::files::write_atomic(&out.join(RESULT), text.as_bytes())?;
    Ok(match record.status {
        Status::Finished { result } => Outcome::Finished {
            result,
            continued_from,
        },
        Status::Failed { error } => Outcome::Failed(error),
    })
}

/// The model and where to start: the job's own checkpoint when one of this very job is there,
/// else a new model (replacing whatever an earlier, different job left in the folder).
fn starting_point<D: Backend<f32>>(
    plan: &Plan,
    job: &Job,
    train: &TrainConfig,
    dev: &D,
) -> Result<(Model<f32, D>, Start)> {
    let source = plan.rule_source(&job.rule);
    let config = ModelConfig::Graph(job.model.clone());
    let checkpoint = train.out.join(CHECKPOINT);
    if checkpoint.exists() {
        if let Ok((model, adam, saved, step)) = trainer::resume::<f32, D>(&checkpoint, dev) {
            let rule = match source {
                Some(s) => Some(s.to_string()),
                None => crate::rules::Rule::resolve(&job.rule)
                    .ok()
                    .map(|r| r.source),
            };
            if saved == *train && model.config() == config && model.rule_source() == rule.as_deref()
            {
                return Ok((model, Start::resume(adam, step)));
            }
        }
    }
    let model = Model::new(&config, source, &Init::random(dev, job.seed))?;
    Ok((model, Start::overwrite()))
}

/// Trains the job and measures it; `None` when asked to stop.
fn train_and_measure<D: RunShards<f32>>(
    dev: &D,
    plan: &Plan,
    job: &Job,
    out: &Path,
    stop: Option<&AtomicBool>,
    continued_from: &mut Option<usize>,
) -> Result<Option<RunResult>> {
    let started = Instant::now();
    let train = TrainConfig {
        out: out.to_path_buf(),
        ..job.train.clone()
    };
    let task = train.task()?;
    let (mut model, start) = starting_point(plan, job, &train, dev)?;
    if start.existing == Existing::Resume {
        *continued_from = Some(start.step);
    }
    let report = trainer::train(&mut model, &train, start, stop, &mut Silent)?;
    if report.interrupted {
        return Ok(None);
    }
    let (loss, accuracy) = match report.eval {
        Some(e) => e,
        // continued from the final checkpoint: no step ran, so evaluate here
        None => trainer::evaluate(&model, &task, train.seed, train.eval_batches, train.batch)?,
    };
    // the whole run's curve, also the part before a restart
    let curve = Metrics::read(&out.join(METRICS))?
        .iter()
        .filter_map(|r| r.eval.map(|(_, a)| (r.step, a)))
        .collect();
    let by_size =
        trainer::evaluate_by_size(&model, &task, train.seed, train.eval_batches, train.batch)?;
    let probe = trainer::evaluate_probe(&model, &task)?;
    Ok(Some(RunResult {
        rule: job.rule.clone(),
        seed: job.seed,
        loss,
        accuracy,
        curve,
        by_size,
        probe,
        seconds: started.elapsed().as_secs_f64(),
    }))
}
