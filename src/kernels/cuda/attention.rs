//! Memory-efficient attention on CUDA (`attention.cu`): the CUDA form of
//! `crate::ops::attention::attention`, `normalize(scale · q·kᵀ + bias) · v` with the weights
//! never stored. The forward pass saves the output and one statistic per query; the backward
//! pass recomputes the scores. Every edge pattern reaches it (the ops layer lays edges out as
//! batched sequences), so attention across all n² edges needs memory in n², not n⁴.

use std::sync::Arc;

use cudarc::driver::{CudaDevice, CudaFunction, CudaSlice, DevicePtr, DeviceRepr, DeviceSlice};
use cudarc::driver::{LaunchAsync, LaunchConfig};
use dfdx::prelude::*;
use dfdx::tensor::Cuda;

use super::{driver_err, element_name, load, CudaBuffer, Launchable};
use crate::error::{Error, Result};
use crate::spec::{
    check_attention_shapes, check_weights_shapes, Normalizer, Visibility, WeightsSpec,
};
use crate::tensor::*;

/// The head widths the kernels are compiled for: each thread keeps its rows in registers of
/// the least width that holds them.
pub const WIDTHS: [usize; 4] = [16, 32, 64, 128];

/// Threads per block of the row kernels (`ROWS` in `attention.cu`).
const ROWS: usize = 64;
/// Threads per block of the `dO · O` kernel.
const DSUM_THREADS: usize = 256;

/// The least compiled width that holds heads `d` (queries, keys) and `e` (values) wide, or
/// `None` where they are wider than every one (the caller then takes the composite form).
pub fn width(d: usize, e: usize) -> Option<usize> {
    WIDTHS.into_iter().find(|&w| d.max(e) <= w)
}

/// The kernels of one module (one element type and width).
const FUNCTIONS: [&str; 4] = [
    "attention_dsum",
    "attention_forward",
    "attention_grad_queries",
    "attention_grad_keys",
];

macro_rules! ptx {
    ($ty:literal, $w:literal) => {
        include_str!(concat!(
            env!("OUT_DIR"),
            "/attention_",
            $ty,
            "_",
            $w,
            ".ptx"
        ))
    };
}

/// The PTX of the module for element `ty` and width `w` (built by `build.rs`).
fn ptx(ty: &str, w: usize) -> Option<&'static str> {
    Some(match (ty, w) {
        ("f32", 16) => ptx!("f32", "16"),
        ("f32", 32) => ptx!("f32", "32"),
        ("f32", 64) => ptx!("f32", "64"),
        ("f32", 128) => ptx!("f32", "128"),
        ("f64", 16) => ptx!("f64", "16"),
        ("f64", 32) => ptx!("f64", "32"),
        ("f64", 64) => ptx!("f64", "64"),
        ("f64", 128) => ptx!("f64", "128"),
        _ => return None,
    })
}

/// `Args` in `attention.cu`, field for field: device pointers (0 where absent), sizes, the
/// normaliser.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Args {
    q: u64,
    k: u64,
    v: u64,
    bias: u64,
    out: u64,
    stat: u64,
    key_valid: u64,
    query_time: u64,
    key_time: u64,
    pairs: u64,
    grad_out: u64,
    dsum: u64,
    dq: u64,
    dk: u64,
    dv: u64,
    dbias: u64,
    problems: i32,
    heads: i32,
    nq: i32,
    nk: i32,
    d: i32,
    e: i32,
    taylor: i32,
    scale: f64,
    eps: f64,
}

// SAFETY: `Args` is `repr(C)`, plain data, laid out as the kernels' `struct Args` (both sides
// assert the same layout); it is passed by value.
unsafe impl DeviceRepr for Args {}

const _: () = {
    assert!(std::mem::size_of::<Args>() == 176);
    assert!(std::mem::offset_of!(Args, problems) == 128);
    assert!(std::mem::offset_of!(Args, taylor) == 152);
    assert!(std::mem::offset_of!(Args, scale) == 160);
};

/// A visibility's masks copied to the device, each absent where it hides nothing.
struct DeviceVisibility {
    key_valid: Option<CudaSlice<u8>>,
    times: Option<(CudaSlice<u32>, CudaSlice<u32>)>,
    pairs: Option<CudaSlice<u8>>,
}

