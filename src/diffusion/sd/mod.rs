//! Stable Diffusion (2) inpainting from the user's diffusers folder: the networks built from
//! their `config.json` files on burn (wgpu on a GPU, the CPU backend otherwise), the CLIP
//! tokenizer, the noise schedule. Nothing is downloaded; the README says what to fetch.
//! Checked against diffusers on tiny random-weight models (`realfill sd-check`,
//! bench/diffusers_reference.py, the committed fixture in tests/fixtures/sd-tiny).

pub mod blocks;
pub mod config;
pub mod cpu_forward;
pub mod inpaint;
pub mod layers;
pub mod lora;
pub mod lora_train;
pub mod packed;
mod packed_backward;
pub mod quant;
pub mod quantize;
pub mod scheduler;
pub mod text;
pub mod tokenizer;
pub mod unet;
pub mod vae;
pub mod weights;

use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::DType;

use crate::error::{Error, Result};
use crate::settings::{SdMemory, SdPrecision};

/// The five parts of a diffusers Stable Diffusion folder.
pub struct StableDiffusion {
    pub unet: unet::UNet,
    pub unet_config: config::UNetConfig,
    pub vae: vae::Vae,
    pub vae_config: config::VaeConfig,
    /// `None` once freed to make room for the fill (`free_text`); read again by `reload_text`.
    pub text: Option<text::TextEncoder>,
    /// How the text encoder's weights are quantised (`realfill quantize`, or packed at load),
    /// freed or not.
    pub text_scheme: Option<packed::Scheme>,
    /// Float weights packed as they are read (`--sd-precision int8` on the CPU), again when
    /// the text encoder is read back.
    pub packing: Option<packed::Scheme>,
    pub tokenizer: tokenizer::Tokenizer,
    pub scheduler: scheduler::Scheduler,
    pub device: Device,
    /// The folder and the UNet's and text encoder's float type: what `reload_text` reads.
    pub dir: PathBuf,
    pub dtype: DType,
    /// Encoded prompts by token rows, for the adapters the text encoder carries now: a fill
    /// whose rows are here runs without the text encoder (`inpaint`). Emptied whenever the
    /// adapters change (`lora`, `lora_train`).
    pub contexts: PromptCache,
}

/// The last few prompt encodings ([B, N, width] f32 each, under 1 MB for SD-2's two rows).
#[derive(Default)]
pub struct PromptCache {
    entries: Vec<(Vec<Vec<i64>>, Tensor<3>)>,
}

impl PromptCache {
    /// Encodings kept; a fill uses one, the person may go back and forth between a few prompts.
    const KEEP: usize = 4;

    pub fn get(&self, ids: &[Vec<i64>]) -> Option<&Tensor<3>> {
        self.entries.iter().find(|(k, _)| k.as_slice() == ids).map(|(_, t)| t)
    }

