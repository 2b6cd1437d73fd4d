//! Models: the graph transformer (any rule per layer; the original's `QuarticTransformer` and
//! `RelationalTransformer` are configurations of it), the multi-stream transformer, and the
//! import of the original's weights.

pub mod builder;
pub mod configs;
pub mod footprint;
pub mod graph;
pub mod heads;
pub mod multistream;
pub mod op_check;
pub mod reference;
pub mod self_check;

pub use builder::GraphConfigBuilder;
pub use configs::{QuarticConfig, RelationalConfig};
pub use graph::{GraphConfig, GraphTransformer};
pub use heads::{GraphPool, Readout, TaskIo, ValueScale};
pub use multistream::{MultiStreamConfig, MultiStreamTransformer};

use dfdx::prelude::*;
use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::error::Result;
use crate::graph::DropoutDraws;
use crate::nn::{visit_variants, HasParams, Init};
use crate::tensor::*;

/// The most layers a model may have (a bound on what a configuration can ask to build).
pub const MAX_LAYERS: usize = 100_000;

/// Refuses a depth above [`MAX_LAYERS`] (`context` names the model in the message).
pub fn check_depth(context: &str, depth: usize) -> Result<()> {
    if depth > MAX_LAYERS {
        return Err(crate::error::Error::config(
            context,
            format!("`depth` {depth} is more than {MAX_LAYERS} layers"),
        ));
    }
    Ok(())
}

/// A batch of graphs as a model reads it: the tokens of `b` graphs of `n` nodes (after
/// padding), and what else the task gives.
#[derive(Clone, Copy, Debug)]
pub struct GraphInputs<'a> {
    /// `[b × n]` node token ids.
    pub tokens: &'a [usize],
    /// `[b × n × n]` edge token ids, for a model with edge inputs.
    pub edge_tokens: Option<&'a [usize]>,
    /// Graphs.
    pub b: usize,
    /// Nodes per graph, after padding.
    pub n: usize,
    /// `[b × n]`: false at padding (`None`: every node is real).
    pub valid: Option<&'a [bool]>,
    /// `[b × n × n]`: whether graph b's input has edge i → j (graphs read from files).
    pub adjacency: Option<&'a [bool]>,
    /// `[b × n × f]` continuous node features, for a model with a node feature embedding.
    pub node_features: Option<&'a [f32]>,
    /// `[b × n × n × f]` continuous edge features, for a model with an edge feature embedding.
    pub edge_features: Option<&'a [f32]>,
    /// The rules' dropout draws, while training.
    pub dropout: Option<&'a DropoutDraws>,
}

impl<'a> GraphInputs<'a> {
    /// Tokens alone (with padding): no edge inputs, input graph or dropout.
    pub fn tokens(tokens: &'a [usize], b: usize, n: usize, valid: Option<&'a [bool]>) -> Self {
        Self {
            tokens,
            edge_tokens: None,
            b,
            n,
            valid,
            adjacency: None,
            node_features: None,
            edge_features: None,
            dropout: None,
        }
    }
}

/// Any model's configuration, as saved in checkpoints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "model", rename_all = "snake_case")]
pub enum ModelConfig {
    /// A graph transformer running a rule.
    Graph(GraphConfig),
    /// The original's multi-stream transformer.
    MultiStream(MultiStreamConfig),
}

impl ModelConfig {
    /// Vocabulary size.
    pub fn num_tokens(&self) -> usize {
        match self {
            Self::Graph(c) => c.num_tokens,
            Self::MultiStream(c) => c.num_tokens,
        }
    }
    /// Longest sequence.
    pub fn max_seq_len(&self) -> usize {
        match self {
            Self::Graph(c) => c.max_seq_len,
            Self::MultiStream(c) => c.max_seq_len,
        }
    }
    /// Whether a node sees only the nodes before it.
    pub fn causal(&self) -> bool {
        match self {
            Self::Graph(c) => c.causal,
            Self::MultiStream(c) => c.causal,
        }
    }
    /// Layers.
    pub fn depth(&self) -> usize {
        match self {
            Self::Graph(c) => c.depth,
            Self::MultiStream(c) => c.depth,
        }
    }
    /// The same model with `depth` layers.
    pub fn with_depth(&self, depth: usize) -> Self {
        let mut c = self.clone();
        match &mut c {
            Self::Graph(g) => g.depth = depth,
            Self::MultiStream(m) => m.depth = depth,
        }
        c
    }
}

/// A language model over token sequences.
pub enum Model<E: Real, D: Device<E>> {
    /// A graph transformer running a rule.
    Graph(GraphTransformer<E, D>),
    /// The original's multi-stream transformer.
    MultiStream(MultiStreamTransformer<E, D>),
}

/// A forward pass: logits `[b, n, num_tokens]` and an auxiliary loss to add, if any.
pub struct Output<E: Real, D: Device<E>, T> {
    /// `[b, n, num_tokens]`.
    pub logits: T3<E, D, T>,
    /// An auxiliary loss (the multi-stream diversity loss), when the model has one.
    pub aux: Option<Tensor<(), E, D, T>>,
}

