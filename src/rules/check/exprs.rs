//! Expressions: constants, names, indexed tensors and arithmetic, typed by their free
//! indices and channels.

use super::*;

impl<'a> Checker<'a> {
    pub(super) fn tensor(&mut self, e: &Expr, what: &str, probs: bool) -> Checked<Node> {
        match self.expr_with(e, probs)? {
            Value::Tensor(n) => Ok(n),
            Value::Num(_) => Err(RuleError::new(
                e.span,
                format!("{what} needs a tensor, found a number"),
            )),
            Value::Word(w) => Err(self.unknown_name(e.span, &w)),
        }
    }

    pub(super) fn number(&mut self, e: &Expr, what: &str) -> Checked<f64> {
        match self.expr(e)? {
            Value::Num(x) if x.is_finite() => Ok(x),
            Value::Num(x) => Err(RuleError::new(
                e.span,
                format!("{what} must be a finite number, got {x}"),
            )),
            Value::Tensor(_) => Err(RuleError::new(
                e.span,
                format!("{what} must be a number known when the rule loads, not a tensor"),
            )),
            Value::Word(w) => Err(self.unknown_name(e.span, &w)),
        }
    }

    /// A number that is finite and not negative (an `eps`).
    pub(super) fn non_negative(&mut self, e: &Expr, what: &str) -> Checked<f64> {
        let x = self.number(e, what)?;
        if x < 0.0 {
            return Err(RuleError::new(
                e.span,
                format!("{what} must not be negative, got {x}"),
            ));
        }
        Ok(x)
    }

    pub(super) fn count(&mut self, e: &Expr, what: &str) -> Checked<usize> {
        let x = self.number(e, what)?;
        if x.fract() != 0.0 || x < 1.0 || x > MAX_CHANNELS as f64 {
            return Err(RuleError::new(
                e.span,
                format!("{what} must be a positive whole number, got {x}"),
            ));
        }
        Ok(x as usize)
    }

    pub(super) fn word(&mut self, e: &Expr, what: &str, allowed: &[&str]) -> Checked<String> {
        let w = match self.expr(e)? {
            Value::Word(w) => w,
            _ => {
                return Err(RuleError::new(
                    e.span,
                    format!("{what} is one of: {}", allowed.join(", ")),
                ))
            }
        };
        if !allowed.contains(&w.as_str()) {
            let err = RuleError::new(e.span, format!("unknown {what} `{w}`"));
            let err = did_you_mean(err, &w, allowed.iter().copied());
            return Err(if err.hint.is_some() {
                err
            } else {
                err.hint(format!("{what} is one of: {}", allowed.join(", ")))
            });
        }
        Ok(w)
    }

    pub(super) fn flag_value(&mut self, e: &Expr, what: &str) -> Checked<bool> {
        match self.expr(e)? {
            Value::Word(w) if w == "true" => Ok(true),
            Value::Word(w) if w == "false" => Ok(false),
            Value::Num(x) if x == 0.0 || x == 1.0 => Ok(x == 1.0),
            _ => Err(RuleError::new(
                e.span,
                format!("{what} is `true` or `false`"),
            )),
        }
    }

    pub(super) fn unknown_name(&self, span: Span, name: &str) -> RuleError {
        let err = RuleError::new(span, format!("unknown name `{name}`"));
        let mut names: Vec<&str> = self.params.iter().map(|(p, _)| p.as_str()).collect();
        names.extend(self.let_ids.keys().map(|s| s.as_str()));
        names.extend(RESERVED);
        match closest(name, names.iter().copied()) {
            Some(c) => err.hint(format!("did you mean `{c}`?")),
            None => {
                err.hint("names are rule parameters, `dim`, `dim_edges`, or tensors with indices")
            }
        }
    }

    pub(super) fn expr(&mut self, e: &Expr) -> Checked<Value> {
        self.expr_with(e, false)
    }

