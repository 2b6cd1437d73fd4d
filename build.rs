//! Records the git commit the crate is built from (`QUARTIC_GIT_COMMIT`, read by
//! `quartic::build_info`): checkpoints and experiment results name the build that made them.
//! Outside a git checkout (a crates.io download) the commit is `unknown`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    // the sources decide whether the build is "-dirty"; a commit or checkout moves HEAD or
    // the branch's ref
    for path in ["build.rs", "Cargo.toml", "src", "dsl"] {
        println!("cargo:rerun-if-changed={path}");
    }
    if let Some(git_dir) = git(&["rev-parse", "--git-dir"]) {
        println!("cargo:rerun-if-changed={git_dir}/HEAD");
        println!("cargo:rerun-if-changed={git_dir}/packed-refs");
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={git_dir}/{branch}");
        }
    }
    let commit = match git(&["rev-parse", "HEAD"]) {
        Some(c) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{c}-dirty")
            } else {
                c
            }
        }
        None => "unknown".to_string(),
    };
    println!("cargo:rustc-env=QUARTIC_GIT_COMMIT={commit}");
    #[cfg(feature = "cuda")]
    cuda::compile_kernels();
}

/// Our CUDA kernels (`src/kernels/cuda/*.cu`) to PTX with nvcc, for the compute capability
/// dfdx's kernels are built for: `CUDA_COMPUTE_CAP`, else what `nvidia-smi` reports
/// (`scripts/cuda_build.sh` sets the first). The PTX is embedded in the library. Under
/// `ci-check` (no toolkit) the PTX is empty, as dfdx's is.
#[cfg(feature = "cuda")]
mod cuda {
    use std::env;
    use std::path::PathBuf;
    use std::process::Command;

    /// Each kernel file, compiled once per element type and head width (see
    /// `src/kernels/cuda/attention.cu`): `OUT_DIR/{file}_{f32|f64}_{width}.ptx`.
    const KERNELS: [&str; 1] = ["attention"];
    const ELEMENTS: [(&str, &str); 2] = [("float", "f32"), ("double", "f64")];
    const WIDTHS: [usize; 4] = [16, 32, 64, 128];

    pub fn compile_kernels() {
        for var in [
            "CUDA_COMPUTE_CAP",
            "CUDA_ROOT",
            "CUDA_PATH",
            "CUDA_TOOLKIT_ROOT_DIR",
        ] {
            println!("cargo:rerun-if-env-changed={var}");
        }
        let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
        let cap = (!cfg!(feature = "ci-check")).then(compute_capability);
        for name in KERNELS {
            for (element, short) in ELEMENTS {
                for width in WIDTHS {
                    let ptx = out.join(format!("{name}_{short}_{width}.ptx"));
                    let Some(cap) = &cap else {
                        std::fs::write(&ptx, "").expect("OUT_DIR is writable");
                        continue;
                    };
                    let source = format!("src/kernels/cuda/{name}.cu");
                    let status = Command::new(nvcc())
                        .args(["--ptx", "-O3", &format!("-arch=compute_{cap}")])
                        .arg(format!("-DELEMENT={element}"))
                        .arg(format!("-DWIDTH={width}"))
                        .arg("-o")
                        .arg(&ptx)
                        .arg(&source)
                        .status()
                        .unwrap_or_else(|e| panic!("cannot run nvcc for {source}: {e}"));
                    assert!(status.success(), "nvcc failed on {source} ({status})");
                }
            }
        }
    }

    /// nvcc of the toolkit dfdx's build finds (the same variables, then the usual places).
    fn nvcc() -> PathBuf {
        ["CUDA_ROOT", "CUDA_PATH", "CUDA_TOOLKIT_ROOT_DIR"]
            .into_iter()
            .filter_map(|v| env::var(v).ok())
            .chain(["/usr/local/cuda".to_string(), "/opt/cuda".to_string()])
            .map(|root| PathBuf::from(root).join("bin").join("nvcc"))
            .find(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("nvcc"))
    }

    /// `90` for compute capability 9.0.
    fn compute_capability() -> String {
        if let Ok(cap) = env::var("CUDA_COMPUTE_CAP") {
            return cap.replace('.', "");
        }
        let out = Command::new("nvidia-smi")
            .args(["--query-gpu=compute_cap", "--format=csv"])
            .output()
            .expect("set CUDA_COMPUTE_CAP (e.g. 90), or have nvidia-smi report the GPU's");
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .last()
            .expect("nvidia-smi printed a compute capability")
            .trim()
            .replace('.', "")
    }
}
