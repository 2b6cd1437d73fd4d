//! Graph datasets from files, with PyTorch Geometric's field names.
//!
//! Per graph: `num_nodes`; node inputs `tokens` (ids) or `x` (`[n][features]`); `edge_index`
//! (`[2][E]`, source row then target row); optional edge inputs `edge_tokens` or `edge_attr`
//! (one per listed edge); targets `y` (graph level: one value; node level: one per node, `null`
//! where unlabelled) and/or `edge_label` (edge level: `n × n` values row-major, or one per pair
//! of `edge_label_index` when given). Class ids and real values are both numbers here; the task
//! decides which it reads.
//!
//! Two containers: JSON Lines (one graph per line, read line by line) and safetensors (every
//! graph in one file: concatenated fields and `node_offsets` / `edge_offsets` /
//! `edge_label_offsets` as the index; `scripts/make_graphs.py` writes both). Every graph is
//! validated as it is read; an error names the file, the graph (and line) and the field.

use std::io::BufRead;
use std::path::Path;

use crate::error::{Error, Result};
use crate::files::{decode_safetensors, read_safetensors_capped, StoredTensor};

/// The largest graph a file may hold: its edge labels and the model's edges are n².
pub const MAX_GRAPH_NODES: usize = 1024;
/// The largest graph file read.
pub const GRAPHS_CAP: u64 = 4 << 30;

/// Node or edge inputs: token ids, or feature vectors of one width.
#[derive(Clone, Debug, PartialEq)]
pub enum Inputs {
    /// One token id each.
    Tokens(Vec<usize>),
    /// `dim` features each, flat.
    Features {
        /// Features per node or edge.
        dim: usize,
        /// The values, row-major.
        values: Vec<f32>,
    },
}

impl Inputs {
    fn len(&self) -> usize {
        match self {
            Inputs::Tokens(t) => t.len(),
            Inputs::Features { dim, values } => values.len() / (*dim).max(1),
        }
    }
}

/// A graph- or node-level target (`y`).
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// One value for the graph.
    Graph(f64),
    /// One per node, `None` where unlabelled.
    Nodes(Vec<Option<f64>>),
}

/// Edge-level targets: one per pair listed, or (no pairs) per ordered pair (i, j) row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct EdgeLabels {
    /// The labelled pairs (`edge_label_index`), or every ordered pair when `None`.
    pub pairs: Option<Vec<[usize; 2]>>,
    /// The values, `None` where unlabelled.
    pub values: Vec<Option<f64>>,
}

/// One graph of a dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct GraphRecord {
    /// Nodes.
    pub num_nodes: usize,
    /// Node inputs (`tokens` or `x`).
    pub nodes: Inputs,
    /// Directed edges (source, target).
    pub edge_index: Vec<[usize; 2]>,
    /// Edge inputs (`edge_tokens` or `edge_attr`), one per listed edge.
    pub edges: Option<Inputs>,
    /// `y`.
    pub y: Option<Target>,
    /// `edge_label` (and `edge_label_index`).
    pub edge_label: Option<EdgeLabels>,
}

/// Where a graph is in its file, for errors.
struct Place<'a> {
    path: &'a Path,
    graph: usize,
    line: Option<usize>,
}

impl Place<'_> {
    fn error(&self, field: &str, message: impl std::fmt::Display) -> Error {
        let at = match self.line {
            Some(l) => format!("graph {} (line {l})", self.graph),
            None => format!("graph {}", self.graph),
        };
        Error::Io {
            path: self.path.display().to_string(),
            message: format!("{at}, field `{field}`: {message}"),
        }
    }
}

