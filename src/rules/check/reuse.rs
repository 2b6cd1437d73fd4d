//! Reuse: functions defined in a rule (`def f(x) = ...`) and three-index bindings
//! (`let a[i, l, j] = ...`). Both are inlined where they are used, so a three-index tensor is
//! fused into the reduction that reads it, exactly as if it had been written there; a call's
//! parameters live under the call's own name (`<statement>.<f><k>.linear0`).

use super::*;

/// The most function bodies and three-index bindings a rule may inline in all: a bound on the
/// work (and the plan's size) of a rule whose functions call each other many times over.
pub const MAX_EXPANSIONS: usize = 4096;

/// A function of the rule: its parameters and body, and the body's height once inlined.
#[derive(Clone)]
pub(super) struct FnDef {
    params: Vec<String>,
    body: Expr,
    height: usize,
}

/// A three-index binding: its index names and expression, inlined where it is read.
#[derive(Clone)]
pub(super) struct LazyLet {
    indices: Vec<String>,
    body: Expr,
    height: usize,
}

impl<'a> Checker<'a> {
    /// The height `e` reaches once every function and three-index binding in it is inlined:
    /// the passes over the plan recurse, so it is held to [`MAX_DEPTH`] like a written one.
    pub(super) fn expanded_height(&self, e: &Expr) -> usize {
        let children = match &e.kind {
            ExprKind::Number(_) | ExprKind::Name(_) => 0,
            ExprKind::Index(ix) => self.lazy.get(&ix.name.name).map_or(0, |l| l.height),
            ExprKind::Neg(x) => self.expanded_height(x),
            ExprKind::Binary(_, a, b) | ExprKind::Arrow(a, b) => {
                self.expanded_height(a).max(self.expanded_height(b))
            }
            ExprKind::If(c, a, b) => self
                .expanded_height(c)
                .max(self.expanded_height(a))
                .max(self.expanded_height(b)),
            ExprKind::Call { func, args, .. } => {
                let args = args
                    .iter()
                    .map(|a| self.expanded_height(&a.value))
                    .max()
                    .unwrap_or(0);
                // the arguments' trees hang below the body's leaves
                match self.functions.get(&func.name) {
                    Some(f) => f.height.saturating_add(args),
                    None => args,
                }
            }
        };
        children.saturating_add(1)
    }

    /// Refuses an expression whose inlined tree would be taller than [`MAX_DEPTH`].
    pub(super) fn check_expanded_height(&self, e: &Expr) -> Checked<usize> {
        let h = self.expanded_height(e);
        if h > MAX_DEPTH {
            return Err(RuleError::new(
                e.span,
                format!(
                    "with its functions and three-index bindings inlined, this expression nests \
                     {} levels deep; at most {MAX_DEPTH} are supported",
                    if h == usize::MAX {
                        "too many".to_string()
                    } else {
                        h.to_string()
                    }
                ),
            )
            .hint("bind parts of it with two-index `let`s, which are computed once"));
        }
        Ok(h)
    }

    fn expand(&mut self, span: Span) -> Checked<()> {
        self.expansions += 1;
        if self.expansions > MAX_EXPANSIONS {
            return Err(RuleError::new(
                span,
                format!(
                    "the rule inlines more than {MAX_EXPANSIONS} function bodies and \
                     three-index bindings"
                ),
            )
            .hint("functions that call each other several times multiply; bind shared parts with `let`"));
        }
        Ok(())
    }

    /// `def name(params) = body`: checked for what can be known before a call (its names, and
    /// that the body uses no indices), then kept to be inlined at each call.
    pub(super) fn define(&mut self, name: &Ident, params: &[Ident], body: &Expr) -> Checked<()> {
        self.claim_name(name)?;
        for (k, p) in params.iter().enumerate() {
            if params[..k].iter().any(|q| q.name == p.name) {
                return Err(RuleError::new(
                    p.span,
                    format!("parameter `{}` is repeated", p.name),
                ));
            }
            if RESERVED.contains(&p.name.as_str()) || self.param_index.contains_key(&p.name) {
                return Err(RuleError::new(
                    p.span,
                    format!(
                        "`{}` is already a rule parameter or a reserved name",
                        p.name
                    ),
                )
                .hint("name the function's parameter differently"));
            }
        }
        self.index_free_body(body, &name.name)?;
        let height = self.check_expanded_height(body)?;
        self.functions.insert(
            name.name.clone(),
            FnDef {
                params: params.iter().map(|p| p.name.clone()).collect(),
                body: body.clone(),
                height,
            },
        );
        Ok(())
    }