impl<E: Real, D: Device<E>> Model<E, D> {
    /// Builds a model; a graph model's rules are resolved by name or path, or taken from
    /// `rule_source` (a checkpoint's copy of their text) when given.
    pub fn new(config: &ModelConfig, rule_source: Option<&str>, init: &Init<D>) -> Result<Self> {
        Ok(match config {
            ModelConfig::Graph(c) => match rule_source {
                Some(src) => {
                    let rules = crate::rules::LayerRules::from_source(&c.rule, src)?;
                    Self::Graph(GraphTransformer::with_rules(c.clone(), rules, init)?)
                }
                None => Self::Graph(GraphTransformer::new(c.clone(), init)?),
            },
            ModelConfig::MultiStream(c) => {
                Self::MultiStream(MultiStreamTransformer::new(c.clone(), init)?)
            }
        })
    }

    /// The configuration it was built from.
    pub fn config(&self) -> ModelConfig {
        match self {
            Self::Graph(m) => ModelConfig::Graph(m.config.clone()),
            Self::MultiStream(m) => ModelConfig::MultiStream(m.config.clone()),
        }
    }

    /// The rule text a graph model runs (kept in checkpoints; a JSON list of texts for
    /// layers that run different rules).
    pub fn rule_source(&self) -> Option<&str> {
        match self {
            Self::Graph(m) => Some(m.rules.source()),
            Self::MultiStream(_) => None,
        }
    }

    /// Logits for `[b × n]` token ids; `valid` (`[b × n]`, false = padding) masks positions.
    pub fn forward<T: Tape<E, D>>(
        &self,
        tokens: &[usize],
        b: usize,
        n: usize,
        valid: Option<&[bool]>,
    ) -> Result<Output<E, D, T>>
    where
        D: Backend<E>,
    {
        self.forward_io(&GraphInputs::tokens(tokens, b, n, valid), Readout::Nodes)
    }

    /// Logits from continuous node features `[b, n, dim]` in place of token ids (a graph
    /// model; see [`GraphTransformer::forward_nodes`]); `valid` as in [`Model::forward`].
    pub fn forward_features<T: Tape<E, D>>(
        &self,
        features: T3<E, D, T>,
        valid: Option<&[bool]>,
        readout: Readout,
    ) -> Result<Output<E, D, T>>
    where
        D: Backend<E>,
    {
        match self {
            Self::Graph(m) => {
                let (b, n, _) = features.shape().concrete().into();
                let mask = m.mask(b, n, valid)?;
                Ok(Output {
                    logits: m.forward_nodes(
                        crate::graph::Nodes::new(features),
                        None,
                        &mask,
                        readout,
                    )?,
                    aux: None,
                })
            }
            Self::MultiStream(_) => Err(crate::error::Error::config(
                "model",
                "the multi-stream model reads token ids only; use a graph model for features",
            )),
        }
    }

    /// The logits of one batch of graphs, read from the nodes or (`[b, n·n, classes]`) from
    /// the edges, as `readout` says. The input graph, when given, is what rules read as
    /// `adjacency` and `mask:`; dropout draws (one seed per graph, as training draws them)
    /// turn the rules' dropouts on; without them they are the identity.
    pub fn forward_io<T: Tape<E, D>>(
        &self,
        inputs: &GraphInputs<'_>,
        readout: Readout,
    ) -> Result<Output<E, D, T>>
    where
        D: Backend<E>,
    {
        let GraphInputs {
            tokens,
            edge_tokens,
            b,
            n,
            valid,
            adjacency,
            node_features,
            edge_features,
            dropout,
        } = *inputs;
        match self {
            Self::Graph(m) => {
                let mut mask = m.mask(b, n, valid)?;
                if let Some(d) = dropout {
                    mask = mask.with_dropout(d.clone())?;
                }
                if let Some(a) = adjacency {
                    mask = mask.with_adjacency(a.to_vec())?;
                }
                Ok(Output {
                    logits: m.forward_inputs(inputs, &mask, readout)?,
                    aux: None,
                })
            }
            Self::MultiStream(m) => {
                let graph_inputs = edge_tokens.is_some()
                    || adjacency.is_some()
                    || node_features.is_some()
                    || edge_features.is_some();
                if graph_inputs || readout != Readout::Nodes {
                    return Err(crate::error::Error::config(
                        "model",
                        "the multi-stream model reads node tokens only (no edge inputs, features, input graph or graph and edge heads); use a graph model",
                    ));
                }
                let o = m.forward(tokens, b, n, valid)?;
                Ok(Output {
                    logits: o.logits,
                    aux: o.aux,
                })
            }
        }
    }
}

impl<E: Real, D: Device<E>> HasParams<E, D> for Model<E, D> {
    visit_variants!(Graph(m), MultiStream(m));
}
