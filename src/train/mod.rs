//! Training: built-in tasks, AdamW with a schedule, the training loop, checkpoints, metrics
//! and plots.

pub mod checkpoint;
pub mod device_optim;
pub mod metrics;
pub mod objective;
pub mod optim;
#[cfg(feature = "plots")]
pub mod plot;
pub mod predict;
pub mod run_dir;
pub mod shards;
pub mod tasks;
pub mod trainer;

pub use tasks::{Batch, Task};
pub use trainer::{train, TrainConfig};
