//! `explain`: a plan statement by statement — the lowering chosen for each operation, its output
//! shape, parameters, FLOPs and activation memory at a given n, and how each grows with n
//! (the exponent of cost(2n)/cost(n)).

use std::fmt::Write;

use super::check::matmul_form;
use super::ir::*;
use crate::backend::CPU_TAYLOR_FEATURE_OVERHEAD;
use crate::ops::taylor::{form_costs, TaylorForm};
use crate::spec::EdgePattern;

/// The cost of one operation at a given size.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cost {
    /// Multiply-adds counted as two.
    pub flops: f64,
    /// Activation elements kept for the backward pass.
    pub elements: f64,
    /// Parameters.
    pub params: f64,
}

impl std::ops::AddAssign for Cost {
    fn add_assign(&mut self, o: Cost) {
        self.flops += o.flops;
        self.elements += o.elements;
        self.params += o.params;
    }
}

/// One explained operation.
struct Row {
    depth: usize,
    what: String,
    lowering: String,
    shape: String,
    cost: Cost,
    cost_2n: Cost,
}

/// Total cost of a plan on a batch of `batch` graphs with `n` nodes.
pub fn plan_cost(plan: &Plan, batch: usize, n: usize) -> Cost {
    let mut total = Cost::default();
    for st in &plan.statements {
        let mut rows = Vec::new();
        statement_rows(plan, st, batch, n, &mut rows);
        for r in rows {
            total += r.cost;
        }
    }
    total
}

/// The explanation of `plan` at `n` nodes per graph and `batch` graphs, as text.
pub fn explain(plan: &Plan, batch: usize, n: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "rule `{}` ({})", plan.rule, plan.file);
    let _ = writeln!(
        out,
        "model: dim {}, dim_edges {}, causal {}; rule parameters: {}",
        plan.dim,
        plan.dim_edges,
        if plan.causal { "yes" } else { "no" },
        plan.parameter_list()
    );
    let _ = writeln!(
        out,
        "at n = {n}, batch {batch}; memory = activations kept for backward, f32; growth = exponent p of cost ∝ n^p near this n\n"
    );
    let _ = writeln!(
        out,
        "{:<44} {:<58} {:>20} {:>9} {:>9} {:>10} {:>9}",
        "operation", "lowering", "shape", "params", "FLOPs", "memory", "growth"
    );
    let mut total = Cost::default();
    let mut total_2n = Cost::default();
    for st in &plan.statements {
        let _ = writeln!(out, "line {}: {}", st.line, st.source);
        let mut rows = Vec::new();
        statement_rows(plan, st, batch, n, &mut rows);
        for r in rows {
            let label = format!("{}{}", "  ".repeat(r.depth + 1), r.what);
            let _ = writeln!(
                out,
                "{:<44} {:<58} {:>20} {:>9} {:>9} {:>10} {:>9}",
                clip(&label, 44),
                clip(&r.lowering, 58),
                r.shape,
                count(r.cost.params),
                count(r.cost.flops),
                bytes(r.cost.elements * 4.0),
                growth(
                    r.cost.flops.max(r.cost.elements),
                    r.cost_2n.flops.max(r.cost_2n.elements)
                ),
            );
            total += r.cost;
            total_2n += r.cost_2n;
        }
    }
    let _ = writeln!(
        out,
        "\ntotal: {} parameters, {} FLOPs (growth {}), {} of activations (growth {})",
        count(total.params),
        count(total.flops),
        growth(total.flops, total_2n.flops),
        bytes(total.elements * 4.0),
        growth(total.elements, total_2n.elements),
    );
    out
}

fn clip(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(width - 1).collect();
        t.push('…');
        t
    }
}

fn count(x: f64) -> String {
    if x == 0.0 {
        "-".into()
    } else if x < 1e3 {
        format!("{x:.0}")
    } else if x < 1e6 {
        format!("{:.1}k", x / 1e3)
    } else if x < 1e9 {
        format!("{:.1}M", x / 1e6)
    } else if x < 1e12 {
        format!("{:.1}G", x / 1e9)
    } else {
        format!("{:.1}T", x / 1e12)
    }
}

