//! One LoRA learning step of Stable Diffusion inpainting, as RealFill trains it (and diffusers'
//! RealFill example): the images' latent means, a training mask per image, the masked image's
//! latent, noise at random timesteps; the UNet's noise (or v) prediction against the truth,
//! squared error weighted per latent pixel (zero on the target's unknown pixels: the loss is
//! taken only on what is known), averaged; AdamW on the adapters only — the UNet's at one
//! learning rate, the text encoder's at another.

use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::prelude::*;

use super::StableDiffusion;
use super::scheduler::Prediction;
use crate::diffusion::masks::random_mask;
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::scene::{Mask, RgbF};

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
    /// One backward pass through the whole UNet (all its activations held at once) instead of
    /// `UNet::learn_in_pieces`: the same gradients in far more memory. For comparisons only.
    pub whole_graph: bool,
}

impl Learner {
    /// PyTorch's AdamW defaults (β 0.9/0.999, ε 1e-8, weight decay 1e-2), as the RealFill
    /// script uses them.
    pub fn new(lr_unet: f64, lr_text: f64) -> Learner {
        let cfg = AdamWConfig::new().with_epsilon(1e-8).with_weight_decay(1e-2);
        Learner { unet_opt: cfg.init(), text_opt: cfg.init(), lr_unet, lr_text, whole_graph: false }
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
    let (loss, gu, gt) = gradients(sd, batch, 1.0, learner.whole_graph)?;
    apply(sd, learner, gu, gt);
    Ok(loss)
}

/// One step whose batch is run in micro-batches of at most `micro` examples, their gradients
/// summed (each loss weighted by its share of the batch): the same step as `step` in less
/// memory.
pub fn step_micro(sd: &mut StableDiffusion, learner: &mut Learner, batch: &TrainBatch, micro: usize) -> Result<f32> {
    if micro >= batch.b {
        return step(sd, learner, batch);
    }
    let mut acc_u = GradientsAccumulator::new();
    let mut acc_t = GradientsAccumulator::new();
    let mut total = 0.0;
    let (px, lat) = (batch.h * batch.w, batch.noise.len() / batch.b);
    for start in (0..batch.b).step_by(micro.max(1)) {
        let n = micro.min(batch.b - start);
        let part = TrainBatch {
            b: n,
            h: batch.h,
            w: batch.w,
            images: batch.images[3 * px * start..3 * px * (start + n)].to_vec(),
            masks: batch.masks[px * start..px * (start + n)].to_vec(),
            weights: batch.weights[px * start..px * (start + n)].to_vec(),
            noise: batch.noise[lat * start..lat * (start + n)].to_vec(),
            timesteps: batch.timesteps[start..start + n].to_vec(),
            ids: batch.ids[start..start + n].to_vec(),
        };
        let share = n as f32 / batch.b as f32;
        let (loss, gu, gt) = gradients(sd, &part, share, learner.whole_graph)?;
        acc_u.accumulate(&sd.unet, gu);
        acc_t.accumulate(sd.text_encoder()?, gt);
        total += loss * share;
    }
    apply(sd, learner, acc_u.grads(), acc_t.grads());
    Ok(total)
}

fn apply(sd: &mut StableDiffusion, learner: &mut Learner, gu: GradientsParams, gt: GradientsParams) {
    sd.unet = learner.unet_opt.step(learner.lr_unet, sd.unet.clone(), gu);
    // `gradients` has checked the text encoder is held; its new adapters outdate any encoding.
    sd.text = sd.text.take().map(|t| learner.text_opt.step(learner.lr_text, t, gt));
    sd.contexts.clear();
}

/// The loss of `batch` and the adapters' gradients of `weight` × that loss.
fn gradients(
    sd: &mut StableDiffusion,
    batch: &TrainBatch,
    weight: f32,
    whole_graph: bool,
) -> Result<(f32, GradientsParams, GradientsParams)> {
    let device = sd.device.clone();
    let (b, h, w) = (batch.b, batch.h, batch.w);
    let f = sd.vae_config.factor();
    let (lh, lw) = (h / f, w / f);
    let c = sd.vae_config.latent_channels;
    let scaling = sd.vae_config.scaling_factor as f32;
    // The VAE is frozen and only encodes: run without autodiff.
    let vae = sd.vae.valid();
    let img = |v: Vec<f32>| Tensor::<4>::from_data(TensorData::new(v, [b, 3, h, w]), &device).inner();
    let latents: Vec<f32> = values(vae.encode_mean(img(batch.images.clone())))?.iter().map(|v| v * scaling).collect();
    let masked: Vec<f32> = batch
        .images
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let (n, p) = (i / (3 * h * w), i % (h * w));
            if batch.masks[n * h * w + p] >= 0.5 { 0.0 } else { *v }
        })
        .collect();
    let masked_latents: Vec<f32> = values(vae.encode_mean(img(masked)))?.iter().map(|v| v * scaling).collect();
    drop(vae);
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
    let target = lat(target, c);
    let loss = |pred: Tensor<4>| {
        let diff = pred - target;
        (diff.clone() * diff * weights).mean()
    };
    let context = sd.text_encoder()?.forward(&batch.ids);
    let ts: Vec<f32> = batch.timesteps.iter().map(|&t| t as f32).collect();
    let diverged = |value: f32| Error::Engine(format!("LoRA learning diverged (loss {value})"));
    if whole_graph {
        let loss = loss(sd.unet.forward(input, &ts, &context));
        let value: f32 = loss.clone().into_scalar();
        if !value.is_finite() {
            return Err(diverged(value));
        }
        let mut grads = (loss * weight).backward();
        let gu = GradientsParams::from_module(&mut grads, &sd.unet);
        let gt = GradientsParams::from_module(&mut grads, sd.text_encoder()?);
        return Ok((value, gu, gt));
    }
    // The UNet in pieces (its activations one piece at a time), then the text encoder's
    // backward pass from the gradient the UNet gave its output.
    let (value, gu, g_context) = sd.unet.learn_in_pieces(input, &ts, &context, loss, weight);
    if !value.is_finite() {
        return Err(diverged(value));
    }
    let gt = match g_context {
        Some(g) if context.is_tracked() => {
            let g = Tensor::from_inner(g.cast(context.dtype()));
            let mut grads = (context * g).sum().backward();
            GradientsParams::from_module(&mut grads, sd.text_encoder()?)
        }
        _ => GradientsParams::new(),
    };
    Ok((value, gu, gt))
}

