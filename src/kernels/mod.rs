//! Kernels of particular devices, below the backend: `cpu` holds the CPU's fused kernels
//! (each with its own backward), the products they run on and the AVX2 pieces; `cuda` (in a
//! build with the `cuda` feature) the CUDA kernels of our own. The backend (`crate::backend`)
//! calls them; nothing here calls up into the device-generic ops.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
