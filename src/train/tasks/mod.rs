//! Built-in tasks, generated in-process from a seed (no downloads), and character-level language
//! modelling on a user's text. Labels are recomputed from each task's definition (`labels`).
//!
//! Sequence tasks give each position a token and read predictions from the nodes. Graph tasks
//! also give every ordered pair (i, j) an edge token (the structure: is there an edge, its
//! label) and read predictions from the nodes or from the edges.

//!
//! Each task is one type implementing [`TaskDef`] (what it samples, its vocabularies, its
//! sizes and probe); [`BUILT_IN`] lists them by name, and the command line's task list, its
//! help and `experiment`'s suites come from that list. A new task is a type in `sequence.rs`
//! or `graph.rs` and one row of [`BUILT_IN`].

mod checks;
mod graph;
mod graph_files;
mod labels;
mod sequence;
mod text;

pub use graph::*;
pub use graph_files::{example_inputs, GraphFiles, Level};
pub use labels::*;
pub use sequence::*;
pub use text::*;

use super::objective::{Metric, Objective};
use crate::graph::DropoutDraws;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::Rng;

use crate::error::{Error, Result};

/// A batch of examples, padded to the longest: `[b × n]` tokens, validity and node targets,
/// and for graph tasks `[b × n × n]` edge tokens and edge targets.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Batch {
    /// `[b × n]` token ids (0 at padding).
    pub tokens: Vec<usize>,
    /// Examples (graphs) in the batch.
    pub b: usize,
    /// Nodes per example, after padding.
    pub n: usize,
    /// `[b × n]`: false at padding (`None` when nothing is padded).
    pub valid: Option<Vec<bool>>,
    /// `[b × n]`: the class to predict at each position, if any.
    pub targets: Vec<Option<usize>>,
    /// `[b × n × n]`: the token of edge (i, j), for tasks with edge inputs.
    pub edge_tokens: Option<Vec<usize>>,
    /// `[b × n × n]`: the class to predict on edge (i, j), for tasks read from the edges.
    pub edge_targets: Option<Vec<Option<usize>>>,
    /// What the rules' dropouts draw from, one seed per graph: set for training steps only.
    pub dropout: Option<DropoutDraws>,
    /// `[b × n × n]`: whether graph b's input has edge i → j, for graphs read from files.
    pub adjacency: Option<Vec<bool>>,
    /// `[b]`: the class each graph predicts, for graph-level tasks.
    pub graph_targets: Option<Vec<Option<usize>>>,
    /// `[b × n × f]` continuous node features, zeros at padding.
    pub node_features: Option<Vec<f32>>,
    /// `[b × n × n × f]` continuous edge features, zeros at padding.
    pub edge_features: Option<Vec<f32>>,
    /// `[b × n]`: the real value to predict at each node, for node regression.
    pub node_values: Option<Vec<Option<f32>>>,
    /// `[b × n × n]`: the real value to predict on edge (i, j), for edge regression.
    pub edge_values: Option<Vec<Option<f32>>>,
    /// `[b]`: the real value each graph predicts, for graph regression.
    pub graph_values: Option<Vec<Option<f32>>>,
}

impl Batch {
    /// The graphs `range` (within `0..b`) of the batch, as a batch of their own.
    pub fn graphs(&self, range: std::ops::Range<usize>) -> Batch {
        let (n, per_edge) = (self.n, self.n * self.n);
        let rows = |v: usize| range.start * v..range.end * v;
        Batch {
            tokens: self.tokens[rows(n)].to_vec(),
            b: range.len(),
            n,
            valid: self.valid.as_ref().map(|v| v[rows(n)].to_vec()),
            targets: self.targets[rows(n)].to_vec(),
            edge_tokens: self
                .edge_tokens
                .as_ref()
                .map(|v| v[rows(per_edge)].to_vec()),
            edge_targets: self
                .edge_targets
                .as_ref()
                .map(|v| v[rows(per_edge)].to_vec()),
            adjacency: self.adjacency.as_ref().map(|v| v[rows(per_edge)].to_vec()),
            graph_targets: self
                .graph_targets
                .as_ref()
                .map(|v| v[range.clone()].to_vec()),
            node_features: self.node_features.as_ref().map(|v| {
                let f = v.len() / (self.b * n).max(1);
                v[rows(n * f)].to_vec()
            }),
            edge_features: self.edge_features.as_ref().map(|v| {
                let f = v.len() / (self.b * per_edge).max(1);
                v[rows(per_edge * f)].to_vec()
            }),
            node_values: self.node_values.as_ref().map(|v| v[rows(n)].to_vec()),
            edge_values: self
                .edge_values
                .as_ref()
                .map(|v| v[rows(per_edge)].to_vec()),
            graph_values: self
                .graph_values
                .as_ref()
                .map(|v| v[range.clone()].to_vec()),
            dropout: self
                .dropout
                .as_ref()
                .map(|d| DropoutDraws::new(d.seeds()[range.clone()].to_vec())),
        }
    }
}

