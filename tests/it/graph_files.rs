//! Graph datasets from files (issue 19): the reader refuses malformed graphs naming the graph
//! and the field, writes and reads back the same graphs, and reads the networkx sample the same
//! from JSON Lines and from safetensors.

use std::path::{Path, PathBuf};

use quartic::data::graphs::{
    read_graphs, write_jsonl, EdgeLabels, GraphRecord, Inputs, Target, MAX_GRAPH_NODES,
};

fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/graphs")
        .join(name)
}

#[test]
fn graphs_written_are_read_back_the_same() {
    let graphs = vec![
        GraphRecord {
            num_nodes: 3,
            nodes: Inputs::Tokens(vec![1, 2, 3]),
            edge_index: vec![[0, 1], [1, 0], [2, 2]],
            edges: Some(Inputs::Tokens(vec![1, 1, 4])),
            y: Some(Target::Graph(2.0)),
            edge_label: None,
        },
        GraphRecord {
            num_nodes: 2,
            nodes: Inputs::Features {
                dim: 3,
                values: vec![0.5, -1.25, 3.0, 1e-3, 7.0, -0.0],
            },
            edge_index: vec![],
            edges: None,
            y: Some(Target::Nodes(vec![Some(0.25), None])),
            edge_label: Some(EdgeLabels {
                pairs: None,
                values: vec![Some(0.0), None, Some(1.0), Some(2.5)],
            }),
        },
        GraphRecord {
            num_nodes: 4,
            nodes: Inputs::Tokens(vec![0, 0, 0, 0]),
            edge_index: vec![[0, 3], [3, 0]],
            edges: Some(Inputs::Features {
                dim: 2,
                values: vec![1.0, 2.0, 3.0, 4.0],
            }),
            y: None,
            edge_label: Some(EdgeLabels {
                pairs: Some(vec![[0, 1], [2, 3]]),
                values: vec![Some(1.0), Some(0.0)],
            }),
        },
    ];
    let dir = crate::common::scratch("graph-round-trip");
    let path = dir.join("g.jsonl");
    write_jsonl(&path, &graphs).unwrap();
    assert_eq!(read_graphs(&path).unwrap(), graphs);
}

#[test]
fn the_sample_reads_the_same_from_both_containers() {
    for task in ["triangles", "shortest_paths", "clustering"] {
        let jsonl = read_graphs(&sample(&format!("{task}.valid.jsonl"))).unwrap();
        let st = read_graphs(&sample(&format!("{task}.valid.safetensors"))).unwrap();
        assert_eq!(jsonl.len(), 100, "{task}");
        assert_eq!(jsonl, st, "{task}");
    }
    // every task file of the sample reads, and holds what its name says
    for task in [
        "components",
        "bipartite",
        "triangles",
        "clustering",
        "shortest_paths",
    ] {
        for split in ["train", "valid"] {
            let g = read_graphs(&sample(&format!("{task}.{split}.jsonl"))).unwrap();
            assert!(g.len() >= 100, "{task}.{split}");
            let level_ok = |r: &GraphRecord| match task {
                "components" | "bipartite" => matches!(r.y, Some(Target::Graph(_))),
                "triangles" | "clustering" => matches!(r.y, Some(Target::Nodes(_))),
                _ => r.edge_label.is_some(),
            };
            assert!(g.iter().all(level_ok), "{task}.{split}");
        }
    }
}

