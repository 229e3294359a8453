//! The fill pipeline the worker runs: prepare (working size, alignment, guides), learn or load
//! the scene model, sample, colour-correct and composite.

use std::sync::Arc;
use std::time::Instant;

use burn::prelude::*;

use super::budget;
use super::detail;
use super::sd_fill;
pub use super::settings::FillSettings;
use super::sources;
use crate::align::guide::{self, TargetWarp};
use crate::align::{self, Alignment, Guide, Homography};
use crate::diffusion::checkpoint::{self, KeyHasher};
use crate::diffusion::patch::{self, PatchSettings};
use crate::diffusion::sampler::{self, Condition, SampleOptions};
use crate::diffusion::scene_model::SceneModelDenoiser;
use crate::diffusion::schedule::Schedule;
use crate::diffusion::train::{self, TrainingSource};
use crate::diffusion::unet::UNet;
use crate::error::{Error, Result};
use crate::scene::raster::working_size;
use crate::scene::{Mask, RgbF, Scene};
use crate::scene::{composite, pushpull};
pub use crate::settings::EngineKind;

/// The scene at working size, aligned.
pub struct Prepared {
    pub canvas: RgbF,
    /// 1 = fill.
    pub fill: Mask,
    pub known: Mask,
    pub refs: Vec<RgbF>,
    pub alignments: Vec<Option<Alignment>>,
    pub guide: Guide,
    /// The warps the guide was made of, best-aligned reference first (it takes precedence).
    pub warps: Vec<TargetWarp>,
    /// What the engines correct: known pixels, references, smooth continuation (pushpull::prior).
    pub prior: RgbF,
    pub sources: Vec<TrainingSource>,
    pub key: String,
    /// The canvas reaches beyond the photo (outpainting).
    pub extended: bool,
    /// Pixels of the fill no reference reaches that the guide holds as copies of the photo's
    /// and the references' pixels (`copies_beyond_references`: invented, though real texture),
    /// and where each came from, for the native-resolution step.
    pub shifts: Vec<Option<align::exemplar::Shift>>,
}

pub fn prepare(scene: &Scene, s: &FillSettings) -> Result<Prepared> {
    let (cw, ch) = scene.canvas_size();
    let (ww, wh) = working_size(cw, ch, s.size);
    let stride = s.spec.stride();
    if ww % stride != 0 || wh % stride != 0 {
        return Err(Error::Invalid(format!("working size {ww}×{wh} must divide by {stride}")));
    }
    let canvas = scene.canvas_rgb().resized(ww, wh);
    // One extra pixel so that no known working pixel is blended with the blacked-out hole.
    let fill = scene.mask.resized_cover(ww, wh).dilated();
    let known = fill.inverted();
    let refs: Vec<RgbF> = scene
        .refs
        .iter()
        .map(|r| {
            let (rw, rh) = working_size(r.width(), r.height(), s.size);
            r.rgb.resized(rw, rh)
        })
        .collect();
    let started = Instant::now();
    let stills: Vec<Option<Homography>> =
        refs.iter().enumerate().map(|(i, r)| guide::still_camera(scene, i, (ww, wh), r)).collect();
    let alignments: Vec<Option<Alignment>> = refs
        .iter()
        .enumerate()
        .map(|(i, r)| align::align(&canvas, &fill, r, s.seed ^ i as u64, stills[i], &s.diagnostics))
        .collect();
    if s.diagnostics.on() {
        eprintln!("alignment: matching and plane models {:.0} ms", started.elapsed().as_secs_f64() * 1e3);
    }
    // Better-aligned references first.
    let mut order: Vec<usize> = (0..refs.len()).filter(|&i| alignments[i].is_some()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(alignments[i].as_ref().map_or(0, |a| a.inliers)));
    let (mut guide, mut warps) = guide::target_guide(&canvas, &known, &refs, &alignments, &order, &s.diagnostics);
    // Most of the frame missing: the known pixels are mostly the subject, and their motion is
    // not the camera's (align::montage).
    // Where the montage reaches no pixel (beyond its references), the plane models' guide
    // still may.
    if fill.fill_fraction() >= align::montage::SPARSE
        && let Some(m) = align::montage::compose(&canvas, &known, &refs, &stills, s.seed, &s.diagnostics)
    {
        let left: Vec<bool> = m.guide.valid.data.iter().map(|&v| v < 0.5).collect();
        let mut montage = m.guide;
        montage.fill_gaps_from(&guide.rgb, &guide.valid);
        let mut all = m.warps;
        for mut w in warps {
            w.covers.data.iter_mut().zip(&left).filter(|(_, l)| !**l).for_each(|(c, _)| *c = 0.0);
            if w.covers.fill_fraction() > 0.0 {
                all.push(w);
            }
        }
        (guide, warps) = (montage, all);
    }
    let shifts = copies_beyond_references(&canvas, &fill, &mut guide, &refs, s.seed, &s.diagnostics);
    let mut sources = vec![TrainingSource { image: canvas.clone(), known: known.clone(), guide: guide.clone() }];
    for (i, r) in refs.iter().enumerate() {
        let all = Mask::new(r.width, r.height, 1.0);
        let g = match &alignments[i] {
            Some(a) => match a.target_to_ref.inverse() {
                Some(ref_to_target) => {
                    let mut others: Vec<(&RgbF, Option<&Mask>, Homography)> = order
                        .iter()
                        .filter(|&&j| j != i)
                        .map(|&j| {
                            (&refs[j], None, alignments[j].as_ref().unwrap().target_to_ref.then_after(&ref_to_target))
                        })
                        .collect();
                    others.push((&canvas, Some(&known), ref_to_target));
                    guide::reference_guide(r.width, r.height, &others, r, &all)
                }
                None => Guide::empty(r.width, r.height),
            },
            None => Guide::empty(r.width, r.height),
        };
        sources.push(TrainingSource { image: r.clone(), known: all, guide: g });
    }

    let mut k = KeyHasher::default();
    k.floats(&canvas.data).floats(&fill.data);
    for r in &refs {
        k.text(&format!("{}x{}", r.width, r.height)).floats(&r.data);
    }
    // The guide the scene model learns with (the montage or the plane models: the same pixels
    // and settings may be prepared differently by another version).
    k.floats(&guide.rgb.data).floats(&guide.valid.data);
    k.text(&serde_json::to_string(&s.spec).unwrap_or_default());
    k.text(&serde_json::to_string(&s.learn).unwrap_or_default());
    let prior = pushpull::prior(&canvas, &fill.data, &guide.rgb, &guide.valid);
    if let Some(dir) = &s.diagnostics.dir
        && let Err(e) = crate::scene::io::save_atomic(&prior.to_image8(), &dir.join("prior.png"))
    {
        eprintln!("REALFILL_DEBUG_ALIGN: {e}");
    }
    let extended = !scene.extension.is_zero();
    Ok(Prepared {
        canvas,
        fill,
        known,
        refs,
        alignments,
        guide,
        warps,
        prior,
        sources,
        key: k.finish(),
        extended,
        shifts,
    })
}

