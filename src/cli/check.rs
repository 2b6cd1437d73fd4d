//! `quartic check [N] [--device D]`: a self-test of this machine. Every built-in rule's model
//! (causal and not) and the multi-stream model run one forward and backward pass twice: on the
//! CPU with the fused kernels and with their composite forms, or on the device named (CUDA)
//! and on the CPU. The logits and every gradient must agree
//! (`quartic::models::self_check`). Fails when any model does not.

use quartic::device::DeviceChoice;
use quartic::models::footprint::Use;
use quartic::models::self_check::{self, Comparison, TOLERANCE};
use quartic::models::ModelConfig;

use super::budget::Budget;
use super::device::DeviceArg;
use super::output::say;

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Nodes per graph.
    #[arg(default_value_t = 8, value_parser = clap::value_parser!(u64).range(2..=64))]
    pub n: u64,
    #[command(flatten)]
    pub budget: Budget,
    #[command(flatten)]
    pub device: DeviceArg,
}

pub fn run(args: &CheckArgs) -> quartic::Result<()> {
    let n = args.n as usize;
    let models = self_check::models(n)?;
    for (name, config) in &models {
        args.budget.check_model(
            &format!("checking {name}"),
            config,
            None,
            2,
            n,
            Use::Train { shards: 1 },
        )?;
    }
    let choice = args.device.device;
    if choice == DeviceChoice::Cpu {
        let what = "fused CPU kernels against their composite forms";
        return table(
            n,
            &models,
            what,
            ("fused ms", "composite ms"),
            |name, config, seed| self_check::compare(name, config, n, seed),
        );
    }
    let what = format!("{choice} against the CPU");
    quartic::on_device!(choice, 0, |dev| table(
        n,
        &models,
        &what,
        ("device ms", "CPU ms"),
        |name, config, seed| self_check::compare_on(&dev, name, config, n, seed)
    ))
}

/// Runs `compare` on every model (the model's position is its seed) and prints one line each.
fn table(
    n: usize,
    models: &[(String, ModelConfig)],
    what: &str,
    (tested, reference): (&str, &str),
    compare: impl Fn(&str, &ModelConfig, u64) -> quartic::Result<Comparison>,
) -> quartic::Result<()> {
    say!(
        "{what}: batch 2 (one padded), {n} nodes, one forward and backward pass; tolerance \
         {TOLERANCE:.0e} of each tensor's largest value"
    )?;
    // the name column fits the longest model's name
    let w = models.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    say!(
        "{:<w$} {:>8} {:>9}  {:<40} {:>8} {:>12}",
        "model",
        "logits",
        "gradients",
        "(worst parameter)",
        tested,
        reference
    )?;
    let mut failed = Vec::new();
    for (seed, (name, config)) in models.iter().enumerate() {
        let c = compare(name, config, seed as u64)?;
        say!(
            "{:<w$} {:>8.1e} {:>9.1e}  {:<40} {:>8.1} {:>12.1}  {}",
            c.model,
            c.logits,
            c.gradients.0,
            c.gradients.1,
            c.tested_ms,
            c.reference_ms,
            if c.passes() { "ok" } else { "FAILED" }
        )?;
        if !c.passes() {
            failed.push(c.model);
        }
    }
    if failed.is_empty() {
        say!("all {} models agree", models.len())
    } else {
        Err(quartic::Error::Device(format!(
            "{what} disagree on: {}",
            failed.join(", ")
        )))
    }
}