/// One example before batching. The edge vectors are `n × n` (empty when the task has none).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Example {
    /// The node tokens.
    pub tokens: Vec<usize>,
    /// The class to predict at each node, if any.
    pub targets: Vec<Option<usize>>,
    /// `n × n`: the token of edge (i, j).
    pub edge_tokens: Vec<usize>,
    /// `n × n`: the class to predict on edge (i, j), if any.
    pub edge_targets: Vec<Option<usize>>,
    /// `n × n`: whether the input graph has edge i → j (empty: the example has no input graph).
    pub adjacency: Vec<bool>,
    /// The class the whole graph predicts, for graph-level tasks.
    pub graph_target: Option<usize>,
    /// `n × f` continuous node features (empty: none).
    pub node_features: Vec<f32>,
    /// `n × n × f` continuous edge features, zeros where the input has no edge (empty: none).
    pub edge_features: Vec<f32>,
    /// The real value to predict at each node, for node regression (empty: none).
    pub node_values: Vec<Option<f32>>,
    /// `n × n`: the real value to predict on edge (i, j), for edge regression (empty: none).
    pub edge_values: Vec<Option<f32>>,
    /// The real value the whole graph predicts, for graph regression.
    pub graph_value: Option<f32>,
}

pub use crate::models::heads::Readout;

/// Which distribution an example comes from. Every built-in task's held-out examples come from
/// its training distribution (a text's from its held-out part); `path-composition`'s sizes also
/// test chains longer than it trains on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// The training distribution.
    Train,
    /// The held-out distribution.
    Test,
    /// Test examples of one size (the path length, or k for k-hop).
    Size(usize),
}

/// A task's vocabularies: node tokens (node classes are below it too), edge tokens (0: the task
/// gives no edge inputs) and edge classes (0: predictions are read from the nodes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vocab {
    /// Node tokens.
    pub node_tokens: usize,
    /// Edge tokens.
    pub edge_tokens: usize,
    /// Edge classes.
    pub edge_classes: usize,
    /// Graph classes (0: no graph-level target).
    pub graph_classes: usize,
    /// Continuous features per node (0: tokens only).
    pub node_features: usize,
    /// Continuous features per edge (0: none).
    pub edge_features: usize,
}

impl Vocab {
    /// A task with node tokens only, read from the nodes.
    pub fn nodes(node_tokens: usize) -> Self {
        Self {
            node_tokens,
            edge_tokens: 0,
            edge_classes: 0,
            graph_classes: 0,
            node_features: 0,
            edge_features: 0,
        }
    }

    /// A task on graphs given as edge tokens: answered per edge (`edge_classes`), or from the
    /// nodes when `edge_classes` is 0.
    pub fn edges(node_tokens: usize, edge_tokens: usize, edge_classes: usize) -> Self {
        Self {
            edge_tokens,
            edge_classes,
            ..Self::nodes(node_tokens)
        }
    }
}

/// The sizes a task can be tested at one by one ([`Split::Size`]), and what a size is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sizes {
    /// What a size is (`path length`, `k`).
    pub what: &'static str,
    /// The sizes, ascending.
    pub values: Vec<usize>,
}

