//! `quartic predict`: a model trained on graph files predicts the graphs of another file, one
//! JSON line per graph in the file's order, with field names beside the file's own: `y_pred`
//! (one per graph, or one per node) or `edge_pred` (per labelled pair, in the layout of the
//! file's `edge_label`). Class ids for a classifier, values for a regression.

use std::path::{Path, PathBuf};

use clap::Args;
use quartic::data::graphs::{read_graphs, GraphRecord};
use quartic::models::footprint::Use;
use quartic::models::Readout;
use quartic::train::checkpoint::{self, Checkpoint};
use quartic::train::predict::{graph_outputs, readout_of, GraphOutputs};
use quartic::train::trainer::TrainConfig;

use super::budget::Budget;
use super::device::DeviceArg;
use super::output::say;

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// A checkpoint of a model trained on graph files (`quartic train --graphs`)
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The graphs to predict (JSON Lines or .safetensors, as for training; targets not needed)
    #[arg(long)]
    pub graphs: PathBuf,
    /// Where to write the predictions (JSON Lines)
    #[arg(long)]
    pub out: PathBuf,
    /// Replace --out if it exists (without it an existing file is refused)
    #[arg(long)]
    pub overwrite: bool,
    /// Graphs per forward pass
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: u64,
    #[command(flatten)]
    pub budget: Budget,
    #[command(flatten)]
    pub device: DeviceArg,
}

/// A checkpoint of a run on graph files, or why it is not one.
pub fn graph_checkpoint(path: &Path) -> quartic::Result<Checkpoint> {
    let ckpt = checkpoint::load(path)?;
    let trained: Option<TrainConfig> = serde_json::from_value(ckpt.train.train_config.clone()).ok();
    if trained.is_some_and(|t| t.graphs.is_some()) {
        return Ok(ckpt);
    }
    Err(quartic::Error::config(
        "--checkpoint",
        format!(
            "{} was not trained on graph files (`quartic train --graphs`), so it does not read \
             them",
            path.display()
        ),
    ))
}

/// The graphs of `path`, after checking that `model` can be run on them within the budget.
pub fn read_for(
    path: &Path,
    ckpt: &Checkpoint,
    budget: &Budget,
    batch: usize,
    what: &str,
) -> quartic::Result<Vec<GraphRecord>> {
    let graphs = read_graphs(path)?;
    let longest = graphs.iter().map(|g| g.num_nodes).max().unwrap_or(1);
    budget.check_model(
        what,
        &ckpt.config,
        ckpt.rule_source.as_deref(),
        batch.min(graphs.len()).max(1),
        longest,
        Use::Forward,
    )?;
    Ok(graphs)
}

pub fn run(args: &PredictArgs) -> quartic::Result<()> {
    if same_file(&args.out, &args.graphs) {
        return Err(quartic::Error::config(
            "--out",
            "names the graph file being read; write the predictions to another file",
        ));
    }
    if args.out.exists() && !args.overwrite {
        return Err(quartic::Error::config(
            "--out",
            format!(
                "{} exists; give --overwrite to replace it, or another file",
                args.out.display()
            ),
        ));
    }
    let ckpt = graph_checkpoint(&args.checkpoint)?;
    let batch = args.batch as usize;
    let graphs = read_for(
        &args.graphs,
        &ckpt,
        &args.budget,
        batch,
        "these predictions",
    )?;
    let outputs = quartic::on_device!(args.device.device, 0, |dev| {
        let model = ckpt.model::<f32, _>(&dev)?;
        graph_outputs(&model, &graphs, batch)
    })?;
    let readout = readout_of(&ckpt.config);
    let mut text = String::new();
    for (k, (g, out)) in graphs.iter().zip(&outputs).enumerate() {
        text.push_str(&prediction_line(k, g, out, readout).to_string());
        text.push('\n');
    }
    quartic::files::write_atomic(&args.out, text.as_bytes())?;
    let what = match (readout, outputs.first().is_some_and(|o| o.regression)) {
        (Readout::Graph, false) => "a class per graph",
        (Readout::Graph, true) => "a value per graph",
        (Readout::Nodes, false) => "a class per node",
        (Readout::Nodes, true) => "a value per node",
        (Readout::Edges, false) => "a class per labelled pair",
        (Readout::Edges, true) => "a value per labelled pair",
    };
    say!(
        "predicted {} graphs ({what}) into {}",
        graphs.len(),
        args.out.display()
    )
}

/// One graph's predictions as a JSON object.
fn prediction_line(
    k: usize,
    g: &GraphRecord,
    out: &GraphOutputs,
    readout: Readout,
) -> serde_json::Value {
    let number = |v: f64| -> serde_json::Value {
        if out.regression {
            // the model computes in f32: the shortest decimal that reads back as that f32
            let shortest: f64 = (v as f32).to_string().parse().unwrap_or(v);
            serde_json::json!(shortest)
        } else {
            serde_json::json!(v as usize)
        }
    };
    match readout {
        Readout::Graph => serde_json::json!({"graph": k, "y_pred": number(out.prediction(0))}),
        Readout::Nodes => {
            let y: Vec<_> = (0..out.rows).map(|i| number(out.prediction(i))).collect();
            serde_json::json!({"graph": k, "y_pred": y})
        }
        Readout::Edges => {
            let n = out.nodes;
            // the file's labelled pairs when it lists them, else every ordered pair row-major
            let pairs: Vec<[usize; 2]> = match g.edge_label.as_ref().and_then(|l| l.pairs.clone()) {
                Some(p) => p,
                None => (0..n * n).map(|c| [c / n, c % n]).collect(),
            };
            let pred: Vec<_> = pairs
                .iter()
                .map(|&[i, j]| number(out.prediction(i * n + j)))
                .collect();
            let (sources, targets): (Vec<usize>, Vec<usize>) =
                pairs.iter().map(|&[i, j]| (i, j)).unzip();
            serde_json::json!({
                "graph": k,
                "edge_label_index": [sources, targets],
                "edge_pred": pred,
            })
        }
    }
}

/// Whether two paths name the same existing file.
fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
