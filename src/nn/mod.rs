//! Parameters and the building blocks of the models.

pub mod embedding;
pub mod feedforward;
pub mod head_mix;
pub mod hyper;
pub mod linear;
pub mod norms;
pub mod params;
pub mod rows;
pub mod taylor_attention;

pub use feedforward::FeedForward;
pub use linear::Linear;
pub use norms::{LayerNorm, RmsKind, RmsNorm};
pub(crate) use params::{visit_fields, visit_variants};
pub use params::{HasParams, Init, InitKind, Param};
