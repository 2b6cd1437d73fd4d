use dfdx::prelude::*;
use quartic::graph::GraphMask;
use quartic::kernels::edge_attention_cpu::edge_self_attention_fused;
use quartic::kernels::patterns::{pattern_visibility, EdgePattern, EdgeProjections};
use quartic::kernels::weights::{Normalizer, WeightsSpec};
use std::time::Instant;
#[global_allocator]
static GLOBAL: quartic::alloc::Allocator = quartic::alloc::Allocator;
fn main() {
    quartic::alloc::keep_freed_memory();
    let dev = Cpu::default();
    let (n, c, h, d) = (128, 32, 16, 16);
    let x: Tensor<(usize, usize, usize, usize), f32, Cpu> = dev.sample_normal_like(&(1, n, n, c));
    let w = |o: usize| -> Tensor<(usize, usize), f32, Cpu> { dev.sample_normal_like(&(o, c)) };
    let (wq, wk, wv) = (w(h * d), w(h * d), w(h * d));
    let g: Tensor<(usize, usize, usize, usize), f32, Cpu> = dev.sample_normal_like(&(1, n, n, h));
    let mask = GraphMask::full(1, n);
    for pattern in [EdgePattern::Row, EdgePattern::Column] {
        let spec = WeightsSpec {
            scale: 0.25,
            normalizer: Normalizer::Taylor { eps: 1e-5 },
            visibility: pattern_visibility(pattern, &mask).unwrap(),
        };
        for _ in 0..4 {
            let t = Instant::now();
            let out = edge_self_attention_fused(
                x.clone(),
                EdgeProjections {
                    to_q: wq.clone(),
                    to_k: wk.clone(),
                    to_v: wv.clone(),
                },
                Some(g.clone()),
                None,
                h,
                pattern,
                &spec,
            )
            .unwrap();
            println!(
                "{pattern:?} fwd {:.1} ms {}",
                t.elapsed().as_secs_f64() * 1e3,
                out.shape().0
            );
        }
        for _ in 0..3 {
            let t = Instant::now();
            let xt = x.leaky_trace();
            let out = edge_self_attention_fused(
                xt,
                EdgeProjections {
                    to_q: wq.clone().retaped(),
                    to_k: wk.clone().retaped(),
                    to_v: wv.clone().retaped(),
                },
                Some(g.clone().retaped()),
                None,
                h,
                pattern,
                &spec,
            )
            .unwrap();
            let t1 = t.elapsed().as_secs_f64() * 1e3;
            let _gr = out.sum::<(), _>().backward();
            println!(
                "{pattern:?} fwd+bwd {:.1} ms (fwd {t1:.1})",
                t.elapsed().as_secs_f64() * 1e3
            );
        }
    }
}
