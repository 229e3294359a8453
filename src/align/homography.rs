//! Planar homographies: direct linear transform on normalised points, RANSAC, inverse and
//! composition. H maps (x, y, 1) in one image to the matching point of another.

use crate::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Homography(pub [f64; 9]);

impl Homography {
    pub const IDENTITY: Homography = Homography([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]);

    pub fn scale(sx: f64, sy: f64) -> Homography {
        Homography([sx, 0.0, 0.0, 0.0, sy, 0.0, 0.0, 0.0, 1.0])
    }

    /// Map a point; `None` at or behind the horizon.
    #[inline]
    pub fn apply(&self, x: f64, y: f64) -> Option<(f64, f64)> {
        let h = &self.0;
        let w = h[6] * x + h[7] * y + h[8];
        if w.abs() < 1e-12 || w < 0.0 {
            return None;
        }
        Some(((h[0] * x + h[1] * y + h[2]) / w, (h[3] * x + h[4] * y + h[5]) / w))
    }

    /// `self ∘ other`: apply `other` first.
    pub fn then_after(&self, other: &Homography) -> Homography {
        let (a, b) = (&self.0, &other.0);
        let mut m = [0.0; 9];
        for r in 0..3 {
            for c in 0..3 {
                m[r * 3 + c] = (0..3).map(|k| a[r * 3 + k] * b[k * 3 + c]).sum();
            }
        }
        Homography(m).normalised()
    }

    pub fn inverse(&self) -> Option<Homography> {
        let m = &self.0;
        let det = m[0] * (m[4] * m[8] - m[5] * m[7]) - m[1] * (m[3] * m[8] - m[5] * m[6])
            + m[2] * (m[3] * m[7] - m[4] * m[6]);
        if det.abs() < 1e-14 {
            return None;
        }
        let inv = [
            (m[4] * m[8] - m[5] * m[7]) / det,
            (m[2] * m[7] - m[1] * m[8]) / det,
            (m[1] * m[5] - m[2] * m[4]) / det,
            (m[5] * m[6] - m[3] * m[8]) / det,
            (m[0] * m[8] - m[2] * m[6]) / det,
            (m[2] * m[3] - m[0] * m[5]) / det,
            (m[3] * m[7] - m[4] * m[6]) / det,
            (m[1] * m[6] - m[0] * m[7]) / det,
            (m[0] * m[4] - m[1] * m[3]) / det,
        ];
        Some(Homography(inv).normalised())
    }

    fn normalised(self) -> Homography {
        let s = self.0[8];
        if s.abs() > 1e-12 { Homography(self.0.map(|v| v / s)) } else { self }
    }

    /// Determinant of the linear part: local area scale near the origin; negative = mirrored.
    pub fn linear_det(&self) -> f64 {
        self.0[0] * self.0[4] - self.0[1] * self.0[3]
    }

    /// Least-squares DLT (h33 = 1) on Hartley-normalised points; needs ≥ 4 pairs.
    pub fn fit(src: &[(f64, f64)], dst: &[(f64, f64)]) -> Option<Homography> {
        if src.len() < 4 || src.len() != dst.len() {
            return None;
        }
        let (ts, ns) = normaliser(src);
        let (td, nd) = normaliser(dst);
        let mut ata = [[0.0f64; 8]; 8];
        let mut atb = [0.0f64; 8];
        for (s, d) in ns.iter().zip(&nd) {
            let (x, y, u, v) = (s.0, s.1, d.0, d.1);
            let rows =
                [([x, y, 1.0, 0.0, 0.0, 0.0, -u * x, -u * y], u), ([0.0, 0.0, 0.0, x, y, 1.0, -v * x, -v * y], v)];
            for (r, b) in rows {
                for i in 0..8 {
                    atb[i] += r[i] * b;
                    for j in 0..8 {
                        ata[i][j] += r[i] * r[j];
                    }
                }
            }
        }
        let h = solve8(ata, atb)?;
        let hn = Homography([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], 1.0]);
        let td_inv = td.inverse()?;
        Some(td_inv.then_after(&hn.then_after(&ts)))
    }
}

fn normaliser(p: &[(f64, f64)]) -> (Homography, Vec<(f64, f64)>) {
    let n = p.len() as f64;
    let cx = p.iter().map(|q| q.0).sum::<f64>() / n;
    let cy = p.iter().map(|q| q.1).sum::<f64>() / n;
    let md = p.iter().map(|q| ((q.0 - cx).powi(2) + (q.1 - cy).powi(2)).sqrt()).sum::<f64>() / n;
    let s = if md > 1e-12 { std::f64::consts::SQRT_2 / md } else { 1.0 };
    let t = Homography([s, 0.0, -s * cx, 0.0, s, -s * cy, 0.0, 0.0, 1.0]);
    (t, p.iter().map(|q| (s * (q.0 - cx), s * (q.1 - cy))).collect())
}

