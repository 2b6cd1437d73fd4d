//! A trained graph model on the graphs of a file: its outputs per graph (for `quartic forward
//! --graphs`) and its predictions (for `quartic predict`). Each graph is checked against what
//! the model was built to read (size, tokens, feature widths) before anything is computed, and
//! refused with the graph named.

use dfdx::prelude::*;

use super::tasks::{batch_of, example_inputs, Example, Readout};
use super::trainer::forward_batch;
use crate::backend::Backend;
use crate::data::graphs::GraphRecord;
use crate::error::{Error, Result};
use crate::models::{Model, ModelConfig, TaskIo};
use crate::tensor::*;

/// Where a model trained on graphs reads its predictions: the graph head, the edge head, or
/// the nodes.
pub fn readout_of(config: &ModelConfig) -> Readout {
    match config {
        ModelConfig::Graph(g) if g.io.graph_classes > 0 => Readout::Graph,
        ModelConfig::Graph(g) if g.io.edge_classes > 0 => Readout::Edges,
        _ => Readout::Nodes,
    }
}

/// One graph's outputs: `rows × width`, a row per node (node readout), per ordered pair
/// (i, j) row-major (edge readout), or one (graph readout); class logits, or one value per
/// row for a regression.
#[derive(Clone, Debug, PartialEq)]
pub struct GraphOutputs {
    /// The graph's nodes.
    pub nodes: usize,
    /// Rows: nodes, nodes², or 1.
    pub rows: usize,
    /// Logits per row, or 1 for a regression.
    pub width: usize,
    /// `rows × width` values.
    pub values: Vec<f32>,
    /// Whether the values are a regression's predictions (else class logits).
    pub regression: bool,
}

impl GraphOutputs {
    /// Row `r`'s outputs.
    pub fn row(&self, r: usize) -> &[f32] {
        &self.values[r * self.width..(r + 1) * self.width]
    }

    /// Row `r`'s prediction: its class (the largest logit; the first of equals), or its value.
    pub fn prediction(&self, r: usize) -> f64 {
        let row = self.row(r);
        if self.regression {
            return f64::from(row[0]);
        }
        let best = (0..row.len()).fold(0, |a, c| if row[c] > row[a] { c } else { a });
        best as f64
    }
}

/// `model`'s outputs on every graph of `graphs`, `batch` graphs per pass. A graph the model
/// cannot read, or an output that is not finite, is an error naming the graph (counting from
/// 0 in `graphs`); nothing is computed for the graphs before a refused one is found, since
/// all are checked first.
pub fn graph_outputs<E: Real, D: Backend<E>>(
    model: &Model<E, D>,
    graphs: &[GraphRecord],
    batch: usize,
) -> Result<Vec<GraphOutputs>> {
    let ModelConfig::Graph(config) = model.config() else {
        return Err(Error::config(
            "model",
            "graph files are read by graph transformers; this checkpoint is a multi-stream model",
        ));
    };
    let examples: Vec<Example> = graphs
        .iter()
        .enumerate()
        .map(|(k, g)| {
            readable(g, &config.io, config.num_tokens, config.max_seq_len)
                .map_err(|m| Error::config("graph file", format!("graph {k}: {m}")))
        })
        .collect::<Result<_>>()?;
    let readout = readout_of(&model.config());
    let regression = config.io.values.is_some();
    let mut out = Vec::with_capacity(graphs.len());
    for (c, chunk) in examples.chunks(batch.max(1)).enumerate() {
        let first = c * batch.max(1);
        let bt = batch_of(chunk.to_vec());
        let logits = forward_batch::<E, D, NoneTape>(model, &bt, readout)?.logits;
        let (b, rows, width) = *logits.shape();
        let mut host = vec![E::zero(); b * rows * width];
        host::copy_into(&logits.contiguous(), &mut host);
        for (g, e) in chunk.iter().enumerate() {
            let len = e.tokens.len();
            let cells: Vec<usize> = match readout {
                Readout::Nodes => (0..len).collect(),
                Readout::Edges => (0..len * len).map(|c| c / len * bt.n + c % len).collect(),
                Readout::Graph => vec![0],
            };
            let mut values = Vec::with_capacity(cells.len() * width);
            for &cell in &cells {
                let at = (g * rows + cell) * width;
                values.extend(host[at..at + width].iter().map(|v| v.as_f64() as f32));
            }
            if let Some(bad) = values.iter().position(|v| !v.is_finite()) {
                return Err(Error::NotFinite(format!(
                    "the model's output on graph {}, row {}, is {}",
                    first + g,
                    bad / width,
                    values[bad]
                )));
            }
            out.push(GraphOutputs {
                nodes: len,
                rows: cells.len(),
                width,
                values,
                regression,
            });
        }
    }
    Ok(out)
}

/// A graph as the model's input, or why the model cannot read it.
fn readable(
    g: &GraphRecord,
    io: &TaskIo,
    num_tokens: usize,
    max_len: usize,
) -> std::result::Result<Example, String> {
    let mut e = example_inputs(g);
    let n = e.tokens.len();
    if n > max_len {
        return Err(format!(
            "{n} nodes, more than the {max_len} the model was built for (max_seq_len)"
        ));
    }
    if let Some(k) = e.tokens.iter().position(|&t| t >= num_tokens) {
        return Err(format!(
            "field `tokens`: entry {k} is {}, but the model knows tokens 0..{num_tokens}",
            e.tokens[k]
        ));
    }
    if let Some(cell) = e
        .edge_tokens
        .iter()
        .position(|&t| t >= io.edge_vocab.max(1))
    {
        return Err(format!(
            "field `edge_tokens`: edge ({}, {}) has token {}, but the model knows edge tokens \
             0..{}",
            cell / n,
            cell % n,
            e.edge_tokens[cell] - 1,
            io.edge_vocab.saturating_sub(1)
        ));
    }
    let width = |values: &[f32], cells: usize| if cells == 0 { 0 } else { values.len() / cells };
    let x = width(&e.node_features, n);
    if x != io.node_features {
        return Err(format!(
            "field `x`: {x} features per node, but the model reads {}",
            io.node_features
        ));
    }
    let has_edges = e.adjacency.iter().any(|&a| a);
    if has_edges || !e.edge_features.is_empty() {
        let attr = width(&e.edge_features, n * n);
        if attr != io.edge_features {
            return Err(format!(
                "field `edge_attr`: {attr} features per edge, but the model reads {}",
                io.edge_features
            ));
        }
    } else if io.edge_features > 0 {
        // no edges listed, so no rows: zeros of the model's width
        e.edge_features = vec![0.0; n * n * io.edge_features];
    }
    Ok(e)
}