/// Where no reference reaches and the hole is wider than a thin band, the guide gets shifted
/// copies of the photo's and the references' own pixels (`align::exemplar`), so that the
/// engines refine real texture there, as they do a warped reference, instead of a smooth
/// continuation that is a smear at 100 %. Returns where each pixel it copied came from.
fn copies_beyond_references(
    canvas: &RgbF,
    fill: &Mask,
    guide: &mut Guide,
    refs: &[RgbF],
    seed: u64,
    diagnostics: &align::Diagnostics,
) -> Vec<Option<align::exemplar::Shift>> {
    let (w, h) = (canvas.width, canvas.height);
    let hole = Mask {
        width: w,
        height: h,
        data: (0..w * h).map(|i| (fill.data[i] >= 0.5 && guide.valid.data[i] < 0.5) as u8 as f32).collect(),
    };
    // A thin band is the membrane's to bridge: the engines refine it into the texture on both
    // sides.
    let widest = hole.inverted().distance_outside().into_iter().fold(0.0f32, f32::max);
    if widest < THIN_BAND {
        return vec![None; w * h];
    }
    let started = Instant::now();
    let mut image = canvas.clone();
    for i in (0..w * h).filter(|&i| fill.data[i] >= 0.5 && guide.valid.data[i] >= 0.5) {
        image.data[3 * i..3 * i + 3].copy_from_slice(&guide.rgb.data[3 * i..3 * i + 3]);
    }
    let sources: Vec<&RgbF> = refs.iter().collect();
    let made = align::exemplar::complete(&image, &hole, &sources, seed);
    let copied = made.copied();
    guide.fill_gaps_from(&made.rgb, &copied);
    if diagnostics.on() {
        eprintln!(
            "copies beyond the references: {:.0} % of the canvas in {:.0} ms",
            100.0 * copied.fill_fraction(),
            started.elapsed().as_secs_f64() * 1e3
        );
    }
    if let Some(dir) = &diagnostics.dir
        && let Err(e) = crate::scene::io::save_atomic(&made.rgb.to_image8(), &dir.join("copies.png"))
    {
        eprintln!("REALFILL_DEBUG_ALIGN: {e}");
    }
    made.shifts
}

/// Holes no wider than this (working pixels from the nearest trusted pixel) keep the smooth
/// continuation.
const THIN_BAND: f32 = 6.0;

/// Progress callbacks from the pipeline to whoever drives it.
pub trait Progress {
    fn status(&mut self, msg: String);
    fn learning(&mut self, step: usize, total: usize, loss: f32);
    fn preview(&mut self, step: usize, total: usize, image: Arc<RgbF>);
    /// A finished strip of the native-resolution fill (after the working-size previews).
    fn native_tile(&mut self, _tile: detail::NativeTile) {}
    /// Something the person should know although the job goes on (a cache that could not be
    /// written).
    fn warning(&mut self, msg: String) {
        self.status(msg)
    }
}

/// Progress that goes nowhere (benchmarks, tests).
pub struct Silent;

