//! Model flags shared by `train` and `forward`, also readable from a TOML config's `[model]`.

use std::collections::BTreeMap;

use clap::Args;
use quartic::models::{GraphConfig, GraphPool, ModelConfig, TaskIo};
use quartic::rules::Const;
use serde::Deserialize;

use super::explain::parse_overrides;

// The default model (`GraphConfig::default()`): node and edge widths when no flag or config
// sets them (`train`, `forward` and `explain`), its layers, rule and rule parameters
pub use quartic::models::builder::{
    DEFAULT_DEPTH, DEFAULT_DIM, DEFAULT_DIM_EDGES, DEFAULT_RULE, DEFAULT_RULE_PARAMS,
};

/// The graph transformer's shape. Unset flags take the `[model]` table of `--config`, then the
/// defaults shown. Rule parameters (`--heads`, `--set`) override only what they name; the rest
/// keep the rule's own defaults, except in the default model (no rule named anywhere), which
/// is `taylor` with heads 4, dim_head 16, edge_heads 4, edge_dim_head 8, ff_mult 2.
#[derive(Args, Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelArgs {
    /// Rule every layer runs: a built-in (taylor, quartic, quartic_endpoints, routed,
    /// relational, triangle, edge_transformer, baseline) or a rule file; or one per layer, `taylor,triangle,taylor`
    /// (the list sets the depth) [default: the default model, `taylor` with heads 4, dim_head
    /// 16, edge_heads 4, edge_dim_head 8, ff_mult 2]
    #[arg(long)]
    pub rule: Option<String>,
    /// Node channels [default: 64]
    #[arg(long)]
    pub dim: Option<usize>,
    /// Edge channels [default: 16]
    #[arg(long)]
    pub dim_edges: Option<usize>,
    /// Layers [default: 2, or the length of a rule list]
    #[arg(long)]
    pub depth: Option<usize>,
    /// Node attention heads [default: the rule's]
    #[arg(long)]
    pub heads: Option<usize>,
    /// Channels per node attention head [default: the rule's]
    #[arg(long)]
    pub dim_head: Option<usize>,
    /// Edge attention heads [default: the rule's]
    #[arg(long)]
    pub edge_heads: Option<usize>,
    /// Channels per edge attention head [default: the rule's]
    #[arg(long)]
    pub edge_dim_head: Option<usize>,
    /// Feedforward width multiplier [default: the rule's]
    #[arg(long)]
    pub ff_mult: Option<f64>,
    /// Node residual streams; above 1, hyper-connections wrap the rule's node branches (the
    /// original's default: 4) [default: 1]
    #[arg(long, value_name = "N")]
    pub residual_streams: Option<usize>,
    /// The node head also reads the mean and max of each node's edges
    #[arg(long)]
    #[serde(default)]
    pub pool_edges: bool,
    /// How a graph-level target (--target graph) pools the nodes: mean, max or attention
    /// [default: mean]
    #[arg(long, value_name = "POOL")]
    #[serde(default)]
    pub pool: Option<String>,
    /// Any other rule parameter, `name=value` (repeatable)
    #[arg(long = "set", value_name = "NAME=VALUE")]
    #[serde(default)]
    pub set: Vec<String>,
}

impl ModelArgs {
    /// Fills unset flags from `file`.
    pub fn or(self, file: Option<ModelArgs>) -> ModelArgs {
        let Some(f) = file else { return self };
        ModelArgs {
            rule: self.rule.or(f.rule),
            dim: self.dim.or(f.dim),
            dim_edges: self.dim_edges.or(f.dim_edges),
            depth: self.depth.or(f.depth),
            heads: self.heads.or(f.heads),
            dim_head: self.dim_head.or(f.dim_head),
            edge_heads: self.edge_heads.or(f.edge_heads),
            edge_dim_head: self.edge_dim_head.or(f.edge_dim_head),
            ff_mult: self.ff_mult.or(f.ff_mult),
            residual_streams: self.residual_streams.or(f.residual_streams),
            pool_edges: self.pool_edges || f.pool_edges,
            pool: self.pool.or(f.pool),
            set: if self.set.is_empty() { f.set } else { self.set },
        }
    }

    /// The flags that were given, by name (to refuse them where they would be ignored).
    pub fn given(&self) -> Vec<&'static str> {
        let flags = [
            ("--rule", self.rule.is_some()),
            ("--dim", self.dim.is_some()),
            ("--dim-edges", self.dim_edges.is_some()),
            ("--depth", self.depth.is_some()),
            ("--heads", self.heads.is_some()),
            ("--dim-head", self.dim_head.is_some()),
            ("--edge-heads", self.edge_heads.is_some()),
            ("--edge-dim-head", self.edge_dim_head.is_some()),
            ("--ff-mult", self.ff_mult.is_some()),
            ("--residual-streams", self.residual_streams.is_some()),
            ("--pool-edges", self.pool_edges),
            ("--pool", self.pool.is_some()),
            ("--set", !self.set.is_empty()),
        ];
        flags.iter().filter(|(_, g)| *g).map(|(f, _)| *f).collect()
    }

    /// The rule parameters set: the default model's preset when no rule is named, then the
    /// flags given, then `--set` (the last of a repeated name wins). A flag for a parameter
    /// the rule lacks is passed on, so the checker names it.
    pub fn rule_params(&self) -> quartic::Result<BTreeMap<String, Const>> {
        let mut params = BTreeMap::new();
        if self.rule.is_none() {
            for (name, value) in DEFAULT_RULE_PARAMS {
                params.insert(name.to_string(), Const::Num(value));
            }
        }
        let flags = [
            ("heads", self.heads.map(|x| x as f64)),
            ("dim_head", self.dim_head.map(|x| x as f64)),
            ("edge_heads", self.edge_heads.map(|x| x as f64)),
            ("edge_dim_head", self.edge_dim_head.map(|x| x as f64)),
            ("ff_mult", self.ff_mult),
        ];
        for (name, given) in flags {
            if let Some(v) = given {
                if !v.is_finite() {
                    return Err(quartic::Error::config(
                        format!("--{}", name.replace('_', "-")),
                        format!("{v} is not a finite number"),
                    ));
                }
                params.insert(name.to_string(), Const::Num(v));
            }
        }
        for (k, v) in parse_overrides(&self.set)? {
            params.insert(k, v);
        }
        Ok(params)
    }

    /// The model config for a vocabulary, length and causality.
    pub fn config(
        &self,
        num_tokens: usize,
        max_seq_len: usize,
        causal: bool,
    ) -> quartic::Result<ModelConfig> {
        let rule_name = self.rule.clone().unwrap_or_else(|| DEFAULT_RULE.into());
        Ok(ModelConfig::Graph(GraphConfig {
            residual_streams: self.residual_streams.unwrap_or(1),
            num_tokens,
            dim: self.dim.unwrap_or(DEFAULT_DIM),
            dim_edges: self.dim_edges.unwrap_or(DEFAULT_DIM_EDGES),
            // a list of rules names every layer
            depth: self.depth.unwrap_or_else(|| {
                match quartic::rules::stack::entries(&rule_name).len() {
                    1 => DEFAULT_DEPTH,
                    listed => listed,
                }
            }),
            rule: rule_name,
            rule_params: self.rule_params()?,
            causal,
            max_seq_len,
            absolute_positions: true,
            position_bias: true,
            final_norm: Some(1e-5),
            io: TaskIo {
                pool_edges: self.pool_edges,
                graph_pool: match &self.pool {
                    Some(p) => GraphPool::parse(p)?,
                    None => GraphPool::default(),
                },
                ..TaskIo::default()
            },
        }))
    }
}