/// RealFill's prompt for the learned scene (the token "sks" stands for it).
pub const PROMPT: &str = "a photo of sks";

/// How the scene is learned into the adapters.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoraLearnSettings {
    pub rank: usize,
    pub steps: usize,
    pub batch: usize,
    pub lr_unet: f64,
    pub lr_text: f64,
    /// Share of examples learned with the empty prompt (classifier-free guidance needs both).
    pub prompt_dropout: f32,
    pub seed: u64,
    /// Examples per forward/backward pass (the batch's gradients are summed over them): less
    /// memory, the same step (so not part of the LoRA cache key). 0 = the whole batch at once.
    #[serde(skip)]
    pub micro_batch: usize,
}

impl LoraLearnSettings {
    /// The paper's recipe: rank 8, 2,000 steps of batch 16, lr 2e-4 / 4e-5, 10 % prompt dropout.
    pub fn quality() -> LoraLearnSettings {
        LoraLearnSettings {
            rank: 8,
            steps: 2000,
            batch: 16,
            lr_unet: 2e-4,
            lr_text: 4e-5,
            prompt_dropout: 0.1,
            seed: 0,
            micro_batch: 0,
        }
    }

    /// A run a person can wait for: a tenth of the examples (200 steps of batch 4) at the same
    /// learning rates. Chosen by cost (≈ 1/40 of the paper's); its quality against the full
    /// recipe is not measured yet (it needs the real weights and a GPU: docs/BENCHMARKS.md).
    pub fn quick() -> LoraLearnSettings {
        LoraLearnSettings { steps: 200, batch: 4, ..LoraLearnSettings::quality() }
    }
}

/// One image to learn from: the target (known = its pixels outside the fill region) or a
/// reference (known everywhere).
pub struct LearnImage {
    pub rgb: RgbF,
    /// 1 = known.
    pub known: Mask,
}

