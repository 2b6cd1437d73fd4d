//! `quartic experiment`: the same task, steps and schedule for several rules at a matched
//! parameter count, over several seeds; a table (Markdown and CSV) and plots of the results.
//! `--suite separation` runs the tasks built to separate edge rules from the quadratic baseline.

pub mod matching;
pub mod report;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use dfdx::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::memory::{Estimate, Limit};
use crate::models::footprint::{estimate, Use};
use crate::models::{Model, ModelConfig};
use crate::nn::Init;
use crate::rules::{explain::plan_cost, Rule};
use crate::train::shards::DEFAULT_SHARDS;
use crate::train::tasks::Split;
use crate::train::trainer::{self, Silent, Start, TrainConfig};
use crate::train::Task;

pub use matching::{match_params, Matched, Widths};

/// Everything an experiment holds fixed across its rules.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExperimentConfig {
    pub rules: Vec<String>,
    pub depth: usize,
    pub seeds: usize,
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    pub warmup: usize,
    pub eval_every: usize,
    pub eval_batches: usize,
    pub widths: Widths,
    /// Runs trained at once (each on its own thread).
    pub jobs: usize,
    pub out: PathBuf,
    /// The memory the runs at once may take, checked against their estimate before any starts.
    #[serde(skip)]
    pub memory: Limit,
}

impl Default for ExperimentConfig {
    fn default() -> Self {
        Self {
            rules: ["baseline", "taylor", "triangle", "routed", "quartic"]
                .map(String::from)
                .to_vec(),
            depth: 1,
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
        }
    }
}

/// One task of a suite, with the steps and batch it gets.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SuiteTask {
    pub task: &'static str,
    pub steps: usize,
    pub batch: usize,
}

/// `--suite separation`: the graph tasks at 400 steps of 32, the two sequence tasks (n ≈ 30,
/// where the n⁴ rule costs most) at 250 steps of 16, so the suite fits in 30 minutes on 2 cores.
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
        steps: 400,
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
#[derive(Clone, Debug, PartialEq)]
pub struct RunResult {
    pub rule: String,
    pub seed: u64,
    /// Held-out loss and accuracy at the end (the task's test distribution).
    pub loss: f64,
    pub accuracy: f64,
    /// Held-out accuracy at each evaluation step.
    pub curve: Vec<(usize, f64)>,
    /// Held-out accuracy per size, for tasks with sizes.
    pub by_size: Vec<(usize, f64)>,
    /// Accuracy on the task's fixed probe, if it has one.
    pub probe: Option<f64>,
    pub seconds: f64,
}

/// One task's experiment.
#[derive(Clone, Debug)]
pub struct TaskReport {
    pub task: String,
    pub config: ExperimentConfig,
    /// Accuracy of always answering the most frequent class of the held-out set.
    pub base_rate: f64,
    /// The parameter count every rule is matched to.
    pub budget: usize,
    pub matched: Vec<Matched>,
    /// Estimated FLOPs of the rule layers per training step (forward + backward ≈ 3 × forward),
    /// at the task's largest size; one entry per rule.
    pub flops_per_step: Vec<f64>,
    pub size_label: Option<String>,
    pub has_probe: bool,
    pub runs: Vec<RunResult>,
}

impl TaskReport {
    pub fn runs_of<'a>(&'a self, rule: &'a str) -> impl Iterator<Item = &'a RunResult> + 'a {
        self.runs.iter().filter(move |r| r.rule == rule)
    }
}

/// The majority-class rate of the held-out batches.
pub fn base_rate(task: &Task, cfg: &ExperimentConfig) -> Result<f64> {
    let mut counts = std::collections::BTreeMap::<usize, usize>::new();
    for k in 0..cfg.eval_batches {
        let bt = trainer::eval_batch(task, 0, k, cfg.batch, Split::Test);
        for t in trainer::targets_of(&bt, task.readout())?.iter().flatten() {
            *counts.entry(*t).or_default() += 1;
        }
    }
    let total: usize = counts.values().sum();
    let top = counts.values().max().copied().unwrap_or(0);
    Ok(top as f64 / total.max(1) as f64)
}

