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
    exp_generic::<false>(xs);
}

/// Safety: the CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_avx2(xs: &mut [f32]) {
    exp_generic::<true>(xs)
}

/// `a·b + c`: one fused instruction where the build has FMA (the polynomials below are chains
/// of these, so it halves their length), a multiply and an add where it has not (a software
/// `fma` would be far slower).
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

#[inline(always)]
fn exp_generic<const FMA: bool>(xs: &mut [f32]) {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer
                                     // ln 2 split in two (Cody–Waite), so that r = x − n·ln 2 keeps its low bits
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // e^r on |r| ≤ ln 2 / 2: Taylor to degree 6, highest first
    const P: [f32; 7] = [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ];
    for x in xs.iter_mut() {
        let v = *x;
        let vanishes = v < -87.3;
        // the clamps are written so that a NaN falls through them (`f32::max` and `min` would
        // turn it into a bound) and then through every step below: exp(NaN) is NaN
        let v = if vanishes { -87.3 } else { v };
        let v = if v > 88.0 { 88.0 } else { v };
        let m = madd::<FMA>(v, LOG2E, MAGIC);
        let n = m - MAGIC;
        // the rounded integer sits in the low mantissa bits of m: no float→int conversion
        let ni = (m.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
        let r = madd::<FMA>(-n, LN2_LO, madd::<FMA>(-n, LN2_HI, v));
        let p = P[1..].iter().fold(P[0], |p, &c| madd::<FMA>(p, r, c));
        // 2^n in two factors, so that n up to 129 (x up to 89) is representable: above
        // x = 88.72 the product overflows to +∞ as f32::exp does
        let scale = f32::from_bits((ni.wrapping_add(127) as u32) << 23);
        *x = if vanishes { 0.0 } else { p * scale };
    }
}

/// `erfc(z)` for `z ≥ 0` as `t · exp(−z² + p(t))`, `t = 1 / (1 + z/2)`: the Chebyshev fit of
/// Numerical Recipes (§6.2), relative error below 1.2e-7 for every `z ≥ 0`. Returns the
/// exponent's argument and `t`, so that a caller takes the `exp` of a whole block at once.
#[inline(always)]
fn erfc_parts<const FMA: bool>(z: f32) -> (f32, f32) {
    // highest first
    const C: [f32; 10] = [
        0.170_872_77,
        -0.822_152_2,
        1.488_515_9,
        -1.135_204,
        0.278_868_07,
        -0.186_288_06,
        0.096_784_18,
        0.374_091_96,
        1.000_023_7,
        -1.265_512_2,
    ];
    let t = 1.0 / madd::<FMA>(0.5, z, 1.0);
    let p = C[1..].iter().fold(C[0], |p, &c| madd::<FMA>(p, t, c));
    (madd::<FMA>(-z, z, p), t)
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
    normal_cdf_pdf_generic::<false>(x, cdf, pdf);
}

/// Safety: the CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn normal_cdf_pdf_avx2(x: &[f32], cdf: &mut [f32], pdf: Option<&mut [f32]>) {
    normal_cdf_pdf_generic::<true>(x, cdf, pdf)
}

/// Elements per block of [`normal_cdf_pdf_generic`]: its passes stay in L1 and `t` on the stack.
const CDF_BLOCK: usize = 64;

#[inline(always)]
fn normal_cdf_pdf_generic<const FMA: bool>(
    x: &[f32],
    cdf: &mut [f32],
    mut pdf: Option<&mut [f32]>,
) {
    let inv_sqrt_2pi = (1.0 / (2.0 * std::f64::consts::PI).sqrt()) as f32;
    let mut t = [0.0f32; CDF_BLOCK];
    for start in (0..x.len()).step_by(CDF_BLOCK) {
        let end = (start + CDF_BLOCK).min(x.len());
        let (x, c) = (&x[start..end], &mut cdf[start..end]);
        for ((&v, c), t) in x.iter().zip(c.iter_mut()).zip(t.iter_mut()) {
            (*c, *t) = erfc_parts::<FMA>((v * std::f32::consts::FRAC_1_SQRT_2).abs());
        }
        exp_generic::<FMA>(c);
        for ((&v, c), &t) in x.iter().zip(c.iter_mut()).zip(&t) {
            let tail = 0.5 * t * *c; // ½ erfc(|x|/√2) = Φ(−|x|)
            *c = if v < 0.0 { tail } else { 1.0 - tail };
        }
        if let Some(pdf) = pdf.as_deref_mut() {
            let p = &mut pdf[start..end];
            for (&v, p) in x.iter().zip(p.iter_mut()) {
                *p = -0.5 * v * v;
            }
            exp_generic::<FMA>(p);
            p.iter_mut().for_each(|p| *p *= inv_sqrt_2pi);
        }
    }
}

