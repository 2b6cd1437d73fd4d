//! Checks of a task's settings, run when a [`super::Task`] is made: every range non-empty,
//! every probability a number in [0, 1], and every sampler that draws by rejection likely
//! enough to fit that an example cannot loop forever. Each error names the task and setting.

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::error::{Error, Result};

/// The error for one of `task`'s settings.
pub(super) fn refuse(task: &str, message: String) -> Error {
    Error::config(format!("task `{task}`"), message)
}

/// `lo..=hi` (named `lo_name`, `hi_name`) is a range starting at `least` or above.
pub(super) fn range(
    task: &str,
    (lo_name, lo): (&str, usize),
    (hi_name, hi): (&str, usize),
    least: usize,
) -> Result<()> {
    if lo < least {
        return Err(refuse(
            task,
            format!("`{lo_name}` is {lo}; it must be ≥ {least}"),
        ));
    }
    if lo > hi {
        return Err(refuse(
            task,
            format!("`{lo_name}` ({lo}) is above `{hi_name}` ({hi})"),
        ));
    }
    Ok(())
}

/// `value` (named `name`) is at least `least`.
pub(super) fn at_least(task: &str, name: &str, value: usize, least: usize) -> Result<()> {
    if value < least {
        return Err(refuse(
            task,
            format!("`{name}` is {value}; it must be ≥ {least}"),
        ));
    }
    Ok(())
}

/// `p` (named `name`) is a probability: a finite number in [0, 1], never NaN.
pub(super) fn probability(task: &str, name: &str, p: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&p) {
        return Err(refuse(
            task,
            format!("`{name}` is {p}; it must be a probability in [0, 1]"),
        ));
    }
    Ok(())
}

/// Draws tried when estimating how often a rejection sampler's draw fits.
const TRIAL_DRAWS: usize = 2_000;
/// The rarest fit a rejection sampler may have: 1 draw in this many.
const RAREST_FIT: usize = 1_000;

/// Whether `fits` (one draw from its own random stream: does it fit?) fits often enough:
/// at least `TRIAL_DRAWS / RAREST_FIT` of `TRIAL_DRAWS` draws from a fixed seed. `what` says
/// what is drawn and under which settings, for the error.
pub(super) fn draws_fit(
    task: &str,
    what: &str,
    mut fits: impl FnMut(&mut StdRng) -> bool,
) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(0x7a5c_c4ec);
    let needed = TRIAL_DRAWS / RAREST_FIT;
    let mut fitted = 0;
    for _ in 0..TRIAL_DRAWS {
        fitted += fits(&mut rng) as usize;
        if fitted >= needed {
            return Ok(());
        }
    }
    Err(refuse(
        task,
        format!(
            "{what}: {fitted} of {TRIAL_DRAWS} trial draws fit, fewer than 1 in {RAREST_FIT}, \
             so sampling an example could take forever; ask for smaller sizes"
        ),
    ))
}
