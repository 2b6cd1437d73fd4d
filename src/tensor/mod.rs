//! Tensor aliases and the numeric bound shared by the whole crate.
//!
//! Everything is generic over the element type (f32 for models, f64 for gradient checks), the
//! dfdx device and the tape. Shapes are runtime-sized: graphs change size from batch to batch.

pub mod fastmath;
pub mod host;

use dfdx::prelude::*;

use crate::error::{Error, Result};

/// A runtime-sized matrix shape.
pub type Shape2 = (usize, usize);
/// A runtime-sized 3-axis shape.
pub type Shape3 = (usize, usize, usize);
/// A runtime-sized 4-axis shape.
pub type Shape4 = (usize, usize, usize, usize);

/// A scalar.
pub type T0<E, D, T = NoneTape> = Tensor<(), E, D, T>;
/// A runtime-sized vector.
pub type T1<E, D, T = NoneTape> = Tensor<(usize,), E, D, T>;
/// A runtime-sized matrix.
pub type T2<E, D, T = NoneTape> = Tensor<Shape2, E, D, T>;
/// A runtime-sized 3-axis tensor (`[b, n, c]`: nodes).
pub type T3<E, D, T = NoneTape> = Tensor<Shape3, E, D, T>;
/// A runtime-sized 4-axis tensor (`[b, n, n, c]`: edges).
pub type T4<E, D, T = NoneTape> = Tensor<Shape4, E, D, T>;

/// A floating-point element type usable on every device and in the fused CPU kernels.
pub trait Real:
    Dtype + num_traits::Float + num_traits::FromPrimitive + Send + Sync + std::fmt::Debug + 'static
{
    /// `x` in this type (rounded).
    fn of(x: f64) -> Self {
        <Self as num_traits::FromPrimitive>::from_f64(x).expect("every f64 converts to a float")
    }
    /// This value as an `f64` (exact).
    fn as_f64(self) -> f64 {
        num_traits::ToPrimitive::to_f64(&self).expect("every float converts to f64")
    }
    /// `max(self, floor)` that keeps a NaN (`Float::max` returns `floor` for a NaN `self`,
    /// which would turn a NaN into a number).
    #[inline(always)]
    fn at_least(self, floor: Self) -> Self {
        if self < floor {
            floor
        } else {
            self
        }
    }
    /// The larger of two, NaN if either is (a running maximum must not skip a NaN).
    #[inline(always)]
    fn max_or_nan(self, other: Self) -> Self {
        if self.is_nan() || self > other {
            self
        } else {
            other
        }
    }
    /// `x ← exp(x)` over a slice (vectorized for f32; exact `exp` otherwise).
    fn exp_slice(xs: &mut [Self]) {
        xs.iter_mut().for_each(|x| *x = x.exp());
    }
    /// The standard normal's `Φ(x)` into `cdf` and, when asked, `φ(x)` into `pdf` (vectorized
    /// for f32; libm's `erfc` in f64 otherwise).
    fn normal_cdf_pdf(x: &[Self], cdf: &mut [Self], mut pdf: Option<&mut [Self]>) {
        let inv_sqrt_2pi = 1.0 / (2.0 * std::f64::consts::PI).sqrt();
        for (i, (&v, c)) in x.iter().zip(cdf.iter_mut()).enumerate() {
            let v = v.as_f64();
            *c = Self::of(0.5 * libm::erfc(-v * std::f64::consts::FRAC_1_SQRT_2));
            if let Some(p) = pdf.as_deref_mut() {
                p[i] = Self::of((-0.5 * v * v).exp() * inv_sqrt_2pi);
            }
        }
    }
}
impl Real for f32 {
    fn exp_slice(xs: &mut [Self]) {
        fastmath::exp_f32(xs)
    }
    fn normal_cdf_pdf(x: &[Self], cdf: &mut [Self], pdf: Option<&mut [Self]>) {
        fastmath::normal_cdf_pdf_f32(x, cdf, pdf)
    }
}
impl Real for f64 {}

/// Maps a dfdx device error into ours.
pub fn device_err<Err: std::fmt::Debug>(e: Err) -> Error {
    Error::Device(format!("{e:?}"))
}

/// 1 for true, 0 for false: boolean masks as multiplicative tensors.
pub fn indicator<E: Real>(flags: impl IntoIterator<Item = bool>) -> Vec<E> {
    flags
        .into_iter()
        .map(|f| if f { E::one() } else { E::zero() })
        .collect()
}

/// Builds a constant tensor from host data, checking that the length fits the shape.
pub fn constant<S: Shape, E: Real, D: Device<E>>(
    dev: &D,
    data: Vec<E>,
    shape: S,
) -> Result<Tensor<S, E, D>> {
    if data.len() != shape.num_elements() {
        return Err(Error::shape(
            "constant tensor",
            format!("{} elements", shape.num_elements()),
            format!("{} elements", data.len()),
        ));
    }
    dev.try_tensor_from_vec(data, shape).map_err(device_err)
}
