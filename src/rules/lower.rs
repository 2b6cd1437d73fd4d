//! Lowering, decided once: how each checked `attend` runs. The checker calls [`attend`] as it
//! builds the op and stores the answer in it; the interpreter and `explain` read that answer
//! and never re-derive it.
//!
//! Also here: the node branches a plan runs as under hyper-connections ([`node_branches`]).
//!
//! What is decided here: the kernel's pattern and its orientation (attention along the second
//! stored index runs as the column pattern on the stored edges, never on a transposed copy),
//! the layouts the kernel reads queries and keys in, whether the key is read in place, whether
//! one input feeds queries, keys and values (the fused edge self-attention), and whether a
//! Taylor kernel may take its linear feature form. Only the last one also depends on the size
//! of the graph, so the plan keeps the rule ([`AttendOp::taylor_form`]) rather than an answer.

use super::ir::*;
use crate::graph::KeyRestriction;
use crate::ops::taylor::{form_costs, TaylorForm};
use crate::spec::EdgePattern;

/// How one `attend` runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttendLowering {
    /// The kernel and the layouts it reads.
    pub core: Core,
    /// Which Taylor forms it may take.
    pub taylor: TaylorLowering,
}

/// Which kernel an attention runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Core {
    /// Node queries over node keys.
    Nodes,
    /// Attention across edges in a pattern.
    Edges(EdgeLowering),
    /// Routed attention among the nodes or edges a soft top-k picks.
    Routed,
    /// Attention of each edge over the paths through a third node (`ops::path`).
    Path,
}

/// Attention across edges: the pattern the kernel runs and the layouts it reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EdgeLowering {
    /// `Row`, `Column` or `All`.
    pub pattern: EdgePattern,
    /// The query's index slots in the order the kernel stores them (its canonical order: the
    /// query is never moved).
    pub query_axes: [Slot; 2],
    /// The key's index slots in the order the kernel reads them.
    pub key_axes: [Slot; 2],
    /// The key is a stored tensor (`edges`, a `let`) whose layout already is `key_axes`: read
    /// without a copy.
    pub key_in_place: bool,
    /// Query and key read one stored tensor, each in place: one input is projected to queries,
    /// keys and values (the fused edge self-attention along rows and columns).
    pub shared_input: bool,
}

/// Which forms a Taylor kernel may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaylorLowering {
    /// Not a Taylor kernel.
    None,
    /// The direct form only: a bias, talking heads or returned probabilities need the weights,
    /// or causal times do not make each query's keys a prefix (all edges in a causal rule).
    Direct,
    /// The cheaper form at the graph's size (see [`AttendOp::taylor_form`]); `causal` adds
    /// the prefix scan to the feature form's cost.
    ByCost {
        /// The kernel is causal.
        causal: bool,
    },
}

/// How an attention's `mask:` restricts its keys, in the layout its kernel reads them.
pub fn key_restriction(a: &AttendOp) -> KeyRestriction {
    let Some(m) = a.mask else {
        return KeyRestriction::None;
    };
    match (a.lowering.core, a.pattern) {
        (Core::Nodes, Pattern::Nodes { key, .. }) => KeyRestriction::Pairs {
            reversed: m.from == key,
        },
        (Core::Edges(e), _) => KeyRestriction::KeyEdges {
            reversed: [m.from, m.to] != e.key_axes,
        },
        _ => unreachable!("the checker allows `mask:` on node and edge-pattern attention only"),
    }
}

/// The lowering of `a` in a rule checked with `causal` (its own `lowering` field is ignored).
pub fn attend(a: &AttendOp, causal: bool) -> AttendLowering {
    let core = match (a.pattern, &a.route) {
        (_, Some(_)) => Core::Routed,
        (Pattern::Nodes { .. }, None) => Core::Nodes,
        (Pattern::Row { q0, q1, key }, None) => {
            // the query is read in its canonical order (slots ascending): when the shared index
            // comes second there, the keys run down a column of the stored layout
            let (pattern, query_axes, key_axes) = if q0 < q1 {
                (EdgePattern::Row, [q0, q1], [q0, key])
            } else {
                (EdgePattern::Column, [q1, q0], [key, q0])
            };
            Core::Edges(edge_lowering(a, pattern, query_axes, key_axes))
        }
        (Pattern::All { q0, q1, k0, k1 }, None) => {
            Core::Edges(edge_lowering(a, EdgePattern::All, [q0, q1], [k0, k1]))
        }
        (Pattern::Path { .. }, None) => Core::Path,
    };
    let taylor = match a.kernel {
        KernelChoice::Softmax => TaylorLowering::None,
        KernelChoice::Taylor { .. } => {
            // the path kernel normalises its weights itself (no feature form)
            let path = matches!(a.pattern, Pattern::Path { .. });
            // a mask on node attention restricts each query to its own keys: no shared state
            let pairs = a.mask.is_some() && matches!(a.pattern, Pattern::Nodes { .. });
            let plain = a.bias.is_none() && !a.talking && !a.probs && !path && !pairs;
            // causal visibility over all edges (time max(i, j)) is not a prefix of the keys
            let prefix = !(causal && matches!(a.pattern, Pattern::All { .. }));
            if plain && prefix {
                TaylorLowering::ByCost { causal }
            } else {
                TaylorLowering::Direct
            }
        }
    };
    AttendLowering { core, taylor }
}