    /// A function works on whole values: its body names no indices (the caller writes them
    /// in the arguments), and calls only built-ins and functions defined above it.
    fn index_free_body(&self, e: &Expr, function: &str) -> Checked<()> {
        let no_indices = |span: Span| {
            RuleError::new(span, format!("the body of `{function}` uses indices"))
                .hint("a function works on whole values: pass `edges[i, j]` as an argument and write the indices at the call")
        };
        match &e.kind {
            ExprKind::Number(_) | ExprKind::Name(_) => Ok(()),
            ExprKind::Index(ix) => Err(no_indices(ix.span)),
            ExprKind::Arrow(..) => Err(no_indices(e.span).hint(
                "`attend` needs its pattern's indices: call it in a statement, not in a function",
            )),
            ExprKind::Neg(x) => self.index_free_body(x, function),
            ExprKind::Binary(_, a, b) => {
                self.index_free_body(a, function)?;
                self.index_free_body(b, function)
            }
            ExprKind::If(c, a, b) => {
                self.index_free_body(c, function)?;
                self.index_free_body(a, function)?;
                self.index_free_body(b, function)
            }
            ExprKind::Call { func, over, args } => {
                if let Some(o) = over {
                    return Err(no_indices(o.span));
                }
                if func.name == function {
                    return Err(
                        RuleError::new(func.span, format!("`{function}` calls itself")).hint(
                            "functions are inlined where they are called, so they cannot recurse",
                        ),
                    );
                }
                if builtins::function(&func.name).is_none()
                    && !self.functions.contains_key(&func.name)
                {
                    let err =
                        RuleError::new(func.span, format!("unknown function `{}`", func.name));
                    let mut names: Vec<&str> = builtins::names().collect();
                    names.extend(self.functions.keys().map(|s| s.as_str()));
                    let err = did_you_mean(err, &func.name, names);
                    return Err(if err.hint.is_some() {
                        err
                    } else {
                        err.hint(
                            "a function may call the built-ins and the functions defined above it",
                        )
                    });
                }
                args.iter()
                    .try_for_each(|a| self.index_free_body(&a.value, function))
            }
        }
    }

    pub(super) fn is_function(&self, name: &str) -> bool {
        self.functions.contains_key(name)
    }

    pub(super) fn function_names(&self) -> impl Iterator<Item = &str> {
        self.functions.keys().map(|s| s.as_str())
    }

    /// The value bound to a function parameter, inside that function's body.
    pub(super) fn argument(&self, name: &str) -> Option<Value> {
        let frame = self.frames.last()?;
        frame
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }

