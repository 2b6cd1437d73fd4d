//! Attention across edges. Each edge (i, j) is a query; the pattern picks its keys:
//! - `All`: every edge (k, l) — n² queries × n² keys, cost n⁴;
//! - `Row`: its row (i, k) — n problems of n × n, cost n³;
//! - `Column`: its column (k, j) — the row pattern on transposed edges;
//! - `Diagonal`: the diagonal edges (k, k) among themselves, written back onto the diagonal only.
//!
//! Padding and causality come from the [`GraphMask`] (edge (i, j) lives at time max(i, j)).
//! Every pattern reshapes the edge tensor into batched sequences and calls the one attention
//! kernel, so fused and composite forms, Taylor and softmax, apply to all patterns alike.

use dfdx::prelude::*;

use super::attention::attention;
use super::attention::{attend, AttendInputs};
use super::taylor::{choose_form, taylor_attend, TaylorForm};
use crate::backend::{Backend, Fused};
use crate::error::{Error, Result};
use crate::graph::{Edges, GraphMask, Nodes};
pub use crate::spec::{pattern_dims, EdgePattern, EdgeProjections};
use crate::spec::{Normalizer, Visibility, WeightsSpec};
use crate::tensor::*;

/// The attention kernel used across edges.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum EdgeKernel {
    /// Exact softmax.
    Softmax {
        /// Multiplies the scores.
        scale: f64,
    },
    /// The second-order Taylor kernel.
    Taylor {
        /// Multiplies the scores.
        scale: f64,
        /// The least the normaliser may be.
        eps: f64,
        /// Direct, feature, or the cheaper of the two.
        form: TaylorForm,
    },
}

/// Options of an edge attention call beyond q, k, v.
pub struct EdgeAttendInputs<E: Real, D: Device<E>, T> {
    /// Additive bias in the pattern's layout `[problems, heads, queries, keys]` (see
    /// [`pattern_dims`]), or `[groups, heads, queries, keys]` with each block shared by
    /// `problems / groups` consecutive problems (along rows or columns, `[b, …]`: one block for
    /// every row of a graph; see [`expand_bias`]).
    pub bias: Option<T4<E, D, T>>,
    /// Talking heads `[heads, heads]`, mixing the scores across heads before normalising.
    pub talking: Option<T2<E, D, T>>,
    /// Per-head gate logits per edge, `[b, n, n, heads]`.
    pub gates: Option<Edges<E, D, T>>,
}

impl<E: Real, D: Device<E>, T> Default for EdgeAttendInputs<E, D, T> {
    fn default() -> Self {
        Self {
            bias: None,
            talking: None,
            gates: None,
        }
    }
}

/// The visibility of a pattern under a mask.
pub fn pattern_visibility(pattern: EdgePattern, mask: &GraphMask) -> Result<Visibility> {
    match pattern {
        EdgePattern::All => mask.all_edges_visibility(),
        EdgePattern::Row => mask.row_visibility(),
        EdgePattern::Column => mask.column_visibility(),
        EdgePattern::Diagonal => mask.diagonal_visibility(),
    }
}

/// `[b, n, n, h·d]` edges to the pattern's sequences `[problems, h, len, d]`.
pub fn to_pattern_layout<E: Real, D: Device<E>, T: Tape<E, D>>(
    x: Edges<E, D, T>,
    heads: usize,
    pattern: EdgePattern,
) -> Result<T4<E, D, T>> {
    let (b, n, _, c) = x.dims();
    if heads == 0 || c % heads != 0 {
        return Err(Error::config(
            "edge attention",
            format!("{c} channels do not split into {heads} heads"),
        ));
    }
    let d = c / heads;
    let (p, len, _) = pattern_dims(pattern, b, n);
    let t = match pattern {
        EdgePattern::All | EdgePattern::Row => x.into_tensor(),
        EdgePattern::Column => x.transpose().into_tensor(),
        EdgePattern::Diagonal => {
            return Ok(x
                .diagonal()
                .into_tensor()
                .reshape_like(&(b, n, heads, d))
                .permute::<_, Axes4<0, 2, 1, 3>>())
        }
    };
    Ok(t.reshape_like(&(p, len, heads, d))
        .permute::<_, Axes4<0, 2, 1, 3>>())
}

