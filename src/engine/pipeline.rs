//! The fill pipeline the worker runs: prepare (working size, alignment, guides), learn or load
//! the scene model, sample, colour-correct and composite.

use std::sync::Arc;
use std::time::Instant;

use burn::prelude::*;

use crate::align::{self, Alignment, Guide, Homography};
use crate::diffusion::checkpoint::{self, KeyHasher};
use crate::diffusion::sampler::{self, Condition, SampleOptions, SamplerKind};
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

/// Everything a Learn or Fill job needs to know besides the scene.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct FillSettings {
    /// Long side of the working size (multiple of 8 after rounding).
    pub size: usize,
    pub steps: usize,
    pub seed: u64,
    pub sampler: SamplerKind,
    pub learn: LearnSettings,
    pub spec: UNetSpec,
    /// Read and write the on-disk model cache.
    pub use_cache: bool,
}

impl Default for FillSettings {
    fn default() -> Self {
        FillSettings {
            size: 384,
            steps: DEFAULT_STEPS,
            seed: 0,
            sampler: SamplerKind::Ddim,
            learn: LearnSettings::default(),
            spec: UNetSpec::default(),
            use_cache: true,
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
/// image's pixels into theirs. Earlier entries take precedence.
fn build_guide(w: usize, h: usize, others: &[(&RgbF, Option<&Mask>, Homography)], me: &RgbF, my_known: &Mask) -> Guide {
    let mut g = Guide::empty(w, h);
    for (img, known, map) in others {
        let (mut rgb, valid) = align::warp(img, *known, map, w, h);
        align::match_exposure(&mut rgb, &valid, me, my_known);
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
    let guide = build_guide(ww, wh, &target_others, &canvas, &known);

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
                    build_guide(r.width, r.height, &others, r, &all)
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
    pub prepare_s: f32,
    pub learn_s: f32,
    pub sample_s: f32,
    pub first_preview_s: f32,
    pub composite_s: f32,
    pub total_s: f32,
    pub model_cached: bool,
}

pub struct FillOutput {
    pub image: image::DynamicImage,
    /// The fill at working size (known pixels included).
    pub working: RgbF,
    pub timings: Timings,
    pub aligned_refs: usize,
    pub guide_coverage: f32,
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
    let t1 = Instant::now();
    let (model, cached) = learn_or_load(&p, s, device, held, progress, cancelled)?;
    t.learn_s = t1.elapsed().as_secs_f32();
    t.model_cached = cached;
    let cond = condition(&p);
    let mut den = SceneDenoiser::new(model, device.clone());
    let t2 = Instant::now();
    let mut first = None;
    let (w, h) = (p.canvas.width, p.canvas.height);
    let out = sampler::sample(
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
    )?;
    t.sample_s = t2.elapsed().as_secs_f32();
    t.first_preview_s = first.unwrap_or(0.0);
    let t3 = Instant::now();
    let mut fill = from_planar(&out.x0, w, h);
    let raw = from_planar(&out.raw, w, h);
    composite::match_colour(&mut fill, &raw, &p.canvas, &p.fill, 3.0);
    let (cw, ch) = scene.canvas_size();
    let feather = composite::default_feather(cw.max(ch), w.max(h));
    let image = composite::composite(scene, &fill, feather);
    t.composite_s = t3.elapsed().as_secs_f32();
    t.total_s = t0.elapsed().as_secs_f32();
    Ok(FillOutput { image, working: fill, timings: t, aligned_refs: aligned, guide_coverage: coverage })
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
