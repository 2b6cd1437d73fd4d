//! `quartic train`: trains a model on a built-in task or a text file, with a progress bar,
//! checkpoints (Ctrl-C saves and exits; `--resume` continues), `metrics.csv` and `curves.png`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Args;
use dfdx::prelude::*;
use indicatif::{ProgressBar, ProgressStyle};
use quartic::models::{Model, ModelConfig};
use quartic::nn::{HasParams, Init};
use quartic::train::optim::AdamState;
use quartic::train::trainer::{self, Progress, StepRecord, TrainConfig};
use serde::Deserialize;

use super::model_args::ModelArgs;

#[derive(Args, Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainArgs {
    /// A TOML file with `[train]` and `[model]` tables (flags given here win)
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Task: sanity, match3, relation-composition, quotient-composition, function-composition,
    /// path-composition, triangles, k-hop (or text, with --data) [default: sanity]
    #[arg(long)]
    pub task: Option<String>,
    /// Train a causal character-level language model on this text file
    #[arg(long)]
    pub data: Option<String>,
    /// Context length for --data [default: 64]
    #[arg(long)]
    pub context: Option<usize>,
    /// Optimizer steps [default: 600]
    #[arg(long)]
    pub steps: Option<usize>,
    /// Sequences per batch [default: 32]
    #[arg(long)]
    pub batch: Option<usize>,
    /// Peak learning rate [default: 0.003]
    #[arg(long)]
    pub lr: Option<f64>,
    /// Warmup steps [default: 50]
    #[arg(long)]
    pub warmup: Option<usize>,
    /// AdamW weight decay [default: 0.01]
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Gradient-norm clip, 0 for none [default: 1.0]
    #[arg(long)]
    pub clip: Option<f64>,
    /// Evaluate on held-out batches every this many steps [default: 100]
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Held-out batches per evaluation [default: 8]
    #[arg(long)]
    pub eval_batches: Option<usize>,
    /// Seed of the data and the initial weights [default: 0]
    #[arg(long)]
    pub seed: Option<u64>,
    /// Checkpoint every this many steps [default: 200]
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Output directory (checkpoint.safetensors, metrics.csv, curves.png) [default: runs/latest]
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Run each batch as this many shards at once, each with its own forward and backward
    /// pass (results change by rounding only) [default: 2]
    #[arg(long)]
    pub shards: Option<usize>,
    /// Continue the run in --out from its checkpoint (its saved settings are used)
    #[arg(long)]
    #[serde(skip)]
    pub resume: bool,
    /// No progress bar (one line per evaluation instead)
    #[arg(long)]
    #[serde(skip)]
    pub quiet: bool,
    #[command(flatten)]
    #[serde(skip)]
    pub model: ModelArgs,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    train: Option<TrainArgs>,
    model: Option<ModelArgs>,
}

fn read_config(path: &PathBuf) -> quartic::Result<ConfigFile> {
    let text = std::fs::read_to_string(path).map_err(|e| quartic::Error::Io {
        path: path.display().to_string(),
        message: format!("cannot read the config: {e}"),
    })?;
    toml::from_str(&text).map_err(|e| quartic::Error::Io {
        path: path.display().to_string(),
        message: format!("bad config: {}", e.message()),
    })
}

impl TrainArgs {
    /// Flags over the config file over the defaults.
    pub fn resolve(&self) -> quartic::Result<(TrainConfig, ModelArgs)> {
        let file = match &self.config {
            Some(p) => read_config(p)?,
            None => ConfigFile::default(),
        };
        let f = file.train.unwrap_or_default();
        let d = TrainConfig::default();
        let cfg = TrainConfig {
            task: self.task.clone().or(f.task).unwrap_or(d.task),
            data: self.data.clone().or(f.data),
            context: self.context.or(f.context).unwrap_or(d.context),
            steps: self.steps.or(f.steps).unwrap_or(d.steps),
            batch: self.batch.or(f.batch).unwrap_or(d.batch),
            lr: self.lr.or(f.lr).unwrap_or(d.lr),
            warmup: self.warmup.or(f.warmup).unwrap_or(d.warmup),
            min_lr_ratio: d.min_lr_ratio,
            weight_decay: self
                .weight_decay
                .or(f.weight_decay)
                .unwrap_or(d.weight_decay),
            clip: self.clip.or(f.clip).unwrap_or(d.clip),
            eval_every: self.eval_every.or(f.eval_every).unwrap_or(d.eval_every),
            eval_batches: self
                .eval_batches
                .or(f.eval_batches)
                .unwrap_or(d.eval_batches),
            seed: self.seed.or(f.seed).unwrap_or(d.seed),
            checkpoint_every: self
                .checkpoint_every
                .or(f.checkpoint_every)
                .unwrap_or(d.checkpoint_every),
            out: self.out.clone().or(f.out).unwrap_or(d.out),
            shards: self.shards.or(f.shards).unwrap_or(d.shards),
        };
        Ok((cfg, self.model.clone().or(file.model)))
    }
}

