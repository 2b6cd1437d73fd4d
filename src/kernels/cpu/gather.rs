//! The interpreter's layout moves (`rules::layout::arrange`) as one parallel pass each way.
//! dfdx's gather walks a strided index per element on one thread, and its backward adds into
//! the source gradient one element at a time; a rule's transposes of n² · c edges then cost
//! as much as its matrix products. Here the forward copies in parallel chunks, and the backward
//! of a table that reads each source element at most once (a permutation) writes each source
//! gradient from its one reader, also in parallel. A broadcasting table (a rule's n² terms read
//! at n³ positions) sums over fixed parts of the output in parallel, each into its own copy of
//! the source gradient, and then adds the copies up in order: the same sums in the same order
//! whatever the number of threads. A table with strides (`spec::Strides`, as layout moves' tables
//! usually are) is read by runs, copies and fills, not an index per element, both ways.

use dfdx::prelude::*;
use rayon::prelude::*;

use super::fused::{add_copies, CpuBuffer, Host, MAX_PARTS};
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
    let src = Host::read(&x);
    let len = table.index().len();
    let mut out = Vec::with_capacity(len);
    {
        let dst = Shared::spare(&mut out);
        (0..len.div_ceil(CHUNK)).into_par_iter().for_each(|c| {
            let start = c * CHUNK;
            // SAFETY: each task writes its own range of the spare capacity
            let o =
                unsafe { std::slice::from_raw_parts_mut(dst.at(start), CHUNK.min(len - start)) };
            read_gathered(table, &src, start, o);
        });
    }
    // SAFETY: the tasks above wrote every element of 0..len
    unsafe { out.set_len(len) };
    drop(src);
    let (x_g, table) = (x.ghost(), table.clone());
    taped.output(&dev, out, (len,), move |g, grads| {
        let dx = grads.get_or_alloc_mut(&x_g)?;
        if table.injective() {
            let dx = Shared::new(dx);
            // an injective table has one reader of each source element, so each task alone
            // writes the elements its chunk reads
            g.par_chunks(CHUNK)
                .enumerate()
                .for_each(|(c, g)| add_gathered(&table, g, c * CHUNK, dx));
        } else {
            add_broadcast(dx, g, &table);
        }
        Ok(())
    })
}

/// `dx[index[i]] += g[i]` for a table that reads source elements more than once. The output
/// is cut into parts fixed by the sizes alone (at most [`MAX_PARTS`], each at least as long as
/// the source, so the copies cost no more than the reads); each part sums into its own copy,
/// and the copies are added to `dx` in order, in parallel over the source.
fn add_broadcast<E: Real>(dx: &mut [E], g: &[E], table: &GatherTable) {
    let parts = (g.len() / dx.len().max(1)).clamp(1, MAX_PARTS);
    if parts == 1 || g.len() < CHUNK {
        add_gathered(table, g, 0, Shared::new(dx));
        return;
    }
    let part = g.len().div_ceil(parts);
    let len = dx.len();
    let sums: Vec<Vec<E>> = g
        .par_chunks(part)
        .enumerate()
        .map(|(p, g)| {
            let mut sum = vec![E::zero(); len];
            add_gathered(table, g, p * part, Shared::new(&mut sum));
            sum
        })
        .collect();
    add_copies(dx, &sums);
}

/// `out[e] = src[index[start + e]]`, by runs where the table has strides.
pub(super) fn read_gathered<E: Real>(table: &GatherTable, src: &[E], start: usize, out: &mut [E]) {
    let Some(strides) = table.strides() else {
        let index = &table.index()[start..start + out.len()];
        for (o, &i) in out.iter_mut().zip(index) {
            *o = src[i];
        }
        return;
    };
    strides.runs(start, out.len(), |at, from, count, stride| {
        let out = &mut out[at..at + count];
        match stride {
            0 => out.fill(src[from]),
            1 => out.copy_from_slice(&src[from..from + count]),
            _ => {
                for (o, i) in out.iter_mut().zip((from..).step_by(stride)) {
                    *o = src[i];
                }
            }
        }
    });
}

/// `target[index[start + e]] += d[e]`, by runs where the table has strides (a repeated read's
/// gradients summed first). The caller owns the elements of `target` this block reads.
pub(super) fn add_gathered<E: Real>(table: &GatherTable, d: &[E], start: usize, target: Shared<E>) {
    assert!(
        table.source_len() <= target.len(),
        "a gather table reads within its source"
    );
    let Some(strides) = table.strides() else {
        for (&d, &i) in d.iter().zip(&table.index()[start..start + d.len()]) {
            // SAFETY: the table's indices are below its source length (checked when it was
            // made), within `target` (checked above); the caller owns them
            unsafe { *target.at(i) = *target.at(i) + d };
        }
        return;
    };
    strides.runs(start, d.len(), |at, from, count, stride| {
        let d = &d[at..at + count];
        match stride {
            // SAFETY (all three): as above
            0 => unsafe {
                *target.at(from) = *target.at(from) + d.iter().fold(E::zero(), |a, &d| a + d)
            },
            1 => {
                let t = unsafe { std::slice::from_raw_parts_mut(target.at(from), count) };
                t.iter_mut().zip(d).for_each(|(t, &d)| *t = *t + d);
            }
            _ => {
                for (&d, i) in d.iter().zip((from..).step_by(stride)) {
                    unsafe { *target.at(i) = *target.at(i) + d };
                }
            }
        }
    });
}