impl Progress for Silent {
    fn status(&mut self, _: String) {}
    fn learning(&mut self, _: usize, _: usize, _: f32) {}
    fn preview(&mut self, _: usize, _: usize, _: Arc<RgbF>) {}
}

/// What the worker keeps between jobs: the last scene model (keyed by scene and settings) and
/// the loaded Stable Diffusion model (keyed by its folder).
#[derive(Default)]
pub struct Held {
    pub scene_model: Option<(String, UNet)>,
    pub sd: sd_fill::HeldSd,
}

/// A learned model for a prepared scene: from memory, from the disk cache, or learned now.
pub fn learn_or_load(
    p: &Prepared,
    s: &FillSettings,
    device: &Device,
    held: &mut Held,
    progress: &mut dyn Progress,
    cancelled: &dyn Fn() -> bool,
) -> Result<(UNet, bool)> {
    if let Some((k, m)) = &held.scene_model
        && *k == p.key
    {
        return Ok((m.clone(), true));
    }
    let path = checkpoint::checkpoint_path(&p.key).filter(|_| s.use_cache);
    if s.use_cache && path.is_none() {
        progress.warning(checkpoint::NO_CACHE.into());
    }
    if let Some(path) = &path {
        let (m, warn) = checkpoint::load(path, &s.spec, device);
        if let Some(w) = warn {
            progress.status(w);
        }
        if let Some(m) = m {
            progress.status(format!("using the cached scene model {}", path.display()));
            held.scene_model = Some((p.key.clone(), m.clone()));
            return Ok((m, true));
        }
    }
    let ad = device.clone().autodiff();
    // Weight initialisation draws from the backend's generator: seed it for reproducibility.
    ad.seed(s.learn.seed);
    let model = UNet::new(&s.spec, &ad);
    let mut learn = s.learn.clone();
    learn.crop = budget::learning_crop(learn.crop, (p.canvas.width, p.canvas.height));
    let model =
        train::learn(model, &p.sources, &learn, &ad, &mut |st, tot, l| progress.learning(st, tot, l), cancelled)?;
    let model = model.valid();
    if let Some(path) = &path
        && let Err(e) = checkpoint::save(&model, path)
    {
        progress.warning(format!(
            "the scene model was learned but could not be cached, so the next fill learns again: {e}"
        ));
    }
    held.scene_model = Some((p.key.clone(), model.clone()));
    Ok((model, false))
}

pub fn condition(p: &Prepared) -> Condition {
    let hw = p.canvas.width * p.canvas.height;
    let mut known = p.canvas.to_planar();
    for j in 0..3 * hw {
        known[j] *= p.known.data[j % hw];
    }
    let prior = p.prior.to_planar();
    Condition {
        width: p.canvas.width,
        height: p.canvas.height,
        known,
        mask: p.fill.data.clone(),
        prior,
        guide_valid: p.guide.valid.data.clone(),
    }
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Timings {
    /// The engine that filled (auto resolved).
    pub engine: EngineKind,
    pub prepare_s: f32,
    pub learn_s: f32,
    pub sample_s: f32,
    pub first_preview_s: f32,
    /// Native-resolution detail (`detail::native_fill`), zero when the photo is about the
    /// working size.
    pub detail_s: f32,
    pub composite_s: f32,
    pub total_s: f32,
    pub model_cached: bool,
    /// Ranking the result against the references.
    pub score_s: f32,
}

pub struct FillOutput {
    pub image: image::DynamicImage,
    /// The result as a photo, when `FillSettings::result_photo` asked for it.
    pub photo: Option<Arc<crate::scene::Photo>>,
    /// The fill at working size (known pixels included).
    pub working: RgbF,
    pub timings: Timings,
    pub aligned_refs: usize,
    pub guide_coverage: f32,
    /// Patch agreement with the references in dB (`FillSettings::score`), for ranking.
    pub agreement: Option<f32>,
    /// With native-resolution detail: the share of the fill region that took a reference's
    /// detail (confidence-weighted).
    pub reference_detail: Option<f32>,
    /// Which reference, by which motion, gave how much of the fill region, and which pixels.
    pub sources: sources::Sources,
    /// The seed it was sampled with, and which of the job's candidates it is (0-based, of
    /// `candidates`).
    pub seed: u64,
    pub candidate: usize,
    pub candidates: usize,
}

/// What a running job reaches besides its inputs: the device, the model held between jobs,
/// progress and the cancel check.
pub struct Run<'a> {
    pub scene: &'a Scene,
    pub device: &'a Device,
    pub held: &'a mut Held,
    pub progress: &'a mut dyn Progress,
    pub cancelled: &'a dyn Fn() -> bool,
}

/// One fill (`run_fills` with one candidate).
pub fn run_fill(
    scene: &Scene,
    s: &FillSettings,
    device: &Device,
    held: &mut Held,
    progress: &mut dyn Progress,
    cancelled: &dyn Fn() -> bool,
) -> Result<FillOutput> {
    let mut out = None;
    run_fills(scene, s, 1, device, held, progress, cancelled, &mut |o| out = Some(o))?;
    out.ok_or_else(|| Error::Engine("no result".into()))
}

