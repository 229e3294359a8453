//! `realfill sd-random --out DIR`: a Stable Diffusion folder of the exact shape of
//! stabilityai/stable-diffusion-2-inpainting (its published configs) with random fp16 weights,
//! written without Python or a download, so that `realfill bench --sd-model DIR` can time the
//! real model's size on any machine (a lent GPU reaches no network either). Not for pictures.
//! `--tiny` writes a model of the same family small enough for tests.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use clap::Args;

use crate::diffusion::sd::config::{TextConfig, UNetConfig, VaeConfig};
use crate::diffusion::sd::text::TextEncoder;
use crate::diffusion::sd::unet::UNet;
use crate::diffusion::sd::vae::Vae;
use crate::diffusion::sd::weights::Weights;
use crate::error::{Error, Result};

#[derive(Args, Debug, Clone)]
pub struct SdRandomArgs {
    /// The folder to write (created; must not exist yet).
    #[arg(long)]
    pub out: PathBuf,
    /// A tiny model of the same family instead of SD-2's size.
    #[arg(long)]
    pub tiny: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

const SD2_UNET: &str = r#"{"_class_name":"UNet2DConditionModel","act_fn":"silu","attention_head_dim":[5,10,20,20],
"block_out_channels":[320,640,1280,1280],"center_input_sample":false,"cross_attention_dim":1024,
"down_block_types":["CrossAttnDownBlock2D","CrossAttnDownBlock2D","CrossAttnDownBlock2D","DownBlock2D"],
"downsample_padding":1,"dual_cross_attention":false,"flip_sin_to_cos":true,"freq_shift":0,"in_channels":9,
"layers_per_block":2,"mid_block_scale_factor":1,"norm_eps":1e-05,"norm_num_groups":32,"out_channels":4,
"sample_size":64,"up_block_types":["UpBlock2D","CrossAttnUpBlock2D","CrossAttnUpBlock2D","CrossAttnUpBlock2D"],
"use_linear_projection":true}"#;
const SD2_VAE: &str = r#"{"_class_name":"AutoencoderKL","act_fn":"silu","block_out_channels":[128,256,512,512],
"down_block_types":["DownEncoderBlock2D","DownEncoderBlock2D","DownEncoderBlock2D","DownEncoderBlock2D"],
"in_channels":3,"latent_channels":4,"layers_per_block":2,"norm_num_groups":32,"out_channels":3,"sample_size":512,
"up_block_types":["UpDecoderBlock2D","UpDecoderBlock2D","UpDecoderBlock2D","UpDecoderBlock2D"]}"#;
const SD2_TEXT: &str = r#"{"architectures":["CLIPTextModel"],"hidden_act":"gelu","hidden_size":1024,
"intermediate_size":4096,"layer_norm_eps":1e-05,"max_position_embeddings":77,"num_attention_heads":16,
"num_hidden_layers":23,"vocab_size":49408,"projection_dim":512}"#;
const TINY_UNET: &str = r#"{"attention_head_dim":[2,4],"block_out_channels":[16,32],"cross_attention_dim":16,
"down_block_types":["CrossAttnDownBlock2D","DownBlock2D"],"up_block_types":["UpBlock2D","CrossAttnUpBlock2D"],
"in_channels":9,"layers_per_block":1,"norm_num_groups":8,"sample_size":16,"use_linear_projection":true}"#;
const TINY_VAE: &str = r#"{"block_out_channels":[8,16],"down_block_types":["DownEncoderBlock2D","DownEncoderBlock2D"],
"up_block_types":["UpDecoderBlock2D","UpDecoderBlock2D"],"norm_num_groups":4,"layers_per_block":1}"#;
const TINY_TEXT: &str = r#"{"hidden_act":"gelu","hidden_size":16,"intermediate_size":32,"num_attention_heads":2,
"num_hidden_layers":2,"vocab_size":514}"#;
const SCHEDULER: &str = r#"{"_class_name":"PNDMScheduler","beta_end":0.012,"beta_schedule":"scaled_linear",
"beta_start":0.00085,"clip_sample":false,"num_train_timesteps":1000,"set_alpha_to_one":false,"skip_prk_steps":true,
"steps_offset":1}"#;

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).map_err(|e| Error::output(p, e.to_string()))?;
    }
    std::fs::write(path, bytes).map_err(|e| Error::output(path, e.to_string()))
}

/// The tensors a synthetic source made, as one fp16 safetensors file.
fn save_fp16(path: &Path, made: Vec<(String, Vec<usize>, Vec<f32>)>) -> Result<()> {
    let owned: Vec<(String, Vec<usize>, Vec<u8>)> = made
        .into_iter()
        .map(|(n, s, v)| (n, s, v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
        .iter()
        .map(|(n, s, b)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F16, s.clone(), b).expect("sizes"))
        })
        .collect();
    let bytes = safetensors::serialize(views, None).map_err(|e| Error::Engine(e.to_string()))?;
    write(path, &bytes)
}

