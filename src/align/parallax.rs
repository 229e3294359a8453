//! Parallax correction of a warped reference: one homography maps one plane, so objects
//! nearer or farther than it land a few pixels off (rubberwhale's whale sits 2–4 px from where
//! the target shows it). Around the hole the target is known, so the residual shift can be
//! measured there — normalised cross-correlation of small patches on a grid — and carried
//! into the hole by normalised convolution (a weighted average of the measured shifts, over
//! wider and wider neighbourhoods until the hole's centre is reached). The warped reference
//! is then resampled along that smooth field.
//!
//! The field is kept only if it predicts shifts it was not fitted to: the grid is split into
//! two folds of 32-px cells, each fold's field is checked against the other fold's
//! measurements, and a planar scene (shifts that are noise around zero) keeps its warp as it is.

use rayon::prelude::*;

use crate::scene::blur::blur;
use crate::scene::{Mask, RgbF};

/// Patch radius (15×15 patches) and search radius of the matching, in pixels.
const PATCH: usize = 7;
const SEARCH: isize = 6;
/// Grid step between measured points.
const STEP: usize = 4;
/// A match counts when its correlation reaches this and the target patch has texture.
const MIN_NCC: f32 = 0.8;
const MIN_SPREAD: f32 = 0.02;
/// Side of the cells of the two validation folds.
const FOLD_CELL: usize = 32;

/// A measured residual shift: at target pixel (x, y), the guide matches at (x + dx, y + dy).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shift {
    pub x: usize,
    pub y: usize,
    pub dx: f32,
    pub dy: f32,
}

/// A dense shift field (dx, dy per pixel).
pub struct Field {
    pub width: usize,
    pub height: usize,
    pub dx: Vec<f32>,
    pub dy: Vec<f32>,
}

/// Summed-area table of a predicate, for "is this whole patch usable" in O(1).
struct Integral {
    w: usize,
    s: Vec<u32>,
}

impl Integral {
    fn new(w: usize, h: usize, bad: impl Fn(usize) -> bool) -> Integral {
        let mut s = vec![0u32; (w + 1) * (h + 1)];
        for y in 0..h {
            let mut row = 0;
            for x in 0..w {
                row += bad(y * w + x) as u32;
                s[(y + 1) * (w + 1) + x + 1] = s[y * (w + 1) + x + 1] + row;
            }
        }
        Integral { w, s }
    }

    /// No bad pixel in the square of radius r around (x, y) (caller keeps it inside).
    fn clear(&self, x: usize, y: usize, r: usize) -> bool {
        let (x0, y0, x1, y1) = (x - r, y - r, x + r + 1, y + r + 1);
        let w = self.w + 1;
        self.s[y1 * w + x1] + self.s[y0 * w + x0] == self.s[y0 * w + x1] + self.s[y1 * w + x0]
    }
}

/// Residual shifts between the target's known pixels and the warped reference, on a grid.
pub fn measure(target: &RgbF, known: &Mask, guide: &RgbF, guide_valid: &Mask) -> Vec<Shift> {
    let (w, h) = (target.width, target.height);
    let (tg, gg) = (target.gray(), guide.gray());
    let known_ok = Integral::new(w, h, |i| known.data[i] < 0.5);
    let guide_ok = Integral::new(w, h, |i| guide_valid.data[i] < 0.5);
    let margin = PATCH + SEARCH as usize;
    if w <= 2 * margin || h <= 2 * margin {
        return Vec::new();
    }
    let n = (2 * PATCH + 1) * (2 * PATCH + 1);
    let rows: Vec<usize> = (margin..h - margin).step_by(STEP).collect();
    rows.par_iter()
        .flat_map_iter(|&y| {
            let (tg, gg, known_ok, guide_ok) = (&tg, &gg, &known_ok, &guide_ok);
            (margin..w - margin).step_by(STEP).filter_map(move |x| {
                if !known_ok.clear(x, y, PATCH) || !guide_ok.clear(x, y, margin) {
                    return None;
                }
                // The target patch, mean-free and normalised.
                let mut a = Vec::with_capacity(n);
                for yy in y - PATCH..=y + PATCH {
                    a.extend_from_slice(&tg[yy * w + x - PATCH..=yy * w + x + PATCH]);
                }
                let mean = a.iter().sum::<f32>() / n as f32;
                a.iter_mut().for_each(|v| *v -= mean);
                let norm = a.iter().map(|v| v * v).sum::<f32>().sqrt();
                if norm / (n as f32).sqrt() < MIN_SPREAD {
                    return None; // flat: any shift matches
                }
                let side = (2 * SEARCH + 1) as usize;
                let mut scores = vec![-1.0f32; side * side];
                for (k, s) in scores.iter_mut().enumerate() {
                    let (dy, dx) = ((k / side) as isize - SEARCH, (k % side) as isize - SEARCH);
                    let (cx, cy) = ((x as isize + dx) as usize, (y as isize + dy) as usize);
                    let (mut sb, mut sbb, mut sab) = (0.0f32, 0.0f32, 0.0f32);
                    let mut i = 0;
                    for yy in cy - PATCH..=cy + PATCH {
                        for &b in &gg[yy * w + cx - PATCH..=yy * w + cx + PATCH] {
                            sb += b;
                            sbb += b * b;
                            sab += a[i] * b;
                            i += 1;
                        }
                    }
                    let var = (sbb - sb * sb / n as f32).max(1e-12);
                    *s = sab / (norm * var.sqrt());
                }
                let best = (0..scores.len()).max_by(|&i, &j| scores[i].total_cmp(&scores[j]))?;
                if scores[best] < MIN_NCC {
                    return None;
                }
                let (by, bx) = (best / side, best % side);
                // Sub-pixel: the peak of a parabola through the best score and its neighbours.
                let vertex = |l: f32, c: f32, r: f32| {
                    let d = l - 2.0 * c + r;
                    if d < 0.0 { (0.5 * (l - r) / d).clamp(-0.5, 0.5) } else { 0.0 }
                };
                let fx = if bx > 0 && bx + 1 < side {
                    vertex(scores[best - 1], scores[best], scores[best + 1])
                } else {
                    0.0
                };
                let fy = if by > 0 && by + 1 < side {
                    vertex(scores[best - side], scores[best], scores[best + side])
                } else {
                    0.0
                };
                Some(Shift { x, y, dx: bx as f32 - SEARCH as f32 + fx, dy: by as f32 - SEARCH as f32 + fy })
            })
        })
        .collect()
}

