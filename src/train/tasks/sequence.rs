//! Tasks on sequences: every position is a node with a token; predictions are read from the nodes.

use rand::rngs::StdRng;
use rand::Rng;

use super::checks;
use super::labels::{function_composition_label, k_hop, match3_labels};
use super::{shuffled, Example, Sizes, Split, TaskDef, Vocab};
use crate::error::Result;

/// Sequences of 8–12 values below 16; every position predicts the sequence's maximum.
#[derive(Clone, Debug, PartialEq)]
pub struct Sanity;

impl TaskDef for Sanity {
    fn name(&self) -> String {
        "sanity".into()
    }

    fn vocab(&self) -> Vocab {
        Vocab::nodes(16)
    }

    fn max_len(&self) -> usize {
        12
    }

    fn causal(&self) -> bool {
        false
    }

    fn example(&self, rng: &mut StdRng, _split: Split) -> Example {
        let n = rng.gen_range(8..=12);
        let tokens: Vec<usize> = (0..n).map(|_| rng.gen_range(0..16)).collect();
        let max = *tokens.iter().max().expect("n ≥ 8");
        Example {
            targets: vec![Some(max); n],
            tokens,
            ..Example::default()
        }
    }
}

/// Values mod `modulus`, lengths `min_len..=max_len`; position i is positive when some j, k
/// (any positions) give `x_i + x_j + x_k ≡ 0`. Each sequence draws its values from a random
/// subset of `min_values..=max_values` residues. The default (2–10) spreads the fraction of
/// positives. With `distinct_witnesses` the subset has no a, b (a = b allowed) with
/// a + 2b ≡ 0, so that every witness is three distinct residues: no label can be decided by
/// comparing two values (`match3-distinct`).
#[derive(Clone, Debug, PartialEq)]
pub struct Match3 {
    /// Values are residues mod this.
    pub modulus: usize,
    /// Shortest sequence.
    pub min_len: usize,
    /// Longest sequence.
    pub max_len: usize,
    /// Fewest distinct residues a sequence draws from.
    pub min_values: usize,
    /// Most distinct residues a sequence draws from (at most `modulus`).
    pub max_values: usize,
    /// Draw only subsets whose positives need three distinct residues (by rejection: keep
    /// `max_values` well below the largest such subset, about half the residues).
    pub distinct_witnesses: bool,
}

impl Default for Match3 {
    fn default() -> Self {
        Self {
            modulus: 37,
            min_len: 30,
            max_len: 35,
            min_values: 2,
            max_values: 10,
            distinct_witnesses: false,
        }
    }
}

impl Match3 {
    /// `match3-distinct`: 24–32 values from 7–8 residues with no two-value witness (48 % of
    /// the positions positive).
    pub fn distinct() -> Self {
        Self {
            min_len: 24,
            max_len: 32,
            min_values: 7,
            max_values: 8,
            distinct_witnesses: true,
            ..Self::default()
        }
    }

    /// `match3-distinct-short`: `match3-distinct` at 12–16 values (144–256 position pairs where
    /// the full task has 576–1 024; 36 % of the positions positive), the first stage of a
    /// length curriculum: a witness among fewer pairs is less diluted in a softmax over them.
    pub fn distinct_short() -> Self {
        Self {
            min_len: 12,
            max_len: 16,
            ..Self::distinct()
        }
    }

    /// Whether `values` has a witness of two values: x + 2y ≡ 0 with x, y in it (x = y allowed,
    /// which covers 3x ≡ 0). Such a position is decided by one comparison, i + j + j or
    /// i + i + k, which a quadratic model can make.
    fn has_two_value_witness(&self, values: &[usize]) -> bool {
        let m = self.modulus;
        values
            .iter()
            .any(|&x| values.iter().any(|&y| (x + 2 * y) % m == 0))
    }

    /// One draw of `size` residues, or `None` when it does not fit: with `distinct_witnesses`
    /// a draw with a two-value witness is rejected (and the caller draws again).
    fn draw_values(&self, rng: &mut StdRng, size: usize) -> Option<Vec<usize>> {
        let subset: Vec<usize> = shuffled(rng, self.modulus).into_iter().take(size).collect();
        (!self.distinct_witnesses || !self.has_two_value_witness(&subset)).then_some(subset)
    }
}

impl TaskDef for Match3 {
    fn name(&self) -> String {
        if *self == Self::distinct_short() {
            "match3-distinct-short".into()
        } else if self.distinct_witnesses {
            "match3-distinct".into()
        } else {
            "match3".into()
        }
    }

    fn vocab(&self) -> Vocab {
        Vocab::nodes(self.modulus)
    }

    fn max_len(&self) -> usize {
        self.max_len
    }

    fn causal(&self) -> bool {
        false
    }

    fn check(&self) -> Result<()> {
        let name = self.name();
        checks::at_least(&name, "modulus", self.modulus, 1)?;
        checks::range(
            &name,
            ("min_len", self.min_len),
            ("max_len", self.max_len),
            1,
        )?;
        checks::range(
            &name,
            ("min_values", self.min_values),
            ("max_values", self.max_values),
            1,
        )?;
        if self.max_values > self.modulus {
            return Err(checks::refuse(
                &name,
                format!(
                    "`max_values` ({}) is above `modulus` ({}): there are not that many residues",
                    self.max_values, self.modulus
                ),
            ));
        }
        if !self.distinct_witnesses {
            return Ok(());
        }
        // Every subset of a fitting draw fits, so the largest size fits least often.
        let largest = self.max_values;
        checks::draws_fit(
            &name,
            &format!(
                "{largest} residues mod {} without a two-value witness",
                self.modulus
            ),
            |rng| self.draw_values(rng, largest).is_some(),
        )
    }

