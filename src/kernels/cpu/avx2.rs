//! AVX2 building blocks shared by the hand-vectorized f32 kernels: the 8 × 8 register
//! transposition and a block of broadcast multiply-adds. Every function here must be called
//! only where the CPU has AVX2 and FMA ([`available`]).

use std::arch::x86_64::*;

/// Whether this CPU runs the functions of this module.
pub(super) fn available() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

/// The transpose of eight rows of eight: element `c` of row `r` becomes element `r` of row `c`
/// (the standard unpack / shuffle / lane-permute sequence, all in registers).
///
/// Safety: the CPU has AVX2.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ]
}

/// `acc[t][v] += Σ_{c < w} a[t · a_t + c · a_c] · x[c · x_stride + 8v .. + 8]` for `t < G`,
/// `v < V`: each step loads V vectors of `x` and multiplies them by G broadcast scalars, G · V
/// independent sums (eight keep both multiply-add units busy through their four-cycle
/// latency; two vectors per broadcast halve the loads per multiply-add).
///
/// Safety: the CPU has AVX2 and FMA; `a` addresses every `t · a_t + c · a_c` and `x` every
/// `c · x_stride + 8V − 1` for `t < G`, `c < w`.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn fma_block<const G: usize, const V: usize>(
    acc: &mut [[__m256; V]; G],
    a: *const f32,
    (a_t, a_c): (usize, usize),
    x: *const f32,
    x_stride: usize,
    w: usize,
) {
    // SAFETY: the caller upholds this function's contract (its doc)
    unsafe {
        for c in 0..w {
            let xc: [__m256; V] =
                std::array::from_fn(|v| _mm256_loadu_ps(x.add(c * x_stride + 8 * v)));
            let a = a.add(c * a_c);
            for (t, sums) in acc.iter_mut().enumerate() {
                let b = _mm256_broadcast_ss(&*a.add(t * a_t));
                for (s, x) in sums.iter_mut().zip(&xc) {
                    *s = _mm256_fmadd_ps(b, *x, *s);
                }
            }
        }
    }
}
