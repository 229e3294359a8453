//! The photo's own texture for the part of a hole that no reference shows, synthesised level by
//! level above the working size (issue 12). The engine's fill at the working size says which
//! known patch of the photo each hole pixel copies (`KnownMatches`); at the photo's resolution
//! that is only known to within a working pixel (8–16 photo pixels on a camera photo), and
//! neighbouring working pixels that copy different places would leave seams or, blended, a
//! smear. So the copy is refined like the patch engine's own pyramid, continued upward: at
//! each level (working size × 2, × 4, … up to the photo's own pixels), over the fill region's
//! crop only,
//! - every hole pixel starts from its parent's source offset (twice as fine a grid each time),
//! - PatchMatch (propagation from the neighbours, random search around the current offset)
//!   finds the known 7×7 patch of the photo at this level whose low band (blurred to the
//!   working size's scale) is closest to the estimate's, with a small cost for an offset that
//!   differs from the neighbours' (so that regions copy one place coherently),
//! - the estimate becomes the photo's pixels at those offsets.
//!
//! Why these choices (measured on elephants-hires without its reference, docs/BENCHMARKS.md
//! session 6): comparing full-band patches against an estimate that starts smooth picks smooth
//! sources (detail ratio 0.43); averaging overlapping patches (voting) smears incoherent
//! offsets (0.22–0.36); low-band matching alone copies a jumble of places that reads as
//! swirls at 100 % (0.82, wrong by eye); with the coherence cost the canvas weave comes through
//! whole (0.65–0.78, against 0.49–0.60 for blending the working-size copies).
//!
//! Cost grows with the hole: the levels cover the crop and the part of the photo its sources
//! lie in (`window`), not the photo.

use rayon::prelude::*;

use crate::diffusion::patch::KnownMatches;
use crate::scene::{RgbF, Scene};

/// Patch radius (7×7 patches).
const R: i64 = 3;
/// Random-search radius at each level, in level pixels (halved down to 1).
const SEARCH: i64 = 4;
/// PatchMatch iterations per copy, and match-then-copy rounds per level (one at the last).
const ITERATIONS: usize = 2;
const ROUNDS: usize = 2;
/// Cost of each 4-neighbour whose offset differs, against the low-band sum of squared
/// differences of a 7×7×3 patch (typically 0.01–0.1). Results hardly change from 0.05 to 1.
const COHERENCE: f32 = 0.2;

/// A canvas rectangle [x0, x1) × [y0, y1) in photo pixels.
#[derive(Clone, Copy, Debug)]
pub struct Area {
    pub x0: i64,
    pub y0: i64,
    pub x1: i64,
    pub y1: i64,
}

/// One level: the photo's known pixels averaged over blocks of `p`×`p` photo pixels (the grid
/// anchored at the canvas origin), over the level pixels [x0, x0 + w) × [y0, y0 + h).
struct Level {
    p: i64,
    x0: i64,
    y0: i64,
    w: i64,
    h: i64,
    rgb: Vec<[f32; 3]>,
    /// `rgb` blurred to the working size's scale (known pixels only): what patches are
    /// compared by, so that smooth and textured sources are alike to a smooth estimate.
    low: Vec<[f32; 3]>,
    /// The 7×7 patch centred on the level pixel lies inside the level and is all known photo
    /// (a source patch may be copied from there).
    source: Vec<bool>,
    /// Some photo pixel of the block is to be filled.
    hole: Vec<bool>,
}

