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

mod attention;
mod reduce;

use dfdx::prelude::*;

use super::ir::*;
use super::layer::{AttendBlock, Block, RuleLayer};
use super::layout::*;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::graph::{Edges, GraphMask, Nodes};
use crate::ops::activations::{gelu_exact, silu};
use crate::ops::attention::{attend, AttendInputs};
use crate::ops::patterns::{
    edge_attention, edge_self_attention, EdgeAttendInputs, EdgeKernel, EdgePattern, EdgeProjections,
};
use crate::ops::routing::{route, soft_topk_padded, CoorDescent};
use crate::ops::taylor::{taylor_attend, TaylorForm};
use crate::ops::weights::{Normalizer, WeightsSpec};
use crate::spec::visibility::Visibility;
use crate::spec::MASKED;
use crate::tensor::*;

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
        let plan = &self.plan;
        let (b, n, c) = nodes.dims();
        let context = format!("rule `{}`", plan.rule);
        if c != plan.dim {
            return Err(Error::shape(
                format!("{context} nodes"),
                format!("{} channels", plan.dim),
                c,
            ));
        }
        let ed = edges.dims();
        if ed != (b, n, n, plan.dim_edges) {
            return Err(Error::shape(
                format!("{context} edges"),
                format!("{:?}", (b, n, n, plan.dim_edges)),
                format!("{ed:?}"),
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
        let dev = nodes.tensor().device().clone();
        let mut run = Run {
            layer: self,
            ext: Extents { batch: b, nodes: n },
            mask,
            dev,
            nodes: Some(nodes.into_tensor().reshape_like(&(b * n * c,))),
            edges: Some(
                edges
                    .into_tensor()
                    .reshape_like(&(b * n * n * plan.dim_edges,)),
            ),
            lets: (0..plan.lets.len()).map(|_| None).collect(),
            orphans: Vec::new(),
        };
        for st in &plan.statements {
            // a checked rule should not fail here; if it does, say which statement
            run.statement(st).map_err(|e| e.within(&plan.place(st)))?;
        }
        run.finish()
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
    nodes: Option<T1<E, D, T>>,
    edges: Option<T1<E, D, T>>,
    /// Bound `let` tensors, stored in their binding's index order.
    lets: Vec<Option<T1<E, D, T>>>,
    /// Tapes of tensors no longer stored, merged into the output at the end.
    orphans: Vec<T>,
}

impl<'a, E: Real, D: Backend<E>, T: Tape<E, D>> Run<'a, E, D, T> {
    fn plan(&self) -> &'a Plan {
        &self.layer.plan
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

    fn finish(mut self) -> Result<(Nodes<E, D, T>, Edges<E, D, T>)> {
        let (b, n) = (self.ext.batch, self.ext.nodes);
        let plan = self.plan();
        for slot in self.lets.iter_mut() {
            if let Some(t) = slot.take() {
                let (_, tape) = t.split_tape();
                self.orphans.push(tape);
            }
        }
        let nodes = self.nodes.take().expect("nodes are stored");
        let edges = self.edges.take().expect("edges are stored");
        // one owner for the whole history: the nodes (the edges' own history included)
        let (edges, edge_tape) = edges.split_tape();
        let (nodes, mut tape) = nodes.split_tape();
        tape = tape.merge(edge_tape);
        for t in self.orphans.drain(..) {
            tape = tape.merge(t);
        }
        let nodes = nodes.put_tape(tape).reshape_like(&(b, n, plan.dim));
        let edges = edges
            .put_tape(T::default())
            .reshape_like(&(b, n, n, plan.dim_edges));
        Ok((Nodes::new(nodes), Edges::new(edges)?))
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
        match &node.op {
            Op::State { domain, slots } => Ok(match domain {
                Domain::Nodes => {
                    let t = self.nodes.as_ref().expect("nodes are stored");
                    self.read_stored(t, slots, plan.dim, NODES_TAG)
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
            Op::Binary { op, lhs, rhs } => {
                let l = self.eval(st, lhs)?;
                let r = self.eval(st, rhs)?;
                let l = self.canonical(l, &node.slots, node.channels)?;
                let mut r = self.canonical(r, &node.slots, node.channels)?;
                if l.tag.is_some() && l.tag == r.tag {
                    // the same tensor on both sides: give one side its own id
                    r.t = r.t * E::one();
                }
                let t = match op {
                    Arith::Add => l.t + r.t,
                    Arith::Sub => l.t - r.t,
                    Arith::Mul => l.t * r.t,
                    Arith::Div => l.t / r.t,
                };
                Ok(self.val(t, canonical(&node.slots), node.channels))
            }
            Op::Affine { x, mul, add } => {
                let x = self.eval(st, x)?;
                let mut t = x.t;
                if *mul != 1.0 {
                    t = t * E::of(*mul);
                }
                if *add != 0.0 {
                    t = t + E::of(*add);
                }
                Ok(self.val(t, x.axes, x.channels))
            }
            Op::Pow { x, exponent } => {
                let x = self.eval(st, x)?;
                let t = if *exponent == 2.0 {
                    x.t.square()
                } else {
                    x.t.powf(*exponent)
                };
                Ok(self.val(t, x.axes, x.channels))
            }
            Op::Act { f, x } => {
                let x = self.eval(st, x)?;
                let t = match f {
                    Activation::Relu => x.t.relu(),
                    Activation::Gelu => gelu_exact(x.t)?,
                    Activation::Silu => silu(x.t),
                    Activation::Sigmoid => x.t.sigmoid(),
                    Activation::Tanh => x.t.tanh(),
                    Activation::Exp => x.t.exp(),
                    Activation::Abs => x.t.abs(),
                    Activation::Square => x.t.square(),
                    Activation::Sqrt => x.t.sqrt(),
                };
                Ok(self.val(t, x.axes, x.channels))
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
            } => {
                if *matmul {
                    self.reduce_matmul(st, node, *op, *slot, x)
                } else {
                    self.reduce_masked(st, node, *op, *slot, x)
                }
            }
            Op::Softmax { slot, x } => self.softmax(st, node, *slot, x),
            Op::Dot { a, b, heads } => {
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
