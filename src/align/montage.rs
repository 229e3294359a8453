//! RealFill's own setting: a tight crop of a scene — most of the frame to fill — whose subject
//! moved between the photos. The known pixels are then mostly the subject, so whatever motion
//! explains them is the subject's, not the camera's; a guide built from the known pixels
//! alone (`guide::target_guide`) either finds nothing or carries the subject's motion over the
//! whole background (the candles scaled with a face that leaned in). Here the fill is a
//! photomontage of two layers instead:
//! - the **camera layer**: a reference as the camera saw it — for photos of the target's own
//!   size (frames of one burst or video) the still camera — the one whose plain warp agrees
//!   with most known pixels;
//! - the **subject layer**: a reference under the similarity (scale and shift) that best
//!   explains the known pixels, kept when it explains clearly more of them than the camera
//!   layer does. It carries the rest of the subject's body from the reference.
//!
//! Which part of a reference is the subject is told by a second reference: warped onto the
//! first by the homography of their matches (the dominant plane: the background), the two
//! agree where nothing moved. The layers are joined by a minimum cut (`mincut`): each pixel
//! prefers the subject layer where it shows a part of the reference that moved, the camera
//! layer where it shows a part that did not, and the seam runs where the two layers agree; then
//! they are blended band by band (`scene::blend`). A part of a reference shown twice — the
//! camera layer's subject in its old pose beside the photo's moved one (`stale_subject`), or,
//! where both layers come from one reference, the same point under each (`duplicates`) —
//! costs what it would be seen. A similarity moves a subject only as a whole; what it leaves —
//! the jaw a few pixels off the face, the sweater off the head — is measured on the crop and
//! carried outward (`Layer::follow_residual`).

use rayon::prelude::*;

use super::guide::{Source, TargetWarp};
use super::parallax::{self, Field};
use super::{Diagnostics, Guide, Homography, mincut};
use crate::scene::blend;
use crate::scene::blur::blur;
use crate::scene::{Mask, RgbF};

/// The montage is used when at least this share of the canvas is to be filled: below it the
/// known pixels around the hole show enough of the scene for `trust` to judge the warps.
pub const SPARSE: f32 = 0.6;
/// Mean absolute difference per channel (after a light blur) under which a known pixel agrees
/// with a layer.
const AGREE: f32 = 0.04;
/// A subject layer must agree with this much larger a share of the known pixels than the
/// camera layer (megamind: 0.19–0.20 where the face moved; 0.11 on the glass case, whose other
/// reference gives the face's lower half where the camera layer has none — the crop cuts the
/// face under the eyes; 0.09 where the best similarity only fits a moved face half-way and
/// carries the wrong body).
const SUBJECT_GAIN: f32 = 0.10;
/// Blurred difference between two references, aligned, above which a pixel counts as moved.
const MOVED: f32 = 0.06;
/// The known pixels' seeds must fall on the two sides of a moved mask this clearly (mean over
/// the subject's seeds minus mean over the background's), each side with this many seeds.
const MIN_CONTRAST: f32 = 0.3;
const MIN_SEEDS: usize = 30;
/// Without clear seeds, a mask is taken as it is when at most this share of the pixels the two
/// references share moved.
const MAX_MOVED_SHARE: f32 = 0.5;
/// A known pixel takes part in a layer's exposure fit when the layer differs from it by less
/// than this (mean per channel, lightly blurred): loose enough for a fifth of exposure change
/// on mid-tones, tight enough to leave out what moved (0.15 let the moved subject in: the
/// test's background error 0.027 instead of 0.00002).
const EXPOSURE_NEAR: f32 = 0.1;
/// A layer's exposure fit is applied when it leaves at most this share of the known pixels'
/// error (mean per channel)...
const EXPOSURE_KEEP: f64 = 0.75;
/// ...and lowers it by at least this much (about 3 levels of 255).
const EXPOSURE_MIN_GAIN: f64 = 0.01;
/// Octaves of the seam's blend: the low frequencies cross the seam over about 2^levels pixels,
/// and beyond the reach of a layer's exposure difference that mixes two different contents
/// (a shifted candle's glow).
const BLEND_LEVELS: usize = 3;
/// Weight of a layer's difference from the known pixel it meets at the hole's edge.
const EDGE_WEIGHT: f32 = 4.0;
/// Unary weight of "this layer shows a part of the reference that moved / did not".
const LAMBDA: f32 = 0.1;
/// What showing a structured part of a reference twice costs (`duplicates`), per pixel...
const DUPLICATE: f32 = 0.9;
/// ...at this local contrast (mean absolute difference from a σ = 2 px blur) and above.
const STRUCTURE: f32 = 0.03;
/// The subject's similarity is searched over scales in [1/SCALE_RANGE, SCALE_RANGE]...
const SCALE_RANGE: f64 = 1.15;
/// ...and shifts up to this share of the canvas's long side.
const SHIFT_RANGE: f64 = 0.2;
/// The search weighs a known pixel by its structure: FLAT, plus its gradient (per 2 px) over
/// EDGE, at most 1.
const FLAT: f32 = 0.1;
const EDGE: f32 = 0.1;
/// The exhaustive stage of that search runs at a reduction whose long side is at most this.
const COARSE_SIDE: usize = 128;

/// The montage's guide and the warps it took, each with the pixels it covers.
pub struct Montage {
    pub guide: Guide,
    pub warps: Vec<TargetWarp>,
}

/// One reference's two motions and the share of the known pixels each explains.
struct Motions {
    reference: usize,
    camera: Homography,
    camera_share: f32,
    /// None when the search found no motion (`subject_motion`).
    subject: Option<Homography>,
    subject_share: f32,
}

/// A warped reference: colours and where the warp lands inside the reference.
struct Layer {
    reference: usize,
    map: Homography,
    /// A residual shift before `map` (`follow_residual`).
    field: Option<Field>,
    rgb: RgbF,
    valid: Mask,
    /// Where the reference shows something that moved (`moved_parts`), at its own size.
    moved: Option<Vec<f32>>,
    ref_width: usize,
    ref_height: usize,
}

impl Layer {
    fn new(refs: &[RgbF], reference: usize, map: Homography, w: usize, h: usize) -> Layer {
        let (rgb, valid) = super::warp(&refs[reference], None, &map, w, h);
        let (ref_width, ref_height) = (refs[reference].width, refs[reference].height);
        Layer { reference, map, field: None, rgb, valid, moved: None, ref_width, ref_height }
    }

    /// What the layer's motion leaves unexplained of the known pixels — a subject is not a
    /// rigid plane: the head turns, the body moves a little against it — measured on the crop
    /// and carried outward (`parallax::correction`, kept only when it predicts shifts it was
    /// not fitted to); the layer is warped again along it. megamind-man: the shifts hold up
    /// (held-out error 0.67 of none, 4.7 px on average) and the jaw and the sweater meet the
    /// face (24.0 → 24.3 dB); the woman's and the glass case's head turned too far for the
    /// ±6 px search, and nothing changes there.
    fn follow_residual(&mut self, refs: &[RgbF], canvas: &RgbF, soft: &RgbF, known: &Mask, dbg: &Diagnostics) {
        let Some(field) = parallax::correction(canvas, known, &self.rgb, &self.valid, dbg) else { return };
        let (w, h) = (canvas.width, canvas.height);
        (self.rgb, self.valid) = super::warp_shifted(&refs[self.reference], None, &self.map, Some(&field), w, h);
        self.field = Some(field);
        self.match_exposure(canvas, soft, known, dbg);
    }

