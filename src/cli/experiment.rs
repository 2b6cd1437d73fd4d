//! `quartic experiment`: several rules on one task (or the separation suite) at matched
//! parameter counts, over seeds; writes `summary.md` and per-task tables and plots. The
//! one-command form plans, runs every job and reports in one process; `plan`, `run` and
//! `report` do the same in parts, so that a cluster scheduler can run the jobs.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Args, Subcommand};
use quartic::experiment::{
    self, report, Collected, ExperimentConfig, Plan, RunSummary, TaskSettings, SEPARATION_SUITE,
};

use super::output::{say, signal_name, StopSignals};

/// `--suite`'s help: each suite's tasks, from the suite itself.
fn suite_help() -> String {
    let tasks: Vec<&str> = SEPARATION_SUITE.iter().map(|t| t.task).collect();
    format!("A suite of tasks: `separation` ({})", tasks.join(", "))
}

#[derive(Args, Debug, Clone)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ExperimentArgs {
    #[command(subcommand)]
    pub action: Option<Action>,
    #[command(flatten)]
    pub sweep: SweepArgs,
    /// Runs trained at once, at most one per core [default: the number of cores]
    #[arg(long)]
    pub jobs: Option<usize>,
    #[command(flatten)]
    pub budget: super::budget::Budget,
    #[command(flatten)]
    pub device: super::device::DeviceArg,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Action {
    /// Write the sweep's jobs (jobs.jsonl) and runners (slurm.sh, run-local.sh) to --out; run
    /// nothing
    Plan(PlanArgs),
    /// Run jobs of a plan, each in its own folder (result.json); a finished job is skipped,
    /// a stopped one continues from its checkpoint
    Run(RunArgs),
    /// Tables and plots of the jobs of a plan that have finished (summary.md)
    Report(ReportArgs),
    /// Several experiments side by side: each rule's held-out accuracy against the width (and
    /// depth) its budget was taken at (compare.md, compare.csv, accuracy-vs-width-TASK.png)
    Compare(CompareArgs),
}

#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    /// The experiments' folders (each with finished runs)
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
    /// Where the table and plots go
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct PlanArgs {
    #[command(flatten)]
    pub sweep: SweepArgs,
    /// Jobs each Slurm array task runs, one after the other (short runs share a task)
    #[arg(long, default_value_t = 4)]
    pub jobs_per_array_task: usize,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// The plan's folder
    pub dir: PathBuf,
    /// The jobs to run: K, A-B (both included) or a list of them, e.g. 0-9,12
    #[arg(long, required_unless_present = "all", conflicts_with = "all")]
    pub job: Option<String>,
    /// Every job of the plan
    #[arg(long)]
    pub all: bool,
    /// Jobs run at once, at most one per core [default: the number of cores]
    #[arg(long)]
    pub jobs: Option<usize>,
    #[command(flatten)]
    pub budget: super::budget::Budget,
    #[command(flatten)]
    pub device: super::device::DeviceArg,
}

#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    /// The plan's folder
    pub dir: PathBuf,
}

