//! Parameters and the building blocks of the models.

pub mod activations;
pub mod embedding;
pub mod feedforward;
pub mod head_mix;
pub mod linear;
pub mod norms;
pub mod params;
pub mod rows;
pub mod taylor_attention;

pub use params::{HasParams, Init, InitKind, Param};
