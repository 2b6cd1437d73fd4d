//! `quartic import-reference`: a PyTorch `state_dict` of the original (saved as safetensors)
//! plus its constructor config (JSON) → a checkpoint of ours computing the same function.

use std::path::PathBuf;

use clap::Args;
use dfdx::prelude::*;
use quartic::fixtures::read_safetensors;
use quartic::models::reference::ReferenceModel;
use quartic::nn::{HasParams, Init};
use quartic::train::checkpoint::{self, TrainState};

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The state_dict as safetensors (keys as in PyTorch; a `param.` prefix is stripped)
    #[arg(long)]
    pub weights: PathBuf,
    /// The constructor config as JSON: `{"cls": "QuarticTransformer", "dim": ..., ...}` (or a
    /// JSON with that under "config")
    #[arg(long)]
    pub config: PathBuf,
    /// Where to write our checkpoint
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: &ImportArgs) -> quartic::Result<()> {
    let io = |p: &PathBuf, m: String| quartic::Error::Io {
        path: p.display().to_string(),
        message: m,
    };
    let text =
        std::fs::read_to_string(&args.config).map_err(|e| io(&args.config, e.to_string()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| io(&args.config, format!("not JSON: {e}")))?;
    let config = json.get("config").cloned().unwrap_or(json);
    let reference = ReferenceModel::from_config(&config)?;
    let tensors = read_safetensors(&args.weights)?;
    let prefixed = tensors.keys().any(|k| k.starts_with("param."));
    let state = tensors
        .into_iter()
        .filter_map(|(k, t)| {
            let name = if prefixed {
                k.strip_prefix("param.")?.to_string()
            } else {
                k
            };
            Some((name, (t.dims, t.values)))
        })
        .collect();
    let params = reference.import(&state)?;
    let dev = Cpu::default();
    let model = quartic::models::Model::<f32, Cpu>::new(
        &reference.model_config()?,
        None,
        &Init::from_map(&dev, params),
    )?;
    checkpoint::save(&args.out, &model, None, &TrainState::default())?;
    println!(
        "imported {} ({} parameters) into {}",
        config
            .get("cls")
            .and_then(|c| c.as_str())
            .unwrap_or("model"),
        model.num_params(),
        args.out.display()
    );
    Ok(())
}
