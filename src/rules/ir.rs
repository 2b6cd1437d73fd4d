//! The checked program: every expression typed with its index slots and channel count, every
//! parameter site named, every lowering decided. `interp` runs it; `explain` describes it.

pub use super::lower::{AttendLowering, Core, EdgeLowering, TaylorLowering};

/// An index variable of one statement (`i`, `j`, `k`, ...), numbered in order of appearance:
/// the target's indices first.
pub type Slot = usize;

/// What an index runs over and a state tensor holds: the nodes or the edges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Domain {
    /// The node state `nodes[i]`.
    Nodes,
    /// The edge state `edges[i, j]`.
    Edges,
}

/// A value of a rule parameter: a number or a word (`taylor`, `row`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Const {
    /// A number (`16`, `1e-5`).
    Num(f64),
    /// A word (`taylor`, `row`).
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
    /// The rule's name (its header, else its file's stem).
    pub rule: String,
    /// The file it was read from, for messages (`dsl/taylor.rule` for a built-in).
    pub file: String,
    /// Every parameter's value after overrides, in declaration order.
    pub params: Vec<(String, Const)>,
    /// Node channels of the model it was checked against.
    pub dim: usize,
    /// Edge channels of the model it was checked against.
    pub dim_edges: usize,
    /// Whether a node may only see nodes before it (and edges between such nodes).
    pub causal: bool,
    /// `let` bindings: name, domain and channels, by id.
    pub lets: Vec<LetVar>,
    /// The statements in source order; a layer runs them one after another.
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

    /// The first statement that reads the input graph (`adjacency` or a `mask:`), if any: such
    /// a rule runs only on graphs that carry their input edges.
    pub fn input_graph_reader(&self) -> Option<&PlanStatement> {
        self.statements
            .iter()
            .find(|st| st.value().reads_input_graph())
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

/// A `let` binding's type.
#[derive(Clone, Debug)]
pub struct LetVar {
    /// Its name as written.
    pub name: String,
    /// Whether it is indexed like the nodes (one index) or the edges (two).
    pub domain: Domain,
    /// Its channel count.
    pub channels: usize,
}

/// One checked statement: a `let` or an update of `nodes` / `edges`.
#[derive(Clone, Debug)]
pub struct PlanStatement {
    /// The scope of its parameters (label or first binding), empty when it owns none.
    pub name: String,
    /// Its source text, for `explain`.
    pub source: String,
    /// Its line in the rule file.
    pub line: usize,
    /// Index names by slot.
    pub slots: Vec<String>,
    /// What it binds or writes, with the expression that computes it.
    pub kind: PlanKind,
}

/// What a statement does with its value.
#[derive(Clone, Debug)]
pub enum PlanKind {
    /// Binds let-variables: `(id, slots in the binding's order)`. Two outputs only for an
    /// attention that returns its probabilities.
    Let {
        /// Each bound let-variable's id with its index slots.
        outputs: Vec<(usize, Vec<Slot>)>,
        /// The value bound.
        value: Node,
    },
    /// Writes `nodes` or `edges` (the diagonal only when `diagonal`).
    Update {
        /// `nodes` or `edges`.
        target: Domain,
        /// The target's index slots as written.
        slots: Vec<Slot>,
        /// Whether only the diagonal `edges[i, i]` is written.
        diagonal: bool,
        /// `+=` (a residual added to the state) rather than `=` (the state replaced).
        accumulate: bool,
        /// The value written.
        value: Node,
    },
}

impl PlanStatement {
    /// The expression it computes.
    pub fn value(&self) -> &Node {
        match &self.kind {
            PlanKind::Let { value, .. } | PlanKind::Update { value, .. } => value,
        }
    }
}

/// A typed expression: its free index slots (ascending) and channels.
#[derive(Clone, Debug)]
pub struct Node {
    /// What computes it.
    pub op: Op,
    /// Its free index slots, ascending.
    pub slots: Vec<Slot>,
    /// Its channel count.
    pub channels: usize,
}

impl Node {
    /// Its free index slots that `other` does not have.
    pub fn own_slots(&self, other: &Node) -> Vec<Slot> {
        self.slots
            .iter()
            .copied()
            .filter(|s| !other.slots.contains(s))
            .collect()
    }

    /// Its free index slots other than `k`.
    pub fn slots_besides(&self, k: Slot) -> Vec<Slot> {
        self.slots.iter().copied().filter(|&s| s != k).collect()
    }

    /// The expressions this one is computed from, in order.
    pub fn children(&self) -> Vec<&Node> {
        match &self.op {
            Op::State { .. } | Op::Let { .. } | Op::Adjacency { .. } => vec![],
            Op::Binary { lhs, rhs, .. } => vec![lhs, rhs],
            Op::Where { cond, yes, no } => vec![cond, yes, no],
            Op::Affine { x, .. }
            | Op::Pow { x, .. }
            | Op::Dropout { x, .. }
            | Op::Act { x, .. }
            | Op::Linear { x, .. }
            | Op::Norm { x, .. }
            | Op::FeedForward { x, route: None, .. }
            | Op::Reduce { x, .. }
            | Op::Softmax { x, .. } => vec![x],
            Op::FeedForward {
                x, route: Some(r), ..
            } => vec![x, &r.score],
            Op::Dot { a, b, .. } => vec![a, b],
            Op::Concat(parts) => parts.iter().collect(),
            Op::Attend(a) => {
                let mut out = vec![&a.query, &a.key];
                out.extend(&a.value);
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

    /// Whether it reads the input graph anywhere (`adjacency`, or a `mask:`).
    pub fn reads_input_graph(&self) -> bool {
        let here = match &self.op {
            Op::Adjacency { .. } => true,
            Op::Reduce { mask, .. } | Op::Softmax { mask, .. } => mask.is_some(),
            Op::Attend(a) => a.mask.is_some(),
            _ => false,
        };
        here || self.children().iter().any(|c| c.reads_input_graph())
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

/// An element-wise arithmetic operator between two tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arith {
    /// `a + b`.
    Add,
    /// `a - b`.
    Sub,
    /// `a * b`.
    Mul,
    /// `a / b`.
    Div,
    /// `min(a, b)`, element-wise.
    Min,
    /// `max(a, b)`, element-wise.
    Max,
}

/// An element-wise function of one tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `relu(x)`.
    Relu,
    /// `gelu(x)` (the tanh approximation).
    Gelu,
    /// `silu(x) = x · sigmoid(x)`.
    Silu,
    /// `sigmoid(x)`.
    Sigmoid,
    /// `tanh(x)`.
    Tanh,
    /// `exp(x)`.
    Exp,
    /// `abs(x)`.
    Abs,
    /// `square(x) = x²`.
    Square,
    /// `sqrt(x)`.
    Sqrt,
    /// `leaky_relu(x)`: `x` above 0, `0.01 · x` below (PyTorch's slope).
    LeakyRelu,
    /// `log(x)`, the natural logarithm (NaN below 0 is reported when it happens).
    Log,
    /// `softplus(x) = log(1 + exp(x))`, computed without overflow.
    Softplus,
    /// 1 where `x > 0` (strict) or `x ≥ 0`, else 0; NaN stays NaN; no gradient. What a
    /// comparison `a > b` lowers to (`step(a - b)`).
    Step {
        /// `>` rather than `≥`.
        strict: bool,
    },
}

/// Which normalisation a `norm` site applies over the channels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NormKind {
    /// `x · rsqrt(mean(x²) + eps) · γ`.
    Rms {
        /// Added to the mean square before the square root.
        eps: f64,
    },
    /// `x / ‖x‖ · √c · γ` (the Taylor attention's prenorm).
    Unit,
    /// `(x − mean) · rsqrt(var + eps) · γ + β`.
    Layer {
        /// Added to the variance before the square root.
        eps: f64,
    },
}

/// How a reduction combines the values along its index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    /// `sum[k](…)`.
    Sum,
    /// `mean[k](…)` (over the visible keys only).
    Mean,
    /// `max[k](…)`.
    Max,
    /// `logsumexp[k](…)`: `log Σ exp`, taken from the largest term so that it cannot overflow.
    LogSumExp,
}

/// The operation that computes a [`Node`], with its operands.
#[derive(Clone, Debug)]
pub enum Op {
    /// `nodes[i]`, `edges[i, j]`, `edges[j, i]`, `edges[i, i]` (the diagonal): slots as written.
    State {
        /// Which state.
        domain: Domain,
        /// Its index slots as written.
        slots: Vec<Slot>,
    },
    /// `adjacency[a, b]`: 1 where the input graph has edge a → b, else 0 (one channel, no
    /// gradient).
    Adjacency {
        /// Its index slots as written.
        slots: Vec<Slot>,
    },
    /// A `let` variable read back.
    Let {
        /// The binding's id in [`Plan::lets`].
        id: usize,
        /// Its index slots as written.
        slots: Vec<Slot>,
    },
    /// An element-wise operator, broadcasting over the index slots the operands do not share.
    Binary {
        /// Which operator.
        op: Arith,
        /// The left operand.
        lhs: Box<Node>,
        /// The right operand.
        rhs: Box<Node>,
    },
    /// `where(cond, yes, no)`: `yes` where `cond` is not 0, else `no`, broadcasting like
    /// [`Op::Binary`]; no gradient reaches `cond`.
    Where {
        /// The condition.
        cond: Box<Node>,
        /// Taken where the condition is not 0.
        yes: Box<Node>,
        /// Taken where it is 0.
        no: Box<Node>,
    },
    /// `x · mul + add` (a tensor with scalars).
    Affine {
        /// The operand.
        x: Box<Node>,
        /// Multiplied first.
        mul: f64,
        /// Then added.
        add: f64,
    },
    /// `x ** exponent` with a constant exponent.
    Pow {
        /// The base.
        x: Box<Node>,
        /// The constant exponent.
        exponent: f64,
    },
    /// An element-wise function.
    Act {
        /// Which function.
        f: Activation,
        /// The operand.
        x: Box<Node>,
    },
    /// A learned linear map over the channels.
    Linear {
        /// The parameter site (the weight's name prefix).
        site: String,
        /// The input.
        x: Box<Node>,
        /// Output channels.
        outputs: usize,
        /// Whether it has a bias.
        bias: bool,
    },
    /// A normalisation over the channels, with a learned gain.
    Norm {
        /// The parameter site.
        site: String,
        /// Which normalisation.
        kind: NormKind,
        /// The input.
        x: Box<Node>,
    },
    /// A two-layer GELU feedforward with its own prenorm.
    FeedForward {
        /// The parameter site.
        site: String,
        /// The input.
        x: Box<Node>,
        /// Hidden channels.
        hidden: usize,
        /// The prenorm's epsilon.
        eps: f64,
        /// Routing, if only some positions go through it (the others get zeros).
        route: Option<Box<Route>>,
    },
    /// Dropout while training (the identity otherwise): keep each element with probability
    /// 1 − p, scaled by 1/(1 − p).
    Dropout {
        /// The input.
        x: Box<Node>,
        /// The probability of dropping an element.
        p: f64,
        /// Which dropout of the rule it is (in checking order): its draws are its own.
        stream: usize,
    },
    /// The operands' channels side by side (their index slots broadcast).
    Concat(Vec<Node>),
    /// A masked reduction over `slot`; `matmul` when the operand is a product of two factors
    /// whose other indices are disjoint (computed as batched matrix products, never as an
    /// element-wise product over all indices).
    Reduce {
        /// How values combine.
        op: ReduceOp,
        /// The index reduced over (no longer free).
        slot: Slot,
        /// The operand.
        x: Box<Node>,
        /// Computed as batched matrix products.
        matmul: bool,
        /// `mask:`: only the positions the input graph connects.
        mask: Option<AdjacencyMask>,
    },
    /// A masked softmax over `slot` (which stays free).
    Softmax {
        /// The index normalised over.
        slot: Slot,
        /// The logits.
        x: Box<Node>,
        /// `mask:`: only the positions the input graph connects.
        mask: Option<AdjacencyMask>,
    },
    /// Per-head dot products of two tensors: `heads` channels. Where each factor has an index
    /// the other lacks ([`dot_is_matmul`]), batched matrix products; else element-wise.
    Dot {
        /// The left factor.
        a: Box<Node>,
        /// The right factor.
        b: Box<Node>,
        /// Heads: each takes an equal share of the channels.
        heads: usize,
    },
    /// An attention (`attend(…)`) with its lowering decided.
    Attend(Box<AttendOp>),
}

/// A `mask: adjacency[from, to]` option: a position is read only where the input graph has the
/// edge from the node at slot `from` to the node at slot `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdjacencyMask {
    /// The edge's source index.
    pub from: Slot,
    /// The edge's target index.
    pub to: Slot,
}

/// How the key indices of an attention relate to its query's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// Node queries `[q]` over node keys `[k]` (also the diagonal `edges[k, k]`).
    Nodes {
        /// The query's index.
        query: Slot,
        /// The key's index.
        key: Slot,
    },
    /// Edge queries `[q0, q1]` over the keys `[q0, k]` sharing their first index in this frame
    /// (a row when `q0` is the target's first index, a column otherwise).
    Row {
        /// The query's first index, shared with the key.
        q0: Slot,
        /// The query's second index.
        q1: Slot,
        /// The key's second index.
        key: Slot,
    },
    /// Edge (first, last) over the paths first → middle → last: the query reads edge
    /// (first, middle), the key edge (middle, last), each in either order as written.
    Path {
        /// The query's index in scope: the output's first.
        first: Slot,
        /// The new index, summed over.
        middle: Slot,
        /// The key's index in scope: the output's second.
        last: Slot,
    },
    /// Edge queries over all edges `[k0, k1]`.
    All {
        /// The query's first index.
        q0: Slot,
        /// The query's second index.
        q1: Slot,
        /// The key's first index.
        k0: Slot,
        /// The key's second index.
        k1: Slot,
    },
}

