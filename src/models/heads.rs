//! What a task hands a graph model besides tokens, and what it reads back: edge tokens (an
//! embedding added to the edge state), an edge head (per-edge predictions) and a node readout
//! that also sees each node's row of edges.
//!
//! The edge head reads the edge and both of its endpoints, so a model that never writes its
//! edges (the quadratic baseline) still predicts pairs from its node states: every rule gets the
//! same readout, and the comparison between rules measures what their layers compute.

use dfdx::prelude::*;
use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::graph::{Direction, Edges, GraphMask, Nodes, Reduce};
use crate::nn::rows::{map_rows3, map_rows4};
use crate::nn::{visit_fields, HasParams, Init, InitKind, Linear, Param, RmsKind, RmsNorm};
use crate::ops::activations::gelu_exact;
use crate::tensor::*;

/// Where a model's predictions are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readout {
    /// Each node predicts a class.
    Nodes,
    /// Each edge predicts a class.
    Edges,
    /// Each graph predicts a class, from its nodes pooled ([`GraphPool`]).
    Graph,
}

/// How a graph-level readout pools a graph's (real) nodes into one vector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GraphPool {
    /// The mean of the nodes.
    #[default]
    Mean,
    /// The channel-wise maximum of the nodes.
    Max,
    /// A softmax over the nodes of a learned score per node, weighting the nodes (global
    /// attention pooling, Li et al. 2016).
    Attention,
}

impl GraphPool {
    /// `mean`, `max` or `attention`.
    pub fn parse(word: &str) -> Result<Self> {
        match word {
            "mean" => Ok(Self::Mean),
            "max" => Ok(Self::Max),
            "attention" => Ok(Self::Attention),
            other => Err(Error::config(
                "--pool",
                format!("`{other}` is not a pooling: mean, max or attention"),
            )),
        }
    }

    /// Its name, as `parse` reads it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Mean => "mean",
            Self::Max => "max",
            Self::Attention => "attention",
        }
    }
}

/// The task-facing parts of a graph model (all off by default).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskIo {
    /// How many edge tokens there are (0: no edge inputs).
    #[serde(default)]
    pub edge_vocab: usize,
    /// How many classes each edge predicts (0: no edge head).
    #[serde(default)]
    pub edge_classes: usize,
    /// The node head also reads the mean and the max of each node's outgoing edges.
    #[serde(default)]
    pub pool_edges: bool,
    /// How many classes each graph predicts (0: no graph head).
    #[serde(default)]
    pub graph_classes: usize,
    /// How the graph head pools the nodes.
    #[serde(default)]
    pub graph_pool: GraphPool,
    /// Continuous features per node (0: tokens only), through a linear embedding.
    #[serde(default)]
    pub node_features: usize,
    /// Continuous features per edge (0: none), through a linear embedding.
    #[serde(default)]
    pub edge_features: usize,
    /// The heads predict one real value per node, edge or graph (a regression), in the
    /// targets' units: `mean + std · output` (`None`: class logits).
    #[serde(default)]
    pub values: Option<ValueScale>,
}

/// The affine map at the end of a regression head, `mean + std · output`, from the training
/// targets' mean and standard deviation: a fresh head then predicts about the mean, with
/// errors of about one standard deviation, whatever the targets' units.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValueScale {
    /// The training targets' mean.
    pub mean: f64,
    /// Their standard deviation (1 where they do not vary).
    pub std: f64,
}

impl ValueScale {
    /// The scale of `values`: their mean and standard deviation (1 when there are fewer than
    /// two or they do not vary); `None` when there are none or one is not finite.
    pub fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() || values.iter().any(|v| !v.is_finite()) {
            return None;
        }
        let m = values.len() as f64;
        let mean = values.iter().sum::<f64>() / m;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / m;
        let std = if var.sqrt() > 1e-12 * mean.abs().max(1.0) {
            var.sqrt()
        } else {
            1.0
        };
        Some(Self { mean, std })
    }
}

/// Edge tokens `[b × n × n]` to an edge tensor `[b, n, n, c]` (parameter `weight`).
pub struct EdgeTokens<E: Real, D: Device<E>> {
    /// The embedding table `[vocab, channels]`.
    pub weight: Param<E, D>,
    /// Edge tokens.
    pub vocab: usize,
    /// Edge channels.
    pub channels: usize,
}

impl<E: Real, D: Device<E>> EdgeTokens<E, D> {
    /// A table of `vocab` rows of `channels`, under `init`'s prefix.
    pub fn new(init: &Init<D>, vocab: usize, channels: usize) -> Result<Self> {
        Ok(Self {
            weight: init.param("weight", &[vocab, channels], InitKind::Normal(1.0))?,
            vocab,
            channels,
        })
    }

