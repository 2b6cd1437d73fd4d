//! `quartic forward`: logits of a model for given tokens, as JSON (for snapshot tests from a
//! shell). The model is a checkpoint, or a rule with random weights from `--seed`. Logits that
//! are not finite are reported (where, and how many), never printed as numbers or `null`.

use std::path::PathBuf;

use clap::Args;
use dfdx::prelude::*;
use quartic::models::footprint::Use;
use quartic::models::Model;
use quartic::nn::Init;
use quartic::train::checkpoint;

use super::budget::Budget;
use super::model_args::ModelArgs;
use super::output::say;

#[derive(Args, Debug)]
pub struct ForwardArgs {
    /// Comma-separated token ids, e.g. 3,1,4,1,5
    #[arg(long, value_delimiter = ',', required = true)]
    pub tokens: Vec<usize>,
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
}

pub fn run(args: &ForwardArgs) -> quartic::Result<()> {
    if args.tokens.is_empty() {
        return Err(quartic::Error::config(
            "--tokens",
            "give at least one token",
        ));
    }
    let dev = Cpu::default();
    let n = args.tokens.len();
    let what = "this forward pass";
    let model: Model<f32, Cpu> = match &args.checkpoint {
        Some(path) => {
            let given = args.model.given();
            if !given.is_empty() {
                return Err(quartic::Error::config(
                    "--checkpoint",
                    format!(
                        "the checkpoint brings its own model; {} would be ignored",
                        given.join(", ")
                    ),
                ));
            }
            let c = checkpoint::load(path)?;
            args.budget.check_model(
                what,
                &c.config,
                c.rule_source.as_deref(),
                1,
                n,
                Use::Forward,
            )?;
            c.model(&dev)?
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
            Model::new(&cfg, None, &Init::random(&dev, args.seed.unwrap_or(0)))?
        }
    };
    let out = model.forward::<NoneTape>(&args.tokens, 1, n, None)?;
    let (_, _, v) = *out.logits.shape();
    let values = out.logits.as_vec();
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
