//! The checked program: every expression typed with its index slots and channel count, every
//! parameter site named, every lowering decided. `interp` runs it; `explain` describes it.

pub use super::lower::{AttendLowering, Core, EdgeLowering, TaylorLowering};

/// An index variable of one statement (`i`, `j`, `k`, ...), numbered in order of appearance:
/// the target's indices first.
pub type Slot = usize;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Domain {
    Nodes,
    Edges,
}

/// A value of a rule parameter: a number or a word (`taylor`, `row`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Const {
    Num(f64),
    Word(String),
}

impl std::fmt::Display for Const {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Const::Num(x) => write!(f, "{x}"),
            Const::Word(w) => write!(f, "{w}"),
        }
    }
}

/// A rule checked against a model's sizes, ready to instantiate and run.
#[derive(Clone, Debug)]
pub struct Plan {
    pub rule: String,
    pub file: String,
    /// Every parameter's value after overrides, in declaration order.
    pub params: Vec<(String, Const)>,
    pub dim: usize,
    pub dim_edges: usize,
    pub causal: bool,
    /// `let` bindings: name, domain and channels, by id.
    pub lets: Vec<LetVar>,
    pub statements: Vec<PlanStatement>,
}

impl Plan {
    /// Where a statement is: `rule `taylor` (dsl/taylor.rule:24, `rows`)`.
    pub fn place(&self, st: &PlanStatement) -> String {
        let name = if st.name.is_empty() {
            String::new()
        } else {
            format!(", `{}`", st.name)
        };
        format!("rule `{}` ({}:{}{name})", self.rule, self.file, st.line)
    }

    /// Every parameter's value: `heads = 4, dim_head = 16` (`none` for a rule without any).
    pub fn parameter_list(&self) -> String {
        if self.params.is_empty() {
            return "none".into();
        }
        let params: Vec<String> = self
            .params
            .iter()
            .map(|(k, v)| format!("{k} = {v}"))
            .collect();
        params.join(", ")
    }
}

#[derive(Clone, Debug)]
pub struct LetVar {
    pub name: String,
    pub domain: Domain,
    pub channels: usize,
}

#[derive(Clone, Debug)]
pub struct PlanStatement {
    /// The scope of its parameters (label or first binding), empty when it owns none.
    pub name: String,
    /// Its source text, for `explain`.
    pub source: String,
    pub line: usize,
    /// Index names by slot.
    pub slots: Vec<String>,
    pub kind: PlanKind,
}

#[derive(Clone, Debug)]
pub enum PlanKind {
    /// Binds let-variables: `(id, slots in the binding's order)`. Two outputs only for an
    /// attention that returns its probabilities.
    Let {
        outputs: Vec<(usize, Vec<Slot>)>,
        value: Node,
    },
    /// Writes `nodes` or `edges` (the diagonal only when `diagonal`).
    Update {
        target: Domain,
        slots: Vec<Slot>,
        diagonal: bool,
        accumulate: bool,
        value: Node,
    },
}

/// A typed expression: its free index slots (ascending) and channels.
#[derive(Clone, Debug)]
pub struct Node {
    pub op: Op,
    pub slots: Vec<Slot>,
    pub channels: usize,
}

impl Node {
    /// The expressions this one is computed from, in order.
    pub fn children(&self) -> Vec<&Node> {
        match &self.op {
            Op::State { .. } | Op::Let { .. } => vec![],
            Op::Binary { lhs, rhs, .. } => vec![lhs, rhs],
            Op::Affine { x, .. }
            | Op::Pow { x, .. }
            | Op::Act { x, .. }
            | Op::Linear { x, .. }
            | Op::Norm { x, .. }
            | Op::FeedForward { x, .. }
            | Op::Reduce { x, .. }
            | Op::Softmax { x, .. } => vec![x],
            Op::Dot { a, b, .. } => vec![a, b],
            Op::Concat(parts) => parts.iter().collect(),
            Op::Attend(a) => {
                let mut out = vec![&a.query, &a.key];
                out.extend(&a.bias);
                if let Some(Gates::Expr(g)) = &a.gates {
                    out.push(g);
                }
                if let Some(r) = &a.route {
                    out.push(&r.score);
                }
                out
            }
        }
    }

