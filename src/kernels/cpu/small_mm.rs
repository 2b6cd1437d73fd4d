//! Matrix products too small or too narrow for gemm. The `gemm` crate packs both operands and
//! sets up per-thread buffers on every call; for the per-row attention of a small model
//! (32 × 32 × 8 products) that set-up took ten times the arithmetic, and on narrow products
//! (16 to 256 columns, inner dimension up to 256) its single-threaded rate is below these
//! loops'. Here the destination is cut into register tiles of 4 rows × 16 columns or 8 × 8;
//! each tile accumulates `lhs[i, p] · rhs row p` over p, vectorized along the row; a right
//! operand stored column by column is first copied row by row. Compiled twice: with AVX2 +
//! FMA, picked at run time, and for the baseline target.

use crate::tensor::Real;

/// Products of at most this many multiply-adds take the direct loops whatever their shape
/// (gemm's set-up is paid back above it)...
const MAX_DIRECT_MACS: usize = 32 * 32 * 32;

/// ... and so do larger ones on one thread whose destination and inner dimension are at most
/// this: the direct loops measured 1.2–1.7× gemm's single-threaded rate on such shapes (edge
/// projections of 256 rows, per-head attention products), and below it from 512 columns.
const MAX_DIRECT_SIDE: usize = 256;

/// Whether an `m × n × k` product into rows of stride 1 (`dst_cs == 1`) takes
/// [`mm_direct`] rather than gemm; `serial`: the caller asked for one thread.
pub(super) fn takes_direct((m, n, k): (usize, usize, usize), dst_cs: usize, serial: bool) -> bool {
    // narrower destinations than a tile waste most of each tile
    dst_cs == 1
        && n >= TILE_COLS
        && (m * n * k <= MAX_DIRECT_MACS
            || (serial && n <= MAX_DIRECT_SIDE && k <= MAX_DIRECT_SIDE))
}

/// `dst (m×n) = [dst +] beta · lhs (m×k) · rhs (k×n)`, strides as (row, column); the
/// destination's rows must be contiguous (column stride 1).
///
/// Safety: every pointer must address its whole matrix under the given strides, and `dst` must
/// not alias `lhs` or `rhs`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn mm_direct<E: Real>(
    (m, n, k): (usize, usize, usize),
    dst: *mut E,
    dst_rs: usize,
    accumulate: bool,
    lhs: *const E,
    lhs_strides: (usize, usize),
    rhs: *const E,
    (rhs_rs, rhs_cs): (usize, usize),
    beta: E,
) {
    // SAFETY: the caller upholds this function's contract (its doc)
    unsafe {
        #[cfg(target_arch = "x86_64")]
        let avx2 = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
        #[cfg(not(target_arch = "x86_64"))]
        let avx2 = false;
        // the right operand with contiguous rows: as given, or copied
        let packed: Vec<E>;
        let (rhs, rhs_rs) = if rhs_cs == 1 || n == 1 {
            (rhs, rhs_rs)
        } else {
            packed = pack_rows(k, n, rhs, (rhs_rs, rhs_cs), avx2);
            (packed.as_ptr(), n)
        };
        let args = Args {
            m,
            n,
            k,
            dst,
            dst_rs,
            accumulate,
            lhs,
            lhs_strides,
            rhs,
            rhs_rs,
            beta,
        };
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            return rows_avx2(args);
        }
        rows::<E, false>(args)
    }
}

/// A `k × n` matrix under the given strides, copied into contiguous rows (read column by
/// column: the operands copied here are stored column-major). f32 columns stored contiguously,
/// in whole blocks of 8 × 8, are transposed in registers (AVX2), eight elements per load and
/// store: element by element, the copy took a fifth of the time of the product it fed.
///
/// Safety: `src` addresses the whole matrix under the strides; `avx2`: the CPU has AVX2 and
/// FMA.
unsafe fn pack_rows<E: Real>(
    k: usize,
    n: usize,
    src: *const E,
    (rs, cs): (usize, usize),
    avx2: bool,
) -> Vec<E> {
    // SAFETY: the caller upholds this function's contract (its doc)
    unsafe {
        let mut out = Vec::<E>::with_capacity(k * n);
        let dst = out.as_mut_ptr();
        let blocks = avx2
            && std::any::TypeId::of::<E>() == std::any::TypeId::of::<f32>()
            && rs == 1
            && k.is_multiple_of(8)
            && n.is_multiple_of(8);
        if blocks {
            // Safety: E is f32 (checked above), the caller detected the features.
            #[cfg(target_arch = "x86_64")]
            transpose_f32_avx2(k, n, src as *const f32, cs, dst as *mut f32);
        } else {
            for c in 0..n {
                let col = src.add(c * cs);
                for p in 0..k {
                    dst.add(p * n + c).write(*col.add(p * rs));
                }
            }
        }
        // every one of the k · n elements was written above
        out.set_len(k * n);
        out
    }
}