impl Level {
    fn build(scene: &Scene, p: i64, area: Area, sigma: f32) -> Level {
        let (cw, ch) = scene.canvas_size();
        let (x0, y0) = (area.x0.div_euclid(p), area.y0.div_euclid(p));
        let (w, h) = ((area.x1 + p - 1).div_euclid(p) - x0, (area.y1 + p - 1).div_euclid(p) - y0);
        let e = scene.extension;
        let (tw, th) = (scene.target.width() as i64, scene.target.height() as i64);
        let cells: Vec<([f32; 3], bool, bool)> = (0..w * h)
            .into_par_iter()
            .map(|i| {
                let (bx, by) = ((x0 + i % w) * p, (y0 + i / w) * p);
                let (mut sum, mut n, mut all_known, mut any_hole) = ([0.0f32; 3], 0usize, true, false);
                for y in by..by + p {
                    for x in bx..bx + p {
                        if x < 0 || y < 0 || x >= cw as i64 || y >= ch as i64 {
                            all_known = false;
                            continue;
                        }
                        let (tx, ty) = (x - e.left as i64, y - e.top as i64);
                        let fill = scene.mask.get(x as usize, y as usize) >= 0.5;
                        any_hole |= fill;
                        if fill || tx < 0 || ty < 0 || tx >= tw || ty >= th {
                            all_known = false;
                            continue;
                        }
                        let v = scene.target.rgb.get(tx as usize, ty as usize);
                        for k in 0..3 {
                            sum[k] += v[k];
                        }
                        n += 1;
                    }
                }
                let v = if n > 0 { sum.map(|s| s / n as f32) } else { [0.0; 3] };
                (v, all_known, any_hole)
            })
            .collect();
        let rgb: Vec<[f32; 3]> = cells.iter().map(|c| c.0).collect();
        let known: Vec<bool> = cells.iter().map(|c| c.1).collect();
        let low = low_band(&rgb, &known, w as usize, h as usize, sigma);
        let source = erode(&known, w as usize, h as usize, R as usize);
        Level { p, x0, y0, w, h, rgb, low, source, hole: cells.iter().map(|c| c.2).collect() }
    }

    fn index(&self, x: i64, y: i64) -> Option<usize> {
        let (u, v) = (x - self.x0, y - self.y0);
        (u >= 0 && v >= 0 && u < self.w && v < self.h).then(|| (v * self.w + u) as usize)
    }

    /// Whether the patch centred at level pixel (x, y) is all known photo.
    fn source_ok(&self, x: i64, y: i64) -> bool {
        self.index(x, y).is_some_and(|i| self.source[i])
    }
}

/// Where the (2r+1)² square around a pixel lies inside the image and is all `valid`: a row
/// pass then a column pass of run lengths (computed once per level instead of 49 lookups per
/// PatchMatch candidate).
fn erode(valid: &[bool], w: usize, h: usize, r: usize) -> Vec<bool> {
    // Within a line of n values, where the 2r+1 values centred on each are all true.
    fn line(get: impl Fn(usize) -> bool, n: usize, r: usize) -> Vec<bool> {
        let mut run = vec![0usize; n];
        let mut c = 0;
        for i in 0..n {
            c = if get(i) { c + 1 } else { 0 };
            run[i] = c;
        }
        // Ones ending at i + r, counted from i − r: all of them true.
        (0..n).map(|i| i >= r && i + r < n && run[i + r] > 2 * r).collect()
    }
    let mut rows = vec![false; w * h];
    for y in 0..h {
        let l = line(|x| valid[y * w + x], w, r);
        rows[y * w..(y + 1) * w].copy_from_slice(&l);
    }
    let mut out = vec![false; w * h];
    for x in 0..w {
        for (y, v) in line(|y| rows[y * w + x], h, r).into_iter().enumerate() {
            out[y * w + x] = v;
        }
    }
    out
}

