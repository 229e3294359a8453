//! Row-wise operations on dense token rows (n rows × c values, row-major), as a transformer
//! block needs them: layer norm, GEGLU (value · gelu(gate)), SiLU and the softmax of attention
//! logits. Plain loops written to vectorise, compiled per vector form (`multiversion!`), rows in
//! parallel.

use rayon::prelude::*;

use super::norm::exp_fast;

/// Rows per parallel task: enough work per task to pay its scheduling.
fn chunk_rows(c: usize) -> usize {
    (16384 / c.max(1)).max(1)
}

#[inline(always)]
fn layer_norm_row_inner(x: &[f32], out: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let c = x.len();
    let mean = x.iter().sum::<f32>() / c as f32;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / c as f32;
    let r = 1.0 / (var + eps).sqrt();
    for (((o, v), g), b) in out.iter_mut().zip(x).zip(gamma).zip(beta) {
        *o = (v - mean) * r * g + b;
    }
}
multiversion!(layer_norm_row, layer_norm_row_inner, (x: &[f32], out: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32));

/// (x − mean) / √(var + ε) · γ + β over each row of c values (statistics in two passes).
pub fn layer_norm(x: &[f32], c: usize, gamma: &[f32], beta: &[f32], eps: f32) -> Vec<f32> {
    assert!(x.len().is_multiple_of(c) && gamma.len() == c && beta.len() == c, "rows of c values");
    super::profile::time("layer norm", || layer_norm_inner(x, c, gamma, beta, eps))
}

fn layer_norm_inner(x: &[f32], c: usize, gamma: &[f32], beta: &[f32], eps: f32) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    let k = chunk_rows(c) * c;
    out.par_chunks_mut(k).zip(x.par_chunks(k)).for_each(|(o, xs)| {
        for (or, xr) in o.chunks_exact_mut(c).zip(xs.chunks_exact(c)) {
            layer_norm_row(xr, or, gamma, beta, eps);
        }
    });
    out
}

/// erf(x) to 1.5e-7 absolute (Abramowitz & Stegun 7.1.26), branch-free so that it vectorises.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let p = t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152_1 + t * 1.061_405_4))));
    (1.0 - p * exp_fast(-a * a)).copysign(x)
}

/// The exact (erf) GELU PyTorch's `F.gelu` computes.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[inline(always)]
fn geglu_row_inner(h: &[f32], out: &mut [f32]) {
    let (value, gate) = h.split_at(out.len());
    for ((o, v), g) in out.iter_mut().zip(value).zip(gate) {
        *o = v * gelu(*g);
    }
}
multiversion!(geglu_row, geglu_row_inner, (h: &[f32], out: &mut [f32]));

/// diffusers' GEGLU on rows of 2·inner values (value half first): value · gelu(gate).
pub fn geglu(h: &[f32], inner: usize) -> Vec<f32> {
    assert!(h.len().is_multiple_of(2 * inner), "rows of 2·inner values");
    super::profile::time("geglu", || geglu_inner(h, inner))
}

fn geglu_inner(h: &[f32], inner: usize) -> Vec<f32> {
    // Every value is written below (a recycled buffer: see `matmul::linear`).
    let mut out = super::grid::pool::take_dirty(h.len() / 2);
    let k = chunk_rows(inner);
    out.par_chunks_mut(k * inner).zip(h.par_chunks(2 * k * inner)).for_each(|(o, hs)| {
        for (or, hr) in o.chunks_exact_mut(inner).zip(hs.chunks_exact(2 * inner)) {
            geglu_row(hr, or);
        }
    });
    out
}

#[inline(always)]
fn gelu_inner(x: &mut [f32], quick: bool) {
    if quick {
        // OpenAI CLIP's x·σ(1.702·x).
        x.iter_mut().for_each(|v| *v /= 1.0 + exp_fast(-1.702 * *v));
    } else {
        x.iter_mut().for_each(|v| *v = gelu(*v));
    }
}
multiversion!(gelu_slice, gelu_inner, (x: &mut [f32], quick: bool));

/// GELU in place: the exact (erf) form, or CLIP's quick one.
pub fn gelu_all(x: &mut [f32], quick: bool) {
    super::profile::time("gelu", || x.par_chunks_mut(16384).for_each(|c| gelu_slice(c, quick)));
}

#[inline(always)]
fn silu_inner(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v /= 1.0 + exp_fast(-*v);
    }
}
multiversion!(silu_slice, silu_inner, (x: &mut [f32]));

/// x · σ(x) in place.
pub fn silu(x: &mut [f32]) {
    x.par_chunks_mut(16384).for_each(silu_slice);
}

