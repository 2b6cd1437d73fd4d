//! `quartic experiment`: the same task, steps and schedule for several rules at a matched
//! parameter count, over several seeds; a table (Markdown and CSV) and plots of the results.
//! `--suite separation` runs the tasks built to separate edge rules from the quadratic baseline.

pub mod compare;
pub mod jobs;
pub mod matching;
pub mod plan;
pub mod report;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::device::DeviceChoice;
use crate::error::{Error, Result};
use crate::memory::{Estimate, Limit};
use crate::models::footprint::{estimate, Use};
use crate::models::ModelConfig;
use crate::train::objective::Targets;
use crate::train::tasks::Split;
use crate::train::trainer;
use crate::train::Task;

use jobs::{JobRecord, Outcome, Status};
pub use matching::{match_params, Matched, Widths};
pub use plan::{Job, Plan, TaskPlan};

/// Everything an experiment holds fixed across its rules.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExperimentConfig {
    /// The rules compared (built-in names or rule files).
    pub rules: Vec<String>,
    /// Layers of every model.
    pub depth: usize,
    /// Seeds `first_seed`, `first_seed + 1`, … (`seeds` of them): each fixes a run's data and
    /// initial weights.
    #[serde(default)]
    pub first_seed: u64,
    /// Seeds per rule.
    pub seeds: usize,
    /// Optimizer steps per run.
    pub steps: usize,
    /// Examples per step.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Warmup steps.
    pub warmup: usize,
    /// Evaluate every this many steps.
    pub eval_every: usize,
    /// Held-out batches per evaluation.
    pub eval_batches: usize,
    /// The widths every rule's parameter count is matched to.
    pub widths: Widths,
    /// Runs trained at once (each on its own thread).
    pub jobs: usize,
    /// The output folder (tables, plots, one folder per run).
    pub out: PathBuf,
    /// The memory the runs at once may take, checked against their estimate before any starts.
    #[serde(skip)]
    pub memory: Limit,
    /// Where the runs compute (not part of the plan: a plan's jobs may run anywhere).
    #[serde(skip)]
    pub device: DeviceChoice,
}

impl Default for ExperimentConfig {
    fn default() -> Self {
        Self {
            rules: ["baseline", "taylor", "triangle", "routed", "quartic"]
                .map(String::from)
                .to_vec(),
            depth: 1,
            first_seed: 0,
            seeds: 3,
            steps: 400,
            batch: 32,
            lr: 3e-3,
            warmup: 40,
            eval_every: 50,
            eval_batches: 8,
            widths: Widths::default(),
            jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
            out: PathBuf::from("runs/experiment"),
            memory: Limit::Available,
            device: DeviceChoice::Cpu,
        }
    }
}

impl ExperimentConfig {
    /// The seeds of the runs.
    pub fn seed_range(&self) -> std::ops::Range<u64> {
        self.first_seed..self.first_seed + self.seeds as u64
    }
}

/// One task of a suite, with the steps and batch it gets.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SuiteTask {
    /// The task's registry name.
    pub task: &'static str,
    /// Optimizer steps per run.
    pub steps: usize,
    /// Examples per step.
    pub batch: usize,
}

/// `--suite separation`: the graph tasks at 400 steps of 32 (`path-composition` at 2 000: the
/// rules that learn its composition find it after a plateau of 200–900 steps at the uniform
/// loss), the two sequence tasks (n ≈ 30, where the n⁴ rule costs most) at 250 steps of 16, so
/// the suite fits in 30 minutes on 2 cores.
pub const SEPARATION_SUITE: [SuiteTask; 6] = [
    SuiteTask {
        task: "relation-composition",
        steps: 400,
        batch: 32,
    },
    SuiteTask {
        task: "quotient-composition",
        steps: 400,
        batch: 32,
    },
    SuiteTask {
        task: "triangles",
        steps: 400,
        batch: 32,
    },
    SuiteTask {
        task: "path-composition",
        steps: 2000,
        batch: 32,
    },
    SuiteTask {
        task: "function-composition",
        steps: 250,
        batch: 16,
    },
    SuiteTask {
        task: "match3",
        steps: 250,
        batch: 16,
    },
];

/// One trained model's results.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// The rule as given (a built-in name or a file path).
    pub rule: String,
    /// The run's seed.
    pub seed: u64,
    /// Held-out loss and accuracy at the end (the task's test distribution).
    pub loss: f64,
    /// Held-out accuracy at the end.
    pub accuracy: f64,
    /// Held-out accuracy at each evaluation step.
    pub curve: Vec<(usize, f64)>,
    /// Held-out accuracy per size, for tasks with sizes.
    pub by_size: Vec<(usize, f64)>,
    /// Accuracy on the task's fixed probe, if it has one.
    pub probe: Option<f64>,
    /// Wall-clock seconds the run took.
    pub seconds: f64,
}

/// One task's experiment: its plan (settings, matched sizes, FLOPs) and the runs that finished.
/// It reads as its plan (`report.task`, `report.matched`, …) through `Deref`.
#[derive(Clone, Debug)]
pub struct TaskReport {
    /// The task's settings, matched sizes and FLOPs.
    pub plan: TaskPlan,
    /// The runs that finished, in job order.
    pub runs: Vec<RunResult>,
}

