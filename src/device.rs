//! Which device computes: `cpu`, or `cuda[:N]` in a build with the `cuda` feature.
//!
//! Everything above the backend is generic over the device; this module only names one and
//! opens it, so that a command line or a caller can choose at run time and get a clear error
//! (not a panic) for a device this build or this machine does not have.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

pub use dfdx::tensor::Cpu;
#[cfg(feature = "cuda")]
pub use dfdx::tensor::Cuda;

/// A device to compute on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The CPU, on the process's thread pool.
    #[default]
    Cpu,
    /// The CUDA device with this ordinal (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let expected = "expected `cpu`, `cuda` or `cuda:N` (N the device's number)";
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse()
                    .map(Self::Cuda)
                    .map_err(|_| format!("`{n}` is not a device number: {expected}")),
                None => Err(format!("no device `{s}`: {expected}")),
            },
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Whether this build can run on CUDA (the `cuda` feature).
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// The error for a CUDA device asked of a build without the `cuda` feature.
pub fn cuda_not_built(choice: DeviceChoice) -> Error {
    Error::config(
        "--device",
        format!(
            "`{choice}`: this build has no CUDA; build one with `scripts/cuda_build.sh` (the \
             binary is target/cuda/release/quartic) or use `--device cpu`"
        ),
    )
}

/// Refuses a device this build or this machine does not have (a CUDA device is opened and
/// closed again), so that work spread over many runs can be refused before any starts.
pub fn check_available(choice: DeviceChoice) -> Result<()> {
    match choice {
        DeviceChoice::Cpu => Ok(()),
        #[cfg(feature = "cuda")]
        DeviceChoice::Cuda(ordinal) => open_cuda(ordinal, 0).map(drop),
        #[cfg(not(feature = "cuda"))]
        DeviceChoice::Cuda(_) => Err(cuda_not_built(choice)),
    }
}

/// Opens CUDA device `ordinal`; its random numbers start from `seed`. A machine without that
/// device (or without a driver) gets an error naming it.
#[cfg(feature = "cuda")]
pub fn open_cuda(ordinal: usize, seed: u64) -> Result<Cuda> {
    use cudarc::driver::result as driver;
    let cannot = |what: String| {
        Error::Device(format!(
            "cannot open CUDA device {ordinal} ({what}): is there a GPU with that number and a \
             working driver on this machine?"
        ))
    };
    // asked first: dfdx's constructor unwraps these two calls (a panic on a machine without a
    // GPU or with too few of them)
    driver::init().map_err(|e| cannot(format!("{:?}", e.0)))?;
    let count = driver::device::get_count().map_err(|e| cannot(format!("{:?}", e.0)))?;
    if ordinal >= count.max(0) as usize {
        return Err(cannot(format!("this machine has {count} CUDA device(s)")));
    }
    Cuda::try_build(ordinal, seed).map_err(|e| cannot(cuda_error_name(&e)))
}

/// The error's name, read without calling the driver: cudarc's `Debug` of a driver error asks
/// the driver for its text and panics when that fails too (no driver, a stub).
#[cfg(feature = "cuda")]
fn cuda_error_name(e: &dfdx::tensor::CudaError) -> String {
    use dfdx::tensor::CudaError;
    match e {
        CudaError::Driver(d) => format!("{:?}", d.0),
        CudaError::Blas(b) => format!("{:?}", b.0),
        CudaError::Cpu(c) => format!("{c:?}"),
        #[allow(unreachable_patterns)]
        _ => "a cuDNN error".to_string(),
    }
}

/// `on_device!(choice, seed, |dev| body)`: `body` with `dev` bound to the chosen device
/// ([`Cpu`], or `Cuda` seeded with `seed`). `body` is compiled once per device type, so it may
/// call code generic over the device with `&dev`; its value, like the macro's, is a
/// [`Result`](crate::Result), and `?` inside it returns from the enclosing function. Without the
/// `cuda` feature, a CUDA choice is [`cuda_not_built`].
#[macro_export]
macro_rules! on_device {
    ($choice:expr, $seed:expr, |$dev:ident| $body:expr) => {{
        let choice: $crate::device::DeviceChoice = $choice;
        match choice {
            $crate::device::DeviceChoice::Cpu => {
                let $dev = <$crate::device::Cpu as ::core::default::Default>::default();
                $body
            }
            #[allow(unused_variables)]
            $crate::device::DeviceChoice::Cuda(ordinal) => {
                #[cfg(feature = "cuda")]
                {
                    let $dev = $crate::device::open_cuda(ordinal, $seed)?;
                    $body
                }
                #[cfg(not(feature = "cuda"))]
                {
                    Err($crate::device::cuda_not_built(choice))
                }
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::DeviceChoice;

    #[test]
    fn names_parse_and_print_back() {
        for (text, choice) in [
            ("cpu", DeviceChoice::Cpu),
            ("cuda", DeviceChoice::Cuda(0)),
            ("cuda:0", DeviceChoice::Cuda(0)),
            ("cuda:3", DeviceChoice::Cuda(3)),
        ] {
            assert_eq!(text.parse::<DeviceChoice>(), Ok(choice));
        }
        assert_eq!(DeviceChoice::Cuda(2).to_string(), "cuda:2");
        for bad in ["gpu", "cuda:", "cuda:-1", "cuda:x", "CPU", ""] {
            assert!(bad.parse::<DeviceChoice>().is_err(), "{bad}");
        }
    }
}
