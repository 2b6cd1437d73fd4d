//! A plan with parameters: every call site of `linear`, the norms, `feedforward` and `attend`
//! owns its blocks, named `<statement>.<site>` under the layer's scope (for example
//! `layers.0.attn.attend0.to_q.weight`), so checkpoint keys follow from the rule text.

use std::collections::HashMap;

use dfdx::prelude::*;

use super::ir::*;
use super::layout::LayoutCache;
use super::lower::{node_branches, NodeBranch};
use crate::error::{Error, Result};
use crate::nn::{
    visit_fields, visit_variants, FeedForward, HasParams, Init, InitKind, LayerNorm, Linear, Param,
    RmsKind, RmsNorm,
};
use crate::tensor::*;

/// The parameters of one `attend` call site.
pub struct AttendBlock<E: Real, D: Device<E>> {
    /// Queries.
    pub to_q: Linear<E, D>,
    /// Keys.
    pub to_k: Linear<E, D>,
    /// Values.
    pub to_v: Linear<E, D>,
    /// The output projection.
    pub to_out: Linear<E, D>,
    /// Talking heads `[heads, heads]`, mixing scores across heads before normalizing.
    pub talking: Option<Param<E, D>>,
    /// A path attention's second values, from the key side (its `to_v` reads the query side).
    pub to_v2: Option<Linear<E, D>>,
}

/// The parameters of one call site of a rule.
pub enum Block<E: Real, D: Device<E>> {
    /// `linear(…)`.
    Linear(Linear<E, D>),
    /// `rmsnorm(…)` or `unitnorm(…)`.
    Rms(RmsNorm<E, D>),
    /// `layernorm(…)`.
    Layer(LayerNorm<E, D>),
    /// `feedforward(…)`.
    FeedForward(FeedForward<E, D>),
    /// `attend(…)`.
    Attend(AttendBlock<E, D>),
}

impl<E: Real, D: Device<E>> HasParams<E, D> for AttendBlock<E, D> {
    visit_fields!(to_q, to_k, to_v, to_out, talking, to_v2);
}

impl<E: Real, D: Device<E>> HasParams<E, D> for Block<E, D> {
    visit_variants!(Linear(l), Rms(n), Layer(n), FeedForward(ff), Attend(a),);
}

/// A rule instantiated with parameters: one layer of a model.
pub struct RuleLayer<E: Real, D: Device<E>> {
    /// The checked rule it runs.
    pub plan: Plan,
    pub(crate) blocks: HashMap<String, Block<E, D>>,
    /// Sites in the order they appear in the rule (a stable parameter order).
    pub(crate) order: Vec<String>,
    pub(crate) cache: LayoutCache<D>,
}

impl<E: Real, D: Device<E>> RuleLayer<E, D> {
    /// The node branches hyper-connections wrap, or why the rule has none to wrap.
    pub fn node_branches(&self) -> Result<Vec<NodeBranch>> {
        node_branches(&self.plan).map_err(|st| {
            Error::config(
                self.plan.place(st),
                "residual streams need node updates that add (`nodes[i] += …`), not overwrite",
            )
        })
    }

    /// Creates (or, from a named `Init`, loads) every parameter of `plan` under `init`'s scope.
    pub fn new(plan: Plan, init: &Init<D>) -> Result<Self> {
        let mut blocks = HashMap::new();
        let mut order = Vec::new();
        for st in &plan.statements {
            let scope = init.pp(&st.name);
            let root = match &st.kind {
                PlanKind::Let { value, .. } | PlanKind::Update { value, .. } => value,
            };
            let mut sites = Vec::new();
            collect_sites(root, &mut sites);
            for (site, spec) in sites {
                let key = format!("{}.{site}", st.name);
                if blocks.contains_key(&key) {
                    // a function's argument read twice in its body: one site, one block
                    continue;
                }
                let init = scope.pp(&site);
                let block = match spec {
                    SiteSpec::Linear {
                        inputs,
                        outputs,
                        bias,
                    } => Block::Linear(Linear::new(&init, inputs, outputs, bias)?),
                    SiteSpec::Norm { kind, channels } => match kind {
                        NormKind::Rms { eps } => Block::Rms(RmsNorm::new(
                            &init,
                            channels,
                            RmsKind::Scaled { eps },
                            "weight",
                        )?),
                        NormKind::Unit => {
                            Block::Rms(RmsNorm::new(&init, channels, RmsKind::Unit, "weight")?)
                        }
                        NormKind::Layer { eps } => {
                            Block::Layer(LayerNorm::new(&init, channels, eps)?)
                        }
                    },
                    SiteSpec::FeedForward {
                        channels,
                        hidden,
                        eps,
                    } => {
                        Block::FeedForward(FeedForward::with_hidden(&init, channels, hidden, eps)?)
                    }
                    SiteSpec::Attend {
                        query,
                        key,
                        value,
                        inner,
                        outputs,
                        heads,
                        talking,
                        path,
                    } => Block::Attend(AttendBlock {
                        to_q: Linear::new(&init.pp("to_q"), query, inner, false)?,
                        to_k: Linear::new(&init.pp("to_k"), key, inner, false)?,
                        to_v: Linear::new(
                            &init.pp("to_v"),
                            if path { query } else { value },
                            inner,
                            false,
                        )?,
                        to_v2: if path {
                            Some(Linear::new(&init.pp("to_v2"), key, inner, false)?)
                        } else {
                            None
                        },
                        to_out: Linear::new(&init.pp("to_out"), inner, outputs, false)?,
                        talking: if talking {
                            let bound = 1.0 / (heads as f64).sqrt();
                            Some(init.param(
                                "talking",
                                &[heads, heads],
                                InitKind::Uniform(bound),
                            )?)
                        } else {
                            None
                        },
                    }),
                };
                order.push(key.clone());
                blocks.insert(key, block);
            }
        }
        Ok(Self {
            plan,
            blocks,
            order,
            cache: LayoutCache::default(),
        })
    }

