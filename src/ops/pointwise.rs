//! Element-wise programs (`spec::pointwise`): the dispatch and the composite form, one dfdx op
//! per step.

use std::sync::Arc;

use dfdx::prelude::*;

use crate::backend::{Backend, Fused};
use crate::error::Result;
use crate::ops::activations::silu;
use crate::spec::pointwise::{
    check_gathered, check_inputs, BinaryFn, Program, Step, UnaryFn, LEAKY_RELU_SLOPE,
};
use crate::spec::GatherTable;
use crate::tensor::*;

/// `program` over `inputs` (vectors of one length), fused where the device fuses it; both
/// forms check the inputs against the program.
pub fn pointwise<E: Real, D: Backend<E>, T: Tape<E, D>>(
    inputs: Vec<T1<E, D, T>>,
    program: &Program,
) -> Result<T1<E, D, T>> {
    if D::fuses(Fused::Pointwise) {
        D::pointwise_fused(inputs, program)
    } else {
        pointwise_composite(inputs, program)
    }
}

/// `program` over `inputs`, input k read through `tables[k]` where one is given (element e
/// reads `inputs[k][index[e]]`): fused, without moving the inputs, where the device fuses it;
/// else each such input is gathered first and the composite runs.
pub fn pointwise_gathered<E: Real, D: Backend<E>, T: Tape<E, D>>(
    inputs: Vec<T1<E, D, T>>,
    tables: Vec<Option<Arc<GatherTable>>>,
    program: &Program,
) -> Result<T1<E, D, T>> {
    if D::fuses(Fused::Pointwise) {
        return D::pointwise_gathered_fused(inputs, tables, program);
    }
    let lengths: Vec<usize> = inputs.iter().map(|t| t.shape().0).collect();
    let refs: Vec<Option<&GatherTable>> = tables.iter().map(|t| t.as_deref()).collect();
    check_gathered(program, &lengths, &refs)?;
    let mut moved = Vec::with_capacity(inputs.len());
    for (t, table) in inputs.into_iter().zip(tables) {
        moved.push(match table {
            None => t,
            Some(table) => {
                let index = table.index().to_vec();
                let len = index.len();
                let dev = t.device().clone();
                t.gather(dev.try_tensor_from_vec(index, (len,)).map_err(device_err)?)
            }
        });
    }
    pointwise_composite(moved, program)
}

/// `program` from dfdx ops. The inputs must be distinct tensors (a tensor read twice is one
/// input that two steps read); an input read by several steps is read as a copy with its own
/// id after the first (a dfdx op cannot take one tensor on both sides).
pub fn pointwise_composite<E: Real, D: Device<E>, T: Tape<E, D>>(
    inputs: Vec<T1<E, D, T>>,
    program: &Program,
) -> Result<T1<E, D, T>> {
    let lengths: Vec<usize> = inputs.iter().map(|t| t.shape().0).collect();
    check_inputs(program, &lengths)?;
    let mut inputs: Vec<Option<T1<E, D, T>>> = inputs.into_iter().map(Some).collect();
    // each read of an input but its last takes a copy; the last takes the input itself
    let mut reads_left = vec![0usize; inputs.len()];
    for step in program.steps() {
        if let Step::Input(k) = *step {
            reads_left[k] += 1;
        }
    }
    let mut values: Vec<Option<T1<E, D, T>>> = Vec::with_capacity(program.steps().len());
    for step in program.steps() {
        let mut take = |i: usize| values[i].take().expect("each step is read once");
        let v = match *step {
            Step::Input(k) => {
                reads_left[k] -= 1;
                let input = &mut inputs[k];
                if reads_left[k] == 0 {
                    input.take().expect("an input stays until its last read")
                } else {
                    let t = input.as_ref().expect("an input stays until its last read");
                    t.with_empty_tape() * E::one()
                }
            }
            Step::Binary(f, a, b) => {
                let (x, y) = (take(a), take(b));
                match f {
                    BinaryFn::Add => x + y,
                    BinaryFn::Sub => x - y,
                    BinaryFn::Mul => x * y,
                    BinaryFn::Div => x / y,
                    BinaryFn::Min => {
                        let (xv, yv) = (x.retaped(), y.retaped());
                        nan_kept(xv, nan_kept(yv, x.minimum(y)))
                    }
                    BinaryFn::Max => {
                        let (xv, yv) = (x.retaped(), y.retaped());
                        nan_kept(xv, nan_kept(yv, x.maximum(y)))
                    }
                }
            }
            Step::Unary(f, x) => {
                let x = take(x);
                match f {
                    UnaryFn::Sigmoid => x.sigmoid(),
                    UnaryFn::Tanh => x.tanh(),
                    UnaryFn::Exp => x.exp(),
                    UnaryFn::Relu => nan_kept(x.retaped(), x.relu()),
                    UnaryFn::Abs => x.abs(),
                    UnaryFn::Sqrt => x.sqrt(),
                    UnaryFn::Ln => x.ln(),
                    UnaryFn::Square => x.square(),
                    UnaryFn::Silu => silu(x),
                    UnaryFn::LeakyRelu => {
                        let values = x.retaped();
                        let below = x.with_empty_tape().negate().relu() * E::of(LEAKY_RELU_SLOPE);
                        nan_kept(values, x.relu() - below)
                    }
                }
            }
            Step::Affine { x, mul, add } => {
                let mut t = take(x);
                if mul != 1.0 {
                    t = t * E::of(mul);
                }
                if add != 0.0 {
                    t = t + E::of(add);
                }
                t
            }
            Step::Powf { x, exponent } => take(x).powf(exponent),
        };
        values.push(Some(v));
    }
    Ok(values.pop().flatten().expect("a program has a step"))
}

/// `out`, with NaN wherever `source` is NaN: dfdx's `relu`, `minimum` and `maximum` return a
/// number for a NaN operand (as `f32::max` does), and a NaN must reach the output.
fn nan_kept<E: Real, D: Device<E>, T: Tape<E, D>>(
    source: T1<E, D>,
    out: T1<E, D, T>,
) -> T1<E, D, T> {
    source.eq(&source).choose(out, source)
}
