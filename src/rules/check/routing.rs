//! `route: top(K, by: score, ...)`: which positions a routed attention or feedforward picks,
//! and within which index.

use super::*;

impl<'a> Checker<'a> {
    /// The route of an attention: its picks attend among themselves, so the query and the key
    /// are one tensor; a row or column pattern picks within its rows or columns.
    pub(super) fn attention_route(
        &mut self,
        v: &Expr,
        pattern: &Pattern,
        q_expr: &Expr,
        k_expr: &Expr,
    ) -> Checked<Route> {
        let (routed, fixed) = match *pattern {
            Pattern::Nodes { query, .. } => (vec![query], None),
            Pattern::All { q0, q1, .. } => (vec![q0, q1], None),
            Pattern::Row { q0, q1, .. } => (vec![q0, q1], Some(q0)),
            Pattern::Path { .. } => {
                return Err(RuleError::new(v.span, "a path attention takes no `route`")
                    .hint("its kernel never stores the n³ weights that routing picks among"))
            }
        };
        let same_tensor = match (&q_expr.kind, &k_expr.kind) {
            (ExprKind::Index(a), ExprKind::Index(b)) => a.name.name == b.name.name,
            _ => false,
        };
        if !same_tensor {
            return Err(RuleError::new(
                q_expr.span.to(k_expr.span),
                "routed attention needs the query and key to be one tensor",
            )
            .hint("the picked positions attend among themselves: `e[i, j] -> e[k, l]`"));
        }
        self.route(v, &routed, fixed)
    }

    /// `top(K, by: score, per: ..., ...)` routing a tensor over the `routed` slots (the row's
    /// first); `fixed` is the slot a pattern already picks within.
    pub(super) fn route(
        &mut self,
        v: &Expr,
        routed: &[Slot],
        fixed: Option<Slot>,
    ) -> Checked<Route> {
        let usage = "`route:` takes `top(K, by: score)`";
        let ExprKind::Call {
            func,
            over: None,
            args,
        } = &v.kind
        else {
            return Err(RuleError::new(v.span, usage));
        };
        if func.name != "top" {
            return Err(RuleError::new(v.span, usage));
        }
        let top = builtins::function("top").expect("a built-in");
        let mut a = Args::new(top, v.span, args)?;
        let k = a.positional("how many to pick: `top(64, by: score)`")?;
        let k = self.count(k, "the number of picks")?;
        let Some((_, by)) = a.option("by") else {
            return Err(RuleError::new(
                v.span,
                "`top` needs `by:`, the score to rank by",
            ));
        };
        let score = self.tensor(by, "the routing score", false)?;
        check_slots_within(&score, routed, by.span, &self.st.slots)?;
        if score.channels != 1 {
            return Err(RuleError::new(
                by.span,
                format!(
                    "the routing score needs 1 channel, it has {}",
                    score.channels
                ),
            )
            .hint("project it: `linear(..., 1)`"));
        }
        let per = match a.option("per") {
            Some((_, w)) => Some((
                w.span,
                self.word(w, "routing scope", &["auto", "all", "row", "column"])?,
            )),
            None => None,
        };
        let within = self.route_scope(v.span, per, routed, fixed)?;
        let fetch_ratio = match a.option("fetch") {
            Some((_, v)) => self.number(v, "`fetch`")?,
            None => top.num("fetch"),
        };
        let n_iters = match a.option("iters") {
            Some((_, v)) => self.count(v, "`iters`")?,
            None => top.num("iters") as usize,
        };
        let eps = match a.option("eps") {
            Some((_, v)) => self.number(v, "`eps`")?,
            None => top.num("eps"),
        };
        let straight = match a.option("straight") {
            Some((_, v)) => self.flag_value(v, "`straight`")?,
            None => top.flag("straight"),
        };
        a.finish()?;
        if fetch_ratio < 1.0 || eps <= 0.0 {
            return Err(RuleError::new(
                v.span,
                "`fetch` must be ≥ 1 and `eps` positive",
            ));
        }
        Ok(Route {
            k,
            score,
            within,
            fetch_ratio,
            n_iters,
            eps,
            straight,
        })
    }

    /// The slot routing picks within (`None`: among all positions of a graph), from `per:`,
    /// the pattern and causality. Picking among all positions reads the future in a causal
    /// rule: each pick depends on every score. Within a row i of edges a causal route picks only
    /// among (i, k ≤ i), all of time i, so it reads nothing later than what it writes.
    fn route_scope(
        &self,
        span: Span,
        per: Option<(Span, String)>,
        routed: &[Slot],
        fixed: Option<Slot>,
    ) -> Checked<Option<Slot>> {
        if routed.is_empty() || routed.len() > 2 {
            return Err(RuleError::new(span, "routing picks nodes or edges")
                .hint("route a tensor with one or two indices"));
        }
        let causal = self.cfg.causal;
        let per_span = per.as_ref().map_or(span, |(s, _)| *s);
        let per = per.map(|(_, w)| w);
        if let Some(f) = fixed {
            if per.as_deref().is_some_and(|w| w != "auto") {
                return Err(RuleError::new(
                    per_span,
                    format!(
                        "this attention's pattern already routes within each `{}`",
                        self.st.slots[f]
                    ),
                )
                .hint("leave out `per:`; route over all edges (`e[k, l]`) to choose the scope"));
            }
            return Ok(Some(f));
        }
        if let [_] = routed {
            if per.as_deref().is_some_and(|w| w == "row" || w == "column") {
                return Err(RuleError::new(
                    per_span,
                    "nodes have no rows or columns: routing picks among a graph's nodes",
                )
                .hint("leave out `per:`"));
            }
            if causal {
                return Err(RuleError::new(
                    span,
                    "routing among nodes reads the future in a causal rule",
                )
                .hint("each pick depends on every node's score; route rows of edges (`per: row`) instead"));
            }
            return Ok(None);
        }
        match per.as_deref() {
            Some("row") => Ok(Some(routed[0])),
            Some("column") => Ok(Some(routed[1])),
            Some("all") if causal => Err(RuleError::new(
                span,
                "routing over all edges reads the future in a causal rule",
            )
            .hint("use `per: row` (or `per: auto`): each row picks among its visible edges")),
            Some("all") => Ok(None),
            _ if causal => Ok(Some(routed[0])),
            _ => Ok(None),
        }
    }
}
