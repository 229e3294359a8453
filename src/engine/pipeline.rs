//! The fill pipeline the worker runs: prepare (working size, alignment, guides), learn or load
//! the scene model, sample, colour-correct and composite.

use std::sync::Arc;
use std::time::Instant;

use burn::prelude::*;

use crate::align::{self, Alignment, Guide, Homography};
use crate::diffusion::checkpoint::{self, KeyHasher};
use crate::diffusion::patch::{self, PatchSettings};
use crate::diffusion::sampler::{self, Condition, Denoiser, SampleOptions, SamplerKind};
use crate::diffusion::scene_model::SceneDenoiser;
use crate::diffusion::schedule::Schedule;
use crate::diffusion::train::{self, LearnSettings, TrainingSource};
use crate::diffusion::unet::{UNet, UNetSpec};
use crate::error::{Error, Result};
use crate::scene::composite;
use crate::scene::raster::working_size;
use crate::scene::{Mask, RgbF, Scene};

/// Default denoising steps. Measured on chelsea-rect with a 600-step scene model: 1 step
/// 35.9 dB, 3 steps 30.9, 5 28.4, 10 25.4, 25 23.2 — the model's residual errors compound
/// over steps. Three keeps most of that gain and still streams previews.
pub const DEFAULT_STEPS: usize = 3;

/// Which denoiser fills.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
pub enum EngineKind {
    /// Pick by measurement (see `EngineKind::resolve`): the patch engine today.
    #[default]
    Auto,
    /// Training-free reference patch denoiser: seconds, no learning.
    Patch,
    /// The scene model learned from the references: minutes of learning, cached.
    Scene,
}

impl EngineKind {
    /// What `auto` means, by measurement on ../shared/data/scenes (docs/BENCHMARKS.md): the
    /// patch engine fills in seconds where the scene model first learns for minutes, and on
    /// the scenes measured with both it won three of four (chelsea-rect 38.4 against 30.9 dB,
    /// chelsea-strokes 29.6 / 29.1, rubberwhale-rect 27.8 / 27.7; aero-rect 17.9 / 18.5, both
    /// poor; with refined alignment rubberwhale-rect 27.6 / 27.4). The scene model is there to
    /// be asked for.
    pub fn resolve(self) -> EngineKind {
        match self {
            EngineKind::Auto => EngineKind::Patch,
            k => k,
        }
    }
}

/// Everything a Learn or Fill job needs to know besides the scene.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct FillSettings {
    pub engine: EngineKind,
    pub patch: crate::diffusion::patch::PatchSettings,
    /// Long side of the working size (multiple of 8 after rounding).
    pub size: usize,
    pub steps: usize,
    pub seed: u64,
    pub sampler: SamplerKind,
    pub learn: LearnSettings,
    pub spec: UNetSpec,
    /// Read and write the on-disk model cache.
    pub use_cache: bool,
    /// Score the result's agreement with the references (ranks candidates).
    pub score: bool,
    /// Also return the result as a `Photo` (float copy made on the worker; the app needs it).
    #[serde(default)]
    pub result_photo: bool,
}

impl Default for FillSettings {
    fn default() -> Self {
        FillSettings {
            engine: EngineKind::Auto,
            patch: Default::default(),
            size: 384,
            steps: DEFAULT_STEPS,
            seed: 0,
            sampler: SamplerKind::Ddim,
            learn: LearnSettings::default(),
            spec: UNetSpec::default(),
            use_cache: true,
            score: false,
            result_photo: false,
        }
    }
}

/// The scene at working size, aligned.
pub struct Prepared {
    pub canvas: RgbF,
    /// 1 = fill.
    pub fill: Mask,
    pub known: Mask,
    pub refs: Vec<RgbF>,
    pub alignments: Vec<Option<Alignment>>,
    pub guide: Guide,
    /// What the model corrects: known pixels, references, smooth continuation (train::prior).
    pub prior: RgbF,
    pub sources: Vec<TrainingSource>,
    pub key: String,
}

