//! Element-wise programs (`spec::pointwise`) in one parallel pass each way. dfdx runs each
//! element-wise op as its own single-threaded pass with its own output and, backward, its own
//! gradient buffers: `sigmoid(a) · b` over a `[b, n, n, c]` edge tensor was two passes forward
//! and two back, each over the whole tensor, on one core. Here the elements are cut into
//! blocks that stay in the L1 cache: every step of the program runs over one block before the
//! next block starts, and the backward recomputes a block's steps, then sends its gradient back
//! through them, adding into each input's gradient once.
//!
//! The arithmetic follows dfdx's op by op (a tie of `min` / `max` sends half the gradient each
//! way, `relu`, `leaky_relu` and `abs` have slope 0 at 0), except that NaN stays NaN through
//! `relu`, `leaky_relu`, `min` and `max` (dfdx's, like `f32::max`, return the other operand),
//! as it does in the composite form (`ops::pointwise`).

use std::sync::Arc;

use dfdx::prelude::*;
use rayon::prelude::*;

use super::fused::{add_copies, CpuBuffer, Host, MAX_PARTS};
use super::gather::{add_gathered, read_gathered};
use super::grads::gradient_mut;
use super::shared::Shared;
use super::taped::Taped;
use crate::error::Result;
use crate::spec::pointwise::{check_gathered, BinaryFn, Program, Step, UnaryFn, LEAKY_RELU_SLOPE};
use crate::spec::GatherTable;
use crate::tensor::*;

/// Elements per block: a block's values of every step (and, backward, their gradients) stay
/// in cache while the steps run over it.
const BLOCK: usize = 256;

/// Elements per rayon task.
const TASK: usize = 64 * BLOCK;

/// `program` over `inputs` (vectors of one length, distinct tensors) in one pass; the
/// backward recomputes the steps and writes every input's gradient in one pass.
pub fn pointwise_fused<E: Real, T: Tape<E, Cpu>>(
    inputs: Vec<T1<E, Cpu, T>>,
    program: &Program,
) -> Result<T1<E, Cpu, T>>
where
    Cpu: Device<E>,
    CpuBuffer<E>: std::ops::DerefMut<Target = Vec<E>>,
{
    let tables = vec![None; inputs.len()];
    pointwise_gathered(inputs, tables, program)
}

/// How the program reads one input.
enum Read {
    /// Element e at e.
    Direct,
    /// Element e at `index[e]`, each source element by one element at most: the backward
    /// writes each source gradient from its one reader.
    Permuted(Arc<GatherTable>),
    /// Element e at `index[e]`, source elements read many times: the backward sums into a
    /// copy of the source gradient per part of the elements (see [`backward`]).
    Broadcast(Arc<GatherTable>),
}

impl Read {
    fn table(&self) -> Option<&GatherTable> {
        match self {
            Read::Direct => None,
            Read::Permuted(t) | Read::Broadcast(t) => Some(t),
        }
    }
}

