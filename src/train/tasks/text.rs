//! Character-level language modelling on a user's text: causal next-byte prediction.

use std::path::Path;

use rand::rngs::StdRng;
use rand::Rng;

use super::{Example, Split, TaskDef, Vocab};
use crate::error::{Error, Result};

/// The share of a training text held out for evaluation: its end.
pub const HELD_OUT_PERCENT: usize = 10;

/// Next-byte prediction on a text (causal), windows of `context` bytes. Training windows lie in
/// the bytes before `held_out`, held-out windows in the bytes from it on (the last
/// [`HELD_OUT_PERCENT`] % of the file): no held-out byte is ever trained on.
#[derive(Clone, Debug, PartialEq)]
pub struct Text {
    name: String,
    bytes: Vec<u8>,
    context: usize,
    held_out: usize,
}

impl Text {
    /// Reads `path` (capped at [`crate::files::TEXT_CAP`]) and splits it.
    pub fn from_file(path: &str, context: usize) -> Result<Self> {
        if context == 0 {
            return Err(Error::config("text task", "the context must be positive"));
        }
        let bytes = crate::files::read_capped(
            Path::new(path),
            crate::files::TEXT_CAP,
            "the training text",
        )?;
        // the held-out part: the last 10 %, and at least one window
        let window = context + 1;
        let held = (bytes.len() * HELD_OUT_PERCENT / 100).max(window);
        if bytes.len() < held + window {
            return Err(Error::config(
                "text task",
                format!(
                    "{path} has {} bytes; with context {context} it needs at least {}: one \
                     window of {window} bytes to train on and the last {HELD_OUT_PERCENT} % \
                     (at least one window) held out",
                    bytes.len(),
                    2 * window
                ),
            ));
        }
        Ok(Self {
            name: path.into(),
            held_out: bytes.len() - held,
            bytes,
            context,
        })
    }

    /// Where the held-out bytes begin.
    pub fn held_out(&self) -> usize {
        self.held_out
    }
}

impl TaskDef for Text {
    fn name(&self) -> String {
        format!("text:{}", self.name)
    }

    fn vocab(&self) -> Vocab {
        Vocab::nodes(256)
    }

    fn max_len(&self) -> usize {
        self.context
    }

    fn causal(&self) -> bool {
        true
    }

    fn split_note(&self) -> Option<String> {
        Some(format!(
            "{} bytes: training windows from the first {}, held-out windows from the last {} \
             ({HELD_OUT_PERCENT} %)",
            self.bytes.len(),
            self.held_out,
            self.bytes.len() - self.held_out
        ))
    }

    fn example(&self, rng: &mut StdRng, split: Split) -> Example {
        let window = self.context + 1;
        let start = match split {
            Split::Train => rng.gen_range(0..=self.held_out - window),
            Split::Test | Split::Size(_) => {
                rng.gen_range(self.held_out..=self.bytes.len() - window)
            }
        };
        let window = &self.bytes[start..start + window];
        Example {
            tokens: window[..self.context].iter().map(|&b| b as usize).collect(),
            targets: window[1..].iter().map(|&b| Some(b as usize)).collect(),
            ..Example::default()
        }
    }
}