    /// The layer's exposure matched to the known pixels it shows (`align::match_exposure`,
    /// gain and offset per channel), fitted only where it roughly agrees with them: the
    /// camera layer's known pixels are mostly a subject that moved, which would drag the fit.
    fn match_exposure(&mut self, canvas: &RgbF, soft_canvas: &RgbF, known: &Mask, dbg: &Diagnostics) {
        let mine = soften(&self.rgb, Some(&self.valid));
        let near = Mask {
            width: known.width,
            height: known.height,
            data: (0..known.data.len())
                .map(|i| {
                    let d = (0..3).map(|k| (mine.data[3 * i + k] - soft_canvas.data[3 * i + k]).abs()).sum::<f32>();
                    (known.data[i] >= 0.5 && self.valid.data[i] >= 0.5 && d / 3.0 < EXPOSURE_NEAR) as u8 as f32
                })
                .collect(),
        };
        let fit = super::exposure_fit(&self.rgb, &self.valid, canvas, &near);
        // Applied only when it clearly explains the known pixels better than the layer as it
        // is: frames of one video share an exposure, and a fit there only learns the content's
        // small differences (megamind-woman, fitted always: SSIM 0.673 → 0.648).
        let px: Vec<usize> = (0..near.data.len()).filter(|&i| near.data[i] >= 0.5).collect();
        let error = |fit: &[Option<(f64, f64)>; 3]| {
            let sum: f64 = px
                .iter()
                .map(|&i| {
                    (0..3)
                        .map(|k| {
                            let (g, o) = fit[k].unwrap_or((1.0, 0.0));
                            let v = (self.rgb.data[3 * i + k] as f64 * g + o).clamp(0.0, 1.0);
                            (v - canvas.data[3 * i + k] as f64).abs()
                        })
                        .sum::<f64>()
                })
                .sum();
            sum / (3 * px.len()).max(1) as f64
        };
        let (before, after) = (error(&[None; 3]), error(&fit));
        let apply = after <= EXPOSURE_KEEP * before && before - after >= EXPOSURE_MIN_GAIN;
        if dbg.on() {
            eprintln!(
                "montage: ref{} exposure fit {:?}: error {before:.4} → {after:.4} on {} known pixels, {}",
                self.reference,
                fit.map(|f| f.map(|(g, o)| ((g * 1e3).round() / 1e3, (o * 1e3).round() / 1e3))),
                px.len(),
                if apply { "applied" } else { "not applied" }
            );
        }
        if apply {
            super::apply_exposure(&mut self.rgb, &fit);
        }
    }

    /// The reference point that canvas pixel `i` shows.
    fn to_ref(&self, i: usize, w: usize) -> Option<(f64, f64)> {
        let (dx, dy) = self.field.as_ref().map_or((0.0, 0.0), |f| (f.dx[i] as f64, f.dy[i] as f64));
        self.map.apply((i % w) as f64 + dx, (i / w) as f64 + dy)
    }

    /// The canvas pixel that shows reference point (u, v), if any (`inverse`: `map`'s; the
    /// field's shift is undone at the point the plain map gives, which is exact for the smooth
    /// fields `parallax` makes to well within a pixel).
    fn to_canvas(&self, inverse: &Homography, u: f64, v: f64, w: usize, h: usize) -> Option<usize> {
        let (x, y) = inverse.apply(u, v)?;
        let inside = |x: f64, y: f64| x >= 0.0 && y >= 0.0 && x < w as f64 && y < h as f64;
        let (mut x, mut y) = (x.round(), y.round());
        if let Some(f) = &self.field
            && inside(x, y)
        {
            let j = y as usize * w + x as usize;
            (x, y) = ((x - f.dx[j] as f64).round(), (y - f.dy[j] as f64).round());
        }
        inside(x, y).then(|| y as usize * w + x as usize)
    }

    /// Whether canvas pixel `i` shows a part of the reference that moved: 1 yes, 0 no, 0.5
    /// unknown.
    fn moved_at(&self, i: usize, w: usize) -> f32 {
        let Some(moved) = &self.moved else { return 0.5 };
        let Some((u, v)) = self.to_ref(i, w) else { return 0.5 };
        let (x, y) = (u.round(), v.round());
        if x < 0.0 || y < 0.0 || x >= self.ref_width as f64 || y >= self.ref_height as f64 {
            return 0.5;
        }
        moved[y as usize * self.ref_width + x as usize]
    }
}