/// One task: how it samples examples and what a model needs to read them.
pub trait TaskDef: std::fmt::Debug + Send + Sync {
    /// The name it is reported under.
    fn name(&self) -> String;
    /// Its vocabularies.
    fn vocab(&self) -> Vocab;
    /// The longest example (nodes).
    fn max_len(&self) -> usize;
    /// Whether the task needs a causal model.
    fn causal(&self) -> bool;
    /// One example of the given split.
    fn example(&self, rng: &mut StdRng, split: Split) -> Example;
    /// Whether its settings can be sampled: ranges non-empty, probabilities in [0, 1], and
    /// rejection samplers likely enough to fit. [`Task::new`] refuses a task that fails it, so
    /// `example` may assume it passed.
    fn check(&self) -> Result<()> {
        Ok(())
    }
    /// The sizes it can be tested at one by one, for tasks that test beyond their training sizes.
    fn sizes(&self) -> Option<Sizes> {
        None
    }
    /// Fixed examples every model is also tested on, for tasks that have them.
    fn probe(&self) -> Option<Batch> {
        None
    }
    /// How the data is split between training and evaluation, for tasks read from files.
    fn split_note(&self) -> Option<String> {
        None
    }
    /// A fixed held-out set that evaluation covers once, each example exactly once, in place
    /// of sampled batches (tasks read from files).
    fn held_out_set(&self) -> Option<&[Example]> {
        None
    }
    /// Whether its examples carry an input graph (`Example::adjacency`), which rules may read
    /// (`adjacency`, `mask:`).
    fn input_graph(&self) -> bool {
        false
    }
    /// What its targets are and the loss that trains them (class ids and cross-entropy unless
    /// it says otherwise).
    fn objective(&self) -> Objective {
        Objective::Classes
    }
}

/// A built-in task: its name, what it asks, and its constructor.
pub struct BuiltIn {
    /// Its name in the registry and on the command line.
    pub name: &'static str,
    /// One line on what it asks.
    pub summary: &'static str,
    make: fn() -> Result<Task>,
}

impl BuiltIn {
    /// A fresh instance (checked like any task: see [`TaskDef::check`]).
    pub fn task(&self) -> Result<Task> {
        (self.make)()
    }
}

/// Every built-in task, in the order the help lists them. (`text` reads a file: `--data`.)
pub const BUILT_IN: &[BuiltIn] = &[
    BuiltIn {
        name: "sanity",
        summary: "every position predicts the sequence's maximum",
        make: || Task::new(Sanity),
    },
    BuiltIn {
        name: "match3",
        summary: "is x_i + x_j + x_k ≡ 0 (mod 37) for some j, k",
        make: || Task::new(Match3::default()),
    },
    BuiltIn {
        name: "match3-distinct",
        summary: "match3 where every witness is three distinct residues",
        make: || Task::new(Match3::distinct()),
    },
    BuiltIn {
        name: "match3-distinct-short",
        summary: "match3-distinct at 12-16 values (a length curriculum's first stage)",
        make: || Task::new(Match3::distinct_short()),
    },
    BuiltIn {
        name: "relation-composition",
        summary: "edge (i, j) predicts (A∘A)[i, j] of a random relation A",
        make: || Task::new(RelationComposition::default()),
    },
    BuiltIn {
        name: "quotient-composition",
        summary: "edge (i, j): do neighbours of i and of j share a colour",
        make: || Task::new(QuotientComposition::default()),
    },
    BuiltIn {
        name: "function-composition",
        summary: "position 0 predicts whether x[x[0]] = 0",
        make: || Task::new(FunctionComposition::default()),
    },
    BuiltIn {
        name: "path-composition",
        summary: "the query edge composes two S3 labels (sizes: chains of 2 to 10)",
        make: || Task::new(PathComposition::default()),
    },
    BuiltIn {
        name: "path-composition-long",
        summary: "path-composition trained on chains of 2 and 3 edges (depth 2)",
        make: || Task::new(PathComposition::long()),
    },
    BuiltIn {
        name: "edge-match2",
        summary: "edge (i, j) predicts whether another edge carries −x_ij (mod 17)",
        make: || Task::new(EdgeMatch2::default()),
    },
    BuiltIn {
        name: "edge-match2-disjoint",
        summary: "edge-match2 where partners never share a node",
        make: || Task::new(EdgeMatch2::disjoint()),
    },
    BuiltIn {
        name: "triangles",
        summary: "every node predicts whether it lies on a triangle",
        make: || Task::new(Triangles::default()),
    },
    BuiltIn {
        name: "k-hop",
        summary: "k-hop induction heads",
        make: || Task::new(KHop::default()),
    },
];

/// The built-in tasks' names, comma-separated (for help and errors).
pub fn built_in_names() -> String {
    BUILT_IN
        .iter()
        .map(|t| t.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The built-in task called `name`.
pub fn built_in(name: &str) -> Option<&'static BuiltIn> {
    BUILT_IN.iter().find(|t| t.name == name)
}

/// A task, shared cheaply between threads.
#[derive(Clone, Debug)]
pub struct Task(Arc<dyn TaskDef>);

/// `shuffled(rng, n)`: a random order of `0..n`.
pub(super) fn shuffled(rng: &mut StdRng, n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        v.swap(i, rng.gen_range(0..=i));
    }
    v
}

