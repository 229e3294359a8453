//! The Stable Diffusion engine inside the fill pipeline: the model loaded once from the
//! person's folder and kept between fills (loading SD-2 reads 2.6–5.2 GB), the scene learned
//! into LoRA adapters (RealFill) and cached per scene, the working canvas sampled by
//! `diffusion::sd::inpaint` with the scene's LoRA when there is one, previews with the photo's
//! known pixels in place.

use std::path::PathBuf;

use burn::prelude::*;
use burn::tensor::DType;

use super::settings::FillSettings;
use crate::diffusion::checkpoint::{KeyHasher, cache_dir};
use crate::diffusion::sampler::SampleOutput;
use crate::diffusion::sd::inpaint::{InpaintOptions, inpaint, model_size, prompt_ids};
use crate::diffusion::sd::lora_train::{self, LearnImage, LoraLearnSettings, PROMPT};
use crate::diffusion::sd::{StableDiffusion, fill_precision, lora, low_memory, precision_for};
use crate::error::{Error, Result};
use crate::scene::{Mask, RgbF, Scene};
use crate::settings::{LoraPreset, SdPrecision};

/// The loaded model, the folder it came from, and the LoRA file it carries (if any).
pub struct HeldModel {
    pub dir: PathBuf,
    /// The UNet's and text encoder's float type (`sd::fill_precision`).
    pub dtype: DType,
    /// The UNet's weights held block-wise int8 (`--sd-precision int8`).
    pub int8: bool,
    pub lora: Option<PathBuf>,
    pub sd: StableDiffusion,
    /// How many times the freed text encoder was read back for a new prompt.
    pub text_reloads: usize,
}

impl HeldModel {
    fn new(dir: PathBuf, dtype: DType, lora: Option<PathBuf>, sd: StableDiffusion) -> HeldModel {
        HeldModel { dir, dtype, int8: false, lora, sd, text_reloads: 0 }
    }
}

pub type HeldSd = Option<HeldModel>;

fn model_dir(s: &FillSettings) -> Result<PathBuf> {
    s.sd.model.clone().ok_or_else(|| {
        Error::Invalid("the Stable Diffusion engine needs a model folder (README, \"Stable Diffusion\")".into())
    })
}

/// The model of `s.sd.model`, from `held` when it is that folder's; `true` when reused.
pub fn load_or_reuse<'a>(
    held: &'a mut HeldSd,
    s: &FillSettings,
    device: &Device,
    status: &mut dyn FnMut(String),
) -> Result<(&'a mut HeldModel, bool)> {
    let dir = model_dir(s)?;
    let budget = crate::engine::budget::budget_bytes(s.memory_gib);
    // A folder `realfill quantize` made holds its weights packed whatever the float type, so
    // a short budget does not make its fill half precision; its weights are not quantised again.
    let scheme = crate::diffusion::sd::quantize::folder_scheme(&dir).ok().flatten();
    let dtype = match (scheme, s.sd.precision) {
        (Some(_), SdPrecision::Auto) => precision_for(device),
        _ => fill_precision(device, s.sd.precision, budget),
    };
    let int8 = s.sd.precision == SdPrecision::Int8 && scheme.is_none();
    // A model holding adapters learned here and not written to the cache is kept whatever its
    // float type: reading it again would lose them.
    let reuse = held.as_ref().is_some_and(|h| {
        h.dir == dir && ((h.dtype == dtype && h.int8 == int8) || h.lora.as_ref().is_some_and(|p| !p.is_file()))
    });
    if !reuse {
        // Free the old model before reading the new one: two SD-2 models do not fit many laptops.
        *held = None;
        let why = match s.sd.precision {
            SdPrecision::Auto if dtype != precision_for(device) => {
                format!(
                    ": the memory budget, {:.1} GiB, is short of the f32 model's fill",
                    budget as f64 / (1u64 << 30) as f64
                )
            }
            _ => String::new(),
        };
        let kind = match (int8, dtype == DType::F16) {
            (true, _) if crate::diffusion::sd::weights::on_cpu(device) => {
                "f16, the UNet's and the text encoder's weights block-wise int8"
            }
            (true, _) => "f16, the UNet's weights block-wise int8",
            (false, true) => "f16",
            (false, false) => "f32",
        };
        status(format!("loading Stable Diffusion from {} (UNet and text encoder in {kind}{why})", dir.display()));
        let sd = StableDiffusion::load_for(&dir, device, dtype, int8)?;
        // (burn's Q8S, off the CPU, has no scheme to name: the line above says it.)
        if !int8 || sd.unet.scheme.is_some() {
            status(sd.describe_weights());
        }
        *held = Some(HeldModel { int8, ..HeldModel::new(dir, dtype, None, sd) });
    }
    Ok((held.as_mut().expect("just set"), reuse))
}

