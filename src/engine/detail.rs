//! Native-resolution detail. The engines fill at the working size (384 px by default), which
//! on a camera photo is a tenth of its resolution: upscaled alone, the fill is a smear. Here,
//! only over the fill region's bounding box (plus the feather band and a margin), each pixel of
//! the photo's own resolution gets
//!
//!   result = upscaled working fill + detail,
//!
//! where the detail is the part of a native-resolution source finer than the working size:
//! source − its low band (the source taken down to the working grid and back up, with the same
//! filters the pipeline uses, so that a fill that copied the source gives back the source
//! exactly). Sources, per pixel:
//! - a known pixel (the feather band around the hole): the photo itself, so the band shows
//!   the original's own texture instead of a blurred halo;
//! - a pixel to fill that a reference covers: that reference at its own resolution, warped by
//!   the working-size alignment scaled up (homography, parallax field), re-refined against the
//!   photo's known pixels around the hole at native resolution, exposure-matched there; its
//!   detail counts with a confidence that falls where the working fill disagrees with the
//!   reference's low band (the engine put something else there: a moved object, parallax it
//!   fixed, another plane), so a reference never imprints texture on content it does not show;
//! - for the rest of that weight (no reference, or one that disagrees): the photo's own
//!   texture, continued from where the fill's patches came from among the known pixels (the
//!   patch engine's matches at the working size; for the scene model, the matches of its fill
//!   at zero noise) level by level up to the photo's resolution (`own_texture`);
//! - elsewhere no detail.
//!
//! Cost grows with the hole, not the photo: every buffer here has the crop's size; the work is
//! done in strips of rows, checking for cancellation between strips.

use rayon::prelude::*;

use super::own_texture;
use crate::align::exemplar::Shift;
use crate::align::guide::TargetWarp;
use crate::align::homography::Homography;
use crate::align::parallax::Field;
use crate::align::{self, refine};
use crate::diffusion::patch::KnownMatches;
use crate::error::{Error, Result};
use crate::scene::blur::blur;
use crate::scene::{Mask, RgbF, Scene};

/// Below this ratio of photo to working size the upscaled fill already is the photo's detail.
const MIN_SCALE: f64 = 1.5;
/// Mean absolute difference (per channel, [0, 1]) between the fill and a reference's low band
/// at which the reference's detail counts half.
const AGREE_TAU: f32 = 0.05;

/// What the native step draws detail from besides the photo: the references as the pipeline
/// warped them, and where the engine copied the photo's own known pixels.
pub struct Sources<'a> {
    /// How the references were warped into the working canvas, best first.
    pub warps: &'a [TargetWarp],
    /// The references at working size (the warps' coordinates).
    pub working_refs: &'a [RgbF],
    /// The patch engine's matches into the photo's known pixels (None for the scene model).
    pub own: Option<&'a KnownMatches>,
    /// Where the pipeline's guide copied real pixels beyond every reference, per working pixel
    /// (`align::exemplar`): the same shifts, scaled, read at the photo's and the references'
    /// own resolution.
    pub copies: Option<&'a [Option<Shift>]>,
}

/// A native-resolution fill of part of the canvas: `rgb` covers canvas pixels
/// [x0, x0 + rgb.width) × [y0, y0 + rgb.height).
pub struct NativeFill {
    pub x0: usize,
    pub y0: usize,
    pub rgb: RgbF,
    /// Share of the fill region's pixels that got a reference's detail (confidence-weighted).
    pub reference_detail: f32,
}

/// A finished strip of the native-resolution fill, for live previews: canvas pixels
/// [x0, x0 + rgb.width) × [y0, y0 + rgb.height), before compositing; `rows_done` of the crop's
/// `rows` rows are finished with it.
#[derive(Clone)]
pub struct NativeTile {
    pub x0: usize,
    pub y0: usize,
    pub rgb: std::sync::Arc<RgbF>,
    pub rows_done: usize,
    pub rows: usize,
}

/// Rows of the crop computed between cancel checks and previews.
const STRIP: usize = 64;

/// A rectangle of the canvas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rect {
    pub x0: usize,
    pub y0: usize,
    pub w: usize,
    pub h: usize,
}

/// Canvas ↔ working-size pixel coordinates (pixel centres at integers, as the resize filters
/// map them).
#[derive(Clone, Copy, Debug)]
pub struct Scale {
    pub sx: f64,
    pub sy: f64,
}

impl Scale {
    pub fn to_working(self, x: f64, y: f64) -> (f64, f64) {
        ((x + 0.5) / self.sx - 0.5, (y + 0.5) / self.sy - 0.5)
    }

    /// The affine map from canvas pixels to working pixels, as a homography.
    fn canvas_to_working(self) -> Homography {
        Homography([1.0 / self.sx, 0.0, 0.5 / self.sx - 0.5, 0.0, 1.0 / self.sy, 0.5 / self.sy - 0.5, 0.0, 0.0, 1.0])
    }

    /// The affine map from working pixels to canvas pixels.
    fn working_to_canvas(self) -> Homography {
        Homography([self.sx, 0.0, 0.5 * self.sx - 0.5, 0.0, self.sy, 0.5 * self.sy - 0.5, 0.0, 0.0, 1.0])
    }
}

/// Whether a canvas of this size gets native detail over a fill at this working size.
pub fn adds_detail(canvas: (usize, usize), working: (usize, usize)) -> bool {
    let s = (canvas.0 as f64 / working.0.max(1) as f64).max(canvas.1 as f64 / working.1.max(1) as f64);
    s >= MIN_SCALE
}

/// The crop that native detail covers: the fill region's bounding box grown by the feather
/// band and by the low band's filter support, inside the canvas.
pub fn region(mask: &Mask, feather: f32, scale: Scale) -> Option<Rect> {
    let (x0, y0, x1, y1) = mask.bbox()?;
    let m = (feather.ceil() as usize) + (2.0 * scale.sx.max(scale.sy)).ceil() as usize + 2;
    let (x0, y0) = (x0.saturating_sub(m), y0.saturating_sub(m));
    let (x1, y1) = ((x1 + m).min(mask.width), (y1 + m).min(mask.height));
    Some(Rect { x0, y0, w: x1 - x0, h: y1 - y0 })
}

