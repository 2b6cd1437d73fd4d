//! Attention kernels: weights (softmax and Taylor), attention, Taylor linear attention, edge
//! patterns and coordinate-descent routing; fused CPU forms of the pointwise chains (RMSNorm,
//! GELU). Composite forms live beside fused CPU forms.

pub mod affine_cpu;
pub mod attention;
#[cfg(target_arch = "x86_64")]
mod avx2;
pub mod edge_attention_cpu;
pub mod flash_cpu;
pub mod fused_cpu;
pub mod linear_algebra;
pub mod patterns;
pub mod routing;
pub mod rows_cpu;
mod small_mm;
pub mod taylor;
#[cfg(target_arch = "x86_64")]
mod taylor_lanes;
pub mod visibility;
pub mod weights;