/// [`pointwise_fused`] with inputs read through gather tables (`tables[k]`: element e of the
/// program reads `inputs[k][table.index()[e]]`), in place of the moved copies the rule
/// interpreter would otherwise make: a three-index rule's n² terms are read at n³ positions
/// without an n³ copy of each, forward or back.
pub fn pointwise_gathered<E: Real, T: Tape<E, Cpu>>(
    inputs: Vec<T1<E, Cpu, T>>,
    tables: Vec<Option<Arc<GatherTable>>>,
    program: &Program,
) -> Result<T1<E, Cpu, T>>
where
    Cpu: Device<E>,
    CpuBuffer<E>: std::ops::DerefMut<Target = Vec<E>>,
{
    let lengths: Vec<usize> = inputs.iter().map(|t| t.shape().0).collect();
    let refs: Vec<Option<&GatherTable>> = tables.iter().map(|t| t.as_deref()).collect();
    let len = check_gathered(program, &lengths, &refs)?;
    let reads: Vec<Read> = tables
        .into_iter()
        .map(|t| match t {
            None => Read::Direct,
            Some(t) if t.injective() => Read::Permuted(t),
            Some(t) => Read::Broadcast(t),
        })
        .collect();
    let dev = inputs[0].device().clone();
    let mut taped = Taped::new();
    let inputs: Vec<T1<E, Cpu>> = inputs.into_iter().map(|t| taped.input(t)).collect();
    let data: Vec<Host<E>> = inputs.iter().map(Host::read).collect();
    let ghosts: Vec<_> = inputs.iter().map(|t| t.ghost()).collect();
    drop(inputs);

    let mut out = Vec::with_capacity(len);
    {
        let dst = Shared::spare(&mut out);
        let (data, reads) = (&data, &reads);
        (0..len.div_ceil(TASK)).into_par_iter().for_each_init(
            || Scratch::new(program),
            |scratch, task| {
                for start in (task * TASK..len.min((task + 1) * TASK)).step_by(BLOCK) {
                    let n = BLOCK.min(len - start);
                    scratch.forward(program, data, reads, start, n);
                    // SAFETY: each task writes its own range of the spare capacity
                    let o = unsafe { std::slice::from_raw_parts_mut(dst.at(start), n) };
                    o.copy_from_slice(scratch.value(program.steps().len() - 1, n));
                }
            },
        );
    }
    // SAFETY: the tasks above wrote every element of 0..len
    unsafe { out.set_len(len) };

    let program = program.clone();
    taped.output(&dev, out, (len,), move |g, grads| {
        // every input's gradient is taken out of `grads` for the pass and put back after
        let mut sums = Vec::with_capacity(ghosts.len());
        for ghost in &ghosts {
            sums.push(std::mem::take(&mut **gradient_mut(grads, ghost)?));
        }
        // one tensor passed twice would leave an empty buffer at its second place
        let distinct = sums.iter().zip(&data).all(|(s, d)| s.len() == d.len());
        if distinct {
            backward(&program, &data, &reads, g, &mut sums);
        }
        // in reverse, so that a tensor passed twice gets back its buffer, not the empty one
        for (ghost, sum) in ghosts.iter().zip(sums).rev() {
            **grads.get_or_alloc_mut(ghost)? = sum;
        }
        if distinct {
            Ok(())
        } else {
            Err(CpuError::WrongNumElements)
        }
    })
}

/// Adds the gradient `g` of the program's output into every input's gradient in `sums`.
/// With no input read by broadcast, tasks of [`TASK`] elements write disjoint parts of every
/// gradient. Otherwise the elements are cut into at most [`MAX_PARTS`] parts, fixed by the
/// length alone: each part sums its broadcast inputs' gradients into its own copies, added up
/// in order after, so that the sums are the same whatever the number of threads.
fn backward<E: Real>(
    program: &Program,
    data: &[Host<E>],
    reads: &[Read],
    g: &[E],
    sums: &mut [Vec<E>],
) {
    let len = g.len();
    let broadcast: Vec<usize> = (0..reads.len())
        .filter(|&k| matches!(reads[k], Read::Broadcast(_)))
        .collect();
    let targets: Vec<Shared<E>> = sums.iter_mut().map(|s| Shared::new(s)).collect();
    let blocks =
        |scratch: &mut Scratch<E>, targets: &[Shared<E>], range: std::ops::Range<usize>| {
            for start in range.clone().step_by(BLOCK) {
                let n = BLOCK.min(range.end - start);
                scratch.forward(program, data, reads, start, n);
                scratch.backward(program, reads, &g[start..start + n], targets, start, n);
            }
        };
    if broadcast.is_empty() {
        (0..len.div_ceil(TASK)).into_par_iter().for_each_init(
            || Scratch::new(program),
            |scratch, task| blocks(scratch, &targets, task * TASK..len.min((task + 1) * TASK)),
        );
        return;
    }
    let parts = len.div_ceil(BLOCK).clamp(1, MAX_PARTS);
    let part = len.div_ceil(BLOCK).div_ceil(parts) * BLOCK;
    let mut copies: Vec<Vec<Vec<E>>> = (0..parts)
        .into_par_iter()
        .map(|p| {
            let mut own: Vec<Vec<E>> = broadcast
                .iter()
                .map(|&k| vec![E::zero(); data[k].len()])
                .collect();
            let mut mine = targets.clone();
            for (&k, buf) in broadcast.iter().zip(own.iter_mut()) {
                mine[k] = Shared::new(buf);
            }
            let range = (p * part).min(len)..((p + 1) * part).min(len);
            blocks(&mut Scratch::new(program), &mine, range);
            drop(mine);
            own
        })
        .collect();
    drop(targets);
    for (b, &k) in broadcast.iter().enumerate() {
        let mine: Vec<Vec<E>> = copies
            .iter_mut()
            .map(|c| std::mem::take(&mut c[b]))
            .collect();
        add_copies(&mut sums[k], &mine);
    }
}

