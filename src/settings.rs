//! What a person chooses for a run — engine, working size, steps, seed, candidates, learning
//! length — with its defaults and limits in one place. One value from the command line to the
//! engine: clap reads [`RunSettings`] itself (`cli::ModelArgs` flattens it; each flag's name,
//! help and default are on its field here), the app's settings and project files hold it as
//! JSON, and `engine::FillSettings::from_run` is the one way from it to a job's settings. It
//! sits below the document and the engine so that both can hold it.

use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Which denoiser fills.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum EngineKind {
    /// Pick by measurement (see `EngineKind::resolve`): the patch engine today.
    #[default]
    Auto,
    /// Training-free reference patch denoiser: seconds, no learning.
    Patch,
    /// The scene model (a network learned per scene from the references): minutes of
    /// learning, cached. `scene` on the command line; "Scene" in older settings files.
    #[value(name = "scene", alias = "scene-model")]
    #[serde(alias = "Scene")]
    SceneModel,
    /// Stable Diffusion 2 inpainting from a diffusers folder the person points at
    /// (`--model DIR`): imagines what no reference shows. Never the default; nothing downloads.
    #[value(name = "sd", alias = "stable-diffusion")]
    StableDiffusion,
}

impl EngineKind {
    /// What `auto` means, by measurement on the evaluation scenes (docs/BENCHMARKS.md): the
    /// patch engine fills in seconds where the scene model first learns for minutes, and
    /// scores better on most scenes. The scene model is there to be asked for.
    pub fn resolve(self) -> EngineKind {
        match self {
            EngineKind::Auto => EngineKind::Patch,
            k => k,
        }
    }

    /// The name the app and messages use.
    pub fn label(self) -> &'static str {
        match self {
            EngineKind::Auto => "auto",
            EngineKind::Patch => "patch engine",
            EngineKind::SceneModel => "scene model",
            EngineKind::StableDiffusion => "Stable Diffusion",
        }
    }
}

/// The sampler of the learned model's denoising loop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum SamplerKind {
    /// Deterministic (η = 0).
    #[default]
    Ddim,
    /// Stochastic (η = 1).
    Ddpm,
    /// DPM-Solver++ (2M), deterministic, second order: diffusers runs it at about 20 steps.
    DpmSolver,
    /// DPM-Solver++ (2M) on Karras et al.'s noise levels, more steps at low noise (Stable
    /// Diffusion; the scene model runs it as dpm-solver).
    DpmSolverKarras,
    /// Euler with ancestral noise ("Euler a"), stochastic, first order: each step goes to a
    /// lower noise level than the next and adds fresh noise back up to it.
    EulerAncestral,
}

/// The range each setting accepts; the CLI refuses values outside it, the app and project
/// files clamp into it.
pub struct Limits {
    pub size: RangeInclusive<usize>,
    pub steps: RangeInclusive<usize>,
    pub candidates: RangeInclusive<usize>,
    pub learn_steps: RangeInclusive<usize>,
    pub batch: RangeInclusive<usize>,
    /// Also a multiple of 8.
    pub crop: RangeInclusive<usize>,
    /// Classifier-free guidance scale of Stable Diffusion.
    pub guidance: RangeInclusive<f32>,
}

/// The most reference photos one scene takes (RealFill's scenes have one to five; each costs
/// memory and alignment time).
pub const MAX_REFERENCES: usize = 100;

pub const LIMITS: Limits = Limits {
    size: 32..=2048,
    steps: 1..=1000,
    candidates: 1..=32,
    learn_steps: 1..=100_000,
    batch: 1..=64,
    crop: 16..=512,
    guidance: 0.0..=30.0,
};

/// The defaults, for clap's `default_value_t` (and `RunSettings::default`).
pub mod defaults {
    /// Long side of the working size.
    pub const SIZE: usize = 384;
    /// Denoising steps of the scene model. Few is better for a model learned in minutes:
    /// each step adds its small errors (docs/BENCHMARKS.md).
    pub const STEPS: usize = 3;
    pub const CANDIDATES: usize = 1;
    pub const LEARN_STEPS: usize = 600;
    pub const BATCH: usize = 8;
    pub const CROP: usize = 64;
    /// Stable Diffusion's sampler and steps: what diffusers' documentation runs SD-2 inpainting
    /// with ("Stable Diffusion 2" pipeline page: `DPMSolverMultistepScheduler`, which "can be
    /// run with as little as 20 steps", and its stable-diffusion-2-inpainting example at
    /// `num_inference_steps=25`). The scene model keeps DDIM (`SamplerKind::default`).
    pub const SD_SAMPLER: super::SamplerKind = super::SamplerKind::DpmSolver;
    pub const SD_STEPS: usize = 25;
    /// Stable Diffusion's guidance scale (diffusers' inpainting default).
    pub const GUIDANCE: f32 = 7.5;
    /// RealFill's LoRA rank.
    pub const LORA_RANK: usize = 8;
}