    /// Whether it reads the node state anywhere.
    pub fn reads_nodes(&self) -> bool {
        matches!(
            self.op,
            Op::State {
                domain: Domain::Nodes,
                ..
            }
        ) || self.children().iter().any(|c| c.reads_nodes())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arith {
    Add,
    Sub,
    Mul,
    Div,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Relu,
    Gelu,
    Silu,
    Sigmoid,
    Tanh,
    Exp,
    Abs,
    Square,
    Sqrt,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NormKind {
    /// `x · rsqrt(mean(x²) + eps) · γ`.
    Rms {
        eps: f64,
    },
    /// `x / ‖x‖ · √c · γ` (the Taylor attention's prenorm).
    Unit,
    Layer {
        eps: f64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Mean,
    Max,
}

#[derive(Clone, Debug)]
pub enum Op {
    /// `nodes[i]`, `edges[i, j]`, `edges[j, i]`, `edges[i, i]` (the diagonal): slots as written.
    State {
        domain: Domain,
        slots: Vec<Slot>,
    },
    Let {
        id: usize,
        slots: Vec<Slot>,
    },
    Binary {
        op: Arith,
        lhs: Box<Node>,
        rhs: Box<Node>,
    },
    /// `x · mul + add` (a tensor with scalars).
    Affine {
        x: Box<Node>,
        mul: f64,
        add: f64,
    },
    Pow {
        x: Box<Node>,
        exponent: f64,
    },
    Act {
        f: Activation,
        x: Box<Node>,
    },
    Linear {
        site: String,
        x: Box<Node>,
        outputs: usize,
        bias: bool,
    },
    Norm {
        site: String,
        kind: NormKind,
        x: Box<Node>,
    },
    FeedForward {
        site: String,
        x: Box<Node>,
        hidden: usize,
        eps: f64,
    },
    Concat(Vec<Node>),
    /// A masked reduction over `slot`; `matmul` when the operand is a product of two factors
    /// whose other indices are disjoint (computed as batched matrix products, never as an
    /// element-wise product over all indices).
    Reduce {
        op: ReduceOp,
        slot: Slot,
        x: Box<Node>,
        matmul: bool,
    },
    /// A masked softmax over `slot` (which stays free).
    Softmax {
        slot: Slot,
        x: Box<Node>,
    },
    /// Per-head dot products of two tensors: `heads` channels.
    Dot {
        a: Box<Node>,
        b: Box<Node>,
        heads: usize,
    },
    Attend(Box<AttendOp>),
}

/// How the key indices of an attention relate to its query's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// Node queries `[q]` over node keys `[k]` (also the diagonal `edges[k, k]`).
    Nodes { query: Slot, key: Slot },
    /// Edge queries `[q0, q1]` over the keys `[q0, k]` sharing their first index in this frame
    /// (a row when `q0` is the target's first index, a column otherwise).
    Row { q0: Slot, q1: Slot, key: Slot },
    /// Edge queries over all edges `[k0, k1]`.
    All {
        q0: Slot,
        q1: Slot,
        k0: Slot,
        k1: Slot,
    },
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KernelChoice {
    Softmax,
    Taylor { eps: f64 },
}

#[derive(Clone, Debug)]
pub struct Route {
    pub k: usize,
    pub score: Node,
    /// Pick per row (each row's top k, attention within the row) instead of over all edges.
    pub per_row: bool,
    pub fetch_ratio: f64,
    pub n_iters: usize,
    pub eps: f64,
    /// Scale the routed outputs by straight-through gates (value 1, the soft scores' gradient,
    /// as CoLT5) rather than by the soft scores themselves.
    pub straight: bool,
}

/// Per-head output gates: `sigmoid(logits)`.
#[derive(Clone, Debug)]
pub enum Gates {
    /// Logits from an expression over the query's indices.
    Expr(Node),
    /// The `gate` flag: a linear map (with bias) of the query input, parameters under `site`.
    FromQuery { site: String },
}

#[derive(Clone, Debug)]
pub struct AttendOp {
    pub site: String,
    pub pattern: Pattern,
    pub query: Node,
    pub key: Node,
    pub heads: usize,
    pub dim_head: usize,
    pub outputs: usize,
    pub scale: f64,
    pub kernel: KernelChoice,
    /// Additive bias per head over query and key indices.
    pub bias: Option<Node>,
    pub gates: Option<Gates>,
    pub talking: bool,
    pub route: Option<Route>,
    /// Also return the probabilities (node attention only) as an edge tensor `[q, k]`.
    pub probs: bool,
    /// How it runs, decided by [`super::lower::attend`] when it is checked.
    pub lowering: AttendLowering,
}
