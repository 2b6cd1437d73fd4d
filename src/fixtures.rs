//! Reading the PyTorch reference fixtures: `NAME.safetensors` (tensors) + `NAME.json` (config).
//!
//! The directory comes from `QUARTIC_REFERENCE_FIXTURES`, defaulting to the repository's own
//! copy, `tests/fixtures/reference` (made by `scripts/make_fixtures.py`'s method; its README says
//! how). A missing directory or file is an error, never a skip: other fixture sets of the same
//! format are run through the same tests.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The environment variable naming another fixture folder (else `tests/fixtures/reference`).
pub const FIXTURES_ENV: &str = "QUARTIC_REFERENCE_FIXTURES";

/// One tensor of a fixture, as f64 values (int64 tensors convert exactly for ids and masks).
#[derive(Clone, Debug)]
pub struct FixtureTensor {
    /// Its shape.
    pub dims: Vec<usize>,
    /// Its values, flat.
    pub values: Vec<f64>,
    /// Stored as floating point (F32 or F64), not as integers or booleans.
    pub float: bool,
}

impl FixtureTensor {
    /// The values as ids (exact for integer tensors).
    pub fn as_usize(&self) -> Vec<usize> {
        self.values.iter().map(|&v| v as usize).collect()
    }
    /// The values as flags (non-zero is true).
    pub fn as_bool(&self) -> Vec<bool> {
        self.values.iter().map(|&v| v != 0.0).collect()
    }
}

/// A reference fixture: the original's config, inputs and outputs (`NAME.json` + `NAME.safetensors`).
pub struct Fixture {
    /// Its name (the files' stem).
    pub name: String,
    /// The original model's constructor arguments and the case's settings.
    pub config: serde_json::Value,
    /// Its tensors by name.
    pub tensors: HashMap<String, FixtureTensor>,
}

/// The repository's own fixtures (an absolute path, so tests and examples find them from any
/// working directory).
pub const DEFAULT_FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/reference");

/// The fixture directory from the environment, or the repository's own.
pub fn fixture_dir() -> PathBuf {
    std::env::var_os(FIXTURES_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_FIXTURES))
}

fn io_err(path: &Path, message: impl ToString) -> Error {
    Error::Io {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// Reads every tensor of a safetensors file as f64 (F32, F64, I64, I32, BOOL and U8).
pub fn read_safetensors(path: &Path) -> Result<HashMap<String, FixtureTensor>> {
    let what = "the file";
    let bytes = crate::files::read_safetensors_capped(path, crate::memory::file_cap(), what)?;
    Ok(crate::files::decode_safetensors(path, &bytes, what)?
        .into_iter()
        .map(|t| {
            let float = t.is_float();
            let tensor = FixtureTensor {
                dims: t.dims,
                values: t.values,
                float,
            };
            (t.name, tensor)
        })
        .collect())
}

impl Fixture {
    /// Loads fixture `name` from [`fixture_dir`].
    pub fn load(name: &str) -> Result<Self> {
        Self::load_from(&fixture_dir(), name)
    }

    /// Loads fixture `name` from `dir`, refusing a missing file or a malformed tensor.
    pub fn load_from(dir: &Path, name: &str) -> Result<Self> {
        let json_path = dir.join(format!("{name}.json"));
        let text = std::fs::read_to_string(&json_path).map_err(|e| {
            io_err(
                &json_path,
                format!("{e} (set {FIXTURES_ENV} to the fixture directory)"),
            )
        })?;
        let meta: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| io_err(&json_path, e))?;
        let tensors = read_safetensors(&dir.join(format!("{name}.safetensors")))?;
        Ok(Self {
            name: name.to_string(),
            config: meta.get("config").cloned().unwrap_or_default(),
            tensors,
        })
    }

    /// The tensor `key`, or an error naming the fixture and the key.
    pub fn tensor(&self, key: &str) -> Result<&FixtureTensor> {
        self.tensors.get(key).ok_or_else(|| {
            Error::config(
                format!("fixture `{}`", self.name),
                format!("has no tensor `{key}`"),
            )
        })
    }

    /// The `param.*` tensors, keyed by parameter name without the prefix.
    pub fn params(&self) -> HashMap<String, (Vec<usize>, Vec<f64>)> {
        self.tensors
            .iter()
            .filter_map(|(k, t)| {
                k.strip_prefix("param.")
                    .map(|n| (n.to_string(), (t.dims.clone(), t.values.clone())))
            })
            .collect()
    }

    /// A numeric config entry.
    pub fn config_f64(&self, path: &[&str]) -> Result<f64> {
        let mut v = &self.config;
        for p in path {
            v = v.get(p).ok_or_else(|| {
                Error::config(
                    format!("fixture `{}`", self.name),
                    format!("config has no `{}`", path.join(".")),
                )
            })?;
        }
        v.as_f64().ok_or_else(|| {
            Error::config(
                format!("fixture `{}`", self.name),
                format!("config `{}` is not a number", path.join(".")),
            )
        })
    }
}
