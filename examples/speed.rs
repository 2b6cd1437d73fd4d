//! Whole-process timings of the speed workloads (see `benches/workloads.rs`), one per run so
//! each peak memory is its own: `cargo run --release --example speed -- WORKLOAD`, with WORKLOAD
//! one of readme-forward, readme-train, small-train, RULE-N (one layer of a built-in rule at N
//! nodes, e.g. quartic-128, triangle-64, edge_transformer-128) (an optional second argument
//! sets the number of timed repeats, for profiling; `--device cuda` runs these on a GPU, in a
//! build with the `cuda` feature). Prints one line: workload, median seconds over the repeats,
//! peak resident host memory (VmHWM) in MiB, and GFLOP per repeat (`explain`'s cost model, a
//! backward pass counted as twice its forward). `matmul-peak` prints the f32 matrix product
//! rate in GFLOP/s that the FLOP/s columns are read against. Also `readme-flops`
//! (achieved FLOP/s against the matmul peak), `scaling` (one layer of each built-in rule
//! against n: time and peak live heap, with fitted exponents and the FLOP rate at n = 128)
//! and `footprint` (the memory estimate a run is checked against, next to the run's measured
//! peak heap), `paths` (the Edge Transformer's path attention, fused against written out by
//! hand: time and peak heap) and `path-kernel-N` (the fused path attention alone at N nodes:
//! forward, then forward + backward, median and best of the repeats, GFLOP/s of its paths).

#[path = "../benches/path_by_hand.rs"]
mod path_by_hand;
#[path = "../benches/workloads.rs"]
mod workloads;

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

// The CLI's allocator (see quartic::alloc: freed tensors stay in the process, no huge pages),
// counting the bytes live so that the scaling table can report each run's peak.
#[global_allocator]
static GLOBAL: Counting = Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

struct Counting;

impl Counting {
    fn grew(size: usize) {
        let now = LIVE.fetch_add(size, Ordering::Relaxed) + size;
        PEAK.fetch_max(now, Ordering::Relaxed);
    }
}

// Safety: forwards every call to mimalloc unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = quartic::alloc::Allocator.alloc(layout);
        if !p.is_null() {
            Self::grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = quartic::alloc::Allocator.alloc_zeroed(layout);
        if !p.is_null() {
            Self::grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        quartic::alloc::Allocator.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = quartic::alloc::Allocator.realloc(ptr, layout, new_size);
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            Self::grew(new_size);
        }
        p
    }
}

/// Starts a new peak from the bytes live now; returns the baseline.
fn reset_peak() -> usize {
    let now = LIVE.load(Ordering::Relaxed);
    PEAK.store(now, Ordering::Relaxed);
    now
}

/// The peak of live heap bytes above `base` since the last [`reset_peak`], in MiB.
fn peak_since(base: usize) -> f64 {
    PEAK.load(Ordering::Relaxed).saturating_sub(base) as f64 / (1 << 20) as f64
}

use dfdx::prelude::*;
use quartic::device::DeviceChoice;
use quartic::train::shards::RunShards;

fn peak_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// The least-squares slope of log y against log x.
fn slope(x: &[f64], y: &[f64]) -> f64 {
    let (lx, ly): (Vec<f64>, Vec<f64>) = (
        x.iter().map(|v| v.ln()).collect(),
        y.iter().map(|v| v.ln()).collect(),
    );
    let (mx, my) = (
        lx.iter().sum::<f64>() / lx.len() as f64,
        ly.iter().sum::<f64>() / ly.len() as f64,
    );
    let cov: f64 = lx.iter().zip(&ly).map(|(a, b)| (a - mx) * (b - my)).sum();
    let var: f64 = lx.iter().map(|a| (a - mx).powi(2)).sum();
    cov / var
}

/// The scaling table's rules: the built-in ones of [`RULES`] and the Edge Transformer's path
/// attention, cheapest first.
const SCALING_RULES: [&str; 7] = [
    "baseline",
    "taylor",
    "relational",
    "triangle",
    "edge_transformer",
    "routed",
    "quartic",
];

/// The built-in rules, cheapest first.
const RULES: [&str; 6] = [
    "baseline",
    "taylor",
    "relational",
    "triangle",
    "routed",
    "quartic",
];

