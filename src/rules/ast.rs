//! The syntax tree of a rule program, every node with its span.

use super::diagnostic::Span;

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
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Pow => "**",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
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