/// `candidates` fills of one scene, seeds `s.seed`, `s.seed + 1`, …, each handed to `emit` as
/// it is done. The scene is prepared once (alignment, the guide, the prior, the patch engine's
/// pyramid: the alignment's random draws follow `s.seed`, so every candidate shares the first
/// one's); only sampling, the native detail and the composite are per candidate.
#[allow(clippy::too_many_arguments)]
pub fn run_fills(
    scene: &Scene,
    s: &FillSettings,
    candidates: usize,
    device: &Device,
    held: &mut Held,
    progress: &mut dyn Progress,
    cancelled: &dyn Fn() -> bool,
    emit: &mut dyn FnMut(FillOutput),
) -> Result<()> {
    let t0 = Instant::now();
    check_budget(scene, s, false)?;
    let p = prepare(scene, s)?;
    let aligned = p.alignments.iter().filter(|a| a.is_some()).count();
    let coverage = guide_cover_in_mask(&p);
    let shares = sources::of(&p.warps, &p.shifts, &p.fill);
    progress.status(format!(
        "working size {}×{}; {aligned} of {} references aligned; references cover {:.0}% of the fill region",
        p.canvas.width,
        p.canvas.height,
        p.refs.len(),
        100.0 * coverage
    ));
    let engine = s.engine.resolve();
    let cond = condition(&p);
    // The patch engine and the candidate score share one pyramid of sources.
    let ps = s.patch.clone();
    let (cw, ch) = scene.canvas_size();
    let adds_native = detail::adds_detail((cw, ch), (p.canvas.width, p.canvas.height));
    let mut levels =
        if engine == EngineKind::Patch || s.score || adds_native { Some(patch_levels(&p, &cond, &ps)?) } else { None };
    let prepare_s = t0.elapsed().as_secs_f32();
    let feather = composite::default_feather(cw.max(ch), p.canvas.width.max(p.canvas.height));
    let mut run = Run { scene, device, held, progress, cancelled };
    for k in 0..candidates.max(1) {
        let t1 = Instant::now();
        let sk = FillSettings { seed: s.seed.wrapping_add(k as u64), ..s.clone() };
        let mut t = Timings { prepare_s, engine, ..Default::default() };
        let (out, matches) = sample_working(&p, &cond, &sk, &ps, levels.as_deref(), &mut run, &mut t)?;
        let fill = corrected_fill(&p, &out, t.engine);
        // The candidate score, and for an engine without matches of its own (the scene model)
        // the matches of its fill into the photo's known pixels, from one zero-noise patch pass.
        let t4 = Instant::now();
        // (the last candidate hands the pyramid over; the others score on a copy)
        let pyramid = if k + 1 == candidates.max(1) { levels.take() } else { levels.clone() };
        let (agreement, matches) = match (pyramid, matches) {
            (Some(levels), None) if s.score || adds_native => {
                let (a, m) = patch::agreement(levels, &fill.to_planar(), &ps, device)?;
                (s.score.then_some(a), Some(m))
            }
            (Some(levels), m) if s.score => (Some(patch::agreement(levels, &fill.to_planar(), &ps, device)?.0), m),
            (_, m) => (None, m),
        };
        t.score_s = t4.elapsed().as_secs_f32();
        let t3 = Instant::now();
        if adds_native {
            run.progress.status(format!("adding the detail of the fill region at the photo's {cw}×{ch}"));
        }
        let sources =
            detail::Sources { warps: &p.warps, working_refs: &p.refs, own: matches.as_ref(), copies: Some(&p.shifts) };
        let native =
            detail::native_fill(scene, &sources, &fill, feather, cancelled, &mut |t| run.progress.native_tile(t))?;
        t.detail_s = t3.elapsed().as_secs_f32();
        let part = native.as_ref().map(|n| composite::NativePart { x0: n.x0, y0: n.y0, rgb: &n.rgb });
        let image = composite::composite(scene, &fill, part, feather);
        t.composite_s = t3.elapsed().as_secs_f32() - t.detail_s;
        // Each candidate's time: the shared preparation and its own work.
        t.total_s = prepare_s + t1.elapsed().as_secs_f32();
        // The app shows and edits results as photos; converting here keeps that work off its UI
        // thread (the command line only writes the image, so it skips the float copy).
        let photo = s.result_photo.then(|| {
            let (path, meta) = (scene.target.path.clone(), scene.target.metadata.clone());
            Arc::new(crate::scene::Photo::from_image_with(path, image.clone(), None, meta))
        });
        let reference_detail = native.as_ref().map(|n| n.reference_detail);
        emit(FillOutput {
            image,
            photo,
            working: fill,
            timings: t,
            aligned_refs: aligned,
            guide_coverage: coverage,
            agreement,
            reference_detail,
            sources: shares.clone(),
            seed: sk.seed,
            candidate: k,
            candidates: candidates.max(1),
        });
    }
    Ok(())
}

