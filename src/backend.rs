//! What a device runs as a fused kernel of its own.
//!
//! Every hot op has a composite form built from dfdx ops (generic over the device, in
//! [`crate::ops`]) and, on the CPU, a fused form with its own backward (in
//! `crate::kernels::cpu`). This trait is the thin seam between them: a device says which ops
//! it fuses ([`Backend::fuses`]) and runs them; the ops layer asks, then calls the fused form or
//! composes the op itself. It imports nothing above the kernels and the specs they share.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use dfdx::prelude::*;

use crate::error::{Error, Result};
use crate::kernels::cpu::{
    affine, axis, edge_attention, flash, fused, gather, loss, path, pointwise, rows,
};
use crate::spec::axis::{AxisOp, Visible};
use crate::spec::pointwise::Program;
use crate::spec::{
    pattern_dims, EdgePattern, EdgeProjections, FeedForwardParams, GatherTable, RmsKind,
    WeightsSpec,
};
use crate::tensor::*;

/// The ops a device may fuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fused {
    /// Attention weights (`ops::weights`).
    Weights,
    /// Attention output without keeping the weights (`ops::attention`).
    Attention,
    /// Plain attention across edges in a pattern, read in place (`ops::patterns`).
    PatternAttention,
    /// Self-attention along rows or columns with its projections (`ops::patterns`).
    SelfAttention,
    /// Cumulative sums along the sequence (`ops::cumsum`).
    Cumsum,
    /// Exact GELU (`ops::activations`).
    Gelu,
    /// The two-layer GELU feedforward (`ops::feedforward`).
    FeedForward,
    /// RMS norm (`ops::norms`).
    RmsNorm,
    /// Layer norm (`ops::norms`).
    LayerNorm,
    /// Row plus column sums, `x_i + y_j` (`ops::affine`).
    OuterSum,
    /// A linear map with optional bias (`ops::affine`).
    Linear,
    /// A tensor plus one broadcast along an axis (`ops::affine`).
    AddRepeated,
    /// Attention of each edge over the paths through a third node (`ops::path`).
    PathAttention,
    /// A gather by a host-built table (the rule interpreter's layout moves).
    Gather,
    /// An element-wise program (`ops::pointwise`).
    Pointwise,
    /// Softmax and log-sum-exp along an axis over the visible entries (`ops::axis`).
    OverAxis,
    /// The classification loss with its tally (`ops::loss`).
    CrossEntropy,
}

static CPU_FUSED: AtomicBool = AtomicBool::new(true);

/// On the CPU the direct Taylor form is the fused attention kernel and the feature form is
/// composite: per multiply-add the feature form measured 13× (n = 128, 16 heads × 16) to 24×
/// (n = 512, 4 × 8) slower, forward + backward over rows of edges (`examples/speed.rs`'s
/// workloads, 2 cores).
pub const CPU_TAYLOR_FEATURE_OVERHEAD: f64 = 16.0;

/// Makes the CPU device run the composite forms (`false`) or the fused ones (`true`, the
/// default). Process-wide; meant for benchmarks and side-by-side comparisons.
pub fn set_cpu_fused(fused: bool) {
    CPU_FUSED.store(fused, Ordering::Relaxed);
}

/// Whether the CPU runs its fused forms now (see [`set_cpu_fused`]).
pub fn cpu_fused() -> bool {
    CPU_FUSED.load(Ordering::Relaxed)
}

fn not_fused(op: Fused) -> Error {
    Error::Device(format!(
        "{op:?}: this device has no fused kernel (callers ask `Backend::fuses` first)"
    ))
}

/// A device's fused kernels. Each `*_fused` method runs only where [`Backend::fuses`] said yes;
/// the shapes it takes are those of the op of the same name in [`crate::ops`].
#[allow(clippy::too_many_arguments)]
pub trait Backend<E: Real>: Device<E> {
    /// Whether the device computes in the host's memory (the CPU): a choice made on the host
    /// (an optimizer step, routing's hard top-k) is then no transfer; other devices make it
    /// where their tensors are.
    const HOST_MEMORY: bool = false;

