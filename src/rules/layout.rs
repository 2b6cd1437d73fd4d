//! Runtime values of the interpreter and the one operation that moves them between layouts.
//!
//! A value is a flat tensor whose logical axes are listed: the batch, one axis per index slot
//! (extent n), and the channels, whole or split into heads × within-head. Lifting nodes onto edges,
//! transposing, reading a diagonal, broadcasting channels per head and every permutation are the
//! same thing here: a gather whose index table says, for each destination element, which source
//! element it reads. Tables are built on the host once per layout pair and cached.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use dfdx::prelude::*;

use super::ir::Slot;
use crate::backend::{Backend, Fused};
use crate::error::{Error, Result};
use crate::spec::GatherTable;
use crate::tensor::*;

/// One logical axis of a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ax {
    /// The batch.
    Batch,
    /// An index slot (extent n).
    Slot(Slot),
    /// All channels.
    Chan,
    /// Channel blocks (`channels / within` of them).
    Head,
    /// The position inside a channel block.
    Within,
}

/// A runtime value: `t` holds the elements in the order of `axes`.
pub struct Val<E: Real, D: Device<E>, T> {
    /// The elements, flat.
    pub t: T1<E, D, T>,
    /// The logical axes, outermost first.
    pub axes: Vec<Ax>,
    /// Channel count.
    pub channels: usize,
    /// The block size when the channels are split into `Head` and `Within`.
    pub within: usize,
    /// Which stored variable this is an unchanged read of (two reads of one variable share a
    /// tensor id, and dfdx cannot take one id on both sides of a binary op).
    pub tag: Option<usize>,
}

/// The sizes every axis extent derives from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Extents {
    /// The batch size.
    pub batch: usize,
    /// Nodes per graph.
    pub nodes: usize,
}

impl Extents {
    /// The extent of axis `ax`.
    pub fn of(&self, ax: Ax, channels: usize, within: usize) -> usize {
        match ax {
            Ax::Batch => self.batch,
            Ax::Slot(_) => self.nodes,
            Ax::Chan => channels,
            Ax::Head => channels / within,
            Ax::Within => within,
        }
    }
    /// Elements of a value with `axes`.
    pub fn size(&self, axes: &[Ax], channels: usize, within: usize) -> usize {
        axes.iter().map(|&a| self.of(a, channels, within)).product()
    }
}

/// The canonical layout of a value over `slots`: batch, slots ascending, channels.
pub fn canonical(slots: &[Slot]) -> Vec<Ax> {
    let mut axes = vec![Ax::Batch];
    axes.extend(slots.iter().map(|&s| Ax::Slot(s)));
    axes.push(Ax::Chan);
    axes
}

