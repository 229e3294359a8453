//! Reference alignment: where does each reference show the target's scene? Keypoint matches
//! (features.rs) → RANSAC homography (homography.rs) → the reference warped into the target's
//! frame with its exposure matched. The warped references ("guide") tell the scene model what
//! the hole most likely contained; the model then fixes what one homography cannot (parallax,
//! lighting, seams). A scene that is several planes gets several homographies per reference
//! (sequential RANSAC on the matches the earlier planes left unexplained), and `trust` decides
//! per pixel which warped candidate, if any, the hole takes.

pub mod exemplar;
pub mod features;
pub mod guide;
pub mod homography;
pub mod mincut;
pub mod montage;
pub mod parallax;
pub mod refine;
pub mod trust;

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
    /// Further planes, best supported first: homographies fitted to the matches the earlier
    /// ones left unexplained (another book, the floor, the far wall), with their inlier counts.
    pub planes: Vec<(Homography, usize)>,
    /// The first of `planes` is the still camera (see `align`'s `still`).
    pub still: bool,
    /// Local planes (`local_planes`): fitted to the matches near the hole only, each with the
    /// box of target pixels (x0, y0, x1, y1, exclusive end) its exposure is matched in.
    pub local: Vec<(Homography, [usize; 4])>,
}

impl Alignment {
    /// Whether model `k` of `models()` is the still camera.
    pub fn is_still(&self, k: usize) -> bool {
        self.still && k == 1
    }

    /// Every plane model, the main one first.
    pub fn models(&self) -> impl Iterator<Item = &Homography> {
        std::iter::once(&self.target_to_ref)
            .chain(self.planes.iter().map(|(h, _)| h))
            .chain(self.local.iter().map(|(h, _)| h))
    }

    /// For model `k` of `models()` that is a local plane, the box it was fitted in.
    pub fn local_box(&self, k: usize) -> Option<[usize; 4]> {
        k.checked_sub(1 + self.planes.len()).map(|j| self.local[j].1)
    }
}

/// What the alignment explains as it works, for whoever tunes it (`REALFILL_DEBUG_ALIGN`,
/// `REALFILL_DEBUG_PARALLAX`: the switches are read at the top, where a job's settings are
/// made, and passed down as this value).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Diagnostics {
    /// Print each step and write each candidate warp, its trust and the per-pixel choice as
    /// images into this folder.
    pub dir: Option<std::path::PathBuf>,
    /// Print each guide's parallax check.
    pub parallax: bool,
}

impl Diagnostics {
    /// Whether the steps are printed.
    pub fn on(&self) -> bool {
        self.dir.is_some()
    }
}

const MIN_INLIERS: usize = 12;
/// At most this many plane models per reference.
const MAX_PLANES: usize = 4;
/// Local planes: from the matches within this distance of the hole (working pixels)...
const LOCAL_RADIUS: f64 = 48.0;
/// ...with at least this many inliers (a compact group of matches is less likely to agree by
/// chance than one spread over the photo; the trust still checks every pixel it would give)...
const LOCAL_MIN_INLIERS: usize = 8;
/// ...and at most this many per reference.
const MAX_LOCAL: usize = 2;

