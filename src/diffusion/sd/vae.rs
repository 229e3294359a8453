//! diffusers' `AutoencoderKL`, built from `vae/config.json`: the encoder to the latent
//! distribution's mean (the inpainting UNet's masked-image input) and the decoder.

use std::path::Path;

use burn::nn::GroupNorm;
use burn::nn::conv::Conv2d;
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::silu;

use super::blocks::{Downsample, Resnet, SpatialAttention, Upsample};
use super::config::VaeConfig;
use super::weights::Weights;
use crate::error::Result;

const EPS: f64 = 1e-6;

#[derive(Module, Debug)]
pub struct Mid {
    resnets: Vec<Resnet>,
    attention: Option<SpatialAttention>,
}

impl Mid {
    fn load(w: &Weights, p: &str, c: &VaeConfig) -> Result<Mid> {
        let ch = *c.block_out_channels.last().expect("non-empty");
        let g = c.norm_num_groups;
        Ok(Mid {
            resnets: (0..2)
                .map(|j| Resnet::load(w, &format!("{p}.resnets.{j}"), ch, ch, None, g, EPS))
                .collect::<Result<_>>()?,
            attention: c
                .mid_block_add_attention
                .then(|| SpatialAttention::load(w, &format!("{p}.attentions.0"), ch, g, EPS))
                .transpose()?,
        })
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut h = self.resnets[0].forward(x, None);
        if let Some(a) = &self.attention {
            h = a.forward(h);
        }
        self.resnets[1].forward(h, None)
    }
}

#[derive(Module, Debug)]
pub struct Level {
    resnets: Vec<Resnet>,
    down: Option<Downsample>,
    up: Option<Upsample>,
}

#[derive(Module, Debug)]
pub struct Encoder {
    conv_in: Conv2d,
    levels: Vec<Level>,
    mid: Mid,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    quant_conv: Option<Conv2d>,
}

#[derive(Module, Debug)]
pub struct Decoder {
    post_quant_conv: Option<Conv2d>,
    conv_in: Conv2d,
    mid: Mid,
    levels: Vec<Level>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

#[derive(Module, Debug)]
pub struct Vae {
    pub encoder: Encoder,
    pub decoder: Decoder,
    pub latent_channels: usize,
}

impl Vae {
    /// Always in f32, as diffusers upcasts Stable Diffusion's VAE (its decoder overflows f16).
    pub fn load(dir: &Path, device: &Device) -> Result<(Vae, VaeConfig)> {
        let c = VaeConfig::read(&dir.join("config.json"))?;
        let w = Weights::open(dir, device, DType::F32)?;
        Ok((Vae::build(&c, &w)?, c))
    }

    pub fn build(c: &VaeConfig, w: &Weights) -> Result<Vae> {
        let ch = &c.block_out_channels;
        let n = ch.len();
        let g = c.norm_num_groups;
        let z = c.latent_channels;
        let mut levels = Vec::new();
        let mut prev = ch[0];
        for (i, &co) in ch.iter().enumerate() {
            let p = format!("encoder.down_blocks.{i}");
            levels.push(Level {
                resnets: (0..c.layers_per_block)
                    .map(|j| {
                        Resnet::load(w, &format!("{p}.resnets.{j}"), if j == 0 { prev } else { co }, co, None, g, EPS)
                    })
                    .collect::<Result<_>>()?,
                down: (i + 1 < n).then(|| Downsample::load(w, &format!("{p}.downsamplers.0"), co, 0)).transpose()?,
                up: None,
            });
            prev = co;
        }
        let encoder = Encoder {
            conv_in: w.conv("encoder.conv_in", c.in_channels, ch[0], 3, 1, 1)?,
            levels,
            mid: Mid::load(w, "encoder.mid_block", c)?,
            norm_out: w.group_norm("encoder.conv_norm_out", g, ch[n - 1], EPS)?,
            conv_out: w.conv("encoder.conv_out", ch[n - 1], 2 * z, 3, 1, 1)?,
            quant_conv: c.use_quant_conv.then(|| w.conv("quant_conv", 2 * z, 2 * z, 1, 1, 0)).transpose()?,
        };
        let mut levels = Vec::new();
        let mut prev = ch[n - 1];
        for i in 0..n {
            let co = ch[n - 1 - i];
            let p = format!("decoder.up_blocks.{i}");
            levels.push(Level {
                resnets: (0..=c.layers_per_block)
                    .map(|j| {
                        Resnet::load(w, &format!("{p}.resnets.{j}"), if j == 0 { prev } else { co }, co, None, g, EPS)
                    })
                    .collect::<Result<_>>()?,
                down: None,
                up: (i + 1 < n).then(|| Upsample::load(w, &format!("{p}.upsamplers.0"), co)).transpose()?,
            });
            prev = co;
        }
        let decoder = Decoder {
            post_quant_conv: c.use_post_quant_conv.then(|| w.conv("post_quant_conv", z, z, 1, 1, 0)).transpose()?,
            conv_in: w.conv("decoder.conv_in", z, ch[n - 1], 3, 1, 1)?,
            mid: Mid::load(w, "decoder.mid_block", c)?,
            levels,
            norm_out: w.group_norm("decoder.conv_norm_out", g, ch[0], EPS)?,
            conv_out: w.conv("decoder.conv_out", ch[0], c.out_channels, 3, 1, 1)?,
        };
        Ok(Vae { encoder, decoder, latent_channels: z })
    }

    /// The latent distribution's mean of `image` ([B, 3, H, W] in [−1, 1]; H, W divisible by
    /// the VAE's factor), unscaled: [B, latent, H/f, W/f].
    pub fn encode_mean(&self, image: Tensor<4>) -> Tensor<4> {
        let e = &self.encoder;
        let mut h = e.conv_in.forward(image);
        for l in &e.levels {
            for r in &l.resnets {
                h = r.forward(h, None);
            }
            if let Some(d) = &l.down {
                h = d.forward(h);
            }
        }
        h = e.mid.forward(h);
        h = e.conv_out.forward(silu(e.norm_out.forward(h)));
        if let Some(q) = &e.quant_conv {
            h = q.forward(h);
        }
        h.narrow(1, 0, self.latent_channels)
    }

    /// The image of an unscaled latent, [B, 3, H, W] (roughly [−1, 1]).
    pub fn decode(&self, latent: Tensor<4>) -> Tensor<4> {
        let d = &self.decoder;
        let mut h = latent;
        if let Some(q) = &d.post_quant_conv {
            h = q.forward(h);
        }
        h = d.mid.forward(d.conv_in.forward(h));
        for l in &d.levels {
            for r in &l.resnets {
                h = r.forward(h, None);
            }
            if let Some(u) = &l.up {
                h = u.forward(h);
            }
        }
        d.conv_out.forward(silu(d.norm_out.forward(h)))
    }
}
