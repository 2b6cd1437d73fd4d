//! Attention for one (problem, head) pair in f32 with AVX2, sixteen queries at a time in two
//! vectors: Taylor weights (`w = 1 + s + s²/2`, normalized by `max(Σw, eps)`) or softmax, with
//! an optional additive score bias and its gradient.
//!
//! Why: the per-row and per-column attention of a small model is thousands of tiny products
//! (32 × 32 × 8 per pair) with element-wise passes between them; as separate matrix products
//! they ran at a fifth of the machine's multiply-add rate. Here a block of sixteen queries is
//! held transposed (channel by channel, one lane per query), so every product is a run of
//! broadcast multiply-adds ([`fma_block`]) whose results stay in lanes: two vectors of scores
//! per key, weighted, summed and multiplied by the values without leaving the block's scratch.
//! A block holds all of a pair's keys at once, so softmax needs no running maximum: the
//! block's scores are formed, their maximum taken, then exponentiated in one pass.
//!
//! The same arithmetic as `flash::Problem`'s general path (which remains the general form
//! and the f64 path); taken only when head widths are multiples of eight, with no causal times
//! and no per-pair visibility (key padding is supported).

use std::arch::x86_64::*;

use super::avx2::{fma_block, transpose8};

/// Elements per vector.
const LANES: usize = 8;
/// Vectors per block of queries, and the queries of a block.
const HALVES: usize = 2;
const BLOCK: usize = LANES * HALVES;
/// Channels per group of the column-side products (eight sums with two vectors each).
const CHANNELS: usize = 4;

/// One (problem, head) pair's operands: row `r` of q starts at `q + r · q_row`, and so on.
pub(super) struct Pair<'a> {
    pub q: *const f32,
    pub q_row: usize,
    pub k: *const f32,
    pub k_row: usize,
    pub v: *const f32,
    pub v_row: usize,
    pub nq: usize,
    pub nk: usize,
    pub d: usize,
    pub e: usize,
    pub scale: f32,
    pub weights: Weights,
    /// The additive score bias of the pair, `[nq][nk]` (rows `nk` apart); `None`: none.
    pub bias: Option<*const f32>,
    /// `[nk]`: whether each key is real; `None`: all are.
    pub key_valid: Option<&'a [bool]>,
}

/// How a block's scores become weights.
#[derive(Clone, Copy, Debug)]
pub(super) enum Weights {
    /// `1 + s + s²/2`, normalized by `max(Σw, eps)`.
    Taylor { eps: f32 },
    /// `exp(s − max)`, normalized by their sum.
    Softmax,
}

/// Whether heads of `d` query/key and `e` value channels take this kernel.
pub(super) fn applies(d: usize, e: usize) -> bool {
    d > 0 && e > 0 && d.is_multiple_of(LANES) && e.is_multiple_of(LANES) && super::avx2::available()
}

/// Buffers one task reuses across pairs.
#[derive(Default)]
pub(super) struct Scratch {
    /// `[d][16]` the block's scaled queries, transposed.
    qt: Vec<f32>,
    /// `[16][d]` its scaled query rows (the key gradient's right operand).
    q_rows: Vec<f32>,
    /// `[e][16]` its output gradients, transposed.
    gt: Vec<f32>,
    /// `[16][e]` its output gradient rows (the value gradient's right operand).
    g_rows: Vec<f32>,
    /// `[max(d, e)][16]` per-channel sums: the forward's outputs, the query gradients.
    ct: Vec<f32>,
    /// `[nk][16]` per key: the weights of the block's queries.
    w: Vec<f32>,
    /// `[nk][16]` the score gradients.
    dw: Vec<f32>,
    /// `[nk]` 1 for a real key, 0 for padding.
    key_weight: Vec<f32>,
    /// `[nk][d]` and `[nk][e]`: the pair's keys and values, contiguous.
    k: Vec<f32>,
    v: Vec<f32>,
    /// `[nk][d]` and `[nk][e]`: their gradients, summed over the query blocks.
    dk: Vec<f32>,
    dv: Vec<f32>,
}

