//! Syntax tree → plan. Resolves parameters, gives every index a slot, types every expression
//! (free indices and channels), names every parameter site, and decides each lowering. Anything
//! it cannot lower, or that would break causality, is rejected here with a located message.

use std::collections::{BTreeSet, HashMap};

use super::ast::*;
use super::builtins::{self, Form, Function, RESERVED};
use super::ir::*;
use crate::diagnostic::{Checked, RuleError, Span};

/// The most free indices one expression may carry (n³ elements per channel).
pub const MAX_INDICES: usize = 3;

/// The largest count (heads, channels, iterations) a rule may ask for; what a model of that
/// size needs in memory is checked before anything is allocated.
pub const MAX_CHANNELS: usize = 1_000_000_000;

/// What a rule is checked against: the model's sizes, causality and parameter overrides.
#[derive(Clone, Debug, Default)]
pub struct RuleConfig {
    pub dim: usize,
    pub dim_edges: usize,
    pub causal: bool,
    pub overrides: Vec<(String, Const)>,
}

pub fn check(program: &Program, source: &str, file: &str, cfg: &RuleConfig) -> Checked<Plan> {
    let header_span = program
        .header
        .as_ref()
        .map_or(Span::default(), |h| h.name.span);
    let rule = program.header.as_ref().map_or_else(
        || {
            std::path::Path::new(file)
                .file_stem()
                .map_or("rule".to_string(), |s| s.to_string_lossy().into_owned())
        },
        |h| h.name.name.clone(),
    );
    if cfg.dim == 0 || cfg.dim_edges == 0 {
        return Err(RuleError::new(
            header_span,
            format!(
                "the model's sizes must be positive (dim {}, dim_edges {})",
                cfg.dim, cfg.dim_edges
            ),
        ));
    }
    let mut ck = Checker {
        cfg,
        params: Vec::new(),
        param_index: HashMap::new(),
        line_starts: std::iter::once(0)
            .chain(source.match_indices('\n').map(|(i, _)| i + 1))
            .collect(),
        lets: Vec::new(),
        let_ids: HashMap::new(),
        labels: HashMap::new(),
        st: StatementState::default(),
    };
    ck.resolve_params(program, header_span)?;
    let mut statements = Vec::new();
    for s in &program.statements {
        statements.push(ck.statement(s, source)?);
    }
    if statements.is_empty() {
        return Err(RuleError::new(header_span, "the rule has no statements")
            .hint("add one, e.g. `nodes[i] += feedforward(nodes[i])`"));
    }
    Ok(Plan {
        rule,
        file: file.to_string(),
        params: ck.params,
        dim: cfg.dim,
        dim_edges: cfg.dim_edges,
        causal: cfg.causal,
        lets: ck.lets,
        statements,
    })
}

/// A checked expression: a tensor, a number, or a word.
enum Value {
    Tensor(Node),
    Num(f64),
    Word(String),
}

#[derive(Default)]
struct StatementState {
    slots: Vec<String>,
    /// Index names in scope, innermost last.
    scope: Vec<(String, Slot)>,
    sites: HashMap<&'static str, usize>,
    first_site: Option<Span>,
    name: Option<String>,
}

struct Checker<'a> {
    cfg: &'a RuleConfig,
    params: Vec<(String, Const)>,
    /// Position of each parameter in `params` (rules may declare many: lookups stay O(1)).
    param_index: HashMap<String, usize>,
    /// Byte offset where each source line starts, for statements' line numbers.
    line_starts: Vec<usize>,
    lets: Vec<LetVar>,
    let_ids: HashMap<String, usize>,
    labels: HashMap<String, Span>,
    st: StatementState,
}

/// The closest candidate within a small edit distance (adjacent swaps count once), for
/// "did you mean" hints.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    fn distance(a: &str, b: &str) -> usize {
        let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
        let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
        for (i, row) in d.iter_mut().enumerate() {
            row[0] = i;
        }
        for j in 0..=b.len() {
            d[0][j] = j;
        }
        for i in 1..=a.len() {
            for j in 1..=b.len() {
                let cost = usize::from(a[i - 1] != b[j - 1]);
                d[i][j] = (d[i - 1][j] + 1)
                    .min(d[i][j - 1] + 1)
                    .min(d[i - 1][j - 1] + cost);
                if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                    d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
                }
            }
        }
        d[a.len()][b.len()]
    }
    candidates
        .into_iter()
        .map(|c| (distance(word, c), c))
        .filter(|&(d, c)| d <= (c.chars().count() / 3).max(1))
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

