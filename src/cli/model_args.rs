//! Model flags shared by `train` and `forward`, also readable from a TOML config's `[model]`.

use std::collections::BTreeMap;

use clap::Args;
use quartic::models::{GraphConfig, ModelConfig, TaskIo};
use quartic::rules::Const;
use serde::Deserialize;

use super::explain::parse_overrides;

/// The graph transformer's shape. Unset flags take the `[model]` table of `--config`, then the
/// defaults shown.
#[derive(Args, Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelArgs {
    /// Rule every layer runs: a built-in (taylor, quartic, routed, relational, triangle,
    /// baseline) or a rule file [default: taylor]
    #[arg(long)]
    pub rule: Option<String>,
    /// Node channels [default: 64]
    #[arg(long)]
    pub dim: Option<usize>,
    /// Edge channels [default: 16]
    #[arg(long)]
    pub dim_edges: Option<usize>,
    /// Layers [default: 2]
    #[arg(long)]
    pub depth: Option<usize>,
    /// Node attention heads [default: 4]
    #[arg(long)]
    pub heads: Option<usize>,
    /// Channels per node attention head [default: 16]
    #[arg(long)]
    pub dim_head: Option<usize>,
    /// Edge attention heads (rules that have them) [default: 4]
    #[arg(long)]
    pub edge_heads: Option<usize>,
    /// Channels per edge attention head [default: 8]
    #[arg(long)]
    pub edge_dim_head: Option<usize>,
    /// Feedforward width multiplier [default: 2]
    #[arg(long)]
    pub ff_mult: Option<f64>,
    /// The node head also reads the mean and max of each node's edges
    #[arg(long)]
    #[serde(default)]
    pub pool_edges: bool,
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
            pool_edges: self.pool_edges || f.pool_edges,
            set: if self.set.is_empty() { f.set } else { self.set },
        }
    }

    /// The model config for a vocabulary, length and causality. Rule parameters the chosen rule
    /// does not declare (`edge_heads` for `relational`) are only passed when given explicitly.
    pub fn config(
        &self,
        num_tokens: usize,
        max_seq_len: usize,
        causal: bool,
    ) -> quartic::Result<ModelConfig> {
        let rule_name = self.rule.clone().unwrap_or_else(|| "taylor".into());
        let rule = quartic::rules::Rule::resolve(&rule_name)?;
        let declared: Vec<String> = rule.parameters().into_iter().map(|(n, _)| n).collect();
        let mut params = BTreeMap::new();
        let defaults = [
            ("heads", self.heads.map(|x| x as f64), 4.0),
            ("dim_head", self.dim_head.map(|x| x as f64), 16.0),
            ("edge_heads", self.edge_heads.map(|x| x as f64), 4.0),
            ("edge_dim_head", self.edge_dim_head.map(|x| x as f64), 8.0),
            ("ff_mult", self.ff_mult, 2.0),
        ];
        for (name, given, default) in defaults {
            // a flag for a parameter the rule lacks is passed on, so the checker names it
            if given.is_some() || declared.iter().any(|d| d == name) {
                params.insert(name.to_string(), Const::Num(given.unwrap_or(default)));
            }
        }
        for (k, v) in parse_overrides(&self.set)? {
            params.insert(k, v);
        }
        Ok(ModelConfig::Graph(GraphConfig {
            num_tokens,
            dim: self.dim.unwrap_or(64),
            dim_edges: self.dim_edges.unwrap_or(16),
            depth: self.depth.unwrap_or(2),
            rule: rule_name,
            rule_params: params,
            causal,
            max_seq_len,
            absolute_positions: true,
            position_bias: true,
            final_norm: Some(1e-5),
            io: TaskIo {
                pool_edges: self.pool_edges,
                ..TaskIo::default()
            },
        }))
    }
}
