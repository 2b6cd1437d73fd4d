//! The original's README example in Rust: `QuarticTransformer(num_tokens = 256, dim = 512,
//! depth = 2, dim_edges = 32)` on 128 tokens gives logits `[1, 128, 256]`.
//!
//!     cargo run --release --example quartic_readme [-- RULE]    (taylor by default)

use std::time::Instant;

use dfdx::prelude::*;
use quartic::models::{GraphTransformer, QuarticConfig};
use quartic::nn::{HasParams, Init};

fn main() -> quartic::Result<()> {
    let rule = std::env::args().nth(1).unwrap_or_else(|| "taylor".into());
    let dev = Cpu::default();
    let config = QuarticConfig::readme().to_graph(&rule, false)?;
    let model = GraphTransformer::<f32, Cpu>::new(config, &Init::random(&dev, 0))?;
    let tokens: Vec<usize> = (0..128).map(|i| (i * 37 + 11) % 256).collect();
    let mask = model.mask(1, 128, None)?;
    let start = Instant::now();
    let logits = model.forward::<NoneTape>(&tokens, 1, 128, &mask)?;
    let elapsed = start.elapsed();
    println!(
        "rule `{rule}`: {} parameters, logits {:?}, forward {:.2} s",
        model.num_params(),
        logits.shape(),
        elapsed.as_secs_f64()
    );
    assert_eq!(*logits.shape(), (1, 128, 256));
    Ok(())
}
