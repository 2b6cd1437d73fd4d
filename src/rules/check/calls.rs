//! Calls of the built-in functions other than `attend`: linear maps, norms, feedforwards,
//! concatenation, reductions, softmax and dot products.

use super::*;

impl<'a> Checker<'a> {
    /// Every nested call recurses through this frame, so the forms' own functions are never
    /// inlined into it: their locals would make it ~4 KiB a level, and the deepest rule the
    /// parser accepts must check in a small stack (`tests/it/reliability.rs`).
    pub(super) fn call(
        &mut self,
        func: &Ident,
        over: Option<&Ident>,
        args: &[Arg],
        span: Span,
        probs: bool,
    ) -> Checked<Value> {
        let name = func.name.as_str();
        if self.is_function(name) {
            return self.user_call(func, over, args, span, probs);
        }
        let Some(f) = builtins::function(name) else {
            let err = RuleError::new(func.span, format!("unknown function `{name}`"));
            let mut names: Vec<&str> = builtins::names().collect();
            names.extend(self.function_names());
            let err = did_you_mean(err, name, names);
            return Err(if err.hint.is_some() {
                err
            } else {
                err.hint("see dsl/README.md for the functions")
            });
        };
        // `max(a, b)`: the element-wise maximum (with an index, the reduction)
        if name == "max" && over.is_none() {
            return self.pairwise(&builtins::PAIRWISE_MAX, Arith::Max, args, span);
        }
        let reducing = f.over_index();
        if over.is_some() && !reducing {
            let over: Vec<&str> = builtins::FUNCTIONS
                .iter()
                .filter(|f| f.over_index())
                .map(|f| f.name)
                .collect();
            return Err(
                RuleError::new(func.span, format!("`{name}` does not take an index")).hint(
                    format!("only {} run over an index: `sum[k](...)`", list_of(&over)),
                ),
            );
        }
        if reducing && over.is_none() {
            return Err(RuleError::new(
                func.span,
                format!("`{name}` needs the index it runs over"),
            )
            .hint(format!("write `{name}[k](...)`")));
        }
        match f.form {
            Form::Activation(act) => {
                let mut a = Args::new(f, span, args)?;
                let x = a.positional("a tensor")?;
                let x = self.tensor(x, name, false)?;
                a.finish()?;
                Ok(Value::Tensor(Node {
                    slots: x.slots.clone(),
                    channels: x.channels,
                    op: Op::Act {
                        f: act,
                        x: Box::new(x),
                    },
                }))
            }
            Form::Linear => self.linear(f, args, span),
            Form::Norm => self.norm(f, args, span),
            Form::FeedForward => self.feedforward(f, args, span),
            Form::Concat => self.concat(f, args, span),
            Form::Reduce(op) => self.reduce(f, op, over.expect("checked above"), args, span),
            Form::Softmax => self.softmax(f, over.expect("checked above"), args, span),
            Form::Dot => self.dot(f, args, span),
            Form::Pairwise(arith) => self.pairwise(f, arith, args, span),
            Form::Where => self.where_call(f, args, span),
            Form::Dropout => self.dropout(f, args, span),
            Form::Attend => self.attend(f, args, span, probs),
            Form::Top => Err(RuleError::new(
                func.span,
                "`top(...)` is only the value of the `route:` option (of `attend` and `feedforward`)",
            )),
        }
    }

    #[inline(never)] // see `call`
    pub(super) fn linear(
        &mut self,
        f: &'static Function,
        args: &[Arg],
        span: Span,
    ) -> Checked<Value> {
        let mut a = Args::new(f, span, args)?;
        let x = a.positional("a tensor and an output size: `linear(x, 64)`")?;
        let x = self.tensor(x, "linear", false)?;
        let out = a.positional("an output size: `linear(x, 64)`")?;
        let outputs = self.count(out, "the output size")?;
        let bias = match a.option("bias") {
            Some((_, v)) => self.flag_value(v, "`bias`")?,
            None => f.flag("bias"),
        };
        a.finish()?;
        let site = self.site("linear", span);
        Ok(Value::Tensor(Node {
            slots: x.slots.clone(),
            channels: outputs,
            op: Op::Linear {
                site,
                x: Box::new(x),
                outputs,
                bias,
            },
        }))
    }

