//! A sweep written down before it runs: `plan.json` (what every task's jobs share and what its
//! tables need), `jobs.jsonl` (one job per task × rule × seed, with its matched model and full
//! training config) and two runners, `slurm.sh` (a job array) and `run-local.sh` (this
//! machine). Any process can then run any job ([`super::jobs`]) and the report reads whatever
//! has finished ([`super::collect`]).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::matching::{match_params, Matched};
use super::{base_rate, ExperimentConfig, TaskSettings};
use crate::error::{Error, Result};
use crate::models::GraphConfig;
use crate::rules::{explain::plan_cost, Rule, BUILTINS};
use crate::train::trainer::TrainConfig;
use crate::train::Task;

/// The plan's summary file.
pub const PLAN: &str = "plan.json";
/// One job per line.
pub const JOBS: &str = "jobs.jsonl";
/// A Slurm job array over the jobs.
pub const SLURM: &str = "slurm.sh";
/// Runs every job on this machine, then the report.
pub const LOCAL: &str = "run-local.sh";
/// The plan's format; a plan of another format is refused rather than misread.
pub const FORMAT: u32 = 1;

/// A rule of the plan. A rule file's source is kept in the plan, so every job runs the rule as
/// it was when planned, on any machine, wherever the file is (or whatever became of it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlannedRule {
    /// As given: a built-in's name or a file's path.
    pub name: String,
    /// The file's source (`None` for a built-in).
    pub source: Option<String>,
    /// The folder name its runs get: the name of a built-in, the file's stem for a file
    /// (made unique within the plan).
    pub slug: String,
}

/// One task of a plan: what its jobs share and what its tables need.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskPlan {
    /// The task's registry name.
    pub task: String,
    /// The settings of this task's runs (steps and batch are the task's own in a suite).
    pub config: ExperimentConfig,
    /// Accuracy of always answering the most frequent class of the held-out set.
    pub base_rate: f64,
    /// The parameter count every rule is matched to.
    pub budget: usize,
    /// Each rule's matched sizes and parameter count, in the plan's rule order.
    pub matched: Vec<Matched>,
    /// Estimated FLOPs of the rule layers per training step (forward + backward ≈ 3 ×
    /// forward), at the task's largest size; one entry per rule.
    pub flops_per_step: Vec<f64>,
    /// What a size is, for tasks tested size by size (`path length`).
    pub size_label: Option<String>,
    /// Whether the task has a fixed probe (the tables get its column).
    pub has_probe: bool,
}

/// One run: a rule at one seed on one task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Its line in `jobs.jsonl`, from 0.
    pub id: usize,
    /// The task's name.
    pub task: String,
    /// The rule as given.
    pub rule: String,
    /// The run's seed.
    pub seed: u64,
    /// Its folder, relative to the plan's.
    pub dir: PathBuf,
    /// The matched model.
    pub model: GraphConfig,
    /// The full training config (`out` is `dir`, relative to the plan's folder).
    pub train: TrainConfig,
}

/// A whole sweep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The plan format's version ([`FORMAT`]).
    pub format: u32,
    /// The command that made it and the build it was made with (for the summary).
    pub command: String,
    /// The build that made it ([`crate::build_info::describe`]).
    pub build: String,
    /// The rules compared.
    pub rules: Vec<PlannedRule>,
    /// Each task's plan.
    pub tasks: Vec<TaskPlan>,
    /// Every job (read from `jobs.jsonl`, not `plan.json`).
    #[serde(skip)]
    pub jobs: Vec<Job>,
}

