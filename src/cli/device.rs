//! `--device cpu|cuda[:N]`: every subcommand that computes runs on the device it names.
//!
//! The library is generic over the device; a subcommand writes its work once, as code generic
//! over the device, and `quartic::on_device!` runs it on the one chosen: the CPU, or CUDA in a
//! build with the `cuda` feature (without it, `cuda` is refused with how to get such a build).

use clap::Args;
use quartic::device::DeviceChoice;

#[derive(Args, Debug, Clone, Copy, Default)]
pub struct DeviceArg {
    /// Where to compute: `cpu`, or `cuda` / `cuda:N` (the GPU with that number) in a build with
    /// CUDA (`scripts/cuda_build.sh`)
    #[arg(long, value_name = "cpu|cuda[:N]", default_value = "cpu")]
    pub device: DeviceChoice,
}