fn solve8(mut a: [[f64; 8]; 8], mut b: [f64; 8]) -> Option<[f64; 8]> {
    for col in 0..8 {
        let piv = (col..8).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[piv][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, piv);
        b.swap(col, piv);
        for r in 0..8 {
            if r != col {
                let f = a[r][col] / a[col][col];
                for c in col..8 {
                    a[r][c] -= f * a[col][c];
                }
                b[r] -= f * b[col];
            }
        }
    }
    Some(std::array::from_fn(|i| b[i] / a[i][i]))
}

/// Robust fit: RANSAC over minimal 4-point samples, then a least-squares refit on the
/// inliers (twice, re-collecting inliers). Returns the model and its inlier indices.
pub fn ransac(
    src: &[(f64, f64)],
    dst: &[(f64, f64)],
    threshold: f64,
    iterations: usize,
    rng: &mut Rng,
) -> Option<(Homography, Vec<usize>)> {
    let n = src.len();
    if n < 4 {
        return None;
    }
    let inliers_of = |h: &Homography| -> Vec<usize> {
        (0..n)
            .filter(|&i| match h.apply(src[i].0, src[i].1) {
                Some((u, v)) => (u - dst[i].0).powi(2) + (v - dst[i].1).powi(2) < threshold * threshold,
                None => false,
            })
            .collect()
    };
    let plausible = |h: &Homography| {
        let d = h.linear_det();
        d > 0.02 && d < 50.0
    };
    let mut best: Option<(Homography, Vec<usize>)> = None;
    for _ in 0..iterations {
        let mut idx = [0usize; 4];
        for k in 0..4 {
            loop {
                let c = rng.range_usize(0, n - 1);
                if !idx[..k].contains(&c) {
                    idx[k] = c;
                    break;
                }
            }
        }
        let s: Vec<_> = idx.iter().map(|&i| src[i]).collect();
        let d: Vec<_> = idx.iter().map(|&i| dst[i]).collect();
        let Some(h) = Homography::fit(&s, &d) else { continue };
        if !plausible(&h) {
            continue;
        }
        let inl = inliers_of(&h);
        if best.as_ref().is_none_or(|b| inl.len() > b.1.len()) {
            best = Some((h, inl));
        }
    }
    let (mut h, mut inl) = best?;
    for _ in 0..2 {
        let s: Vec<_> = inl.iter().map(|&i| src[i]).collect();
        let d: Vec<_> = inl.iter().map(|&i| dst[i]).collect();
        match Homography::fit(&s, &d) {
            Some(h2) if plausible(&h2) => {
                let inl2 = inliers_of(&h2);
                if inl2.len() >= inl.len() {
                    h = h2;
                    inl = inl2;
                }
            }
            _ => break,
        }
    }
    Some((h, inl))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_h() -> Homography {
        Homography([0.9, 0.2, 12.0, -0.15, 1.1, -7.0, 1e-4, -2e-4, 1.0])
    }

    #[test]
    fn fit_recovers_exact_homography() {
        let h = sample_h();
        let src: Vec<_> = (0..20).map(|i| ((i * 37 % 200) as f64, (i * 53 % 150) as f64)).collect();
        let dst: Vec<_> = src.iter().map(|p| h.apply(p.0, p.1).unwrap()).collect();
        let f = Homography::fit(&src, &dst).unwrap();
        for (a, b) in f.0.iter().zip(h.0.iter()) {
            assert!((a - b).abs() < 1e-6, "{f:?}");
        }
        let inv = f.inverse().unwrap();
        let (x, y) = inv.apply(dst[3].0, dst[3].1).unwrap();
        assert!((x - src[3].0).abs() < 1e-6 && (y - src[3].1).abs() < 1e-6);
    }

    #[test]
    fn ransac_ignores_outliers() {
        let h = sample_h();
        let mut rng = Rng::new(5);
        let mut src = Vec::new();
        let mut dst = Vec::new();
        for i in 0..60 {
            let p = (rng.range_f32(0.0, 300.0) as f64, rng.range_f32(0.0, 200.0) as f64);
            src.push(p);
            if i % 3 == 0 {
                dst.push((rng.range_f32(0.0, 300.0) as f64, rng.range_f32(0.0, 200.0) as f64));
            } else {
                dst.push(h.apply(p.0, p.1).unwrap());
            }
        }
        let (f, inl) = ransac(&src, &dst, 1.0, 500, &mut rng).unwrap();
        assert_eq!(inl.len(), 40);
        let (u, v) = f.apply(100.0, 100.0).unwrap();
        let (u0, v0) = h.apply(100.0, 100.0).unwrap();
        assert!((u - u0).abs() < 1e-3 && (v - v0).abs() < 1e-3);
    }
}