/// The montage for a canvas whose `known` pixels are a small part (`SPARSE`), from references
/// with a still-camera map (`stills[i]`: canvas → reference i at working size); None when no
/// reference has one.
pub fn compose(
    canvas: &RgbF,
    known: &Mask,
    refs: &[RgbF],
    stills: &[Option<Homography>],
    seed: u64,
    dbg: &Diagnostics,
) -> Option<Montage> {
    let (w, h) = (canvas.width, canvas.height);
    let debug = dbg.on();
    let soft = soften(canvas, Some(known));
    let known_px: Vec<usize> = (0..w * h).filter(|&i| known.data[i] >= 0.5).collect();
    if known_px.len() < 64 {
        return None;
    }
    let soft_refs: Vec<RgbF> = refs.iter().map(|r| soften(r, None)).collect();
    // Per reference with a still map: the camera's map and the subject's, and the share of the
    // known pixels each explains.
    let started = std::time::Instant::now();
    let motions: Vec<Motions> = stills
        .iter()
        .enumerate()
        .filter_map(|(r, m)| {
            let camera = (*m)?;
            let subject = subject_motion(&soft, known, &known_px, &soft_refs[r], &camera);
            let subject_share = subject.map_or(0.0, |s| agreement(&soft, &known_px, &soft_refs[r], &s));
            Some(Motions {
                reference: r,
                camera,
                camera_share: agreement(&soft, &known_px, &soft_refs[r], &camera),
                subject,
                subject_share,
            })
        })
        .collect();
    // The camera layer: the still reference that agrees with most known pixels; the subject
    // layer: the similarity that does, when it explains clearly more of them.
    let cam = motions.iter().max_by(|a, b| a.camera_share.total_cmp(&b.camera_share))?;
    let sub = motions.iter().max_by(|a, b| a.subject_share.total_cmp(&b.subject_share))?;
    if debug {
        eprintln!(
            "montage: camera layer ref{} explains {:.2} of the known pixels; best subject motion ref{} {:?} explains {:.2}",
            cam.reference,
            cam.camera_share,
            sub.reference,
            sub.subject.map(|m| m.0.map(|v| (v * 1e3).round() / 1e3)),
            sub.subject_share
        );
    }
    if debug {
        eprintln!("montage: motions searched in {:.0} ms", started.elapsed().as_secs_f64() * 1e3);
    }
    let mut camera = Layer::new(refs, cam.reference, cam.camera, w, h);
    camera.match_exposure(canvas, &soft, known, dbg);
    let (camera_ref, camera_map) = (cam.reference, cam.camera);
    // Where each reference shows the subject: seeded by the known pixels its subject motion
    // explains (without one, by nothing: the camera layer's subject is then unknown).
    let moved = |m: &Motions| {
        let (fg, bg) = match &m.subject {
            Some(s) => seeds(&soft, &known_px, &soft_refs[m.reference], &m.camera, s),
            None => (Vec::new(), Vec::new()),
        };
        moved_parts(refs, m.reference, seed, &fg, &bg, dbg)
    };
    let subject = sub.subject.filter(|_| sub.subject_share >= cam.camera_share + SUBJECT_GAIN).map(|map| {
        let mut layer = Layer::new(refs, sub.reference, map, w, h);
        layer.match_exposure(canvas, &soft, known, dbg);
        layer.follow_residual(refs, canvas, &soft, known, dbg);
        layer.moved = moved(sub);
        layer
    });
    let mut guide = Guide::empty(w, h);
    let fill: Vec<bool> = known.data.iter().map(|&v| v < 0.5).collect();
    let Some(subject) = subject else {
        if debug {
            eprintln!("montage: the camera layer alone");
        }
        let covers = only(&camera.valid, &fill);
        guide.fill_gaps_from(&camera.rgb, &camera.valid);
        return Some(Montage {
            guide,
            warps: vec![TargetWarp {
                reference: camera_ref,
                target_to_ref: camera_map,
                field: None,
                covers,
                source: Source::Camera,
            }],
        });
    };
    camera.moved = if camera.reference == subject.reference { subject.moved.clone() } else { moved(cam) };
    let masked = started.elapsed().as_secs_f64();
    let stale = cam.subject.map(|own| stale_subject(canvas, known, &camera, &own));
    let label = cut(canvas, known, &camera, &subject, stale.as_deref());
    if debug {
        eprintln!(
            "montage: motions and masks {:.0} ms, cut {:.0} ms",
            masked * 1e3,
            (started.elapsed().as_secs_f64() - masked) * 1e3
        );
    }
    // Each layer completed by the other where it leaves its reference.
    let complete = |a: &Layer, b: &Layer| {
        let mut rgb = a.rgb.clone();
        for i in 0..w * h {
            if a.valid.data[i] < 0.5 {
                rgb.data[3 * i..3 * i + 3].copy_from_slice(&b.rgb.data[3 * i..3 * i + 3]);
            }
        }
        rgb
    };
    // Where neither layer reaches (an outpainting's margin beyond both references), both are
    // continued smoothly, so that the pyramid carries no black into the pixels next to it.
    let union = Mask {
        width: w,
        height: h,
        data: (0..w * h).map(|i| (camera.valid.data[i] >= 0.5 || subject.valid.data[i] >= 0.5) as u8 as f32).collect(),
    };
    let (mut lower, mut upper) = (complete(&camera, &subject), complete(&subject, &camera));
    if union.data.iter().any(|&v| v < 0.5) {
        let smooth = crate::scene::pushpull::push_pull(&lower, &union);
        for i in (0..w * h).filter(|&i| union.data[i] < 0.5) {
            lower.data[3 * i..3 * i + 3].copy_from_slice(&smooth.data[3 * i..3 * i + 3]);
            upper.data[3 * i..3 * i + 3].copy_from_slice(&smooth.data[3 * i..3 * i + 3]);
        }
    }
    let weight: Vec<f32> = label.iter().map(|&l| l as u8 as f32).collect();
    if let Some(dir) = &dbg.dir {
        // The cut (white: subject layer) over the known pixels dimmed, and each layer.
        let cut = RgbF::from_fn(w, h, |x, y| {
            let i = y * w + x;
            let l = weight[i] * 0.8 + 0.1;
            if fill[i] { [l, l, camera.moved_at(i, w)] } else { canvas.get(x, y).map(|v| 0.4 * v) }
        });
        for (name, img) in
            [("montage-cut.png", &cut), ("montage-camera.png", &camera.rgb), ("montage-subject.png", &subject.rgb)]
        {
            if let Err(e) = crate::scene::io::save_atomic(&img.to_image8(), &dir.join(name)) {
                eprintln!("REALFILL_DEBUG_ALIGN: {e}");
            }
        }
    }
    let blended = blend::multiband(&lower, &upper, &weight, BLEND_LEVELS);
    guide.fill_gaps_from(&blended, &union);
    let side = |l: bool, layer: &Layer| Mask {
        width: w,
        height: h,
        data: (0..w * h).map(|i| (fill[i] && label[i] == l && layer.valid.data[i] >= 0.5) as u8 as f32).collect(),
    };
    if debug {
        let n = fill.iter().filter(|&&f| f).count().max(1) as f32;
        let s = (0..w * h).filter(|&i| fill[i] && label[i]).count() as f32;
        eprintln!("montage: subject layer ref{} takes {:.2} of the fill", subject.reference, s / n);
    }
    let (camera_covers, subject_covers) = (side(false, &camera), side(true, &subject));
    let warps = vec![
        TargetWarp {
            reference: camera.reference,
            target_to_ref: camera.map,
            field: camera.field,
            covers: camera_covers,
            source: Source::Camera,
        },
        TargetWarp {
            reference: subject.reference,
            target_to_ref: subject.map,
            field: subject.field,
            covers: subject_covers,
            source: Source::Subject,
        },
    ];
    Some(Montage { guide, warps })
}

/// `valid` restricted to the pixels to fill.
fn only(valid: &Mask, fill: &[bool]) -> Mask {
    Mask {
        width: valid.width,
        height: valid.height,
        data: valid.data.iter().zip(fill).map(|(&v, &f)| (v >= 0.5 && f) as u8 as f32).collect(),
    }
}

/// A light blur, so that comparisons forgive sub-pixel misregistration. Normalised by the
/// weight of what it averages (`valid`: the known pixels of a canvas, or where a warp landed;
/// None: the whole image), so that neither the image's border nor a hole's black darkens the
/// pixels next to it.
fn soften(img: &RgbF, valid: Option<&Mask>) -> RgbF {
    let (w, h) = (img.width, img.height);
    let mut weight: Vec<f32> = match valid {
        Some(m) => m.data.iter().map(|&v| (v >= 0.5) as u8 as f32).collect(),
        None => vec![1.0; w * h],
    };
    let mut planes = img.to_planar();
    for c in planes.chunks_mut(w * h) {
        c.iter_mut().zip(&weight).for_each(|(v, m)| *v *= m);
        blur(c, w, h, 1.0);
    }
    blur(&mut weight, w, h, 1.0);
    for c in planes.chunks_mut(w * h) {
        for (v, &m) in c.iter_mut().zip(&weight) {
            *v = if m > 1e-3 { *v / m } else { 0.0 };
        }
    }
    RgbF::from_planar(&planes, w, h)
}

/// Mean absolute difference per channel between the canvas at `i` and the reference at
/// `(u, v)`, or None outside the reference.
#[inline]
fn difference(canvas: &RgbF, i: usize, reference: &RgbF, u: f64, v: f64) -> Option<f32> {
    if u < 0.0 || v < 0.0 || u > (reference.width - 1) as f64 || v > (reference.height - 1) as f64 {
        return None;
    }
    let a = &canvas.data[3 * i..3 * i + 3];
    let b = reference.sample(u as f32, v as f32);
    Some(((a[0] - b[0]).abs() + (a[1] - b[1]).abs() + (a[2] - b[2]).abs()) / 3.0)
}

/// The share of the known pixels that `map` explains (difference under `AGREE`).
fn agreement(canvas: &RgbF, known_px: &[usize], reference: &RgbF, map: &Homography) -> f32 {
    let w = canvas.width;
    let hits = known_px
        .iter()
        .filter(|&&i| {
            map.apply((i % w) as f64, (i / w) as f64)
                .and_then(|(u, v)| difference(canvas, i, reference, u, v))
                .is_some_and(|d| d < AGREE)
        })
        .count();
    hits as f32 / known_px.len().max(1) as f32
}

/// A similarity about the canvas centre, then `base`: p ↦ base(c + s·(p − c) + t).
fn similarity(base: &Homography, s: f64, tx: f64, ty: f64, c: (f64, f64)) -> Homography {
    let sim = Homography([s, 0.0, c.0 - s * c.0 + tx, 0.0, s, c.1 - s * c.1 + ty, 0.0, 0.0, 1.0]);
    base.then_after(&sim)
}