/// One forward + backward of `layer` on random inputs (batch 1, `n` nodes of `dim`, edges of
/// `dim_edges`): seconds, and the peak heap above what was live before, in MiB.
fn layer_step(
    dev: &Cpu,
    layer: &quartic::rules::RuleLayer<f32, Cpu>,
    n: usize,
    dim: usize,
    dim_edges: usize,
) -> (f64, f64) {
    let nodes: Tensor<(usize, usize, usize), f32, Cpu> = dev.sample_normal_like(&(1, n, dim));
    let edges: Tensor<(usize, usize, usize, usize), f32, Cpu> =
        dev.sample_normal_like(&(1, n, n, dim_edges));
    let base = reset_peak();
    let t = Instant::now();
    let (x, e) = layer
        .forward(
            quartic::graph::Nodes::new(nodes.leaky_trace()),
            quartic::graph::Edges::new(edges.retaped::<workloads::Tp>()).expect("square"),
            &quartic::graph::GraphMask::full(1, n),
        )
        .expect("runs");
    let loss = x.into_tensor().square().mean() + e.into_tensor().square().mean();
    std::hint::black_box(loss.backward());
    (t.elapsed().as_secs_f64(), peak_since(base))
}

type T4f = Tensor<(usize, usize, usize, usize), f32, Cpu>;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    v[v.len() / 2]
}

