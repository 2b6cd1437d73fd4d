//! Routing (CoLT5's coordinate-descent soft top-k): a score picks positions (nodes, or edges
//! among all or within each row or column); routed attention runs among the picks, a routed
//! feedforward on them; results are scattered back scaled by the gates, zeros elsewhere.

use super::*;
use crate::ops::routing::TopK;

/// Where a route picks: the routed value's axes (the fixed index first), how many independent
/// pickings (`rows`) and how many positions each picks among (`len`), and which of those may
/// be picked (`[rows × len]`).
struct RouteLayout {
    axes: Vec<Ax>,
    rows: usize,
    len: usize,
    selectable: Vec<bool>,
}

impl<'a, E: Real, D: Backend<E>, T: Tape<E, D>> Run<'a, E, D, T> {
    /// The layout routing a value over `slots` picks in. Padding is never picked; in a causal
    /// rule a row (or column) s of edges picks only among (s, o ≤ s), all of time s.
    fn route_layout(&self, slots: &[Slot], within: Option<Slot>) -> RouteLayout {
        let (b, n) = (self.ext.batch, self.ext.nodes);
        let causal = self.plan().causal;
        let edge_ok = |bb: usize, fixed: usize, other: usize| {
            self.mask.edge_valid(bb, fixed, other) && (!causal || other <= fixed)
        };
        match (slots, within) {
            ([s], _) => RouteLayout {
                axes: vec![Ax::Batch, Ax::Slot(*s), Ax::Chan],
                rows: b,
                len: n,
                selectable: (0..b * n)
                    .map(|p| self.mask.node_valid(p / n, p % n))
                    .collect(),
            },
            ([s0, s1], Some(f)) => {
                let other = if f == *s0 { *s1 } else { *s0 };
                RouteLayout {
                    axes: vec![Ax::Batch, Ax::Slot(f), Ax::Slot(other), Ax::Chan],
                    rows: b * n,
                    len: n,
                    selectable: (0..b * n * n)
                        .map(|p| edge_ok(p / (n * n), p / n % n, p % n))
                        .collect(),
                }
            }
            ([s0, s1], None) => RouteLayout {
                axes: vec![Ax::Batch, Ax::Slot(*s0), Ax::Slot(*s1), Ax::Chan],
                rows: b,
                len: n * n,
                // the checker refuses this in a causal rule; `edge_ok` keeps it safe regardless
                selectable: (0..b * n * n)
                    .map(|p| edge_ok(p / (n * n), p / n % n, p % n))
                    .collect(),
            },
            _ => unreachable!("the checker routes nodes or edges"),
        }
    }

    /// The route's picks in `layout`: the soft top-k of its score, gated straight-through (or
    /// by the soft scores themselves when `straight` is off).
    fn picks(
        &mut self,
        st: &PlanStatement,
        r: &Route,
        layout: &RouteLayout,
    ) -> Result<TopK<E, D, T>> {
        let score = self.eval(st, &r.score)?;
        let score = self.arrange(score, &layout.axes, 1)?;
        let cfg = CoorDescent {
            n_iters: r.n_iters,
            eps: r.eps,
            eps_init: None,
            eps_decay: 1.0,
        };
        let mut picks = soft_topk_padded(
            score.t.reshape_like(&(layout.rows, layout.len)),
            r.k.min(layout.len),
            r.fetch_ratio,
            Some(&layout.selectable),
            &cfg,
        )?;
        if !r.straight {
            // scale by the soft scores themselves: slower to learn, but an exact gradient
            std::mem::swap(&mut picks.gates, &mut picks.coor_descent_values);
        }
        Ok(picks)
    }

    /// Routed attention: the picked positions (nodes, or edges among all or within each row or
    /// column) attend among themselves, and only they are written, scaled by their gates.
    pub(super) fn routed(
        &mut self,
        st: &PlanStatement,
        a: &AttendOp,
        block: &'a AttendBlock<E, D>,
        q_in: Val<E, D, T>,
        r: &Route,
    ) -> Result<Val<E, D, T>> {
        let layout = self.route_layout(&a.query.slots, r.within);
        let (h, d) = (a.heads, a.dim_head);
        let c_in = a.query.channels;
        let x = self.arrange(q_in, &layout.axes, c_in)?;
        let picks = self.picks(st, r, &layout)?;
        let (rows, k) = (layout.rows, picks.k);
        let valid = picks.valid.clone();
        let dev = self.dev.clone();
        let scale = a.scale;
        let talking = block.talking.as_ref().map(|p| p.matrix::<T>());
        let outputs = a.outputs;
        let x = x.t.reshape_like(&(rows, layout.len, c_in));
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
            let o = keep_picked(&dev, block.to_out.forward(o)?, &valid)?;
            Ok(o.reshape_like(&(rows, k, outputs)))
        })?;
        let out = out.reshape_like(&(rows * layout.len * outputs,));
        Ok(self.val(out, layout.axes, outputs))
    }

    /// A routed feedforward: only the picked positions of `x` go through it, scaled by their
    /// gates; the others get zeros.
    pub(super) fn routed_feedforward(
        &mut self,
        st: &PlanStatement,
        site: &str,
        x: &Node,
        r: &Route,
    ) -> Result<Val<E, D, T>> {
        let Block::FeedForward(ff) = self.layer.site(&st.name, site) else {
            unreachable!("feedforward sites hold feedforward blocks")
        };
        let layout = self.route_layout(&x.slots, r.within);
        let c = x.channels;
        let xv = self.eval(st, x)?;
        let xv = self.arrange(xv, &layout.axes, c)?;
        let picks = self.picks(st, r, &layout)?;
        let (rows, k) = (layout.rows, picks.k);
        let valid = picks.valid.clone();
        let dev = self.dev.clone();
        let out = route(xv.t.reshape_like(&(rows, layout.len, c)), picks, |picked| {
            let y = ff.forward(picked.reshape_like(&(rows * k, c)))?;
            Ok(keep_picked(&dev, y, &valid)?.reshape_like(&(rows, k, c)))
        })?;
        let out = out.reshape_like(&(rows * layout.len * c,));
        Ok(self.val(out, layout.axes, c))
    }
}

/// Zeros the rows of `y` (`[picks, c]`) that only pad a picking up to k (fewer positions
/// were selectable), so nothing is written there.
fn keep_picked<E: Real, D: Backend<E>, T: Tape<E, D>>(
    dev: &D,
    y: T2<E, D, T>,
    valid: &[bool],
) -> Result<T2<E, D, T>> {
    let shape = *y.shape();
    let keep: T2<E, D> = constant(dev, indicator(valid.iter().copied()), (shape.0,))?
        .broadcast_like::<_, Axis<1>>(&shape);
    Ok(y * keep.retaped::<T>())
}