/// How long Stable Diffusion learns a scene (RealFill's LoRA).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum LoraPreset {
    /// 200 steps of batch 4: a fortieth of the paper's examples.
    #[default]
    Quick,
    /// The paper's 2,000 steps of batch 16.
    Quality,
}

/// The float type Stable Diffusion's UNet and text encoder are kept and computed in when it
/// fills (the VAE stays f32; learning keeps the device's own, `sd::precision_for`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum SdPrecision {
    /// f16 on a GPU; on the CPU f32, or f16 when the memory budget is under 7 GiB (the f32
    /// model's fill takes ≈ 6 GB; docs/BENCHMARKS.md).
    #[default]
    Auto,
    /// Single precision: as diffusers on a CPU.
    F32,
    /// Half precision: 2.3 GB less for an SD-2 fill on the CPU, where its weights are widened per layer.
    F16,
    /// The weights block-wise int8 in memory (SD-2's UNet: ≈ 0.9 GB instead of 1.7 in f16),
    /// each layer's widened when it runs. On the CPU the UNet's and the text encoder's, packed
    /// as `realfill quantize --bits 8` packs them (on burn's path a step measured as fast as
    /// f16's); elsewhere the UNet's on burn's Q8S (docs/BENCHMARKS.md, sessions 15 and 17).
    Int8,
}

/// Whether a Stable Diffusion fill saves what memory it can: the text encoder freed once the
/// prompt is encoded (read again only for a new prompt), the VAE run in overlapping tiles.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum SdMemory {
    /// Low on the CPU when the memory budget is under 7 GiB (as `--sd-precision auto` picks f16).
    #[default]
    Auto,
    /// Free the text encoder once the prompt is encoded (≈ 0.7 GB for SD-2 in f16; a new prompt
    /// reads it again); encode and decode the VAE in 2×2 overlapping tiles, blended (close to,
    /// not equal to, the whole image's).
    Low,
    /// Keep the text encoder between fills; run the VAE on the whole image.
    Normal,
}

/// Stable Diffusion as a person sets it up: the model folder, the prompt, guidance and steps,
/// and how the scene is learned into it. (Doc comments on these fields, and on
/// `RunSettings`'s, are the command line's help; `display_order` keeps `--help` listing the
/// flags as it always has, with `cli::ModelArgs`' own between them.)
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default)]
pub struct SdSettings {
    /// The Stable Diffusion folder for `--engine sd`: stabilityai/stable-diffusion-2-inpainting
    /// in diffusers layout (unet/, vae/, text_encoder/, tokenizer/, scheduler/), as the person
    /// downloaded it (README, "Stable Diffusion"). realfill downloads nothing.
    #[arg(long, value_name = "DIR", display_order = 111)]
    pub model: Option<std::path::PathBuf>,
    /// What Stable Diffusion should paint (default: empty — the fill follows the image).
    // With a learned LoRA and no prompt, RealFill's "a photo of sks".
    #[arg(long, default_value = "", display_order = 112)]
    pub prompt: String,
    /// Stable Diffusion's classifier-free guidance scale (1 = no guidance, one pass per step).
    #[arg(long, default_value_t = defaults::GUIDANCE, display_order = 113)]
    pub guidance: f32,
    /// Denoising steps: `--steps` (`cli::SampleArgs`) sets these and the scene model's.
    #[arg(skip = defaults::SD_STEPS)]
    pub steps: usize,
    /// The sampler: `--sampler` (`cli::SampleArgs`) sets this and the scene model's.
    #[arg(skip = defaults::SD_SAMPLER)]
    pub sampler: SamplerKind,
    /// Fill with this LoRA (diffusers/PEFT safetensors) instead of the scene's learned one.
    #[arg(long, value_name = "FILE", display_order = 114)]
    pub lora: Option<std::path::PathBuf>,
    /// LoRA rank when Stable Diffusion learns the scene.
    #[arg(long, default_value_t = defaults::LORA_RANK, display_order = 115)]
    pub lora_rank: usize,
    /// How long Stable Diffusion learns the scene: quick (200 steps of batch 4) or quality
    /// (the paper's 2,000 steps of batch 16; an hour on a GPU, days on a CPU).
    #[arg(long, value_enum, default_value_t = LoraPreset::Quick, display_order = 116)]
    pub lora_preset: LoraPreset,
    /// Override the preset's learning steps / batch.
    #[arg(long, display_order = 117)]
    pub lora_steps: Option<usize>,
    #[arg(long, display_order = 118)]
    pub lora_batch: Option<usize>,
    /// Examples per forward/backward pass when the batch does not fit in memory (gradients
    /// are summed: the same step).
    #[arg(long, display_order = 119)]
    pub lora_micro_batch: Option<usize>,
    /// The float type of the UNet and the text encoder when Stable Diffusion fills.
    #[arg(long = "sd-precision", value_enum, default_value_t = SdPrecision::Auto, display_order = 113)]
    pub precision: SdPrecision,
    /// How a Stable Diffusion fill uses memory.
    #[arg(long = "sd-memory", value_enum, default_value_t = SdMemory::Auto, display_order = 113)]
    pub memory: SdMemory,
}

