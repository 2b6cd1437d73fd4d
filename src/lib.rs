//! quartic-transformer: transformers over fully connected directed graphs whose n² edges carry
//! their own features, updated by attention across edges.
//!
//! Layers, bottom up: [`tensor`] (aliases, the `Real` bound), [`kernels`] (attention weights,
//! attention, Taylor linear attention, edge patterns, routing; composite and fused CPU forms),
//! [`backend`] (which form runs on which device), [`graph`] (typed nodes, edges and masks),
//! [`nn`] (parameters and blocks).

pub mod alloc;
pub mod backend;
pub mod diagnostic;
pub mod error;
pub mod experiment;
pub mod files;
pub mod fixtures;
pub mod graph;
pub mod kernels;
pub mod memory;
pub mod models;
pub mod nn;
pub mod rules;
pub mod tensor;
pub mod threads;
pub mod train;

pub use error::{Error, Result};