impl Scratch {
    /// Sizes the buffers for `pair`; its keys and values as the products read them.
    ///
    /// Safety: AVX2; the pair's pointers address its rows.
    unsafe fn fit(&mut self, pair: &Pair) -> KeysValues {
        // SAFETY: the caller upholds this function's contract (its doc)
        unsafe {
            let fit = |v: &mut Vec<f32>, len: usize| {
                if v.len() < len {
                    v.resize(len, 0.0);
                }
            };
            fit(&mut self.qt, pair.d * BLOCK);
            fit(&mut self.q_rows, pair.d * BLOCK);
            fit(&mut self.gt, pair.e * BLOCK);
            fit(&mut self.g_rows, pair.e * BLOCK);
            fit(&mut self.ct, pair.d.max(pair.e) * BLOCK);
            fit(&mut self.w, pair.nk * BLOCK);
            fit(&mut self.dw, pair.nk * BLOCK);
            if let Some(valid) = pair.key_valid {
                self.key_weight.clear();
                self.key_weight
                    .extend(valid.iter().map(|&v| if v { 1.0 } else { 0.0 }));
            }
            if pair.k_row < PACK_STRIDE && pair.v_row < PACK_STRIDE {
                return KeysValues {
                    packed: false,
                    k: (pair.k, pair.k_row),
                    v: (pair.v, pair.v_row),
                };
            }
            pack(pair.k, pair.k_row, pair.nk, pair.d, &mut self.k);
            pack(pair.v, pair.v_row, pair.nk, pair.e, &mut self.v);
            KeysValues {
                packed: true,
                k: (self.k.as_ptr(), pair.d),
                v: (self.v.as_ptr(), pair.e),
            }
        }
    }
}

/// Rows this many elements apart (or more) are copied contiguously first. Rows of a wide edge
/// tensor lie a multiple of 1 KiB apart (16 heads × 16 channels): a pair's 128 rows then fall
/// into 4 of the L1 cache's 64 sets, evict one another, and every query block read them again
/// from L2 (the copy made the README shape's products 10–20 % faster). Closer rows are read in
/// place: for 32 × 32 × 8 pairs the copy cost more than it saved.
const PACK_STRIDE: usize = 128;

/// A pair's keys and values as (start, row stride): in place, or copies in the scratch.
struct KeysValues {
    packed: bool,
    k: (*const f32, usize),
    v: (*const f32, usize),
}

/// `n` rows of `width` (a multiple of 8) elements, `row` apart, into `dst` contiguously.
///
/// Safety: AVX2; `src` addresses the n rows.
#[target_feature(enable = "avx2,fma")]
unsafe fn pack(src: *const f32, row: usize, n: usize, width: usize, dst: &mut Vec<f32>) {
    // SAFETY: the caller upholds this function's contract (its doc)
    unsafe {
        dst.clear();
        dst.reserve(n * width);
        let out = dst.as_mut_ptr();
        for j in 0..n {
            for c in (0..width).step_by(LANES) {
                _mm256_storeu_ps(
                    out.add(j * width + c),
                    _mm256_loadu_ps(src.add(j * row + c)),
                );
            }
        }
        dst.set_len(n * width);
    }
}

/// `dst[j · row + c] += src[j · width + c]` for `j < n`, `c < width` (a multiple of 8).
///
/// Safety: AVX2; `dst` addresses the n rows.
#[target_feature(enable = "avx2,fma")]
unsafe fn unpack_add(src: &[f32], width: usize, dst: *mut f32, row: usize, n: usize) {
    // SAFETY: the caller upholds this function's contract (its doc)
    unsafe {
        for j in 0..n {
            for c in (0..width).step_by(LANES) {
                let (d, s) = (dst.add(j * row + c), src.as_ptr().add(j * width + c));
                _mm256_storeu_ps(d, _mm256_add_ps(_mm256_loadu_ps(d), _mm256_loadu_ps(s)));
            }
        }
    }
}