/// One task's blocks: every step's values and their gradients, `BLOCK` apart.
struct Scratch<E> {
    values: Vec<E>,
    grads: Vec<E>,
    tmp: Vec<E>,
}

impl<E: Real> Scratch<E> {
    fn new(program: &Program) -> Self {
        let len = program.steps().len() * BLOCK;
        Self {
            values: vec![E::zero(); len],
            grads: vec![E::zero(); len],
            tmp: vec![E::zero(); BLOCK],
        }
    }

    fn value(&self, step: usize, n: usize) -> &[E] {
        &self.values[step * BLOCK..][..n]
    }

    /// Every step's values over elements `start..start + n`.
    fn forward(
        &mut self,
        program: &Program,
        data: &[Host<E>],
        reads: &[Read],
        start: usize,
        n: usize,
    ) {
        for (s, step) in program.steps().iter().enumerate() {
            let (done, rest) = self.values.split_at_mut(s * BLOCK);
            let out = &mut rest[..n];
            let v = |i: usize| &done[i * BLOCK..][..n];
            match *step {
                Step::Input(k) => match reads[k].table() {
                    None => out.copy_from_slice(&data[k][start..start + n]),
                    Some(table) => read_gathered(table, &data[k], start, out),
                },
                Step::Binary(f, a, b) => binary(f, v(a), v(b), out),
                Step::Unary(f, x) => unary(f, v(x), out, &mut self.tmp[..n]),
                Step::Affine { x, mul, add } => {
                    let (m, c) = (E::of(mul), E::of(add));
                    out.copy_from_slice(v(x));
                    // as the composite form: a multiply by 1 or an add of 0 is left out
                    if mul != 1.0 {
                        out.iter_mut().for_each(|o| *o = *o * m);
                    }
                    if add != 0.0 {
                        out.iter_mut().for_each(|o| *o = *o + c);
                    }
                }
                Step::Powf { x, exponent } => {
                    let e = E::of(exponent);
                    zip_map(out, v(x), |x| x.powf(e));
                }
            }
        }
    }

    /// Sends `g`, the gradient of the last step over `start..start + n`, back through the
    /// steps (their values from [`Scratch::forward`]) and adds each input's share into
    /// `targets`.
    fn backward(
        &mut self,
        program: &Program,
        reads: &[Read],
        g: &[E],
        targets: &[Shared<E>],
        start: usize,
        n: usize,
    ) {
        let steps = program.steps();
        for s in 0..steps.len() {
            self.grads[s * BLOCK..][..n].fill(E::zero());
        }
        self.grads[(steps.len() - 1) * BLOCK..][..n].copy_from_slice(g);
        for (s, step) in steps.iter().enumerate().rev() {
            let (before, rest) = self.grads.split_at_mut(s * BLOCK);
            let d = &rest[..n];
            let v = |i: usize| &self.values[i * BLOCK..][..n];
            match *step {
                Step::Input(k) => match reads[k].table() {
                    None => {
                        // SAFETY: each task adds into its own range of every input's gradient
                        let t = unsafe { std::slice::from_raw_parts_mut(targets[k].at(start), n) };
                        add_into(t, d, (d, d), |d, _, _| d);
                    }
                    // a permutation's source element has one reader, so one task; a
                    // broadcast's target is this part's own copy (see `backward`)
                    Some(table) => add_gathered(table, d, start, targets[k]),
                },
                Step::Binary(f, a, b) => {
                    let (x, y) = (v(a), v(b));
                    // operands are distinct steps (a program is a tree)
                    let ga = &mut before[a * BLOCK..][..n];
                    add_binary_slopes(f, Operand::Left, ga, d, (x, y));
                    let gb = &mut before[b * BLOCK..][..n];
                    add_binary_slopes(f, Operand::Right, gb, d, (x, y));
                }
                Step::Unary(f, x) => {
                    let (xs, fx) = (v(x), v(s));
                    let gx = &mut before[x * BLOCK..][..n];
                    add_unary_slope(f, gx, d, (xs, fx));
                }
                Step::Affine { x, mul, .. } => {
                    let m = E::of(mul);
                    let gx = &mut before[x * BLOCK..][..n];
                    if mul != 1.0 {
                        add_into(gx, d, (d, d), |d, _, _| d * m);
                    } else {
                        add_into(gx, d, (d, d), |d, _, _| d);
                    }
                }
                Step::Powf { x, exponent } => {
                    let (p, xs) = (E::of(exponent), v(x));
                    let gx = &mut before[x * BLOCK..][..n];
                    add_into(gx, d, (xs, xs), |d, x, _| d * (p * x.powf(p - E::one())));
                }
            }
        }
    }
}

