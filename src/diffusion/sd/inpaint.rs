//! Stable Diffusion inpainting as diffusers' `StableDiffusionInpaintPipeline` runs it with the
//! 9-channel UNet: the masked image (hole set to grey) encoded to its latent mean and scaled,
//! the mask taken to the latent grid by nearest-neighbour, classifier-free guidance on the
//! empty (negative) prompt, DDIM or DDPM on the folder's schedule, the final latent decoded.
//! The canvas is sampled at the model's own resolution (its config's sample size; 512 px for
//! SD-2) and the result scaled back to the working size. Each step's clean-latent estimate is
//! shown through a linear latent → colour map fitted on this image's own latent (no decoder
//! pass per step; the final latent is decoded exactly). The masked image's latent is the
//! distribution's mean where diffusers draws a sample (deterministic; the check against
//! diffusers makes its pipeline take the mean too).

use burn::prelude::*;

use super::StableDiffusion;
use super::vae::Tiling;
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::scene::{Mask, RgbF};
use crate::settings::SamplerKind;

/// What a fill asks of the model.
#[derive(Clone, Debug)]
pub struct InpaintOptions {
    pub prompt: String,
    pub negative_prompt: String,
    /// Classifier-free guidance scale; ≤ 1 runs the prompt alone (one UNet pass per step).
    pub guidance: f32,
    pub steps: usize,
    pub sampler: SamplerKind,
    pub seed: u64,
    /// The starting latent instead of one drawn from `seed` (the check against diffusers).
    pub initial_noise: Option<Vec<f32>>,
    /// Memory is short: the VAE encodes and decodes in tiles (`vae_tiling`).
    pub low_memory: bool,
}

/// How the VAE runs over a `w`×`h` image: in tiles when memory is short (2×2 tiles at the
/// model's own size, a quarter of it shared, so a tile's activations are under half the whole
/// image's) or when the image is larger than the model's own size (tiles of that size, a
/// quarter shared, as diffusers' `enable_tiling`); else whole.
pub fn vae_tiling(sd: &StableDiffusion, w: usize, h: usize, low_memory: bool) -> Option<Tiling> {
    let f = sd.vae_config.factor();
    let native = sd.unet_config.sample_size.unwrap_or(64);
    if low_memory {
        Some(Tiling { tile: (native * 5 / 8).max(1), overlap: native / 4 })
    } else if w.max(h) > native * f {
        Some(Tiling { tile: native, overlap: native / 4 })
    } else {
        None
    }
}

/// The size the model samples a `w`×`h` canvas at: long side at the model's native size,
/// each side a multiple of the model's stride.
pub fn model_size(sd: &StableDiffusion, w: usize, h: usize) -> (usize, usize) {
    let stride = sd.pixel_stride();
    let native = sd.unet_config.sample_size.unwrap_or(64) * sd.vae_config.factor();
    let long = native.max(stride);
    let scale = long as f64 / w.max(h) as f64;
    let side = |v: usize| (((v as f64 * scale) / stride as f64).round() as usize).max(1) * stride;
    (side(w), side(h))
}

/// The token rows a fill encodes: the negative prompt when guided, then the prompt.
pub fn prompt_ids(sd: &StableDiffusion, o: &InpaintOptions) -> Vec<Vec<i64>> {
    let mut ids = Vec::new();
    if o.guidance > 1.0 {
        ids.push(sd.tokenizer.encode(&o.negative_prompt));
    }
    ids.push(sd.tokenizer.encode(&o.prompt));
    ids
}

fn image_tensor(img: &RgbF, device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(img.to_planar(), [1, 3, img.height, img.width]), device)
}

fn values(t: Tensor<4>) -> Result<Vec<f32>> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().map_err(|e| Error::Engine(format!("{e:?}")))
}

