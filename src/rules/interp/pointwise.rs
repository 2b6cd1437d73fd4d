//! Element-wise expressions as one program (`spec::pointwise`): the largest tree of
//! element-wise operators under a node runs as one op over its leaves, each leaf read in the
//! node's layout (element-wise operators commute with the layout moves and broadcasts the
//! operators between them would make). Where the device can, a leaf is read through the table
//! of its move rather than moved: `dot(g[j], h[k])` under a node over (i, j, k) is read n
//! times over without an n³ copy.

use std::sync::Arc;

use super::*;
use crate::rules::layout::read_table;
use crate::spec::pointwise::{BinaryFn, Program, Step, UnaryFn};
use crate::spec::GatherTable;

/// A broadcast is read through its table when it reads each source element at least this
/// many times; below that, a moved copy costs about what the table's reads do.
const MIN_READS: usize = 8;

/// A program's input: a value and, where it is read in place, the table it is read through.
type Leaf<E, D, T> = (Val<E, D, T>, Option<Arc<GatherTable>>);

fn same_table(a: &Option<Arc<GatherTable>>, b: &Option<Arc<GatherTable>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

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
        let (inputs, tables) = leaves.into_iter().map(|(v, table)| (v.t, table)).unzip();
        let t = crate::ops::pointwise::pointwise_gathered(inputs, tables, &program)?;
        Ok(self.val(t, canonical(&node.slots), node.channels))
    }

    /// Appends the steps of `node` under `root`, its operands first; returns its step's index.
    fn lower_pointwise(
        &mut self,
        st: &PlanStatement,
        root: &Node,
        node: &Node,
        steps: &mut Vec<Step>,
        leaves: &mut Vec<Leaf<E, D, T>>,
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
                let (v, table) = self.leaf(v, root)?;
                // two reads of one stored tensor through one table are one input read twice
                let same = v.tag.and_then(|t| {
                    leaves
                        .iter()
                        .position(|(l, lt)| l.tag == Some(t) && same_table(lt, &table))
                });
                if let Some(k) = same {
                    Step::Input(k)
                } else {
                    // the inputs are distinct tensors: one read another way is read as a copy
                    let (v, table) = match v.tag {
                        Some(t) if leaves.iter().any(|(l, _)| l.tag == Some(t)) => {
                            let mut v = self.canonical(v, &root.slots, root.channels)?;
                            if v.tag.is_some() {
                                v.t = v.t * E::one();
                                v.tag = None;
                            }
                            (v, None)
                        }
                        _ => (v, table),
                    };
                    leaves.push((v, table));
                    Step::Input(leaves.len() - 1)
                }
            }
        };
        steps.push(step);
        Ok(steps.len() - 1)
    }
}

impl<'a, E: Real, D: Backend<E>, T: Tape<E, D>> Run<'a, E, D, T> {
    /// The sum of `terms` (fresh values, none a stored tensor) in `root`'s layout, as one
    /// program: each term read in place where [`Self::leaf`] says so (a term over fewer
    /// indices than `root` is not copied out to all of them first).
    pub(super) fn sum_in_layout(
        &self,
        terms: Vec<Val<E, D, T>>,
        root: &Node,
    ) -> Result<Val<E, D, T>> {
        let mut steps = Vec::new();
        let mut leaves = Vec::new();
        let mut sum = None;
        for (k, v) in terms.into_iter().enumerate() {
            leaves.push(self.leaf(v, root)?);
            steps.push(Step::Input(k));
            let term = steps.len() - 1;
            if let Some(acc) = sum {
                steps.push(Step::Binary(BinaryFn::Add, acc, term));
            }
            sum = Some(steps.len() - 1);
        }
        let program = Program::new(steps)?;
        let (inputs, tables) = leaves.into_iter().map(|(v, table)| (v.t, table)).unzip();
        let t = crate::ops::pointwise::pointwise_gathered(inputs, tables, &program)?;
        Ok(self.val(t, canonical(&root.slots), root.channels))
    }

    /// `v` as a program under `root` reads it: in place through its move's table where that
    /// spares work (a permutation, or a broadcast of at least [`MIN_READS`] reads per source
    /// element), else moved into `root`'s layout.
    fn leaf(&self, v: Val<E, D, T>, root: &Node) -> Result<Leaf<E, D, T>> {
        let dst = canonical(&root.slots);
        let table = read_table(&v, &dst, root.channels, self.ext, &self.layer.cache)?
            .filter(|t| t.injective() || t.index().len() >= MIN_READS * t.source_len());
        match table {
            Some(table) => Ok((v, Some(table))),
            None => Ok((self.canonical(v, &root.slots, root.channels)?, None)),
        }
    }
}