/// Rows `i0 .. i0 + m` (`m ≤ 16`) of a matrix with rows `row` apart, `width` (a multiple of
/// 8) channels, times `scale`: into `rows` (`[16][width]`, rows past `m` zero) and,
/// transposed, into `cols` (`[width][16]`, lanes past `m` zero).
///
/// Safety: AVX2; `src` addresses the m rows; `rows` and `cols` hold `16 · width`.
#[target_feature(enable = "avx2,fma")]
unsafe fn load_block(
    src: *const f32,
    row: usize,
    (i0, m): (usize, usize),
    width: usize,
    scale: f32,
    rows: Option<&mut [f32]>,
    cols: &mut [f32],
) {
    // SAFETY: the caller upholds this function's contract (its doc)
    unsafe {
        let scale = _mm256_set1_ps(scale);
        let rows = rows.map(|r| r.as_mut_ptr());
        for half in 0..HALVES {
            let l0 = half * LANES;
            for c0 in (0..width).step_by(LANES) {
                let block: [__m256; LANES] = std::array::from_fn(|l| {
                    if l0 + l < m {
                        _mm256_mul_ps(scale, _mm256_loadu_ps(src.add((i0 + l0 + l) * row + c0)))
                    } else {
                        _mm256_setzero_ps()
                    }
                });
                if let Some(rows) = rows {
                    for (l, x) in block.iter().enumerate() {
                        _mm256_storeu_ps(rows.add((l0 + l) * width + c0), *x);
                    }
                }
                for (t, x) in transpose8(block).iter().enumerate() {
                    _mm256_storeu_ps(cols.as_mut_ptr().add((c0 + t) * BLOCK + l0), *x);
                }
            }
        }
    }
}

/// Eight channels at `c0` of the per-channel sums `ct` (`[width][16]`, one lane per query),
/// times `factor` per query, transposed back into rows: `dst[(i0 + l) · row + c0 ..]` is set
/// to them (`add`: added to) for the block's first `m` queries.
///
/// Safety: AVX2; `dst` addresses the m rows up to channel `c0 + 7`.
#[target_feature(enable = "avx2,fma")]
unsafe fn store_block(
    ct: &[f32],
    c0: usize,
    factor: [__m256; HALVES],
    (dst, row, add): (*mut f32, usize, bool),
    (i0, m): (usize, usize),
) {
    // SAFETY: the caller upholds this function's contract (its doc)
    unsafe {
        for (half, f) in factor.iter().enumerate() {
            let l0 = half * LANES;
            let block: [__m256; LANES] = std::array::from_fn(|t| {
                _mm256_mul_ps(*f, _mm256_loadu_ps(ct.as_ptr().add((c0 + t) * BLOCK + l0)))
            });
            for (l, x) in transpose8(block).iter().enumerate() {
                if l0 + l >= m {
                    break;
                }
                let at = dst.add((i0 + l0 + l) * row + c0);
                let x = if add {
                    _mm256_add_ps(_mm256_loadu_ps(at), *x)
                } else {
                    *x
                };
                _mm256_storeu_ps(at, x);
            }
        }
    }
}

/// `out[j] = Σ_c a[j · a_row + c] · xt[c]` for `j < n`: sixteen lanes (two vectors) per row of
/// `a`, from `w` transposed channels `xt` (`[w][16]`).
///
/// Safety: AVX2; `a` addresses n rows of w; `xt` holds `16 · w`, `out` `16 · n`.
#[target_feature(enable = "avx2,fma")]
unsafe fn row_vectors(
    (a, a_row): (*const f32, usize),
    n: usize,
    w: usize,
    xt: &[f32],
    out: &mut [f32],
) {
    // SAFETY: the caller upholds this function's contract (its doc)
    unsafe {
        /// Rows `j .. j + G` of `a`.
        ///
        /// Safety: as the enclosing function's, for those rows.
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn group<const G: usize>(
            a: (*const f32, usize),
            w: usize,
            xt: &[f32],
            out: *mut f32,
            j: usize,
        ) {
            // SAFETY: the caller upholds this function's contract (its doc)
            unsafe {
                let mut acc = [[_mm256_setzero_ps(); HALVES]; G];
                fma_block(&mut acc, a.0.add(j * a.1), (a.1, 1), xt.as_ptr(), BLOCK, w);
                for (t, sums) in acc.iter().enumerate() {
                    for (v, x) in sums.iter().enumerate() {
                        _mm256_storeu_ps(out.add((j + t) * BLOCK + v * LANES), *x);
                    }
                }
            }
        }
        let (a, out) = ((a, a_row), out.as_mut_ptr());
        let mut j = 0;
        while j + 4 <= n {
            group::<4>(a, w, xt, out, j);
            j += 4;
        }
        while j < n {
            group::<1>(a, w, xt, out, j);
            j += 1;
        }
    }
}