impl std::ops::Deref for TaskReport {
    type Target = TaskPlan;
    fn deref(&self) -> &TaskPlan {
        &self.plan
    }
}

impl TaskReport {
    /// The runs of one rule, in seed order.
    pub fn runs_of<'a>(&'a self, rule: &'a str) -> impl Iterator<Item = &'a RunResult> + 'a {
        self.runs.iter().filter(move |r| r.rule == rule)
    }
}

/// The majority-class rate of the held-out batches.
pub fn base_rate(task: &Task, cfg: &ExperimentConfig) -> Result<f64> {
    let mut counts = std::collections::BTreeMap::<usize, usize>::new();
    for k in 0..cfg.eval_batches {
        let bt = trainer::eval_batch(task, 0, k, cfg.batch, Split::Test);
        let Targets::Classes(targets) = trainer::targets_of(&bt, task.readout())? else {
            return Err(Error::config(
                "experiment",
                format!(
                    "task {} has real-valued targets: no class is a majority",
                    task.name()
                ),
            ));
        };
        for t in targets.iter().flatten() {
            *counts.entry(*t).or_default() += 1;
        }
    }
    let total: usize = counts.values().sum();
    let top = counts.values().max().copied().unwrap_or(0);
    Ok(top as f64 / total.max(1) as f64)
}

/// A task with the steps and batch its runs get.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskSettings {
    /// The task's registry name.
    pub task: String,
    /// Optimizer steps per run.
    pub steps: usize,
    /// Examples per step.
    pub batch: usize,
}

impl From<&SuiteTask> for TaskSettings {
    fn from(s: &SuiteTask) -> Self {
        Self {
            task: s.task.to_string(),
            steps: s.steps,
            batch: s.batch,
        }
    }
}

/// What [`run_jobs`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunSummary {
    /// Jobs run to the end now.
    pub finished: usize,
    /// Jobs skipped because an earlier run had finished them.
    pub already_finished: usize,
    /// (job, error)
    pub failed: Vec<(usize, String)>,
    /// Jobs another process was running.
    pub busy: Vec<usize>,
    /// Jobs stopped by a signal (they resume from their checkpoints).
    pub interrupted: usize,
}

/// Refuses, before any run starts, a rule whose runs (`at_once` of them) cannot fit in `limit`.
pub fn check_memory(plan: &Plan, ids: &[usize], at_once: usize, limit: &Limit) -> Result<()> {
    let at_once = at_once.clamp(1, ids.len().max(1)) as u64;
    let mut seen = Vec::new();
    for &id in ids {
        let job = &plan.jobs[id];
        if seen.contains(&(&job.task, &job.rule)) {
            continue;
        }
        seen.push((&job.task, &job.rule));
        let task = job.train.task()?;
        let one = estimate(
            &ModelConfig::Graph(job.model.clone()),
            plan.rule_source(&job.rule),
            job.train.batch,
            task.max_len(),
            Use::Train {
                shards: job.train.shards,
            },
        )?;
        let mut all = Estimate::default();
        for (what, bytes) in one.parts {
            all.add(what, bytes.saturating_mul(at_once));
        }
        limit.check(&format!("{at_once} runs of `{}` at once", job.rule), &all)?;
    }
    Ok(())
}

