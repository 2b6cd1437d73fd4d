//! `attend`: node attention, attention across edges in a pattern, and routed attention.

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
    pub(super) fn edge_attend(
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
    pub(super) fn routed(
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