    pub fn insert(&mut self, ids: Vec<Vec<i64>>, context: Tensor<3>) {
        self.entries.retain(|(k, _)| *k != ids);
        if self.entries.len() >= Self::KEEP {
            self.entries.remove(0);
        }
        self.entries.push((ids, context));
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

/// The README section a wrong folder's message points to.
pub const HELP: &str = "realfill needs the diffusers folder of stabilityai/stable-diffusion-2-inpainting \
(README, \"Stable Diffusion\")";

/// The float type of the UNet and the text encoder on `device`: f16 on a GPU (half the memory
/// and the GPU's fast path, as diffusers runs SD there), f32 on the CPU backend (which computes
/// f16 by conversion). The VAE stays f32 (`vae::Vae::load`).
/// A GPU server counts by its own device (`remote::server_of`).
pub fn precision_for(device: &Device) -> DType {
    let cpu_server = crate::remote::server_of(device).is_some_and(|s| !s.gpu);
    if *device == Device::flex() || cpu_server { DType::F32 } else { DType::F16 }
}

/// Below this memory budget (bytes) a CPU fill keeps the UNet and text encoder in f16: the
/// f32 model's fill peaks at 6.1 GB on SD-2's shape, the f16 one at 3.8 GB (docs/BENCHMARKS.md,
/// session 14).
pub const F32_FILL_BUDGET: u64 = 7 << 30;

/// Whether a CPU fill is short of memory: the budget (bytes) cannot hold the f32 model's fill.
/// Such a fill runs in f16 (`fill_precision`) and frees what it can (`low_memory`).
fn memory_short(device: &Device, budget: u64) -> bool {
    precision_for(device) == DType::F32 && budget < F32_FILL_BUDGET
}

/// Whether a fill frees the text encoder once its prompt is encoded (and tiles the VAE): as
/// asked, and for `Auto` when memory is short (`memory_short`).
pub fn low_memory(device: &Device, asked: SdMemory, budget: u64) -> bool {
    match asked {
        SdMemory::Low => true,
        SdMemory::Normal => false,
        SdMemory::Auto => memory_short(device, budget),
    }
}

/// The float type of the UNet and the text encoder for a fill on `device`: what the person
/// asked, and for `Auto` the device's own (`precision_for`), except on the CPU when the memory
/// `budget` (bytes) cannot hold the f32 model's fill.
pub fn fill_precision(device: &Device, asked: SdPrecision, budget: u64) -> DType {
    match asked {
        SdPrecision::F32 => DType::F32,
        SdPrecision::F16 | SdPrecision::Int8 => DType::F16,
        SdPrecision::Auto if memory_short(device, budget) => DType::F16,
        SdPrecision::Auto => precision_for(device),
    }
}

impl StableDiffusion {
    /// Loads every part of `dir`; the UNet and text encoder in `dtype` (see `precision_for`).
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<StableDiffusion> {
        Self::load_for(dir, device, dtype, false)
    }

    /// `load`, with block-wise int8 weights when `int8`. On the CPU the UNet's and the text
    /// encoder's weights are packed as each is read (`packed`, as a `realfill quantize --bits 8`
    /// folder holds them: ≈ 5 % more CPU a step than floats, where burn's Q8S cost ≈ 70 %;
    /// docs/BENCHMARKS.md, session 17). Elsewhere packed weights would be widened at load, so
    /// the UNet is made burn's own Q8S (`quant`) as soon as it is read, before the other
    /// networks: each f16 weight is replaced as it is quantised and the freed memory given
    /// back, so the f16 UNet never sits beside the rest.
    pub fn load_for(dir: &Path, device: &Device, dtype: DType, int8: bool) -> Result<StableDiffusion> {
        if !dir.is_dir() {
            return Err(Error::input(dir, format!("not a folder; {HELP}")));
        }
        let packing =
            (int8 && weights::on_cpu(device)).then_some(packed::Scheme { format: packed::Format::Int8, block: 64 });
        let (mut unet, unet_config) = unet::UNet::load_packing(&dir.join("unet"), device, dtype, packing)?;
        if int8 && packing.is_none() {
            unet = quant::quantize_q8(unet, 64).0;
            crate::allocator::release_freed();
        }
        let (vae, vae_config) = vae::Vae::load(&dir.join("vae"), device)?;
        // Each is within its own bounds; their product is the size the model samples at.
        let native = unet_config.sample_size.unwrap_or(64) * vae_config.factor();
        let largest = *crate::settings::LIMITS.size.end();
        if native > largest {
            return Err(Error::input(
                dir.join("unet").join("config.json"),
                format!(
                    "`sample_size` {} times the VAE's {} pixels per latent pixel is {native} px a side; realfill \
                     samples at most {largest}",
                    unet_config.sample_size.unwrap_or(64),
                    vae_config.factor()
                ),
            ));
        }
        if unet.in_channels != 2 * vae_config.latent_channels + 1 {
            return Err(Error::input(
                dir.join("unet").join("config.json"),
                format!(
                    "the UNet takes {} channels: realfill needs the {}-channel inpainting UNet (noisy latent, mask, \
                     masked-image latent), as in stable-diffusion-2-inpainting — a text-to-image model cannot fill",
                    unet.in_channels,
                    2 * vae_config.latent_channels + 1
                ),
            ));
        }
        if unet.out_channels != vae_config.latent_channels {
            return Err(Error::input(
                dir.join("unet").join("config.json"),
                "out_channels differs from the VAE's latent_channels: UNet and VAE are from different models",
            ));
        }
        let text = Self::read_text(dir, device, dtype, packing)?;
        let cross = unet_config.levels()?.iter().map(|l| l.cross_dim).max().unwrap_or(0);
        if text.width != cross {
            return Err(Error::input(
                dir.join("text_encoder").join("config.json"),
                format!("hidden_size {} differs from the UNet's cross_attention_dim {cross}", text.width),
            ));
        }
        let tokenizer = tokenizer::Tokenizer::load(&dir.join("tokenizer"))?;
        if tokenizer.max_length > text.max_positions {
            return Err(Error::input(
                dir.join("tokenizer"),
                "model_max_length exceeds the text encoder's max_position_embeddings",
            ));
        }
        // An id past the embeddings would index outside them (a crafted vocabulary).
        let (lo, hi) = tokenizer.id_range();
        if lo < 0 || hi >= text.vocab_size() as i64 {
            return Err(Error::input(
                dir.join("tokenizer"),
                format!(
                    "has token id {} outside the text encoder's {} embeddings",
                    if lo < 0 { lo } else { hi },
                    text.vocab_size()
                ),
            ));
        }
        let scheduler = scheduler::Scheduler::load(&dir.join("scheduler").join("scheduler_config.json"))?;
        Ok(StableDiffusion {
            unet,
            unet_config,
            vae,
            vae_config,
            text_scheme: text.scheme,
            text: Some(text),
            packing,
            tokenizer,
            scheduler,
            device: device.clone(),
            dir: dir.to_path_buf(),
            dtype,
            contexts: PromptCache::default(),
        })
    }

    fn read_text(
        dir: &Path,
        device: &Device,
        dtype: DType,
        packing: Option<packed::Scheme>,
    ) -> Result<text::TextEncoder> {
        Ok(text::TextEncoder::load_packing(&dir.join("text_encoder"), device, dtype, packing)?.0)
    }

    /// The text encoder, unless it was freed (`free_text`).
    pub fn text_encoder(&self) -> Result<&text::TextEncoder> {
        self.text.as_ref().ok_or_else(|| {
            Error::Engine("the text encoder was freed after encoding; it is read again before a new prompt".into())
        })
    }

    /// Drops the text encoder's weights (≈ 0.7 GB in f16 for SD-2): a fill whose prompt is
    /// encoded (`contexts`) no longer needs them.
    pub fn free_text(&mut self) {
        if self.text.take().is_some() {
            crate::allocator::release_freed();
        }
    }

    /// Reads the freed text encoder back from the folder, plain (the caller puts adapters back).
    pub fn reload_text(&mut self) -> Result<()> {
        if self.text.is_none() {
            self.text = Some(Self::read_text(&self.dir, &self.device, self.dtype, self.packing)?);
        }
        Ok(())
    }

    /// The encoding of `ids` (B rows): from `contexts`, else by the text encoder.
    pub fn context(&self, ids: &[Vec<i64>]) -> Result<Tensor<3>> {
        match self.contexts.get(ids) {
            Some(c) => Ok(c.clone()),
            None => Ok(self.text_encoder()?.forward(ids)),
        }
    }

    /// Which weights the UNet and the text encoder run on, for the fill's status line:
    /// "UNet: 4-bit NF4 weights (block 64), widened to f32 per layer; text encoder: …".
    pub fn describe_weights(&self) -> String {
        let ty = if self.dtype == DType::F16 { "f16" } else { "f32" };
        // Off the CPU they are widened once at load (`weights::Weights::linear`); on it the UNet
        // runs on realfill's kernels, which compute in f32 (`cpu_forward`), the text encoder on
        // burn in the model's type.
        let when = if weights::on_cpu(&self.device) { "per layer" } else { "at load" };
        let unet_ty = if cpu_forward::serves(&self.device) { "f32" } else { ty };
        let one = |s: Option<packed::Scheme>, to: &str| match s {
            Some(s) => format!("{}, widened to {to} {when}", s.describe()),
            None => format!("{ty} weights"),
        };
        format!("UNet: {}; text encoder: {}", one(self.unet.scheme, unet_ty), one(self.text_scheme, ty))
    }

    /// Pixels per latent pixel times the UNet's own stride: image sides must divide by this.
    pub fn pixel_stride(&self) -> usize {
        self.vae_config.factor() * self.unet_config.stride()
    }
}

#[cfg(test)]
mod folder_tests {
    use super::*;

    /// A vocabulary whose ids run past the text encoder's embeddings is refused at load, naming
    /// the tokenizer folder (the CPU forward would index outside its table).
    #[test]
    fn a_token_id_past_the_embeddings_is_refused() {
        let fixture = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sd-tiny"));
        let dir = std::env::temp_dir().join(format!("realfill-sd-vocab-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("tokenizer")).unwrap();
        for e in std::fs::read_dir(fixture).unwrap() {
            let e = e.unwrap().path();
            if e.file_name().unwrap() != "tokenizer" {
                std::os::unix::fs::symlink(&e, dir.join(e.file_name().unwrap())).unwrap();
            }
        }
        for e in std::fs::read_dir(fixture.join("tokenizer")).unwrap() {
            let e = e.unwrap().path();
            std::fs::copy(&e, dir.join("tokenizer").join(e.file_name().unwrap())).unwrap();
        }
        assert!(StableDiffusion::load(&dir, &Device::flex(), DType::F32).is_ok(), "the copy loads as it is");
        let vocab = dir.join("tokenizer").join("vocab.json");
        let text = std::fs::read_to_string(&vocab).unwrap();
        std::fs::write(&vocab, text.replacen('{', "{\"zzz</w>\": 99999, ", 1)).unwrap();
        let e = StableDiffusion::load(&dir, &Device::flex(), DType::F32).err().expect("refused").to_string();
        assert!(e.contains("tokenizer") && e.contains("99999") && e.contains("embeddings"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}

#[cfg(test)]
mod precision_tests {
    use super::*;

    #[test]
    fn a_cpu_fill_halves_its_weights_only_when_memory_is_short() {
        let cpu = Device::flex();
        assert_eq!(fill_precision(&cpu, SdPrecision::Auto, 16 << 30), DType::F32);
        assert_eq!(fill_precision(&cpu, SdPrecision::Auto, 6 << 30), DType::F16);
        assert_eq!(fill_precision(&cpu, SdPrecision::F32, 1 << 30), DType::F32);
        assert_eq!(fill_precision(&cpu, SdPrecision::F16, 64 << 30), DType::F16);
    }
}
