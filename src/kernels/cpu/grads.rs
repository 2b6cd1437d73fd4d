//! How a fused op's backward adds into its inputs' gradients.
//!
//! dfdx hands out an input's gradient with `get_or_alloc_mut`, which first allocates it
//! zeroed when the input has none yet: a serial memset of the whole buffer, then a pass adding
//! the op's gradient into the zeros. Most inputs of a fused op (a residual's two terms, a
//! projection's edges) get their first gradient from that op, so in a training step these
//! fills and adds ran on one thread while the others waited: 4–10 % of a step's wall time.
//! Here a gradient the op computed whole becomes the input's buffer when it has none (no fill,
//! no pass), and is added in parallel when it has one; a buffer the op writes in place is
//! zeroed by every thread.

use std::borrow::Cow;

use dfdx::prelude::*;
use dfdx::tensor::{GhostTensor, Tensorlike};
use rayon::prelude::*;

use super::fused::{accumulate, copied, zeros, CpuBuffer};
use crate::tensor::*;

/// Elements per task of a parallel add.
const ADD_CHUNK: usize = 1 << 14;

/// `dst += src`, split over every thread when long.
pub(super) fn add_into<E: Real>(dst: &mut [E], src: &[E]) {
    if dst.len() < 2 * ADD_CHUNK {
        return accumulate(dst, src);
    }
    dst.par_chunks_mut(ADD_CHUNK)
        .zip(src.par_chunks(ADD_CHUNK))
        .for_each(|(d, s)| accumulate(d, s));
}

/// `values` as a gradient buffer of the CPU device (moved, not copied).
fn buffer<E: Real>(dev: &Cpu, values: Vec<E>) -> Result<CpuBuffer<E>, CpuError>
where
    Cpu: Device<E>,
    CpuBuffer<E>: std::ops::DerefMut<Target = Vec<E>>,
{
    let mut b = <Cpu as Storage<E>>::try_alloc_len(dev, 0)?;
    *b = values;
    Ok(b)
}

/// Panics unless `len` values fit `t`'s gradient (a kernel's bug, never a user's input).
fn check_len<S: Shape, E: Real>(t: &GhostTensor<S, E, Cpu>, len: usize)
where
    Cpu: Device<E>,
{
    assert_eq!(
        len,
        t.len(),
        "a gradient of {len} values for a tensor of {}",
        t.len()
    );
}

/// `t`'s gradient `+= g`: `g` becomes the gradient when `t` has none yet.
pub(super) fn add_owned<S: Shape, E: Real>(
    grads: &mut Gradients<E, Cpu>,
    t: &GhostTensor<S, E, Cpu>,
    g: Vec<E>,
) -> Result<(), CpuError>
where
    Cpu: Device<E>,
    CpuBuffer<E>: std::ops::DerefMut<Target = Vec<E>>,
{
    add(grads, t, Cow::Owned(g))
}

/// `t`'s gradient `+= g`: a copy of `g` (by every thread) when `t` has none yet.
pub(super) fn add_borrowed<S: Shape, E: Real>(
    grads: &mut Gradients<E, Cpu>,
    t: &GhostTensor<S, E, Cpu>,
    g: &[E],
) -> Result<(), CpuError>
where
    Cpu: Device<E>,
    CpuBuffer<E>: std::ops::DerefMut<Target = Vec<E>>,
{
    add(grads, t, Cow::Borrowed(g))
}

fn add<S: Shape, E: Real>(
    grads: &mut Gradients<E, Cpu>,
    t: &GhostTensor<S, E, Cpu>,
    g: Cow<'_, [E]>,
) -> Result<(), CpuError>
where
    Cpu: Device<E>,
    CpuBuffer<E>: std::ops::DerefMut<Target = Vec<E>>,
{
    check_len(t, g.len());
    match grads.get_mut_if_present(t) {
        Some(d) => add_into(d, &g),
        None => {
            let g = match g {
                Cow::Owned(g) => g,
                Cow::Borrowed(g) => copied(g),
            };
            grads.insert(t, buffer(t.dev(), g)?);
        }
    }
    Ok(())
}

/// `t`'s gradient for an op that adds into it in place: the buffer it has, or a new one
/// zeroed by every thread.
pub(super) fn gradient_mut<'a, S: Shape, E: Real>(
    grads: &'a mut Gradients<E, Cpu>,
    t: &GhostTensor<S, E, Cpu>,
) -> Result<&'a mut CpuBuffer<E>, CpuError>
where
    Cpu: Device<E>,
    CpuBuffer<E>: std::ops::DerefMut<Target = Vec<E>>,
{
    if grads.get_mut_if_present(t).is_none() {
        grads.insert(t, buffer(t.dev(), zeros(t.len()))?);
    }
    Ok(grads
        .get_mut_if_present(t)
        .expect("inserted just above when absent"))
}
