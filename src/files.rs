//! Files: read with a size cap (a file that never ends, such as `/dev/zero`, or one far larger
//! than its kind can be, is refused instead of filling memory), and written atomically (a
//! temporary file beside the target, flushed to disk, renamed over it, then the folder flushed,
//! so that a crash leaves either the old file or the new one, never half of one).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Rule files: the largest built-in rule is a few kilobytes.
pub const RULE_CAP: u64 = 1 << 20;
/// TOML and JSON configurations.
pub const CONFIG_CAP: u64 = 16 << 20;
/// A training text (`--data`): it is held in memory whole.
pub const TEXT_CAP: u64 = 1 << 30;

fn io(path: &Path, message: impl Into<String>) -> Error {
    Error::Io {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// Human-readable bytes: `1.5 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = n as f64;
    let mut unit = 0;
    while x >= 1024.0 && unit + 1 < UNITS.len() {
        x /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{x:.1} {}", UNITS[unit])
    }
}

fn too_large(path: &Path, what: &str, cap: u64) -> Error {
    io(
        path,
        format!(
            "{what} is larger than {} (the most this command reads for it)",
            bytes(cap)
        ),
    )
}

/// Opens `path` for reading, refusing a folder and a regular file longer than `cap`.
fn open_capped(path: &Path, cap: u64, what: &str) -> Result<std::fs::File> {
    let file =
        std::fs::File::open(path).map_err(|e| io(path, format!("cannot read {what}: {e}")))?;
    if let Ok(meta) = file.metadata() {
        if meta.is_dir() {
            return Err(io(path, format!("cannot read {what}: it is a folder")));
        }
        if meta.is_file() && meta.len() > cap {
            return Err(too_large(path, what, cap));
        }
    }
    Ok(file)
}

/// Reads at most `cap` bytes of `path` (`what` names it in errors: "the rule"); a longer file
/// is an error that names the cap, and nothing past it is read (a regular file's size is
/// checked before reading at all).
pub fn read_capped(path: &Path, cap: u64, what: &str) -> Result<Vec<u8>> {
    let file = open_capped(path, cap, what)?;
    let mut data = Vec::new();
    file.take(cap + 1)
        .read_to_end(&mut data)
        .map_err(|e| io(path, format!("cannot read {what}: {e}")))?;
    if data.len() as u64 > cap {
        return Err(too_large(path, what, cap));
    }
    Ok(data)
}

/// Reads a safetensors file of at most `cap` bytes. Its header says how long the file is, so
/// a file that is not one (or a device such as `/dev/zero`) is refused after reading its first
/// bytes, and a truncated or over-long one is refused too.
pub fn read_safetensors_capped(path: &Path, cap: u64, what: &str) -> Result<Vec<u8>> {
    /// safetensors' own limit on the header.
    const MAX_HEADER: u64 = 100_000_000;
    let not_one = |m: String| io(path, format!("{what} is not a safetensors file: {m}"));
    let mut file = open_capped(path, cap, what)?;
    let read = |file: &mut std::fs::File, buf: &mut Vec<u8>, n: u64| -> Result<()> {
        let got = file
            .take(n)
            .read_to_end(buf)
            .map_err(|e| io(path, format!("cannot read {what}: {e}")))?;
        if (got as u64) < n {
            return Err(not_one("it ends early (truncated?)".into()));
        }
        Ok(())
    };
    let mut data = Vec::new();
    read(&mut file, &mut data, 8)?;
    let header_len = u64::from_le_bytes(data[..8].try_into().expect("eight bytes"));
    if header_len < 2 || header_len > MAX_HEADER {
        return Err(not_one(format!("its header would be {header_len} bytes")));
    }
    read(&mut file, &mut data, header_len)?;
    let header: serde_json::Value = serde_json::from_slice(&data[8..])
        .map_err(|e| not_one(format!("its header is not JSON ({e})")))?;
    let entries = header
        .as_object()
        .ok_or_else(|| not_one("its header is not a JSON object".into()))?;
    let mut end = 0u64;
    for (name, entry) in entries.iter().filter(|(k, _)| k.as_str() != "__metadata__") {
        let stop = entry
            .get("data_offsets")
            .and_then(|o| o.get(1))
            .and_then(|o| o.as_u64())
            .ok_or_else(|| not_one(format!("tensor `{name}` has no data offsets")))?;
        end = end.max(stop);
    }
    let total = 8u64.saturating_add(header_len).saturating_add(end);
    if total > cap {
        return Err(too_large(path, what, cap));
    }
    read(&mut file, &mut data, end)?;
    let mut rest = [0u8; 1];
    if file.read(&mut rest).map_err(|e| io(path, e.to_string()))? != 0 {
        return Err(not_one(
            "it goes on past the data its header describes".into(),
        ));
    }
    Ok(data)
}

/// One tensor of a safetensors file, decoded: every supported element type is widened to f64
/// exactly (f32, f64, integers up to 2⁵³, booleans and bytes).
#[derive(Clone, Debug)]
pub struct StoredTensor {
    /// Its name in the file.
    pub name: String,
    /// Its shape.
    pub dims: Vec<usize>,
    /// Its type as stored.
    pub dtype: ::safetensors::Dtype,
    /// Its values, flat.
    pub values: Vec<f64>,
    /// CRC-32 of the stored bytes, for files that record checksums.
    pub crc32: u32,
}

impl StoredTensor {
    /// Stored as floating point (F32 or F64), not as integers or booleans.
    pub fn is_float(&self) -> bool {
        matches!(
            self.dtype,
            ::safetensors::Dtype::F32 | ::safetensors::Dtype::F64
        )
    }
}

/// Decodes every tensor of a safetensors file read by [`read_safetensors_capped`] (the one
/// decoder of the crate: checkpoints, fixtures and the reference's weights use it), in the
/// file's order.
pub fn decode_safetensors(path: &Path, data: &[u8], what: &str) -> Result<Vec<StoredTensor>> {
    use ::safetensors::Dtype as S;
    let file = ::safetensors::SafeTensors::deserialize(data)
        .map_err(|e| io(path, format!("{what} is not a valid safetensors file: {e}")))?;
    let mut out = Vec::with_capacity(file.len());
    for (name, view) in file.tensors() {
        let data = view.data();
        fn le<const N: usize>(data: &[u8], f: impl Fn([u8; N]) -> f64) -> Vec<f64> {
            data.chunks_exact(N)
                .map(|c| f(c.try_into().expect("chunks of N")))
                .collect()
        }
        let values = match view.dtype() {
            S::F32 => le(data, |b| f32::from_le_bytes(b) as f64),
            S::F64 => le(data, f64::from_le_bytes),
            S::I64 => le(data, |b| i64::from_le_bytes(b) as f64),
            S::I32 => le(data, |b| i32::from_le_bytes(b) as f64),
            S::BOOL | S::U8 => data.iter().map(|&b| b as f64).collect(),
            other => {
                return Err(io(
                    path,
                    format!("{what}: tensor `{name}` has unsupported dtype {other:?}"),
                ))
            }
        };
        out.push(StoredTensor {
            crc32: crc32fast::hash(data),
            dims: view.shape().to_vec(),
            dtype: view.dtype(),
            values,
            name,
        });
    }
    Ok(out)
}

/// Encodes f32 tensors `(name, dims, little-endian bytes)` and string metadata as a
/// safetensors file (the one encoder: checkpoints and `export-reference` use it).
pub fn encode_safetensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<u8>)],
    meta: Option<std::collections::HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let views: Vec<(String, ::safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(name, dims, data)| {
            ::safetensors::tensor::TensorView::new(::safetensors::Dtype::F32, dims.clone(), data)
                .map(|v| (name.clone(), v))
                .map_err(|e| io(path, format!("tensor `{name}`: {e}")))
        })
        .collect::<Result<_>>()?;
    ::safetensors::serialize(views, &meta).map_err(|e| io(path, e.to_string()))
}

/// f32 values as little-endian bytes (what [`encode_safetensors`] takes).
pub fn f32_bytes(values: impl IntoIterator<Item = f32>) -> Vec<u8> {
    values.into_iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// [`read_capped`] for text, which must be UTF-8.
pub fn read_text_capped(path: &Path, cap: u64, what: &str) -> Result<String> {
    let data = read_capped(path, cap, what)?;
    String::from_utf8(data).map_err(|e| {
        io(
            path,
            format!(
                "{what} is not UTF-8 text (byte {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// The temporary file [`write_atomic`] writes first, beside `path`.
pub fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Writes `data` to `path` atomically: the temporary file is synced before the rename and the
/// folder after it; on any failure the temporary file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d.to_path_buf(),
        None => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e.to_string()))?;
    let tmp = temporary_path(path);
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(&tmp, e.to_string()));
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(
            path,
            format!("cannot move the new file into place: {e}"),
        ));
    }
    // the rename is durable once the folder's entry is on disk
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
