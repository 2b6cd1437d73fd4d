//! Kernels of particular devices, below the backend: `cpu` holds the CPU's fused kernels
//! (each with its own backward), the products they run on and the AVX2 pieces. The backend
//! (`crate::backend`) calls them; nothing here calls up into the device-generic ops.

pub mod cpu;