/// Runs every rule × seed of `cfg` on the task `task_name`; `log` gets a line per finished run.
pub fn run_task(
    task_name: &str,
    cfg: &ExperimentConfig,
    log: &(dyn Fn(&str) + Sync),
) -> Result<TaskReport> {
    if cfg.rules.is_empty() || cfg.seeds == 0 || cfg.depth == 0 {
        return Err(Error::config(
            "experiment",
            "needs at least one rule, one seed and depth ≥ 1",
        ));
    }
    let task = Task::from_name(task_name, None, 0)?;
    let (budget, matched) = match_params(&cfg.rules, &task, &cfg.widths, cfg.depth)?;
    let mut flops_per_step = Vec::new();
    for m in &matched {
        let plan = Rule::resolve(&m.rule)?.plan(&m.config.rule_config())?;
        let forward = plan_cost(&plan, cfg.batch, task.max_len()).flops;
        flops_per_step.push(3.0 * forward * cfg.depth as f64);
    }
    let jobs: Vec<(usize, u64)> = (0..matched.len())
        .flat_map(|r| (0..cfg.seeds as u64).map(move |s| (r, s)))
        .collect();
    // refuse, before any run starts, a rule whose runs (as many at once as there are jobs)
    // cannot fit
    let at_once = cfg.jobs.clamp(1, jobs.len()) as u64;
    for m in &matched {
        let one = estimate(
            &ModelConfig::Graph(m.config.clone()),
            None,
            cfg.batch,
            task.max_len(),
            Use::Train {
                shards: DEFAULT_SHARDS,
            },
        )?;
        let mut all = Estimate::default();
        for (what, bytes) in one.parts {
            all.add(what, bytes.saturating_mul(at_once));
        }
        cfg.memory
            .check(&format!("{at_once} runs of `{}` at once", m.rule), &all)?;
    }
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let results: Mutex<Vec<Result<RunResult>>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..cfg.jobs.clamp(1, jobs.len()) {
            scope.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::SeqCst);
                let Some(&(r, seed)) = jobs.get(k) else { break };
                let result = run_one(&task, &matched[r], seed, cfg);
                let finished = done.fetch_add(1, Ordering::SeqCst) + 1;
                match &result {
                    Ok(run) => log(&format!(
                        "[{finished}/{}] {task_name} · {} · seed {seed}: held-out accuracy {:.1}% ({:.0} s)",
                        jobs.len(),
                        run.rule,
                        run.accuracy * 100.0,
                        run.seconds
                    )),
                    Err(e) => log(&format!(
                        "[{finished}/{}] {task_name} · {} · seed {seed}: failed: {e}",
                        jobs.len(),
                        matched[r].rule
                    )),
                }
                results.lock().expect("no panics hold the lock").push(result);
            });
        }
    });
    let mut runs = results
        .into_inner()
        .expect("no panics hold the lock")
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    let order = |r: &RunResult| (cfg.rules.iter().position(|x| *x == r.rule), r.seed);
    runs.sort_by_key(order);
    Ok(TaskReport {
        task: task.name(),
        config: cfg.clone(),
        base_rate: base_rate(&task, cfg)?,
        budget,
        matched,
        flops_per_step,
        size_label: task.sizes().map(|s| s.what.to_string()),
        has_probe: task.probe().is_some(),
        runs,
    })
}

/// Trains one rule at one seed and measures it.
fn run_one(task: &Task, matched: &Matched, seed: u64, cfg: &ExperimentConfig) -> Result<RunResult> {
    let dev = Cpu::default();
    let started = Instant::now();
    let model_config = ModelConfig::Graph(matched.config.clone());
    let mut model = Model::<f32, Cpu>::new(&model_config, None, &Init::random(&dev, seed))?;
    let train = TrainConfig {
        task: task.name(),
        steps: cfg.steps,
        batch: cfg.batch,
        lr: cfg.lr,
        warmup: cfg.warmup,
        eval_every: cfg.eval_every,
        eval_batches: cfg.eval_batches,
        seed,
        checkpoint_every: cfg.steps,
        out: cfg
            .out
            .join(task.name())
            .join("runs")
            .join(&matched.rule)
            .join(format!("seed{seed}")),
        ..TrainConfig::default()
    };
    // a rerun of the experiment replaces its runs (its tables are rewritten too)
    let report = trainer::train(&mut model, &train, Start::overwrite(), None, &mut Silent)?;
    let (loss, accuracy) = report
        .eval
        .ok_or_else(|| Error::config("experiment", "the run ended without an evaluation"))?;
    let curve = report
        .records
        .iter()
        .filter_map(|r| r.eval.map(|(_, a)| (r.step, a)))
        .collect();
    let mut by_size = Vec::new();
    if let Some(sizes) = task.sizes() {
        for size in sizes.values {
            let (_, acc) = trainer::evaluate_split(
                &model,
                task,
                seed,
                cfg.eval_batches,
                cfg.batch,
                Split::Size(size),
            )?;
            by_size.push((size, acc));
        }
    }
    let probe = match task.probe() {
        Some(bt) => {
            let (_, correct, total) = trainer::score_batch(&model, &bt, task.readout())?;
            Some(correct as f64 / total as f64)
        }
        None => None,
    };
    Ok(RunResult {
        rule: matched.rule.clone(),
        seed,
        loss,
        accuracy,
        curve,
        by_size,
        probe,
        seconds: started.elapsed().as_secs_f64(),
    })
}