/// `ct[c] = Σ_j a[j · a_row + c] · wv[j]` for every channel `c < width` (a multiple of 4),
/// over `j < n`: the block's per-query sums, one lane per query.
///
/// Safety: AVX2; `a` addresses n rows of width; `wv` holds `16 · n`, `ct` `16 · width`.
#[target_feature(enable = "avx2,fma")]
unsafe fn channel_vectors(
    (a, a_row): (*const f32, usize),
    n: usize,
    width: usize,
    wv: &[f32],
    ct: &mut [f32],
) {
    // SAFETY: the caller upholds this function's contract (its doc)
    unsafe {
        for c0 in (0..width).step_by(CHANNELS) {
            let mut acc = [[_mm256_setzero_ps(); HALVES]; CHANNELS];
            fma_block(&mut acc, a.add(c0), (1, a_row), wv.as_ptr(), BLOCK, n);
            for (t, sums) in acc.iter().enumerate() {
                for (v, x) in sums.iter().enumerate() {
                    _mm256_storeu_ps(ct.as_mut_ptr().add((c0 + t) * BLOCK + v * LANES), *x);
                }
            }
        }
    }
}

/// `dst[j · dst_row + c] += Σ_l wv[j][l] · rows[l][c]` for `j < n`, `c < width` (a multiple
/// of 8), `l < 16`: a rank-16 update of n rows by the block's lanes.
///
/// Safety: AVX2; `dst` addresses n rows of width and aliases neither input; `wv` holds
/// `16 · n`, `rows` `16 · width`.
#[target_feature(enable = "avx2,fma")]
unsafe fn update_rows(
    (dst, dst_row): (*mut f32, usize),
    n: usize,
    width: usize,
    wv: &[f32],
    rows: &[f32],
) {
    // SAFETY: the caller upholds this function's contract (its doc)
    unsafe {
        /// Rows `j .. j + G` of dst, V vectors of channels at `c0`.
        ///
        /// Safety: as the enclosing function's, for those rows and channels.
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn group<const G: usize, const V: usize>(
            (dst, dst_row): (*mut f32, usize),
            width: usize,
            wv: &[f32],
            rows: &[f32],
            (j, c0): (usize, usize),
        ) {
            // SAFETY: the caller upholds this function's contract (its doc)
            unsafe {
                let dst = dst.add(j * dst_row + c0);
                let mut acc: [[__m256; V]; G] = std::array::from_fn(|t| {
                    std::array::from_fn(|v| _mm256_loadu_ps(dst.add(t * dst_row + v * LANES)))
                });
                let (wv, rows) = (wv.as_ptr().add(j * BLOCK), rows.as_ptr().add(c0));
                fma_block(&mut acc, wv, (BLOCK, 1), rows, width, BLOCK);
                for (t, sums) in acc.iter().enumerate() {
                    for (v, x) in sums.iter().enumerate() {
                        _mm256_storeu_ps(dst.add(t * dst_row + v * LANES), *x);
                    }
                }
            }
        }
        let dst = (dst, dst_row);
        let mut c0 = 0;
        while c0 + 2 * LANES <= width {
            let mut j = 0;
            while j + 4 <= n {
                group::<4, 2>(dst, width, wv, rows, (j, c0));
                j += 4;
            }
            while j < n {
                group::<1, 2>(dst, width, wv, rows, (j, c0));
                j += 1;
            }
            c0 += 2 * LANES;
        }
        if c0 < width {
            let mut j = 0;
            while j + 8 <= n {
                group::<8, 1>(dst, width, wv, rows, (j, c0));
                j += 8;
            }
            while j < n {
                group::<1, 1>(dst, width, wv, rows, (j, c0));
                j += 1;
            }
        }
    }
}

/// The Taylor weight `1 + s + s²/2` of each score.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn taylor_weight(s: __m256) -> __m256 {
    let one = _mm256_set1_ps(1.0);
    _mm256_fmadd_ps(_mm256_fmadd_ps(s, _mm256_set1_ps(0.5), one), s, one)
}