impl DeviceVisibility {
    fn upload(dev: &Arc<CudaDevice>, vis: &Visibility) -> Result<Self> {
        // asynchronous copies (`htod_copy` keeps the host buffer until the copy is done): a
        // synchronous one would wait for every kernel queued before it
        let bytes = |flags: &[bool]| flags.iter().map(|&f| u8::from(f)).collect::<Vec<u8>>();
        let copy_err = |e| driver_err("copying an attention mask to the device", e);
        let key_valid = vis
            .key_valid
            .as_ref()
            .map(|v| dev.htod_copy(bytes(v)).map_err(copy_err))
            .transpose()?;
        let pairs = vis
            .pairs
            .as_ref()
            .map(|v| dev.htod_copy(bytes(v)).map_err(copy_err))
            .transpose()?;
        let times = match &vis.times {
            Some(t) => {
                let narrow = |xs: &[usize]| {
                    xs.iter()
                        .map(|&x| u32::try_from(x))
                        .collect::<std::result::Result<Vec<u32>, _>>()
                        .map_err(|_| {
                            Error::config("attention", "a causal time does not fit in 32 bits")
                        })
                };
                let query = dev.htod_copy(narrow(&t.query)?).map_err(copy_err)?;
                let key = dev.htod_copy(narrow(&t.key)?).map_err(copy_err)?;
                Some((query, key))
            }
            None => None,
        };
        Ok(Self {
            key_valid,
            times,
            pairs,
        })
    }

    fn fill(&self, args: &mut Args) {
        args.key_valid = self.key_valid.as_ref().map_or(0, pointer);
        args.pairs = self.pairs.as_ref().map_or(0, pointer);
        if let Some((query, key)) = &self.times {
            args.query_time = pointer(query);
            args.key_time = pointer(key);
        }
    }
}

fn pointer<T, S: DevicePtr<T>>(s: &S) -> u64 {
    *s.device_ptr()
}

/// `t` without its tape (merged into `tape`), contiguous, and the device address of its buffer.
fn take<S: Shape, E: Real, T: Tape<E, Cuda>>(
    t: Tensor<S, E, Cuda, T>,
    tape: &mut T,
) -> Result<(Tensor<S, E, Cuda>, u64)>
where
    Cuda: Device<E>,
    CudaBuffer<E>: Launchable<E>,
{
    let (t, own) = t.contiguous().split_tape();
    *tape = std::mem::take(tape).merge(own);
    let storage = t.storage();
    if storage.len() != t.shape().num_elements() {
        return Err(Error::Device(format!(
            "a contiguous tensor of {} elements has a buffer of {}",
            t.shape().num_elements(),
            storage.len()
        )));
    }
    let ptr = pointer(storage);
    Ok((t, ptr))
}

fn dim(name: &str, x: usize) -> Result<i32> {
    i32::try_from(x).map_err(|_| {
        Error::config(
            "attention",
            format!("{name} = {x} is over what the CUDA kernel indexes (2³¹ − 1)"),
        )
    })
}