/// Bilinear sample of a working-size image at a canvas pixel.
fn upscaled(img: &RgbF, scale: Scale, x: usize, y: usize) -> [f32; 3] {
    let (u, v) = scale.to_working(x as f64, y as f64);
    img.sample(u as f32, v as f32)
}

/// The low band of `rgb` (a crop at canvas resolution, `valid` where defined): taken down to
/// the working grid with the triangle filter the pipeline's resize uses, then back up
/// bilinearly, as the upscaled fill is. Undefined pixels do not contribute; pixels whose
/// neighbourhood has none defined come back invalid.
pub fn low_band(rgb: &RgbF, valid: &Mask, crop: Rect, scale: Scale) -> (RgbF, Mask) {
    let (w, h) = (crop.w, crop.h);
    // Working cells whose tent reaches into the crop, and each cell's centre in crop pixels.
    let cells = |x0: usize, n: usize, s: f64| {
        let first = ((x0 as f64 + 0.5) / s - 1.5).floor().max(0.0) as usize;
        let last = (((x0 + n) as f64 + 0.5) / s + 0.5).ceil() as usize;
        (first, last - first + 1)
    };
    let (cx0, ncx) = cells(crop.x0, w, scale.sx);
    let (cy0, ncy) = cells(crop.y0, h, scale.sy);
    let centre = |c: usize, x0: usize, s: f64| (c as f64 + 0.5) * s - 0.5 - x0 as f64;
    // Horizontal pass: per crop row, per cell column: Σ tent·valid·rgb and Σ tent·valid.
    let horiz: Vec<(Vec<[f32; 3]>, Vec<f32>)> = (0..h)
        .into_par_iter()
        .map(|y| {
            let (mut num, mut den) = (vec![[0.0f32; 3]; ncx], vec![0.0f32; ncx]);
            for (c, (n, d)) in num.iter_mut().zip(den.iter_mut()).enumerate() {
                let cx = centre(cx0 + c, crop.x0, scale.sx);
                let lo = (cx - scale.sx).ceil().max(0.0) as usize;
                let hi = ((cx + scale.sx).floor().min(w as f64 - 1.0)).max(-1.0);
                if hi < lo as f64 {
                    continue;
                }
                for x in lo..=hi as usize {
                    let wt = (1.0 - ((x as f64 - cx).abs() / scale.sx)).max(0.0) as f32 * valid.data[y * w + x];
                    if wt > 0.0 {
                        let p = rgb.get(x, y);
                        for k in 0..3 {
                            n[k] += wt * p[k];
                        }
                        *d += wt;
                    }
                }
            }
            (num, den)
        })
        .collect();
    // Vertical pass: per cell.
    let mut grid = RgbF::new(ncx, ncy);
    let mut gvalid = Mask::new(ncx, ncy, 0.0);
    for cy in 0..ncy {
        let c = centre(cy0 + cy, crop.y0, scale.sy);
        let lo = (c - scale.sy).ceil().max(0.0) as usize;
        let hi = (c + scale.sy).floor().min(h as f64 - 1.0);
        for cx in 0..ncx {
            let (mut n, mut d) = ([0.0f32; 3], 0.0f32);
            if hi >= lo as f64 {
                for y in lo..=hi as usize {
                    let wt = (1.0 - ((y as f64 - c).abs() / scale.sy)).max(0.0) as f32;
                    let (hn, hd) = (&horiz[y].0[cx], horiz[y].1[cx]);
                    for k in 0..3 {
                        n[k] += wt * hn[k];
                    }
                    d += wt * hd;
                }
            }
            if d > 1e-6 {
                grid.set(cx, cy, n.map(|v| v / d));
                gvalid.set(cx, cy, 1.0);
            }
        }
    }
    // Back up: bilinear in the cell grid, weighted by which cells are defined.
    let mut out = RgbF::new(w, h);
    let mut ovalid = Mask::new(w, h, 0.0);
    out.data.par_chunks_mut(3 * w).zip(ovalid.data.par_chunks_mut(w)).enumerate().for_each(|(y, (row, vrow))| {
        for x in 0..w {
            let (u, v) = scale.to_working((crop.x0 + x) as f64, (crop.y0 + y) as f64);
            let (gu, gv) =
                ((u - cx0 as f64).clamp(0.0, (ncx - 1) as f64), (v - cy0 as f64).clamp(0.0, (ncy - 1) as f64));
            let (i0, j0) = (gu.floor() as usize, gv.floor() as usize);
            let (i1, j1) = ((i0 + 1).min(ncx - 1), (j0 + 1).min(ncy - 1));
            let (fx, fy) = ((gu - i0 as f64) as f32, (gv - j0 as f64) as f32);
            let (mut acc, mut wsum) = ([0.0f32; 3], 0.0f32);
            for (i, j, wt) in [
                (i0, j0, (1.0 - fx) * (1.0 - fy)),
                (i1, j0, fx * (1.0 - fy)),
                (i0, j1, (1.0 - fx) * fy),
                (i1, j1, fx * fy),
            ] {
                let wt = wt * gvalid.get(i, j);
                if wt > 0.0 {
                    let p = grid.get(i, j);
                    for k in 0..3 {
                        acc[k] += wt * p[k];
                    }
                    wsum += wt;
                }
            }
            if wsum > 1e-6 {
                row[3 * x..3 * x + 3].copy_from_slice(&acc.map(|a| a / wsum));
                vrow[x] = 1.0;
            }
        }
    });
    (out, ovalid)
}

/// The photo over the crop: its pixels (holes and the extension blacked out), which are known,
/// and which are to fill.
struct PhotoCrop {
    rgb: RgbF,
    known: Mask,
    hole: Mask,
}

