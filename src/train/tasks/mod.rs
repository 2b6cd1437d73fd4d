//! Built-in tasks, generated in-process from a seed (no downloads), and character-level language
//! modelling on a user's text. Labels are recomputed from each task's definition (`labels`).
//!
//! Sequence tasks give each position a token and read predictions from the nodes. Graph tasks
//! also give every ordered pair (i, j) an edge token (the structure: is there an edge, its
//! label) and read predictions from the nodes or from the edges.

mod labels;

pub use labels::*;

use rand::rngs::StdRng;
use rand::Rng;

use crate::error::{Error, Result};

/// A batch of examples, padded to the longest: `[b × n]` tokens, validity and node targets,
/// and for graph tasks `[b × n × n]` edge tokens and edge targets.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub tokens: Vec<usize>,
    pub b: usize,
    pub n: usize,
    /// `[b × n]`: false at padding (`None` when nothing is padded).
    pub valid: Option<Vec<bool>>,
    /// `[b × n]`: the class to predict at each position, if any.
    pub targets: Vec<Option<usize>>,
    /// `[b × n × n]`: the token of edge (i, j), for tasks with edge inputs.
    pub edge_tokens: Option<Vec<usize>>,
    /// `[b × n × n]`: the class to predict on edge (i, j), for tasks read from the edges.
    pub edge_targets: Option<Vec<Option<usize>>>,
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
        }
    }
}

/// One example before batching. The edge vectors are `n × n` (empty when the task has none).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Example {
    pub tokens: Vec<usize>,
    pub targets: Vec<Option<usize>>,
    pub edge_tokens: Vec<usize>,
    pub edge_targets: Vec<Option<usize>>,
}

pub use crate::models::heads::Readout;

/// Which distribution an example comes from. Most tasks test on their training distribution;
/// `path-composition` tests on longer paths than it trains on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
    /// Test examples of one size (the path length, or k for k-hop).
    Size(usize),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Task {
    /// Sequences of 8–12 values below 16; every position predicts the sequence's maximum.
    Sanity,
    /// Values mod `modulus`, lengths `min_len..=max_len`; position i is positive when some j, k
    /// (any positions) give `x_i + x_j + x_k ≡ 0`. Each sequence draws its values from a random
    /// subset of residues (2–10 of them), which spreads the fraction of positives.
    Match3 {
        modulus: usize,
        min_len: usize,
        max_len: usize,
    },
    /// A random relation A (edge probability `p`) on `min_nodes..=max_nodes` nodes; edge (i, j)
    /// gets the token A[i, j] + 2·A[j, i] and predicts (A∘A)[i, j].
    RelationComposition {
        min_nodes: usize,
        max_nodes: usize,
        p: f64,
    },
    /// The relation of `relation-composition` on nodes coloured from `colours` (node tokens);
    /// edge (i, j) predicts whether some u ∈ N(i), v ∈ N(j), u ≠ v share a colour.
    QuotientComposition {
        min_nodes: usize,
        max_nodes: usize,
        p: f64,
        colours: usize,
    },
    /// A sequence x over [0, n) of length n in `min_len..=max_len`; position 0 predicts
    /// whether x[x[0]] == 0 (balanced: half the sequences are positive).
    FunctionComposition { min_len: usize, max_len: usize },
    /// A chain of k edges labelled with elements of S3 through k + 1 of `nodes` nodes (placed
    /// at random; edge tokens in both directions, `PATH_*`); the query edge from the chain's
    /// start to its end is marked and predicts the composed label. Trains on k in `train_k`,
    /// tests on k in `2..=test_max_k`.
    PathComposition {
        nodes: usize,
        train_k: (usize, usize),
        test_max_k: usize,
    },
    /// An undirected random graph (edge tokens 0/1, probability `p`); every node predicts
    /// whether it lies on a triangle.
    Triangles {
        min_nodes: usize,
        max_nodes: usize,
        p: f64,
    },
    /// k-hop induction heads: the first token says k (1..=`max_k`), the rest are symbols below
    /// `alphabet`; every symbol position predicts the symbol k hops away (`labels::k_hop`), or
    /// "none" (class `alphabet`).
    KHop {
        alphabet: usize,
        max_k: usize,
        min_len: usize,
        max_len: usize,
    },
    /// Next-byte prediction on a text (causal), windows of `context` bytes. Training windows
    /// lie in the bytes before `held_out`, held-out windows in the bytes from it on (the last
    /// [`HELD_OUT_PERCENT`] % of the file): no held-out byte is ever trained on.
    Text {
        name: String,
        bytes: Vec<u8>,
        context: usize,
        held_out: usize,
    },
}