/// `dst[p · n + c] = src[p + c · cs]` for `p < k`, `c < n`, both multiples of 8: each 8 × 8
/// block is eight loads, the standard unpack / shuffle / lane-permute transposition, and eight
/// stores.
///
/// Safety: the CPU has AVX2; `src` addresses `n` columns of `k` contiguous elements `cs`
/// apart, `dst` has room for `k · n`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn transpose_f32_avx2(k: usize, n: usize, src: *const f32, cs: usize, dst: *mut f32) {
    // SAFETY: the caller upholds this function's contract (its doc)
    unsafe {
        use std::arch::x86_64::*;
        for c0 in (0..n).step_by(8) {
            for p0 in (0..k).step_by(8) {
                let r: [__m256; 8] =
                    std::array::from_fn(|c| _mm256_loadu_ps(src.add((c0 + c) * cs + p0)));
                // row p of the block: element p of each of the eight source columns
                let rows = super::avx2::transpose8(r);
                for (p, row) in rows.iter().enumerate() {
                    _mm256_storeu_ps(dst.add((p0 + p) * n + c0), *row);
                }
            }
        }
    }
}

struct Args<E> {
    m: usize,
    n: usize,
    k: usize,
    dst: *mut E,
    dst_rs: usize,
    accumulate: bool,
    lhs: *const E,
    lhs_strides: (usize, usize),
    rhs: *const E,
    rhs_rs: usize,
    beta: E,
}

#[cfg(target_arch = "x86_64")]
impl<E: Real> Args<E> {
    /// The same product as f32, when `E` is f32.
    fn as_f32(&self) -> Option<Args<f32>> {
        (std::any::TypeId::of::<E>() == std::any::TypeId::of::<f32>()).then(|| Args {
            m: self.m,
            n: self.n,
            k: self.k,
            dst: self.dst as *mut f32,
            dst_rs: self.dst_rs,
            accumulate: self.accumulate,
            lhs: self.lhs as *const f32,
            lhs_strides: self.lhs_strides,
            rhs: self.rhs as *const f32,
            rhs_rs: self.rhs_rs,
            // exact: E is f32
            beta: self.beta.as_f64() as f32,
        })
    }
}

/// [`rows`] compiled for AVX2 and FMA.
///
/// Safety: the CPU has AVX2 and FMA; as [`mm_direct`] for the pointers in `args`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_avx2<E: Real>(args: Args<E>) {
    // SAFETY: the caller upholds this function's contract (its doc)
    unsafe { rows::<E, true>(args) }
}

/// Register tiles (rows, columns): 4 rows × two vectors of eight, or 8 rows × one vector for
/// narrow destinations. Either way eight independent sums: a multiply-add's result is ready
/// four cycles after it issues and two issue per cycle, so fewer chains leave the units idle
/// (4 × 8 tiles ran at half the rate).
const WIDE_TILE: (usize, usize) = (4, 16);
const NARROW_TILE: (usize, usize) = (8, 8);
const TILE_COLS: usize = NARROW_TILE.1;

/// The loops: the destination in panels of 16 columns (then 8), each panel in tiles of rows
/// summed over k in registers, then `dst = [dst +] beta · sum`.
///
/// Safety: as [`mm_direct`] for the pointers in `a`.
#[inline(always)]
unsafe fn rows<E: Real, const FUSED: bool>(a: Args<E>) {
    // SAFETY: the caller upholds this function's contract (its doc)
    unsafe {
        let mut c0 = 0;
        while c0 + WIDE_TILE.1 <= a.n {
            panel::<E, FUSED, { WIDE_TILE.0 }, { WIDE_TILE.1 }, { WIDE_TILE.1 / 8 }>(
                &a,
                c0,
                WIDE_TILE.1,
            );
            c0 += WIDE_TILE.1;
        }
        while c0 < a.n {
            let cols = TILE_COLS.min(a.n - c0);
            panel::<E, FUSED, { NARROW_TILE.0 }, { NARROW_TILE.1 }, { NARROW_TILE.1 / 8 }>(
                &a, c0, cols,
            );
            c0 += TILE_COLS;
        }
    }
}

