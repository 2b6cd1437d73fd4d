//! `--max-memory`: every subcommand that builds a model estimates what the run needs
//! (`quartic::models::footprint`) and refuses, before allocating, a run that does not fit.

use clap::Args;
use quartic::memory::{Estimate, Limit};
use quartic::models::footprint::{self, Use};
use quartic::models::ModelConfig;

#[derive(Args, Debug, Clone, Default)]
pub struct Budget {
    /// Refuse a run whose memory estimate exceeds this, before allocating anything: a size
    /// (8GiB, 512MiB), `available` (what the system has free when the run starts) or
    /// `unlimited`
    #[arg(long, value_name = "SIZE", default_value = "available")]
    pub max_memory: Limit,
}

impl Budget {
    /// Refuses `what` ("training", "this forward pass") when its estimate does not fit.
    pub fn check(&self, what: &str, estimate: &Estimate) -> quartic::Result<()> {
        self.max_memory.check(what, estimate)
    }

    /// Estimates a run of `config` on `batch` × `n` tokens and refuses it if it does not fit.
    pub fn check_model(
        &self,
        what: &str,
        config: &ModelConfig,
        rule_source: Option<&str>,
        batch: usize,
        n: usize,
        run: Use,
    ) -> quartic::Result<()> {
        let estimate = footprint::estimate(config, rule_source, batch, n, run)?;
        self.check(what, &estimate)
    }
}