fn invert(m: &Mask) -> Mask {
    Mask { width: m.width, height: m.height, data: m.data.iter().map(|v| 1.0 - v).collect() }
}

/// Guide for an image of size `w`×`h` from other images, given per-image maps from this
/// image's pixels into theirs. Earlier entries take precedence. With `parallax`, each warp is
/// corrected for parallax (align::parallax: 63–101 ms per reference at 384 px on the
/// evaluation scenes, `REALFILL_DEBUG_PARALLAX=1`; so only for the target's guide, which fills
/// use — the references' training guides keep the plain warp).
fn build_guide(
    w: usize,
    h: usize,
    others: &[(&RgbF, Option<&Mask>, Homography)],
    me: &RgbF,
    my_known: &Mask,
    parallax: bool,
) -> Guide {
    let mut g = Guide::empty(w, h);
    for (img, known, map) in others {
        let (mut rgb, mut valid) = align::warp(img, *known, map, w, h);
        align::match_exposure(&mut rgb, &valid, me, my_known);
        // One homography maps one plane; nearer and farther things are moved into place by
        // the residual shifts measured around the hole (kept only when they generalise).
        if let Some(field) = parallax.then(|| align::parallax::correction(me, my_known, &rgb, &valid)).flatten() {
            (rgb, valid) = align::warp_shifted(img, *known, map, Some(&field), w, h);
            align::match_exposure(&mut rgb, &valid, me, my_known);
        }
        g.fill_gaps_from(&rgb, &valid);
    }
    g
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
    let known = invert(&fill);
    let refs: Vec<RgbF> = scene
        .refs
        .iter()
        .map(|r| {
            let (rw, rh) = working_size(r.width(), r.height(), s.size);
            r.rgb.resized(rw, rh)
        })
        .collect();
    let alignments: Vec<Option<Alignment>> =
        refs.iter().enumerate().map(|(i, r)| align::align(&canvas, &fill, r, s.seed ^ i as u64)).collect();
    // Better-aligned references first.
    let mut order: Vec<usize> = (0..refs.len()).filter(|&i| alignments[i].is_some()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(alignments[i].as_ref().map_or(0, |a| a.inliers)));
    let target_others: Vec<_> =
        order.iter().map(|&i| (&refs[i], None, alignments[i].as_ref().unwrap().target_to_ref)).collect();
    let guide = build_guide(ww, wh, &target_others, &canvas, &known, true);

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
                    build_guide(r.width, r.height, &others, r, &all, false)
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
    k.text(&serde_json::to_string(&s.spec).unwrap_or_default());
    k.text(&serde_json::to_string(&s.learn).unwrap_or_default());
    let prior = train::prior(&canvas, &fill.data, &guide.rgb, &guide.valid);
    Ok(Prepared { canvas, fill, known, refs, alignments, guide, prior, sources, key: k.finish() })
}

/// Progress callbacks from the pipeline to whoever drives it.
pub trait Progress {
    fn status(&mut self, msg: String);
    fn learning(&mut self, step: usize, total: usize, loss: f32);
    fn preview(&mut self, step: usize, total: usize, image: Arc<RgbF>);
}

/// A learned model for a prepared scene: from memory, from the disk cache, or learned now.
pub fn learn_or_load(
    p: &Prepared,
    s: &FillSettings,
    device: &Device,
    held: &mut Option<(String, UNet)>,
    progress: &mut dyn Progress,
    cancelled: &dyn Fn() -> bool,
) -> Result<(UNet, bool)> {
    if let Some((k, m)) = held
        && *k == p.key
    {
        return Ok((m.clone(), true));
    }
    let path = checkpoint::checkpoint_path(&p.key);
    if s.use_cache {
        let (m, warn) = checkpoint::load(&path, &s.spec, device);
        if let Some(w) = warn {
            progress.status(w);
        }
        if let Some(m) = m {
            progress.status(format!("using the cached scene model {}", path.display()));
            *held = Some((p.key.clone(), m.clone()));
            return Ok((m, true));
        }
    }
    let ad = device.clone().autodiff();
    // Weight initialisation draws from the backend's generator: seed it for reproducibility.
    ad.seed(s.learn.seed);
    let model = UNet::new(&s.spec, &ad);
    let model =
        train::learn(model, &p.sources, &s.learn, &ad, &mut |st, tot, l| progress.learning(st, tot, l), cancelled)?;
    let model = model.valid();
    if s.use_cache
        && let Err(e) = checkpoint::save(&model, &path)
    {
        progress.status(format!("could not cache the scene model: {e}"));
    }
    *held = Some((p.key.clone(), model.clone()));
    Ok((model, false))
}

