//! Checkpoints: one safetensors file with the parameters (`param/NAME`), the optimizer moments
//! (`adam.m/NAME`, `adam.v/NAME`), and metadata: the format, the model config, the rule's text,
//! the training state as JSON, and a CRC-32 of every tensor and of the other metadata, checked
//! on load (a flipped byte anywhere is refused, not loaded). Written atomically
//! ([`crate::files::write_atomic`]), so a crash never leaves a half-written checkpoint in place
//! of a good one.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::optim::AdamState;
use crate::error::{Error, Result};
use crate::models::{Model, ModelConfig};
use crate::nn::HasParams;
use crate::tensor::*;
use dfdx::prelude::Device;

/// The format this build writes (the `format` metadata entry).
pub const FORMAT: &str = "quartic-checkpoint-2";
/// The first format: the same layout without checksums (still read).
pub const FORMAT_1: &str = "quartic-checkpoint-1";
/// The metadata entry holding the checksums (JSON: tensor name → CRC-32, and
/// [`METADATA_KEY`] → the CRC-32 of the other metadata entries).
const CHECKSUMS: &str = "checksums";
const METADATA_KEY: &str = "__metadata__";
/// The build that wrote a checkpoint (absent from checkpoints written before they were kept).
const CRATE_VERSION: &str = "crate_version";
const GIT_COMMIT: &str = "git_commit";

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
    /// The model's configuration.
    pub config: ModelConfig,
    /// The rule's source, for a graph model (so it rebuilds without the rule file).
    pub rule_source: Option<String>,
    /// Every parameter by name: its shape and values.
    pub params: HashMap<String, (Vec<usize>, Vec<f64>)>,
    /// The optimizer's moments.
    pub adam: AdamState,
    /// Where training stands.
    pub train: TrainState,
    /// The crate version and git commit of the build that wrote it, if recorded.
    pub crate_version: Option<String>,
    /// See `crate_version`.
    pub git_commit: Option<String>,
}

fn io(path: &Path, message: impl Into<String>) -> Error {
    Error::Io {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// The CRC-32 of the metadata entries other than the checksums, in key order.
fn metadata_crc(meta: &BTreeMap<String, String>) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for (k, v) in meta.iter().filter(|(k, _)| k.as_str() != CHECKSUMS) {
        for part in [k.as_bytes(), &[0], v.as_bytes(), &[0]] {
            h.update(part);
        }
    }
    h.finalize()
}

/// Writes a checkpoint atomically (temporary file in the same directory, synced, renamed).
pub fn save<E: Real, D: Device<E>>(
    path: &Path,
    model: &Model<E, D>,
    adam: Option<&AdamState>,
    train: &TrainState,
) -> Result<()> {
    let mut blobs: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let bytes = |v: &[f32]| crate::files::f32_bytes(v.iter().copied());
    for p in model.params() {
        let values: Vec<f32> = host::values(&p.value)
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
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), FORMAT.to_string());
    meta.insert(
        CRATE_VERSION.to_string(),
        crate::build_info::VERSION.to_string(),
    );
    meta.insert(
        GIT_COMMIT.to_string(),
        crate::build_info::GIT_COMMIT.to_string(),
    );
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
    let mut checksums: BTreeMap<String, u32> = blobs
        .iter()
        .map(|(name, _, data)| (name.clone(), crc32fast::hash(data)))
        .collect();
    checksums.insert(METADATA_KEY.to_string(), metadata_crc(&meta));
    meta.insert(
        CHECKSUMS.to_string(),
        serde_json::to_string(&checksums).map_err(|e| io(path, e.to_string()))?,
    );
    let meta: HashMap<String, String> = meta.into_iter().collect();
    let data = crate::files::encode_safetensors(path, &blobs, Some(meta))?;
    crate::files::write_atomic(path, &data)
}

