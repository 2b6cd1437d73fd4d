//! Graph datasets from files (`crate::data::graphs`): graph or node targets from `y`, edge
//! targets from `edge_label`, as class ids (classification) or real values (regression, with
//! `--loss mse` or `mae`), trained on one file and held out on another.
//!
//! Inputs: node tokens as given (or, with `x`, one shared token plus the features through the
//! model's linear node embedding); the edge (i, j) carries token 0 when the file lists no edge
//! from i to j, and 1 + its `edge_tokens` entry (1 without edge tokens) when it does, so a rule
//! sees the input graph through the edges' embedding as well as through `adjacency`; listed
//! edges' `edge_attr` go through the linear edge embedding (zeros elsewhere).

use std::path::Path;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::Rng;

use super::{Example, Split, TaskDef, Vocab};
use crate::data::graphs::{read_graphs, GraphRecord, Inputs, Target};
use crate::error::{Error, Result};
use crate::models::ValueScale;
use crate::train::objective::{Objective, ValueLoss};

/// What a graph file's examples are scored on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Every labelled node predicts its class (`y`, one per node).
    Node,
    /// Every labelled ordered pair (i, j) predicts its class (`edge_label`).
    Edge,
    /// Each graph predicts its class (`y`, one per graph) from its pooled nodes.
    Graph,
}

impl Level {
    /// `graph`, `node` or `edge`.
    pub fn parse(word: &str) -> Result<Self> {
        match word {
            "node" => Ok(Level::Node),
            "edge" => Ok(Level::Edge),
            "graph" => Ok(Level::Graph),
            other => Err(Error::config(
                "--target",
                format!("`{other}` is not a level: graph, node or edge"),
            )),
        }
    }
}

/// Graphs from a training file and a held-out file.
#[derive(Debug)]
pub struct GraphFiles {
    name: String,
    level: Level,
    objective: Objective,
    train: Arc<Vec<Example>>,
    valid: Arc<Vec<Example>>,
    vocab: Vocab,
    max_len: usize,
}

impl GraphFiles {
    /// Reads and converts both files, with targets at `level`: class ids (`loss` `None`,
    /// cross-entropy) or real values; a graph that cannot be an example of them is an error
    /// naming the file, the graph and the field.
    pub fn from_files(
        train: &Path,
        valid: &Path,
        level: Level,
        loss: Option<ValueLoss>,
    ) -> Result<Self> {
        let regression = loss.is_some();
        let train_ex = examples(train, level, regression)?;
        let valid_ex = examples(valid, level, regression)?;
        let all = || train_ex.iter().chain(&valid_ex);
        let max_len = all().map(|e| e.tokens.len()).max().unwrap_or(1);
        let max_token = all()
            .flat_map(|e| e.tokens.iter())
            .max()
            .copied()
            .unwrap_or(0);
        let max_edge_token = all()
            .flat_map(|e| e.edge_tokens.iter())
            .max()
            .copied()
            .unwrap_or(0);
        let classes = |f: &dyn Fn(&Example) -> &[Option<usize>]| {
            all()
                .flat_map(|e| f(e).iter().flatten())
                .max()
                .map_or(0, |c| c + 1)
        };
        // a regression's heads give one value per position
        let (node_classes, edge_classes, graph_classes) = match (level, regression) {
            (Level::Node, true) => (0, 0, 0),
            (Level::Edge, true) => (0, 1, 0),
            (Level::Graph, true) => (0, 0, 1),
            (Level::Node, false) => (classes(&|e| &e.targets), 0, 0),
            (Level::Edge, false) => (0, classes(&|e| &e.edge_targets).max(1), 0),
            (Level::Graph, false) => {
                let most = all().filter_map(|e| e.graph_target).max();
                (0, 0, most.map_or(0, |c| c + 1).max(2))
            }
        };
        let objective = match loss {
            None => Objective::Classes,
            Some(loss) => {
                let values: Vec<f64> = train_ex
                    .iter()
                    .flat_map(|e| {
                        e.node_values
                            .iter()
                            .chain(&e.edge_values)
                            .chain(std::iter::once(&e.graph_value))
                    })
                    .flatten()
                    .map(|&v| f64::from(v))
                    .collect();
                let scale = ValueScale::of(&values).ok_or_else(|| Error::Io {
                    path: train.display().to_string(),
                    message: "no graph has a target value to learn from".into(),
                })?;
                Objective::Values { loss, scale }
            }
        };
        let node_features = width(train, "x", &train_ex, &valid_ex, |e| (&e.node_features, 1))?;
        let edge_features = width(train, "edge_attr", &train_ex, &valid_ex, |e| {
            (&e.edge_features, 2)
        })?;
        // a graph without edges lists no `edge_attr` rows: its features are zeros of that width
        let (mut train_ex, mut valid_ex) = (train_ex, valid_ex);
        for e in train_ex.iter_mut().chain(valid_ex.iter_mut()) {
            if edge_features > 0 && e.adjacency.iter().all(|&a| !a) {
                e.edge_features = vec![0.0; e.tokens.len().pow(2) * edge_features];
            }
        }
        let stem = train
            .file_stem()
            .map_or("graphs".into(), |s| s.to_string_lossy().to_string());
        Ok(Self {
            name: format!("graphs:{stem}"),
            level,
            objective,
            train: Arc::new(train_ex),
            valid: Arc::new(valid_ex),
            vocab: Vocab {
                // node classes are read from the node logits, so the vocabulary covers them
                node_tokens: (max_token + 1).max(node_classes).max(2),
                edge_tokens: max_edge_token + 1,
                edge_classes,
                graph_classes,
                node_features,
                edge_features,
            },
            max_len,
        })
    }

