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
            run.statement(st)?;
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
    fn eval_top(
        &mut self,
        st: &PlanStatement,
        node: &Node,
    ) -> Result<(Val<E, D, T>, Option<Val<E, D, T>>)> {
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

    // ---- reductions and softmax --------------------------------------------------------

    /// Whether index `k` may be read at a position whose other indices are `rest`: `k` is a real
    /// node and, in a causal rule, not later than the latest of `rest`.
    fn keep_fn(
        &self,
        k: Slot,
        rest: Vec<Slot>,
    ) -> impl Fn(usize, &[usize; MAX_SLOTS]) -> bool + 'a {
        let mask = self.mask;
        let causal = self.plan().causal;
        move |b, s| mask.node_valid(b, s[k]) && (!causal || rest.iter().any(|&r| s[k] <= s[r]))
    }

    /// `[outer, n, inner]` around slot `k` of a canonical layout over `slots`.
    fn split_at(&self, slots: &[Slot], k: Slot, channels: usize) -> (usize, usize, usize) {
        let n = self.ext.nodes;
        let pos = slots
            .iter()
            .position(|&s| s == k)
            .expect("k is a slot of the operand");
        let outer = self.ext.batch * n.pow(pos as u32);
        let inner = n.pow((slots.len() - pos - 1) as u32) * channels;
        (outer, n, inner)
    }

    fn reduce_masked(
        &mut self,
        st: &PlanStatement,
        node: &Node,
        op: ReduceOp,
        k: Slot,
        x: &Node,
    ) -> Result<Val<E, D, T>> {
        let v = self.eval(st, x)?;
        let axes = canonical(&x.slots);
        let keep = self.keep_fn(k, node.slots.clone());
        let m = mask_tensor::<E, D>(&self.dev, &axes, self.ext, x.channels, 1, &keep)?;
        let (outer, n, inner) = self.split_at(&x.slots, k, x.channels);
        let out_axes = canonical(&node.slots);
        let t = match op {
            ReduceOp::Sum | ReduceOp::Mean => {
                let s = (v.t * m.clone().retaped::<T>())
                    .reshape_like(&(outer, n, inner))
                    .sum::<_, Axis<1>>()
                    .reshape_like(&(outer * inner,));
                if op == ReduceOp::Sum {
                    s
                } else {
                    let counts = self.count_visible(&m, outer, n, inner)?;
                    s * counts
                }
            }
            ReduceOp::Max => {
                let pushed = v.t + (m.clone() - E::one()).retaped::<T>() * E::of(-MASKED);
                let pushed = pushed.reshape_like(&(outer, n, inner));
                let any = self.count_visible(&m, outer, n, inner)?.gt(E::of(0.0));
                let zeros = self.dev.zeros_like(&(outer * inner,));
                let ones = self.dev.ones_like(&(outer * inner,));
                let any = any.choose(ones, zeros);
                pushed.max::<_, Axis<1>>().reshape_like(&(outer * inner,)) * any.retaped::<T>()
            }
        };
        Ok(self.val(t, out_axes, node.channels))
    }

    /// `1 / max(visible count, 1)` per `[outer, inner]` position of a mask `[outer, n, inner]`.
    fn count_visible(
        &self,
        m: &T1<E, D>,
        outer: usize,
        n: usize,
        inner: usize,
    ) -> Result<T1<E, D>> {
        let host = m.as_vec();
        let mut out = Vec::with_capacity(outer * inner);
        for o in 0..outer {
            for i in 0..inner {
                let c: f64 = (0..n).map(|k| host[(o * n + k) * inner + i].as_f64()).sum();
                out.push(E::of(1.0 / c.max(1.0)));
            }
        }
        // keep "no visible key" distinguishable: 1/max(0,1) = 1 would read as one visible key
        for o in 0..outer {
            for i in 0..inner {
                if (0..n).all(|k| host[(o * n + k) * inner + i] == E::zero()) {
                    out[o * inner + i] = E::zero();
                }
            }
        }
        constant(&self.dev, out, (outer * inner,))
    }

    fn softmax(
        &mut self,
        st: &PlanStatement,
        node: &Node,
        k: Slot,
        x: &Node,
    ) -> Result<Val<E, D, T>> {
        let v = self.eval(st, x)?;
        let rest: Vec<Slot> = x.slots.iter().copied().filter(|&s| s != k).collect();
        let keep = self.keep_fn(k, rest);
        let axes = canonical(&x.slots);
        let m = mask_tensor::<E, D>(&self.dev, &axes, self.ext, x.channels, 1, &keep)?;
        let (outer, n, inner) = self.split_at(&x.slots, k, x.channels);
        let pushed = v.t + (m.clone() - E::one()).retaped::<T>() * E::of(-MASKED);
        let w = pushed
            .reshape_like(&(outer, n, inner))
            .softmax::<Axis<1>>()
            .reshape_like(&(outer * n * inner,));
        // rows with no visible key come out uniform; the mask zeroes them
        Ok(self.val(w * m.retaped::<T>(), axes, node.channels))
    }

    /// `sum[k](a * b)` (or mean) as batched matrix products: `a` over `{p, k}` and `b` over
    /// `{q, k}` become `[b·g, p·da, n] × [b·g, n, q·db]` with `g` channel groups (all channels,
    /// or heads when one side has one channel per head).
    fn reduce_matmul(
        &mut self,
        st: &PlanStatement,
        node: &Node,
        op: ReduceOp,
        k: Slot,
        x: &Node,
    ) -> Result<Val<E, D, T>> {
        let Op::Binary { lhs, rhs, .. } = &x.op else {
            unreachable!("the checker only picks the matmul form for products")
        };
        let va = self.eval(st, lhs)?;
        let mut vb = self.eval(st, rhs)?;
        if va.tag.is_some() && va.tag == vb.tag {
            vb.t = vb.t * E::one();
        }
        let other = |n: &Node| n.slots.iter().copied().find(|&s| s != k);
        let (p, q) = (other(lhs), other(rhs));
        let (ca, cb) = (lhs.channels, rhs.channels);
        let g = ca.min(cb);
        let (da, db) = (ca / g, cb / g);
        let n = self.ext.nodes;
        let bsz = self.ext.batch;

        let mut a_axes = vec![Ax::Batch, Ax::Head];
        a_axes.extend(p.map(Ax::Slot));
        if da > 1 {
            a_axes.push(Ax::Within);
        }
        a_axes.push(Ax::Slot(k));
        let mut b_axes = vec![Ax::Batch, Ax::Head, Ax::Slot(k)];
        b_axes.extend(q.map(Ax::Slot));
        if db > 1 {
            b_axes.push(Ax::Within);
        }
        let va = arrange(va, &a_axes, ca, da, self.ext, &self.layer.cache)?;
        let vb = arrange(vb, &b_axes, cb, db, self.ext, &self.layer.cache)?;
        let rows_a = p.map_or(1, |_| n) * da;
        let cols_b = q.map_or(1, |_| n) * db;
        let batch = bsz * g;
        let causal = self.plan().causal;
        let valid = |b: usize, s: &[usize; MAX_SLOTS]| self.mask.node_valid(b, s[k]);
        let mask_a = |ext, axes: &[Ax], c, w, f: &dyn Fn(usize, &[usize; MAX_SLOTS]) -> bool| {
            mask_tensor::<E, D>(&self.dev, axes, ext, c, w, f)
        };

        let mut r_axes = vec![Ax::Batch, Ax::Head];
        r_axes.extend(p.map(Ax::Slot));
        if da > 1 {
            r_axes.push(Ax::Within);
        }
        r_axes.extend(q.map(Ax::Slot));
        if db > 1 {
            r_axes.push(Ax::Within);
        }
        let product = |a: T1<E, D, T>, b: T1<E, D, T>| -> T1<E, D, T> {
            a.reshape_like(&(batch, rows_a, n))
                .matmul(b.reshape_like(&(batch, n, cols_b)))
                .reshape_like(&(batch * rows_a * cols_b,))
        };
        let t = match (causal, p, q) {
            (true, Some(ps), Some(qs)) => {
                // k ≤ max(p, q): where p ≥ q the bound is p (mask a), elsewhere q (mask b)
                let ma = mask_a(self.ext, &a_axes, ca, da, &|b, s| {
                    valid(b, s) && s[k] <= s[ps]
                })?;
                let mb = mask_a(self.ext, &b_axes, cb, db, &|b, s| {
                    valid(b, s) && s[k] <= s[qs]
                })?;
                let sel = mask_a(self.ext, &r_axes, ca.max(cb), da.max(db), &|_, s| {
                    s[ps] >= s[qs]
                })?;
                let first = product(
                    va.t.with_empty_tape() * ma.retaped::<T>(),
                    vb.t.with_empty_tape(),
                );
                let second = product(va.t, vb.t * mb.retaped::<T>());
                let not_sel = sel.clone().negate() + E::one();
                first * sel.retaped::<T>() + second * not_sel.retaped::<T>()
            }
            (true, Some(ps), None) => {
                let ma = mask_a(self.ext, &a_axes, ca, da, &|b, s| {
                    valid(b, s) && s[k] <= s[ps]
                })?;
                product(va.t * ma.retaped::<T>(), vb.t)
            }
            (true, None, Some(qs)) => {
                let mb = mask_a(self.ext, &b_axes, cb, db, &|b, s| {
                    valid(b, s) && s[k] <= s[qs]
                })?;
                product(va.t, vb.t * mb.retaped::<T>())
            }
            _ => {
                let ma = mask_a(self.ext, &a_axes, ca, da, &|b, s| valid(b, s))?;
                product(va.t * ma.retaped::<T>(), vb.t)
            }
        };
        let c = ca.max(cb);
        let v = Val {
            t,
            axes: r_axes,
            channels: c,
            within: da.max(db),
            tag: None,
        };
        let v = self.canonical(v, &node.slots, c)?;
        if op == ReduceOp::Sum {
            return Ok(v);
        }
        // mean: divide by the number of visible k at each position
        let keep = self.keep_fn(k, node.slots.clone());
        let axes = canonical(&node.slots);
        let mut inv = Vec::new();
        for_each_position(&axes, self.ext, 1, 1, |b, s, _| {
            let mut s2 = *s;
            let count = (0..n)
                .filter(|&kk| {
                    s2[k] = kk;
                    keep(b, &s2)
                })
                .count();
            inv.push(E::of(1.0 / count.max(1) as f64));
        });
        let len = inv.len();
        let inv = self.val(
            constant(&self.dev, inv, (len,))?.retaped::<T>(),
            axes.clone(),
            1,
        );
        let inv = self.canonical(inv, &node.slots, c)?;
        Ok(self.val(v.t * inv.t, axes, c))
    }

    // ---- attention ----------------------------------------------------------------------

    fn attend_block(&self, st: &PlanStatement, a: &AttendOp) -> &'a AttendBlock<E, D> {
        match self.layer.site(&st.name, &a.site) {
            Block::Attend(b) => b,
            _ => unreachable!("attend sites hold attention blocks"),
        }
    }

    /// Projects a value in a row-major layout with a linear block, keeping the layout.
    fn project(&self, v: Val<E, D, T>, l: &crate::nn::Linear<E, D>) -> Result<Val<E, D, T>> {
        let rows = self.rows(&v);
        let y = l.forward(v.t.reshape_like(&(rows, v.channels)))?;
        let c = y.shape().1;
        Ok(self.val(y.reshape_like(&(rows * c,)), v.axes, c))
    }

    fn gates_val(
        &mut self,
        st: &PlanStatement,
        a: &AttendOp,
        query: &Val<E, D, T>,
    ) -> Result<Option<Val<E, D, T>>> {
        Ok(match &a.gates {
            None => None,
            Some(Gates::Expr(g)) => {
                let v = self.eval(st, g)?;
                Some(v)
            }
            Some(Gates::FromQuery { site }) => {
                let Block::Linear(l) = self.layer.site(&st.name, site) else {
                    unreachable!("gate sites hold linear blocks")
                };
                let branch = self.val(
                    query.t.with_empty_tape(),
                    query.axes.clone(),
                    query.channels,
                );
                Some(self.project(branch, l)?)
            }
        })
    }

    fn attend(
        &mut self,
        st: &PlanStatement,
        a: &AttendOp,
    ) -> Result<(Val<E, D, T>, Option<Val<E, D, T>>)> {
        let block = self.attend_block(st, a);
        let (h, d) = (a.heads, a.dim_head);
        let q_in = self.eval(st, &a.query)?;
        if let Some(route) = &a.route {
            let out = self.routed(st, a, block, q_in, route)?;
            return Ok((out, None));
        }
        // keys in the layout they are read in (edge attention picks its orientation from it)
        let k_in = match a.pattern {
            Pattern::Row { .. } => self.eval_op(st, &a.key)?,
            _ => self.eval(st, &a.key)?,
        };
        let gates = self.gates_val(st, a, &q_in)?;
        let bias = match &a.bias {
            Some(b) => Some(self.eval(st, b)?),
            None => None,
        };
        let talking = block.talking.as_ref().map(|p| p.matrix::<T>());
        let (b, n) = (self.ext.batch, self.ext.nodes);
        match a.pattern {
            Pattern::Nodes { query, key } => {
                let split = |v: Val<E, D, T>| -> T4<E, D, T> {
                    v.t.reshape_like(&(b, n, h, d))
                        .permute::<_, Axes4<0, 2, 1, 3>>()
                };
                let q = split(self.project(q_in, &block.to_q)?);
                let k = split(self.project(k_in.val_branch(), &block.to_k)?);
                let v = split(self.project(k_in, &block.to_v)?);
                let bias = match bias {
                    Some(bv) => {
                        let axes = [Ax::Batch, Ax::Chan, Ax::Slot(query), Ax::Slot(key)];
                        Some(self.arrange(bv, &axes, h)?.t.reshape_like(&(b, h, n, n)))
                    }
                    None => None,
                };
                let gates = match gates {
                    Some(g) => {
                        let g = self.arrange(g, &[Ax::Batch, Ax::Chan, Ax::Slot(query)], h)?;
                        Some(g.t.reshape_like(&(b, h, n)))
                    }
                    None => None,
                };
                let vis = self.mask.node_visibility()?;
                let plain = bias.is_none() && talking.is_none() && !a.probs;
                let (out, weights) = match a.kernel {
                    KernelChoice::Taylor { eps } if plain => {
                        let out = taylor_attend(q, k, v, a.scale, eps, &vis, TaylorForm::Auto)?;
                        let out = match gates {
                            Some(g) => {
                                out * g.sigmoid().broadcast_like::<_, Axis<3>>(&(b, h, n, d))
                            }
                            None => out,
                        };
                        (out, None)
                    }
                    kernel => {
                        let normalizer = match kernel {
                            KernelChoice::Softmax => Normalizer::Softmax,
                            KernelChoice::Taylor { eps } => Normalizer::Taylor { eps },
                        };
                        let spec = WeightsSpec {
                            scale: a.scale,
                            normalizer,
                            visibility: vis,
                        };
                        let inputs = AttendInputs {
                            bias,
                            talking,
                            gates,
                        };
                        let r = attend(q, k, v, inputs, &spec, a.probs)?;
                        (r.out, r.weights)
                    }
                };
                let merged = out
                    .permute::<_, Axes4<0, 2, 1, 3>>()
                    .reshape_like(&(b * n * h * d,));
                let merged = self.val(merged, canonical(&[query]), h * d);
                let out = self.project(merged, &block.to_out)?;
                let probs = match weights {
                    Some(w) => {
                        let w = self.val(
                            w.reshape_like(&(b * h * n * n,)),
                            vec![Ax::Batch, Ax::Chan, Ax::Slot(query), Ax::Slot(key)],
                            h,
                        );
                        let slots = [query.min(key), query.max(key)];
                        Some(self.canonical(w, &slots, h)?)
                    }
                    None => None,
                };
                Ok((out, probs))
            }
            Pattern::Row { q0, q1, key } => {
                let q_axes = [Ax::Batch, Ax::Slot(q0), Ax::Slot(q1), Ax::Chan];
                let k_axes = [Ax::Batch, Ax::Slot(q0), Ax::Slot(key), Ax::Chan];
                let bias_axes = [
                    Ax::Batch,
                    Ax::Slot(q0),
                    Ax::Chan,
                    Ax::Slot(q1),
                    Ax::Slot(key),
                ];
                let bias = match bias {
                    Some(bv) => Some(self.arrange(bv, &bias_axes, h)?.t.reshape_like(&(
                        b * n,
                        h,
                        n,
                        n,
                    ))),
                    None => None,
                };
                let out = self.edge_attend(
                    a,
                    block,
                    q_in,
                    k_in,
                    gates,
                    bias,
                    talking,
                    &q_axes,
                    &k_axes,
                    EdgePattern::Row,
                )?;
                Ok((out, None))
            }
            Pattern::All { q0, q1, k0, k1 } => {
                let q_axes = [Ax::Batch, Ax::Slot(q0), Ax::Slot(q1), Ax::Chan];
                let k_axes = [Ax::Batch, Ax::Slot(k0), Ax::Slot(k1), Ax::Chan];
                let bias_axes = [
                    Ax::Batch,
                    Ax::Chan,
                    Ax::Slot(q0),
                    Ax::Slot(q1),
                    Ax::Slot(k0),
                    Ax::Slot(k1),
                ];
                let bias = match bias {
                    Some(bv) => Some(self.arrange(bv, &bias_axes, h)?.t.reshape_like(&(
                        b,
                        h,
                        n * n,
                        n * n,
                    ))),
                    None => None,
                };
                let out = self.edge_attend(
                    a,
                    block,
                    q_in,
                    k_in,
                    gates,
                    bias,
                    talking,
                    &q_axes,
                    &k_axes,
                    EdgePattern::All,
                )?;
                Ok((out, None))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn edge_attend(
        &mut self,
        a: &AttendOp,
        block: &AttendBlock<E, D>,
        q_in: Val<E, D, T>,
        k_in: Val<E, D, T>,
        gates: Option<Val<E, D, T>>,
        bias: Option<T4<E, D, T>>,
        talking: Option<T2<E, D, T>>,
        q_axes: &[Ax],
        k_axes: &[Ax],
        pattern: EdgePattern,
    ) -> Result<Val<E, D, T>> {
        let (b, n) = (self.ext.batch, self.ext.nodes);
        let inner = a.heads * a.dim_head;
        let edges = |v: Val<E, D, T>, c: usize| Edges::new(v.t.reshape_like(&(b, n, n, c)));
        // Attention along the second slot of the stored edges (`c[i, j] -> c[k, j]`) is the row
        // pattern on transposed edges: run it as the column pattern on the edges as stored, so
        // that queries, keys, gates and the output are never transposed.
        let (q_axes, k_axes, pattern) = match (pattern, q_axes, k_axes) {
            (EdgePattern::Row, &[bq, q0, q1, cq], &[_, _, key, _])
                if q_in.axes == [bq, q1, q0, cq] =>
            {
                (
                    vec![bq, q1, q0, cq],
                    vec![bq, key, q0, cq],
                    EdgePattern::Column,
                )
            }
            _ => (q_axes.to_vec(), k_axes.to_vec(), pattern),
        };
        let (q_axes, k_axes) = (&q_axes[..], &k_axes[..]);
        // Queries and keys read from one stored value (same tag, not yet moved) and laid out
        // alike (each stored axis lands at the same place in both): one input serves all three
        // projections.
        let places = |raw: &[Ax], target: &[Ax]| -> Vec<Option<usize>> {
            raw.iter()
                .map(|a| target.iter().position(|t| t == a))
                .collect()
        };
        let self_attention = q_in.tag.is_some()
            && q_in.tag == k_in.tag
            && q_in.channels == k_in.channels
            && places(&q_in.axes, q_axes) == places(&k_in.axes, k_axes)
            && talking.is_none()
            && [&block.to_q, &block.to_k, &block.to_v]
                .iter()
                .all(|l| l.bias.is_none());
        let q_in = self.arrange(q_in, q_axes, a.query.channels)?;
        let k_in = self.arrange(k_in, k_axes, a.key.channels)?;
        let kernel = match a.kernel {
            KernelChoice::Softmax => EdgeKernel::Softmax { scale: a.scale },
            KernelChoice::Taylor { eps } => EdgeKernel::Taylor {
                scale: a.scale,
                eps,
                form: TaylorForm::Auto,
            },
        };
        if self_attention {
            let gates = match gates {
                Some(g) => Some(edges(self.arrange(g, q_axes, a.heads)?, a.heads)?),
                None => None,
            };
            // the keys' copy is not read, but its history must not be lost
            let (_, k_tape) = k_in.t.split_tape();
            let (x, x_tape) = q_in.t.split_tape();
            let x = Val {
                t: x.put_tape(x_tape.merge(k_tape)),
                ..q_in
            };
            let weights = EdgeProjections {
                to_q: block.to_q.weight.matrix::<T>(),
                to_k: block.to_k.weight.matrix::<T>(),
                to_v: block.to_v.weight.matrix::<T>(),
            };
            let inputs = EdgeAttendInputs {
                bias,
                talking: None,
                gates,
            };
            let channels = x.channels;
            let out = edge_self_attention(
                edges(x, channels)?,
                weights,
                a.heads,
                pattern,
                kernel,
                inputs,
                self.mask,
            )?;
            let out = self.val(
                out.into_tensor().reshape_like(&(b * n * n * inner,)),
                q_axes.to_vec(),
                inner,
            );
            return self.project(out, &block.to_out);
        }
        let q = edges(self.project(q_in, &block.to_q)?, inner)?;
        let k = edges(self.project(k_in.val_branch(), &block.to_k)?, inner)?;
        let v = edges(self.project(k_in, &block.to_v)?, inner)?;
        let gates = match gates {
            Some(g) => Some(edges(self.arrange(g, q_axes, a.heads)?, a.heads)?),
            None => None,
        };
        let inputs = EdgeAttendInputs {
            bias,
            talking,
            gates,
        };
        let out = edge_attention(q, k, v, a.heads, pattern, kernel, inputs, self.mask)?;
        let out = self.val(
            out.into_tensor().reshape_like(&(b * n * n * inner,)),
            q_axes.to_vec(),
            inner,
        );
        self.project(out, &block.to_out)
    }

    /// Routed attention over all edges: pick `k` edges (globally or per row) by the score's
    /// soft top-k, attend among the picked ones, and write back only to them, scaled by their
    /// straight-through gates.
    fn routed(
        &mut self,
        st: &PlanStatement,
        a: &AttendOp,
        block: &'a AttendBlock<E, D>,
        q_in: Val<E, D, T>,
        r: &Route,
    ) -> Result<Val<E, D, T>> {
        let Pattern::All { q0, q1, .. } = a.pattern else {
            unreachable!("the checker routes only attention over all edges")
        };
        let (b, n) = (self.ext.batch, self.ext.nodes);
        let (h, d) = (a.heads, a.dim_head);
        let axes = [Ax::Batch, Ax::Slot(q0), Ax::Slot(q1), Ax::Chan];
        let x = self.arrange(q_in, &axes, a.query.channels)?;
        let score = self.eval(st, &r.score)?;
        let score = self.arrange(score, &axes, 1)?;
        let (rows, len) = if r.per_row { (b * n, n) } else { (b, n * n) };
        let causal = self.plan().causal;
        let mut selectable = Vec::with_capacity(rows * len);
        for row in 0..rows {
            for e in 0..len {
                let (bb, i, j) = if r.per_row {
                    (row / n, row % n, e)
                } else {
                    (row, e / n, e % n)
                };
                let ok = self.mask.edge_valid(bb, i, j) && (!causal || j <= i);
                selectable.push(ok);
            }
        }
        let k = r.k.min(len);
        let cfg = CoorDescent {
            n_iters: r.n_iters,
            eps: r.eps,
            eps_init: None,
            eps_decay: 1.0,
        };
        let mut picks = soft_topk_padded(
            score.t.reshape_like(&(rows, len)),
            k,
            r.fetch_ratio,
            Some(&selectable),
            &cfg,
        )?;
        if !r.straight {
            // scale by the soft scores themselves: slower to learn, but an exact gradient
            std::mem::swap(&mut picks.gates, &mut picks.coor_descent_values);
        }
        let valid = picks.valid.clone();
        let dev = self.dev.clone();
        let scale = a.scale;
        let talking = block.talking.as_ref().map(|p| p.matrix::<T>());
        let c_in = a.query.channels;
        let outputs = a.outputs;
        let x = x.t.reshape_like(&(rows, len, c_in));
        let out = route(x, picks, |picked| {
            let flat = picked.reshape_like(&(rows * k, c_in));
            let split = |t: T2<E, D, T>| -> T4<E, D, T> {
                t.reshape_like(&(rows, k, h, d))
                    .permute::<_, Axes4<0, 2, 1, 3>>()
            };
            let q = split(block.to_q.forward(flat.with_empty_tape())?);
            let kk = split(block.to_k.forward(flat.with_empty_tape())?);
            let v = split(block.to_v.forward(flat)?);
            let vis = Visibility::all(rows, k, k).with_key_valid(valid.clone())?;
            let spec = WeightsSpec {
                scale,
                normalizer: Normalizer::Softmax,
                visibility: vis,
            };
            let inputs = AttendInputs {
                bias: None,
                talking,
                gates: None,
            };
            let o = attend(q, kk, v, inputs, &spec, false)?.out;
            let o = o
                .permute::<_, Axes4<0, 2, 1, 3>>()
                .reshape_like(&(rows * k, h * d));
            let o = block.to_out.forward(o)?;
            let keep: T2<E, D> = constant(&dev, indicator(valid.iter().copied()), (rows * k,))?
                .broadcast_like::<_, Axis<1>>(&(rows * k, outputs));
            Ok((o * keep.retaped::<T>()).reshape_like(&(rows, k, outputs)))
        })?;
        let out = out.reshape_like(&(rows * len * outputs,));
        Ok(self.val(out, axes.to_vec(), outputs))
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