/// The learning settings a job asks for (preset, then the person's overrides).
pub fn learn_settings(s: &FillSettings) -> LoraLearnSettings {
    let base = match s.sd.lora_preset {
        LoraPreset::Quick => LoraLearnSettings::quick(),
        LoraPreset::Quality => LoraLearnSettings::quality(),
    };
    LoraLearnSettings {
        rank: s.sd.lora_rank,
        steps: s.sd.lora_steps.unwrap_or(base.steps),
        batch: s.sd.lora_batch.unwrap_or(base.batch),
        micro_batch: s.sd.lora_micro_batch.unwrap_or(0),
        seed: s.seed,
        ..base
    }
}

/// Where the scene's learned LoRA is cached: keyed by the scene's pixels (small copies), its
/// fill region, the model folder and its UNet config, and the learning settings.
pub fn lora_path(scene: &Scene, s: &FillSettings) -> Result<PathBuf> {
    let dir = model_dir(s)?;
    let mut k = KeyHasher::default();
    k.text("sd-lora-v1");
    let small = |rgb: &RgbF| {
        let scale = 128.0 / rgb.width.max(rgb.height) as f32;
        let (w, h) = (((rgb.width as f32 * scale) as usize).max(1), ((rgb.height as f32 * scale) as usize).max(1));
        rgb.resized(w, h)
    };
    k.floats(&small(&scene.canvas_rgb()).data);
    k.floats(&scene.mask.resized_soft(128, 128).data);
    for r in &scene.refs {
        k.text(&format!("{}x{}", r.width(), r.height())).floats(&small(&r.rgb).data);
    }
    let canonical = std::fs::canonicalize(&dir).unwrap_or(dir.clone());
    k.text(&canonical.display().to_string());
    k.text(
        &crate::input_file::read_text(&dir.join("unet").join("config.json"), crate::input_file::CONFIG)
            .unwrap_or_default(),
    );
    k.text(&serde_json::to_string(&learn_settings(s)).unwrap_or_default());
    // Without a cache folder the path only names the adapters held in memory (`cached`).
    let dir = cache_dir().unwrap_or_else(|| PathBuf::from("(not cached)"));
    Ok(dir.join("sd-lora").join(format!("{}.safetensors", k.finish())))
}

/// Whether learned adapters are read from and written to the cache.
fn cached(s: &FillSettings) -> bool {
    s.use_cache && cache_dir().is_some()
}

/// The images RealFill learns from: the target (known outside the fill region) and every
/// reference, each scaled so its short side is at most what the largest random resize needs.
fn learn_images(scene: &Scene, size: usize) -> Vec<LearnImage> {
    let cap = |rgb: &RgbF, known: &Mask| {
        let short = rgb.width.min(rgb.height) as f32;
        let scale = (size as f32 * 1.125 / short).min(1.0);
        let (w, h) =
            (((rgb.width as f32 * scale) as usize).max(size), ((rgb.height as f32 * scale) as usize).max(size));
        LearnImage { rgb: rgb.resized(w, h), known: known.resized_soft(w, h) }
    };
    let mut known = scene.mask.clone();
    known.data.iter_mut().for_each(|v| *v = 1.0 - *v);
    let mut out = vec![cap(&scene.canvas_rgb(), &known)];
    for r in &scene.refs {
        out.push(cap(&r.rgb, &Mask::new(r.width(), r.height(), 1.0)));
    }
    out
}

