//! What the CPU's vector units offer, for the hand-written CPU kernels, and the AVX-512 and
//! AVX2 pieces they share.

/// A kernel form, widest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Simd {
    Avx512,
    Avx2,
    Portable,
}

impl Simd {
    /// `avx512`, `avx2` or `portable` (`switches::SIMD_FORMS`), as `REALFILL_SIMD` gives it.
    pub fn parse(name: &str) -> Option<Simd> {
        [Simd::Avx512, Simd::Avx2, Simd::Portable].into_iter().find(|s| s.name() == name)
    }

    /// The name `REALFILL_SIMD` gives this form.
    pub fn name(self) -> &'static str {
        match self {
            Simd::Avx512 => "avx512",
            Simd::Avx2 => "avx2",
            Simd::Portable => "portable",
        }
    }

    /// fp32 lanes in one vector of this form (4 for the portable form: the compiler
    /// vectorises it for the baseline's SSE2 at best).
    pub fn lanes(self) -> usize {
        match self {
            Simd::Avx512 => 16,
            Simd::Avx2 => 8,
            Simd::Portable => 4,
        }
    }
}

/// Every form this CPU runs, widest first (the portable form always).
pub fn supported() -> Vec<Simd> {
    let mut v = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        // The AVX-512 form also runs AVX2 rows (channel counts not a multiple of 16).
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        if avx2 && is_x86_feature_detected!("avx512f") {
            v.push(Simd::Avx512);
        }
        if avx2 {
            v.push(Simd::Avx2);
        }
    }
    v.push(Simd::Portable);
    v
}

/// The widest form this CPU runs, no wider than `cap` (`REALFILL_SIMD`: to test and measure
/// the narrower forms on a wider machine). Kernels ask `kernels::plan()`.
pub fn detect(cap: Option<Simd>) -> Simd {
    // `Simd` is ordered widest first, so "no wider than the cap" is "not before it".
    let allowed = |s: Simd| cap.is_none_or(|c| s as u8 >= c as u8);
    supported().into_iter().find(|&s| allowed(s)).unwrap_or(Simd::Portable)
}

#[cfg(target_arch = "x86_64")]
pub mod avx512 {
    use std::arch::x86_64::*;

    /// e^x, clamped to [e^−87, e^88] (relative error < 3e-7): Cody–Waite range reduction to
    /// |r| ≤ ln2/2, a degree-6 Taylor polynomial, and scalef for the power of two.
    ///
    /// # Safety
    /// Register arithmetic only, but compiled for AVX-512F: call it only where the CPU has it
    /// (from other `avx512f` functions, or after `kernels::plan()` said Avx512).
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub fn exp(x: __m512) -> __m512 {
        let x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0)), _mm512_set1_ps(88.0));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
            x,
            _mm512_set1_ps(std::f32::consts::LOG2_E),
        ));
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_145_75), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428_606_8e-6), r);
        let mut p = _mm512_set1_ps(1.0 / 720.0);
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0 / 120.0));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0 / 24.0));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0 / 6.0));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0));
        _mm512_scalef_ps(p, n)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn vector_exp_is_accurate() {
            if !is_x86_feature_detected!("avx512f") {
                return;
            }
            let xs: Vec<f32> = (0..1750).map(|i| -87.0 + i as f32 * 0.1).collect();
            for chunk in xs.chunks(16) {
                let mut out = [0.0f32; 16];
                // SAFETY: AVX-512 checked above; chunk and out hold 16 values.
                unsafe { _mm512_storeu_ps(out.as_mut_ptr(), exp(_mm512_loadu_ps(chunk.as_ptr()))) };
                for (x, e) in chunk.iter().zip(out) {
                    let want = x.exp();
                    assert!((e - want).abs() <= 3e-7 * want, "exp({x}) = {e}, want {want}");
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub mod avx2 {
    use std::arch::x86_64::*;

    /// e^x, clamped to [e^−87, e^88] (relative error < 3e-7): the same Cody–Waite reduction
    /// and polynomial as `avx512::exp`, with 2^n built from n's bits (AVX2 has no scalef).
    ///
    /// # Safety
    /// Register arithmetic only, but compiled for AVX2 + FMA: call it only where the CPU has
    /// them (from other `avx2,fma` functions, or after `kernels::plan()` said Avx2 or wider).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub fn exp(x: __m256) -> __m256 {
        let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0)), _mm256_set1_ps(88.0));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
            x,
            _mm256_set1_ps(std::f32::consts::LOG2_E),
        ));
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_145_75), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428_606_8e-6), r);
        let mut p = _mm256_set1_ps(1.0 / 720.0);
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0 / 120.0));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0 / 24.0));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0 / 6.0));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0));
        // n ∈ [−126, 127] after the clamp: 2^n is (n + 127) in the exponent field.
        let two_n = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        )));
        _mm256_mul_ps(p, two_n)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn vector_exp_is_accurate() {
            if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
                return;
            }
            let xs: Vec<f32> = (0..1744).map(|i| -87.0 + i as f32 * 0.1).collect();
            for chunk in xs.chunks(8) {
                let mut out = [0.0f32; 8];
                // SAFETY: AVX2 and FMA checked above; chunk and out hold 8 values.
                unsafe { _mm256_storeu_ps(out.as_mut_ptr(), exp(_mm256_loadu_ps(chunk.as_ptr()))) };
                for (x, e) in chunk.iter().zip(out) {
                    let want = x.exp();
                    assert!((e - want).abs() <= 3e-7 * want, "exp({x}) = {e}, want {want}");
                }
            }
        }
    }
}