fn bytes(x: f64) -> String {
    if x == 0.0 {
        "-".into()
    } else if x < 1024.0 * 1024.0 {
        format!("{:.1} KiB", x / 1024.0)
    } else if x < 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} MiB", x / 1024.0 / 1024.0)
    } else {
        format!("{:.2} GiB", x / 1024.0 / 1024.0 / 1024.0)
    }
}

fn growth(at_n: f64, at_2n: f64) -> String {
    if at_n <= 0.0 || at_2n <= 0.0 {
        "-".into()
    } else {
        format!("n^{:.1}", (at_2n / at_n).log2())
    }
}

fn statement_rows(plan: &Plan, st: &PlanStatement, b: usize, n: usize, rows: &mut Vec<Row>) {
    let (value, target) = match &st.kind {
        PlanKind::Let { outputs, value } => {
            let names: Vec<String> = outputs
                .iter()
                .map(|(id, slots)| format!("{}[{}]", plan.lets[*id].name, names(st, slots)))
                .collect();
            (value, format!("bind {}", names.join(", ")))
        }
        PlanKind::Update {
            target,
            slots,
            diagonal,
            accumulate,
            ..
        } => {
            let t = if *target == Domain::Nodes {
                "nodes"
            } else {
                "edges"
            };
            let how = if *accumulate { "add into" } else { "write" };
            let diag = if *diagonal { " (diagonal only)" } else { "" };
            (
                match &st.kind {
                    PlanKind::Update { value, .. } => value,
                    _ => unreachable!(),
                },
                format!("{how} {t}[{}]{diag}", names(st, slots)),
            )
        }
    };
    let first = rows.len();
    node_rows(plan, st, value, b, n, 0, rows);
    // a function's argument read twice in its body runs twice but owns its parameters once
    let prefix = format!("{}.", st.name);
    let mut seen = std::collections::HashSet::new();
    for row in &mut rows[first..] {
        if row.what.starts_with(&prefix) && !seen.insert(row.what.clone()) {
            row.what.push_str(" (again)");
            row.cost.params = 0.0;
            row.cost_2n.params = 0.0;
        }
    }
    let size = |m: usize| elements(b, m, &value.slots, value.channels);
    let (lowering, adds) = match &st.kind {
        PlanKind::Let { .. } => ("stored for later statements", false),
        PlanKind::Update {
            accumulate: true, ..
        } => ("element-wise add", true),
        PlanKind::Update { .. } => ("overwrite", false),
    };
    let cost = |m: usize| Cost {
        flops: if adds { size(m) } else { 0.0 },
        elements: 0.0,
        params: 0.0,
    };
    rows.push(Row {
        depth: 0,
        what: target,
        lowering: lowering.into(),
        shape: shape(b, n, value),
        cost: cost(n),
        cost_2n: cost(2 * n),
    });
}

