//! Run a rule file of your own, without writing Rust: this program loads a rule (by default
//! `examples/rules/messages.rule`, an edge-gated message-passing layer that is not a built-in),
//! checks it, prints its plan with costs, and runs it forward and backward on a padded batch.
//!
//!     cargo run --release --example custom_rule -- [RULE_FILE] [--causal]
//!
//! Edit the rule file and run again; a mistake in it is reported with its line and column.

use dfdx::prelude::*;
use quartic::graph::{GraphMask, Nodes};
use quartic::nn::embedding::{EdgeEmbed, Embedding};
use quartic::nn::{HasParams, Init};
use quartic::rules::explain::explain;
use quartic::rules::{Rule, RuleConfig, RuleLayer};

fn main() {
    if let Err(e) = run() {
        eprintln!("{e}");
        std::process::exit(1);
    }
}

fn run() -> quartic::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let causal = args.iter().any(|a| a == "--causal");
    let path = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or_else(|| "examples/rules/messages.rule".into());

    // load = parse + check against the model's sizes
    let (dim, dim_edges, tokens) = (32, 8, 64);
    let rule = Rule::load(&path)?;
    let cfg = RuleConfig {
        dim,
        dim_edges,
        causal,
        overrides: vec![],
    };
    let plan = rule.plan(&cfg)?;
    println!("{}", explain(&plan, 2, 12));

    // a tiny model around one layer of the rule: token embeddings onto nodes, the edge embedding
    let dev = Cpu::default();
    let init = Init::random(&dev, 0);
    let embed = Embedding::<f32, Cpu>::new(&init.pp("token_emb"), tokens, dim)?;
    let edge_embed = EdgeEmbed::new(&init.pp("edge_emb"), dim, dim_edges)?;
    let layer = RuleLayer::new(plan, &init.pp("layers").pp(0))?;

    // two sequences of 12 and 9 tokens (the second padded)
    let n = 12;
    let ids: Vec<usize> = (0..2 * n).map(|i| (i * 7 + 3) % tokens).collect();
    let mask = GraphMask::from_lengths(n, &[12, 9])?.causal(causal);
    let nodes: Nodes<f32, Cpu, OwnedTape<f32, Cpu>> = embed.forward(&ids, 2, n)?;
    let edges = edge_embed.forward(Nodes::new(nodes.tensor().with_empty_tape()))?;
    let (nodes, edges) = layer.forward(nodes, edges, &mask)?;
    let loss = nodes.into_tensor().square().mean() + edges.into_tensor().square().mean();
    println!("loss {:.5}", loss.array());
    let mut grads = loss.backward();
    println!("gradient norms of the rule's parameters:");
    for p in layer.params() {
        let g = grads
            .get_or_alloc_mut(&p.value)
            .map_err(|e| quartic::Error::Device(format!("{e:?}")))?;
        let norm: f32 = g.iter().map(|x| x * x).sum::<f32>().sqrt();
        println!("  {:<40} {:>8} values  |grad| {norm:.5}", p.name, p.len());
    }
    Ok(())
}