pub fn to_planar(img: &RgbF) -> Vec<f32> {
    let hw = img.width * img.height;
    let mut out = vec![0.0; 3 * hw];
    for i in 0..hw {
        for k in 0..3 {
            out[k * hw + i] = img.data[3 * i + k] * 2.0 - 1.0;
        }
    }
    out
}

pub fn from_planar(v: &[f32], width: usize, height: usize) -> RgbF {
    let hw = width * height;
    let mut img = RgbF::new(width, height);
    for i in 0..hw {
        for k in 0..3 {
            img.data[3 * i + k] = ((v[k * hw + i] + 1.0) * 0.5).clamp(0.0, 1.0);
        }
    }
    img
}

pub fn condition(p: &Prepared) -> Condition {
    let hw = p.canvas.width * p.canvas.height;
    let mut known = to_planar(&p.canvas);
    for j in 0..3 * hw {
        known[j] *= p.known.data[j % hw];
    }
    let guide = to_planar(&p.prior);
    Condition {
        width: p.canvas.width,
        height: p.canvas.height,
        known,
        mask: p.fill.data.clone(),
        guide,
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
}

pub fn run_fill(
    scene: &Scene,
    s: &FillSettings,
    device: &Device,
    held: &mut Option<(String, UNet)>,
    progress: &mut dyn Progress,
    cancelled: &dyn Fn() -> bool,
) -> Result<FillOutput> {
    let t0 = Instant::now();
    let p = prepare(scene, s)?;
    let aligned = p.alignments.iter().filter(|a| a.is_some()).count();
    let coverage = guide_cover_in_mask(&p);
    progress.status(format!(
        "working size {}×{}; {aligned} of {} references aligned; references cover {:.0}% of the fill region",
        p.canvas.width,
        p.canvas.height,
        p.refs.len(),
        100.0 * coverage
    ));
    let mut t = Timings { prepare_s: t0.elapsed().as_secs_f32(), ..Default::default() };
    let engine = s.engine.resolve();
    t.engine = engine;
    let cond = condition(&p);
    let (w, h) = (p.canvas.width, p.canvas.height);
    // The patch engine and the candidate score share one pyramid of sources.
    let ps = patch_settings(s);
    let levels = if engine == EngineKind::Patch || s.score { Some(patch_levels(&p, &cond, &ps)?) } else { None };
    let mut first = None;
    let t2;
    let out = match (engine, &levels) {
        (EngineKind::Patch, Some(levels)) => {
            t2 = Instant::now();
            run_patch(
                levels.clone(),
                &ps,
                s,
                device,
                &mut |step, total, x0: RgbF| {
                    if first.is_none() {
                        first = Some(t2.elapsed().as_secs_f32());
                    }
                    progress.preview(step, total, Arc::new(x0));
                },
                cancelled,
            )?
        }
        (EngineKind::Patch, None) => unreachable!("levels are built for the patch engine"),
        _ => {
            let t1 = Instant::now();
            let (model, cached) = learn_or_load(&p, s, device, held, progress, cancelled)?;
            t.learn_s = t1.elapsed().as_secs_f32();
            t.model_cached = cached;
            let mut den = SceneDenoiser::new(model, device.clone());
            t2 = Instant::now();
            sampler::sample(
                &mut den,
                &Schedule::default(),
                &cond,
                &SampleOptions { kind: s.sampler, steps: s.steps, seed: s.seed },
                &mut |step, total, x0| {
                    if first.is_none() {
                        first = Some(t2.elapsed().as_secs_f32());
                    }
                    progress.preview(step, total, Arc::new(from_planar(x0, w, h)));
                },
                cancelled,
            )?
        }
    };
    t.sample_s = t2.elapsed().as_secs_f32();
    t.first_preview_s = first.unwrap_or(0.0);
    let t3 = Instant::now();
    let mut fill = from_planar(&out.x0, w, h);
    let raw = from_planar(&out.raw, w, h);
    composite::match_colour(&mut fill, &raw, &p.canvas, &p.fill, 3.0);
    // σ: 8 working pixels (aero-rect 18.16 dB; 4 px 18.25 but closer to a blur, 16–32 px
    // 18.07–18.11).
    composite::follow_prior_colour(&mut fill, &p.prior, &p.fill, &p.guide.valid, 8.0);
    let (cw, ch) = scene.canvas_size();
    let feather = composite::default_feather(cw.max(ch), w.max(h));
    let image = composite::composite(scene, &fill, feather);
    t.composite_s = t3.elapsed().as_secs_f32();
    let agreement = match levels {
        Some(levels) if s.score => {
            let t4 = Instant::now();
            let a = patch_agreement(levels, &to_planar(&fill), &ps, device)?;
            t.score_s = t4.elapsed().as_secs_f32();
            Some(a)
        }
        _ => None,
    };
    t.total_s = t0.elapsed().as_secs_f32();
    // The app shows and edits results as photos; converting here keeps that work off its UI
    // thread (the command line only writes the image, so it skips the float copy).
    let photo = s
        .result_photo
        .then(|| Arc::new(crate::scene::Photo::from_image(scene.target.path.clone(), image.clone(), None)));
    Ok(FillOutput {
        image,
        photo,
        working: fill,
        timings: t,
        aligned_refs: aligned,
        guide_coverage: coverage,
        agreement,
    })
}

/// The patch engine's view of a prepared scene, as pyramid levels (finest first).
fn patch_levels(p: &Prepared, cond: &Condition, ps: &PatchSettings) -> Result<Vec<patch::Level>> {
    let guide = to_planar(&p.guide.rgb);
    patch::build_levels(&patch::PatchScene { cond, refs: &p.refs, guide: Some((&guide, &p.guide.valid.data)) }, ps)
}

/// Coarse to fine with the patch denoiser: the coarsest level from noise, each finer level from
/// the upsampled coarser result re-noised to `fine_alpha_bar`. Previews at working size.
/// The patch settings of a job; for tuning, REALFILL_PATCH='{"guide_tau":0.2}' overrides fields
/// (docs/BENCHMARKS.md records the variants measured this way).
fn patch_settings(s: &FillSettings) -> PatchSettings {
    std::env::var("REALFILL_PATCH")
        .ok()
        .and_then(|j| {
            let mut v = serde_json::to_value(&s.patch).ok()?;
            let o: serde_json::Value = serde_json::from_str(&j).ok()?;
            v.as_object_mut()?.extend(o.as_object()?.clone());
            serde_json::from_value::<PatchSettings>(v).ok()
        })
        .unwrap_or_else(|| s.patch.clone())
}

fn run_patch(
    mut levels: Vec<patch::Level>,
    ps: &PatchSettings,
    s: &FillSettings,
    device: &Device,
    preview: &mut dyn FnMut(usize, usize, RgbF),
    cancelled: &dyn Fn() -> bool,
) -> Result<sampler::SampleOutput> {
    let schedule = Schedule::default();
    let total = ps.coarse_steps + ps.fine_steps * (levels.len() - 1);
    let (w, h) = (levels[0].cond.width, levels[0].cond.height);
    let mut done = 0;
    let mut parent: Option<(patch::Level, Vec<u32>)> = None;
    let mut x: Option<(Vec<f32>, usize, usize)> = None;
    let mut out = None;
    while let Some(level) = levels.pop() {
        let lc = level.cond.clone();
        let (lw, lh) = (lc.width, lc.height);
        let mut den = patch::PatchDenoiser::new(level, parent.take(), ps, device);
        let mut on_step = |step: usize, _n: usize, x0: &[f32]| {
            let full = if (lw, lh) == (w, h) { x0.to_vec() } else { patch::upsample(x0, lw, lh, w, h) };
            preview(done + step, total, from_planar(&full, w, h));
        };
        // Each level gets its own seed so that levels do not reuse one noise pattern.
        let seed = s.seed.wrapping_mul(31).wrapping_add(lw as u64);
        let res = match &x {
            None => sampler::sample(
                &mut den,
                &schedule,
                &lc,
                &SampleOptions { kind: s.sampler, steps: ps.coarse_steps, seed },
                &mut on_step,
                cancelled,
            )?,
            Some((prev, pw, ph)) => {
                let init = patch::upsample(prev, *pw, *ph, lw, lh);
                let start = schedule.timestep_for(ps.fine_alpha_bar);
                sampler::sample_from(
                    &mut den,
                    &schedule,
                    &lc,
                    &SampleOptions { kind: s.sampler, steps: ps.fine_steps, seed },
                    &init,
                    start,
                    &mut on_step,
                    cancelled,
                )?
            }
        };
        done += if x.is_none() { ps.coarse_steps } else { ps.fine_steps };
        x = Some((res.x0.clone(), lw, lh));
        parent = Some((den.level, den.top));
        out = Some(res);
    }
    out.ok_or_else(|| Error::Invalid("the patch engine has no levels".into()))
}

/// How well a filled image (planar, working size) is explained by source patches: matched
/// coarse to fine at zero noise, the mean squared difference between each filled pixel's
/// patch and its best source patch, as dB (higher = closer to the references). Used to rank
/// candidates of either engine.
pub fn patch_agreement(
    mut levels: Vec<patch::Level>,
    image: &[f32],
    ps: &PatchSettings,
    device: &Device,
) -> Result<f32> {
    // The image at every level, finest first.
    let mut images = vec![image.to_vec()];
    for l in 1..levels.len() {
        let (w, h) = (levels[l - 1].cond.width, levels[l - 1].cond.height);
        images.push(patch::half(&images[l - 1], w, h));
    }
    let mut parent: Option<(patch::Level, Vec<u32>)> = None;
    let mut score = 0.0;
    while let Some(level) = levels.pop() {
        let img = images.pop().unwrap_or_default();
        let lc = level.cond.clone();
        let mut den = patch::PatchDenoiser::new(level, parent.take(), ps, device);
        // At zero noise the posterior mean is the best-matching source patch's centre.
        let x0 = den.predict_x0(&img, 0, &lc)?;
        let hw = lc.pixels();
        let (mut sum, mut n) = (0.0f64, 0usize);
        for i in (0..hw).filter(|&i| lc.mask[i] >= 0.5) {
            for c in 0..3 {
                let d = (x0[c * hw + i] - img[c * hw + i]) as f64;
                sum += d * d;
            }
            n += 3;
        }
        // Range 2 ([-1, 1]): dB like PSNR on [0, 1] images.
        score = if n > 0 { (-10.0 * ((sum / n as f64).max(1e-10) / 4.0).log10()) as f32 } else { 99.0 };
        parent = Some((den.level, den.top));
    }
    Ok(score)
}

fn guide_cover_in_mask(p: &Prepared) -> f32 {
    let (mut n, mut c) = (0usize, 0usize);
    for (f, v) in p.fill.data.iter().zip(&p.guide.valid.data) {
        if *f >= 0.5 {
            n += 1;
            if *v >= 0.5 {
                c += 1;
            }
        }
    }
    c as f32 / n.max(1) as f32
}

pub fn run_learn(
    scene: &Scene,
    s: &FillSettings,
    device: &Device,
    held: &mut Option<(String, UNet)>,
    progress: &mut dyn Progress,
    cancelled: &dyn Fn() -> bool,
) -> Result<bool> {
    let p = prepare(scene, s)?;
    let (_, cached) = learn_or_load(&p, s, device, held, progress, cancelled)?;
    Ok(cached)
}
