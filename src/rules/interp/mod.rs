//! Runs a plan on a batch of graphs, forward (and, through the tape, backward).
//!
//! Every expression evaluates to a value in its canonical layout (batch, slots ascending,
//! channels); operations that need another layout (attention patterns, matrix products) arrange
//! into it. Row-wise blocks run on `[rows, channels]` views, reductions and softmax on
//! `[outer, n, inner]` views of the flat tensor, so no permute copy is made that a reshape avoids.
//!
//! Tapes: a stored tensor (`nodes`, `edges`, a `let`) keeps the tape of its history and every
//! read is a tape-less branch; when a stored tensor is replaced or goes out of scope its tape is
//! kept aside. At the end every tape (the edges' included) is merged into the output nodes and
//! the output edges carry an empty one, so the whole history has one owner: a loss must reach the
//! returned nodes (any model's logits do) for every gradient to be computed. A loss on the edges
//! alone first moves the history over with [`move_history`].
//!
//! Under hyper-connections ([`RuleLayer::forward_streams`]) the residual streams are the stored
//! node state and own the history; `nodes` is the open branch's input (or, after the last node
//! update, the streams' sum), and a node update adds into the streams.

mod attention;
mod concat;
mod pointwise;
mod reduce;
mod routing;

use dfdx::prelude::*;

use super::ir::*;
use super::layer::{AttendBlock, Block, RuleLayer};
use super::layout::*;
use super::lower::{self, NodeBranch};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::graph::{Edges, GraphMask, Nodes};
use crate::nn::hyper::HyperConnection;
use crate::ops::activations::{gelu_exact, softplus};
use crate::ops::attention::{attend, AttendInputs};
use crate::ops::path::path_attention;
use crate::ops::patterns::{
    edge_attention, edge_self_attention, EdgeAttendInputs, EdgeKernel, EdgePattern, EdgeProjections,
};
use crate::ops::routing::{route, soft_topk_padded, CoorDescent};
use crate::ops::select::{select, step};
use crate::ops::taylor::{taylor_attend, TaylorForm};
use crate::ops::weights::{Normalizer, WeightsSpec};
use crate::spec::visibility::Visibility;
use crate::spec::MASKED;
use crate::tensor::*;

/// The streams carried past an open branch `[rows, s, dim]` and its output weights `[rows, s]`.
type OpenBranch<E, D, T> = (T3<E, D, T>, T2<E, D, T>);

/// A layer's state out: the nodes (or streams) and the edges, flat.
type FlatState<E, D, T> = (T1<E, D, T>, T1<E, D, T>);

/// Streams `[b, n, s, dim]` and edges out of a layer.
type StreamsOut<E, D, T> = (T4<E, D, T>, Edges<E, D, T>);

/// A value, and an attention's probabilities when it returns them.
type WithProbs<E, D, T> = (Val<E, D, T>, Option<Val<E, D, T>>);

const NODES_TAG: usize = usize::MAX;
const EDGES_TAG: usize = usize::MAX - 1;

impl<E: Real, D: Backend<E>> RuleLayer<E, D> {
    /// Runs the rule: nodes `[b, n, dim]` and edges `[b, n, n, dim_edges]` in, both updated out.
    /// The mask's causal flag must match the one the rule was checked with.
    pub fn forward<T: Tape<E, D>>(
        &self,
        nodes: Nodes<E, D, T>,
        edges: Edges<E, D, T>,
        mask: &GraphMask,
    ) -> Result<(Nodes<E, D, T>, Edges<E, D, T>)> {
        let (b, n, c) = nodes.dims();
        self.check_inputs(b, n, c, edges.dims(), mask)?;
        let nodes = nodes.into_tensor().reshape_like(&(b * n * c,));
        let mut run = self.run(Some(nodes), None, edges, mask, b, n);
        self.statements(&mut run, &[])?;
        let (nodes, edges) = run.finish()?;
        let edges = edges.reshape_like(&(b, n, n, self.plan.dim_edges));
        Ok((
            Nodes::new(nodes.reshape_like(&(b, n, c))),
            Edges::new(edges)?,
        ))
    }

