//! Dropout's draws for one training step: a seed per graph, mixed with the layer, the rule's
//! dropout and the element's place in its graph by a counter-based hash. A draw depends on
//! nothing else, so a batch split into shards, or a run resumed from a checkpoint, draws the
//! same masks as the whole batch run straight through.

/// The seeds a batch's dropout draws from, and the layer drawing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DropoutDraws {
    /// One per graph of the batch.
    seeds: Vec<u64>,
    layer: u64,
}

impl DropoutDraws {
    /// Draws for graphs with these seeds (see [`step_seeds`]).
    pub fn new(seeds: Vec<u64>) -> Self {
        Self { seeds, layer: 0 }
    }

    /// The seed of each graph.
    pub fn seeds(&self) -> &[u64] {
        &self.seeds
    }

    /// The same seeds, drawn for layer `k` of a model (each layer its own masks).
    pub fn for_layer(&self, k: usize) -> Self {
        Self {
            seeds: self.seeds.clone(),
            layer: k as u64,
        }
    }

    /// The multipliers of a dropout with drop probability `p`, the rule's `stream`-th, on a
    /// value of `per_graph` elements per graph (laid out graph-major): `0` for a dropped
    /// element, `1 / (1 − p)` for a kept one.
    pub fn multipliers(&self, stream: usize, per_graph: usize, p: f64) -> Vec<f64> {
        let scale = 1.0 / (1.0 - p);
        let site = mix(self.layer, stream as u64);
        let mut out = Vec::with_capacity(self.seeds.len() * per_graph);
        for &seed in &self.seeds {
            let base = mix(seed, site);
            out.extend((0..per_graph).map(|e| {
                if uniform(mix(base, e as u64)) < p {
                    0.0
                } else {
                    scale
                }
            }));
        }
        out
    }
}

/// The seed of each of a training batch's `graphs` at `step` of a run seeded `run_seed`.
pub fn step_seeds(run_seed: u64, step: usize, graphs: usize) -> Vec<u64> {
    let step_seed = mix(mix(run_seed, 0xD20_90E7), step as u64);
    (0..graphs).map(|g| mix(step_seed, g as u64)).collect()
}

/// SplitMix64's finaliser applied to `a` offset by `b` times the golden-ratio increment: a
/// well-mixed 64-bit value for each pair.
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a.wrapping_add(b.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The top 53 bits as a number in [0, 1).
fn uniform(bits: u64) -> f64 {
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_about_p_and_scales_the_rest() {
        let draws = DropoutDraws::new(step_seeds(7, 3, 4));
        let m = draws.multipliers(0, 10_000, 0.25);
        let dropped = m.iter().filter(|&&v| v == 0.0).count() as f64 / m.len() as f64;
        assert!((dropped - 0.25).abs() < 0.01, "{dropped}");
        assert!(m.iter().all(|&v| v == 0.0 || (v - 4.0 / 3.0).abs() < 1e-15));
    }

    #[test]
    fn a_graph_draws_the_same_alone_or_in_a_batch() {
        let seeds = step_seeds(1, 5, 3);
        let whole = DropoutDraws::new(seeds.clone()).multipliers(2, 50, 0.5);
        let alone = DropoutDraws::new(seeds[1..2].to_vec()).multipliers(2, 50, 0.5);
        assert_eq!(&whole[50..100], &alone[..]);
        // other streams, layers and steps draw differently
        let other = |d: DropoutDraws, s: usize| d.multipliers(s, 50, 0.5);
        assert_ne!(other(DropoutDraws::new(seeds.clone()), 3), whole);
        assert_ne!(
            other(DropoutDraws::new(seeds.clone()).for_layer(1), 2),
            whole
        );
        assert_ne!(other(DropoutDraws::new(step_seeds(1, 6, 3)), 2), whole);
    }
}