fn did_you_mean<'a>(
    err: RuleError,
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> RuleError {
    match closest(word, candidates) {
        Some(c) => err.hint(format!("did you mean `{c}`?")),
        None => err,
    }
}

/// Named and positional arguments of a call, consumed one by one; leftovers are errors.
struct Args<'e> {
    func: &'static Function,
    call: Span,
    positional: Vec<&'e Expr>,
    named: Vec<(&'e Ident, &'e Expr)>,
}

impl<'e> Args<'e> {
    fn new(func: &'static Function, call: Span, args: &'e [Arg]) -> Checked<Self> {
        let mut positional = Vec::new();
        let mut named: Vec<(&Ident, &Expr)> = Vec::new();
        for a in args {
            match &a.name {
                Some(n) => {
                    if named.iter().any(|(m, _)| m.name == n.name) {
                        return Err(RuleError::new(
                            n.span,
                            format!("option `{}` is given twice", n.name),
                        ));
                    }
                    named.push((n, &a.value));
                }
                None if !named.is_empty() && !matches!(a.value.kind, ExprKind::Name(_)) => {
                    return Err(
                        RuleError::new(a.span, "positional argument after a named option")
                            .hint("write positional arguments first"),
                    );
                }
                None => positional.push(&a.value),
            }
        }
        Ok(Self {
            func,
            call,
            positional,
            named,
        })
    }

    fn positional(&mut self, what: &str) -> Checked<&'e Expr> {
        if self.positional.is_empty() {
            return Err(RuleError::new(
                self.call,
                format!("`{}` needs {what}", self.func.name),
            ));
        }
        Ok(self.positional.remove(0))
    }

    fn option(&mut self, name: &str) -> Option<(&'e Ident, &'e Expr)> {
        let i = self.named.iter().position(|(n, _)| n.name == name)?;
        Some(self.named.remove(i))
    }

    /// A bare flag among the positional arguments (`gate`, `talking`).
    fn flag(&mut self, name: &str) -> bool {
        let found = self
            .positional
            .iter()
            .position(|e| matches!(&e.kind, ExprKind::Name(n) if n.name == name));
        match found {
            Some(i) => {
                self.positional.remove(i);
                true
            }
            None => false,
        }
    }

    /// Refuses what is left: more positional arguments, or options the function does not take.
    fn finish(self) -> Checked<()> {
        let known = self.func.option_names();
        if let Some(extra) = self.positional.first() {
            return Err(RuleError::new(
                extra.span,
                format!("`{}` takes no more positional arguments", self.func.name),
            )
            .hint("options are written `name: value`"));
        }
        if let Some((n, _)) = self.named.first() {
            let err = RuleError::new(
                n.span,
                format!("unknown option `{}` for `{}`", n.name, self.func.name),
            );
            let err = did_you_mean(err, &n.name, known.iter().copied());
            return Err(if err.hint.is_some() || known.is_empty() {
                err
            } else {
                err.hint(format!("`{}` takes: {}", self.func.name, known.join(", ")))
            });
        }
        Ok(())
    }
}

impl<'a> Checker<'a> {
    // ---- parameters -------------------------------------------------------------------

