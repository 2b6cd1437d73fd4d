//! Reading tensors back to the host, counted.
//!
//! On a GPU every read waits for the device and copies across the bus, so the training step
//! reads only the scalars it logs. Library code reads through these functions (not dfdx's
//! `as_vec` / `copy_into` directly), which count the reads made on the calling thread: a test
//! runs a step and checks the count ([`reads_on_this_thread`]). On the CPU a read is a memcpy;
//! it is counted all the same, since the code path is the one a GPU runs.

use std::cell::Cell;

use dfdx::prelude::*;

use super::Real;

thread_local! {
    static READS: Cell<usize> = const { Cell::new(0) };
}

fn count() {
    READS.with(|r| r.set(r.get() + 1));
}

/// Reads made by library code on this thread so far.
pub fn reads_on_this_thread() -> usize {
    READS.with(Cell::get)
}

/// A scalar's value, as f64.
pub fn scalar<E: Real, D: Device<E>, T>(t: &Tensor<(), E, D, T>) -> f64 {
    count();
    t.as_vec()[0].as_f64()
}

/// Every element, in the tensor's logical (row-major) order.
pub fn values<S: Shape, E: Real, D: Device<E>, T>(t: &Tensor<S, E, D, T>) -> Vec<E> {
    count();
    t.as_vec()
}

/// Every element of a contiguous tensor, in storage order, into `out` (one copy: `as_vec`
/// walks an index per element). `out` must have the tensor's length.
pub fn copy_into<S: Shape, E: Real, D: Device<E>, T>(t: &Tensor<S, E, D, T>, out: &mut [E]) {
    count();
    t.copy_into(out);
}