pub const TASKS: [&str; 9] = [
    "sanity",
    "match3",
    "relation-composition",
    "quotient-composition",
    "function-composition",
    "path-composition",
    "triangles",
    "k-hop",
    "text (--data FILE)",
];

/// The share of a training text held out for evaluation: its end.
pub const HELD_OUT_PERCENT: usize = 10;

/// `path-composition` edge tokens: 0 off the path; a chain edge labelled g is `PATH_FORWARD + g`
/// in its direction and `PATH_BACKWARD + g` against it; the query edge and its reverse.
pub const PATH_FORWARD: usize = 1;
pub const PATH_BACKWARD: usize = 7;
pub const PATH_QUERY: usize = 13;
pub const PATH_QUERY_BACKWARD: usize = 14;

/// A uniformly random 0/1 relation.
fn relation(rng: &mut StdRng, n: usize, p: f64) -> Vec<Vec<bool>> {
    (0..n)
        .map(|_| (0..n).map(|_| rng.gen_bool(p)).collect())
        .collect()
}

/// Edge tokens of a relation, both directions at once: A[i, j] + 2·A[j, i].
fn relation_tokens(a: &[Vec<bool>]) -> Vec<usize> {
    let n = a.len();
    (0..n * n)
        .map(|e| a[e / n][e % n] as usize + 2 * a[e % n][e / n] as usize)
        .collect()
}

fn flat_targets(rows: &[Vec<bool>]) -> Vec<Option<usize>> {
    rows.iter()
        .flat_map(|r| r.iter().map(|&x| Some(x as usize)))
        .collect()
}

/// A random order of `0..n`.
fn shuffled(rng: &mut StdRng, n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        v.swap(i, rng.gen_range(0..=i));
    }
    v
}

impl Task {
    /// A built-in task by name, or a text file for `text`.
    pub fn from_name(name: &str, data: Option<&str>, context: usize) -> Result<Self> {
        if let Some(path) = data {
            if context == 0 {
                return Err(Error::config("text task", "the context must be positive"));
            }
            let bytes = crate::files::read_capped(
                std::path::Path::new(path),
                crate::files::TEXT_CAP,
                "the training text",
            )?;
            // the held-out part: the last 10 %, and at least one window
            let window = context + 1;
            let held = (bytes.len() * HELD_OUT_PERCENT / 100).max(window);
            if bytes.len() < held + window {
                return Err(Error::config(
                    "text task",
                    format!(
                        "{path} has {} bytes; with context {context} it needs at least {}: one \
                         window of {window} bytes to train on and the last {HELD_OUT_PERCENT} % \
                         (at least one window) held out",
                        bytes.len(),
                        2 * window
                    ),
                ));
            }
            return Ok(Self::Text {
                name: path.into(),
                held_out: bytes.len() - held,
                bytes,
                context,
            });
        }
        Ok(match name {
            "sanity" => Self::Sanity,
            "match3" => Self::Match3 {
                modulus: 37,
                min_len: 30,
                max_len: 35,
            },
            "relation-composition" => Self::RelationComposition {
                min_nodes: 6,
                max_nodes: 8,
                p: 0.33,
            },
            "quotient-composition" => Self::QuotientComposition {
                min_nodes: 6,
                max_nodes: 8,
                p: 0.33,
                colours: 5,
            },
            "function-composition" => Self::FunctionComposition {
                min_len: 25,
                max_len: 30,
            },
            "path-composition" => Self::PathComposition {
                nodes: 11,
                train_k: (2, 3),
                test_max_k: 10,
            },
            "triangles" => Self::Triangles {
                min_nodes: 8,
                max_nodes: 12,
                p: 0.3,
            },
            "k-hop" => Self::KHop {
                alphabet: 4,
                max_k: 4,
                min_len: 24,
                max_len: 32,
            },
            "text" => {
                return Err(Error::config("task", "the text task needs `--data FILE`"));
            }
            other => {
                return Err(Error::config(
                    "task",
                    format!("unknown task `{other}` (tasks: {})", TASKS.join(", ")),
                ))
            }
        })
    }

