//! Path (triangular) attention against a loop implementation of its definition, fused and
//! composite; gradients against finite differences; causality (no edge reads a later path) and
//! padding (padded nodes never change real edges), bit for bit.

use dfdx::prelude::*;
use quartic::graph::GraphMask;
use quartic::ops::path::{path_attention, path_attention_composite};
use quartic::ops::weights::{Normalizer, WeightsSpec};

use crate::common::*;

const B: usize = 2;
const N: usize = 5;
const H: usize = 2;
const DH: usize = 3;
const E: usize = 2;

fn mask(causal: bool) -> GraphMask {
    GraphMask::from_lengths(N, &[5, 3]).unwrap().causal(causal)
}

fn normalizers() -> [Normalizer; 2] {
    [Normalizer::Softmax, Normalizer::Taylor { eps: 1e-5 }]
}

fn spec(normalizer: Normalizer, m: &GraphMask) -> WeightsSpec {
    WeightsSpec {
        scale: 0.7,
        normalizer,
        visibility: m.path_visibility().unwrap(),
    }
}

/// The definition, in loops: out[b, i, j, h] = Σ_l w_l · v1[i, l] ⊙ v2[l, j] over the real
/// middle nodes l (and, when causal, l ≤ max(i, j)), `w` normalised over them.
fn naive(inputs: &[Vec<f64>; 4], normalizer: Normalizer, m: &GraphMask) -> Vec<f64> {
    let [q, k, v1, v2] = inputs;
    let at = |c: usize, b: usize, r: usize, col: usize, h: usize| {
        ((b * N + r) * N + col) * H * c + h * c
    };
    let mut out = vec![0.0; B * N * N * H * E];
    for b in 0..B {
        for i in 0..N {
            for j in 0..N {
                for h in 0..H {
                    let ls: Vec<usize> = (0..N)
                        .filter(|&l| m.node_valid(b, l) && (!m.is_causal() || l <= i.max(j)))
                        .collect();
                    let scores: Vec<f64> = ls
                        .iter()
                        .map(|&l| {
                            let (qo, ko) = (at(DH, b, i, l, h), at(DH, b, l, j, h));
                            0.7 * (0..DH).map(|t| q[qo + t] * k[ko + t]).sum::<f64>()
                        })
                        .collect();
                    let w: Vec<f64> = match normalizer {
                        Normalizer::Softmax => {
                            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                            let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                            let z: f64 = e.iter().sum();
                            e.iter().map(|x| x / z).collect()
                        }
                        Normalizer::Taylor { eps } => {
                            let e: Vec<f64> =
                                scores.iter().map(|s| 1.0 + s + s * s / 2.0).collect();
                            let z = e.iter().sum::<f64>().max(eps);
                            e.iter().map(|x| x / z).collect()
                        }
                    };
                    for (&l, &wl) in ls.iter().zip(&w) {
                        let (ao, bo) = (at(E, b, i, l, h), at(E, b, l, j, h));
                        let o = at(E, b, i, j, h);
                        for t in 0..E {
                            out[o + t] += wl * v1[ao + t] * v2[bo + t];
                        }
                    }
                }
            }
        }
    }
    out
}

fn inputs() -> [Vec<f64>; 4] {
    [
        randn(81, B * N * N * H * DH),
        randn(82, B * N * N * H * DH),
        randn(83, B * N * N * H * E),
        randn(84, B * N * N * H * E),
    ]
}

fn run(inputs: &[Vec<f64>; 4], normalizer: Normalizer, m: &GraphMask, fused: bool) -> Vec<f64> {
    let d = dev();
    let t = |x: &Vec<f64>, c: usize| d.tensor_from_vec(x.clone(), (B, N, N, H * c));
    let [q, k, v1, v2] = inputs;
    let s = spec(normalizer, m);
    let out = if fused {
        path_attention(t(q, DH), t(k, DH), t(v1, E), t(v2, E), H, &s)
    } else {
        path_attention_composite(t(q, DH), t(k, DH), t(v1, E), t(v2, E), H, &s)
    };
    out.unwrap().as_vec()
}

/// The inputs plus `change(input, index, graph, row, column)` at every element (q, k, v1, v2
/// are inputs 0 to 3, each an edge tensor).
fn perturbed(
    x: &[Vec<f64>; 4],
    change: impl Fn(usize, usize, usize, usize, usize) -> f64,
) -> [Vec<f64>; 4] {
    std::array::from_fn(|which| {
        let c = if which < 2 { DH } else { E };
        x[which]
            .iter()
            .enumerate()
            .map(|(idx, &val)| {
                let e = idx / (H * c);
                val + change(which, idx, e / (N * N), (e / N) % N, e % N)
            })
            .collect()
    })
}

#[test]
fn path_attention_matches_the_loop_definition() {
    let x = inputs();
    for causal in [false, true] {
        for normalizer in normalizers() {
            let m = mask(causal);
            let want = naive(&x, normalizer, &m);
            for fused in [true, false] {
                let got = run(&x, normalizer, &m, fused);
                let what = format!("fused {fused}, causal {causal}, {normalizer:?}");
                assert_close(&what, &got, &want, 1e-10, 1e-9);
            }
        }
    }
}

