//! Train a model whose layers run a rule file of your own (by default the gated
//! message-passing rule in `examples/rules/messages.rule`) on the `sanity` task, and report
//! its held-out accuracy. The same from the shell:
//!
//!     cargo run --release -- train --rule examples/rules/messages.rule --steps 300
//!
//!     cargo run --release --example train_custom_rule [-- RULE_FILE [STEPS]]

use dfdx::prelude::*;
use quartic::models::{GraphConfig, Model, ModelConfig};
use quartic::nn::{HasParams, Init};

use quartic::train::trainer::{self, Start, TrainConfig};

fn main() -> quartic::Result<()> {
    let mut args = std::env::args().skip(1);
    let rule = args
        .next()
        .unwrap_or_else(|| "examples/rules/messages.rule".into());
    let steps = args.next().and_then(|s| s.parse().ok()).unwrap_or(300);
    let cfg = TrainConfig {
        task: "sanity".into(),
        steps,
        out: "runs/custom_rule".into(),
        ..TrainConfig::default()
    };
    let task = cfg.task()?;
    let config = ModelConfig::Graph(GraphConfig {
        residual_streams: 1,
        num_tokens: task.num_tokens(),
        dim: 64,
        dim_edges: 16,
        depth: 2,
        rule: rule.clone(),
        rule_params: Default::default(),
        causal: task.causal(),
        max_seq_len: task.max_len(),
        absolute_positions: true,
        position_bias: true,
        final_norm: Some(1e-5),
        io: Default::default(),
    });
    let dev = Cpu::default();
    let mut model = Model::<f32, Cpu>::new(&config, None, &Init::random(&dev, 0))?;
    println!(
        "rule {rule}: {} parameters, {steps} steps on `sanity`",
        model.num_params()
    );
    let report = trainer::train(
        &mut model,
        &cfg,
        // a rerun of the example replaces its previous run
        Start::overwrite(),
        None,
        &mut trainer::Silent,
    )?;
    if let Some((loss, acc)) = report.eval {
        println!("held-out loss {loss:.4}, accuracy {:.1}%", acc * 100.0);
    }
    println!(
        "checkpoint {} (its rule text is saved in it)",
        report.checkpoint.display()
    );
    Ok(())
}
