//! diffusers' `UNet2DConditionModel` (Stable Diffusion's denoiser; 9 input channels for the
//! inpainting model: noisy latent, mask, masked-image latent), built from `unet/config.json`.

use std::path::Path;

use burn::nn::GroupNorm;
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::silu;

use super::blocks::{Downsample, Proj, Resnet, Transformer2D, TransformerShape, Upsample};
use super::config::{UNetConfig, UNetLevel};
use super::layers::{Conv, Dense};
use super::packed::Scheme;
use super::weights::Weights;
use crate::error::{Error, Result};

/// One down or up block: resnets, optionally each followed by a transformer, then a resampler.
#[derive(Module, Debug)]
pub struct Block {
    pub(crate) resnets: Vec<Resnet>,
    pub(crate) attentions: Vec<Transformer2D>,
    pub(crate) down: Option<Downsample>,
    pub(crate) up: Option<Upsample>,
}

#[derive(Module, Debug)]
pub struct Mid {
    pub(crate) resnets: Vec<Resnet>,
    pub(crate) attentions: Vec<Transformer2D>,
}

#[derive(Module, Debug)]
pub struct UNet {
    pub(crate) time_1: Dense,
    pub(crate) time_2: Dense,
    pub(crate) conv_in: Conv,
    pub(crate) down_blocks: Vec<Block>,
    pub(crate) mid: Mid,
    pub(crate) up_blocks: Vec<Block>,
    pub(crate) norm_out: GroupNorm,
    pub(crate) conv_out: Conv,
    pub(crate) time_channels: usize,
    pub(crate) flip_sin_to_cos: bool,
    pub(crate) freq_shift: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    /// How its weights are quantised, if its folder was made by `realfill quantize`.
    #[module(skip)]
    pub scheme: Option<Scheme>,
}

fn shape(c: &UNetConfig, lv: &UNetLevel) -> TransformerShape {
    TransformerShape {
        channels: lv.channels,
        heads: lv.heads,
        layers: lv.transformer_layers,
        cross: lv.cross_dim,
        groups: c.norm_num_groups,
        linear: c.use_linear_projection,
    }
}