#[test]
fn path_attention_gradients_match_finite_differences() {
    let x = inputs();
    for causal in [false, true] {
        for normalizer in normalizers() {
            let m = mask(causal);
            let s = spec(normalizer, &m);
            for fused in [true, false] {
                gradcheck(
                    &format!("path attention (fused {fused}, causal {causal}, {normalizer:?})"),
                    &x,
                    24,
                    |t| {
                        let mut t = t.into_iter();
                        let mut next = |c: usize| t.next().unwrap().reshape_like(&(B, N, N, H * c));
                        let (q, k, v1, v2) = (next(DH), next(DH), next(E), next(E));
                        let out = if fused {
                            path_attention(q, k, v1, v2, H, &s)
                        } else {
                            path_attention_composite(q, k, v1, v2, H, &s)
                        };
                        probe_loss(out.unwrap(), 85)
                    },
                );
            }
        }
    }
}

/// Changes every input edge at time ≥ t (edge (r, c) lives at max(r, c)): no edge earlier than
/// t may change, bit for bit, and some later one must (else the test proves nothing).
#[test]
fn causal_path_attention_never_reads_a_later_path() {
    let x = inputs();
    let m = mask(true);
    for t in 1..N {
        let noise: Vec<Vec<f64>> = (0..4)
            .map(|w| randn(90 + (t + w) as u64, x[w].len()))
            .collect();
        let perturbed = perturbed(&x, |which, idx, _, r, col| {
            if r.max(col) >= t {
                noise[which][idx]
            } else {
                0.0
            }
        });
        for normalizer in normalizers() {
            let a = run(&x, normalizer, &m, true);
            let b = run(&perturbed, normalizer, &m, true);
            let mut later_changed = false;
            for (idx, (p, q)) in a.iter().zip(&b).enumerate() {
                let e = idx / (H * E);
                let (i, j) = ((e / N) % N, e % N);
                if i.max(j) < t {
                    assert_eq!(p, q, "edge ({i}, {j}) changed when time ≥ {t} changed");
                } else if p != q {
                    later_changed = true;
                }
            }
            assert!(later_changed, "the perturbation must reach later edges");
        }
    }
}

#[test]
fn padded_nodes_never_change_real_edges() {
    let x = inputs();
    for causal in [false, true] {
        let m = mask(causal);
        // graph 1 has 3 real nodes: perturb every edge touching nodes 3 and 4 of graph 1
        let perturbed = perturbed(&x, |_, _, b, r, col| {
            if b == 1 && (r >= 3 || col >= 3) {
                10.0
            } else {
                0.0
            }
        });
        for normalizer in normalizers() {
            let a = run(&x, normalizer, &m, true);
            let b = run(&perturbed, normalizer, &m, true);
            for (idx, (p, q)) in a.iter().zip(&b).enumerate() {
                let e = idx / (H * E);
                let (bb, i, j) = (e / (N * N), (e / N) % N, e % N);
                if m.edge_valid(bb, i, j) {
                    assert_eq!(p, q, "causal {causal}: real edge ({bb}, {i}, {j}) changed");
                }
            }
        }
    }
}

#[test]
fn bad_path_inputs_are_errors() {
    let d = dev();
    let m = mask(false);
    let s = spec(Normalizer::Softmax, &m);
    let t = |c: usize, n: usize| d.tensor_from_vec(vec![0.0; B * n * n * c], (B, n, n, c));
    // keys of another width
    let e = path_attention(
        t(H * DH, N),
        t(H * DH + 1, N),
        t(H * E, N),
        t(H * E, N),
        H,
        &s,
    );
    assert!(format!("{}", e.unwrap_err()).contains("path attention keys"));
    // heads that do not divide the channels
    let e = path_attention(t(H * DH, N), t(H * DH, N), t(H * E, N), t(H * E, N), 4, &s);
    assert!(format!("{}", e.unwrap_err()).contains("heads"));
    // a visibility made for other sizes
    let e = path_attention(t(H * DH, 4), t(H * DH, 4), t(H * E, 4), t(H * E, 4), H, &s);
    assert!(format!("{}", e.unwrap_err()).contains("visibility"));
}

/// At n = 19 (two full runs of eight along j plus a tail of three; in the backward, middle
/// nodes in four runs of four and a shorter last one) and n = 37 (a register block of 32
/// lanes along j plus a tail of five; an odd number of middle nodes; query rows in blocks of
/// eight with a shorter last one) the fused kernel agrees with the composite form, output and
/// every input's gradient, padded and causal, both normalizers.
#[test]
fn fused_path_attention_agrees_with_the_composite_at_wider_sizes() {
    for (n, short) in [(19, 11), (37, 30)] {
        fused_agrees_with_the_composite(n, short, false, 4);
    }
}