    /// Training and held-out graphs.
    pub fn sizes(&self) -> (usize, usize) {
        (self.train.len(), self.valid.len())
    }
}

impl TaskDef for GraphFiles {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn vocab(&self) -> Vocab {
        self.vocab
    }

    fn max_len(&self) -> usize {
        self.max_len
    }

    fn causal(&self) -> bool {
        false
    }

    fn example(&self, rng: &mut StdRng, split: Split) -> Example {
        let pool = match split {
            Split::Train => &self.train,
            _ => &self.valid,
        };
        pool[rng.gen_range(0..pool.len())].clone()
    }

    fn input_graph(&self) -> bool {
        true
    }

    fn held_out_set(&self) -> Option<&[Example]> {
        Some(&self.valid)
    }

    fn objective(&self) -> Objective {
        self.objective
    }

    fn split_note(&self) -> Option<String> {
        let level = match self.level {
            Level::Node => "node",
            Level::Edge => "edge",
            Level::Graph => "graph",
        };
        let what = match self.objective {
            Objective::Classes => "classes".to_string(),
            Objective::Values { loss, scale } => format!(
                "values (regression, loss {}; training targets: mean {:.4}, std {:.4})",
                loss.name(),
                scale.mean,
                scale.std
            ),
        };
        Some(format!(
            "{level} {what}; {} training graphs, {} held-out graphs from the --valid file (never trained on, each evaluated once)",
            self.train.len(),
            self.valid.len()
        ))
    }
}

