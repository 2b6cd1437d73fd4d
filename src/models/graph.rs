//! `GraphTransformer`: tokens become the nodes of a complete directed graph, pairs of tokens its
//! edges, and every layer runs one rule (see `dsl/`). The original's `QuarticTransformer` and
//! `RelationalTransformer` are configurations of it (`models::configs`).
//!
//! Token (+ absolute position) embeddings onto the nodes; the edge embedding (an outer sum of two
//! projections, projected and layer-normed) plus an optional dynamic position bias (and, for
//! graph tasks, embedded edge tokens) onto the edges; `depth` rule layers; a final RMSNorm
//! (optional) and the logits, read from the nodes or through the edge head (`heads`).

use std::collections::BTreeMap;

use dfdx::prelude::*;
use serde::{Deserialize, Serialize};

use super::heads::{EdgeHead, EdgePool, EdgeTokens, GraphHead, Readout, TaskIo};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::graph::{Edges, GraphMask, Nodes};
use crate::nn::embedding::{DynamicPositionBias, EdgeEmbed, Embedding};
use crate::nn::hyper::HyperConnection;
use crate::nn::rows::map_rows3;
use crate::nn::{visit_fields, HasParams, Init, Linear, RmsKind, RmsNorm};
use crate::rules::{Const, LayerRules, RuleConfig, RuleLayer};
use crate::tensor::*;

fn default_max_seq_len() -> usize {
    2048
}
fn default_true() -> bool {
    true
}
fn default_norm_eps() -> f64 {
    1e-5
}

/// Everything that defines a graph transformer's shape; saved in every checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GraphConfig {
    /// Vocabulary size (node tokens; node classes are below it too).
    pub num_tokens: usize,
    /// Node width.
    pub dim: usize,
    /// Edge width.
    pub dim_edges: usize,
    /// Layers, each running the rule.
    pub depth: usize,
    /// A built-in rule name or a rule file (its text is kept in checkpoints as `rule_source`).
    pub rule: String,
    /// Rule parameter overrides (`heads = 4`).
    #[serde(default)]
    pub rule_params: BTreeMap<String, Const>,
    /// Causal: a node sees only the nodes before it, an edge only edges between such nodes.
    #[serde(default)]
    pub causal: bool,
    /// Longest sequence (position embeddings and the position bias).
    #[serde(default = "default_max_seq_len")]
    pub max_seq_len: usize,
    /// Learned absolute position embeddings added to the tokens.
    #[serde(default = "default_true")]
    pub absolute_positions: bool,
    /// The dynamic position bias (an MLP of i − j) added to the edges.
    #[serde(default = "default_true")]
    pub position_bias: bool,
    /// RMSNorm before the logits (`None` = no norm).
    #[serde(default = "default_final_norm")]
    pub final_norm: Option<f64>,
    /// Edge tokens, the edge head and the edge-pooling node readout (tasks on graphs).
    #[serde(default)]
    pub io: TaskIo,
    /// Residual streams of the node state: above 1, every node branch of the rule is wrapped in
    /// a dynamic hyper-connection (`nn::hyper`), as the original's default (4) does.
    #[serde(default = "one")]
    pub residual_streams: usize,
}

fn one() -> usize {
    1
}

/// The most residual streams a model may keep.
pub const MAX_RESIDUAL_STREAMS: usize = 64;

fn default_final_norm() -> Option<f64> {
    Some(default_norm_eps())
}

