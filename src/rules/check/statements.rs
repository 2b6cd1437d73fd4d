//! Statements: bindings, updates of the node and edge state, and the names they claim.

use super::*;

impl<'a> Checker<'a> {
    /// The checked statement; `None` for an update turned off (`+= 0`, as `if flag then …
    /// else 0` gives when the flag is off).
    pub(super) fn statement(
        &mut self,
        s: &Statement,
        source: &str,
    ) -> Checked<Option<PlanStatement>> {
        self.st = StatementState::default();
        match &s.kind {
            StatementKind::Def { name, params, body } => {
                self.define(name, params, body)?;
                return Ok(None);
            }
            StatementKind::Let { bindings, value }
                if bindings.len() == 1 && bindings[0].indices.len() == 3 =>
            {
                self.lazy_let(s, &bindings[0], value)?;
                return Ok(None);
            }
            StatementKind::Let { value, .. } | StatementKind::Update { value, .. } => {
                self.check_expanded_height(value)?;
            }
        }
        if let Some(label) = &s.label {
            self.claim_name(label)?;
            self.st.name = Some(label.name.clone());
        }
        let kind = match &s.kind {
            StatementKind::Let { bindings, value } => self.let_statement(s, bindings, value)?,
            StatementKind::Def { .. } => unreachable!("definitions return above"),
            StatementKind::Update {
                target,
                accumulate,
                value,
            } => match self.update_statement(target, *accumulate, value)? {
                Some(kind) => kind,
                None => return Ok(None),
            },
        };
        let name = match (&self.st.name, self.st.first_site) {
            (Some(n), _) => n.clone(),
            (None, None) => String::new(),
            (None, Some(site)) => {
                return Err(
                    RuleError::new(site, "this statement owns parameters but has no name")
                        .hint("label it so its parameter names stay stable: `ff: nodes[i] += ...`"),
                )
            }
        };
        let line = self.line_starts.partition_point(|&l| l <= s.span.start);
        Ok(Some(PlanStatement {
            name,
            source: source[s.span.start..s.span.end]
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
            line,
            slots: self.st.slots.clone(),
            kind,
        }))
    }

    pub(super) fn claim_name(&mut self, name: &Ident) -> Checked<()> {
        if RESERVED.contains(&name.name.as_str())
            || builtins::function(&name.name).is_some()
            || self.param_index.contains_key(&name.name)
        {
            return Err(RuleError::new(
                name.span,
                format!("`{}` is already a parameter or built-in name", name.name),
            ));
        }
        if self.labels.contains_key(&name.name) {
            return Err(
                RuleError::new(name.span, format!("`{}` is already defined", name.name))
                    .hint("names of bindings and labels must be unique in a rule"),
            );
        }
        self.labels.insert(name.name.clone(), name.span);
        Ok(())
    }

    /// Opens slots for a target's or binding's indices; a repeated index means the diagonal.
    pub(super) fn open_indices(
        &mut self,
        indexed: &Indexed,
        allow_diagonal: bool,
    ) -> Checked<Vec<Slot>> {
        let mut slots = Vec::new();
        for ix in &indexed.indices {
            match self.st.scope.iter().find(|(n, _)| n == &ix.name) {
                Some(&(_, s)) if allow_diagonal => slots.push(s),
                Some(_) => {
                    return Err(
                        RuleError::new(ix.span, format!("index `{}` is repeated", ix.name))
                            .hint("a binding's indices must be distinct"),
                    )
                }
                None => {
                    let s = self.new_slot(&ix.name);
                    slots.push(s);
                }
            }
        }
        Ok(slots)
    }

    pub(super) fn new_slot(&mut self, name: &str) -> Slot {
        let s = self.st.slots.len();
        self.st.slots.push(name.to_string());
        self.st.scope.push((name.to_string(), s));
        s
    }

