//! A run's folder (`--out`): `checkpoint.safetensors`, `metrics.csv` and `metrics.jsonl`,
//! `curves.png`, `config.toml` (written by the command), and a lock
//! held while a run writes there, so that two runs cannot interleave their files. A fresh run
//! refuses a folder that already holds one unless told to overwrite it or to continue it.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The checkpoint's file name.
pub const CHECKPOINT: &str = "checkpoint.safetensors";
/// The metrics table's file name.
pub const METRICS: &str = "metrics.csv";
/// The same metrics as JSON Lines (written beside `metrics.csv`).
pub const METRICS_JSONL: &str = "metrics.jsonl";
/// The resolved settings of a run, as a `quartic train --config` file.
pub const CONFIG: &str = "config.toml";
/// The training curves' file name.
pub const PLOT: &str = "curves.png";
const LOCK: &str = ".lock";
/// How long a busy lock is tried again before another run is reported (see [`RunDir::open`]).
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// What to do with a run already in the folder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Existing {
    /// Refuse to start over it (the default: nothing is lost by accident).
    #[default]
    Refuse,
    /// Continue it (`--resume`): its checkpoint must be there.
    Resume,
    /// Replace it (`--overwrite`).
    Overwrite,
}

/// A run folder, locked for as long as this value lives.
pub struct RunDir {
    path: PathBuf,
    // the lock is the open file's: released when it closes, also when the process dies
    _lock: File,
}

fn io(path: &Path, message: impl Into<String>) -> Error {
    Error::Io {
        path: path.display().to_string(),
        message: message.into(),
    }
}

impl RunDir {
    /// Creates (if needed) and locks `path`, then checks what is there against `existing`.
    pub fn open(path: &Path, existing: Existing) -> Result<Self> {
        std::fs::create_dir_all(path).map_err(|e| io(path, format!("cannot create it: {e}")))?;
        let lock_path = path.join(LOCK);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io(&lock_path, e.to_string()))?;
        // A lock just released can still be held for a moment: a process that forks (to run
        // a command) holds copies of every open file until its child executes, the lock's
        // included. So a busy lock is tried again for a short while before it is reported.
        let deadline = std::time::Instant::now() + LOCK_PATIENCE;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(io(
                        path,
                        "another run is writing to this folder (it holds .lock); wait for it, \
                         or give this run its own --out",
                    ))
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(io(&lock_path, format!("cannot lock the run folder: {e}")))
                }
            }
        }
        let dir = Self {
            path: path.to_path_buf(),
            _lock: lock,
        };
        let has_run = [CHECKPOINT, METRICS]
            .iter()
            .find(|f| dir.path.join(f).exists());
        match (existing, has_run) {
            (Existing::Refuse, Some(found)) => Err(io(
                path,
                format!(
                    "this folder already holds a run ({found}); continue it with --resume, \
                     replace it with --overwrite, or choose another --out"
                ),
            )),
            (Existing::Resume, _) if !dir.checkpoint().exists() => {
                Err(io(&dir.checkpoint(), "no checkpoint to resume from here"))
            }
            _ => Ok(dir),
        }
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Its checkpoint.
    pub fn checkpoint(&self) -> PathBuf {
        self.path.join(CHECKPOINT)
    }
    /// Its metrics table.
    pub fn metrics(&self) -> PathBuf {
        self.path.join(METRICS)
    }
    /// Its plot.
    pub fn plot(&self) -> PathBuf {
        self.path.join(PLOT)
    }
}
