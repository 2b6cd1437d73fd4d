//! Built-in tasks, generated in-process from a seed (no downloads), and character-level language
//! modelling on a user's text. Every example is a token sequence with a target (or none) per
//! position; labels are recomputed from each task's definition.

use rand::rngs::StdRng;
use rand::Rng;

use crate::error::{Error, Result};

/// A batch of sequences, padded to the longest: `[b × n]` tokens, validity and targets.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub tokens: Vec<usize>,
    pub b: usize,
    pub n: usize,
    /// `[b × n]`: false at padding (`None` when nothing is padded).
    pub valid: Option<Vec<bool>>,
    /// `[b × n]`: the class to predict at each position, if any.
    pub targets: Vec<Option<usize>>,
}

/// One example before batching.
struct Example {
    tokens: Vec<usize>,
    targets: Vec<Option<usize>>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Task {
    /// Sequences of 8–12 values below 16; every position predicts the sequence's maximum.
    Sanity,
    /// Values mod `modulus`, lengths `min_len..=max_len`; position i is positive when some j, k
    /// (any positions) give `x_i + x_j + x_k ≡ 0`. Each sequence draws its values from a random
    /// subset of residues (2–10 of them), which spreads the fraction of positives.
    Match3 {
        modulus: usize,
        min_len: usize,
        max_len: usize,
    },
    /// A random relation A (edge probability `p`) on 6–8 nodes; node i's token is its row of A as
    /// a bit mask, its target the row of A∘A (is there a u with A[i, u] and A[u, j]).
    RelationComposition {
        min_nodes: usize,
        max_nodes: usize,
        p: f64,
    },
    /// Next-byte prediction on a text (causal), windows of `context` bytes.
    Text {
        name: String,
        bytes: Vec<u8>,
        context: usize,
    },
}

pub const TASKS: [&str; 4] = [
    "sanity",
    "match3",
    "relation-composition",
    "text (--data FILE)",
];

impl Task {
    /// A built-in task by name, or a text file for `text`.
    pub fn from_name(name: &str, data: Option<&str>, context: usize) -> Result<Self> {
        if let Some(path) = data {
            let bytes = std::fs::read(path).map_err(|e| Error::Io {
                path: path.into(),
                message: format!("cannot read the training text: {e}"),
            })?;
            if bytes.len() < context + 2 {
                return Err(Error::config(
                    "text task",
                    format!(
                        "{path} has {} bytes, fewer than the context {context} + 2",
                        bytes.len()
                    ),
                ));
            }
            return Ok(Self::Text {
                name: path.into(),
                bytes,
                context,
            });
        }
        Ok(match name {
            "sanity" => Self::Sanity,
            "match3" => Self::Match3 {
                modulus: 37,
                min_len: 30,
                max_len: 35,
            },
            "relation-composition" => Self::RelationComposition {
                min_nodes: 6,
                max_nodes: 8,
                p: 0.33,
            },
            "text" => {
                return Err(Error::config("task", "the text task needs `--data FILE`"));
            }
            other => {
                return Err(Error::config(
                    "task",
                    format!("unknown task `{other}` (tasks: {})", TASKS.join(", ")),
                ))
            }
        })
    }

    pub fn name(&self) -> String {
        match self {
            Self::Sanity => "sanity".into(),
            Self::Match3 { .. } => "match3".into(),
            Self::RelationComposition { .. } => "relation-composition".into(),
            Self::Text { name, .. } => format!("text:{name}"),
        }
    }

    /// The vocabulary (inputs and classes share it).
    pub fn num_tokens(&self) -> usize {
        match self {
            Self::Sanity => 16,
            Self::Match3 { modulus, .. } => *modulus,
            Self::RelationComposition { max_nodes, .. } => 1 << max_nodes,
            Self::Text { .. } => 256,
        }
    }

    pub fn max_len(&self) -> usize {
        match self {
            Self::Sanity => 12,
            Self::Match3 { max_len, .. } => *max_len,
            Self::RelationComposition { max_nodes, .. } => *max_nodes,
            Self::Text { context, .. } => *context,
        }
    }

    /// Whether the task needs a causal model.
    pub fn causal(&self) -> bool {
        matches!(self, Self::Text { .. })
    }

