//! `attend`: node attention, attention across edges in a pattern and along paths (routed
//! attention is in `routing`).

use super::*;

impl<'a, E: Real, D: Backend<E>, T: Tape<E, D>> Run<'a, E, D, T> {
    pub(super) fn attend_block(&self, st: &PlanStatement, a: &AttendOp) -> &'a AttendBlock<E, D> {
        match self.layer.site(&st.name, &a.site) {
            Block::Attend(b) => b,
            _ => unreachable!("attend sites hold attention blocks"),
        }
    }

    /// Projects a value in a row-major layout with a linear block, keeping the layout.
    pub(super) fn project(
        &self,
        v: Val<E, D, T>,
        l: &crate::nn::Linear<E, D>,
    ) -> Result<Val<E, D, T>> {
        let rows = self.rows(&v);
        let y = l.forward(v.t.reshape_like(&(rows, v.channels)))?;
        let c = y.shape().1;
        Ok(self.val(y.reshape_like(&(rows * c,)), v.axes, c))
    }

    pub(super) fn gates_val(
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

    pub(super) fn attend(
        &mut self,
        st: &PlanStatement,
        a: &AttendOp,
    ) -> Result<WithProbs<E, D, T>> {
        let block = self.attend_block(st, a);
        debug_assert!(
            [&block.to_q, &block.to_k, &block.to_v]
                .iter()
                .all(|l| l.bias.is_none()),
            "attention projections carry no bias (the lowering assumes it)"
        );
        // a path attention arranges its inputs itself: read them as they are stored
        let q_in = if a.lowering.core == Core::Path {
            self.eval_op(st, &a.query)?
        } else {
            self.eval(st, &a.query)?
        };
        match a.lowering.core {
            Core::Routed => {
                let route = a.route.as_ref().expect("routed attention has a route");
                Ok((self.routed(st, a, block, q_in, route)?, None))
            }
            Core::Nodes => self.node_attend(st, a, block, q_in),
            Core::Path => Ok((self.path_attend(st, a, block, q_in)?, None)),
            Core::Edges(lowering) => {
                let out = self.edge_attend(st, a, block, q_in, &lowering)?;
                Ok((out, None))
            }
        }
    }

    fn node_attend(
        &mut self,
        st: &PlanStatement,
        a: &AttendOp,
        block: &AttendBlock<E, D>,
        q_in: Val<E, D, T>,
    ) -> Result<WithProbs<E, D, T>> {
        let Pattern::Nodes { query, key } = a.pattern else {
            unreachable!("node attention has the node pattern")
        };
        let (h, d) = (a.heads, a.dim_head);
        let (b, n) = (self.ext.batch, self.ext.nodes);
        let k_in = self.eval(st, &a.key)?;
        let gates = self.gates_val(st, a, &q_in)?;
        let bias = match &a.bias {
            Some(bv) => {
                let bv = self.eval(st, bv)?;
                let axes = [Ax::Batch, Ax::Chan, Ax::Slot(query), Ax::Slot(key)];
                Some(self.arrange(bv, &axes, h)?.t.reshape_like(&(b, h, n, n)))
            }
            None => None,
        };
        let talking = block.talking.as_ref().map(|p| p.matrix::<T>());
        let split = |v: Val<E, D, T>| -> T4<E, D, T> {
            v.t.reshape_like(&(b, n, h, d))
                .permute::<_, Axes4<0, 2, 1, 3>>()
        };
        let q = split(self.project(q_in, &block.to_q)?);
        let (k, v) = match &a.value {
            Some(value) => {
                let v_in = self.eval(st, value)?;
                (
                    split(self.project(k_in, &block.to_k)?),
                    split(self.project(v_in, &block.to_v)?),
                )
            }
            None => (
                split(self.project(k_in.val_branch(), &block.to_k)?),
                split(self.project(k_in, &block.to_v)?),
            ),
        };
        let gates = match gates {
            Some(g) => {
                let g = self.arrange(g, &[Ax::Batch, Ax::Chan, Ax::Slot(query)], h)?;
                Some(g.t.reshape_like(&(b, h, n)))
            }
            None => None,
        };
        let vis = self
            .mask
            .restricted(lower::key_restriction(a))?
            .node_visibility()?;
        let (out, weights) = match a.taylor_form(n, D::taylor_feature_overhead()) {
            Some(form) => {
                let KernelChoice::Taylor { eps } = a.kernel else {
                    unreachable!("only Taylor kernels have a Taylor form")
                };
                let out = taylor_attend(q, k, v, a.scale, eps, &vis, form)?;
                let out = match gates {
                    Some(g) => out * g.sigmoid().broadcast_like::<_, Axis<3>>(&(b, h, n, d)),
                    None => out,
                };
                (out, None)
            }
            None => {
                let normalizer = normalizer(a.kernel);
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

    /// Attention across edges as the lowering says: the pattern, the layouts the kernel reads,
    /// and one input for queries, keys and values where the query and key share it.
    fn edge_attend(
        &mut self,
        st: &PlanStatement,
        a: &AttendOp,
        block: &AttendBlock<E, D>,
        q_in: Val<E, D, T>,
        lowering: &EdgeLowering,
    ) -> Result<Val<E, D, T>> {
        let (b, n) = (self.ext.batch, self.ext.nodes);
        let (h, inner) = (a.heads, a.heads * a.dim_head);
        let ([q0, q1], [k0, k1]) = (lowering.query_axes, lowering.key_axes);
        let q_axes = [Ax::Batch, Ax::Slot(q0), Ax::Slot(q1), Ax::Chan];
        let k_axes = [Ax::Batch, Ax::Slot(k0), Ax::Slot(k1), Ax::Chan];
        let gates = match self.gates_val(st, a, &q_in)? {
            Some(g) => Some(edges(self.arrange(g, &q_axes, h)?, b, n, h)?),
            None => None,
        };
        let bias = match &a.bias {
            Some(bv) => {
                let bv = self.eval(st, bv)?;
                Some(self.edge_bias(bv, lowering, h)?)
            }
            None => None,
        };
        let talking = block.talking.as_ref().map(|p| p.matrix::<T>());
        let inputs = EdgeAttendInputs {
            bias,
            talking,
            gates,
        };
        let form = a
            .taylor_form(n, D::taylor_feature_overhead())
            .unwrap_or(TaylorForm::Direct);
        let kernel = match a.kernel {
            KernelChoice::Softmax => EdgeKernel::Softmax { scale: a.scale },
            KernelChoice::Taylor { eps } => EdgeKernel::Taylor {
                scale: a.scale,
                eps,
                form,
            },
        };
        let q_in = self.arrange(q_in, &q_axes, a.query.channels)?;
        let mask = self.mask.restricted(lower::key_restriction(a))?;
        let out = if lowering.shared_input {
            let weights = EdgeProjections {
                to_q: block.to_q.weight.matrix::<T>(),
                to_k: block.to_k.weight.matrix::<T>(),
                to_v: block.to_v.weight.matrix::<T>(),
            };
            let x = edges(q_in, b, n, a.query.channels)?;
            edge_self_attention(x, weights, h, lowering.pattern, kernel, inputs, &mask)?
        } else {
            let k_in = if lowering.key_in_place {
                self.eval_op(st, &a.key)?
            } else {
                self.eval(st, &a.key)?
            };
            let k_in = self.arrange(k_in, &k_axes, a.key.channels)?;
            let q = edges(self.project(q_in, &block.to_q)?, b, n, inner)?;
            let (k_in, v_in) = match &a.value {
                Some(value) => {
                    let v_in = self.eval(st, value)?;
                    (k_in, self.arrange(v_in, &k_axes, value.channels)?)
                }
                None => (k_in.val_branch(), k_in),
            };
            let k = edges(self.project(k_in, &block.to_k)?, b, n, inner)?;
            let v = edges(self.project(v_in, &block.to_v)?, b, n, inner)?;
            edge_attention(q, k, v, h, lowering.pattern, kernel, inputs, &mask)?
        };
        let out = self.val(
            out.into_tensor().reshape_like(&(b * n * n * inner,)),
            q_axes.to_vec(),
            inner,
        );
        self.project(out, &block.to_out)
    }

    /// Attention of edge (first, last) over the paths first → middle → last: queries and first
    /// values from the query side (first, middle), keys and second values from the key side
    /// (middle, last), each arranged so (a copy of n² rows when written the other way round).
    fn path_attend(
        &mut self,
        st: &PlanStatement,
        a: &AttendOp,
        block: &AttendBlock<E, D>,
        q_in: Val<E, D, T>,
    ) -> Result<Val<E, D, T>> {
        let Pattern::Path {
            first,
            middle,
            last,
        } = a.pattern
        else {
            unreachable!("path attention has the path pattern")
        };
        let (b, n) = (self.ext.batch, self.ext.nodes);
        let (h, inner) = (a.heads, a.heads * a.dim_head);
        let q_axes = [Ax::Batch, Ax::Slot(first), Ax::Slot(middle), Ax::Chan];
        let k_axes = [Ax::Batch, Ax::Slot(middle), Ax::Slot(last), Ax::Chan];
        let out_axes = [Ax::Batch, Ax::Slot(first), Ax::Slot(last), Ax::Chan];
        let gates = match self.gates_val(st, a, &q_in)? {
            Some(g) => Some(self.arrange(g, &out_axes, h)?.t),
            None => None,
        };
        let k_in = self.eval_op(st, &a.key)?;
        let q_in = self.arrange(q_in, &q_axes, a.query.channels)?;
        let k_in = self.arrange(k_in, &k_axes, a.key.channels)?;
        let to_v2 = block
            .to_v2
            .as_ref()
            .expect("path attention blocks have second values");
        let square = |v: Val<E, D, T>| v.t.reshape_like(&(b, n, n, inner));
        let q = square(self.project(q_in.val_branch(), &block.to_q)?);
        let v1 = square(self.project(q_in, &block.to_v)?);
        let k = square(self.project(k_in.val_branch(), &block.to_k)?);
        let v2 = square(self.project(k_in, to_v2)?);
        let normalizer = normalizer(a.kernel);
        let spec = WeightsSpec {
            scale: a.scale,
            normalizer,
            visibility: self.mask.path_visibility()?,
        };
        let out = path_attention(q, k, v1, v2, h, &spec)?;
        let out = match gates {
            Some(g) => {
                let shape = (b, n, n, h, a.dim_head);
                let g = g.reshape_like(&(b, n, n, h)).sigmoid();
                (out.reshape_like(&shape) * g.broadcast_like::<_, Axis<4>>(&shape))
                    .reshape_like(&(b * n * n * inner,))
            }
            None => out.reshape_like(&(b * n * n * inner,)),
        };
        let out = self.val(out, out_axes.to_vec(), inner);
        self.project(out, &block.to_out)
    }

    /// A score bias in the pattern's layout: `[b·n, h, n, n]` along rows and columns (the
    /// query's shared index leads), or `[b, h, n, n]` there when the bias does not depend on
    /// the shared index; `[b, h, n², n²]` over all edges.
    fn edge_bias(
        &self,
        bias: Val<E, D, T>,
        lowering: &EdgeLowering,
        h: usize,
    ) -> Result<T4<E, D, T>> {
        let (b, n) = (self.ext.batch, self.ext.nodes);
        let ([q0, q1], [k0, k1]) = (lowering.query_axes, lowering.key_axes);
        Ok(match lowering.pattern {
            EdgePattern::All => {
                let axes = [
                    Ax::Batch,
                    Ax::Chan,
                    Ax::Slot(q0),
                    Ax::Slot(q1),
                    Ax::Slot(k0),
                    Ax::Slot(k1),
                ];
                let t = self.arrange(bias, &axes, h)?.t;
                t.reshape_like(&(b, h, n * n, n * n))
            }
            pattern => {
                // rows: queries (s, q) over keys (s, k); columns: (q, s) over (k, s)
                let (shared, query, key) = if pattern == EdgePattern::Row {
                    (q0, q1, k1)
                } else {
                    (q1, q0, k0)
                };
                if !bias.axes.contains(&Ax::Slot(shared)) {
                    // the same for every row (triangle attention's bias from the third side):
                    // one block per graph, read by each of its rows in place
                    let axes = [Ax::Batch, Ax::Chan, Ax::Slot(query), Ax::Slot(key)];
                    let t = self.arrange(bias, &axes, h)?.t;
                    return Ok(t.reshape_like(&(b, h, n, n)));
                }
                let axes = [
                    Ax::Batch,
                    Ax::Slot(shared),
                    Ax::Chan,
                    Ax::Slot(query),
                    Ax::Slot(key),
                ];
                let t = self.arrange(bias, &axes, h)?.t;
                t.reshape_like(&(b * n, h, n, n))
            }
        })
    }
}

/// A value laid out `[batch, slot, slot, channels]` as edges.
fn edges<E: Real, D: Device<E>, T: Tape<E, D>>(
    v: Val<E, D, T>,
    b: usize,
    n: usize,
    c: usize,
) -> Result<Edges<E, D, T>> {
    Edges::new(v.t.reshape_like(&(b, n, n, c)))
}

/// The weights' normalizer of an attention kernel.
fn normalizer(kernel: KernelChoice) -> Normalizer {
    match kernel {
        KernelChoice::Softmax => Normalizer::Softmax,
        KernelChoice::Taylor { eps } => Normalizer::Taylor { eps },
    }
}
