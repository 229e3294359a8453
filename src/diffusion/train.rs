//! Learning the scene (RealFill recipe, from scratch): random crops of the references and of
//! the target's known part (resize jitter, flips), random rectangle masks, loss only on
//! pixels known in the source image, Adam with warm-up and cosine decay.

use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;

use super::masks::random_mask;
use super::schedule::Schedule;
use super::unet::{IN_CHANNELS, TIME_FEATURES, UNet, time_features};
use crate::align::Guide;
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::scene::pushpull::prior;
use crate::scene::{Mask, RgbF};

/// One image the model learns from, with the other images warped into its frame.
#[derive(Clone, Debug)]
pub struct TrainingSource {
    pub image: RgbF,
    /// 1 = pixel is known (loss is taken only there).
    pub known: Mask,
    pub guide: Guide,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LearnSettings {
    pub steps: usize,
    pub batch: usize,
    pub crop: usize,
    pub lr: f64,
    pub seed: u64,
}

impl Default for LearnSettings {
    fn default() -> Self {
        use crate::settings::defaults;
        LearnSettings { steps: defaults::LEARN_STEPS, batch: defaults::BATCH, crop: defaults::CROP, lr: 1e-3, seed: 0 }
    }
}

/// Learning-rate at `step`: linear warm-up over 5% of the run, then cosine decay to 10%.
pub fn lr_at(s: &LearnSettings, step: usize) -> f64 {
    let warm = (s.steps / 20).max(1);
    if step < warm {
        return s.lr * (step + 1) as f64 / warm as f64;
    }
    let p = (step - warm) as f64 / (s.steps - warm).max(1) as f64;
    s.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()))
}

/// A training batch on the CPU, ready to upload.
pub struct Batch {
    pub input: Vec<f32>,
    pub residual: Vec<f32>,
    pub weight: Vec<f32>,
    pub time: Vec<f32>,
    pub size: usize,
    pub batch: usize,
}

/// Draw one batch: for each item a source, a jittered crop, a random mask and a timestep.
pub fn make_batch(sources: &[TrainingSource], schedule: &Schedule, batch: usize, crop: usize, rng: &mut Rng) -> Batch {
    let px = crop * crop;
    let mut input = vec![0.0f32; batch * IN_CHANNELS * px];
    let mut residual = vec![0.0f32; batch * 3 * px];
    let mut weight = vec![0.0f32; batch * 3 * px];
    let mut ts = Vec::with_capacity(batch);
    for b in 0..batch {
        let src = &sources[rng.range_usize(0, sources.len() - 1)];
        let (w, h) = (src.image.width as f32, src.image.height as f32);
        // Resize jitter: the crop window covers 0.75–1.33× the crop size in source pixels.
        let side = (crop as f32 * rng.range_f32(0.75, 1.33)).min(w.min(h));
        let step = side / crop as f32;
        let x0 = rng.range_f32(0.0, (w - side).max(0.0));
        let y0 = rng.range_f32(0.0, (h - side).max(0.0));
        let flip = rng.chance(0.5);
        // Misregistration jitter, so the model learns to correct small alignment errors.
        let (gdx, gdy) = (rng.range_f32(-1.5, 1.5), rng.range_f32(-1.5, 1.5));
        let drop_guide = rng.chance(0.15);
        let mask = random_mask(crop, rng);
        let t = rng.range_usize(0, schedule.len() - 1);
        ts.push(t);
        let (a, s) = schedule.coeffs(t);
        let base_in = b * IN_CHANNELS * px;
        let base_out = b * 3 * px;
        // First pass: sample the crop (image, known, fill mask, reference guide).
        let mut rgb_c = RgbF::new(crop, crop);
        let mut known_c = vec![0.0f32; px];
        let mut fill_c = vec![0.0f32; px];
        let mut guide_c = RgbF::new(crop, crop);
        let mut gvalid_c = Mask::new(crop, crop, 0.0);
        for yy in 0..crop {
            for xx in 0..crop {
                let cx = if flip { crop - 1 - xx } else { xx };
                let u = x0 + (cx as f32 + 0.5) * step - 0.5;
                let v = y0 + (yy as f32 + 0.5) * step - 0.5;
                let p = yy * crop + xx;
                rgb_c.set(xx, yy, src.image.sample(u, v));
                let ki =
                    (v.round().clamp(0.0, h - 1.0) as usize) * src.image.width + u.round().clamp(0.0, w - 1.0) as usize;
                known_c[p] = src.known.data[ki];
                fill_c[p] = mask[p].max(1.0 - known_c[p]);
                let (gu, gv) = (u + gdx, v + gdy);
                let gi = (gv.round().clamp(0.0, h - 1.0) as usize) * src.image.width
                    + gu.round().clamp(0.0, w - 1.0) as usize;
                gvalid_c.data[p] = if drop_guide { 0.0 } else { src.guide.valid.data[gi] };
                guide_c.set(xx, yy, src.guide.rgb.sample(gu, gv));
            }
        }
        // The prior the model corrects, built exactly as at fill time (see `prior`).
        let full = prior(&rgb_c, &fill_c, &guide_c, &gvalid_c);
        for p in 0..px {
            let m = fill_c[p];
            input[base_in + 3 * px + p] = m;
            input[base_in + 10 * px + p] = gvalid_c.data[p];
            for k in 0..3 {
                let x0v = rgb_c.data[3 * p + k] * 2.0 - 1.0;
                let gk = full.data[3 * p + k] * 2.0 - 1.0;
                let eps = rng.normal();
                input[base_in + k * px + p] = a * x0v + s * eps;
                input[base_in + (4 + k) * px + p] = (1.0 - m) * x0v;
                input[base_in + (7 + k) * px + p] = gk;
                // Residual target: what the prior gets wrong.
                residual[base_out + k * px + p] = x0v - gk;
                weight[base_out + k * px + p] = known_c[p];
            }
        }
    }
    Batch { input, residual, weight, time: time_features(&ts), size: crop, batch }
}