/// One reference warped into the crop at its own resolution, exposure-matched to the photo's
/// known pixels in the crop.
fn native_warp(
    scene: &Scene,
    working_refs: &[RgbF],
    warp: &TargetWarp,
    crop: Rect,
    scale: Scale,
    photo: &PhotoCrop,
    covers: &Mask,
) -> (RgbF, Mask) {
    let reference = &scene.refs[warp.reference];
    let working = &working_refs[warp.reference];
    let rscale = Scale {
        sx: reference.width() as f64 / working.width as f64,
        sy: reference.height() as f64 / working.height as f64,
    };
    let offset = Homography([1.0, 0.0, crop.x0 as f64, 0.0, 1.0, crop.y0 as f64, 0.0, 0.0, 1.0]);
    // Crop pixel → canvas → working canvas → reference at working size → reference.
    let (rgb, valid) = match &warp.field {
        None => {
            let map = rscale
                .working_to_canvas()
                .then_after(&warp.target_to_ref.then_after(&scale.canvas_to_working().then_after(&offset)));
            // The working-size fit is good to a fraction of a working pixel, which is several
            // pixels here: fit again against the photo's known pixels around the hole.
            // Only the part of the reference the crop maps to is looked at (cost grows with
            // the hole, not the reference).
            let Some((part, map)) = reference_part(&reference.rgb, &map, crop) else {
                return (RgbF::new(crop.w, crop.h), Mask::new(crop.w, crop.h, 0.0));
            };
            // Against the known pixels this warp's plane covers only (another plane's pixels
            // would pull it off its own).
            let mut off = photo.hole.clone();
            off.data.iter_mut().zip(&covers.data).for_each(|(o, &c)| *o = if c >= 0.5 { *o } else { 1.0 });
            let map = refine::refine(&photo.rgb, &off, &part, &map);
            warp_cubic(&part, crop, |x, y| map.apply(x, y))
        }
        Some(field) => {
            // Parallax: the working pixel is shifted before the homography (the field is
            // smooth, so its bilinear sample serves every native pixel of a working cell).
            let to_ref = rscale.working_to_canvas().then_after(&warp.target_to_ref);
            warp_cubic(&reference.rgb, crop, |x, y| {
                let (u, v) = scale.to_working(crop.x0 as f64 + x, crop.y0 as f64 + y);
                let (du, dv) = sample_field(field, u, v);
                to_ref.apply(u + du, v + dv)
            })
        }
    };
    let mut rgb = rgb;
    align::match_exposure(&mut rgb, &valid, &photo.rgb, &photo.known);
    (rgb, valid)
}