/// A random `size`² training example of `img` as RealFill's dataset makes it: the short side
/// resized to between 1 and 1.125 × size, a random crop, a random rectangle mask (joined with
/// the image's unknown pixels, which must never be shown to the model), loss weights 1 on known
/// pixels (0 on a whole latent block if any of its pixels is unknown).
fn example(img: &LearnImage, size: usize, f: usize, rng: &mut Rng) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let short = img.rgb.width.min(img.rgb.height) as f32;
    let scale = size as f32 * rng.range_f32(1.0, 1.125) / short;
    let (w, h) = (
        ((img.rgb.width as f32 * scale).round() as usize).max(size),
        ((img.rgb.height as f32 * scale).round() as usize).max(size),
    );
    let rgb = img.rgb.resized(w, h);
    let known = img.known.resized_soft(w, h);
    let (x0, y0) = (rng.range_usize(0, w - size), rng.range_usize(0, h - size));
    let mut mask = random_mask(size, rng);
    let mut image = vec![0f32; 3 * size * size];
    let mut weight = vec![1f32; size * size];
    for y in 0..size {
        for x in 0..size {
            let p = rgb.get(x0 + x, y0 + y);
            for k in 0..3 {
                image[k * size * size + y * size + x] = p[k] * 2.0 - 1.0;
            }
            if known.get(x0 + x, y0 + y) < 0.999 {
                mask[y * size + x] = 1.0;
                // The whole latent block this pixel falls in carries no loss.
                let (bx, by) = (x / f * f, y / f * f);
                for yy in by..(by + f).min(size) {
                    weight[yy * size + bx..yy * size + (bx + f).min(size)].fill(0.0);
                }
            }
        }
    }
    (image, mask, weight)
}

/// A batch of `n` examples drawn uniformly from `images`, with noise, timesteps and prompts.
pub fn make_batch(
    sd: &StableDiffusion,
    images: &[LearnImage],
    s: &LoraLearnSettings,
    size: usize,
    rng: &mut Rng,
) -> TrainBatch {
    let f = sd.vae_config.factor();
    let c = sd.vae_config.latent_channels;
    let mut b = TrainBatch {
        b: s.batch,
        h: size,
        w: size,
        images: Vec::new(),
        masks: Vec::new(),
        weights: Vec::new(),
        noise: rng.normals(s.batch * c * (size / f) * (size / f)),
        timesteps: Vec::new(),
        ids: Vec::new(),
    };
    for _ in 0..s.batch {
        let img = &images[rng.range_usize(0, images.len() - 1)];
        let (i, m, w) = example(img, size, f, rng);
        b.images.extend(i);
        b.masks.extend(m);
        b.weights.extend(w);
        b.timesteps.push(rng.range_usize(0, sd.scheduler.config.num_train_timesteps - 1));
        let prompt = if rng.chance(s.prompt_dropout) { "" } else { PROMPT };
        b.ids.push(sd.tokenizer.encode(prompt));
    }
    b
}