fn names(st: &PlanStatement, slots: &[Slot]) -> String {
    slots
        .iter()
        .map(|&s| st.slots[s].as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn elements(b: usize, n: usize, slots: &[Slot], channels: usize) -> f64 {
    b as f64 * (n as f64).powi(slots.len() as i32) * channels as f64
}

fn shape(b: usize, n: usize, node: &Node) -> String {
    let mut dims = vec![b.to_string()];
    dims.extend(node.slots.iter().map(|_| n.to_string()));
    dims.push(node.channels.to_string());
    format!("[{}]", dims.join(", "))
}

fn node_rows(
    plan: &Plan,
    st: &PlanStatement,
    node: &Node,
    b: usize,
    n: usize,
    depth: usize,
    rows: &mut Vec<Row>,
) {
    let mk = |what: String, lowering: String, cost: &dyn Fn(usize) -> Cost| Row {
        depth,
        what,
        lowering,
        shape: shape(b, n, node),
        cost: cost(n),
        cost_2n: cost(2 * n),
    };
    let out = |m: usize| elements(b, m, &node.slots, node.channels);
    let rows_of = |m: usize, x: &Node| elements(b, m, &x.slots, 1);
    match &node.op {
        Op::State { slots, .. } | Op::Let { slots, .. } if is_plain(slots) => {}
        Op::State { slots, .. } | Op::Let { slots, .. } => {
            let kind = if slots.len() == 2 && slots[0] == slots[1] {
                "the diagonal"
            } else {
                "transposed"
            };
            rows.push(mk(
                format!("read {}", reference(plan, st, node)),
                format!("gather ({kind})"),
                &|m| Cost {
                    flops: 0.0,
                    elements: out(m),
                    params: 0.0,
                },
            ));
        }
        Op::Adjacency { .. } => {
            rows.push(mk(
                format!("read {}", reference(plan, st, node)),
                "the input graph's edges as 0/1 (no gradient)".into(),
                &|m| Cost {
                    flops: 0.0,
                    elements: out(m),
                    params: 0.0,
                },
            ));
        }
        Op::Where { cond, yes, no } => {
            for part in [cond, yes, no] {
                node_rows(plan, st, part, b, n, depth + 1, rows);
            }
            rows.push(mk("where".into(), "element-wise select".into(), &|m| {
                Cost {
                    flops: out(m),
                    elements: out(m),
                    params: 0.0,
                }
            }));
        }
        Op::Binary { op, lhs, rhs } => {
            node_rows(plan, st, lhs, b, n, depth + 1, rows);
            node_rows(plan, st, rhs, b, n, depth + 1, rows);
            let sym = match op {
                Arith::Add => "+",
                Arith::Sub => "-",
                Arith::Mul => "×",
                Arith::Div => "/",
                Arith::Min => "min",
                Arith::Max => "max",
            };
            let mut how = format!("element-wise {sym}");
            if lhs.slots != rhs.slots {
                how.push_str(", broadcast over indices");
            }
            if lhs.channels != rhs.channels {
                how.push_str(if lhs.channels.min(rhs.channels) == 1 {
                    ", one channel broadcast"
                } else {
                    ", per-head broadcast"
                });
            }
            rows.push(mk(sym.to_string(), how, &|m| Cost {
                flops: out(m),
                elements: out(m),
                params: 0.0,
            }));
        }
        Op::Dropout { x, p, .. } => {
            node_rows(plan, st, x, b, n, depth + 1, rows);
            rows.push(mk(
                "dropout".into(),
                format!("element-wise, p = {p}, training only"),
                &|m| Cost {
                    flops: out(m),
                    elements: out(m),
                    params: 0.0,
                },
            ));
        }
        Op::Affine { x, .. } | Op::Pow { x, .. } => {
            node_rows(plan, st, x, b, n, depth + 1, rows);
            rows.push(mk(
                "scalar arithmetic".into(),
                "element-wise".into(),
                &|m| Cost {
                    flops: out(m),
                    elements: out(m),
                    params: 0.0,
                },
            ));
        }
        Op::Act { f, x } => {
            node_rows(plan, st, x, b, n, depth + 1, rows);
            let name = match f {
                Activation::Step { strict: true } => "step (comparison >)".into(),
                Activation::Step { strict: false } => "step (comparison ≥)".into(),
                f => format!("{f:?}").to_lowercase(),
            };
            rows.push(mk(name, "element-wise".into(), &|m| Cost {
                flops: 4.0 * out(m),
                elements: out(m),
                params: 0.0,
            }));
        }
        Op::Linear {
            site,
            x,
            outputs,
            bias,
        } if matches!(x.op, Op::Concat(_)) => {
            // as the interpreter runs it: each part projected by its columns of the weight
            // where it lives, the projections summed (no concatenation)
            let Op::Concat(parts) = &x.op else {
                unreachable!("matched above")
            };
            let o = *outputs;
            let params = (x.channels * o + if *bias { o } else { 0 }) as f64;
            let mut first = 0;
            for (k, part) in parts.iter().enumerate() {
                node_rows(plan, st, part, b, n, depth + 2, rows);
                let c = part.channels;
                let projected = Node {
                    channels: o,
                    ..part.clone()
                };
                let plus_bias = if k == 0 && *bias { " + bias" } else { "" };
                let cost = |m: usize| Cost {
                    flops: 2.0 * rows_of(m, part) * (c * o) as f64,
                    elements: elements(b, m, &part.slots, o),
                    params: if k == 0 { params } else { 0.0 },
                };
                rows.push(Row {
                    depth: depth + 1,
                    what: format!("{}.{site}", st.name),
                    lowering: format!(
                        "matmul [rows, {c}] × [{c}, {o}]{plus_bias}, columns {first}..{}",
                        first + c
                    ),
                    shape: shape(b, n, &projected),
                    cost: cost(n),
                    cost_2n: cost(2 * n),
                });
                first += c;
            }
            rows.push(mk(
                "+".into(),
                format!("element-wise sum of the {} projections", parts.len()),
                &|m| Cost {
                    flops: (parts.len() - 1) as f64 * out(m),
                    elements: out(m),
                    params: 0.0,
                },
            ));
        }
        Op::Linear {
            site,
            x,
            outputs,
            bias,
        } => {
            node_rows(plan, st, x, b, n, depth + 1, rows);
            let (i, o) = (x.channels, *outputs);
            rows.push(mk(
                format!("{}.{site}", st.name),
                format!(
                    "matmul [rows, {i}] × [{i}, {o}]{}",
                    if *bias { " + bias" } else { "" }
                ),
                &|m| Cost {
                    flops: 2.0 * rows_of(m, x) * (i * o) as f64,
                    elements: out(m),
                    params: (i * o + if *bias { o } else { 0 }) as f64,
                },
            ));
        }
        Op::Norm { site, kind, x } => {
            node_rows(plan, st, x, b, n, depth + 1, rows);
            let c = x.channels as f64;
            let (name, params) = match kind {
                NormKind::Rms { .. } => ("rmsnorm", c),
                NormKind::Unit => ("unit rmsnorm", c),
                NormKind::Layer { .. } => ("layernorm", 2.0 * c),
            };
            rows.push(mk(
                format!("{}.{site}", st.name),
                format!("{name}, row-wise"),
                &|m| Cost {
                    flops: 5.0 * out(m),
                    elements: out(m),
                    params,
                },
            ));
        }
        Op::FeedForward {
            site,
            x,
            hidden,
            route,
            ..
        } => {
            node_rows(plan, st, x, b, n, depth + 1, rows);
            let (c, h) = (x.channels as f64, *hidden as f64);
            let mut what = format!("rmsnorm, matmul {c}→{h}, gelu, matmul {h}→{c}");
            if let Some(r) = route {
                node_rows(plan, st, &r.score, b, n, depth + 1, rows);
                what = format!("routed: {}; {what}", route_scope(st, r, x.slots.len()));
            }
            // a routed feedforward runs on its picks only
            let runs = |m: usize| match route {
                Some(r) => {
                    let (pickings, k) = r.pickings(x.slots.len(), m);
                    (b * pickings * k) as f64
                }
                None => rows_of(m, x),
            };
            rows.push(mk(format!("{}.{site}", st.name), what, &|m| Cost {
                flops: runs(m) * (4.0 * c * h + 5.0 * c + 4.0 * h),
                elements: runs(m) * (2.0 * c + 2.0 * h),
                params: 2.0 * c * h + c,
            }));
        }
        Op::Concat(parts) => {
            for p in parts {
                node_rows(plan, st, p, b, n, depth + 1, rows);
            }
            rows.push(mk("concat".into(), "copy along channels".into(), &|m| {
                Cost {
                    flops: 0.0,
                    elements: out(m),
                    params: 0.0,
                }
            }));
        }
        Op::Reduce {
            op,
            slot,
            x,
            matmul,
            mask,
        } => {
            let k = &st.slots[*slot];
            let name = format!("{op:?}[{k}]").to_lowercase();
            if *matmul {
                let (a, c) = matmul_form(x, *slot).expect("the checker chose the matmul form");
                node_rows(plan, st, a, b, n, depth + 1, rows);
                node_rows(plan, st, c, b, n, depth + 1, rows);
                let g = a.channels.min(c.channels);
                rows.push(mk(
                    name,
                    format!("batched matmul over {k} ({} groups), masked", b * g),
                    &|m| Cost {
                        flops: 2.0 * elements(b, m, &node.slots, node.channels) * m as f64,
                        elements: out(m) + elements(b, m, &a.slots, a.channels),
                        params: 0.0,
                    },
                ));
            } else {
                node_rows(plan, st, x, b, n, depth + 1, rows);
                let within = match mask {
                    Some(m) => format!(
                        " within the input graph (adjacency[{}, {}])",
                        st.slots[m.from], st.slots[m.to]
                    ),
                    None => String::new(),
                };
                rows.push(mk(
                    name,
                    format!("masked reduction over {k}{within} (element-wise)"),
                    &|m| Cost {
                        flops: 2.0 * elements(b, m, &x.slots, x.channels),
                        elements: out(m) + elements(b, m, &x.slots, x.channels),
                        params: 0.0,
                    },
                ));
            }
        }
        Op::Softmax { slot, x, mask } => {
            node_rows(plan, st, x, b, n, depth + 1, rows);
            let within = match mask {
                Some(m) => format!(
                    " within the input graph (adjacency[{}, {}])",
                    st.slots[m.from], st.slots[m.to]
                ),
                None => String::new(),
            };
            rows.push(mk(
                format!("softmax[{}]", st.slots[*slot]),
                format!("masked softmax over {}{within}", st.slots[*slot]),
                &|m| Cost {
                    flops: 5.0 * out(m),
                    elements: 2.0 * out(m),
                    params: 0.0,
                },
            ));
        }
        Op::Dot { a, b: bb, heads } => {
            node_rows(plan, st, a, b, n, depth + 1, rows);
            node_rows(plan, st, bb, b, n, depth + 1, rows);
            let matmul = crate::rules::ir::dot_is_matmul(a, bb);
            let how = if matmul {
                "batched matmul per head"
            } else {
                "element-wise product, sum per head"
            };
            // kept: the factors laid out per head, or their broadcast product
            let kept = |m| match matmul {
                true => {
                    elements(b, m, &a.slots, a.channels) + elements(b, m, &bb.slots, a.channels)
                }
                false => elements(b, m, &node.slots, a.channels),
            };
            rows.push(mk(format!("dot ({heads} heads)"), how.into(), &|m| Cost {
                flops: 2.0 * elements(b, m, &node.slots, a.channels),
                elements: kept(m) + out(m),
                params: 0.0,
            }));
        }
        Op::Attend(a) => {
            node_rows(plan, st, &a.query, b, n, depth + 1, rows);
            match a.lowering.core {
                Core::Nodes => node_rows(plan, st, &a.key, b, n, depth + 1, rows),
                // stored inputs are read in place (a transposed one copied once, n² rows)
                Core::Path if stored(&a.key) => {}
                Core::Path => node_rows(plan, st, &a.key, b, n, depth + 1, rows),
                // the picked edges come from the query
                Core::Routed => {}
                // a key read in place costs nothing
                Core::Edges(e) if e.key_in_place => {}
                Core::Edges(e) => {
                    node_rows(plan, st, &a.key, b, n, depth + 1, rows);
                    if !is_plain(&e.key_axes) {
                        let cost = |m: usize| Cost {
                            flops: 0.0,
                            elements: elements(b, m, &a.key.slots, a.key.channels),
                            params: 0.0,
                        };
                        rows.push(Row {
                            depth: depth + 1,
                            what: "key layout".into(),
                            lowering: format!("gather ({} layout)", attend_layout(e.pattern)),
                            shape: shape(b, n, &a.key),
                            cost: cost(n),
                            cost_2n: cost(2 * n),
                        });
                    }
                }
            }
            if let Some(value) = &a.value {
                node_rows(plan, st, value, b, n, depth + 1, rows);
            }
            if let Some(bias) = &a.bias {
                node_rows(plan, st, bias, b, n, depth + 1, rows);
            }
            if let Some(Gates::Expr(g)) = &a.gates {
                node_rows(plan, st, g, b, n, depth + 1, rows);
            }
            if let Some(r) = &a.route {
                node_rows(plan, st, &r.score, b, n, depth + 1, rows);
            }
            let lowering = attend_lowering(st, a, n);
            rows.push(mk(format!("{}.{}", st.name, a.site), lowering, &|m| {
                attend_cost(plan, a, b, m)
            }));
        }
    }
}

/// A tensor read as stored (the state or a `let`), not computed.
fn stored(node: &Node) -> bool {
    matches!(node.op, Op::State { .. } | Op::Let { .. })
}

fn is_plain(slots: &[Slot]) -> bool {
    slots.windows(2).all(|w| w[0] < w[1])
}

fn reference(plan: &Plan, st: &PlanStatement, node: &Node) -> String {
    match &node.op {
        Op::State { domain, slots } => format!(
            "{}[{}]",
            if *domain == Domain::Nodes {
                "nodes"
            } else {
                "edges"
            },
            names(st, slots)
        ),
        Op::Let { id, slots } => format!("{}[{}]", plan.lets[*id].name, names(st, slots)),
        Op::Adjacency { slots } => format!("adjacency[{}]", names(st, slots)),
        _ => String::new(),
    }
}

/// Whether the Taylor feature form runs on the CPU (with its fused kernels) at `n` nodes.
fn feature_form(a: &AttendOp, n: usize) -> bool {
    a.taylor_form(n, CPU_TAYLOR_FEATURE_OVERHEAD) == Some(TaylorForm::Feature)
}

fn attend_layout(p: EdgePattern) -> &'static str {
    match p {
        EdgePattern::Row => "row",
        EdgePattern::Column => "column",
        EdgePattern::All => "all-edges",
        EdgePattern::Diagonal => "diagonal",
    }
}

/// Where a route picks: `top 4 per i`, `top 16 of all edges`.
fn route_scope(st: &PlanStatement, r: &Route, indices: usize) -> String {
    match (r.within, indices) {
        (Some(s), _) => format!("top {} per {}", r.k, st.slots[s]),
        (None, 1) => format!("top {} of all nodes", r.k),
        (None, _) => format!("top {} of all edges", r.k),
    }
}

fn attend_lowering(st: &PlanStatement, a: &AttendOp, n: usize) -> String {
    let pattern = match a.lowering.core {
        Core::Nodes => {
            if matches!(a.query.op, Op::State { ref slots, .. } | Op::Let { ref slots, .. } if slots.len() == 2)
            {
                "diagonal (node attention on the diagonal edges)".to_string()
            } else {
                "node attention".to_string()
            }
        }
        Core::Edges(e) => {
            // self-attention: queries, keys and values projected from one input
            let kind = if e.shared_input {
                "self-attention"
            } else {
                "attention"
            };
            match e.pattern {
                EdgePattern::All => format!("all-edges {kind} (n⁴ pairs)"),
                p => format!("{} {kind}", attend_layout(p)),
            }
        }
        Core::Path => "path attention (n³ paths, fused)".to_string(),
        Core::Routed => {
            let r = a.route.as_ref().expect("routed attention has a route");
            let indices = a.query.slots.len();
            format!(
                "routed: {}, attention among them",
                route_scope(st, r, indices)
            )
        }
    };
    let kernel = match (a.kernel, a.taylor_form(n, CPU_TAYLOR_FEATURE_OVERHEAD)) {
        (KernelChoice::Softmax, _) => "softmax",
        (KernelChoice::Taylor { .. }, Some(TaylorForm::Feature)) => "taylor (linear features)",
        (KernelChoice::Taylor { .. }, _) => "taylor",
    };
    let mut extras = vec![format!("{kernel}, {}×{}", a.heads, a.dim_head)];
    if a.bias.is_some() {
        extras.push("bias".into());
    }
    if a.talking {
        extras.push("talking".into());
    }
    if a.gates.is_some() {
        extras.push("gates".into());
    }
    if a.probs {
        extras.push("returns probs".into());
    }
    if let Some(m) = a.mask {
        extras.push(format!(
            "keys within the input graph (adjacency[{}, {}])",
            st.slots[m.from], st.slots[m.to]
        ));
    }
    format!("{pattern}; {}", extras.join(", "))
}

fn attend_cost(plan: &Plan, a: &AttendOp, b: usize, n: usize) -> Cost {
    if a.lowering.core == Core::Path {
        return path_cost(a, b, n);
    }
    let (p, nq, nk) = a.problem_dims(n);
    let (h, d) = (a.heads as f64, a.dim_head as f64);
    let problems = (b * p) as f64;
    let (nq_f, nk_f) = (nq as f64, nk as f64);
    let queries = problems * nq_f;
    let keys = match a.pattern {
        Pattern::Nodes { .. } => (b * n) as f64,
        _ if a.route.is_some() => queries,
        _ => (b * n * n) as f64,
    };
    let inner = h * d;
    let value_channels = a.value.as_ref().map_or(a.key.channels, |v| v.channels) as f64;
    let projections = 2.0 * queries * a.query.channels as f64 * inner
        + 2.0 * keys * (a.key.channels as f64 + value_channels) * inner
        + 2.0 * queries * inner * a.outputs as f64;
    let (core_flops, core_elements) = if feature_form(a, n) {
        let (feature, _) = form_costs(nq, nk, a.dim_head, a.dim_head, plan.causal);
        let f = 1.0 + d + d * d;
        (
            2.0 * problems * h * feature,
            problems * h * (nq_f + nk_f) * f + problems * h * f * d,
        )
    } else {
        let pairs = problems * h * nq_f * nk_f;
        // weights that are returned or mixed across heads are stored (the weights kernel);
        // otherwise the blocked kernel keeps one normalizer per query and head, and its
        // backward recomputes the scores
        let kept = if a.probs || a.talking {
            pairs
        } else {
            problems * h * nq_f
        };
        // a score bias is laid out per (problem, head, query, key) and kept as well
        let kept = kept + if a.bias.is_some() { pairs } else { 0.0 };
        (pairs * (4.0 * d + 6.0), kept)
    };
    let params = (a.query.channels as f64 + a.key.channels as f64 + value_channels) * inner
        + inner * a.outputs as f64
        + if a.talking { h * h } else { 0.0 }
        + match &a.gates {
            Some(Gates::FromQuery { .. }) => a.query.channels as f64 * h + h,
            _ => 0.0,
        };
    Cost {
        flops: projections + core_flops,
        elements: core_elements + 4.0 * queries * inner + queries * a.outputs as f64,
        params,
    }
}

/// A path attention: queries and values from both sides, n³ paths per head (scores, weights,
/// the values' product); nothing kept but the projections (the backward recomputes).
fn path_cost(a: &AttendOp, b: usize, n: usize) -> Cost {
    let (h, d) = (a.heads as f64, a.dim_head as f64);
    let edges = (b * n * n) as f64;
    let inner = h * d;
    let (qc, kc, out) = (
        a.query.channels as f64,
        a.key.channels as f64,
        a.outputs as f64,
    );
    let projections = 4.0 * edges * (qc + kc) * inner + 2.0 * edges * inner * out;
    let paths = edges * h * n as f64;
    Cost {
        flops: projections + paths * (5.0 * d + 6.0),
        elements: 5.0 * edges * inner + edges * out,
        params: 2.0 * (qc + kc) * inner + inner * out,
    }
}
