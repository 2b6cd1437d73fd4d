//! Per-device choice of kernel form.
//!
//! Every hot kernel has a composite form built from dfdx ops (generic over the device) and, on the
//! CPU, a fused form with its own backward. Code above this layer calls `Backend` and gets the
//! fused form on `Cpu` and the composite form elsewhere (CUDA), so model code stays generic.

use dfdx::prelude::*;

use crate::error::Result;
#[cfg(feature = "cuda")]
use crate::kernels::linear_algebra;
use crate::kernels::{fused_cpu, weights};
use crate::tensor::*;

pub trait Backend<E: Real>: Device<E> {
    /// Whether this device runs the fused kernels.
    const FUSED: bool;

    /// Attention weights (see [`weights`]).
    fn attention_weights<T: Tape<E, Self>>(
        q: T4<E, Self, T>,
        k: T4<E, Self, T>,
        bias: Option<T4<E, Self, T>>,
        talking: Option<T2<E, Self, T>>,
        spec: &weights::WeightsSpec,
    ) -> Result<T4<E, Self, T>>;

    /// Inclusive prefix sum along axis 2 of `[B, H, N, X]`.
    fn cumsum<T: Tape<E, Self>>(x: T4<E, Self, T>) -> Result<T4<E, Self, T>>;
}

impl<E: Real> Backend<E> for Cpu
where
    Cpu: Device<E>,
    fused_cpu::CpuBuffer<E>: std::ops::DerefMut<Target = Vec<E>>,
{
    const FUSED: bool = true;

    fn attention_weights<T: Tape<E, Self>>(
        q: T4<E, Self, T>,
        k: T4<E, Self, T>,
        bias: Option<T4<E, Self, T>>,
        talking: Option<T2<E, Self, T>>,
        spec: &weights::WeightsSpec,
    ) -> Result<T4<E, Self, T>> {
        fused_cpu::weights_fused(q, k, bias, talking, spec)
    }

    fn cumsum<T: Tape<E, Self>>(x: T4<E, Self, T>) -> Result<T4<E, Self, T>> {
        fused_cpu::cumsum_fused(x)
    }
}

#[cfg(feature = "cuda")]
impl<E: Real> Backend<E> for Cuda
where
    Cuda: Device<E>,
{
    const FUSED: bool = false;

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
