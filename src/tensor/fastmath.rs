//! Vectorizable f32 slice math: `exp`, and the standard normal's CDF and density (for GELU).
//!
//! `exp`: `2^n · p(f)` with the integer part by the
//! magic-number rounding trick, a two-part ln 2 reduction and a degree-6 polynomial for
//! `e^r`, `|r| ≤ ln 2 / 2` (relative error below 5e-7). Its domain is x ≤ 88 (every caller
//! passes scores minus their maximum, or −z²: at most 0); larger inputs are taken as 88.
//! Inputs below −87.3 give exactly 0, so masked scores (−∞) vanish as they do with
//! `f32::exp`, and NaN stays NaN (the range clamps let it through). Compiled twice: with AVX2 + FMA,
//! picked at run time, and for the baseline target.

/// `x ← exp(x)` for every element (x ≤ 88; see the module).
pub fn exp_f32(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // Safety: the features were just detected.
            unsafe { exp_avx2(xs) };
            return;
        }
    }
    exp_generic(xs);
}

/// Safety: the CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_avx2(xs: &mut [f32]) {
    exp_generic(xs)
}

#[inline(always)]
fn exp_generic(xs: &mut [f32]) {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer
                                     // ln 2 split in two (Cody–Waite), so that r = x − n·ln 2 keeps its low bits
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    for x in xs.iter_mut() {
        let v = *x;
        let keep = if v < -87.3 { 0.0 } else { 1.0 };
        // the clamps are written so that a NaN falls through them (`f32::max` and `min` would
        // turn it into a bound) and then through every step below: exp(NaN) is NaN
        let v = if v < -87.3 { -87.3 } else { v };
        let v = if v > 88.0 { 88.0 } else { v };
        let m = v * LOG2E + MAGIC;
        let n = m - MAGIC;
        // the rounded integer sits in the low mantissa bits of m: no float→int conversion
        let ni = (m.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
        let r = (v - n * LN2_HI) - n * LN2_LO;
        // e^r on |r| ≤ ln 2 / 2, degree 6
        let p = 1.0
            + r * (1.0
                + r * (0.5
                    + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
        // 2^n in two factors, so that n up to 129 (x up to 89) is representable: above
        // x = 88.72 the product overflows to +∞ as f32::exp does
        let scale = f32::from_bits((ni.wrapping_add(127) as u32) << 23);
        *x = p * scale * keep;
    }
}

/// `erfc(z)` for `z ≥ 0` as `t · exp(−z² + p(t))`, `t = 1 / (1 + z/2)`: the Chebyshev fit of
/// Numerical Recipes (§6.2), relative error below 1.2e-7 for every `z ≥ 0`. Returns the
/// exponent's argument and `t`, so that a caller takes the `exp` of a whole chunk at once.
#[inline(always)]
fn erfc_parts(z: f32) -> (f32, f32) {
    const C: [f32; 10] = [
        -1.265_512_2,
        1.000_023_7,
        0.374_091_96,
        0.096_784_18,
        -0.186_288_06,
        0.278_868_07,
        -1.135_204,
        1.488_515_9,
        -0.822_152_2,
        0.170_872_77,
    ];
    let t = 1.0 / (1.0 + 0.5 * z);
    let mut p = C[9];
    for &c in C[..9].iter().rev() {
        p = p * t + c;
    }
    (p - z * z, t)
}

/// `Φ(x)` into `cdf` and `φ(x)` into `pdf` for every `x`. Φ comes from `erfc` on the side where
/// it is small, so it keeps its relative accuracy in the far left tail.
pub fn normal_cdf_pdf_f32(x: &[f32], cdf: &mut [f32], pdf: Option<&mut [f32]>) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // Safety: the features were just detected.
            unsafe { normal_cdf_pdf_avx2(x, cdf, pdf) };
            return;
        }
    }
    normal_cdf_pdf_generic(x, cdf, pdf);
}

