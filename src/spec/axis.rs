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

/// Which entries of `[outer, n, inner]` take part in `ops::axis::over_axis`; `M` is the
/// device's 0/1 mask tensor.
#[derive(Clone, Copy, Debug)]
pub enum Visible<'a, M> {
    /// Every entry.
    All,
    /// Only key padding hides entries: `valid` is `[batch × n]`, and entry `(o, k, c)` takes
    /// part when key `k` of graph `o / (outer / batch)` is real (the layout's leading axis is
    /// the batch). No `outer · n · inner` mask is built.
    Keys(&'a [bool]),
    /// A 0/1 mask of `outer · n · inner` entries: 1 where an entry takes part.
    Mask(&'a M),
}

impl<'a, M> Visible<'a, M> {
    /// The mask of `Keys`, one entry per position, or `None` for `All` and `Mask`.
    pub fn key_rows(&self, dims: (usize, usize, usize)) -> Option<KeyRows<'a>> {
        match *self {
            Visible::Keys(valid) => Some(KeyRows {
                valid,
                n: dims.1,
                per_graph: dims.0 / (valid.len() / dims.1.max(1)).max(1),
            }),
            _ => None,
        }
    }
}

/// The key validity of one row `o` of `[outer, n, inner]` under [`Visible::Keys`].
#[derive(Clone, Copy, Debug)]
pub struct KeyRows<'a> {
    valid: &'a [bool],
    n: usize,
    per_graph: usize,
}

impl<'a> KeyRows<'a> {
    /// Whether each key of row `o` is real (`n` entries).
    pub fn row(&self, o: usize) -> &'a [bool] {
        let b = o / self.per_graph;
        &self.valid[b * self.n..][..self.n]
    }
}

/// The lengths `ops::axis::over_axis` takes: `x` of `outer · n · inner` entries, a mask of as
/// many, or key validity of `batch × n` entries for a batch that divides `outer`.
pub fn check<M>(
    len: usize,
    visible: &Visible<'_, M>,
    mask_len: impl Fn(&M) -> usize,
    dims: (usize, usize, usize),
) -> Result<()> {
    let (outer, n, inner) = dims;
    let want = outer
        .checked_mul(n)
        .and_then(|v| v.checked_mul(inner))
        .ok_or_else(|| Error::shape("softmax over an axis", "a size that fits", "an overflow"))?;
    let mask = match visible {
        Visible::Mask(m) => Some(mask_len(m)),
        _ => None,
    };
    for (what, got) in [("the operand", Some(len)), ("the visibility mask", mask)] {
        if let Some(got) = got.filter(|&g| g != want) {
            return Err(Error::shape(
                format!("softmax over an axis: {what}"),
                format!("{want} entries ({outer} × {n} × {inner})"),
                got,
            ));
        }
    }
    if let Visible::Keys(valid) = visible {
        let fits = match n {
            0 => valid.is_empty(),
            _ => {
                let graphs = valid.len() / n;
                valid.len() % n == 0 && graphs > 0 && outer % graphs == 0
            }
        };
        if !fits {
            return Err(Error::shape(
                "softmax over an axis: the key padding",
                format!("batch × {n} entries, with a batch that divides {outer}"),
                valid.len(),
            ));
        }
    }
    Ok(())
}