    /// Runs the rule on a node state kept as residual streams `[b, n, s, dim]`, each node branch
    /// (see [`crate::rules::lower::node_branches`]) wrapped in its hyper-connection from
    /// `hyper`, in order: a branch reads the mix of the streams its connection makes, and its
    /// node update adds into every stream. Reads of `nodes` outside a branch see the streams' sum.
    pub fn forward_streams<T: Tape<E, D>>(
        &self,
        streams: T4<E, D, T>,
        edges: Edges<E, D, T>,
        mask: &GraphMask,
        hyper: &[HyperConnection<E, D>],
    ) -> Result<StreamsOut<E, D, T>> {
        let (b, n, s, c) = *streams.shape();
        self.check_inputs(b, n, c, edges.dims(), mask)?;
        let branches = self.node_branches()?;
        if hyper.len() != branches.len() || hyper.iter().any(|h| h.streams != s) {
            return Err(Error::config(
                format!("rule `{}`", self.plan.rule),
                format!(
                    "{} node branches with {s} streams, given {} hyper-connections",
                    branches.len(),
                    hyper.len()
                ),
            ));
        }
        let streams = streams.reshape_like(&(b * n * s * c,));
        let state = StreamState {
            hyper,
            count: s,
            state: Some(streams),
            open: None,
        };
        let mut run = self.run(None, Some(state), edges, mask, b, n);
        self.statements(&mut run, &branches)?;
        let (streams, edges) = run.finish()?;
        let edges = edges.reshape_like(&(b, n, n, self.plan.dim_edges));
        Ok((streams.reshape_like(&(b, n, s, c)), Edges::new(edges)?))
    }

    fn check_inputs(
        &self,
        b: usize,
        n: usize,
        c: usize,
        edge_dims: (usize, usize, usize, usize),
        mask: &GraphMask,
    ) -> Result<()> {
        let plan = &self.plan;
        let context = format!("rule `{}`", plan.rule);
        if c != plan.dim {
            return Err(Error::shape(
                format!("{context} nodes"),
                format!("{} channels", plan.dim),
                c,
            ));
        }
        if edge_dims != (b, n, n, plan.dim_edges) {
            return Err(Error::shape(
                format!("{context} edges"),
                format!("{:?}", (b, n, n, plan.dim_edges)),
                format!("{edge_dims:?}"),
            ));
        }
        mask.check(&context, b, n)?;
        if mask.is_causal() != plan.causal {
            return Err(Error::config(
                context,
                format!(
                    "the rule was checked with causal = {} but the mask has causal = {}",
                    plan.causal,
                    mask.is_causal()
                ),
            ));
        }
        Ok(())
    }

    /// A run's starting state: the nodes, or (under hyper-connections) the streams.
    fn run<'a, T: Tape<E, D>>(
        &'a self,
        nodes: Option<T1<E, D, T>>,
        streams: Option<StreamState<'a, E, D, T>>,
        edges: Edges<E, D, T>,
        mask: &'a GraphMask,
        b: usize,
        n: usize,
    ) -> Run<'a, E, D, T> {
        let de = self.plan.dim_edges;
        Run {
            layer: self,
            ext: Extents { batch: b, nodes: n },
            mask,
            dev: edges.tensor().device().clone(),
            nodes,
            streams,
            edges: Some(edges.into_tensor().reshape_like(&(b * n * n * de,))),
            lets: (0..self.plan.lets.len()).map(|_| None).collect(),
            orphans: Vec::new(),
        }
    }

    /// Runs every statement, opening each node branch where it starts.
    fn statements<T: Tape<E, D>>(
        &self,
        run: &mut Run<'_, E, D, T>,
        branches: &[NodeBranch],
    ) -> Result<()> {
        for (k, st) in self.plan.statements.iter().enumerate() {
            // a checked rule should not fail here; if it does, say which statement
            let located = |e: Error| e.within(&self.plan.place(st));
            if let Some(j) = branches.iter().position(|br| br.first == k) {
                run.open_branch(j).map_err(located)?;
            }
            run.statement(st).map_err(located)?;
        }
        Ok(())
    }
}

/// Moves the recorded history from a rule's output nodes to its output edges, for losses that
/// read the edges only (edge heads).
pub fn move_history<E: Real, D: Device<E>, T: Tape<E, D>>(
    nodes: Nodes<E, D, T>,
    edges: Edges<E, D, T>,
) -> (Nodes<E, D, T>, Edges<E, D, T>) {
    let (n, tape) = nodes.into_tensor().split_tape();
    let (e, edge_tape) = edges.into_tensor().split_tape();
    (
        Nodes::new(n.put_tape(T::default())),
        Edges(e.put_tape(edge_tape.merge(tape))),
    )
}