    pub(super) fn expr_with(&mut self, e: &Expr, probs: bool) -> Checked<Value> {
        match &e.kind {
            ExprKind::Number(x) => Ok(Value::Num(*x)),
            ExprKind::Name(id) => self.name(id),
            ExprKind::Index(ix) => self.indexed(ix).map(Value::Tensor),
            ExprKind::Neg(x) => match self.expr(x)? {
                Value::Num(v) => Ok(Value::Num(-v)),
                Value::Tensor(n) => Ok(Value::Tensor(affine(n, -1.0, 0.0))),
                Value::Word(w) => Err(self.unknown_name(x.span, &w)),
            },
            ExprKind::Binary(op, l, r) => self.binary(*op, l, r),
            ExprKind::Call { func, over, args } => {
                self.call(func, over.as_ref(), args, e.span, probs)
            }
            ExprKind::If(cond, yes, no) => {
                let c = match self.expr(cond)? {
                    Value::Num(x) => x != 0.0,
                    Value::Word(w) if w == "true" || w == "false" => w == "true",
                    Value::Word(w) => return Err(self.unknown_name(cond.span, &w)),
                    Value::Tensor(_) => return Err(RuleError::new(
                        cond.span,
                        "the condition of `if` must be known when the rule loads",
                    )
                    .hint(
                        "use a parameter or `causal`; for data-dependent choices use arithmetic",
                    )),
                };
                self.expr_with(if c { yes } else { no }, probs)
            }
            ExprKind::Arrow(..) => Err(RuleError::new(
                e.span,
                "`->` appears only as the first argument of `attend`",
            )),
        }
    }

    pub(super) fn name(&mut self, id: &Ident) -> Checked<Value> {
        let n = id.name.as_str();
        if let Some(v) = self.argument(n) {
            return Ok(v);
        }
        if self.is_function(n) {
            return Err(RuleError::new(
                id.span,
                format!("`{n}` is a function: call it with its arguments"),
            ));
        }
        if let Some(&k) = self.param_index.get(n) {
            return Ok(match &self.params[k].1 {
                Const::Num(x) => Value::Num(*x),
                Const::Word(w) => Value::Word(w.clone()),
            });
        }
        match n {
            "dim" => return Ok(Value::Num(self.cfg.dim as f64)),
            "dim_edges" => return Ok(Value::Num(self.cfg.dim_edges as f64)),
            "causal" => return Ok(Value::Num(if self.cfg.causal { 1.0 } else { 0.0 })),
            "nodes" | "edges" | "adjacency" => {
                return Err(RuleError::new(
                    id.span,
                    format!("`{n}` is a tensor: write it with indices"),
                )
                .hint(match n {
                    "nodes" => "e.g. `nodes[i]`",
                    "edges" => "e.g. `edges[i, j]`",
                    _ => "e.g. `adjacency[i, j]`",
                }))
            }
            _ => {}
        }
        if self.let_ids.contains_key(n) {
            return Err(RuleError::new(
                id.span,
                format!("`{n}` is a tensor: write it with indices"),
            ));
        }
        if self.st.scope.iter().any(|(s, _)| s == n) {
            return Err(
                RuleError::new(id.span, format!("`{n}` is an index, not a value"))
                    .hint("indices only appear inside brackets"),
            );
        }
        Ok(Value::Word(n.to_string()))
    }

    pub(super) fn indexed(&mut self, ix: &Indexed) -> Checked<Node> {
        let name = ix.name.name.as_str();
        if self.is_lazy(name) {
            if ix.indices.len() != 3 {
                return Err(RuleError::new(
                    ix.span,
                    format!("`{name}` takes 3 indices but has {}", ix.indices.len()),
                )
                .hint(format!("it was bound as `{}`", self.lazy_signature(name))));
            }
            let slots = self.bound_slots(ix)?;
            return self.lazy_read(ix, slots);
        }
        if name == "adjacency" {
            return self.adjacency_read(ix);
        }
        let (domain, channels, let_id) = match name {
            "nodes" => (Domain::Nodes, self.cfg.dim, None),
            "edges" => (Domain::Edges, self.cfg.dim_edges, None),
            _ => match self.let_ids.get(name) {
                Some(&id) => (self.lets[id].domain, self.lets[id].channels, Some(id)),
                None => {
                    let err = RuleError::new(ix.name.span, format!("unknown tensor `{name}`"));
                    let mut names: Vec<&str> = vec!["nodes", "edges", "adjacency"];
                    names.extend(self.let_ids.keys().map(|s| s.as_str()));
                    let err = did_you_mean(err, name, names);
                    return Err(if err.hint.is_some() {
                        err
                    } else {
                        err.hint("tensors are `nodes`, `edges`, `adjacency` and names bound earlier with `let`")
                    });
                }
            },
        };
        let want = if domain == Domain::Nodes { 1 } else { 2 };
        if ix.indices.len() != want {
            return Err(index_count_error(name, want, ix));
        }
        let slots = self.bound_slots(ix)?;
        let mut free: Vec<Slot> = slots.clone();
        free.sort_unstable();
        free.dedup();
        let op = match let_id {
            Some(id) => Op::Let { id, slots },
            None => Op::State { domain, slots },
        };
        Ok(Node {
            op,
            slots: free,
            channels,
        })
    }

