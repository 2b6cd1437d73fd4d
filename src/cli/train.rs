//! `quartic train`: trains a model on a built-in task or a text file, with a progress bar,
//! checkpoints (Ctrl-C, SIGTERM and SIGHUP save and exit; `--resume` continues), `metrics.csv`
//! and `curves.png`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Args;
use dfdx::prelude::*;
use indicatif::{ProgressBar, ProgressStyle};
use quartic::models::footprint::Use;
use quartic::models::{Model, ModelConfig};
use quartic::nn::{HasParams, Init};
use quartic::train::objective::{Metric, Objective};
use quartic::train::run_dir::RunDir;
use quartic::train::shards::RunShards;
use quartic::train::trainer::{self, Progress, Start, StepRecord, TrainConfig};
use serde::Deserialize;

use super::budget::Budget;
use super::device::DeviceArg;
use super::model_args::ModelArgs;
use super::output::{self, say, signal_name, StopSignals};

/// `--task`'s help: the built-in tasks, from their registry.
fn task_help() -> String {
    format!(
        "Task: {} (or text, with --data; graphs, with --graphs) [default: sanity]",
        quartic::train::tasks::built_in_names()
    )
}

#[derive(Args, Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainArgs {
    /// A TOML file with `[train]` and `[model]` tables (flags given here win)
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    #[arg(long, help = task_help())]
    pub task: Option<String>,
    /// Train a causal character-level language model on this text file
    #[arg(long)]
    pub data: Option<String>,
    /// Context length for --data [default: 64]
    #[arg(long)]
    pub context: Option<usize>,
    /// Train on the graphs of this file (JSON Lines or .safetensors; README: "Bring your own
    /// graphs"), held out on --valid, predicting --target
    #[arg(long)]
    pub graphs: Option<String>,
    /// The held-out graph file for --graphs (never trained on)
    #[arg(long)]
    pub valid: Option<String>,
    /// What --graphs predicts: graph or node (from `y`), or edge (from `edge_label`)
    #[arg(long)]
    pub target: Option<String>,
    /// How --graphs targets are learnt: cross-entropy (class ids), or mse or mae (real values:
    /// a regression, scored by the mean absolute error) [default: cross-entropy]
    #[arg(long)]
    pub loss: Option<String>,
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
    /// Continue the run in --out (default runs/latest) from its checkpoint, with the run's
    /// saved settings, writing to the same folder
    #[arg(long, conflicts_with = "overwrite")]
    #[serde(skip)]
    pub resume: bool,
    /// Start from this checkpoint's model and weights, with a fresh optimizer at step 0 and
    /// this run's task and schedule (fine-tuning, or a curriculum of tasks); the model's
    /// shape comes from the checkpoint, so model flags are refused with it
    #[arg(long, value_name = "CHECKPOINT", conflicts_with = "resume")]
    pub init: Option<PathBuf>,
    /// Start afresh in --out even if it holds a run (its checkpoint, metrics and plot are
    /// replaced); without it such a folder is refused
    #[arg(long)]
    #[serde(skip)]
    pub overwrite: bool,
    /// No progress bar (one line per evaluation instead)
    #[arg(long)]
    #[serde(skip)]
    pub quiet: bool,
    #[command(flatten)]
    #[serde(skip)]
    pub model: ModelArgs,
    #[command(flatten)]
    #[serde(skip)]
    pub budget: Budget,
    /// Where the run computes; not a setting of the run (`--resume` may move it)
    #[command(flatten)]
    #[serde(skip)]
    pub device: DeviceArg,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    train: Option<TrainArgs>,
    model: Option<ModelArgs>,
}

fn read_config(path: &PathBuf) -> quartic::Result<ConfigFile> {
    let text = quartic::files::read_text_capped(path, quartic::files::CONFIG_CAP, "the config")?;
    toml::from_str(&text).map_err(|e| quartic::Error::Io {
        path: path.display().to_string(),
        message: format!("bad config: {}", e.message()),
    })
}

