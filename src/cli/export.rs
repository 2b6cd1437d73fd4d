//! `quartic export-reference`: a checkpoint of ours → the PyTorch original's `state_dict`
//! (safetensors) and the constructor config it takes (JSON); the inverse of `import-reference`.

use std::path::PathBuf;

use clap::Args;
use quartic::models::reference::ReferenceModel;
use quartic::train::checkpoint;

use super::output::say;

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// A checkpoint of a model the original can compute (`taylor` as QuarticTransformer,
    /// `relational` as RelationalTransformer, the multi-stream model), e.g. one imported
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Where to write the state_dict (safetensors, f32, PyTorch's names)
    #[arg(long)]
    pub weights: PathBuf,
    /// Where to write the constructor config (JSON with "cls")
    #[arg(long)]
    pub config: PathBuf,
}

pub fn run(args: &ExportArgs) -> quartic::Result<()> {
    if args.weights == args.config {
        return Err(quartic::Error::config(
            "export-reference",
            "--weights and --config name the same file",
        ));
    }
    let ckpt = checkpoint::load(&args.checkpoint)?;
    let reference = ReferenceModel::from_model_config(&ckpt.config, ckpt.rule_source.as_deref())?;
    let state = reference.export_state(&ckpt.params)?;
    let mut names: Vec<&String> = state.keys().collect();
    names.sort();
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = names
        .into_iter()
        .map(|name| {
            let (dims, values) = &state[name];
            let bytes = quartic::files::f32_bytes(values.iter().map(|&x| x as f32));
            (name.clone(), dims.clone(), bytes)
        })
        .collect();
    let data = quartic::files::encode_safetensors(&args.weights, &tensors, None)?;
    let config =
        serde_json::to_string_pretty(&reference.config_json()).map_err(|e| quartic::Error::Io {
            path: args.config.display().to_string(),
            message: e.to_string(),
        })?;
    quartic::files::write_atomic(&args.weights, &data)?;
    quartic::files::write_atomic(&args.config, config.as_bytes())?;
    say!(
        "exported {} tensors to {} and the config to {}",
        tensors.len(),
        args.weights.display(),
        args.config.display()
    )
}
