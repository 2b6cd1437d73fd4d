//! What the command reads from its environment, checked before anything runs.

use std::time::Duration;

use quartic::threads::{set_stay_warm, STAY_WARM_ENV};

/// The most milliseconds `QUARTIC_STAY_WARM_MS` may ask for.
const MAX_STAY_WARM_MS: u64 = 1000;

/// Applies `QUARTIC_STAY_WARM_MS` (how long idle worker threads keep polling for work after a
/// kernel; 0 turns polling off) when it is set; a value that is not a whole number of
/// milliseconds from 0 to 1000 is an error naming the variable.
pub fn stay_warm() -> quartic::Result<()> {
    let Some(raw) = std::env::var_os(STAY_WARM_ENV) else {
        return Ok(());
    };
    let bad = || {
        quartic::Error::config(
            STAY_WARM_ENV,
            format!(
                "{:?} is not a whole number of milliseconds from 0 to {MAX_STAY_WARM_MS}",
                raw.to_string_lossy()
            ),
        )
    };
    let ms: u64 = raw
        .to_str()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(bad)?;
    if ms > MAX_STAY_WARM_MS {
        return Err(bad());
    }
    set_stay_warm(Duration::from_millis(ms));
    Ok(())
}
