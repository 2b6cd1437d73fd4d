//! Snapshot-test a model's outputs: compute the logits of a fixed-seed model on fixed tokens
//! and compare them with a stored snapshot (JSON); the first run writes it. In a test suite the
//! same is one `insta::assert_json_snapshot!` (see `tests/it/training.rs`); from a shell,
//! `quartic forward --rule taylor --seed 0 --tokens 3,1,4,1,5` prints the same JSON.
//!
//!     cargo run --release --example snapshot_model [-- RULE]

use dfdx::prelude::*;
use quartic::models::{GraphConfig, Model, ModelConfig};
use quartic::nn::Init;

fn main() -> quartic::Result<()> {
    let rule = std::env::args().nth(1).unwrap_or_else(|| "taylor".into());
    let tokens = [3usize, 1, 4, 1, 5, 9, 2, 6];
    let config = ModelConfig::Graph(GraphConfig {
        residual_streams: 1,
        num_tokens: 10,
        dim: 32,
        dim_edges: 8,
        depth: 2,
        rule: rule.clone(),
        rule_params: [("heads", 2.0), ("dim_head", 8.0)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), quartic::rules::Const::Num(v)))
            .collect(),
        causal: false,
        max_seq_len: tokens.len(),
        absolute_positions: true,
        position_bias: true,
        final_norm: Some(1e-5),
        io: Default::default(),
    });
    let dev = Cpu::default();
    let model = Model::<f32, Cpu>::new(&config, None, &Init::random(&dev, 0))?;
    let logits = model
        .forward::<NoneTape>(&tokens, 1, tokens.len(), None)?
        .logits
        .as_vec();
    let rounded: Vec<f64> = logits
        .iter()
        .map(|&x| (x as f64 * 1e4).round() / 1e4)
        .collect();
    let current = serde_json::to_string_pretty(
        &serde_json::json!({ "rule": rule, "tokens": tokens, "logits": rounded }),
    )
    .expect("plain data");
    let path = std::path::PathBuf::from(format!("runs/snapshots/{rule}.json"));
    match std::fs::read_to_string(&path) {
        Ok(stored) if stored == current => println!("{}: matches the snapshot", path.display()),
        Ok(_) => {
            std::fs::write(path.with_extension("json.new"), &current).map_err(|e| {
                quartic::Error::Io {
                    path: path.display().to_string(),
                    message: e.to_string(),
                }
            })?;
            println!(
                "{}: CHANGED (new values in {}.new)",
                path.display(),
                path.display()
            );
            std::process::exit(1);
        }
        Err(_) => {
            std::fs::create_dir_all(path.parent().expect("has a parent")).ok();
            std::fs::write(&path, &current).map_err(|e| quartic::Error::Io {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            println!("{}: snapshot written", path.display());
        }
    }
    Ok(())
}