/// The rectangle of `reference` that `map` takes the crop to (its corners' bounding box and a
/// margin for the refinement and the bicubic filter), and `map` into that rectangle.
fn reference_part(reference: &RgbF, map: &Homography, crop: Rect) -> Option<(RgbF, Homography)> {
    const MARGIN: f64 = 32.0;
    let corners = [(0.0, 0.0), (crop.w as f64, 0.0), (0.0, crop.h as f64), (crop.w as f64, crop.h as f64)];
    let pts: Vec<(f64, f64)> = corners.iter().map(|&(x, y)| map.apply(x, y)).collect::<Option<_>>()?;
    let (mut x0, mut y0, mut x1, mut y1) = (f64::MAX, f64::MAX, f64::MIN, f64::MIN);
    for (x, y) in pts {
        (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
    }
    let (w, h) = (reference.width as f64, reference.height as f64);
    let (x0, y0) = ((x0 - MARGIN).floor().clamp(0.0, w), (y0 - MARGIN).floor().clamp(0.0, h));
    let (x1, y1) = ((x1 + MARGIN).ceil().clamp(0.0, w), (y1 + MARGIN).ceil().clamp(0.0, h));
    if x1 - x0 < 4.0 || y1 - y0 < 4.0 {
        return None;
    }
    let part = reference.crop(x0 as usize, y0 as usize, (x1 - x0) as usize, (y1 - y0) as usize);
    let shift = Homography([1.0, 0.0, -x0, 0.0, 1.0, -y0, 0.0, 0.0, 1.0]);
    Some((part, shift.then_after(map)))
}

/// Each crop pixel (x, y) shows `src` at `map(x, y)`, sampled bicubically (the reference's
/// texture at its own resolution is the point); valid where that lies inside `src`.
fn warp_cubic(src: &RgbF, crop: Rect, map: impl Fn(f64, f64) -> Option<(f64, f64)> + Sync) -> (RgbF, Mask) {
    let mut out = RgbF::new(crop.w, crop.h);
    let mut ok = Mask::new(crop.w, crop.h, 0.0);
    let (sw, sh) = (src.width as f64, src.height as f64);
    out.data.par_chunks_mut(3 * crop.w).zip(ok.data.par_chunks_mut(crop.w)).enumerate().for_each(|(y, (row, vrow))| {
        for x in 0..crop.w {
            let Some((u, v)) = map(x as f64, y as f64) else { continue };
            if u < -0.5 || v < -0.5 || u > sw - 0.5 || v > sh - 0.5 {
                continue;
            }
            let p = src.sample_cubic(u as f32, v as f32);
            row[3 * x..3 * x + 3].copy_from_slice(&p.map(|c| c.clamp(0.0, 1.0)));
            vrow[x] = 1.0;
        }
    });
    (out, ok)
}

fn sample_field(f: &Field, u: f64, v: f64) -> (f64, f64) {
    let (x, y) = (u.clamp(0.0, (f.width - 1) as f64), v.clamp(0.0, (f.height - 1) as f64));
    let (x0, y0) = (x.floor() as usize, y.floor() as usize);
    let (x1, y1) = ((x0 + 1).min(f.width - 1), (y0 + 1).min(f.height - 1));
    let (fx, fy) = (x - x0 as f64, y - y0 as f64);
    let at = |d: &[f32]| {
        let g = |xx: usize, yy: usize| d[yy * f.width + xx] as f64;
        g(x0, y0) * (1.0 - fx) * (1.0 - fy)
            + g(x1, y0) * fx * (1.0 - fy)
            + g(x0, y1) * (1.0 - fx) * fy
            + g(x1, y1) * fx * fy
    };
    (at(&f.dx), at(&f.dy))
}

/// The fill at the photo's resolution over the fill region's crop, or None when the photo is
/// not much larger than the working size (the upscaled fill is then all there is). `fill`: the
/// working-size fill; `tile` gets each strip as it is finished (cancel is checked between
/// strips, so a cancel stops within one).
pub fn native_fill(
    scene: &Scene,
    sources: &Sources<'_>,
    fill: &RgbF,
    feather: f32,
    cancelled: &dyn Fn() -> bool,
    tile: &mut dyn FnMut(NativeTile),
) -> Result<Option<NativeFill>> {
    let (cw, ch) = scene.canvas_size();
    let scale = Scale { sx: cw as f64 / fill.width as f64, sy: ch as f64 / fill.height as f64 };
    if !adds_detail((cw, ch), (fill.width, fill.height)) {
        return Ok(None);
    }
    let Some(crop) = region(&scene.mask, feather, scale) else { return Ok(None) };
    // The photo in the crop (holes and the extension blacked out) and which pixels are known.
    let e = scene.extension;
    let (tw, th) = (scene.target.width(), scene.target.height());
    let target = RgbF::from_fn(crop.w, crop.h, |x, y| {
        let (cx, cy) = (crop.x0 + x, crop.y0 + y);
        let inside = cx >= e.left && cy >= e.top && cx < e.left + tw && cy < e.top + th;
        if inside && scene.mask.get(cx, cy) < 0.5 { scene.target.rgb.get(cx - e.left, cy - e.top) } else { [0.0; 3] }
    });
    let hole = Mask {
        width: crop.w,
        height: crop.h,
        data: (0..crop.w * crop.h).map(|i| scene.mask.get(crop.x0 + i % crop.w, crop.y0 + i / crop.w)).collect(),
    };
    let known = Mask {
        width: crop.w,
        height: crop.h,
        data: hole.data.iter().map(|&m| if m >= 0.5 { 0.0 } else { 1.0 }).collect(),
    };
    let photo = PhotoCrop { rgb: target, known, hole };
    let (target, known) = (&photo.rgb, &photo.known);
    if cancelled() {
        return Err(Error::Cancelled);
    }
    // The photo's own detail for known pixels.
    let (target_low, target_low_ok) = low_band(target, known, crop, scale);
    // The references where they cover the crop, best-aligned first.
    let (guide, guide_ok, copied) = reference_guide(scene, sources, crop, scale, &photo, cancelled)?;
    let (guide_low, guide_low_ok) = low_band(&guide, &guide_ok, crop, scale);
    // The working fill upscaled over the crop (the result's base, and what the reference's low
    // band is compared with).
    let mut up = RgbF::new(crop.w, crop.h);
    up.data.par_chunks_mut(3 * crop.w).enumerate().for_each(|(y, row)| {
        for x in 0..crop.w {
            row[3 * x..3 * x + 3].copy_from_slice(&upscaled(fill, scale, crop.x0 + x, crop.y0 + y));
        }
    });
    let conf = reference_weight(&up, &guide_low, &guide_ok, &guide_low_ok, scale);
    if cancelled() {
        return Err(Error::Cancelled);
    }
    // The photo's own texture where the references do not hold, synthesised level by level
    // over the part of the crop that needs it.
    let own_layer = own_layer(scene, sources, fill, scale, crop, &photo.hole, &conf, cancelled)?;
    // The result, in strips of rows (rows in parallel within a strip; cancel between strips).
    let mut out = RgbF::new(crop.w, crop.h);
    let (mut used, mut holes) = (0.0f64, 0usize);
    for (si, strip) in out.data.chunks_mut(3 * crop.w * STRIP).enumerate() {
        if cancelled() {
            return Err(Error::Cancelled);
        }
        let rows: Vec<(f64, usize)> = strip
            .par_chunks_mut(3 * crop.w)
            .enumerate()
            .map(|(r, row)| {
                let y = si * STRIP + r;
                let (mut used, mut holes) = (0.0f64, 0usize);
                for x in 0..crop.w {
                    let i = y * crop.w + x;
                    let base = up.get(x, y);
                    let detail = if known.data[i] >= 0.5 {
                        if target_low_ok.data[i] >= 0.5 {
                            sub(target.get(x, y), target_low.get(x, y), 1.0)
                        } else {
                            [0.0; 3]
                        }
                    } else {
                        holes += 1;
                        let c = conf[i];
                        // A copy beyond the references is the photo's or a reference's texture
                        // somewhere else, not a reference's view of this pixel.
                        if !copied[i] {
                            used += c as f64;
                        }
                        let from_ref = sub(guide.get(x, y), guide_low.get(x, y), c);
                        // Where the reference does not hold (or does not reach): the photo's own
                        // detail from where the engine copied this pixel's patch.
                        let own = if c < 1.0 { own_layer.as_ref().and_then(|l| l.detail(x, y)) } else { None };
                        match own {
                            Some(d) => [0, 1, 2].map(|k| from_ref[k] + (1.0 - c) * d[k]),
                            None => from_ref,
                        }
                    };
                    row[3 * x..3 * x + 3].copy_from_slice(&[0, 1, 2].map(|k| (base[k] + detail[k]).clamp(0.0, 1.0)));
                }
                (used, holes)
            })
            .collect();
        for (u, h) in rows {
            used += u;
            holes += h;
        }
        let rows_done = (si * STRIP + STRIP).min(crop.h);
        let rgb = RgbF { width: crop.w, height: strip.len() / (3 * crop.w), data: strip.to_vec() };
        tile(NativeTile {
            x0: crop.x0,
            y0: crop.y0 + si * STRIP,
            rgb: std::sync::Arc::new(rgb),
            rows_done,
            rows: crop.h,
        });
    }
    let reference_detail = if holes > 0 { (used / holes as f64) as f32 } else { 0.0 };
    Ok(Some(NativeFill { x0: crop.x0, y0: crop.y0, rgb: out, reference_detail }))
}

/// The crop pixels whose working pixel (nearest) `warp` covers.
fn covered(warp: &TargetWarp, crop: Rect, scale: Scale) -> Mask {
    let c = &warp.covers;
    let data = (0..crop.w * crop.h)
        .map(|i| {
            let (u, v) = scale.to_working((crop.x0 + i % crop.w) as f64, (crop.y0 + i / crop.w) as f64);
            let (x, y) =
                ((u.round().max(0.0) as usize).min(c.width - 1), (v.round().max(0.0) as usize).min(c.height - 1));
            c.get(x, y)
        })
        .collect();
    Mask { width: crop.w, height: crop.h, data }
}

/// The references warped into the crop at their own resolution, the best-aligned one where
/// several cover a pixel, then the copies beyond them (`copies_at_native`); where any does,
/// and which pixels are copies.
fn reference_guide(
    scene: &Scene,
    sources: &Sources<'_>,
    crop: Rect,
    scale: Scale,
    photo: &PhotoCrop,
    cancelled: &dyn Fn() -> bool,
) -> Result<(RgbF, Mask, Vec<bool>)> {
    let mut guide = RgbF::new(crop.w, crop.h);
    let mut guide_ok = Mask::new(crop.w, crop.h, 0.0);
    for warp in sources.warps {
        if cancelled() {
            return Err(Error::Cancelled);
        }
        let covers = covered(warp, crop, scale);
        let (rgb, valid) = native_warp(scene, sources.working_refs, warp, crop, scale, photo, &covers);
        for i in 0..crop.w * crop.h {
            if guide_ok.data[i] < 0.5 && valid.data[i] >= 0.5 && covers.data[i] >= 0.5 {
                guide_ok.data[i] = 1.0;
                guide.data[3 * i..3 * i + 3].copy_from_slice(&rgb.data[3 * i..3 * i + 3]);
            }
        }
    }
    let copied = match sources.copies {
        Some(shifts) => copies_at_native(scene, sources.working_refs, shifts, crop, scale, &mut guide, &mut guide_ok),
        None => vec![false; crop.w * crop.h],
    };
    Ok((guide, guide_ok, copied))
}

/// Where the working fill's guide is a shifted copy (`align::exemplar`), the same copy at the
/// photo's resolution: each crop pixel takes its working pixel's shift, scaled, from the
/// photo's known pixels or the reference at its own size. So a margin no reference reaches is
/// the photo's or a reference's real texture at 100 %, not the working copy enlarged. Like a
/// warped reference, its detail counts only where the fill agrees with its low band.
fn copies_at_native(
    scene: &Scene,
    working_refs: &[RgbF],
    shifts: &[Option<Shift>],
    crop: Rect,
    scale: Scale,
    guide: &mut RgbF,
    guide_ok: &mut Mask,
) -> Vec<bool> {
    let (cw, ch) = scene.canvas_size();
    let (ww, wh) = ((cw as f64 / scale.sx).round() as usize, (ch as f64 / scale.sy).round() as usize);
    if shifts.len() != ww * wh {
        return vec![false; crop.w * crop.h];
    }
    let e = scene.extension;
    let (tw, th) = (scene.target.width() as f64, scene.target.height() as f64);
    // Written straight into the guide, row by row (a crop can be most of a 50 MP canvas).
    let copy = |x: usize, y: usize| -> Option<[f32; 3]> {
        let (cx, cy) = ((crop.x0 + x) as f64, (crop.y0 + y) as f64);
        let (u, v) = scale.to_working(cx, cy);
        let (wx, wy) = ((u.round().max(0.0) as usize).min(ww - 1), (v.round().max(0.0) as usize).min(wh - 1));
        let s = shifts[wy * ww + wx]?;
        if s.src == 0 {
            let (sx, sy) = (cx + s.dx as f64 * scale.sx, cy + s.dy as f64 * scale.sy);
            let (px, py) = (sx - e.left as f64, sy - e.top as f64);
            if px < 0.0 || py < 0.0 || px > tw - 1.0 || py > th - 1.0 {
                return None;
            }
            if scene.mask.get(sx.round() as usize, sy.round() as usize) >= 0.5 {
                return None;
            }
            Some(scene.target.rgb.sample_cubic(px as f32, py as f32))
        } else {
            let (reference, small) = (&scene.refs.get(s.src - 1)?.rgb, working_refs.get(s.src - 1)?);
            let (rx, ry) = (reference.width as f64 / small.width as f64, reference.height as f64 / small.height as f64);
            // The working reference's pixel centre → the reference's own pixels.
            let (qx, qy) = ((u + s.dx as f64 + 0.5) * rx - 0.5, (v + s.dy as f64 + 0.5) * ry - 0.5);
            if qx < 0.0 || qy < 0.0 || qx > reference.width as f64 - 1.0 || qy > reference.height as f64 - 1.0 {
                return None;
            }
            Some(reference.sample_cubic(qx as f32, qy as f32))
        }
    };
    let mut copied = vec![false; crop.w * crop.h];
    guide
        .data
        .par_chunks_mut(3 * crop.w)
        .zip(guide_ok.data.par_chunks_mut(crop.w))
        .zip(copied.par_chunks_mut(crop.w))
        .enumerate()
        .for_each(|(y, ((rgb, ok), copied))| {
            for x in 0..crop.w {
                if ok[x] >= 0.5 {
                    continue;
                }
                if let Some(v) = copy(x, y) {
                    ok[x] = 1.0;
                    copied[x] = true;
                    rgb[3 * x..3 * x + 3].copy_from_slice(&v);
                }
            }
        });
    copied
}

/// How much of the reference's detail each pixel takes: 1 where the upscaled fill `up` and the
/// reference's low band agree, falling as they differ (the engine put something else there),
/// smoothed over about one working pixel so that it does not flicker pixel by pixel; 0 where
/// the reference or its low band is undefined.
fn reference_weight(up: &RgbF, guide_low: &RgbF, guide_ok: &Mask, guide_low_ok: &Mask, scale: Scale) -> Vec<f32> {
    let (w, h) = (up.width, up.height);
    let defined = |i: usize| guide_ok.data[i] >= 0.5 && guide_low_ok.data[i] >= 0.5;
    let mut conf = vec![0.0f32; w * h];
    conf.par_chunks_mut(w).enumerate().for_each(|(y, row)| {
        for (x, c) in row.iter_mut().enumerate() {
            if !defined(y * w + x) {
                continue;
            }
            let (f, g) = (up.get(x, y), guide_low.get(x, y));
            let d = (0..3).map(|k| (f[k] - g[k]).abs()).sum::<f32>() / 3.0;
            *c = (-(d / AGREE_TAU).powi(2) * std::f32::consts::LN_2).exp();
        }
    });
    blur(&mut conf, w, h, scale.sx.max(scale.sy) as f32 * 0.5);
    // The blur spreads weight into undefined pixels: none there.
    for (i, c) in conf.iter_mut().enumerate() {
        if !defined(i) {
            *c = 0.0;
        }
    }
    conf
}

/// The photo's own texture over part of the crop (`own_texture`): its detail (the texture
/// less its low band) where a texture was synthesised.
struct OwnLayer {
    /// Crop pixels [x0, x0 + rgb.width) × [y0, y0 + rgb.height).
    x0: usize,
    y0: usize,
    rgb: RgbF,
    low: RgbF,
    /// How much of the texture each pixel takes: 1 where a source was found, fading to 0 over
    /// about half a working pixel where none was (a hard edge there shows as a polygon of
    /// texture in a smooth fill at 100 %).
    weight: Vec<f32>,
}

impl OwnLayer {
    /// The detail at crop pixel (x, y), if the layer has one there.
    fn detail(&self, x: usize, y: usize) -> Option<[f32; 3]> {
        let (u, v) = (x.checked_sub(self.x0)?, y.checked_sub(self.y0)?);
        if u >= self.rgb.width || v >= self.rgb.height {
            return None;
        }
        let w = self.weight[v * self.rgb.width + u];
        (w > 0.0).then(|| sub(self.rgb.get(u, v), self.low.get(u, v), w))
    }
}

/// The photo's own texture for the hole pixels whose reference weight `conf` is below 1 (all
/// of them without references), over their bounding box with the filter's margin. None
/// without the engine's matches (nothing says where to copy from) or without such pixels.
#[allow(clippy::too_many_arguments)]
fn own_layer(
    scene: &Scene,
    sources: &Sources<'_>,
    fill: &RgbF,
    scale: Scale,
    crop: Rect,
    hole: &Mask,
    conf: &[f32],
    cancelled: &dyn Fn() -> bool,
) -> Result<Option<OwnLayer>> {
    let Some(own) = sources.own else { return Ok(None) };
    let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
    for y in 0..crop.h {
        for x in 0..crop.w {
            let i = y * crop.w + x;
            if hole.data[i] >= 0.5 && conf[i] < 0.99 {
                (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x + 1), y1.max(y + 1));
            }
        }
    }
    if x1 == 0 {
        return Ok(None);
    }
    let m = (2.0 * scale.sx.max(scale.sy)).ceil() as usize + 2;
    let part = Rect {
        x0: crop.x0 + x0.saturating_sub(m),
        y0: crop.y0 + y0.saturating_sub(m),
        w: (x1 + m).min(crop.w) - x0.saturating_sub(m),
        h: (y1 + m).min(crop.h) - y0.saturating_sub(m),
    };
    let area = own_texture::Area {
        x0: part.x0 as i64,
        y0: part.y0 as i64,
        x1: (part.x0 + part.w) as i64,
        y1: (part.y0 + part.h) as i64,
    };
    let synthesised = own_texture::synthesise(scene, fill, own, (scale.sx, scale.sy), area, cancelled);
    if cancelled() {
        return Err(Error::Cancelled);
    }
    let Some((rgb, got)) = synthesised else { return Ok(None) };
    let (low, _) = low_band(&rgb, &Mask::new(part.w, part.h, 1.0), part, scale);
    let mut weight: Vec<f32> = got.iter().map(|&g| f32::from(u8::from(g))).collect();
    blur(&mut weight, part.w, part.h, 0.5 * scale.sx.max(scale.sy) as f32);
    // Inside a found region the texture counts whole; the blur only softens its edges outward.
    for (w, &g) in weight.iter_mut().zip(&got) {
        if g {
            *w = 1.0;
        }
    }
    Ok(Some(OwnLayer { x0: part.x0 - crop.x0, y0: part.y0 - crop.y0, rgb, low, weight }))
}

