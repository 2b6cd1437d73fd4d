//! The one integration-test binary (each file under tests/ would link dfdx again).

mod common;
mod parity;
mod patterns;
mod routing;
mod weights;