/// The subject's motion: the similarity about `base` under which the reference best explains
/// the known pixels (mean difference truncated at 0.1, so pixels of something else count the
/// same however different). Exhaustive at a quarter of the size, then refined at half size and
/// at full size. None when the best fit lies on the searched range's edge.
fn subject_motion(
    canvas: &RgbF,
    known: &Mask,
    known_px: &[usize],
    reference: &RgbF,
    base: &Homography,
) -> Option<Homography> {
    let (w, h) = (canvas.width, canvas.height);
    let c = ((w as f64 - 1.0) / 2.0, (h as f64 - 1.0) / 2.0);
    // The exhaustive stage at a reduction that keeps its long side at most COARSE_SIDE (a
    // quarter of 384 px): its cost grows with the fourth power of the side it runs at.
    let mut f = 4usize;
    while w.max(h) / f > COARSE_SIDE {
        f *= 2;
    }
    let coarse = f;
    let reach = (SHIFT_RANGE * w.max(h) as f64 / f as f64).round() as i32;
    let step = SCALE_RANGE.powf(1.0 / 12.0);
    let cands: Vec<(f64, f64, f64)> = (-3..=3)
        .flat_map(|k| {
            let s = SCALE_RANGE.powf(k as f64 / 3.0);
            (-reach..=reach)
                .flat_map(move |dy| (-reach..=reach).map(move |dx| (s, (f as i32 * dx) as f64, (f as i32 * dy) as f64)))
        })
        .collect();
    let mut best = Level::new(canvas, known, reference, f).best(&cands, base, c).unwrap_or((1.0, 0.0, 0.0));
    // Then each finer level: shifts within two of its pixels each way (one at full size),
    // scales within one coarse step at the first (a neighbouring scale may fit a little better
    // once the detail shows), one fine step after.
    let mut scale_steps = 4;
    while f > 1 {
        f /= 2;
        let level = if f == 1 {
            Level {
                weight: structure(canvas, known_px),
                canvas: canvas.clone(),
                px: known_px.to_vec(),
                reference: reference.clone(),
                canvas_scale: (1.0, 1.0),
                ref_scale: (1.0, 1.0),
            }
        } else {
            Level::new(canvas, known, reference, f)
        };
        let (s0, tx0, ty0) = best;
        let fp = f as f64;
        let reach = if f == 1 { 1 } else { 2 };
        let cands: Vec<(f64, f64, f64)> = (-scale_steps..=scale_steps)
            .flat_map(|k| {
                (-reach..=reach).flat_map(move |dy| {
                    (-reach..=reach).map(move |dx| (s0 * step.powi(k), tx0 + fp * dx as f64, ty0 + fp * dy as f64))
                })
            })
            .collect();
        best = level.best(&cands, base, c).unwrap_or(best);
        scale_steps = 1;
    }
    let (s, tx, ty) = best;
    // An optimum on the edge of the searched range is not a found one: the motion lies beyond
    // it, or nothing fits and the search ran to where flat dark parts match best
    // (megamind-glass: a tilted head, "fitted" at the largest shift and the smallest scale,
    // would carry a second person into the fill).
    let limit = (coarse as i32 * reach) as f64;
    let on_edge = s.ln().abs() >= SCALE_RANGE.ln() - 1e-9 || tx.abs() >= limit || ty.abs() >= limit;
    (!on_edge).then(|| similarity(base, s, tx, ty, c))
}

/// Per pixel of `px`: a flat pixel (shadowed hair, a dark wall) agrees with almost any motion,
/// an edge (an eye, a strand) with the right one only — FLAT plus the local gradient over EDGE,
/// at most 1 + FLAT. Pixels on the image's border count as flat.
fn structure(img: &RgbF, px: &[usize]) -> Vec<f32> {
    let (w, h) = (img.width, img.height);
    px.iter()
        .map(|&i| {
            let (x, y) = (i % w, i / w);
            if x == 0 || y == 0 || x + 1 >= w || y + 1 >= h {
                return FLAT;
            }
            let g = (0..3)
                .map(|k| {
                    let d = |a: usize, b: usize| (img.data[3 * a + k] - img.data[3 * b + k]).abs();
                    d(i + 1, i - 1) + d(i + w, i - w)
                })
                .sum::<f32>()
                / 3.0;
            FLAT + (g / EDGE).min(1.0)
        })
        .collect()
}

/// The canvas, its wholly known pixels and a reference, reduced by `factor`, for the search.
struct Level {
    canvas: RgbF,
    px: Vec<usize>,
    reference: RgbF,
    /// Full-size pixels per pixel of `canvas` and of `reference`, across and down (the sizes
    /// are rounded up, so not exactly `factor`).
    canvas_scale: (f64, f64),
    ref_scale: (f64, f64),
    /// Per pixel of `px`, how much its difference counts (`structure`).
    weight: Vec<f32>,
}

impl Level {
    fn new(canvas: &RgbF, known: &Mask, reference: &RgbF, factor: usize) -> Level {
        let (w, h) = (canvas.width.div_ceil(factor), canvas.height.div_ceil(factor));
        let small_known = known.resized_soft(w, h);
        let (rw, rh) = (reference.width.div_ceil(factor), reference.height.div_ceil(factor));
        let small = canvas.resized(w, h);
        let px: Vec<usize> = (0..w * h).filter(|&i| small_known.data[i] >= 0.99).collect();
        Level {
            weight: structure(&small, &px),
            canvas: small,
            px,
            reference: reference.resized(rw, rh),
            canvas_scale: (canvas.width as f64 / w as f64, canvas.height as f64 / h as f64),
            ref_scale: (reference.width as f64 / rw as f64, reference.height as f64 / rh as f64),
        }
    }

    /// Of similarities (s, tx, ty) in full-size pixels, the one with the lowest truncated
    /// difference at this level; None with too few known pixels here.
    fn best(&self, cands: &[(f64, f64, f64)], base: &Homography, c: (f64, f64)) -> Option<(f64, f64, f64)> {
        if self.px.len() < 16 {
            return None;
        }
        // Pixel centres: p_full = s·p + (s − 1)/2 (s: the level's scale), and back in the
        // reference at its reduction.
        let (sx, sy) = self.canvas_scale;
        let to_full = Homography([sx, 0.0, (sx - 1.0) / 2.0, 0.0, sy, (sy - 1.0) / 2.0, 0.0, 0.0, 1.0]);
        let (rx, ry) = self.ref_scale;
        let from_full_ref = Homography([
            1.0 / rx,
            0.0,
            -(rx - 1.0) / (2.0 * rx),
            0.0,
            1.0 / ry,
            -(ry - 1.0) / (2.0 * ry),
            0.0,
            0.0,
            1.0,
        ]);
        let w = self.canvas.width;
        cands
            .par_iter()
            .map(|&(s, tx, ty)| {
                let m = from_full_ref.then_after(&similarity(base, s, tx, ty, c).then_after(&to_full));
                let cost = self
                    .px
                    .iter()
                    .zip(&self.weight)
                    .map(|(&i, &g)| {
                        g as f64
                            * m.apply((i % w) as f64, (i / w) as f64)
                                .and_then(|(u, v)| difference(&self.canvas, i, &self.reference, u, v))
                                .map_or(0.1, |d| d.min(0.1)) as f64
                    })
                    .sum::<f64>();
                (cost, s, tx, ty)
            })
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|b| (b.1, b.2, b.3))
    }
}