fn main() {
    quartic::threads::include_calling_thread();
    // as the `quartic` command: QUARTIC_STAY_WARM_MS sets how long idle threads poll
    if let Some(ms) = std::env::var(quartic::threads::STAY_WARM_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
    {
        quartic::threads::set_stay_warm(std::time::Duration::from_millis(ms));
    }
    let which = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "readme-forward".into());
    // optional second argument: how many timed repeats (for profiling the steady state)
    let repeats = |default: usize| {
        std::env::args()
            .nth(2)
            .and_then(|r| r.parse().ok())
            .unwrap_or(default)
    };
    let device = device_arg();
    if let Some(times) = timed(&which, device, &repeats) {
        let times = times.unwrap_or_else(|e| {
            eprintln!("error: {e}");
            std::process::exit(1)
        });
        println!(
            "{which}\t{:.4}\t{:.0}\t{:.2}",
            median(times.seconds),
            peak_mib(),
            times.flops / 1e9
        );
        return;
    }
    let dev = Cpu::default();
    match which.as_str() {
        "readme-flops" => {
            // achieved FLOP/s of the README forward (FLOPs from `explain`'s cost model) against
            // the machine's f32 matmul peak (512³ matmuls through dfdx/gemm, both cores)
            let m = workloads::readme_model(&dev);
            let flops = workloads::model_forward_flops(&m, 1, 128);
            workloads::forward(&m, 1, 128);
            let t = Instant::now();
            workloads::forward(&m, 1, 128);
            let secs = t.elapsed().as_secs_f64();
            let peak = matmul_peak(&dev);
            let achieved = flops / secs;
            println!(
                "readme-flops\t{:.1} GFLOP in {secs:.3} s = {:.1} GFLOP/s; matmul peak {:.1} GFLOP/s; {:.0}%",
                flops / 1e9,
                achieved / 1e9,
                peak / 1e9,
                100.0 * achieved / peak
            );
            return;
        }
        w if w.starts_with("path-kernel-") => {
            // the fused path attention alone (batch 1, 4 heads × 16 for scores and values,
            // softmax): forward, then forward + backward; GFLOP/s from explain's count of its
            // paths, n³ · heads · (5 · 16 + 6) a forward, a backward counted as twice that
            let n: usize = w["path-kernel-".len()..].parse().expect("path-kernel-N");
            let (h, d) = (4, 16);
            let paths = (n * n * n * h) as f64 * (5.0 * d as f64 + 6.0);
            let shape = (1, n, n, h * d);
            let (q, k, v1, v2): (T4f, T4f, T4f, T4f) = (
                dev.sample_normal_like(&shape),
                dev.sample_normal_like(&shape),
                dev.sample_normal_like(&shape),
                dev.sample_normal_like(&shape),
            );
            let spec = quartic::ops::weights::WeightsSpec {
                scale: 0.25,
                normalizer: quartic::ops::weights::Normalizer::Softmax,
                visibility: quartic::spec::visibility::Visibility::all(1, n * n, n),
            };
            use quartic::ops::path::path_attention as attend;
            let run = |backward: bool| {
                let (k, v1, v2) = (k.clone(), v1.clone(), v2.clone());
                if backward {
                    let (k, v1, v2) = (k.retaped(), v1.retaped(), v2.retaped());
                    let out = attend(q.leaky_trace(), k, v1, v2, h, &spec).expect("runs");
                    std::hint::black_box(out.square().mean().backward());
                } else {
                    std::hint::black_box(attend(q.clone(), k, v1, v2, h, &spec).expect("runs"));
                }
            };
            for (name, backward, flops) in [
                ("forward", false, paths),
                ("forward + backward", true, 3.0 * paths),
            ] {
                run(backward);
                let times: Vec<f64> = (0..repeats(5))
                    .map(|_| {
                        let t = Instant::now();
                        run(backward);
                        t.elapsed().as_secs_f64()
                    })
                    .collect();
                let best = times.iter().cloned().fold(f64::INFINITY, f64::min);
                let secs = median(times);
                println!(
                    "{w} {name}\t{secs:.4}\t{:.1} GFLOP/s\tbest {best:.4}",
                    flops / secs / 1e9
                );
            }
            return;
        }
        "matmul-peak" => {
            println!("matmul-peak\t{:.1}", matmul_peak(&dev) / 1e9);
            return;
        }
        "scaling" => {
            // one layer of each built-in rule, forward + backward, against n: median time and
            // the peak heap above the inputs; exponents fitted over n = 32, 64, 128 (least
            // squares in log-log) next to the one explain predicts for FLOPs, and the rate at
            // n = 128 (explain's FLOPs, backward counted as twice the forward) against the f32
            // matmul peak read before the table
            let peak = matmul_peak(&dev);
            println!("matmul peak {:.1} GFLOP/s", peak / 1e9);
            println!("| rule | n = 16 | n = 32 | n = 64 | n = 128 | n = 128: GFLOP, GFLOP/s (of peak) | fitted exponent: time | memory | explain's FLOPs |");
            println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
            for rule in SCALING_RULES {
                let rule_src = quartic::rules::Rule::builtin(rule).expect("built in");
                let overrides = rule_src
                    .declared_values(&[
                        ("heads", 4.0),
                        ("dim_head", 16.0),
                        ("edge_heads", 4.0),
                        ("edge_dim_head", 8.0),
                        ("hidden", 16.0),
                        ("picks", 64.0),
                    ])
                    .into_iter()
                    .collect();
                let cfg = quartic::rules::RuleConfig {
                    dim: 64,
                    dim_edges: 16,
                    causal: false,
                    overrides,
                };
                let plan = rule_src.plan(&cfg).expect("checks");
                let flops_128 = 3.0 * quartic::rules::explain::plan_cost(&plan, 1, 128).flops;
                let fit_sizes = [32.0, 64.0, 128.0];
                let predicted = slope(
                    &fit_sizes,
                    &fit_sizes
                        .map(|n| quartic::rules::explain::plan_cost(&plan, 1, n as usize).flops),
                );
                let layer = quartic::rules::RuleLayer::<f32, Cpu>::new(
                    plan,
                    &quartic::nn::Init::random(&dev, 0),
                )
                .expect("builds");
                let mut cells = Vec::new();
                for n in [16, 32, 64, 128] {
                    let mut ts = Vec::new();
                    let mut peak = 0.0f64;
                    for _ in 0..5 {
                        let (secs, mib) = layer_step(&dev, &layer, n, 64, 16);
                        ts.push(secs);
                        peak = peak.max(mib);
                    }
                    cells.push((median(ts), peak));
                }
                let cell = |(t, m): (f64, f64)| format!("{:.1} ms, {m:.1} MiB", t * 1e3);
                let rate = flops_128 / cells[3].0;
                println!(
                    "| {rule} | {} | {} | {} | {} | {:.3}, {:.1} ({:.0} %) | {:.2} | {:.2} | {:.2} |",
                    cell(cells[0]),
                    cell(cells[1]),
                    cell(cells[2]),
                    cell(cells[3]),
                    flops_128 / 1e9,
                    rate / 1e9,
                    100.0 * rate / peak,
                    slope(&fit_sizes, &[cells[1].0, cells[2].0, cells[3].0]),
                    slope(&fit_sizes, &[cells[1].1, cells[2].1, cells[3].1]),
                    predicted
                );
            }
            return;
        }
        "paths" => {
            // one path-attention statement (layer norm, 4 heads × 8, 16 edge channels, batch 1),
            // forward + backward: the fused pattern against the by-hand softmax[l] / sum[l]
            println!("| n | fused | by hand | time ratio | memory ratio |");
            println!("| --- | --- | --- | --- | --- |");
            let (fused, by_hand) = path_by_hand::layers::<f32>(&dev, 16, 4, 8, false, 0);
            let step = |layer, n| layer_step(&dev, layer, n, 8, 16);
            let measure = |layer, n, runs: usize| {
                let r: Vec<(f64, f64)> = (0..runs).map(|_| step(layer, n)).collect();
                let peak = r.iter().map(|x| x.1).fold(0.0, f64::max);
                (median(r.iter().map(|x| x.0).collect()), peak)
            };
            let cell = |(t, m): (f64, f64)| format!("{:.3} s, {m:.1} MiB", t);
            for n in [16, 32, 64] {
                let f = measure(&fused, n, 3);
                let h = measure(&by_hand, n, if n >= 64 { 1 } else { 3 });
                println!(
                    "| {n} | {} | {} | {:.1}× | {:.1}× |",
                    cell(f),
                    cell(h),
                    h.0 / f.0,
                    h.1 / f.1
                );
            }
            let f = measure(&fused, 128, 3);
            println!("| 128 | {} | (not run) | | |", cell(f));
            return;
        }
        "footprint" => {
            // the memory estimate a run is checked against before it allocates
            // (quartic::models::footprint) next to the peak live heap of the run itself
            use quartic::models::footprint::{estimate, Use};
            println!("| model | run | batch × n | estimate | measured peak | estimate / peak |");
            println!("| --- | --- | --- | --- | --- | --- |");
            for rule in RULES {
                for (b, n) in [(8, 32), (2, 64), (1, 128)] {
                    let config = workloads::rule_model_config(rule, n);
                    for run in [Use::Forward, Use::Train { shards: 2 }] {
                        let mib = |x: u64| x as f64 / (1 << 20) as f64;
                        let want = mib(estimate(&config, None, b, n, run)
                            .expect("estimates")
                            .total());
                        let base = reset_peak();
                        let mut model = quartic::models::Model::<f32, Cpu>::new(
                            &config,
                            None,
                            &quartic::nn::Init::random(&dev, 0),
                        )
                        .expect("builds");
                        match run {
                            Use::Forward => workloads::forward(&model, b, n),
                            Use::Train { .. } => {
                                let mut adam = workloads::optimizer(&model);
                                workloads::train_step(&mut model, &mut adam, b, n);
                                workloads::train_step(&mut model, &mut adam, b, n);
                            }
                        }
                        let got = peak_since(base);
                        drop(model);
                        let name = if matches!(run, Use::Forward) {
                            "forward"
                        } else {
                            "train step"
                        };
                        println!(
                            "| {rule} | {name} | {b} × {n} | {want:.1} MiB | {got:.1} MiB | {:.2} |",
                            want / got
                        );
                    }
                }
            }
            return;
        }
        other => {
            eprintln!("unknown workload `{other}`");
            std::process::exit(2);
        }
    }
}