/// A preview's colours fitted to the photo's known pixels: an affine colour map (3×3 and an
/// offset) by least squares. The patch engine's coarser levels work on their own pyramid's
/// values, so their estimates, upsampled for the preview, came out as a grey wash until the
/// finest level (issue 28); on the finest level the fit is the identity. Previews only: the
/// fill itself is untouched.
fn match_known_tones(x0: &mut [f32], cond: &Condition, known: &[usize]) {
    let hw = cond.pixels();
    if known.len() < 16 {
        return;
    }
    // Normal equations of k = A·[x, 1] over the known pixels (4 unknowns per channel).
    let mut m = [[0.0f64; 4]; 4];
    let mut r = [[0.0f64; 4]; 3];
    for &i in known {
        let v = [x0[i] as f64, x0[hw + i] as f64, x0[2 * hw + i] as f64, 1.0];
        for a in 0..4 {
            for b in 0..4 {
                m[a][b] += v[a] * v[b];
            }
            for c in 0..3 {
                r[c][a] += v[a] * cond.known[c * hw + i] as f64;
            }
        }
    }
    // A little ridge towards the identity keeps a flat estimate (the first steps) stable.
    let lambda = 1e-5 * known.len() as f64;
    for a in 0..3 {
        m[a][a] += lambda;
        for c in 0..3 {
            if a == c {
                r[c][a] += lambda;
            }
        }
    }
    let Some(coef) = solve4(m, r) else { return };
    for i in 0..hw {
        let v = [x0[i], x0[hw + i], x0[2 * hw + i]];
        for c in 0..3 {
            let k = &coef[c];
            let y = k[0] * v[0] as f64 + k[1] * v[1] as f64 + k[2] * v[2] as f64 + k[3];
            x0[c * hw + i] = (y as f32).clamp(-1.0, 1.0);
        }
    }
}

/// The pixels outside the fill region (what previews are fitted on), found once per fill.
fn known_pixels(cond: &Condition) -> Vec<usize> {
    (0..cond.pixels()).filter(|&i| cond.mask[i] < 0.5).collect()
}

/// Solve m·x = r[c] for the three right-hand sides (Gaussian elimination, partial pivoting).
fn solve4(mut m: [[f64; 4]; 4], mut r: [[f64; 4]; 3]) -> Option<[[f64; 4]; 3]> {
    for col in 0..4 {
        let piv = (col..4).max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs()))?;
        if m[piv][col].abs() < 1e-12 {
            return None;
        }
        m.swap(col, piv);
        for rc in r.iter_mut() {
            rc.swap(col, piv);
        }
        for row in 0..4 {
            if row != col {
                let f = m[row][col] / m[col][col];
                for k in 0..4 {
                    m[row][k] -= f * m[col][k];
                }
                for rc in r.iter_mut() {
                    rc[row] -= f * rc[col];
                }
            }
        }
    }
    let mut out = [[0.0; 4]; 3];
    for c in 0..3 {
        for k in 0..4 {
            out[c][k] = r[c][k] / m[k][k];
        }
    }
    Some(out)
}

/// Sample the working canvas with the job's engine (learning or loading the scene model
/// first when it is that engine), streaming previews; learning and sampling times into `t`.
fn sample_working(
    p: &Prepared,
    cond: &Condition,
    s: &FillSettings,
    ps: &PatchSettings,
    levels: Option<&[patch::Level]>,
    run: &mut Run<'_>,
    t: &mut Timings,
) -> Result<(sampler::SampleOutput, Option<patch::KnownMatches>)> {
    let (w, h) = (p.canvas.width, p.canvas.height);
    let mut first = None;
    let mut started = Instant::now();
    let out = match (t.engine, levels) {
        (EngineKind::Patch, Some(levels)) => {
            let progress = &mut *run.progress;
            let known = known_pixels(cond);
            patch::fill(
                levels.to_vec(),
                ps,
                &SampleOptions { kind: s.sampler, steps: 0, seed: s.seed },
                run.device,
                &mut |step, total, x0| {
                    first.get_or_insert_with(|| started.elapsed().as_secs_f32());
                    let mut x0 = x0.to_vec();
                    match_known_tones(&mut x0, cond, &known);
                    progress.preview(step, total, Arc::new(RgbF::from_planar(&x0, w, h)));
                },
                run.cancelled,
            )
            .map(|(out, matches)| (out, Some(matches)))?
        }
        (EngineKind::Patch, None) => return Err(Error::Engine("the patch engine needs its levels".into())),
        (EngineKind::StableDiffusion, _) => {
            let progress = &mut *run.progress;
            let (held, reused) = sd_fill::load_or_reuse(&mut run.held.sd, s, run.device, &mut |m| progress.status(m))?;
            let lora = sd_fill::choose_lora(held, run.scene, s)?;
            match &lora {
                Some(f) => progress.status(format!("filling with the LoRA {}", f.display())),
                None => progress.status(
                    "no LoRA learned for this scene: Stable Diffusion fills as downloaded (Learn, or \
                     `realfill learn --engine sd`, learns the scene into it)"
                        .into(),
                ),
            }
            t.learn_s = started.elapsed().as_secs_f32();
            t.model_cached = reused;
            started = Instant::now();
            sd_fill::sample(
                &held.sd,
                lora.is_some(),
                &p.canvas,
                &p.fill,
                s,
                &mut |step, total, img| {
                    first.get_or_insert_with(|| started.elapsed().as_secs_f32());
                    progress.preview(step, total, Arc::new(img));
                },
                run.cancelled,
            )
            .map(|out| (out, None))?
        }
        _ => {
            let (model, cached) = learn_or_load(p, s, run.device, run.held, run.progress, run.cancelled)?;
            t.learn_s = started.elapsed().as_secs_f32();
            t.model_cached = cached;
            let mut den = SceneModelDenoiser::new(model, run.device.clone());
            started = Instant::now();
            let progress = &mut *run.progress;
            sampler::sample(
                &mut den,
                &Schedule::default(),
                cond,
                &SampleOptions { kind: s.sampler, steps: s.steps, seed: s.seed },
                &mut |step, total, x0| {
                    first.get_or_insert_with(|| started.elapsed().as_secs_f32());
                    progress.preview(step, total, Arc::new(RgbF::from_planar(x0, w, h)));
                },
                run.cancelled,
            )
            .map(|out| (out, None))?
        }
    };
    t.sample_s = started.elapsed().as_secs_f32();
    t.first_preview_s = first.unwrap_or(0.0);
    Ok(out)
}