/// `1 / max(z, eps)`, or 0 where that is not positive (no visible key and eps = 0).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn inverse_clamped(z: __m256, eps: f32) -> __m256 {
    let zc = _mm256_max_ps(z, _mm256_set1_ps(eps));
    let positive = _mm256_cmp_ps::<_CMP_GT_OQ>(zc, _mm256_setzero_ps());
    _mm256_and_ps(_mm256_div_ps(_mm256_set1_ps(1.0), zc), positive)
}

/// `w[j][l] += bias[(i0 + l) · nk + j]` for the block's first `m` queries (lanes) and every key
/// `j < nk`: the bias rows transposed into lanes, eight by eight in registers.
///
/// Safety: AVX2; `bias` addresses rows `i0 .. i0 + m` of nk; `w` holds `16 · nk`.
#[target_feature(enable = "avx2,fma")]
unsafe fn add_bias(bias: *const f32, nk: usize, (i0, m): (usize, usize), w: &mut [f32]) {
    // SAFETY: the caller upholds this function's contract (its doc)
    unsafe {
        let whole = nk - nk % LANES;
        let w = w.as_mut_ptr();
        for l0 in (0..m).step_by(LANES) {
            let lanes = LANES.min(m - l0);
            let row = |l: usize| bias.add((i0 + l0 + l) * nk);
            for j0 in (0..whole).step_by(LANES) {
                let rows: [__m256; LANES] = std::array::from_fn(|l| {
                    if l < lanes {
                        _mm256_loadu_ps(row(l).add(j0))
                    } else {
                        _mm256_setzero_ps()
                    }
                });
                // key j0 + t across the eight queries
                for (t, col) in transpose8(rows).iter().enumerate() {
                    let at = w.add((j0 + t) * BLOCK + l0);
                    _mm256_storeu_ps(at, _mm256_add_ps(_mm256_loadu_ps(at), *col));
                }
            }
            for j in whole..nk {
                for l in 0..lanes {
                    *w.add(j * BLOCK + l0 + l) += *row(l).add(j);
                }
            }
        }
    }
}

/// `dbias[(i0 + l) · nk + j] += ds[j][l]` for the block's first `m` queries and every key: the
/// score gradients transposed back into rows, eight by eight in registers.
///
/// Safety: AVX2; `dbias` addresses rows `i0 .. i0 + m` of nk and aliases nothing else read
/// here; `ds` holds `16 · nk`.
#[target_feature(enable = "avx2,fma")]
unsafe fn add_bias_gradient(ds: &[f32], nk: usize, (i0, m): (usize, usize), dbias: *mut f32) {
    // SAFETY: the caller upholds this function's contract (its doc)
    unsafe {
        let whole = nk - nk % LANES;
        let ds = ds.as_ptr();
        for l0 in (0..m).step_by(LANES) {
            let lanes = LANES.min(m - l0);
            let row = |l: usize| dbias.add((i0 + l0 + l) * nk);
            for j0 in (0..whole).step_by(LANES) {
                let keys: [__m256; LANES] =
                    std::array::from_fn(|t| _mm256_loadu_ps(ds.add((j0 + t) * BLOCK + l0)));
                // query l0 + l across the eight keys
                for (l, x) in transpose8(keys).iter().enumerate().take(lanes) {
                    let at = row(l).add(j0);
                    _mm256_storeu_ps(at, _mm256_add_ps(_mm256_loadu_ps(at), *x));
                }
            }
            for j in whole..nk {
                for l in 0..lanes {
                    *row(l).add(j) += *ds.add(j * BLOCK + l0 + l);
                }
            }
        }
    }
}

/// Scores (`[nk][16]` in `w`) to Taylor weights, zero at padded keys; returns Σw per query.
///
/// Safety: AVX2; `w` holds `16 · nk`, `key_weight` nk when `padded`.
#[target_feature(enable = "avx2,fma")]
unsafe fn taylor_weights(w: &mut [f32], nk: usize, key_weight: Option<&[f32]>) -> [__m256; HALVES] {
    // SAFETY: the caller upholds this function's contract (its doc)
    unsafe {
        let mut z = [_mm256_setzero_ps(); HALVES];
        for j in 0..nk {
            for (h, z) in z.iter_mut().enumerate() {
                let at = w.as_mut_ptr().add(j * BLOCK + h * LANES);
                let mut x = taylor_weight(_mm256_loadu_ps(at));
                if let Some(kw) = key_weight {
                    x = _mm256_mul_ps(x, _mm256_set1_ps(kw[j]));
                }
                *z = _mm256_add_ps(*z, x);
                _mm256_storeu_ps(at, x);
            }
        }
        z
    }
}