    pub fn name(&self) -> String {
        match self {
            Self::Sanity => "sanity".into(),
            Self::Match3 { .. } => "match3".into(),
            Self::RelationComposition { .. } => "relation-composition".into(),
            Self::QuotientComposition { .. } => "quotient-composition".into(),
            Self::FunctionComposition { .. } => "function-composition".into(),
            Self::PathComposition { .. } => "path-composition".into(),
            Self::Triangles { .. } => "triangles".into(),
            Self::KHop { .. } => "k-hop".into(),
            Self::Text { name, .. } => format!("text:{name}"),
        }
    }

    /// The node vocabulary; node classes are below it too.
    pub fn num_tokens(&self) -> usize {
        match self {
            Self::Sanity => 16,
            Self::Match3 { modulus, .. } => *modulus,
            Self::RelationComposition { .. } | Self::PathComposition { .. } => 2,
            Self::QuotientComposition { colours, .. } => (*colours).max(2),
            Self::FunctionComposition { max_len, .. } => *max_len,
            Self::Triangles { .. } => 2,
            Self::KHop {
                alphabet, max_k, ..
            } => alphabet + (*max_k).max(1),
            Self::Text { .. } => 256,
        }
    }

    /// How many edge tokens there are (0: the task gives no edge inputs).
    pub fn edge_vocab(&self) -> usize {
        match self {
            Self::RelationComposition { .. } | Self::QuotientComposition { .. } => 4,
            Self::PathComposition { .. } => 15,
            Self::Triangles { .. } => 2,
            _ => 0,
        }
    }

    /// How many classes an edge predicts (0: the task reads nodes).
    pub fn edge_classes(&self) -> usize {
        match self {
            Self::RelationComposition { .. } | Self::QuotientComposition { .. } => 2,
            Self::PathComposition { .. } => 6,
            _ => 0,
        }
    }

    pub fn readout(&self) -> Readout {
        if self.edge_classes() > 0 {
            Readout::Edges
        } else {
            Readout::Nodes
        }
    }

    pub fn max_len(&self) -> usize {
        match self {
            Self::Sanity => 12,
            Self::Match3 { max_len, .. }
            | Self::FunctionComposition { max_len, .. }
            | Self::KHop { max_len, .. } => *max_len,
            Self::RelationComposition { max_nodes, .. }
            | Self::QuotientComposition { max_nodes, .. }
            | Self::Triangles { max_nodes, .. } => *max_nodes,
            Self::PathComposition { nodes, .. } => *nodes,
            Self::Text { context, .. } => *context,
        }
    }

    /// Whether the task needs a causal model.
    pub fn causal(&self) -> bool {
        matches!(self, Self::Text { .. })
    }

    /// How a text task's file is split between training and held-out windows (for banners).
    pub fn split_note(&self) -> Option<String> {
        match self {
            Self::Text {
                bytes, held_out, ..
            } => Some(format!(
                "{} bytes: training windows from the first {held_out}, held-out windows from \
                 the last {} ({HELD_OUT_PERCENT} %)",
                bytes.len(),
                bytes.len() - held_out
            )),
            _ => None,
        }
    }

    /// The sizes the task can be tested at one by one (`Split::Size`), and what a size is.
    pub fn sizes(&self) -> Option<(&'static str, Vec<usize>)> {
        match self {
            Self::PathComposition { test_max_k, .. } => {
                Some(("path length k", (2..=*test_max_k).collect()))
            }
            Self::KHop { max_k, .. } => Some(("hops k", (1..=*max_k).collect())),
            _ => None,
        }
    }