/// Pixels of the reference (indices at its size) that the known pixels say are the subject —
/// the subject's motion explains the known pixel there and the camera's does not — and those
/// that are the background (the other way round).
fn seeds(
    canvas: &RgbF,
    known_px: &[usize],
    reference: &RgbF,
    camera: &Homography,
    subject: &Homography,
) -> (Vec<usize>, Vec<usize>) {
    let w = canvas.width;
    let (mut fg, mut bg) = (Vec::new(), Vec::new());
    let at = |m: &Homography, i: usize| {
        let (u, v) = m.apply((i % w) as f64, (i / w) as f64)?;
        let d = difference(canvas, i, reference, u, v)?;
        Some((d, v.round() as usize * reference.width + u.round() as usize))
    };
    for &i in known_px {
        let (Some((dc, pc)), Some((ds, ps))) = (at(camera, i), at(subject, i)) else { continue };
        if ds < AGREE && dc > 2.0 * AGREE {
            fg.push(ps);
        } else if dc < AGREE && ds > 2.0 * AGREE {
            bg.push(pc);
        }
    }
    (fg, bg)
}

/// Where reference `r` shows something that moved: another reference warped onto it by the
/// homography of their matches (over the whole of both: mostly the background) disagrees there.
/// 1 = moved, 0 = still, 0.5 = not seen by the other reference. None when no other reference
/// aligns with it well enough to tell.
fn moved_parts(refs: &[RgbF], r: usize, seed: u64, fg: &[usize], bg: &[usize], dbg: &Diagnostics) -> Option<Vec<f32>> {
    let (w, h) = (refs[r].width, refs[r].height);
    let none = Mask::new(w, h, 0.0);
    let debug = dbg.on();
    let soft_r = soften(&refs[r], None);
    let mut best: Option<(Vec<f32>, f32)> = None;
    for (o, other) in refs.iter().enumerate().filter(|&(o, _)| o != r) {
        let Some(a) = super::align(&refs[r], &none, other, seed ^ (o as u64) << 8, None, dbg) else { continue };
        let (warped, valid) = super::warp(other, None, &a.target_to_ref, w, h);
        let warped = soften(&warped, Some(&valid));
        let seen = valid.data.iter().filter(|&&v| v >= 0.5).count();
        if seen < w * h / 3 {
            continue;
        }
        let mut moved: Vec<f32> = (0..w * h)
            .map(|i| {
                if valid.data[i] < 0.5 {
                    return 0.5;
                }
                let d: f32 = (0..3).map(|k| (soft_r.data[3 * i + k] - warped.data[3 * i + k]).abs()).sum::<f32>() / 3.0;
                (d > MOVED) as u8 as f32
            })
            .collect();
        // Close small gaps and drop specks: a wide blur, thresholded (the parts that moved are
        // regions, a person, not single pixels).
        // Normalised by the seen pixels' weight, so that the image's border and the edge of what
        // the other reference shows do not read as "still" (nor, flipped, as the subject).
        let mut seen_w: Vec<f32> = valid.data.iter().map(|&v| (v >= 0.5) as u8 as f32).collect();
        moved.iter_mut().zip(&seen_w).for_each(|(m, s)| *m *= s);
        blur(&mut moved, w, h, 3.0);
        blur(&mut seen_w, w, h, 3.0);
        moved.iter_mut().zip(&seen_w).zip(&valid.data).for_each(|((m, &s), &v)| {
            *m = if v < 0.5 || s < 1e-3 { 0.5 } else { *m / s };
        });
        moved.iter_mut().for_each(|v| {
            *v = if *v > 0.55 {
                1.0
            } else if *v < 0.45 {
                0.0
            } else {
                0.5
            }
        });
        // Which side is the subject: the seeds the known pixels gave. The references' mutual
        // homography follows their dominant plane, which is the background in a wide view and
        // the subject in a close-up (then what "moved" is the background: flip).
        let mean = |px: &[usize]| {
            let seen: Vec<f32> = px.iter().map(|&p| moved[p]).filter(|&m| m != 0.5).collect();
            (seen.len() >= MIN_SEEDS).then(|| seen.iter().sum::<f32>() / seen.len() as f32)
        };
        let (mf, mb) = (mean(fg), mean(bg));
        let contrast = match (mf, mb) {
            (Some(f), Some(b)) => f - b,
            (Some(f), None) => 2.0 * (f - 0.5),
            (None, Some(b)) => 2.0 * (0.5 - b),
            (None, None) => 0.0,
        };

        if let Some(dir) = &dbg.dir {
            // Moved parts white, unseen grey; the subject's seeds red, the background's green.
            let mut img = RgbF::from_fn(w, h, |x, y| [moved[y * w + x] * 0.7; 3]);
            fg.iter().for_each(|&p| img.data[3 * p..3 * p + 3].copy_from_slice(&[1.0, 0.0, 0.0]));
            bg.iter().for_each(|&p| img.data[3 * p..3 * p + 3].copy_from_slice(&[0.0, 1.0, 0.0]));
            if let Err(e) = crate::scene::io::save_atomic(
                &img.to_image8(),
                &dir.join(format!("montage-moved-ref{r}-by-ref{o}.png")),
            ) {
                eprintln!("REALFILL_DEBUG_ALIGN: {e}");
            }
        }
        // Where the seeds cannot tell (they all lie on the face, which moved little while the
        // body moved), the majority decides: in a wide frame the dominant plane is the
        // background, and then the moved parts are the minority.
        let share = moved.iter().zip(&valid.data).filter(|&(&m, &v)| v >= 0.5 && m >= 1.0).count() as f32 / seen as f32;
        if debug {
            eprintln!(
                "montage: ref{o} onto ref{r}: {} inliers, {share:.2} of the shared pixels moved; among the subject's \
                 seeds {mf:.2?}, the background's {mb:.2?}",
                a.inliers
            );
        }
        let (flip, clarity) = if contrast.abs() >= MIN_CONTRAST {
            (contrast < 0.0, contrast.abs())
        } else if share <= MAX_MOVED_SHARE {
            (false, 0.0)
        } else {
            continue;
        };
        if best.as_ref().is_some_and(|b| b.1 >= clarity) {
            continue;
        }
        if flip {
            moved.iter_mut().filter(|m| **m != 0.5).for_each(|m| *m = 1.0 - *m);
        }
        // The difference of two frames marks both poses: this reference's subject and, where
        // the other reference has it, background. Only the parts that hold the subject's seeds
        // are this reference's subject.
        if fg.len() >= MIN_SEEDS {
            keep_seeded(&mut moved, w, h, fg);
        }
        best = Some((moved, clarity));
    }
    best.map(|b| b.0)
}

/// Clear the moved regions (4-connected runs of 1) that hold none of the `seeds`.
fn keep_seeded(moved: &mut [f32], w: usize, h: usize, seeds: &[usize]) {
    let mut region = vec![u32::MAX; w * h];
    let mut seeded: Vec<bool> = Vec::new();
    let mut stack = Vec::new();
    for start in 0..w * h {
        if moved[start] < 1.0 || region[start] != u32::MAX {
            continue;
        }
        let id = seeded.len() as u32;
        seeded.push(false);
        region[start] = id;
        stack.push(start);
        while let Some(i) = stack.pop() {
            let (x, y) = (i % w, i / w);
            for (ok, j) in
                [(x > 0, i.wrapping_sub(1)), (x + 1 < w, i + 1), (y > 0, i.wrapping_sub(w)), (y + 1 < h, i + w)]
            {
                if ok && moved[j] >= 1.0 && region[j] == u32::MAX {
                    region[j] = id;
                    stack.push(j);
                }
            }
        }
    }
    for &s in seeds {
        if s < w * h && region[s] != u32::MAX {
            seeded[region[s] as usize] = true;
        }
    }
    for (m, r) in moved.iter_mut().zip(&region) {
        if *r != u32::MAX && !seeded[*r as usize] {
            *m = 0.0;
        }
    }
}

