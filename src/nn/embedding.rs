//! Token and position embeddings, the edge embedding and the dynamic position bias.

use dfdx::prelude::*;

use super::linear::Linear;
use super::norms::LayerNorm;
use super::params::{visit_fields, HasParams, Init, InitKind, Param};
use super::rows::map_rows4;
use crate::error::{Error, Result};
use crate::graph::{Edges, Nodes};
use crate::ops::activations::silu;
use crate::tensor::*;

/// A lookup table `[count, c]` (parameter `weight`, as PyTorch's `nn.Embedding`).
pub struct Embedding<E: Real, D: Device<E>> {
    /// The table.
    pub weight: Param<E, D>,
    /// Rows.
    pub count: usize,
    /// Channels per row.
    pub channels: usize,
}

impl<E: Real, D: Device<E>> Embedding<E, D> {
    /// A table of `count` rows of `channels` under `init`'s prefix (PyTorch's normal init).
    pub fn new(init: &Init<D>, count: usize, channels: usize) -> Result<Self> {
        Ok(Self {
            weight: init.param("weight", &[count, channels], InitKind::Normal(1.0))?,
            count,
            channels,
        })
    }

    /// Looks up `ids` laid out `[batch × n]`; an id out of range is an error naming its position.
    pub fn forward<T: Tape<E, D>>(
        &self,
        ids: &[usize],
        batch: usize,
        n: usize,
    ) -> Result<Nodes<E, D, T>> {
        if ids.len() != batch * n {
            return Err(Error::shape(
                format!("embedding `{}` ids", self.weight.name),
                format!("{} ids (batch {batch} × {n})", batch * n),
                ids.len(),
            ));
        }
        if let Some(pos) = ids.iter().position(|&t| t >= self.count) {
            return Err(Error::config(
                format!("embedding `{}`", self.weight.name),
                format!(
                    "id {} at batch {}, position {} is out of range 0..{}",
                    ids[pos],
                    pos / n.max(1),
                    pos % n.max(1),
                    self.count
                ),
            ));
        }
        let dev = self.weight.value.device().clone();
        let index = dev.tensor_from_vec(ids.to_vec(), (batch * n,));
        let rows: T2<E, D, T> = self.weight.matrix::<T>().gather(index);
        Ok(Nodes::new(rows.reshape_like(&(batch, n, self.channels))))
    }

    /// Positions `0..n` for every graph of the batch (a position table).
    pub fn positions<T: Tape<E, D>>(&self, batch: usize, n: usize) -> Result<Nodes<E, D, T>> {
        if n > self.count {
            return Err(Error::config(
                format!("position embedding `{}`", self.weight.name),
                format!("{n} positions exceed the table's {}", self.count),
            ));
        }
        let ids: Vec<usize> = (0..batch).flat_map(|_| 0..n).collect();
        self.forward(&ids, batch, n)
    }
}

impl<E: Real, D: Device<E>> HasParams<E, D> for Embedding<E, D> {
    visit_fields!(weight);
}

/// The original's edge embedding: `e[i, j] = LayerNorm(W · (rows(x_i) + cols(x_j)))`.
pub struct EdgeEmbed<E: Real, D: Device<E>> {
    /// `rows`: the source node's share.
    pub to_rows: Linear<E, D>,
    /// `cols`: the target node's share.
    pub to_cols: Linear<E, D>,
    /// `W`: to the edge width.
    pub to_edges: Linear<E, D>,
    /// The final layer norm.
    pub norm: LayerNorm<E, D>,
}

impl<E: Real, D: Device<E>> EdgeEmbed<E, D> {
    /// An embedding from nodes of `dim` to edges of `dim_edges`.
    pub fn new(init: &Init<D>, dim: usize, dim_edges: usize) -> Result<Self> {
        Ok(Self {
            to_rows: Linear::new(&init.pp("to_rows"), dim, dim_edges, false)?,
            to_cols: Linear::new(&init.pp("to_cols"), dim, dim_edges, false)?,
            to_edges: Linear::new(&init.pp("to_edges").pp("0"), dim_edges, dim_edges, false)?,
            norm: LayerNorm::new(&init.pp("to_edges").pp("1"), dim_edges, 1e-5)?,
        })
    }