/// The f32 build of the kernel (its AVX2 lanes, the 32-lane register blocks, the two-row
/// backward, the values' tiles of 4 channels × 16 lanes) against the composite form in f64 at
/// n = 37, to f32's precision: output and every input's gradient, padded and causal, both
/// normalizers; with 4 value channels a head (whole tiles, lanes 32..37 left over) and with 6
/// (two channels past the last whole tile).
#[test]
fn fused_path_attention_in_f32_agrees_with_the_composite_in_f64() {
    for e in [4, 6] {
        fused_agrees_with_the_composite(37, 30, true, e);
    }
}

/// The fused kernel (in f64, or in f32 when `in_f32`) against the composite form in f64 on two
/// graphs of `n` and `short` nodes with `e` value channels a head, padded and causal, both
/// normalizers.
fn fused_agrees_with_the_composite(n: usize, short: usize, in_f32: bool, e: usize) {
    let sizes = PathSizes {
        b: 2,
        n,
        h: 2,
        dh: 8,
        e,
    };
    let x = sizes.inputs();
    let (atol, rtol) = if in_f32 { (1e-5, 1e-4) } else { (1e-12, 1e-10) };
    for causal in [false, true] {
        let m = GraphMask::from_lengths(n, &[n, short])
            .unwrap()
            .causal(causal);
        for normalizer in normalizers() {
            let s = spec(normalizer, &m);
            let fused = if in_f32 {
                sizes.run_fused_f32(&x, &m, normalizer)
            } else {
                sizes.run_f64(&x, &s, true)
            };
            let composite = sizes.run_f64(&x, &s, false);
            let what = format!("f32 {in_f32}, n {n}, e {e}, causal {causal}, {normalizer:?}");
            assert_close(
                &format!("{what}: output"),
                &fused.0,
                &composite.0,
                atol,
                rtol,
            );
            for (which, (a, c)) in fused.1.iter().zip(&composite.1).enumerate() {
                assert_close(&format!("{what}: gradient {which}"), a, c, atol, rtol);
            }
        }
    }
}

/// Sizes of a path attention problem: graphs, nodes, heads, score and value channels per head.
struct PathSizes {
    b: usize,
    n: usize,
    h: usize,
    dh: usize,
    e: usize,
}

type Run = (Vec<f64>, Vec<Vec<f64>>);

impl PathSizes {
    fn widths(&self) -> [usize; 4] {
        [self.dh, self.dh, self.e, self.e].map(|c| self.h * c)
    }

    fn inputs(&self) -> [Vec<f64>; 4] {
        let edges = self.b * self.n * self.n;
        let [q, k, v1, v2] = self.widths();
        [
            randn(91, edges * q),
            randn(92, edges * k),
            randn(93, edges * v1),
            randn(94, edges * v2),
        ]
    }

    /// Output and the gradients of a fixed probe loss, fused or composite, in f64.
    fn run_f64(&self, x: &[Vec<f64>; 4], s: &WeightsSpec, fused: bool) -> Run {
        let (b, n, h) = (self.b, self.n, self.h);
        let d = dev();
        let plain: Vec<Tensor<(usize, usize, usize, usize), f64, Cpu>> = x
            .iter()
            .zip(self.widths())
            .map(|(v, c)| d.tensor_from_vec(v.clone(), (b, n, n, c)))
            .collect();
        let t: Vec<_> = plain.iter().map(|p| p.leaky_trace()).collect();
        let [q, k, v1, v2]: [_; 4] = t.try_into().ok().unwrap();
        let out = if fused {
            path_attention(q, k, v1, v2, h, s)
        } else {
            path_attention_composite(q, k, v1, v2, h, s)
        }
        .unwrap();
        let values = out.retaped::<NoneTape>().as_vec();
        let mut grads = probe_loss(out, 95).backward();
        let grads = plain.iter().map(|p| grad_of(&mut grads, p)).collect();
        (values, grads)
    }

    /// The same through the fused kernel in f32 (inputs and probe rounded to f32), widened.
    fn run_fused_f32(&self, x: &[Vec<f64>; 4], m: &GraphMask, normalizer: Normalizer) -> Run {
        let (b, n, h) = (self.b, self.n, self.h);
        let d = dev();
        let narrow = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let widen = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<f64>>();
        let plain: Vec<Tensor<(usize, usize, usize, usize), f32, Cpu>> = x
            .iter()
            .zip(self.widths())
            .map(|(v, c)| d.tensor_from_vec(narrow(v), (b, n, n, c)))
            .collect();
        let t: Vec<_> = plain.iter().map(|p| p.leaky_trace()).collect();
        let [q, k, v1, v2]: [_; 4] = t.try_into().ok().unwrap();
        let out = path_attention(q, k, v1, v2, h, &spec(normalizer, m)).unwrap();
        let shape = *out.shape();
        let values = widen(out.retaped::<NoneTape>().as_vec());
        let probe = d.tensor_from_vec(narrow(&randn(95, shape.num_elements())), shape);
        let mut grads = (out * probe).sum().backward();
        let grads = plain
            .iter()
            .map(|p| widen(grads.get_or_alloc_mut(p).unwrap().to_vec()))
            .collect();
        (values, grads)
    }
}
