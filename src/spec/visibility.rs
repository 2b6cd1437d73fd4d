//! Which keys each query may read.
//!
//! One rule for every kernel: a key is visible to a query when the key is real (not padding) and,
//! in a causal graph, when the key's time is not later than the query's time. Node i lives at time
//! i and edge (i, j) at time max(i, j), so every attention pattern over nodes or edges states its
//! causality the same way, through times, and no pattern can leak the future.
//!
//! The fused kernels evaluate the rule on the fly (no n⁴ mask is ever stored); the composite path
//! materializes it as a dense 0/1 tensor.

use crate::error::{Error, Result};
use crate::tensor::{indicator, Real};

/// Visibility for a batch of attention problems, each with `queries` queries and `keys` keys.
#[derive(Clone, Debug, PartialEq)]
pub struct Visibility {
    /// Attention problems.
    pub batch: usize,
    /// Queries per problem.
    pub queries: usize,
    /// Keys per problem.
    pub keys: usize,
    /// `[batch × keys]`: whether each key is real; `None` means all are.
    pub key_valid: Option<Vec<bool>>,
    /// Causal times: `[batch × queries]` for queries and `[batch × keys]` for keys; `None` = not causal.
    pub times: Option<Times>,
    /// `[batch × queries × keys]`: which pairs an input graph connects (a rule's `mask:` on
    /// node attention); `None` means every pair.
    pub pairs: Option<Vec<bool>>,
}

/// The causal times of queries and keys.
#[derive(Clone, Debug, PartialEq)]
pub struct Times {
    /// `[batch × queries]`.
    pub query: Vec<usize>,
    /// `[batch × keys]`.
    pub key: Vec<usize>,
}

impl Visibility {
    /// Every query sees every key.
    pub fn all(batch: usize, queries: usize, keys: usize) -> Self {
        Self {
            batch,
            queries,
            keys,
            key_valid: None,
            times: None,
            pairs: None,
        }
    }

    /// Adds key padding: `valid` is `[batch × keys]`.
    pub fn with_key_valid(mut self, valid: Vec<bool>) -> Result<Self> {
        if valid.len() != self.batch * self.keys {
            return Err(Error::shape(
                "key padding mask",
                format!(
                    "{} entries (batch {} × keys {})",
                    self.batch * self.keys,
                    self.batch,
                    self.keys
                ),
                format!("{} entries", valid.len()),
            ));
        }
        // all-real keys are stored as `None`, so kernels skip the per-element test
        self.key_valid = if valid.iter().all(|&v| v) {
            None
        } else {
            Some(valid)
        };
        Ok(self)
    }

    /// Makes the problem causal with explicit times (`[batch × queries]`, `[batch × keys]`).
    pub fn with_times(mut self, query: Vec<usize>, key: Vec<usize>) -> Result<Self> {
        if query.len() != self.batch * self.queries || key.len() != self.batch * self.keys {
            return Err(Error::shape(
                "causal times",
                format!(
                    "{} query and {} key times",
                    self.batch * self.queries,
                    self.batch * self.keys
                ),
                format!("{} and {}", query.len(), key.len()),
            ));
        }
        self.times = Some(Times { query, key });
        Ok(self)
    }

    /// Restricts each query to the keys `pairs` (`[batch × queries × keys]`) allows.
    pub fn with_pairs(mut self, pairs: Vec<bool>) -> Result<Self> {
        let want = self.batch * self.queries * self.keys;
        if pairs.len() != want {
            return Err(Error::shape(
                "attention pair mask",
                format!(
                    "{want} entries (batch {} × queries {} × keys {})",
                    self.batch, self.queries, self.keys
                ),
                format!("{} entries", pairs.len()),
            ));
        }
        self.pairs = Some(pairs);
        Ok(self)
    }

    /// The common sequence case: query i at time i, key j at time j, so query i reads keys 0..=i.
    pub fn with_sequence_causality(self) -> Result<Self> {
        let (b, nq, nk) = (self.batch, self.queries, self.keys);
        let q = (0..b).flat_map(|_| 0..nq).collect();
        let k = (0..b).flat_map(|_| 0..nk).collect();
        self.with_times(q, k)
    }

    /// Whether every query sees every key (no padding, times or pairs).
    pub fn all_visible(&self) -> bool {
        self.key_valid.is_none() && self.times.is_none() && self.pairs.is_none()
    }

    /// Whether query `i` of problem `b` may read key `j`.
    #[inline]
    pub fn visible(&self, b: usize, i: usize, j: usize) -> bool {
        if let Some(valid) = &self.key_valid {
            if !valid[b * self.keys + j] {
                return false;
            }
        }
        if let Some(pairs) = &self.pairs {
            if !pairs[(b * self.queries + i) * self.keys + j] {
                return false;
            }
        }
        match &self.times {
            Some(t) => t.key[b * self.keys + j] <= t.query[b * self.queries + i],
            None => true,
        }
    }

    /// The dense `[batch × queries × keys]` keep mask as 0/1 values.
    pub fn dense<E: Real>(&self) -> Vec<E> {
        let (b, q, k) = (self.batch, self.queries, self.keys);
        indicator((0..b * q * k).map(|e| self.visible(e / (q * k), (e / k) % q, e % k)))
    }

    /// For the linear (feature) form: when key times never decrease along the key axis, the keys
    /// a query sees are a prefix (minus padding). Returns, per `[batch × queries]`, how many keys
    /// that prefix holds; `None` when the times (or a pair mask) do not allow it.
    pub fn prefix_lengths(&self) -> Option<Vec<usize>> {
        if self.pairs.is_some() {
            return None;
        }
        let times = self.times.as_ref()?;
        let mut lengths = Vec::with_capacity(self.batch * self.queries);
        for b in 0..self.batch {
            let keys = &times.key[b * self.keys..(b + 1) * self.keys];
            if keys.windows(2).any(|w| w[0] > w[1]) {
                return None;
            }
            for i in 0..self.queries {
                let t = times.query[b * self.queries + i];
                lengths.push(keys.partition_point(|&k| k <= t));
            }
        }
        Some(lengths)
    }
}