    fn example(&self, rng: &mut StdRng) -> Example {
        match self {
            Self::Sanity => {
                let n = rng.gen_range(8..=12);
                let tokens: Vec<usize> = (0..n).map(|_| rng.gen_range(0..16)).collect();
                let max = *tokens.iter().max().expect("n ≥ 8");
                Example {
                    targets: vec![Some(max); n],
                    tokens,
                }
            }
            Self::Match3 {
                modulus,
                min_len,
                max_len,
            } => {
                let m = *modulus;
                let n = rng.gen_range(*min_len..=*max_len);
                let subset: Vec<usize> = {
                    let size = rng.gen_range(2..=10.min(m));
                    let mut all: Vec<usize> = (0..m).collect();
                    for i in 0..size {
                        let j = rng.gen_range(i..m);
                        all.swap(i, j);
                    }
                    all.truncate(size);
                    all
                };
                let tokens: Vec<usize> = (0..n)
                    .map(|_| subset[rng.gen_range(0..subset.len())])
                    .collect();
                let targets = match3_labels(&tokens, m)
                    .into_iter()
                    .map(|l| Some(l as usize))
                    .collect();
                Example { tokens, targets }
            }
            Self::RelationComposition {
                min_nodes,
                max_nodes,
                p,
            } => {
                let n = rng.gen_range(*min_nodes..=*max_nodes);
                let rel: Vec<Vec<bool>> = (0..n)
                    .map(|_| (0..n).map(|_| rng.gen_bool(*p)).collect())
                    .collect();
                let composed = compose(&rel);
                let mask = |row: &[bool]| {
                    row.iter()
                        .enumerate()
                        .map(|(j, &b)| (b as usize) << j)
                        .sum::<usize>()
                };
                Example {
                    tokens: rel.iter().map(|r| mask(r)).collect(),
                    targets: composed.iter().map(|r| Some(mask(r))).collect(),
                }
            }
            Self::Text { bytes, context, .. } => {
                let start = rng.gen_range(0..bytes.len() - context - 1);
                let window = &bytes[start..start + context + 1];
                Example {
                    tokens: window[..*context].iter().map(|&b| b as usize).collect(),
                    targets: window[1..].iter().map(|&b| Some(b as usize)).collect(),
                }
            }
        }
    }

    /// `batch` examples, padded to the longest.
    pub fn sample(&self, rng: &mut StdRng, batch: usize) -> Batch {
        let examples: Vec<Example> = (0..batch).map(|_| self.example(rng)).collect();
        let n = examples.iter().map(|e| e.tokens.len()).max().unwrap_or(0);
        let mut tokens = Vec::with_capacity(batch * n);
        let mut targets = Vec::with_capacity(batch * n);
        let mut valid = Vec::with_capacity(batch * n);
        for e in &examples {
            let pad = n - e.tokens.len();
            tokens.extend(&e.tokens);
            tokens.extend(std::iter::repeat(0).take(pad));
            targets.extend(&e.targets);
            targets.extend(std::iter::repeat(None).take(pad));
            valid.extend(std::iter::repeat(true).take(e.tokens.len()));
            valid.extend(std::iter::repeat(false).take(pad));
        }
        let padded = valid.iter().any(|v| !v);
        Batch {
            tokens,
            b: batch,
            n,
            valid: padded.then_some(valid),
            targets,
        }
    }
}

/// Match3 labels: position i is positive when some j, k give `x_i + x_j + x_k ≡ 0 (mod m)`.
pub fn match3_labels(x: &[usize], m: usize) -> Vec<bool> {
    let mut pair_sums = vec![false; m];
    for &a in x {
        for &b in x {
            pair_sums[(a + b) % m] = true;
        }
    }
    x.iter().map(|&a| pair_sums[(m - a % m) % m]).collect()
}

/// The composition A∘A: `(i, j)` when some u has A[i, u] and A[u, j].
pub fn compose(a: &[Vec<bool>]) -> Vec<Vec<bool>> {
    let n = a.len();
    (0..n)
        .map(|i| (0..n).map(|j| (0..n).any(|u| a[i][u] && a[u][j])).collect())
        .collect()
}
