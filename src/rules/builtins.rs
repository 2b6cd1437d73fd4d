//! The rule language's built-in functions and reserved words, listed once.
//!
//! The checker dispatches on [`Form`] (one arm per form, no wildcard), takes each option's
//! default and the list of accepted options from here, and draws its "did you mean" hints from
//! these names; `dsl/README.md`'s function table is [`readme_table`] (a test compares them).
//! A new function is a row here, an arm in the checker's `call`, and its lowering.

use super::ir::{Activation, Arith, ReduceOp};

/// Names a rule cannot bind.
pub const RESERVED: [&str; 11] = [
    "nodes",
    "edges",
    "adjacency",
    "dim",
    "dim_edges",
    "causal",
    "if",
    "then",
    "else",
    "let",
    "def",
];

/// How the checker handles a function.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Form {
    /// An element-wise function.
    Activation(Activation),
    /// `linear(x, out)`.
    Linear,
    /// `rmsnorm`, `unitnorm`, `layernorm`.
    Norm,
    /// `feedforward(x)`.
    FeedForward,
    /// `concat(a, b, …)`.
    Concat,
    /// `sum`, `mean`, `max` over an index.
    Reduce(ReduceOp),
    /// `softmax[k](x)`.
    Softmax,
    /// `min(a, b)`, `max(a, b)` without an index: element-wise.
    Pairwise(Arith),
    /// `dot(a, b, heads)`.
    Dot,
    /// `attend(q, k, …)`.
    Attend,
    /// `top(K, by: score)`: only the value of a `route:` option.
    Top,
    /// `where(cond, a, b)`: `a` where `cond` is not 0, else `b`.
    Where,
    /// `dropout(x, p: …)`: training only.
    Dropout,
}

/// An option's default, as the checker uses it and the README shows it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Default {
    /// A number.
    Num(f64),
    /// On or off.
    Flag(bool),
    /// A word (`softmax`).
    Word(&'static str),
    /// A bare word among the arguments (`gate`): off unless written.
    Switch,
    /// Computed from other arguments, or absent unless given; the text says which.
    Derived(&'static str),
}

/// A named option of a function (`heads: 4`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Opt {
    /// Its name.
    pub name: &'static str,
    /// Its value when not written.
    pub default: Default,
}

const fn num(name: &'static str, v: f64) -> Opt {
    Opt {
        name,
        default: Default::Num(v),
    }
}

const fn flag(name: &'static str, v: bool) -> Opt {
    Opt {
        name,
        default: Default::Flag(v),
    }
}

const fn switch(name: &'static str) -> Opt {
    Opt {
        name,
        default: Default::Switch,
    }
}

const fn word(name: &'static str, v: &'static str) -> Opt {
    Opt {
        name,
        default: Default::Word(v),
    }
}

const fn derived(name: &'static str, what: &'static str) -> Opt {
    Opt {
        name,
        default: Default::Derived(what),
    }
}

/// One built-in function.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Function {
    /// Its name as written in a rule.
    pub name: &'static str,
    /// How the checker handles it.
    pub form: Form,
    /// Its positional arguments as the README writes them (`x, out`).
    pub positional: &'static str,
    /// Its named options.
    pub options: &'static [Opt],
    /// What it computes, for the README's table.
    pub notes: &'static str,
}

impl Function {
    /// Whether it runs over an index: `sum[k](...)`.
    pub fn over_index(&self) -> bool {
        matches!(self.form, Form::Reduce(_) | Form::Softmax)
    }

