//! The typed graph layer: a batch of fully connected directed graphs.
//!
//! [`Nodes`] hold `[batch, n, c]` and [`Edges`] hold `[batch, n (source i), n (target j), c]`.
//! They are distinct types, so passing edges where nodes belong does not compile; the views
//! between the domains (lifting nodes onto edges, the diagonal, reductions) are methods here.

mod dropout;
mod mask;

pub use dropout::{step_seeds, DropoutDraws};
pub(crate) use mask::no_input_graph;
pub use mask::{GraphMask, KeyRestriction};

use dfdx::prelude::*;

use crate::error::{Error, Result};
use crate::spec::MASKED;
use crate::tensor::*;

/// Node features `[batch, n, c]`.
pub struct Nodes<E: Real, D: Device<E>, T = NoneTape>(pub(crate) T3<E, D, T>);

/// Edge features `[batch, i, j, c]`: entry (i, j) is the directed edge from node i to node j.
pub struct Edges<E: Real, D: Device<E>, T = NoneTape>(pub(crate) T4<E, D, T>);

/// How edges are reduced onto nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduce {
    /// Sum over the edges.
    Sum,
    /// Mean over the visible edges.
    Mean,
    /// Max over the visible edges.
    Max,
}

/// Which edges of node i a reduction reads: outgoing (i, ·) or incoming (·, i).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The edges (i, ·) leaving node i.
    Outgoing,
    /// The edges (·, i) entering node i.
    Incoming,
}

impl<E: Real, D: Device<E>, T: Tape<E, D>> Nodes<E, D, T> {
    /// Wraps a `[batch, n, c]` tensor.
    pub fn new(t: T3<E, D, T>) -> Self {
        Self(t)
    }
    /// The tensor.
    pub fn tensor(&self) -> &T3<E, D, T> {
        &self.0
    }
    /// The tensor, by value.
    pub fn into_tensor(self) -> T3<E, D, T> {
        self.0
    }
    /// `(batch, n, channels)`.
    pub fn dims(&self) -> Shape3 {
        *self.0.shape()
    }

    /// Edge (i, j) gets node i's features: `x[b, i] -> e[b, i, j]`.
    pub fn lift_source(self) -> Edges<E, D, T> {
        let (b, n, c) = self.dims();
        Edges(self.0.broadcast_like::<_, Axis<2>>(&(b, n, n, c)))
    }

    /// Edge (i, j) gets node j's features: `x[b, j] -> e[b, i, j]`.
    pub fn lift_target(self) -> Edges<E, D, T> {
        let (b, n, c) = self.dims();
        Edges(self.0.broadcast_like::<_, Axis<1>>(&(b, n, n, c)))
    }

    /// Places node features on the diagonal edges (i, i); other edges get zeros.
    pub fn onto_diagonal(self) -> Edges<E, D, T> {
        let (b, n, c) = self.dims();
        let dev = self.0.device().clone();
        let eye: T2<E, D> = dev.tensor_from_vec(
            (0..n * n)
                .map(|e| if e / n == e % n { E::one() } else { E::zero() })
                .collect(),
            (n, n),
        );
        let lifted = self.lift_source().0;
        Edges(lifted * eye.broadcast_like::<_, Axes2<0, 3>>(&(b, n, n, c)))
    }
}

impl<E: Real, D: Device<E>, T: Tape<E, D>> Edges<E, D, T> {
    /// Wraps a `[batch, n, n, c]` tensor; refuses one whose two node axes differ.
    pub fn new(t: T4<E, D, T>) -> Result<Self> {
        let (_, i, j, _) = *t.shape();
        if i != j {
            return Err(Error::shape(
                "edges",
                "[batch, n, n, c]",
                format!("{:?}", t.shape()),
            ));
        }
        Ok(Self(t))
    }
    /// The tensor.
    pub fn tensor(&self) -> &T4<E, D, T> {
        &self.0
    }
    /// The tensor, by value.
    pub fn into_tensor(self) -> T4<E, D, T> {
        self.0
    }
    /// `(batch, n, n, channels)`.
    pub fn dims(&self) -> Shape4 {
        *self.0.shape()
    }

    /// `e[b, i, j] -> e[b, j, i]` (a contiguous copy, so later reshapes are cheap).
    pub fn transpose(self) -> Self {
        Edges(self.0.permute::<_, Axes4<0, 2, 1, 3>>().contiguous())
    }

    /// The diagonal `e[b, i, i]` as nodes.
    pub fn diagonal(self) -> Nodes<E, D, T> {
        let (b, n, _, c) = self.dims();
        let dev = self.0.device().clone();
        let flat = self.0.reshape_like(&(b, n * n, c));
        let index = dev.tensor_from_vec(
            (0..b).flat_map(|_| (0..n).map(|i| i * n + i)).collect(),
            (b, n),
        );
        Nodes(flat.gather(index))
    }

    /// Reduces each node's outgoing (i, ·) or incoming (·, i) edges onto it, reading only the
    /// edges the mask lets node i see (padding and causality). Padded nodes, and nodes with no
    /// readable edge, get zeros.
    pub fn reduce(
        self,
        how: Reduce,
        direction: Direction,
        mask: &GraphMask,
    ) -> Result<Nodes<E, D, T>> {
        let (b, n, _, c) = self.dims();
        mask.check("edge reduction", b, n)?;
        let dev = self.0.device().clone();
        let readable = mask.reduction_mask(direction == Direction::Incoming);
        let keep: T3<E, D> = constant(&dev, indicator(readable.iter().copied()), (b, n, n))?;
        let keep4 = keep.clone().broadcast_like::<_, Axis<3>>(&(b, n, n, c));
        let reduce_axis = |x: T4<E, D, T>, max: bool| -> T3<E, D, T> {
            match (direction, max) {
                (Direction::Outgoing, false) => x.sum::<Shape3, Axis<2>>(),
                (Direction::Incoming, false) => x.sum::<Shape3, Axis<1>>(),
                (Direction::Outgoing, true) => x.max::<Shape3, Axis<2>>(),
                (Direction::Incoming, true) => x.max::<Shape3, Axis<1>>(),
            }
        };
        // how many edges each node reads
        let counts: Vec<usize> = (0..b * n)
            .map(|bi| {
                let (bb, i) = (bi / n, bi % n);
                (0..n)
                    .filter(|&j| {
                        if direction == Direction::Incoming {
                            readable[(bb * n + j) * n + i]
                        } else {
                            readable[(bb * n + i) * n + j]
                        }
                    })
                    .count()
            })
            .collect();
        let per_node = |f: &dyn Fn(usize) -> E| -> Result<T3<E, D>> {
            let v: Vec<E> = counts.iter().map(|&k| f(k)).collect();
            Ok(constant(&dev, v, (b, n))?.broadcast_like::<_, Axis<2>>(&(b, n, c)))
        };
        let out = match how {
            Reduce::Sum => reduce_axis(self.0 * keep4, false),
            Reduce::Mean => {
                reduce_axis(self.0 * keep4, false)
                    * per_node(&|k| E::one() / E::of(k.max(1) as f64))?
            }
            Reduce::Max => {
                let additive = (keep4 - E::one()) * E::of(-MASKED);
                reduce_axis(self.0 + additive, true)
                    * per_node(&|k| if k > 0 { E::one() } else { E::zero() })?
            }
        };
        Ok(Nodes(out))
    }
}
