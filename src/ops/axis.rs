//! Softmax and log-sum-exp along the middle axis of `[outer, n, inner]`, over the visible
//! entries only: the rule language's `softmax[k]` and `logsumexp[k]`, whose operands reach
//! n³ entries per channel in three-index rules.

use dfdx::prelude::*;

use crate::backend::{Backend, Fused};
use crate::error::Result;
use crate::spec::axis::check;
pub use crate::spec::axis::{AxisOp, Visible};
use crate::spec::MASKED;
use crate::tensor::*;

/// `op` along axis 1 of `x`, `[outer, n, inner]` flattened, over the entries `visible` lets
/// take part. Fused on the CPU (one pass each way, no mask arithmetic), else the composite.
pub fn over_axis<E: Real, D: Backend<E>, T: Tape<E, D>>(
    x: T1<E, D, T>,
    visible: Visible<'_, T1<E, D>>,
    dims: (usize, usize, usize),
    op: AxisOp,
) -> Result<T1<E, D, T>> {
    check(x.shape().0, &visible, |m| m.shape().0, dims)?;
    if D::fuses(Fused::OverAxis) {
        D::over_axis_fused(x, visible, dims, op)
    } else {
        over_axis_composite(x, visible, dims, op)
    }
}

/// The 0/1 mask of `outer · n · inner` entries that `visible` stands for (`None`: all visible).
fn visibility_mask<E: Real, D: Device<E>>(
    dev: &D,
    visible: Visible<'_, T1<E, D>>,
    dims: (usize, usize, usize),
) -> Result<Option<T1<E, D>>> {
    let (outer, n, inner) = dims;
    Ok(match visible {
        Visible::All => None,
        Visible::Mask(m) => Some(m.clone()),
        Visible::Keys(_) => {
            let rows = visible.key_rows(dims).expect("keys have rows");
            let mut data = Vec::with_capacity(outer * n * inner);
            for o in 0..outer {
                for &real in rows.row(o) {
                    let v = if real { E::one() } else { E::zero() };
                    data.extend(std::iter::repeat(v).take(inner));
                }
            }
            Some(constant(dev, data, (outer * n * inner,))?)
        }
    })
}

/// [`over_axis`] from dfdx ops: hidden entries are pushed far below the rest, so that their
/// exp is 0 and they never set the maximum; rows with none visible are zeroed after.
pub fn over_axis_composite<E: Real, D: Device<E>, T: Tape<E, D>>(
    x: T1<E, D, T>,
    visible: Visible<'_, T1<E, D>>,
    dims: (usize, usize, usize),
    op: AxisOp,
) -> Result<T1<E, D, T>> {
    check(x.shape().0, &visible, |m| m.shape().0, dims)?;
    let (outer, n, inner) = dims;
    let Some(m) = visibility_mask(x.device(), visible, dims)? else {
        let x = x.reshape_like(&dims);
        return Ok(match op {
            AxisOp::Softmax => x.softmax::<Axis<1>>().reshape_like(&(outer * n * inner,)),
            AxisOp::LogSumExp => x.logsumexp::<_, Axis<1>>().reshape_like(&(outer * inner,)),
        });
    };
    let m = &m;
    let pushed = x + (m.clone() - E::one()).retaped::<T>() * E::of(-MASKED);
    let pushed = pushed.reshape_like(&dims);
    Ok(match op {
        // rows with none visible come out uniform; the mask zeroes them
        AxisOp::Softmax => {
            pushed
                .softmax::<Axis<1>>()
                .reshape_like(&(outer * n * inner,))
                * m.clone().retaped::<T>()
        }
        AxisOp::LogSumExp => {
            let dev = m.device().clone();
            let any = m
                .clone()
                .reshape_like(&dims)
                .sum::<(usize, usize), Axis<1>>()
                .reshape_like(&(outer * inner,))
                .gt(E::of(0.5))
                .choose(
                    dev.ones_like(&(outer * inner,)),
                    dev.zeros_like(&(outer * inner,)),
                );
            pushed
                .logsumexp::<_, Axis<1>>()
                .reshape_like(&(outer * inner,))
                * any.retaped::<T>()
        }
    })
}