/// The inverse of [`to_pattern_layout`]: `[problems, h, len, e]` back to `[b, n, n, h·e]`.
/// The diagonal pattern fills the diagonal and leaves zeros elsewhere.
pub fn from_pattern_layout<E: Real, D: Device<E>, T: Tape<E, D>>(
    x: T4<E, D, T>,
    b: usize,
    n: usize,
    pattern: EdgePattern,
) -> Edges<E, D, T> {
    let (_, h, _, e) = *x.shape();
    let merged = x.permute::<_, Axes4<0, 2, 1, 3>>();
    match pattern {
        EdgePattern::All | EdgePattern::Row => Edges(merged.reshape_like(&(b, n, n, h * e))),
        EdgePattern::Column => Edges(merged.reshape_like(&(b, n, n, h * e))).transpose(),
        EdgePattern::Diagonal => Nodes::new(merged.reshape_like(&(b, n, h * e))).onto_diagonal(),
    }
}

/// Self-attention across edges: queries, keys and values all projected from the same edges
/// `x [b, n, n, c]` by the `[out, c]` weights `(to_q, to_k, to_v)` → `[b, n, n, h·e]`.
///
/// Along rows and columns the device's fused kernel runs it where it has one (projections,
/// attention and gates in one pass on the CPU); the Taylor feature form, talking heads and the
/// other patterns project first and take [`edge_attention`].
#[allow(clippy::too_many_arguments)]
pub fn edge_self_attention<E: Real, D: Backend<E>, T: Tape<E, D>>(
    x: Edges<E, D, T>,
    w: EdgeProjections<E, D, T>,
    heads: usize,
    pattern: EdgePattern,
    kernel: EdgeKernel,
    inputs: EdgeAttendInputs<E, D, T>,
    mask: &GraphMask,
) -> Result<Edges<E, D, T>> {
    let (b, n, _, _) = x.dims();
    mask.check("edge attention", b, n)?;
    let vis = pattern_visibility(pattern, mask)?;
    let (len, d, e) = (
        pattern_dims(pattern, b, n).1,
        w.to_q.shape().0 / heads.max(1),
        w.to_v.shape().0 / heads.max(1),
    );
    let (scale, normalizer) = scale_and_normalizer(kernel);
    let direct = matches!(pattern, EdgePattern::Row | EdgePattern::Column)
        && inputs.talking.is_none()
        && !feature_form::<E, D>(kernel, inputs.bias.is_none(), (len, d, e), &vis);
    if !direct {
        let [q, k, v] = w.project(x.into_tensor()).map(Edges::new);
        return edge_attention(q?, k?, v?, heads, pattern, kernel, inputs, mask);
    }
    if let Some(g) = &inputs.gates {
        if g.dims() != (b, n, n, heads) {
            return Err(Error::shape(
                "edge attention gates",
                format!("{:?}", (b, n, n, heads)),
                format!("{:?}", g.dims()),
            ));
        }
    }
    let spec = WeightsSpec {
        scale,
        normalizer,
        visibility: vis,
    };
    let (x, gates) = (x.into_tensor(), inputs.gates.map(Edges::into_tensor));
    let out = if D::fuses(Fused::SelfAttention) {
        D::self_attention_fused(x, w, gates, inputs.bias, heads, pattern, &spec)?
    } else {
        self_attention_composite(x, w, gates, inputs.bias, heads, pattern, &spec)?
    };
    Edges::new(out)
}

/// Edge self-attention from dfdx projections and [`pattern_attention`].
#[allow(clippy::too_many_arguments)]
pub fn self_attention_composite<E: Real, D: Backend<E>, T: Tape<E, D>>(
    x: T4<E, D, T>,
    w: EdgeProjections<E, D, T>,
    gates: Option<T4<E, D, T>>,
    bias: Option<T4<E, D, T>>,
    heads: usize,
    pattern: EdgePattern,
    spec: &WeightsSpec,
) -> Result<T4<E, D, T>> {
    let (b, n, _, _) = *x.shape();
    let [q, k, v] = w.project(x);
    let out = pattern_attention(q, k, v, heads, pattern, bias, spec)?;
    Ok(match gates {
        Some(g) => {
            let e = out.shape().3 / heads.max(1);
            let shape = (b, n, n, heads, e);
            (out.reshape_like(&shape) * g.sigmoid().broadcast_like::<_, Axis<4>>(&shape))
                .reshape_like(&(b, n, n, heads * e))
        }
        None => out,
    })
}

