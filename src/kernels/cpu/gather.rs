//! The interpreter's layout moves (`rules::layout::arrange`) as one parallel pass each way.
//! dfdx's gather walks a strided index per element on one thread, and its backward adds into
//! the source gradient one element at a time; a rule's transposes of n² · c edges then cost
//! as much as its matrix products. Here the forward copies in parallel chunks, and the backward
//! of a table that reads each source element at most once (a permutation) writes each source
//! gradient from its one reader, also in parallel. A broadcasting table (a rule's n² terms read
//! at n³ positions) sums over fixed parts of the output in parallel, each into its own copy of
//! the source gradient, and then adds the copies up in order: the same sums in the same order
//! whatever the number of threads. A table with strides (`spec::Strides`, as layout moves' tables
//! usually are) is read by runs, copies and fills, not an index per element, both ways; one
//! that transposes (its runs read the source far apart) goes by tiles of the transposed plane.

use dfdx::prelude::*;
use rayon::prelude::*;

use super::fused::{add_copies, CpuBuffer, Host, MAX_PARTS};
use super::grads::gradient_mut;
use super::shared::Shared;
use super::taped::Taped;
use crate::error::{Error, Result};
use crate::spec::{GatherTable, Strides};
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
    let plane = Plane::of(table);
    let mut out = Vec::with_capacity(len);
    if let Some(plane) = &plane {
        let dst = Shared::spare(&mut out);
        (0..plane.tasks()).into_par_iter().for_each(|t| {
            plane.tiles(t, |o, s, (ta, osa), (tb, sb)| {
                for pa in 0..ta {
                    for pb in 0..tb {
                        // SAFETY: the tasks' tiles cover the output once between them
                        unsafe { dst.write(o + pa * osa + pb, src[s + pa + pb * sb]) };
                    }
                }
            });
        });
    } else {
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
        let dx = gradient_mut(grads, &x_g)?;
        if let Some(plane) = &plane {
            let dx = Shared::new(dx);
            (0..plane.tasks()).into_par_iter().for_each(|t| {
                plane.tiles(t, |o, s, (ta, osa), (tb, sb)| {
                    for pb in 0..tb {
                        for pa in 0..ta {
                            let i = s + pb * sb + pa;
                            // SAFETY: the table is injective, so the tasks' tiles read each
                            // source element at most once between them
                            unsafe { dx.write(i, *dx.at(i) + g[o + pa * osa + pb]) };
                        }
                    }
                });
            });
        } else if table.injective() {
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

/// Side of a square tile of a transposed plane: its 16 source rows and 16 output rows stay in
/// the first-level cache while it is copied.
const TILE: usize = 16;

/// Most elements of the last output digit one task covers.
const ALONG_PER_TASK: usize = 1024;

/// An injective table with strides whose innermost output digit (`along`) reads the source
/// apart, and one of whose other digits (`across`) reads it contiguously: a transpose of the
/// plane of the two (a rule's channels moved before its nodes, or back), repeated over the
/// remaining digits. Read by runs, every element of an output row came from another source
/// cache line; here the plane goes in tiles of [`TILE`] × [`TILE`], each tile reading its
/// source rows and writing its output rows whole.
struct Plane {
    base: usize,
    /// Extent, output stride and source stride of each remaining digit, outermost first.
    outer: Vec<(usize, usize, usize)>,
    /// Extent and output stride of the digit the source holds contiguously.
    across: (usize, usize),
    /// Extent and source stride of the last digit.
    along: (usize, usize),
    /// Elements of `across` and of `along` per task.
    task: (usize, usize),
}

impl Plane {
    /// The plane of `table`, if it is such a transpose and long enough to be worth the tiles.
    fn of(table: &GatherTable) -> Option<Self> {
        if !table.injective() || table.index().len() < CHUNK {
            return None;
        }
        let strides: &Strides = table.strides()?;
        let (dims, steps) = strides.digits();
        let last = dims.len().checked_sub(1)?;
        if steps[last] <= 1 || dims[last] < 2 {
            return None;
        }
        let a = (0..last).find(|&d| steps[d] == 1 && dims[d] >= 2)?;
        let mut out_strides = vec![1; dims.len()];
        for d in (0..last).rev() {
            out_strides[d] = out_strides[d + 1] * dims[d + 1];
        }
        let outer = (0..last)
            .filter(|&d| d != a)
            .map(|d| (dims[d], out_strides[d], steps[d]))
            .collect();
        let along = dims[last].min(ALONG_PER_TASK);
        let across = (CHUNK / along).next_multiple_of(TILE).min(dims[a]);
        Some(Self {
            base: strides.base(),
            outer,
            across: (dims[a], out_strides[a]),
            along: (dims[last], steps[last]),
            task: (across, along),
        })
    }

    fn blocks(&self) -> (usize, usize) {
        (
            self.across.0.div_ceil(self.task.0),
            self.along.0.div_ceil(self.task.1),
        )
    }

    /// How many tasks the plane splits into: every position of the outer digits, times blocks
    /// of `across` and of `along`. Tasks cover disjoint output elements.
    fn tasks(&self) -> usize {
        let (na, nb) = self.blocks();
        self.outer.iter().map(|o| o.0).product::<usize>() * na * nb
    }

    /// Calls `f(out, src, (rows, out_stride), (columns, src_stride))` for each tile of task
    /// `t`: output elements `out + r · out_stride + c` read source elements `src + r + c ·
    /// src_stride`, for `r < rows`, `c < columns`.
    fn tiles(&self, t: usize, mut f: impl FnMut(usize, usize, (usize, usize), (usize, usize))) {
        let (na, nb) = self.blocks();
        let (b_block, rest) = (t % nb, t / nb);
        let (a_block, mut outer) = (rest % na, rest / na);
        let (mut out, mut src) = (0, self.base);
        for &(extent, out_stride, src_stride) in self.outer.iter().rev() {
            let pos = outer % extent;
            outer /= extent;
            out += pos * out_stride;
            src += pos * src_stride;
        }
        let ((a_len, osa), (b_len, sb)) = (self.across, self.along);
        let a_end = ((a_block + 1) * self.task.0).min(a_len);
        let b_end = ((b_block + 1) * self.task.1).min(b_len);
        for a0 in (a_block * self.task.0..a_end).step_by(TILE) {
            for b0 in (b_block * self.task.1..b_end).step_by(TILE) {
                f(
                    out + a0 * osa + b0,
                    src + a0 + b0 * sb,
                    (TILE.min(a_end - a0), osa),
                    (TILE.min(b_end - b0), sb),
                );
            }
        }
    }
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