fn io(path: &Path, message: impl ToString) -> Error {
    Error::Io {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// A folder name made of the file stem's letters, digits, `-` and `_`.
fn slug_of(rule: &str) -> String {
    if BUILTINS.iter().any(|(n, _)| *n == rule) {
        return rule.to_string();
    }
    let stem = Path::new(rule)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let clean: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.is_empty() {
        "rule".into()
    } else {
        clean
    }
}

/// The plan's rules, each with its source (files) and a folder name of its own.
fn planned_rules(rules: &[String]) -> Result<Vec<PlannedRule>> {
    let mut taken = BTreeSet::new();
    let mut out = Vec::new();
    for name in rules {
        if out.iter().any(|r: &PlannedRule| &r.name == name) {
            return Err(Error::config(
                "experiment",
                format!("rule `{name}` is listed twice"),
            ));
        }
        let rule = Rule::resolve(name)?;
        let builtin = BUILTINS.iter().any(|(n, _)| n == name);
        let base = slug_of(name);
        let mut slug = base.clone();
        let mut k = 2;
        while !taken.insert(slug.clone()) {
            slug = format!("{base}-{k}");
            k += 1;
        }
        out.push(PlannedRule {
            name: name.clone(),
            source: (!builtin).then_some(rule.source),
            slug,
        });
    }
    Ok(out)
}

impl Plan {
    /// Plans `tasks` (each with its steps and batch) with the settings of `cfg`: matches every
    /// rule's width to the budget and lists one job per task × rule × seed.
    pub fn new(tasks: &[TaskSettings], cfg: &ExperimentConfig, command: &str) -> Result<Self> {
        if cfg.rules.is_empty() || cfg.seeds == 0 || cfg.depth == 0 || tasks.is_empty() {
            return Err(Error::config(
                "experiment",
                "needs at least one task, one rule, one seed and depth ≥ 1",
            ));
        }
        let rules = planned_rules(&cfg.rules)?;
        let mut plans = Vec::new();
        let mut jobs = Vec::new();
        for t in tasks {
            let config = ExperimentConfig {
                steps: t.steps,
                batch: t.batch,
                ..cfg.clone()
            };
            let task = Task::from_name(&t.task, None, 0)?;
            let (budget, matched) =
                match_params(&config.rules, &task, &config.widths, config.depth)?;
            let mut flops_per_step = Vec::new();
            for m in &matched {
                let plan = Rule::resolve(&m.rule)?.plan(&m.config.rule_config())?;
                let forward = plan_cost(&plan, config.batch, task.max_len()).flops;
                flops_per_step.push(3.0 * forward * config.depth as f64);
            }
            for (m, r) in matched.iter().zip(&rules) {
                for seed in config.seed_range() {
                    let dir = PathBuf::from(task.name())
                        .join("runs")
                        .join(&r.slug)
                        .join(format!("seed{seed}"));
                    jobs.push(Job {
                        id: jobs.len(),
                        task: task.name(),
                        rule: m.rule.clone(),
                        seed,
                        model: m.config.clone(),
                        train: train_config(&task, &config, seed, &dir),
                        dir,
                    });
                }
            }
            plans.push(TaskPlan {
                task: task.name(),
                base_rate: base_rate(&task, &config)?,
                config,
                budget,
                matched,
                flops_per_step,
                size_label: task.sizes().map(|s| s.what.to_string()),
                has_probe: task.probe().is_some(),
            });
        }
        Ok(Self {
            format: FORMAT,
            command: command.to_string(),
            build: crate::build_info::describe(),
            rules,
            tasks: plans,
            jobs,
        })
    }

    /// The source of `rule` if it came from a file.
    pub fn rule_source(&self, rule: &str) -> Option<&str> {
        self.rules
            .iter()
            .find(|r| r.name == rule)
            .and_then(|r| r.source.as_deref())
    }

    /// The plan of the task called `name`.
    pub fn task(&self, name: &str) -> Option<&TaskPlan> {
        self.tasks.iter().find(|t| t.task == name)
    }

    /// Writes `plan.json`, `jobs.jsonl`, `slurm.sh` and `run-local.sh` into `dir` (and the
    /// `logs` folder Slurm writes into). A folder holding another plan is refused; the same
    /// plan again is left as it is, so its finished jobs count.
    pub fn write(&self, dir: &Path, jobs_per_array_task: usize) -> Result<()> {
        if dir.join(PLAN).exists() {
            let old = Self::read(dir)?;
            if !old.same_sweep(self) {
                return Err(io(
                    dir,
                    "this folder holds a plan with other settings (plan.json); give this one \
                     its own --out, or remove the folder",
                ));
            }
            return Ok(());
        }
        std::fs::create_dir_all(dir.join("logs"))
            .map_err(|e| io(dir, format!("cannot create it: {e}")))?;
        let mut lines = String::new();
        for job in &self.jobs {
            let line = serde_json::to_string(job).map_err(|e| io(dir, e))?;
            lines.push_str(&line);
            lines.push('\n');
        }
        crate::files::write_atomic(&dir.join(JOBS), lines.as_bytes())?;
        let text = serde_json::to_string_pretty(self).map_err(|e| io(dir, e))?;
        let absolute = std::path::absolute(dir).map_err(|e| io(dir, e))?;
        let scripts = Scripts {
            dir: &absolute,
            jobs: self.jobs.len(),
            per_array_task: jobs_per_array_task.max(1),
        };
        write_script(&dir.join(SLURM), &scripts.slurm())?;
        write_script(&dir.join(LOCAL), &scripts.local())?;
        // plan.json last: a folder with it holds a whole plan
        crate::files::write_atomic(&dir.join(PLAN), text.as_bytes())
    }

    /// Whether two plans run the same jobs and report them alike. How they are run (threads at
    /// once, the memory limit, how the output folder was spelled) does not count.
    fn same_sweep(&self, other: &Self) -> bool {
        let settings = |p: &Self| -> Vec<TaskPlan> {
            p.tasks
                .iter()
                .map(|t| TaskPlan {
                    config: ExperimentConfig {
                        jobs: 0,
                        out: PathBuf::new(),
                        memory: Default::default(),
                        ..t.config.clone()
                    },
                    ..t.clone()
                })
                .collect()
        };
        self.rules == other.rules && self.jobs == other.jobs && settings(self) == settings(other)
    }

    /// Reads the plan in `dir`, checking every job against it.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(PLAN);
        if !path.exists() {
            return Err(io(
                dir,
                "no plan here (plan.json); make one with `quartic experiment plan … --out DIR`",
            ));
        }
        let text = crate::files::read_text_capped(&path, crate::files::CONFIG_CAP, "the plan")?;
        let mut plan: Plan =
            serde_json::from_str(&text).map_err(|e| io(&path, format!("not a plan: {e}")))?;
        if plan.format != FORMAT {
            return Err(io(
                &path,
                format!(
                    "a plan of format {} (this build reads format {FORMAT}); plan it again",
                    plan.format
                ),
            ));
        }
        let jobs_path = dir.join(JOBS);
        let text =
            crate::files::read_text_capped(&jobs_path, crate::files::CONFIG_CAP, "the jobs")?;
        for (k, line) in text.lines().enumerate() {
            let at = |m: String| io(&jobs_path, format!("line {}: {m}", k + 1));
            let job: Job = serde_json::from_str(line).map_err(|e| at(e.to_string()))?;
            if job.id != k {
                return Err(at(format!("job {} is not on line {}", job.id, job.id + 1)));
            }
            if !is_inside(&job.dir) || job.train.out != job.dir {
                return Err(at(format!(
                    "the job's folder {} must be a relative path inside the plan's folder",
                    job.dir.display()
                )));
            }
            if plan.task(&job.task).is_none() || !plan.rules.iter().any(|r| r.name == job.rule) {
                return Err(at(format!(
                    "task `{}` or rule `{}` is not in plan.json",
                    job.task, job.rule
                )));
            }
            plan.jobs.push(job);
        }
        Ok(plan)
    }

    /// The jobs named by `spec`: `K`, `A-B` (both included) or a comma-separated list of them,
    /// as `sbatch --array` takes them.
    pub fn select(&self, spec: &str) -> Result<Vec<usize>> {
        let bad = |m: String| Error::config("--job", m);
        let n = self.jobs.len();
        let mut out = BTreeSet::new();
        for part in spec.split(',').map(str::trim) {
            let num = |s: &str| {
                s.trim()
                    .parse::<usize>()
                    .map_err(|_| bad(format!("`{part}` is not a job number or a range A-B")))
            };
            let (a, b) = match part.split_once('-') {
                Some((a, b)) => (num(a)?, num(b)?),
                None => (num(part)?, num(part)?),
            };
            if a > b {
                return Err(bad(format!("`{part}` is an empty range")));
            }
            if b >= n {
                return Err(bad(format!(
                    "job {b} does not exist: the plan has {n} jobs (0 to {})",
                    n.saturating_sub(1)
                )));
            }
            out.extend(a..=b);
        }
        Ok(out.into_iter().collect())
    }
}

/// A relative path that stays inside the folder it is relative to.
fn is_inside(path: &Path) -> bool {
    !path.as_os_str().is_empty()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// A job's training config: the experiment's schedule, the seed, and the job's folder.
fn train_config(task: &Task, cfg: &ExperimentConfig, seed: u64, dir: &Path) -> TrainConfig {
    TrainConfig {
        task: task.name(),
        steps: cfg.steps,
        batch: cfg.batch,
        lr: cfg.lr,
        warmup: cfg.warmup,
        eval_every: cfg.eval_every,
        eval_batches: cfg.eval_batches,
        seed,
        // four checkpoints a run, so a job stopped midway continues from the last one
        checkpoint_every: cfg.steps.div_ceil(4).max(1),
        out: dir.to_path_buf(),
        ..TrainConfig::default()
    }
}

fn write_script(path: &Path, text: &str) -> Result<()> {
    crate::files::write_atomic(path, text.as_bytes())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| io(path, e))?;
    }
    Ok(())
}