/// The machine's f32 matrix product rate in FLOP/s: twenty 512³ products through dfdx (gemm,
/// every core), after one untimed.
fn matmul_peak(dev: &Cpu) -> f64 {
    let a: Tensor<(usize, usize), f32, Cpu> = dev.sample_normal_like(&(512, 512));
    let b: Tensor<(usize, usize), f32, Cpu> = dev.sample_normal_like(&(512, 512));
    std::hint::black_box(a.clone().matmul(b.clone()).as_vec());
    let t = Instant::now();
    for _ in 0..20 {
        std::hint::black_box(a.clone().matmul(b.clone()));
    }
    20.0 * 2.0 * 512f64.powi(3) / t.elapsed().as_secs_f64()
}

/// `--device cpu|cuda[:N]` anywhere among the arguments (the CPU when absent).
fn device_arg() -> DeviceChoice {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--device") {
        Some(i) => args
            .get(i + 1)
            .and_then(|d| d.parse().ok())
            .unwrap_or_else(|| {
                eprintln!("--device takes cpu, cuda or cuda:N");
                std::process::exit(2)
            }),
        None => DeviceChoice::Cpu,
    }
}

/// The timed workloads, on any device: each one's seconds per repeat (after one untimed run,
/// as the original's script does: the first faults in the buffers) and the FLOPs of one
/// repeat; `None` for another name.
fn timed(
    which: &str,
    device: DeviceChoice,
    repeats: &dyn Fn(usize) -> usize,
) -> Option<quartic::Result<Timed>> {
    let known = matches!(
        which,
        "readme-forward" | "readme-forward-4s" | "readme-train" | "readme-train-4s" | "small-train"
    ) || rule_layer_n(which).is_some();
    if !known {
        return None;
    }
    // a closure: the macro's `?` returns the device's error from it
    let run = || -> quartic::Result<Timed> {
        quartic::on_device!(device, 0, |dev| Ok(time_on(&dev, which, repeats)))
    };
    Some(run())
}