    fn resolve_params(&mut self, program: &Program, header_span: Span) -> Checked<()> {
        let decls: &[(Ident, Expr)] = program.header.as_ref().map_or(&[], |h| h.params.as_slice());
        let declared: std::collections::HashSet<&str> =
            decls.iter().map(|(d, _)| d.name.as_str()).collect();
        let overrides: HashMap<&str, &Const> = self
            .cfg
            .overrides
            .iter()
            .map(|(n, v)| (n.as_str(), v))
            .collect();
        for (name, value) in &self.cfg.overrides {
            if let Const::Num(x) = value {
                if !x.is_finite() {
                    return Err(RuleError::new(
                        header_span,
                        format!("the configuration sets `{name}` to {x}, not a finite number"),
                    ));
                }
            }
            if !declared.contains(name.as_str()) {
                let known: Vec<&str> = decls.iter().map(|(d, _)| d.name.as_str()).collect();
                let err = RuleError::new(
                    header_span,
                    format!("the configuration sets `{name}`, which this rule does not declare"),
                );
                return Err(match closest(name, known.iter().copied()) {
                    Some(c) => err.hint(format!("did you mean `{c}`?")),
                    None => err.hint(format!("its parameters: {}", known.join(", "))),
                });
            }
        }
        for (name, default) in decls {
            if RESERVED.contains(&name.name.as_str()) || builtins::function(&name.name).is_some() {
                return Err(RuleError::new(
                    name.span,
                    format!(
                        "`{}` is a built-in name and cannot be a parameter",
                        name.name
                    ),
                ));
            }
            if self.param_index.contains_key(&name.name) {
                return Err(RuleError::new(
                    name.span,
                    format!("parameter `{}` is declared twice", name.name),
                ));
            }
            let value = match overrides.get(name.name.as_str()) {
                Some(&v) => v.clone(),
                None => match self.expr(default)? {
                    Value::Num(x) => Const::Num(x),
                    Value::Word(w) => Const::Word(w),
                    Value::Tensor(_) => {
                        return Err(RuleError::new(
                            default.span,
                            "a parameter's default must be a number or a word",
                        ))
                    }
                },
            };
            self.param_index
                .insert(name.name.clone(), self.params.len());
            self.params.push((name.name.clone(), value));
        }
        Ok(())
    }

    // ---- statements -------------------------------------------------------------------

