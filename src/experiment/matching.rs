//! Model sizes for an experiment: every rule gets the same layer settings (heads, head widths,
//! feedforward multiplier, edge width) and its node width `dim` is chosen so that all rules
//! have about the same number of parameters.

use dfdx::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::models::{GraphConfig, GraphTransformer, TaskIo};
use crate::nn::{HasParams, Init};
use crate::rules::Rule;
use crate::train::Task;

/// The layer settings shared by every rule of an experiment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Widths {
    /// The node width the parameter budget is taken at.
    pub dim: usize,
    /// Edge width.
    pub dim_edges: usize,
    /// Heads of node attention.
    pub heads: usize,
    /// Channels per head of node attention.
    pub dim_head: usize,
    /// Heads of edge attention.
    pub edge_heads: usize,
    /// Channels per head of edge attention.
    pub edge_dim_head: usize,
    /// Feedforward hidden width as a multiple of the width.
    pub ff_mult: f64,
}

impl Default for Widths {
    fn default() -> Self {
        Self {
            dim: 32,
            dim_edges: 16,
            heads: 4,
            dim_head: 8,
            edge_heads: 2,
            edge_dim_head: 8,
            ff_mult: 2.0,
        }
    }
}

/// The graph model for `rule` on `task` at node width `dim`: the shared widths passed as the
/// rule parameters it declares, edge inputs and heads as the task needs, edge pooling on.
pub fn model_config(
    rule: &str,
    task: &Task,
    widths: &Widths,
    depth: usize,
    dim: usize,
) -> Result<GraphConfig> {
    // the width names every rule shares (dsl/README.md, "Parameters and configuration")
    let rule_params = Rule::resolve(rule)?.declared_values(&[
        ("heads", widths.heads as f64),
        ("dim_head", widths.dim_head as f64),
        ("edge_heads", widths.edge_heads as f64),
        ("edge_dim_head", widths.edge_dim_head as f64),
        ("hidden", widths.dim_edges as f64),
        ("ff_mult", widths.ff_mult),
    ]);
    Ok(GraphConfig {
        residual_streams: 1,
        num_tokens: task.num_tokens(),
        dim,
        dim_edges: widths.dim_edges,
        depth,
        rule: rule.into(),
        rule_params,
        causal: task.causal(),
        max_seq_len: task.max_len(),
        absolute_positions: true,
        position_bias: true,
        final_norm: Some(1e-5),
        io: TaskIo {
            edge_vocab: task.edge_vocab(),
            edge_classes: task.edge_classes(),
            graph_classes: task.graph_classes(),
            node_features: task.vocab().node_features,
            edge_features: task.vocab().edge_features,
            pool_edges: true,
            ..TaskIo::default()
        },
    })
}

/// The parameter count of a configuration (built once on the CPU).
pub fn count_params(config: &GraphConfig) -> Result<usize> {
    let dev = Cpu::default();
    let model = GraphTransformer::<f32, Cpu>::new(config.clone(), &Init::random(&dev, 0))?;
    Ok(model.num_params())
}

/// One rule's matched size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Matched {
    /// The rule as given.
    pub rule: String,
    /// The model it gets.
    pub config: GraphConfig,
    /// The model's parameter count.
    pub params: usize,
}

/// Node widths tried when matching: multiples of 4 (every head layout divides them).
const DIMS: std::ops::RangeInclusive<usize> = 2..=128;

/// Sizes every rule to the largest parameter count among the rules at `widths.dim`: each rule
/// takes the node width (a multiple of 4) whose count is closest to it.
pub fn match_params(
    rules: &[String],
    task: &Task,
    widths: &Widths,
    depth: usize,
) -> Result<(usize, Vec<Matched>)> {
    let mut budget = 0;
    for rule in rules {
        budget = budget.max(count_params(&model_config(
            rule, task, widths, depth, widths.dim,
        )?)?);
    }
    let mut out = Vec::new();
    for rule in rules {
        let mut best: Option<Matched> = None;
        for quarter in DIMS {
            let config = model_config(rule, task, widths, depth, 4 * quarter)?;
            let params = count_params(&config)?;
            let closer = best.as_ref().map_or(true, |b| {
                params.abs_diff(budget) < b.params.abs_diff(budget)
            });
            if closer {
                best = Some(Matched {
                    rule: rule.clone(),
                    config,
                    params,
                });
            }
            if params > budget {
                break;
            }
        }
        out.push(best.ok_or_else(|| Error::config("experiment", "no width to try"))?);
    }
    Ok((budget, out))
}