impl GraphRecord {
    /// Checks every field against the others: sizes, index ranges, finite values.
    fn validate(&self, at: &Place) -> Result<()> {
        let n = self.num_nodes;
        if n == 0 {
            return Err(at.error("num_nodes", "the graph is empty (0 nodes)"));
        }
        if n > MAX_GRAPH_NODES {
            return Err(at.error(
                "num_nodes",
                format!("{n} nodes, more than the {MAX_GRAPH_NODES} a graph may have"),
            ));
        }
        let field = |i: &Inputs, tokens: &'static str, features: &'static str| match i {
            Inputs::Tokens(_) => tokens,
            Inputs::Features { .. } => features,
        };
        let nodes = field(&self.nodes, "tokens", "x");
        if self.nodes.len() != n {
            return Err(at.error(nodes, format!("{} entries for {n} nodes", self.nodes.len())));
        }
        finite(&self.nodes, nodes, at)?;
        for (e, &[s, t]) in self.edge_index.iter().enumerate() {
            if s >= n || t >= n {
                return Err(at.error(
                    "edge_index",
                    format!("edge {e} is ({s}, {t}), but the graph has nodes 0..{n}"),
                ));
            }
        }
        if let Some(edges) = &self.edges {
            let name = field(edges, "edge_tokens", "edge_attr");
            if edges.len() != self.edge_index.len() {
                return Err(at.error(
                    name,
                    format!(
                        "{} entries for the {} edges of `edge_index`",
                        edges.len(),
                        self.edge_index.len()
                    ),
                ));
            }
            finite(edges, name, at)?;
        }
        match &self.y {
            Some(Target::Nodes(v)) if v.len() != n => {
                return Err(at.error("y", format!("{} values for {n} nodes", v.len())));
            }
            Some(Target::Graph(v)) if !v.is_finite() => {
                return Err(at.error("y", format!("{v} is not a finite number")));
            }
            Some(Target::Nodes(v)) => finite_targets(v, "y", at)?,
            _ => {}
        }
        if let Some(labels) = &self.edge_label {
            let want = match &labels.pairs {
                Some(pairs) => {
                    for (p, &[s, t]) in pairs.iter().enumerate() {
                        if s >= n || t >= n {
                            return Err(at.error(
                                "edge_label_index",
                                format!("pair {p} is ({s}, {t}), but the graph has nodes 0..{n}"),
                            ));
                        }
                    }
                    pairs.len()
                }
                None => n * n,
            };
            if labels.values.len() != want {
                let of = if labels.pairs.is_some() {
                    "the pairs of `edge_label_index`"
                } else {
                    "the n × n ordered pairs (give `edge_label_index` to label fewer)"
                };
                return Err(at.error(
                    "edge_label",
                    format!("{} values for {want} ({of})", labels.values.len()),
                ));
            }
            finite_targets(&labels.values, "edge_label", at)?;
        }
        Ok(())
    }
}

fn finite(i: &Inputs, field: &str, at: &Place) -> Result<()> {
    if let Inputs::Features { dim, values } = i {
        if let Some(k) = values.iter().position(|v| !v.is_finite()) {
            return Err(at.error(
                field,
                format!(
                    "row {} feature {} is {}, not a finite number",
                    k / dim,
                    k % dim,
                    values[k]
                ),
            ));
        }
    }
    Ok(())
}

fn finite_targets(v: &[Option<f64>], field: &str, at: &Place) -> Result<()> {
    match v.iter().position(|x| x.is_some_and(|x| !x.is_finite())) {
        Some(k) => Err(at.error(field, format!("entry {k} is not a finite number"))),
        None => Ok(()),
    }
}

/// Reads every graph of `path`: JSON Lines, or safetensors by the `.safetensors` extension.
pub fn read_graphs(path: &Path) -> Result<Vec<GraphRecord>> {
    if path.extension().is_some_and(|e| e == "safetensors") {
        read_safetensors(path)
    } else {
        read_jsonl(path)
    }
}

/// Reads a JSON Lines file line by line (blank lines are skipped).
pub fn read_jsonl(path: &Path) -> Result<Vec<GraphRecord>> {
    let io = |m: String| Error::Io {
        path: path.display().to_string(),
        message: m,
    };
    let file = std::fs::File::open(path).map_err(|e| io(format!("cannot read graphs: {e}")))?;
    if file.metadata().is_ok_and(|m| m.is_dir()) {
        return Err(io("cannot read graphs: it is a folder".into()));
    }
    if file
        .metadata()
        .is_ok_and(|m| m.is_file() && m.len() > GRAPHS_CAP)
    {
        return Err(io(format!(
            "the graph file is larger than {}",
            crate::files::bytes(GRAPHS_CAP)
        )));
    }
    let mut out = Vec::new();
    let mut read = 0u64;
    for (k, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| io(format!("line {}: cannot read: {e}", k + 1)))?;
        read += line.len() as u64 + 1;
        if read > GRAPHS_CAP {
            return Err(io(format!(
                "the graph file goes on past {}",
                crate::files::bytes(GRAPHS_CAP)
            )));
        }
        if line.trim().is_empty() {
            continue;
        }
        let at = Place {
            path,
            graph: out.len(),
            line: Some(k + 1),
        };
        let value: serde_json::Value = serde_json::from_str(&line).map_err(|e| {
            io(format!(
                "graph {} (line {}): not JSON: {e}",
                out.len(),
                k + 1
            ))
        })?;
        let g = from_json(&value, &at)?;
        g.validate(&at)?;
        out.push(g);
    }
    if out.is_empty() {
        return Err(io("the graph file holds no graphs".into()));
    }
    Ok(out)
}

