//! `realfill bench`: time the patch engine (whole fills, first preview, its attention product)
//! and the scene model's learning and sampling steps on each backend,
//! with FLOP counts, achieved GFLOP/s beside the CPU's fp32 peak, and peak memory.
//! Figures are medians of several runs after a warm-up.

use std::time::Instant;

use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use clap::Args;

use crate::align::Guide;
use crate::diffusion::sampler::{Condition, Denoiser};
use crate::diffusion::scene_model::SceneModelDenoiser;
use crate::diffusion::schedule::Schedule;
use crate::diffusion::train::{TrainingSource, make_batch};
use crate::diffusion::unet::{IN_CHANNELS, TIME_FEATURES, UNet, UNetSpec, forward_macs};
use crate::engine::device::{self, BackendChoice};
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::scene::{Mask, RgbF};

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Backends to measure: cpu, wgpu, auto (cpu, plus wgpu when a real GPU exists), or
    /// remote=ws://HOST:PORT (cpu here, beside the same figures through that GPU server).
    #[arg(long, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    /// The GPU server's access token (else from $REALFILL_REMOTE_TOKEN).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<std::path::PathBuf>,
    /// Timed repetitions per figure (after one or two warm-up runs).
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Working sizes (long side) for sampling steps.
    #[arg(long, value_delimiter = ',', default_values_t = vec![384usize, 768])]
    pub sizes: Vec<usize>,
    /// Learning batch and crop.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long, default_value_t = 64)]
    pub crop: usize,
    /// Learning steps and sampling steps assumed for the whole-fill estimate.
    #[arg(long, default_value_t = 600)]
    pub learn_steps: usize,
    #[arg(long, default_value_t = crate::settings::defaults::STEPS)]
    pub steps: usize,
    /// Megapixels of the synthetic camera photo for the large-photo fill (0: skip it).
    #[arg(long, default_value_t = 12.0)]
    pub photo_mp: f64,
    /// Megapixels of its hole.
    #[arg(long, default_value_t = 0.6)]
    pub hole_mp: f64,
    /// Measure Stable Diffusion from this diffusers folder instead (load, text encoder, VAE,
    /// one UNet step alone and as the guided pair, the whole fill) and nothing else.
    #[arg(long, value_name = "DIR")]
    pub sd_model: Option<std::path::PathBuf>,
    /// Image side of the Stable Diffusion figures.
    #[arg(long, default_value_t = 512)]
    pub sd_size: usize,
    /// Guided steps of the one measured Stable Diffusion fill.
    #[arg(long, default_value_t = crate::settings::defaults::SD_STEPS)]
    pub sd_steps: usize,
    /// With --sd-model: only the LoRA learning step (its peak memory is the run's).
    #[arg(long)]
    pub sd_learning_only: bool,
    /// With --sd-model: learn with one backward pass through the whole UNet, all its
    /// activations held at once (the step before activation checkpointing), for comparison.
    #[arg(long)]
    pub sd_whole_graph: bool,
    /// On the CPU, time each Stable Diffusion figure on these paths, alternated in one run:
    /// `own` (realfill's kernels, `diffusion::sd::cpu_forward`), `own-im2col` (the same without
    /// Winograd's 3×3 convolutions: `kernels::winograd`) and `burn` (burn's CPU backend).
    /// Default: the one the switches pick.
    #[arg(long, value_delimiter = ',', value_parser = ["own", "own-im2col", "burn"])]
    pub sd_paths: Vec<String>,
    /// Leave out the LoRA learning step of the Stable Diffusion figures.
    #[arg(long)]
    pub sd_no_learning: bool,
}

