//! The interpreter's layout moves (`rules::layout::arrange`) as one parallel pass each way.
//! dfdx's gather walks a strided index per element on one thread, and its backward adds into
//! the source gradient one element at a time; a rule's transposes of n² · c edges then cost
//! as much as its matrix products. Here the forward copies in parallel chunks, and the backward
//! of a table that reads each source element at most once (a permutation) writes each source
//! gradient from its one reader, also in parallel. A broadcasting table (a rule's n² terms read
//! at n³ positions) sums over fixed parts of the output in parallel, each into its own copy of
//! the source gradient, and then adds the copies up in order: the same sums in the same order
//! whatever the number of threads.

use dfdx::prelude::*;
use rayon::prelude::*;

use super::fused::{add_copies, host_copy, CpuBuffer, MAX_PARTS};
use super::shared::Shared;
use super::taped::Taped;
use crate::error::{Error, Result};
use crate::spec::GatherTable;
use crate::tensor::*;

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// `out[i] = x[table.index()[i]]`.
pub fn gather_fused<E: Real, T: Tape<E, Cpu>>(
    x: T1<E, Cpu, T>,
    table: &std::sync::Arc<GatherTable>,
) -> Result<T1<E, Cpu, T>>
where
    Cpu: Device<E>,
    CpuBuffer<E>: std::ops::DerefMut<Target = Vec<E>>,
{
    if x.shape().0 != table.source_len() {
        return Err(Error::shape(
            "gather source",
            table.source_len(),
            x.shape().0,
        ));
    }
    let dev = x.device().clone();
    let mut taped = Taped::new();
    let x = taped.input(x);
    let src = host_copy(&x);
    let index = table.index();
    let out: Vec<E> = index
        .par_iter()
        .with_min_len(CHUNK)
        .map(|&i| src[i])
        .collect();
    drop(src);
    let (x_g, table) = (x.ghost(), table.clone());
    taped.output(&dev, out, (table.index().len(),), move |g, grads| {
        let dx = grads.get_or_alloc_mut(&x_g)?;
        let index = table.index();
        if table.injective() {
            let dx = Shared::new(dx);
            g.par_chunks(CHUNK)
                .zip(index.par_chunks(CHUNK))
                .for_each(|(g, idx)| {
                    for (&g, &i) in g.iter().zip(idx) {
                        // SAFETY: an injective table has one reader of each source element,
                        // so this task alone writes dx[i]
                        unsafe { *dx.at(i) = *dx.at(i) + g };
                    }
                });
        } else {
            add_broadcast(dx, g, index);
        }
        Ok(())
    })
}

/// `dx[index[i]] += g[i]` for a table that reads source elements more than once. The output
/// is cut into parts fixed by the sizes alone (at most [`MAX_PARTS`], each at least as long as
/// the source, so the copies cost no more than the reads); each part sums into its own copy,
/// and the copies are added to `dx` in order, in parallel over the source.
fn add_broadcast<E: Real>(dx: &mut [E], g: &[E], index: &[usize]) {
    let parts = (index.len() / dx.len().max(1)).clamp(1, MAX_PARTS);
    if parts == 1 || index.len() < CHUNK {
        for (&g, &i) in g.iter().zip(index) {
            dx[i] = dx[i] + g;
        }
        return;
    }
    let part = index.len().div_ceil(parts);
    let len = dx.len();
    let sums: Vec<Vec<E>> = g
        .par_chunks(part)
        .zip(index.par_chunks(part))
        .map(|(g, idx)| {
            let mut sum = vec![E::zero(); len];
            for (&g, &i) in g.iter().zip(idx) {
                sum[i] = sum[i] + g;
            }
            sum
        })
        .collect();
    add_copies(dx, &sums);
}