impl TrainArgs {
    /// The training and model flags that were given (with `--resume` they would be ignored).
    fn given(&self) -> Vec<&'static str> {
        let flags = [
            ("--config", self.config.is_some()),
            ("--task", self.task.is_some()),
            ("--data", self.data.is_some()),
            ("--context", self.context.is_some()),
            ("--graphs", self.graphs.is_some()),
            ("--valid", self.valid.is_some()),
            ("--target", self.target.is_some()),
            ("--loss", self.loss.is_some()),
            ("--steps", self.steps.is_some()),
            ("--batch", self.batch.is_some()),
            ("--lr", self.lr.is_some()),
            ("--warmup", self.warmup.is_some()),
            ("--weight-decay", self.weight_decay.is_some()),
            ("--clip", self.clip.is_some()),
            ("--eval-every", self.eval_every.is_some()),
            ("--eval-batches", self.eval_batches.is_some()),
            ("--seed", self.seed.is_some()),
            ("--checkpoint-every", self.checkpoint_every.is_some()),
            ("--shards", self.shards.is_some()),
            ("--init", self.init.is_some()),
        ];
        let mut given: Vec<&str> = flags.iter().filter(|(_, g)| *g).map(|(f, _)| *f).collect();
        given.extend(self.model.given());
        given
    }

    /// Flags over the config file over the defaults: the run's settings, the model's, and
    /// the checkpoint the weights start from (`--init`).
    pub fn resolve(&self) -> quartic::Result<(TrainConfig, ModelArgs, Option<PathBuf>)> {
        let file = match &self.config {
            Some(p) => read_config(p)?,
            None => ConfigFile::default(),
        };
        let f = file.train.unwrap_or_default();
        let d = TrainConfig::default();
        let data = self.data.clone().or(f.data);
        let graphs = self.graphs.clone().or(f.graphs);
        let task = self.task.clone().or(f.task);
        // a file's task is named by the file; another task with it would be ignored
        let from_file = match (&data, &graphs) {
            (Some(_), _) => Some("text"),
            (None, Some(_)) => Some("graphs"),
            (None, None) => None,
        };
        let task = match (task, from_file) {
            (Some(t), Some(kind)) if t != kind => {
                return Err(quartic::Error::config(
                    "--task",
                    format!("`{t}` and a {kind} file: train one or the other"),
                ))
            }
            (t, kind) => t.or(kind.map(String::from)).unwrap_or(d.task.clone()),
        };
        let cfg = TrainConfig {
            task,
            data,
            context: self.context.or(f.context).unwrap_or(d.context),
            graphs,
            valid: self.valid.clone().or(f.valid),
            target: self.target.clone().or(f.target),
            loss: self.loss.clone().or(f.loss),
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
        let init = self.init.clone().or(f.init);
        Ok((cfg, self.model.clone().or(file.model), init))
    }
}

/// A progress bar with loss, accuracy, steps/s and ETA; without a terminal, one line per
/// evaluation. When standard output is closed (`train … | head`) it asks the run to stop,
/// which saves a checkpoint.
struct Bar {
    bar: Option<ProgressBar>,
    metric: Metric,
    quiet: bool,
    stop: Arc<AtomicBool>,
}

impl Bar {
    fn line(&self, text: &str) {
        if output::stdout_closed() {
            eprintln!("{text}");
        } else if say!("{text}").is_err() {
            self.stop.store(true, Ordering::SeqCst);
        }
    }
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
        let short = |v: f64| match self.metric {
            Metric::Accuracy => format!("acc {:.1}%", v * 100.0),
            Metric::MeanAbsoluteError => format!("mae {v:.4}"),
        };
        let eval = r
            .eval
            .map(|(l, a)| format!(" | held-out loss {l:.4} {}", short(a)))
            .unwrap_or_default();
        if let Some(bar) = &self.bar {
            bar.set_position(r.step as u64);
            bar.set_message(format!("loss {:.4} {}", r.loss, short(r.metric)));
        }
        if !eval.is_empty() {
            let text = format!("step {:>6}: train loss {:.4}{eval}", r.step, r.loss);
            match &self.bar {
                Some(bar) => bar.suspend(|| self.line(&text)),
                None => self.line(&text),
            }
        }
    }
    fn message(&mut self, text: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| self.line(text)),
            None => self.line(text),
        }
    }
    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// Trains; the exit status is 0, or 128 + the signal's number when a signal stopped the run
/// (130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP).
pub fn run(args: &TrainArgs) -> quartic::Result<u8> {
    quartic::on_device!(args.device.device, 0, |dev| run_on(&dev, args))
}