/// Scores (`[nk][16]` in `w`) to `exp(s − shift)` per query, padded keys hidden (−∞, so 0).
/// `shift`: the query's largest visible score (`None`: computed here, and 0 where no key is
/// visible) or a given one (the backward's log-sum). Returns the shift used.
///
/// A NaN score is not the largest (`max` passes the other operand) but its weight is NaN,
/// which reaches the query's sum and output: a NaN is never dropped.
///
/// Safety: AVX2; `w` holds `16 · nk`, `key_valid` nk.
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_weights(
    w: &mut [f32],
    nk: usize,
    key_valid: Option<&[bool]>,
    shift: Option<[__m256; HALVES]>,
) -> [__m256; HALVES] {
    // SAFETY: the caller upholds this function's contract (its doc)
    unsafe {
        let hidden = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut max = [hidden; HALVES];
        for j in 0..nk {
            let shown = key_valid.is_none_or(|v| v[j]);
            for (h, max) in max.iter_mut().enumerate() {
                let at = w.as_mut_ptr().add(j * BLOCK + h * LANES);
                if shown {
                    *max = _mm256_max_ps(_mm256_loadu_ps(at), *max);
                } else {
                    _mm256_storeu_ps(at, hidden);
                }
            }
        }
        let shift = shift.unwrap_or_else(|| {
            max.map(|m| {
                let none = _mm256_cmp_ps::<_CMP_EQ_OQ>(m, hidden);
                _mm256_blendv_ps(m, _mm256_setzero_ps(), none)
            })
        });
        for j in 0..nk {
            for (h, s) in shift.iter().enumerate() {
                let at = w.as_mut_ptr().add(j * BLOCK + h * LANES);
                _mm256_storeu_ps(at, _mm256_sub_ps(_mm256_loadu_ps(at), *s));
            }
        }
        crate::tensor::fastmath::exp_f32(&mut w[..nk * BLOCK]);
        shift
    }
}

/// Σ_j w[j] per query.
///
/// Safety: AVX2; `w` holds `16 · nk`.
#[target_feature(enable = "avx2,fma")]
unsafe fn lane_sums(w: &[f32], nk: usize) -> [__m256; HALVES] {
    // SAFETY: the caller upholds this function's contract (its doc)
    unsafe {
        let mut z = [_mm256_setzero_ps(); HALVES];
        for j in 0..nk {
            for (h, z) in z.iter_mut().enumerate() {
                *z = _mm256_add_ps(*z, _mm256_loadu_ps(w.as_ptr().add(j * BLOCK + h * LANES)));
            }
        }
        z
    }
}