    fn example(&self, rng: &mut StdRng, _split: Split) -> Example {
        let m = self.modulus;
        let n = rng.gen_range(self.min_len..=self.max_len);
        let size = rng.gen_range(self.min_values..=self.max_values);
        let subset = loop {
            if let Some(subset) = self.draw_values(rng, size) {
                break subset;
            }
        };
        let tokens: Vec<usize> = (0..n)
            .map(|_| subset[rng.gen_range(0..subset.len())])
            .collect();
        let targets = match3_labels(&tokens, m)
            .into_iter()
            .map(|l| Some(l as usize))
            .collect();
        Example {
            tokens,
            targets,
            ..Example::default()
        }
    }
}

/// A sequence x over [0, n) of length n in `min_len..=max_len`; position 0 predicts whether
/// `x[x[0]] == 0` (balanced: half the sequences are positive).
#[derive(Clone, Debug, PartialEq)]
pub struct FunctionComposition {
    /// Shortest sequence.
    pub min_len: usize,
    /// Longest sequence.
    pub max_len: usize,
}

impl Default for FunctionComposition {
    fn default() -> Self {
        Self {
            min_len: 25,
            max_len: 30,
        }
    }
}

impl TaskDef for FunctionComposition {
    fn name(&self) -> String {
        "function-composition".into()
    }

    fn check(&self) -> Result<()> {
        // x[0] must be able to point at another position
        checks::range(
            &self.name(),
            ("min_len", self.min_len),
            ("max_len", self.max_len),
            2,
        )
    }

    fn vocab(&self) -> Vocab {
        Vocab::nodes(self.max_len)
    }

    fn max_len(&self) -> usize {
        self.max_len
    }

    fn causal(&self) -> bool {
        false
    }

    fn example(&self, rng: &mut StdRng, _split: Split) -> Example {
        let n = rng.gen_range(self.min_len..=self.max_len);
        let positive = rng.gen_bool(0.5);
        let mut x: Vec<usize> = (0..n).map(|_| rng.gen_range(0..n)).collect();
        if positive {
            // x[x[0]] = 0 (when x[0] = 0 this holds already)
            let at = x[0];
            x[at] = 0;
        } else {
            // x[0] ≠ 0 (else x[x[0]] = x[0] = 0), then x[x[0]] ≠ 0
            x[0] = rng.gen_range(1..n);
            let at = x[0];
            x[at] = rng.gen_range(1..n);
        }
        let mut targets = vec![None; n];
        targets[0] = Some(function_composition_label(&x) as usize);
        Example {
            tokens: x,
            targets,
            ..Example::default()
        }
    }
}

/// k-hop induction heads: the first token says k (1..=`max_k`), the rest are symbols below
/// `alphabet`; every symbol position predicts the symbol k hops away (`labels::k_hop`), or
/// "none" (class `alphabet`).
#[derive(Clone, Debug, PartialEq)]
pub struct KHop {
    /// Symbols (the class `alphabet` is "none").
    pub alphabet: usize,
    /// The most hops.
    pub max_k: usize,
    /// Shortest sequence.
    pub min_len: usize,
    /// Longest sequence.
    pub max_len: usize,
}

impl Default for KHop {
    fn default() -> Self {
        Self {
            alphabet: 4,
            max_k: 4,
            min_len: 24,
            max_len: 32,
        }
    }
}

impl TaskDef for KHop {
    fn name(&self) -> String {
        "k-hop".into()
    }

    fn check(&self) -> Result<()> {
        let name = self.name();
        checks::at_least(&name, "alphabet", self.alphabet, 1)?;
        checks::at_least(&name, "max_k", self.max_k, 1)?;
        checks::range(
            &name,
            ("min_len", self.min_len),
            ("max_len", self.max_len),
            1,
        )
    }

    fn vocab(&self) -> Vocab {
        Vocab::nodes(self.alphabet + self.max_k.max(1))
    }

    fn max_len(&self) -> usize {
        self.max_len
    }

    fn causal(&self) -> bool {
        false
    }

    fn sizes(&self) -> Option<Sizes> {
        Some(Sizes {
            what: "hops k",
            values: (1..=self.max_k).collect(),
        })
    }

    fn example(&self, rng: &mut StdRng, split: Split) -> Example {
        let k = match split {
            Split::Size(k) => k.clamp(1, self.max_k),
            Split::Train | Split::Test => rng.gen_range(1..=self.max_k),
        };
        let alphabet = self.alphabet;
        let n = rng.gen_range(self.min_len..=self.max_len);
        let body: Vec<usize> = (1..n).map(|_| rng.gen_range(0..alphabet)).collect();
        let mut tokens = vec![alphabet + k - 1];
        tokens.extend(&body);
        let mut targets = vec![None];
        targets.extend((0..body.len()).map(|i| Some(k_hop(&body, i, k).unwrap_or(alphabet))));
        Example {
            tokens,
            targets,
            ..Example::default()
        }
    }
}