/// The model of `--init`: the checkpoint's, with its weights, checked against this run's
/// task and memory budget before anything is written.
fn initial_model<D: RunShards<f32>>(
    dev: &D,
    path: &std::path::Path,
    cfg: &TrainConfig,
    model_args: &ModelArgs,
    budget: &Budget,
) -> quartic::Result<Model<f32, D>> {
    let flags = model_args.given();
    if !flags.is_empty() {
        return Err(quartic::Error::config(
            "--init",
            format!(
                "the model comes from the checkpoint; {} would be ignored (drop it, or train a \
                 new model without --init)",
                flags.join(", ")
            ),
        ));
    }
    let checkpoint = quartic::train::checkpoint::load(path)?;
    let task = cfg.task()?;
    trainer::check_fits(&checkpoint.config, &task).map_err(|e| {
        quartic::Error::config(
            "--init",
            format!("{} cannot learn task {}: {e}", path.display(), task.name()),
        )
    })?;
    cfg.validate()?;
    budget.check_model(
        "training",
        &checkpoint.config,
        checkpoint.rule_source.as_deref(),
        cfg.batch,
        task.max_len(),
        Use::Train { shards: cfg.shards },
    )?;
    let model = checkpoint.model::<f32, D>(dev)?;
    trainer::check_input_graph(&model, &task)?;
    Ok(model)
}

fn run_on<D: RunShards<f32>>(dev: &D, args: &TrainArgs) -> quartic::Result<u8> {
    let (cfg, model_args, init) = args.resolve()?;
    let signals = StopSignals::install()?;
    // a new run: into an empty folder, or replacing the run there with --overwrite
    let new_run = || {
        if args.overwrite {
            Start::overwrite()
        } else {
            Start::fresh()
        }
    };
    let (mut model, start, cfg) = if args.resume {
        let given = args.given();
        if !given.is_empty() {
            return Err(quartic::Error::config(
                "--resume",
                format!(
                    "a resumed run keeps its saved settings; {} would be ignored (drop it, or \
                     start a new run with another --out)",
                    given.join(", ")
                ),
            ));
        }
        let path = cfg.checkpoint_path();
        let checkpoint = quartic::train::checkpoint::load(&path)?;
        let saved = trainer::resume_config(&checkpoint, &path)?;
        args.budget.check_model(
            "training",
            &checkpoint.config,
            checkpoint.rule_source.as_deref(),
            saved.batch,
            saved.task()?.max_len(),
            Use::Train {
                shards: saved.shards,
            },
        )?;
        // `saved.out` is the folder the checkpoint was read from (--out), not the saved one
        let model = checkpoint.model::<f32, D>(dev)?;
        let step = checkpoint.train.step;
        say!(
            "resuming {} at step {step} of {} with the run's saved settings",
            path.display(),
            saved.steps
        )?;
        (model, Start::resume(checkpoint.adam, step), saved)
    } else if let Some(path) = &init {
        let model = initial_model(dev, path, &cfg, &model_args, &args.budget)?;
        (model, new_run(), cfg)
    } else {
        let task = cfg.task()?;
        let mut config = model_args.config(task.num_tokens(), task.max_len(), task.causal())?;
        if let ModelConfig::Graph(g) = &mut config {
            // a graph task's structure goes in as edge tokens, its answers come from the edges
            g.io.edge_vocab = task.edge_vocab();
            g.io.edge_classes = task.edge_classes();
            g.io.graph_classes = task.graph_classes();
            g.io.node_features = task.vocab().node_features;
            g.io.edge_features = task.vocab().edge_features;
            if let Objective::Values { scale, .. } = task.objective() {
                g.io.values = Some(scale);
            }
        }
        if model_args.pool.is_some() && task.graph_classes() == 0 {
            return Err(quartic::Error::config(
                "--pool",
                "pools the nodes for a graph-level target (--graphs FILE --target graph); \
                 this task reads nodes or edges",
            ));
        }
        cfg.validate()?;
        args.budget.check_model(
            "training",
            &config,
            None,
            cfg.batch,
            task.max_len(),
            Use::Train { shards: cfg.shards },
        )?;
        let model = Model::<f32, D>::new(&config, None, &Init::random(dev, cfg.seed))?;
        // refused before the run's folder is touched
        trainer::check_input_graph(&model, &task)?;
        (model, new_run(), cfg)
    };
    // refuse a folder that holds another run, or that another run holds, before printing
    // anything (the trainer takes the folder's lock again for the run itself)
    drop(RunDir::open(&cfg.out, start.existing)?);
    if !args.resume {
        write_resolved_config(&cfg, &model_args, &model, init.as_deref())?;
    }
    let task = cfg.task()?;
    say!(
        "task {} | model {} | {} parameters | {} steps × batch {} | out {}",
        task.name(),
        describe(&model),
        model.num_params(),
        cfg.steps,
        cfg.batch,
        cfg.out.display()
    )?;
    if let Some(params) = rule_parameters(&model) {
        say!("rule parameters: {params}")?;
    }
    if let Some(path) = &init {
        say!(
            "weights from {} (a fresh optimizer, from step 0)",
            path.display()
        )?;
    }
    if let Some(note) = task.split_note() {
        say!("data: {note}")?;
    }
    // without a terminal (a pipe, a CI log) the bar would draw nothing: print lines instead
    use std::io::IsTerminal;
    let mut bar = Bar {
        bar: None,
        metric: task.metric(),
        quiet: args.quiet || !std::io::stderr().is_terminal(),
        stop: signals.requested.clone(),
    };
    let report = trainer::train(&mut model, &cfg, start, Some(&signals.requested), &mut bar)?;
    if report.interrupted {
        if let Some(sig) = signals.received() {
            eprintln!("stopped by {}", signal_name(sig));
            return Ok(128 + sig as u8);
        }
        if output::stdout_closed() {
            // the reader of standard output went away: main exits as SIGPIPE would
            return Ok(0);
        }
        return Err(quartic::Error::Io {
            path: output::STDOUT.into(),
            message: "writing to it failed; the run stopped after saving a checkpoint".into(),
        });
    }
    if let Some((loss, value)) = report.eval {
        let metric = task.metric();
        say!(
            "held-out: loss {loss:.4}, {} {}",
            metric_words(metric),
            metric.show(value)
        )?;
        let by_size =
            trainer::evaluate_by_size(&model, &task, cfg.seed, cfg.eval_batches, cfg.batch)?;
        let probe = trainer::evaluate_probe(&model, &task)?;
        super::eval::say_by_size_and_probe(&task, &by_size, probe, cfg.eval_batches, cfg.batch)?;
    }
    say!(
        "checkpoint {} | metrics {} | plot {}",
        report.checkpoint.display(),
        cfg.out.join(quartic::train::run_dir::METRICS).display(),
        cfg.out.join(quartic::train::run_dir::PLOT).display()
    )?;
    Ok(0)
}