/// What learning reports.
pub enum Report {
    Status(String),
    Step { step: usize, total: usize, loss: f32 },
}

/// Learns the scene into LoRA adapters (or finds them in the cache); `true` when cached.
/// The model is learned on the autodiff device and then kept, with its adapters, in `held`.
pub fn learn(
    scene: &Scene,
    s: &FillSettings,
    device: &Device,
    held: &mut HeldSd,
    report: &mut dyn FnMut(Report),
    cancelled: &dyn Fn() -> bool,
) -> Result<bool> {
    let mut status = |m: String| report(Report::Status(m));
    let path = lora_path(scene, s)?;
    if s.use_cache && cache_dir().is_none() {
        status(crate::diffusion::checkpoint::NO_CACHE.into());
    }
    if cached(s) && path.is_file() {
        status(format!("using the scene's learned LoRA {}", path.display()));
        return Ok(true);
    }
    let dir = model_dir(s)?;
    // The learning copy replaces the kept one (both would not fit beside each other).
    *held = None;
    status(format!("loading Stable Diffusion from {} to learn the scene", dir.display()));
    let ad = device.clone().autodiff();
    let mut sd = StableDiffusion::load(&dir, &ad, precision_for(device))?;
    status(sd.describe_weights());
    let ls = learn_settings(s);
    let (size, _) = model_size(&sd, 1, 1);
    let images = learn_images(scene, size);
    status(format!(
        "learning the scene into Stable Diffusion: LoRA rank {}, {} steps of {} examples at {size} px",
        ls.rank, ls.steps, ls.batch
    ));
    lora_train::learn(
        &mut sd,
        &images,
        &ls,
        &mut |step, total, loss| report(Report::Step { step, total, loss }),
        cancelled,
    )?;
    if cached(s) {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::output(parent, e.to_string()))?;
        }
        crate::scene::io::write_atomic(&path, &lora::to_bytes(&mut sd)?)?;
    }
    let sd = StableDiffusion {
        unet: sd.unet.valid(),
        text: sd.text.map(|t| t.valid()),
        vae: sd.vae.valid(),
        device: device.clone(),
        contexts: Default::default(),
        ..sd
    };
    // Kept with its adapters, under the scene's LoRA path (in memory even when not cached).
    *held = Some(HeldModel::new(dir, precision_for(device), Some(path), sd));
    Ok(false)
}

/// Puts the right adapters on the held model for this fill: the person's `--lora` file, else
/// the scene's learned LoRA (in the cache, or just learned and still held), else none; then
/// has the fill's prompt encoded (`encode_prompt`). Returns the LoRA used.
pub fn choose_lora(h: &mut HeldModel, scene: &Scene, s: &FillSettings) -> Result<Option<PathBuf>> {
    let free_text = low_memory(&h.sd.device, s.sd.memory, crate::engine::budget::budget_bytes(s.memory_gib));
    choose_lora_freeing(h, scene, s, free_text)
}

/// `choose_lora`, the text encoder freed after encoding when `free_text`.
fn choose_lora_freeing(h: &mut HeldModel, scene: &Scene, s: &FillSettings, free_text: bool) -> Result<Option<PathBuf>> {
    let want = match &s.sd.lora {
        Some(f) => Some(f.clone()),
        None => {
            let own = lora_path(scene, s)?;
            ((cached(s) && own.is_file()) || h.lora.as_ref() == Some(&own)).then_some(own)
        }
    };
    if h.lora != want {
        match &want {
            Some(f) => {
                lora::load(&mut h.sd, f)?;
            }
            None => lora::clear(&mut h.sd),
        }
        h.lora = want.clone();
    }
    encode_prompt(h, s, want.is_some(), free_text)?;
    Ok(want)
}

