//! Reductions and softmax over an index, masked by visibility; reductions of products, and
//! dots between factors over different indices, run as batched matrix products.

use super::*;
use crate::ops::axis::{over_axis, AxisOp, Visible};

/// What a softmax or log-sum-exp over an index may read, owned (see `Run::visibility`).
enum Shown<E: Real, D: Device<E>> {
    All,
    /// Only padding hides: whether each node of each graph is real, `[batch × n]`.
    Keys(Vec<bool>),
    Mask(T1<E, D>),
}

impl<E: Real, D: Device<E>> Shown<E, D> {
    fn visible(&self) -> Visible<'_, T1<E, D>> {
        match self {
            Shown::All => Visible::All,
            Shown::Keys(valid) => Visible::Keys(valid),
            Shown::Mask(m) => Visible::Mask(m),
        }
    }
}

impl<'a, E: Real, D: Backend<E>, T: Tape<E, D>> Run<'a, E, D, T> {
    /// Whether index `k` may be read at a position whose other indices are `rest`: `k` is a real
    /// node and, in a causal rule, not later than the latest of `rest`.
    /// With `within`, also only where the input graph has that edge.
    pub(super) fn keep_fn(
        &self,
        k: Slot,
        rest: Vec<Slot>,
        within: Option<AdjacencyMask>,
    ) -> Result<impl Fn(usize, &[usize; MAX_SLOTS]) -> bool + 'a> {
        let mask = self.mask;
        let causal = self.plan().causal;
        if within.is_some() && mask.adjacency().is_none() {
            return Err(crate::graph::no_input_graph("`mask:`"));
        }
        Ok(move |b, s: &[usize; MAX_SLOTS]| {
            mask.node_valid(b, s[k])
                && (!causal || rest.iter().any(|&r| s[k] <= s[r]))
                && within.map_or(true, |m| mask.has_edge(b, s[m.from], s[m.to]))
        })
    }

    /// `[outer, n, inner]` around slot `k` of a canonical layout over `slots`.
    pub(super) fn split_at(
        &self,
        slots: &[Slot],
        k: Slot,
        channels: usize,
    ) -> (usize, usize, usize) {
        let n = self.ext.nodes;
        let pos = slots
            .iter()
            .position(|&s| s == k)
            .expect("k is a slot of the operand");
        let outer = self.ext.batch * n.pow(pos as u32);
        let inner = n.pow((slots.len() - pos - 1) as u32) * channels;
        (outer, n, inner)
    }

    pub(super) fn reduce_masked(
        &mut self,
        st: &PlanStatement,
        node: &Node,
        op: ReduceOp,
        k: Slot,
        x: &Node,
        within: Option<AdjacencyMask>,
    ) -> Result<Val<E, D, T>> {
        // the operand, broadcast over the mask's indices it does not use
        let slots = operand_slots(x, k, &node.slots);
        let v = self.eval(st, x)?;
        let v = self.canonical(v, &slots, x.channels)?;
        let axes = canonical(&slots);
        let (outer, n, inner) = self.split_at(&slots, k, x.channels);
        let out_axes = canonical(&node.slots);
        let mask = || -> Result<T1<E, D>> {
            let keep = self.keep_fn(k, node.slots.clone(), within)?;
            mask_tensor::<E, D>(&self.dev, &axes, self.ext, x.channels, 1, &keep)
        };
        let t = match op {
            ReduceOp::LogSumExp => {
                let m = self.visibility(&axes, k, node.slots.clone(), within, x.channels)?;
                over_axis(v.t, m.visible(), (outer, n, inner), AxisOp::LogSumExp)?
            }
            ReduceOp::Sum | ReduceOp::Mean => {
                let m = mask()?;
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
                // hidden terms pushed far below the rest: they never win a max; where none is
                // visible the result is 0, not the pushed value
                let m = mask()?;
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

    /// `1 / visible count` per `[outer, inner]` position of a mask `[outer, n, inner]`, and 0
    /// where no key is visible (1 would read as one visible key). Counted on the device.
    pub(super) fn count_visible(
        &self,
        m: &T1<E, D>,
        outer: usize,
        n: usize,
        inner: usize,
    ) -> Result<T1<E, D>> {
        let counts = m
            .clone()
            .reshape_like(&(outer, n, inner))
            .sum::<(usize, usize), Axis<1>>()
            .reshape_like(&(outer * inner,));
        let any = counts.gt(E::of(0.5));
        let inverse = counts
            .maximum(self.dev.ones_like(&(outer * inner,)))
            .recip();
        Ok(any.choose(inverse, self.dev.zeros_like(&(outer * inner,))))
    }

    pub(super) fn softmax(
        &mut self,
        st: &PlanStatement,
        node: &Node,
        k: Slot,
        x: &Node,
        within: Option<AdjacencyMask>,
    ) -> Result<Val<E, D, T>> {
        let slots = node.slots.clone();
        let v = self.eval(st, x)?;
        let v = self.canonical(v, &slots, x.channels)?;
        let rest: Vec<Slot> = slots.iter().copied().filter(|&s| s != k).collect();
        let axes = canonical(&slots);
        let m = self.visibility(&axes, k, rest, within, x.channels)?;
        let dims = self.split_at(&slots, k, x.channels);
        let w = over_axis(v.t, m.visible(), dims, AxisOp::Softmax)?;
        Ok(self.val(w, axes, node.channels))
    }

    /// Which entries of an operand over `axes` (canonical: the batch leads) a reduction over
    /// `k` may read (see [`Self::keep_fn`]). With no padding, not causal and no `mask:` it reads
    /// them all; with padding alone, the real nodes. Only a causal rule or a `mask:` builds a
    /// mask over the operand's entries.
    fn visibility(
        &self,
        axes: &[Ax],
        k: Slot,
        rest: Vec<Slot>,
        within: Option<AdjacencyMask>,
        channels: usize,
    ) -> Result<Shown<E, D>> {
        let padded = !self.mask.valid().iter().all(|&v| v);
        if !self.plan().causal && within.is_none() {
            return Ok(if padded {
                Shown::Keys(self.mask.valid().to_vec())
            } else {
                Shown::All
            });
        }
        let keep = self.keep_fn(k, rest, within)?;
        Ok(Shown::Mask(mask_tensor::<E, D>(
            &self.dev, axes, self.ext, channels, 1, &keep,
        )?))
    }

    /// `sum[k](a * b)` (or mean) as batched matrix products: `a` over `{p, k}` and `b` over
    /// `{q, k}` become `[b·g, p·da, n] × [b·g, n, q·db]` with `g` channel groups (all channels,
    /// or heads when one side has one channel per head).
    pub(super) fn reduce_matmul(
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
        let (p, q) = (lhs.slots_besides(k), rhs.slots_besides(k));
        let (ca, cb) = (lhs.channels, rhs.channels);
        let g = ca.min(cb);
        let (da, db) = (ca / g, cb / g);
        let n = self.ext.nodes;
        let bsz = self.ext.batch;

        let mut a_axes = vec![Ax::Batch, Ax::Head];
        a_axes.extend(p.iter().map(|&s| Ax::Slot(s)));
        if da > 1 {
            a_axes.push(Ax::Within);
        }
        a_axes.push(Ax::Slot(k));
        let mut b_axes = vec![Ax::Batch, Ax::Head, Ax::Slot(k)];
        b_axes.extend(q.iter().map(|&s| Ax::Slot(s)));
        if db > 1 {
            b_axes.push(Ax::Within);
        }
        let va = arrange(va, &a_axes, ca, da, self.ext, &self.layer.cache)?;
        let vb = arrange(vb, &b_axes, cb, db, self.ext, &self.layer.cache)?;
        let rows_a = n.pow(p.len() as u32) * da;
        let cols_b = n.pow(q.len() as u32) * db;
        let batch = bsz * g;
        let causal = self.plan().causal;
        let valid = |b: usize, s: &[usize; MAX_SLOTS]| self.mask.node_valid(b, s[k]);
        // the latest of a factor's other indices: in a causal rule k may not pass it
        let latest = |slots: &[Slot], s: &[usize; MAX_SLOTS]| slots.iter().map(|&x| s[x]).max();
        let mask_a = |ext, axes: &[Ax], c, w, f: &dyn Fn(usize, &[usize; MAX_SLOTS]) -> bool| {
            mask_tensor::<E, D>(&self.dev, axes, ext, c, w, f)
        };

        let mut r_axes = vec![Ax::Batch, Ax::Head];
        r_axes.extend(p.iter().map(|&s| Ax::Slot(s)));
        if da > 1 {
            r_axes.push(Ax::Within);
        }
        r_axes.extend(q.iter().map(|&s| Ax::Slot(s)));
        if db > 1 {
            r_axes.push(Ax::Within);
        }
        let product = |a: T1<E, D, T>, b: T1<E, D, T>| -> T1<E, D, T> {
            a.reshape_like(&(batch, rows_a, n))
                .matmul(b.reshape_like(&(batch, n, cols_b)))
                .reshape_like(&(batch * rows_a * cols_b,))
        };
        let t = match (causal, p.is_empty(), q.is_empty()) {
            (true, false, false) => {
                // k ≤ max(p, q): where p ≥ q the bound is p (mask a), elsewhere q (mask b)
                let ma = mask_a(self.ext, &a_axes, ca, da, &|b, s| {
                    valid(b, s) && Some(s[k]) <= latest(&p, s)
                })?;
                let mb = mask_a(self.ext, &b_axes, cb, db, &|b, s| {
                    valid(b, s) && Some(s[k]) <= latest(&q, s)
                })?;
                let sel = mask_a(self.ext, &r_axes, ca.max(cb), da.max(db), &|_, s| {
                    latest(&p, s) >= latest(&q, s)
                })?;
                let first = product(
                    va.t.with_empty_tape() * ma.retaped::<T>(),
                    vb.t.with_empty_tape(),
                );
                let second = product(va.t, vb.t * mb.retaped::<T>());
                let not_sel = sel.clone().negate() + E::one();
                first * sel.retaped::<T>() + second * not_sel.retaped::<T>()
            }
            (true, false, true) => {
                let ma = mask_a(self.ext, &a_axes, ca, da, &|b, s| {
                    valid(b, s) && Some(s[k]) <= latest(&p, s)
                })?;
                product(va.t * ma.retaped::<T>(), vb.t)
            }
            (true, true, false) => {
                let mb = mask_a(self.ext, &b_axes, cb, db, &|b, s| {
                    valid(b, s) && Some(s[k]) <= latest(&q, s)
                })?;
                product(va.t, vb.t * mb.retaped::<T>())
            }
            // no padding: nothing to hide (a host-built mask and a product fewer)
            _ if self.mask.valid().iter().all(|&v| v) => product(va.t, vb.t),
            // padding: hiding k in either factor hides the term; the smaller one is masked
            _ if self.ext.size(&b_axes, cb, db) < self.ext.size(&a_axes, ca, da) => {
                let mb = mask_a(self.ext, &b_axes, cb, db, &|b, s| valid(b, s))?;
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
        let keep = self.keep_fn(k, node.slots.clone(), None)?;
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

    /// `dot(a, b)` where each factor has an index the other lacks, as batched matrix products
    /// per head: `[b·h·shared, a's own, d] × [b·h·shared, d, b's own]`. Spelled out element
    /// by element, both factors would first be broadcast to every pair of their own indices
    /// (`dot(g[j], h[k])` copies g and h n times over, all channels). `None` where a factor
    /// has no index of its own: there the element-wise product broadcasts nothing large.
    pub(super) fn dot_matmul(
        &mut self,
        st: &PlanStatement,
        node: &Node,
        a: &Node,
        b: &Node,
        heads: usize,
    ) -> Result<Option<Val<E, D, T>>> {
        if !crate::rules::ir::dot_is_matmul(a, b) {
            return Ok(None);
        }
        let (own_a, own_b) = (a.own_slots(b), b.own_slots(a));
        let shared: Vec<Slot> = a
            .slots
            .iter()
            .copied()
            .filter(|s| b.slots.contains(s))
            .collect();
        let va = self.eval(st, a)?;
        let mut vb = self.eval(st, b)?;
        if va.tag.is_some() && va.tag == vb.tag {
            vb.t = vb.t * E::one();
        }
        let d = a.channels / heads;
        let slot_axes = |slots: &[Slot]| slots.iter().map(|&s| Ax::Slot(s)).collect::<Vec<_>>();
        let lead = [vec![Ax::Batch, Ax::Head], slot_axes(&shared)].concat();
        let within = if d > 1 { vec![Ax::Within] } else { vec![] };
        let a_axes = [lead.clone(), slot_axes(&own_a), within.clone()].concat();
        let b_axes = [lead.clone(), within, slot_axes(&own_b)].concat();
        let va = arrange(va, &a_axes, a.channels, d, self.ext, &self.layer.cache)?;
        let vb = arrange(vb, &b_axes, b.channels, d, self.ext, &self.layer.cache)?;
        let n = self.ext.nodes;
        let batch = self.ext.batch * heads * n.pow(shared.len() as u32);
        let (rows, cols) = (n.pow(own_a.len() as u32), n.pow(own_b.len() as u32));
        let t =
            va.t.reshape_like(&(batch, rows, d))
                .matmul(vb.t.reshape_like(&(batch, d, cols)))
                .reshape_like(&(batch * rows * cols,));
        let v = Val {
            t,
            axes: [lead, slot_axes(&own_a), slot_axes(&own_b)].concat(),
            channels: heads,
            within: 1,
            tag: None,
        };
        Ok(Some(self.canonical(v, &node.slots, heads)?))
    }
}

/// The index slots a reduction over `k` runs on: its result's and `k` (the operand's, and the
/// indices of a `mask:` the operand does not use).
fn operand_slots(x: &Node, k: Slot, result: &[Slot]) -> Vec<Slot> {
    let mut slots: Vec<Slot> = result.iter().copied().chain([k]).collect();
    slots.extend(x.slots.iter().copied());
    slots.sort_unstable();
    slots.dedup();
    slots
}
