//! `quartic experiment`: several rules on one task (or the separation suite) at matched
//! parameter counts, over seeds; writes `summary.md` and per-task tables and plots.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use quartic::experiment::{self, report, ExperimentConfig, TaskReport, SEPARATION_SUITE};

use super::output::say;

/// `--suite`'s help: each suite's tasks, from the suite itself.
fn suite_help() -> String {
    let tasks: Vec<&str> = SEPARATION_SUITE.iter().map(|t| t.task).collect();
    format!("A suite of tasks: `separation` ({})", tasks.join(", "))
}

#[derive(Args, Debug, Clone)]
pub struct ExperimentArgs {
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
    /// Seeds per rule (0, 1, ...): each seed fixes the data and the initial weights
    #[arg(long, default_value_t = 3)]
    pub seeds: usize,
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
    /// Runs trained at once [default: the number of cores]
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Output directory
    #[arg(long, default_value = "runs/experiment")]
    pub out: PathBuf,
    #[command(flatten)]
    pub budget: super::budget::Budget,
}

fn commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

pub fn run(args: &ExperimentArgs) -> quartic::Result<()> {
    let defaults = ExperimentConfig::default();
    let base = ExperimentConfig {
        rules: args.rules.clone(),
        depth: args.depth,
        seeds: args.seeds,
        steps: args.steps.unwrap_or(defaults.steps),
        batch: args.batch.unwrap_or(defaults.batch),
        lr: args.lr,
        warmup: defaults.warmup,
        eval_every: args.eval_every,
        eval_batches: args.eval_batches,
        widths: experiment::Widths {
            dim: args.dim,
            dim_edges: args.dim_edges,
            heads: args.heads,
            dim_head: args.dim_head,
            edge_heads: args.edge_heads,
            edge_dim_head: args.edge_dim_head,
            ff_mult: args.ff_mult,
        },
        jobs: args.jobs.unwrap_or(defaults.jobs),
        out: args.out.clone(),
        memory: args.budget.max_memory,
    };
    // (task, steps, batch): flags win over the suite's per-task settings
    let tasks: Vec<(String, usize, usize)> = match &args.task {
        Some(t) => vec![(t.clone(), base.steps, base.batch)],
        None => SEPARATION_SUITE
            .iter()
            .map(|s| {
                (
                    s.task.to_string(),
                    args.steps.unwrap_or(s.steps),
                    args.batch.unwrap_or(s.batch),
                )
            })
            .collect(),
    };
    let started = Instant::now();
    // with standard output closed the runs go on: their results are written to files
    let log = |line: &str| {
        let _ = say!("{line}");
    };
    let mut reports: Vec<TaskReport> = Vec::new();
    for (task, steps, batch) in &tasks {
        let cfg = ExperimentConfig {
            steps: *steps,
            batch: *batch,
            ..base.clone()
        };
        let r = experiment::run_task(task, &cfg, &log)?;
        report::write_task(&r, &args.out.join(&r.task))?;
        let _ = say!("\n{}", report::markdown(&r));
        reports.push(r);
    }
    let command: Vec<String> = std::env::args().skip(1).collect();
    let mut summary = format!(
        "Command `quartic {}` at commit {}, {} thread(s), {:.1} min in all.\n\n",
        command.join(" "),
        commit(),
        base.jobs,
        started.elapsed().as_secs_f64() / 60.0
    );
    summary.push_str(&report::suite_markdown(&reports));
    for r in &reports {
        summary.push('\n');
        summary.push_str(&report::markdown(r));
    }
    let path = args.out.join("summary.md");
    std::fs::create_dir_all(&args.out)
        .and_then(|_| std::fs::write(&path, &summary))
        .map_err(|e| quartic::Error::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
    say!("{}", report::suite_markdown(&reports))?;
    say!(
        "written: {} (per task: results.md, results.csv, plots)",
        path.display()
    )
}