/// Least-squares map from a latent pixel (plus 1) to the mean colour of the image block it
/// encodes: [c+1][3].
fn fit_preview_map(latent: &[f32], c: usize, lw: usize, lh: usize, img: &RgbF) -> Vec<[f32; 3]> {
    let f = img.width / lw;
    let n = c + 1;
    let mut ata = vec![0f64; n * n];
    let mut atb = vec![[0f64; 3]; n];
    for y in 0..lh {
        for x in 0..lw {
            let mut feat: Vec<f64> = (0..c).map(|k| latent[k * lw * lh + y * lw + x] as f64).collect();
            feat.push(1.0);
            let mut rgb = [0f64; 3];
            for yy in 0..f {
                for xx in 0..f {
                    let p = img.get(x * f + xx, y * f + yy);
                    for k in 0..3 {
                        rgb[k] += p[k] as f64 * 2.0 - 1.0;
                    }
                }
            }
            for i in 0..n {
                for j in 0..n {
                    ata[i * n + j] += feat[i] * feat[j];
                }
                for k in 0..3 {
                    atb[i][k] += feat[i] * rgb[k] / (f * f) as f64;
                }
            }
        }
    }
    // Ridge term: a flat image still gives a usable (constant) map.
    for i in 0..n {
        ata[i * n + i] += 1e-3;
    }
    let solve = |k: usize| -> Vec<f64> {
        let mut a = ata.clone();
        let mut b: Vec<f64> = atb.iter().map(|r| r[k]).collect();
        for col in 0..n {
            let piv = (col..n).max_by(|&i, &j| a[i * n + col].abs().total_cmp(&a[j * n + col].abs())).unwrap();
            for j in 0..n {
                a.swap(col * n + j, piv * n + j);
            }
            b.swap(col, piv);
            let d = a[col * n + col];
            for r in 0..n {
                if r != col {
                    let m = a[r * n + col] / d;
                    for j in 0..n {
                        a[r * n + j] -= m * a[col * n + j];
                    }
                    b[r] -= m * b[col];
                }
            }
        }
        (0..n).map(|i| b[i] / a[i * n + i]).collect()
    };
    let cols: Vec<Vec<f64>> = (0..3).map(solve).collect();
    (0..n).map(|i| [cols[0][i] as f32, cols[1][i] as f32, cols[2][i] as f32]).collect()
}

fn preview(map: &[[f32; 3]], latent: &[f32], c: usize, lw: usize, lh: usize) -> RgbF {
    let hw = lw * lh;
    RgbF::from_fn(lw, lh, |x, y| {
        let mut rgb = map[c];
        for k in 0..c {
            let v = latent[k * hw + y * lw + x];
            for j in 0..3 {
                rgb[j] += map[k][j] * v;
            }
        }
        rgb.map(|v| ((v + 1.0) * 0.5).clamp(0.0, 1.0))
    })
}

