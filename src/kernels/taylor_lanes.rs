//! Taylor attention (`w = 1 + s + s²/2`, normalized by `max(Σw, eps)`) for one (problem, head)
//! pair in f32 with AVX2, eight queries per vector.
//!
//! Why: the per-row and per-column attention of a small model is thousands of tiny products
//! (32 × 32 × 8 per pair) with element-wise passes between them; as separate matrix products
//! they ran at a fifth of the machine's multiply-add rate. Here a block of eight queries is
//! held transposed (channel by channel, one lane per query), so every product is a run of
//! broadcast multiply-adds ([`fma_block`]) whose results stay in lanes: one vector of scores
//! per key, weighted, summed and multiplied by the values without leaving the block's scratch.
//!
//! The same arithmetic as `flash_cpu::Problem`'s Taylor path (which remains the general form
//! and the f64 path); taken only when head widths are multiples of eight, with no score bias
//! and no causal times (key padding is supported).

use std::arch::x86_64::*;

use super::avx2::{fma_block, transpose8};

const LANES: usize = 8;

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
    pub eps: f32,
    /// `[nk]`: whether each key is real; `None`: all are.
    pub key_valid: Option<&'a [bool]>,
}

/// Whether heads of `d` query/key and `e` value channels take this kernel.
pub(super) fn applies(d: usize, e: usize) -> bool {
    d % LANES == 0 && e % LANES == 0 && super::avx2::available()
}

/// Buffers one task reuses across pairs.
#[derive(Default)]
pub(super) struct Scratch {
    /// `[d][8]` scaled queries, transposed.
    qt: Vec<f32>,
    /// `[8][d]` scaled query rows (the key gradient's right operand).
    q_rows: Vec<f32>,
    /// `[e][8]` output gradients, transposed.
    gt: Vec<f32>,
    /// `[8][e]` output gradient rows (the value gradient's right operand).
    g_rows: Vec<f32>,
    /// `[e][8]` the forward's outputs, transposed.
    ot: Vec<f32>,
    /// `[nk][8]` one vector per key: the weights of the block's queries.
    w: Vec<f32>,
    /// `[nk][8]` the score gradients.
    dw: Vec<f32>,
    /// `[nk]` 1 for a real key, 0 for padding.
    key_weight: Vec<f32>,
}

impl Scratch {
    fn fit(&mut self, pair: &Pair) {
        let fit = |v: &mut Vec<f32>, len: usize| {
            if v.len() < len {
                v.resize(len, 0.0);
            }
        };
        fit(&mut self.qt, pair.d * LANES);
        fit(&mut self.q_rows, pair.d * LANES);
        fit(&mut self.gt, pair.e * LANES);
        fit(&mut self.g_rows, pair.e * LANES);
        fit(&mut self.ot, pair.e * LANES);
        fit(&mut self.w, pair.nk * LANES);
        fit(&mut self.dw, pair.nk * LANES);
        if let Some(valid) = pair.key_valid {
            self.key_weight.clear();
            self.key_weight
                .extend(valid.iter().map(|&v| if v { 1.0 } else { 0.0 }));
        }
    }
}

/// Rows `i0 .. i0 + m` (`m ≤ 8`) of a matrix with rows `row` apart, `width` (a multiple of 8)
/// channels, times `scale`: into `rows` (`[8][width]`, rows past `m` zero) and, transposed,
/// into `cols` (`[width][8]`, lanes past `m` zero).
///
/// Safety: AVX2; `src` addresses the m rows; `rows` and `cols` hold `8 · width`.
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
    let scale = _mm256_set1_ps(scale);
    let rows = rows.map(|r| r.as_mut_ptr());
    for c0 in (0..width).step_by(LANES) {
        let block: [__m256; LANES] = std::array::from_fn(|l| {
            if l < m {
                _mm256_mul_ps(scale, _mm256_loadu_ps(src.add((i0 + l) * row + c0)))
            } else {
                _mm256_setzero_ps()
            }
        });
        if let Some(rows) = rows {
            for (l, x) in block.iter().enumerate() {
                _mm256_storeu_ps(rows.add(l * width + c0), *x);
            }
        }
        for (t, x) in transpose8(block).iter().enumerate() {
            _mm256_storeu_ps(cols.as_mut_ptr().add((c0 + t) * LANES), *x);
        }
    }
}

