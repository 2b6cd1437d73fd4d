//! `quartic import-reference`: a PyTorch `state_dict` of the original (saved as safetensors)
//! plus its constructor config (JSON) → a checkpoint of ours computing the same function.

use std::path::PathBuf;

use clap::Args;
use dfdx::prelude::*;
use quartic::fixtures::read_safetensors;
use quartic::memory::Estimate;
use quartic::models::footprint::parameter_count;
use quartic::models::reference::ReferenceModel;
use quartic::nn::{HasParams, Init};
use quartic::train::checkpoint::{self, TrainState};

use super::budget::Budget;
use super::output::say;

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
    #[command(flatten)]
    pub budget: Budget,
}

pub fn run(args: &ImportArgs) -> quartic::Result<()> {
    let io = |p: &PathBuf, m: String| quartic::Error::Io {
        path: p.display().to_string(),
        message: m,
    };
    let text =
        quartic::files::read_text_capped(&args.config, quartic::files::CONFIG_CAP, "the config")?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| io(&args.config, format!("not JSON: {e}")))?;
    let config = json.get("config").cloned().unwrap_or(json);
    let reference = ReferenceModel::from_config(&config)?;
    let model_config = reference.model_config()?;
    // the model, its f64 copy while importing and the weights file's values
    let params = parameter_count(&model_config, None)?;
    let mut estimate = Estimate::default();
    estimate.add(
        "parameters, read and converted",
        params.saturating_mul(4 + 8 + 8),
    );
    args.budget.check("importing this model", &estimate)?;
    let tensors = read_safetensors(&args.weights)?;
    // a fixture file holds inputs and outputs too: its parameters are the `param.` ones
    let prefixed = tensors.keys().any(|k| k.starts_with("param."));
    let mut state = std::collections::HashMap::new();
    for (key, t) in tensors {
        let name = match key.strip_prefix("param.") {
            Some(n) => n.to_string(),
            None if prefixed => continue,
            None => key,
        };
        if !t.float {
            return Err(io(
                &args.weights,
                format!("tensor `{name}` is not floating point; weights must be F32 or F64"),
            ));
        }
        state.insert(name, (t.dims, t.values));
    }
    let params = reference.import(&state)?;
    if let Some((name, (_, values))) = params
        .iter()
        .find(|(_, (_, v))| v.iter().any(|x| !x.is_finite()))
    {
        let i = values.iter().position(|x| !x.is_finite()).unwrap_or(0);
        return Err(io(
            &args.weights,
            format!("parameter `{name}` holds {} at index {i}", values[i]),
        ));
    }
    let dev = Cpu::default();
    let model = quartic::models::Model::<f32, Cpu>::new(
        &model_config,
        None,
        &Init::from_map(&dev, params),
    )?;
    checkpoint::save(&args.out, &model, None, &TrainState::default())?;
    say!(
        "imported {} ({} parameters) into {}",
        config
            .get("cls")
            .and_then(|c| c.as_str())
            .unwrap_or("model"),
        model.num_params(),
        args.out.display()
    )
}
