//! The target's guide: what the references say each pixel to fill looks like, and which
//! warp of which reference says it. Every plane model of every aligned reference is warped into
//! the target's frame (exposure-matched, corrected for parallax where that holds up) and
//! `trust` keeps per pixel the candidate the surrounding known pixels agree with. The
//! references' own guides, which the scene model learns from, are plain warps.

use std::time::Instant;

use rayon::prelude::*;

use super::parallax::Field;
use super::{Alignment, Guide, Homography};
use crate::align;
use crate::scene::{Mask, RgbF, Scene};

/// How one reference was warped into the target's working canvas: `target_to_ref` maps a
/// working canvas pixel to the reference at working size, after `field`'s shift if any.
pub struct TargetWarp {
    /// Index into `Scene::refs`.
    pub reference: usize,
    pub target_to_ref: Homography,
    pub field: Option<Field>,
    /// The working canvas pixels this warp supplies (`align::trust`'s choice, or the montage's
    /// cut).
    pub covers: Mask,
    pub source: Source,
}

/// Which motion a warp stands for, as the command line and the app name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A plane model fitted to matches with the known pixels (or the still camera they bore out).
    Plane,
    /// The camera's motion in a montage (`montage`): the background as the reference shows it.
    Camera,
    /// The subject's own motion in a montage: the rest of the subject's body from the reference.
    Subject,
    /// Shifted copies of a reference's pixels where no alignment reaches (`exemplar`): its
    /// texture, not its view of those pixels.
    Copied,
}

/// Guide for an image of size `w`×`h` from other images, given per-image maps from this
/// image's pixels into theirs; earlier entries take precedence. The references' training
/// guides: plain warps (the target's guide, which fills use, is `target_guide`).
pub fn reference_guide(
    w: usize,
    h: usize,
    others: &[(&RgbF, Option<&Mask>, Homography)],
    me: &RgbF,
    my_known: &Mask,
) -> Guide {
    let mut g = Guide::empty(w, h);
    for (img, known, map) in others {
        let (mut rgb, valid) = align::warp(img, *known, map, w, h);
        align::match_exposure(&mut rgb, &valid, me, my_known);
        g.fill_gaps_from(&rgb, &valid);
    }
    g
}

/// One candidate of the target's guide: a reference warped by one of its plane models (and a
/// parallax field, if any), exposure-matched.
struct Warped {
    reference: usize,
    map: Homography,
    field: Option<Field>,
    /// The plain warp of the still-camera model.
    still: bool,
    /// Fitted to the matches near the hole only (`Alignment::local`).
    local: bool,
    rgb: RgbF,
    valid: Mask,
}

/// The target's guide from every plane model of every aligned reference (`order`: best-aligned
/// first): each model's warp, exposure-matched and corrected for parallax, is a candidate;
/// `align::trust` keeps per pixel the candidate the surrounding known pixels agree with, or
/// none. Returns the guide and the warps that contributed, each with the pixels it covers.
pub fn target_guide(
    canvas: &RgbF,
    known: &Mask,
    refs: &[RgbF],
    alignments: &[Option<Alignment>],
    order: &[usize],
    dbg: &align::Diagnostics,
) -> (Guide, Vec<TargetWarp>) {
    let (w, h) = (canvas.width, canvas.height);
    let started = Instant::now();
    let models: Vec<(usize, Homography, bool, Option<[usize; 4]>)> = order
        .iter()
        .filter_map(|&i| alignments[i].as_ref().map(|a| (i, a)))
        .flat_map(|(i, a)| a.models().enumerate().map(move |(k, m)| (i, *m, a.is_still(k), a.local_box(k))))
        .collect();
    // The plain warp, and the parallax-corrected one when the correction holds up: the field
    // is fitted to everything around the hole, people who moved included, so it may be right
    // on one side and wrong on another; trust decides per pixel.
    let cands: Vec<Warped> = models
        .par_iter()
        .flat_map_iter(|&(reference, map, still, local_box)| {
            let (mut rgb, valid) = align::warp(&refs[reference], None, &map, w, h);
            // A local plane's exposure and parallax are fitted within its box: elsewhere the
            // reference shows other planes (books-strokes: with the global exposure the cover's
            // plane explains 0.045 of the known pixels near the hole, the main plane 0.046;
            // with its own, 0.10, and the fill gains 0.2 dB).
            let local_known = local_box.map(|[x0, y0, x1, y1]| {
                let inside = |i: usize| (x0..x1).contains(&(i % w)) && (y0..y1).contains(&(i / w));
                Mask {
                    width: w,
                    height: h,
                    data: (0..w * h).map(|i| if inside(i) { known.data[i] } else { 0.0 }).collect(),
                }
            });
            let known = local_known.as_ref().unwrap_or(known);
            align::match_exposure(&mut rgb, &valid, canvas, known);
            let field = align::parallax::correction(canvas, known, &rgb, &valid, dbg);
            let corrected = field.map(|field| {
                let (mut rgb, valid) = align::warp_shifted(&refs[reference], None, &map, Some(&field), w, h);
                align::match_exposure(&mut rgb, &valid, canvas, known);
                Warped { reference, map, field: Some(field), still: false, local: local_box.is_some(), rgb, valid }
            });
            std::iter::once(Warped { reference, map, field: None, still, local: local_box.is_some(), rgb, valid })
                .chain(corrected)
        })
        .collect();
    // References keep their precedence (best-aligned first); their planes compete.
    let rank_of = |r: usize| order.iter().position(|&o| o == r).unwrap_or(order.len());
    let list: Vec<align::trust::Candidate<'_>> = cands
        .iter()
        .map(|c| align::trust::Candidate {
            rgb: &c.rgb,
            valid: &c.valid,
            rank: rank_of(c.reference),
            still: c.still,
            corrected: c.field.is_some(),
            local: c.local,
        })
        .collect();
    let warped_s = started.elapsed().as_secs_f64();
    let trust = align::trust::choose(canvas, known, &list, dbg);
    if dbg.on() {
        eprintln!(
            "alignment: warps {:.0} ms, trust {:.0} ms",
            warped_s * 1e3,
            (started.elapsed().as_secs_f64() - warped_s) * 1e3
        );
    }
    let mut guide = Guide::empty(w, h);
    for (i, c) in trust.choice.iter().enumerate() {
        if let Some(c) = c {
            let rgb = &cands[*c as usize].rgb;
            guide.rgb.data[3 * i..3 * i + 3].copy_from_slice(&rgb.data[3 * i..3 * i + 3]);
            guide.valid.data[i] = 1.0;
        }
    }
    if let Some(dir) = &dbg.dir {
        explain(dir, canvas, known, &cands, &trust, &guide);
    }
    let warps: Vec<TargetWarp> = cands
        .into_iter()
        .enumerate()
        .map(|(c, w)| TargetWarp {
            reference: w.reference,
            target_to_ref: w.map,
            field: w.field,
            covers: trust.chosen_mask(c),
            source: Source::Plane,
        })
        .filter(|w| w.covers.fill_fraction() > 0.0)
        .collect();
    if dbg.on() {
        eprintln!(
            "alignment: {} warps in use for {} references ({:.0} ms)",
            warps.len(),
            order.len(),
            started.elapsed().as_secs_f64() * 1e3
        );
    }
    (guide, warps)
}