fn grid(blocks: usize, threads: usize) -> Result<LaunchConfig> {
    let blocks = u32::try_from(blocks)
        .map_err(|_| Error::config("attention", "too many blocks for one CUDA launch"))?;
    Ok(LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (threads as u32, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// The kernel `name` for element `ty` and width `w`, its module loaded into `dev` on first use.
fn function(dev: &Arc<CudaDevice>, ty: &str, w: usize, name: &str) -> Result<CudaFunction> {
    let module = format!("quartic_attention_{ty}_{w}");
    let source = ptx(ty, w)
        .ok_or_else(|| Error::Device(format!("no CUDA attention kernel for {ty} at width {w}")))?;
    load(dev, &module, source, &FUNCTIONS)?;
    dev.get_func(&module, name)
        .ok_or_else(|| Error::Device(format!("the CUDA module {module} has no kernel {name}")))
}

/// Attention `q [P, H, nq, d]` over `k [P, H, nk, d]`, `v [P, H, nk, e]` with an optional
/// additive `bias [P, H, nq, nk]`, softmax or Taylor, under the spec's visibility; heads at
/// most 128 wide (see [`width`]).
pub fn attention_fused<E: Real, T: Tape<E, Cuda>>(
    q: T4<E, Cuda, T>,
    k: T4<E, Cuda, T>,
    v: T4<E, Cuda, T>,
    bias: Option<T4<E, Cuda, T>>,
    spec: &WeightsSpec,
) -> Result<T4<E, Cuda, T>>
where
    Cuda: Device<E>,
    CudaBuffer<E>: Launchable<E>,
{
    check_attention_shapes(*q.shape(), *k.shape(), *v.shape())?;
    check_weights_shapes(
        *q.shape(),
        *k.shape(),
        bias.as_ref().map(|b| *b.shape()),
        None,
        &spec.visibility,
    )?;
    let (p, h, nq, d) = *q.shape();
    let (nk, e) = (k.shape().2, v.shape().3);
    let w = width(d, e).ok_or_else(|| {
        Error::config(
            "attention",
            format!("heads {d} and {e} wide: the CUDA kernel takes at most 128"),
        )
    })?;
    let ty = element_name::<E>()?;
    let mut tape = T::default();
    let (q, q_ptr) = take(q, &mut tape)?;
    let (k, k_ptr) = take(k, &mut tape)?;
    let (v, v_ptr) = take(v, &mut tape)?;
    let bias = bias.map(|b| take(b, &mut tape)).transpose()?;
    let dev = q.device().clone();
    let shape = (p, h, nq, e);
    let rows = p * h * nq;
    if rows == 0 || nk == 0 || e == 0 {
        // an empty output, or no key to attend to: zeros that depend on no input
        let out = dev.try_zeros_like(&shape).map_err(device_err)?;
        return Ok(out.put_tape(tape));
    }
    let cu = dev.cuda_device().clone();
    let vis = DeviceVisibility::upload(&cu, &spec.visibility)?;
    let (taylor, eps) = match spec.normalizer {
        Normalizer::Softmax => (0, 0.0),
        Normalizer::Taylor { eps } => (1, eps),
    };
    let alloc_err = |e| driver_err("allocating the attention output", e);
    // SAFETY: uninitialized, and not read before the forward kernel writes every element
    // (each of the `rows` queries writes its `e` outputs and its statistic): no memset first
    let out: CudaSlice<E> = unsafe { cu.alloc(rows * e) }.map_err(alloc_err)?;
    let stat: CudaSlice<E> = unsafe { cu.alloc(rows) }.map_err(alloc_err)?;
    let mut args = Args {
        q: q_ptr,
        k: k_ptr,
        v: v_ptr,
        bias: bias.as_ref().map_or(0, |b| b.1),
        out: pointer(&out),
        stat: pointer(&stat),
        problems: dim("problems", p)?,
        heads: dim("heads", h)?,
        nq: dim("queries", nq)?,
        nk: dim("keys", nk)?,
        d: dim("query width", d)?,
        e: dim("value width", e)?,
        taylor,
        scale: spec.scale,
        eps,
        ..Args::default()
    };
    vis.fill(&mut args);
    let f = function(&cu, ty, w, "attention_forward")?;
    let cfg = grid(nq.div_ceil(ROWS) * p * h, ROWS)?;
    // SAFETY: `args` points at buffers of the sizes it states, alive until the launch completes
    // (the stream frees `vis`'s buffers after it); the kernel writes `out` and `stat` only.
    unsafe { f.launch(cfg, (args,)) }.map_err(|e| driver_err("attention forward", e))?;
    let out = dev.build_tensor(shape, shape.strides(), out);
    if T::OWNS_TAPE {
        let functions = [
            function(&cu, ty, w, "attention_dsum")?,
            function(&cu, ty, w, "attention_grad_queries")?,
            function(&cu, ty, w, "attention_grad_keys")?,
        ];
        let configs = [
            grid(rows.div_ceil(DSUM_THREADS), DSUM_THREADS)?,
            grid(nq.div_ceil(ROWS) * p * h, ROWS)?,
            grid(nk.div_ceil(ROWS) * p * h, ROWS)?,
        ];
        let ghosts = (q.ghost(), k.ghost(), v.ghost(), out.ghost());
        let bias_ghost = bias.as_ref().map(|b| b.0.ghost());
        // what the backward reads: the inputs, the output, the statistics, the masks
        let kept = (q, k, v, bias, out.clone(), stat, vis);
        tape.add_backward_op(move |grads| {
            let (q_g, k_g, v_g, out_g) = ghosts;
            let mut args = args;
            args.grad_out = pointer(&*grads.get_or_alloc_mut(&out_g)?);
            args.dq = pointer(&*grads.get_or_alloc_mut(&q_g)?);
            args.dk = pointer(&*grads.get_or_alloc_mut(&k_g)?);
            args.dv = pointer(&*grads.get_or_alloc_mut(&v_g)?);
            if let Some(b) = &bias_ghost {
                args.dbias = pointer(&*grads.get_or_alloc_mut(b)?);
            }
            // SAFETY: the `dsum` kernel writes every row before the gradient kernels read it
            let dsum: CudaSlice<E> = unsafe { kept.0.device().cuda_device().alloc(rows) }?;
            args.dsum = pointer(&dsum);
            let [f_dsum, f_queries, f_keys] = functions;
            let [c_dsum, c_queries, c_keys] = configs;
            // SAFETY: as in the forward; the gradient buffers have the inputs' sizes, and each
            // kernel's threads write disjoint rows of them. The kernels run in stream order.
            unsafe {
                f_dsum.launch(c_dsum, (args,))?;
                f_queries.launch(c_queries, (args,))?;
                f_keys.launch(c_keys, (args,))?;
            }
            drop((kept, dsum));
            Ok(())
        });
    }
    Ok(out.put_tape(tape))
}
