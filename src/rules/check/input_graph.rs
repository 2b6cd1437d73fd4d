//! What a rule reads of the input graph: `adjacency[a, b]` as a tensor, and the `mask:` option
//! of `attend` and of the reductions, which keeps only the positions the input graph connects.

use super::*;

impl<'a> Checker<'a> {
    /// `adjacency[a, b]`: one channel over its two indices, 1 where the input has edge a → b.
    pub(super) fn adjacency_read(&mut self, ix: &Indexed) -> Checked<Node> {
        if ix.indices.len() != 2 {
            return Err(index_count_error("adjacency", 2, ix));
        }
        let slots = self.bound_slots(ix)?;
        let mut free = slots.clone();
        free.sort_unstable();
        free.dedup();
        Ok(Node {
            op: Op::Adjacency { slots },
            slots: free,
            channels: 1,
        })
    }

    /// The value of a `mask:` option: a read of `adjacency` over two bound indices.
    fn adjacency_mask(&mut self, v: &Expr) -> Checked<AdjacencyMask> {
        let ExprKind::Index(ix) = &v.kind else {
            return Err(
                RuleError::new(v.span, "`mask:` takes the input graph's edges")
                    .hint("e.g. `mask: adjacency[j, i]` (the edges j → i)"),
            );
        };
        if ix.name.name != "adjacency" {
            return Err(RuleError::new(
                ix.name.span,
                format!("`mask:` takes `adjacency`, not `{}`", ix.name.name),
            )
            .hint("to weigh positions by a tensor, multiply by it; `mask:` only drops positions the input graph does not connect"));
        }
        if ix.indices.len() != 2 {
            return Err(index_count_error("adjacency", 2, ix));
        }
        let slots = self.bound_slots(ix)?;
        Ok(AdjacencyMask {
            from: slots[0],
            to: slots[1],
        })
    }

    /// A reduction's or softmax's `mask:` over its index `slot` (named `over`): it must read
    /// that index; its other index may be one the operand does not use (`sum[j](x[j], mask:
    /// adjacency[j, i])`), which the operand is then broadcast over.
    pub(super) fn reduction_mask(
        &mut self,
        v: &Expr,
        slot: Slot,
        over: &str,
        name: &str,
    ) -> Checked<AdjacencyMask> {
        let m = self.adjacency_mask(v)?;
        if m.from != slot && m.to != slot {
            return Err(RuleError::new(
                v.span,
                format!("the `mask:` of `{name}[{over}]` must read `{over}`"),
            )
            .hint(format!(
                "it says which `{over}` are read: e.g. `mask: adjacency[{over}, i]`"
            )));
        }
        Ok(m)
    }

    /// An attention's `mask:`: node attention's query and key indices (either way round), or
    /// across edges the key's two indices; a path attention takes none.
    pub(super) fn attention_mask(&mut self, v: &Expr, pattern: &Pattern) -> Checked<AdjacencyMask> {
        let (want, what) = match *pattern {
            Pattern::Nodes { query, key } => ([query, key], "its query and key indices"),
            Pattern::Row { q0, key, .. } => ([q0, key], "the key edge's two indices"),
            Pattern::All { k0, k1, .. } => ([k0, k1], "the key edge's two indices"),
            Pattern::Path { .. } => {
                return Err(RuleError::new(v.span, "a path attention takes no `mask:`")
                    .hint("mask the path's weights in a three-index binding: `softmax[l](..., mask: adjacency[i, l])`"))
            }
        };
        let m = self.adjacency_mask(v)?;
        let same = |a: [Slot; 2], b: [Slot; 2]| a == b || a == [b[1], b[0]];
        if want[0] == want[1] || !same([m.from, m.to], want) {
            let names = want.map(|s| self.st.slots[s].clone());
            let example = match pattern {
                Pattern::Nodes { .. } => format!("adjacency[{}, {}]", names[1], names[0]),
                _ => format!("adjacency[{}, {}]", names[0], names[1]),
            };
            return Err(RuleError::new(
                v.span,
                format!("the `mask:` of this attention must read {what}"),
            )
            .hint(format!("e.g. `mask: {example}`")));
        }
        Ok(m)
    }
}