/// One panel of `cols ≤ C` columns at `c0`, in tiles of R rows; `V = C / 8` (vectors of f32
/// per tile row).
///
/// Safety: as [`mm_direct`]; the panel lies within the destination; `FUSED`: the CPU has AVX2
/// and FMA.
#[inline(always)]
unsafe fn panel<E: Real, const FUSED: bool, const R: usize, const C: usize, const V: usize>(
    a: &Args<E>,
    c0: usize,
    cols: usize,
) {
    const { assert!(C == 8 * V) };
    // SAFETY: the caller upholds this function's contract (its doc)
    unsafe {
        #[cfg(target_arch = "x86_64")]
        let f32_tiles = FUSED.then(|| a.as_f32()).flatten();
        for i0 in (0..a.m).step_by(R) {
            let rows = R.min(a.m - i0);
            if rows == R && cols == C {
                // f32 with AVX2: written with the vector type (the array form below was, in some
                // builds, vectorized by the compiler into shuffles and stack spills at half the
                // rate, depending on unrelated code elsewhere in the crate)
                #[cfg(target_arch = "x86_64")]
                if let Some(a) = &f32_tiles {
                    full_tile_f32::<R, V>(a, i0, c0);
                    continue;
                }
                // constant sizes: the compiler unrolls the tile into registers
                tile::<E, FUSED, R, C>(a, (i0, R), (c0, C));
            } else {
                tile::<E, FUSED, R, C>(a, (i0, rows), (c0, cols));
            }
        }
    }
}

/// A whole f32 tile of R × 8V at `(i0, c0)`: the same sums in the same order as [`tile`]
/// (one multiply-add per product, along k), then `dst = [dst +] beta · sum`, a multiply and
/// an add as there, so both give the same bits.
///
/// Safety: the CPU has AVX2 and FMA; as [`mm_direct`]; the tile lies within the destination.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn full_tile_f32<const R: usize, const V: usize>(a: &Args<f32>, i0: usize, c0: usize) {
    use std::arch::x86_64::*;
    // SAFETY: the caller upholds this function's contract (its doc)
    unsafe {
        let (lrs, lcs) = a.lhs_strides;
        let mut acc = [[_mm256_setzero_ps(); V]; R];
        super::avx2::fma_block(
            &mut acc,
            a.lhs.add(i0 * lrs),
            (lrs, lcs),
            a.rhs.add(c0),
            a.rhs_rs,
            a.k,
        );
        let beta = _mm256_set1_ps(a.beta);
        for (r, sums) in acc.iter().enumerate() {
            let row = a.dst.add((i0 + r) * a.dst_rs + c0);
            for (v, s) in sums.iter().enumerate() {
                let d = row.add(8 * v);
                let before = if a.accumulate {
                    _mm256_loadu_ps(d)
                } else {
                    _mm256_setzero_ps()
                };
                _mm256_storeu_ps(d, _mm256_add_ps(before, _mm256_mul_ps(beta, *s)));
            }
        }
    }
}