/// `acc[e] += f(d[e], x[e], y[e])` over the block: no index and no dispatch inside the loop,
/// so that each call's loop is compiled, and vectorized, on its own. Not inlined: as a
/// function of its own its slices are known not to overlap (inlined, they were parts of one
/// scratch and the loop stayed scalar).
#[inline(never)]
fn add_into<E: Real>(acc: &mut [E], d: &[E], (x, y): (&[E], &[E]), f: impl Fn(E, E, E) -> E) {
    for (a, ((&d, &x), &y)) in acc.iter_mut().zip(d.iter().zip(x).zip(y)) {
        *a = *a + f(d, x, y);
    }
}

/// Which operand of a binary step a gradient is for.
#[derive(Clone, Copy, PartialEq)]
enum Operand {
    Left,
    Right,
}

/// `g[e] += d[e] · ∂f(x, y)/∂operand` over the block, one loop per operator (the match is
/// outside the loop; each arm's slope is the expression the composite form's gradient uses).
#[inline(always)]
fn add_binary_slopes<E: Real>(f: BinaryFn, side: Operand, g: &mut [E], d: &[E], xy: (&[E], &[E])) {
    let left = side == Operand::Left;
    match (f, left) {
        (BinaryFn::Add, _) | (BinaryFn::Sub, true) => add_into(g, d, xy, |d, _, _| d),
        (BinaryFn::Sub, false) => add_into(g, d, xy, |d, _, _| -d),
        (BinaryFn::Mul, true) => add_into(g, d, xy, |d, _, y| d * y),
        (BinaryFn::Mul, false) => add_into(g, d, xy, |d, x, _| d * x),
        (BinaryFn::Div, true) => add_into(g, d, xy, |d, _, y| d * y.recip()),
        (BinaryFn::Div, false) => add_into(g, d, xy, |d, x, y| d * (-x / y.powi(2))),
        (BinaryFn::Min, true) => add_into(g, d, xy, |d, x, y| d * tie(x < y, x > y)),
        (BinaryFn::Min, false) => add_into(g, d, xy, |d, x, y| d * tie(y < x, y > x)),
        (BinaryFn::Max, true) => add_into(g, d, xy, |d, x, y| d * tie(x > y, x < y)),
        (BinaryFn::Max, false) => add_into(g, d, xy, |d, x, y| d * tie(y > x, y < x)),
    }
}

/// `g[e] += d[e] · f'(x[e])` over the block (`fx`: the step's values), one loop per function:
/// each arm calls [`unary_slope`] with a constant function, which folds its match away.
#[inline(always)]
fn add_unary_slope<E: Real>(f: UnaryFn, g: &mut [E], d: &[E], (xs, fx): (&[E], &[E])) {
    macro_rules! per_function {
        ($($f:ident),* $(,)?) => {
            match f {
                $(UnaryFn::$f => {
                    add_into(g, d, (xs, fx), |d, x, fx| d * unary_slope(UnaryFn::$f, x, fx))
                })*
            }
        };
    }
    per_function!(Sigmoid, Tanh, Exp, Relu, Abs, Sqrt, Ln, Square, Silu, LeakyRelu);
}

#[inline(always)]
fn zip_map<E: Real>(out: &mut [E], x: &[E], f: impl Fn(E) -> E) {
    out.iter_mut().zip(x).for_each(|(o, &x)| *o = f(x));
}

fn binary<E: Real>(f: BinaryFn, x: &[E], y: &[E], out: &mut [E]) {
    match f {
        BinaryFn::Add => zip2(out, x, y, |x, y| x + y),
        BinaryFn::Sub => zip2(out, x, y, |x, y| x - y),
        BinaryFn::Mul => zip2(out, x, y, |x, y| x * y),
        BinaryFn::Div => zip2(out, x, y, |x, y| x / y),
        BinaryFn::Min => zip2(out, x, y, |x, y| nan_or(x, y, x.min(y))),
        BinaryFn::Max => zip2(out, x, y, |x, y| nan_or(x, y, x.max(y))),
    }
}