/// Label 1 (the subject layer) or 0 (the camera layer) for every canvas pixel, by minimum cut.
/// `stale`: how visible the camera layer's subject in its old pose would be
/// (`stale_subject`), per pixel.
fn cut(canvas: &RgbF, known: &Mask, camera: &Layer, subject: &Layer, stale: Option<&[f32]>) -> Vec<bool> {
    let (w, h) = (canvas.width, canvas.height);
    let big = 1e4f32;
    let diffs: Vec<f32> = (0..w * h)
        .map(|i| {
            if camera.valid.data[i] < 0.5 || subject.valid.data[i] < 0.5 {
                return 1.0;
            }
            (0..3).map(|k| (camera.rgb.data[3 * i + k] - subject.rgb.data[3 * i + k]).abs()).sum::<f32>() / 3.0
        })
        .collect();
    let mut c0 = vec![0.0f32; w * h];
    let mut c1 = vec![0.0f32; w * h];
    let is_known = |i: usize| known.data[i] >= 0.5;
    for i in 0..w * h {
        if is_known(i) {
            // The photo itself: the seam along the hole's edge costs what a layer differs from
            // the known pixel it meets (set on the known pixels next to the hole, whose pairs
            // with the hole then carry the preference).
            let (x, y) = (i % w, i / w);
            let edge = (x > 0 && !is_known(i - 1))
                || (x + 1 < w && !is_known(i + 1))
                || (y > 0 && !is_known(i - w))
                || (y + 1 < h && !is_known(i + w));
            if edge {
                let d = |l: &Layer| {
                    if l.valid.data[i] < 0.5 {
                        return big;
                    }
                    (0..3).map(|k| (l.rgb.data[3 * i + k] - canvas.data[3 * i + k]).abs()).sum::<f32>() / 3.0
                };
                c0[i] = EDGE_WEIGHT * d(camera);
                c1[i] = EDGE_WEIGHT * d(subject);
            }
            continue;
        }
        // Where no mask tells, the camera layer is preferred a little: the background is most
        // of a frame, and the subject layer then reaches only as far as a cheap seam from the
        // known pixels it continues.
        // The camera layer is wrong where it shows its reference's subject (in another pose),
        // and also where the subject layer shows the subject: the subject, carried by its
        // motion, stands in front of whatever background the camera layer has there.
        let unknown = |m: f32, v: f32| if m == 0.5 { v } else { m };
        let (mc, ms) = (unknown(camera.moved_at(i, w), 0.3), unknown(subject.moved_at(i, w), 0.3));
        let subject_valid = subject.valid.data[i] >= 0.5;
        c0[i] = if camera.valid.data[i] < 0.5 { big } else { LAMBDA * if subject_valid { mc.max(ms) } else { mc } };
        c1[i] = match (subject_valid, camera.valid.data[i] >= 0.5) {
            (true, _) => LAMBDA * (1.0 - ms),
            (false, true) => big,
            (false, false) => 0.0,
        };
    }
    if let Some(stale) = stale {
        for i in (0..w * h).filter(|&i| !is_known(i)) {
            c0[i] += DUPLICATE * stale[i];
        }
    }
    let pair = |i: usize, j: usize| {
        if is_known(i) && is_known(j) { 0.0 } else { diffs[i] + diffs[j] + 0.002 }
    };
    if camera.reference != subject.reference {
        return mincut::label(w, h, [&c0, &c1], &pair);
    }
    let mut pairs = Vec::with_capacity(3 * w * h);
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            for (ok, j) in [(x + 1 < w, i + 1), (y + 1 < h, i + w)] {
                if ok {
                    let c = pair(i, j).max(0.0);
                    pairs.push((i as u32, j as u32, [0.0, c, c, 0.0]));
                }
            }
        }
    }
    duplicates(canvas, known, camera, subject, &mut c1, &mut pairs);
    mincut::label_pairs([&c0, &c1], &pairs)
}

/// Both layers come from one reference, moved apart by the subject's motion: a part of the
/// reference can then be shown twice — by the camera layer where the reference has it and by
/// the subject layer where the subject carried it (the reference's subject beside the moved
/// one: hair beside the head; or a candle the subject layer drags along beside the camera's).
/// Each pixel of the reference is to be shown once. Canvas pixel p under the camera layer shows
/// the reference at camera(p); the subject layer shows that same point at q = subject⁻¹(camera(p)).
/// The pair (p camera, q subject) pays `DUPLICATE` × the structure there (a flat wall shown
/// twice is not seen); so does the subject layer at p alone where its point is a known pixel
/// the camera layer explains. (The camera layer at p whose point is a known pixel is
/// `stale_subject`'s.)
fn duplicates(
    canvas: &RgbF,
    known: &Mask,
    camera: &Layer,
    subject: &Layer,
    c1: &mut [f32],
    pairs: &mut Vec<(u32, u32, [f32; 4])>,
) {
    let (w, h) = (canvas.width, canvas.height);
    let Some(sub_inv) = subject.map.inverse() else { return };
    let Some(cam_inv) = camera.map.inverse() else { return };
    let soft = soften(canvas, Some(known));
    let (soft_cam, soft_sub) = (soften(&camera.rgb, Some(&camera.valid)), soften(&subject.rgb, Some(&subject.valid)));
    let (s_cam, s_sub) = (visibility(&camera.rgb), visibility(&subject.rgb));
    let agrees = |i: usize, layer: &RgbF| {
        (0..3).map(|k| (soft.data[3 * i + k] - layer.data[3 * i + k]).abs()).sum::<f32>() / 3.0 < AGREE
    };
    // The canvas pixel where layer `to` shows the reference point that layer `from` shows at i.
    let at = |from: &Layer, to: &Layer, to_inv: &Homography, i: usize| {
        let (u, v) = from.to_ref(i, w)?;
        to.to_canvas(to_inv, u, v, w, h)
    };
    for i in (0..w * h).filter(|&i| known.data[i] < 0.5) {
        if camera.valid.data[i] >= 0.5
            && let Some(q) = at(camera, subject, &sub_inv, i)
            && q != i
        {
            let cost = DUPLICATE * s_cam[i];
            if known.data[q] < 0.5 && subject.valid.data[q] >= 0.5 && cost > 0.0 {
                pairs.push((i as u32, q as u32, [0.0, cost, 0.0, 0.0]));
            }
        }
        if subject.valid.data[i] >= 0.5
            && let Some(q) = at(subject, camera, &cam_inv, i)
            && q != i
            && known.data[q] >= 0.5
            && agrees(q, &soft_cam)
            && !agrees(q, &soft_sub)
        {
            c1[i] += DUPLICATE * s_sub[i];
        }
    }
}

/// Where the camera layer shows its reference's subject in the pose the photo no longer has:
/// the camera layer at p shows what the photo shows at q — the known pixel that the reference's
/// own subject motion (`own_subject`: canvas → reference) takes to the same point — and the
/// camera layer at q does not. Per canvas pixel to fill: how visible that stale copy would be
/// (`visibility`), 0 where there is none.
fn stale_subject(canvas: &RgbF, known: &Mask, camera: &Layer, own_subject: &Homography) -> Vec<f32> {
    let (w, h) = (canvas.width, canvas.height);
    let mut stale = vec![0.0f32; w * h];
    let Some(sub_inv) = own_subject.inverse() else { return stale };
    let soft = soften(canvas, Some(known));
    let soft_cam = soften(&camera.rgb, Some(&camera.valid));
    let seen = visibility(&camera.rgb);
    let near = |i: usize, j: usize| {
        (0..3).map(|k| (soft.data[3 * i + k] - soft_cam.data[3 * j + k]).abs()).sum::<f32>() / 3.0 < AGREE
    };
    for i in (0..w * h).filter(|&i| known.data[i] < 0.5 && camera.valid.data[i] >= 0.5) {
        let Some((u, v)) = camera.map.apply((i % w) as f64, (i / w) as f64) else { continue };
        let Some((x, y)) = sub_inv.apply(u, v) else { continue };
        let (x, y) = (x.round(), y.round());
        if x < 0.0 || y < 0.0 || x >= w as f64 || y >= h as f64 {
            continue;
        }
        let q = y as usize * w + x as usize;
        if q != i && known.data[q] >= 0.5 && near(q, i) && !near(q, q) {
            stale[i] = seen[i];
        }
    }
    stale
}