/// One tile of at most R × C at `(i0, c0)`. `FUSED`: multiply-adds as one instruction (only
/// where the target has FMA; elsewhere `mul_add` is a library call).
///
/// Safety: as [`mm_direct`]; the tile lies within the destination.
#[inline(always)]
unsafe fn tile<E: Real, const FUSED: bool, const R: usize, const C: usize>(
    a: &Args<E>,
    (i0, rows): (usize, usize),
    (c0, cols): (usize, usize),
) {
    // SAFETY: the caller upholds this function's contract (its doc)
    unsafe {
        let madd = |acc: E, x: E, y: E| {
            if FUSED {
                x.mul_add(y, acc)
            } else {
                acc + x * y
            }
        };
        let (lrs, lcs) = a.lhs_strides;
        // A partial tile still computes all R × C sums (fixed-size loops stay in registers): rows
        // past the last repeat it, columns past the last are zero; only real ones are stored.
        let lhs_row = |r: usize| a.lhs.add((i0 + r.min(rows - 1)) * lrs);
        let lhs_rows: [*const E; R] = std::array::from_fn(lhs_row);
        let mut acc = [[E::zero(); C]; R];
        for p in 0..a.k {
            let src = a.rhs.add(p * a.rhs_rs + c0);
            let rv: [E; C] = if cols == C {
                std::ptr::read_unaligned(src as *const _)
            } else {
                let mut v = [E::zero(); C];
                v.iter_mut()
                    .take(cols)
                    .enumerate()
                    .for_each(|(c, x)| *x = *src.add(c));
                v
            };
            for (acc_row, row) in acc.iter_mut().zip(&lhs_rows) {
                let x = *row.add(p * lcs);
                for (s, &y) in acc_row.iter_mut().zip(&rv) {
                    *s = madd(*s, x, y);
                }
            }
        }
        if cols == C {
            // whole rows of the tile as vectors (element by element, this took longer than the
            // multiply-adds of a k = 8 product)
            for (r, acc_row) in acc.iter().enumerate().take(rows) {
                let d = a.dst.add((i0 + r) * a.dst_rs + c0) as *mut [E; C];
                let mut out: [E; C] = if a.accumulate {
                    std::ptr::read_unaligned(d)
                } else {
                    [E::zero(); C]
                };
                for (o, &s) in out.iter_mut().zip(acc_row) {
                    *o = *o + a.beta * s;
                }
                std::ptr::write_unaligned(d, out);
            }
            return;
        }
        for (r, acc_row) in acc.iter().enumerate().take(rows) {
            let d = std::slice::from_raw_parts_mut(a.dst.add((i0 + r) * a.dst_rs + c0), cols);
            if a.accumulate {
                d.iter_mut()
                    .zip(acc_row)
                    .for_each(|(d, &s)| *d = *d + a.beta * s);
            } else {
                d.iter_mut()
                    .zip(acc_row)
                    .for_each(|(d, &s)| *d = a.beta * s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The product by its definition, in f64.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        (m, n, k): (usize, usize, usize),
        dst: &mut [f64],
        dst_rs: usize,
        accumulate: bool,
        lhs: &[f64],
        (lrs, lcs): (usize, usize),
        rhs: &[f64],
        (rrs, rcs): (usize, usize),
        beta: f64,
    ) {
        for i in 0..m {
            for c in 0..n {
                let sum: f64 = (0..k)
                    .map(|p| lhs[i * lrs + p * lcs] * rhs[p * rrs + c * rcs])
                    .sum();
                let d = &mut dst[i * dst_rs + c];
                *d = if accumulate {
                    *d + beta * sum
                } else {
                    beta * sum
                };
            }
        }
    }

    /// A panel of whole R × C tiles at `c0` in the array form, whatever the CPU.
    ///
    /// Safety: as [`mm_direct`]; `a.m` is a multiple of R and the panel lies within `a`.
    unsafe fn array_panel<const R: usize, const C: usize>(a: &Args<f32>, c0: usize) {
        for i0 in (0..a.m).step_by(R) {
            // SAFETY: the caller upholds this function's contract (its doc)
            unsafe { tile::<f32, true, R, C>(a, (i0, R), (c0, C)) };
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn whole_f32_tiles_in_vectors_give_the_bits_of_the_array_form() {
        if !super::super::avx2::available() {
            return;
        }
        let value = |i: usize| ((i * 7919 % 113) as f32 - 56.0) / 17.0;
        // whole tiles of both kinds (4 × 16, 8 × 8), both left layouts, with and without
        // accumulation
        for &(m, n, k) in &[(8, 32, 5), (16, 24, 33), (4, 16, 1)] {
            for lhs_t in [false, true] {
                for accumulate in [false, true] {
                    let ls = if lhs_t { (1, m) } else { (k, 1) };
                    let lhs: Vec<f32> = (0..m * k).map(value).collect();
                    let rhs: Vec<f32> = (0..k * n).map(|i| value(i + 1000)).collect();
                    let start: Vec<f32> = (0..m * n).map(|i| value(i + 5000)).collect();
                    let (mut vectors, mut arrays) = (start.clone(), start);
                    let args = |dst: &mut Vec<f32>| Args {
                        m,
                        n,
                        k,
                        dst: dst.as_mut_ptr(),
                        dst_rs: n,
                        accumulate,
                        lhs: lhs.as_ptr(),
                        lhs_strides: ls,
                        rhs: rhs.as_ptr(),
                        rhs_rs: n,
                        beta: 0.75,
                    };
                    // Safety: the buffers hold the matrices; the CPU has AVX2 and FMA (checked).
                    unsafe {
                        mm_direct(
                            (m, n, k),
                            vectors.as_mut_ptr(),
                            n,
                            accumulate,
                            lhs.as_ptr(),
                            ls,
                            rhs.as_ptr(),
                            (n, 1),
                            0.75,
                        );
                        let a = args(&mut arrays);
                        let mut c0 = 0;
                        while c0 + WIDE_TILE.1 <= n {
                            array_panel::<{ WIDE_TILE.0 }, { WIDE_TILE.1 }>(&a, c0);
                            c0 += WIDE_TILE.1;
                        }
                        while c0 < n {
                            array_panel::<{ NARROW_TILE.0 }, { NARROW_TILE.1 }>(&a, c0);
                            c0 += NARROW_TILE.1;
                        }
                    }
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&vectors),
                        bits(&arrays),
                        "{m}×{n}×{k} lhsᵀ {lhs_t} acc {accumulate}"
                    );
                }
            }
        }
    }

    #[test]
    fn direct_products_match_the_definition() {
        let value = |i: usize| ((i * 7919 % 113) as f64 - 56.0) / 17.0;
        // shapes around the 4 × 16 and 8 × 8 tiles, both layouts of each operand, with and without
        // accumulation, a destination row stride wider than the row
        for &(m, n, k) in &[
            (1, 1, 1),
            (4, 8, 3),
            (5, 9, 4),
            (32, 32, 8),
            (32, 8, 32),
            (7, 17, 5),
            (19, 24, 6),
            (12, 8, 33),
            (9, 40, 3),
            (8, 16, 16),
            (5, 24, 32),
        ] {
            for lhs_t in [false, true] {
                for rhs_t in [false, true] {
                    for accumulate in [false, true] {
                        let ls = if lhs_t { (1, m) } else { (k, 1) };
                        let rs = if rhs_t { (1, k) } else { (n, 1) };
                        let lhs: Vec<f64> = (0..m * k).map(value).collect();
                        let rhs: Vec<f64> = (0..k * n).map(|i| value(i + 1000)).collect();
                        let dst_rs = n + 3;
                        let start: Vec<f64> = (0..m * dst_rs).map(|i| value(i + 5000)).collect();
                        let (mut got, mut want) = (start.clone(), start.clone());
                        naive(
                            (m, n, k),
                            &mut want,
                            dst_rs,
                            accumulate,
                            &lhs,
                            ls,
                            &rhs,
                            rs,
                            0.5,
                        );
                        let mut got32: Vec<f32> = got.iter().map(|&x| x as f32).collect();
                        let lhs32: Vec<f32> = lhs.iter().map(|&x| x as f32).collect();
                        let rhs32: Vec<f32> = rhs.iter().map(|&x| x as f32).collect();
                        // Safety: the buffers hold the matrices under these strides.
                        unsafe {
                            mm_direct(
                                (m, n, k),
                                got.as_mut_ptr(),
                                dst_rs,
                                accumulate,
                                lhs.as_ptr(),
                                ls,
                                rhs.as_ptr(),
                                rs,
                                0.5,
                            );
                            mm_direct(
                                (m, n, k),
                                got32.as_mut_ptr(),
                                dst_rs,
                                accumulate,
                                lhs32.as_ptr(),
                                ls,
                                rhs32.as_ptr(),
                                rs,
                                0.5f32,
                            );
                        }
                        for (i, ((&g, &g32), &w)) in got.iter().zip(&got32).zip(&want).enumerate() {
                            let what = format!(
                                "{m}×{n}×{k} lhsᵀ {lhs_t} rhsᵀ {rhs_t} acc {accumulate} at {i}"
                            );
                            assert!(
                                (g - w).abs() <= 1e-12 * (1.0 + w.abs()),
                                "f64 {what}: {g} vs {w}"
                            );
                            assert!(
                                (g32 as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()),
                                "f32 {what}: {g32} vs {w}"
                            );
                        }
                    }
                }
            }
        }
    }
}
