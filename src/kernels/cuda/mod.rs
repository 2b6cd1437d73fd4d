//! CUDA kernels of our own, launched on dfdx's buffers (through the accessors the vendored
//! dfdx makes public: `vendor/README.md`). `build.rs` compiles each `.cu` file here to PTX with
//! nvcc; the PTX is embedded in the binary and loaded into a device on first use.

pub mod attention;

use std::sync::Arc;

use cudarc::driver::{CudaDevice, DevicePtr, DeviceSlice, DriverError};
use cudarc::nvrtc::Ptx;
use dfdx::tensor::{Cuda, Storage};

use crate::error::{Error, Result};

/// The gradient and tensor buffer type of the CUDA device (a `CudaSlice` behind dfdx's
/// allocation cache).
pub type CudaBuffer<E> = <Cuda as Storage<E>>::Vec;

/// What our kernels need of a [`CudaBuffer`]: its device address and length. (Stated as a
/// bound because generic code cannot see through dfdx's associated type.)
pub trait Launchable<E>: DevicePtr<E> + DeviceSlice<E> {}
impl<E, B: DevicePtr<E> + DeviceSlice<E>> Launchable<E> for B {}

/// The kernels' element type in their names: `f32` or `f64`.
fn element_name<E: 'static>() -> Result<&'static str> {
    use std::any::TypeId;
    let id = TypeId::of::<E>();
    if id == TypeId::of::<f32>() {
        Ok("f32")
    } else if id == TypeId::of::<f64>() {
        Ok("f64")
    } else {
        Err(Error::Device(format!(
            "the CUDA kernels compute in f32 and f64, not {}",
            std::any::type_name::<E>()
        )))
    }
}

/// Loads `ptx` as `module` with `functions` into `dev`, once per device.
fn load(dev: &Arc<CudaDevice>, module: &str, ptx: &str, functions: &[&'static str]) -> Result<()> {
    if functions.iter().all(|f| dev.has_func(module, f)) {
        return Ok(());
    }
    dev.load_ptx(Ptx::from_src(ptx), module, functions)
        .map_err(|e| driver_err(&format!("loading the CUDA module {module}"), e))
}

/// A driver error as ours, saying what failed.
fn driver_err(what: &str, e: DriverError) -> Error {
    Error::Device(format!("{what}: {e:?}"))
}