    /// Whether `op` runs as this device's fused kernel now.
    fn fuses(_op: Fused) -> bool {
        false
    }

    /// What one multiply-add of the Taylor feature form costs against one of the direct form
    /// (see `ops::taylor::choose_form`): 1 where both are composite.
    fn taylor_feature_overhead() -> f64 {
        1.0
    }

    /// [`crate::ops::weights::weights`].
    fn weights_fused<T: Tape<E, Self>>(
        _q: T4<E, Self, T>,
        _k: T4<E, Self, T>,
        _bias: Option<T4<E, Self, T>>,
        _talking: Option<T2<E, Self, T>>,
        _spec: &WeightsSpec,
    ) -> Result<T4<E, Self, T>> {
        Err(not_fused(Fused::Weights))
    }

    /// Whether [`Backend::attention_fused`] takes heads `d` wide (queries, keys) and `e` wide
    /// (values); asked after [`Backend::fuses`] said yes.
    fn attention_fits(_d: usize, _e: usize) -> bool {
        true
    }

    /// [`crate::ops::attention::attention`].
    fn attention_fused<T: Tape<E, Self>>(
        _q: T4<E, Self, T>,
        _k: T4<E, Self, T>,
        _v: T4<E, Self, T>,
        _bias: Option<T4<E, Self, T>>,
        _spec: &WeightsSpec,
    ) -> Result<T4<E, Self, T>> {
        Err(not_fused(Fused::Attention))
    }

    /// [`crate::ops::patterns::pattern_attention`].
    fn pattern_attention_fused<T: Tape<E, Self>>(
        _q: T4<E, Self, T>,
        _k: T4<E, Self, T>,
        _v: T4<E, Self, T>,
        _heads: usize,
        _pattern: EdgePattern,
        _bias: Option<T4<E, Self, T>>,
        _spec: &WeightsSpec,
    ) -> Result<T4<E, Self, T>> {
        Err(not_fused(Fused::PatternAttention))
    }

    /// [`crate::ops::patterns::edge_self_attention`].
    fn self_attention_fused<T: Tape<E, Self>>(
        _x: T4<E, Self, T>,
        _w: EdgeProjections<E, Self, T>,
        _gates: Option<T4<E, Self, T>>,
        _bias: Option<T4<E, Self, T>>,
        _heads: usize,
        _pattern: EdgePattern,
        _spec: &WeightsSpec,
    ) -> Result<T4<E, Self, T>> {
        Err(not_fused(Fused::SelfAttention))
    }

    /// [`crate::ops::path::path_attention`].
    fn path_attention_fused<T: Tape<E, Self>>(
        _q: T4<E, Self, T>,
        _k: T4<E, Self, T>,
        _v1: T4<E, Self, T>,
        _v2: T4<E, Self, T>,
        _heads: usize,
        _spec: &WeightsSpec,
    ) -> Result<T4<E, Self, T>> {
        Err(not_fused(Fused::PathAttention))
    }

    /// [`crate::ops::cumsum::cumsum`].
    fn cumsum_fused<T: Tape<E, Self>>(_x: T4<E, Self, T>) -> Result<T4<E, Self, T>> {
        Err(not_fused(Fused::Cumsum))
    }

    /// [`crate::ops::activations::gelu_exact`].
    fn gelu_fused<S: Shape, T: Tape<E, Self>>(
        _x: Tensor<S, E, Self, T>,
    ) -> Result<Tensor<S, E, Self, T>> {
        Err(not_fused(Fused::Gelu))
    }

    /// [`crate::ops::feedforward::feedforward`].
    fn feedforward_fused<T: Tape<E, Self>>(
        _x: T2<E, Self, T>,
        _p: FeedForwardParams<E, Self, T>,
    ) -> Result<T2<E, Self, T>> {
        Err(not_fused(Fused::FeedForward))
    }

