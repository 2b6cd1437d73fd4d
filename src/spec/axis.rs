//! Softmax and log-sum-exp along the middle axis of `[outer, n, inner]` over the visible
//! entries (`ops::axis`): what is computed, and the lengths both forms check.

use crate::error::{Error, Result};

/// What `ops::axis::over_axis` computes along the axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AxisOp {
    /// The visible entries normalized to sum to 1 (the shape is kept); hidden entries, and
    /// every entry of a row with none visible, are 0.
    Softmax,
    /// log Σ exp over the visible entries, taken from the largest so that it cannot overflow
    /// (`[outer, inner]`); 0 where none is visible. Its gradient is the softmax.
    LogSumExp,
}

/// The lengths `ops::axis::over_axis` takes: `x` and the mask of `outer · n · inner` entries.
pub fn check(len: usize, visible: Option<usize>, dims: (usize, usize, usize)) -> Result<()> {
    let (outer, n, inner) = dims;
    let want = outer
        .checked_mul(n)
        .and_then(|v| v.checked_mul(inner))
        .ok_or_else(|| Error::shape("softmax over an axis", "a size that fits", "an overflow"))?;
    for (what, got) in [("the operand", Some(len)), ("the visibility mask", visible)] {
        if let Some(got) = got.filter(|&g| g != want) {
            return Err(Error::shape(
                format!("softmax over an axis: {what}"),
                format!("{want} entries ({outer} × {n} × {inner})"),
                got,
            ));
        }
    }
    Ok(())
}