/// Encodes the fill's prompts into the model's cache unless they are there, reading a freed
/// text encoder back (with its adapters) for that; then, when `free_text` (memory is short:
/// `sd::low_memory`), frees the text encoder for the rest of the fill. Adapters learned here
/// and not in a file keep it: they could not be put back on a text encoder read again.
fn encode_prompt(h: &mut HeldModel, s: &FillSettings, with_lora: bool, free_text: bool) -> Result<()> {
    let ids = prompt_ids(&h.sd, &fill_options(s, with_lora, false));
    if h.sd.contexts.get(&ids).is_none() {
        if h.sd.text.is_none() {
            h.sd.reload_text()?;
            h.text_reloads += 1;
            if let Some(f) = &h.lora {
                lora::load(&mut h.sd, f)?;
            }
        }
        let context = h.sd.text_encoder()?.forward(&ids);
        h.sd.contexts.insert(ids, context);
    }
    let in_file = h.lora.as_ref().is_none_or(|f| f.is_file());
    if in_file && free_text {
        h.sd.free_text();
    }
    Ok(())
}

/// What `sample` asks of the model; with a LoRA and no prompt of the person's, the prompt is
/// RealFill's "a photo of sks". `low_memory`: the VAE runs in tiles.
fn fill_options(s: &FillSettings, with_lora: bool, low_memory: bool) -> InpaintOptions {
    let prompt = if s.sd.prompt.is_empty() && with_lora { PROMPT.to_string() } else { s.sd.prompt.clone() };
    InpaintOptions {
        prompt,
        negative_prompt: String::new(),
        guidance: s.sd.guidance,
        steps: s.sd.steps,
        sampler: s.sd.sampler,
        seed: s.seed,
        initial_noise: None,
        low_memory,
    }
}

/// `rgb` with the canvas's known pixels (fill < 0.5) put back.
fn with_known(mut rgb: RgbF, canvas: &RgbF, fill: &Mask) -> RgbF {
    for (i, px) in rgb.data.chunks_exact_mut(3).enumerate() {
        if fill.data[i] < 0.5 {
            px.copy_from_slice(&canvas.data[3 * i..3 * i + 3]);
        }
    }
    rgb
}

