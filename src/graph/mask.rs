//! Padding and causality of a batch of graphs, and the visibility each attention pattern derives
//! from them; while training, the mask also carries the batch's dropout draws, the other thing
//! every layer must know about the batch beyond its tensors.
//!
//! Node i lives at time i; edge (i, j) at time max(i, j). In a causal graph an element reads only
//! elements whose time is not later than its own. Edge (i, j) is real when i and j both are.
//!
//! Graphs read from files also carry their input edges (the adjacency), which a rule reads as
//! `adjacency[i, j]` and restricts attention and reductions to with `mask:`: one more term in
//! the same visibility rule, so padding, causality and the input graph combine in one place.

use super::DropoutDraws;
use crate::error::{Error, Result};
use crate::spec::visibility::Visibility;

/// Which nodes of a batch are real (not padding) and whether the graphs are causal.
#[derive(Clone, Debug, PartialEq)]
pub struct GraphMask {
    batch: usize,
    nodes: usize,
    /// `[batch × nodes]`, true for real nodes.
    valid: Vec<bool>,
    causal: bool,
    /// Present while training: what the rules' dropouts draw from.
    dropout: Option<DropoutDraws>,
    /// `[batch × nodes × nodes]`: whether the input graph has edge i → j (graphs from files).
    adjacency: Option<std::sync::Arc<[bool]>>,
    /// Which keys an attention reads beyond padding and causality (set per call).
    keys: KeyRestriction,
}

/// How one attention restricts its keys to the input graph's edges (its `mask:` option).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KeyRestriction {
    /// Every real key (padding and causality only).
    #[default]
    None,
    /// Node attention: query i reads key j where the input has edge i → j, or j → i when
    /// `reversed`.
    Pairs {
        /// Read the edge from key to query.
        reversed: bool,
    },
    /// Attention across edges: a key edge (u, v), in the kernel's layout of the key, is read
    /// where the input has edge u → v, or v → u when `reversed`.
    KeyEdges {
        /// Read the key edge the other way round.
        reversed: bool,
    },
}

impl GraphMask {
    /// Every node real, not causal.
    pub fn full(batch: usize, nodes: usize) -> Self {
        Self {
            batch,
            nodes,
            valid: vec![true; batch * nodes],
            causal: false,
            dropout: None,
            adjacency: None,
            keys: KeyRestriction::None,
        }
    }

    /// Per-node padding, `valid` laid out `[batch × nodes]`.
    pub fn from_valid(batch: usize, nodes: usize, valid: Vec<bool>) -> Result<Self> {
        if valid.len() != batch * nodes {
            return Err(Error::shape(
                "graph mask",
                format!("{} entries (batch {batch} × nodes {nodes})", batch * nodes),
                format!("{} entries", valid.len()),
            ));
        }
        Ok(Self {
            batch,
            nodes,
            valid,
            causal: false,
            dropout: None,
            adjacency: None,
            keys: KeyRestriction::None,
        })
    }

    /// From per-graph lengths: the first `len` nodes of each graph are real.
    pub fn from_lengths(nodes: usize, lengths: &[usize]) -> Result<Self> {
        if let Some(&bad) = lengths.iter().find(|&&l| l > nodes) {
            return Err(Error::shape(
                "graph lengths",
                format!("at most {nodes}"),
                bad,
            ));
        }
        let valid = lengths
            .iter()
            .flat_map(|&l| (0..nodes).map(move |i| i < l))
            .collect();
        Self::from_valid(lengths.len(), nodes, valid)
    }

    /// The same mask, causal or not.
    pub fn causal(mut self, causal: bool) -> Self {
        self.causal = causal;
        self
    }

    /// The same mask drawing dropout from `draws` (one seed per graph), as in training;
    /// without draws every dropout is the identity.
    pub fn with_dropout(mut self, draws: DropoutDraws) -> Result<Self> {
        if draws.seeds().len() != self.batch {
            return Err(Error::shape(
                "dropout seeds",
                format!("one per graph ({})", self.batch),
                draws.seeds().len(),
            ));
        }
        self.dropout = Some(draws);
        Ok(self)
    }

    /// The same mask carrying the input graph: `adjacency` is `[batch × nodes × nodes]`, true
    /// where graph b has an edge i → j.
    pub fn with_adjacency(mut self, adjacency: Vec<bool>) -> Result<Self> {
        let want = self.batch * self.nodes * self.nodes;
        if adjacency.len() != want {
            return Err(Error::shape(
                "adjacency",
                format!(
                    "{want} entries (batch {} × {} × {} nodes)",
                    self.batch, self.nodes, self.nodes
                ),
                adjacency.len(),
            ));
        }
        self.adjacency = Some(adjacency.into());
        Ok(self)
    }