    #[inline(never)] // see `call`
    pub(super) fn norm(
        &mut self,
        f: &'static Function,
        args: &[Arg],
        span: Span,
    ) -> Checked<Value> {
        let name = f.name;
        let mut a = Args::new(f, span, args)?;
        let x = a.positional("a tensor")?;
        let x = self.tensor(x, name, false)?;
        let eps = match a.option("eps") {
            Some((_, v)) => Some(self.non_negative(v, "`eps`")?),
            None => None,
        };
        if name == "unitnorm" && eps.is_some() {
            return Err(RuleError::new(span, "`unitnorm` has no `eps`")
                .hint("`rmsnorm(x, eps: ...)` is the norm with an eps"));
        }
        a.finish()?;
        let kind = match name {
            "rmsnorm" => NormKind::Rms {
                eps: eps.unwrap_or_else(|| f.num("eps")),
            },
            "unitnorm" => NormKind::Unit,
            _ => NormKind::Layer {
                eps: eps.unwrap_or_else(|| f.num("eps")),
            },
        };
        let site = self.site(name, span);
        Ok(Value::Tensor(Node {
            slots: x.slots.clone(),
            channels: x.channels,
            op: Op::Norm {
                site,
                kind,
                x: Box::new(x),
            },
        }))
    }

    #[inline(never)] // see `call`
    pub(super) fn feedforward(
        &mut self,
        f: &'static Function,
        args: &[Arg],
        span: Span,
    ) -> Checked<Value> {
        let mut a = Args::new(f, span, args)?;
        let x = a.positional("a tensor")?;
        let x = self.tensor(x, "feedforward", false)?;
        let mult = match a.option("mult") {
            Some((_, v)) => self.number(v, "`mult`")?,
            None => f.num("mult"),
        };
        let eps = match a.option("eps") {
            Some((_, v)) => self.non_negative(v, "`eps`")?,
            None => f.num("eps"),
        };
        let route = match a.option("route") {
            Some((_, v)) => Some(Box::new(self.route(v, &x.slots, None)?)),
            None => None,
        };
        a.finish()?;
        let hidden = x.channels as f64 * mult;
        if hidden < 1.0 {
            return Err(RuleError::new(
                span,
                format!("`mult` {mult} leaves no hidden channels"),
            ));
        }
        if hidden > MAX_CHANNELS as f64 {
            return Err(RuleError::new(
                span,
                format!("`mult` {mult} gives {hidden} hidden channels, more than {MAX_CHANNELS}"),
            ));
        }
        let hidden = hidden as usize;
        let site = self.site("feedforward", span);
        Ok(Value::Tensor(Node {
            slots: x.slots.clone(),
            channels: x.channels,
            op: Op::FeedForward {
                site,
                x: Box::new(x),
                hidden,
                eps,
                route,
            },
        }))
    }

    #[inline(never)] // see `call`
    pub(super) fn dropout(
        &mut self,
        f: &'static Function,
        args: &[Arg],
        span: Span,
    ) -> Checked<Value> {
        let mut a = Args::new(f, span, args)?;
        let x = a.positional("a tensor")?;
        let x = self.tensor(x, "dropout", false)?;
        let p = match a.option("p") {
            Some((_, v)) => {
                let p = self.number(v, "`p`")?;
                if !(0.0..1.0).contains(&p) {
                    return Err(RuleError::new(
                        v.span,
                        format!("`p` is the probability of dropping an element: 0 ≤ p < 1, not {p}"),
                    )
                    .hint("e.g. `p: 0.1` drops one element in ten; p = 1 would leave nothing to scale"));
                }
                p
            }
            None => f.num("p"),
        };
        a.finish()?;
        let stream = self.dropouts;
        self.dropouts += 1;
        Ok(Value::Tensor(Node {
            slots: x.slots.clone(),
            channels: x.channels,
            op: Op::Dropout {
                x: Box::new(x),
                p,
                stream,
            },
        }))
    }