/// Learns the scene into new adapters on `sd` (loaded on an autodiff device): `s.steps` steps
/// of `s.batch` examples at the model's own resolution. `on_step(step, total, loss)` after each
/// step; `cancelled` is checked before each. The adapters are frozen again at the end.
pub fn learn(
    sd: &mut StableDiffusion,
    images: &[LearnImage],
    s: &LoraLearnSettings,
    on_step: &mut dyn FnMut(usize, usize, f32),
    cancelled: &dyn Fn() -> bool,
) -> Result<()> {
    if images.is_empty() {
        return Err(Error::Invalid("nothing to learn from".into()));
    }
    let (size, _) = super::inpaint::model_size(sd, 1, 1);
    super::lora::freeze_base(sd);
    super::lora::init(sd, s.rank, s.rank as f32, s.seed);
    let mut rng = Rng::new(s.seed ^ 0x10AA);
    let mut learner = Learner::new(s.lr_unet, s.lr_text);
    for i in 0..s.steps {
        if cancelled() {
            return Err(Error::Cancelled);
        }
        let batch = make_batch(sd, images, s, size, &mut rng);
        let micro = if s.micro_batch == 0 { s.batch } else { s.micro_batch };
        let loss = step_micro(sd, &mut learner, &batch, micro)?;
        on_step(i + 1, s.steps, loss);
    }
    super::lora::set_trainable(sd, false);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::sd::lora;
    use burn::tensor::DType;

    fn tiny(device: &Device) -> StableDiffusion {
        tiny_in(device, DType::F32)
    }

    fn tiny_in(device: &Device, dtype: DType) -> StableDiffusion {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd-tiny");
        StableDiffusion::load(&dir, device, dtype).unwrap()
    }

    /// With the base in half precision (as on a GPU) the f32 adapters still learn.
    #[test]
    fn adapters_learn_beside_a_half_precision_base() {
        let (before, after) = loss_before_and_after_learning(DType::F16, 30);
        assert!(after < 0.8 * before, "loss on a fixed batch {before} → {after}");
    }

    /// The loss on a fixed batch of the scene before and after `steps` of learning into rank-4
    /// adapters on the tiny model with its base in `dtype` (measured with a zero learning rate,
    /// which leaves the adapters as they are).
    fn loss_before_and_after_learning(dtype: DType, steps: usize) -> (f32, f32) {
        let ad = Device::flex().autodiff();
        let mut sd = tiny_in(&ad, dtype);
        let images = scene_images();
        let s =
            LoraLearnSettings { rank: 4, steps, batch: 2, lr_unet: 2e-3, lr_text: 4e-4, ..LoraLearnSettings::quick() };
        let fixed = make_batch(&sd, &images, &LoraLearnSettings { batch: 8, ..s.clone() }, 32, &mut Rng::new(9));
        let probe = |sd: &mut StableDiffusion| step(sd, &mut Learner::new(0.0, 0.0), &fixed).unwrap();
        lora::freeze_base(&mut sd);
        lora::init(&mut sd, 4, 4.0, 0);
        let before = probe(&mut sd);
        learn(&mut sd, &images, &s, &mut |_, _, _| {}, &|| false).unwrap();
        lora::set_trainable(&mut sd, true);
        (before, probe(&mut sd))
    }

    fn scene_images() -> Vec<LearnImage> {
        let stripes = |phase: usize| {
            RgbF::from_fn(48, 40, |x, y| {
                let v = if ((x + phase) / 4).is_multiple_of(2) { 0.9 } else { 0.1 };
                [v, 0.5 * v + 0.2 * (y as f32 / 40.0), 0.3]
            })
        };
        // The target's unknown part is pure red, a colour found nowhere else.
        let mut target = stripes(0);
        let mut known = Mask::new(48, 40, 1.0);
        for y in 10..30 {
            for x in 12..36 {
                known.set(x, y, 0.0);
                target.data[3 * (y * 48 + x)..3 * (y * 48 + x) + 3].copy_from_slice(&[1.0, 0.0, 0.0]);
            }
        }
        vec![LearnImage { rgb: target, known }, LearnImage { rgb: stripes(2), known: Mask::new(48, 40, 1.0) }]
    }

    /// Learning lowers the loss on a fixed batch of the scene (the unknown part's masking:
    /// `the_targets_unknown_pixels_are_masked_and_carry_no_loss`).
    #[test]
    fn learning_the_scene_lowers_its_loss() {
        let (before, after) = loss_before_and_after_learning(DType::F32, 40);
        assert!(after < 0.8 * before, "loss on a fixed batch {before} → {after}");
    }

    /// Micro-batches give the same step as the whole batch at once (loss and adapters).
    #[test]
    fn micro_batches_make_the_same_step() {
        let ad = Device::flex().autodiff();
        let images = scene_images();
        let s = LoraLearnSettings { batch: 4, ..LoraLearnSettings::quick() };
        let run = |micro: usize| {
            let mut sd = tiny(&ad);
            lora::freeze_base(&mut sd);
            lora::init(&mut sd, 4, 4.0, 5);
            let batch = make_batch(&sd, &images, &s, 32, &mut Rng::new(4));
            let mut learner = Learner::new(1e-2, 1e-3);
            let loss = step_micro(&mut sd, &mut learner, &batch, micro).unwrap();
            step_micro(&mut sd, &mut learner, &batch, micro).unwrap();
            (loss, lora::to_bytes(&mut sd).unwrap())
        };
        let (whole, a) = run(4);
        let (parts, b) = run(1);
        assert!((whole - parts).abs() < 1e-5 * whole.abs(), "{whole} vs {parts}");
        let floats = |v: &[u8]| -> Vec<f32> {
            let st = safetensors::SafeTensors::deserialize(v).unwrap();
            let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
            names.sort();
            names
                .iter()
                .flat_map(|n| {
                    st.tensor(n)
                        .unwrap()
                        .data()
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let (fa, fb) = (floats(&a), floats(&b));
        let scale = fa.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = fa.iter().zip(&fb).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(diff <= 1e-3 * scale, "adapters differ by {diff} (scale {scale})");
    }

    #[test]
    fn the_targets_unknown_pixels_are_masked_and_carry_no_loss() {
        let sd = tiny(&Device::flex());
        let images = scene_images();
        let mut rng = Rng::new(1);
        let n = 32 * 32;
        for _ in 0..20 {
            let (image, mask, weight) = example(&images[0], 32, 2, &mut rng);
            let red: Vec<usize> =
                (0..n).filter(|&i| image[i] > 0.95 && image[n + i] < -0.95 && image[2 * n + i] < -0.95).collect();
            assert!(!red.is_empty(), "the crop holds part of the unknown region");
            for i in red {
                assert!(mask[i] == 1.0 && weight[i] == 0.0, "an unknown pixel is shown or scored at {i}");
            }
        }
        let b = make_batch(&sd, &images, &LoraLearnSettings::quick(), 32, &mut rng);
        assert_eq!((b.images.len(), b.masks.len(), b.ids.len()), (4 * 3 * 32 * 32, 4 * 32 * 32, 4));
    }

    /// Learning through the UNet in pieces (`UNet::learn_in_pieces`: activation checkpointing,
    /// then the text encoder's backward pass from the context's gradient) gives the loss and
    /// every adapter's gradient of one backward pass through the whole graph, on the f32 base
    /// and on a 4-bit one (whose layers take `packed_backward`'s operation).
    #[test]
    fn learning_in_pieces_gives_the_gradients_of_the_whole_graph() {
        use crate::diffusion::sd::packed::{Format, Scheme};
        use crate::diffusion::sd::quantize::quantize_folder;
        let fixture = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd-tiny");
        let q = std::env::temp_dir().join(format!("realfill-pieces-q4-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&q);
        quantize_folder(&fixture, &q, Scheme { format: Format::Nf4, block: 64 }, &mut |_| {}).unwrap();
        let ad = Device::flex().autodiff();
        for dir in [&fixture, &q] {
            let mut sd = StableDiffusion::load(dir, &ad, DType::F32).unwrap();
            lora::freeze_base(&mut sd);
            // PEFT's random adapters (both halves non-zero, so both have gradients).
            lora::load(&mut sd, &fixture.join("lora_init.safetensors")).unwrap();
            lora::set_trainable(&mut sd, true);
            let s = LoraLearnSettings { batch: 2, ..LoraLearnSettings::quick() };
            let batch = make_batch(&sd, &scene_images(), &s, 32, &mut Rng::new(3));
            let (la, ua, ta) = gradients(&mut sd, &batch, 0.5, true).unwrap();
            let (lb, ub, tb) = gradients(&mut sd, &batch, 0.5, false).unwrap();
            assert!((la - lb).abs() <= 1e-6 * la.abs(), "{}: loss {la} vs {lb}", dir.display());
            let mut unet_projs = sd.unet.projs_mut();
            let mut text_projs = sd.text.as_mut().unwrap().projs_mut();
            for (net, projs, a, b) in [("unet", &mut unet_projs, &ua, &ub), ("text", &mut text_projs, &ta, &tb)] {
                let mut compared = 0;
                for p in projs.iter() {
                    let l = p.lora.as_ref().unwrap();
                    for id in [l.down.id, l.up.id] {
                        let v = |g: &GradientsParams| {
                            let t = g.get::<2>(id).unwrap_or_else(|| panic!("{net} {}: no gradient", p.name));
                            t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
                        };
                        let (ga, gb) = (v(a), v(b));
                        let scale = ga.iter().fold(0f32, |m, x| m.max(x.abs()));
                        let worst = ga.iter().zip(&gb).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
                        assert!(scale > 0.0, "{net} {}: a zero gradient compares nothing", p.name);
                        assert!(
                            worst <= 1e-4 * scale,
                            "{net} {}: gradients differ by {worst} (largest {scale})",
                            p.name
                        );
                        compared += 1;
                    }
                }
                assert!(compared >= 8, "{net}: {compared} adapters compared");
            }
        }
        let _ = std::fs::remove_dir_all(&q);
    }
}