    /// The input graph's edges `[batch × nodes × nodes]`, for graphs that have one.
    pub fn adjacency(&self) -> Option<&[bool]> {
        self.adjacency.as_deref()
    }

    /// Whether graph b's input has edge i → j (false without an input graph).
    pub fn has_edge(&self, b: usize, i: usize, j: usize) -> bool {
        self.adjacency
            .as_ref()
            .is_some_and(|a| a[(b * self.nodes + i) * self.nodes + j])
    }

    /// The same mask with one attention's keys restricted to the input graph's edges; an
    /// error when the graphs carry none.
    pub fn restricted(&self, keys: KeyRestriction) -> Result<std::borrow::Cow<'_, GraphMask>> {
        if keys == KeyRestriction::None {
            return Ok(std::borrow::Cow::Borrowed(self));
        }
        if self.adjacency.is_none() {
            return Err(no_input_graph("`mask:`"));
        }
        Ok(std::borrow::Cow::Owned(GraphMask {
            keys,
            ..self.clone()
        }))
    }

    /// The key restriction in force.
    pub fn key_restriction(&self) -> KeyRestriction {
        self.keys
    }

    /// The dropout draws, while training.
    pub fn dropout(&self) -> Option<&DropoutDraws> {
        self.dropout.as_ref()
    }

    /// The mask layer `k` of a model reads: the same, with dropout drawn for that layer.
    pub fn for_layer(&self, k: usize) -> std::borrow::Cow<'_, GraphMask> {
        match &self.dropout {
            None => std::borrow::Cow::Borrowed(self),
            Some(d) => std::borrow::Cow::Owned(GraphMask {
                dropout: Some(d.for_layer(k)),
                ..self.clone()
            }),
        }
    }

    /// Graphs.
    pub fn batch(&self) -> usize {
        self.batch
    }
    /// Nodes per graph (after padding).
    pub fn nodes(&self) -> usize {
        self.nodes
    }
    /// Whether an element reads only elements not later than itself.
    pub fn is_causal(&self) -> bool {
        self.causal
    }
    /// `[batch × nodes]`: whether each node is real.
    pub fn valid(&self) -> &[bool] {
        &self.valid
    }

    /// Whether node i of graph b is real.
    pub fn node_valid(&self, b: usize, i: usize) -> bool {
        self.valid[b * self.nodes + i]
    }

    /// Whether edge (i, j) of graph b is real (both its endpoints are).
    pub fn edge_valid(&self, b: usize, i: usize, j: usize) -> bool {
        self.node_valid(b, i) && self.node_valid(b, j)
    }

    /// Time of edge (i, j).
    pub fn edge_time(i: usize, j: usize) -> usize {
        i.max(j)
    }

    /// Checks that this mask describes graphs of this batch size and node count.
    pub fn check(&self, context: &str, batch: usize, nodes: usize) -> Result<()> {
        if (self.batch, self.nodes) != (batch, nodes) {
            return Err(Error::shape(
                context,
                format!("mask for batch {batch} × {nodes} nodes"),
                format!("mask for batch {} × {} nodes", self.batch, self.nodes),
            ));
        }
        Ok(())
    }

    fn with_times(
        &self,
        vis: Visibility,
        query: impl Fn(usize) -> Vec<usize>,
        key: impl Fn(usize) -> Vec<usize>,
    ) -> Result<Visibility> {
        if !self.causal {
            return Ok(vis);
        }
        let q = (0..vis.batch).flat_map(&query).collect();
        let k = (0..vis.batch).flat_map(&key).collect();
        vis.with_times(q, k)
    }

    /// Node attention: node i reads node j (batch `b`, n queries, n keys).
    /// Under a [`KeyRestriction::Pairs`], only the pairs the input graph connects.
    pub fn node_visibility(&self) -> Result<Visibility> {
        let n = self.nodes;
        let mut vis = Visibility::all(self.batch, n, n).with_key_valid(self.valid.clone())?;
        if let KeyRestriction::Pairs { reversed } = self.keys {
            let pairs = (0..self.batch * n * n)
                .map(|e| {
                    let (b, i, j) = (e / (n * n), e / n % n, e % n);
                    if reversed {
                        self.has_edge(b, j, i)
                    } else {
                        self.has_edge(b, i, j)
                    }
                })
                .collect();
            vis = vis.with_pairs(pairs)?;
        }
        self.with_times(vis, |_| (0..n).collect(), |_| (0..n).collect())
    }

    /// Whether key edge (u, v) passes the key restriction.
    fn key_edge_kept(&self, b: usize, u: usize, v: usize) -> bool {
        match self.keys {
            KeyRestriction::KeyEdges { reversed: false } => self.has_edge(b, u, v),
            KeyRestriction::KeyEdges { reversed: true } => self.has_edge(b, v, u),
            _ => true,
        }
    }

    /// Every edge over all n² edges (flattened `i·n + j`), batch `b`.
    pub fn all_edges_visibility(&self) -> Result<Visibility> {
        let n = self.nodes;
        let valid = (0..self.batch)
            .flat_map(|b| (0..n * n).map(move |e| (b, e / n, e % n)))
            .map(|(b, i, j)| self.edge_valid(b, i, j) && self.key_edge_kept(b, i, j))
            .collect();
        let vis = Visibility::all(self.batch, n * n, n * n).with_key_valid(valid)?;
        let times = |_| (0..n * n).map(|e| Self::edge_time(e / n, e % n)).collect();
        self.with_times(vis, times, times)
    }

    /// Edge (i, j) over the paths i → l → j: problems are the graphs, queries the edges
    /// `i·n + j`, keys the middle nodes l. A path is visible when l is real and, in a causal
    /// graph, when its two edges (i, l) and (l, j) are no later than (i, j): l ≤ max(i, j).
    pub fn path_visibility(&self) -> Result<Visibility> {
        let n = self.nodes;
        let vis = Visibility::all(self.batch, n * n, n).with_key_valid(self.valid.clone())?;
        let query_times = |_| (0..n * n).map(|e| Self::edge_time(e / n, e % n)).collect();
        self.with_times(vis, query_times, |_| (0..n).collect())
    }

    /// Edge (i, j) over its row (i, k); problems are indexed `b·n + i`, queries j, keys k.
    /// By symmetry of padding and times this is also the column pattern on transposed edges
    /// ([`GraphMask::column_visibility`] only differs under a key restriction).
    pub fn row_visibility(&self) -> Result<Visibility> {
        self.axial_visibility(false)
    }

    /// Edge (i, j) over its column (k, j); problems are indexed `b·n + j`, queries i, keys k
    /// (the key edge is (k, j)).
    pub fn column_visibility(&self) -> Result<Visibility> {
        self.axial_visibility(true)
    }

    fn axial_visibility(&self, column: bool) -> Result<Visibility> {
        let n = self.nodes;
        let valid = (0..self.batch * n)
            .flat_map(|bi| (0..n).map(move |k| (bi / n, bi % n, k)))
            .map(|(b, s, k)| {
                let (u, v) = if column { (k, s) } else { (s, k) };
                self.edge_valid(b, u, v) && self.key_edge_kept(b, u, v)
            })
            .collect();
        let vis = Visibility::all(self.batch * n, n, n).with_key_valid(valid)?;
        let times = |bi: usize| (0..n).map(|j| Self::edge_time(bi % n, j)).collect();
        self.with_times(vis, times, times)
    }

    /// Diagonal edges among themselves: the node rule (edge (i, i) lives at time i).
    pub fn diagonal_visibility(&self) -> Result<Visibility> {
        self.node_visibility()
    }

    /// `[batch × nodes × nodes]` 0/1: which edges (i, j) node i may read as outgoing (`incoming =
    /// false`) or which edges (j, i) it may read as incoming, under padding and causality.
    pub fn reduction_mask(&self, incoming: bool) -> Vec<bool> {
        let n = self.nodes;
        let mut out = Vec::with_capacity(self.batch * n * n);
        for b in 0..self.batch {
            for i in 0..n {
                for j in 0..n {
                    // entry (i, j) of the edge tensor, read by node i (outgoing) or node j (incoming)
                    let reader = if incoming { j } else { i };
                    let ok = self.edge_valid(b, i, j)
                        && self.node_valid(b, reader)
                        && (!self.causal || Self::edge_time(i, j) <= reader);
                    out.push(ok);
                }
            }
        }
        out
    }
}

/// The error of a rule that reads the input graph where there is none.
pub(crate) fn no_input_graph(what: &str) -> Error {
    Error::config(
        "rule input",
        format!(
            "the rule reads the input graph ({what}), but these graphs carry no input edges: \
             train on graph files (`quartic train --graphs FILE`)"
        ),
    )
}