impl GraphConfig {
    /// What the rule is checked against: the widths, causality and the parameter overrides.
    pub fn rule_config(&self) -> RuleConfig {
        RuleConfig {
            dim: self.dim,
            dim_edges: self.dim_edges,
            causal: self.causal,
            overrides: self
                .rule_params
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// Widths, depth and streams in range.
    pub(crate) fn validate(&self) -> Result<()> {
        let positive = [
            ("num_tokens", self.num_tokens),
            ("dim", self.dim),
            ("dim_edges", self.dim_edges),
            ("depth", self.depth),
            ("max_seq_len", self.max_seq_len),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(Error::config("model", format!("`{name}` must be positive")));
            }
            if v > crate::rules::check::MAX_CHANNELS {
                return Err(Error::config(
                    "model",
                    format!(
                        "`{name}` {v} is more than {}",
                        crate::rules::check::MAX_CHANNELS
                    ),
                ));
            }
        }
        if !(1..=MAX_RESIDUAL_STREAMS).contains(&self.residual_streams) {
            return Err(Error::config(
                "model",
                format!(
                    "`residual_streams` must be 1 to {MAX_RESIDUAL_STREAMS}, got {}",
                    self.residual_streams
                ),
            ));
        }
        if let Some(s) = self.io.values {
            if !(s.mean.is_finite() && s.std.is_finite() && s.std > 0.0) {
                return Err(Error::config(
                    "model",
                    format!(
                        "`io.values` needs a finite mean and a finite std > 0, got mean {} and \
                         std {}",
                        s.mean, s.std
                    ),
                ));
            }
        }
        super::check_depth("model", self.depth)
    }
}

/// A graph transformer: embeddings, layers running one rule, and the readouts a task needs.
pub struct GraphTransformer<E: Real, D: Device<E>> {
    /// The sizes it was built with.
    pub config: GraphConfig,
    /// The rules the layers run (their text is saved with checkpoints).
    pub rules: LayerRules,
    /// Token embeddings of the nodes.
    pub token_emb: Embedding<E, D>,
    /// Absolute position embeddings, when the config asks for them.
    pub pos_emb: Option<Embedding<E, D>>,
    /// The original's edge embedding from the two endpoints' tokens.
    pub edge_emb: EdgeEmbed<E, D>,
    /// The dynamic position bias added to the edges, when the config asks for it.
    pub pos_bias: Option<DynamicPositionBias<E, D>>,
    /// One layer per depth, each the rule with its own parameters.
    pub layers: Vec<RuleLayer<E, D>>,
    /// Per layer, one hyper-connection per node branch (none with one residual stream).
    pub hyper: Vec<Vec<HyperConnection<E, D>>>,
    /// The norm before the logits, if any.
    pub final_norm: Option<RmsNorm<E, D>>,
    /// Node states to token logits.
    pub to_logits: Linear<E, D>,
    /// Node states to one value each, for node regression (`io.values` with neither an edge
    /// nor a graph head).
    pub node_value: Option<Linear<E, D>>,
    /// Edge-token embeddings, for tasks with edge inputs.
    pub edge_tokens: Option<EdgeTokens<E, D>>,
    /// Edges pooled into their nodes, for node readouts of graph tasks.
    pub edge_pool: Option<EdgePool<E, D>>,
    /// Per-edge logits, for tasks read from the edges.
    pub edge_head: Option<EdgeHead<E, D>>,
    /// Per-graph logits from the pooled nodes, for graph-level tasks.
    pub graph_head: Option<GraphHead<E, D>>,
    /// Continuous node features to the node width, added to the token embeddings.
    pub node_features: Option<Linear<E, D>>,
    /// Continuous edge features to the edge width, added to the edge embeddings.
    pub edge_features: Option<Linear<E, D>>,
}

impl<E: Real, D: Device<E>> GraphTransformer<E, D> {
    /// Builds the model, its rules resolved from `config.rule` (built-ins or files).
    pub fn new(config: GraphConfig, init: &Init<D>) -> Result<Self> {
        let rules = LayerRules::resolve(&config.rule)?;
        Self::with_rules(config, rules, init)
    }