    /// Node states `[b, n, dim]` to edge states `[b, n, n, dim_edges]`.
    pub fn forward<T: Tape<E, D>>(&self, x: Nodes<E, D, T>) -> Result<Edges<E, D, T>>
    where
        D: crate::backend::Backend<E>,
    {
        // W · (rows(x_i) + cols(x_j)) = W · rows(x_i) + W · cols(x_j): the edge projection runs
        // over the n nodes (twice) instead of the n² edges
        let sources = super::rows::map_rows3(x.tensor().with_empty_tape(), |t| {
            self.to_edges.forward(self.to_rows.forward(t)?)
        })?;
        let targets = super::rows::map_rows3(x.into_tensor(), |t| {
            self.to_edges.forward(self.to_cols.forward(t)?)
        })?;
        let outer = crate::ops::affine::outer_sum(sources, targets)?;
        Edges::new(map_rows4(outer, |t| self.norm.forward(t))?)
    }
}

impl<E: Real, D: Device<E>> HasParams<E, D> for EdgeEmbed<E, D> {
    visit_fields!(to_rows, to_cols, to_edges, norm);
}

/// x-transformers' `DynamicPositionBias`: an MLP from the relative distance `i − j` to one value
/// per channel (SiLU between layers, no norms), evaluated once per distance and gathered.
pub struct DynamicPositionBias<E: Real, D: Device<E>> {
    /// The MLP's layers, one input (the distance) to `channels` outputs.
    pub layers: Vec<Linear<E, D>>,
    /// Output channels.
    pub channels: usize,
}

impl<E: Real, D: Device<E>> DynamicPositionBias<E, D> {
    /// `depth` hidden layers of width `dim`, then `channels` outputs (parameter names `mlp.{k}.0`
    /// for hidden layers and `mlp.{depth}` for the last, as in x-transformers).
    pub fn new(init: &Init<D>, dim: usize, channels: usize, depth: usize) -> Result<Self> {
        if depth == 0 {
            return Err(Error::config(
                "dynamic position bias",
                "depth must be at least 1",
            ));
        }
        let mut layers = Vec::with_capacity(depth + 1);
        for k in 0..depth {
            layers.push(Linear::new(
                &init.pp("mlp").pp(k).pp("0"),
                if k == 0 { 1 } else { dim },
                dim,
                true,
            )?);
        }
        layers.push(Linear::new(&init.pp("mlp").pp(depth), dim, channels, true)?);
        Ok(Self { layers, channels })
    }

    /// The bias `[n, n, channels]`, entry (i, j) from distance i − j.
    pub fn forward<T: Tape<E, D>>(&self, n: usize) -> Result<T3<E, D, T>>
    where
        D: crate::backend::Backend<E>,
    {
        if n == 0 {
            return Err(Error::config(
                "dynamic position bias",
                "needs at least one node",
            ));
        }
        let dev = self.layers[0].weight.value.device().clone();
        let distances = constant(
            &dev,
            (0..2 * n - 1)
                .map(|k| E::of(k as f64 - (n as f64 - 1.0)))
                .collect(),
            (2 * n - 1, 1),
        )?;
        let mut h: T2<E, D, T> = distances.retaped::<T>();
        let last = self.layers.len() - 1;
        for (k, layer) in self.layers.iter().enumerate() {
            h = layer.forward(h)?;
            if k < last {
                h = silu(h);
            }
        }
        let index = dev.tensor_from_vec(
            (0..n * n).map(|e| e / n + n - 1 - e % n).collect(),
            (n * n,),
        );
        let table: T2<E, D, T> = h.gather(index);
        Ok(table.reshape_like(&(n, n, self.channels)))
    }
}

impl<E: Real, D: Device<E>> HasParams<E, D> for DynamicPositionBias<E, D> {
    visit_fields!(layers);
}