/// `RULE-N` (e.g. `quartic-128`, `triangle-64`, `edge_transformer-128`): one layer of the
/// built-in RULE at N nodes (see `workloads::rule_layer`).
fn rule_layer_n(which: &str) -> Option<(&str, usize)> {
    let (rule, n) = which.rsplit_once('-')?;
    let n = n.parse().ok().filter(|&n| n > 0)?;
    quartic::rules::Rule::builtin(rule).ok()?;
    Some((rule, n))
}

/// Seconds of each timed repeat, and the FLOPs one repeat does (`explain`'s cost model; a
/// backward pass counted as twice its forward).
struct Timed {
    seconds: Vec<f64>,
    flops: f64,
}

fn time_on<D: RunShards<f32> + dfdx::tensor::Synchronize>(
    dev: &D,
    which: &str,
    repeats: &dyn Fn(usize) -> usize,
) -> Timed {
    let time = |count: usize, f: &mut dyn FnMut()| -> Vec<f64> {
        f();
        (0..count)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect()
    };
    // the README model with the original's four residual streams, or one
    let readme =
        || workloads::readme_model_streams(dev, if which.ends_with("-4s") { 4 } else { 1 });
    // a training step of `m` on b × n tokens, 3 × its forward FLOPs
    let train = |mut m: quartic::models::Model<f32, D>, (b, n): (usize, usize), count: usize| {
        let flops = 3.0 * workloads::model_forward_flops(&m, b, n);
        let mut adam = workloads::optimizer(&m);
        Timed {
            flops,
            seconds: time(count, &mut || {
                workloads::train_step(&mut m, &mut adam, b, n)
            }),
        }
    };
    match which {
        "readme-forward" | "readme-forward-4s" => {
            let m = readme();
            Timed {
                flops: workloads::model_forward_flops(&m, 1, 128),
                seconds: time(repeats(3), &mut || workloads::forward(&m, 1, 128)),
            }
        }
        "readme-train" | "readme-train-4s" => train(readme(), (1, 128), repeats(3)),
        "small-train" => train(workloads::small_model(dev), (8, 32), repeats(5)),
        _ => {
            let (rule, n) = rule_layer_n(which).expect("checked by `timed`");
            let layer = workloads::rule_layer(dev, rule);
            let flops = 3.0 * workloads::layer_forward_flops(&layer, n);
            let inputs = workloads::rule_layer_inputs(dev, n);
            let seconds = time(repeats(3), &mut || {
                workloads::rule_layer_step(dev, &layer, &inputs)
            });
            Timed { flops, seconds }
        }
    }
}