    /// Fixed examples every model is also tested on (`triangles`: two triangles against a
    /// 6-cycle, which message passing on node degrees cannot tell apart).
    pub fn probe(&self) -> Option<Batch> {
        match self {
            Self::Triangles { .. } => {
                let graph = |edges: &[(usize, usize)]| {
                    let mut adj = vec![vec![false; 6]; 6];
                    for &(a, b) in edges {
                        adj[a][b] = true;
                        adj[b][a] = true;
                    }
                    triangles_example(&adj)
                };
                let two_triangles = graph(&[(0, 1), (1, 2), (2, 0), (3, 4), (4, 5), (5, 3)]);
                let hexagon = graph(&[(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 0)]);
                Some(batch_of(vec![two_triangles, hexagon]))
            }
            _ => None,
        }
    }

    /// One example of the given split.
    pub fn example(&self, rng: &mut StdRng, split: Split) -> Example {
        match self {
            Self::Sanity => {
                let n = rng.gen_range(8..=12);
                let tokens: Vec<usize> = (0..n).map(|_| rng.gen_range(0..16)).collect();
                let max = *tokens.iter().max().expect("n ≥ 8");
                Example {
                    targets: vec![Some(max); n],
                    tokens,
                    ..Example::default()
                }
            }
            Self::Match3 {
                modulus,
                min_len,
                max_len,
            } => {
                let m = *modulus;
                let n = rng.gen_range(*min_len..=*max_len);
                let size = rng.gen_range(2..=10.min(m));
                let subset: Vec<usize> = shuffled(rng, m).into_iter().take(size).collect();
                let tokens: Vec<usize> = (0..n)
                    .map(|_| subset[rng.gen_range(0..subset.len())])
                    .collect();
                let targets = match3_labels(&tokens, m)
                    .into_iter()
                    .map(|l| Some(l as usize))
                    .collect();
                Example {
                    tokens,
                    targets,
                    ..Example::default()
                }
            }
            Self::RelationComposition {
                min_nodes,
                max_nodes,
                p,
            } => {
                let n = rng.gen_range(*min_nodes..=*max_nodes);
                let a = relation(rng, n, *p);
                Example {
                    tokens: vec![0; n],
                    targets: vec![None; n],
                    edge_tokens: relation_tokens(&a),
                    edge_targets: flat_targets(&compose(&a)),
                }
            }
            Self::QuotientComposition {
                min_nodes,
                max_nodes,
                p,
                colours,
            } => {
                let n = rng.gen_range(*min_nodes..=*max_nodes);
                let a = relation(rng, n, *p);
                let colour: Vec<usize> = (0..n).map(|_| rng.gen_range(0..*colours)).collect();
                Example {
                    targets: vec![None; n],
                    edge_tokens: relation_tokens(&a),
                    edge_targets: flat_targets(&quotient_compose(&a, &colour)),
                    tokens: colour,
                }
            }
            Self::FunctionComposition { min_len, max_len } => {
                let n = rng.gen_range(*min_len..=*max_len);
                let positive = rng.gen_bool(0.5);
                let mut x: Vec<usize> = (0..n).map(|_| rng.gen_range(0..n)).collect();
                if positive {
                    // x[x[0]] = 0 (when x[0] = 0 this holds already)
                    let at = x[0];
                    x[at] = 0;
                } else {
                    // x[0] ≠ 0 (else x[x[0]] = x[0] = 0), then x[x[0]] ≠ 0
                    x[0] = rng.gen_range(1..n);
                    let at = x[0];
                    x[at] = rng.gen_range(1..n);
                }
                let mut targets = vec![None; n];
                targets[0] = Some(function_composition_label(&x) as usize);
                Example {
                    tokens: x,
                    targets,
                    ..Example::default()
                }
            }
            Self::PathComposition {
                nodes,
                train_k,
                test_max_k,
            } => {
                let k = match split {
                    Split::Train => rng.gen_range(train_k.0..=train_k.1),
                    Split::Test => rng.gen_range(2..=*test_max_k),
                    Split::Size(k) => k.clamp(2, nodes - 1),
                };
                let n = *nodes;
                let walk: Vec<usize> = shuffled(rng, n).into_iter().take(k + 1).collect();
                let labels: Vec<usize> = (0..k).map(|_| rng.gen_range(0..6)).collect();
                let mut edge_tokens = vec![0; n * n];
                for (t, &g) in labels.iter().enumerate() {
                    edge_tokens[walk[t] * n + walk[t + 1]] = PATH_FORWARD + g;
                    edge_tokens[walk[t + 1] * n + walk[t]] = PATH_BACKWARD + g;
                }
                let query = walk[0] * n + walk[k];
                edge_tokens[query] = PATH_QUERY;
                edge_tokens[walk[k] * n + walk[0]] = PATH_QUERY_BACKWARD;
                let mut edge_targets = vec![None; n * n];
                edge_targets[query] = Some(path_label(&labels));
                Example {
                    tokens: vec![0; n],
                    targets: vec![None; n],
                    edge_tokens,
                    edge_targets,
                }
            }
            Self::Triangles {
                min_nodes,
                max_nodes,
                p,
            } => {
                let n = rng.gen_range(*min_nodes..=*max_nodes);
                let mut adj = vec![vec![false; n]; n];
                for i in 0..n {
                    for j in i + 1..n {
                        let e = rng.gen_bool(*p);
                        adj[i][j] = e;
                        adj[j][i] = e;
                    }
                }
                triangles_example(&adj)
            }
            Self::KHop {
                alphabet,
                max_k,
                min_len,
                max_len,
            } => {
                let k = match split {
                    Split::Size(k) => k.clamp(1, *max_k),
                    _ => rng.gen_range(1..=*max_k),
                };
                let n = rng.gen_range(*min_len..=*max_len);
                let body: Vec<usize> = (1..n).map(|_| rng.gen_range(0..*alphabet)).collect();
                let mut tokens = vec![alphabet + k - 1];
                tokens.extend(&body);
                let mut targets = vec![None];
                targets
                    .extend((0..body.len()).map(|i| Some(k_hop(&body, i, k).unwrap_or(*alphabet))));
                Example {
                    tokens,
                    targets,
                    ..Example::default()
                }
            }
            Self::Text {
                bytes,
                context,
                held_out,
                ..
            } => {
                let window = context + 1;
                let start = match split {
                    Split::Train => rng.gen_range(0..=*held_out - window),
                    Split::Test | Split::Size(_) => rng.gen_range(*held_out..=bytes.len() - window),
                };
                let window = &bytes[start..start + context + 1];
                Example {
                    tokens: window[..*context].iter().map(|&b| b as usize).collect(),
                    targets: window[1..].iter().map(|&b| Some(b as usize)).collect(),
                    ..Example::default()
                }
            }
        }
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

/// The triangles task's example for an undirected graph.
fn triangles_example(adj: &[Vec<bool>]) -> Example {
    let n = adj.len();
    Example {
        tokens: vec![0; n],
        targets: on_triangle(adj)
            .into_iter()
            .map(|t| Some(t as usize))
            .collect(),
        edge_tokens: (0..n * n).map(|e| adj[e / n][e % n] as usize).collect(),
        edge_targets: Vec::new(),
    }
}

/// Pads examples to the longest; padded positions and pairs get token 0 and no target.
pub fn batch_of(examples: Vec<Example>) -> Batch {
    let b = examples.len();
    let n = examples.iter().map(|e| e.tokens.len()).max().unwrap_or(0);
    let has_edge_tokens = examples.iter().any(|e| !e.edge_tokens.is_empty());
    let has_edge_targets = examples.iter().any(|e| !e.edge_targets.is_empty());
    let mut tokens = Vec::with_capacity(b * n);
    let mut targets = Vec::with_capacity(b * n);
    let mut valid = Vec::with_capacity(b * n);
    let mut edge_tokens = Vec::with_capacity(if has_edge_tokens { b * n * n } else { 0 });
    let mut edge_targets = Vec::with_capacity(if has_edge_targets { b * n * n } else { 0 });
    for e in &examples {
        let len = e.tokens.len();
        let pad = n - len;
        tokens.extend(&e.tokens);
        tokens.extend(std::iter::repeat(0).take(pad));
        targets.extend(&e.targets);
        targets.extend(std::iter::repeat(None).take(pad));
        valid.extend(std::iter::repeat(true).take(len));
        valid.extend(std::iter::repeat(false).take(pad));
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
    }
}