    /// The slots of a read's indices, each bound by the target or an enclosing reduction.
    pub(super) fn bound_slots(&self, ix: &Indexed) -> Checked<Vec<Slot>> {
        let mut slots = Vec::new();
        for i in &ix.indices {
            match self.st.scope.iter().rev().find(|(n, _)| n == &i.name) {
                Some(&(_, s)) => slots.push(s),
                None => {
                    return Err(RuleError::new(i.span, format!("index `{}` is not bound here", i.name))
                        .hint(format!(
                            "the indices in scope are the target's and those of enclosing reductions; sum over it with `sum[{}](...)`",
                            i.name
                        )))
                }
            }
        }
        Ok(slots)
    }

    pub(super) fn binary(&mut self, op: BinOp, l: &Expr, r: &Expr) -> Checked<Value> {
        let lv = self.expr(l)?;
        let rv = self.expr(r)?;
        // a > b is step(a - b): exact for finite floats (a - b is 0 only when a = b)
        let (strict, swap) = match op {
            BinOp::Greater => (true, false),
            BinOp::GreaterEq => (false, false),
            BinOp::Less => (true, true),
            BinOp::LessEq => (false, true),
            _ => return self.arithmetic(op, l, r, lv, rv),
        };
        if let (Value::Num(a), Value::Num(b)) = (&lv, &rv) {
            let holds = match op {
                BinOp::Greater => a > b,
                BinOp::GreaterEq => a >= b,
                BinOp::Less => a < b,
                _ => a <= b,
            };
            return Ok(Value::Num(if holds { 1.0 } else { 0.0 }));
        }
        let (hi, lo, hi_e, lo_e) = if swap { (rv, lv, r, l) } else { (lv, rv, l, r) };
        let Value::Tensor(diff) = self.arithmetic(BinOp::Sub, hi_e, lo_e, hi, lo)? else {
            unreachable!("a tensor minus anything is a tensor")
        };
        Ok(Value::Tensor(Node {
            slots: diff.slots.clone(),
            channels: diff.channels,
            op: Op::Act {
                f: Activation::Step { strict },
                x: Box::new(diff),
            },
        }))
    }