impl UNet {
    /// Builds the UNet of `dir` (`config.json` and its safetensors) in `dtype`.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<(UNet, UNetConfig)> {
        let c = UNetConfig::read(&dir.join("config.json"))?;
        let w = Weights::open(dir, device, dtype)?;
        Ok((UNet::build(&c, &w)?, c))
    }

    pub fn build(c: &UNetConfig, w: &Weights) -> Result<UNet> {
        let lv = c.levels()?;
        let n = lv.len();
        let ch = &c.block_out_channels;
        let t = 4 * ch[0];
        let (g, eps) = (c.norm_num_groups, c.norm_eps);
        let conv_in_shape = w.shape("conv_in.weight").map(|s| s.to_vec());
        if let Some(s) = &conv_in_shape
            && s.len() == 4
            && s[1] != c.in_channels
        {
            return Err(Error::input(
                &c.file,
                format!("says in_channels = {}, but conv_in takes {} channels", c.in_channels, s[1]),
            ));
        }
        let mut down_blocks = Vec::new();
        let mut prev = ch[0];
        for (i, l) in lv.iter().enumerate() {
            let p = format!("down_blocks.{i}");
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..l.layers {
                let cin = if j == 0 { prev } else { l.channels };
                resnets.push(Resnet::load(w, &format!("{p}.resnets.{j}"), cin, l.channels, Some(t), g, eps)?);
                if l.cross_attention {
                    attentions.push(Transformer2D::load(w, &format!("{p}.attentions.{j}"), &shape(c, l))?);
                }
            }
            let down = (i + 1 < n)
                .then(|| Downsample::load(w, &format!("{p}.downsamplers.0"), l.channels, c.downsample_padding))
                .transpose()?;
            down_blocks.push(Block { resnets, attentions, down, up: None });
            prev = l.channels;
        }
        let last = &lv[n - 1];
        let mid = Mid {
            // diffusers' default: one attention between two resnets (the transformer's own
            // depth is `transformer_layers_per_block`).
            resnets: (0..2)
                .map(|j| {
                    Resnet::load(w, &format!("mid_block.resnets.{j}"), last.channels, last.channels, Some(t), g, eps)
                })
                .collect::<Result<_>>()?,
            attentions: vec![Transformer2D::load(w, "mid_block.attentions.0", &shape(c, last))?],
        };
        // Up levels mirror the down levels; each resnet takes the previous output plus one skip.
        let mut up_blocks = Vec::new();
        let mut prev_out = ch[n - 1];
        for i in 0..n {
            let l = &lv[n - 1 - i];
            let skip_in = ch[(n - 1 - i).saturating_sub(1)];
            let p = format!("up_blocks.{i}");
            let cross = c.up_block_types[i] == "CrossAttnUpBlock2D";
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            let layers = l.layers + 1;
            for j in 0..layers {
                let skip = if j == layers - 1 { skip_in } else { l.channels };
                let cin = if j == 0 { prev_out } else { l.channels };
                resnets.push(Resnet::load(w, &format!("{p}.resnets.{j}"), cin + skip, l.channels, Some(t), g, eps)?);
                if cross {
                    attentions.push(Transformer2D::load(w, &format!("{p}.attentions.{j}"), &shape(c, l))?);
                }
            }
            let up = (i + 1 < n).then(|| Upsample::load(w, &format!("{p}.upsamplers.0"), l.channels)).transpose()?;
            up_blocks.push(Block { resnets, attentions, down: None, up });
            prev_out = l.channels;
        }
        let (ki, ko) = (c.conv_in_kernel, c.conv_out_kernel);
        Ok(UNet {
            time_1: w.linear("time_embedding.linear_1", ch[0], t)?,
            time_2: w.linear("time_embedding.linear_2", t, t)?,
            conv_in: w.conv("conv_in", c.in_channels, ch[0], ki, 1, ki / 2)?,
            down_blocks,
            mid,
            up_blocks,
            norm_out: w.group_norm("conv_norm_out", g, ch[0], eps)?,
            conv_out: w.conv("conv_out", ch[0], c.out_channels, ko, 1, ko / 2)?,
            time_channels: ch[0],
            flip_sin_to_cos: c.flip_sin_to_cos,
            freq_shift: c.freq_shift,
            in_channels: c.in_channels,
            out_channels: c.out_channels,
            scheme: w.scheme(),
        })
    }

    /// Every attention projection of the transformers (LoRA's targets in the UNet).
    pub fn projs_mut(&mut self) -> Vec<&mut Proj> {
        let blocks = self.down_blocks.iter_mut().chain(self.up_blocks.iter_mut());
        let mut out: Vec<&mut Proj> =
            blocks.flat_map(|b| b.attentions.iter_mut()).flat_map(|a| a.projs_mut()).collect();
        out.extend(self.mid.attentions.iter_mut().flat_map(|a| a.projs_mut()));
        out
    }

    /// `sample`: [B, in, h, w] (h, w divisible by the config's stride); `timesteps`: B values;
    /// `context`: [B, 77, cross_attention_dim]. Returns [B, out, h, w] in f32 (computed in the
    /// weights' float type).
    pub fn forward(&self, sample: Tensor<4>, timesteps: &[f32], context: &Tensor<3>) -> Tensor<4> {
        if super::cpu_forward::serves(&sample.device()) {
            return self.forward_cpu(sample, timesteps, context);
        }
        self.forward_burn(sample, timesteps, context)
    }

    /// `forward` on realfill's CPU kernels (`cpu_forward`): the same arguments and result.
    pub fn forward_cpu(&self, sample: Tensor<4>, timesteps: &[f32], context: &Tensor<3>) -> Tensor<4> {
        use super::cpu_forward::{
            conv, dense, downsample, grid, norm, resnet, silu, tensor4, transformer, upsample, values,
        };
        let u = self;
        let device = sample.device();
        let n = sample.dims()[0];
        assert_eq!(timesteps.len(), n, "one timestep per image");
        let [_, m, _] = context.dims();
        let ctx = values(context.clone());
        let ctx = (ctx.as_slice(), m);
        let feats = timestep_embedding(timesteps, u.time_channels, u.flip_sin_to_cos, u.freq_shift);
        let mut temb = dense(&u.time_1, &feats, n, None);
        silu(&mut temb);
        let mut temb = dense(&u.time_2, &temb, n, None);
        // Every resnet applies SiLU to the embedding first (`blocks::Resnet`).
        silu(&mut temb);
        let temb = Some(temb.as_slice());
        let mut h = conv(&u.conv_in, &grid(sample));
        let mut skips = vec![h.clone()];
        for b in &u.down_blocks {
            for (j, r) in b.resnets.iter().enumerate() {
                h = resnet(r, h, temb);
                if let Some(a) = b.attentions.get(j) {
                    h = transformer(a, h, ctx);
                }
                skips.push(h.clone());
            }
            if let Some(d) = &b.down {
                h = downsample(d, &h);
                skips.push(h.clone());
            }
        }
        h = resnet(&u.mid.resnets[0], h, temb);
        for (a, r) in u.mid.attentions.iter().zip(&u.mid.resnets[1..]) {
            h = resnet(r, transformer(a, h, ctx), temb);
        }
        for b in &u.up_blocks {
            for (j, r) in b.resnets.iter().enumerate() {
                let skip = skips.pop().expect("one skip per up resnet");
                h = resnet(r, h.concat(&skip), temb);
                drop(skip);
                if let Some(a) = b.attentions.get(j) {
                    h = transformer(a, h, ctx);
                }
            }
            if let Some(up) = &b.up {
                h = upsample(up, &h);
            }
        }
        let out = conv(&u.conv_out, &norm(&u.norm_out, &h, true));
        tensor4(&out, &device)
    }

    /// `forward` on burn, whatever the device (the CPU's own kernels compare against it).
    pub fn forward_burn(&self, sample: Tensor<4>, timesteps: &[f32], context: &Tensor<3>) -> Tensor<4> {
        let device = sample.device();
        // The float type the model computes in: its output norm's (never quantised, `quant`).
        let dtype = self.norm_out.gamma.as_ref().map_or(DType::F32, |g| g.val().dtype());
        let context = &context.clone().cast(dtype);
        let feats = timestep_embedding(timesteps, self.time_channels, self.flip_sin_to_cos, self.freq_shift);
        let feats =
            Tensor::<2>::from_data(TensorData::new(feats, [timesteps.len(), self.time_channels]), (&device, dtype));
        let temb = self.time_2.forward(silu(self.time_1.forward(feats)));
        let mut h = self.conv_in.forward(sample.cast(dtype));
        let mut skips = vec![h.clone()];
        for b in &self.down_blocks {
            for (j, r) in b.resnets.iter().enumerate() {
                h = r.forward(h, Some(&temb));
                if let Some(a) = b.attentions.get(j) {
                    h = a.forward(h, context);
                }
                skips.push(h.clone());
            }
            if let Some(d) = &b.down {
                h = d.forward(h);
                skips.push(h.clone());
            }
        }
        h = self.mid.resnets[0].forward(h, Some(&temb));
        for (a, r) in self.mid.attentions.iter().zip(&self.mid.resnets[1..]) {
            h = r.forward(a.forward(h, context), Some(&temb));
        }
        for b in &self.up_blocks {
            for (j, r) in b.resnets.iter().enumerate() {
                let skip = skips.pop().expect("one skip per up resnet");
                h = r.forward(Tensor::cat(vec![h, skip], 1), Some(&temb));
                if let Some(a) = b.attentions.get(j) {
                    h = a.forward(h, context);
                }
            }
            if let Some(u) = &b.up {
                h = u.forward(h);
            }
        }
        self.conv_out.forward(silu(self.norm_out.forward(h))).cast(DType::F32)
    }
}

/// diffusers' `get_timestep_embedding`: [sin | cos] (or [cos | sin] when flipped) of t·f_k with
/// f_k = exp(−ln(10000)·k / (half − shift)).
pub fn timestep_embedding(ts: &[f32], dim: usize, flip_sin_to_cos: bool, shift: usize) -> Vec<f32> {
    let half = dim / 2;
    let mut out = Vec::with_capacity(ts.len() * dim);
    for &t in ts {
        // In f32 like diffusers, so the frequencies round the same way.
        let args: Vec<f32> =
            (0..half).map(|k| t * (-(10000f32).ln() * k as f32 / (half as f32 - shift as f32)).exp()).collect();
        let sin = args.iter().map(|a| a.sin());
        let cos = args.iter().map(|a| a.cos());
        if flip_sin_to_cos {
            out.extend(cos.chain(sin));
        } else {
            out.extend(sin.chain(cos));
        }
        if dim % 2 == 1 {
            out.push(0.0);
        }
    }
    out
}