/// The `[train]` table of a resolved config: every setting `quartic train` takes, except the
/// output folder.
#[derive(serde::Serialize)]
struct ResolvedTrain<'a> {
    task: &'a str,
    data: Option<String>,
    context: usize,
    graphs: Option<String>,
    valid: Option<String>,
    target: Option<String>,
    loss: Option<String>,
    steps: usize,
    batch: usize,
    lr: f64,
    warmup: usize,
    weight_decay: f64,
    clip: f64,
    eval_every: usize,
    eval_batches: usize,
    seed: u64,
    checkpoint_every: usize,
    shards: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    init: Option<String>,
}

/// The `[model]` table: the widths, and every rule parameter as the model runs it (so a change
/// of a rule's defaults does not change the rerun).
#[derive(serde::Serialize)]
struct ResolvedModel {
    rule: String,
    dim: usize,
    dim_edges: usize,
    depth: usize,
    residual_streams: usize,
    pool_edges: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pool: Option<&'static str>,
    set: Vec<String>,
}

#[derive(serde::Serialize)]
struct Resolved<'a> {
    train: ResolvedTrain<'a>,
    model: Option<ResolvedModel>,
}

/// A file's path as an absolute path (as given if it has none).
fn absolute(path: &str) -> String {
    std::path::absolute(path).map_or_else(|_| path.to_string(), |p| p.display().to_string())
}