/// `out[e] = f(x[e], y[e])` (generic, so that each operator's loop is compiled, and
/// vectorized, on its own).
#[inline(always)]
fn zip2<E: Real>(out: &mut [E], x: &[E], y: &[E], f: impl Fn(E, E) -> E) {
    out.iter_mut()
        .zip(x.iter().zip(y))
        .for_each(|(o, (&x, &y))| *o = f(x, y));
}

/// `value`, or NaN where `x` or `y` is NaN.
#[inline(always)]
fn nan_or<E: Real>(x: E, y: E, value: E) -> E {
    if x.is_nan() {
        x
    } else if y.is_nan() {
        y
    } else {
        value
    }
}

/// 1 when `wins`, 0 when `loses`, ½ for a tie (or a NaN).
#[inline(always)]
fn tie<E: Real>(wins: bool, loses: bool) -> E {
    if wins {
        E::one()
    } else if loses {
        E::zero()
    } else {
        E::of(0.5)
    }
}

fn unary<E: Real>(f: UnaryFn, x: &[E], out: &mut [E], tmp: &mut [E]) {
    match f {
        UnaryFn::Sigmoid | UnaryFn::Silu => {
            sigmoid(x, out, tmp);
            if f == UnaryFn::Silu {
                out.iter_mut().zip(x).for_each(|(o, &x)| *o = x * *o);
            }
        }
        UnaryFn::Tanh => zip_map(out, x, |x| x.tanh()),
        UnaryFn::Exp => zip_map(out, x, |x| x.exp()),
        UnaryFn::Relu => zip_map(out, x, |x| {
            if x > E::zero() || x.is_nan() {
                x
            } else {
                E::zero()
            }
        }),
        UnaryFn::LeakyRelu => {
            let slope = E::of(LEAKY_RELU_SLOPE);
            zip_map(out, x, |x| {
                if x > E::zero() || x.is_nan() {
                    x
                } else {
                    x * slope
                }
            })
        }
        UnaryFn::Abs => zip_map(out, x, |x| x.abs()),
        UnaryFn::Sqrt => zip_map(out, x, |x| x.sqrt()),
        UnaryFn::Ln => zip_map(out, x, |x| x.ln()),
        UnaryFn::Square => zip_map(out, x, |x| x * x),
    }
}

/// `1 / (1 + e^−x)` from `e^−|x|` (never overflows, so the vectorized `exp` serves): `1 / (1 +
/// e)` for x ≥ 0, `e / (1 + e)` below; NaN stays NaN.
fn sigmoid<E: Real>(x: &[E], out: &mut [E], e: &mut [E]) {
    zip_map(e, x, |x| -x.abs());
    E::exp_slice(e);
    out.iter_mut()
        .zip(x.iter().zip(e.iter()))
        .for_each(|(o, (&x, &e))| {
            let r = (E::one() + e).recip();
            *o = if x >= E::zero() { r } else { e * r };
        });
}

/// The slope of `f` at `x`, whose value there is `fx` (dfdx's).
#[inline(always)]
fn unary_slope<E: Real>(f: UnaryFn, x: E, fx: E) -> E {
    match f {
        UnaryFn::Sigmoid => fx * (E::one() - fx),
        UnaryFn::Tanh => E::one() - fx * fx,
        UnaryFn::Exp => fx,
        UnaryFn::Relu => {
            if x > E::zero() {
                E::one()
            } else {
                E::zero()
            }
        }
        UnaryFn::LeakyRelu => {
            if x > E::zero() {
                E::one()
            } else if x < E::zero() {
                E::of(LEAKY_RELU_SLOPE)
            } else {
                E::zero()
            }
        }
        UnaryFn::Abs => {
            if x == E::zero() {
                E::zero()
            } else {
                x.signum()
            }
        }
        UnaryFn::Sqrt => (fx + fx).recip(),
        UnaryFn::Ln => x.recip(),
        UnaryFn::Square => x + x,
        UnaryFn::Silu => {
            // x · σ(x): σ + x · σ (1 − σ), σ recomputed as dfdx computes it
            let s = (E::one() + (-x).exp()).recip();
            s + x * (s * (E::one() - s))
        }
    }
}
