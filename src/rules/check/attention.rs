//! `attend`: its options and the pattern its key's indices pick.

use super::*;

impl<'a> Checker<'a> {
    #[inline(never)] // see `call`
    pub(super) fn attend(
        &mut self,
        f: &'static Function,
        args: &[Arg],
        span: Span,
        probs: bool,
    ) -> Checked<Value> {
        let mut a = Args::new(f, span, args)?;
        let first = a.positional("`query -> key` first: `attend(x[i] -> x[j], ...)`")?;
        let ExprKind::Arrow(q_expr, k_expr) = &first.kind else {
            return Err(
                RuleError::new(first.span, "`attend` starts with `query -> key`")
                    .hint("e.g. `attend(x[i] -> x[j], heads: 4)`"),
            );
        };
        let outer = self.st.scope.len();
        // indices of the key that are not in scope become the attention's key indices; a query
        // that reads one too attends over paths (`x[i, l] -> y[l, j]`)
        let mut fresh = Vec::new();
        free_index_names(k_expr, &mut Vec::new(), &mut fresh);
        fresh.retain(|name| !self.st.scope.iter().any(|(n, _)| n == name));
        let mut in_query = Vec::new();
        free_index_names(q_expr, &mut Vec::new(), &mut in_query);
        let path = fresh.iter().any(|name| in_query.contains(name));
        let in_scope = |name: &String| self.st.scope.iter().any(|(n, _)| n == name);
        if let Some(stray) = in_query.iter().find(|n| !in_scope(n) && !fresh.contains(n)) {
            let diagonal_key = matches!(&k_expr.kind,
                ExprKind::Index(ix) if ix.indices.len() == 2 && ix.indices[0].name == ix.indices[1].name);
            let err = RuleError::new(
                q_expr.span,
                format!("the query reads `{stray}`, which is not in scope here"),
            );
            return Err(if diagonal_key {
                err.hint("a diagonal attention's query is the diagonal too: `edges[i, i] += attend(e[i, i] -> e[k, k])`")
            } else {
                err.hint("the query's indices are the result's: the target's (and those of enclosing reductions)")
            });
        }
        let query = if path {
            None
        } else {
            Some(self.tensor(q_expr, "the query", false)?)
        };
        let key_slots: Vec<Slot> = fresh.iter().map(|name| self.new_slot(name)).collect();
        let query = match query {
            Some(q) => q,
            None => self.tensor(q_expr, "the query", false)?,
        };
        let key = self.tensor(k_expr, "the key", false)?;
        let pattern = if path {
            self.path_pattern(&query, &key, &key_slots, q_expr.span, k_expr.span)?
        } else {
            self.pattern(&query, &key, &key_slots, q_expr.span, k_expr.span)?
        };
        // the slots of the result: the query's, or for a path the two ends
        let out_slots = match pattern {
            Pattern::Path { first, last, .. } => vec![first.min(last), first.max(last)],
            _ => query.slots.clone(),
        };

        let heads = match a.option("heads") {
            Some((_, v)) => self.count(v, "`heads`")?,
            None => f.num("heads") as usize,
        };
        let dim_head = match a.option("dim_head") {
            Some((_, v)) => self.count(v, "`dim_head`")?,
            None => f.num("dim_head") as usize,
        };
        let outputs = match a.option("out") {
            Some((_, v)) => self.count(v, "`out`")?,
            None => query.channels,
        };
        let scale = match a.option("scale") {
            Some((_, v)) => self.number(v, "`scale`")?,
            None => (dim_head as f64).powf(-0.5),
        };
        let kernel_word = match a.option("kernel") {
            Some((_, v)) => self.word(v, "kernel", &["softmax", "taylor"])?,
            None => f.word("kernel").to_string(),
        };
        let eps = match a.option("eps") {
            Some((n, _)) if kernel_word != "taylor" => {
                return Err(RuleError::new(
                    n.span,
                    "`eps` applies to `kernel: taylor` only",
                ));
            }
            Some((_, v)) => self.non_negative(v, "`eps`")?,
            None => f.num("eps"),
        };
        let kernel = if kernel_word == "taylor" {
            KernelChoice::Taylor { eps }
        } else {
            KernelChoice::Softmax
        };
        let bias = match a.option("bias") {
            Some((_, v)) => {
                let b = self.tensor(v, "`bias`", false)?;
                if b.channels != heads {
                    return Err(RuleError::new(
                        v.span,
                        format!(
                            "the bias needs one channel per head ({heads}), it has {}",
                            b.channels
                        ),
                    )
                    .hint(format!("project it: `linear(..., {heads})`")));
                }
                Some(b)
            }
            None => None,
        };
        let value = match a.option("value") {
            Some((_, v)) => Some(self.attention_value(v, &key, path)?),
            None => None,
        };
        let mask = match a.option("mask") {
            Some((_, v)) => Some(self.attention_mask(v, &pattern)?),
            None => None,
        };
        let talking = a.flag("talking");
        let gate_flag = a.flag("gate");
        // key indices leave scope here: gates and the route's score live on the query
        self.st.scope.truncate(outer);
        let gates = match (a.option("gates"), gate_flag) {
            (Some((n, _)), true) => {
                return Err(RuleError::new(
                    n.span,
                    "give either `gate` or `gates: ...`, not both",
                ))
            }
            (Some((_, v)), false) => {
                let g = self.tensor(v, "`gates`", false)?;
                check_slots_within(&g, &out_slots, v.span, &self.st.slots)?;
                if g.channels != heads {
                    return Err(RuleError::new(
                        v.span,
                        format!(
                            "gates need one channel per head ({heads}), got {}",
                            g.channels
                        ),
                    ));
                }
                Some(Gates::Expr(g))
            }
            (None, true) if path => {
                return Err(RuleError::new(
                    span,
                    "`gate` projects the query, which a path attention reads along the path",
                )
                .hint("give the gates over the edge itself: `gates: linear(x[i, j], heads)`"))
            }
            (None, true) => Some(Gates::FromQuery {
                site: self.site("gate", span),
            }),
            (None, false) => None,
        };
        let route = match a.option("route") {
            Some((_, v)) => Some(self.attention_route(v, &pattern, q_expr, k_expr)?),
            None => None,
        };
        a.finish()?;
        if route.is_some() && probs {
            return Err(
                RuleError::new(span, "routed attention returns no probabilities")
                    .hint("only the picked positions attend, each among the picked ones"),
            );
        }
        if route.is_some() && value.is_some() {
            return Err(RuleError::new(span, "routed attention takes no `value:`")
                .hint("its keys and values are the picked positions themselves"));
        }
        if route.is_some() && mask.is_some() {
            return Err(RuleError::new(span, "routed attention takes no `mask:`")
                .hint("the router picks among every real position; fold the input graph into its score"));
        }
        if route.is_some() {
            if bias.is_some() || gates.is_some() {
                return Err(
                    RuleError::new(span, "routed attention takes no `bias` or gates")
                        .hint("the router's soft top-k scores gate the routed positions"),
                );
            }
            if matches!(kernel, KernelChoice::Taylor { .. }) {
                return Err(RuleError::new(
                    span,
                    "routed attention uses the softmax kernel",
                ));
            }
        }
        if path {
            let refused = [(bias.is_some(), "`bias`"), (talking, "`talking`")];
            if let Some((_, what)) = refused.iter().find(|(on, _)| *on) {
                return Err(
                    RuleError::new(span, format!("a path attention takes no {what}"))
                        .hint("its kernel never stores the n³ weights that these act on"),
                );
            }
        }
        if probs && !matches!(pattern, Pattern::Nodes { .. }) {
            return Err(RuleError::new(
                span,
                "attention probabilities are returned for node attention only",
            )
            .hint("across edges they would be an n⁴ tensor"));
        }
        let site = self.site("attend", span);
        let mut op = AttendOp {
            site,
            pattern,
            query,
            key,
            value,
            heads,
            dim_head,
            outputs,
            scale,
            kernel,
            bias,
            gates,
            talking,
            route,
            mask,
            probs,
            // decided from the op's other fields, just below
            lowering: AttendLowering {
                core: Core::Nodes,
                taylor: TaylorLowering::None,
            },
        };
        op.lowering = lower::attend(&op, self.cfg.causal);
        Ok(Value::Tensor(Node {
            slots: out_slots,
            channels: outputs,
            op: Op::Attend(Box::new(op)),
        }))
    }