    /// [`crate::ops::norms::rms_norm`].
    fn rms_norm_fused<T: Tape<E, Self>>(
        _x: T2<E, Self, T>,
        _gamma: T1<E, Self, T>,
        _kind: RmsKind,
    ) -> Result<T2<E, Self, T>> {
        Err(not_fused(Fused::RmsNorm))
    }

    /// [`crate::ops::norms::layer_norm`].
    fn layer_norm_fused<T: Tape<E, Self>>(
        _x: T2<E, Self, T>,
        _weight: T1<E, Self, T>,
        _bias: T1<E, Self, T>,
        _eps: f64,
    ) -> Result<T2<E, Self, T>> {
        Err(not_fused(Fused::LayerNorm))
    }

    /// [`crate::ops::affine::outer_sum`].
    fn outer_sum_fused<T: Tape<E, Self>>(
        _sources: T3<E, Self, T>,
        _targets: T3<E, Self, T>,
    ) -> Result<T4<E, Self, T>> {
        Err(not_fused(Fused::OuterSum))
    }

    /// [`crate::ops::affine::linear`].
    fn linear_fused<T: Tape<E, Self>>(
        _x: T2<E, Self, T>,
        _w: T2<E, Self, T>,
        _b: Option<T1<E, Self, T>>,
    ) -> Result<T2<E, Self, T>> {
        Err(not_fused(Fused::Linear))
    }

    /// [`crate::ops::affine::add_repeated`].
    fn add_repeated_fused<S: Shape, R: Shape, T: Tape<E, Self>>(
        _x: Tensor<S, E, Self, T>,
        _y: Tensor<R, E, Self, T>,
    ) -> Result<Tensor<S, E, Self, T>> {
        Err(not_fused(Fused::AddRepeated))
    }

    /// `out[i] = x[table.index()[i]]` (see `rules::layout::arrange`).
    fn gather_fused<T: Tape<E, Self>>(
        _x: T1<E, Self, T>,
        _table: &std::sync::Arc<GatherTable>,
    ) -> Result<T1<E, Self, T>> {
        Err(not_fused(Fused::Gather))
    }

    /// [`crate::ops::pointwise::pointwise`].
    fn pointwise_fused<T: Tape<E, Self>>(
        _inputs: Vec<T1<E, Self, T>>,
        _program: &Program,
    ) -> Result<T1<E, Self, T>> {
        Err(not_fused(Fused::Pointwise))
    }

    /// [`crate::ops::pointwise::pointwise_gathered`].
    fn pointwise_gathered_fused<T: Tape<E, Self>>(
        _inputs: Vec<T1<E, Self, T>>,
        _tables: Vec<Option<Arc<GatherTable>>>,
        _program: &Program,
    ) -> Result<T1<E, Self, T>> {
        Err(not_fused(Fused::Pointwise))
    }

    /// [`crate::ops::axis::over_axis`].
    fn over_axis_fused<T: Tape<E, Self>>(
        _x: T1<E, Self, T>,
        _visible: Visible<'_, T1<E, Self>>,
        _dims: (usize, usize, usize),
        _op: AxisOp,
    ) -> Result<T1<E, Self, T>> {
        Err(not_fused(Fused::OverAxis))
    }

    /// [`crate::ops::loss::cross_entropy`].
    fn cross_entropy_fused<T: Tape<E, Self>>(
        _logits: T2<E, Self, T>,
        _wanted: &[usize],
    ) -> Result<(T0<E, Self, T>, T0<E, Self>)> {
        Err(not_fused(Fused::CrossEntropy))
    }
}