/// Reads a checkpoint, with a clear error for anything that is not one of ours or does not
/// match its checksums.
pub fn load(path: &Path) -> Result<Checkpoint> {
    let data =
        crate::files::read_safetensors_capped(path, crate::memory::file_cap(), "the checkpoint")?;
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
    let checksums: Option<BTreeMap<String, u32>> = match meta.get("format").map(String::as_str) {
        Some(FORMAT) => {
            let text = meta
                .get(CHECKSUMS)
                .ok_or_else(|| io(path, "corrupt checkpoint: its checksums are missing"))?;
            let sums: BTreeMap<String, u32> = serde_json::from_str(text)
                .map_err(|e| io(path, format!("corrupt checkpoint: bad checksums ({e})")))?;
            if sums.get(METADATA_KEY) != Some(&metadata_crc(&meta)) {
                return Err(io(
                    path,
                    "corrupt checkpoint: its metadata (config, rule, training state) does not \
                     match its checksum",
                ));
            }
            Some(sums)
        }
        Some(FORMAT_1) => None,
        Some(f) => {
            return Err(io(
                path,
                format!("checkpoint format `{f}`, this version reads `{FORMAT}` and `{FORMAT_1}`"),
            ))
        }
        None => {
            return Err(io(
                path,
                "a safetensors file but not a quartic checkpoint (no format); \
                 convert PyTorch weights with `quartic import-reference`",
            ))
        }
    };
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
    let adam_step = meta
        .get("adam_step")
        .ok_or_else(|| io(path, "no optimizer step (`adam_step`)"))?;
    let adam_step: u64 = adam_step
        .parse()
        .map_err(|_| io(path, format!("bad optimizer step `{adam_step}`")))?;
    let tensors = crate::files::decode_safetensors(path, &data, "the checkpoint")?;
    let mut params = HashMap::new();
    let mut adam = AdamState {
        step: adam_step,
        ..AdamState::default()
    };
    let count = tensors.len();
    for t in tensors {
        let name = &t.name;
        if t.dtype != ::safetensors::Dtype::F32 {
            return Err(io(
                path,
                format!("tensor `{name}` is {:?}, expected F32", t.dtype),
            ));
        }
        if let Some(sums) = &checksums {
            if sums.get(name) != Some(&t.crc32) {
                return Err(io(
                    path,
                    format!("corrupt checkpoint: tensor `{name}` does not match its checksum"),
                ));
            }
        }
        if let Some(i) = t.values.iter().position(|x| !x.is_finite()) {
            return Err(io(
                path,
                format!("tensor `{name}` holds {} at index {i}", t.values[i]),
            ));
        }
        if let Some(p) = name.strip_prefix("param/") {
            params.insert(p.to_string(), (t.dims, t.values));
        } else if let Some(p) = name.strip_prefix("adam.m/") {
            adam.m
                .insert(p.to_string(), t.values.iter().map(|&x| x as f32).collect());
        } else if let Some(p) = name.strip_prefix("adam.v/") {
            adam.v
                .insert(p.to_string(), t.values.iter().map(|&x| x as f32).collect());
        } else {
            return Err(io(path, format!("unexpected tensor `{name}`")));
        }
    }
    if let Some(sums) = &checksums {
        let stored = count + 1;
        if sums.len() != stored {
            return Err(io(
                path,
                format!(
                    "corrupt checkpoint: {} checksums for {} tensors",
                    sums.len() - 1,
                    count
                ),
            ));
        }
    }
    check_moments(path, &params, &adam)?;
    Ok(Checkpoint {
        config,
        rule_source: meta.get("rule_source").cloned(),
        params,
        adam,
        train,
        crate_version: meta.get(CRATE_VERSION).cloned(),
        git_commit: meta.get(GIT_COMMIT).cloned(),
    })
}

/// After the first update every parameter has both moments, of its own length; before it none.
/// Anything else is refused rather than zero-filled on resume.
fn check_moments(
    path: &Path,
    params: &HashMap<String, (Vec<usize>, Vec<f64>)>,
    adam: &AdamState,
) -> Result<()> {
    if adam.step == 0 {
        if adam.m.is_empty() && adam.v.is_empty() {
            return Ok(());
        }
        return Err(io(
            path,
            "optimizer moments are stored but the optimizer step is 0",
        ));
    }
    for (name, (_, values)) in params {
        for (table, which) in [(&adam.m, "first"), (&adam.v, "second")] {
            match table.get(name) {
                Some(m) if m.len() == values.len() => {}
                Some(m) => {
                    return Err(io(
                        path,
                        format!(
                            "the {which} moment of `{name}` has {} values, the parameter {}",
                            m.len(),
                            values.len()
                        ),
                    ))
                }
                None => {
                    return Err(io(
                        path,
                        format!(
                            "the {which} moment of `{name}` is missing (optimizer step {})",
                            adam.step
                        ),
                    ))
                }
            }
        }
    }
    for name in adam.m.keys().chain(adam.v.keys()) {
        if !params.contains_key(name) {
            return Err(io(
                path,
                format!("a moment of `{name}`, which is no parameter"),
            ));
        }
    }
    Ok(())
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
