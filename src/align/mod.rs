//! Reference alignment: where does each reference show the target's scene? Keypoint matches
//! (features.rs) → RANSAC homography (homography.rs) → the reference warped into the target's
//! frame with its exposure matched. The warped references ("guide") tell the scene model what
//! the hole most likely contained; the model then fixes what one homography cannot (parallax,
//! lighting, seams).

pub mod features;
pub mod homography;
pub mod parallax;
pub mod refine;

use crate::rng::Rng;
use crate::scene::{Mask, RgbF};
use features::{DetectOptions, Gray, detect, match_descriptors};
pub use homography::Homography;

#[derive(Clone, Debug)]
pub struct Alignment {
    /// Maps a pixel of the target canvas to the matching pixel of the reference.
    pub target_to_ref: Homography,
    pub inliers: usize,
    pub matches: usize,
}

const MIN_INLIERS: usize = 12;

/// Align `reference` to the known part of `target` (`fill` = 1 marks unknown pixels).
pub fn align(target: &RgbF, fill: &Mask, reference: &RgbF, seed: u64) -> Option<Alignment> {
    let tg = Gray::new(target.width, target.height, target.gray());
    let rg = Gray::new(reference.width, reference.height, reference.gray());
    let tk = detect(&tg, &DetectOptions { max_points: 1500, clearance: Some(fill.distance_outside()) });
    let rk = detect(&rg, &DetectOptions { max_points: 1500, clearance: None });
    if tk.len() < 4 || rk.len() < 4 {
        return None;
    }
    let m = match_descriptors(&tk, &rk, 0.85);
    let src: Vec<_> = m.iter().map(|&(i, _)| (tk[i].x as f64, tk[i].y as f64)).collect();
    let dst: Vec<_> = m.iter().map(|&(_, j)| (rk[j].x as f64, rk[j].y as f64)).collect();
    let thresh = 0.008 * target.width.max(target.height) as f64 + 1.0;
    let (h, inl) = homography::ransac(&src, &dst, thresh, 3000, &mut Rng::new(seed))?;
    if inl.len() < MIN_INLIERS || (inl.len() as f64) < 0.1 * m.len() as f64 {
        return None;
    }
    // Keypoints locate the map to a pixel or two; photometric refinement makes it sub-pixel.
    let h = refine::refine(target, fill, reference, &h);
    Some(Alignment { target_to_ref: h, inliers: inl.len(), matches: m.len() })
}

/// Warp `src` into a `width`×`height` frame: each output pixel p shows `src` at `map(p)`.
/// The returned mask is 1 where that point lies inside `src` (and, with `src_known`, where
/// `src` is known there).
pub fn warp(src: &RgbF, src_known: Option<&Mask>, map: &Homography, width: usize, height: usize) -> (RgbF, Mask) {
    warp_shifted(src, src_known, map, None, width, height)
}

/// `warp` after a per-pixel shift: output pixel p shows `src` at `map(p + shift(p))` (one
/// interpolation, not two, for the parallax-corrected guide).
pub fn warp_shifted(
    src: &RgbF,
    src_known: Option<&Mask>,
    map: &Homography,
    shift: Option<&parallax::Field>,
    width: usize,
    height: usize,
) -> (RgbF, Mask) {
    if let Some(f) = shift {
        assert_eq!((f.width, f.height), (width, height), "shift field of another size");
    }
    let mut out = RgbF::new(width, height);
    let mut valid = Mask::new(width, height, 0.0);
    for y in 0..height {
        for x in 0..width {
            let (sx, sy) = shift.map_or((0.0, 0.0), |f| (f.dx[y * width + x] as f64, f.dy[y * width + x] as f64));
            let Some((u, v)) = map.apply(x as f64 + sx, y as f64 + sy) else { continue };
            if u < -0.5 || v < -0.5 || u > src.width as f64 - 0.5 || v > src.height as f64 - 0.5 {
                continue;
            }
            if let Some(k) = src_known {
                let (ui, vi) = ((u.round() as usize).min(k.width - 1), (v.round() as usize).min(k.height - 1));
                if k.get(ui, vi) < 0.5 {
                    continue;
                }
            }
            out.set(x, y, src.sample(u as f32, v as f32));
            valid.set(x, y, 1.0);
        }
    }
    (out, valid)
}

/// Match the warped image's exposure to `target` per channel (gain and offset, least squares
/// over pixels valid in both); gains are kept within [0.5, 2].
pub fn match_exposure(warped: &mut RgbF, valid: &Mask, target: &RgbF, target_known: &Mask) {
    for k in 0..3 {
        let (mut n, mut sx, mut sy, mut sxx, mut sxy) = (0.0f64, 0.0, 0.0, 0.0, 0.0);
        for i in 0..valid.data.len() {
            if valid.data[i] >= 0.5 && target_known.data[i] >= 0.5 {
                let (x, y) = (warped.data[3 * i + k] as f64, target.data[3 * i + k] as f64);
                n += 1.0;
                sx += x;
                sy += y;
                sxx += x * x;
                sxy += x * y;
            }
        }
        if n < 50.0 {
            continue;
        }
        let var = sxx / n - (sx / n).powi(2);
        let cov = sxy / n - (sx / n) * (sy / n);
        let gain = if var > 1e-6 { (cov / var).clamp(0.5, 2.0) } else { 1.0 };
        let off = sy / n - gain * sx / n;
        for i in 0..valid.data.len() {
            let v = &mut warped.data[3 * i + k];
            *v = ((*v as f64) * gain + off).clamp(0.0, 1.0) as f32;
        }
    }
}

