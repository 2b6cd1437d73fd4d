//! Per-device choice of kernel form.
//!
//! Every hot kernel has a composite form built from dfdx ops (generic over the device) and, on the
//! CPU, a fused form with its own backward. Code above this layer calls `Backend` and gets the
//! fused form on `Cpu` and the composite form elsewhere (CUDA), so model code stays generic.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

use dfdx::prelude::*;
use rayon::prelude::*;

use crate::error::Result;
use crate::graph::Edges;
use crate::kernels::patterns::{
    from_pattern_layout, pattern_dims, to_pattern_layout, EdgePattern, EdgeProjections,
};
use crate::kernels::{
    affine_cpu, edge_attention_cpu, flash_cpu, fused_cpu, linear_algebra, rows_cpu, weights,
};
use crate::nn::{activations, norms};
use crate::tensor::*;
use crate::train::shards::{ShardOutcome, ShardWork};

static CPU_FUSED: AtomicBool = AtomicBool::new(true);

/// On the CPU the direct Taylor form is the fused attention kernel and the feature form is
/// composite: per multiply-add the feature form measured 13× (n = 128, 16 heads × 16) to 24×
/// (n = 512, 4 × 8) slower, forward + backward over rows of edges (`examples/speed.rs`'s
/// workloads, 2 cores).
const CPU_TAYLOR_FEATURE_OVERHEAD: f64 = 16.0;

/// Makes the CPU device run the composite forms (`false`) or the fused ones (`true`, the
/// default). Process-wide; meant for benchmarks and side-by-side comparisons.
pub fn set_cpu_fused(fused: bool) {
    CPU_FUSED.store(fused, Ordering::Relaxed);
}

pub fn cpu_fused() -> bool {
    CPU_FUSED.load(Ordering::Relaxed)
}

/// [`cpu_fused`], keeping the pool's threads ready (see [`crate::threads::keep_warm`]) when the
/// fused, parallel kernels are about to run.
fn cpu_fused_warm() -> bool {
    let fused = cpu_fused();
    if fused {
        crate::threads::keep_warm();
    }
    fused
}

pub trait Backend<E: Real>: Device<E> {
    /// Attention weights (see [`weights`]).
    fn attention_weights<T: Tape<E, Self>>(
        q: T4<E, Self, T>,
        k: T4<E, Self, T>,
        bias: Option<T4<E, Self, T>>,
        talking: Option<T2<E, Self, T>>,
        spec: &weights::WeightsSpec,
    ) -> Result<T4<E, Self, T>>;

    /// Attention output `weights(q, k, bias) · v` (no talking heads), without keeping the
    /// weights where the device has a memory-efficient kernel.
    fn attention<T: Tape<E, Self>>(
        q: T4<E, Self, T>,
        k: T4<E, Self, T>,
        v: T4<E, Self, T>,
        bias: Option<T4<E, Self, T>>,
        spec: &weights::WeightsSpec,
    ) -> Result<T4<E, Self, T>> {
        attention_composite(q, k, v, bias, spec)
    }

    /// Plain attention (no talking heads) across edges in a pattern: q, k `[b, n, n, h·d]`,
    /// v `[b, n, n, h·e]` → `[b, n, n, h·e]` (zeros off the diagonal for the diagonal pattern);
    /// `bias` in the pattern's layout `[problems, h, queries, keys]`.
    fn edge_pattern_attention<T: Tape<E, Self>>(
        q: T4<E, Self, T>,
        k: T4<E, Self, T>,
        v: T4<E, Self, T>,
        heads: usize,
        pattern: EdgePattern,
        bias: Option<T4<E, Self, T>>,
        spec: &weights::WeightsSpec,
    ) -> Result<T4<E, Self, T>> {
        pattern_attention_via_layout(q, k, v, heads, pattern, bias, spec)
    }

    /// Self-attention across the edges `x [b, n, n, c]` along rows or columns, queries, keys
    /// and values projected from `x` by `[out, c]` weights, output `[b, n, n, h·e]` gated per
    /// head by `σ(gates [b, n, n, h])`; `bias` in the pattern's layout `[b·n, h, n, n]`.
    #[allow(clippy::too_many_arguments)]
    fn edge_self_attention<T: Tape<E, Self>>(
        x: T4<E, Self, T>,
        w: EdgeProjections<E, Self, T>,
        gates: Option<T4<E, Self, T>>,
        bias: Option<T4<E, Self, T>>,
        heads: usize,
        pattern: EdgePattern,
        spec: &weights::WeightsSpec,
    ) -> Result<T4<E, Self, T>> {
        edge_self_attention_composite(x, w, gates, bias, heads, pattern, spec)
    }