    /// The block of a parameter site: statement name and site (`"attn", "attend0"`).
    pub fn block(&self, statement: &str, site: &str) -> Option<&Block<E, D>> {
        self.blocks.get(&format!("{statement}.{site}"))
    }

    pub(crate) fn site(&self, statement: &str, site: &str) -> &Block<E, D> {
        self.block(statement, site)
            .expect("every site of the plan has a block")
    }
}

impl<E: Real, D: Device<E>> HasParams<E, D> for RuleLayer<E, D> {
    fn visit_params<'a>(&'a self, f: &mut dyn FnMut(&'a Param<E, D>)) {
        for key in &self.order {
            self.blocks[key].visit_params(f);
        }
    }

    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param<E, D>)) {
        for key in &mut self.order {
            if let Some(block) = self.blocks.get_mut(key) {
                block.visit_params_mut(f);
            }
        }
    }
}

/// What a site needs to build its parameters.
pub(crate) enum SiteSpec {
    Linear {
        inputs: usize,
        outputs: usize,
        bias: bool,
    },
    Norm {
        kind: NormKind,
        channels: usize,
    },
    FeedForward {
        channels: usize,
        hidden: usize,
        eps: f64,
    },
    Attend {
        query: usize,
        key: usize,
        /// The value input's channels (the key's unless `value:` is given).
        value: usize,
        inner: usize,
        outputs: usize,
        heads: usize,
        talking: bool,
        /// A path attention: values from both sides.
        path: bool,
    },
}

/// Every parameter site under `node`, in evaluation order.
pub(crate) fn collect_sites(node: &Node, out: &mut Vec<(String, SiteSpec)>) {
    match &node.op {
        Op::State { .. } | Op::Let { .. } | Op::Adjacency { .. } => {}
        Op::Binary { lhs, rhs, .. } => {
            collect_sites(lhs, out);
            collect_sites(rhs, out);
        }
        Op::Where { cond, yes, no } => {
            collect_sites(cond, out);
            collect_sites(yes, out);
            collect_sites(no, out);
        }
        Op::Affine { x, .. } | Op::Pow { x, .. } | Op::Act { x, .. } | Op::Dropout { x, .. } => {
            collect_sites(x, out)
        }
        Op::Reduce { x, .. } | Op::Softmax { x, .. } => collect_sites(x, out),
        Op::Dot { a, b, .. } => {
            collect_sites(a, out);
            collect_sites(b, out);
        }
        Op::Concat(parts) => parts.iter().for_each(|p| collect_sites(p, out)),
        Op::Linear {
            site,
            x,
            outputs,
            bias,
        } => {
            collect_sites(x, out);
            out.push((
                site.clone(),
                SiteSpec::Linear {
                    inputs: x.channels,
                    outputs: *outputs,
                    bias: *bias,
                },
            ));
        }
        Op::Norm { site, kind, x } => {
            collect_sites(x, out);
            out.push((
                site.clone(),
                SiteSpec::Norm {
                    kind: *kind,
                    channels: x.channels,
                },
            ));
        }
        Op::FeedForward {
            site,
            x,
            hidden,
            eps,
            route,
        } => {
            collect_sites(x, out);
            if let Some(r) = route {
                collect_sites(&r.score, out);
            }
            out.push((
                site.clone(),
                SiteSpec::FeedForward {
                    channels: x.channels,
                    hidden: *hidden,
                    eps: *eps,
                },
            ));
        }
        Op::Attend(a) => {
            collect_sites(&a.query, out);
            collect_sites(&a.key, out);
            if let Some(v) = &a.value {
                collect_sites(v, out);
            }
            if let Some(b) = &a.bias {
                collect_sites(b, out);
            }
            match &a.gates {
                Some(Gates::Expr(g)) => collect_sites(g, out),
                Some(Gates::FromQuery { site }) => out.push((
                    site.clone(),
                    SiteSpec::Linear {
                        inputs: a.query.channels,
                        outputs: a.heads,
                        bias: true,
                    },
                )),
                None => {}
            }
            if let Some(r) = &a.route {
                collect_sites(&r.score, out);
            }
            out.push((
                a.site.clone(),
                SiteSpec::Attend {
                    query: a.query.channels,
                    key: a.key.channels,
                    value: a.value.as_ref().map_or(a.key.channels, |v| v.channels),
                    inner: a.heads * a.dim_head,
                    outputs: a.outputs,
                    heads: a.heads,
                    talking: a.talking,
                    path: matches!(a.pattern, Pattern::Path { .. }),
                },
            ));
        }
    }
}