fn from_json(v: &serde_json::Value, at: &Place) -> Result<GraphRecord> {
    let obj = v
        .as_object()
        .ok_or_else(|| at.error("(graph)", "a graph is a JSON object"))?;
    const KNOWN: [&str; 9] = [
        "num_nodes",
        "tokens",
        "x",
        "edge_index",
        "edge_tokens",
        "edge_attr",
        "y",
        "edge_label",
        "edge_label_index",
    ];
    if let Some(k) = obj.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(at.error(k, format!("unknown field; fields: {}", KNOWN.join(", "))));
    }
    let count = |field: &str, v: &serde_json::Value| -> Result<usize> {
        v.as_u64()
            .and_then(|x| usize::try_from(x).ok())
            .ok_or_else(|| at.error(field, format!("{v} is not a non-negative integer")))
    };
    let list = |field: &str, v: &serde_json::Value| -> Result<Vec<serde_json::Value>> {
        v.as_array()
            .cloned()
            .ok_or_else(|| at.error(field, "must be a list"))
    };
    let ids = |field: &str| -> Result<Option<Vec<usize>>> {
        obj.get(field)
            .map(|v| list(field, v)?.iter().map(|x| count(field, x)).collect())
            .transpose()
    };
    let features = |field: &str| -> Result<Option<Inputs>> {
        let Some(v) = obj.get(field) else {
            return Ok(None);
        };
        let rows = list(field, v)?;
        let dim = match rows.first() {
            Some(r) => list(field, r)?.len(),
            None => 0,
        };
        let mut values = Vec::with_capacity(rows.len() * dim);
        for (r, row) in rows.iter().enumerate() {
            let row = list(field, row)?;
            if row.len() != dim {
                return Err(at.error(
                    field,
                    format!("row {r} has {} features, row 0 has {dim}", row.len()),
                ));
            }
            for x in row {
                let x = x
                    .as_f64()
                    .ok_or_else(|| at.error(field, format!("row {r}: {x} is not a number")))?;
                values.push(x as f32);
            }
        }
        Ok(Some(Inputs::Features { dim, values }))
    };
    let either = |tokens: &str, feats: &str| -> Result<Option<Inputs>> {
        match (ids(tokens)?, features(feats)?) {
            (Some(_), Some(_)) => {
                Err(at.error(tokens, format!("give `{tokens}` or `{feats}`, not both")))
            }
            (Some(t), None) => Ok(Some(Inputs::Tokens(t))),
            (None, f) => Ok(f),
        }
    };
    let targets = |field: &str, v: &serde_json::Value| -> Result<Vec<Option<f64>>> {
        list(field, v)?
            .iter()
            .enumerate()
            .map(|(k, x)| match x {
                serde_json::Value::Null => Ok(None),
                x => x.as_f64().map(Some).ok_or_else(|| {
                    at.error(field, format!("entry {k}: {x} is not a number or null"))
                }),
            })
            .collect()
    };
    let pairs = |field: &str| -> Result<Option<Vec<[usize; 2]>>> {
        let Some(v) = obj.get(field) else {
            return Ok(None);
        };
        let rows = list(field, v)?;
        if rows.len() != 2 {
            return Err(at.error(
                field,
                format!("must be 2 lists (sources, targets), got {}", rows.len()),
            ));
        }
        let src: Vec<usize> = list(field, &rows[0])?
            .iter()
            .map(|x| count(field, x))
            .collect::<Result<_>>()?;
        let dst: Vec<usize> = list(field, &rows[1])?
            .iter()
            .map(|x| count(field, x))
            .collect::<Result<_>>()?;
        if src.len() != dst.len() {
            return Err(at.error(
                field,
                format!("{} sources but {} targets", src.len(), dst.len()),
            ));
        }
        Ok(Some(
            src.into_iter().zip(dst).map(|(s, t)| [s, t]).collect(),
        ))
    };

    let nodes = either("tokens", "x")?
        .ok_or_else(|| at.error("tokens", "missing: give node `tokens` or features `x`"))?;
    let num_nodes = match obj.get("num_nodes") {
        Some(v) => count("num_nodes", v)?,
        None => nodes.len(),
    };
    let edge_index = pairs("edge_index")?
        .ok_or_else(|| at.error("edge_index", "missing (an empty graph has [[], []])"))?;
    let y = match obj.get("y") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Array(_)) => Some(Target::Nodes(targets("y", &obj["y"])?)),
        Some(v) => Some(Target::Graph(v.as_f64().ok_or_else(|| {
            at.error("y", format!("{v} is not a number or a list"))
        })?)),
    };
    let edge_label = match obj.get("edge_label") {
        Some(v) => Some(EdgeLabels {
            pairs: pairs("edge_label_index")?,
            values: targets("edge_label", v)?,
        }),
        None if obj.contains_key("edge_label_index") => {
            return Err(at.error(
                "edge_label",
                "missing: `edge_label_index` lists pairs to label",
            ))
        }
        None => None,
    };
    Ok(GraphRecord {
        num_nodes,
        nodes,
        edge_index,
        edges: either("edge_tokens", "edge_attr")?,
        y,
        edge_label,
    })
}