/// `REALFILL_DEBUG_ALIGN=DIR`: each candidate warp, its trust, and which candidate every pixel
/// took, as images, so that a person can see why a fill copied what it did.
fn explain(
    dir: &std::path::Path,
    canvas: &RgbF,
    known: &Mask,
    cands: &[Warped],
    trust: &align::trust::Trust,
    guide: &Guide,
) {
    let (w, h) = (canvas.width, canvas.height);
    let save = |name: &str, img: &RgbF| {
        let path = dir.join(name);
        if let Err(e) = crate::scene::io::save_atomic(&img.to_image8(), &path) {
            eprintln!("REALFILL_DEBUG_ALIGN: {e}");
        }
    };
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("REALFILL_DEBUG_ALIGN: cannot create {}: {e}", dir.display());
        return;
    }
    const COLOURS: [[f32; 3]; 8] = [
        [0.9, 0.2, 0.2],
        [0.2, 0.8, 0.2],
        [0.2, 0.4, 1.0],
        [0.9, 0.8, 0.1],
        [0.8, 0.2, 0.9],
        [0.1, 0.9, 0.9],
        [1.0, 0.5, 0.1],
        [0.6, 0.6, 0.6],
    ];
    for (c, cand) in cands.iter().enumerate() {
        let shown = RgbF::from_fn(w, h, |x, y| if cand.valid.get(x, y) >= 0.5 { cand.rgb.get(x, y) } else { [0.0; 3] });
        save(&format!("warp-{c}-ref{}.png", cand.reference), &shown);
        let t = &trust.trust[c];
        save(&format!("trust-{c}-ref{}.png", cand.reference), &RgbF::from_fn(w, h, |x, y| [t[y * w + x]; 3]));
    }
    // The choice: known pixels dimmed, each pixel to fill in its candidate's colour (black: none).
    let choice = RgbF::from_fn(w, h, |x, y| {
        let i = y * w + x;
        match trust.choice[i] {
            _ if known.data[i] >= 0.5 => canvas.get(x, y).map(|v| 0.35 * v),
            Some(c) => COLOURS[c as usize % COLOURS.len()],
            None => [0.0; 3],
        }
    });
    save("choice.png", &choice);
    save(
        "guide.png",
        &RgbF::from_fn(w, h, |x, y| if guide.valid.get(x, y) >= 0.5 { guide.rgb.get(x, y) } else { [0.0; 3] }),
    );
    eprintln!(
        "REALFILL_DEBUG_ALIGN: {} candidates written to {}; colours of choice.png: {}",
        cands.len(),
        dir.display(),
        (0..cands.len().min(COLOURS.len()))
            .map(|c| format!("{c}={:?}", COLOURS[c].map(|v| (v * 255.0) as u8)))
            .collect::<Vec<_>>()
            .join(" ")
    );
}

/// For a reference of the target's own size: the map from the working canvas to that
/// reference at working size if the camera had not moved (the extension taken off, pixel
/// centres kept), else None.
pub fn still_camera(scene: &Scene, i: usize, working: (usize, usize), reference: &RgbF) -> Option<Homography> {
    let (t, r) = (&scene.target, &scene.refs[i]);
    if (t.width(), t.height()) != (r.width(), r.height()) {
        return None;
    }
    let (cw, ch) = scene.canvas_size();
    let (sx, sy) = (cw as f64 / working.0 as f64, ch as f64 / working.1 as f64);
    let (rx, ry) = (reference.width as f64 / r.width() as f64, reference.height as f64 / r.height() as f64);
    let e = scene.extension;
    // working → canvas → target (= reference) pixels → reference at working size.
    let to_canvas = Homography([sx, 0.0, 0.5 * sx - 0.5, 0.0, sy, 0.5 * sy - 0.5, 0.0, 0.0, 1.0]);
    let to_target = Homography([1.0, 0.0, -(e.left as f64), 0.0, 1.0, -(e.top as f64), 0.0, 0.0, 1.0]);
    let to_ref = Homography([rx, 0.0, 0.5 * rx - 0.5, 0.0, ry, 0.5 * ry - 0.5, 0.0, 0.0, 1.0]);
    Some(to_ref.then_after(&to_target.then_after(&to_canvas)))
}
