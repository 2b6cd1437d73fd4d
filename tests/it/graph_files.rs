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
    let dir = crate::reliability::tmp("graph-round-trip");
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
    let dir = crate::reliability::tmp("graph-malformed");
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
    let dir = crate::reliability::tmp("graph-nan");
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
        )
        .unwrap(),
    );
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