/// What a sweep varies and holds fixed.
#[derive(Args, Debug, Clone)]
pub struct SweepArgs {
    /// The task (see `quartic train --help`); or use --suite
    #[arg(long, required_unless_present = "suite", conflicts_with = "suite")]
    pub task: Option<String>,
    #[arg(long, value_parser = ["separation"], help = suite_help())]
    pub suite: Option<String>,
    /// Comma-separated rules (built-ins or rule files)
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "baseline,taylor,triangle,routed,quartic"
    )]
    pub rules: Vec<String>,
    /// Layers
    #[arg(long, default_value_t = 1)]
    pub depth: usize,
    /// Seeds per rule (--first-seed, the next, ...): each seed fixes the data and the initial
    /// weights
    #[arg(long, default_value_t = 3)]
    pub seeds: usize,
    /// The first seed
    #[arg(long, default_value_t = 0)]
    pub first_seed: u64,
    /// Optimizer steps [default: 400, or the suite's per task]
    #[arg(long)]
    pub steps: Option<usize>,
    /// Examples per batch [default: 32, or the suite's per task]
    #[arg(long)]
    pub batch: Option<usize>,
    /// Peak learning rate
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    /// Held-out evaluation every this many steps
    #[arg(long, default_value_t = 50)]
    pub eval_every: usize,
    /// Held-out batches per evaluation
    #[arg(long, default_value_t = 8)]
    pub eval_batches: usize,
    /// The node width the parameter budget is taken at (each rule's own width is matched to it)
    #[arg(long, default_value_t = 32)]
    pub dim: usize,
    /// Edge channels
    #[arg(long, default_value_t = 16)]
    pub dim_edges: usize,
    /// Node attention heads
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    /// Channels per node attention head
    #[arg(long, default_value_t = 8)]
    pub dim_head: usize,
    /// Edge attention heads (triangle attention heads for `triangle`)
    #[arg(long, default_value_t = 2)]
    pub edge_heads: usize,
    /// Channels per edge attention head
    #[arg(long, default_value_t = 8)]
    pub edge_dim_head: usize,
    /// Feedforward width multiplier
    #[arg(long, default_value_t = 2.0)]
    pub ff_mult: f64,
    /// Output directory
    #[arg(long, default_value = "runs/experiment")]
    pub out: PathBuf,
}

impl SweepArgs {
    /// The settings and the tasks (with their steps and batch: flags win over a suite's).
    fn resolve(&self) -> (ExperimentConfig, Vec<TaskSettings>) {
        let defaults = ExperimentConfig::default();
        let cfg = ExperimentConfig {
            rules: self.rules.clone(),
            depth: self.depth,
            first_seed: self.first_seed,
            seeds: self.seeds,
            steps: self.steps.unwrap_or(defaults.steps),
            batch: self.batch.unwrap_or(defaults.batch),
            lr: self.lr,
            warmup: defaults.warmup,
            eval_every: self.eval_every,
            eval_batches: self.eval_batches,
            widths: experiment::Widths {
                dim: self.dim,
                dim_edges: self.dim_edges,
                heads: self.heads,
                dim_head: self.dim_head,
                edge_heads: self.edge_heads,
                edge_dim_head: self.edge_dim_head,
                ff_mult: self.ff_mult,
            },
            out: self.out.clone(),
            ..defaults
        };
        let tasks = match &self.task {
            Some(t) => vec![TaskSettings {
                task: t.clone(),
                steps: cfg.steps,
                batch: cfg.batch,
            }],
            None => SEPARATION_SUITE
                .iter()
                .map(|s| TaskSettings {
                    task: s.task.to_string(),
                    steps: self.steps.unwrap_or(s.steps),
                    batch: self.batch.unwrap_or(s.batch),
                })
                .collect(),
        };
        (cfg, tasks)
    }
}

/// The command line, as it was given.
fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!("quartic {}", args.join(" "))
}

/// With standard output closed the runs go on: their results are written to files.
fn log(line: &str) {
    let _ = say!("{line}");
}

/// Runs; the exit status is 0, or 128 + the signal's number when a signal stopped the jobs.
pub fn run(args: &ExperimentArgs) -> quartic::Result<u8> {
    match &args.action {
        Some(Action::Plan(p)) => plan(p).map(|()| 0),
        Some(Action::Run(r)) => run_jobs(r),
        Some(Action::Report(r)) => report(&r.dir).map(|()| 0),
        Some(Action::Compare(c)) => compare(c).map(|()| 0),
        None => run_all(args),
    }
}

fn plan(args: &PlanArgs) -> quartic::Result<()> {
    let (cfg, tasks) = args.sweep.resolve();
    let plan = Plan::new(&tasks, &cfg, &command_line())?;
    plan.write(&cfg.out, args.jobs_per_array_task)?;
    let dir = cfg.out.display();
    say!(
        "planned {} jobs ({} task(s) × {} rule(s) × {} seed(s)) in {dir}:",
        plan.jobs.len(),
        plan.tasks.len(),
        cfg.rules.len(),
        cfg.seeds
    )?;
    say!("  one job:        quartic experiment run {dir} --job K")?;
    say!("  a Slurm array:  sbatch {dir}/slurm.sh")?;
    say!("  this machine:   {dir}/run-local.sh [PROCESSES]")?;
    say!("  the tables:     quartic experiment report {dir}")
}

