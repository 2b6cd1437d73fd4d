//! `quartic forward`: logits of a model for given tokens, as JSON (for snapshot tests from a
//! shell). The model is a checkpoint, or a rule with random weights from `--seed`. With
//! `--graphs FILE` a checkpoint trained on graph files reads every graph of the file and prints
//! one line per graph: its outputs where the model reads them (node, edge or graph logits, or a
//! regression's values). Outputs that are not finite are reported (where, and how many), never
//! printed as numbers or `null`.

use std::path::{Path, PathBuf};

use clap::Args;
use dfdx::prelude::*;
use quartic::backend::Backend;
use quartic::models::footprint::Use;
use quartic::models::{Model, Readout};
use quartic::nn::Init;
use quartic::train::checkpoint;
use quartic::train::predict::graph_outputs;

use super::budget::Budget;
use super::device::DeviceArg;
use super::model_args::ModelArgs;
use super::output::say;

#[derive(Args, Debug)]
pub struct ForwardArgs {
    /// Comma-separated token ids, e.g. 3,1,4,1,5
    #[arg(long, value_delimiter = ',', required_unless_present = "graphs")]
    pub tokens: Vec<usize>,
    /// A graph file (JSON Lines or .safetensors) for a --checkpoint trained on graph files: one
    /// line of outputs per graph
    #[arg(long, requires = "checkpoint", conflicts_with = "tokens")]
    pub graphs: Option<PathBuf>,
    /// Graphs per forward pass, with --graphs
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: u64,
    /// A checkpoint (instead of a rule with random weights); it brings its own model
    #[arg(long, conflicts_with_all = ["rule", "causal", "seed", "num_tokens"])]
    pub checkpoint: Option<PathBuf>,
    /// Seed of the random weights [default: 0]
    #[arg(long)]
    pub seed: Option<u64>,
    /// A causal model (random weights only: a checkpoint says whether it is causal)
    #[arg(long)]
    pub causal: bool,
    /// Vocabulary of the random model [default: 16]
    #[arg(long)]
    pub num_tokens: Option<usize>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub budget: Budget,
    #[command(flatten)]
    pub device: DeviceArg,
}

pub fn run(args: &ForwardArgs) -> quartic::Result<()> {
    if let (Some(graphs), Some(path)) = (&args.graphs, &args.checkpoint) {
        return quartic::on_device!(args.device.device, 0, |dev| run_graphs(
            &dev, args, graphs, path
        ));
    }
    if args.tokens.is_empty() {
        return Err(quartic::Error::config(
            "--tokens",
            "give at least one token",
        ));
    }
    quartic::on_device!(
        args.device.device,
        args.seed.unwrap_or(0),
        |dev| run_tokens(&dev, args)
    )
}

/// `--tokens`: the logits of one sequence.
fn run_tokens<D: Backend<f32>>(dev: &D, args: &ForwardArgs) -> quartic::Result<()> {
    let n = args.tokens.len();
    let what = "this forward pass";
    let model: Model<f32, D> = match &args.checkpoint {
        Some(path) => {
            refuse_model_flags(args)?;
            let c = checkpoint::load(path)?;
            args.budget.check_model(
                what,
                &c.config,
                c.rule_source.as_deref(),
                1,
                n,
                Use::Forward,
            )?;
            c.model(dev)?
        }
        None => {
            if args.model.pool.is_some() {
                return Err(quartic::Error::config(
                    "--pool",
                    "pools the nodes for a graph-level target, which a forward pass of token \
                     logits has none of; give a graph run's --checkpoint",
                ));
            }
            let cfg = args
                .model
                .config(args.num_tokens.unwrap_or(16), n, args.causal)?;
            args.budget
                .check_model(what, &cfg, None, 1, n, Use::Forward)?;
            Model::new(&cfg, None, &Init::random(dev, args.seed.unwrap_or(0)))?
        }
    };
    let out = model.forward::<NoneTape>(&args.tokens, 1, n, None)?;
    let (_, _, v) = *out.logits.shape();
    let values = quartic::tensor::host::values(&out.logits);
    if let Some(first) = values.iter().position(|x| !x.is_finite()) {
        return Err(quartic::Error::NotFinite(format!(
            "{} of the {} logits, the first {} at position {}, class {}",
            values.iter().filter(|x| !x.is_finite()).count(),
            values.len(),
            values[first],
            first / v,
            first % v
        )));
    }
    let rows: Vec<Vec<f32>> = values.chunks(v).map(|c| c.to_vec()).collect();
    let json = serde_json::json!({
        "tokens": args.tokens,
        "shape": [1, n, v],
        "logits": [rows],
    });
    say!(
        "{}",
        serde_json::to_string(&json).expect("plain data serializes")
    )
}

/// `--graphs`: every graph's outputs, one JSON line each.
fn run_graphs<D: Backend<f32>>(
    dev: &D,
    args: &ForwardArgs,
    graphs: &Path,
    path: &Path,
) -> quartic::Result<()> {
    refuse_model_flags(args)?;
    let ckpt = super::predict::graph_checkpoint(path)?;
    let batch = args.batch as usize;
    let records =
        super::predict::read_for(graphs, &ckpt, &args.budget, batch, "this forward pass")?;
    let model = ckpt.model::<f32, D>(dev)?;
    let readout = quartic::train::predict::readout_of(&ckpt.config);
    let name = match readout {
        Readout::Nodes => "nodes",
        Readout::Edges => "edges",
        Readout::Graph => "graph",
    };
    for (k, out) in graph_outputs(&model, &records, batch)?.iter().enumerate() {
        let rows: Vec<&[f32]> = (0..out.rows).map(|r| out.row(r)).collect();
        let key = if out.regression { "values" } else { "logits" };
        let mut line = serde_json::json!({
            "graph": k,
            "readout": name,
            "shape": [out.rows, out.width],
        });
        line[key] = serde_json::json!(rows);
        say!("{line}")?;
    }
    Ok(())
}

/// A checkpoint brings its own model: model flags beside it would be ignored.
fn refuse_model_flags(args: &ForwardArgs) -> quartic::Result<()> {
    let given = args.model.given();
    if given.is_empty() {
        return Ok(());
    }
    Err(quartic::Error::config(
        "--checkpoint",
        format!(
            "the checkpoint brings its own model; {} would be ignored",
            given.join(", ")
        ),
    ))
}