/// The sampled working canvas with its colour corrected: the drift the denoiser introduced
/// against the known pixels undone, and, in interior holes no reference covers, the local
/// mean colour of the prior.
fn corrected_fill(p: &Prepared, out: &sampler::SampleOutput, engine: EngineKind) -> RgbF {
    let (w, h) = (p.canvas.width, p.canvas.height);
    let mut fill = RgbF::from_planar(&out.x0, w, h);
    let raw = RgbF::from_planar(&out.raw, w, h);
    composite::match_colour(&mut fill, &raw, &p.canvas, &p.fill, 3.0);
    // σ: 4 working pixels since the prior is the membrane fill (docs/BENCHMARKS.md, session 7:
    // 8 / 4 / 2 px give books-strokes 24.57 / 25.03 / 25.24 dB; 2 everywhere flattens the
    // engine's texture between 2 and 4 px for a fraction of a dB; 8 was chosen in session 4 on
    // push-pull). Within a few pixels of the known ones the membrane is right at a finer scale
    // (it interpolates the edge it starts from), so there the colour follows it at σ = 2,
    // blending to 4 from 6 to 12 px deep (session 10: books-strokes 25.03 → 25.20 dB on its own,
    // basketball-rect 37.20 → 37.36, chelsea-strokes 30.83 → 30.94, nothing lower).
    // Not for Stable Diffusion: what it imagines where no reference reaches is its colour too.
    if engine != EngineKind::StableDiffusion {
        composite::follow_prior_colour_by_depth(
            &mut fill,
            &p.prior,
            &p.fill,
            &p.guide.valid,
            p.extended,
            (2.0, 4.0),
            (6.0, 12.0),
        );
    }
    fill
}

/// The patch engine's view of a prepared scene, as pyramid levels (finest first).
fn patch_levels(p: &Prepared, cond: &Condition, ps: &PatchSettings) -> Result<Vec<patch::Level>> {
    let guide = p.guide.rgb.to_planar();
    patch::build_levels(&patch::PatchScene { cond, refs: &p.refs, guide: Some((&guide, &p.guide.valid.data)) }, ps)
}

fn guide_cover_in_mask(p: &Prepared) -> f32 {
    let (mut n, mut c) = (0usize, 0usize);
    for ((f, v), copied) in p.fill.data.iter().zip(&p.guide.valid.data).zip(&p.shifts) {
        if *f >= 0.5 {
            n += 1;
            if *v >= 0.5 && copied.is_none() {
                c += 1;
            }
        }
    }
    c as f32 / n.max(1) as f32
}

/// Refuse a job that would not fit the memory budget (`budget`), before any work.
fn check_budget(scene: &Scene, s: &FillSettings, learns: bool) -> Result<()> {
    let learns = learns || s.engine.resolve() == EngineKind::SceneModel;
    budget::check(
        &budget::Demand {
            canvas: scene.canvas_size(),
            refs: scene.refs.iter().map(|r| (r.width(), r.height())).collect(),
            learning: learns.then(|| budget::learning(s.learn.batch, s.learn.crop, scene.canvas_size(), s.size)),
        },
        s.memory_gib,
    )
}