/// Writes graphs as JSON Lines (atomically), the format [`read_jsonl`] reads.
pub fn write_jsonl(path: &Path, graphs: &[GraphRecord]) -> Result<()> {
    use serde_json::{json, Value};
    let inputs = |i: &Inputs| -> Value {
        match i {
            Inputs::Tokens(t) => json!(t),
            Inputs::Features { dim, values } => {
                Value::Array(values.chunks((*dim).max(1)).map(|r| json!(r)).collect())
            }
        }
    };
    let mut text = String::new();
    for g in graphs {
        let mut obj = serde_json::Map::new();
        obj.insert("num_nodes".into(), json!(g.num_nodes));
        let key = match g.nodes {
            Inputs::Tokens(_) => "tokens",
            Inputs::Features { .. } => "x",
        };
        obj.insert(key.into(), inputs(&g.nodes));
        let (src, dst): (Vec<usize>, Vec<usize>) =
            g.edge_index.iter().map(|&[s, t]| (s, t)).unzip();
        obj.insert("edge_index".into(), json!([src, dst]));
        if let Some(e) = &g.edges {
            let key = match e {
                Inputs::Tokens(_) => "edge_tokens",
                Inputs::Features { .. } => "edge_attr",
            };
            obj.insert(key.into(), inputs(e));
        }
        match &g.y {
            Some(Target::Graph(v)) => {
                obj.insert("y".into(), json!(v));
            }
            Some(Target::Nodes(v)) => {
                obj.insert("y".into(), json!(v));
            }
            None => {}
        }
        if let Some(l) = &g.edge_label {
            obj.insert("edge_label".into(), json!(l.values));
            if let Some(p) = &l.pairs {
                let (s, t): (Vec<usize>, Vec<usize>) = p.iter().map(|&[s, t]| (s, t)).unzip();
                obj.insert("edge_label_index".into(), json!([s, t]));
            }
        }
        text.push_str(&Value::Object(obj).to_string());
        text.push('\n');
    }
    crate::files::write_atomic(path, text.as_bytes())
}