struct Run<'a, E: Real, D: Backend<E>, T> {
    layer: &'a RuleLayer<E, D>,
    ext: Extents,
    mask: &'a GraphMask,
    dev: D,
    /// The node state: the nodes, or under hyper-connections the open branch's input (or the
    /// streams' sum outside a branch, made when first read).
    nodes: Option<T1<E, D, T>>,
    /// The residual streams, under hyper-connections.
    streams: Option<StreamState<'a, E, D, T>>,
    edges: Option<T1<E, D, T>>,
    /// Bound `let` tensors, stored in their binding's index order.
    lets: Vec<Option<T1<E, D, T>>>,
    /// Tapes of tensors no longer stored, merged into the output at the end.
    orphans: Vec<T>,
}

/// The residual streams of a layer run under hyper-connections.
struct StreamState<'a, E: Real, D: Device<E>, T> {
    hyper: &'a [HyperConnection<E, D>],
    count: usize,
    /// `[b·n·s·dim]`, with the history's tape.
    state: Option<T1<E, D, T>>,
    /// The open branch: the streams carried past it and its output weights.
    open: Option<OpenBranch<E, D, T>>,
}

impl<'a, E: Real, D: Backend<E>, T: Tape<E, D>> Run<'a, E, D, T> {
    fn plan(&self) -> &'a Plan {
        &self.layer.plan
    }

    /// Opens node branch `j`: its hyper-connection's width connection gives the branch's node
    /// state and what its update will add into.
    fn open_branch(&mut self, j: usize) -> Result<()> {
        let rows = self.ext.batch * self.ext.nodes;
        let dim = self.plan().dim;
        let streams = self.streams.as_mut().expect("branches open under streams");
        let state = streams.state.as_ref().expect("the streams are stored");
        let read = state
            .with_empty_tape()
            .reshape_like(&(rows, streams.count, dim));
        let width = streams.hyper[j].width(read)?;
        streams.open = Some((width.carried, width.beta));
        if let Some(old) = self.nodes.take() {
            self.orphans.push(old.split_tape().1);
        }
        self.nodes = Some(width.branch_input.reshape_like(&(rows * dim,)));
        Ok(())
    }

    /// The node state as statements read it (under streams, outside a branch: their sum).
    fn node_state(&mut self) -> &T1<E, D, T> {
        if self.nodes.is_none() {
            let rows = self.ext.batch * self.ext.nodes;
            let dim = self.plan().dim;
            let streams = self.streams.as_ref().expect("nodes are stored");
            let state = streams.state.as_ref().expect("the streams are stored");
            let sum = state
                .with_empty_tape()
                .reshape_like(&(rows, streams.count, dim))
                .sum::<_, Axis<1>>()
                .reshape_like(&(rows * dim,));
            self.nodes = Some(sum);
        }
        self.nodes.as_ref().expect("just made")
    }

    fn statement(&mut self, st: &PlanStatement) -> Result<()> {
        match &st.kind {
            PlanKind::Let { outputs, value } => {
                let (main, probs) = self.eval_top(st, value)?;
                let mut vals = vec![main];
                vals.extend(probs);
                for ((id, slots), v) in outputs.iter().zip(vals) {
                    let mut axes = vec![Ax::Batch];
                    axes.extend(slots.iter().map(|&s| Ax::Slot(s)));
                    axes.push(Ax::Chan);
                    let channels = v.channels;
                    let v = self.arrange(v, &axes, channels)?;
                    self.lets[*id] = Some(v.t);
                }
            }
            PlanKind::Update {
                target,
                slots,
                diagonal,
                accumulate,
                value,
            } => {
                let (v, _) = self.eval_top(st, value)?;
                self.update(*target, slots, *diagonal, *accumulate, v)?;
            }
        }
        Ok(())
    }

    /// Evaluates a statement's value; an `attend` may also return its probabilities.
    fn eval_top(&mut self, st: &PlanStatement, node: &Node) -> Result<WithProbs<E, D, T>> {
        match &node.op {
            Op::Attend(a) if a.probs => {
                let (out, probs) = self.attend(st, a)?;
                Ok((out, probs))
            }
            _ => Ok((self.eval(st, node)?, None)),
        }
    }

    fn update(
        &mut self,
        target: Domain,
        slots: &[Slot],
        diagonal: bool,
        accumulate: bool,
        v: Val<E, D, T>,
    ) -> Result<()> {
        let (b, n) = (self.ext.batch, self.ext.nodes);
        let plan = self.plan();
        let new = match (target, diagonal) {
            (Domain::Nodes, _) if self.streams.is_some() => {
                let v = self.arrange(v, &[Ax::Batch, Ax::Slot(slots[0]), Ax::Chan], plan.dim)?;
                return self.close_branch(v.t);
            }
            (Domain::Nodes, _) => {
                let v = self.arrange(v, &[Ax::Batch, Ax::Slot(slots[0]), Ax::Chan], plan.dim)?;
                let old = self
                    .nodes
                    .take()
                    .expect("nodes are stored between statements");
                self.combine(old, v.t, accumulate)?
            }
            (Domain::Edges, false) => {
                let axes = [Ax::Batch, Ax::Slot(slots[0]), Ax::Slot(slots[1]), Ax::Chan];
                let v = self.arrange(v, &axes, plan.dim_edges)?;
                let old = self
                    .edges
                    .take()
                    .expect("edges are stored between statements");
                self.combine(old, v.t, accumulate)?
            }
            (Domain::Edges, true) => {
                let c = plan.dim_edges;
                let v = self.arrange(v, &[Ax::Batch, Ax::Slot(slots[0]), Ax::Chan], c)?;
                let onto = Nodes::new(v.t.reshape_like(&(b, n, c)))
                    .onto_diagonal()
                    .into_tensor()
                    .reshape_like(&(b * n * n * c,));
                let old = self
                    .edges
                    .take()
                    .expect("edges are stored between statements");
                let kept = if accumulate {
                    old
                } else {
                    let off = mask_tensor::<E, D>(
                        &self.dev,
                        &[Ax::Batch, Ax::Slot(0), Ax::Slot(1), Ax::Chan],
                        self.ext,
                        c,
                        1,
                        |_, s| s[0] != s[1],
                    )?;
                    old * off.retaped::<T>()
                };
                crate::ops::affine::add_repeated(kept, onto)?
            }
        };
        match target {
            Domain::Nodes => self.nodes = Some(new),
            Domain::Edges => self.edges = Some(new),
        }
        Ok(())
    }

    /// Closes the open branch with its output `[b·n·dim]`: every stream gets it, weighted.
    fn close_branch(&mut self, out: T1<E, D, T>) -> Result<()> {
        let (rows, dim) = (self.ext.batch * self.ext.nodes, self.plan().dim);
        let streams = self.streams.as_mut().expect("branches close under streams");
        let (carried, beta) = streams
            .open
            .take()
            .expect("a node update closes an open branch");
        let out = out.reshape_like(&(rows, dim));
        let new = HyperConnection::depth(carried, beta, out)?;
        let old = streams.state.take().expect("the streams are stored");
        streams.state = Some(new.reshape_like(&(rows * streams.count * dim,)));
        self.orphans.push(old.split_tape().1);
        if let Some(view) = self.nodes.take() {
            self.orphans.push(view.split_tape().1);
        }
        Ok(())
    }

    fn combine(
        &mut self,
        old: T1<E, D, T>,
        value: T1<E, D, T>,
        accumulate: bool,
    ) -> Result<T1<E, D, T>> {
        if accumulate {
            crate::ops::affine::add_repeated(old, value)
        } else {
            let (_, tape) = old.split_tape();
            self.orphans.push(tape);
            Ok(value)
        }
    }

    /// The node state (the streams, under hyper-connections) and the edges, flat; the whole
    /// history on the first, the edges' tape empty.
    fn finish(mut self) -> Result<FlatState<E, D, T>> {
        for slot in self.lets.iter_mut() {
            if let Some(t) = slot.take() {
                let (_, tape) = t.split_tape();
                self.orphans.push(tape);
            }
        }
        let owner = match self.streams.as_mut() {
            Some(streams) => {
                if let Some(view) = self.nodes.take() {
                    self.orphans.push(view.split_tape().1);
                }
                streams.state.take().expect("the streams are stored")
            }
            None => self.nodes.take().expect("nodes are stored"),
        };
        let edges = self.edges.take().expect("edges are stored");
        // one owner for the whole history: the node state (the edges' own history included)
        let (edges, edge_tape) = edges.split_tape();
        let (owner, mut tape) = owner.split_tape();
        tape = tape.merge(edge_tape);
        for t in self.orphans.drain(..) {
            tape = tape.merge(t);
        }
        Ok((owner.put_tape(tape), edges.put_tape(T::default())))
    }

    // ---- values -------------------------------------------------------------------------

    fn arrange(&self, v: Val<E, D, T>, axes: &[Ax], channels: usize) -> Result<Val<E, D, T>> {
        arrange(v, axes, channels, 1, self.ext, &self.layer.cache)
    }

    fn canonical(&self, v: Val<E, D, T>, slots: &[Slot], channels: usize) -> Result<Val<E, D, T>> {
        self.arrange(v, &canonical(slots), channels)
    }

    fn val(&self, t: T1<E, D, T>, axes: Vec<Ax>, channels: usize) -> Val<E, D, T> {
        Val {
            t,
            axes,
            channels,
            within: 1,
            tag: None,
        }
    }

    fn rows(&self, v: &Val<E, D, T>) -> usize {
        v.t.shape().0 / v.channels
    }

    fn read_stored(
        &self,
        t: &T1<E, D, T>,
        slots: &[Slot],
        channels: usize,
        tag: usize,
    ) -> Val<E, D, T> {
        let mut axes = vec![Ax::Batch];
        axes.extend(slots.iter().map(|&s| Ax::Slot(s)));
        axes.push(Ax::Chan);
        Val {
            t: t.with_empty_tape(),
            axes,
            channels,
            within: 1,
            tag: Some(tag),
        }
    }

    fn eval(&mut self, st: &PlanStatement, node: &Node) -> Result<Val<E, D, T>> {
        let v = self.eval_op(st, node)?;
        self.canonical(v, &node.slots, node.channels)
    }

    fn eval_op(&mut self, st: &PlanStatement, node: &Node) -> Result<Val<E, D, T>> {
        let plan = self.plan();
        if pointwise::is_pointwise(&node.op) {
            return self.pointwise(st, node);
        }
        match &node.op {
            Op::State { domain, slots } => Ok(match domain {
                Domain::Nodes => {
                    let t = self.node_state().with_empty_tape();
                    self.read_stored(&t, slots, plan.dim, NODES_TAG)
                }
                Domain::Edges => {
                    let t = self.edges.as_ref().expect("edges are stored");
                    self.read_stored(t, slots, plan.dim_edges, EDGES_TAG)
                }
            }),
            Op::Let { id, slots } => {
                let t = self.lets[*id].as_ref().expect("lets are bound before use");
                Ok(self.read_stored(t, slots, plan.lets[*id].channels, *id))
            }
            Op::Adjacency { slots } => {
                let adjacency = self
                    .mask
                    .adjacency()
                    .ok_or_else(|| crate::graph::no_input_graph("`adjacency`"))?;
                let t: T1<E, D> = constant(
                    &self.dev,
                    indicator(adjacency.iter().copied()),
                    (adjacency.len(),),
                )?;
                let mut v = self.read_stored(&t.retaped::<T>(), slots, 1, 0);
                v.tag = None;
                Ok(v)
            }
            Op::Where { cond, yes, no } => {
                let c = self.eval(st, cond)?;
                let c = self.canonical(c, &node.slots, node.channels)?;
                let y = self.eval(st, yes)?;
                let y = self.canonical(y, &node.slots, node.channels)?;
                let n = self.eval(st, no)?;
                let mut n = self.canonical(n, &node.slots, node.channels)?;
                if y.tag.is_some() && y.tag == n.tag {
                    n.t = n.t * E::one();
                }
                Ok(self.val(select(c.t, y.t, n.t), canonical(&node.slots), node.channels))
            }
            Op::Dropout { x, p, stream } => {
                let x = self.eval(st, x)?;
                let Some(draws) = self.mask.dropout().filter(|_| *p > 0.0) else {
                    return Ok(x);
                };
                let len = x.t.shape().0;
                let multipliers = draws.multipliers(*stream, len / self.ext.batch, *p);
                let m: T1<E, D> = constant(
                    &self.dev,
                    multipliers.into_iter().map(E::of).collect(),
                    (len,),
                )?;
                Ok(self.val(x.t * m.retaped::<T>(), x.axes, x.channels))
            }
            Op::Act { f, x } => {
                let x = self.eval(st, x)?;
                let t = match f {
                    Activation::Gelu => gelu_exact(x.t)?,
                    Activation::Step { strict } => step(x.t, *strict),
                    Activation::Softplus => softplus(x.t),
                    _ => unreachable!("the other functions run as element-wise programs"),
                };
                Ok(self.val(t, x.axes, x.channels))
            }
            Op::Binary { .. } | Op::Affine { .. } | Op::Pow { .. } => {
                unreachable!("element-wise operators run as programs (above)")
            }
            Op::FeedForward {
                site,
                x,
                route: Some(r),
                ..
            } => self.routed_feedforward(st, site, x, r),
            Op::Linear { site, x, .. } if matches!(x.op, Op::Concat(_)) => {
                let Op::Concat(parts) = &x.op else {
                    unreachable!("matched above")
                };
                self.linear_of_concat(st, node, site, parts)
            }
            Op::Linear { site, x, .. }
            | Op::Norm { site, x, .. }
            | Op::FeedForward { site, x, .. } => {
                let x = self.eval(st, x)?;
                let rows = self.rows(&x);
                let t2 = x.t.reshape_like(&(rows, x.channels));
                let y = match self.layer.site(&st.name, site) {
                    Block::Linear(l) => l.forward(t2)?,
                    Block::Rms(nrm) => nrm.forward(t2)?,
                    Block::Layer(nrm) => nrm.forward(t2)?,
                    Block::FeedForward(ff) => ff.forward(t2)?,
                    Block::Attend(_) => unreachable!("sites are unique per kind"),
                };
                let c = y.shape().1;
                Ok(self.val(y.reshape_like(&(rows * c,)), x.axes, c))
            }
            Op::Concat(parts) => {
                let mut joined: Option<T2<E, D, T>> = None;
                let mut last_tag = None;
                for p in parts {
                    let v = self.eval(st, p)?;
                    let mut v = self.canonical(v, &node.slots, p.channels)?;
                    if v.tag.is_some() && v.tag == last_tag {
                        v.t = v.t * E::one();
                    }
                    last_tag = v.tag;
                    let rows = self.rows(&v);
                    let t2 = v.t.reshape_like(&(rows, p.channels));
                    joined = Some(match joined {
                        None => t2,
                        Some(acc) => (acc, t2).concat_along(Axis::<1>),
                    });
                }
                let t = joined.expect("concat has two or more parts");
                let (rows, c) = *t.shape();
                Ok(self.val(t.reshape_like(&(rows * c,)), canonical(&node.slots), c))
            }
            Op::Reduce {
                op,
                slot,
                x,
                matmul,
                mask,
            } => {
                if *matmul {
                    self.reduce_matmul(st, node, *op, *slot, x)
                } else {
                    self.reduce_masked(st, node, *op, *slot, x, *mask)
                }
            }
            Op::Softmax { slot, x, mask } => self.softmax(st, node, *slot, x, *mask),
            Op::Dot { a, b, heads } => {
                if let Some(v) = self.dot_matmul(st, node, a, b, *heads)? {
                    return Ok(v);
                }
                let va = self.eval(st, a)?;
                let vb = self.eval(st, b)?;
                let va = self.canonical(va, &node.slots, a.channels)?;
                let mut vb = self.canonical(vb, &node.slots, b.channels)?;
                if va.tag.is_some() && va.tag == vb.tag {
                    vb.t = vb.t * E::one();
                }
                let rows = self.rows(&va);
                let d = a.channels / heads;
                let prod = (va.t * vb.t).reshape_like(&(rows, *heads, d));
                let t = prod.sum::<_, Axis<2>>().reshape_like(&(rows * heads,));
                Ok(self.val(t, canonical(&node.slots), *heads))
            }
            Op::Attend(a) => Ok(self.attend(st, a)?.0),
        }
    }
}

impl<E: Real, D: Device<E>, T: Tape<E, D>> Val<E, D, T> {
    /// A tape-less branch of this value (same layout).
    fn val_branch(&self) -> Val<E, D, T> {
        Val {
            t: self.t.with_empty_tape(),
            axes: self.axes.clone(),
            channels: self.channels,
            within: self.within,
            tag: self.tag,
        }
    }
}