impl Task {
    /// Wraps a task of one's own (any [`TaskDef`]), once its settings pass
    /// [`TaskDef::check`].
    pub fn new(task: impl TaskDef + 'static) -> Result<Self> {
        task.check()?;
        Ok(Self(Arc::new(task)))
    }

    /// A built-in task by name, or a text file for `text` (`data`, windows of `context` bytes).
    pub fn from_name(name: &str, data: Option<&str>, context: usize) -> Result<Self> {
        if let Some(path) = data {
            return Self::new(Text::from_file(path, context)?);
        }
        if name == "text" {
            return Err(Error::config("task", "the text task needs `--data FILE`"));
        }
        match built_in(name) {
            Some(t) => t.task(),
            None => Err(Error::config(
                "task",
                format!(
                    "unknown task `{name}` (tasks: {}, and text with --data FILE)",
                    built_in_names()
                ),
            )),
        }
    }

    /// See [`TaskDef::name`].
    pub fn name(&self) -> String {
        self.0.name()
    }

    /// See [`TaskDef::vocab`].
    pub fn vocab(&self) -> Vocab {
        self.0.vocab()
    }

    /// The node vocabulary; node classes are below it too.
    pub fn num_tokens(&self) -> usize {
        self.vocab().node_tokens
    }

    /// How many edge tokens there are (0: the task gives no edge inputs).
    pub fn edge_vocab(&self) -> usize {
        self.vocab().edge_tokens
    }

    /// How many classes an edge predicts (0: the task reads nodes).
    pub fn edge_classes(&self) -> usize {
        self.vocab().edge_classes
    }

    /// How many classes a graph predicts (0: the task reads nodes or edges).
    pub fn graph_classes(&self) -> usize {
        self.vocab().graph_classes
    }

    /// Where predictions are read: the whole graph when the task has graph classes, the edges
    /// when it has edge classes, else the nodes.
    pub fn readout(&self) -> Readout {
        if self.graph_classes() > 0 {
            Readout::Graph
        } else if self.edge_classes() > 0 {
            Readout::Edges
        } else {
            Readout::Nodes
        }
    }

    /// See [`TaskDef::max_len`].
    pub fn max_len(&self) -> usize {
        self.0.max_len()
    }

    /// See [`TaskDef::causal`].
    pub fn causal(&self) -> bool {
        self.0.causal()
    }

    /// See [`TaskDef::split_note`].
    pub fn split_note(&self) -> Option<String> {
        self.0.split_note()
    }

    /// See [`TaskDef::held_out_set`].
    pub fn held_out_set(&self) -> Option<&[Example]> {
        self.0.held_out_set()
    }

    /// Whether its examples carry an input graph.
    pub fn input_graph(&self) -> bool {
        self.0.input_graph()
    }

    /// See [`TaskDef::objective`].
    pub fn objective(&self) -> Objective {
        self.0.objective()
    }

    /// How its predictions are scored.
    pub fn metric(&self) -> Metric {
        self.objective().metric()
    }

    /// See [`TaskDef::sizes`].
    pub fn sizes(&self) -> Option<Sizes> {
        self.0.sizes()
    }

    /// See [`TaskDef::probe`].
    pub fn probe(&self) -> Option<Batch> {
        self.0.probe()
    }

    /// See [`TaskDef::example`].
    pub fn example(&self, rng: &mut StdRng, split: Split) -> Example {
        self.0.example(rng, split)
    }

    /// `batch` training examples, padded to the longest.
    pub fn sample(&self, rng: &mut StdRng, batch: usize) -> Batch {
        self.sample_split(rng, batch, Split::Train)
    }

    /// `batch` examples of `split`, padded to the longest.
    pub fn sample_split(&self, rng: &mut StdRng, batch: usize, split: Split) -> Batch {
        batch_of((0..batch).map(|_| self.example(rng, split)).collect())
    }
}