    /// `value: expr`: read where the keys are, so over the key's indices exactly.
    fn attention_value(&mut self, v: &Expr, key: &Node, path: bool) -> Checked<Node> {
        if path {
            return Err(RuleError::new(v.span, "a path attention takes no `value:`")
                .hint("its values come from both edges of the path: the query's and the key's"));
        }
        let value = self.tensor(v, "`value`", false)?;
        if value.slots != key.slots {
            let names = |slots: &[Slot]| {
                slots
                    .iter()
                    .map(|&s| self.st.slots[s].as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(RuleError::new(
                v.span,
                format!(
                    "the value is read where the keys are: over [{}], not [{}]",
                    names(&key.slots),
                    names(&value.slots)
                ),
            )
            .hint("index it with the key's indices, e.g. `attend(x[i] -> x[j], value: v[j])`"));
        }
        Ok(value)
    }

    /// Which core pattern the query and key indices ask for.
    pub(super) fn pattern(
        &self,
        query: &Node,
        key: &Node,
        fresh: &[Slot],
        q_span: Span,
        k_span: Span,
    ) -> Checked<Pattern> {
        let hint = "keys: `x[j]` (nodes), `e[i, k]` (row), `e[k, j]` (column), `e[k, l]` (all edges), `e[k, k]` (diagonal)";
        let shared: Vec<Slot> = key
            .slots
            .iter()
            .copied()
            .filter(|s| !fresh.contains(s))
            .collect();
        if fresh.is_empty() {
            return Err(
                RuleError::new(k_span, "the key introduces no new index to attend over").hint(hint),
            );
        }
        if fresh.iter().any(|s| !key.slots.contains(s)) {
            return Err(
                RuleError::new(k_span, "an index of the key vanishes inside it").hint(hint),
            );
        }
        match (query.slots.as_slice(), shared.as_slice(), fresh) {
            ([q], [], [k]) => Ok(Pattern::Nodes { query: *q, key: *k }),
            ([q0, q1], [], [k0, k1]) => Ok(Pattern::All {
                q0: *q0,
                q1: *q1,
                k0: *k0,
                k1: *k1,
            }),
            ([q0, q1], [s], [k]) => {
                let (first, second) = if s == q0 { (*q0, *q1) } else { (*q1, *q0) };
                Ok(Pattern::Row {
                    q0: first,
                    q1: second,
                    key: *k,
                })
            }
            ([], _, _) => Err(RuleError::new(q_span, "the query has no index").hint("e.g. `x[i]`")),
            ([_], _, _) => Err(RuleError::new(
                k_span,
                "node queries attend over node keys with one new index",
            )
            .hint(hint)),
            _ => Err(
                RuleError::new(k_span, "no attention pattern reads these key indices").hint(hint),
            ),
        }
    }

    /// The path pattern `x[a, l] -> y[l, c]`: one new index l, shared by query and key, joining
    /// two distinct indices in scope (each side may be written either way round).
    pub(super) fn path_pattern(
        &self,
        query: &Node,
        key: &Node,
        fresh: &[Slot],
        q_span: Span,
        k_span: Span,
    ) -> Checked<Pattern> {
        let hint = "a path attention reads `x[i, l] -> y[l, j]`: edge (i, j) attends over the paths i → l → j";
        let [l] = fresh else {
            return Err(RuleError::new(
                q_span.to(k_span),
                "a path attention introduces exactly one new index, shared by query and key",
            )
            .hint(hint));
        };
        let other = |node: &Node| -> Option<Slot> {
            match node.slots.as_slice() {
                [a, b] if a == l && !fresh.contains(b) => Some(*b),
                [a, b] if b == l && !fresh.contains(a) => Some(*a),
                _ => None,
            }
        };
        let Some(first) = other(query) else {
            return Err(RuleError::new(
                q_span,
                "the query of a path attention is an edge tensor with the new index and one index in scope",
            )
            .hint(hint));
        };
        let Some(last) = other(key) else {
            return Err(RuleError::new(
                k_span,
                "the key of a path attention is an edge tensor with the new index and one index in scope",
            )
            .hint(hint));
        };
        if first == last {
            return Err(RuleError::new(
                q_span.to(k_span),
                "the path's two ends are the same index",
            )
            .hint(hint));
        }
        Ok(Pattern::Path {
            first,
            middle: *l,
            last,
        })
    }
}