/// `rgb` blurred with `sigma`, counting only `valid` pixels. A blur this wide is smooth on a
/// coarser grid: the pixels are averaged into blocks of about σ/1.5, blurred there and sampled
/// back bilinearly (at the photo's resolution that is tens of times less work).
fn low_band(rgb: &[[f32; 3]], valid: &[bool], w: usize, h: usize, sigma: f32) -> Vec<[f32; 3]> {
    let f = ((sigma / 1.5).floor() as usize).max(1);
    let (cw, ch) = (w.div_ceil(f), h.div_ceil(f));
    // Sums of the valid pixels (and their count) per block.
    let mut sums = vec![[0.0f32; 4]; cw * ch];
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            if valid[i] {
                let s = &mut sums[(y / f) * cw + x / f];
                for k in 0..3 {
                    s[k] += rgb[i][k];
                }
                s[3] += 1.0;
            }
        }
    }
    let mut planes: Vec<Vec<f32>> = (0..4).map(|k| sums.iter().map(|s| s[k]).collect()).collect();
    planes.par_iter_mut().for_each(|p| crate::scene::blur::blur(p, cw, ch, sigma / f as f32));
    let coarse: Vec<[f32; 3]> = (0..cw * ch)
        .map(|i| {
            let n = planes[3][i];
            if n > 1e-6 { [planes[0][i] / n, planes[1][i] / n, planes[2][i] / n] } else { [0.0; 3] }
        })
        .collect();
    if f == 1 {
        return coarse;
    }
    (0..w * h)
        .into_par_iter()
        .map(|i| {
            let (x, y) = (i % w, i / w);
            let u = ((x as f32 + 0.5) / f as f32 - 0.5).clamp(0.0, (cw - 1) as f32);
            let v = ((y as f32 + 0.5) / f as f32 - 0.5).clamp(0.0, (ch - 1) as f32);
            let (u0, v0) = (u.floor() as usize, v.floor() as usize);
            let (u1, v1) = ((u0 + 1).min(cw - 1), (v0 + 1).min(ch - 1));
            let (fu, fv) = (u - u0 as f32, v - v0 as f32);
            let at = |a: usize, b: usize| coarse[b * cw + a];
            let (a, b, c, d) = (at(u0, v0), at(u1, v0), at(u0, v1), at(u1, v1));
            [0, 1, 2].map(|k| {
                a[k] * (1.0 - fu) * (1.0 - fv) + b[k] * fu * (1.0 - fv) + c[k] * (1.0 - fu) * fv + d[k] * fu * fv
            })
        })
        .collect()
}