/// Runs the jobs `ids` of the plan in `dir`, `threads` at once (at most one per thread of
/// rayon's pool, which has one per core) on `device`; `log` gets a line per job. A failed job
/// does not stop the others.
pub fn run_jobs(
    dir: &Path,
    plan: &Plan,
    ids: &[usize],
    threads: usize,
    device: DeviceChoice,
    stop: Option<&AtomicBool>,
    log: &(dyn Fn(&str) + Sync),
) -> Result<RunSummary> {
    crate::device::check_available(device)?;
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let outcomes: Mutex<Vec<(usize, Result<Outcome>)>> = Mutex::new(Vec::new());
    // The jobs run on the pool's own threads, at most one per thread: a job's parallel
    // kernels then start on its own thread, and the others help when they idle. Jobs on
    // threads outside the pool sent every kernel to the pool, whose first thread (the program's
    // own, waiting here) never ran one: two jobs shared about one core.
    let runners = threads
        .clamp(1, ids.len().max(1))
        .min(rayon::current_num_threads());
    // every thread is busy with a job of its own: none should sit polling for work
    let _busy = (runners > 1).then(crate::threads::pause_polling);
    rayon::scope(|scope| {
        for _ in 0..runners {
            scope.spawn(|_| loop {
                let k = next.fetch_add(1, Ordering::SeqCst);
                let Some(&id) = ids.get(k) else { break };
                if stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
                    break;
                }
                let outcome = jobs::run_job(dir, plan, id, device, stop);
                let finished = done.fetch_add(1, Ordering::SeqCst) + 1;
                let job = &plan.jobs[id];
                let what = match &outcome {
                    Ok(Outcome::Finished {
                        result: r,
                        continued_from,
                    }) => format!(
                        "held-out accuracy {:.1}% ({:.0} s{})",
                        r.accuracy * 100.0,
                        r.seconds,
                        continued_from
                            .map(|s| format!(", continued from its checkpoint at step {s}"))
                            .unwrap_or_default()
                    ),
                    Ok(Outcome::AlreadyFinished(r)) => format!(
                        "finished before (held-out accuracy {:.1}%), skipped",
                        r.accuracy * 100.0
                    ),
                    Ok(Outcome::Failed(e)) => format!("failed: {e}"),
                    Ok(Outcome::Busy) => "another process is running it, skipped".into(),
                    Ok(Outcome::Interrupted) => {
                        "stopped; its checkpoint is saved and the next run continues it".into()
                    }
                    Err(e) => format!("failed: {e}"),
                };
                log(&format!(
                    "[{finished}/{}] job {id}: {} · {} · seed {}: {what}",
                    ids.len(),
                    job.task,
                    job.rule,
                    job.seed
                ));
                outcomes
                    .lock()
                    .expect("no panics hold the lock")
                    .push((id, outcome));
            });
        }
    });
    let mut summary = RunSummary::default();
    let mut outcomes = outcomes.into_inner().expect("no panics hold the lock");
    outcomes.sort_by_key(|o| o.0);
    for (id, outcome) in outcomes {
        match outcome {
            Ok(Outcome::Finished { .. }) => summary.finished += 1,
            Ok(Outcome::AlreadyFinished(_)) => summary.already_finished += 1,
            Ok(Outcome::Failed(e)) => summary.failed.push((id, e)),
            Err(e) => summary.failed.push((id, e.to_string())),
            Ok(Outcome::Busy) => summary.busy.push(id),
            Ok(Outcome::Interrupted) => summary.interrupted += 1,
        }
    }
    Ok(summary)
}

/// What the plan in a folder has produced so far.
#[derive(Clone, Debug)]
pub struct Collected {
    /// One report per task of the plan, with the runs that have finished.
    pub reports: Vec<TaskReport>,
    /// (job, error) of the jobs that failed.
    pub failed: Vec<(usize, String)>,
    /// Jobs with no result yet.
    pub missing: Vec<usize>,
}

/// Reads every finished job of the plan in `dir` into its task's report.
pub fn collect(dir: &Path, plan: &Plan) -> Result<Collected> {
    let mut reports: Vec<TaskReport> = plan
        .tasks
        .iter()
        .map(|t| TaskReport {
            plan: t.clone(),
            runs: Vec::new(),
        })
        .collect();
    let mut failed = Vec::new();
    let mut missing = Vec::new();
    for job in &plan.jobs {
        match jobs::read_record(dir, job)? {
            Some(JobRecord {
                status: Status::Finished { result },
                ..
            }) => {
                if let Some(r) = reports.iter_mut().find(|r| r.task == job.task) {
                    r.runs.push(result);
                }
            }
            Some(JobRecord {
                status: Status::Failed { error },
                ..
            }) => failed.push((job.id, error)),
            None => missing.push(job.id),
        }
    }
    for r in &mut reports {
        let rules = &r.plan.config.rules;
        r.runs
            .sort_by_key(|x| (rules.iter().position(|n| *n == x.rule), x.seed));
    }
    Ok(Collected {
        reports,
        failed,
        missing,
    })
}

/// Plans `tasks` into `cfg.out` (or finds the same plan there), runs every job not yet finished
/// (`cfg.jobs` at once) and collects the results: today's one-command experiment.
pub fn run(
    tasks: &[TaskSettings],
    cfg: &ExperimentConfig,
    command: &str,
    stop: Option<&AtomicBool>,
    log: &(dyn Fn(&str) + Sync),
) -> Result<(Plan, RunSummary, Collected)> {
    crate::device::check_available(cfg.device)?;
    let plan = Plan::new(tasks, cfg, command)?;
    plan.write(&cfg.out, 1)?;
    let ids: Vec<usize> = (0..plan.jobs.len()).collect();
    check_memory(&plan, &ids, cfg.jobs, &cfg.memory)?;
    let summary = run_jobs(&cfg.out, &plan, &ids, cfg.jobs, cfg.device, stop, log)?;
    let collected = collect(&cfg.out, &plan)?;
    Ok((plan, summary, collected))
}

/// Runs every rule × seed of `cfg` on one task into `cfg.out` and reports it; an error if a run
/// failed.
pub fn run_task(
    task_name: &str,
    cfg: &ExperimentConfig,
    log: &(dyn Fn(&str) + Sync),
) -> Result<TaskReport> {
    let task = TaskSettings {
        task: task_name.to_string(),
        steps: cfg.steps,
        batch: cfg.batch,
    };
    let (_, summary, collected) = run(&[task], cfg, "", None, log)?;
    if let Some((id, e)) = summary.failed.first() {
        return Err(Error::config("experiment", format!("job {id} failed: {e}")));
    }
    collected
        .reports
        .into_iter()
        .next()
        .ok_or_else(|| Error::config("experiment", "no task was planned"))
}