impl BenchArgs {
    /// Refuse values the measurements cannot run with (the same limits as a fill's flags, and
    /// the memory budget), naming the flag.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(m));
        if !(1..=1000).contains(&self.repeats) {
            return bad(format!("--repeats {}: give 1 to 1000", self.repeats));
        }
        if self.sizes.is_empty() {
            return bad("--sizes: give at least one working size, such as 384".into());
        }
        for &size in &self.sizes {
            let run = crate::settings::RunSettings {
                size,
                steps: self.steps,
                learn_steps: self.learn_steps,
                batch: self.batch,
                crop: self.crop,
                ..Default::default()
            };
            run.validate().map_err(|e| Error::Invalid(e.to_string().replace("--size ", "--sizes ")))?;
        }
        let max_mp = crate::scene::io::MAX_PIXELS as f64 / 1e6;
        if !(self.photo_mp == 0.0 || (1.0..=max_mp).contains(&self.photo_mp)) {
            return bad(format!("--photo-mp {}: give 0 (skip the large photo) or 1 to {max_mp}", self.photo_mp));
        }
        if self.photo_mp > 0.0 && !(self.hole_mp > 0.0 && self.hole_mp <= self.photo_mp / 2.0) {
            return bad(format!("--hole-mp {}: give above 0 and at most half of --photo-mp", self.hole_mp));
        }
        let side = |mp: f64| ((mp * 1e6 / 12.0).sqrt() * 4.0) as usize;
        let largest = self.sizes.iter().copied().max().unwrap_or(0);
        crate::engine::budget::check(
            &crate::engine::budget::Demand {
                canvas: (side(self.photo_mp).max(largest), (side(self.photo_mp) * 3 / 4).max(largest)),
                refs: vec![(side(self.photo_mp), side(self.photo_mp) * 3 / 4)],
                learning: Some((self.batch, self.crop)),
            },
            crate::switches::get().memory_gib,
        )
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

/// fp32 peak of this CPU for the vector form realfill's kernels run (`REALFILL_SIMD` caps it):
/// cores × FLOPs/cycle (2 FMA units × SIMD lanes × 2) × max clock.
pub fn cpu_peak_gflops() -> (f64, String) {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let form = crate::kernels::plan().simd;
    let lanes = form.lanes() as f64;
    let mhz = info
        .lines()
        .filter(|l| l.starts_with("cpu MHz"))
        .filter_map(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
        .fold(0.0, f64::max);
    let model = info
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string();
    let cores = device::cpu_threads() as f64;
    let peak = cores * 2.0 * lanes * 2.0 * mhz / 1000.0;
    (peak, format!("{model}, {cores} threads, {mhz:.0} MHz, {} ({lanes} fp32 lanes) × 2 FMA units", form.name()))
}

/// fp32 FMA throughput actually reached on every thread at once (independent AVX-512, or
/// AVX2, FMA chains in registers, the form the kernels run): what "peak" means on this
/// (virtual) machine, where the nominal figure assumes two FMA units per core and a clock
/// nobody guarantees.
pub fn measured_fma_gflops() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::kernels::simd::Simd;
        let form = crate::kernels::plan().simd;
        let (wide, mid) = (form == Simd::Avx512, form == Simd::Avx2);
        if !(wide || mid) {
            return None;
        }
        let threads = device::cpu_threads();
        let iters = 20_000_000u64;
        let t = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads {
                // SAFETY: the plan says Avx512 / Avx2 only when the CPU has those features.
                s.spawn(move || unsafe { if wide { fma_loop_avx512(iters) } else { fma_loop_avx2(iters) } });
            }
        });
        let lanes = if wide { 16.0 } else { 8.0 };
        Some(threads as f64 * iters as f64 * 16.0 * lanes * 2.0 / t.elapsed().as_secs_f64() / 1e9)
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn fma_loop_avx512(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    let m = _mm512_set1_ps(0.999_999);
    let a = _mm512_set1_ps(1e-7);
    let mut acc = [_mm512_set1_ps(1.0); 16];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_fmadd_ps(*v, m, a);
        }
    }
    let mut s = _mm512_setzero_ps();
    for v in acc {
        s = _mm512_add_ps(s, v);
    }
    std::hint::black_box(_mm512_reduce_add_ps(s))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fma_loop_avx2(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    let m = _mm256_set1_ps(0.999_999);
    let a = _mm256_set1_ps(1e-7);
    let mut acc = [_mm256_set1_ps(1.0); 16];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(*v, m, a);
        }
    }
    let mut out = [0.0f32; 8];
    let mut s = _mm256_setzero_ps();
    for v in acc {
        s = _mm256_add_ps(s, v);
    }
    // SAFETY: out holds 8 floats.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
    std::hint::black_box(out.iter().sum())
}

pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn synthetic_source(w: usize, h: usize) -> TrainingSource {
    let image =
        RgbF::from_fn(w, h, |x, y| [(x as f32 * 0.05).sin() * 0.5 + 0.5, (y as f32 * 0.03).cos() * 0.5 + 0.5, 0.5]);
    TrainingSource {
        image: image.clone(),
        known: Mask::new(w, h, 1.0),
        guide: Guide { rgb: image, valid: Mask::new(w, h, 1.0) },
    }
}

struct Row {
    backend: String,
    what: String,
    ms: f64,
    gflop: f64,
}

fn bench_backend(device: &Device, name: &str, a: &BenchArgs, rows: &mut Vec<Row>) -> Result<()> {
    let (inference, learn_ms) = bench_learning(device, name, a, rows)?;
    bench_sampling(device, name, a, rows, &inference, learn_ms)?;
    eprintln!("{name}: scene model {} parameters", inference.num_params());
    Ok(())
}

