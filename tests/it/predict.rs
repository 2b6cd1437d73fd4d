//! `quartic predict` and `quartic forward --graphs` on graph files: one line per graph, in the
//! file's order and the file's layout; the predictions agree with the outputs `forward`
//! prints and, scored against the file's own labels here, with what `eval` reports; graphs the
//! model cannot read and files that must not be overwritten are refused.

use std::path::{Path, PathBuf};

use quartic::data::graphs::{read_graphs, write_jsonl, GraphRecord, Inputs, Target};
use serde_json::Value;

use crate::common::{quartic, text};

fn sample(name: &str) -> String {
    format!("{}/data/graphs/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A small run on `data` predicting `level` with `loss`; its checkpoint.
fn trained(dir: &Path, data: &str, level: &str, loss: &str) -> PathBuf {
    let out = dir.join(format!("{data}-{level}-{loss}"));
    let train = sample(&format!("{data}.train.jsonl"));
    let valid = sample(&format!("{data}.valid.jsonl"));
    let r = quartic(&[
        "train",
        "--graphs",
        &train,
        "--valid",
        &valid,
        "--target",
        level,
        "--loss",
        loss,
        "--dim",
        "16",
        "--dim-edges",
        "8",
        "--depth",
        "1",
        "--steps",
        "30",
        "--batch",
        "8",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    out.join("checkpoint.safetensors")
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn predict(ckpt: &Path, graphs: &str, out: &Path) -> std::process::Output {
    quartic(&[
        "predict",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--graphs",
        graphs,
        "--out",
        out.to_str().unwrap(),
        "--batch",
        "7",
    ])
}

/// `eval`'s reported metric (the number after `accuracy` or `mean absolute error`).
fn evaluated(ckpt: &Path) -> f64 {
    let r = quartic(&["eval", "--checkpoint", ckpt.to_str().unwrap()]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    let said = text(&r.stdout);
    let tail = said
        .split(" | ")
        .find_map(|p| {
            p.strip_prefix("accuracy ")
                .or_else(|| p.strip_prefix("mean absolute error "))
        })
        .unwrap_or_else(|| panic!("no metric in {said}"));
    let number = tail.split(['%', '\n']).next().unwrap();
    number.trim().parse().unwrap()
}

fn numbers(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn predictions_agree_with_forward_and_with_eval() {
    let dir = crate::common::scratch("predict");
    let valid = |data: &str| sample(&format!("{data}.valid.jsonl"));
    // node classes: one class id per node; scored against `y` here, the accuracy eval reports
    let ckpt = trained(&dir, "triangles", "node", "cross-entropy");
    let out = dir.join("triangles.jsonl");
    let r = predict(&ckpt, &valid("triangles"), &out);
    assert!(r.status.success(), "{}", text(&r.stderr));
    assert!(text(&r.stdout).contains("predicted 100 graphs (a class per node)"));
    let records = read_graphs(Path::new(&valid("triangles"))).unwrap();
    let predicted = lines(&out);
    assert_eq!(predicted.len(), records.len());
    let (mut right, mut all) = (0, 0);
    for (k, (line, g)) in predicted.iter().zip(&records).enumerate() {
        assert_eq!(line["graph"], k);
        let y_pred = numbers(&line["y_pred"]);
        assert_eq!(y_pred.len(), g.num_nodes, "graph {k}");
        let Some(Target::Nodes(y)) = &g.y else {
            panic!("node targets")
        };
        for (p, t) in y_pred.iter().zip(y) {
            if let Some(t) = t {
                right += usize::from(p == t);
                all += 1;
            }
        }
    }
    let accuracy = 100.0 * right as f64 / all as f64;
    assert!((accuracy - evaluated(&ckpt)).abs() < 0.006, "{accuracy}");
    // forward prints the logits the classes are the largest of
    let f = quartic(&[
        "forward",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--graphs",
        &valid("triangles"),
    ]);
    assert!(f.status.success(), "{}", text(&f.stderr));
    let forward: Vec<Value> = text(&f.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(forward.len(), records.len());
    for (line, p) in forward.iter().zip(&predicted) {
        assert_eq!(line["readout"], "nodes");
        let rows = line["logits"].as_array().unwrap();
        let argmax: Vec<f64> = rows
            .iter()
            .map(|r| {
                let r = numbers(r);
                (0..r.len()).fold(0, |a, c| if r[c] > r[a] { c } else { a }) as f64
            })
            .collect();
        assert_eq!(argmax, numbers(&p["y_pred"]));
    }
    // graph values: one number per graph; their mean absolute error is eval's
    let ckpt = trained(&dir, "components", "graph", "mse");
    let out = dir.join("components.jsonl");
    let r = predict(&ckpt, &valid("components"), &out);
    assert!(r.status.success(), "{}", text(&r.stderr));
    let records = read_graphs(Path::new(&valid("components"))).unwrap();
    let errors: Vec<f64> = lines(&out)
        .iter()
        .zip(&records)
        .map(|(line, g)| {
            let Some(Target::Graph(y)) = g.y else {
                panic!("graph targets")
            };
            (line["y_pred"].as_f64().unwrap() - y).abs()
        })
        .collect();
    let mae = errors.iter().sum::<f64>() / errors.len() as f64;
    assert!((mae - evaluated(&ckpt)).abs() < 1e-4, "{mae}");
    // edge classes: every ordered pair, with the pairs written beside them
    let ckpt = trained(&dir, "shortest_paths", "edge", "cross-entropy");
    let out = dir.join("paths.jsonl");
    let r = predict(&ckpt, &valid("shortest_paths"), &out);
    assert!(r.status.success(), "{}", text(&r.stderr));
    let records = read_graphs(Path::new(&valid("shortest_paths"))).unwrap();
    for (line, g) in lines(&out).iter().zip(&records) {
        let n = g.num_nodes;
        let index = line["edge_label_index"].as_array().unwrap();
        assert_eq!(numbers(&index[0]).len(), n * n);
        assert_eq!(numbers(&index[1])[n + 1], 1.0);
        assert_eq!(numbers(&line["edge_pred"]).len(), n * n);
    }
}

#[test]
fn predict_refuses_what_it_cannot_do_safely() {
    let dir = crate::common::scratch("predict-refusals");
    let ckpt = trained(&dir, "triangles", "node", "cross-entropy");
    let graphs = sample("triangles.valid.jsonl");
    // an existing file is kept unless --overwrite
    let out = dir.join("kept.jsonl");
    std::fs::write(&out, "mine\n").unwrap();
    let r = predict(&ckpt, &graphs, &out);
    assert!(!r.status.success());
    assert!(
        text(&r.stderr).contains("exists; give --overwrite"),
        "{}",
        text(&r.stderr)
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "mine\n");
    // never over the graphs being read, even with --overwrite
    let copy = dir.join("graphs.jsonl");
    std::fs::copy(&graphs, &copy).unwrap();
    let r = quartic(&[
        "predict",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--graphs",
        copy.to_str().unwrap(),
        "--out",
        copy.to_str().unwrap(),
        "--overwrite",
    ]);
    assert!(!r.status.success());
    assert!(text(&r.stderr).contains("names the graph file being read"));
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        std::fs::read(&graphs).unwrap()
    );
    // graphs the model cannot read are named before anything is written
    let mut records: Vec<GraphRecord> = read_graphs(Path::new(&graphs)).unwrap();
    records.truncate(5);
    let mut wide = records.clone();
    if let Inputs::Tokens(t) = &mut wide[3].nodes {
        t[2] = 40;
    }
    let mut featured = records.clone();
    let n = featured[1].num_nodes;
    featured[1].nodes = Inputs::Features {
        dim: 2,
        values: vec![0.5; n * 2],
    };
    let cases = [
        (wide, "graph 3: field `tokens`: entry 2 is 40"),
        (
            featured,
            "graph 1: field `x`: 2 features per node, but the model reads 0",
        ),
    ];
    for (k, (bad, want)) in cases.into_iter().enumerate() {
        let path = dir.join(format!("bad{k}.jsonl"));
        write_jsonl(&path, &bad).unwrap();
        let out = dir.join(format!("bad{k}.out.jsonl"));
        let r = predict(&ckpt, path.to_str().unwrap(), &out);
        assert!(!r.status.success());
        assert!(text(&r.stderr).contains(want), "{}", text(&r.stderr));
        assert!(!out.exists());
    }
    // targets are not needed to predict
    let unlabelled: Vec<GraphRecord> = records
        .iter()
        .map(|g| GraphRecord {
            y: None,
            ..g.clone()
        })
        .collect();
    let path = dir.join("unlabelled.jsonl");
    write_jsonl(&path, &unlabelled).unwrap();
    let r = predict(
        &ckpt,
        path.to_str().unwrap(),
        &dir.join("unlabelled.out.jsonl"),
    );
    assert!(r.status.success(), "{}", text(&r.stderr));
    assert_eq!(lines(&dir.join("unlabelled.out.jsonl")).len(), 5);
    // a model not trained on graph files does not read them
    let sanity = dir.join("sanity");
    let r = quartic(&[
        "train",
        "--task",
        "sanity",
        "--dim",
        "16",
        "--depth",
        "1",
        "--steps",
        "1",
        "--batch",
        "2",
        "--out",
        sanity.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    let r = predict(
        &sanity.join("checkpoint.safetensors"),
        &graphs,
        &dir.join("never.jsonl"),
    );
    assert!(!r.status.success());
    assert!(text(&r.stderr).contains("was not trained on graph files"));
    // forward reads a file or tokens, and a file only with a checkpoint
    let both = quartic(&["forward", "--graphs", &graphs, "--tokens", "1,2"]);
    assert!(!both.status.success());
    let bare = quartic(&["forward", "--graphs", &graphs]);
    assert!(!bare.status.success());
    assert!(
        text(&bare.stderr).contains("--checkpoint"),
        "{}",
        text(&bare.stderr)
    );
}