/// A progress bar with loss, accuracy, steps/s and ETA.
struct Bar {
    bar: Option<ProgressBar>,
    quiet: bool,
}

impl Progress for Bar {
    fn start(&mut self, first: usize, total: usize) {
        if self.quiet {
            return;
        }
        let bar = ProgressBar::new(total as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg} {per_sec} ETA {eta}",
            )
            .expect("a valid template"),
        );
        bar.set_position(first as u64);
        bar.reset_eta();
        self.bar = Some(bar);
    }
    fn step(&mut self, r: &StepRecord) {
        let eval = r
            .eval
            .map(|(l, a)| format!(" | held-out loss {l:.4} acc {:.1}%", a * 100.0))
            .unwrap_or_default();
        match &self.bar {
            Some(bar) => {
                bar.set_position(r.step as u64);
                bar.set_message(format!("loss {:.4} acc {:.1}%", r.loss, r.accuracy * 100.0));
                if !eval.is_empty() {
                    bar.println(format!(
                        "step {:>6}: train loss {:.4}{eval}",
                        r.step, r.loss
                    ));
                }
            }
            None if !eval.is_empty() => {
                println!("step {:>6}: train loss {:.4}{eval}", r.step, r.loss)
            }
            None => {}
        }
    }
    fn message(&mut self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => println!("{text}"),
        }
    }
    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

pub fn run(args: &TrainArgs) -> quartic::Result<()> {
    let dev = Cpu::default();
    let (cfg, model_args) = args.resolve()?;
    let (mut model, adam, cfg, start) = if args.resume {
        let path = cfg.checkpoint_path();
        let (model, adam, saved, step) = trainer::resume::<f32, Cpu>(&path, &dev)?;
        println!(
            "resuming {} at step {step} of {} (saved settings)",
            path.display(),
            saved.steps
        );
        (model, adam, saved, step)
    } else {
        let task = cfg.task()?;
        let mut config = model_args.config(task.num_tokens(), task.max_len(), task.causal())?;
        if let ModelConfig::Graph(g) = &mut config {
            // a graph task's structure goes in as edge tokens, its answers come from the edges
            g.io.edge_vocab = task.edge_vocab();
            g.io.edge_classes = task.edge_classes();
        }
        let model = Model::<f32, Cpu>::new(&config, None, &Init::random(&dev, cfg.seed))?;
        (model, AdamState::default(), cfg, 0)
    };
    let task = cfg.task()?;
    println!(
        "task {} | model {} | {} parameters | {} steps × batch {} | out {}",
        task.name(),
        describe(&model),
        model.num_params(),
        cfg.steps,
        cfg.batch,
        cfg.out.display()
    );
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        let _ = ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst));
    }
    // without a terminal (a pipe, a CI log) the bar would draw nothing: print lines instead
    use std::io::IsTerminal;
    let mut bar = Bar {
        bar: None,
        quiet: args.quiet || !std::io::stderr().is_terminal(),
    };
    let report = trainer::train(&mut model, &cfg, adam, start, Some(&stop), &mut bar)?;
    if let Some((loss, acc)) = report.eval {
        println!("held-out: loss {loss:.4}, accuracy {:.2}%", acc * 100.0);
    }
    println!(
        "checkpoint {} | metrics {} | plot {}",
        report.checkpoint.display(),
        cfg.out.join("metrics.csv").display(),
        cfg.out.join("curves.png").display()
    );
    Ok(())
}

pub fn describe<E: quartic::tensor::Real, D: Device<E>>(model: &Model<E, D>) -> String {
    match model {
        Model::Graph(g) => format!(
            "graph transformer, rule `{}` × {} (dim {}, dim_edges {}{})",
            g.rule.name,
            g.config.depth,
            g.config.dim,
            g.config.dim_edges,
            if g.config.causal { ", causal" } else { "" }
        ),
        Model::MultiStream(m) => format!(
            "multi-stream transformer × {} ({} streams, dim {})",
            m.config.depth, m.config.num_streams, m.config.dim
        ),
    }
}