    #[inline(never)] // see `call`
    pub(super) fn concat(
        &mut self,
        f: &'static Function,
        args: &[Arg],
        span: Span,
    ) -> Checked<Value> {
        let mut a = Args::new(f, span, args)?;
        let mut parts = Vec::new();
        while let Ok(x) = a.positional("two or more tensors") {
            parts.push(self.tensor(x, "concat", false)?);
        }
        a.finish()?;
        if parts.len() < 2 {
            return Err(RuleError::new(span, "`concat` needs two or more tensors"));
        }
        let mut slots = Vec::new();
        for p in &parts {
            slots = union(&slots, &p.slots);
        }
        self.check_width(&slots, span)?;
        Ok(Value::Tensor(Node {
            channels: parts.iter().map(|p| p.channels).sum(),
            slots,
            op: Op::Concat(parts),
        }))
    }

    /// Binds the reduction index `k` as a new slot for the operand.
    pub(super) fn bind_index(&mut self, over: &Ident) -> Checked<Slot> {
        if self.st.scope.iter().any(|(n, _)| n == &over.name) {
            return Err(RuleError::new(
                over.span,
                format!("index `{}` is already in use here", over.name),
            )
            .hint("a reduction introduces a new index; pick another name"));
        }
        Ok(self.new_slot(&over.name))
    }

    #[inline(never)] // see `call`
    pub(super) fn reduce(
        &mut self,
        f: &'static Function,
        op: ReduceOp,
        over: &Ident,
        args: &[Arg],
        span: Span,
    ) -> Checked<Value> {
        let name = f.name;
        let slot = self.bind_index(over)?;
        let mut a = Args::new(f, span, args)?;
        let x = a.positional("a tensor")?;
        let x_span = x.span;
        let x = self.tensor(x, name, false)?;
        let mask = match a.option("mask") {
            Some((_, v)) => Some(self.reduction_mask(v, slot, &over.name, name)?),
            None => None,
        };
        a.finish()?;
        let slots = self.free_after(&x, x_span, slot, over, name, span, mask)?;
        self.st.scope.pop();
        // a masked reduction runs element-wise: the mask is over pairs the products never see
        let sums = matches!(op, ReduceOp::Sum | ReduceOp::Mean);
        let matmul = sums && mask.is_none() && matmul_form(&x, slot).is_some();
        Ok(Value::Tensor(Node {
            slots,
            channels: x.channels,
            op: Op::Reduce {
                op,
                slot,
                x: Box::new(x),
                matmul,
                mask,
            },
        }))
    }

    /// The indices of `x` (and of its `mask`) other than `slot`, which a reduction or softmax
    /// `name[over]` runs over: `x` must use it, and a causal rule must leave an index free.
    #[allow(clippy::too_many_arguments)]
    fn free_after(
        &self,
        x: &Node,
        x_span: Span,
        slot: Slot,
        over: &Ident,
        name: &str,
        span: Span,
        mask: Option<AdjacencyMask>,
    ) -> Checked<Vec<Slot>> {
        if !x.slots.contains(&slot) {
            return Err(RuleError::new(
                x_span,
                format!(
                    "`{name}[{}]` runs over `{}`, but its operand does not use it",
                    over.name, over.name
                ),
            ));
        }
        let all = match mask {
            Some(m) => union(&x.slots, &[m.from, m.to]),
            None => x.slots.clone(),
        };
        self.check_width(&all, span)?;
        let rest: Vec<Slot> = all.into_iter().filter(|&s| s != slot).collect();
        self.check_causal_query(&rest, span, name)?;
        Ok(rest)
    }

    /// In a causal rule, a reduction or softmax over an index compares its time with the times
    /// of the indices left free; with none left there is nothing to be causal against.
    pub(super) fn check_causal_query(&self, rest: &[Slot], span: Span, what: &str) -> Checked<()> {
        if self.cfg.causal && rest.is_empty() {
            return Err(RuleError::new(
                span,
                format!("in a causal rule, `{what}` must leave an index free"),
            )
            .hint("pooling over every position would read the future"));
        }
        Ok(())
    }