    /// Builds the model around already loaded rules (e.g. those saved in a checkpoint).
    pub fn with_rules(config: GraphConfig, rules: LayerRules, init: &Init<D>) -> Result<Self> {
        config.validate()?;
        rules.check_depth(config.depth)?;
        let plans = rules.plans(&config.rule_config())?;
        let (dim, de) = (config.dim, config.dim_edges);
        let mut layers = Vec::with_capacity(config.depth);
        let mut hyper = Vec::new();
        for k in 0..config.depth {
            let plan = rules.plan_for_layer(&plans, k).clone();
            let layer = RuleLayer::new(plan, &init.pp("layers").pp(k))?;
            if config.residual_streams > 1 {
                let branches = layer.node_branches()?;
                let init = init.pp("layers").pp(k).pp("hyper");
                let per_layer = (0..branches.len())
                    .map(|j| {
                        // fresh: branch j of layer k reads one stream, in turn
                        let stream = k * branches.len() + j;
                        HyperConnection::new(&init.pp(j), config.residual_streams, dim, stream)
                    })
                    .collect::<Result<Vec<_>>>()?;
                hyper.push(per_layer);
            }
            layers.push(layer);
        }
        Ok(Self {
            token_emb: Embedding::new(&init.pp("token_emb"), config.num_tokens, dim)?,
            pos_emb: if config.absolute_positions {
                Some(Embedding::new(
                    &init.pp("pos_emb"),
                    config.max_seq_len,
                    dim,
                )?)
            } else {
                None
            },
            edge_emb: EdgeEmbed::new(&init.pp("to_edge_emb"), dim, de)?,
            pos_bias: if config.position_bias {
                Some(DynamicPositionBias::new(
                    &init.pp("dynamic_rel_pos_bias"),
                    dim,
                    de,
                    2,
                )?)
            } else {
                None
            },
            layers,
            hyper,
            final_norm: match config.final_norm {
                Some(eps) => Some(RmsNorm::new(
                    &init.pp("final_norm"),
                    dim,
                    RmsKind::Scaled { eps },
                    "weight",
                )?),
                None => None,
            },
            to_logits: Linear::new(&init.pp("to_logits"), dim, config.num_tokens, false)?,
            node_value: match config.io {
                TaskIo {
                    values: Some(_),
                    edge_classes: 0,
                    graph_classes: 0,
                    ..
                } => Some(Linear::new(&init.pp("node_value"), dim, 1, true)?),
                _ => None,
            },
            edge_tokens: match config.io.edge_vocab {
                0 => None,
                v => Some(EdgeTokens::new(&init.pp("edge_tokens"), v, de)?),
            },
            edge_pool: if config.io.pool_edges {
                Some(EdgePool::new(&init.pp("edge_pool"), dim, de)?)
            } else {
                None
            },
            edge_head: match config.io.edge_classes {
                0 => None,
                c => Some(EdgeHead::new(&init.pp("edge_head"), dim, de, c)?),
            },
            node_features: match config.io.node_features {
                0 => None,
                f => Some(Linear::new(&init.pp("node_features"), f, dim, true)?),
            },
            edge_features: match config.io.edge_features {
                0 => None,
                f => Some(Linear::new(&init.pp("edge_features"), f, de, true)?),
            },
            graph_head: match config.io.graph_classes {
                0 => None,
                c => Some(GraphHead::new(
                    &init.pp("graph_head"),
                    dim,
                    c,
                    config.io.graph_pool,
                )?),
            },
            rules,
            config,
        })
    }

    /// The padding and causality of a batch: `valid` per position `[batch × n]` (all real
    /// when `None`).
    pub fn mask(&self, batch: usize, n: usize, valid: Option<&[bool]>) -> Result<GraphMask> {
        let mask = match valid {
            Some(v) => GraphMask::from_valid(batch, n, v.to_vec())?,
            None => GraphMask::full(batch, n),
        };
        Ok(mask.causal(self.config.causal))
    }

    /// Logits `[batch, n, num_tokens]` for token ids laid out `[batch × n]`.
    pub fn forward<T: Tape<E, D>>(
        &self,
        tokens: &[usize],
        batch: usize,
        n: usize,
        mask: &GraphMask,
    ) -> Result<T3<E, D, T>>
    where
        D: Backend<E>,
    {
        self.forward_io(tokens, None, batch, n, mask, Readout::Nodes)
    }

    /// Adds the embedded edge tokens, which the model needs exactly when it has edge inputs.
    fn add_edge_tokens<T: Tape<E, D>>(
        &self,
        edges: Edges<E, D, T>,
        ids: Option<&[usize]>,
        batch: usize,
        n: usize,
    ) -> Result<Edges<E, D, T>>
    where
        D: Backend<E>,
    {
        let problem = match (&self.edge_tokens, ids) {
            (Some(table), Some(ids)) => {
                let embedded = table.forward::<T>(ids, batch, n)?;
                return Edges::new(crate::ops::affine::add_repeated(
                    edges.into_tensor(),
                    embedded,
                )?);
            }
            (None, None) => return Ok(edges),
            (Some(_), None) => "the model has edge inputs but no edge tokens were given",
            (None, Some(_)) => "edge tokens were given but the model has no edge inputs",
        };
        Err(Error::config("model input", problem))
    }

    /// Logits read where `readout` says: `[batch, n, num_tokens]` from the nodes, or
    /// `[batch, n·n, edge_classes]` from the edges (edge (i, j) at row i·n + j). `edge_tokens`
    /// (`[batch × n × n]`) are required exactly when the model has edge inputs.
    pub fn forward_io<T: Tape<E, D>>(
        &self,
        tokens: &[usize],
        edge_tokens: Option<&[usize]>,
        batch: usize,
        n: usize,
        mask: &GraphMask,
        readout: Readout,
    ) -> Result<T3<E, D, T>>
    where
        D: Backend<E>,
    {
        let inputs = super::GraphInputs {
            edge_tokens,
            ..super::GraphInputs::tokens(tokens, batch, n, None)
        };
        self.forward_inputs(&inputs, mask, readout)
    }