/// The learning step on burn (autodiff), and on the CPU network where it serves the device.
/// Returns the learned model and the time of the step `learn` uses (ms).
fn bench_learning(device: &Device, name: &str, a: &BenchArgs, rows: &mut Vec<Row>) -> Result<(UNet, f64)> {
    let spec = UNetSpec::default();
    let schedule = Schedule::default();
    // Learning step.
    let ad = device.clone().autodiff();
    let mut model = UNet::new(&spec, &ad);
    let mut optim = AdamConfig::new().init();
    let src = [synthetic_source(256, 192)];
    let mut rng = Rng::new(1);
    let mut times = Vec::new();
    for i in 0..a.repeats + 2 {
        let b = make_batch(&src, &schedule, a.batch, a.crop, &mut rng);
        let t = Instant::now();
        let (n, c) = (b.batch, b.size);
        let x = Tensor::<4>::from_data(TensorData::new(b.input, [n, IN_CHANNELS, c, c]), &ad);
        let tv = Tensor::<4>::from_data(TensorData::new(b.residual, [n, 3, c, c]), &ad);
        let tt = Tensor::<2>::from_data(TensorData::new(b.time, [n, TIME_FEATURES]), &ad);
        let d = model.forward(x, tt) - tv;
        let loss = (d.clone() * d).mean();
        let _: f32 = loss.clone().into_scalar();
        let g = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-4, model, g);
        let _ = device.sync();
        if i >= 2 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    let learn_flop = 3.0 * 2.0 * forward_macs(&spec, a.crop, a.crop) as f64 * a.batch as f64;
    let mut learn_ms = median(times) * 1e3;
    let cpu_net = crate::diffusion::cpu_unet::serves(device);
    rows.push(Row {
        backend: name.into(),
        what: format!(
            "learning step{} (batch {}, {}², fwd+bwd+Adam)",
            if cpu_net { ", burn autodiff" } else { "" },
            a.batch,
            a.crop
        ),
        ms: learn_ms,
        gflop: learn_flop / 1e9,
    });
    if cpu_net {
        // What `learn` runs on the CPU backend: the hand-written network (cpu_unet).
        use crate::diffusion::cpu_unet::{Learner, params_of};
        let mut learner = Learner::new(&spec, params_of(&model.valid())?);
        let mut times = Vec::new();
        for i in 0..a.repeats + 2 {
            let b = make_batch(&src, &schedule, a.batch, a.crop, &mut rng);
            let t = Instant::now();
            learner.step(&b.input, &b.time, &b.residual, &b.weight, b.batch, b.size, b.size, 1e-4);
            if i >= 2 {
                times.push(t.elapsed().as_secs_f64());
            }
        }
        learn_ms = median(times) * 1e3;
        rows.push(Row {
            backend: name.into(),
            what: format!("learning step, CPU network (batch {}, {}²)", a.batch, a.crop),
            ms: learn_ms,
            gflop: learn_flop / 1e9,
        });
    }
    Ok((model.valid(), learn_ms))
}

/// A sampling step per size (and burn's own CPU forward beside the CPU network's), the
/// whole fill it implies, and the first preview.
fn bench_sampling(
    device: &Device,
    name: &str,
    a: &BenchArgs,
    rows: &mut Vec<Row>,
    inference: &UNet,
    learn_ms: f64,
) -> Result<()> {
    let spec = UNetSpec::default();
    let cpu_net = crate::diffusion::cpu_unet::serves(device);
    let mut sample_ms_first = f64::NAN;
    for &size in &a.sizes {
        let (w, h) = crate::scene::raster::working_size(size * 4, size * 3, size);
        let hw = w * h;
        let cond = Condition {
            width: w,
            height: h,
            known: vec![0.0; 3 * hw],
            mask: vec![1.0; hw],
            prior: vec![0.0; 3 * hw],
            guide_valid: vec![0.0; hw],
        };
        let mut den = SceneModelDenoiser::new(inference.clone(), device.clone());
        let x = Rng::new(2).normals(3 * hw);
        let mut times = Vec::new();
        for i in 0..a.repeats + 1 {
            let t = Instant::now();
            den.predict_x0(&x, 500, &cond)?;
            if i >= 1 {
                times.push(t.elapsed().as_secs_f64());
            }
        }
        let ms = median(times) * 1e3;
        if sample_ms_first.is_nan() {
            sample_ms_first = ms;
            if cpu_net {
                // burn's own CPU forward on the same input, for the ratio.
                let xin = Tensor::<4>::from_data(
                    TensorData::new(Rng::new(2).normals(IN_CHANNELS * hw), [1, IN_CHANNELS, h, w]),
                    device,
                );
                let tt = Tensor::<2>::from_data(
                    TensorData::new(crate::diffusion::unet::time_features(&[500]), [1, TIME_FEATURES]),
                    device,
                );
                let mut times = Vec::new();
                for i in 0..a.repeats + 1 {
                    let t = Instant::now();
                    std::hint::black_box(inference.forward(xin.clone(), tt.clone()).into_data());
                    if i >= 1 {
                        times.push(t.elapsed().as_secs_f64());
                    }
                }
                rows.push(Row {
                    backend: name.into(),
                    what: format!("sampling step at {w}×{h}, burn"),
                    ms: median(times) * 1e3,
                    gflop: 2.0 * forward_macs(&spec, h, w) as f64 / 1e9,
                });
            }
        }
        rows.push(Row {
            backend: name.into(),
            what: format!("sampling step at {w}×{h}{}", if cpu_net { ", CPU network" } else { "" }),
            ms,
            gflop: 2.0 * forward_macs(&spec, h, w) as f64 / 1e9,
        });
        rows.push(Row {
            backend: name.into(),
            what: format!("whole fill at {w}×{h} ({} learn + {} sample steps)", a.learn_steps, a.steps),
            ms: learn_ms * a.learn_steps as f64 + ms * a.steps as f64,
            gflop: f64::NAN,
        });
    }
    rows.push(Row {
        backend: name.into(),
        what: "first preview after sampling starts".into(),
        ms: sample_ms_first,
        gflop: f64::NAN,
    });
    Ok(())
}

