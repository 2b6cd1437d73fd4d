//! Syntax tree → plan. Resolves parameters, gives every index a slot, types every expression
//! (free indices and channels), names every parameter site, and decides each lowering. Anything
//! it cannot lower, or that would break causality, is rejected here with a located message.

mod attention;
mod calls;
mod exprs;
mod input_graph;
mod params;
mod reuse;
mod routing;
mod statements;

pub use reuse::MAX_EXPANSIONS;

use std::collections::{BTreeSet, HashMap};

use super::ast::*;
use super::builtins::{self, Form, Function, RESERVED};
use super::ir::*;
use super::lower;
use crate::diagnostic::{Checked, RuleError, Span, MAX_ERRORS};

/// The most free indices one expression may carry (n³ elements per channel).
pub const MAX_INDICES: usize = 3;

/// The largest count (heads, channels, iterations) a rule may ask for; what a model of that
/// size needs in memory is checked before anything is allocated.
pub const MAX_CHANNELS: usize = 1_000_000_000;

/// What a rule is checked against: the model's sizes, causality and parameter overrides.
#[derive(Clone, Debug, Default)]
pub struct RuleConfig {
    /// Node channels.
    pub dim: usize,
    /// Edge channels.
    pub dim_edges: usize,
    /// Whether the model is causal.
    pub causal: bool,
    /// Parameter values that replace the rule's defaults.
    pub overrides: Vec<(String, Const)>,
}

/// Checks a parsed program against `cfg`: its plan, or the first error.
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
        functions: HashMap::new(),
        lazy: HashMap::new(),
        frames: Vec::new(),
        expansions: 0,
        dropouts: 0,
        st: StatementState::default(),
    };
    ck.resolve_params(program, header_span)?;
    let mut statements = Vec::new();
    // every statement is checked, so that a file's errors come together; a statement reading
    // a binding that failed is skipped (its error would only repeat the first)
    let mut errors = Vec::new();
    let mut failed: Vec<&str> = Vec::new();
    for s in &program.statements {
        let mut reads = Vec::new();
        match &s.kind {
            StatementKind::Let { value, .. } | StatementKind::Update { value, .. } => {
                tensor_names(value, &mut reads)
            }
            StatementKind::Def { .. } => {}
        }
        if reads.iter().any(|r| failed.contains(r)) {
            if let StatementKind::Let { bindings, .. } = &s.kind {
                failed.extend(bindings.iter().map(|b| b.name.name.as_str()));
            }
            continue;
        }
        match ck.statement(s, source) {
            Ok(st) => statements.extend(st),
            Err(e) => {
                if let StatementKind::Let { bindings, .. } = &s.kind {
                    failed.extend(bindings.iter().map(|b| b.name.name.as_str()));
                }
                errors.push(e);
                if errors.len() >= MAX_ERRORS {
                    break;
                }
            }
        }
    }
    if let Some(e) = RuleError::all(errors) {
        return Err(e);
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
#[derive(Clone)]
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
    /// Sites made so far per kind (`linear`, or a function's name), for their numbers.
    sites: HashMap<String, usize>,
    /// Inside a function's body: the call's own names (`gated0.`), before every site.
    prefix: String,
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
    functions: HashMap<String, reuse::FnDef>,
    lazy: HashMap<String, reuse::LazyLet>,
    /// The arguments of the function bodies being checked, innermost last.
    frames: Vec<Vec<(String, Value)>>,
    expansions: usize,
    /// Dropouts checked so far: each draws from its own stream.
    dropouts: usize,
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

/// The tensors `e` reads by name (`x` of `x[i]`), with repeats.
fn tensor_names<'e>(e: &'e Expr, out: &mut Vec<&'e str>) {
    match &e.kind {
        ExprKind::Number(_) | ExprKind::Name(_) => {}
        ExprKind::Index(ix) => out.push(&ix.name.name),
        ExprKind::Neg(x) => tensor_names(x, out),
        ExprKind::Binary(_, a, b) | ExprKind::Arrow(a, b) => {
            tensor_names(a, out);
            tensor_names(b, out);
        }
        ExprKind::If(c, a, b) => {
            tensor_names(c, out);
            tensor_names(a, out);
            tensor_names(b, out);
        }
        ExprKind::Call { args, .. } => args.iter().for_each(|a| tensor_names(&a.value, out)),
    }
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
/// indices are disjoint (any number each: `sum[k](p[i, j, k] * w[k])` is `[n², n] × [n, c]`),
/// and their channels match or split per head.
pub fn matmul_form(x: &Node, k: Slot) -> Option<(&Node, &Node)> {
    let Op::Binary {
        op: Arith::Mul,
        lhs,
        rhs,
    } = &x.op
    else {
        return None;
    };
    let (la, lb) = (lhs.slots_besides(k), rhs.slots_besides(k));
    let disjoint = la.iter().all(|s| !lb.contains(s));
    let fits = lhs.slots.contains(&k) && rhs.slots.contains(&k);
    let chans = lhs.channels == rhs.channels
        || lhs.channels % rhs.channels == 0
        || rhs.channels % lhs.channels == 0;
    (disjoint && fits && chans).then_some((lhs, rhs))
}