    /// A call of a function of the rule: its arguments are checked where the call is, then
    /// its body with them bound; the body's parameter sites are the call's own.
    #[inline(never)]
    pub(super) fn user_call(
        &mut self,
        func: &Ident,
        over: Option<&Ident>,
        args: &[Arg],
        span: Span,
        probs: bool,
    ) -> Checked<Value> {
        let def = self.functions[&func.name].clone();
        if let Some(o) = over {
            return Err(RuleError::new(
                o.span,
                format!(
                    "`{}` is a function of the rule; it takes no index",
                    func.name
                ),
            ));
        }
        if let Some(named) = args.iter().find_map(|a| a.name.as_ref()) {
            return Err(RuleError::new(
                named.span,
                format!("`{}` takes positional arguments only", func.name),
            )
            .hint(format!("`def {}({})`", func.name, def.params.join(", "))));
        }
        if args.len() != def.params.len() {
            return Err(RuleError::new(
                span,
                format!(
                    "`{}` takes {} argument{}, found {}",
                    func.name,
                    def.params.len(),
                    if def.params.len() == 1 { "" } else { "s" },
                    args.len()
                ),
            )
            .hint(format!("`def {}({})`", func.name, def.params.join(", "))));
        }
        self.expand(span)?;
        let mut values = Vec::with_capacity(args.len());
        for (p, a) in def.params.iter().zip(args) {
            values.push((p.clone(), self.expr(&a.value)?));
        }
        let k = self.st.sites.entry(func.name.clone()).or_insert(0);
        let prefix = format!("{}{}{k}.", self.st.prefix, func.name);
        *k += 1;
        let outer_sites = std::mem::take(&mut self.st.sites);
        let outer_prefix = std::mem::replace(&mut self.st.prefix, prefix);
        let had_site = self.st.first_site.is_some();
        self.frames.push(values);
        let result = self.expr_with(&def.body, probs);
        self.frames.pop();
        let owns_sites = !self.st.sites.is_empty();
        self.st.sites = outer_sites;
        self.st.prefix = outer_prefix;
        if owns_sites && !had_site {
            // "this statement owns parameters but has no name" points at the call
            self.st.first_site = Some(span);
        }
        let line = self.line_starts.partition_point(|&l| l <= span.start);
        // the error points into the body: say which calls led there, innermost first
        result.map_err(|mut e| {
            let call = format!("`{}` called on line {line}", func.name);
            match e.message.strip_suffix(')') {
                Some(inner) if e.message.contains(" (in `") => {
                    e.message = format!("{inner}, in {call})")
                }
                _ => e.message = format!("{} (in {call})", e.message),
            }
            e
        })
    }

    /// `let a[i, l, j] = expr`: checked once in a statement of its own, then kept to be
    /// inlined where it is read. It owns no parameters, which every read would duplicate.
    pub(super) fn lazy_let(
        &mut self,
        s: &Statement,
        binding: &Indexed,
        value: &Expr,
    ) -> Checked<()> {
        if let Some(label) = &s.label {
            return Err(RuleError::new(
                label.span,
                "a three-index binding takes no label: it owns no parameters",
            ));
        }
        self.st.name = Some(binding.name.name.clone());
        let slots = self.open_indices(binding, false)?;
        let height = self.check_expanded_height(value)?;
        let node = self.tensor(value, "a `let` binding", false)?;
        check_slots_within(&node, &slots, value.span, &self.st.slots)?;
        if let Some(site) = self.st.first_site {
            return Err(RuleError::new(
                site,
                format!(
                    "`{}` has three indices and would own parameters here",
                    binding.name.name
                ),
            )
            .hint("a three-index binding is inlined where it is read; project the tensors it reads in two-index `let`s of their own"));
        }
        self.claim_name(&binding.name)?;
        self.lazy.insert(
            binding.name.name.clone(),
            LazyLet {
                indices: binding.indices.iter().map(|i| i.name.clone()).collect(),
                body: value.clone(),
                height,
            },
        );
        Ok(())
    }

    /// `a[i, l, j]`, as a three-index binding was written.
    pub(super) fn lazy_signature(&self, name: &str) -> String {
        format!("{name}[{}]", self.lazy[name].indices.join(", "))
    }

    pub(super) fn is_lazy(&self, name: &str) -> bool {
        self.lazy.contains_key(name)
    }

    /// A read of a three-index binding: its expression over the slots the read names.
    #[inline(never)]
    pub(super) fn lazy_read(&mut self, ix: &Indexed, slots: Vec<Slot>) -> Checked<Node> {
        let lazy = self.lazy[&ix.name.name].clone();
        self.expand(ix.span)?;
        let depth = self.st.scope.len();
        for (name, slot) in lazy.indices.iter().zip(slots) {
            self.st.scope.push((name.clone(), slot));
        }
        let node = self.tensor(&lazy.body, "a three-index binding", false);
        self.st.scope.truncate(depth);
        node
    }
}