/// `out[j] = Σ_c a[j · a_row + c] · xt[c]` for `j < n`: one vector (eight lanes) per row of
/// `a`, from `w` transposed channels `xt` (`[w][8]`).
///
/// Safety: AVX2; `a` addresses n rows of w; `xt` holds `8 · w`, `out` `8 · n`.
#[target_feature(enable = "avx2,fma")]
unsafe fn row_vectors(
    a: *const f32,
    a_row: usize,
    n: usize,
    w: usize,
    xt: &[f32],
    out: &mut [f32],
) {
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn group<const G: usize>(
        a: *const f32,
        a_row: usize,
        w: usize,
        xt: &[f32],
        out: *mut f32,
    ) {
        let mut acc = [_mm256_setzero_ps(); G];
        fma_block(&mut acc, a, (a_row, 1), xt.as_ptr(), LANES, w);
        for (t, x) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.add(t * LANES), *x);
        }
    }
    let mut j = 0;
    while j + 8 <= n {
        group::<8>(
            a.add(j * a_row),
            a_row,
            w,
            xt,
            out.as_mut_ptr().add(j * LANES),
        );
        j += 8;
    }
    while j + 4 <= n {
        group::<4>(
            a.add(j * a_row),
            a_row,
            w,
            xt,
            out.as_mut_ptr().add(j * LANES),
        );
        j += 4;
    }
    while j < n {
        group::<1>(
            a.add(j * a_row),
            a_row,
            w,
            xt,
            out.as_mut_ptr().add(j * LANES),
        );
        j += 1;
    }
}

/// `Σ_j a[j · a_row + c0 + t] · wv[j]` for the eight channels `t < 8` at `c0`, over `j < n`:
/// the block's queries' sums as eight vectors, one per channel.
///
/// Safety: AVX2; `a` addresses n rows reaching channel `c0 + 7`; `wv` holds `8 · n`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn channel_vectors(
    a: *const f32,
    a_row: usize,
    c0: usize,
    n: usize,
    wv: &[f32],
) -> [__m256; LANES] {
    let mut acc = [_mm256_setzero_ps(); LANES];
    fma_block(&mut acc, a.add(c0), (1, a_row), wv.as_ptr(), LANES, n);
    acc
}

/// `dst[j · dst_row + c] += Σ_l wv[j][l] · rows[l][c]` for `j < n`, `c < width` (a multiple
/// of 8): a rank-8 update of n rows by the block's eight lanes.
///
/// Safety: AVX2; `dst` addresses n rows of width and aliases neither input; `wv` holds
/// `8 · n`, `rows` `8 · width`.
#[target_feature(enable = "avx2,fma")]
unsafe fn update_rows(
    dst: *mut f32,
    dst_row: usize,
    n: usize,
    width: usize,
    wv: &[f32],
    rows: &[f32],
) {
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn group<const G: usize>(
        dst: *mut f32,
        dst_row: usize,
        width: usize,
        wv: *const f32,
        rows: &[f32],
        c0: usize,
    ) {
        let mut acc: [__m256; G] =
            std::array::from_fn(|t| _mm256_loadu_ps(dst.add(t * dst_row + c0)));
        fma_block(
            &mut acc,
            wv,
            (LANES, 1),
            rows.as_ptr().add(c0),
            width,
            LANES,
        );
        for (t, x) in acc.iter().enumerate() {
            _mm256_storeu_ps(dst.add(t * dst_row + c0), *x);
        }
    }
    for c0 in (0..width).step_by(LANES) {
        let mut j = 0;
        while j + 8 <= n {
            group::<8>(
                dst.add(j * dst_row),
                dst_row,
                width,
                wv.as_ptr().add(j * LANES),
                rows,
                c0,
            );
            j += 8;
        }
        while j < n {
            group::<1>(
                dst.add(j * dst_row),
                dst_row,
                width,
                wv.as_ptr().add(j * LANES),
                rows,
                c0,
            );
            j += 1;
        }
    }
}

/// `1 / max(z, eps)`, or 0 where that is not positive (no visible key and eps = 0).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn inverse_clamped(z: __m256, eps: f32) -> __m256 {
    let zc = _mm256_max_ps(z, _mm256_set1_ps(eps));
    let positive = _mm256_cmp_ps::<_CMP_GT_OQ>(zc, _mm256_setzero_ps());
    _mm256_and_ps(_mm256_div_ps(_mm256_set1_ps(1.0), zc), positive)
}

/// The pair's output rows (`out + i · out_row`, `e` channels) and per-query sums Σw (`stat`).
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
    let (nk, d, e) = (pair.nk, pair.d, pair.e);
    scr.fit(pair);
    let (one, half) = (_mm256_set1_ps(1.0), _mm256_set1_ps(0.5));
    for i0 in (0..pair.nq).step_by(LANES) {
        let m = LANES.min(pair.nq - i0);
        load_block(
            pair.q,
            pair.q_row,
            (i0, m),
            d,
            pair.scale,
            None,
            &mut scr.qt,
        );
        // one vector of scores per key, turned into weights and summed per query
        row_vectors(pair.k, pair.k_row, nk, d, &scr.qt, &mut scr.w);
        let mut z = _mm256_setzero_ps();
        for j in 0..nk {
            let at = scr.w.as_mut_ptr().add(j * LANES);
            let s = _mm256_loadu_ps(at);
            let mut w = _mm256_fmadd_ps(_mm256_fmadd_ps(s, half, one), s, one);
            if pair.key_valid.is_some() {
                w = _mm256_mul_ps(w, _mm256_set1_ps(scr.key_weight[j]));
            }
            z = _mm256_add_ps(z, w);
            _mm256_storeu_ps(at, w);
        }
        let inv = inverse_clamped(z, pair.eps);
        for c0 in (0..e).step_by(LANES) {
            let mut acc = channel_vectors(pair.v, pair.v_row, c0, nk, &scr.w);
            for x in acc.iter_mut() {
                *x = _mm256_mul_ps(*x, inv);
            }
            for (l, row) in transpose8(acc).iter().enumerate().take(m) {
                _mm256_storeu_ps(out.add((i0 + l) * out_row + c0), *row);
            }
        }
        let mut sums = [0f32; LANES];
        _mm256_storeu_ps(sums.as_mut_ptr(), z);
        stat[i0..i0 + m].copy_from_slice(&sums[..m]);
    }
}