/// Dense field from scattered shifts: at each pixel, the weighted mean of the shifts within
/// the smallest neighbourhood (σ = 8, 16, … px) that holds enough of them.
pub fn spread(shifts: &[Shift], width: usize, height: usize) -> Field {
    let (w, h) = (width, height);
    let mut field = Field { width: w, height: h, dx: vec![0.0; w * h], dy: vec![0.0; w * h] };
    let mut done = vec![false; w * h];
    let (mut px, mut py, mut pw) = (vec![0.0f32; w * h], vec![0.0f32; w * h], vec![0.0f32; w * h]);
    for s in shifts {
        let i = s.y * w + s.x;
        px[i] += s.dx;
        py[i] += s.dy;
        pw[i] += 1.0;
    }
    let mut sigma = 8.0f32;
    while sigma <= 2.0 * w.max(h) as f32 && !done.iter().all(|&d| d) {
        let (mut sx, mut sy, mut sw) = (px.clone(), py.clone(), pw.clone());
        blur(&mut sx, w, h, sigma);
        blur(&mut sy, w, h, sigma);
        blur(&mut sw, w, h, sigma);
        // Enough = about two points' worth of weight at this scale.
        let enough = 2.0 / (2.0 * sigma * 2.0 * sigma);
        for i in 0..w * h {
            if !done[i] && sw[i] >= enough {
                field.dx[i] = sx[i] / sw[i];
                field.dy[i] = sy[i] / sw[i];
                done[i] = true;
            }
        }
        sigma *= 2.0;
    }
    field
}

/// How much better a field fitted to one fold predicts the other fold's shifts than no
/// correction does: mean error with the field / mean error without it (lower is better),
/// and the mean shift size.
fn cross_check(shifts: &[Shift], width: usize, height: usize) -> (f32, f32) {
    let fold = |s: &Shift| (s.x / FOLD_CELL + s.y / FOLD_CELL) % 2;
    let (mut with, mut without) = (0.0f32, 0.0f32);
    for f in 0..2 {
        let fit: Vec<Shift> = shifts.iter().filter(|s| fold(s) != f).copied().collect();
        let field = spread(&fit, width, height);
        for s in shifts.iter().filter(|s| fold(s) == f) {
            let i = s.y * width + s.x;
            with += (s.dx - field.dx[i]).hypot(s.dy - field.dy[i]);
            without += s.dx.hypot(s.dy);
        }
    }
    let n = shifts.len().max(1) as f32;
    (with / without.max(1e-6), without / n)
}