/// What the references say each pixel of a frame should look like.
#[derive(Clone, Debug)]
pub struct Guide {
    pub rgb: RgbF,
    /// 1 where some reference covers the pixel.
    pub valid: Mask,
}

impl Guide {
    pub fn empty(width: usize, height: usize) -> Guide {
        Guide { rgb: RgbF::new(width, height), valid: Mask::new(width, height, 0.0) }
    }

    pub fn coverage(&self) -> f32 {
        self.valid.fill_fraction()
    }

    /// Lay `other` under this guide: fill only pixels this guide does not cover yet.
    pub fn fill_gaps_from(&mut self, rgb: &RgbF, valid: &Mask) {
        for i in 0..self.valid.data.len() {
            if self.valid.data[i] < 0.5 && valid.data[i] >= 0.5 {
                self.valid.data[i] = 1.0;
                self.rgb.data[3 * i..3 * i + 3].copy_from_slice(&rgb.data[3 * i..3 * i + 3]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A textured test scene: smooth blobs plus a few sharp shapes.
    pub(crate) fn texture(w: usize, h: usize, shift: (f32, f32), angle: f32, scale: f32) -> RgbF {
        let (s, c) = angle.sin_cos();
        RgbF::from_fn(w, h, |x, y| {
            let (xf, yf) = (x as f32 - w as f32 / 2.0, y as f32 - h as f32 / 2.0);
            let u = (c * xf - s * yf) / scale + shift.0;
            let v = (s * xf + c * yf) / scale + shift.1;
            let a = (u * 0.11).sin() * (v * 0.07).cos() + ((u + v) * 0.031).sin();
            let b = (((u / 23.0).floor() as i64 + (v / 17.0).floor() as i64) % 3) as f32 / 3.0;
            let g = ((u * 0.05 + v * 0.02).cos() * 0.5 + 0.5) * 0.6;
            [0.5 + 0.25 * a, b * 0.8 + 0.1, g + 0.2 * (u * 0.3).sin().signum()]
        })
    }

    #[test]
    fn aligns_a_rotated_rescaled_brighter_view() {
        let target = texture(200, 160, (0.0, 0.0), 0.0, 1.0);
        let mut reference = texture(220, 180, (8.0, -5.0), 0.35, 1.2);
        for v in reference.data.iter_mut() {
            *v = (*v * 1.2 + 0.05).min(1.0);
        }
        let mut fill = Mask::new(200, 160, 0.0);
        for y in 50..110 {
            for x in 60..140 {
                fill.set(x, y, 1.0);
            }
        }
        let a = align(&target, &fill, &reference, 1).expect("alignment found");
        assert!(a.inliers >= 12);
        // Where the reference truly shows each target point (inverse of `texture`'s mapping).
        let (sa, ca) = 0.35f32.sin_cos();
        let truth = |x: f32, y: f32| {
            let (u, v) = ((x - 100.0 - 8.0) * 1.2, (y - 80.0 + 5.0) * 1.2);
            (ca * u + sa * v + 110.0, -sa * u + ca * v + 90.0)
        };
        for &(x, y) in &[(70.0f32, 60.0f32), (100.0, 80.0), (130.0, 100.0), (20.0, 20.0), (180.0, 140.0)] {
            let (u, v) = a.target_to_ref.apply(x as f64, y as f64).unwrap();
            let (tu, tv) = truth(x, y);
            let err = ((u as f32 - tu).powi(2) + (v as f32 - tv).powi(2)).sqrt();
            assert!(err < 1.5, "point {x},{y}: mapped to {u:.1},{v:.1}, truth {tu:.1},{tv:.1}");
        }
        // Exposure matching undoes the brightness change on smooth parts.
        let (mut warped, valid) = warp(&reference, None, &a.target_to_ref, 200, 160);
        let known = Mask { width: 200, height: 160, data: fill.data.iter().map(|v| 1.0 - v).collect() };
        match_exposure(&mut warped, &valid, &target, &known);
        let mut diffs: Vec<f32> = Vec::new();
        for y in 55..105 {
            for x in 65..135 {
                if valid.get(x, y) > 0.5 {
                    let (p, q) = (warped.get(x, y), target.get(x, y));
                    diffs.push((p[0] - q[0]).abs());
                }
            }
        }
        diffs.sort_by(|a, b| a.total_cmp(b));
        assert!(diffs.len() > 3000);
        assert!(diffs[diffs.len() / 2] < 0.02, "median red error {}", diffs[diffs.len() / 2]);
    }
}