fn hash(a: u64) -> u64 {
    let mut z = a.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The photo's own texture over `crop` (photo pixels) at its resolution, continuing the
/// working-size fill `fill` and its matches `own` level by level: pixel values over the crop
/// (known pixels are the photo's) and which hole pixels got a synthesised value. None when no
/// hole pixel of the crop has a match. `scale`: photo pixels per working pixel (x, y).
pub fn synthesise(
    scene: &Scene,
    fill: &RgbF,
    own: &KnownMatches,
    scale: (f64, f64),
    crop: Area,
    cancelled: &dyn Fn() -> bool,
) -> Option<(RgbF, Vec<bool>)> {
    // Levels of 2^(K-1), …, 2, 1 photo pixels, the first no finer than twice the working size.
    let f = scale.0.max(scale.1);
    let levels = f.log2().ceil().max(1.0) as u32;
    // Initial offsets (photo pixels) of each crop pixel: its working pixel's match.
    let to_working = |x: f64, y: f64| ((x + 0.5) / scale.0 - 0.5, (y + 0.5) / scale.1 - 0.5);
    let offset_at = |x: f64, y: f64| -> Option<(f64, f64)> {
        let (u, v) = to_working(x, y);
        let (u, v) = (u.round().clamp(0.0, (own.width - 1) as f64), v.round().clamp(0.0, (own.height - 1) as f64));
        let (mx, my) = own.at[v as usize * own.width + u as usize]?;
        Some(((mx as f64 - u) * scale.0, (my as f64 - v) * scale.1))
    };
    // Where the sources lie: the crop's matches' patches.
    let mut src = crop;
    let mut any = false;
    let step = (f / 2.0).max(1.0) as i64;
    for y in (crop.y0..crop.y1).step_by(step as usize) {
        for x in (crop.x0..crop.x1).step_by(step as usize) {
            if let Some((dx, dy)) = offset_at(x as f64, y as f64) {
                any = true;
                let (sx, sy) = (x + dx.round() as i64, y + dy.round() as i64);
                src = Area { x0: src.x0.min(sx), y0: src.y0.min(sy), x1: src.x1.max(sx + 1), y1: src.y1.max(sy + 1) };
            }
        }
    }
    if !any {
        return None;
    }
    let (cw, ch) = scene.canvas_size();
    let margin = (f.ceil() as i64 + 2) * (R + SEARCH + 2);
    let window = Area {
        x0: (src.x0 - margin).max(0),
        y0: (src.y0 - margin).max(0),
        x1: (src.x1 + margin).min(cw as i64),
        y1: (src.y1 + margin).min(ch as i64),
    };
    let mut estimate: Vec<[f32; 3]> = Vec::new();
    let mut offsets: Vec<Option<(i64, i64)>> = Vec::new();
    let mut prev: Option<Level> = None;
    for k in (0..levels).rev() {
        let p = 1i64 << k;
        let sigma = (0.5 * f / p as f64) as f32;
        let lv = Level::build(scene, p, window, sigma);
        // The crop's level pixels.
        let (qx0, qy0) = (crop.x0.div_euclid(p), crop.y0.div_euclid(p));
        let (qw, qh) = ((crop.x1 + p - 1).div_euclid(p) - qx0, (crop.y1 + p - 1).div_euclid(p) - qy0);
        let mut est = vec![[0.0f32; 3]; (qw * qh) as usize];
        let mut off = vec![None; (qw * qh) as usize];
        for j in 0..qh {
            for i in 0..qw {
                let q = (j * qw + i) as usize;
                let (x, y) = (qx0 + i, qy0 + j);
                let Some(li) = lv.index(x, y) else { continue };
                if !lv.hole[li] {
                    est[q] = lv.rgb[li];
                    continue;
                }
                // From the parent level (or the working matches at the first level).
                let (cx, cy) = ((x * p + p / 2) as f64, (y * p + p / 2) as f64);
                match &prev {
                    None => {
                        let (u, v) = to_working(cx, cy);
                        est[q] = fill.sample(u as f32, v as f32);
                        off[q] = offset_at(cx, cy)
                            .map(|(dx, dy)| ((dx / p as f64).round() as i64, (dy / p as f64).round() as i64));
                    }
                    Some(pl) => {
                        let (px, py) = (x.div_euclid(2), y.div_euclid(2));
                        let (pqx0, pqy0) = (crop.x0.div_euclid(pl.p), crop.y0.div_euclid(pl.p));
                        let pqw = (crop.x1 + pl.p - 1).div_euclid(pl.p) - pqx0;
                        let pq = ((py - pqy0) * pqw + (px - pqx0)) as usize;
                        est[q] = estimate.get(pq).copied().unwrap_or([0.0; 3]);
                        off[q] = offsets.get(pq).copied().flatten().map(|(dx, dy)| (2 * dx, 2 * dy));
                    }
                }
            }
        }
        let grid = Grid { lv: &lv, qx0, qy0, qw, qh, seed: k as u64 };
        // At the photo's own pixels one round does as well as two (same figures, 30 % less time).
        let rounds = if p == 1 { 1 } else { ROUNDS };
        for round in 0..rounds {
            if cancelled() {
                return None;
            }
            let est_low = low_band(&est, &vec![true; est.len()], qw as usize, qh as usize, sigma);
            for it in 0..ITERATIONS {
                if cancelled() {
                    return None;
                }
                off = grid.patchmatch(&est_low, &off, (round * ITERATIONS + it) as u64);
            }
            est = grid.copy(&est, &off);
        }
        estimate = est;
        offsets = off;
        prev = Some(lv);
    }
    // Level 0 is the photo's own pixels over the crop.
    let (w, h) = ((crop.x1 - crop.x0) as usize, (crop.y1 - crop.y0) as usize);
    let mut rgb = RgbF::new(w, h);
    let mut got = vec![false; w * h];
    for (i, (v, o)) in estimate.iter().zip(&offsets).enumerate() {
        rgb.data[3 * i..3 * i + 3].copy_from_slice(v);
        got[i] = o.is_some();
    }
    Some((rgb, got))
}

/// The crop's level pixels [qx0, qx0 + qw) × [qy0, qy0 + qh) at one level.
struct Grid<'a> {
    lv: &'a Level,
    qx0: i64,
    qy0: i64,
    qw: i64,
    qh: i64,
    seed: u64,
}

