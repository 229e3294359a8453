//! GroupNorm followed by SiLU (the pair always appears together in the UNet), forward and
//! backward, on padded grids (borders stay zero). Statistics in f64; the sigmoid uses a
//! polynomial exp, vectorised (libm's scalar `__expf_fma` was 3.4–5.1% of `perf` profiles of
//! burn-flex's step), and on AVX-512 a reciprocal estimate instead of a division.

use rayon::prelude::*;

use super::grid::Grid;

/// Per (image, group) mean and 1/σ.
pub struct GnStats {
    mean: Vec<f32>,
    rstd: Vec<f32>,
}

const EPS: f64 = 1e-5;

/// e^x to ≈ 1 ulp·few over the float range, branch-free so that loops over it vectorise.
#[inline(always)]
pub(crate) fn exp_fast(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest by the 1.5·2^23 trick (f32::round is a libm call without SSE4.1).
    let n = (x * std::f32::consts::LOG2_E + 12_582_912.0) - 12_582_912.0;
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let mut p = 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    // 2^n from the bits of n + 127 + 2^23 (integer in the low mantissa bits): integer ops
    // only, so the loop vectorises (a float-to-int cast saturates and does not).
    p * f32::from_bits((n + (127.0 + 8_388_608.0)).to_bits() << 23)
}

#[inline(always)]
fn sigmoid(u: f32) -> f32 {
    1.0 / (1.0 + exp_fast(-u))
}

pub fn silu_vec(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&u| u * sigmoid(u)).collect()
}

/// The row functions with sigmoids, hand-vectorised for AVX-512 (16 channels at a time;
/// the reciprocal by rcp14 + one Newton step, since a vector division costs as much as the
/// rest of the loop). Used when the channel count is a multiple of 16.
#[cfg(target_arch = "x86_64")]
mod wide {
    use crate::kernels::simd::avx512::exp;
    use std::arch::x86_64::*;