/// The bundled demo scene scaled so that its long side is `size` (working size = size).
fn demo_scene_at(size: usize) -> Result<crate::scene::Scene> {
    let scale = |p: crate::scene::Photo| {
        let f = size as f64 / p.width().max(p.height()) as f64;
        let (w, h) = ((p.width() as f64 * f).round() as u32, (p.height() as f64 * f).round() as u32);
        let img = p.original.resize_exact(w, h, image::imageops::FilterType::Triangle);
        crate::scene::Photo::from_image(p.path.clone(), img, None)
    };
    let (target, m, refs) = crate::scene::demo::load()?;
    let target = scale(target);
    let mask = m.resized_cover(target.width(), target.height());
    let refs = refs.into_iter().map(|r| std::sync::Arc::new(scale(r))).collect();
    crate::scene::Scene::new(
        target,
        Some((mask, std::path::Path::new("mask.png"))),
        crate::scene::Extension::default(),
        refs,
    )
}

/// A synthetic camera photo of `mp` megapixels (4:3): coloured tiles with an inner rectangle
/// each, under a fine weave; seen through `view` (a similarity: rotation, scale, shift, gain)
/// so that a reference is the same scene from another angle, drawn at its own resolution
/// rather than resampled.
fn synthetic_photo(mp: f64, view: (f64, f64, f64, f64, f32)) -> crate::scene::Photo {
    let w = ((mp * 1e6 * 4.0 / 3.0).sqrt()) as u32;
    let h = w * 3 / 4;
    let (angle, scale, dx, gain) = (view.0, view.1, view.2, view.4);
    let (sn, cs) = angle.sin_cos();
    let hash = |a: i64, b: i64, k: u64| {
        let mut z = (a as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (b as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F) ^ k;
        z = (z ^ (z >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        ((z ^ (z >> 29)) % 1000) as f32 / 1000.0
    };
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let (xc, yc) = (x as f64 - w as f64 / 2.0, y as f64 - h as f64 / 2.0);
        let (u, v) =
            ((cs * xc - sn * yc) * scale + dx + w as f64 / 2.0, (sn * xc + cs * yc) * scale + view.3 + h as f64 / 2.0);
        let (cx, cy) = ((u / 97.0).floor() as i64, (v / 71.0).floor() as i64);
        let (fu, fv) = ((u - cx as f64 * 97.0) as f32, (v - cy as f64 * 71.0) as f32);
        let inner = fu > 20.0 + 30.0 * hash(cx, cy, 1) && fu < 80.0 && fv > 15.0 && fv < 40.0 + 20.0 * hash(cx, cy, 2);
        let k = if inner { 7 } else { 3 };
        let weave = 0.08 * ((u as f32 * 1.3).sin() * (v as f32 * 1.3).sin());
        let c = [hash(cx, cy, k), hash(cx, cy, k + 1), hash(cx, cy, k + 2)];
        image::Rgb(c.map(|c| ((0.15 + 0.7 * c + weave) * gain * 255.0).clamp(0.0, 255.0) as u8))
    });
    crate::scene::Photo::from_image("synthetic.png".into(), image::DynamicImage::ImageRgb8(img), None)
}

/// A fill of a camera-size photo with a hole of `hole_mp` (patch engine, one reference at
/// another angle): total time, time to the first preview, the native-resolution detail step,
/// and the process's peak memory right after (the photo and reference included).
fn bench_large_photo(device: &Device, name: &str, a: &BenchArgs, rows: &mut Vec<Row>) -> Result<f64> {
    use crate::engine::pipeline::{EngineKind, FillSettings, run_fill};
    let target = synthetic_photo(a.photo_mp, (0.0, 1.0, 0.0, 0.0, 1.0));
    let reference = synthetic_photo(a.photo_mp, (0.035, 1.03, 40.0, -25.0, 1.1));
    let (w, h) = (target.width(), target.height());
    let side = (a.hole_mp * 1e6).sqrt();
    let (hw, hh) = ((side * 1.3) as usize, (side / 1.3) as usize);
    let mut mask = Mask::new(w, h, 0.0);
    for y in (h - hh) / 2..(h + hh) / 2 {
        for x in (w - hw) / 2..(w + hw) / 2 {
            mask.set(x, y, 1.0);
        }
    }
    let scene = crate::scene::Scene::new(
        target,
        Some((mask, std::path::Path::new("hole"))),
        crate::scene::Extension::default(),
        vec![std::sync::Arc::new(reference)],
    )?;
    let s = FillSettings { engine: EngineKind::Patch, use_cache: false, ..Default::default() }
        .with_switches(crate::switches::get())?;
    let (mut total, mut first, mut detail) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..a.repeats.clamp(1, 3) {
        let t = run_fill(&scene, &s, device, &mut Default::default(), &mut crate::engine::pipeline::Silent, &|| false)?
            .timings;
        total.push(t.total_s as f64);
        first.push((t.prepare_s + t.first_preview_s) as f64);
        detail.push(t.detail_s as f64);
    }
    let what = format!("{w}×{h} photo, {hw}×{hh} hole", w = w, h = h);
    for (label, v) in [("whole fill", total), ("first preview", first), ("native detail", detail)] {
        rows.push(Row { backend: name.into(), what: format!("{what}: {label}"), ms: median(v) * 1e3, gflop: f64::NAN });
    }
    Ok(peak_rss_mib())
}

/// The patch engine: whole fills of the demo scene (2 references) at each size, first preview,
/// and the attention product of the coarsest level on its own with its FLOPs.
fn bench_patch(device: &Device, name: &str, a: &BenchArgs, rows: &mut Vec<Row>) -> Result<()> {
    use crate::engine::pipeline::{EngineKind, FillSettings, run_fill};
    for &size in &a.sizes {
        let scene = demo_scene_at(size)?;
        let s = FillSettings { engine: EngineKind::Patch, size, use_cache: false, ..Default::default() }
            .with_switches(crate::switches::get())?;
        let (mut total, mut first) = (Vec::new(), Vec::new());
        let mut wh = (0, 0);
        for i in 0..a.repeats.clamp(1, 3) + 1 {
            let out =
                run_fill(&scene, &s, device, &mut Default::default(), &mut crate::engine::pipeline::Silent, &|| false)?;
            wh = (out.working.width, out.working.height);
            if i >= 1 {
                total.push(out.timings.total_s as f64);
                first.push(out.timings.first_preview_s as f64);
            }
        }
        let (w, h) = wh;
        rows.push(Row {
            backend: name.into(),
            what: format!("patch fill at {w}×{h}, 2 refs"),
            ms: median(total) * 1e3,
            gflop: f64::NAN,
        });
        rows.push(Row {
            backend: name.into(),
            what: format!("patch first preview at {w}×{h}"),
            ms: median(first) * 1e3,
            gflop: f64::NAN,
        });
    }
    // Four ranked candidates of the smallest size: one job (the scene prepared once) against
    // four jobs of one candidate each, as the command line and the app ran them before.
    if let Some(&size) = a.sizes.first() {
        use crate::engine::pipeline::{Silent, run_fills};
        let scene = demo_scene_at(size)?;
        let s = FillSettings { engine: EngineKind::Patch, size, use_cache: false, score: true, ..Default::default() }
            .with_switches(crate::switches::get())?;
        let (mut one, mut four) = (Vec::new(), Vec::new());
        for _ in 0..a.repeats.clamp(1, 3) {
            let t = Instant::now();
            run_fills(&scene, &s, 4, device, &mut Default::default(), &mut Silent, &|| false, &mut |_| {})?;
            one.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            for k in 0..4u64 {
                let sk = FillSettings { seed: s.seed + k, ..s.clone() };
                run_fill(&scene, &sk, device, &mut Default::default(), &mut Silent, &|| false)?;
            }
            four.push(t.elapsed().as_secs_f64());
        }
        for (label, v) in [("one job", one), ("four jobs", four)] {
            rows.push(Row {
                backend: name.into(),
                what: format!("4 ranked candidates at {size} px, {label}"),
                ms: median(v) * 1e3,
                gflop: f64::NAN,
            });
        }
    }
    // One tile of the coarsest level's attention: 512 queries over 20,000 keys, 5×5 patches.
    let (nq, nk) = (512, 20_000);
    let cols = 2 * 75 + 7;
    let mut rng = Rng::new(3);
    let q: Vec<f32> = (0..nq * cols).map(|_| rng.range_f32(-1.0, 1.0)).collect();
    let k: Vec<f32> = (0..nk * cols).map(|_| rng.range_f32(-1.0, 1.0)).collect();
    let c: Vec<f32> = (0..nk * 3).map(|_| rng.range_f32(-1.0, 1.0)).collect();
    let bank = Tensor::<2>::from_data(TensorData::new(k, [nk, cols]), device);
    let centres = Tensor::<2>::from_data(TensorData::new(c, [nk, 3]), device);
    let mut times = Vec::new();
    for i in 0..a.repeats + 1 {
        let t = Instant::now();
        crate::diffusion::patch::attend_all_timed(&q, nq, &bank, &centres, device)?;
        if i >= 1 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    let tile_gflop = 2.0 * nq as f64 * nk as f64 * (cols + 3) as f64 / 1e9;
    rows.push(Row {
        backend: name.into(),
        what: format!("patch attention tile, tensors ({nq} q × {nk} keys × {cols})"),
        ms: median(times) * 1e3,
        gflop: tile_gflop,
    });
    if *device == Device::flex() {
        // The same tile through the fused kernel the CPU backend uses (kernels::attention).
        use crate::kernels::attention::{KeyPanels, attend};
        let kd = bank.into_data().try_into_vec::<f32>().unwrap_or_default();
        let cd = centres.into_data().try_into_vec::<f32>().unwrap_or_default();
        let panels = KeyPanels::new(&kd, &cd, cols);
        let mut times = Vec::new();
        for i in 0..a.repeats + 1 {
            let t = Instant::now();
            std::hint::black_box(attend(&q, nq, &panels, crate::diffusion::patch::TOP));
            if i >= 1 {
                times.push(t.elapsed().as_secs_f64());
            }
        }
        rows.push(Row {
            backend: name.into(),
            what: format!("patch attention tile, fused kernel ({nq} q × {nk} keys)"),
            ms: median(times) * 1e3,
            gflop: tile_gflop,
        });
    }
    Ok(())
}

/// The fixed cost of one computation whose result is read back: a one-element add and its
/// read. On a GPU server this is the network's round trip, paid once per read (a sampling step
/// reads its result once).
fn bench_round_trip(device: &Device, name: &str, a: &BenchArgs, rows: &mut Vec<Row>) {
    let x = Tensor::<1>::from_data(TensorData::new(vec![1.0f32], [1]), device);
    let times: Vec<f64> = (0..a.repeats * 20 + 5)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box((x.clone() + 1.0).into_scalar::<f32>());
            t.elapsed().as_secs_f64()
        })
        .skip(5)
        .collect();
    rows.push(Row {
        backend: name.into(),
        what: "round trip: one-element add, read back".into(),
        ms: median(times) * 1e3,
        gflop: f64::NAN,
    });
}