/// Samples the working canvas; `raw` is the model's own image, `x0` has the known pixels back.
/// The prompt's encoding comes from the model's cache when `choose_lora` made it.
pub fn sample(
    sd: &StableDiffusion,
    with_lora: bool,
    canvas: &RgbF,
    fill: &Mask,
    s: &FillSettings,
    on_preview: &mut dyn FnMut(usize, usize, RgbF),
    cancelled: &dyn Fn() -> bool,
) -> Result<SampleOutput> {
    let short = low_memory(&sd.device, s.sd.memory, crate::engine::budget::budget_bytes(s.memory_gib));
    let opts = fill_options(s, with_lora, short);
    let raw = inpaint(
        sd,
        canvas,
        fill,
        &opts,
        &mut |step, total, img| on_preview(step, total, with_known(img, canvas, fill)),
        cancelled,
    )?;
    let x0 = with_known(raw.clone(), canvas, fill);
    Ok(SampleOutput { x0: x0.to_planar(), raw: raw.to_planar() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scene::{Extension, Photo};
    use crate::settings::{EngineKind, SdMemory};

    fn fixture() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd-tiny")
    }

    /// A 40×32 gradient with a hole in the middle.
    fn scene() -> Scene {
        let (w, h) = (40u32, 32u32);
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 6) as u8, (y * 7) as u8, 90]));
        let original = image::DynamicImage::ImageRgb8(img);
        let rgb = RgbF { width: w as usize, height: h as usize, data: original.to_rgb32f().into_raw() };
        let target = Photo { path: "t.png".into(), original, rgb, transparent: None, metadata: Default::default() };
        let mut m = Mask::new(w as usize, h as usize, 0.0);
        for y in 8..24 {
            for x in 10..30 {
                m.set(x, y, 1.0);
            }
        }
        Scene::new(target, Some((m, std::path::Path::new("m.png"))), Extension::default(), vec![]).unwrap()
    }

    fn settings(memory: SdMemory, prompt: &str, with_lora: bool) -> FillSettings {
        let mut s =
            FillSettings { engine: EngineKind::StableDiffusion, size: 40, use_cache: false, ..Default::default() };
        s.sd.model = Some(fixture());
        s.sd.steps = 3;
        s.sd.precision = SdPrecision::F32;
        s.sd.memory = memory;
        s.sd.prompt = prompt.into();
        s.sd.lora = with_lora.then(|| fixture().join("lora_init.safetensors"));
        s
    }

    /// One fill through the engine's calls, as the pipeline makes them (the text encoder
    /// freed or not, all else alike: the VAE whole); the model's own image.
    fn fill(held: &mut HeldSd, scene: &Scene, s: &FillSettings, free_text: bool) -> Vec<f32> {
        let device = Device::flex();
        let (h, _) = load_or_reuse(held, s, &device, &mut |_| {}).unwrap();
        let lora = choose_lora_freeing(h, scene, s, free_text).unwrap();
        let canvas = scene.canvas_rgb();
        sample(&h.sd, lora.is_some(), &canvas, &scene.mask, s, &mut |_, _, _| {}, &|| false).unwrap().raw
    }

    /// With memory short the text encoder is gone once the prompt is encoded; it is read back
    /// (with the LoRA's text adapters) only for a prompt or adapters not encoded yet, and every
    /// fill is bit-identical to the one with the encoder kept.
    #[test]
    fn a_short_memory_fill_frees_the_text_encoder_and_reads_it_only_for_a_new_prompt() {
        let scene = scene();
        let (mut kept, mut freed): (HeldSd, HeldSd) = (None, None);
        let rounds =
            [("", false, 0), ("", false, 0), ("a brick wall", false, 1), ("a brick wall", true, 2), ("", false, 3)];
        for (prompt, with_lora, reloads) in rounds {
            let s = settings(SdMemory::Normal, prompt, with_lora);
            let a = fill(&mut kept, &scene, &s, false);
            let b = fill(&mut freed, &scene, &s, true);
            assert!(a == b, "{prompt:?}, LoRA {with_lora}: the freed-encoder fill differs");
            let (k, f) = (kept.as_ref().unwrap(), freed.as_ref().unwrap());
            assert!(k.sd.text.is_some() && k.text_reloads == 0);
            assert!(f.sd.text.is_none(), "{prompt:?}: the text encoder is freed after encoding");
            assert_eq!(f.text_reloads, reloads, "{prompt:?}, LoRA {with_lora}");
        }
        // The person's choice decides through `choose_lora`: low frees, normal keeps.
        let h = kept.as_mut().unwrap();
        choose_lora(h, &scene, &settings(SdMemory::Normal, "", false)).unwrap();
        assert!(h.sd.text.is_some());
        choose_lora(h, &scene, &settings(SdMemory::Low, "", false)).unwrap();
        assert!(h.sd.text.is_none());
    }

    /// `--sd-precision int8` on the CPU packs the UNet's and the text encoder's weights as they
    /// are read (read again on a change from f16), as a `realfill quantize --bits 8` folder
    /// holds them: its fill is that folder's fill, and close to the f16 fill (within 0.02 of
    /// [0, 1] on average on the tiny fixture).
    #[test]
    fn an_int8_fill_holds_int8_weights_close_to_the_f16_fill() {
        use crate::diffusion::sd::packed::{Format, Scheme};
        use crate::diffusion::sd::quantize::quantize_folder;
        let scene = scene();
        let mut held: HeldSd = None;
        let mut s = settings(SdMemory::Normal, "", false);
        s.sd.precision = SdPrecision::F16;
        let half = fill(&mut held, &scene, &s, false);
        assert!(!held.as_ref().unwrap().int8);
        s.sd.precision = SdPrecision::Int8;
        let mut said = Vec::new();
        load_or_reuse(&mut held, &s, &Device::flex(), &mut |m| said.push(m)).unwrap();
        assert!(
            said.iter().any(|m| m
                .contains("UNet: 8-bit int8 weights (block 64), widened to f32 per layer; text encoder: 8-bit int8 weights (block 64), widened to f16 per layer")),
            "{said:?}"
        );
        let int8 = fill(&mut held, &scene, &s, false);
        let h = held.as_ref().unwrap();
        assert!(h.int8 && h.dtype == DType::F16, "read again for int8");
        let scheme = Scheme { format: Format::Int8, block: 64 };
        assert_eq!((h.sd.unet.scheme, h.sd.text_scheme), (Some(scheme), Some(scheme)));
        let mean = half.iter().zip(&int8).map(|(a, b)| (a - b).abs()).sum::<f32>() / half.len() as f32;
        eprintln!("int8 fill against f16: mean difference {mean}");
        assert!(mean > 0.0 && mean < 0.02, "{mean}");
        // The quantised folder's fill, in f16 too.
        let dir = std::env::temp_dir().join(format!("realfill-sdfill-int8-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        quantize_folder(&fixture(), &dir, scheme, &mut |_| {}).unwrap();
        s.sd.model = Some(dir.clone());
        s.sd.precision = SdPrecision::F16;
        let folder = fill(&mut None, &scene, &s, false);
        let worst = folder.iter().zip(&int8).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "the folder's fill differs by {worst}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A fill on a `realfill quantize` folder says which weights it runs on and stays close to
    /// the f32 fill of the folder it was made from (mean |Δ| of the model's image in levels of
    /// 255 on the tiny fixture's random weights; measured, docs/BENCHMARKS.md (session 16): int8 1.4, NF4 17.9;
    /// bounds ≈ 2×).
    #[test]
    fn quantised_folders_fill_close_to_the_f32_fill() {
        use crate::diffusion::sd::quantize::{quantize_folder, scheme_for_bits};
        let scene = scene();
        let device = Device::flex();
        let mut held: HeldSd = None;
        let whole = fill(&mut held, &scene, &settings(SdMemory::Normal, "", false), false);
        for (bits, bound, label) in [(8u8, 3.0, "8-bit int8"), (4, 30.0, "4-bit NF4")] {
            let dir = std::env::temp_dir().join(format!("realfill-sdfill-q{bits}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            quantize_folder(&fixture(), &dir, scheme_for_bits(bits, 64).unwrap(), &mut |_| {}).unwrap();
            let mut s = settings(SdMemory::Normal, "", false);
            s.sd.model = Some(dir.clone());
            s.sd.precision = SdPrecision::Auto;
            let mut said = Vec::new();
            load_or_reuse(&mut held, &s, &device, &mut |m| said.push(m)).unwrap();
            let line = format!("UNet: {label} weights (block 64), widened to f32 per layer");
            assert!(said.iter().any(|m| m.contains(&line)), "{said:?}");
            let q = fill(&mut held, &scene, &s, false);
            let mean = 255.0 * whole.iter().zip(&q).map(|(a, b)| (a - b).abs()).sum::<f32>() / whole.len() as f32;
            eprintln!("{label} fill against f32: mean difference {mean} of 255");
            assert!(mean > 0.0 && mean < bound, "{label}: {mean}");
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    /// A low-memory fill runs the VAE in tiles: close to the whole-image fill (within 0.06 of
    /// [0, 1] on average on the tiny fixture's random weights; 0.026 measured), not equal to it.
    #[test]
    fn a_low_memory_fill_tiles_the_vae_close_to_the_whole_one() {
        let scene = scene();
        let mut held: HeldSd = None;
        let whole = fill(&mut held, &scene, &settings(SdMemory::Normal, "", false), false);
        let tiled = fill(&mut held, &scene, &settings(SdMemory::Low, "", false), false);
        let mean = whole.iter().zip(&tiled).map(|(a, b)| (a - b).abs()).sum::<f32>() / whole.len() as f32;
        eprintln!("tiled VAE fill: mean difference {mean}");
        assert!(mean > 0.0 && mean < 0.06, "{mean}");
    }
}