/// The pair's output rows (`out + i · out_row`, `e` channels) and per-query statistics
/// (`stat`): Σw for Taylor weights, the log of the softmax's sum (−∞ where no key is visible).
///
/// Safety: AVX2 and FMA ([`applies`]); the pair's pointers address its rows; `out` addresses
/// nq rows of e and is written by this call alone; `stat` holds nq.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn forward(
    pair: &Pair,
    out: *mut f32,
    out_row: usize,
    stat: &mut [f32],
    scr: &mut Scratch,
) {
    // SAFETY: the caller upholds this function's contract (its doc)
    unsafe {
        let (nk, d, e) = (pair.nk, pair.d, pair.e);
        let kv = scr.fit(pair);
        for i0 in (0..pair.nq).step_by(BLOCK) {
            let m = BLOCK.min(pair.nq - i0);
            load_block(
                pair.q,
                pair.q_row,
                (i0, m),
                d,
                pair.scale,
                None,
                &mut scr.qt,
            );
            // sixteen scores per key, turned into weights and summed per query
            row_vectors(kv.k, nk, d, &scr.qt, &mut scr.w);
            if let Some(bias) = pair.bias {
                add_bias(bias, nk, (i0, m), &mut scr.w);
            }
            let mut sums = [0f32; BLOCK];
            let inv = match pair.weights {
                Weights::Taylor { eps } => {
                    let key_weight = pair.key_valid.map(|_| &scr.key_weight[..nk]);
                    let z = taylor_weights(&mut scr.w, nk, key_weight);
                    for (h, z) in z.iter().enumerate() {
                        _mm256_storeu_ps(sums.as_mut_ptr().add(h * LANES), *z);
                    }
                    z.map(|z| inverse_clamped(z, eps))
                }
                Weights::Softmax => {
                    let shift = softmax_weights(&mut scr.w, nk, pair.key_valid, None);
                    let z = lane_sums(&scr.w, nk);
                    let (mut zs, mut ms) = ([0f32; BLOCK], [0f32; BLOCK]);
                    for h in 0..HALVES {
                        _mm256_storeu_ps(zs.as_mut_ptr().add(h * LANES), z[h]);
                        _mm256_storeu_ps(ms.as_mut_ptr().add(h * LANES), shift[h]);
                    }
                    // log Σ exp(s): a NaN sum passes through, no visible key gives −∞
                    for ((s, &z), &m) in sums.iter_mut().zip(&zs).zip(&ms) {
                        *s = if z <= 0.0 {
                            f32::NEG_INFINITY
                        } else {
                            m + z.ln()
                        };
                    }
                    z.map(|z| inverse_clamped(z, 0.0))
                }
            };
            channel_vectors(kv.v, nk, e, &scr.w, &mut scr.ct);
            for c0 in (0..e).step_by(LANES) {
                store_block(&scr.ct, c0, inv, (out, out_row, false), (i0, m));
            }
            stat[i0..i0 + m].copy_from_slice(&sums[..m]);
        }
    }
}