/// How much a duplicate of the layer's pixel would be seen: its difference from its
/// surroundings (mean per channel, σ = 2 px), 1 from `STRUCTURE` up.
fn visibility(rgb: &RgbF) -> Vec<f32> {
    let (w, h) = (rgb.width, rgb.height);
    let planes = rgb.to_planar();
    let mut smooth = planes.clone();
    smooth.chunks_mut(w * h).for_each(|c| blur(c, w, h, 2.0));
    let mut s: Vec<f32> = (0..w * h)
        .map(|i| (0..3).map(|k| (planes[k * w * h + i] - smooth[k * w * h + i]).abs()).sum::<f32>() / 3.0)
        .collect();
    blur(&mut s, w, h, 1.5);
    s.iter_mut().for_each(|v| *v = (*v / STRUCTURE).min(1.0));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame of a still camera: a textured background (`align::tests::texture`) and a
    /// subject — a head and the body under it, each with its own pattern — with the head's
    /// top-left corner at `at`.
    fn frame(w: usize, h: usize, at: (usize, usize)) -> RgbF {
        let background = crate::align::tests::texture(w, h, (0.0, 0.0), 0.0, 1.0);
        RgbF::from_fn(w, h, |x, y| {
            let (u, v) = (x as isize - at.0 as isize, y as isize - at.1 as isize);
            let head = (0..36).contains(&u) && (0..36).contains(&v);
            let body = (-10..46).contains(&u) && (36..96).contains(&v);
            if head {
                [0.85, 0.55 + 0.3 * ((u / 6 + v / 9) % 2) as f32, 0.3 + 0.5 * ((u / 12 + v / 6) % 3) as f32 / 2.0]
            } else if body {
                [0.45 + 0.3 * ((u + 2 * v) / 6 % 2) as f32, 0.1, 0.6 - 0.3 * ((v / 4) % 2) as f32]
            } else {
                // (the texture reaches a little outside [0, 1]; a photo does not)
                background.get(x, y).map(|v| v.clamp(0.0, 1.0))
            }
        })
    }

    /// The photo `truth` known only inside `xs` × `ys` (black elsewhere), and that mask.
    fn crop(truth: &RgbF, xs: std::ops::Range<usize>, ys: std::ops::Range<usize>) -> (Mask, RgbF) {
        let mut known = Mask::new(truth.width, truth.height, 0.0);
        for y in ys {
            for x in xs.clone() {
                known.set(x, y, 1.0);
            }
        }
        let canvas =
            RgbF::from_fn(
                truth.width,
                truth.height,
                |x, y| if known.get(x, y) >= 0.5 { truth.get(x, y) } else { [0.0; 3] },
            );
        (known, canvas)
    }

    #[test]
    fn a_tight_crop_of_a_moved_subject_gets_the_background_from_the_camera_and_the_body_from_the_subject() {
        let (w, h) = (192, 144);
        // The subject's head at (78, 20) in the target, elsewhere in each reference.
        let truth = frame(w, h, (78, 20));
        let refs = vec![frame(w, h, (54, 26)), frame(w, h, (120, 16))];
        // Known: a tight crop of the head (a tenth of the frame).
        let (known, canvas) = crop(&truth, 72..120, 12..62);
        let stills = vec![Some(Homography::IDENTITY); 2];
        let m = compose(&canvas, &known, &refs, &stills, 1, &Diagnostics::default()).expect("a montage");
        let error = |px: &mut dyn Iterator<Item = (usize, usize)>| {
            let (mut sum, mut n) = (0.0f32, 0usize);
            for (x, y) in px {
                assert!(m.guide.valid.get(x, y) >= 0.5, "{x},{y} is covered");
                let (a, b) = (m.guide.rgb.get(x, y), truth.get(x, y));
                sum += (0..3).map(|k| (a[k] - b[k]).abs()).sum::<f32>() / 3.0;
                n += 1;
            }
            sum / n as f32
        };
        // The target's body (below the crop), which no reference shows at that place: the
        // subject layer moves it with the head.
        let body = error(&mut (66..118).flat_map(|y| (72..120).map(move |x| (x, y))));
        // Background far from every pose of the subject: the camera layer.
        let background = error(&mut (0..144).flat_map(|y| (0..30).map(move |x| (x, y))));
        assert!(body < 0.06, "body error {body}");
        assert!(background < 0.02, "background error {background}");
        // Both layers are named, with the pixels they give.
        let share = |s: Source| m.warps.iter().filter(|t| t.source == s).map(|t| t.covers.fill_fraction()).sum::<f32>();
        assert!(
            share(Source::Subject) > 0.05 && share(Source::Camera) > 0.4,
            "shares {m:?}",
            m = (share(Source::Subject), share(Source::Camera))
        );
    }

    /// References taken darker than the target (another exposure of the burst): each layer is
    /// brought to the target's exposure, fitted on the pixels it shows of the scene, not on
    /// the moved subject.
    #[test]
    fn a_residual_the_similarity_leaves_is_followed_beyond_the_crop() {
        // The reference shows the photo's scene a few pixels off, by a shift that varies
        // smoothly over the frame (a subject that turned a little): no similarity explains it.
        // Measured on the crop, it is carried into the band around it.
        let (w, h) = (160, 120);
        let tex = |x: f32, y: f32| {
            let a = (0.21 * x + 0.05 * y).sin() + (0.13 * y - 0.07 * x).sin() + (0.31 * (x + y)).sin() * 0.5;
            let b = (0.17 * x * 0.8 + 0.23 * y).cos() + (0.09 * x - 0.19 * y).sin();
            [0.5 + 0.15 * a, 0.5 + 0.15 * b, 0.5 + 0.1 * (a - b)]
        };
        let shift = |x: f32, y: f32| (3.0 + 1.5 * (y / 30.0).sin(), -2.0 + 1.5 * (x / 40.0).cos());
        let truth = RgbF::from_fn(w, h, |x, y| tex(x as f32, y as f32));
        let reference = RgbF::from_fn(w, h, |x, y| {
            let (dx, dy) = shift(x as f32, y as f32);
            tex(x as f32 + dx, y as f32 + dy)
        });
        let (known, canvas) = crop(&truth, 40..120, 30..90);
        let soft = soften(&canvas, Some(&known));
        let refs = [reference];
        let mut layer = Layer::new(&refs, 0, Homography::IDENTITY, w, h);
        let plain = layer.rgb.clone();
        layer.follow_residual(&refs, &canvas, &soft, &known, &Diagnostics::default());
        assert!(layer.field.is_some(), "the residual is followed");
        // A 12-px band around the crop.
        let band: Vec<(usize, usize)> =
            (18..102).flat_map(|y| (28..132).map(move |x| (x, y))).filter(|&(x, y)| known.get(x, y) < 0.5).collect();
        let error = |img: &RgbF| {
            let sum: f32 = band
                .iter()
                .map(|&(x, y)| {
                    let (a, b) = (img.get(x, y), truth.get(x, y));
                    (0..3).map(|k| (a[k] - b[k]).abs()).sum::<f32>() / 3.0
                })
                .sum();
            sum / band.len() as f32
        };
        let (followed, without) = (error(&layer.rgb), error(&plain));
        assert!(followed < 0.3 * without, "band error {followed}, {without} without the residual");
        // A canvas pixel in the band maps to the reference point it shows, and back.
        let i = 20 * w + 30;
        let (u, v) = layer.to_ref(i, w).expect("inside");
        assert_eq!(layer.to_canvas(&Homography::IDENTITY, u, v, w, h), Some(i));
    }

    #[test]
    fn layers_take_the_targets_exposure() {
        let (w, h) = (192, 144);
        let truth = frame(w, h, (78, 20));
        let darker = |f: RgbF| RgbF { data: f.data.iter().map(|v| v * 0.8).collect(), ..f };
        let refs = vec![darker(frame(w, h, (54, 26)))];
        let (known, canvas) = crop(&truth, 40..130, 8..70);
        let m = compose(&canvas, &known, &refs, &[Some(Homography::IDENTITY)], 1, &Diagnostics::default())
            .expect("a montage");
        // Mean error over the background on the right, of the montage and of the reference as it is.
        let error = |img: &RgbF| {
            let (mut sum, mut n) = (0.0f32, 0usize);
            for y in 0..h {
                for x in 150..w {
                    let (a, b) = (img.get(x, y), truth.get(x, y));
                    sum += (0..3).map(|k| (a[k] - b[k]).abs()).sum::<f32>() / 3.0;
                    n += 1;
                }
            }
            sum / n as f32
        };
        let (matched, as_it_is) = (error(&m.guide.rgb), error(&refs[0]));
        assert!(matched < 0.1 * as_it_is, "background error {matched}, {as_it_is} without matching");
    }

    #[test]
    fn a_layer_of_the_same_exposure_is_left_as_it_is() {
        // The reference differs from the target only by its content's small differences (here
        // noise of ±0.03, which a least-squares fit turns into a gain below 1): the fit
        // explains the known pixels hardly better, so the layer is not rescaled.
        let (w, h) = (96, 72);
        let truth = frame(w, h, (30, 10));
        let mut rng = crate::rng::Rng::new(3);
        let noisy = RgbF {
            data: truth.data.iter().map(|v| (v + rng.range_f32(-0.03, 0.03)).clamp(0.0, 1.0)).collect(),
            ..truth.clone()
        };
        let mut layer = Layer::new(std::slice::from_ref(&noisy), 0, Homography::IDENTITY, w, h);
        let known = Mask::new(w, h, 1.0);
        layer.match_exposure(&truth, &soften(&truth, Some(&known)), &known, &Diagnostics::default());
        assert_eq!(layer.rgb.data, noisy.data);
        // Darker by a fifth, the same layer is brought to the target's exposure.
        let darker = RgbF { data: noisy.data.iter().map(|v| v * 0.8).collect(), ..noisy };
        let mut layer = Layer::new(&[darker], 0, Homography::IDENTITY, w, h);
        layer.match_exposure(&truth, &soften(&truth, Some(&known)), &known, &Diagnostics::default());
        let error =
            layer.rgb.data.iter().zip(&truth.data).map(|(a, b)| (a - b).abs()).sum::<f32>() / truth.data.len() as f32;
        assert!(error < 0.02, "mean error after matching {error}");
    }

    #[test]
    fn one_reference_does_not_show_its_subject_twice() {
        // One reference: both layers come from it, and no second reference tells which of its
        // parts moved. Its subject stands 24 px left of the target's; the camera layer shows that
        // old pose beside the crop, the subject layer the same head moved — into the crop, where
        // the photo shows it. The strip left of the crop, where the old head stood and the truth
        // is background, must not show the head a second time.
        let (w, h) = (192, 144);
        let truth = frame(w, h, (78, 20));
        let refs = vec![frame(w, h, (54, 26))];
        let (known, canvas) = crop(&truth, 72..120, 12..62);
        let m = compose(&canvas, &known, &refs, &[Some(Homography::IDENTITY)], 1, &Diagnostics::default())
            .expect("a montage");
        assert_eq!(m.warps.len(), 2, "a camera and a subject layer");
        // The old head left of the crop.
        let stale: Vec<(usize, usize)> = (26..62).flat_map(|y| (54..72).map(move |x| (x, y))).collect();
        // The subject's own colours (`frame`): the head's red 0.85, the body's green 0.1.
        let subject_like = |img: &RgbF| {
            let n = stale
                .iter()
                .filter(|&&(x, y)| {
                    let [r, g, _] = img.get(x, y);
                    (r - 0.85).abs() < 0.03 && ((g - 0.55).abs() < 0.03 || (g - 0.85).abs() < 0.03)
                        || (g - 0.1).abs() < 0.03 && ((r - 0.45).abs() < 0.03 || (r - 0.75).abs() < 0.03)
                })
                .count();
            n as f32 / stale.len() as f32
        };
        let (fill, pasted) = (subject_like(&m.guide.rgb), subject_like(&refs[0]));
        assert!(pasted > 0.9, "the strips hold the reference's old pose: {pasted}");
        assert!(fill < 0.1, "{fill} of the strips show the subject again");
    }

    #[test]
    fn without_a_moved_subject_the_camera_layer_alone_fills() {
        // The subject stands where it stood: the still camera explains the known pixels and no
        // similarity explains clearly more.
        let (w, h) = (192, 144);
        let truth = frame(w, h, (78, 20));
        let refs = vec![truth.clone()];
        let mut known = Mask::new(w, h, 0.0);
        for y in 8..62 {
            for x in 62..130 {
                known.set(x, y, 1.0);
            }
        }
        let m = compose(&truth, &known, &refs, &[Some(Homography::IDENTITY)], 1, &Diagnostics::default())
            .expect("a montage");
        assert_eq!(m.warps.len(), 1);
        assert_eq!(m.warps[0].source, Source::Camera);
        let worst = (0..w * h)
            .map(|i| (0..3).map(|k| (m.guide.rgb.data[3 * i + k] - truth.data[3 * i + k]).abs()).fold(0.0, f32::max))
            .fold(0.0, f32::max);
        assert!(worst < 1e-4, "the reference pasted as it is: {worst}");
        // No still map, no montage.
        assert!(compose(&truth, &known, &refs, &[None], 1, &Diagnostics::default()).is_none());
    }

    #[test]
    fn a_motion_beyond_the_searched_range_gives_no_subject_layer() {
        // The head moved 70 px of a 192 px frame (the search reaches 20 %, 38 px): no
        // similarity within reach explains the crop better than the camera, so no subject layer
        // is made (and none is made of a fit on the range's edge).
        let (w, h) = (192, 144);
        let truth = frame(w, h, (110, 20));
        let mut known = Mask::new(w, h, 0.0);
        for y in 12..62 {
            for x in 104..152 {
                known.set(x, y, 1.0);
            }
        }
        let px: Vec<usize> = (0..w * h).filter(|&i| known.data[i] >= 0.5).collect();
        let m = compose(
            &truth,
            &known,
            &[frame(w, h, (40, 20))],
            &[Some(Homography::IDENTITY)],
            1,
            &Diagnostics::default(),
        )
        .expect("a montage");
        assert!(m.warps.iter().all(|t| t.source == Source::Camera), "camera layer only");
        // Within reach (30 px), the motion is found exactly.
        let (soft, near) = (soften(&truth, Some(&known)), soften(&frame(w, h, (80, 20)), None));
        let s = subject_motion(&soft, &known, &px, &near, &Homography::IDENTITY).expect("found");
        let (u, v) = s.apply(120.0, 30.0).unwrap();
        assert!((u - 90.0).abs() < 0.5 && (v - 30.0).abs() < 0.5, "maps the head: {u}, {v}");
    }
}