fn edge_lowering(
    a: &AttendOp,
    pattern: EdgePattern,
    query_axes: [Slot; 2],
    key_axes: [Slot; 2],
) -> EdgeLowering {
    let query = stored_read(&a.query);
    let key = stored_read(&a.key);
    let key_in_place = key.is_some_and(|(_, slots)| slots == key_axes);
    let shared_input = key_in_place
        && !a.talking
        && a.value.is_none()
        && matches!((query, key), (Some((q, q_slots)), Some((k, _))) if q == k && q_slots == query_axes);
    EdgeLowering {
        pattern,
        query_axes,
        key_axes,
        key_in_place,
        shared_input,
    }
}

/// A stored tensor read as it is: which one, and its index slots as written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stored {
    State(Domain),
    Let(usize),
}

fn stored_read(node: &Node) -> Option<(Stored, &[Slot])> {
    match &node.op {
        Op::State { domain, slots } => Some((Stored::State(*domain), slots)),
        Op::Let { id, slots } => Some((Stored::Let(*id), slots)),
        _ => None,
    }
}

impl AttendOp {
    /// The sizes of its problems at `n` nodes: `(problems per graph, queries, keys)`.
    pub fn problem_dims(&self, n: usize) -> (usize, usize, usize) {
        match (self.lowering.core, &self.route) {
            (Core::Routed, Some(r)) => {
                let indices = if matches!(self.pattern, Pattern::Nodes { .. }) {
                    1
                } else {
                    2
                };
                let (pickings, k) = r.pickings(indices, n);
                (pickings, k, k)
            }
            (Core::Routed, None) => unreachable!("routed attention has a route"),
            (Core::Nodes, _) => (1, n, n),
            (Core::Path, _) => (1, n * n, n),
            (Core::Edges(e), _) => match e.pattern {
                EdgePattern::All => (1, n * n, n * n),
                _ => (n, n, n),
            },
        }
    }

    /// The Taylor kernel's form at `n` nodes on a device where a multiply-add of the feature
    /// form costs `feature_overhead` of the direct form's (`Backend::taylor_feature_overhead`);
    /// `None` when this is no Taylor kernel, or one that needs the general weights path.
    pub fn taylor_form(&self, n: usize, feature_overhead: f64) -> Option<TaylorForm> {
        let TaylorLowering::ByCost { causal } = self.lowering.taylor else {
            return None;
        };
        let (_, nq, nk) = self.problem_dims(n);
        let (feature, direct) = form_costs(nq, nk, self.dim_head, self.dim_head, causal);
        Some(if feature * feature_overhead < direct {
            TaylorForm::Feature
        } else {
            TaylorForm::Direct
        })
    }
}

/// A branch of a layer's node state, as hyper-connections wrap it: it opens at statement
/// `first` (the first since the previous node update that reads `nodes`, or the update itself)
/// and closes at the node update `update`, which adds its output into the streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeBranch {
    /// The statement it opens at.
    pub first: usize,
    /// The node update it closes at.
    pub update: usize,
}

/// The node branches of `plan`, in order. Reads of `nodes` after the last update lie in no
/// branch (they read the streams' sum). A node update that overwrites (`nodes[i] = …`) has no
/// residual to connect: its statement is the error.
pub fn node_branches(plan: &Plan) -> Result<Vec<NodeBranch>, &PlanStatement> {
    let mut branches = Vec::new();
    let mut open = None;
    for (k, st) in plan.statements.iter().enumerate() {
        let (value, updates_nodes) = match &st.kind {
            PlanKind::Let { value, .. } => (value, false),
            PlanKind::Update { target, value, .. } => (value, *target == Domain::Nodes),
        };
        if open.is_none() && (updates_nodes || value.reads_nodes()) {
            open = Some(k);
        }
        if updates_nodes {
            if let PlanKind::Update {
                accumulate: false, ..
            } = st.kind
            {
                return Err(st);
            }
            branches.push(NodeBranch {
                first: open.take().unwrap_or(k),
                update: k,
            });
        }
    }
    Ok(branches)
}