/// Safety: the CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn normal_cdf_pdf_avx2(x: &[f32], cdf: &mut [f32], pdf: Option<&mut [f32]>) {
    normal_cdf_pdf_generic(x, cdf, pdf)
}

#[inline(always)]
fn normal_cdf_pdf_generic(x: &[f32], cdf: &mut [f32], pdf: Option<&mut [f32]>) {
    let z = |v: f32| (v * std::f32::consts::FRAC_1_SQRT_2).abs();
    for (&v, c) in x.iter().zip(cdf.iter_mut()) {
        *c = erfc_parts(z(v)).0;
    }
    exp_generic(cdf);
    for (&v, c) in x.iter().zip(cdf.iter_mut()) {
        let t = erfc_parts(z(v)).1; // recomputed: cheaper than a scratch buffer
        let tail = 0.5 * t * *c; // ½ erfc(|x|/√2) = Φ(−|x|)
        *c = if v < 0.0 { tail } else { 1.0 - tail };
    }
    if let Some(pdf) = pdf {
        for (&v, p) in x.iter().zip(pdf.iter_mut()) {
            *p = -0.5 * v * v;
        }
        exp_generic(pdf);
        let inv_sqrt_2pi = (1.0 / (2.0 * std::f64::consts::PI).sqrt()) as f32;
        pdf.iter_mut().for_each(|p| *p *= inv_sqrt_2pi);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn matches_std_exp() {
        let mut worst = 0.0f64;
        let xs: Vec<f32> = (-8700..8800).map(|i| i as f32 * 0.01).collect();
        let mut ys = xs.clone();
        super::exp_f32(&mut ys);
        for (&x, &y) in xs.iter().zip(&ys) {
            let want = (x as f64).exp();
            worst = worst.max(((y as f64 - want) / want).abs());
        }
        assert!(worst < 5e-7, "relative error {worst}");
        let mut z = [f32::NEG_INFINITY, -100.0, 0.0];
        super::exp_f32(&mut z);
        assert_eq!(z, [0.0, 0.0, 1.0]);
        // NaN stays NaN (the range clamps must not turn it into a number), at either end of
        // a vector and in its middle
        let mut with_nan: Vec<f32> = (0..19).map(|i| -(i as f32)).collect();
        for k in [0, 9, 18] {
            with_nan[k] = f32::NAN;
        }
        super::exp_f32(&mut with_nan);
        for (i, y) in with_nan.iter().enumerate() {
            assert_eq!(y.is_nan(), [0, 9, 18].contains(&i), "exp at {i} = {y}");
        }
        let mut top = [88.0f32];
        super::exp_f32(&mut top);
        let want = 88f64.exp();
        assert!(
            ((top[0] as f64 - want) / want).abs() < 5e-7,
            "exp(88) = {}",
            top[0]
        );
    }

    #[test]
    fn normal_cdf_and_pdf_match_libm() {
        let xs: Vec<f32> = (-1200..1200).map(|i| i as f32 * 0.01).collect();
        let (mut cdf, mut pdf) = (vec![0.0; xs.len()], vec![0.0; xs.len()]);
        super::normal_cdf_pdf_f32(&xs, &mut cdf, Some(&mut pdf));
        // Both have condition number ~x² for large |x|: rounding x to f32 alone moves them by
        // x² · 2⁻²⁴ relatively. Allow a few units of that.
        for ((&x, &c), &p) in xs.iter().zip(&cdf).zip(&pdf) {
            let x = x as f64;
            let want_c = 0.5 * libm::erfc(-x / std::f64::consts::SQRT_2);
            let want_p = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
            let allowed = 4e-7 * x.abs().max(1.0).powi(2);
            let (err_c, err_p) = (
                ((c as f64 - want_c) / want_c).abs(),
                ((p as f64 - want_p) / want_p).abs(),
            );
            assert!(err_c < allowed, "Φ({x}): relative error {err_c}");
            assert!(err_p < allowed, "φ({x}): relative error {err_p}");
        }
    }
}