/// The residual field between the target's known pixels and a warped reference, when it
/// holds up on points it was not fitted to; otherwise None (the warp stays as it is).
pub fn correction(
    target: &RgbF,
    known: &Mask,
    guide: &RgbF,
    guide_valid: &Mask,
    dbg: &super::Diagnostics,
) -> Option<Field> {
    let started = std::time::Instant::now();
    let shifts = measure(target, known, guide, guide_valid);
    if shifts.len() < 50 {
        return None;
    }
    let (ratio, size) = cross_check(&shifts, target.width, target.height);
    if dbg.parallax {
        eprintln!(
            "parallax: {} shifts, held-out error ratio {ratio:.2}, mean shift {size:.2} px ({:.0} ms to measure and check)",
            shifts.len(),
            started.elapsed().as_secs_f64() * 1e3
        );
    }
    // On the evaluation scenes: planar ones 0.94–1.07 and ≈ 0.1 px (noise), rubberwhale's
    // parallax 0.60–0.64 and 0.65–0.90 px.
    if ratio > 0.8 || size < 0.3 {
        return None;
    }
    Some(spread(&shifts, target.width, target.height))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `correction` without diagnostics.
    fn correction(target: &RgbF, known: &Mask, guide: &RgbF, guide_valid: &Mask) -> Option<Field> {
        super::correction(target, known, guide, guide_valid, &crate::align::Diagnostics::default())
    }

    /// The image at p + field(p) (bilinear; the pipeline re-warps the reference instead).
    fn resample(img: &RgbF, f: &Field) -> (RgbF, Mask) {
        let (w, h) = (img.width, img.height);
        let mut out = RgbF::new(w, h);
        let mut valid = Mask::new(w, h, 0.0);
        for y in 0..h {
            for x in 0..w {
                let (u, v) = (x as f32 + f.dx[y * w + x], y as f32 + f.dy[y * w + x]);
                if u >= 0.0 && v >= 0.0 && u <= (w - 1) as f32 && v <= (h - 1) as f32 {
                    out.set(x, y, img.sample(u, v));
                    valid.set(x, y, 1.0);
                }
            }
        }
        (out, valid)
    }

    /// A smooth random texture (sums of sines) shifted by `shift(x, y)`.
    fn texture(w: usize, h: usize, shift: impl Fn(f32, f32) -> (f32, f32)) -> RgbF {
        let mut img = RgbF::new(w, h);
        for y in 0..h {
            for x in 0..w {
                let (dx, dy) = shift(x as f32, y as f32);
                let (u, v) = (x as f32 + dx, y as f32 + dy);
                let g = 0.5
                    + 0.2 * (0.31 * u + 0.7 * (0.13 * v).sin()).sin()
                    + 0.15 * (0.23 * v - 0.4 * (0.17 * u).cos()).sin()
                    + 0.1 * (0.11 * (u + v)).cos();
                img.set(x, y, [g, g * 0.9, g * 0.8]);
            }
        }
        img
    }

    #[test]
    fn measures_a_known_shift_to_a_tenth_of_a_pixel() {
        let (w, h) = (96, 80);
        let target = texture(w, h, |_, _| (0.0, 0.0));
        // The guide shows the target's content 2.3 px to the right and 1.4 px down.
        let guide = texture(w, h, |_, _| (-2.3, -1.4));
        let all = Mask::new(w, h, 1.0);
        let known = Mask::new(w, h, 1.0);
        let shifts = measure(&target, &known, &guide, &all);
        assert!(shifts.len() > 50, "{} points", shifts.len());
        let mean = |f: fn(&Shift) -> f32| shifts.iter().map(f).sum::<f32>() / shifts.len() as f32;
        let (mx, my) = (mean(|s| s.dx), mean(|s| s.dy));
        assert!((mx - 2.3).abs() < 0.1 && (my - 1.4).abs() < 0.1, "mean shift ({mx}, {my})");
    }

    #[test]
    fn carries_shifts_into_a_hole_and_moves_the_guide() {
        let (w, h) = (128, 96);
        // Parallax: the right half of the scene is shifted 3 px more than the left.
        let shift = |x: f32, _y: f32| (if x > 64.0 { -3.0 } else { 0.0 }, 0.0);
        let truth = texture(w, h, |_, _| (0.0, 0.0));
        let guide = texture(w, h, shift);
        let all = Mask::new(w, h, 1.0);
        let mut known = Mask::new(w, h, 1.0);
        for y in 36..60 {
            for x in 80..110 {
                known.set(x, y, 0.0);
            }
        }
        let field = correction(&truth, &known, &guide, &all).expect("a field that generalises");
        let (fixed, valid) = resample(&guide, &field);
        // Inside the hole (right half), the corrected guide is close to the truth; the raw
        // guide is 3 px off.
        let err = |img: &RgbF| {
            let mut e = 0.0f32;
            for y in 40..56 {
                for x in 86..104 {
                    assert!(valid.get(x, y) > 0.5);
                    e += (img.get(x, y)[0] - truth.get(x, y)[0]).abs();
                }
            }
            e / (16.0 * 18.0)
        };
        assert!(err(&fixed) < 0.25 * err(&guide), "corrected {} vs raw {}", err(&fixed), err(&guide));
    }

    #[test]
    fn a_planar_scene_keeps_its_warp() {
        let (w, h) = (96, 80);
        let target = texture(w, h, |_, _| (0.0, 0.0));
        let all = Mask::new(w, h, 1.0);
        assert!(correction(&target, &all, &target.clone(), &all).is_none(), "nothing to correct");
    }
}