    /// Inclusive prefix sum along axis 2 of `[B, H, N, X]`.
    fn cumsum<T: Tape<E, Self>>(x: T4<E, Self, T>) -> Result<T4<E, Self, T>>;

    /// Exact GELU `x · Φ(x)`.
    fn gelu<S: Shape, T: Tape<E, Self>>(x: Tensor<S, E, Self, T>) -> Result<Tensor<S, E, Self, T>> {
        Ok(activations::gelu_composite(x))
    }

    /// What one multiply-add of the Taylor feature form costs against one of the direct form
    /// (see [`crate::kernels::taylor::choose_form`]): 1 where both are composite.
    fn taylor_feature_overhead() -> f64 {
        1.0
    }

    /// The feedforward block `RMSNorm → Linear → GELU → Linear` over `[rows, c]` (no residual).
    fn feedforward<T: Tape<E, Self>>(
        x: T2<E, Self, T>,
        p: rows_cpu::FeedForwardParams<E, Self, T>,
    ) -> Result<T2<E, Self, T>> {
        feedforward_composite(x, p)
    }

    /// RMSNorm of `[rows, c]` with scale `gamma [c]` (see [`norms::RmsKind`]).
    fn rms_norm<T: Tape<E, Self>>(
        x: T2<E, Self, T>,
        gamma: T1<E, Self, T>,
        kind: norms::RmsKind,
    ) -> Result<T2<E, Self, T>> {
        Ok(norms::rms_norm_composite(x, gamma, kind))
    }

    /// The passes of each shard of a training step (see [`crate::train::shards`]), in order:
    /// here one after another; the CPU runs them at once.
    fn run_shards(
        work: &ShardWork<'_, E, Self>,
        shards: &[Range<usize>],
    ) -> Vec<ShardOutcome<E, Self>> {
        shards.iter().map(|r| work.run(r.clone())).collect()
    }

    /// LayerNorm of `[rows, c]` with weight and bias `[c]`.
    fn layer_norm<T: Tape<E, Self>>(
        x: T2<E, Self, T>,
        weight: T1<E, Self, T>,
        bias: T1<E, Self, T>,
        eps: f64,
    ) -> Result<T2<E, Self, T>> {
        Ok(norms::layer_norm_composite(x, weight, bias, eps))
    }

    /// Edge (i, j) gets `sources[b, i] + targets[b, j]`: `[b, n, c]` twice → `[b, n, n, c]`.
    fn outer_sum<T: Tape<E, Self>>(
        sources: T3<E, Self, T>,
        targets: T3<E, Self, T>,
    ) -> Result<T4<E, Self, T>> {
        outer_sum_composite(sources, targets)
    }

    /// A linear layer `x · wᵀ (+ b)` over `x [rows, in]`, `w [out, in]`, `b [out]`.
    fn linear<T: Tape<E, Self>>(
        x: T2<E, Self, T>,
        w: T2<E, Self, T>,
        b: Option<T1<E, Self, T>>,
    ) -> Result<T2<E, Self, T>> {
        linear_composite(x, w, b)
    }

    /// `x + y` with `y` repeated along `x`'s leading axes (`x`'s elements are whole copies of
    /// `y`'s shape; the same shape is a plain add).
    fn add_repeated<S: Shape, R: Shape, T: Tape<E, Self>>(
        x: Tensor<S, E, Self, T>,
        y: Tensor<R, E, Self, T>,
    ) -> Result<Tensor<S, E, Self, T>> {
        add_repeated_composite(x, y)
    }
}

/// Sources and targets of an outer sum must have one shape `[b, n, c]`.
pub(crate) fn check_outer_sum(
    sources: (usize, usize, usize),
    targets: (usize, usize, usize),
) -> Result<()> {
    if targets != sources {
        let (b, n, c) = sources;
        return Err(crate::error::Error::shape(
            "outer sum",
            format!("targets [{b}, {n}, {c}] like the sources"),
            format!("{targets:?}"),
        ));
    }
    Ok(())
}

