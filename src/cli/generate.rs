//! `quartic generate`: samples text from a causal character-level checkpoint.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use dfdx::prelude::*;
use quartic::train::checkpoint;
use rand::{Rng, SeedableRng};

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// A checkpoint trained with `train --data FILE`
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Text to continue
    #[arg(long, default_value = "\n")]
    pub prompt: String,
    /// Bytes to generate
    #[arg(long, default_value_t = 200)]
    pub length: usize,
    /// Sampling temperature (0 = greedy)
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(args: &GenerateArgs) -> quartic::Result<()> {
    let dev = Cpu::default();
    let ckpt = checkpoint::load(&args.checkpoint)?;
    if !ckpt.config.causal() || ckpt.config.num_tokens() < 256 {
        return Err(quartic::Error::config(
            "generate",
            "the checkpoint is not a causal character-level model (train one with --data FILE)",
        ));
    }
    let model = ckpt.model::<f32, Cpu>(&dev)?;
    let context = ckpt.config.max_seq_len();
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let mut text: Vec<usize> = args.prompt.bytes().map(|b| b as usize).collect();
    if text.is_empty() {
        text.push(b'\n' as usize);
    }
    print!("{}", args.prompt);
    for _ in 0..args.length {
        let window = &text[text.len().saturating_sub(context)..];
        let n = window.len();
        let logits = model
            .forward::<NoneTape>(window, 1, n, None)?
            .logits
            .as_vec();
        let v = logits.len() / n;
        let last = &logits[(n - 1) * v..];
        let next = if args.temperature <= 0.0 {
            (0..v).fold(0, |a, c| if last[c] > last[a] { c } else { a })
        } else {
            let max = last.iter().cloned().fold(f32::MIN, f32::max) as f64;
            let w: Vec<f64> = last
                .iter()
                .map(|&x| ((x as f64 - max) / args.temperature).exp())
                .collect();
            let mut r = rng.gen::<f64>() * w.iter().sum::<f64>();
            let mut pick = v - 1;
            for (i, wi) in w.iter().enumerate() {
                if r < *wi {
                    pick = i;
                    break;
                }
                r -= wi;
            }
            pick
        };
        text.push(next);
        let mut out = std::io::stdout();
        let _ = out.write_all(&[next as u8]);
        let _ = out.flush();
    }
    println!();
    Ok(())
}
