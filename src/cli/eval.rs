//! `quartic eval`: held-out loss and accuracy (a regression: mean absolute error) of a
//! checkpoint on a task, and for tasks that have them, the accuracy at each size (by length)
//! and on the task's fixed probe.

use std::path::PathBuf;

use clap::Args;
use quartic::models::footprint::Use;
use quartic::train::checkpoint;
use quartic::train::trainer::{
    check_fits, evaluate, evaluate_by_size, evaluate_probe, TrainConfig,
};
use quartic::train::Task;

use super::budget::Budget;
use super::device::DeviceArg;
use super::output::say;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The checkpoint to evaluate
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Task (default: the one it was trained on)
    #[arg(long)]
    pub task: Option<String>,
    /// Text file for the text task (default: the training text; its held-out end is used)
    #[arg(long)]
    pub data: Option<String>,
    /// A graph file to evaluate on, for a model trained on graphs (default: its --valid file)
    #[arg(long)]
    pub graphs: Option<String>,
    /// Held-out batches
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    pub batches: u64,
    /// Sequences per batch
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: u64,
    /// Seed of the held-out data (default: the training seed's held-out stream)
    #[arg(long)]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub budget: Budget,
    #[command(flatten)]
    pub device: DeviceArg,
}

pub fn run(args: &EvalArgs) -> quartic::Result<()> {
    let ckpt = checkpoint::load(&args.checkpoint)?;
    let trained: Option<TrainConfig> = serde_json::from_value(ckpt.train.train_config.clone()).ok();
    let (task_name, data, context, seed) = match &trained {
        Some(t) => (t.task.clone(), t.data.clone(), t.context, t.seed),
        None => ("sanity".to_string(), None, 64, 0),
    };
    let task = match &trained {
        // graphs: the training's files, held out on its --valid file or on --graphs
        Some(t) if t.graphs.is_some() && args.task.is_none() && args.data.is_none() => {
            let mut t = t.clone();
            if let Some(g) = &args.graphs {
                t.valid = Some(g.clone());
            }
            t.task()?
        }
        _ if args.graphs.is_some() => return Err(quartic::Error::config(
            "--graphs",
            "evaluates a model trained on graphs (`quartic train --graphs`) on another graph file",
        )),
        _ => Task::from_name(
            args.task.as_deref().unwrap_or(&task_name),
            args.data.as_deref().or(data.as_deref()),
            context,
        )?,
    };
    check_fits(&ckpt.config, &task)?;
    let batch = args.batch as usize;
    args.budget.check_model(
        "this evaluation",
        &ckpt.config,
        ckpt.rule_source.as_deref(),
        batch,
        task.max_len(),
        Use::Forward,
    )?;
    let held_out_seed = args.seed.unwrap_or(seed);
    let (loss, value, by_size, probe) = quartic::on_device!(args.device.device, seed, |dev| {
        let model = ckpt.model::<f32, _>(&dev)?;
        let batches = args.batches as usize;
        let (loss, value) = evaluate(&model, &task, held_out_seed, batches, batch)?;
        let by_size = evaluate_by_size(&model, &task, held_out_seed, batches, batch)?;
        let probe = evaluate_probe(&model, &task)?;
        Ok::<_, quartic::Error>((loss, value, by_size, probe))
    })?;
    if !loss.is_finite() {
        return Err(quartic::Error::NotFinite(format!(
            "the held-out loss of {} on task {} is {loss}",
            args.checkpoint.display(),
            task.name()
        )));
    }
    let covered = match task.held_out_set() {
        Some(set) => format!("all {} held-out examples", set.len()),
        None => format!("{} × {} held-out sequences", args.batches, args.batch),
    };
    let metric = task.metric();
    say!(
        "{}: task {} | {covered} | loss {loss:.4} | {} {}",
        args.checkpoint.display(),
        task.name(),
        super::train::metric_words(metric),
        metric.show(value)
    )?;
    say_by_size_and_probe(&task, &by_size, probe, args.batches as usize, batch)?;
    match (&ckpt.crate_version, &ckpt.git_commit) {
        (Some(v), Some(c)) => say!("written by quartic-transformer {v} (commit {c})"),
        _ => say!("written by a build that did not record its version"),
    }
}

/// The metric at each size of a task that tests beyond its training sizes, and on its fixed
/// probe, as `eval` and `train` print them (nothing for a task with neither).
pub(super) fn say_by_size_and_probe(
    task: &Task,
    by_size: &[(usize, f64)],
    probe: Option<f64>,
    batches: usize,
    batch: usize,
) -> quartic::Result<()> {
    let metric = task.metric();
    if let Some(sizes) = task.sizes() {
        let each: Vec<String> = by_size
            .iter()
            .map(|(size, v)| format!("{size}: {}", metric.show(*v)))
            .collect();
        say!(
            "by {} ({batches} × {batch} held-out sequences each): {}",
            sizes.what,
            each.join(" | ")
        )?;
    }
    if let Some(p) = probe {
        say!("on the task's fixed probe: {}", metric.show(p))?;
    }
    Ok(())
}