    #[inline(never)] // see `call`
    pub(super) fn softmax(
        &mut self,
        f: &'static Function,
        over: &Ident,
        args: &[Arg],
        span: Span,
    ) -> Checked<Value> {
        let Some(&(_, slot)) = self.st.scope.iter().rev().find(|(n, _)| n == &over.name) else {
            return Err(RuleError::new(
                over.span,
                format!("index `{}` is not bound here", over.name),
            )
            .hint("softmax normalizes over an index the result keeps, e.g. `let a[i, j] = softmax[j](s[i, j])`"));
        };
        let mut a = Args::new(f, span, args)?;
        let x = a.positional("a tensor")?;
        let x_span = x.span;
        let x = self.tensor(x, "softmax", false)?;
        let mask = match a.option("mask") {
            Some((_, v)) => Some(self.reduction_mask(v, slot, &over.name, "softmax")?),
            None => None,
        };
        a.finish()?;
        let rest = self.free_after(&x, x_span, slot, over, "softmax", span, mask)?;
        Ok(Value::Tensor(Node {
            slots: union(&rest, &[slot]),
            channels: x.channels,
            op: Op::Softmax {
                slot,
                x: Box::new(x),
                mask,
            },
        }))
    }

    #[inline(never)] // see `call`
    pub(super) fn dot(&mut self, f: &'static Function, args: &[Arg], span: Span) -> Checked<Value> {
        let mut a = Args::new(f, span, args)?;
        let x = a.positional("two tensors")?;
        let x = self.tensor(x, "dot", false)?;
        let y = a.positional("two tensors")?;
        let y = self.tensor(y, "dot", false)?;
        let heads = match a.option("heads") {
            Some((_, v)) => self.count(v, "`heads`")?,
            None => f.num("heads") as usize,
        };
        a.finish()?;
        if x.channels != y.channels || x.channels % heads != 0 {
            return Err(RuleError::new(
                span,
                format!(
                    "`dot` needs equal channels that split into {heads} heads, got {} and {}",
                    x.channels, y.channels
                ),
            ));
        }
        let slots = union(&x.slots, &y.slots);
        self.check_width(&slots, span)?;
        Ok(Value::Tensor(Node {
            slots,
            channels: heads,
            op: Op::Dot {
                a: Box::new(x),
                b: Box::new(y),
                heads,
            },
        }))
    }
}

impl Checker<'_> {
    /// `min(a, b)`, `max(a, b)`: element-wise over two tensors, broadcast like `*`.
    #[inline(never)] // see `call`
    pub(super) fn pairwise(
        &mut self,
        f: &'static Function,
        arith: Arith,
        args: &[Arg],
        span: Span,
    ) -> Checked<Value> {
        let mut a = Args::new(f, span, args)?;
        let (x, y) = (a.positional("two tensors")?, a.positional("two tensors")?);
        a.finish()?;
        let hint = "`min` and `max` take two tensors; against a number c, `max(x, c)` is \
                    `relu(x - c) + c` and `min(x, c)` is `c - relu(c - x)`";
        let what = format!("`{}`", f.name);
        let x = self.tensor(x, &what, false).map_err(|e| e.hint(hint))?;
        let y = self.tensor(y, &what, false).map_err(|e| e.hint(hint))?;
        Ok(Value::Tensor(self.binary_node(arith, x, y, span, f.name)?))
    }

    /// `where(cond, a, b)`: three tensors broadcast together like `*`.
    pub(super) fn where_call(
        &mut self,
        f: &'static Function,
        args: &[Arg],
        span: Span,
    ) -> Checked<Value> {
        let mut a = Args::new(f, span, args)?;
        let what = "three tensors: `where(cond, a, b)`";
        let (c, y, n) = (
            a.positional(what)?,
            a.positional(what)?,
            a.positional(what)?,
        );
        a.finish()?;
        let hint = "each of `where`'s arguments is a tensor; for a number c, write `c + 0 * x`";
        let cond = self.tensor(c, "`where`", false).map_err(|e| e.hint(hint))?;
        let yes = self.tensor(y, "`where`", false).map_err(|e| e.hint(hint))?;
        let no = self.tensor(n, "`where`", false).map_err(|e| e.hint(hint))?;
        // channels and indices broadcast as a product of the three would
        let branches = self.broadcast(
            (&yes.slots, yes.channels),
            (&no.slots, no.channels),
            span,
            "where",
        )?;
        let (slots, channels) = self.broadcast(
            (&cond.slots, cond.channels),
            (&branches.0, branches.1),
            span,
            "where",
        )?;
        Ok(Value::Tensor(Node {
            slots,
            channels,
            op: Op::Where {
                cond: Box::new(cond),
                yes: Box::new(yes),
                no: Box::new(no),
            },
        }))
    }
}