    pub(super) fn let_statement(
        &mut self,
        s: &Statement,
        bindings: &[Indexed],
        value: &Expr,
    ) -> Checked<PlanKind> {
        if bindings.len() > 2 {
            return Err(
                RuleError::new(bindings[2].span, "at most two bindings").hint(
                    "only `attend` returns two tensors: `let out[i], probs[i, j] = attend(...)`",
                ),
            );
        }
        for b in bindings {
            if b.indices.len() > 2 {
                return Err(RuleError::new(
                    b.span,
                    format!(
                        "`{}` has {} indices; a tensor has one (nodes) or two (edges)",
                        b.name.name,
                        b.indices.len()
                    ),
                )
                .hint(if b.indices.len() == 3 && bindings.len() > 1 {
                    "a three-index binding stands alone: `let a[i, l, j] = ...`, inlined where it is read"
                } else {
                    "a binding has one, two or three indices (three: inlined where it is read)"
                }));
            }
        }
        if s.label.is_none() {
            self.st.name = Some(bindings[0].name.name.clone());
        }
        let first_slots = self.open_indices(&bindings[0], false)?;
        let probs = bindings.len() == 2;
        let node = self.tensor(value, "a `let` binding", probs)?;
        let mut outputs = Vec::new();
        check_slots_within(&node, &first_slots, value.span, &self.st.slots)?;
        for (k, b) in bindings.iter().enumerate() {
            self.claim_name(&b.name)?;
            let (slots, channels) = if k == 0 {
                (first_slots.clone(), node.channels)
            } else {
                self.probs_binding(b, &node, &first_slots)?
            };
            let id = self.lets.len();
            self.lets.push(LetVar {
                name: b.name.name.clone(),
                domain: if slots.len() == 1 {
                    Domain::Nodes
                } else {
                    Domain::Edges
                },
                channels,
            });
            self.let_ids.insert(b.name.name.clone(), id);
            outputs.push((id, slots));
        }
        Ok(PlanKind::Let {
            outputs,
            value: node,
        })
    }

    /// The second binding of `let out[i], probs[i, j] = attend(x[i] -> x[j], ...)`.
    pub(super) fn probs_binding(
        &self,
        b: &Indexed,
        node: &Node,
        first: &[Slot],
    ) -> Checked<(Vec<Slot>, usize)> {
        let Op::Attend(a) = &node.op else {
            return Err(RuleError::new(
                b.span,
                "only `attend` returns a second tensor",
            ));
        };
        let Pattern::Nodes { query, key } = a.pattern else {
            return Err(RuleError::new(
                b.span,
                "attention probabilities are returned for node attention only",
            )
            .hint("across edges they would be an n⁴ tensor"));
        };
        let names: Vec<&str> = b.indices.iter().map(|i| i.name.as_str()).collect();
        let want = [self.st.slots[query].as_str(), self.st.slots[key].as_str()];
        if names != want || first != [query] {
            return Err(RuleError::new(
                b.span,
                format!(
                    "the probabilities are indexed by query and key: `{}[{}, {}]`",
                    b.name.name, want[0], want[1]
                ),
            ));
        }
        Ok((vec![query, key], a.heads))
    }

    pub(super) fn update_statement(
        &mut self,
        target: &Indexed,
        accumulate: bool,
        value: &Expr,
    ) -> Checked<Option<PlanKind>> {
        let domain = match target.name.name.as_str() {
            "nodes" => Domain::Nodes,
            "edges" => Domain::Edges,
            other if self.let_ids.contains_key(other) => {
                return Err(RuleError::new(
                    target.name.span,
                    format!("`{other}` is a `let` binding and cannot be changed"),
                )
                .hint("only `nodes` and `edges` are updated; bind a new name instead"))
            }
            other => {
                return Err(did_you_mean(
                    RuleError::new(
                        target.name.span,
                        format!(
                            "`{other}` cannot be assigned: the targets are `nodes` and `edges`"
                        ),
                    ),
                    other,
                    ["nodes", "edges"],
                ))
            }
        };
        let want = if domain == Domain::Nodes { 1 } else { 2 };
        if target.indices.len() != want {
            return Err(index_count_error(&target.name.name, want, target));
        }
        let slots = self.open_indices(target, true)?;
        let diagonal = domain == Domain::Edges && slots[0] == slots[1];
        let node = match self.expr_with(value, false)? {
            Value::Tensor(node) => node,
            // adding zero: the statement is off
            Value::Num(x) if x == 0.0 && accumulate => return Ok(None),
            Value::Num(_) => {
                return Err(
                    RuleError::new(value.span, "an update needs a tensor, found a number").hint(
                        "to turn a statement off, add zero: `nodes[i] += if flag then … else 0`",
                    ),
                )
            }
            Value::Word(w) => return Err(self.unknown_name(value.span, &w)),
        };
        let free: Vec<Slot> = if diagonal {
            vec![slots[0]]
        } else {
            slots.clone()
        };
        check_slots_within(&node, &free, value.span, &self.st.slots)?;
        let channels = match domain {
            Domain::Nodes => self.cfg.dim,
            Domain::Edges => self.cfg.dim_edges,
        };
        if node.channels != channels {
            return Err(RuleError::new(
                value.span,
                format!(
                    "`{}` has {channels} channels but this expression has {}",
                    target.name.name, node.channels
                ),
            )
            .hint(format!(
                "project it: `linear(..., {})`",
                if domain == Domain::Nodes {
                    "dim"
                } else {
                    "dim_edges"
                }
            )));
        }
        Ok(Some(PlanKind::Update {
            target: domain,
            slots,
            diagonal,
            accumulate,
            value: node,
        }))
    }
}