/// The attention kernel: exact softmax or the linear-time Taylor approximation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KernelChoice {
    /// `softmax(q·k · scale)` over the visible keys.
    Softmax,
    /// The second-order Taylor expansion of `exp`, normalised (linear in the number of keys).
    Taylor {
        /// The least the normaliser (the denominator) may be.
        eps: f64,
    },
}

/// Coordinate-descent routing (CoLT5's soft top-k): which keys or queries an attention keeps.
#[derive(Clone, Debug)]
pub struct Route {
    /// How many are kept.
    pub k: usize,
    /// The per-edge routing score (one channel).
    pub score: Node,
    /// The index held fixed while picking: each of its values picks its own top `k` among the
    /// rest (a row of edges, say); `None` picks among all positions of a graph.
    pub within: Option<Slot>,
    /// The coordinate descent solves for `k · fetch_ratio` picks (CoLT5 uses 9/8), then keeps
    /// the top `k`.
    pub fetch_ratio: f64,
    /// Coordinate-descent iterations.
    pub n_iters: usize,
    /// The coordinate descent's entropy regulariser.
    pub eps: f64,
    /// Scale the routed outputs by straight-through gates (value 1, the soft scores' gradient,
    /// as CoLT5) rather than by the soft scores themselves.
    pub straight: bool,
}