/// The feature width every example of both files has for `field` (0: none has features);
/// files that disagree (one with features, one without, or two widths) are refused.
fn width(
    train: &Path,
    field: &str,
    a: &[Example],
    b: &[Example],
    of: impl Fn(&Example) -> (&Vec<f32>, u32),
) -> Result<usize> {
    let mut seen: Option<usize> = None;
    for (k, e) in a.iter().chain(b).enumerate() {
        let (values, order) = of(e);
        if order == 2 && e.adjacency.iter().all(|&a| !a) {
            continue; // no edges listed, so no rows to tell the width
        }
        let cells = e.tokens.len().pow(order).max(1);
        let w = values.len() / cells;
        match seen {
            None => seen = Some(w),
            Some(s) if s != w => {
                return Err(Error::config(
                    "graph files",
                    format!(
                        "field `{field}`: example {k} (counting {} first) has {w} features per \
                         {}, an earlier one {s}; every graph of both files needs the same",
                        train.display(),
                        if order == 1 { "node" } else { "edge" }
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    Ok(seen.unwrap_or(0))
}

fn examples(path: &Path, level: Level, regression: bool) -> Result<Vec<Example>> {
    read_graphs(path)?
        .iter()
        .enumerate()
        .map(|(k, g)| example(g, level, regression).map_err(|m| at(path, k, m)))
        .collect()
}

fn at(path: &Path, graph: usize, message: String) -> Error {
    Error::Io {
        path: path.display().to_string(),
        message: format!("graph {graph}, {message}"),
    }
}

/// One graph as an example with targets at `level` (real values for a `regression`), or what
/// keeps it from being one.
fn example(g: &GraphRecord, level: Level, regression: bool) -> Result<Example, String> {
    let mut e = example_inputs(g);
    let n = g.num_nodes;
    // every target as a number first, in the layout of its level
    let (nodes, edges, graph): (Vec<Option<f64>>, Vec<Option<f64>>, Option<f64>) = match level {
        Level::Graph => match &g.y {
            Some(Target::Graph(v)) => (Vec::new(), Vec::new(), Some(*v)),
            Some(Target::Nodes(_)) => {
                return Err(
                    "field `y`: one value per node, but --target graph needs one for the graph"
                        .into(),
                )
            }
            None => {
                return Err(
                    "field `y`: missing (--target graph reads each graph's target from it)".into(),
                )
            }
        },
        Level::Node => match &g.y {
            Some(Target::Nodes(v)) => (v.clone(), Vec::new(), None),
            Some(Target::Graph(_)) => {
                return Err(
                    "field `y`: one value for the graph, but --target node needs one per node"
                        .into(),
                )
            }
            None => {
                return Err(
                    "field `y`: missing (--target node reads the node targets from it)".into(),
                )
            }
        },
        Level::Edge => {
            let labels = g.edge_label.as_ref().ok_or(
                "field `edge_label`: missing (--target edge reads the edge targets from it)",
            )?;
            let mut cells = vec![None; n * n];
            for (k, v) in labels.values.iter().enumerate() {
                let cell = match &labels.pairs {
                    Some(p) => p[k][0] * n + p[k][1],
                    None => k,
                };
                cells[cell] = *v;
            }
            (Vec::new(), cells, None)
        }
    };
    let field = if level == Level::Edge {
        "edge_label"
    } else {
        "y"
    };
    if regression {
        let value = |k: usize, v: f64| -> Result<f32, String> {
            let f = v as f32;
            if f.is_finite() {
                Ok(f)
            } else {
                Err(format!(
                    "field `{field}`: entry {k} is {v:e}, beyond what a 32-bit float holds"
                ))
            }
        };
        let values = |v: &[Option<f64>]| -> Result<Vec<Option<f32>>, String> {
            v.iter()
                .enumerate()
                .map(|(k, v)| v.map(|v| value(k, v)).transpose())
                .collect()
        };
        e.node_values = values(&nodes)?;
        e.edge_values = values(&edges)?;
        e.graph_value = graph.map(|v| value(0, v)).transpose()?;
    } else {
        let class = |k: usize, v: f64| -> Result<usize, String> {
            if v >= 0.0 && v.fract() == 0.0 && v < 1e6 {
                Ok(v as usize)
            } else {
                Err(format!(
                    "field `{field}`: entry {k} is {v}, not a class id (a non-negative integer; \
                     for real values, train with --loss mse or --loss mae)"
                ))
            }
        };
        let classes = |v: &[Option<f64>], len: usize| -> Result<Vec<Option<usize>>, String> {
            let mut out: Vec<Option<usize>> = v
                .iter()
                .enumerate()
                .map(|(k, v)| v.map(|v| class(k, v)).transpose())
                .collect::<Result<_, _>>()?;
            out.resize(len, None);
            Ok(out)
        };
        e.targets = classes(&nodes, n)?;
        if level == Level::Edge {
            e.edge_targets = classes(&edges, n * n)?;
        }
        e.graph_target = graph.map(|v| class(0, v)).transpose()?;
    }
    Ok(e)
}

/// A graph's inputs as an example without targets: node tokens (or one shared token and the
/// features `x`), edge tokens `1 + edge_tokens` (1 without them, 0 where no edge is listed),
/// the adjacency, and `edge_attr` on the listed edges (zeros elsewhere).
pub fn example_inputs(g: &GraphRecord) -> Example {
    let n = g.num_nodes;
    // node features enter through the model's linear embedding, beside one shared token
    let (tokens, node_features) = match &g.nodes {
        Inputs::Tokens(t) => (t.clone(), Vec::new()),
        Inputs::Features { values, .. } => (vec![0; n], values.clone()),
    };
    let (edge_input, attr) = match &g.edges {
        None => (None, None),
        Some(Inputs::Tokens(t)) => (Some(t), None),
        Some(Inputs::Features { dim, values }) => (None, Some((*dim, values))),
    };
    let mut edge_tokens = vec![0; n * n];
    let mut adjacency = vec![false; n * n];
    let mut edge_features = match attr {
        Some((dim, _)) => vec![0.0; n * n * dim],
        None => Vec::new(),
    };
    for (e, &[s, t]) in g.edge_index.iter().enumerate() {
        edge_tokens[s * n + t] = 1 + edge_input.map_or(0, |t| t[e]);
        adjacency[s * n + t] = true;
        if let Some((dim, values)) = attr {
            let cell = (s * n + t) * dim;
            edge_features[cell..cell + dim].copy_from_slice(&values[e * dim..(e + 1) * dim]);
        }
    }
    Example {
        tokens,
        targets: vec![None; n],
        edge_tokens,
        adjacency,
        node_features,
        edge_features,
        ..Example::default()
    }
}