    /// Logits of one batch of graphs with everything a task gives: tokens, edge tokens, and
    /// continuous node (`[b × n × f]`) and edge (`[b × n × n × f]`) features, each through the
    /// model's linear embedding, required exactly when the model has it. Padding, the input
    /// graph and dropout come from `mask` (the inputs' own copies are not read here).
    pub fn forward_inputs<T: Tape<E, D>>(
        &self,
        inputs: &super::GraphInputs<'_>,
        mask: &GraphMask,
        readout: Readout,
    ) -> Result<T3<E, D, T>>
    where
        D: Backend<E>,
    {
        let (batch, n) = (inputs.b, inputs.n);
        if n > self.config.max_seq_len {
            return Err(Error::config(
                "model input",
                format!("{n} tokens exceed max_seq_len {}", self.config.max_seq_len),
            ));
        }
        let x: Nodes<E, D, T> = self.token_emb.forward(inputs.tokens, batch, n)?;
        let x = match self.embed_features::<T>(
            &self.node_features,
            inputs.node_features,
            "node",
            batch * n,
        )? {
            Some(f) => Nodes::new(x.into_tensor() + f.reshape_like(&(batch, n, self.config.dim))),
            None => x,
        };
        let edge_features = self
            .embed_features::<T>(
                &self.edge_features,
                inputs.edge_features,
                "edge",
                batch * n * n,
            )?
            .map(|f| f.reshape_like(&(batch, n, n, self.config.dim_edges)));
        self.forward_embedded(x, inputs.edge_tokens, edge_features, mask, readout)
    }

    /// `[rows, width]` features through `linear`, which the model has exactly when features
    /// are to be given.
    fn embed_features<T: Tape<E, D>>(
        &self,
        linear: &Option<Linear<E, D>>,
        features: Option<&[f32]>,
        what: &str,
        rows: usize,
    ) -> Result<Option<T2<E, D, T>>>
    where
        D: Backend<E>,
    {
        match (linear, features) {
            (None, None) => Ok(None),
            (Some(l), Some(f)) => {
                let width = l.weight.dims[1];
                if f.len() != rows * width {
                    return Err(Error::shape(
                        &format!("{what} features"),
                        format!("{rows} rows of {width}"),
                        format!("{} values", f.len()),
                    ));
                }
                let dev = l.weight.value.device().clone();
                let t: T2<E, D> = constant(
                    &dev,
                    f.iter().map(|&v| E::of(f64::from(v))).collect(),
                    (rows, width),
                )?;
                Ok(Some(l.forward(t.retaped::<T>())?))
            }
            (Some(_), None) => Err(Error::config(
                "model input",
                format!("the model reads {what} features but none were given"),
            )),
            (None, Some(_)) => Err(Error::config(
                "model input",
                format!("{what} features were given but the model has no {what} feature embedding"),
            )),
        }
    }

    /// Like [`GraphTransformer::forward_io`], from node features `[b, n, dim]` in place of the
    /// token embeddings: continuous inputs (measurements, a user's own embedding) enter here.
    /// Position embeddings, the position bias and edge tokens are added as for tokens; the
    /// features may carry a tape, so gradients reach them too.
    pub fn forward_nodes<T: Tape<E, D>>(
        &self,
        x: Nodes<E, D, T>,
        edge_tokens: Option<&[usize]>,
        mask: &GraphMask,
        readout: Readout,
    ) -> Result<T3<E, D, T>>
    where
        D: Backend<E>,
    {
        if self.edge_features.is_some() {
            return Err(Error::config(
                "model input",
                "the model reads edge features; give them with `forward_inputs`",
            ));
        }
        self.forward_embedded(x, edge_tokens, None, mask, readout)
    }

