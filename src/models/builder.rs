//! [`GraphConfig::default`], the small model `quartic train` runs when no model flag is given,
//! and [`GraphConfigBuilder`], which sets what differs from it and checks the result (widths,
//! streams, and the rule with its parameters) before any model is built.

use std::collections::BTreeMap;

use super::graph::GraphConfig;
use super::heads::TaskIo;
use crate::error::Result;
use crate::rules::Const;

/// The default model's node width.
pub const DEFAULT_DIM: usize = 64;
/// The default model's edge width.
pub const DEFAULT_DIM_EDGES: usize = 16;
/// The default model's layers.
pub const DEFAULT_DEPTH: usize = 2;
/// The default model's rule.
pub const DEFAULT_RULE: &str = "taylor";
/// The default model's rule parameters (the built-in rules' own defaults are the original's,
/// sized for dim 512). They belong to the default rule: a model that names its rule starts from
/// that rule's own defaults instead.
pub const DEFAULT_RULE_PARAMS: [(&str, f64); 5] = [
    ("heads", 4.0),
    ("dim_head", 16.0),
    ("edge_heads", 4.0),
    ("edge_dim_head", 8.0),
    ("ff_mult", 2.0),
];

/// Token vocabulary of the default model (bytes).
const DEFAULT_TOKENS: usize = 256;
/// Longest sequence of the default model.
const DEFAULT_MAX_SEQ_LEN: usize = 2048;

fn default_rule_params() -> BTreeMap<String, Const> {
    DEFAULT_RULE_PARAMS
        .iter()
        .map(|&(k, v)| (k.to_string(), Const::Num(v)))
        .collect()
}

impl Default for GraphConfig {
    /// The `taylor` rule at dim 64, edge width 16, 2 layers, with [`DEFAULT_RULE_PARAMS`];
    /// 256 tokens, sequences up to 2048, not causal, one residual stream, no edge inputs.
    fn default() -> Self {
        Self {
            num_tokens: DEFAULT_TOKENS,
            dim: DEFAULT_DIM,
            dim_edges: DEFAULT_DIM_EDGES,
            depth: DEFAULT_DEPTH,
            rule: DEFAULT_RULE.into(),
            rule_params: default_rule_params(),
            causal: false,
            max_seq_len: DEFAULT_MAX_SEQ_LEN,
            absolute_positions: true,
            position_bias: true,
            final_norm: Some(1e-5),
            io: TaskIo::default(),
            residual_streams: 1,
        }
    }
}

impl GraphConfig {
    /// A builder that starts from [`GraphConfig::default`].
    ///
    /// ```
    /// use dfdx::prelude::*;
    /// use quartic::models::{GraphConfig, Model, ModelConfig};
    /// use quartic::nn::Init;
    ///
    /// let config = GraphConfig::builder()
    ///     .rule("relational")
    ///     .num_tokens(16)
    ///     .dim(32)
    ///     .depth(1)
    ///     .param("heads", 2.0)
    ///     .build()?;
    /// let dev = Cpu::default();
    /// let init = Init::random(&dev, 0);
    /// let model = Model::<f32, Cpu>::new(&ModelConfig::Graph(config), None, &init)?;
    /// // one sequence of 4 tokens: logits [1, 4, 16]
    /// let out = model.forward::<NoneTape>(&[1, 2, 3, 4], 1, 4, None)?;
    /// assert_eq!(out.logits.shape(), &(1, 4, 16));
    /// # Ok::<(), quartic::Error>(())
    /// ```
    pub fn builder() -> GraphConfigBuilder {
        GraphConfigBuilder {
            config: Self::default(),
            rule: None,
            params: BTreeMap::new(),
        }
    }
}

/// Sets what differs from [`GraphConfig::default`]; [`GraphConfigBuilder::build`] checks it.
#[derive(Clone, Debug)]
pub struct GraphConfigBuilder {
    config: GraphConfig,
    /// The rule named, if any (without one, the default rule with its preset parameters).
    rule: Option<String>,
    /// The rule parameters set here; they win over the preset.
    params: BTreeMap<String, Const>,
}

impl GraphConfigBuilder {
    /// The token vocabulary.
    pub fn num_tokens(mut self, n: usize) -> Self {
        self.config.num_tokens = n;
        self
    }
    /// Node channels.
    pub fn dim(mut self, dim: usize) -> Self {
        self.config.dim = dim;
        self
    }
    /// Edge channels.
    pub fn dim_edges(mut self, dim_edges: usize) -> Self {
        self.config.dim_edges = dim_edges;
        self
    }
    /// Layers.
    pub fn depth(mut self, depth: usize) -> Self {
        self.config.depth = depth;
        self
    }
    /// The rule every layer runs: a built-in's name or a rule file's path. Its parameters
    /// start from its own defaults, not from the default model's preset.
    pub fn rule(mut self, rule: impl Into<String>) -> Self {
        self.rule = Some(rule.into());
        self
    }
    /// A rule parameter (`heads`, `dim_head`, … as the rule declares them).
    pub fn param(mut self, name: impl Into<String>, value: f64) -> Self {
        self.params.insert(name.into(), Const::Num(value));
        self
    }
    /// A rule parameter whose value is a word (an activation's name, say).
    pub fn param_word(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.params.insert(name.into(), Const::Word(value.into()));
        self
    }
    /// Causal: position i sees only positions up to i.
    pub fn causal(mut self, causal: bool) -> Self {
        self.config.causal = causal;
        self
    }
    /// The longest sequence the model takes.
    pub fn max_seq_len(mut self, n: usize) -> Self {
        self.config.max_seq_len = n;
        self
    }
    /// Learned absolute position embeddings added to the tokens.
    pub fn absolute_positions(mut self, on: bool) -> Self {
        self.config.absolute_positions = on;
        self
    }
    /// The dynamic position bias (an MLP of i − j) added to the edges.
    pub fn position_bias(mut self, on: bool) -> Self {
        self.config.position_bias = on;
        self
    }
    /// RMSNorm before the logits with this epsilon, or `None` for no norm.
    pub fn final_norm(mut self, eps: Option<f64>) -> Self {
        self.config.final_norm = eps;
        self
    }
    /// Edge tokens, the edge head and edge pooling (tasks on graphs).
    pub fn io(mut self, io: TaskIo) -> Self {
        self.config.io = io;
        self
    }
    /// Residual streams of the node state (hyper-connections above 1).
    pub fn residual_streams(mut self, n: usize) -> Self {
        self.config.residual_streams = n;
        self
    }

    /// The config, checked: widths and streams in range, the rule found, its parameters known
    /// to it and its plan valid at these widths.
    pub fn build(self) -> Result<GraphConfig> {
        let mut config = self.config;
        if let Some(rule) = self.rule {
            config.rule = rule;
            config.rule_params = BTreeMap::new();
        }
        config.rule_params.extend(self.params);
        config.validate()?;
        let rules = crate::rules::LayerRules::resolve(&config.rule)?;
        rules.check_depth(config.depth)?;
        rules.plans(&config.rule_config())?;
        Ok(config)
    }
}