/// Pads examples to the longest; padded positions and pairs get token 0 and no target.
pub fn batch_of(examples: Vec<Example>) -> Batch {
    let b = examples.len();
    let n = examples.iter().map(|e| e.tokens.len()).max().unwrap_or(0);
    let has_edge_tokens = examples.iter().any(|e| !e.edge_tokens.is_empty());
    let has_edge_targets = examples.iter().any(|e| !e.edge_targets.is_empty());
    let has_adjacency = examples.iter().any(|e| !e.adjacency.is_empty());
    let has_graph_targets = examples.iter().any(|e| e.graph_target.is_some());
    let graph_targets = examples.iter().map(|e| e.graph_target).collect();
    let has_node_values = examples.iter().any(|e| !e.node_values.is_empty());
    let has_edge_values = examples.iter().any(|e| !e.edge_values.is_empty());
    let has_graph_values = examples.iter().any(|e| e.graph_value.is_some());
    let graph_values = examples.iter().map(|e| e.graph_value).collect();
    let node_features = padded_features(&examples, n, 1, |e| &e.node_features);
    let edge_features = padded_features(&examples, n, 2, |e| &e.edge_features);
    let mut tokens = Vec::with_capacity(b * n);
    let mut targets = Vec::with_capacity(b * n);
    let mut valid = Vec::with_capacity(b * n);
    let mut edge_tokens = Vec::with_capacity(if has_edge_tokens { b * n * n } else { 0 });
    let mut edge_targets = Vec::with_capacity(if has_edge_targets { b * n * n } else { 0 });
    let mut adjacency = Vec::with_capacity(if has_adjacency { b * n * n } else { 0 });
    let mut node_values = Vec::with_capacity(if has_node_values { b * n } else { 0 });
    let mut edge_values = Vec::with_capacity(if has_edge_values { b * n * n } else { 0 });
    for e in &examples {
        let len = e.tokens.len();
        let pad = n - len;
        tokens.extend(&e.tokens);
        tokens.extend(std::iter::repeat(0).take(pad));
        targets.extend(&e.targets);
        targets.extend(std::iter::repeat(None).take(pad));
        valid.extend(std::iter::repeat(true).take(len));
        valid.extend(std::iter::repeat(false).take(pad));
        if has_node_values {
            node_values.extend((0..n).map(|i| e.node_values.get(i).copied().flatten()));
        }
        for i in 0..n {
            for j in 0..n {
                let inside = i < len && j < len;
                if has_edge_tokens {
                    let t = if inside {
                        e.edge_tokens.get(i * len + j)
                    } else {
                        None
                    };
                    edge_tokens.push(t.copied().unwrap_or(0));
                }
                if has_edge_targets {
                    let t = if inside {
                        e.edge_targets.get(i * len + j)
                    } else {
                        None
                    };
                    edge_targets.push(t.copied().flatten());
                }
                if has_adjacency {
                    adjacency.push(inside && e.adjacency.get(i * len + j) == Some(&true));
                }
                if has_edge_values {
                    let v = if inside {
                        e.edge_values.get(i * len + j).copied().flatten()
                    } else {
                        None
                    };
                    edge_values.push(v);
                }
            }
        }
    }
    let padded = valid.iter().any(|v| !v);
    Batch {
        tokens,
        b,
        n,
        valid: padded.then_some(valid),
        targets,
        edge_tokens: has_edge_tokens.then_some(edge_tokens),
        edge_targets: has_edge_targets.then_some(edge_targets),
        adjacency: has_adjacency.then_some(adjacency),
        graph_targets: has_graph_targets.then_some(graph_targets),
        node_features,
        edge_features,
        node_values: has_node_values.then_some(node_values),
        edge_values: has_edge_values.then_some(edge_values),
        graph_values: has_graph_values.then_some(graph_values),
        dropout: None,
    }
}

/// Each example's features (`[len^order × f]`, read by `of`) laid out `[b × n^order × f]`,
/// zeros at padding; `None` when no example has any.
fn padded_features(
    examples: &[Example],
    n: usize,
    order: u32,
    of: impl Fn(&Example) -> &Vec<f32>,
) -> Option<Vec<f32>> {
    let width = examples.iter().find_map(|e| {
        let len = e.tokens.len().pow(order);
        (!of(e).is_empty() && len > 0).then(|| of(e).len() / len)
    })?;
    let mut out = vec![0.0; examples.len() * n.pow(order) * width];
    for (g, e) in examples.iter().enumerate() {
        let len = e.tokens.len();
        let values = of(e);
        if values.is_empty() {
            continue;
        }
        let base = g * n.pow(order) * width;
        if order == 1 {
            out[base..base + len * width].copy_from_slice(&values[..len * width]);
        } else {
            for i in 0..len {
                let row = &values[i * len * width..(i + 1) * len * width];
                let at = base + i * n * width;
                out[at..at + len * width].copy_from_slice(row);
            }
        }
    }
    Some(out)
}