/// Align `reference` to the known part of `target` (`fill` = 1 marks unknown pixels).
/// `still`: where the reference would show each target pixel had the camera not moved (same
/// size photos: another moment from the same place); it joins the plane models when the
/// matches bear it out. In a video or a burst the background is often the part with the
/// fewest features (a bare wall), so the fitted planes follow the people instead.
pub fn align(
    target: &RgbF,
    fill: &Mask,
    reference: &RgbF,
    seed: u64,
    still: Option<Homography>,
    dbg: &Diagnostics,
) -> Option<Alignment> {
    // The hole's pixels are black in a loaded photo; the smooth fill keeps their edge out of
    // the descriptors of keypoints near the hole (books-strokes: 78 → 92 matches).
    let tg = Gray::new(target.width, target.height, crate::scene::pushpull::push_pull(target, &fill.inverted()).gray());
    let rg = Gray::new(reference.width, reference.height, reference.gray());
    let to_hole = fill.distance_outside();
    let tk = detect(&tg, &DetectOptions { max_points: 1500, clearance: Some(to_hole.clone()) });
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
    // Further planes from the matches no earlier plane explains. A model must stand on its
    // own (MIN_INLIERS) and put the remaining matches somewhere else than the earlier models do
    // (else it is the same plane fitted to its outliers).
    if dbg.on() {
        eprintln!("alignment: {} matches, main plane {} inliers", m.len(), inl.len());
    }
    let mut planes: Vec<(Homography, usize)> = Vec::new();
    let mut explained: Vec<bool> = vec![false; m.len()];
    inl.iter().for_each(|&i| explained[i] = true);
    let mut rng = Rng::new(seed ^ 0x9e37);
    while planes.len() + 1 < MAX_PLANES {
        let rest: Vec<usize> = (0..m.len()).filter(|&i| !explained[i]).collect();
        if rest.len() < MIN_INLIERS {
            break;
        }
        let (s2, d2): (Vec<_>, Vec<_>) = rest.iter().map(|&i| (src[i], dst[i])).unzip();
        let Some((h2, inl2)) = homography::ransac(&s2, &d2, thresh, 2000, &mut rng) else { break };
        if inl2.len() < MIN_INLIERS {
            break;
        }
        inl2.iter().for_each(|&k| explained[rest[k]] = true);
        let new_place = |other: &Homography| {
            let far = inl2.iter().filter(|&&k| {
                let (x, y) = s2[k];
                match (h2.apply(x, y), other.apply(x, y)) {
                    (Some(a), Some(b)) => (a.0 - b.0).hypot(a.1 - b.1) > 2.0 * thresh,
                    _ => true,
                }
            });
            far.count() * 2 > inl2.len()
        };
        let fresh = new_place(&h) && planes.iter().all(|(p, _)| new_place(p));
        if dbg.on() {
            eprintln!(
                "alignment: another plane with {} of {} remaining matches ({})",
                inl2.len(),
                rest.len(),
                if fresh { "kept" } else { "same place as an earlier one" }
            );
        }
        if fresh {
            planes.push((h2, inl2.len()));
        }
    }
    let earlier: Vec<&Homography> = std::iter::once(&h).chain(planes.iter().map(|(p, _)| p)).collect();
    let local = local_planes(fill, &to_hole, &src, &dst, thresh, &earlier, &mut rng, dbg);
    let mut kept_still = false;
    if let Some(still) = still {
        let near = (0..m.len()).filter(|&i| agrees(&still, src[i], dst[i], thresh)).count();
        if dbg.on() {
            eprintln!("alignment: a still camera explains {near} of {} matches", m.len());
        }
        if near >= MIN_INLIERS {
            planes.insert(0, (still, near));
            kept_still = true;
        }
    }
    // Keypoints locate the map to a pixel or two; photometric refinement makes it sub-pixel.
    // (Only the main plane: the refinement fits all known pixels, which are mostly its plane.)
    let h = refine::refine(target, fill, reference, &h);
    if dbg.on() {
        eprintln!("alignment: main plane {:?}", h.0.map(|v| (v * 1e4).round() / 1e4));
    }
    Some(Alignment { target_to_ref: h, inliers: inl.len(), matches: m.len(), planes, still: kept_still, local })
}

