//! `quartic forward`: logits of a model for given tokens, as JSON (for snapshot tests from a
//! shell). The model is a checkpoint, or a rule with random weights from `--seed`.

use std::path::PathBuf;

use clap::Args;
use dfdx::prelude::*;
use quartic::models::Model;
use quartic::nn::Init;
use quartic::train::checkpoint;

use super::model_args::ModelArgs;

#[derive(Args, Debug)]
pub struct ForwardArgs {
    /// Comma-separated token ids, e.g. 3,1,4,1,5
    #[arg(long, value_delimiter = ',', required = true)]
    pub tokens: Vec<usize>,
    /// A checkpoint (instead of a rule with random weights)
    #[arg(long, conflicts_with = "rule")]
    pub checkpoint: Option<PathBuf>,
    /// Seed of the random weights
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A causal model
    #[arg(long)]
    pub causal: bool,
    /// Vocabulary of the random model
    #[arg(long, default_value_t = 16)]
    pub num_tokens: usize,
    #[command(flatten)]
    pub model: ModelArgs,
}

pub fn run(args: &ForwardArgs) -> quartic::Result<()> {
    let dev = Cpu::default();
    let model: Model<f32, Cpu> = match &args.checkpoint {
        Some(path) => checkpoint::load(path)?.model(&dev)?,
        None => {
            let max_len = args.tokens.len().max(1);
            let cfg = args.model.config(args.num_tokens, max_len, args.causal)?;
            Model::new(&cfg, None, &Init::random(&dev, args.seed))?
        }
    };
    if args.tokens.is_empty() {
        return Err(quartic::Error::config(
            "--tokens",
            "give at least one token",
        ));
    }
    let n = args.tokens.len();
    let out = model.forward::<NoneTape>(&args.tokens, 1, n, None)?;
    let (_, _, v) = *out.logits.shape();
    let values = out.logits.as_vec();
    let rows: Vec<Vec<f32>> = values.chunks(v).map(|c| c.to_vec()).collect();
    let json = serde_json::json!({
        "tokens": args.tokens,
        "shape": [1, n, v],
        "logits": [rows],
    });
    println!(
        "{}",
        serde_json::to_string(&json).expect("plain data serializes")
    );
    Ok(())
}
