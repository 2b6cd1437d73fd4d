//! Element-wise programs: a chain of element-wise ops over tensors of one length, evaluated in
//! one pass per element rather than one tensor-sized pass (and allocation) per op. The rule
//! interpreter builds one from each element-wise expression of a rule (`sigmoid(a) * b`,
//! `x + linear(y, …)`); `ops::pointwise` runs it fused or as dfdx ops.

use super::GatherTable;
use crate::error::{Error, Result};

/// An element-wise function of two operands (the rule language's arithmetic).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryFn {
    /// `a + b`.
    Add,
    /// `a − b`.
    Sub,
    /// `a · b`.
    Mul,
    /// `a / b`.
    Div,
    /// `min(a, b)`; a tie sends half the gradient each way (as dfdx does).
    Min,
    /// `max(a, b)`; a tie sends half the gradient each way.
    Max,
}

/// An element-wise function of one operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnaryFn {
    /// `1 / (1 + e^−x)`.
    Sigmoid,
    /// `tanh x`.
    Tanh,
    /// `e^x`.
    Exp,
    /// `max(x, 0)`, slope 1 above 0 and 0 at or below it.
    Relu,
    /// `|x|`, slope 0 at 0.
    Abs,
    /// `√x`.
    Sqrt,
    /// `ln x`.
    Ln,
    /// `x²`.
    Square,
    /// `x · sigmoid(x)`.
    Silu,
    /// `x` above 0, [`LEAKY_RELU_SLOPE`] · `x` below; slope 0 at 0.
    LeakyRelu,
}

/// `leaky_relu`'s slope below 0 (PyTorch's default).
pub const LEAKY_RELU_SLOPE: f64 = 0.01;

/// One step of a program; operands are indices of earlier steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Step {
    /// Input tensor number `k` (an input may be read by several steps).
    Input(usize),
    /// `f(a, b)`.
    Binary(BinaryFn, usize, usize),
    /// `f(x)`.
    Unary(UnaryFn, usize),
    /// `x · mul + add`.
    Affine {
        /// The operand.
        x: usize,
        /// Multiplied first.
        mul: f64,
        /// Then added.
        add: f64,
    },
    /// `x ^ exponent` (`exponent` ≠ 2: squares are [`UnaryFn::Square`]).
    Powf {
        /// The base.
        x: usize,
        /// The constant exponent.
        exponent: f64,
    },
}

impl Step {
    /// The steps this one reads.
    pub fn operands(&self) -> impl Iterator<Item = usize> {
        let (a, b) = match *self {
            Step::Input(_) => (None, None),
            Step::Binary(_, a, b) => (Some(a), Some(b)),
            Step::Unary(_, x) | Step::Affine { x, .. } | Step::Powf { x, .. } => (Some(x), None),
        };
        a.into_iter().chain(b)
    }
}

/// Steps in order, each reading only earlier ones, each read by exactly one later step (a tree
/// whose root is the last step, the result).
#[derive(Clone, Debug, PartialEq)]
pub struct Program {
    steps: Vec<Step>,
    inputs: usize,
}

impl Program {
    /// A program of `steps`, checked: at least one step, every operand an earlier step, every
    /// step but the last read once, every constant finite, the inputs numbered 0, 1, … with
    /// none skipped.
    pub fn new(steps: Vec<Step>) -> Result<Self> {
        let bad = |message: String| {
            Err(Error::Config {
                context: "an element-wise program".into(),
                message,
            })
        };
        if steps.is_empty() {
            return bad("no steps".into());
        }
        let mut inputs = 0;
        for (i, step) in steps.iter().enumerate() {
            if let Some(a) = step.operands().find(|&a| a >= i) {
                return bad(format!("step {i} reads step {a}, not an earlier one"));
            }
            match *step {
                Step::Input(k) if k > inputs => {
                    return bad(format!("step {i} reads input {k} before input {inputs}"));
                }
                Step::Input(k) => inputs = inputs.max(k + 1),
                Step::Affine { mul, add, .. } if !(mul.is_finite() && add.is_finite()) => {
                    return bad(format!("step {i} has a non-finite constant"));
                }
                Step::Powf { exponent, .. } if !exponent.is_finite() => {
                    return bad(format!("step {i} has a non-finite exponent"));
                }
                _ => {}
            }
        }
        // a tree: every step but the last is read once, the last by none (an input tensor is
        // read several times through several `Input` steps)
        let mut reads = vec![0usize; steps.len()];
        steps
            .iter()
            .flat_map(Step::operands)
            .for_each(|a| reads[a] += 1);
        let last = steps.len() - 1;
        if let Some(i) = (0..steps.len()).find(|&i| reads[i] != usize::from(i != last)) {
            return bad(format!("step {i} is read {} times", reads[i]));
        }
        Ok(Self { steps, inputs })
    }

    /// The steps, in order.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// How many input tensors it reads.
    pub fn inputs(&self) -> usize {
        self.inputs
    }
}

/// The common length a program reads its inputs at, some through gather tables (`tables[k]`
/// for input k of `lengths[k]` elements: read at the table's length, over a source of its
/// length), or the error naming what does not fit.
pub fn check_gathered(
    program: &Program,
    lengths: &[usize],
    tables: &[Option<&GatherTable>],
) -> Result<usize> {
    if tables.len() != lengths.len() {
        return Err(Error::shape(
            "element-wise program: gather tables",
            lengths.len(),
            tables.len(),
        ));
    }
    let mut read = Vec::with_capacity(lengths.len());
    for (&len, table) in lengths.iter().zip(tables) {
        read.push(match table {
            Some(table) if len != table.source_len() => {
                return Err(Error::shape(
                    "element-wise program: a gathered input",
                    table.source_len(),
                    len,
                ))
            }
            Some(table) => table.index().len(),
            None => len,
        });
    }
    check_inputs(program, &read)
}

/// The common length of a program's inputs, or the error naming the one that differs (or a
/// count that is not the program's).
pub fn check_inputs(program: &Program, lengths: &[usize]) -> Result<usize> {
    if lengths.len() != program.inputs() {
        return Err(Error::shape(
            "element-wise program",
            format!("{} input tensors", program.inputs()),
            format!("{}", lengths.len()),
        ));
    }
    let len = lengths[0];
    if let Some((k, &other)) = lengths.iter().enumerate().find(|&(_, &l)| l != len) {
        return Err(Error::shape(
            "element-wise program",
            format!("input {k} of {len} elements like input 0"),
            format!("{other}"),
        ));
    }
    Ok(len)
}