    /// The model after the node embedding: the edges embedded (with edge tokens and embedded
    /// edge features `[b, n, n, dim_edges]` where given), the layers, and the readout.
    fn forward_embedded<T: Tape<E, D>>(
        &self,
        x: Nodes<E, D, T>,
        edge_tokens: Option<&[usize]>,
        edge_features: Option<T4<E, D, T>>,
        mask: &GraphMask,
        readout: Readout,
    ) -> Result<T3<E, D, T>>
    where
        D: Backend<E>,
    {
        let (batch, n, dim) = x.dims();
        if dim != self.config.dim {
            return Err(Error::shape(
                "node features",
                format!("[b, n, {}] (the model's dim)", self.config.dim),
                format!("[{batch}, {n}, {dim}]"),
            ));
        }
        if n > self.config.max_seq_len {
            return Err(Error::config(
                "model input",
                format!("{n} nodes exceed max_seq_len {}", self.config.max_seq_len),
            ));
        }
        if mask.batch() != batch || mask.nodes() != n {
            return Err(Error::shape(
                "node features",
                format!("the mask's [{}, {}, dim]", mask.batch(), mask.nodes()),
                format!("[{batch}, {n}, {dim}]"),
            ));
        }
        let x = match &self.pos_emb {
            Some(p) => {
                let pos: Nodes<E, D, T> = p.positions(batch, n)?;
                Nodes::new(crate::ops::affine::add_repeated(
                    x.into_tensor(),
                    pos.into_tensor(),
                )?)
            }
            None => x,
        };
        let edges = self
            .edge_emb
            .forward(Nodes::new(x.tensor().with_empty_tape()))?;
        let edges = match &self.pos_bias {
            Some(pb) => {
                let bias: T3<E, D, T> = pb.forward(n)?;
                Edges::new(crate::ops::affine::add_repeated(edges.into_tensor(), bias)?)?
            }
            None => edges,
        };
        let edges = self.add_edge_tokens(edges, edge_tokens, batch, n)?;
        let edges = match edge_features {
            Some(f) => Edges::new(edges.into_tensor() + f)?,
            None => edges,
        };
        let (mut x, mut edges) = (x, edges);
        if self.hyper.is_empty() {
            for (k, layer) in self.layers.iter().enumerate() {
                (x, edges) = layer.forward(x, edges, &mask.for_layer(k))?;
            }
        } else {
            // the nodes repeated into the residual streams, summed back after the last layer
            let (b, n, d) = x.dims();
            let s = self.config.residual_streams;
            let mut streams = x
                .into_tensor()
                .broadcast_like::<_, Axis<2>>(&(b, n, s, d))
                .contiguous();
            for (k, (layer, hyper)) in self.layers.iter().zip(&self.hyper).enumerate() {
                (streams, edges) =
                    layer.forward_streams(streams, edges, &mask.for_layer(k), hyper)?;
            }
            x = Nodes::new(streams.sum::<_, Axis<2>>());
        }
        // the rule layers hand the whole history to the nodes; the edges' tape is empty, and
        // the readouts below merge what they record from the edges back into one tape
        let x = match &self.edge_pool {
            Some(pool) => pool.forward(x, Edges::new(edges.tensor().with_empty_tape())?, mask)?,
            None => x,
        };
        let x = x.into_tensor();
        let x = match &self.final_norm {
            Some(norm) => map_rows3(x, |t| norm.forward(t))?,
            None => x,
        };
        let out = self.readout(x, edges, mask, readout)?;
        // a regression's outputs in the targets' units
        Ok(match self.config.io.values {
            Some(s) => out * E::of(s.std) + E::of(s.mean),
            None => out,
        })
    }

    /// The final nodes (normed) and edges read where `readout` says: logits, or one value per
    /// position before the regression's scale.
    fn readout<T: Tape<E, D>>(
        &self,
        x: T3<E, D, T>,
        edges: Edges<E, D, T>,
        mask: &GraphMask,
        readout: Readout,
    ) -> Result<T3<E, D, T>>
    where
        D: Backend<E>,
    {
        let (batch, n, _) = *x.shape();
        match readout {
            Readout::Nodes => match &self.node_value {
                Some(head) => map_rows3(x, |t| head.forward(t)),
                None => map_rows3(x, |t| self.to_logits.forward(t)),
            },
            Readout::Edges => {
                let head = self.edge_head.as_ref().ok_or_else(|| {
                    Error::config(
                        "model",
                        "the task reads edges but the model has no edge head",
                    )
                })?;
                let logits = head.forward(Nodes::new(x), edges)?;
                let classes = logits.shape().3;
                Ok(logits.reshape_like(&(batch, n * n, classes)))
            }
            Readout::Graph => {
                let head = self.graph_head.as_ref().ok_or_else(|| {
                    Error::config(
                        "model",
                        "the task reads whole graphs but the model has no graph head",
                    )
                })?;
                // the edges' (empty) tape is dropped: the graph head reads the nodes only
                drop(edges);
                head.forward(x, mask)
            }
        }
    }
}

impl<E: Real, D: Device<E>> HasParams<E, D> for GraphTransformer<E, D> {
    visit_fields!(
        token_emb,
        pos_emb,
        edge_emb,
        pos_bias,
        layers,
        hyper,
        final_norm,
        to_logits,
        node_value,
        edge_tokens,
        edge_pool,
        edge_head,
        graph_head,
        node_features,
        edge_features,
    );
}