/// The source channel a destination channel reads when `from` channels broadcast to `to`:
/// equal, from a single channel, or per head (`to = from · d`, head h covers `[h·d, (h+1)·d)`).
fn source_channel(ch: usize, from: usize, to: usize) -> usize {
    if from == to {
        ch
    } else if from == 1 {
        0
    } else {
        ch / (to / from)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct LayoutKey {
    src: Vec<Ax>,
    src_c: usize,
    src_within: usize,
    dst: Vec<Ax>,
    dst_c: usize,
    dst_within: usize,
    ext: Extents,
}

/// Gather tables by layout pair, kept across calls (a rule runs the same layouts every step).
/// Shared by the shards of a batch that run at once (see `train::shards`).
pub struct LayoutCache<D: Storage<usize>> {
    tables: Mutex<HashMap<LayoutKey, Table<D>>>,
}

/// One cached table: on the host for a device that gathers with its own kernel
/// ([`Fused::Gather`]), else as an index tensor for dfdx's gather.
#[derive(Clone)]
enum Table<D: Storage<usize>> {
    Host(Arc<GatherTable>),
    Device(Tensor<(usize,), usize, D>),
}

impl<D: Storage<usize>> Default for LayoutCache<D> {
    fn default() -> Self {
        Self {
            tables: Mutex::new(HashMap::new()),
        }
    }
}

/// Visits every element of a layout in order, with its batch index, the value of each slot and
/// its channel (`Head`/`Within` combined).
pub fn for_each_position(
    axes: &[Ax],
    ext: Extents,
    channels: usize,
    within: usize,
    mut f: impl FnMut(usize, &[usize; MAX_SLOTS], usize),
) {
    let dims: Vec<usize> = axes.iter().map(|&a| ext.of(a, channels, within)).collect();
    if dims.contains(&0) {
        return;
    }
    let mut pos = vec![0usize; axes.len()];
    let mut batch = 0;
    let mut slots = [0usize; MAX_SLOTS];
    let (mut head, mut inner, mut chan) = (0, 0, 0);
    let has_chan = axes.contains(&Ax::Chan);
    loop {
        f(
            batch,
            &slots,
            if has_chan {
                chan
            } else {
                head * within + inner
            },
        );
        // an odometer: only the digits that roll over are written again
        let mut d = pos.len();
        loop {
            let Some(prev) = d.checked_sub(1) else {
                return;
            };
            d = prev;
            pos[d] += 1;
            let carry = pos[d] == dims[d];
            if carry {
                pos[d] = 0;
            }
            let p = pos[d];
            match axes[d] {
                Ax::Batch => batch = p,
                Ax::Slot(s) => slots[s] = p,
                Ax::Chan => chan = p,
                Ax::Head => head = p,
                Ax::Within => inner = p,
            }
            if !carry {
                break;
            }
        }
    }
}

/// The most index slots one statement may use.
pub const MAX_SLOTS: usize = 8;

/// Flat source offsets for each destination element.
fn gather_table(key: &LayoutKey) -> Result<Vec<usize>> {
    let ext = key.ext;
    let mut strides = vec![0usize; key.src.len()];
    let mut acc = 1;
    for (i, &a) in key.src.iter().enumerate().rev() {
        strides[i] = acc;
        acc *= ext.of(a, key.src_c, key.src_within);
    }
    for a in &key.src {
        if let Ax::Slot(s) = a {
            if !key.dst.contains(a) {
                return Err(Error::config(
                    "rule layout",
                    format!("slot {s} vanishes without a reduction (a checker bug)"),
                ));
            }
        }
    }
    let size = ext.size(&key.dst, key.dst_c, key.dst_within);
    let mut table = Vec::with_capacity(size);
    for_each_position(&key.dst, ext, key.dst_c, key.dst_within, |b, slots, ch| {
        let src_ch = source_channel(ch, key.src_c, key.dst_c);
        let mut off = 0;
        for (a, &st) in key.src.iter().zip(&strides) {
            off += st
                * match a {
                    Ax::Batch => b,
                    Ax::Slot(s) => slots[*s],
                    Ax::Chan => src_ch,
                    Ax::Head => src_ch / key.src_within,
                    Ax::Within => src_ch % key.src_within,
                };
        }
        table.push(off);
    });
    Ok(table)
}

/// Moves `v` into the layout `dst` with `channels` channels (broadcasting channels as in
/// `source_channel`) split into blocks of `within` where `dst` has `Head`/`Within`.
/// A no-op when the layout already matches.
pub fn arrange<E: Real, D: Backend<E>, T: Tape<E, D>>(
    v: Val<E, D, T>,
    dst: &[Ax],
    channels: usize,
    within: usize,
    ext: Extents,
    cache: &LayoutCache<D>,
) -> Result<Val<E, D, T>> {
    let Some((table, within)) = move_table(&v, dst, channels, within, ext, cache)? else {
        return Ok(v);
    };
    let t = match table {
        // the CPU fuses every op or none (see `backend::set_cpu_fused`)
        Table::Host(table) if D::fuses(Fused::Gather) => D::gather_fused(v.t, &table)?,
        Table::Host(table) => {
            let dev = v.t.device().clone();
            let index = table.index().to_vec();
            let len = index.len();
            v.t.gather(dev.try_tensor_from_vec(index, (len,)).map_err(device_err)?)
        }
        Table::Device(index) => v.t.gather(index),
    };
    Ok(Val {
        t,
        axes: dst.to_vec(),
        channels,
        within,
        tag: None,
    })
}

/// The gather table that moves `v` into `dst` as [`arrange`] would, for a device that gathers
/// with its own kernel (the CPU), so that a fused op can read `v` through it in place of a
/// moved copy; `None` when the layout already matches or the device has no such kernel.
pub fn read_table<E: Real, D: Backend<E>, T: Tape<E, D>>(
    v: &Val<E, D, T>,
    dst: &[Ax],
    channels: usize,
    ext: Extents,
    cache: &LayoutCache<D>,
) -> Result<Option<Arc<GatherTable>>> {
    if !D::fuses(Fused::Gather) {
        return Ok(None);
    }
    Ok(match move_table(v, dst, channels, 1, ext, cache)? {
        Some((Table::Host(table), _)) => Some(table),
        _ => None,
    })
}

/// The cached table that moves `v` into `dst`, and the destination's block size; `None` when
/// the layout already matches.
fn move_table<E: Real, D: Backend<E>, T: Tape<E, D>>(
    v: &Val<E, D, T>,
    dst: &[Ax],
    channels: usize,
    within: usize,
    ext: Extents,
    cache: &LayoutCache<D>,
) -> Result<Option<(Table<D>, usize)>> {
    let splits = dst.contains(&Ax::Head) || dst.contains(&Ax::Within);
    let within = if splits { within } else { 1 };
    let same_split = v.within == within || !(splits || v.axes.contains(&Ax::Head));
    if v.axes == dst && v.channels == channels && same_split {
        return Ok(None);
    }
    let key = LayoutKey {
        src: v.axes.clone(),
        src_c: v.channels,
        src_within: v.within,
        dst: dst.to_vec(),
        dst_c: channels,
        dst_within: within,
        ext,
    };
    // a panic elsewhere while the lock was held leaves a cache that is still consistent
    let mut tables = cache.tables.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(t) = tables.get(&key) {
        return Ok(Some((t.clone(), within)));
    }
    let index = gather_table(&key)?;
    let t = if D::fuses(Fused::Gather) {
        Table::Host(Arc::new(GatherTable::new(index, v.t.shape().0)?))
    } else {
        let dev = v.t.device().clone();
        let len = index.len();
        Table::Device(dev.try_tensor_from_vec(index, (len,)).map_err(device_err)?)
    };
    tables.insert(key, t.clone());
    Ok(Some((t, within)))
}

/// A host-built 0/1 tensor over a layout: `keep(batch, slot values)` per position (the same for
/// every channel).
pub fn mask_tensor<E: Real, D: Device<E>>(
    dev: &D,
    axes: &[Ax],
    ext: Extents,
    channels: usize,
    within: usize,
    keep: impl Fn(usize, &[usize; MAX_SLOTS]) -> bool,
) -> Result<T1<E, D>> {
    let mut data = Vec::with_capacity(ext.size(axes, channels, within));
    // `keep` never reads the channel: decide once per position of the leading axes and repeat
    // it over the trailing channel axes
    let lead = axes
        .iter()
        .rposition(|a| matches!(a, Ax::Batch | Ax::Slot(_)))
        .map_or(0, |p| p + 1);
    let repeat = ext.size(&axes[lead..], channels, within);
    for_each_position(&axes[..lead], ext, channels, within, |b, slots, _| {
        let v = if keep(b, slots) { E::one() } else { E::zero() };
        data.extend(std::iter::repeat(v).take(repeat));
    });
    let len = data.len();
    constant(dev, data, (len,))
}