impl<E: Real> Backend<E> for Cpu
where
    Cpu: Device<E>,
    fused::CpuBuffer<E>: std::ops::DerefMut<Target = Vec<E>>,
{
    const HOST_MEMORY: bool = true;

    /// Every op, unless [`set_cpu_fused`] turned them off; keeps the pool's threads ready (see
    /// [`crate::threads::keep_warm`]) when a fused, parallel kernel is about to run.
    fn fuses(_op: Fused) -> bool {
        let fused = cpu_fused();
        if fused {
            crate::threads::keep_warm();
        }
        fused
    }

    fn taylor_feature_overhead() -> f64 {
        if cpu_fused() {
            CPU_TAYLOR_FEATURE_OVERHEAD
        } else {
            1.0
        }
    }

    fn weights_fused<T: Tape<E, Self>>(
        q: T4<E, Self, T>,
        k: T4<E, Self, T>,
        bias: Option<T4<E, Self, T>>,
        talking: Option<T2<E, Self, T>>,
        spec: &WeightsSpec,
    ) -> Result<T4<E, Self, T>> {
        fused::weights_fused(q, k, bias, talking, spec)
    }

    fn attention_fused<T: Tape<E, Self>>(
        q: T4<E, Self, T>,
        k: T4<E, Self, T>,
        v: T4<E, Self, T>,
        bias: Option<T4<E, Self, T>>,
        spec: &WeightsSpec,
    ) -> Result<T4<E, Self, T>> {
        flash::attention_fused(q, k, v, bias, spec)
    }

    fn path_attention_fused<T: Tape<E, Self>>(
        q: T4<E, Self, T>,
        k: T4<E, Self, T>,
        v1: T4<E, Self, T>,
        v2: T4<E, Self, T>,
        heads: usize,
        spec: &WeightsSpec,
    ) -> Result<T4<E, Self, T>> {
        path::path_attention_fused(q, k, v1, v2, heads, spec)
    }

    fn pattern_attention_fused<T: Tape<E, Self>>(
        q: T4<E, Self, T>,
        k: T4<E, Self, T>,
        v: T4<E, Self, T>,
        heads: usize,
        pattern: EdgePattern,
        bias: Option<T4<E, Self, T>>,
        spec: &WeightsSpec,
    ) -> Result<T4<E, Self, T>> {
        let (b, n, _, c) = *q.shape();
        let ce = v.shape().3;
        // every pattern is a strided view of the edge tensor: no permuted copies
        let (d, e) = (c / heads, ce / heads);
        let layout = |ch: usize, per_head: usize| flash::edge_layout(pattern, n, ch, per_head);
        let (problems, len, _) = pattern_dims(pattern, b, n);
        let sizes = flash::Sizes {
            problems,
            heads,
            queries: len,
            keys: len,
            dim: d,
            dim_value: e,
        };
        flash::attention_strided(
            (q, layout(c, d)),
            (k, layout(c, d)),
            (v, layout(ce, e)),
            bias,
            ((b, n, n, ce), layout(ce, e)),
            sizes,
            spec,
        )
    }

    fn self_attention_fused<T: Tape<E, Self>>(
        x: T4<E, Self, T>,
        w: EdgeProjections<E, Self, T>,
        gates: Option<T4<E, Self, T>>,
        bias: Option<T4<E, Self, T>>,
        heads: usize,
        pattern: EdgePattern,
        spec: &WeightsSpec,
    ) -> Result<T4<E, Self, T>> {
        edge_attention::edge_self_attention_fused(x, w, gates, bias, heads, pattern, spec)
    }

    fn cumsum_fused<T: Tape<E, Self>>(x: T4<E, Self, T>) -> Result<T4<E, Self, T>> {
        fused::cumsum_fused(x)
    }

    fn gelu_fused<S: Shape, T: Tape<E, Self>>(
        x: Tensor<S, E, Self, T>,
    ) -> Result<Tensor<S, E, Self, T>> {
        rows::gelu_fused(x)
    }

    fn feedforward_fused<T: Tape<E, Self>>(
        x: T2<E, Self, T>,
        p: FeedForwardParams<E, Self, T>,
    ) -> Result<T2<E, Self, T>> {
        rows::feedforward_fused(x, p)
    }

    fn rms_norm_fused<T: Tape<E, Self>>(
        x: T2<E, Self, T>,
        gamma: T1<E, Self, T>,
        kind: RmsKind,
    ) -> Result<T2<E, Self, T>> {
        rows::rms_norm_fused(x, gamma, kind)
    }

    fn layer_norm_fused<T: Tape<E, Self>>(
        x: T2<E, Self, T>,
        weight: T1<E, Self, T>,
        bias: T1<E, Self, T>,
        eps: f64,
    ) -> Result<T2<E, Self, T>> {
        rows::layer_norm_fused(x, weight, bias, eps)
    }

    fn outer_sum_fused<T: Tape<E, Self>>(
        sources: T3<E, Self, T>,
        targets: T3<E, Self, T>,
    ) -> Result<T4<E, Self, T>> {
        affine::outer_sum_fused(sources, targets)
    }

    fn linear_fused<T: Tape<E, Self>>(
        x: T2<E, Self, T>,
        w: T2<E, Self, T>,
        b: Option<T1<E, Self, T>>,
    ) -> Result<T2<E, Self, T>> {
        affine::linear_fused(x, w, b)
    }

    fn add_repeated_fused<S: Shape, R: Shape, T: Tape<E, Self>>(
        x: Tensor<S, E, Self, T>,
        y: Tensor<R, E, Self, T>,
    ) -> Result<Tensor<S, E, Self, T>> {
        affine::add_repeated_fused(x, y)
    }

    fn gather_fused<T: Tape<E, Self>>(
        x: T1<E, Self, T>,
        table: &std::sync::Arc<GatherTable>,
    ) -> Result<T1<E, Self, T>> {
        gather::gather_fused(x, table)
    }

    fn pointwise_fused<T: Tape<E, Self>>(
        inputs: Vec<T1<E, Self, T>>,
        program: &Program,
    ) -> Result<T1<E, Self, T>> {
        pointwise::pointwise_fused(inputs, program)
    }

    fn pointwise_gathered_fused<T: Tape<E, Self>>(
        inputs: Vec<T1<E, Self, T>>,
        tables: Vec<Option<Arc<GatherTable>>>,
        program: &Program,
    ) -> Result<T1<E, Self, T>> {
        pointwise::pointwise_gathered(inputs, tables, program)
    }

    fn over_axis_fused<T: Tape<E, Self>>(
        x: T1<E, Self, T>,
        visible: Visible<'_, T1<E, Self>>,
        dims: (usize, usize, usize),
        op: AxisOp,
    ) -> Result<T1<E, Self, T>> {
        axis::over_axis_fused(x, visible, dims, op)
    }

    fn cross_entropy_fused<T: Tape<E, Self>>(
        logits: T2<E, Self, T>,
        wanted: &[usize],
    ) -> Result<(T0<E, Self, T>, T0<E, Self>)> {
        loss::cross_entropy_fused(logits, wanted)
    }
}

/// CUDA fuses attention without stored weights (every edge pattern reaches it); every other op
/// takes its composite form.
#[cfg(feature = "cuda")]
impl<E: Real> Backend<E> for Cuda
where
    Cuda: Device<E>,
    crate::kernels::cuda::CudaBuffer<E>: crate::kernels::cuda::Launchable<E>,
{
    fn fuses(op: Fused) -> bool {
        op == Fused::Attention
    }

    fn attention_fits(d: usize, e: usize) -> bool {
        crate::kernels::cuda::attention::width(d, e).is_some()
    }

    fn attention_fused<T: Tape<E, Self>>(
        q: T4<E, Self, T>,
        k: T4<E, Self, T>,
        v: T4<E, Self, T>,
        bias: Option<T4<E, Self, T>>,
        spec: &WeightsSpec,
    ) -> Result<T4<E, Self, T>> {
        crate::kernels::cuda::attention::attention_fused(q, k, v, bias, spec)
    }
}