/// Stable Diffusion's parts at `a.sd_size`² on `device`, and a whole fill of `a.sd_steps`
/// guided steps of the default sampler (`defaults::SD_SAMPLER`), measured once.
fn bench_sd(device: &Device, name: &str, a: &BenchArgs, rows: &mut Vec<Row>) -> Result<()> {
    use crate::diffusion::sd::StableDiffusion;
    use crate::diffusion::sd::inpaint::{InpaintOptions, inpaint, model_size};
    let dir = a.sd_model.as_ref().expect("sd_model given");
    // Each row also goes to stderr as it is measured: the whole run takes many minutes on a CPU.
    let mut row = |what: String, secs: Vec<f64>| {
        let ms = median(secs) * 1e3;
        eprintln!("{what}: {ms:.0} ms");
        rows.push(Row { backend: name.into(), what, ms, gflop: f64::NAN })
    };
    let dtype = crate::diffusion::sd::precision_for(device);
    if a.sd_learning_only {
        let sd = StableDiffusion::load(dir, device, dtype)?;
        let size = a.sd_size / sd.pixel_stride() * sd.pixel_stride();
        let (mw, _) = model_size(&sd, size, size);
        drop(sd);
        return bench_sd_learning(device, dir, dtype, size, mw, a, &mut row);
    }
    let t = Instant::now();
    let sd = StableDiffusion::load(dir, device, dtype)?;
    row(format!("SD load (read, build; UNet and text in {dtype:?})"), vec![t.elapsed().as_secs_f64()]);
    let size = a.sd_size / sd.pixel_stride() * sd.pixel_stride();
    let f = sd.vae_config.factor();
    let (lat, c) = (size / f, sd.vae_config.latent_channels);
    let sync = |t: Tensor<4>| t.into_data().bytes().len();
    // Each path in turn for every repetition (after one warm-up each), so that a shared
    // machine's load falls on all of them alike.
    use crate::diffusion::sd::cpu_forward;
    use crate::kernels::winograd;
    let paths: Vec<&str> = if *device == Device::flex() && !a.sd_paths.is_empty() {
        a.sd_paths.iter().map(String::as_str).collect()
    } else {
        vec![""]
    };
    // One path for what follows: the kernels, and whether their 3×3 layers use Winograd.
    let use_path = |p: &str| {
        cpu_forward::choose(match p {
            "own" | "own-im2col" => Some(true),
            "burn" => Some(false),
            _ => None,
        });
        winograd::enable(p != "own-im2col");
    };
    let label = |p: &str| match p {
        "" => String::new(),
        "own" => " [own kernels]".to_string(),
        "own-im2col" => " [own kernels, im2col 3×3]".to_string(),
        _ => " [burn]".to_string(),
    };
    let mut time = |what: String, run: &mut dyn FnMut() -> usize| {
        let mut secs = vec![Vec::new(); paths.len()];
        for i in 0..a.repeats + 1 {
            for (k, &p) in paths.iter().enumerate() {
                use_path(p);
                let t = Instant::now();
                std::hint::black_box(run());
                if i > 0 {
                    secs[k].push(t.elapsed().as_secs_f64());
                }
            }
        }
        use_path("");
        crate::kernels::profile::report(&what);
        for (k, &p) in paths.iter().enumerate() {
            row(format!("{what}{}", label(p)), std::mem::take(&mut secs[k]));
        }
    };
    let ids = vec![sd.tokenizer.encode(""), sd.tokenizer.encode("a photo of sks")];
    let text = sd.text_encoder()?;
    let context = text.forward(&ids);
    time("SD text encoder, 2 prompts".into(), &mut || text.forward(&ids).into_data().bytes().len());
    let mut rng = Rng::new(1);
    let img = Tensor::<4>::from_data(TensorData::new(rng.normals(3 * size * size), [1, 3, size, size]), device);
    time(format!("SD VAE encode {size}²"), &mut || sync(sd.vae.encode_mean(img.clone())));
    let z = Tensor::<4>::from_data(TensorData::new(rng.normals(c * lat * lat), [1, c, lat, lat]), device);
    time(format!("SD VAE decode {size}²"), &mut || sync(sd.vae.decode(z.clone())));
    let cin = sd.unet.in_channels;
    let x1 = Tensor::<4>::from_data(TensorData::new(rng.normals(cin * lat * lat), [1, cin, lat, lat]), device);
    let ctx1 = context.clone().narrow(0, 1, 1);
    time(format!("SD UNet step {size}², batch 1"), &mut || sync(sd.unet.forward(x1.clone(), &[500.0], &ctx1)));
    let x2 = Tensor::cat(vec![x1.clone(), x1.clone()], 0);
    time(format!("SD UNet step {size}², guided pair (batch 2)"), &mut || {
        sync(sd.unet.forward(x2.clone(), &[500.0, 500.0], &context))
    });
    // One whole fill, measured once (it is long on a CPU).
    let steps = a.sd_steps;
    let canvas = RgbF::from_fn(size, size, |x, y| [x as f32 / size as f32, y as f32 / size as f32, 0.5]);
    let mut hole = Mask::new(size, size, 0.0);
    for y in size / 4..size * 3 / 4 {
        for x in size / 4..size * 3 / 4 {
            hole.set(x, y, 1.0);
        }
    }
    let o = InpaintOptions {
        prompt: String::new(),
        negative_prompt: String::new(),
        guidance: crate::settings::defaults::GUIDANCE,
        steps,
        sampler: crate::settings::defaults::SD_SAMPLER,
        seed: 0,
        initial_noise: None,
        low_memory: false,
    };
    let (mw, mh) = model_size(&sd, size, size);
    for &p in &paths {
        use_path(p);
        let t = Instant::now();
        inpaint(&sd, &canvas, &hole, &o, &mut |_, _, _| {}, &|| false)?;
        row(
            format!("SD fill at the model's {mw}×{mh}, {steps} guided {:?} steps (one run){}", o.sampler, label(p)),
            vec![t.elapsed().as_secs_f64()],
        );
    }
    use_path("");
    drop(sd);
    eprintln!("peak resident memory after the fill: {:.0} MiB", peak_rss_mib());
    if a.sd_no_learning {
        return Ok(());
    }
    bench_sd_learning(device, dir, dtype, size, mw, a, &mut row)
}