/// How many copies of `y`'s shape make up `x` (an add that repeats `y` along `x`'s leading
/// axes), or the error naming both shapes.
pub(crate) fn repeats<S: Shape, R: Shape>(x: &S, y: &R) -> Result<usize> {
    let (len, per) = (x.num_elements(), y.num_elements());
    if per == 0 || len % per != 0 {
        return Err(crate::error::Error::shape(
            "add",
            format!(
                "a tensor that repeats along the leading axes of {:?}",
                x.concrete()
            ),
            format!("{:?}", y.concrete()),
        ));
    }
    Ok(len / per)
}

/// The outer sum from dfdx broadcasts.
pub fn outer_sum_composite<E: Real, D: Device<E>, T: Tape<E, D>>(
    sources: T3<E, D, T>,
    targets: T3<E, D, T>,
) -> Result<T4<E, D, T>> {
    let (b, n, c) = *sources.shape();
    check_outer_sum((b, n, c), *targets.shape())?;
    let shape = (b, n, n, c);
    Ok(sources.broadcast_like::<_, Axis<2>>(&shape) + targets.broadcast_like::<_, Axis<1>>(&shape))
}

/// A linear layer from dfdx ops.
pub fn linear_composite<E: Real, D: Device<E>, T: Tape<E, D>>(
    x: T2<E, D, T>,
    w: T2<E, D, T>,
    b: Option<T1<E, D, T>>,
) -> Result<T2<E, D, T>> {
    let rows = x.shape().0;
    let out = w.shape().0;
    let y = x
        .try_matmul(w.permute::<_, Axes2<1, 0>>())
        .map_err(device_err)?;
    Ok(match b {
        Some(b) => y + b.broadcast_like::<_, Axis<0>>(&(rows, out)),
        None => y,
    })
}

/// `x + y` repeated along `x`'s leading axes, from dfdx ops.
pub fn add_repeated_composite<S: Shape, R: Shape, E: Real, D: Device<E>, T: Tape<E, D>>(
    x: Tensor<S, E, D, T>,
    y: Tensor<R, E, D, T>,
) -> Result<Tensor<S, E, D, T>> {
    let shape = *x.shape();
    let reps = repeats(&shape, y.shape())?;
    let per = y.shape().num_elements();
    let y = y
        .try_reshape_like(&(per,))
        .map_err(device_err)?
        .broadcast_like::<_, Axis<0>>(&(reps, per));
    let x = x.try_reshape_like(&(reps, per)).map_err(device_err)?;
    (x + y).try_reshape_like(&shape).map_err(device_err)
}

/// Attention as weights (the composite form) times values: every device's fallback.
fn attention_composite<E: Real, D: Backend<E>, T: Tape<E, D>>(
    q: T4<E, D, T>,
    k: T4<E, D, T>,
    v: T4<E, D, T>,
    bias: Option<T4<E, D, T>>,
    spec: &weights::WeightsSpec,
) -> Result<T4<E, D, T>> {
    Ok(weights::weights_composite(q, k, bias, None, spec)?.matmul(v))
}

/// The feedforward block from the device's norm and GELU and dfdx matmuls.
fn feedforward_composite<E: Real, D: Backend<E>, T: Tape<E, D>>(
    x: T2<E, D, T>,
    p: rows_cpu::FeedForwardParams<E, D, T>,
) -> Result<T2<E, D, T>> {
    let h = D::rms_norm(x, p.gamma, p.kind)?.matmul(p.w_in.permute::<_, Axes2<1, 0>>());
    Ok(D::gelu(h)?.matmul(p.w_out.permute::<_, Axes2<1, 0>>()))
}