/// A bias of `[groups, h, queries, keys]` blocks as `[problems, h, queries, keys]`, each block
/// repeated for the `problems / groups` consecutive problems that share it (a copy; the CPU's
/// kernels read shared blocks in place). Unchanged when there is one block per problem.
pub fn expand_bias<E: Real, D: Device<E>, T: Tape<E, D>>(
    bias: T4<E, D, T>,
    problems: usize,
) -> Result<T4<E, D, T>> {
    let (groups, h, nq, nk) = *bias.shape();
    if groups == problems {
        return Ok(bias);
    }
    if groups == 0 || problems % groups != 0 {
        return Err(Error::shape(
            "attention bias",
            format!("[groups, {h}, {nq}, {nk}] with groups dividing {problems} problems"),
            format!("{:?}", bias.shape()),
        ));
    }
    let share = problems / groups;
    Ok(bias
        .broadcast_like::<_, Axis<1>>(&(groups, share, h, nq, nk))
        .reshape_like(&(problems, h, nq, nk)))
}

/// Plain attention (no talking heads) across edges in a pattern: q, k `[b, n, n, h·d]`,
/// v `[b, n, n, h·e]` → `[b, n, n, h·e]` (zeros off the diagonal for the diagonal pattern);
/// `bias` in the pattern's layout `[problems, h, queries, keys]` (or shared blocks, see
/// [`EdgeAttendInputs::bias`]). The CPU reads every pattern as a strided view of the edges;
/// elsewhere, [`pattern_attention_via_layout`].
pub fn pattern_attention<E: Real, D: Backend<E>, T: Tape<E, D>>(
    q: T4<E, D, T>,
    k: T4<E, D, T>,
    v: T4<E, D, T>,
    heads: usize,
    pattern: EdgePattern,
    bias: Option<T4<E, D, T>>,
    spec: &WeightsSpec,
) -> Result<T4<E, D, T>> {
    let (c, ce) = (q.shape().3, v.shape().3);
    let splits = heads > 0 && c % heads == 0 && ce % heads == 0;
    if splits && D::fuses(Fused::PatternAttention) {
        D::pattern_attention_fused(q, k, v, heads, pattern, bias, spec)
    } else {
        pattern_attention_via_layout(q, k, v, heads, pattern, bias, spec)
    }
}

/// Pattern attention through the pattern's batched layout (permuted copies), then
/// [`attention`]: the form for devices without a strided kernel.
pub fn pattern_attention_via_layout<E: Real, D: Backend<E>, T: Tape<E, D>>(
    q: T4<E, D, T>,
    k: T4<E, D, T>,
    v: T4<E, D, T>,
    heads: usize,
    pattern: EdgePattern,
    bias: Option<T4<E, D, T>>,
    spec: &WeightsSpec,
) -> Result<T4<E, D, T>> {
    let (b, n, _, _) = *q.shape();
    let to = |t: T4<E, D, T>| to_pattern_layout(Edges(t), heads, pattern);
    let problems = pattern_dims(pattern, b, n).0;
    let bias = bias.map(|t| expand_bias(t, problems)).transpose()?;
    let out = attention(to(q)?, to(k)?, to(v)?, bias, spec)?;
    Ok(from_pattern_layout(out, b, n, pattern).into_tensor())
}

fn scale_and_normalizer(kernel: EdgeKernel) -> (f64, Normalizer) {
    match kernel {
        EdgeKernel::Softmax { scale } => (scale, Normalizer::Softmax),
        EdgeKernel::Taylor { scale, eps, .. } => (scale, Normalizer::Taylor { eps }),
    }
}

/// Whether a Taylor kernel runs in the feature form: only when `plain` (no bias, no talking
/// heads) and (for `Auto`) where the device's cost model prefers it. `(len, d, e)`: sequence
/// length and query and value channels per head.
fn feature_form<E: Real, D: Backend<E>>(
    kernel: EdgeKernel,
    plain: bool,
    (len, d, e): (usize, usize, usize),
    vis: &Visibility,
) -> bool {
    match kernel {
        EdgeKernel::Taylor { form, .. } if plain => match form {
            TaylorForm::Auto => {
                let overhead = D::taylor_feature_overhead();
                choose_form(len, len, d, e, vis, overhead) == TaylorForm::Feature
            }
            f => f == TaylorForm::Feature,
        },
        _ => false,
    }
}