impl Route {
    /// How it picks in a routed tensor with `indices` free (1: nodes, 2: edges) at `n` nodes:
    /// `(pickings per graph, picks in each)`.
    pub fn pickings(&self, indices: usize, n: usize) -> (usize, usize) {
        match (self.within, indices) {
            (Some(_), _) => (n, self.k.min(n)),
            (None, 1) => (1, self.k.min(n)),
            (None, _) => (1, self.k.min(n * n)),
        }
    }
}

/// Per-head output gates: `sigmoid(logits)`.
#[derive(Clone, Debug)]
pub enum Gates {
    /// Logits from an expression over the query's indices.
    Expr(Node),
    /// The `gate` flag: a linear map (with bias) of the query input, parameters under `site`.
    FromQuery {
        /// The gate's parameter site.
        site: String,
    },
}

/// An attention expression: queries, keys, heads, kernel and every option of `attend(…)`.
#[derive(Clone, Debug)]
pub struct AttendOp {
    /// The parameter site (projections, gates, talking heads).
    pub site: String,
    /// Which keys each query sees.
    pub pattern: Pattern,
    /// The query input (projected to queries under `site`).
    pub query: Node,
    /// The key input (projected to keys, and to values unless `value` is given, under `site`).
    pub key: Node,
    /// The value input, read at the keys' positions (`value:`), when it is not the key.
    pub value: Option<Node>,
    /// Attention heads.
    pub heads: usize,
    /// Channels per head.
    pub dim_head: usize,
    /// Output channels (after the output projection).
    pub outputs: usize,
    /// Multiplies the dot products before the kernel.
    pub scale: f64,
    /// Exact softmax or Taylor.
    pub kernel: KernelChoice,
    /// Additive bias per head over query and key indices.
    pub bias: Option<Node>,
    /// Per-head output gates, if any.
    pub gates: Option<Gates>,
    /// Whether the heads' scores are mixed before and after the softmax (talking heads).
    pub talking: bool,
    /// Routing, if the attention keeps only some of its edges.
    pub route: Option<Route>,
    /// `mask:`: keys only where the input graph has the edge (over query and key indices).
    pub mask: Option<AdjacencyMask>,
    /// Also return the probabilities (node attention only) as an edge tensor `[q, k]`.
    pub probs: bool,
    /// How it runs, decided by [`super::lower::attend`] when it is checked.
    pub lowering: AttendLowering,
}

/// Whether `dot(a, b)` runs as batched matrix products: each factor has an index the other
/// lacks, so that the element-wise form would broadcast both over each other's indices.
pub fn dot_is_matmul(a: &Node, b: &Node) -> bool {
    !a.own_slots(b).is_empty() && !b.own_slots(a).is_empty()
}