/// Gradients of one pair, added into `dq`, `dk`, `dv` (laid out as q, k, v) and, with a bias,
/// `dbias` (`[nq][nk]`, the pair's block), from the output gradient `g` and the forward's
/// output `o` (both rows of e, `o_row` apart) and statistics `stat`.
///
/// Safety: as [`forward`]; `dq`, `dk`, `dv` address the pair's rows and `dbias` its block,
/// each written by this call alone.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn backward(
    pair: &Pair,
    (o, g, o_row): (*const f32, *const f32, usize),
    stat: &[f32],
    (dq, dk, dv): (*mut f32, *mut f32, *mut f32),
    dbias: Option<*mut f32>,
    scr: &mut Scratch,
) {
    // SAFETY: the caller upholds this function's contract (its doc)
    unsafe {
        let (nk, d, e) = (pair.nk, pair.d, pair.e);
        let kv = scr.fit(pair);
        let one = _mm256_set1_ps(1.0);
        // key and value gradients: summed in the scratch when the keys were copied, else in place
        let (dk_at, dv_at) = if kv.packed {
            for (buf, len) in [(&mut scr.dk, nk * d), (&mut scr.dv, nk * e)] {
                buf.clear();
                buf.resize(len, 0.0);
            }
            ((scr.dk.as_mut_ptr(), d), (scr.dv.as_mut_ptr(), e))
        } else {
            ((dk, pair.k_row), (dv, pair.v_row))
        };
        for i0 in (0..pair.nq).step_by(BLOCK) {
            let m = BLOCK.min(pair.nq - i0);
            let block = (i0, m);
            load_block(
                pair.q,
                pair.q_row,
                block,
                d,
                pair.scale,
                Some(&mut scr.q_rows),
                &mut scr.qt,
            );
            load_block(g, o_row, block, e, 1.0, Some(&mut scr.g_rows), &mut scr.gt);
            load_block(o, o_row, block, e, 1.0, None, &mut scr.ct);
            // the forward's statistics; lanes past the block's queries have zero rows
            let mut st = [1f32; BLOCK];
            st[..m].copy_from_slice(&stat[i0..i0 + m]);
            let st: [__m256; HALVES] =
                std::array::from_fn(|h| _mm256_loadu_ps(st.as_ptr().add(h * LANES)));
            // dO·O per query
            let dot: [__m256; HALVES] = std::array::from_fn(|h| {
                let mut sum = _mm256_setzero_ps();
                for c in 0..e {
                    let at = c * BLOCK + h * LANES;
                    sum = _mm256_fmadd_ps(
                        _mm256_loadu_ps(scr.gt.as_ptr().add(at)),
                        _mm256_loadu_ps(scr.ct.as_ptr().add(at)),
                        sum,
                    );
                }
                sum
            });
            // scores (recomputed) and dO · vᵀ, per key; then weights and dS over them
            row_vectors(kv.k, nk, d, &scr.qt, &mut scr.w);
            if let Some(bias) = pair.bias {
                add_bias(bias, nk, block, &mut scr.w);
            }
            row_vectors(kv.v, nk, e, &scr.gt, &mut scr.dw);
            match pair.weights {
                Weights::Taylor { eps } => {
                    // 1 / max(Σw, eps), and dO·O where the clamp passes the gradient
                    let inv = st.map(|z| inverse_clamped(z, eps));
                    let through: [__m256; HALVES] = std::array::from_fn(|h| {
                        let passes = _mm256_cmp_ps::<_CMP_GE_OQ>(st[h], _mm256_set1_ps(eps));
                        _mm256_and_ps(dot[h], passes)
                    });
                    for j in 0..nk {
                        for h in 0..HALVES {
                            let at = j * BLOCK + h * LANES;
                            let (wp, dwp) =
                                (scr.w.as_mut_ptr().add(at), scr.dw.as_mut_ptr().add(at));
                            let s = _mm256_loadu_ps(wp);
                            let mut w = _mm256_mul_ps(taylor_weight(s), inv[h]);
                            let mut ds = _mm256_mul_ps(
                                _mm256_sub_ps(_mm256_loadu_ps(dwp), through[h]),
                                inv[h],
                            );
                            ds = _mm256_mul_ps(ds, _mm256_add_ps(one, s));
                            if pair.key_valid.is_some() {
                                let kw = _mm256_set1_ps(scr.key_weight[j]);
                                w = _mm256_mul_ps(w, kw);
                                ds = _mm256_mul_ps(ds, kw);
                            }
                            _mm256_storeu_ps(wp, w);
                            _mm256_storeu_ps(dwp, ds);
                        }
                    }
                }
                Weights::Softmax => {
                    // w = exp(s − log Σ): the normalized weights; a query with no visible key
                    // (−∞) gets none (+∞ makes every exp 0)
                    let shift = st.map(|l| {
                        let none =
                            _mm256_cmp_ps::<_CMP_EQ_OQ>(l, _mm256_set1_ps(f32::NEG_INFINITY));
                        _mm256_blendv_ps(l, _mm256_set1_ps(f32::INFINITY), none)
                    });
                    softmax_weights(&mut scr.w, nk, pair.key_valid, Some(shift));
                    // dS = w ⊙ (dO·v − dO·O)
                    for j in 0..nk {
                        for (h, dot) in dot.iter().enumerate() {
                            let at = j * BLOCK + h * LANES;
                            let dwp = scr.dw.as_mut_ptr().add(at);
                            let w = _mm256_loadu_ps(scr.w.as_ptr().add(at));
                            let ds = _mm256_mul_ps(w, _mm256_sub_ps(_mm256_loadu_ps(dwp), *dot));
                            _mm256_storeu_ps(dwp, ds);
                        }
                    }
                }
            }
            // dv += Wᵀ · dO; dk += dSᵀ · (scale · q) (padded lanes have zero rows)
            update_rows(dv_at, nk, e, &scr.w, &scr.g_rows);
            update_rows(dk_at, nk, d, &scr.dw, &scr.q_rows);
            // dq += scale · dS · k, per channel, transposed back into rows
            channel_vectors(kv.k, nk, d, &scr.dw, &mut scr.ct);
            let scale = [_mm256_set1_ps(pair.scale); HALVES];
            for c0 in (0..d).step_by(LANES) {
                store_block(&scr.ct, c0, scale, (dq, pair.q_row, true), block);
            }
            // the bias enters the scores as they are: its gradient is dS
            if let Some(dbias) = dbias {
                add_bias_gradient(&scr.dw, nk, block, dbias);
            }
        }
        if kv.packed {
            unpack_add(&scr.dk, d, dk, pair.k_row, nk);
            unpack_add(&scr.dv, e, dv, pair.v_row, nk);
        }
    }
}