    /// 1 / (1 + e^−u).
    #[inline(always)]
    fn sigmoid(u: __m512) -> __m512 {
        // SAFETY: register-only AVX-512F arithmetic; only called (inlined) from this module's
        // row functions, which run only when the plan has AVX-512F (`RowForm::Wide`).
        unsafe {
            let d = _mm512_add_ps(_mm512_set1_ps(1.0), exp(_mm512_sub_ps(_mm512_setzero_ps(), u)));
            let r = _mm512_rcp14_ps(d);
            // Newton: r·(2 − d·r).
            _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0)))
        }
    }

    /// du = dz·silu'(u) = dz·σ·(1 + u·(1 − σ)).
    #[inline(always)]
    fn dsilu(u: __m512, dz: __m512) -> __m512 {
        // SAFETY: as for `sigmoid`.
        unsafe {
            let s = sigmoid(u);
            let one = _mm512_set1_ps(1.0);
            _mm512_mul_ps(_mm512_mul_ps(dz, s), _mm512_fmadd_ps(u, _mm512_sub_ps(one, s), one))
        }
    }

    #[target_feature(enable = "avx512f")]
    pub fn apply(row: &[f32], out: &mut [f32], c: usize, w: usize, a: &[f32], o: &[f32]) {
        assert!(
            row.len() >= (w + 1) * c
                && out.len() >= (w + 1) * c
                && a.len() >= c
                && o.len() >= c
                && c.is_multiple_of(16)
        );
        for x in 1..=w {
            for k in (0..c).step_by(16) {
                // SAFETY: indices bounded by the assert above.
                unsafe {
                    let v = _mm512_loadu_ps(row.as_ptr().add(x * c + k));
                    let u = _mm512_fmadd_ps(v, _mm512_loadu_ps(a.as_ptr().add(k)), _mm512_loadu_ps(o.as_ptr().add(k)));
                    _mm512_storeu_ps(out.as_mut_ptr().add(x * c + k), _mm512_mul_ps(u, sigmoid(u)));
                }
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub fn du(
        xr: &[f32],
        dr: &[f32],
        out: &mut [f32],
        c: usize,
        w: usize,
        a: &[f32],
        o: &[f32],
        r: &[f32],
        m: &[f32],
        sdu: &mut [f32],
        sdux: &mut [f32],
    ) {
        assert!(xr.len() >= (w + 1) * c && dr.len() >= (w + 1) * c && out.len() >= (w + 1) * c && c.is_multiple_of(16));
        assert!(a.len() >= c && o.len() >= c && r.len() >= c && m.len() >= c && sdu.len() >= c && sdux.len() >= c);
        for k in (0..c).step_by(16) {
            // SAFETY: indices bounded by the asserts above.
            unsafe {
                let (av, ov) = (_mm512_loadu_ps(a.as_ptr().add(k)), _mm512_loadu_ps(o.as_ptr().add(k)));
                let (rv, mv) = (_mm512_loadu_ps(r.as_ptr().add(k)), _mm512_loadu_ps(m.as_ptr().add(k)));
                let (mut s1, mut s2) = (_mm512_setzero_ps(), _mm512_setzero_ps());
                for x in 1..=w {
                    let v = _mm512_loadu_ps(xr.as_ptr().add(x * c + k));
                    let dz = _mm512_loadu_ps(dr.as_ptr().add(x * c + k));
                    let d = dsilu(_mm512_fmadd_ps(v, av, ov), dz);
                    _mm512_storeu_ps(out.as_mut_ptr().add(x * c + k), d);
                    s1 = _mm512_add_ps(s1, d);
                    s2 = _mm512_fmadd_ps(d, _mm512_fmadd_ps(v, rv, mv), s2);
                }
                _mm512_storeu_ps(sdu.as_mut_ptr().add(k), _mm512_add_ps(_mm512_loadu_ps(sdu.as_ptr().add(k)), s1));
                _mm512_storeu_ps(sdux.as_mut_ptr().add(k), _mm512_add_ps(_mm512_loadu_ps(sdux.as_ptr().add(k)), s2));
            }
        }
    }
}

/// The same row functions for AVX2 + FMA (8 channels at a time; rcp_ps's 12 bits + one
/// Newton step for the reciprocal). Used when the channel count is a multiple of 8.
#[cfg(target_arch = "x86_64")]
mod mid {
    use crate::kernels::simd::avx2::exp;
    use std::arch::x86_64::*;

    /// 1 / (1 + e^−u).
    #[inline(always)]
    fn sigmoid(u: __m256) -> __m256 {
        // SAFETY: register-only AVX2/FMA arithmetic; only called (inlined) from this module's
        // row functions, which run only when the CPU has AVX2 and FMA (`RowForm::Mid`).
        unsafe {
            let d = _mm256_add_ps(_mm256_set1_ps(1.0), exp(_mm256_sub_ps(_mm256_setzero_ps(), u)));
            let r = _mm256_rcp_ps(d);
            // Newton: r·(2 − d·r).
            _mm256_mul_ps(r, _mm256_fnmadd_ps(d, r, _mm256_set1_ps(2.0)))
        }
    }

    /// du = dz·silu'(u) = dz·σ·(1 + u·(1 − σ)).
    #[inline(always)]
    fn dsilu(u: __m256, dz: __m256) -> __m256 {
        // SAFETY: as for `sigmoid`.
        unsafe {
            let s = sigmoid(u);
            let one = _mm256_set1_ps(1.0);
            _mm256_mul_ps(_mm256_mul_ps(dz, s), _mm256_fmadd_ps(u, _mm256_sub_ps(one, s), one))
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub fn apply(row: &[f32], out: &mut [f32], c: usize, w: usize, a: &[f32], o: &[f32]) {
        assert!(
            row.len() >= (w + 1) * c && out.len() >= (w + 1) * c && a.len() >= c && o.len() >= c && c.is_multiple_of(8)
        );
        for x in 1..=w {
            for k in (0..c).step_by(8) {
                // SAFETY: indices bounded by the assert above.
                unsafe {
                    let v = _mm256_loadu_ps(row.as_ptr().add(x * c + k));
                    let u = _mm256_fmadd_ps(v, _mm256_loadu_ps(a.as_ptr().add(k)), _mm256_loadu_ps(o.as_ptr().add(k)));
                    _mm256_storeu_ps(out.as_mut_ptr().add(x * c + k), _mm256_mul_ps(u, sigmoid(u)));
                }
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub fn du(
        xr: &[f32],
        dr: &[f32],
        out: &mut [f32],
        c: usize,
        w: usize,
        a: &[f32],
        o: &[f32],
        r: &[f32],
        m: &[f32],
        sdu: &mut [f32],
        sdux: &mut [f32],
    ) {
        assert!(xr.len() >= (w + 1) * c && dr.len() >= (w + 1) * c && out.len() >= (w + 1) * c && c.is_multiple_of(8));
        assert!(a.len() >= c && o.len() >= c && r.len() >= c && m.len() >= c && sdu.len() >= c && sdux.len() >= c);
        for k in (0..c).step_by(8) {
            // SAFETY: indices bounded by the asserts above.
            unsafe {
                let (av, ov) = (_mm256_loadu_ps(a.as_ptr().add(k)), _mm256_loadu_ps(o.as_ptr().add(k)));
                let (rv, mv) = (_mm256_loadu_ps(r.as_ptr().add(k)), _mm256_loadu_ps(m.as_ptr().add(k)));
                let (mut s1, mut s2) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                for x in 1..=w {
                    let v = _mm256_loadu_ps(xr.as_ptr().add(x * c + k));
                    let dz = _mm256_loadu_ps(dr.as_ptr().add(x * c + k));
                    let d = dsilu(_mm256_fmadd_ps(v, av, ov), dz);
                    _mm256_storeu_ps(out.as_mut_ptr().add(x * c + k), d);
                    s1 = _mm256_add_ps(s1, d);
                    s2 = _mm256_fmadd_ps(d, _mm256_fmadd_ps(v, rv, mv), s2);
                }
                _mm256_storeu_ps(sdu.as_mut_ptr().add(k), _mm256_add_ps(_mm256_loadu_ps(sdu.as_ptr().add(k)), s1));
                _mm256_storeu_ps(sdux.as_mut_ptr().add(k), _mm256_add_ps(_mm256_loadu_ps(sdux.as_ptr().add(k)), s2));
            }
        }
    }
}

/// Which row functions with sigmoids a channel count gets.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RowForm {
    /// `wide`: AVX-512, 16 channels at a time.
    Wide,
    /// `mid`: AVX2 + FMA, 8 channels at a time.
    Mid,
    /// The plain rows (`multiversion!`).
    Rows,
}

fn row_form(c: usize) -> RowForm {
    use crate::kernels::simd::Simd;
    match crate::kernels::plan().simd {
        Simd::Avx512 if c.is_multiple_of(16) => RowForm::Wide,
        Simd::Avx512 | Simd::Avx2 if c.is_multiple_of(8) => RowForm::Mid,
        _ => RowForm::Rows,
    }
}

/// Per-channel sums of x and x² over the interior pixels of one row.
#[inline(always)]
fn row_sums_inner(row: &[f32], c: usize, w: usize, s: &mut [f32], s2: &mut [f32]) {
    for px in row[c..(w + 1) * c].chunks_exact(c) {
        for ((a, b), &v) in s.iter_mut().zip(s2.iter_mut()).zip(px) {
            *a += v;
            *b += v * v;
        }
    }
}
multiversion!(row_sums, row_sums_inner, (row: &[f32], c: usize, w: usize, s: &mut [f32], s2: &mut [f32]));

/// out = silu(x·a + o) per channel over the interior pixels of one row.
#[inline(always)]
fn row_apply_inner(row: &[f32], out: &mut [f32], c: usize, w: usize, a: &[f32], o: &[f32]) {
    let (a, o) = (&a[..c], &o[..c]);
    for x in 1..=w {
        let px = &row[x * c..(x + 1) * c];
        let op = &mut out[x * c..(x + 1) * c];
        for ch in 0..c {
            let u = px[ch] * a[ch] + o[ch];
            op[ch] = u * sigmoid(u);
        }
    }
}
multiversion!(row_apply, row_apply_inner, (row: &[f32], out: &mut [f32], c: usize, w: usize, a: &[f32], o: &[f32]));

/// out = x·a + o per channel over the interior pixels of one row (a group norm without SiLU).
#[inline(always)]
fn row_affine_inner(row: &[f32], out: &mut [f32], c: usize, w: usize, a: &[f32], o: &[f32]) {
    let (a, o) = (&a[..c], &o[..c]);
    for x in 1..=w {
        let px = &row[x * c..(x + 1) * c];
        let op = &mut out[x * c..(x + 1) * c];
        for ch in 0..c {
            op[ch] = px[ch] * a[ch] + o[ch];
        }
    }
}
multiversion!(row_affine, row_affine_inner, (row: &[f32], out: &mut [f32], c: usize, w: usize, a: &[f32], o: &[f32]));

/// Backward pass 1 for one row: du = dz·silu'(u) with u = x·a + o; sums per channel of du
/// and du·x̂ where x̂ = x·r + m (r = 1/σ, m = −mean/σ, per channel).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn row_du_inner(
    xr: &[f32],
    dr: &[f32],
    out: &mut [f32],
    c: usize,
    w: usize,
    a: &[f32],
    o: &[f32],
    r: &[f32],
    m: &[f32],
    sdu: &mut [f32],
    sdux: &mut [f32],
) {
    for ((px, dz), du_out) in xr[c..(w + 1) * c]
        .chunks_exact(c)
        .zip(dr[c..(w + 1) * c].chunks_exact(c))
        .zip(out[c..(w + 1) * c].chunks_exact_mut(c))
    {
        for ch in 0..c {
            let u = px[ch] * a[ch] + o[ch];
            let s = sigmoid(u);
            let du = dz[ch] * s * (1.0 + u * (1.0 - s));
            du_out[ch] = du;
            sdu[ch] += du;
            sdux[ch] += du * (px[ch] * r[ch] + m[ch]);
        }
    }
}
multiversion!(row_du, row_du_inner, (xr: &[f32], dr: &[f32], out: &mut [f32], c: usize, w: usize, a: &[f32], o: &[f32], r: &[f32], m: &[f32], sdu: &mut [f32], sdux: &mut [f32]));

/// Backward pass 2 for one row, in place over pass 1's du: dx = rstd·(du·γ − mean(du·γ) −
/// x̂·mean(du·γ·x̂)) = du·k1 + k2 + x̂·k3, with k1 = rstd·γ, k2 = −rstd·mean(du·γ),
/// k3 = −rstd·mean(du·γ·x̂) per channel and x̂ = x·r + m.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn row_dx_inner(
    xr: &[f32],
    d: &mut [f32],
    c: usize,
    w: usize,
    r: &[f32],
    m: &[f32],
    k1: &[f32],
    k2: &[f32],
    k3: &[f32],
) {
    let (r, m, k1, k2, k3) = (&r[..c], &m[..c], &k1[..c], &k2[..c], &k3[..c]);
    for x in 1..=w {
        let px = &xr[x * c..(x + 1) * c];
        let dd = &mut d[x * c..(x + 1) * c];
        for ch in 0..c {
            let xh = px[ch] * r[ch] + m[ch];
            dd[ch] = dd[ch] * k1[ch] + k2[ch] + xh * k3[ch];
        }
    }
}
multiversion!(row_dx, row_dx_inner, (xr: &[f32], d: &mut [f32], c: usize, w: usize, r: &[f32], m: &[f32], k1: &[f32], k2: &[f32], k3: &[f32]));

fn reduce_rows(
    data: &[f32],
    extra: Option<&[f32]>,
    x: &Grid,
    per_row: impl Fn(usize, &[f32], Option<&[f32]>, &mut [f32], &mut [f32]) + Sync,
) -> Vec<f64> {
    let (c, wp, hp) = (x.c, x.wp(), x.h + 2);
    let rows = data.len() / (wp * c);
    (0..rows)
        .into_par_iter()
        .fold(
            || (vec![0.0f64; x.n * c * 2], vec![0.0f32; c], vec![0.0f32; c]),
            |(mut acc, mut s, mut s2), row| {
                let (b, y) = (row / hp, row % hp);
                if y == 0 || y == hp - 1 {
                    return (acc, s, s2);
                }
                s.fill(0.0);
                s2.fill(0.0);
                let xr = &data[row * wp * c..(row + 1) * wp * c];
                per_row(b, xr, extra.map(|e| &e[row * wp * c..(row + 1) * wp * c]), &mut s, &mut s2);
                for ch in 0..c {
                    acc[(b * c + ch) * 2] += s[ch] as f64;
                    acc[(b * c + ch) * 2 + 1] += s2[ch] as f64;
                }
                (acc, s, s2)
            },
        )
        .map(|(acc, _, _)| acc)
        .reduce(
            || vec![0.0f64; x.n * c * 2],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(&b) {
                    *x += y;
                }
                a
            },
        )
}

fn stats(x: &Grid, groups: usize, eps: f64) -> GnStats {
    let (c, w) = (x.c, x.w);
    let cpg = c / groups;
    let sums = reduce_rows(&x.data, None, x, |_, xr, _, s, s2| row_sums(xr, c, w, s, s2));
    let count = (x.h * x.w * cpg) as f64;
    let (mut mean, mut rstd) = (Vec::new(), Vec::new());
    for b in 0..x.n {
        for g in 0..groups {
            let (mut s, mut s2) = (0.0f64, 0.0f64);
            for ch in g * cpg..(g + 1) * cpg {
                s += sums[(b * c + ch) * 2];
                s2 += sums[(b * c + ch) * 2 + 1];
            }
            let m = s / count;
            let var = (s2 / count - m * m).max(0.0);
            mean.push(m as f32);
            rstd.push((1.0 / (var + eps).sqrt()) as f32);
        }
    }
    GnStats { mean, rstd }
}

/// Per image and channel: (a, o) with u = x·a + o, and (r, m) with x̂ = x·r + m.
fn coefficients(st: &GnStats, gamma: &[f32], beta: &[f32], n: usize, c: usize, groups: usize) -> [Vec<f32>; 4] {
    let cpg = c / groups;
    let (mut a, mut o, mut r, mut m) = (vec![0.0; n * c], vec![0.0; n * c], vec![0.0; n * c], vec![0.0; n * c]);
    for b in 0..n {
        for ch in 0..c {
            let g = b * groups + ch / cpg;
            let i = b * c + ch;
            r[i] = st.rstd[g];
            m[i] = -st.mean[g] * st.rstd[g];
            a[i] = r[i] * gamma[ch];
            o[i] = beta[ch] + m[i] * gamma[ch];
        }
    }
    [a, o, r, m]
}

/// groupnorm(x)·γ + β with the given ε, followed by SiLU when `silu` (Stable Diffusion's
/// norms: ε 1e-5 or 1e-6, with and without SiLU); inference only, no statistics kept.
pub fn group_norm(x: &Grid, gamma: &[f32], beta: &[f32], groups: usize, eps: f64, silu: bool) -> Grid {
    super::profile::time("group norm", || normalise(x, &stats(x, groups, eps), gamma, beta, groups, silu))
}

/// silu(groupnorm(x)·γ + β).
pub fn gn_silu(x: &Grid, gamma: &[f32], beta: &[f32], groups: usize) -> (Grid, GnStats) {
    super::profile::time("norm+silu forward", || {
        let st = stats(x, groups, EPS);
        (normalise(x, &st, gamma, beta, groups, true), st)
    })
}

/// x normalised by the statistics `st`, then ·γ + β, then SiLU when `silu`.
fn normalise(x: &Grid, st: &GnStats, gamma: &[f32], beta: &[f32], groups: usize, silu: bool) -> Grid {
    let (c, w, wp, hp) = (x.c, x.w, x.wp(), x.h + 2);
    let [a, o, _, _] = coefficients(st, gamma, beta, x.n, c, groups);
    let form = row_form(c);
    let mut out = Grid::for_overwrite(x.n, x.h, x.w, c);
    out.data.par_chunks_mut(wp * c).enumerate().for_each(|(row, orow)| {
        let (b, y) = (row / hp, row % hp);
        if y == 0 || y == hp - 1 {
            return;
        }
        let xr = &x.data[row * wp * c..(row + 1) * wp * c];
        let (ab, ob) = (&a[b * c..(b + 1) * c], &o[b * c..(b + 1) * c]);
        match form {
            _ if !silu => row_affine(xr, orow, c, w, ab, ob),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `row_form` says Wide only when the plan has AVX-512F.
            RowForm::Wide => unsafe { wide::apply(xr, orow, c, w, ab, ob) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `row_form` says Mid only when the plan has AVX2 and FMA.
            RowForm::Mid => unsafe { mid::apply(xr, orow, c, w, ab, ob) },
            _ => row_apply(xr, orow, c, w, ab, ob),
        }
    });
    out.zero_side_borders();
    out
}

/// Gradients of `gn_silu` w.r.t. x, γ and β, given the output gradient dz.
pub fn gn_silu_backward(
    x: &Grid,
    st: &GnStats,
    gamma: &[f32],
    beta: &[f32],
    groups: usize,
    dz: &Grid,
) -> (Grid, Vec<f32>, Vec<f32>) {
    super::profile::time("norm+silu backward", || gn_silu_backward_inner(x, st, gamma, beta, groups, dz))
}

fn gn_silu_backward_inner(
    x: &Grid,
    st: &GnStats,
    gamma: &[f32],
    beta: &[f32],
    groups: usize,
    dz: &Grid,
) -> (Grid, Vec<f32>, Vec<f32>) {
    let (n, c, w, wp, hp) = (x.n, x.c, x.w, x.wp(), x.h + 2);
    let cpg = c / groups;
    let [a, o, r, m] = coefficients(st, gamma, beta, n, c, groups);
    let form = row_form(c);
    // Pass 1 stores du (then turned into dx in place by pass 2, which needs no sigmoid).
    let mut dx = Grid::for_overwrite(x.n, x.h, x.w, c);
    let per_channel = dx
        .data
        .par_chunks_mut(wp * c)
        .enumerate()
        .fold(
            || (vec![0.0f64; n * c * 2], vec![0.0f32; c], vec![0.0f32; c]),
            |(mut acc, mut sdu, mut sdux), (row, out)| {
                let (b, y) = (row / hp, row % hp);
                if y == 0 || y == hp - 1 {
                    return (acc, sdu, sdux);
                }
                sdu.fill(0.0);
                sdux.fill(0.0);
                let (xr, dr) = (&x.data[row * wp * c..(row + 1) * wp * c], &dz.data[row * wp * c..(row + 1) * wp * c]);
                let (ab, ob, rb, mb) =
                    (&a[b * c..(b + 1) * c], &o[b * c..(b + 1) * c], &r[b * c..(b + 1) * c], &m[b * c..(b + 1) * c]);
                match form {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: `row_form` says Wide only when the plan has AVX-512F.
                    RowForm::Wide => unsafe { wide::du(xr, dr, out, c, w, ab, ob, rb, mb, &mut sdu, &mut sdux) },
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: `row_form` says Mid only when the plan has AVX2 and FMA.
                    RowForm::Mid => unsafe { mid::du(xr, dr, out, c, w, ab, ob, rb, mb, &mut sdu, &mut sdux) },
                    _ => row_du(xr, dr, out, c, w, ab, ob, rb, mb, &mut sdu, &mut sdux),
                }
                for ch in 0..c {
                    acc[(b * c + ch) * 2] += sdu[ch] as f64;
                    acc[(b * c + ch) * 2 + 1] += sdux[ch] as f64;
                }
                (acc, sdu, sdux)
            },
        )
        .map(|(acc, _, _)| acc)
        .reduce(
            || vec![0.0f64; n * c * 2],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(&b) {
                    *x += y;
                }
                a
            },
        );
    let (mut dgamma, mut dbeta) = (vec![0.0f32; c], vec![0.0f32; c]);
    let count = (x.h * x.w * cpg) as f64;
    let (mut mg, mut mgx) = (vec![0.0f64; n * groups], vec![0.0f64; n * groups]);
    for b in 0..n {
        for ch in 0..c {
            let (sdu, sdux) = (per_channel[(b * c + ch) * 2], per_channel[(b * c + ch) * 2 + 1]);
            dbeta[ch] += sdu as f32;
            dgamma[ch] += sdux as f32;
            let g = b * groups + ch / cpg;
            mg[g] += sdu * gamma[ch] as f64 / count;
            mgx[g] += sdux * gamma[ch] as f64 / count;
        }
    }
    let (mut k1, mut k2, mut k3) = (vec![0.0f32; n * c], vec![0.0f32; n * c], vec![0.0f32; n * c]);
    for b in 0..n {
        for ch in 0..c {
            let g = b * groups + ch / cpg;
            let i = b * c + ch;
            k1[i] = st.rstd[g] * gamma[ch];
            k2[i] = (-(st.rstd[g] as f64) * mg[g]) as f32;
            k3[i] = (-(st.rstd[g] as f64) * mgx[g]) as f32;
        }
    }
    dx.data.par_chunks_mut(wp * c).enumerate().for_each(|(row, d)| {
        let (b, y) = (row / hp, row % hp);
        if y == 0 || y == hp - 1 {
            return;
        }
        let xr = &x.data[row * wp * c..(row + 1) * wp * c];
        let (lo, hi) = (b * c, (b + 1) * c);
        row_dx(xr, d, c, w, &r[lo..hi], &m[lo..hi], &k1[lo..hi], &k2[lo..hi], &k3[lo..hi]);
    });
    dx.zero_side_borders();
    (dx, dgamma, dbeta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn fast_exp_is_accurate() {
        for i in 0..2000 {
            let x = -87.0 + i as f32 * 0.0875;
            let (a, b) = (exp_fast(x), x.exp());
            assert!((a - b).abs() <= 4e-7 * b, "exp({x}) = {a} vs {b}");
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        // 4 channels: the plain rows; 8 and 24: the AVX2 rows where the plan has AVX2 or
        // wider; 32: the AVX-512 rows where it has AVX-512 (else the AVX2 ones).
        backward_check(4, 2);
        backward_check(8, 2);
        backward_check(24, 4);
        backward_check(32, 8);
    }

    fn backward_check(c: usize, groups: usize) {
        let mut rng = Rng::new(2);
        let (n, h, w) = (2, 3, 4);
        let src: Vec<f32> = (0..n * c * h * w).map(|_| rng.range_f32(-2.0, 2.0)).collect();
        let gamma: Vec<f32> = (0..c).map(|_| rng.range_f32(0.5, 1.5)).collect();
        let beta: Vec<f32> = (0..c).map(|_| rng.range_f32(-0.3, 0.3)).collect();
        let r: Vec<f32> = (0..n * c * h * w).map(|_| rng.range_f32(-1.0, 1.0)).collect();
        let rg = Grid::from_nchw(&r, n, c, h, w);
        let loss = |src: &[f32], gamma: &[f32]| -> f64 {
            let (z, _) = gn_silu(&Grid::from_nchw(src, n, c, h, w), gamma, &beta, groups);
            z.data.iter().zip(&rg.data).map(|(a, b)| (a * b) as f64).sum()
        };
        let x = Grid::from_nchw(&src, n, c, h, w);
        let (_, st) = gn_silu(&x, &gamma, &beta, groups);
        let (dx, dgamma, _) = gn_silu_backward(&x, &st, &gamma, &beta, groups, &rg);
        let dx = dx.to_nchw(c);
        let eps = 1e-3;
        for probe in [0usize, 5, 40, 111].map(|p| p % src.len()) {
            let mut s2 = src.clone();
            s2[probe] += eps;
            let fd = (loss(&s2, &gamma) - loss(&src, &gamma)) / eps as f64;
            assert!((fd - dx[probe] as f64).abs() < 2e-2 * (1.0 + fd.abs()), "dx[{probe}]: {fd} vs {}", dx[probe]);
        }
        let mut g2 = gamma.clone();
        g2[3] += eps;
        let _ = c;
        let fd = (loss(&src, &g2) - loss(&src, &gamma)) / eps as f64;
        assert!((fd - dgamma[3] as f64).abs() < 2e-2 * (1.0 + fd.abs()), "dγ: {fd} vs {}", dgamma[3]);
    }
}