    /// The options written `name: value` (switches are bare words).
    pub fn option_names(&self) -> Vec<&'static str> {
        self.options
            .iter()
            .filter(|o| o.default != Default::Switch)
            .map(|o| o.name)
            .collect()
    }

    /// The boolean default of option `name`.
    pub fn flag(&self, name: &str) -> bool {
        match self
            .options
            .iter()
            .find(|o| o.name == name)
            .map(|o| o.default)
        {
            Some(Default::Flag(v)) => v,
            other => unreachable!(
                "{}: option `{name}` has no boolean default: {other:?}",
                self.name
            ),
        }
    }

    /// The numeric default of option `name` (the table's invariant: it has one).
    pub fn num(&self, name: &str) -> f64 {
        match self
            .options
            .iter()
            .find(|o| o.name == name)
            .map(|o| o.default)
        {
            Some(Default::Num(v)) => v,
            other => unreachable!(
                "{}: option `{name}` has no numeric default: {other:?}",
                self.name
            ),
        }
    }

    /// The word default of option `name`.
    pub fn word(&self, name: &str) -> &'static str {
        match self
            .options
            .iter()
            .find(|o| o.name == name)
            .map(|o| o.default)
        {
            Some(Default::Word(w)) => w,
            other => unreachable!(
                "{}: option `{name}` has no word default: {other:?}",
                self.name
            ),
        }
    }

    /// How the README writes a call: `linear(x, out, bias: false)`.
    pub fn usage(&self) -> String {
        let index = if self.over_index() { "[k]" } else { "" };
        let mut args: Vec<String> = vec![self.positional.to_string()];
        for o in self.options {
            args.push(match o.default {
                Default::Num(v) => format!("{}: {}", o.name, number(v)),
                Default::Flag(v) => format!("{}: {v}", o.name),
                Default::Switch => o.name.to_string(),
                Default::Word(w) => format!("{}: {w}", o.name),
                Default::Derived(_) => format!("{}: …", o.name),
            });
        }
        format!("{}{index}({})", self.name, args.join(", "))
    }
}

