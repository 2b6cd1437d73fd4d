//! Checkpoints: one safetensors file with the parameters (`param/NAME`), the optimizer moments
//! (`adam.m/NAME`, `adam.v/NAME`), and metadata: the format, the model config, the rule's text
//! and the training state as JSON. Written to a temporary file and renamed, so a crash never
//! leaves a half-written checkpoint in place of a good one.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::optim::AdamState;
use crate::error::{Error, Result};
use crate::models::{Model, ModelConfig};
use crate::nn::HasParams;
use crate::tensor::*;
use dfdx::prelude::Device;

pub const FORMAT: &str = "quartic-checkpoint-1";

/// Where training stands, enough to continue exactly.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Steps completed.
    pub step: usize,
    /// The training configuration (JSON) the run started with.
    pub train_config: serde_json::Value,
}

/// A checkpoint read back.
pub struct Checkpoint {
    pub config: ModelConfig,
    pub rule_source: Option<String>,
    pub params: HashMap<String, (Vec<usize>, Vec<f64>)>,
    pub adam: AdamState,
    pub train: TrainState,
}

fn io(path: &Path, message: impl Into<String>) -> Error {
    Error::Io {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// Writes a checkpoint atomically (temporary file in the same directory, then rename).
pub fn save<E: Real, D: Device<E>>(
    path: &Path,
    model: &Model<E, D>,
    adam: Option<&AdamState>,
    train: &TrainState,
) -> Result<()> {
    let mut blobs: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    for p in model.params() {
        let values: Vec<f32> = p
            .value
            .as_vec()
            .into_iter()
            .map(|x| x.as_f64() as f32)
            .collect();
        blobs.push((format!("param/{}", p.name), p.dims.clone(), bytes(&values)));
        if let Some(a) = adam {
            for (prefix, table) in [("adam.m", &a.m), ("adam.v", &a.v)] {
                if let Some(v) = table.get(&p.name) {
                    blobs.push((format!("{prefix}/{}", p.name), p.dims.clone(), bytes(v)));
                }
            }
        }
    }
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), FORMAT.to_string());
    meta.insert(
        "config".to_string(),
        serde_json::to_string(&model.config()).map_err(|e| io(path, e.to_string()))?,
    );
    if let Some(src) = model.rule_source() {
        meta.insert("rule_source".to_string(), src.to_string());
    }
    meta.insert(
        "train".to_string(),
        serde_json::to_string(train).map_err(|e| io(path, e.to_string()))?,
    );
    meta.insert(
        "adam_step".to_string(),
        adam.map_or(0, |a| a.step).to_string(),
    );
    let views: Vec<(String, ::safetensors::tensor::TensorView)> = blobs
        .iter()
        .map(|(name, dims, data)| {
            ::safetensors::tensor::TensorView::new(::safetensors::Dtype::F32, dims.clone(), data)
                .map(|v| (name.clone(), v))
                .map_err(|e| io(path, format!("tensor `{name}`: {e}")))
        })
        .collect::<Result<_>>()?;
    let data = ::safetensors::serialize(views, &Some(meta)).map_err(|e| io(path, e.to_string()))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e.to_string()))?;
    }
    let tmp = path.with_extension("safetensors.tmp");
    std::fs::write(&tmp, data).map_err(|e| io(&tmp, e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        io(
            path,
            format!("cannot move the new checkpoint into place: {e}"),
        )
    })?;
    Ok(())
}

/// Reads a checkpoint, with a clear error for anything that is not one of ours.
pub fn load(path: &Path) -> Result<Checkpoint> {
    let data =
        std::fs::read(path).map_err(|e| io(path, format!("cannot read the checkpoint: {e}")))?;
    let (_, metadata) = ::safetensors::SafeTensors::read_metadata(&data).map_err(|e| {
        io(
            path,
            format!("not a checkpoint (corrupt or not safetensors): {e}"),
        )
    })?;
    let meta: BTreeMap<String, String> = metadata
        .metadata()
        .clone()
        .map(|m| m.into_iter().collect())
        .unwrap_or_default();
    match meta.get("format") {
        Some(f) if f == FORMAT => {}
        Some(f) => {
            return Err(io(
                path,
                format!("checkpoint format `{f}`, this version reads `{FORMAT}`"),
            ))
        }
        None => {
            return Err(io(
                path,
                "a safetensors file but not a quartic checkpoint (no format); \
                 convert PyTorch weights with `quartic import-reference`",
            ))
        }
    }
    let config: ModelConfig = serde_json::from_str(
        meta.get("config")
            .ok_or_else(|| io(path, "no model config"))?,
    )
    .map_err(|e| io(path, format!("bad model config: {e}")))?;
    let train: TrainState = match meta.get("train") {
        Some(t) => {
            serde_json::from_str(t).map_err(|e| io(path, format!("bad training state: {e}")))?
        }
        None => TrainState::default(),
    };
    let tensors = ::safetensors::SafeTensors::deserialize(&data)
        .map_err(|e| io(path, format!("corrupt checkpoint: {e}")))?;
    let mut params = HashMap::new();
    let mut adam = AdamState {
        step: meta
            .get("adam_step")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        ..AdamState::default()
    };
    for (name, view) in tensors.tensors() {
        if view.dtype() != ::safetensors::Dtype::F32 {
            return Err(io(
                path,
                format!("tensor `{name}` is {:?}, expected F32", view.dtype()),
            ));
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if let Some(p) = name.strip_prefix("param/") {
            params.insert(
                p.to_string(),
                (
                    view.shape().to_vec(),
                    values.iter().map(|&x| x as f64).collect(),
                ),
            );
        } else if let Some(p) = name.strip_prefix("adam.m/") {
            adam.m.insert(p.to_string(), values);
        } else if let Some(p) = name.strip_prefix("adam.v/") {
            adam.v.insert(p.to_string(), values);
        } else {
            return Err(io(path, format!("unexpected tensor `{name}`")));
        }
    }
    Ok(Checkpoint {
        config,
        rule_source: meta.get("rule_source").cloned(),
        params,
        adam,
        train,
    })
}

impl Checkpoint {
    /// Rebuilds the model with the saved parameters; a parameter missing or of the wrong shape
    /// (a checkpoint from another model) is an error naming it.
    pub fn model<E: Real, D: Device<E>>(&self, dev: &D) -> Result<Model<E, D>> {
        let init = crate::nn::Init::from_map(dev, self.params.clone());
        let model = Model::new(&self.config, self.rule_source.as_deref(), &init)?;
        let expected = model.params().len();
        if expected != self.params.len() {
            return Err(Error::config(
                "checkpoint",
                format!(
                    "it holds {} parameters, the model has {expected}",
                    self.params.len()
                ),
            ));
        }
        Ok(model)
    }
}