    /// Looks up `ids` (`[b × n × n]`, each below `vocab`) as `[b, n, n, channels]`.
    pub fn forward<T: Tape<E, D>>(&self, ids: &[usize], b: usize, n: usize) -> Result<T4<E, D, T>> {
        if ids.len() != b * n * n {
            return Err(Error::shape(
                "edge tokens",
                format!("{} ids (batch {b} × {n} × {n})", b * n * n),
                ids.len(),
            ));
        }
        if let Some(pos) = ids.iter().position(|&t| t >= self.vocab) {
            let (g, i, j) = (pos / (n * n), pos / n % n, pos % n);
            return Err(Error::config(
                "edge tokens",
                format!(
                    "id {} on edge ({i}, {j}) of graph {g} is out of range 0..{}",
                    ids[pos], self.vocab
                ),
            ));
        }
        let dev = self.weight.value.device().clone();
        let index = dev.tensor_from_vec(ids.to_vec(), (b * n * n,));
        let rows: T2<E, D, T> = self.weight.matrix::<T>().gather(index);
        Ok(rows.reshape_like(&(b, n, n, self.channels)))
    }
}

/// The RMSNorm both readouts put on the final edges (the edges' residual stream grows).
fn edge_norm<E: Real, D: Device<E>>(init: &Init<D>, dim_edges: usize) -> Result<RmsNorm<E, D>> {
    RmsNorm::new(
        &init.pp("norm"),
        dim_edges,
        RmsKind::Scaled { eps: 1e-5 },
        "weight",
    )
}

/// Per-edge logits: `W · gelu(A · norm(e_ij) + B · x_i + C · x_j + bias)`.
pub struct EdgeHead<E: Real, D: Device<E>> {
    /// The edge's prenorm.
    pub norm: RmsNorm<E, D>,
    /// `A`, with the bias.
    pub from_edge: Linear<E, D>,
    /// `B`: the source node's share.
    pub from_source: Linear<E, D>,
    /// `C`: the target node's share.
    pub from_target: Linear<E, D>,
    /// `W`: hidden to class logits.
    pub to_logits: Linear<E, D>,
}

impl<E: Real, D: Device<E>> EdgeHead<E, D> {
    /// A head from nodes of `dim` and edges of `dim_edges` to `classes` logits (hidden width `dim`).
    pub fn new(init: &Init<D>, dim: usize, dim_edges: usize, classes: usize) -> Result<Self> {
        let hidden = dim;
        Ok(Self {
            norm: edge_norm(init, dim_edges)?,
            from_edge: Linear::new(&init.pp("from_edge"), dim_edges, hidden, true)?,
            from_source: Linear::new(&init.pp("from_source"), dim, hidden, false)?,
            from_target: Linear::new(&init.pp("from_target"), dim, hidden, false)?,
            to_logits: Linear::new(&init.pp("to_logits"), hidden, classes, true)?,
        })
    }

    /// `nodes` `[b, n, dim]` (normed) and `edges` `[b, n, n, de]` to logits `[b, n, n, classes]`.
    pub fn forward<T: Tape<E, D>>(
        &self,
        nodes: Nodes<E, D, T>,
        edges: Edges<E, D, T>,
    ) -> Result<T4<E, D, T>>
    where
        D: Backend<E>,
    {
        let x = nodes.into_tensor();
        let source = map_rows3(x.with_empty_tape(), |t| self.from_source.forward(t))?;
        let target = map_rows3(x, |t| self.from_target.forward(t))?;
        let edge = map_rows4(edges.into_tensor(), |t| {
            self.from_edge.forward(self.norm.forward(t)?)
        })?;
        let shape = *edge.shape();
        let z = edge
            + source.broadcast_like::<_, Axis<2>>(&shape)
            + target.broadcast_like::<_, Axis<1>>(&shape);
        map_rows4(gelu_exact(z)?, |t| self.to_logits.forward(t))
    }
}

/// Adds to each node the projected mean and max of its (normed) outgoing edges, over the edges
/// the mask lets it read.
pub struct EdgePool<E: Real, D: Device<E>> {
    /// The edges' prenorm.
    pub norm: RmsNorm<E, D>,
    /// The projected mean of a node's outgoing edges.
    pub from_mean: Linear<E, D>,
    /// The projected max of a node's outgoing edges.
    pub from_max: Linear<E, D>,
}

impl<E: Real, D: Device<E>> EdgePool<E, D> {
    /// A pool from edges of `dim_edges` into nodes of `dim`.
    pub fn new(init: &Init<D>, dim: usize, dim_edges: usize) -> Result<Self> {
        Ok(Self {
            norm: edge_norm(init, dim_edges)?,
            from_mean: Linear::new(&init.pp("from_mean"), dim_edges, dim, false)?,
            from_max: Linear::new(&init.pp("from_max"), dim_edges, dim, false)?,
        })
    }