#[inline(always)]
fn softmax_row_inner(row: &mut [f32], scale: f32) -> f32 {
    // Lane-wise maxima and sums so that the loops vectorise.
    let mut m = [f32::NEG_INFINITY; 16];
    let mut chunks = row.chunks_exact(16);
    for ch in &mut chunks {
        for (a, &v) in m.iter_mut().zip(ch) {
            *a = a.max(v);
        }
    }
    let mx = chunks.remainder().iter().fold(m.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)), |a, &b| a.max(b));
    let shift = mx * scale;
    let mut s = [0.0f32; 16];
    let mut chunks = row.chunks_exact_mut(16);
    for ch in &mut chunks {
        for (a, v) in s.iter_mut().zip(ch.iter_mut()) {
            *v = exp_fast(*v * scale - shift);
            *a += *v;
        }
    }
    let mut sum: f32 = s.iter().sum();
    for v in chunks.into_remainder() {
        *v = exp_fast(*v * scale - shift);
        sum += *v;
    }
    sum
}

#[inline(always)]
fn softmax_row_body(row: &mut [f32], scale: f32, sum: &mut f32) {
    *sum = softmax_row_inner(row, scale);
}
multiversion!(softmax_row_mv, softmax_row_body, (row: &mut [f32], scale: f32, sum: &mut f32));

/// exp(scale·(x − max)) in place over one row; returns the row's sum (the caller divides).
pub fn softmax_row(row: &mut [f32], scale: f32) -> f32 {
    let mut sum = 0.0;
    softmax_row_mv(row, scale, &mut sum);
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn row_operations_match_their_definitions() {
        let c = 37;
        let x: Vec<f32> = Rng::new(1).normals(5 * c).into_iter().map(|v| 3.0 * v + 2.0).collect();
        let gamma: Vec<f32> = Rng::new(2).normals(c);
        let beta: Vec<f32> = Rng::new(3).normals(c);
        let y = layer_norm(&x, c, &gamma, &beta, 1e-5);
        for r in 0..5 {
            let row = &x[r * c..(r + 1) * c];
            let m = row.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
            let v = row.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / c as f64;
            for i in 0..c {
                let want = (row[i] as f64 - m) / (v + 1e-5).sqrt() * gamma[i] as f64 + beta[i] as f64;
                assert!((y[r * c + i] as f64 - want).abs() < 1e-4, "layer norm");
            }
        }
        // gelu(x) = x·Φ(x): Φ(1) = 0.8413447461, Φ(2) = 0.9772498681.
        assert!((gelu(1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((gelu(-1.0) + 0.158_655_25).abs() < 1e-6);
        assert!((gelu(2.0) - 2.0 * 0.977_249_87).abs() < 2e-6);
        assert_eq!(gelu(0.0), 0.0);
        let h: Vec<f32> = Rng::new(4).normals(3 * 2 * c);
        let g = geglu(&h, c);
        for r in 0..3 {
            for i in 0..c {
                let want = h[r * 2 * c + i] * gelu(h[r * 2 * c + c + i]);
                assert!((g[r * c + i] - want).abs() < 1e-6);
            }
        }
        let mut s: Vec<f32> = Rng::new(5).normals(70).into_iter().map(|v| 10.0 * v).collect();
        let orig = s.clone();
        let sum = softmax_row(&mut s, 0.5);
        let mx = orig.iter().cloned().fold(f32::MIN, f32::max);
        let want: Vec<f64> = orig.iter().map(|&v| (0.5 * (v as f64 - mx as f64)).exp()).collect();
        let ws: f64 = want.iter().sum();
        assert!((sum as f64 - ws).abs() < 1e-5 * ws);
        assert!(s.iter().zip(&want).all(|(a, b)| (*a as f64 - b).abs() < 1e-6));
        let mut v = vec![-3.0f32, 0.0, 2.5];
        silu(&mut v);
        for (a, x) in v.iter().zip([-3.0f32, 0.0, 2.5]) {
            assert!((a - x / (1.0 + (-x).exp())).abs() < 1e-6);
        }
        let xs: Vec<f32> = Rng::new(6).normals(40).into_iter().map(|v| 3.0 * v).collect();
        for quick in [false, true] {
            let mut v = xs.clone();
            gelu_all(&mut v, quick);
            for (a, &x) in v.iter().zip(&xs) {
                let want = if quick { x / (1.0 + (-1.702 * x).exp()) } else { gelu(x) };
                assert!((a - want).abs() < 1e-5, "quick {quick}: gelu({x}) = {a}, not {want}");
            }
        }
    }
}
