//! Per-device choice of kernel form.
//!
//! Every hot kernel has a composite form built from dfdx ops (generic over the device) and, on the
//! CPU, a fused form with its own backward. Code above this layer calls `Backend` and gets the
//! fused form on `Cpu` and the composite form elsewhere (CUDA), so model code stays generic.

use std::sync::atomic::{AtomicBool, Ordering};

use dfdx::prelude::*;

use crate::error::Result;
use crate::kernels::{flash_cpu, fused_cpu, linear_algebra, weights};
use crate::tensor::*;

static CPU_FUSED: AtomicBool = AtomicBool::new(true);

/// Makes the CPU device run the composite forms (`false`) or the fused ones (`true`, the
/// default). Process-wide; meant for benchmarks and side-by-side comparisons.
pub fn set_cpu_fused(fused: bool) {
    CPU_FUSED.store(fused, Ordering::Relaxed);
}

pub fn cpu_fused() -> bool {
    CPU_FUSED.load(Ordering::Relaxed)
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
        Ok(weights::weights_composite(q, k, bias, None, spec)?.matmul(v))
    }

    /// Inclusive prefix sum along axis 2 of `[B, H, N, X]`.
    fn cumsum<T: Tape<E, Self>>(x: T4<E, Self, T>) -> Result<T4<E, Self, T>>;
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
        if cpu_fused() {
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
        if cpu_fused() {
            flash_cpu::attention_fused(q, k, v, bias, spec)
        } else {
            Ok(weights::weights_composite(q, k, bias, None, spec)?.matmul(v))
        }
    }

    fn cumsum<T: Tape<E, Self>>(x: T4<E, Self, T>) -> Result<T4<E, Self, T>> {
        if cpu_fused() {
            fused_cpu::cumsum_fused(x)
        } else {
            Ok(linear_algebra::cumsum_composite(x))
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
