//! Criterion benches of the speed table's rows (issue: speed): the README model forward and
//! train step, the small model's train step, one layer of `quartic` (all-edges attention),
//! `triangle` and `edge_transformer` (cubic), forward + backward at n = 64 and 128.
//! `cargo bench --bench models`; whole-process timings with peak memory:
//! `scripts/speed_table.sh`.

mod workloads;

// see quartic::alloc: freed tensors stay in the process for the next op, no huge pages
#[global_allocator]
static GLOBAL: quartic::alloc::Allocator = quartic::alloc::Allocator;

use criterion::{criterion_group, criterion_main, Criterion};
use dfdx::prelude::*;

fn rows(c: &mut Criterion) {
    quartic::threads::include_calling_thread();
    let dev = Cpu::default();
    let mut g = c.benchmark_group("speed");
    g.sample_size(10);
    let readme = workloads::readme_model(&dev);
    g.bench_function("readme_forward", |b| {
        b.iter(|| workloads::forward(&readme, 1, 128))
    });
    let mut readme = readme;
    let mut adam = workloads::optimizer(&readme);
    g.bench_function("readme_train_step", |b| {
        b.iter(|| workloads::train_step(&mut readme, &mut adam, 1, 128))
    });
    let mut small = workloads::small_model(&dev);
    let mut adam = workloads::optimizer(&small);
    g.bench_function("small_train_step", |b| {
        b.iter(|| workloads::train_step(&mut small, &mut adam, 8, 32))
    });
    for rule in ["quartic", "triangle", "edge_transformer"] {
        let layer = workloads::rule_layer(&dev, rule);
        for n in [64, 128] {
            let inputs = workloads::rule_layer_inputs(&dev, n);
            g.bench_function(format!("{rule}_layer_n{n}"), |b| {
                b.iter(|| workloads::rule_layer_step(&dev, &layer, &inputs))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, rows);
criterion_main!(benches);