/// Edge self-attention from dfdx ops and the device's pattern attention (see
/// [`Backend::edge_self_attention`]).
#[allow(clippy::too_many_arguments)]
fn edge_self_attention_composite<E: Real, D: Backend<E>, T: Tape<E, D>>(
    x: T4<E, D, T>,
    w: EdgeProjections<E, D, T>,
    gates: Option<T4<E, D, T>>,
    bias: Option<T4<E, D, T>>,
    heads: usize,
    pattern: EdgePattern,
    spec: &weights::WeightsSpec,
) -> Result<T4<E, D, T>> {
    let (b, n, _, _) = *x.shape();
    let [q, k, v] = w.project(x);
    let out = D::edge_pattern_attention(q, k, v, heads, pattern, bias, spec)?;
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

/// Pattern attention through the pattern's batched layout (permuted copies), then
/// [`Backend::attention`]: the form for devices without a strided kernel.
fn pattern_attention_via_layout<E: Real, D: Backend<E>, T: Tape<E, D>>(
    q: T4<E, D, T>,
    k: T4<E, D, T>,
    v: T4<E, D, T>,
    heads: usize,
    pattern: EdgePattern,
    bias: Option<T4<E, D, T>>,
    spec: &weights::WeightsSpec,
) -> Result<T4<E, D, T>> {
    let (b, n, _, _) = *q.shape();
    let to = |t: T4<E, D, T>| to_pattern_layout(Edges(t), heads, pattern);
    let out = D::attention(to(q)?, to(k)?, to(v)?, bias, spec)?;
    Ok(from_pattern_layout(out, b, n, pattern).into_tensor())
}

impl<E: Real> Backend<E> for Cpu
where
    Cpu: Device<E>,
    fused_cpu::CpuBuffer<E>: std::ops::DerefMut<Target = Vec<E>>,
{
    fn attention_weights<T: Tape<E, Self>>(
        q: T4<E, Self, T>,
        k: T4<E, Self, T>,
        bias: Option<T4<E, Self, T>>,
        talking: Option<T2<E, Self, T>>,
        spec: &weights::WeightsSpec,
    ) -> Result<T4<E, Self, T>> {
        if cpu_fused_warm() {
            fused_cpu::weights_fused(q, k, bias, talking, spec)
        } else {
            weights::weights_composite(q, k, bias, talking, spec)
        }
    }

    fn attention<T: Tape<E, Self>>(
        q: T4<E, Self, T>,
        k: T4<E, Self, T>,
        v: T4<E, Self, T>,
        bias: Option<T4<E, Self, T>>,
        spec: &weights::WeightsSpec,
    ) -> Result<T4<E, Self, T>> {
        if cpu_fused_warm() {
            flash_cpu::attention_fused(q, k, v, bias, spec)
        } else {
            attention_composite(q, k, v, bias, spec)
        }
    }

    fn edge_pattern_attention<T: Tape<E, Self>>(
        q: T4<E, Self, T>,
        k: T4<E, Self, T>,
        v: T4<E, Self, T>,
        heads: usize,
        pattern: EdgePattern,
        bias: Option<T4<E, Self, T>>,
        spec: &weights::WeightsSpec,
    ) -> Result<T4<E, Self, T>> {
        let (b, n, _, c) = *q.shape();
        let ce = v.shape().3;
        if !cpu_fused_warm() || heads == 0 || c % heads != 0 || ce % heads != 0 {
            return pattern_attention_via_layout(q, k, v, heads, pattern, bias, spec);
        }
        // every pattern is a strided view of the edge tensor: no permuted copies
        let (d, e) = (c / heads, ce / heads);
        let layout = |ch: usize, per_head: usize| flash_cpu::edge_layout(pattern, n, ch, per_head);
        let (problems, len, _) = pattern_dims(pattern, b, n);
        let sizes = flash_cpu::Sizes {
            problems,
            heads,
            queries: len,
            keys: len,
            dim: d,
            dim_value: e,
        };
        flash_cpu::attention_strided(
            (q, layout(c, d)),
            (k, layout(c, d)),
            (v, layout(ce, e)),
            bias,
            ((b, n, n, ce), layout(ce, e)),
            sizes,
            spec,
        )
    }

    fn edge_self_attention<T: Tape<E, Self>>(
        x: T4<E, Self, T>,
        w: EdgeProjections<E, Self, T>,
        gates: Option<T4<E, Self, T>>,
        bias: Option<T4<E, Self, T>>,
        heads: usize,
        pattern: EdgePattern,
        spec: &weights::WeightsSpec,
    ) -> Result<T4<E, Self, T>> {
        let along_rows_or_columns = matches!(pattern, EdgePattern::Row | EdgePattern::Column);
        if !cpu_fused_warm() || !along_rows_or_columns {
            return edge_self_attention_composite(x, w, gates, bias, heads, pattern, spec);
        }
        edge_attention_cpu::edge_self_attention_fused(x, w, gates, bias, heads, pattern, spec)
    }

    fn cumsum<T: Tape<E, Self>>(x: T4<E, Self, T>) -> Result<T4<E, Self, T>> {
        if cpu_fused_warm() {
            fused_cpu::cumsum_fused(x)
        } else {
            Ok(linear_algebra::cumsum_composite(x))
        }
    }

    fn gelu<S: Shape, T: Tape<E, Self>>(x: Tensor<S, E, Self, T>) -> Result<Tensor<S, E, Self, T>> {
        if cpu_fused_warm() {
            rows_cpu::gelu_fused(x)
        } else {
            Ok(activations::gelu_composite(x))
        }
    }

    fn taylor_feature_overhead() -> f64 {
        if cpu_fused_warm() {
            CPU_TAYLOR_FEATURE_OVERHEAD
        } else {
            1.0
        }
    }

    fn feedforward<T: Tape<E, Self>>(
        x: T2<E, Self, T>,
        p: rows_cpu::FeedForwardParams<E, Self, T>,
    ) -> Result<T2<E, Self, T>> {
        if cpu_fused_warm() {
            rows_cpu::feedforward_fused(x, p)
        } else {
            feedforward_composite(x, p)
        }
    }

    fn rms_norm<T: Tape<E, Self>>(
        x: T2<E, Self, T>,
        gamma: T1<E, Self, T>,
        kind: norms::RmsKind,
    ) -> Result<T2<E, Self, T>> {
        if cpu_fused_warm() {
            rows_cpu::rms_norm_fused(x, gamma, kind)
        } else {
            Ok(norms::rms_norm_composite(x, gamma, kind))
        }
    }

    fn run_shards(
        work: &ShardWork<'_, E, Self>,
        shards: &[Range<usize>],
    ) -> Vec<ShardOutcome<E, Self>> {
        if shards.len() < 2 {
            return shards.iter().map(|r| work.run(r.clone())).collect();
        }
        // every thread is busy with a shard: none should sit polling for work
        let _busy = crate::threads::pause_polling();
        shards.par_iter().map(|r| work.run(r.clone())).collect()
    }

    fn layer_norm<T: Tape<E, Self>>(
        x: T2<E, Self, T>,
        weight: T1<E, Self, T>,
        bias: T1<E, Self, T>,
        eps: f64,
    ) -> Result<T2<E, Self, T>> {
        if cpu_fused_warm() {
            rows_cpu::layer_norm_fused(x, weight, bias, eps)
        } else {
            Ok(norms::layer_norm_composite(x, weight, bias, eps))
        }
    }

    fn outer_sum<T: Tape<E, Self>>(
        sources: T3<E, Self, T>,
        targets: T3<E, Self, T>,
    ) -> Result<T4<E, Self, T>> {
        if cpu_fused_warm() {
            affine_cpu::outer_sum_fused(sources, targets)
        } else {
            outer_sum_composite(sources, targets)
        }
    }

    fn linear<T: Tape<E, Self>>(
        x: T2<E, Self, T>,
        w: T2<E, Self, T>,
        b: Option<T1<E, Self, T>>,
    ) -> Result<T2<E, Self, T>> {
        if cpu_fused_warm() {
            affine_cpu::linear_fused(x, w, b)
        } else {
            linear_composite(x, w, b)
        }
    }

    fn add_repeated<S: Shape, R: Shape, T: Tape<E, Self>>(
        x: Tensor<S, E, Self, T>,
        y: Tensor<R, E, Self, T>,
    ) -> Result<Tensor<S, E, Self, T>> {
        if cpu_fused_warm() {
            affine_cpu::add_repeated_fused(x, y)
        } else {
            add_repeated_composite(x, y)
        }
    }
}

#[cfg(feature = "cuda")]
impl<E: Real> Backend<E> for Cuda
where
    Cuda: Device<E>,
{
    fn attention_weights<T: Tape<E, Self>>(
        q: T4<E, Self, T>,
        k: T4<E, Self, T>,
        bias: Option<T4<E, Self, T>>,
        talking: Option<T2<E, Self, T>>,
        spec: &weights::WeightsSpec,
    ) -> Result<T4<E, Self, T>> {
        weights::weights_composite(q, k, bias, talking, spec)
    }

    fn cumsum<T: Tape<E, Self>>(x: T4<E, Self, T>) -> Result<T4<E, Self, T>> {
        Ok(linear_algebra::cumsum_composite(x))
    }
}
