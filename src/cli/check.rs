//! `quartic check [N]`: a self-test of this machine's fused CPU kernels. Every built-in rule's
//! model (causal and not) and the multi-stream model run one forward and backward pass with the
//! fused kernels and with their composite forms; the logits and every gradient must agree
//! (`quartic::models::self_check`). Fails when any model does not.

use quartic::models::footprint::Use;
use quartic::models::self_check::{self, TOLERANCE};

use super::budget::Budget;
use super::output::say;

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Nodes per graph.
    #[arg(default_value_t = 8, value_parser = clap::value_parser!(u64).range(2..=64))]
    pub n: u64,
    #[command(flatten)]
    pub budget: Budget,
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
    say!(
        "fused CPU kernels against their composite forms: batch 2 (one padded), {n} nodes, one \
         forward and backward pass; tolerance {TOLERANCE:.0e} of each tensor's largest value"
    )?;
    // the name column fits the longest model's name
    let w = models.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    say!(
        "{:<w$} {:>8} {:>9}  {:<40} {:>8} {:>12}",
        "model",
        "logits",
        "gradients",
        "(worst parameter)",
        "fused ms",
        "composite ms"
    )?;
    let mut failed = Vec::new();
    for (seed, (name, config)) in models.iter().enumerate() {
        let c = self_check::compare(name, config, n, seed as u64)?;
        say!(
            "{:<w$} {:>8.1e} {:>9.1e}  {:<40} {:>8.1} {:>12.1}  {}",
            c.model,
            c.logits,
            c.gradients.0,
            c.gradients.1,
            c.fused_ms,
            c.composite_ms,
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
            "the fused CPU kernels disagree with their composite forms on: {}",
            failed.join(", ")
        )))
    }
}
