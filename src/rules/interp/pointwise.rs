//! Element-wise expressions as one program (`spec::pointwise`): the largest tree of
//! element-wise operators under a node runs as one op over its leaves, each leaf read in the
//! node's layout (element-wise operators commute with the layout moves and broadcasts the
//! operators between them would make).

use super::*;
use crate::spec::pointwise::{BinaryFn, Program, Step, UnaryFn};

fn binary_of(op: Arith) -> BinaryFn {
    match op {
        Arith::Add => BinaryFn::Add,
        Arith::Sub => BinaryFn::Sub,
        Arith::Mul => BinaryFn::Mul,
        Arith::Div => BinaryFn::Div,
        Arith::Min => BinaryFn::Min,
        Arith::Max => BinaryFn::Max,
    }
}

/// The program's function for `f`, if a program runs it.
fn unary_of(f: Activation) -> Option<UnaryFn> {
    Some(match f {
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
    })
}

/// Whether `op` is an element-wise operator a program runs.
pub(super) fn is_pointwise(op: &Op) -> bool {
    match op {
        Op::Binary { .. } | Op::Affine { .. } | Op::Pow { .. } => true,
        Op::Act { f, .. } => unary_of(*f).is_some(),
        _ => false,
    }
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
        let mut operand = |x: &Node| self.lower_pointwise(st, root, x, steps, leaves);
        let step = match &node.op {
            Op::Binary { op, lhs, rhs } => {
                let a = operand(lhs)?;
                Step::Binary(binary_of(*op), a, operand(rhs)?)
            }
            Op::Affine { x, mul, add } => Step::Affine {
                x: operand(x)?,
                mul: *mul,
                add: *add,
            },
            Op::Pow { x, exponent } if *exponent == 2.0 => {
                Step::Unary(UnaryFn::Square, operand(x)?)
            }
            Op::Pow { x, exponent } => Step::Powf {
                x: operand(x)?,
                exponent: *exponent,
            },
            Op::Act { f, x } if unary_of(*f).is_some() => {
                Step::Unary(unary_of(*f).expect("checked in the guard"), operand(x)?)
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
