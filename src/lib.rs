//! quartic-transformer: transformers over fully connected directed graphs whose n² edges carry
//! their own features, updated by attention across edges.
//!
//! Layers, bottom up (a module imports only lower ones; `tests/it/layers.rs` checks it):
//! [`error`] and [`diagnostic`]; [`tensor`] (the `Real` bound, aliases, vector math) and
//! [`files`]; [`spec`] (what the backend's two sides share) and [`memory`]; `kernels` (the
//! CPU's fused kernels) and [`graph`] (typed nodes, edges and masks); [`backend`] (which ops a
//! device fuses); [`ops`] (device-generic ops, composite beside dispatch); [`nn`] (blocks with
//! parameters); [`rules`] (the rule language); [`models`]; [`train`]; [`experiment`].

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod alloc;
pub mod backend;
pub mod build_info;
pub mod data;
pub mod device;
pub mod diagnostic;
pub mod error;
pub mod experiment;
pub mod files;
pub mod fixtures;
pub mod graph;
pub(crate) mod kernels;
pub mod memory;
pub mod models;
pub mod nn;
pub mod ops;
pub mod rules;
pub mod spec;
pub mod tensor;
pub mod threads;
pub mod train;

pub use error::{Error, Result};