/// `(what, file text, what the error must name)`.
const MALFORMED: &[(&str, &str, &str)] = &[
    (
        "missing node inputs",
        r#"{"edge_index": [[0], [1]], "num_nodes": 2}"#,
        "graph 1 (line 2), field `tokens`: missing",
    ),
    (
        "missing edge_index",
        r#"{"tokens": [1, 2]}"#,
        "graph 1 (line 2), field `edge_index`: missing",
    ),
    (
        "index out of range",
        r#"{"tokens": [1, 2], "edge_index": [[0, 1], [1, 2]]}"#,
        "graph 1 (line 2), field `edge_index`: edge 1 is (1, 2), but the graph has nodes 0..2",
    ),
    (
        "edge_index rows of different lengths",
        r#"{"tokens": [1, 2], "edge_index": [[0, 1], [1]]}"#,
        "field `edge_index`: 2 sources but 1 targets",
    ),
    (
        "wrong number of edge tokens",
        r#"{"tokens": [1, 2], "edge_index": [[0], [1]], "edge_tokens": [1, 1]}"#,
        "field `edge_tokens`: 2 entries for the 1 edges",
    ),
    (
        "wrong number of node targets",
        r#"{"tokens": [1, 2], "edge_index": [[], []], "y": [0, 1, 1]}"#,
        "field `y`: 3 values for 2 nodes",
    ),
    (
        "num_nodes disagrees with the tokens",
        r#"{"num_nodes": 3, "tokens": [1, 2], "edge_index": [[], []]}"#,
        "field `tokens`: 2 entries for 3 nodes",
    ),
    (
        "empty graph",
        r#"{"tokens": [], "edge_index": [[], []]}"#,
        "graph 1 (line 2), field `num_nodes`: the graph is empty",
    ),
    (
        "ragged features",
        r#"{"x": [[1.0, 2.0], [3.0]], "edge_index": [[], []]}"#,
        "field `x`: row 1 has 1 features, row 0 has 2",
    ),
    (
        "a feature that is not a number",
        r#"{"x": [[1.0, "a"]], "edge_index": [[], []]}"#,
        "field `x`: row 0: \"a\" is not a number",
    ),
    (
        "a negative token",
        r#"{"tokens": [1, -2], "edge_index": [[], []]}"#,
        "field `tokens`: -2 is not a non-negative integer",
    ),
    (
        "tokens and features both",
        r#"{"tokens": [1], "x": [[1.0]], "edge_index": [[], []]}"#,
        "field `tokens`: give `tokens` or `x`, not both",
    ),
    (
        "edge labels of the wrong length",
        r#"{"tokens": [1, 2], "edge_index": [[], []], "edge_label": [0, 1, 0]}"#,
        "field `edge_label`: 3 values for 4",
    ),
    (
        "a misspelled field",
        r#"{"tokens": [1, 2], "edge_index": [[], []], "edge_atr": [1]}"#,
        "field `edge_atr`: unknown field",
    ),
    (
        "not JSON",
        r#"{"tokens": [1, 2], "edge_index": [[], []]"#,
        "graph 1 (line 2): not JSON",
    ),
    (
        "an overflowing number",
        r#"{"x": [[1e999]], "edge_index": [[], []]}"#,
        "graph 1 (line 2): not JSON",
    ),
];

#[test]
fn malformed_graphs_are_refused_naming_the_graph_and_the_field() {
    let dir = crate::common::scratch("graph-malformed");
    let good = r#"{"tokens": [1, 2], "edge_index": [[0], [1]], "y": 1}"#;
    for (what, bad, want) in MALFORMED {
        let path = dir.join("bad.jsonl");
        std::fs::write(&path, format!("{good}\n{bad}\n")).unwrap();
        let err = read_graphs(&path).expect_err(what).to_string();
        assert!(err.contains(want), "{what}: {err}\nshould contain: {want}");
        assert!(
            err.contains("bad.jsonl"),
            "{what}: the file is named: {err}"
        );
    }
    let path = dir.join("empty.jsonl");
    std::fs::write(&path, "\n\n").unwrap();
    let err = read_graphs(&path).unwrap_err().to_string();
    assert!(err.contains("holds no graphs"), "{err}");
    let huge = format!(
        r#"{{"num_nodes": {}, "tokens": [1], "edge_index": [[], []]}}"#,
        MAX_GRAPH_NODES + 1
    );
    std::fs::write(&path, huge).unwrap();
    let err = read_graphs(&path).unwrap_err().to_string();
    assert!(err.contains("more than the 1024"), "{err}");
}

#[test]
fn a_nan_feature_in_safetensors_is_refused() {
    use quartic::files::{encode_safetensors, f32_bytes};
    let dir = crate::common::scratch("graph-nan");
    let path = dir.join("nan.safetensors");
    // offsets and indices are stored as f32 here (the reader takes any number type)
    let tensors = vec![
        (
            "node_offsets".to_string(),
            vec![3],
            f32_bytes([0.0, 2.0, 3.0]),
        ),
        (
            "edge_offsets".to_string(),
            vec![3],
            f32_bytes([0.0, 1.0, 1.0]),
        ),
        (
            "x".to_string(),
            vec![3, 2],
            f32_bytes([1.0, 2.0, 3.0, 4.0, 5.0, f32::NAN]),
        ),
        ("edge_index".to_string(), vec![2, 1], f32_bytes([0.0, 1.0])),
    ];
    std::fs::write(&path, encode_safetensors(&path, &tensors, None).unwrap()).unwrap();
    let err = read_graphs(&path).unwrap_err().to_string();
    assert!(
        err.contains("graph 1, field `x`: row 0 feature 1 is NaN"),
        "{err}"
    );
}

