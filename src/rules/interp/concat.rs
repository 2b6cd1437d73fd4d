//! `linear(concat(a, b, …))` as `linear_a(a) + linear_b(b) + …`, each part projected by its
//! own columns of the one weight. Parts over fewer indices than the result (`xn[i]` in a
//! statement over (i, j)) are projected where they live, n rows instead of n², and no part
//! is copied into a concatenation first. The weight stays one parameter, as declared.

use super::*;

impl<'a, E: Real, D: Backend<E>, T: Tape<E, D>> Run<'a, E, D, T> {
    /// `node` is `linear(x)` at `site` with `x` a concatenation of `parts`.
    pub(super) fn linear_of_concat(
        &mut self,
        st: &PlanStatement,
        node: &Node,
        site: &str,
        parts: &[Node],
    ) -> Result<Val<E, D, T>> {
        let Block::Linear(linear) = self.layer.site(&st.name, site) else {
            unreachable!("a linear's site holds a linear map")
        };
        let (outputs, inputs) = (linear.outputs, linear.inputs);
        let (weight, bias) = (linear.weight.clone(), linear.bias.clone());
        let mut terms = Vec::with_capacity(parts.len());
        let mut first = 0;
        for (k, part) in parts.iter().enumerate() {
            let v = self.eval(st, part)?;
            let rows = self.rows(&v);
            let x = v.t.reshape_like(&(rows, part.channels));
            // dfdx's slice backward writes its region of the gradient rather than adding to it,
            // so each part slices a copy of its own
            let w: T2<E, D, T> =
                (weight.matrix::<T>() * E::one()).slice((.., first..first + part.channels));
            let b = (k == 0)
                .then(|| bias.as_ref().map(|b| b.vector::<T>()))
                .flatten();
            let y = crate::ops::affine::linear(x, w, b)?;
            terms.push(self.val(y.reshape_like(&(rows * outputs,)), v.axes, outputs));
            first += part.channels;
        }
        debug_assert_eq!(first, inputs, "the parts fill the weight's columns");
        self.sum_in_layout(terms, node)
    }
}
