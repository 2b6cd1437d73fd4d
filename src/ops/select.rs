//! Piecewise ops whose condition carries no gradient: the step a comparison lowers to, and
//! `where(cond, a, b)`. Each keeps the tapes of its inputs (their history still runs backward,
//! contributing nothing through the condition) and leaves a NaN condition NaN.

use dfdx::prelude::*;

use crate::tensor::*;

/// 1 where `x > 0` (`x ≥ 0` unless `strict`), else 0; NaN where `x` is NaN. No gradient.
pub fn step<E: Real, D: Device<E>, T: Tape<E, D>>(x: T1<E, D, T>, strict: bool) -> T1<E, D, T> {
    let (v, tape) = x.split_tape();
    let dev = v.device().clone();
    let zeros = dev.zeros_like(v.shape());
    let above = if strict { v.gt(&zeros) } else { v.ge(&zeros) };
    let out = above.choose(dev.ones_like(v.shape()), zeros);
    keep_nan(&v, out).put_tape(tape)
}

/// `yes` where `cond` is not 0, else `no` (all of one shape); the gradient reaches the branch
/// taken, never `cond`. NaN where `cond` is NaN.
pub fn select<E: Real, D: Device<E>, T: Tape<E, D>>(
    cond: T1<E, D, T>,
    yes: T1<E, D, T>,
    no: T1<E, D, T>,
) -> T1<E, D, T> {
    let (c, cond_tape) = cond.split_tape();
    let taken = c.ne(&c.device().zeros_like(c.shape()));
    // both selections are taped ops (the taped tensor on the left), so the gradient passes
    let out = taken.choose(yes, no);
    let (out, tape) = c.eq(&c).choose(out, c.clone()).split_tape();
    out.put_tape(tape.merge(cond_tape))
}

/// `out`, with NaN wherever `source` is NaN (untaped: for values without a gradient).
fn keep_nan<E: Real, D: Device<E>>(source: &T1<E, D>, out: T1<E, D>) -> T1<E, D> {
    source.eq(source).choose(out, source.clone())
}