    /// `l op r` for the arithmetic operators, their values already checked.
    fn arithmetic(
        &mut self,
        op: BinOp,
        l: &Expr,
        r: &Expr,
        lv: Value,
        rv: Value,
    ) -> Checked<Value> {
        let span = l.span.to(r.span);
        match (lv, rv) {
            (Value::Word(w), _) => Err(self.unknown_name(l.span, &w)),
            (_, Value::Word(w)) => Err(self.unknown_name(r.span, &w)),
            (Value::Num(a), Value::Num(b)) => {
                let x = match op {
                    BinOp::Add => a + b,
                    BinOp::Sub => a - b,
                    BinOp::Mul => a * b,
                    BinOp::Div => a / b,
                    BinOp::Pow => a.powf(b),
                    _ => unreachable!("comparisons are handled by `binary`"),
                };
                if x.is_finite() {
                    Ok(Value::Num(x))
                } else if op == BinOp::Div && b == 0.0 {
                    Err(RuleError::new(r.span, "division by zero"))
                } else {
                    Err(RuleError::new(
                        span,
                        format!("`{a} {} {b}` is {x}, not a finite number", op.symbol()),
                    ))
                }
            }
            (Value::Tensor(t), Value::Num(s)) => Ok(Value::Tensor(match op {
                BinOp::Add => affine(t, 1.0, s),
                BinOp::Sub => affine(t, 1.0, -s),
                BinOp::Mul => affine(t, s, 0.0),
                BinOp::Div => {
                    if s == 0.0 {
                        return Err(RuleError::new(r.span, "division by zero"));
                    }
                    affine(t, 1.0 / s, 0.0)
                }
                BinOp::Pow => Node {
                    slots: t.slots.clone(),
                    channels: t.channels,
                    op: Op::Pow {
                        x: Box::new(t),
                        exponent: s,
                    },
                },
                _ => unreachable!("comparisons are handled by `binary`"),
            })),
            (Value::Num(s), Value::Tensor(t)) => match op {
                BinOp::Add => Ok(Value::Tensor(affine(t, 1.0, s))),
                BinOp::Sub => Ok(Value::Tensor(affine(t, -1.0, s))),
                BinOp::Mul => Ok(Value::Tensor(affine(t, s, 0.0))),
                BinOp::Div | BinOp::Pow => Err(RuleError::new(
                    span,
                    format!("a number `{}` a tensor is not supported", op.symbol()),
                )
                .hint("write `x ** 2`, `x / 2`, or use `exp`, `sqrt`")),
                _ => unreachable!("comparisons are handled by `binary`"),
            },
            (Value::Tensor(a), Value::Tensor(b)) => {
                let arith = match op {
                    BinOp::Add => Arith::Add,
                    BinOp::Sub => Arith::Sub,
                    BinOp::Mul => Arith::Mul,
                    BinOp::Div => Arith::Div,
                    BinOp::Pow => {
                        return Err(RuleError::new(
                            span,
                            "the exponent of `**` must be a number",
                        ))
                    }
                    _ => unreachable!("comparisons are handled by `binary`"),
                };
                Ok(Value::Tensor(self.binary_node(
                    arith,
                    a,
                    b,
                    span,
                    op.symbol(),
                )?))
            }
        }
    }

    /// An element-wise `a op b` of two tensors: channels broadcast (equal, one of them 1, or
    /// per head), indices united.
    pub(super) fn binary_node(
        &self,
        arith: Arith,
        a: Node,
        b: Node,
        span: Span,
        symbol: &str,
    ) -> Checked<Node> {
        let (slots, channels) =
            self.broadcast((&a.slots, a.channels), (&b.slots, b.channels), span, symbol)?;
        Ok(Node {
            op: Op::Binary {
                op: arith,
                lhs: Box::new(a),
                rhs: Box::new(b),
            },
            slots,
            channels,
        })
    }

    /// The indices and channels of an element-wise result over operands of these indices and
    /// channels: channels broadcast (equal, one of them 1, or per head), indices united.
    pub(super) fn broadcast(
        &self,
        (a_slots, a_channels): (&[Slot], usize),
        (b_slots, b_channels): (&[Slot], usize),
        span: Span,
        symbol: &str,
    ) -> Checked<(Vec<Slot>, usize)> {
        let channels = broadcast_channels(a_channels, b_channels).ok_or_else(|| {
            RuleError::new(
                span,
                format!("channels do not match: {a_channels} {symbol} {b_channels}"),
            )
            .hint("channels must be equal, one side 1, or h and h·d (a per-head value times its head's block)")
        })?;
        let slots = union(a_slots, b_slots);
        self.check_width(&slots, span)?;
        Ok((slots, channels))
    }

    pub(super) fn check_width(&self, slots: &[Slot], span: Span) -> Checked<()> {
        if slots.len() > MAX_INDICES {
            let names: Vec<&str> = slots.iter().map(|&s| self.st.slots[s].as_str()).collect();
            return Err(RuleError::new(
                span,
                format!(
                    "this expression has {} free indices ({}); at most {MAX_INDICES} are supported",
                    slots.len(),
                    names.join(", ")
                ),
            )
            .hint(
                "reduce over an index first, or use `attend` (all edges `e[i, j] -> e[k, l]`, paths `e[i, l] -> e[l, j]`), which never materializes its pairs",
            ));
        }
        Ok(())
    }

    pub(super) fn site(&mut self, kind: &'static str, span: Span) -> String {
        let n = self.st.sites.entry(kind.to_string()).or_insert(0);
        let site = format!("{}{kind}{n}", self.st.prefix);
        *n += 1;
        self.st.first_site.get_or_insert(span);
        site
    }
}
