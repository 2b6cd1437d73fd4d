//! What a model needs in memory for a run, estimated from its configuration before anything is
//! allocated: its parameters counted exactly (the model's structure built with a counting
//! [`Init`], which allocates none of them), its layers' activations from the rule's plan
//! (`explain`'s cost model), and the embeddings and heads around the layers. f32 throughout.
//!
//! The estimate is meant to be near the peak, a little above it rather than below:
//! `cargo run --release --example speed -- footprint` compares it with the peak heap of real
//! runs.

use dfdx::prelude::Cpu;

use super::{Model, ModelConfig};
use crate::error::Result;
use crate::memory::Estimate;
use crate::nn::Init;
use crate::rules::explain::plan_cost;

/// What the run does with the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// Forward passes without gradients.
    Forward,
    /// Training steps (AdamW), the batch run as `shards` at once.
    Train {
        /// Shards per batch.
        shards: usize,
    },
}

const F32: u64 = 4;

/// A layer's intermediates alive at once, in units of what it keeps for the backward pass
/// (measured: `cargo run --release --example speed -- footprint`).
const TRANSIENT: f64 = 3.0;

/// Parameter elements of the model `config` describes, counted without allocating them. The
/// layers are alike, so a model of one layer and one of two are counted and the rest is
/// extrapolated: a huge depth costs nothing to count.
pub fn parameter_count(config: &ModelConfig, rule_source: Option<&str>) -> Result<u64> {
    let count = |c: &ModelConfig| -> Result<u64> {
        let init = Init::counting(&Cpu::default());
        Model::<f32, Cpu>::new(c, rule_source, &init)?;
        Ok(init.counted().unwrap_or(0))
    };
    super::check_depth("model", config.depth())?;
    let depth = config.depth() as u64;
    let listed =
        matches!(config, ModelConfig::Graph(g) if crate::rules::stack::entries(&g.rule).len() > 1);
    // a list of rules names every layer: there are as many as the list is long
    if depth <= 2 || listed {
        return count(config);
    }
    let one = count(&config.with_depth(1))?;
    let per_layer = count(&config.with_depth(2))?.saturating_sub(one);
    Ok(one.saturating_add(per_layer.saturating_mul(depth - 1)))
}

/// The memory a run of `config` on `batch` sequences of `n` tokens needs, part by part.
pub fn estimate(
    config: &ModelConfig,
    rule_source: Option<&str>,
    batch: usize,
    n: usize,
    run: Use,
) -> Result<Estimate> {
    let params = parameter_count(config, rule_source)?;
    let (b, n) = (batch as f64, n as f64);
    // elements: one layer's kept for its backward pass, and the embeddings and heads around
    // the layers
    let (layers, around) = match config {
        ModelConfig::Graph(g) => {
            let rules = match rule_source {
                Some(src) => crate::rules::LayerRules::from_source(&g.rule, src)?,
                None => crate::rules::LayerRules::resolve(&g.rule)?,
            };
            let plans = rules.plans(&g.rule_config())?;
            let (dim, de) = (g.dim as f64, g.dim_edges as f64);
            let layer = |plan: &crate::rules::Plan| {
                plan_cost(plan, batch, n as usize).elements
                    + if g.residual_streams > 1 {
                        // per node branch: the streams' norm, the mix and the carried streams,
                        // the weighted output and the new streams (~6 of [b, n, s, dim])
                        let branches = crate::rules::lower::node_branches(plan)
                            .map(|b| b.len())
                            .unwrap_or(0) as f64;
                        6.0 * branches * b * n * g.residual_streams as f64 * dim
                    } else {
                        0.0
                    }
            };
            // alike layers are counted once: a huge depth costs nothing to estimate
            let layers = if rules.listed() > 1 {
                (0..g.depth)
                    .map(|k| (1.0, layer(rules.plan_for_layer(&plans, k))))
                    .collect()
            } else {
                vec![(g.depth as f64, layer(&plans[0]))]
            };
            let edges = b * n * n * de;
            // token + position embeddings, the edge embedding (outer sum, projection, norm,
            // position bias), the final norm and the logits with their log-softmax
            let around = 4.0 * b * n * dim
                + 5.0 * edges
                + 3.0 * b * n * g.num_tokens as f64
                + if g.io.edge_classes > 0 {
                    3.0 * b * n * n * (dim + g.io.edge_classes as f64)
                } else {
                    0.0
                };
            (layers, around)
        }
        ModelConfig::MultiStream(m) => {
            let s = m.num_streams as f64;
            let nodes = b * s * n * m.dim as f64;
            let attention = b * s * (m.heads as f64) * n * n;
            let inner = b * s * n * (m.heads * m.dim_head) as f64;
            let layer = 8.0 * nodes + 4.0 * attention + 4.0 * inner + 3.0 * nodes * m.ff_mult;
            (
                vec![(m.depth as f64, layer)],
                4.0 * nodes + 3.0 * b * n * m.num_tokens as f64,
            )
        }
    };
    // one layer at a time, with the copies its operations make on the way (the cost model
    // counts what is kept, not every intermediate); training also keeps every layer's
    // (`layers`: how many layers of each cost)
    let kept = match run {
        Use::Forward => 0.0,
        Use::Train { .. } => layers.iter().map(|(count, cost)| count * cost).sum(),
    };
    let largest = layers.iter().map(|&(_, cost)| cost).fold(0.0, f64::max);
    let activations = kept + TRANSIENT * largest + around;
    let bytes = |elements: f64| (elements * F32 as f64).min(u64::MAX as f64) as u64;
    let mut e = Estimate::default();
    match run {
        Use::Forward => {
            e.add("parameters", params.saturating_mul(F32));
            e.add("activations", bytes(activations));
        }
        Use::Train { shards } => {
            // values, AdamW's two moments, and one gradient per shard until they are summed
            let copies = 3 + shards.max(1) as u64;
            e.add(
                "parameters, moments and gradients",
                params.saturating_mul(F32).saturating_mul(copies),
            );
            // what the tape keeps, and the gradients of it during the backward pass
            e.add("activations and their gradients", bytes(2.0 * activations));
        }
    }
    Ok(e)
}