    fn statement(&mut self, s: &Statement, source: &str) -> Checked<PlanStatement> {
        self.st = StatementState::default();
        if let Some(label) = &s.label {
            self.claim_name(label)?;
            self.st.name = Some(label.name.clone());
        }
        let kind = match &s.kind {
            StatementKind::Let { bindings, value } => self.let_statement(s, bindings, value)?,
            StatementKind::Update {
                target,
                accumulate,
                value,
            } => self.update_statement(target, *accumulate, value)?,
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
        Ok(PlanStatement {
            name,
            source: source[s.span.start..s.span.end]
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
            line,
            slots: self.st.slots.clone(),
            kind,
        })
    }

    fn claim_name(&mut self, name: &Ident) -> Checked<()> {
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
    fn open_indices(&mut self, indexed: &Indexed, allow_diagonal: bool) -> Checked<Vec<Slot>> {
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

    fn new_slot(&mut self, name: &str) -> Slot {
        let s = self.st.slots.len();
        self.st.slots.push(name.to_string());
        self.st.scope.push((name.to_string(), s));
        s
    }

    fn let_statement(
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
                ));
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
    fn probs_binding(
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

    fn update_statement(
        &mut self,
        target: &Indexed,
        accumulate: bool,
        value: &Expr,
    ) -> Checked<PlanKind> {
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
        let node = self.tensor(value, "an update", false)?;
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
        Ok(PlanKind::Update {
            target: domain,
            slots,
            diagonal,
            accumulate,
            value: node,
        })
    }

    // ---- expressions ------------------------------------------------------------------

    fn tensor(&mut self, e: &Expr, what: &str, probs: bool) -> Checked<Node> {
        match self.expr_with(e, probs)? {
            Value::Tensor(n) => Ok(n),
            Value::Num(_) => Err(RuleError::new(
                e.span,
                format!("{what} needs a tensor, found a number"),
            )),
            Value::Word(w) => Err(self.unknown_name(e.span, &w)),
        }
    }

    fn number(&mut self, e: &Expr, what: &str) -> Checked<f64> {
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
    fn non_negative(&mut self, e: &Expr, what: &str) -> Checked<f64> {
        let x = self.number(e, what)?;
        if x < 0.0 {
            return Err(RuleError::new(
                e.span,
                format!("{what} must not be negative, got {x}"),
            ));
        }
        Ok(x)
    }

    fn count(&mut self, e: &Expr, what: &str) -> Checked<usize> {
        let x = self.number(e, what)?;
        if x.fract() != 0.0 || x < 1.0 || x > MAX_CHANNELS as f64 {
            return Err(RuleError::new(
                e.span,
                format!("{what} must be a positive whole number, got {x}"),
            ));
        }
        Ok(x as usize)
    }

    fn word(&mut self, e: &Expr, what: &str, allowed: &[&str]) -> Checked<String> {
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

    fn flag_value(&mut self, e: &Expr, what: &str) -> Checked<bool> {
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

    fn unknown_name(&self, span: Span, name: &str) -> RuleError {
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

    fn expr(&mut self, e: &Expr) -> Checked<Value> {
        self.expr_with(e, false)
    }

    fn expr_with(&mut self, e: &Expr, probs: bool) -> Checked<Value> {
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

    fn name(&mut self, id: &Ident) -> Checked<Value> {
        let n = id.name.as_str();
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
            "nodes" | "edges" => {
                return Err(RuleError::new(
                    id.span,
                    format!("`{n}` is a tensor: write it with indices"),
                )
                .hint(if n == "nodes" {
                    "e.g. `nodes[i]`"
                } else {
                    "e.g. `edges[i, j]`"
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

    fn indexed(&mut self, ix: &Indexed) -> Checked<Node> {
        let name = ix.name.name.as_str();
        let (domain, channels, let_id) = match name {
            "nodes" => (Domain::Nodes, self.cfg.dim, None),
            "edges" => (Domain::Edges, self.cfg.dim_edges, None),
            _ => match self.let_ids.get(name) {
                Some(&id) => (self.lets[id].domain, self.lets[id].channels, Some(id)),
                None => {
                    let err = RuleError::new(ix.name.span, format!("unknown tensor `{name}`"));
                    let mut names: Vec<&str> = vec!["nodes", "edges"];
                    names.extend(self.let_ids.keys().map(|s| s.as_str()));
                    let err = did_you_mean(err, name, names);
                    return Err(if err.hint.is_some() {
                        err
                    } else {
                        err.hint("tensors are `nodes`, `edges` and names bound earlier with `let`")
                    });
                }
            },
        };
        let want = if domain == Domain::Nodes { 1 } else { 2 };
        if ix.indices.len() != want {
            return Err(index_count_error(name, want, ix));
        }
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

    fn binary(&mut self, op: BinOp, l: &Expr, r: &Expr) -> Checked<Value> {
        let span = l.span.to(r.span);
        let lv = self.expr(l)?;
        let rv = self.expr(r)?;
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
                };
                let channels = broadcast_channels(a.channels, b.channels).ok_or_else(|| {
                    RuleError::new(
                        span,
                        format!(
                            "channels do not match: {} {} {}",
                            a.channels,
                            op.symbol(),
                            b.channels
                        ),
                    )
                    .hint("channels must be equal, one side 1, or h and h·d (a per-head value times its head's block)")
                })?;
                let slots = union(&a.slots, &b.slots);
                self.check_width(&slots, span)?;
                Ok(Value::Tensor(Node {
                    op: Op::Binary {
                        op: arith,
                        lhs: Box::new(a),
                        rhs: Box::new(b),
                    },
                    slots,
                    channels,
                }))
            }
        }
    }

    fn check_width(&self, slots: &[Slot], span: Span) -> Checked<()> {
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
                "reduce over an index first, or use `attend`, which never materializes its pairs",
            ));
        }
        Ok(())
    }

    fn site(&mut self, kind: &'static str, span: Span) -> String {
        let n = self.st.sites.entry(kind).or_insert(0);
        let site = format!("{kind}{n}");
        *n += 1;
        self.st.first_site.get_or_insert(span);
        site
    }

    fn call(
        &mut self,
        func: &Ident,
        over: Option<&Ident>,
        args: &[Arg],
        span: Span,
        probs: bool,
    ) -> Checked<Value> {
        let name = func.name.as_str();
        let Some(f) = builtins::function(name) else {
            let err = RuleError::new(func.span, format!("unknown function `{name}`"));
            let err = did_you_mean(err, name, builtins::names());
            return Err(if err.hint.is_some() {
                err
            } else {
                err.hint("see dsl/README.md for the functions")
            });
        };
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
            Form::Attend => self.attend(f, args, span, probs),
            Form::Top => Err(RuleError::new(
                func.span,
                "`top(...)` is only the value of attend's `route:` option",
            )),
        }
    }

    fn linear(&mut self, f: &'static Function, args: &[Arg], span: Span) -> Checked<Value> {
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

    fn norm(&mut self, f: &'static Function, args: &[Arg], span: Span) -> Checked<Value> {
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

    fn feedforward(&mut self, f: &'static Function, args: &[Arg], span: Span) -> Checked<Value> {
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
            },
        }))
    }

    fn concat(&mut self, f: &'static Function, args: &[Arg], span: Span) -> Checked<Value> {
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
    fn bind_index(&mut self, over: &Ident) -> Checked<Slot> {
        if self.st.scope.iter().any(|(n, _)| n == &over.name) {
            return Err(RuleError::new(
                over.span,
                format!("index `{}` is already in use here", over.name),
            )
            .hint("a reduction introduces a new index; pick another name"));
        }
        Ok(self.new_slot(&over.name))
    }

    fn reduce(
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
        a.finish()?;
        self.st.scope.pop();
        if !x.slots.contains(&slot) {
            return Err(RuleError::new(
                x_span,
                format!(
                    "`{name}[{}]` runs over `{}`, but its operand does not use it",
                    over.name, over.name
                ),
            ));
        }
        let slots: Vec<Slot> = x.slots.iter().copied().filter(|&s| s != slot).collect();
        self.check_causal_query(&slots, span, name)?;
        let matmul = op != ReduceOp::Max && matmul_form(&x, slot).is_some();
        Ok(Value::Tensor(Node {
            slots,
            channels: x.channels,
            op: Op::Reduce {
                op,
                slot,
                x: Box::new(x),
                matmul,
            },
        }))
    }

    /// In a causal rule, a reduction or softmax over an index compares its time with the times
    /// of the indices left free; with none left there is nothing to be causal against.
    fn check_causal_query(&self, rest: &[Slot], span: Span, what: &str) -> Checked<()> {
        if self.cfg.causal && rest.is_empty() {
            return Err(RuleError::new(
                span,
                format!("in a causal rule, `{what}` must leave an index free"),
            )
            .hint("pooling over every position would read the future"));
        }
        Ok(())
    }

    fn softmax(
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
        a.finish()?;
        if !x.slots.contains(&slot) {
            return Err(RuleError::new(
                x_span,
                format!(
                    "`softmax[{}]` runs over `{}`, but its operand does not use it",
                    over.name, over.name
                ),
            ));
        }
        let rest: Vec<Slot> = x.slots.iter().copied().filter(|&s| s != slot).collect();
        self.check_causal_query(&rest, span, "softmax")?;
        Ok(Value::Tensor(Node {
            slots: x.slots.clone(),
            channels: x.channels,
            op: Op::Softmax {
                slot,
                x: Box::new(x),
            },
        }))
    }

    fn dot(&mut self, f: &'static Function, args: &[Arg], span: Span) -> Checked<Value> {
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

    fn attend(
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
        let query = self.tensor(q_expr, "the query", false)?;
        let outer = self.st.scope.len();
        // indices of the key that are not in scope become the attention's key indices
        let mut fresh = Vec::new();
        free_index_names(k_expr, &mut Vec::new(), &mut fresh);
        let mut key_slots = Vec::new();
        for name in fresh {
            if !self.st.scope.iter().any(|(n, _)| n == &name) {
                key_slots.push(self.new_slot(&name));
            }
        }
        let key = self.tensor(k_expr, "the key", false)?;
        let pattern = self.pattern(&query, &key, &key_slots, q_expr.span, k_expr.span)?;

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
                check_slots_within(&g, &query.slots, v.span, &self.st.slots)?;
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
            (None, true) => Some(Gates::FromQuery {
                site: self.site("gate", span),
            }),
            (None, false) => None,
        };
        let route = match a.option("route") {
            Some((n, v)) => Some(self.route(n, v, &pattern, q_expr, k_expr)?),
            None => None,
        };
        a.finish()?;
        if route.is_some() {
            if bias.is_some() || gates.is_some() {
                return Err(
                    RuleError::new(span, "routed attention takes no `bias` or gates")
                        .hint("the router's soft top-k scores gate the routed edges"),
                );
            }
            if matches!(kernel, KernelChoice::Taylor { .. }) {
                return Err(RuleError::new(
                    span,
                    "routed attention uses the softmax kernel",
                ));
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
        Ok(Value::Tensor(Node {
            slots: query.slots.clone(),
            channels: outputs,
            op: Op::Attend(Box::new(AttendOp {
                site,
                pattern,
                query,
                key,
                heads,
                dim_head,
                outputs,
                scale,
                kernel,
                bias,
                gates,
                talking,
                route,
                probs,
            })),
        }))
    }

    /// Which core pattern the query and key indices ask for.
    fn pattern(
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

    fn route(
        &mut self,
        name: &Ident,
        v: &Expr,
        pattern: &Pattern,
        q_expr: &Expr,
        k_expr: &Expr,
    ) -> Checked<Route> {
        let ExprKind::Call {
            func,
            over: None,
            args,
        } = &v.kind
        else {
            return Err(RuleError::new(v.span, "`route:` takes `top(K, by: score)`"));
        };
        if func.name != "top" {
            return Err(RuleError::new(v.span, "`route:` takes `top(K, by: score)`"));
        }
        if !matches!(pattern, Pattern::All { .. }) {
            return Err(
                RuleError::new(name.span, "routing picks edges among all edges")
                    .hint("route an attention over `e[k, l]`"),
            );
        }
        let same_tensor = match (&q_expr.kind, &k_expr.kind) {
            (ExprKind::Index(a), ExprKind::Index(b)) => a.name.name == b.name.name,
            _ => false,
        };
        if !same_tensor {
            return Err(RuleError::new(
                q_expr.span.to(k_expr.span),
                "routed attention needs the query and key to be one tensor",
            )
            .hint("the picked edges attend among themselves: `e[i, j] -> e[k, l]`"));
        }
        let top = builtins::function("top").expect("a built-in");
        let mut a = Args::new(top, v.span, args)?;
        let k = a.positional("how many to pick: `top(64, by: score)`")?;
        let k = self.count(k, "the number of picks")?;
        let Some((_, by)) = a.option("by") else {
            return Err(RuleError::new(
                v.span,
                "`top` needs `by:`, the score to rank by",
            ));
        };
        let score = self.tensor(by, "the routing score", false)?;
        let Pattern::All { q0, q1, .. } = *pattern else {
            unreachable!()
        };
        check_slots_within(&score, &[q0, q1], by.span, &self.st.slots)?;
        if score.channels != 1 {
            return Err(RuleError::new(
                by.span,
                format!(
                    "the routing score needs 1 channel, it has {}",
                    score.channels
                ),
            )
            .hint("project it: `linear(..., 1)`"));
        }
        let per = match a.option("per") {
            Some((_, v)) => self.word(v, "routing scope", &["auto", "all", "row"])?,
            None => top.word("per").to_string(),
        };
        let per_row = match per.as_str() {
            "row" => true,
            "all" => false,
            _ => self.cfg.causal,
        };
        if per == "all" && self.cfg.causal {
            return Err(RuleError::new(
                v.span,
                "routing over all edges reads the future in a causal rule",
            )
            .hint("use `per: row` (or `per: auto`): each row picks among its visible edges"));
        }
        let fetch_ratio = match a.option("fetch") {
            Some((_, v)) => self.number(v, "`fetch`")?,
            None => top.num("fetch"),
        };
        let n_iters = match a.option("iters") {
            Some((_, v)) => self.count(v, "`iters`")?,
            None => top.num("iters") as usize,
        };
        let eps = match a.option("eps") {
            Some((_, v)) => self.number(v, "`eps`")?,
            None => top.num("eps"),
        };
        let straight = match a.option("straight") {
            Some((_, v)) => self.flag_value(v, "`straight`")?,
            None => top.flag("straight"),
        };
        a.finish()?;
        if fetch_ratio < 1.0 || eps <= 0.0 {
            return Err(RuleError::new(
                v.span,
                "`fetch` must be ≥ 1 and `eps` positive",
            ));
        }
        Ok(Route {
            k,
            score,
            per_row,
            fetch_ratio,
            n_iters,
            eps,
            straight,
        })
    }
}

/// `` `a`, `b` and `c` ``.
fn list_of(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => quoted.join(""),
    }
}

fn index_count_error(name: &str, want: usize, ix: &Indexed) -> RuleError {
    let example = if want == 1 {
        format!("{name}[i]")
    } else {
        format!("{name}[i, j]")
    };
    RuleError::new(
        ix.span,
        format!(
            "`{name}` takes {want} ind{} but has {}",
            if want == 1 { "ex" } else { "ices" },
            ix.indices.len()
        ),
    )
    .hint(format!("write `{example}`"))
}

fn affine(x: Node, mul: f64, add: f64) -> Node {
    Node {
        slots: x.slots.clone(),
        channels: x.channels,
        op: Op::Affine {
            x: Box::new(x),
            mul,
            add,
        },
    }
}

fn union(a: &[Slot], b: &[Slot]) -> Vec<Slot> {
    let set: BTreeSet<Slot> = a.iter().chain(b).copied().collect();
    set.into_iter().collect()
}

/// Channels after broadcasting two operands: equal, one of them 1, or h and h·d.
pub fn broadcast_channels(a: usize, b: usize) -> Option<usize> {
    if a == b || b == 1 || (a > b && a % b == 0) {
        Some(a)
    } else if a == 1 || (b > a && b % a == 0) {
        Some(b)
    } else {
        None
    }
}

fn check_slots_within(node: &Node, allowed: &[Slot], span: Span, names: &[String]) -> Checked<()> {
    if let Some(&extra) = node.slots.iter().find(|s| !allowed.contains(s)) {
        let name = &names[extra];
        return Err(RuleError::new(
            span,
            format!("index `{name}` is free here but the result has no `{name}`"),
        )
        .hint(format!(
            "reduce over it, e.g. `sum[{name}](...)`, or add it to the target"
        )));
    }
    Ok(())
}

/// Names used as indices in `e` that no call inside `e` binds, in order of first use.
fn free_index_names(e: &Expr, bound: &mut Vec<String>, out: &mut Vec<String>) {
    match &e.kind {
        ExprKind::Index(ix) => {
            for i in &ix.indices {
                if !bound.contains(&i.name) && !out.contains(&i.name) {
                    out.push(i.name.clone());
                }
            }
        }
        ExprKind::Neg(x) => free_index_names(x, bound, out),
        ExprKind::If(c, a, b) => {
            free_index_names(c, bound, out);
            free_index_names(a, bound, out);
            free_index_names(b, bound, out);
        }
        ExprKind::Binary(_, a, b) | ExprKind::Arrow(a, b) => {
            free_index_names(a, bound, out);
            free_index_names(b, bound, out);
        }
        ExprKind::Call { func, over, args } => {
            let binds = over.is_some() && func.name != "softmax";
            if let (true, Some(o)) = (binds, over) {
                bound.push(o.name.clone());
            }
            for a in args {
                free_index_names(&a.value, bound, out);
            }
            if binds {
                bound.pop();
            }
        }
        ExprKind::Number(_) | ExprKind::Name(_) => {}
    }
}

/// When `sum[k](a * b)` can run as batched matrix products: both factors use `k`, their other
/// indices are disjoint (at most one each), and their channels match or split per head.
pub fn matmul_form(x: &Node, k: Slot) -> Option<(&Node, &Node)> {
    let Op::Binary {
        op: Arith::Mul,
        lhs,
        rhs,
    } = &x.op
    else {
        return None;
    };
    let others = |n: &Node| -> Vec<Slot> { n.slots.iter().copied().filter(|&s| s != k).collect() };
    let (la, lb) = (others(lhs), others(rhs));
    let disjoint = la.iter().all(|s| !lb.contains(s));
    let fits = lhs.slots.contains(&k) && rhs.slots.contains(&k) && la.len() <= 1 && lb.len() <= 1;
    let chans = lhs.channels == rhs.channels
        || lhs.channels % rhs.channels == 0
        || rhs.channels % lhs.channels == 0;
    (disjoint && fits && chans).then_some((lhs, rhs))
}