/// Gradients of one pair, added into `dq`, `dk`, `dv` (laid out as q, k, v), from the output
/// gradient `g` and the forward's output `o` (both rows of e, `o_row` apart) and sums `stat`.
///
/// Safety: as [`forward`]; `dq`, `dk`, `dv` address the pair's rows and are written by this
/// call alone.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn backward(
    pair: &Pair,
    (o, g, o_row): (*const f32, *const f32, usize),
    stat: &[f32],
    (dq, dk, dv): (*mut f32, *mut f32, *mut f32),
    scr: &mut Scratch,
) {
    let (nk, d, e) = (pair.nk, pair.d, pair.e);
    scr.fit(pair);
    let (one, half) = (_mm256_set1_ps(1.0), _mm256_set1_ps(0.5));
    let scale = _mm256_set1_ps(pair.scale);
    for i0 in (0..pair.nq).step_by(LANES) {
        let m = LANES.min(pair.nq - i0);
        load_block(
            pair.q,
            pair.q_row,
            (i0, m),
            d,
            pair.scale,
            Some(&mut scr.q_rows),
            &mut scr.qt,
        );
        load_block(
            g,
            o_row,
            (i0, m),
            e,
            1.0,
            Some(&mut scr.g_rows),
            &mut scr.gt,
        );
        load_block(o, o_row, (i0, m), e, 1.0, None, &mut scr.ot);
        // per query: 1 / max(Σw, eps), and dO·O where the clamp passes the gradient
        let mut z = [1f32; LANES];
        z[..m].copy_from_slice(&stat[i0..i0 + m]);
        let z = _mm256_loadu_ps(z.as_ptr());
        let inv = inverse_clamped(z, pair.eps);
        let mut through = _mm256_setzero_ps();
        for c in 0..e {
            let at = c * LANES;
            through = _mm256_fmadd_ps(
                _mm256_loadu_ps(scr.gt.as_ptr().add(at)),
                _mm256_loadu_ps(scr.ot.as_ptr().add(at)),
                through,
            );
        }
        let passes = _mm256_cmp_ps::<_CMP_GE_OQ>(z, _mm256_set1_ps(pair.eps));
        let through = _mm256_and_ps(through, passes);
        // scores (recomputed) and dO · vᵀ, one vector per key; then weights and dS over them
        row_vectors(pair.k, pair.k_row, nk, d, &scr.qt, &mut scr.w);
        row_vectors(pair.v, pair.v_row, nk, e, &scr.gt, &mut scr.dw);
        for j in 0..nk {
            let (wp, dwp) = (
                scr.w.as_mut_ptr().add(j * LANES),
                scr.dw.as_mut_ptr().add(j * LANES),
            );
            let s = _mm256_loadu_ps(wp);
            let mut w = _mm256_mul_ps(_mm256_fmadd_ps(_mm256_fmadd_ps(s, half, one), s, one), inv);
            let mut ds = _mm256_mul_ps(
                _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(dwp), through), inv),
                _mm256_add_ps(one, s),
            );
            if pair.key_valid.is_some() {
                let kw = _mm256_set1_ps(scr.key_weight[j]);
                w = _mm256_mul_ps(w, kw);
                ds = _mm256_mul_ps(ds, kw);
            }
            _mm256_storeu_ps(wp, w);
            _mm256_storeu_ps(dwp, ds);
        }
        // dv += Wᵀ · dO; dk += dSᵀ · (scale · q) (padded lanes have zero rows)
        update_rows(dv, pair.v_row, nk, e, &scr.w, &scr.g_rows);
        update_rows(dk, pair.k_row, nk, d, &scr.dw, &scr.q_rows);
        // dq += scale · dS · k, one vector per channel, transposed back into rows
        for c0 in (0..d).step_by(LANES) {
            let mut acc = channel_vectors(pair.k, pair.k_row, c0, nk, &scr.dw);
            for x in acc.iter_mut() {
                *x = _mm256_mul_ps(*x, scale);
            }
            for (l, row) in transpose8(acc).iter().enumerate().take(m) {
                let at = dq.add((i0 + l) * pair.q_row + c0);
                _mm256_storeu_ps(at, _mm256_add_ps(_mm256_loadu_ps(at), *row));
            }
        }
    }
}