fn threads(jobs: Option<usize>) -> usize {
    jobs.unwrap_or_else(|| ExperimentConfig::default().jobs)
        .max(1)
}

/// The exit status after running jobs: an error listing the failed ones.
fn ended(summary: &RunSummary, signals: &StopSignals) -> quartic::Result<u8> {
    if let Some(sig) = signals.received() {
        eprintln!(
            "stopped by {}: the stopped jobs saved checkpoints; run them again to continue",
            signal_name(sig)
        );
        return Ok(128 + sig as u8);
    }
    if summary.failed.is_empty() {
        return Ok(0);
    }
    let listed: Vec<String> = summary
        .failed
        .iter()
        .map(|(id, e)| format!("job {id}: {e}"))
        .collect();
    Err(quartic::Error::config(
        "experiment",
        format!(
            "{} job(s) failed (their result.json records why; running them again retries \
             them): {}",
            summary.failed.len(),
            listed.join("; ")
        ),
    ))
}

fn run_jobs(args: &RunArgs) -> quartic::Result<u8> {
    let plan = Plan::read(&args.dir)?;
    let ids = match &args.job {
        Some(spec) => plan.select(spec)?,
        None => (0..plan.jobs.len()).collect(),
    };
    let threads = threads(args.jobs);
    experiment::check_memory(&plan, &ids, threads, &args.budget.max_memory)?;
    let signals = StopSignals::install()?;
    let summary = experiment::run_jobs(
        &args.dir,
        &plan,
        &ids,
        threads,
        args.device.device,
        Some(&signals.requested),
        &log,
    )?;
    ended(&summary, &signals)
}

fn compare(args: &CompareArgs) -> quartic::Result<()> {
    let points = experiment::compare::points(&args.dirs)?;
    let md = experiment::compare::write_all(&points, &args.out)?;
    say!("{md}")?;
    say!(
        "written: {} (compare.md, compare.csv, accuracy-vs-width-TASK.png)",
        args.out.display()
    )
}

/// The report's header: the plan's command and build, and this report's.
fn report(dir: &Path) -> quartic::Result<()> {
    let plan = Plan::read(dir)?;
    let collected = experiment::collect(dir, &plan)?;
    let header = format!(
        "Planned by `{}` with {}; reported by {}.",
        plan.command,
        plan.build,
        quartic::build_info::describe()
    );
    write_report(dir, &header, &plan, &collected)
}

fn write_report(
    dir: &Path,
    header: &str,
    plan: &Plan,
    collected: &Collected,
) -> quartic::Result<()> {
    let path = report::write_all(dir, header, plan, collected)?;
    say!("{}", report::suite_markdown(&collected.reports))?;
    let done = plan.jobs.len() - collected.failed.len() - collected.missing.len();
    say!(
        "written: {} ({done} of {} jobs finished; per task: results.md, results.csv, plots)",
        path.display(),
        plan.jobs.len()
    )
}

/// The one-command form: plan, run every job not yet finished, report.
fn run_all(args: &ExperimentArgs) -> quartic::Result<u8> {
    let (mut cfg, tasks) = args.sweep.resolve();
    cfg.jobs = threads(args.jobs);
    cfg.memory = args.budget.max_memory;
    cfg.device = args.device.device;
    let started = Instant::now();
    let signals = StopSignals::install()?;
    let (plan, summary, collected) = experiment::run(
        &tasks,
        &cfg,
        &command_line(),
        Some(&signals.requested),
        &log,
    )?;
    for r in collected.reports.iter().filter(|r| !r.runs.is_empty()) {
        let _ = say!("\n{}", report::markdown(r));
    }
    let header = format!(
        "Command `{}` with {}, {} thread(s), {:.1} min in all.",
        plan.command,
        quartic::build_info::describe(),
        cfg.jobs,
        started.elapsed().as_secs_f64() / 60.0
    );
    write_report(&cfg.out, &header, &plan, &collected)?;
    ended(&summary, &signals)
}