/// The runner scripts of a plan in `dir` (absolute).
struct Scripts<'a> {
    dir: &'a Path,
    jobs: usize,
    per_array_task: usize,
}

/// A path in single quotes for the shell.
fn quoted(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

/// This program's path, for the scripts' default `QUARTIC`.
fn this_program() -> String {
    std::env::current_exe()
        .map(|p| quoted(&p))
        .unwrap_or_else(|_| "quartic".into())
}

impl Scripts<'_> {
    fn slurm(&self) -> String {
        let tasks = self.jobs.div_ceil(self.per_array_task);
        let dir = quoted(self.dir);
        let mut s = String::new();
        let _ = writeln!(s, "#!/bin/bash");
        let _ = writeln!(
            s,
            "# The {} jobs of this plan as a Slurm job array, {} job(s) per array task.",
            self.jobs, self.per_array_task
        );
        let _ = writeln!(
            s,
            "# Submit with `sbatch {}`; adjust the #SBATCH lines to your cluster.",
            self.dir.join(SLURM).display()
        );
        let _ = writeln!(
            s,
            "# A job that finished is skipped, so resubmitting runs only what is missing."
        );
        let _ = writeln!(s, "#SBATCH --job-name=quartic-experiment");
        let _ = writeln!(s, "#SBATCH --array=0-{}", tasks - 1);
        let _ = writeln!(s, "#SBATCH --cpus-per-task=2");
        let _ = writeln!(s, "#SBATCH --mem=4G");
        let _ = writeln!(s, "#SBATCH --time=02:00:00");
        let _ = writeln!(s, "#SBATCH --output={}/logs/%A_%a.out", self.dir.display());
        let _ = writeln!(s, "set -euo pipefail");
        let _ = writeln!(s, "QUARTIC=${{QUARTIC:-{}}}", this_program());
        let _ = writeln!(
            s,
            "# billed cores: idle worker threads sleep at once instead of polling"
        );
        let _ = writeln!(
            s,
            "export QUARTIC_STAY_WARM_MS=\"${{QUARTIC_STAY_WARM_MS:-0}}\""
        );
        let _ = writeln!(
            s,
            "first=$(( SLURM_ARRAY_TASK_ID * {} ))",
            self.per_array_task
        );
        let _ = writeln!(
            s,
            "last=$(( first + {} ))\nif [ \"$last\" -gt {} ]; then last={}; fi",
            self.per_array_task - 1,
            self.jobs - 1,
            self.jobs - 1
        );
        let _ = writeln!(
            s,
            "\"$QUARTIC\" experiment run {dir} --job \"$first-$last\" --jobs 1"
        );
        let _ = writeln!(
            s,
            "# when every array task is done: \"$QUARTIC\" experiment report {dir}"
        );
        s
    }

    fn local(&self) -> String {
        let dir = quoted(self.dir);
        let mut s = String::new();
        let _ = writeln!(s, "#!/bin/sh");
        let _ = writeln!(
            s,
            "# Runs the {} jobs of this plan on this machine, P processes at once (the first",
            self.jobs
        );
        let _ = writeln!(
            s,
            "# argument; default 1), with GNU parallel if it is installed, else xargs; then the report."
        );
        let _ = writeln!(
            s,
            "# A job that finished is skipped, so running it again finishes only what is missing."
        );
        let _ = writeln!(s, "set -u");
        let _ = writeln!(s, "QUARTIC=${{QUARTIC:-{}}}", this_program());
        let _ = writeln!(s, "P=\"${{1:-1}}\"");
        let _ = writeln!(s, "status=0");
        let _ = writeln!(s, "if command -v parallel >/dev/null 2>&1; then");
        let _ = writeln!(
            s,
            "  seq 0 {} | parallel -j \"$P\" \"$QUARTIC\" experiment run {dir} --jobs 1 --job {{}} || status=$?",
            self.jobs - 1
        );
        let _ = writeln!(s, "else");
        let _ = writeln!(
            s,
            "  seq 0 {} | xargs -P \"$P\" -I{{}} \"$QUARTIC\" experiment run {dir} --jobs 1 --job {{}} || status=$?",
            self.jobs - 1
        );
        let _ = writeln!(s, "fi");
        let _ = writeln!(s, "\"$QUARTIC\" experiment report {dir} || status=$?");
        let _ = writeln!(s, "exit \"$status\"");
        s
    }
}
