//! The `quartic` command line: one module per subcommand.

pub mod budget;
pub mod check;
pub mod device;
pub mod environment;
pub mod eval;
pub mod experiment;
pub mod explain;
pub mod export;
pub mod forward;
pub mod generate;
pub mod import;
pub mod model_args;
pub mod output;
pub mod predict;
pub mod train;

use clap::{Args, Parser, Subcommand};

/// Transformers over fully connected directed graphs whose edges carry features.
#[derive(Parser, Debug)]
#[command(name = "quartic", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a model on a built-in task, a text file or graph files
    Train(train::TrainArgs),
    /// Compare rules on a task (or a suite) at matched parameter counts over seeds: tables and plots
    Experiment(experiment::ExperimentArgs),
    /// Held-out loss and accuracy (a regression: mean absolute error) of a checkpoint
    Eval(eval::EvalArgs),
    /// Print a model's logits for given tokens, or for each graph of a file, as JSON
    Forward(forward::ForwardArgs),
    /// Predict the graphs of a file with a model trained on graph files (JSON Lines)
    Predict(predict::PredictArgs),
    /// Sample text from a character-level checkpoint
    Generate(generate::GenerateArgs),
    /// Convert the PyTorch original's weights (safetensors state_dict + config JSON) to a checkpoint
    ImportReference(import::ImportArgs),
    /// Write a checkpoint as the PyTorch original's state_dict (safetensors) and config JSON
    ExportReference(export::ExportArgs),
    /// Self-test this machine's fused CPU kernels: every built-in rule's model, forward and
    /// backward, against the composite forms (fails when any disagrees)
    Check(check::CheckArgs),
    /// Explain a rule: per statement, the lowering chosen, shapes, parameters, FLOPs and
    /// activation memory at a graph size, and how they grow with it.
    Explain(ExplainArgs),
}

#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// A built-in rule (quartic, quartic_endpoints, taylor, routed, relational, triangle,
    /// edge_transformer, baseline) or a rule file.
    pub rule: String,
    /// Nodes per graph.
    #[arg(long, default_value_t = 16)]
    pub n: usize,
    /// Graphs per batch.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Node channels (the default is `train`'s).
    #[arg(long, default_value_t = model_args::DEFAULT_DIM)]
    pub dim: usize,
    /// Edge channels (the default is `train`'s).
    #[arg(long, default_value_t = model_args::DEFAULT_DIM_EDGES)]
    pub dim_edges: usize,
    /// Check and explain the rule for a causal model.
    #[arg(long)]
    pub causal: bool,
    /// Override a rule parameter, e.g. `--set heads=4` (repeatable).
    #[arg(long, value_name = "NAME=VALUE")]
    pub set: Vec<String>,
}
