//! The syntax tree of a rule program, every node with its span.

use crate::diagnostic::Span;

#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

/// `rule NAME(param = default, ...)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    pub name: Ident,
    pub params: Vec<(Ident, Expr)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Program {
    pub header: Option<Header>,
    pub statements: Vec<Statement>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Statement {
    pub label: Option<Ident>,
    pub kind: StatementKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum StatementKind {
    /// `let a[i, j] = expr`, or `let out[i], probs[i, j] = attend(...)`.
    Let { bindings: Vec<Indexed>, value: Expr },
    /// `nodes[i] += expr`, `edges[i, j] = expr`.
    Update {
        target: Indexed,
        accumulate: bool,
        value: Expr,
    },
    /// `def name(a, b) = expr`: a function of whole values, inlined where it is called.
    Def {
        name: Ident,
        params: Vec<Ident>,
        body: Expr,
    },
}

/// A tensor with its indices: `edges[i, j]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Indexed {
    pub name: Ident,
    pub indices: Vec<Ident>,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    /// Comparisons: 1 where they hold, else 0 (no gradient).
    Less,
    Greater,
    LessEq,
    GreaterEq,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Pow => "**",
            BinOp::Less => "<",
            BinOp::Greater => ">",
            BinOp::LessEq => "<=",
            BinOp::GreaterEq => ">=",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
    /// Levels of the tree below and including this node (1 for a leaf). The parser refuses
    /// trees taller than [`MAX_DEPTH`], so every pass may recurse over them.
    pub height: usize,
}

/// The tallest expression tree (and the deepest bracket nesting) a rule may have. Passes over
/// the tree recurse, so without a bound a generated rule could overflow the stack; no rule
/// written by hand comes near it.
pub const MAX_DEPTH: usize = 128;

impl ExprKind {
    /// The tallest child's height (0 for a leaf).
    pub fn children_height(&self) -> usize {
        match self {
            ExprKind::Number(_) | ExprKind::Name(_) | ExprKind::Index(_) => 0,
            ExprKind::Neg(x) => x.height,
            ExprKind::Binary(_, a, b) | ExprKind::Arrow(a, b) => a.height.max(b.height),
            ExprKind::If(c, a, b) => c.height.max(a.height).max(b.height),
            ExprKind::Call { args, .. } => args.iter().map(|a| a.value.height).max().unwrap_or(0),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    Number(f64),
    /// A bare name: a rule parameter, a model size, or a word option value (`taylor`).
    Name(Ident),
    Index(Indexed),
    Neg(Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `f(args)` or `f[k](args)` (reductions and softmax over index `k`).
    Call {
        func: Ident,
        over: Option<Ident>,
        args: Vec<Arg>,
    },
    /// `if cond then a else b`: `cond` is known when the rule loads (a parameter, `causal`);
    /// only the chosen branch is checked and run.
    If(Box<Expr>, Box<Expr>, Box<Expr>),
    /// `query -> key`, only as `attend`'s first argument.
    Arrow(Box<Expr>, Box<Expr>),
}

/// A call argument: positional (`x`), named (`heads: 4`).
#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
    pub span: Span,
}