/// Fills `fill` (1 = fill) of `canvas`; returns the model's image at the canvas size (every
/// pixel, known ones included, as the model made them). `on_step(step, total, preview)`.
pub fn inpaint(
    sd: &StableDiffusion,
    canvas: &RgbF,
    fill: &Mask,
    o: &InpaintOptions,
    on_step: &mut dyn FnMut(usize, usize, RgbF),
    cancelled: &dyn Fn() -> bool,
) -> Result<RgbF> {
    let device = &sd.device;
    let (w, h) = model_size(sd, canvas.width, canvas.height);
    let f = sd.vae_config.factor();
    let (lw, lh) = (w / f, h / f);
    let c = sd.vae_config.latent_channels;
    let scaling = sd.vae_config.scaling_factor as f32;
    let shift = sd.vae_config.shift_factor.unwrap_or(0.0) as f32;
    let image = canvas.resized(w, h);
    let mask = fill.resized_cover(w, h);
    // diffusers: masked_image = image · (mask < 0.5), in [−1, 1] (the hole becomes 0, grey).
    let mut masked = image.clone();
    for (i, px) in masked.data.chunks_exact_mut(3).enumerate() {
        if mask.data[i] >= 0.5 {
            px.copy_from_slice(&[0.5; 3]);
        }
    }
    let tiling = vae_tiling(sd, w, h, o.low_memory);
    let masked_t = image_tensor(&masked, device);
    let masked_mean = values(match tiling {
        Some(t) => sd.vae.encode_mean_tiled(masked_t, f, t)?,
        None => sd.vae.encode_mean(masked_t),
    })?;
    let map = fit_preview_map(&masked_mean, c, lw, lh, &masked);
    let masked_latent: Vec<f32> = masked_mean.iter().map(|v| (v - shift) * scaling).collect();
    // The mask on the latent grid: nearest-neighbour, as torch's interpolate picks (top-left).
    let latent_mask: Vec<f32> = (0..lh * lw).map(|i| mask.get((i % lw) * f, (i / lw) * f)).collect();

    let guided = o.guidance > 1.0;
    let ids = prompt_ids(sd, o);
    let context = sd.context(&ids)?;
    let batch = ids.len();
    let cond_part = |v: &[f32]| -> Tensor<4> {
        let one = Tensor::<4>::from_data(TensorData::new(v.to_vec(), [1, v.len() / (lw * lh), lh, lw]), device);
        if batch == 1 { one } else { Tensor::cat(vec![one.clone(), one], 0) }
    };
    let mask_t = cond_part(&latent_mask);
    let masked_t = cond_part(&masked_latent);

    let mut rng = Rng::new(o.seed);
    let mut x = match &o.initial_noise {
        Some(v) if v.len() == c * lw * lh => v.clone(),
        Some(_) => return Err(Error::Invalid("initial noise of the wrong size".into())),
        None => rng.normals(c * lw * lh),
    };
    // DPM-Solver and Euler-ancestral run on their own timesteps and noise levels (σ, and 0
    // after the last); Euler's initial noise is its own σ's (diffusers' `init_noise_sigma`).
    let plan: Option<(Vec<f32>, Vec<f64>)> = match o.sampler {
        SamplerKind::DpmSolver | SamplerKind::DpmSolverKarras => {
            let (ts, sigmas) = sd.scheduler.dpm_plan(o.steps, o.sampler == SamplerKind::DpmSolverKarras);
            Some((ts.iter().map(|&t| t as f32).collect(), sigmas))
        }
        SamplerKind::EulerAncestral => {
            let (ts, sigmas, init) = sd.scheduler.euler_plan(o.steps);
            // The latent kept variance-preserving: α(σ₀)·init·ε.
            let scale = (crate::diffusion::solver::alpha_sigma(sigmas[0]).0 * init) as f32;
            x.iter_mut().for_each(|v| *v *= scale);
            Some((ts, sigmas))
        }
        SamplerKind::Ddim | SamplerKind::Ddpm => None,
    };
    let mut step = crate::diffusion::solver::stepper(o.sampler);
    let ts: Vec<f32> = match &plan {
        Some((ts, _)) => ts.clone(),
        None => sd.scheduler.timesteps(o.steps).iter().map(|&t| t as f32).collect(),
    };
    let n = ts.len();
    for (i, &t) in ts.iter().enumerate() {
        if cancelled() {
            return Err(Error::Cancelled);
        }
        let xt = cond_part(&x);
        let input = Tensor::cat(vec![xt, mask_t.clone(), masked_t.clone()], 1);
        let out = values(sd.unet.forward(input, &vec![t; batch], &context))?;
        let per = c * lw * lh;
        let eps: Vec<f32> = if guided {
            let (u, cnd) = out.split_at(per);
            u.iter().zip(cnd).map(|(u, c)| u + o.guidance * (c - u)).collect()
        } else {
            out
        };
        let (next, est) = match &plan {
            Some((_, sigmas)) => {
                // (These two step from the clean estimate; the model's output is not read as
                // a noise estimate.)
                let est = sd.scheduler.estimate_at_sigma(&x, &eps, sigmas[i]);
                (step.step(&x, &est, &eps, sigmas[i], sigmas[i + 1], &mut rng), est)
            }
            None => sd.scheduler.step(o.sampler, &x, &eps, t as usize, o.steps, &mut rng),
        };
        x = next;
        if i + 1 < n {
            let unscaled: Vec<f32> = est.iter().map(|v| v / scaling + shift).collect();
            on_step(i + 1, n, preview(&map, &unscaled, c, lw, lh).resized(canvas.width, canvas.height));
        }
    }
    // The last step's sample, as diffusers decodes it.
    let unscaled: Vec<f32> = x.iter().map(|v| v / scaling + shift).collect();
    let z = Tensor::<4>::from_data(TensorData::new(unscaled, [1, c, lh, lw]), device);
    let decoded = values(match tiling {
        Some(t) => sd.vae.decode_tiled(z, f, t)?,
        None => sd.vae.decode(z),
    })?;
    let out = RgbF::from_planar(&decoded, w, h).resized(canvas.width, canvas.height);
    on_step(n, n, out.clone());
    Ok(out)
}
