//! `quartic check [N] [--device D]`: a self-test of this machine. Every built-in rule's model
//! (causal and not) and the multi-stream model run one forward and backward pass twice: on the
//! CPU with the fused kernels and with their composite forms, or on the device named (CUDA)
//! and on the CPU. The logits and every gradient must agree
//! (`quartic::models::self_check`). Fails when any model does not. With `--ops`, each backend
//! op alone, plain, padded and causal, on the device against the CPU
//! (`quartic::models::op_check`).

use quartic::device::DeviceChoice;
use quartic::models::footprint::Use;
use quartic::models::op_check;
use quartic::models::self_check::{self, Comparison, TOLERANCE};

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
    /// Check each backend op alone instead of the models (on the CPU: the fused kernels against
    /// the composite forms a GPU runs).
    #[arg(long)]
    pub ops: bool,
}

pub fn run(args: &CheckArgs) -> quartic::Result<()> {
    if args.ops {
        return run_ops(args.device.device);
    }
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
    let names: Vec<String> = models.iter().map(|(name, _)| name.clone()).collect();
    let shape = format!("batch 2 (one padded), {n} nodes");
    if choice == DeviceChoice::Cpu {
        let what = "fused CPU kernels against their composite forms";
        return table(&names, what, &shape, ("fused ms", "composite ms"), |k| {
            let (name, config) = &models[k];
            self_check::compare(name, config, n, k as u64)
        });
    }
    let what = format!("{choice} against the CPU");
    quartic::on_device!(choice, 0, |dev| table(
        &names,
        &what,
        &shape,
        ("device ms", "CPU ms"),
        |k| {
            let (name, config) = &models[k];
            self_check::compare_on(&dev, name, config, n, k as u64)
        }
    ))
}

/// `quartic check --ops`: every backend op on the device against the CPU (on the CPU: the
/// fused kernels against the GPU's path).
fn run_ops(choice: DeviceChoice) -> quartic::Result<()> {
    let ops = op_check::ops();
    let names: Vec<String> = ops.iter().map(|(name, ..)| name.clone()).collect();
    let shape = "2 graphs (the second padded where masked), 5 nodes (100 for `long`), 2 heads";
    if choice == DeviceChoice::Cpu {
        let what = "ops: fused CPU kernels against the composite forms a GPU runs";
        return table(&names, what, shape, ("fused ms", "composite ms"), |k| {
            let (name, op, precision) = &ops[k];
            op_check::compare_op(name, *op, *precision, k as u64)
        });
    }
    let what = format!(
        "ops on {choice} against the CPU (an f32 case is held to twice the CPU's own f32 \
         rounding against f64 on the same inputs, where that is larger)"
    );
    quartic::on_device!(choice, 0, |dev| table(
        &names,
        &what,
        shape,
        ("device ms", "CPU ms"),
        |k| {
            let (name, op, precision) = &ops[k];
            op_check::compare_op_on(&dev, name, *op, *precision, k as u64)
        }
    ))
}

/// Runs `compare` on every item (its position is its seed) and prints one line each.
fn table(
    names: &[String],
    what: &str,
    shape: &str,
    (tested, reference): (&str, &str),
    compare: impl Fn(usize) -> quartic::Result<Comparison>,
) -> quartic::Result<()> {
    say!(
        "{what}: {shape}, one forward and backward pass; tolerance {TOLERANCE:.0e} of each \
         tensor's largest value"
    )?;
    // the name column fits the longest name
    let w = names.iter().map(|name| name.len()).max().unwrap_or(0);
    say!(
        "{:<w$} {:>8} {:>9}  {:<40} {:>8} {:>12}",
        "name",
        "logits",
        "gradients",
        "(worst gradient)",
        tested,
        reference
    )?;
    let mut failed = Vec::new();
    for k in 0..names.len() {
        let c = compare(k)?;
        say!(
            "{:<w$} {:>8.1e} {:>9.1e}  {:<40} {:>8.1} {:>12.1}  {}",
            c.model,
            c.logits,
            c.gradients.0,
            c.gradients.1,
            c.tested_ms,
            c.reference_ms,
            verdict(&c)
        )?;
        if !c.passes() {
            failed.push(c.model);
        }
    }
    if failed.is_empty() {
        say!("all {} agree", names.len())
    } else {
        Err(quartic::Error::Device(format!(
            "{what} disagree on: {}",
            failed.join(", ")
        )))
    }
}

/// "ok" or "FAILED", and the tolerance where the reference's own rounding raised it.
fn verdict(c: &Comparison) -> String {
    let word = if c.passes() { "ok" } else { "FAILED" };
    if c.tolerance() > TOLERANCE {
        format!(
            "{word}, held to {:.1e}: the CPU's f32 lies {:.1e} from its f64 here",
            c.tolerance(),
            c.rounding.unwrap_or(0.0)
        )
    } else {
        word.to_string()
    }
}
