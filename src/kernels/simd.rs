//! What the CPU's vector units offer, for the hand-written CPU kernels, and the AVX-512
//! pieces they share.

/// A kernel form, widest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Simd {
    Avx512,
    Avx2,
    Portable,
}

/// The widest form this CPU runs; `no_avx512` pretends AVX-512 is absent (to measure and
/// test the AVX2 and portable forms on an AVX-512 machine). Kernels ask `kernels::plan()`.
pub fn detect(no_avx512: bool) -> Simd {
    #[cfg(target_arch = "x86_64")]
    {
        if !no_avx512 && is_x86_feature_detected!("avx512f") {
            return Simd::Avx512;
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Simd::Avx2;
        }
    }
    Simd::Portable
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