fn sub(a: [f32; 3], b: [f32; 3], weight: f32) -> [f32; 3] {
    [0, 1, 2].map(|k| weight * (a[k] - b[k]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_low_band_of_a_smooth_image_is_the_image_and_detail_is_what_the_working_size_loses() {
        let scale = Scale { sx: 8.0, sy: 8.0 };
        let crop = Rect { x0: 40, y0: 24, w: 96, h: 80 };
        let all = Mask::new(crop.w, crop.h, 1.0);
        // A slow ramp survives the working size: its low band is itself (inside the margin).
        let ramp = RgbF::from_fn(crop.w, crop.h, |x, y| [0.2 + 0.002 * x as f32, 0.3 + 0.003 * y as f32, 0.5]);
        let (low, ok) = low_band(&ramp, &all, crop, scale);
        for y in 16..crop.h - 16 {
            for x in 16..crop.w - 16 {
                assert!(ok.get(x, y) > 0.5);
                let (a, b) = (low.get(x, y), ramp.get(x, y));
                assert!((0..3).all(|k| (a[k] - b[k]).abs() < 2e-3), "{x},{y}: {a:?} vs {b:?}");
            }
        }
        // A 2-px checker is far finer than an 8-px working pixel: its low band is flat grey.
        let checker = RgbF::from_fn(crop.w, crop.h, |x, y| [((x / 2 + y / 2) % 2) as f32; 3]);
        let (low, _) = low_band(&checker, &all, crop, scale);
        for y in 16..crop.h - 16 {
            for x in 16..crop.w - 16 {
                assert!((low.get(x, y)[0] - 0.5).abs() < 0.06, "{x},{y}: {:?}", low.get(x, y));
            }
        }
    }

    #[test]
    fn undefined_pixels_do_not_leak_into_the_low_band() {
        let scale = Scale { sx: 4.0, sy: 4.0 };
        let crop = Rect { x0: 0, y0: 0, w: 64, h: 48 };
        let img = RgbF::from_fn(64, 48, |x, _| if x < 32 { [0.8; 3] } else { [0.0; 3] });
        let mut valid = Mask::new(64, 48, 1.0);
        for y in 0..48 {
            for x in 32..64 {
                valid.set(x, y, 0.0);
            }
        }
        let (low, ok) = low_band(&img, &valid, crop, scale);
        for y in 4..44 {
            for x in 0..36 {
                assert!(ok.get(x, y) > 0.5);
                assert!((low.get(x, y)[0] - 0.8).abs() < 1e-4, "{x},{y}: {:?}", low.get(x, y));
            }
        }
    }

    /// The working copies' shifts read at the photo's and the reference's own resolution: a
    /// margin pixel takes exactly the native pixel its working shift, scaled, points at.
    #[test]
    fn a_working_copy_is_the_same_shift_of_the_native_pixels() {
        let mut rng = crate::rng::Rng::new(8);
        let mut noise = |w: u32, h: u32| {
            image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |_, _| {
                image::Rgb([0, 1, 2].map(|_| rng.range_usize(0, 255) as u8))
            }))
        };
        let photo = |img: image::DynamicImage, n: &str| crate::scene::Photo::from_image(n.into(), img, None);
        let extension = crate::scene::Extension { left: 0, top: 0, right: 100, bottom: 0 };
        let refs = vec![std::sync::Arc::new(photo(noise(400, 200), "r.png"))];
        let scene = Scene::new(photo(noise(200, 100), "t.png"), None, extension, refs).unwrap();
        // Canvas 300×100 at working 150×50; the reference at working 200×100.
        let scale = Scale { sx: 2.0, sy: 2.0 };
        let working_refs = vec![scene.refs[0].rgb.resized(200, 100)];
        let mut shifts = vec![None; 150 * 50];
        for y in 0..50 {
            for x in 100..150 {
                shifts[y * 150 + x] =
                    Some(if y < 25 { Shift { src: 0, dx: -60, dy: 0 } } else { Shift { src: 1, dx: 5, dy: 2 } });
            }
        }
        let crop = Rect { x0: 200, y0: 0, w: 100, h: 100 };
        let (mut guide, mut ok) = (RgbF::new(100, 100), Mask::new(100, 100, 0.0));
        let copied = copies_at_native(&scene, &working_refs, &shifts, crop, scale, &mut guide, &mut ok);
        assert!(copied.iter().all(|&c| c), "every crop pixel is a copy");
        let near = |a: [f32; 3], b: [f32; 3]| (0..3).all(|k| (a[k] - b[k]).abs() < 1e-4);
        for y in 0..100 {
            for x in 0..100 {
                assert!(ok.get(x, y) >= 0.5, "{x},{y} copied");
                let want = if y < 50 {
                    scene.target.rgb.get(200 + x - 120, y)
                } else {
                    scene.refs[0].rgb.get(200 + x + 10, y + 4)
                };
                assert!(near(guide.get(x, y), want), "{x},{y}: {:?} against {:?}", guide.get(x, y), want);
            }
        }
    }

    /// A 384×256 photo of coloured rectangles (structure the alignment can lock onto) under a
    /// 5-px weave, with a 96×64 hole, and a reference that is the same view shifted by 7 px:
    /// at a working size of 128 the weave is below one working pixel.
    fn fine_scene() -> (Scene, RgbF) {
        let mut rng = crate::rng::Rng::new(5);
        let blobs: Vec<[f32; 6]> = (0..120)
            .map(|_| {
                let b = [400.0, 260.0, 24.0, 1.0, 1.0, 1.0].map(|m| rng.range_f32(0.0, m));
                [b[0], b[1], 6.0 + b[2], b[3], b[4], b[5]]
            })
            .collect();
        let weave = move |x: f32, y: f32| {
            let w = ((x * 1.3).sin() * (y * 1.3).sin()) * 0.12;
            let mut c = [0.45f32, 0.5, 0.45];
            for b in &blobs {
                if (x - b[0]).abs() < b[2] && (y - b[1]).abs() < 0.7 * b[2] {
                    c = [b[3], b[4], b[5]];
                }
            }
            c.map(|v| (v + w).clamp(0.0, 1.0))
        };
        let to8 = |f: &dyn Fn(u32, u32) -> [f32; 3], w: u32, h: u32| {
            image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| {
                image::Rgb(f(x, y).map(|v| (v * 255.0).round() as u8))
            }))
        };
        let target = to8(&|x, y| weave(x as f32, y as f32), 384, 256);
        let reference = to8(&|x, y| weave(x as f32 + 7.0, y as f32), 384, 256);
        let truth = crate::scene::Photo::from_image("t.png".into(), target.clone(), None).rgb;
        let mut m = Mask::new(384, 256, 0.0);
        for y in 96..160 {
            for x in 144..240 {
                m.set(x, y, 1.0);
            }
        }
        let photo = |img: image::DynamicImage, n: &str| crate::scene::Photo::from_image(n.into(), img, None);
        let scene = Scene::new(
            photo(target, "t.png"),
            Some((m, std::path::Path::new("m.png"))),
            crate::scene::Extension::default(),
            vec![std::sync::Arc::new(photo(reference, "r.png"))],
        )
        .unwrap();
        (scene, truth)
    }

    /// A patch-engine fill of `scene` at a working size of 128, and the result as floats.
    fn fill_at_128(scene: &Scene) -> (crate::engine::FillOutput, RgbF) {
        let s = crate::engine::FillSettings {
            engine: crate::settings::EngineKind::Patch,
            size: 128,
            use_cache: false,
            ..Default::default()
        };
        fill_with(scene, &s)
    }

    /// A fill of `scene` with `s`, and the result as floats.
    fn fill_with(scene: &Scene, s: &crate::engine::FillSettings) -> (crate::engine::FillOutput, RgbF) {
        let (device, mut held) = (burn::prelude::Device::flex(), crate::engine::pipeline::Held::default());
        let mut out = crate::engine::pipeline::run_fill(
            scene,
            s,
            &device,
            &mut held,
            &mut crate::engine::pipeline::Silent,
            &|| false,
        )
        .unwrap();
        let image = std::mem::replace(&mut out.image, image::DynamicImage::new_rgb8(1, 1));
        let result = crate::scene::Photo::from_image("o.png".into(), image, None).rgb;
        (out, result)
    }

    #[test]
    fn native_detail_brings_back_the_texture_the_working_size_cannot_hold() {
        let (scene, truth) = fine_scene();
        let (out, result) = fill_at_128(&scene);
        let detail = crate::eval::detail_ratio(&result, &truth, &scene.mask);
        let psnr = crate::eval::psnr_masked(&result, &truth, &scene.mask);
        assert!(out.reference_detail.unwrap_or(0.0) > 0.8, "the reference's detail was used");
        assert!((0.85..1.15).contains(&detail), "detail ratio {detail:.2} (psnr {psnr:.1})");
        assert!(psnr > 30.0, "psnr {psnr:.1}");
        // The working-size fill alone, upscaled, is a smear.
        assert_eq!((out.working.width, out.working.height), (128, 88));
        let smear = crate::eval::detail_ratio(&out.working.resized(384, 256), &truth, &scene.mask);
        assert!(smear < 0.5, "upscaled working fill: detail {smear:.2}");
    }

    #[test]
    fn without_references_the_hole_gets_the_photos_own_texture_not_a_smear() {
        let (mut scene, truth) = fine_scene();
        scene.refs.clear();
        let (out, result) = fill_at_128(&scene);
        let detail = crate::eval::detail_ratio(&result, &truth, &scene.mask);
        let smear = crate::eval::detail_ratio(&out.working.resized(384, 256), &truth, &scene.mask);
        assert_eq!(out.reference_detail, Some(0.0), "no reference to take detail from");
        assert!(smear < 0.5 && detail > smear + 0.3, "own detail {detail:.2}, upscaled fill {smear:.2}");
    }

    #[test]
    fn the_scene_model_gets_the_photos_own_texture_too() {
        // No matches of its own: those of its fill at zero noise (the candidate score's pass).
        let (mut scene, truth) = fine_scene();
        scene.refs.clear();
        let mut s = crate::engine::FillSettings {
            engine: crate::settings::EngineKind::SceneModel,
            size: 128,
            steps: 2,
            use_cache: false,
            spec: crate::diffusion::unet::UNetSpec { channels: vec![8, 16], emb_dim: 16 },
            ..Default::default()
        };
        (s.learn.steps, s.learn.batch, s.learn.crop) = (3, 2, 16);
        let (out, result) = fill_with(&scene, &s);
        let detail = crate::eval::detail_ratio(&result, &truth, &scene.mask);
        let smear = crate::eval::detail_ratio(&out.working.resized(384, 256), &truth, &scene.mask);
        assert!(detail > smear + 0.2, "own detail {detail:.2}, upscaled fill {smear:.2}");
    }

    #[test]
    fn the_native_step_streams_its_strips_and_stops_within_one_at_a_cancel() {
        let (scene, _) = fine_scene();
        let working = RgbF::new(128, 88);
        let sources = Sources { warps: &[], working_refs: &[], own: None, copies: None };
        // Whole: the strips tile the crop, top to bottom, and are the result's rows.
        let mut tiles = Vec::new();
        let whole = native_fill(&scene, &sources, &working, 6.0, &|| false, &mut |t| tiles.push(t)).unwrap().unwrap();
        assert!(tiles.len() >= 2, "{} strips", tiles.len());
        let mut y = whole.y0;
        for t in &tiles {
            assert_eq!((t.x0, t.y0, t.rgb.width), (whole.x0, y, whole.rgb.width));
            assert_eq!(t.rgb.data[..], whole.rgb.data[3 * (y - whole.y0) * whole.rgb.width..][..t.rgb.data.len()]);
            y += t.rgb.height;
            assert_eq!(t.rows_done, y - whole.y0);
        }
        assert_eq!(y, whole.y0 + whole.rgb.height);
        // A cancel raised once the first strip is out: no second strip.
        let stop = std::cell::Cell::new(false);
        let mut n = 0;
        let r = native_fill(&scene, &sources, &working, 6.0, &|| stop.get(), &mut |_| {
            n += 1;
            stop.set(true);
        });
        assert!(matches!(r, Err(Error::Cancelled)) && n == 1, "{n} strips after the cancel");
        // A fill at (nearly) the photo's own size gets nothing added.
        let same = RgbF::new(384, 256);
        let sources = Sources { warps: &[], working_refs: &[], own: None, copies: None };
        assert!(native_fill(&scene, &sources, &same, 2.0, &|| false, &mut |_| ()).unwrap().is_none());
    }

    #[test]
    fn the_region_covers_the_hole_the_feather_and_the_filter() {
        let mut m = Mask::new(400, 300, 0.0);
        for y in 100..150 {
            for x in 200..260 {
                m.set(x, y, 1.0);
            }
        }
        let r = region(&m, 20.0, Scale { sx: 10.0, sy: 10.0 }).unwrap();
        assert!(r.x0 <= 200 - 40 && r.y0 <= 100 - 40 && r.x0 + r.w >= 260 + 40 && r.y0 + r.h >= 150 + 40, "{r:?}");
        assert!(r.w < 200 && r.h < 200, "not the whole photo: {r:?}");
    }
}
