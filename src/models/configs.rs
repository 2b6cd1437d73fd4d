//! The original's model classes as configurations: `QuarticTransformer` and
//! `RelationalTransformer` (quartic-transformer 0.0.18) with its argument names and defaults,
//! turned into [`GraphConfig`]s that run the `taylor` (or another) and `relational` rules.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::graph::GraphConfig;
use crate::error::{Error, Result};
use crate::rules::Const;

fn d_dim_head() -> usize {
    64
}
fn d_heads() -> usize {
    8
}
fn d_linear() -> usize {
    16
}
fn d_ff_mult() -> f64 {
    4.0
}
fn d_max_seq_len() -> usize {
    2048
}
fn d_streams() -> usize {
    4
}

/// `QuarticTransformer(...)`'s arguments. `dim_edges` defaults to `dim`, as in the original.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuarticConfig {
    /// Vocabulary size.
    pub num_tokens: usize,
    /// Node width.
    pub dim: usize,
    /// Layers.
    pub depth: usize,
    /// Edge width (`None`: `dim`).
    #[serde(default)]
    pub dim_edges: Option<usize>,
    /// Channels per head of node attention.
    #[serde(default = "d_dim_head")]
    pub dim_head: usize,
    /// Heads of node attention.
    #[serde(default = "d_heads")]
    pub heads: usize,
    /// Causal: a node sees only the nodes before it.
    #[serde(default)]
    pub causal: bool,
    /// Channels per head of the edges' Taylor (linear) attention.
    #[serde(default = "d_linear")]
    pub linear_dim_head: usize,
    /// Heads of the edges' Taylor (linear) attention.
    #[serde(default = "d_linear")]
    pub linear_heads: usize,
    /// Feedforward hidden width as a multiple of the width.
    #[serde(default = "d_ff_mult")]
    pub ff_mult: f64,
    /// Longest sequence.
    #[serde(default = "d_max_seq_len")]
    pub max_seq_len: usize,
    /// Only `false`: the original's diagonal edge attention is broken (see the fixtures' README).
    #[serde(default)]
    pub edges_diagonal_attn: bool,
    /// Residual streams of the node state (hyper-connections above 1); the original's default
    /// is 4.
    #[serde(default = "d_streams")]
    pub num_residual_streams: usize,
}

impl QuarticConfig {
    /// The README model: 256 tokens, dim 512, depth 2, dim_edges 32, the original's 4 residual
    /// streams (its broken diagonal edge attention off).
    pub fn readme() -> Self {
        Self {
            num_tokens: 256,
            dim: 512,
            depth: 2,
            dim_edges: Some(32),
            dim_head: 64,
            heads: 8,
            causal: false,
            linear_dim_head: 16,
            linear_heads: 16,
            ff_mult: 4.0,
            max_seq_len: 2048,
            edges_diagonal_attn: false,
            num_residual_streams: 4,
        }
    }

    /// The graph transformer running `rule` (`taylor` is the original's layer; `quartic` and
    /// `routed` take the same node block). `reference_scale` reproduces the original's node
    /// attention scale `dim_head ** 0.5` (a bug; the default is `dim_head ** -0.5`).
    pub fn to_graph(&self, rule: &str, reference_scale: bool) -> Result<GraphConfig> {
        if self.edges_diagonal_attn {
            return Err(Error::config(
                "QuarticTransformer",
                "edges_diagonal_attn = true is not supported: the original's diagonal edge attention \
                 fails for batches > 1 and overwrites every edge (write a diagonal rule instead)",
            ));
        }
        let num = |x: f64| Const::Num(x);
        let mut params = BTreeMap::new();
        params.insert("heads".to_string(), num(self.heads as f64));
        params.insert("dim_head".to_string(), num(self.dim_head as f64));
        params.insert("ff_mult".to_string(), num(self.ff_mult));
        if matches!(rule, "taylor" | "quartic" | "routed") {
            params.insert("edge_heads".to_string(), num(self.linear_heads as f64));
            params.insert(
                "edge_dim_head".to_string(),
                num(self.linear_dim_head as f64),
            );
        }
        if reference_scale {
            params.insert("scale".to_string(), num((self.dim_head as f64).sqrt()));
        }
        Ok(GraphConfig {
            residual_streams: self.num_residual_streams,
            num_tokens: self.num_tokens,
            dim: self.dim,
            dim_edges: self.dim_edges.unwrap_or(self.dim),
            depth: self.depth,
            rule: rule.to_string(),
            rule_params: params,
            causal: self.causal,
            max_seq_len: self.max_seq_len,
            absolute_positions: true,
            position_bias: true,
            final_norm: Some(1e-5),
            io: Default::default(),
        })
    }
}

/// `RelationalTransformer(...)`'s arguments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RelationalConfig {
    /// Vocabulary size.
    pub num_tokens: usize,
    /// Node width.
    pub dim: usize,
    /// Layers.
    pub depth: usize,
    /// Edge width.
    pub dim_edges: usize,
    /// Channels per head.
    #[serde(default = "d_dim_head")]
    pub dim_head: usize,
    /// Heads.
    #[serde(default = "d_heads")]
    pub heads: usize,
    /// Causal: a node sees only the nodes before it.
    #[serde(default)]
    pub causal: bool,
    /// Feedforward hidden width as a multiple of the width.
    #[serde(default = "d_ff_mult")]
    pub ff_mult: f64,
    /// Longest sequence.
    #[serde(default = "d_max_seq_len")]
    pub max_seq_len: usize,
}

/// torch's `nn.RMSNorm` default eps for f32 (`torch.finfo(float32).eps`).
pub const TORCH_RMS_EPS: f64 = 1.1920928955078125e-07;

impl RelationalConfig {
    /// The graph transformer running the `relational` rule. `reference` reproduces the original
    /// exactly: its attention scale `dim_head ** 0.5`, and no final norm (the original defines
    /// `final_norm` but never applies it).
    pub fn to_graph(&self, reference: bool) -> GraphConfig {
        let num = |x: f64| Const::Num(x);
        let mut params = BTreeMap::new();
        params.insert("heads".to_string(), num(self.heads as f64));
        params.insert("dim_head".to_string(), num(self.dim_head as f64));
        params.insert("ff_mult".to_string(), num(self.ff_mult));
        if reference {
            params.insert("scale".to_string(), num((self.dim_head as f64).sqrt()));
        }
        GraphConfig {
            residual_streams: 1,
            num_tokens: self.num_tokens,
            dim: self.dim,
            dim_edges: self.dim_edges,
            depth: self.depth,
            rule: "relational".into(),
            rule_params: params,
            causal: self.causal,
            max_seq_len: self.max_seq_len,
            absolute_positions: true,
            position_bias: false,
            final_norm: if reference { None } else { Some(TORCH_RMS_EPS) },
            io: Default::default(),
        }
    }
}