#[cfg(test)]
mod tests {
    /// Both compiled forms: the one picked on this machine, and the plain multiply-add one a
    /// CPU without FMA runs (the fused one called outside AVX2 code is slow but exact).
    fn exp_forms() -> [(&'static str, fn(&mut [f32])); 3] {
        [
            ("exp_f32", super::exp_f32),
            ("plain", super::exp_generic::<false>),
            ("fused", super::exp_generic::<true>),
        ]
    }

    type CdfPdf = fn(&[f32], &mut [f32], Option<&mut [f32]>);

    fn cdf_forms() -> [(&'static str, CdfPdf); 3] {
        [
            ("normal_cdf_pdf_f32", super::normal_cdf_pdf_f32),
            ("plain", super::normal_cdf_pdf_generic::<false>),
            ("fused", super::normal_cdf_pdf_generic::<true>),
        ]
    }

    #[test]
    fn matches_std_exp() {
        for (form, exp) in exp_forms() {
            let mut worst = 0.0f64;
            let xs: Vec<f32> = (-8700..8800).map(|i| i as f32 * 0.01).collect();
            let mut ys = xs.clone();
            exp(&mut ys);
            for (&x, &y) in xs.iter().zip(&ys) {
                let want = (x as f64).exp();
                worst = worst.max(((y as f64 - want) / want).abs());
            }
            assert!(worst < 5e-7, "{form}: relative error {worst}");
            let mut z = [f32::NEG_INFINITY, -100.0, 0.0];
            exp(&mut z);
            assert_eq!(z, [0.0, 0.0, 1.0], "{form}");
            // NaN stays NaN (the range clamps must not turn it into a number), at either end
            // of a vector and in its middle
            let mut with_nan: Vec<f32> = (0..19).map(|i| -(i as f32)).collect();
            for k in [0, 9, 18] {
                with_nan[k] = f32::NAN;
            }
            exp(&mut with_nan);
            for (i, y) in with_nan.iter().enumerate() {
                assert_eq!(
                    y.is_nan(),
                    [0, 9, 18].contains(&i),
                    "{form}: exp at {i} = {y}"
                );
            }
            let mut top = [88.0f32];
            exp(&mut top);
            let want = 88f64.exp();
            assert!(
                ((top[0] as f64 - want) / want).abs() < 5e-7,
                "{form}: exp(88) = {}",
                top[0]
            );
        }
    }

    #[test]
    fn normal_cdf_and_pdf_match_libm() {
        // a length that is no multiple of the block, so that the last block is partial
        let xs: Vec<f32> = (-1200..1201).map(|i| i as f32 * 0.01).collect();
        for (form, cdf_pdf) in cdf_forms() {
            let (mut cdf, mut pdf) = (vec![0.0; xs.len()], vec![0.0; xs.len()]);
            cdf_pdf(&xs, &mut cdf, Some(&mut pdf));
            let mut cdf_alone = vec![0.0; xs.len()];
            cdf_pdf(&xs, &mut cdf_alone, None);
            assert_eq!(cdf, cdf_alone, "{form}: Φ with and without φ");
            // Both have condition number ~x² for large |x|: rounding x to f32 alone moves them
            // by x² · 2⁻²⁴ relatively. Allow a few units of that.
            for ((&x, &c), &p) in xs.iter().zip(&cdf).zip(&pdf) {
                let x = x as f64;
                let want_c = 0.5 * libm::erfc(-x / std::f64::consts::SQRT_2);
                let want_p = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
                let allowed = 4e-7 * x.abs().max(1.0).powi(2);
                let (err_c, err_p) = (
                    ((c as f64 - want_c) / want_c).abs(),
                    ((p as f64 - want_p) / want_p).abs(),
                );
                assert!(err_c < allowed, "{form}: Φ({x}): relative error {err_c}");
                assert!(err_p < allowed, "{form}: φ({x}): relative error {err_p}");
            }
            let mut nan = [f32::NAN; 3];
            cdf_pdf(&[0.5, f32::NAN, -0.5], &mut nan[..], None);
            assert!(
                !nan[0].is_nan() && nan[1].is_nan() && !nan[2].is_nan(),
                "{form}: {nan:?}"
            );
        }
    }
}
