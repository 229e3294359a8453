//! One LoRA learning step of Stable Diffusion inpainting, as RealFill trains it (and diffusers'
//! RealFill example): the images' latent means, a training mask per image, the masked image's
//! latent, noise at random timesteps; the UNet's noise (or v) prediction against the truth,
//! squared error weighted per latent pixel (zero on the target's unknown pixels: the loss is
//! taken only on what is known), averaged; AdamW on the adapters only — the UNet's at one
//! learning rate, the text encoder's at another.

use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;

use super::StableDiffusion;
use super::scheduler::Prediction;
use crate::error::{Error, Result};

/// A batch at pixel resolution (B × H × W, sides divisible by the model's stride).
pub struct TrainBatch {
    pub b: usize,
    pub h: usize,
    pub w: usize,
    /// [B, 3, H, W] in [−1, 1].
    pub images: Vec<f32>,
    /// [B, 1, H, W], 1 = the part the model must fill.
    pub masks: Vec<f32>,
    /// [B, 1, H, W] loss weight (0 where the target is not known).
    pub weights: Vec<f32>,
    /// [B, C, H/f, W/f] the noise added to the latents.
    pub noise: Vec<f32>,
    pub timesteps: Vec<usize>,
    /// B rows of token ids (the prompt, or the empty prompt for dropout).
    pub ids: Vec<Vec<i64>>,
}

pub struct Learner {
    unet_opt: ModuleOptimizer,
    text_opt: ModuleOptimizer,
    pub lr_unet: f64,
    pub lr_text: f64,
}

impl Learner {
    /// PyTorch's AdamW defaults (β 0.9/0.999, ε 1e-8, weight decay 1e-2), as the RealFill
    /// script uses them.
    pub fn new(lr_unet: f64, lr_text: f64) -> Learner {
        let cfg = AdamWConfig::new().with_epsilon(1e-8).with_weight_decay(1e-2);
        Learner { unet_opt: cfg.init(), text_opt: cfg.init(), lr_unet, lr_text }
    }
}

fn values(t: Tensor<4>) -> Result<Vec<f32>> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().map_err(|e| Error::Engine(format!("{e:?}")))
}

/// Nearest-neighbour downsampling of [B, 1, H, W] by `f` (torch's `interpolate`, top-left).
fn nearest(v: &[f32], b: usize, h: usize, w: usize, f: usize) -> Vec<f32> {
    let (lh, lw) = (h / f, w / f);
    (0..b * lh * lw)
        .map(|i| {
            let (n, y, x) = (i / (lh * lw), (i / lw) % lh, i % lw);
            v[n * h * w + y * f * w + x * f]
        })
        .collect()
}

/// One step on `sd` (loaded on an autodiff device, base layers frozen, adapters trainable);
/// returns the loss before the update.
pub fn step(sd: &mut StableDiffusion, learner: &mut Learner, batch: &TrainBatch) -> Result<f32> {
    let device = sd.device.clone();
    let (b, h, w) = (batch.b, batch.h, batch.w);
    let f = sd.vae_config.factor();
    let (lh, lw) = (h / f, w / f);
    let c = sd.vae_config.latent_channels;
    let scaling = sd.vae_config.scaling_factor as f32;
    let img = |v: Vec<f32>| Tensor::<4>::from_data(TensorData::new(v, [b, 3, h, w]), &device);
    let latents: Vec<f32> =
        values(sd.vae.encode_mean(img(batch.images.clone())))?.iter().map(|v| v * scaling).collect();
    let masked: Vec<f32> = batch
        .images
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let (n, p) = (i / (3 * h * w), i % (h * w));
            if batch.masks[n * h * w + p] >= 0.5 { 0.0 } else { *v }
        })
        .collect();
    let masked_latents: Vec<f32> = values(sd.vae.encode_mean(img(masked)))?.iter().map(|v| v * scaling).collect();
    let per = c * lh * lw;
    let mut noisy = Vec::with_capacity(b * per);
    let mut target = Vec::with_capacity(b * per);
    for n in 0..b {
        let (x0, eps) = (&latents[n * per..(n + 1) * per], &batch.noise[n * per..(n + 1) * per]);
        let t = batch.timesteps[n];
        noisy.extend(sd.scheduler.add_noise(x0, eps, t));
        match sd.scheduler.prediction {
            Prediction::Epsilon => target.extend_from_slice(eps),
            Prediction::V => {
                let a = sd.scheduler.alphas_cumprod[t];
                let (sa, sb) = (a.sqrt() as f32, (1.0 - a).sqrt() as f32);
                target.extend(eps.iter().zip(x0).map(|(e, x)| sa * e - sb * x));
            }
        }
    }
    let lat = |v: Vec<f32>, ch: usize| Tensor::<4>::from_data(TensorData::new(v, [b, ch, lh, lw]), &device);
    let input = Tensor::cat(vec![lat(noisy, c), lat(nearest(&batch.masks, b, h, w, f), 1), lat(masked_latents, c)], 1);
    let weights = lat(nearest(&batch.weights, b, h, w, f), 1);
    let context = sd.text.forward(&batch.ids);
    let ts: Vec<f32> = batch.timesteps.iter().map(|&t| t as f32).collect();
    let pred = sd.unet.forward(input, &ts, &context);
    let diff = pred - lat(target, c);
    let loss = (diff.clone() * diff * weights).mean();
    let value: f32 = loss.clone().into_scalar();
    if !value.is_finite() {
        return Err(Error::Engine(format!("LoRA learning diverged (loss {value})")));
    }
    let mut grads = loss.backward();
    let gu = GradientsParams::from_module(&mut grads, &sd.unet);
    let gt = GradientsParams::from_module(&mut grads, &sd.text);
    sd.unet = learner.unet_opt.step(learner.lr_unet, sd.unet.clone(), gu);
    sd.text = learner.text_opt.step(learner.lr_text, sd.text.clone(), gt);
    Ok(value)
}