/// Planes fitted to the matches near the hole only (TransFill's idea of several homographies,
/// each for the region it explains): on a wide-baseline pair the main plane can explain the
/// matches on a second, nearby object within RANSAC's threshold and still put that object's
/// edge in the hole pixels away (books-strokes: the *Let Us C* cover, 13 px at its top edge).
/// A local plane is kept when it is new: most of its inliers are explained by no earlier model,
/// or, over the hole near its matches, it maps to a place more than `thresh` from every
/// earlier model's on average (else it is the main plane again and only adds a competitor).
/// `earlier`: the main plane and the further ones; `to_hole`: each target pixel's distance to
/// the nearest pixel to fill (`Mask::distance_outside`).
#[allow(clippy::too_many_arguments, reason = "the matches and what align has found so far, each read once")]
fn local_planes(
    fill: &Mask,
    to_hole: &[f32],
    src: &[(f64, f64)],
    dst: &[(f64, f64)],
    thresh: f64,
    earlier: &[&Homography],
    rng: &mut Rng,
    dbg: &Diagnostics,
) -> Vec<(Homography, [usize; 4])> {
    let (w, h) = (fill.width, fill.height);
    let near: Vec<usize> = (0..src.len())
        .filter(|&i| {
            let (x, y) = (src[i].0.round() as usize, src[i].1.round() as usize);
            x < w && y < h && (to_hole[y * w + x] as f64) <= LOCAL_RADIUS
        })
        .collect();
    let explained = |i: usize| earlier.iter().any(|m| agrees(m, src[i], dst[i], thresh));
    let debug = dbg.on();
    let mut used = vec![false; near.len()];
    let mut out = Vec::new();
    while out.len() < MAX_LOCAL {
        let rest: Vec<usize> = (0..near.len()).filter(|&k| !used[k]).collect();
        if rest.len() < LOCAL_MIN_INLIERS {
            break;
        }
        let (s2, d2): (Vec<_>, Vec<_>) = rest.iter().map(|&k| (src[near[k]], dst[near[k]])).unzip();
        let Some((model, inl)) = homography::ransac(&s2, &d2, thresh, 2000, rng) else { break };
        if inl.len() < LOCAL_MIN_INLIERS {
            break;
        }
        inl.iter().for_each(|&k| used[rest[k]] = true);
        let new = inl.iter().filter(|&&k| !explained(near[rest[k]])).count();
        let pts: Vec<(f64, f64)> = inl.iter().map(|&k| s2[k]).collect();
        let (x0, x1) = pts.iter().fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.0), a.1.max(p.0)));
        let (y0, y1) = pts.iter().fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.1), a.1.max(p.1)));
        let grown = |g: f64| {
            [
                (x0 - g).max(0.0) as usize,
                (y0 - g).max(0.0) as usize,
                ((x1 + g) as usize).min(w),
                ((y1 + g) as usize).min(h),
            ]
        };
        let near_hole = grown(LOCAL_RADIUS / 2.0);
        let gaps: Vec<Option<f64>> = earlier.iter().map(|m| mean_gap(&model, m, fill, near_hole)).collect();
        let apart = gaps.iter().all(|g| g.is_some_and(|g| g > thresh));
        let kept = new * 2 > inl.len() || apart;
        if debug {
            let gaps: Vec<f64> = gaps.iter().map(|g| (g.unwrap_or(0.0) * 10.0).round() / 10.0).collect();
            eprintln!(
                "alignment: local plane with {} of {} matches near the hole, {new} explained by no earlier model, \
                 mean distance from them in the hole {gaps:?} px ({})",
                inl.len(),
                rest.len(),
                if kept { "kept" } else { "same as an earlier one" }
            );
        }
        if kept {
            out.push((model, grown(LOCAL_RADIUS)));
        }
    }
    out
}

/// Whether `m` maps the target point `s` within `thresh` pixels of the reference point `d`.
fn agrees(m: &Homography, s: (f64, f64), d: (f64, f64), thresh: f64) -> bool {
    m.apply(s.0, s.1).is_some_and(|(u, v)| (u - d.0).hypot(v - d.1) < thresh)
}