/// Reads a safetensors graph file: concatenated fields and their per-graph offsets.
pub fn read_safetensors(path: &Path) -> Result<Vec<GraphRecord>> {
    let data = read_safetensors_capped(path, GRAPHS_CAP, "the graph file")?;
    let tensors = decode_safetensors(path, &data, "the graph file")?;
    let get = |name: &str| tensors.iter().find(|t| t.name == name);
    let file_error = |m: String| Error::Io {
        path: path.display().to_string(),
        message: m,
    };
    let offsets = |name: &str| -> Result<Vec<usize>> {
        let t = get(name).ok_or_else(|| file_error(format!("tensor `{name}` is missing")))?;
        let v = whole(t, path)?;
        if v.first() != Some(&0) || v.windows(2).any(|w| w[0] > w[1]) {
            return Err(file_error(format!(
                "tensor `{name}` must start at 0 and never decrease"
            )));
        }
        Ok(v)
    };
    let nodes_at = offsets("node_offsets")?;
    let edges_at = offsets("edge_offsets")?;
    let graphs = nodes_at.len() - 1;
    if graphs == 0 || edges_at.len() != graphs + 1 {
        return Err(file_error(format!(
            "`node_offsets` ({} entries) and `edge_offsets` ({}) must describe the same graphs, at least one",
            nodes_at.len(),
            edges_at.len()
        )));
    }
    let labels_at = match get("edge_label") {
        Some(_) => Some(offsets("edge_label_offsets")?),
        None => None,
    };
    // a field: its rows and width, checked to cover the offsets' last entry
    let rows = |name: &str, total: usize| -> Result<Option<(&StoredTensor, usize)>> {
        let Some(t) = get(name) else {
            return Ok(None);
        };
        let width = t.dims.iter().skip(1).product::<usize>();
        let n_rows = t.dims.first().copied().unwrap_or(0);
        if n_rows != total {
            return Err(file_error(format!(
                "tensor `{name}` has {n_rows} rows, the offsets need {total}"
            )));
        }
        Ok(Some((t, width)))
    };
    let total_nodes = *nodes_at.last().expect("non-empty");
    let total_edges = *edges_at.last().expect("non-empty");
    let tokens = rows("tokens", total_nodes)?;
    let x = rows("x", total_nodes)?;
    let edge_tokens = rows("edge_tokens", total_edges)?;
    let edge_attr = rows("edge_attr", total_edges)?;
    let index =
        get("edge_index").ok_or_else(|| file_error("tensor `edge_index` is missing".into()))?;
    if index.dims != [2, total_edges] {
        return Err(file_error(format!(
            "tensor `edge_index` is {:?}, the offsets need [2, {total_edges}]",
            index.dims
        )));
    }
    let y = get("y");
    let mut out = Vec::with_capacity(graphs);
    for g in 0..graphs {
        let at = Place {
            path,
            graph: g,
            line: None,
        };
        let (n0, n1) = (nodes_at[g], nodes_at[g + 1]);
        let (e0, e1) = (edges_at[g], edges_at[g + 1]);
        let inputs = |t: Option<(&StoredTensor, usize)>,
                      f: Option<(&StoredTensor, usize)>,
                      lo: usize,
                      hi: usize,
                      field: &str|
         -> Result<Option<Inputs>> {
            Ok(match (t, f) {
                (Some(_), Some(_)) => return Err(at.error(field, "both tokens and features given")),
                (Some((t, _)), None) => Some(Inputs::Tokens(
                    t.values[lo..hi]
                        .iter()
                        .map(|&v| integer(v, field, &at))
                        .collect::<Result<_>>()?,
                )),
                (None, Some((f, w))) => Some(Inputs::Features {
                    dim: w,
                    values: f.values[lo * w..hi * w].iter().map(|&v| v as f32).collect(),
                }),
                (None, None) => None,
            })
        };
        let nodes = inputs(tokens, x, n0, n1, "tokens")?
            .ok_or_else(|| at.error("tokens", "missing: give node `tokens` or features `x`"))?;
        let edge_index = (e0..e1)
            .map(|e| {
                Ok([
                    integer(index.values[e], "edge_index", &at)?,
                    integer(index.values[total_edges + e], "edge_index", &at)?,
                ])
            })
            .collect::<Result<_>>()?;
        let y = match y {
            None => None,
            Some(t) if t.dims.first() == Some(&graphs) => Some(Target::Graph(t.values[g])),
            Some(t) if t.dims.first() == Some(&total_nodes) => Some(Target::Nodes(
                t.values[n0..n1].iter().map(|&v| Some(v)).collect(),
            )),
            Some(t) => {
                return Err(at.error(
                    "y",
                    format!(
                        "{:?} rows: one per graph ({graphs}) or per node ({total_nodes})",
                        t.dims
                    ),
                ))
            }
        };
        let edge_label = match (&labels_at, get("edge_label")) {
            (Some(at_), Some(t)) => {
                let (l0, l1) = (at_[g], at_[g + 1]);
                if l1 > t.values.len() {
                    return Err(at.error("edge_label", "the offsets run past the tensor"));
                }
                // −1 marks an unlabelled pair (the format has no null in a tensor)
                Some(EdgeLabels {
                    pairs: None,
                    values: t.values[l0..l1]
                        .iter()
                        .map(|&v| (v != -1.0).then_some(v))
                        .collect(),
                })
            }
            _ => None,
        };
        let record = GraphRecord {
            num_nodes: n1 - n0,
            nodes,
            edge_index,
            edges: inputs(edge_tokens, edge_attr, e0, e1, "edge_tokens")?,
            y,
            edge_label,
        };
        record.validate(&at)?;
        out.push(record);
    }
    Ok(out)
}

/// All of a tensor's values as non-negative integers (offsets).
fn whole(t: &StoredTensor, path: &Path) -> Result<Vec<usize>> {
    t.values
        .iter()
        .map(|&v| {
            if v >= 0.0 && v.fract() == 0.0 && v < 2f64.powi(53) {
                Ok(v as usize)
            } else {
                Err(Error::Io {
                    path: path.display().to_string(),
                    message: format!("tensor `{}` holds {v}, not a non-negative integer", t.name),
                })
            }
        })
        .collect()
}

fn integer(v: f64, field: &str, at: &Place) -> Result<usize> {
    if v >= 0.0 && v.fract() == 0.0 && v < 2f64.powi(53) {
        Ok(v as usize)
    } else {
        Err(at.error(field, format!("{v} is not a non-negative integer")))
    }
}