/// `4`, `1.125`, `0.1`, `1e-5`: as a person writes them.
fn number(v: f64) -> String {
    if v != 0.0 && v.abs() < 1e-3 {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

const NORM_EPS: Opt = num("eps", 1e-5);

const fn activation(name: &'static str, f: Activation, notes: &'static str) -> Function {
    Function {
        name,
        form: Form::Activation(f),
        positional: "x",
        options: &[],
        notes,
    }
}

/// `max(a, b)` without an index: the element-wise form of `max` (the table lists `max` once).
pub static PAIRWISE_MAX: Function = Function {
    name: "max",
    form: Form::Pairwise(Arith::Max),
    positional: "a, b",
    options: &[],
    notes: "element-wise",
};

/// Every built-in function, in the README's order.
pub const FUNCTIONS: &[Function] = &[
    Function {
        name: "linear",
        form: Form::Linear,
        positional: "x, out",
        options: &[flag("bias", false)],
        notes: "its own weight `[out, in]` (and a bias with `bias`)",
    },
    Function {
        name: "rmsnorm",
        form: Form::Norm,
        positional: "x",
        options: &[NORM_EPS],
        notes: "x · rsqrt(mean(x²) + eps) · γ over channels, γ learned",
    },
    Function {
        name: "unitnorm",
        form: Form::Norm,
        positional: "x",
        options: &[],
        notes: "x / ‖x‖ · √c · γ over channels, γ learned",
    },
    Function {
        name: "layernorm",
        form: Form::Norm,
        positional: "x",
        options: &[NORM_EPS],
        notes: "LayerNorm over channels with a learned scale and bias",
    },
    Function {
        name: "feedforward",
        form: Form::FeedForward,
        positional: "x",
        options: &[num("mult", 4.0), NORM_EPS, derived("route", "none")],
        notes: "rmsnorm → linear (mult × channels) → exact GELU → linear (no residual); with `route:` only the picked positions go through it, the others get 0",
    },
    Function {
        name: "concat",
        form: Form::Concat,
        positional: "a, b, ...",
        options: &[],
        notes: "along channels; `linear(concat(…), out)` copies nothing: each part is projected by its own columns of the one weight, where it lives (`x[i]` in a statement over (i, j) at n rows, not n²), and the projections summed",
    },
    Function {
        name: "dot",
        form: Form::Dot,
        positional: "a, b",
        options: &[num("heads", 1.0)],
        notes: "per-head dot products: `heads` channels; where each factor has an index the other lacks (`dot(q[i], k[j])`), batched matrix products, with no broadcast copy of either",
    },
    activation("relu", Activation::Relu, "element-wise"),
    activation("gelu", Activation::Gelu, "element-wise (exact, erf)"),
    activation("silu", Activation::Silu, "element-wise"),
    activation("sigmoid", Activation::Sigmoid, "element-wise"),
    activation("tanh", Activation::Tanh, "element-wise"),
    activation("exp", Activation::Exp, "element-wise"),
    activation("abs", Activation::Abs, "element-wise"),
    activation("square", Activation::Square, "element-wise"),
    activation("sqrt", Activation::Sqrt, "element-wise"),
    activation(
        "leaky_relu",
        Activation::LeakyRelu,
        "element-wise, slope 0.01 below 0",
    ),
    activation("log", Activation::Log, "element-wise, natural"),
    activation(
        "softplus",
        Activation::Softplus,
        "element-wise, `log(1 + exp(x))`",
    ),
    Function {
        name: "min",
        form: Form::Pairwise(Arith::Min),
        positional: "a, b",
        options: &[],
        notes: "element-wise, broadcast like `*`",
    },
    Function {
        name: "where",
        form: Form::Where,
        positional: "cond, a, b",
        options: &[],
        notes: "`a` where `cond` is not 0, else `b` (element-wise, broadcast like `*`); the gradient reaches only the branch taken, so `where(x > 0, log(x), x * 0)` is safe (but for x exactly 0, where log's own gradient is infinite); a NaN `cond` gives NaN",
    },
    Function {
        name: "dropout",
        form: Form::Dropout,
        positional: "x",
        options: &[num("p", 0.1)],
        notes: "training only: zeros each element with probability p (0 ≤ p < 1) and scales the rest by 1/(1 − p), drawn afresh each step from the run's seed (the same under `--shards` and on `--resume`); the identity in evaluation, `forward` and `generate`",
    },
    Function {
        name: "sum",
        form: Form::Reduce(ReduceOp::Sum),
        positional: "x",
        options: &[derived("mask", "none")],
        notes: "over the visible k (see causality below); `mask: adjacency[k, i]` reads only the k the input graph connects (see the input graph below)",
    },
    Function {
        name: "mean",
        form: Form::Reduce(ReduceOp::Mean),
        positional: "x",
        options: &[derived("mask", "none")],
        notes: "over the visible k (`mask:` as for `sum`); 0 where none is visible",
    },
    Function {
        name: "max",
        form: Form::Reduce(ReduceOp::Max),
        positional: "x",
        options: &[derived("mask", "none")],
        notes: "over the visible k (`mask:` as for `sum`); 0 where none is visible; `max(a, b)` without an index: element-wise, like `min`",
    },
    Function {
        name: "logsumexp",
        form: Form::Reduce(ReduceOp::LogSumExp),
        positional: "x",
        options: &[derived("mask", "none")],
        notes: "log Σ exp over the visible k (`mask:` as for `sum`), from the largest term so that it cannot overflow; 0 where none is visible; its gradient is `softmax[k](x)`",
    },
    Function {
        name: "softmax",
        form: Form::Softmax,
        positional: "x",
        options: &[derived("mask", "none")],
        notes: "normalizes over the visible k, which stays free (`mask:` as for `sum`); all 0 where none is visible",
    },
    Function {
        name: "attend",
        form: Form::Attend,
        positional: "query -> key",
        options: &[
            num("heads", 8.0),
            num("dim_head", 64.0),
            derived("out", "the query's channels"),
            derived("scale", "dim_head ** -0.5"),
            word("kernel", "softmax"),
            num("eps", 1e-5),
            derived("bias", "none"),
            derived("value", "the key"),
            switch("talking"),
            switch("gate"),
            derived("gates", "none"),
            derived("route", "none"),
            derived("mask", "none"),
        ],
        notes: "attention; the key's indices pick the pattern (below); `mask: adjacency[j, i]` reads only the keys the input graph connects",
    },
    Function {
        name: "top",
        form: Form::Top,
        positional: "K",
        options: &[
            derived("by", "required: the score"),
            word("per", "auto"),
            num("fetch", 1.125),
            num("iters", 20.0),
            num("eps", 0.1),
            flag("straight", true),
        ],
        notes: "the value of `route:` (of `attend` and `feedforward`) only (routing, below)",
    },
];

/// The built-in function called `name`.
pub fn function(name: &str) -> Option<&'static Function> {
    FUNCTIONS.iter().find(|f| f.name == name)
}

/// The function names, for hints.
pub fn names() -> impl Iterator<Item = &'static str> {
    FUNCTIONS.iter().map(|f| f.name)
}

/// The function table of `dsl/README.md`, one row per function.
pub fn readme_table() -> String {
    let mut out = String::from("| function | notes |\n| --- | --- |\n");
    for f in FUNCTIONS {
        let mut notes = f.notes.to_string();
        let derived: Vec<String> = f
            .options
            .iter()
            .filter_map(|o| match o.default {
                Default::Derived(what) => Some(format!("`{}`: {what}", o.name)),
                _ => None,
            })
            .collect();
        if !derived.is_empty() {
            notes.push_str(&format!("; defaults: {}", derived.join(", ")));
        }
        out.push_str(&format!("| `{}` | {notes} |\n", f.usage()));
    }
    out
}