impl Default for SdSettings {
    fn default() -> Self {
        SdSettings {
            model: None,
            prompt: String::new(),
            guidance: defaults::GUIDANCE,
            steps: defaults::SD_STEPS,
            sampler: defaults::SD_SAMPLER,
            lora: None,
            lora_rank: defaults::LORA_RANK,
            lora_preset: LoraPreset::Quick,
            lora_steps: None,
            lora_batch: None,
            lora_micro_batch: None,
            precision: SdPrecision::Auto,
            memory: SdMemory::Auto,
        }
    }
}

/// Run settings as a person sets them: command-line flags (this struct is clap's), the app's
/// Run panel, a project file. Every field has a default, so files from older versions still
/// load. The flags only some commands take (`--steps`, `--sampler`, `--candidates`) are
/// declared by those commands (`cli::SampleArgs`, `cli::FillArgs`) and skipped here.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default)]
pub struct RunSettings {
    /// Which denoiser fills: `patch` (training-free, seconds), `scene` (learned per scene,
    /// minutes the first time, then cached), `auto` (the patch engine: it won on the evaluation
    /// scenes, docs/BENCHMARKS.md). `learn` learns the scene model; `--engine patch` there is
    /// refused (the patch engine has nothing to learn).
    #[arg(long, value_enum, default_value_t = EngineKind::Auto, display_order = 110)]
    pub engine: EngineKind,
    /// Long side of the working size in pixels (rounded to a multiple of 8).
    #[arg(long, default_value_t = defaults::SIZE, display_order = 100)]
    pub size: usize,
    /// Denoising steps of the scene model (the patch engine runs its own schedule).
    #[arg(skip = defaults::STEPS)]
    pub steps: usize,
    /// Random seed (same seed, same backend → same output).
    #[arg(long, default_value_t = 0, display_order = 101)]
    pub seed: u64,
    /// Fills per press of Fill (successive seeds), ranked by agreement with the references.
    #[arg(skip = defaults::CANDIDATES)]
    pub candidates: usize,
    /// Learning steps for the scene model.
    #[arg(long, default_value_t = defaults::LEARN_STEPS, display_order = 104)]
    pub learn_steps: usize,
    /// Learning batch size.
    #[arg(long, default_value_t = defaults::BATCH, display_order = 105)]
    pub batch: usize,
    /// Learning crop size in pixels (multiple of 8).
    #[arg(long, default_value_t = defaults::CROP, display_order = 106)]
    pub crop: usize,
    #[arg(skip)]
    pub sampler: SamplerKind,
    /// The Stable Diffusion engine's model and choices.
    #[command(flatten)]
    pub sd: SdSettings,
}

impl Default for RunSettings {
    fn default() -> Self {
        RunSettings {
            engine: EngineKind::Auto,
            size: defaults::SIZE,
            steps: defaults::STEPS,
            seed: 0,
            candidates: defaults::CANDIDATES,
            learn_steps: defaults::LEARN_STEPS,
            batch: defaults::BATCH,
            crop: defaults::CROP,
            sampler: SamplerKind::Ddim,
            sd: SdSettings::default(),
        }
    }
}

fn check(flag: &str, v: usize, r: &RangeInclusive<usize>) -> Result<()> {
    if r.contains(&v) { Ok(()) } else { Err(Error::Invalid(format!("{flag} {v}: give {} to {}", r.start(), r.end()))) }
}