impl Grid<'_> {
    fn is_hole(&self, i: i64, j: i64) -> bool {
        self.lv.index(self.qx0 + i, self.qy0 + j).is_some_and(|li| self.lv.hole[li])
    }

    /// Sum of squared differences between the estimate's low band `est` at crop pixel (i, j)
    /// and the level's low band at (i, j) + o, over a 7×7 patch, stopping above `limit`.
    fn distance(&self, est: &[[f32; 3]], i: i64, j: i64, o: (i64, i64), limit: f32) -> f32 {
        let (sx, sy) = (self.qx0 + i + o.0, self.qy0 + j + o.1);
        let mut d = 0.0f32;
        for dy in -R..=R {
            let (jj, y) = (j + dy, sy + dy);
            if jj < 0 || jj >= self.qh {
                continue;
            }
            for dx in -R..=R {
                let ii = i + dx;
                if ii < 0 || ii >= self.qw {
                    continue;
                }
                let a = est[(jj * self.qw + ii) as usize];
                let Some(si) = self.lv.index(sx + dx, y) else { return f32::MAX };
                let b = self.lv.low[si];
                d += (a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2);
            }
            if d > limit {
                return d;
            }
        }
        d
    }

    /// One PatchMatch pass over the hole pixels (all in parallel from the previous offsets):
    /// keep the best of the current offset, the neighbours' and a random search around it,
    /// by low-band distance plus the coherence cost.
    fn patchmatch(&self, est: &[[f32; 3]], off: &[Option<(i64, i64)>], pass: u64) -> Vec<Option<(i64, i64)>> {
        let (qw, qh) = (self.qw, self.qh);
        (0..qw * qh)
            .into_par_iter()
            .map(|q| {
                let (i, j) = (q % qw, q / qw);
                if !self.is_hole(i, j) {
                    return None;
                }
                // The neighbours' offsets: candidates, and what the coherence cost compares to.
                let neigh = [(-1i64, 0i64), (1, 0), (0, -1), (0, 1)].map(|(di, dj)| {
                    let (ni, nj) = (i + di, j + dj);
                    (ni >= 0 && nj >= 0 && ni < qw && nj < qh).then(|| off[(nj * qw + ni) as usize]).flatten()
                });
                let mut best: Option<((i64, i64), f32)> = None;
                let consider = |o: (i64, i64), best: &mut Option<((i64, i64), f32)>| {
                    let (sx, sy) = (self.qx0 + i + o.0, self.qy0 + j + o.1);
                    if !self.lv.source_ok(sx, sy) {
                        return;
                    }
                    let limit = best.map(|b| b.1).unwrap_or(f32::MAX);
                    let penalty = COHERENCE * neigh.iter().filter(|n| n.is_some_and(|n| n != o)).count() as f32;
                    let d = self.distance(est, i, j, o, limit) + penalty;
                    if d < limit {
                        *best = Some((o, d));
                    }
                };
                for o in std::iter::once(off[q as usize]).chain(neigh).flatten() {
                    consider(o, &mut best);
                }
                let mut h = hash(self.seed << 48 ^ pass << 40 ^ q as u64);
                let mut r = SEARCH;
                while r >= 1 {
                    if let Some((o, _)) = best {
                        h = hash(h);
                        let dx = (h % (2 * r as u64 + 1)) as i64 - r;
                        let dy = ((h >> 20) % (2 * r as u64 + 1)) as i64 - r;
                        consider((o.0 + dx, o.1 + dy), &mut best);
                    }
                    r /= 2;
                }
                best.map(|b| b.0)
            })
            .collect()
    }

    /// Each hole pixel: the photo's pixel at its offset (where it has one).
    fn copy(&self, est: &[[f32; 3]], off: &[Option<(i64, i64)>]) -> Vec<[f32; 3]> {
        let qw = self.qw;
        (0..qw * self.qh)
            .into_par_iter()
            .map(|q| {
                let (i, j) = (q % qw, q / qw);
                let from = off[q as usize].and_then(|o| self.lv.index(self.qx0 + i + o.0, self.qy0 + j + o.1));
                match from {
                    Some(si) if self.is_hole(i, j) => self.lv.rgb[si],
                    _ => est[q as usize],
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scene::Mask;

    /// A 256×192 photo of a weave with an 8-pixel period and a 64×48 hole; working size ÷ 4.
    fn weave_scene() -> (Scene, RgbF) {
        let weave = |x: u32, y: u32| {
            let v = 0.5 + 0.2 * ((x % 8) as f32 / 8.0 * std::f32::consts::TAU).sin() * ((y % 8) as f32 / 4.0 - 1.0);
            image::Rgb([(v * 255.0) as u8, (v * 200.0) as u8, 90])
        };
        let img = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(256, 192, weave));
        let truth = crate::scene::Photo::from_image("t.png".into(), img.clone(), None).rgb;
        let mut m = Mask::new(256, 192, 0.0);
        for y in 72..120 {
            for x in 96..160 {
                m.set(x, y, 1.0);
            }
        }
        let photo = crate::scene::Photo::from_image("t.png".into(), img, None);
        let scene = Scene::new(photo, Some((m, std::path::Path::new("m.png"))), Default::default(), vec![]).unwrap();
        (scene, truth)
    }

    #[test]
    fn erosion_marks_exactly_the_centres_of_all_valid_squares() {
        let (w, h, r) = (13usize, 9usize, 2usize);
        let valid: Vec<bool> = (0..w * h).map(|i| (i * 7919 % 23) != 0).collect();
        let got = erode(&valid, w, h, r);
        for y in 0..h {
            for x in 0..w {
                let want = x >= r
                    && y >= r
                    && x + r < w
                    && y + r < h
                    && (y - r..=y + r).all(|yy| (x - r..=x + r).all(|xx| valid[yy * w + xx]));
                assert_eq!(got[y * w + x], want, "{x},{y}");
            }
        }
    }

    #[test]
    fn a_texture_is_continued_from_where_the_working_fill_copied_it() {
        let (scene, truth) = weave_scene();
        // Working size 64×48: every hole pixel copied the place 20 working pixels (80 photo
        // pixels, ten periods) to its left; the working fill itself is flat grey.
        let (ww, wh) = (64, 48);
        let fill = RgbF::from_fn(ww, wh, |_, _| [0.5, 0.4, 0.35]);
        let at = (0..ww * wh)
            .map(|i| {
                let (u, v) = (i % ww, i / ww);
                let hole = (24..40).contains(&u) && (18..30).contains(&v);
                hole.then(|| ((u - 20) as u32, v as u32))
            })
            .collect();
        let own = KnownMatches { width: ww, height: wh, at };
        let crop = Area { x0: 80, y0: 56, x1: 176, y1: 136 };
        let (rgb, got) = synthesise(&scene, &fill, &own, (4.0, 4.0), crop, &|| false).expect("matches exist");
        let (mut err, mut n) = (0.0f32, 0);
        for y in 72..120 {
            for x in 96..160 {
                let i = (y - 56) * 96 + (x - 80);
                assert!(got[i], "hole pixel {x},{y} got a texture");
                let (a, b) = (rgb.get(x - 80, y - 56), truth.get(x, y));
                err += (0..3).map(|k| (a[k] - b[k]).abs()).sum::<f32>() / 3.0;
                n += 1;
            }
        }
        // The weave itself, in phase (a flat or shifted copy would be off by ~0.1 on average).
        assert!(err / (n as f32) < 0.02, "mean abs error {:.3}", err / n as f32);
        // Cancelled: nothing.
        assert!(synthesise(&scene, &fill, &own, (4.0, 4.0), crop, &|| true).is_none());
    }
}