/// One LoRA learning step (RealFill's recipe) at the model's size `mw`, batch 1: the model on
/// the autodiff device, base frozen, rank-8 adapters; the first step is the warm-up.
fn bench_sd_learning(
    device: &Device,
    dir: &std::path::Path,
    dtype: burn::tensor::DType,
    size: usize,
    mw: usize,
    a: &BenchArgs,
    row: &mut dyn FnMut(String, Vec<f64>),
) -> Result<()> {
    use crate::diffusion::sd::StableDiffusion;
    use crate::diffusion::sd::lora_train::{LearnImage, Learner, LoraLearnSettings, make_batch, step};
    let ad = device.clone().autodiff();
    let mut sd = StableDiffusion::load(dir, &ad, dtype)?;
    crate::diffusion::sd::lora::freeze_base(&mut sd);
    crate::diffusion::sd::lora::init(&mut sd, 8, 8.0, 0);
    let ls = LoraLearnSettings { batch: 1, ..LoraLearnSettings::quality() };
    let canvas = RgbF::from_fn(size, size, |x, y| [x as f32 / size as f32, y as f32 / size as f32, 0.5]);
    let images = vec![LearnImage { rgb: canvas, known: Mask::new(size, size, 1.0) }];
    let mut learner = Learner::new(ls.lr_unet, ls.lr_text);
    learner.whole_graph = a.sd_whole_graph;
    let mut rng = Rng::new(2);
    let mut secs = Vec::new();
    for i in 0..a.repeats.min(2) + 1 {
        let batch = make_batch(&sd, &images, &ls, mw, &mut rng);
        let t = Instant::now();
        let loss = step(&mut sd, &mut learner, &batch)?;
        eprintln!("LoRA learning step {i}: {:.1} s (loss {loss})", t.elapsed().as_secs_f64());
        if i > 0 {
            secs.push(t.elapsed().as_secs_f64());
        }
    }
    let how = if a.sd_whole_graph { "whole graph" } else { "UNet in pieces" };
    row(format!("SD LoRA learning step {mw}², batch 1 (rank 8, {how})"), secs);
    eprintln!("peak resident memory: {:.0} MiB", peak_rss_mib());
    Ok(())
}