impl RunSettings {
    /// Refuse values outside `LIMITS`, naming the command-line flag.
    pub fn validate(&self) -> Result<()> {
        let l = &LIMITS;
        check("--size", self.size, &l.size)?;
        check("--steps", self.steps, &l.steps)?;
        check("--candidates", self.candidates, &l.candidates)?;
        check("--learn-steps", self.learn_steps, &l.learn_steps)?;
        check("--batch", self.batch, &l.batch)?;
        check("--crop", self.crop, &l.crop)?;
        if !self.crop.is_multiple_of(8) {
            return Err(Error::Invalid(format!("--crop {}: must be a multiple of 8", self.crop)));
        }
        check("--steps", self.sd.steps, &l.steps)?;
        check("--lora-rank", self.sd.lora_rank, &(1..=128))?;
        if let Some(n) = self.sd.lora_steps {
            check("--lora-steps", n, &l.learn_steps)?;
        }
        if let Some(n) = self.sd.lora_batch {
            check("--lora-batch", n, &l.batch)?;
        }
        if let Some(n) = self.sd.lora_micro_batch {
            check("--lora-micro-batch", n, &l.batch)?;
        }
        if !l.guidance.contains(&self.sd.guidance) {
            return Err(Error::Invalid(format!(
                "--guidance {}: give {} to {}",
                self.sd.guidance,
                l.guidance.start(),
                l.guidance.end()
            )));
        }
        if self.engine == EngineKind::StableDiffusion && self.sd.model.is_none() {
            return Err(Error::Invalid(
                "--engine sd needs --model DIR: the diffusers folder of stable-diffusion-2-inpainting \
                 (README, \"Stable Diffusion\"); realfill downloads nothing"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Every field clamped into `LIMITS` (a hand-edited file may hold anything); valid after.
    pub fn clamped(&self) -> RunSettings {
        let l = &LIMITS;
        let clamp = |v: usize, r: &RangeInclusive<usize>| v.clamp(*r.start(), *r.end());
        RunSettings {
            size: clamp(self.size, &l.size) / 8 * 8,
            steps: clamp(self.steps, &l.steps),
            candidates: clamp(self.candidates, &l.candidates),
            learn_steps: clamp(self.learn_steps, &l.learn_steps),
            batch: clamp(self.batch, &l.batch),
            crop: clamp(self.crop, &l.crop) / 8 * 8,
            sd: SdSettings {
                steps: clamp(self.sd.steps, &l.steps),
                lora_rank: self.sd.lora_rank.clamp(1, 128),
                lora_steps: self.sd.lora_steps.map(|n| clamp(n, &l.learn_steps)),
                lora_batch: self.sd.lora_batch.map(|n| clamp(n, &l.batch)),
                lora_micro_batch: self.sd.lora_micro_batch.map(|n| clamp(n, &l.batch)),
                guidance: if self.sd.guidance.is_finite() {
                    self.sd.guidance.clamp(*l.guidance.start(), *l.guidance.end())
                } else {
                    defaults::GUIDANCE
                },
                ..self.sd.clone()
            },
            // Stable Diffusion without a model cannot run; a file asking for it falls back.
            engine: if self.engine == EngineKind::StableDiffusion && self.sd.model.is_none() {
                EngineKind::Auto
            } else {
                self.engine
            },
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_clamping_makes_anything_valid() {
        RunSettings::default().validate().unwrap();
        let wild = RunSettings {
            size: 5,
            steps: 0,
            candidates: 99,
            learn_steps: usize::MAX,
            batch: 0,
            crop: 1_000_001,
            ..Default::default()
        };
        assert!(wild.validate().is_err());
        let c = wild.clamped();
        c.validate().unwrap();
        assert_eq!((c.size, c.steps, c.candidates, c.batch, c.crop), (32, 1, 32, 1, 512));
    }

    #[test]
    fn older_files_naming_the_scene_engine_still_load() {
        let r: RunSettings = serde_json::from_str(r#"{"engine":"Scene"}"#).unwrap();
        assert_eq!(r.engine, EngineKind::SceneModel);
        let back: RunSettings = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn an_invalid_value_is_named_with_its_flag_and_range() {
        let e = RunSettings { crop: 12, ..Default::default() }.validate().unwrap_err().to_string();
        assert!(e.contains("--crop 12: give 16 to 512"), "{e}");
        let e = RunSettings { crop: 20, ..Default::default() }.validate().unwrap_err().to_string();
        assert!(e.contains("--crop 20: must be a multiple of 8"), "{e}");
    }
}
