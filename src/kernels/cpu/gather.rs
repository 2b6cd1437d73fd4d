//! The interpreter's layout moves (`rules::layout::arrange`) as one parallel pass each way.
//! dfdx's gather walks a strided index per element on one thread, and its backward adds into
//! the source gradient one element at a time; a rule's transposes of n² · c edges then cost
//! as much as its matrix products. Here the forward copies in parallel chunks, and the backward
//! of a table that reads each source element at most once (a permutation) writes each source
//! gradient from its one reader, also in parallel; a broadcasting table sums on one thread.

use dfdx::prelude::*;
use rayon::prelude::*;

use super::fused::{host_copy, CpuBuffer};
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
            for (&g, &i) in g.iter().zip(index) {
                dx[i] = dx[i] + g;
            }
        }
        Ok(())
    })
}
