//! Device-generic ops: each op's composite form (dfdx ops, any device) beside its dispatch,
//! which asks the device ([`crate::backend::Backend::fuses`]) and runs its fused kernel or the
//! composite. Above the backend; below the blocks (`nn`), the rule language and the models.
//!
//! Attention: weights (softmax and Taylor) and attention over batched sequences, edge patterns,
//! attention over paths (triangular), Taylor linear attention, coordinate-descent routing; pointwise and affine ops: activations,
//! norms, the feedforward block, linear layers, repeated adds, the outer sum, prefix sums; the
//! step and select that comparisons and `where` lower to; softmax and log-sum-exp along an
//! axis over the visible entries (the rule language's `softmax[k]` and `logsumexp[k]`); the
//! classification loss with its tally.

pub mod activations;
pub mod affine;
pub mod attention;
pub mod axis;
pub mod cumsum;
pub mod feedforward;
pub mod loss;
pub mod norms;
pub mod path;
pub mod patterns;
pub mod pointwise;
pub mod routing;
pub mod select;
pub mod taylor;
pub mod weights;
