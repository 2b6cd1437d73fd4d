//! Element-wise expressions as one program (`spec::pointwise`): the largest tree of
//! element-wise operators under a node runs as one op over its leaves, each leaf read in the
//! node's layout (element-wise operators commute with the layout moves and broadcasts the
//! operators between them would make).

use super::*;
use crate::spec::pointwise::{BinaryFn, Program, Step, UnaryFn};

/// The program step `op` becomes with its operands at `a` (and `b`), if it is element-wise.
fn step_of(op: &Op) -> Option<StepKind> {
    Some(match op {
        Op::Binary { op, .. } => StepKind::Binary(match op {
            Arith::Add => BinaryFn::Add,
            Arith::Sub => BinaryFn::Sub,
            Arith::Mul => BinaryFn::Mul,
            Arith::Div => BinaryFn::Div,
            Arith::Min => BinaryFn::Min,
            Arith::Max => BinaryFn::Max,
        }),
        Op::Affine { mul, add, .. } => StepKind::Affine(*mul, *add),
        Op::Pow { exponent, .. } if *exponent == 2.0 => StepKind::Unary(UnaryFn::Square),
        Op::Pow { exponent, .. } => StepKind::Powf(*exponent),
        Op::Act { f, .. } => StepKind::Unary(match f {
            Activation::Relu => UnaryFn::Relu,
            Activation::Silu => UnaryFn::Silu,
            Activation::Sigmoid => UnaryFn::Sigmoid,
            Activation::Tanh => UnaryFn::Tanh,
            Activation::Exp => UnaryFn::Exp,
            Activation::Abs => UnaryFn::Abs,
            Activation::Square => UnaryFn::Square,
            Activation::Sqrt => UnaryFn::Sqrt,
            Activation::Log => UnaryFn::Ln,
            Activation::LeakyRelu => UnaryFn::LeakyRelu,
            // their own kernels or compositions
            Activation::Gelu | Activation::Softplus | Activation::Step { .. } => return None,
        }),
        _ => return None,
    })
}

enum StepKind {
    Binary(BinaryFn),
    Unary(UnaryFn),
    Affine(f64, f64),
    Powf(f64),
}

/// Whether `op` is an element-wise operator a program runs.
pub(super) fn is_pointwise(op: &Op) -> bool {
    step_of(op).is_some()
}

impl<'a, E: Real, D: Backend<E>, T: Tape<E, D>> Run<'a, E, D, T> {
    /// `node` (element-wise, see [`is_pointwise`]) with every element-wise operator below it
    /// as one program.
    pub(super) fn pointwise(&mut self, st: &PlanStatement, node: &Node) -> Result<Val<E, D, T>> {
        let mut steps = Vec::new();
        let mut leaves = Vec::new();
        self.lower_pointwise(st, node, node, &mut steps, &mut leaves)?;
        let program = Program::new(steps)?;
        let inputs = leaves.into_iter().map(|v| v.t).collect();
        let t = crate::ops::pointwise::pointwise(inputs, &program)?;
        Ok(self.val(t, canonical(&node.slots), node.channels))
    }

    /// Appends the steps of `node` under `root`, its operands first; returns its step's index.
    fn lower_pointwise(
        &mut self,
        st: &PlanStatement,
        root: &Node,
        node: &Node,
        steps: &mut Vec<Step>,
        leaves: &mut Vec<Val<E, D, T>>,
    ) -> Result<usize> {
        let step = match (step_of(&node.op), &node.op) {
            (Some(StepKind::Binary(f)), Op::Binary { lhs, rhs, .. }) => {
                let a = self.lower_pointwise(st, root, lhs, steps, leaves)?;
                let b = self.lower_pointwise(st, root, rhs, steps, leaves)?;
                Step::Binary(f, a, b)
            }
            (Some(kind), Op::Affine { x, .. } | Op::Pow { x, .. } | Op::Act { x, .. }) => {
                let x = self.lower_pointwise(st, root, x, steps, leaves)?;
                match kind {
                    StepKind::Unary(f) => Step::Unary(f, x),
                    StepKind::Affine(mul, add) => Step::Affine { x, mul, add },
                    StepKind::Powf(exponent) => Step::Powf { x, exponent },
                    StepKind::Binary(_) => unreachable!("a binary step is an Op::Binary"),
                }
            }
            _ => {
                let v = self.eval(st, node)?;
                let v = self.canonical(v, &root.slots, root.channels)?;
                // two unchanged reads of one stored tensor are one input read twice
                let same = v
                    .tag
                    .and_then(|t| leaves.iter().position(|l| l.tag == Some(t)));
                Step::Input(same.unwrap_or_else(|| {
                    leaves.push(v);
                    leaves.len() - 1
                }))
            }
        };
        steps.push(step);
        Ok(steps.len() - 1)
    }
}