    /// Adds the pooled outgoing edges (those `mask` lets a node read) to each node.
    pub fn forward<T: Tape<E, D>>(
        &self,
        nodes: Nodes<E, D, T>,
        edges: Edges<E, D, T>,
        mask: &GraphMask,
    ) -> Result<Nodes<E, D, T>>
    where
        D: Backend<E>,
    {
        let normed = Edges::new(map_rows4(edges.into_tensor(), |t| self.norm.forward(t))?)?;
        let for_max = Edges::new(normed.tensor().with_empty_tape())?;
        let mean = normed.reduce(Reduce::Mean, Direction::Outgoing, mask)?;
        let max = for_max.reduce(Reduce::Max, Direction::Outgoing, mask)?;
        let mean = map_rows3(mean.into_tensor(), |t| self.from_mean.forward(t))?;
        let max = map_rows3(max.into_tensor(), |t| self.from_max.forward(t))?;
        Ok(Nodes::new(nodes.into_tensor() + mean + max))
    }
}

/// Per-graph logits: the graph's real nodes pooled ([`GraphPool`]), then a linear map.
pub struct GraphHead<E: Real, D: Device<E>> {
    /// How the nodes are pooled.
    pub pool: GraphPool,
    /// Attention pooling's score per node (`None` for mean and max).
    pub score: Option<Linear<E, D>>,
    /// The pooled vector to class logits.
    pub to_logits: Linear<E, D>,
}

impl<E: Real, D: Device<E>> GraphHead<E, D> {
    /// A head from nodes of `dim` to `classes` logits.
    pub fn new(init: &Init<D>, dim: usize, classes: usize, pool: GraphPool) -> Result<Self> {
        Ok(Self {
            pool,
            score: match pool {
                GraphPool::Attention => Some(Linear::new(&init.pp("score"), dim, 1, true)?),
                _ => None,
            },
            to_logits: Linear::new(&init.pp("to_logits"), dim, classes, true)?,
        })
    }

    /// Nodes `[b, n, dim]` (normed; padding as `mask` says) to logits `[b, 1, classes]`.
    pub fn forward<T: Tape<E, D>>(
        &self,
        nodes: T3<E, D, T>,
        mask: &GraphMask,
    ) -> Result<T3<E, D, T>>
    where
        D: Backend<E>,
    {
        let (b, n, dim) = *nodes.shape();
        let dev = nodes.device().clone();
        let real: Vec<E> = mask
            .valid()
            .iter()
            .map(|&v| E::of(f64::from(u8::from(v))))
            .collect();
        let real: T2<E, D> = constant(&dev, real, (b, n))?;
        let pooled: T2<E, D, T> = match self.pool {
            GraphPool::Mean => {
                let counts: Vec<E> = (0..b)
                    .map(|g| {
                        let c = (0..n).filter(|&i| mask.node_valid(g, i)).count();
                        E::of(1.0 / c.max(1) as f64)
                    })
                    .collect();
                let inv: T1<E, D> = constant(&dev, counts, (b,))?;
                let summed =
                    (nodes * real.broadcast_like::<_, Axis<2>>(&(b, n, dim))).sum::<_, Axis<1>>();
                summed * inv.broadcast_like::<_, Axis<1>>(&(b, dim))
            }
            GraphPool::Max => {
                // padding pushed far below every real node (each graph has one)
                let push = (real - E::one()) * E::of(-crate::spec::MASKED);
                (nodes + push.broadcast_like::<_, Axis<2>>(&(b, n, dim))).max::<_, Axis<1>>()
            }
            GraphPool::Attention => {
                let score = self.score.as_ref().expect("attention pooling has a score");
                let s =
                    map_rows3(nodes.with_empty_tape(), |t| score.forward(t))?.reshape_like(&(b, n));
                let s = s + (real - E::one()) * E::of(-crate::spec::MASKED);
                let w = s.softmax::<Axis<1>>();
                (nodes * w.broadcast_like::<_, Axis<2>>(&(b, n, dim))).sum::<_, Axis<1>>()
            }
        };
        let logits = self.to_logits.forward(pooled)?;
        let classes = logits.shape().1;
        Ok(logits.reshape_like(&(b, 1, classes)))
    }
}

impl<E: Real, D: Device<E>> HasParams<E, D> for GraphHead<E, D> {
    visit_fields!(score, to_logits);
}

impl<E: Real, D: Device<E>> HasParams<E, D> for EdgeHead<E, D> {
    visit_fields!(norm, from_edge, from_source, from_target, to_logits);
}

impl<E: Real, D: Device<E>> HasParams<E, D> for EdgePool<E, D> {
    visit_fields!(norm, from_mean, from_max);
}

impl<E: Real, D: Device<E>> HasParams<E, D> for EdgeTokens<E, D> {
    visit_fields!(weight);
}
