//! The CPU's fused kernels, multi-threaded, each with its own backward: attention weights and
//! cumulative sums (`fused`), blocked attention with a recomputing backward (`flash`), edge
//! self-attention with its projections (`edge_attention`), attention over paths (`path`), the row-wise chains (`rows`:
//! RMSNorm, LayerNorm, GELU, the feedforward block), the affine ops (`affine`: linear layers,
//! repeated adds, the outer sum), the interpreter's layout moves (`gather`), element-wise programs (`pointwise`), softmax and log-sum-exp along an axis (`axis`), the classification loss (`loss`), and what they share: the tape bookkeeping (`taped`), the hand-off of gradients to dfdx (`grads`), matrix
//! products over checked strided views (`gemm`, with `small_mm` for the small ones), the one
//! pointer parallel tasks write through (`shared`), and the AVX2 pieces.

pub mod affine;
#[cfg(target_arch = "x86_64")]
mod avx2;
pub mod axis;
pub mod edge_attention;
pub mod flash;
pub mod fused;
pub mod gather;
mod gemm;
mod grads;
#[cfg(target_arch = "x86_64")]
mod lanes;
pub mod loss;
pub mod path;
pub mod pointwise;
pub mod rows;
mod shared;
mod small_mm;
mod taped;