/// Writes `config.toml` into the run's folder: the settings the run resolved from its flags,
/// its `--config` and the defaults, which `quartic train --config` reads back.
fn write_resolved_config<D: Device<f32>>(
    cfg: &TrainConfig,
    args: &ModelArgs,
    model: &Model<f32, D>,
    init: Option<&std::path::Path>,
) -> quartic::Result<()> {
    let model_table = match model {
        // the checkpoint names the model (a `[model]` table beside `init` would be refused)
        _ if init.is_some() => None,
        Model::Graph(g) => {
            // rule files by their absolute paths, so the config works from any folder
            let rule = match &args.rule {
                Some(r) => quartic::rules::stack::entries(r)
                    .into_iter()
                    .map(|e| {
                        if quartic::rules::BUILTINS.iter().any(|(n, _)| *n == e) {
                            e.to_string()
                        } else {
                            absolute(e)
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(","),
                None => g.config.rule.clone(),
            };
            // every parameter's value; for layers running different rules, those every rule
            // declaring them agrees on (a setting reaches them all alike; defaults that
            // differ stay defaults)
            let mut values: Vec<(String, String)> = Vec::new();
            let mut differ: Vec<String> = Vec::new();
            for layer in &g.layers {
                for (k, v) in &layer.plan.params {
                    let v = v.to_string();
                    match values.iter().find(|(name, _)| name == k) {
                        Some((_, seen)) if *seen != v => differ.push(k.clone()),
                        Some(_) => {}
                        None => values.push((k.clone(), v)),
                    }
                }
            }
            let set = values
                .into_iter()
                .filter(|(k, _)| !differ.contains(k))
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            Some(ResolvedModel {
                rule,
                dim: g.config.dim,
                dim_edges: g.config.dim_edges,
                depth: g.config.depth,
                residual_streams: g.config.residual_streams,
                pool_edges: g.config.io.pool_edges,
                pool: (g.config.io.graph_classes > 0).then(|| g.config.io.graph_pool.name()),
                set,
            })
        }
        Model::MultiStream(_) => None,
    };
    let resolved = Resolved {
        train: ResolvedTrain {
            task: &cfg.task,
            data: cfg.data.as_deref().map(absolute),
            context: cfg.context,
            graphs: cfg.graphs.as_deref().map(absolute),
            valid: cfg.valid.as_deref().map(absolute),
            target: cfg.target.clone(),
            loss: cfg.loss.clone(),
            steps: cfg.steps,
            batch: cfg.batch,
            lr: cfg.lr,
            warmup: cfg.warmup,
            weight_decay: cfg.weight_decay,
            clip: cfg.clip,
            eval_every: cfg.eval_every,
            eval_batches: cfg.eval_batches,
            seed: cfg.seed,
            checkpoint_every: cfg.checkpoint_every,
            shards: cfg.shards,
            init: init.map(|p| absolute(&p.display().to_string())),
        },
        model: model_table,
    };
    let path = cfg.out.join(quartic::train::run_dir::CONFIG);
    let body = toml::to_string(&resolved).map_err(|e| quartic::Error::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let text = format!(
        "# The resolved settings of this run, written by {}.\n\
         # `quartic train --config {} --out NEW_FOLDER` trains it again.\n\n{body}",
        quartic::build_info::describe(),
        path.display()
    );
    quartic::files::write_atomic(&path, text.as_bytes())
}

/// A metric as a sentence says it: `accuracy`, `mean absolute error`.
pub fn metric_words(metric: Metric) -> &'static str {
    match metric {
        Metric::Accuracy => "accuracy",
        Metric::MeanAbsoluteError => "mean absolute error",
    }
}

/// Every rule parameter's value, as the model runs it: `heads = 4, dim_head = 16, ...`.
pub fn rule_parameters<E: quartic::tensor::Real, D: Device<E>>(
    model: &Model<E, D>,
) -> Option<String> {
    match model {
        Model::Graph(g) if g.rules.single().is_some() => {
            g.layers.first().map(|l| l.plan.parameter_list())
        }
        // layers running different rules: each rule's parameters once, under its name
        Model::Graph(g) => {
            let mut seen = Vec::new();
            let lists: Vec<String> = g
                .layers
                .iter()
                .filter(|l| {
                    let fresh = !seen.contains(&&l.plan.rule);
                    seen.push(&l.plan.rule);
                    fresh
                })
                .map(|l| format!("{}: {}", l.plan.rule, l.plan.parameter_list()))
                .collect();
            Some(lists.join("; "))
        }
        Model::MultiStream(_) => None,
    }
}

pub fn describe<E: quartic::tensor::Real, D: Device<E>>(model: &Model<E, D>) -> String {
    match model {
        Model::Graph(g) => format!(
            "graph transformer, {} (dim {}, dim_edges {}{})",
            match g.rules.single() {
                Some(rule) => format!("rule `{}` × {}", rule.name, g.config.depth),
                None => format!("rules `{}`", g.rules.names()),
            },
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