#[test]
fn evaluation_covers_every_held_out_graph_once() {
    use dfdx::prelude::*;
    use quartic::models::{Model, ModelConfig};
    use quartic::nn::Init;
    use quartic::train::tasks::{GraphFiles, Level};
    use quartic::train::trainer::evaluate;
    use quartic::train::Task;
    let task = Task::new(
        GraphFiles::from_files(
            &sample("triangles.train.jsonl"),
            &sample("triangles.valid.jsonl"),
            Level::Node,
            None,
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(task.held_out_set().map(|s| s.len()), Some(100));
    let mut g = crate::reliability::graph_config("taylor", 8, task.max_len());
    g.num_tokens = task.num_tokens();
    g.io.edge_vocab = task.edge_vocab();
    let model = Model::<f32, Cpu>::new(
        &ModelConfig::Graph(g),
        None,
        &Init::random(&Cpu::default(), 1),
    )
    .unwrap();
    // the same set whatever the seed, the batch count or the batch size
    let (l1, a1) = evaluate(&model, &task, 0, 1, 7).unwrap();
    let (l2, a2) = evaluate(&model, &task, 99, 16, 100).unwrap();
    assert!(
        (l1 - l2).abs() < 1e-5 * l1.abs().max(1.0),
        "{l1} against {l2}"
    );
    assert!((a1 - a2).abs() < 1e-9, "{a1} against {a2}");
}

/// A graph of `n` nodes on a path 0 → 1 → … (no edges when `edges` is false) with `x` of two
/// features and `edge_attr` of three, node classes alternating.
pub fn featured(n: usize, seed: u64, edges: bool) -> GraphRecord {
    let x = crate::common::randn(seed, n * 2);
    let edge_index: Vec<[usize; 2]> = if edges {
        (0..n - 1).map(|i| [i, i + 1]).collect()
    } else {
        vec![]
    };
    let attr = crate::common::randn(seed + 1, edge_index.len() * 3);
    GraphRecord {
        num_nodes: n,
        nodes: Inputs::Features {
            dim: 2,
            values: x.iter().map(|&v| v as f32).collect(),
        },
        edges: Some(Inputs::Features {
            dim: 3,
            values: attr.iter().map(|&v| v as f32).collect(),
        }),
        edge_index,
        y: Some(Target::Nodes(
            (0..n).map(|i| Some((i % 2) as f64)).collect(),
        )),
        edge_label: None,
    }
}

#[test]
fn continuous_features_enter_through_linear_embeddings() {
    use dfdx::prelude::*;
    use quartic::models::{Model, ModelConfig, Readout};
    use quartic::nn::Init;
    use quartic::train::tasks::{batch_of, GraphFiles, Level};
    use quartic::train::trainer::forward_batch;
    use quartic::train::Task;
    let dir = crate::common::scratch("graph-features");
    let graphs = vec![
        featured(5, 1, true),
        featured(3, 3, true),
        featured(4, 5, false),
    ];
    let (train, valid) = (dir.join("train.jsonl"), dir.join("valid.jsonl"));
    write_jsonl(&train, &graphs).unwrap();
    write_jsonl(&valid, &graphs).unwrap();
    let task =
        Task::new(GraphFiles::from_files(&train, &valid, Level::Node, None).unwrap()).unwrap();
    assert_eq!(
        (task.vocab().node_features, task.vocab().edge_features),
        (2, 3)
    );
    let batch = batch_of(task.held_out_set().unwrap().to_vec());
    let (b, n) = (batch.b, batch.n);
    let nodes = batch.node_features.as_ref().unwrap();
    let edges = batch.edge_features.as_ref().unwrap();
    assert_eq!((nodes.len(), edges.len()), (b * n * 2, b * n * n * 3));
    for (g, record) in graphs.iter().enumerate() {
        let Inputs::Features { values: x, .. } = &record.nodes else {
            unreachable!()
        };
        let Some(Inputs::Features { values: attr, .. }) = &record.edges else {
            unreachable!()
        };
        for i in 0..n {
            let want = |c: usize| {
                if i < record.num_nodes {
                    x[i * 2 + c]
                } else {
                    0.0
                }
            };
            assert_eq!(
                nodes[(g * n + i) * 2..(g * n + i + 1) * 2],
                [want(0), want(1)]
            );
            for j in 0..n {
                let at = ((g * n + i) * n + j) * 3;
                let listed = record.edge_index.iter().position(|&e| e == [i, j]);
                let want: Vec<f32> = match listed {
                    Some(e) => attr[e * 3..(e + 1) * 3].to_vec(),
                    None => vec![0.0; 3],
                };
                assert_eq!(edges[at..at + 3], want[..], "graph {g} edge ({i}, {j})");
            }
        }
    }
    // a model with both embeddings reads them; padded features are never read
    let mut g = crate::reliability::graph_config("taylor", 8, task.max_len());
    g.num_tokens = task.num_tokens();
    g.io.edge_vocab = task.edge_vocab();
    g.io.node_features = 2;
    g.io.edge_features = 3;
    let model = Model::<f64, Cpu>::new(
        &ModelConfig::Graph(g.clone()),
        None,
        &Init::random(&Cpu::default(), 1),
    )
    .unwrap();
    let logits = |bt: &quartic::train::tasks::Batch| {
        forward_batch::<f64, Cpu, NoneTape>(&model, bt, Readout::Nodes)
            .unwrap()
            .logits
            .as_vec()
    };
    let base = logits(&batch);
    let mut changed = batch.clone();
    changed.node_features.as_mut().unwrap()[2 * n * 2] += 1.0; // graph 2, node 0
    let moved = logits(&changed);
    let v = task.num_tokens();
    assert_ne!(
        moved[2 * n * v..(2 * n + 1) * v],
        base[2 * n * v..(2 * n + 1) * v]
    );
    assert_eq!(moved[..2 * n * v], base[..2 * n * v], "another graph moved");
    let mut edge_moved = batch.clone();
    edge_moved.edge_features.as_mut().unwrap()[0] += 1.0; // graph 0, edge (0, 0)
    assert_ne!(logits(&edge_moved)[..n * v], base[..n * v]);
    let mut padded = batch.clone();
    padded.node_features.as_mut().unwrap()[(n + 4) * 2] = 50.0; // graph 1 has 3 nodes
    padded.edge_features.as_mut().unwrap()[((n + 4) * n + 4) * 3] = 50.0;
    // (the padded node's own logits are never scored; every real node's stay the same)
    let real = |l: &[f64]| -> Vec<f64> {
        (0..b * n)
            .filter(|&r| batch.valid.as_ref().is_none_or(|v| v[r]))
            .flat_map(|r| l[r * v..(r + 1) * v].to_vec())
            .collect()
    };
    assert_eq!(real(&logits(&padded)), real(&base), "padding read");
    // a model without the embeddings refuses features, and one with them needs them
    let mut plain_cfg = g;
    plain_cfg.io.node_features = 0;
    let plain = Model::<f64, Cpu>::new(
        &ModelConfig::Graph(plain_cfg),
        None,
        &Init::random(&Cpu::default(), 1),
    )
    .unwrap();
    let err = forward_batch::<f64, Cpu, NoneTape>(&plain, &batch, Readout::Nodes)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("node features were given"), "{err}");
    let mut bare = batch.clone();
    bare.edge_features = None;
    let err = forward_batch::<f64, Cpu, NoneTape>(&model, &bare, Readout::Nodes)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("reads edge features but none were given"),
        "{err}"
    );
    // a graph with edges but no `edge_attr` beside graphs that have it is refused
    let mut missing = featured(4, 7, true);
    missing.edges = None;
    write_jsonl(&train, &[graphs[0].clone(), missing]).unwrap();
    let err = GraphFiles::from_files(&train, &valid, Level::Node, None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("field `edge_attr`") && err.contains("0 features per edge"),
        "{err}"
    );
}