/// Train `model` (on an autodiff device) on `sources`. `on_step(step, total, loss)` is called
/// after each step; `cancelled` is checked before each.
pub fn learn(
    mut model: UNet,
    sources: &[TrainingSource],
    settings: &LearnSettings,
    device: &Device,
    on_step: &mut dyn FnMut(usize, usize, f32),
    cancelled: &dyn Fn() -> bool,
) -> Result<UNet> {
    if sources.is_empty() {
        return Err(Error::Invalid("nothing to learn from".into()));
    }
    if super::cpu_unet::serves(device) {
        return learn_cpu(model, sources, settings, on_step, cancelled);
    }
    let schedule = Schedule::default();
    let mut rng = Rng::new(settings.seed ^ 0x5EED);
    let mut optim =
        AdamConfig::new().with_grad_clipping(Some(burn::grad_clipping::GradientClippingConfig::Norm(1.0))).init();
    for step in 0..settings.steps {
        if cancelled() {
            return Err(Error::Cancelled);
        }
        let b = make_batch(sources, &schedule, settings.batch, settings.crop, &mut rng);
        let (n, c) = (b.batch, b.size);
        let x = Tensor::<4>::from_data(TensorData::new(b.input, [n, IN_CHANNELS, c, c]), device);
        let tv = Tensor::<4>::from_data(TensorData::new(b.residual, [n, 3, c, c]), device);
        let w = Tensor::<4>::from_data(TensorData::new(b.weight, [n, 3, c, c]), device);
        let t = Tensor::<2>::from_data(TensorData::new(b.time, [n, TIME_FEATURES]), device);
        let pred = model.forward(x, t);
        let diff = pred - tv;
        let wsum = w.clone().sum().add_scalar(1e-6);
        let loss = (diff.clone() * diff * w).sum().div(wsum);
        let loss_value: f32 = loss.clone().into_scalar();
        if !loss_value.is_finite() {
            return Err(Error::Engine(format!("learning diverged at step {step} (loss {loss_value})")));
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(lr_at(settings, step), model, grads);
        on_step(step + 1, settings.steps, loss_value);
    }
    Ok(model)
}

/// `learn` on the CPU backend: the same batches, loss and optimiser on the hand-written
/// network (`cpu_unet`, faster than burn's CPU path: docs/BENCHMARKS.md), weights handed
/// back to burn.
fn learn_cpu(
    model: UNet,
    sources: &[TrainingSource],
    settings: &LearnSettings,
    on_step: &mut dyn FnMut(usize, usize, f32),
    cancelled: &dyn Fn() -> bool,
) -> Result<UNet> {
    use super::cpu_unet::{Learner, load_params, params_of, spec_of};
    let schedule = Schedule::default();
    let mut rng = Rng::new(settings.seed ^ 0x5EED);
    let params = params_of(&model)?;
    let mut learner = Learner::new(&spec_of(&params), params);
    for step in 0..settings.steps {
        if cancelled() {
            return Err(Error::Cancelled);
        }
        let b = make_batch(sources, &schedule, settings.batch, settings.crop, &mut rng);
        let loss =
            learner.step(&b.input, &b.time, &b.residual, &b.weight, b.batch, b.size, b.size, lr_at(settings, step));
        if !loss.is_finite() {
            return Err(Error::Engine(format!("learning diverged at step {step} (loss {loss})")));
        }
        on_step(step + 1, settings.steps, loss);
    }
    load_params(model, &learner.params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::unet::UNetSpec;

    fn tiny_source(seed: u64) -> TrainingSource {
        let mut r = Rng::new(seed);
        let (w, h) = (48, 40);
        let image = RgbF::from_fn(w, h, |x, y| {
            let c = ((x / 8 + y / 8) % 2) as f32;
            [0.2 + 0.6 * c, 0.5, 0.8 - 0.6 * c]
        });
        let _ = r.uniform();
        // No guide: the model has to learn the image itself.
        TrainingSource { image, known: Mask::new(w, h, 1.0), guide: Guide::empty(w, h) }
    }

    #[test]
    fn batch_layout_and_weights() {
        let src = vec![tiny_source(1)];
        let mut rng = Rng::new(2);
        let b = make_batch(&src, &Schedule::default(), 3, 16, &mut rng);
        assert_eq!(b.input.len(), 3 * IN_CHANNELS * 256);
        assert_eq!(b.residual.len(), 3 * 3 * 256);
        assert!(b.weight.iter().all(|&w| w == 1.0));
        assert_eq!(b.time.len(), 3 * TIME_FEATURES);
    }

    #[test]
    fn unknown_pixels_get_no_loss() {
        let mut s = tiny_source(1);
        for y in 0..40 {
            for x in 0..24 {
                s.known.set(x, y, 0.0);
            }
        }
        let mut rng = Rng::new(4);
        let b = make_batch(&[s], &Schedule::default(), 4, 16, &mut rng);
        let zero = b.weight.iter().filter(|&&w| w == 0.0).count();
        assert!(zero > 0, "some crop pixels fall on the unknown half");
        // wherever weight is 0 the mask channel says "fill"
        for bi in 0..4 {
            for p in 0..256 {
                if b.weight[bi * 768 + p] == 0.0 {
                    assert_eq!(b.input[bi * IN_CHANNELS * 256 + 3 * 256 + p], 1.0);
                    assert_eq!(b.input[bi * IN_CHANNELS * 256 + 4 * 256 + p], 0.0);
                }
            }
        }
    }

    #[test]
    fn loss_decreases_on_a_tiny_scene() {
        let device = Device::flex().autodiff();
        let spec = UNetSpec { channels: vec![16, 32], emb_dim: 32 };
        let model = UNet::new(&spec, &device);
        let settings = LearnSettings { steps: 60, batch: 4, crop: 16, lr: 2e-3, seed: 1 };
        let mut losses = Vec::new();
        learn(model, &[tiny_source(3)], &settings, &device, &mut |_, _, l| losses.push(l), &|| false).unwrap();
        let first: f32 = losses[..10].iter().sum::<f32>() / 10.0;
        let last: f32 = losses[50..].iter().sum::<f32>() / 10.0;
        assert!(last < 0.7 * first, "loss {first} -> {last}");
    }

    #[test]
    fn cancel_stops_learning_before_the_next_step() {
        let device = Device::flex().autodiff();
        let spec = UNetSpec { channels: vec![8, 16], emb_dim: 16 };
        let model = UNet::new(&spec, &device);
        let settings = LearnSettings { steps: 50, batch: 2, crop: 16, lr: 1e-3, seed: 1 };
        let count = std::cell::Cell::new(0);
        let r = learn(model, &[tiny_source(3)], &settings, &device, &mut |s, _, _| count.set(s), &|| count.get() >= 2);
        assert!(matches!(r, Err(Error::Cancelled)));
        assert_eq!(count.get(), 2);
    }
}