/// CLIP's byte-level vocabulary without merges: every byte alone and at a word's end.
fn byte_tokenizer(dir: &Path) -> Result<()> {
    let chars = crate::diffusion::sd::tokenizer::bytes_to_unicode();
    let mut vocab = serde_json::Map::new();
    let tokens = chars.iter().map(|c| c.to_string()).chain(chars.iter().map(|c| format!("{c}</w>")));
    for (i, t) in tokens.chain(["<|startoftext|>".to_string(), "<|endoftext|>".to_string()]).enumerate() {
        vocab.insert(t, i.into());
    }
    write(&dir.join("vocab.json"), serde_json::Value::Object(vocab).to_string().as_bytes())?;
    write(&dir.join("merges.txt"), b"#version: 0.2\n")?;
    write(&dir.join("special_tokens_map.json"), br#"{"pad_token":"!"}"#)?;
    write(&dir.join("tokenizer_config.json"), br#"{"model_max_length":77}"#)
}

/// Writes the folder; returns its size in bytes.
pub fn write_random(out: &Path, tiny: bool, seed: u64) -> Result<u64> {
    if out.exists() {
        return Err(Error::output(out, "exists already; give a new folder"));
    }
    let (u, v, t) = if tiny { (TINY_UNET, TINY_VAE, TINY_TEXT) } else { (SD2_UNET, SD2_VAE, SD2_TEXT) };
    let device = Device::flex();
    write(
        &out.join("model_index.json"),
        br#"{"_class_name":"StableDiffusionInpaintPipeline","realfill_random":true}"#,
    )?;
    write(&out.join("scheduler/scheduler_config.json"), SCHEDULER.as_bytes())?;
    byte_tokenizer(&out.join("tokenizer"))?;
    write(&out.join("unet/config.json"), u.as_bytes())?;
    let w = Weights::synthetic(&device, seed);
    drop(UNet::build(&UNetConfig::read(&out.join("unet/config.json"))?, &w)?);
    save_fp16(&out.join("unet/diffusion_pytorch_model.fp16.safetensors"), w.made())?;
    write(&out.join("vae/config.json"), v.as_bytes())?;
    let w = Weights::synthetic(&device, seed + 1);
    drop(Vae::build(&VaeConfig::read(&out.join("vae/config.json"))?, &w)?);
    save_fp16(&out.join("vae/diffusion_pytorch_model.fp16.safetensors"), w.made())?;
    write(&out.join("text_encoder/config.json"), t.as_bytes())?;
    let w = Weights::synthetic(&device, seed + 2);
    drop(TextEncoder::build(&TextConfig::read(&out.join("text_encoder/config.json"))?, &w)?);
    save_fp16(&out.join("text_encoder/model.fp16.safetensors"), w.made())?;
    let mut size = 0;
    for sub in ["unet", "vae", "text_encoder"] {
        for e in std::fs::read_dir(out.join(sub)).map_err(|e| Error::output(out, e.to_string()))?.flatten() {
            size += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    Ok(size)
}

pub fn run(a: &SdRandomArgs) -> Result<()> {
    let size = write_random(&a.out, a.tiny, a.seed)?;
    println!(
        "{}: {} with random fp16 weights ({:.2} GB): for `realfill bench --sd-model`, not for pictures",
        a.out.display(),
        if a.tiny { "a tiny Stable Diffusion inpainting model" } else { "stable-diffusion-2-inpainting's shape" },
        size as f64 / 1e9
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::sd::StableDiffusion;
    use crate::diffusion::sd::inpaint::{InpaintOptions, inpaint};
    use crate::scene::{Mask, RgbF};

    /// The random folder is one realfill loads as it would a downloaded one (every tensor
    /// name and shape the networks ask for, biases where diffusers has them) and fills with.
    #[test]
    fn a_random_tiny_model_loads_and_fills() {
        let dir = std::env::temp_dir().join(format!("realfill-sd-random-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write_random(&dir, true, 3).unwrap();
        let sd = StableDiffusion::load(&dir, &Device::flex(), burn::tensor::DType::F32).unwrap();
        let canvas = RgbF::from_fn(40, 24, |x, y| [x as f32 / 40.0, y as f32 / 24.0, 0.5]);
        let mut hole = Mask::new(40, 24, 0.0);
        hole.set(20, 12, 1.0);
        let o = InpaintOptions {
            prompt: "a photo of sks".into(),
            negative_prompt: String::new(),
            guidance: 3.0,
            steps: 2,
            sampler: crate::settings::SamplerKind::Ddim,
            seed: 0,
            initial_noise: None,
            low_memory: false,
        };
        let out = inpaint(&sd, &canvas, &hole, &o, &mut |_, _, _| {}, &|| false).unwrap();
        assert!(out.data.iter().all(|v| v.is_finite()));
        assert!(write_random(&dir, true, 3).is_err(), "an existing folder is never overwritten");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