/// Attention across edges: q, k `[b, n, n, h·d]`, v `[b, n, n, h·e]` → `[b, n, n, h·e]`.
pub fn edge_attention<E: Real, D: Backend<E>, T: Tape<E, D>>(
    q: Edges<E, D, T>,
    k: Edges<E, D, T>,
    v: Edges<E, D, T>,
    heads: usize,
    pattern: EdgePattern,
    kernel: EdgeKernel,
    inputs: EdgeAttendInputs<E, D, T>,
    mask: &GraphMask,
) -> Result<Edges<E, D, T>> {
    let (b, n, _, cq) = q.dims();
    for (name, t) in [("keys", k.dims()), ("values", v.dims())] {
        if (t.0, t.1) != (b, n) {
            return Err(Error::shape(
                format!("edge attention {name}"),
                format!("[{b}, {n}, {n}, _]"),
                format!("{t:?}"),
            ));
        }
    }
    if k.dims().3 != cq {
        return Err(Error::shape(
            "edge attention keys",
            format!("{cq} channels like the queries"),
            k.dims().3,
        ));
    }
    mask.check("edge attention", b, n)?;
    let vis = pattern_visibility(pattern, mask)?;
    let gates = match inputs.gates {
        Some(g) if g.dims() != (b, n, n, heads) => {
            return Err(Error::shape(
                "edge attention gates",
                format!("{:?}", (b, n, n, heads)),
                format!("{:?}", g.dims()),
            ));
        }
        other => other,
    };
    let (scale, normalizer) = scale_and_normalizer(kernel);
    let (p, len, _) = pattern_dims(pattern, b, n);
    let (d, e) = (cq / heads.max(1), v.dims().3 / heads.max(1));
    let plain = inputs.bias.is_none() && inputs.talking.is_none();
    let feature_form = feature_form::<E, D>(kernel, plain, (len, d, e), &vis);
    if inputs.talking.is_none() && !feature_form {
        // plain attention: the device's pattern kernel (strided, weights never stored on CPU)
        let spec = WeightsSpec {
            scale,
            normalizer,
            visibility: vis,
        };
        let out = pattern_attention(
            q.into_tensor(),
            k.into_tensor(),
            v.into_tensor(),
            heads,
            pattern,
            inputs.bias,
            &spec,
        )?;
        let out = match gates {
            Some(g) => {
                let g = g.into_tensor().sigmoid();
                let shape = (b, n, n, heads, e);
                (out.reshape_like(&shape)
                    * g.reshape_like(&(b, n, n, heads))
                        .broadcast_like::<_, Axis<4>>(&shape))
                .reshape_like(&(b, n, n, heads * e))
            }
            None => out,
        };
        return Ok(Edges(out));
    }
    let gates = match gates {
        Some(g) => Some(to_pattern_layout(g, heads, pattern)?.reshape_like(&(p, heads, len))),
        None => None,
    };
    let q = to_pattern_layout(q, heads, pattern)?;
    let k = to_pattern_layout(k, heads, pattern)?;
    let v = to_pattern_layout(v, heads, pattern)?;
    let out = match kernel {
        // bias- and mixing-free Taylor attention in the linear feature form
        EdgeKernel::Taylor { eps, form, .. } if feature_form => {
            let out = taylor_attend(q, k, v, scale, eps, &vis, form)?;
            match gates {
                Some(g) => {
                    let s = *out.shape();
                    out * g.sigmoid().broadcast_like::<_, Axis<3>>(&s)
                }
                None => out,
            }
        }
        _ => {
            let spec = WeightsSpec {
                scale,
                normalizer,
                visibility: vis,
            };
            let extra = AttendInputs {
                bias: inputs.bias.map(|t| expand_bias(t, p)).transpose()?,
                talking: inputs.talking,
                gates,
            };
            attend(q, k, v, extra, &spec, false)?.out
        }
    };
    Ok(from_pattern_layout(out, b, n, pattern))
}