pub fn run_learn(
    scene: &Scene,
    s: &FillSettings,
    device: &Device,
    held: &mut Held,
    progress: &mut dyn Progress,
    cancelled: &dyn Fn() -> bool,
) -> Result<bool> {
    if s.engine == EngineKind::StableDiffusion {
        return sd_fill::learn(
            scene,
            s,
            device,
            &mut held.sd,
            &mut |r| match r {
                sd_fill::Report::Status(m) => progress.status(m),
                sd_fill::Report::Step { step, total, loss } => progress.learning(step, total, loss),
            },
            cancelled,
        );
    }
    check_budget(scene, s, true)?;
    let p = prepare(scene, s)?;
    let (_, cached) = learn_or_load(&p, s, device, held, progress, cancelled)?;
    Ok(cached)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scene::{Extension, Photo};

    /// A 192×128 target of random coloured blobs (corners for the keypoints) with a 48×32
    /// hole, and a reference that is the same view.
    fn scene_with_reference() -> Scene {
        let mut rng = crate::rng::Rng::new(3);
        let blobs: Vec<[f32; 6]> = (0..60)
            .map(|_| {
                let b = [192.0, 128.0, 12.0, 1.0, 1.0, 1.0].map(|m| rng.range_f32(0.0, m));
                [b[0], b[1], 3.0 + b[2], b[3], b[4], b[5]]
            })
            .collect();
        let img = image::RgbImage::from_fn(192, 128, |x, y| {
            let mut c = [0.2f32; 3];
            for b in &blobs {
                let d2 = ((x as f32 - b[0]).powi(2) + (y as f32 - b[1]).powi(2)) / (b[2] * b[2]);
                if d2 < 1.0 {
                    c = [b[3], b[4], b[5]];
                }
            }
            image::Rgb(c.map(|v| (v * 255.0) as u8))
        });
        let photo = |name: &str| Photo::from_image(name.into(), image::DynamicImage::ImageRgb8(img.clone()), None);
        let mut m = Mask::new(192, 128, 0.0);
        for y in 48..80 {
            for x in 72..120 {
                m.set(x, y, 1.0);
            }
        }
        let refs = vec![Arc::new(photo("r.png"))];
        Scene::new(photo("t.png"), Some((m, std::path::Path::new("m.png"))), Extension::default(), refs).unwrap()
    }

    fn settings(size: usize) -> FillSettings {
        FillSettings { engine: EngineKind::Patch, size, use_cache: false, ..Default::default() }
    }

    struct Sink(usize);
    impl Progress for Sink {
        fn status(&mut self, _: String) {}
        fn learning(&mut self, _: usize, _: usize, _: f32) {}
        fn preview(&mut self, _: usize, _: usize, _: Arc<RgbF>) {
            self.0 += 1;
        }
    }

    #[test]
    fn prepare_scales_to_the_working_size_and_the_same_view_covers_the_hole() {
        let p = prepare(&scene_with_reference(), &settings(96)).unwrap();
        assert_eq!((p.canvas.width, p.canvas.height), (96, 64));
        // The hole (24×16 at working size) grown by one pixel so no known pixel touches it.
        let filled = p.fill.data.iter().filter(|&&v| v >= 0.5).count();
        assert!((24 * 16..=26 * 18).contains(&filled), "{filled} working pixels to fill");
        assert_eq!(p.alignments.iter().filter(|a| a.is_some()).count(), 1, "the reference aligns");
        assert!(guide_cover_in_mask(&p) > 0.99, "the warped reference covers the hole");
        let cond = condition(&p);
        let hw = cond.pixels();
        for i in (0..hw).filter(|&i| cond.mask[i] >= 0.5) {
            assert_eq!(cond.known[i], 0.0, "nothing of the hole leaks into the known pixels");
        }
        // The prior in the hole is the warped reference: close to what the target held there.
        let truth = scene_with_reference().target.rgb.resized(96, 64);
        let (mut err, mut n) = (0.0f32, 0);
        for i in (0..hw).filter(|&i| cond.mask[i] >= 0.5) {
            err += (0..3).map(|k| (p.prior.data[3 * i + k] - truth.data[3 * i + k]).abs()).sum::<f32>() / 3.0;
            n += 1;
        }
        assert!(err / (n as f32) < 0.08, "mean prior error in the hole {}", err / n as f32);
    }

    /// An outpainting no reference reaches: the guide there is copied texture, about as
    /// detailed as the photo (a membrane would be smooth), counted as no reference's; a thin
    /// stroke keeps the smooth continuation.
    #[test]
    fn beyond_every_reference_a_wide_margin_is_copied_texture_and_a_thin_stroke_is_not() {
        let mut rng = crate::rng::Rng::new(5);
        let threads: Vec<f32> = (0..64).map(|_| rng.range_f32(0.3, 1.0)).collect();
        let img = image::RgbImage::from_fn(192, 128, |x, y| {
            let (u, v) = (threads[(x / 6) as usize % 64], threads[(y / 6) as usize % 64]);
            let warp = if (x / 6 + y / 6) % 2 == 0 { u } else { v };
            image::Rgb([(warp * 200.0) as u8, (warp * 150.0) as u8, 60])
        });
        let photo = Photo::from_image("t.png".into(), image::DynamicImage::ImageRgb8(img.clone()), None);
        let extension = Extension { left: 0, top: 0, right: 64, bottom: 0 };
        let scene = Scene::new(photo, None, extension, Vec::new()).unwrap();
        let p = prepare(&scene, &settings(128)).unwrap();
        let (w, h) = (p.canvas.width, p.canvas.height);
        let copied: Vec<usize> = (0..w * h).filter(|&i| p.shifts[i].is_some()).collect();
        let filled = p.fill.data.iter().filter(|&&v| v >= 0.5).count();
        assert!(copied.len() as f32 > 0.9 * filled as f32, "{} of {filled} copied", copied.len());
        assert!(guide_cover_in_mask(&p) < 0.01, "copies are no reference's");
        let grad = |img: &RgbF, px: &[usize]| {
            let d: f32 = px
                .iter()
                .filter(|&&i| i % w + 1 < w)
                .map(|&i| (0..3).map(|k| (img.data[3 * i + k] - img.data[3 * i + 3 + k]).abs()).sum::<f32>())
                .sum();
            d / px.len() as f32
        };
        let known: Vec<usize> = (0..w * h).filter(|&i| p.fill.data[i] < 0.5).collect();
        let (inside, photo) = (grad(&p.prior, &copied), grad(&p.canvas, &known));
        assert!(inside > 0.5 * photo, "gradient {inside} in the copies, {photo} in the photo");

        // A stroke 3 pixels wide: the smooth continuation's to bridge.
        let photo = Photo::from_image("t.png".into(), image::DynamicImage::ImageRgb8(img), None);
        let mut m = Mask::new(192, 128, 0.0);
        for y in 20..100 {
            for x in 90..93 {
                m.set(x, y, 1.0);
            }
        }
        let scene =
            Scene::new(photo, Some((m, std::path::Path::new("m.png"))), Extension::default(), Vec::new()).unwrap();
        let p = prepare(&scene, &settings(128)).unwrap();
        assert!(p.shifts.iter().all(|s| s.is_none()), "a thin stroke is not copied into");
    }

    #[test]
    fn a_patch_fill_streams_previews_keeps_pixels_outside_the_band_and_restores_the_hole() {
        let scene = scene_with_reference();
        let (device, mut held, mut sink) = (Device::flex(), Held::default(), Sink(0));
        let out = run_fill(&scene, &settings(96), &device, &mut held, &mut sink, &|| false).unwrap();
        assert!(sink.0 > 0, "previews streamed");
        assert_eq!(out.timings.engine, EngineKind::Patch);
        let (got, orig) = (out.image.to_rgb8(), scene.target.original.to_rgb8());
        let alpha = composite::feather_alpha(&scene.mask, composite::default_feather(192, 96));
        let (mut err, mut n) = (0.0f64, 0);
        for (i, (g, o)) in got.pixels().zip(orig.pixels()).enumerate() {
            if alpha[i] == 0.0 {
                assert_eq!(g, o, "pixel {i} outside the feather band is the original");
            } else if scene.mask.data[i] >= 0.5 {
                err += (0..3).map(|k| (g[k] as f64 - o[k] as f64).abs()).sum::<f64>() / 3.0;
                n += 1;
            }
        }
        // The reference shows exactly what the hole held: the fill is close to it.
        assert!(err / (n as f64) < 20.0, "mean error in the hole {:.1} of 255", err / n as f64);
    }

    /// The coarse levels' washed-out estimates get the photo's tones back for the preview;
    /// an estimate that already matches the known pixels is left as it is.
    #[test]
    fn previews_take_the_tones_of_the_known_pixels() {
        let (w, h) = (16, 12);
        let hw = w * h;
        let mut rng = crate::rng::Rng::new(3);
        let truth: Vec<f32> = (0..3 * hw).map(|_| rng.range_f32(-0.8, 0.8)).collect();
        let mask: Vec<f32> = (0..hw).map(|i| if (i % w) > 10 { 1.0 } else { 0.0 }).collect();
        let known: Vec<f32> = (0..3 * hw).map(|j| truth[j] * (1.0 - mask[j % hw])).collect();
        let cond = Condition {
            width: w,
            height: h,
            known,
            mask: mask.clone(),
            prior: truth.clone(),
            guide_valid: vec![0.0; hw],
        };
        // A wash: less contrast, a grey offset and a little channel mixing.
        let mut x0: Vec<f32> = (0..3 * hw).map(|j| 0.3 * truth[j] + 0.05 * truth[(j + hw) % (3 * hw)] + 0.1).collect();
        match_known_tones(&mut x0, &cond, &known_pixels(&cond));
        for i in (0..hw).filter(|&i| mask[i] < 0.5) {
            for c in 0..3 {
                assert!((x0[c * hw + i] - truth[c * hw + i]).abs() < 0.02, "known pixel {i} channel {c}");
            }
        }
        let mut exact = truth.clone();
        match_known_tones(&mut exact, &cond, &known_pixels(&cond));
        assert!(exact.iter().zip(&truth).all(|(a, b)| (a - b).abs() < 1e-4), "the identity stays");
    }

    #[test]
    fn a_cancelled_fill_stops_with_cancelled() {
        let scene = scene_with_reference();
        let (device, mut held, mut sink) = (Device::flex(), Held::default(), Sink(0));
        let r = run_fill(&scene, &settings(96), &device, &mut held, &mut sink, &|| true);
        assert!(matches!(r, Err(Error::Cancelled)));
        assert_eq!(sink.0, 0, "no step ran");
    }
}