/// Mean distance between where `a` and `b` put the reference, over the pixels to fill in
/// `area` (x0, y0, x1, y1; every second pixel each way); `None` where none is mapped by both.
fn mean_gap(a: &Homography, b: &Homography, fill: &Mask, area: [usize; 4]) -> Option<f64> {
    let [x0, y0, x1, y1] = area;
    let (mut sum, mut n) = (0.0, 0usize);
    for y in (y0..y1).step_by(2) {
        for x in (x0..x1).step_by(2).filter(|&x| fill.get(x, y) >= 0.5) {
            if let (Some(p), Some(q)) = (a.apply(x as f64, y as f64), b.apply(x as f64, y as f64)) {
                sum += (p.0 - q.0).hypot(p.1 - q.1);
                n += 1;
            }
        }
    }
    (n > 0).then(|| sum / n as f64)
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
/// over pixels valid in both); gains are kept within [0.5, 2]. The fit is repeated on the
/// pixels it explains (residual within three median deviations): pixels where the reference
/// shows something else — a person who moved, another plane — would otherwise pull the gain
/// toward zero (a least-squares slope shrinks with every mismatched pair), which dims the
/// whole paste (basketball: gain 0.93, −4 dB on the wall behind).
pub fn match_exposure(warped: &mut RgbF, valid: &Mask, target: &RgbF, target_known: &Mask) {
    let fit = exposure_fit(warped, valid, target, target_known);
    apply_exposure(warped, &fit);
}

/// `match_exposure`'s fit: per channel, the gain and offset (None: too few pixels to fit).
pub(crate) fn exposure_fit(warped: &RgbF, valid: &Mask, target: &RgbF, target_known: &Mask) -> [Option<(f64, f64)>; 3] {
    let both: Vec<usize> =
        (0..valid.data.len()).filter(|&i| valid.data[i] >= 0.5 && target_known.data[i] >= 0.5).collect();
    std::array::from_fn(|k| {
        let pairs: Vec<(f64, f64)> =
            both.iter().map(|&i| (warped.data[3 * i + k] as f64, target.data[3 * i + k] as f64)).collect();
        robust_gain(&pairs)
    })
}

/// Apply per-channel gains and offsets (`exposure_fit`), clamped to [0, 1].
pub(crate) fn apply_exposure(img: &mut RgbF, fit: &[Option<(f64, f64)>; 3]) {
    for (k, f) in fit.iter().enumerate() {
        let Some((gain, off)) = *f else { continue };
        for px in img.data.chunks_exact_mut(3) {
            px[k] = ((px[k] as f64) * gain + off).clamp(0.0, 1.0) as f32;
        }
    }
}

/// Gain and offset mapping x to y: least squares, then twice more on the pairs whose residual
/// is within three median absolute residuals (at least 0.01). None with fewer than 50 pairs.
fn robust_gain(pairs: &[(f64, f64)]) -> Option<(f64, f64)> {
    let fit = |keep: &dyn Fn(f64, f64) -> bool| {
        let (mut n, mut sx, mut sy, mut sxx, mut sxy) = (0.0f64, 0.0, 0.0, 0.0, 0.0);
        for &(x, y) in pairs.iter().filter(|&&(x, y)| keep(x, y)) {
            n += 1.0;
            sx += x;
            sy += y;
            sxx += x * x;
            sxy += x * y;
        }
        if n < 50.0 {
            return None;
        }
        let var = sxx / n - (sx / n).powi(2);
        let cov = sxy / n - (sx / n) * (sy / n);
        let gain = if var > 1e-6 { (cov / var).clamp(0.5, 2.0) } else { 1.0 };
        Some((gain, sy / n - gain * sx / n))
    };
    let (mut gain, mut off) = fit(&|_, _| true)?;
    for _ in 0..2 {
        let mut res: Vec<f64> = pairs.iter().map(|&(x, y)| (y - gain * x - off).abs()).collect();
        let mid = res.len() / 2;
        let mad = *res.select_nth_unstable_by(mid, |a, b| a.total_cmp(b)).1;
        let limit = (3.0 * mad).max(0.01);
        match fit(&|x, y| (y - gain * x - off).abs() <= limit) {
            Some(g) => (gain, off) = g,
            None => break,
        }
    }
    Some((gain, off))
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
        let a = align(&target, &fill, &reference, 1, None, &Diagnostics::default()).expect("alignment found");
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
        let known = fill.inverted();
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

    #[test]
    fn exposure_gain_ignores_pixels_that_show_something_else() {
        // 70 % of the pixels are the same scene 1.2× brighter plus 0.05; 30 % show something
        // unrelated (a person who moved). Plain least squares would shrink the gain.
        let mut rng = Rng::new(11);
        let pairs: Vec<(f64, f64)> = (0..2000)
            .map(|i| {
                let x = rng.range_f32(0.05, 0.75) as f64;
                if i % 10 < 7 { (x, 1.2 * x + 0.05) } else { (x, rng.range_f32(0.0, 1.0) as f64) }
            })
            .collect();
        let (gain, off) = robust_gain(&pairs).unwrap();
        assert!((gain - 1.2).abs() < 0.02 && (off - 0.05).abs() < 0.01, "gain {gain}, offset {off}");
        assert!(robust_gain(&pairs[..40]).is_none(), "too few pairs to fit");
    }

    #[test]
    fn a_second_plane_gets_its_own_model_and_a_still_camera_is_kept_when_matches_agree() {
        // Left half of the reference: the target moved by (−9, 4); right half: not moved.
        let (w, h) = (240, 180);
        let target = texture(w, h, (0.0, 0.0), 0.0, 1.0);
        let moved = texture(w, h, (-9.0, 4.0), 0.0, 1.0);
        let reference = RgbF::from_fn(w, h, |x, y| if x < w / 2 { moved.get(x, y) } else { target.get(x, y) });
        let mut fill = Mask::new(w, h, 0.0);
        for y in 70..110 {
            for x in 100..140 {
                fill.set(x, y, 1.0);
            }
        }
        let still = Homography([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
        let a = align(&target, &fill, &reference, 3, Some(still), &Diagnostics::default()).expect("aligned");
        let models: Vec<Homography> = a.models().copied().collect();
        assert!(models.len() >= 2, "two planes, got {}", models.len());
        // One model maps a left-half point by the left half's motion, one is (near) identity.
        let maps_to = |m: &Homography, (x, y): (f64, f64), (u, v): (f64, f64)| {
            m.apply(x, y).is_some_and(|(a, b)| (a - u).hypot(b - v) < 1.5)
        };
        // texture(shift s) at pixel p shows the pattern at p + s: the target point p is where
        // the reference shows it, at p − s, on the moved half.
        assert!(models.iter().any(|m| maps_to(m, (40.0, 90.0), (49.0, 86.0))), "left plane: {models:?}");
        assert!(models.iter().any(|m| maps_to(m, (200.0, 90.0), (200.0, 90.0))), "still plane: {models:?}");
    }

    #[test]
    fn a_local_plane_is_fitted_near_the_hole_only_where_the_earlier_models_put_it_elsewhere() {
        let (w, h) = (240, 180);
        let mut fill = Mask::new(w, h, 0.0);
        for y in 70..110 {
            for x in 100..140 {
                fill.set(x, y, 1.0);
            }
        }
        let main = Homography([1.0, 0.0, 5.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
        let other = Homography([1.0, 0.0, -12.0, 0.0, 1.0, 6.0, 0.0, 0.0, 1.0]);
        let mut rng = Rng::new(3);
        // Matches of the main plane all over the photo (or only far from the hole), and 14 near
        // the hole's left edge that follow `near_model`.
        let dist = fill.distance_outside();
        let matches = |near_model: &Homography, main_near_hole: bool, rng: &mut Rng| {
            let mut src = Vec::new();
            for k in 0..60 {
                let p = ((k % 10) as f64 * 23.0 + 5.0, (k / 10) as f64 * 29.0 + 5.0);
                let d = dist[p.1 as usize * w + p.0 as usize];
                if d > 0.0 && (main_near_hole || d as f64 > LOCAL_RADIUS) {
                    src.push((p, main));
                }
            }
            for _ in 0..14 {
                let p = (rng.range_f32(70.0, 98.0) as f64, rng.range_f32(72.0, 108.0) as f64);
                src.push((p, *near_model));
            }
            let (s, d): (Vec<_>, Vec<_>) = src.iter().map(|&(p, m)| (p, m.apply(p.0, p.1).unwrap())).unzip();
            (s, d)
        };
        let (s, d) = matches(&other, true, &mut rng);
        let local = local_planes(&fill, &dist, &s, &d, 4.0, &[&main], &mut rng, &Diagnostics::default());
        assert_eq!(local.len(), 1, "one local plane");
        let (u, v) = local[0].0.apply(120.0, 90.0).unwrap();
        assert!((u - 108.0).abs() < 0.5 && (v - 96.0).abs() < 0.5, "maps the hole as the near matches do: {u}, {v}");
        let [x0, y0, x1, y1] = local[0].1;
        assert!(x0 < 70 && y0 < 72 && x1 > 98 && y1 > 108 && x1 <= w && y1 <= h, "box {:?}", local[0].1);
        // Matches near the hole that the main plane explains give no local plane...
        let (s, d) = matches(&main, true, &mut rng);
        assert!(local_planes(&fill, &dist, &s, &d, 4.0, &[&main], &mut rng, &Diagnostics::default()).is_empty());
        // ...unless the plane they fit puts the hole elsewhere: stretched about x = 84, it is
        // within 3.5 px of the main plane at the matches (x 70–98) and 4–9.5 px off in the hole.
        let stretched = Homography([1.25, 0.0, -16.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
        let (s, d) = matches(&stretched, false, &mut rng);
        let local = local_planes(&fill, &dist, &s, &d, 4.0, &[&main], &mut rng, &Diagnostics::default());
        assert_eq!(local.len(), 1, "the stretched plane is kept");
        let (u, _) = local[0].0.apply(110.0, 90.0).unwrap();
        assert!((u - 121.5).abs() < 0.5, "maps the hole as the near matches do: {u}");
    }
}