pub fn run(a: &BenchArgs) -> Result<()> {
    a.validate()?;
    let mut backends: Vec<(Device, String)> =
        vec![(Device::flex(), format!("cpu-flex ({} thr)", device::cpu_threads()))];
    let gpus: Vec<_> = device::adapters();
    let want_wgpu = match a.backend {
        BackendChoice::Cpu | BackendChoice::Remote(_) => false,
        BackendChoice::Wgpu => true,
        BackendChoice::Auto => gpus.iter().any(|g| g.is_real_gpu),
    };
    if a.backend == BackendChoice::Wgpu {
        backends.clear();
    }
    if let BackendChoice::Remote(_) = &a.backend {
        let choice = a.backend.clone().with_token(a.token_file.as_deref())?;
        let (d, desc, _) = device::pick(&choice).map_err(Error::Server)?;
        eprintln!("remote device: {desc}");
        backends.push((d, "remote".into()));
    }
    if want_wgpu {
        let (d, desc, warn) = device::pick_local(&BackendChoice::Wgpu);
        match warn {
            Some(w) => eprintln!("wgpu skipped: {w}"),
            None => {
                eprintln!("wgpu device: {desc}");
                backends.push((d, "wgpu".into()));
            }
        }
    }
    let mut rows = Vec::new();
    let mut large_peak = None;
    for (d, name) in &backends {
        eprintln!("measuring {name} …");
        bench_round_trip(d, name, a, &mut rows);
        if a.sd_model.is_some() {
            bench_sd(d, name, a, &mut rows)?;
            continue;
        }
        // First, so that the peak memory after it is the large fill's own.
        if a.photo_mp > 0.0 && large_peak.is_none() {
            large_peak = Some(bench_large_photo(d, name, a, &mut rows)?);
        }
        bench_patch(d, name, a, &mut rows)?;
        bench_backend(d, name, a, &mut rows)?;
    }
    let (peak, cpu) = cpu_peak_gflops();
    println!("machine: {cpu}; fp32 peak ≈ {peak:.0} GFLOP/s");
    if let Some(m) = measured_fma_gflops() {
        println!("measured FMA throughput, all threads: {m:.0} GFLOP/s ({:.0}% of the nominal peak)", 100.0 * m / peak);
    }
    println!("{:<18} {:<58} {:>11} {:>9} {:>9} {:>7}", "backend", "what", "median ms", "GFLOP", "GFLOP/s", "%peak");
    for r in &rows {
        let gps = r.gflop / (r.ms / 1e3);
        let pct = if r.backend.starts_with("cpu") { format!("{:.1}", 100.0 * gps / peak) } else { "-".into() };
        println!(
            "{:<18} {:<58} {:>11.1} {:>9} {:>9} {:>7}",
            r.backend,
            r.what,
            r.ms,
            if r.gflop.is_nan() { "-".into() } else { format!("{:.2}", r.gflop) },
            if gps.is_nan() { "-".into() } else { format!("{gps:.1}") },
            if r.gflop.is_nan() { "-".into() } else { pct }
        );
    }
    if let Some(m) = large_peak {
        println!("peak resident memory after the {} MP photo's fill: {m:.0} MiB", a.photo_mp);
    }
    println!("peak resident memory: {:.0} MiB", peak_rss_mib());
    Ok(())
}
