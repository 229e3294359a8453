//! diffusers' `UNet2DConditionModel` (Stable Diffusion's denoiser; 9 input channels for the
//! inpainting model: noisy latent, mask, masked-image latent), built from `unet/config.json`.

use std::path::Path;

use burn::nn::GroupNorm;
use burn::optim::{GradientsAccumulator, GradientsParams};
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
        Self::load_packing(dir, device, dtype, None)
    }

    /// `load`, float weights packed by `pack` as they are read (`Weights::packing`).
    pub fn load_packing(dir: &Path, device: &Device, dtype: DType, pack: Option<Scheme>) -> Result<(UNet, UNetConfig)> {
        let c = UNetConfig::read(&dir.join("config.json"))?;
        let w = Weights::open(dir, device, dtype)?.packing(pack);
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
        let dtype = self.dtype();
        let context = &context.clone().cast(dtype);
        let temb = self.time_embedding(timesteps, &sample.device(), dtype);
        let mut h = sample.cast(dtype);
        let mut skips = Vec::new();
        for piece in self.pieces() {
            let skip = matches!(piece, Piece::Up(..)).then(|| skips.pop().expect("one skip per up resnet"));
            h = self.run(piece, h, skip, &temb, context);
            if piece.is_skip() {
                skips.push(h.clone());
            }
        }
        self.head(h)
    }

    /// The float type the model computes in: its output norm's (never quantised, `quant`).
    fn dtype(&self) -> DType {
        self.norm_out.gamma.as_ref().map_or(DType::F32, |g| g.val().dtype())
    }

    fn time_embedding(&self, timesteps: &[f32], device: &Device, dtype: DType) -> Tensor<2> {
        let feats = timestep_embedding(timesteps, self.time_channels, self.flip_sin_to_cos, self.freq_shift);
        let feats =
            Tensor::<2>::from_data(TensorData::new(feats, [timesteps.len(), self.time_channels]), (device, dtype));
        self.time_2.forward(silu(self.time_1.forward(feats)))
    }

    /// The pieces of the forward pass in order (`Piece`).
    fn pieces(&self) -> Vec<Piece> {
        let mut v = vec![Piece::In];
        for (i, b) in self.down_blocks.iter().enumerate() {
            v.extend((0..b.resnets.len()).map(|j| Piece::Down(i, j)));
            if b.down.is_some() {
                v.push(Piece::Downsample(i));
            }
        }
        v.extend((0..self.mid.resnets.len()).map(Piece::Mid));
        for (i, b) in self.up_blocks.iter().enumerate() {
            v.extend((0..b.resnets.len()).map(|j| Piece::Up(i, j)));
            if b.up.is_some() {
                v.push(Piece::Upsample(i));
            }
        }
        v
    }

    /// Whether `piece` holds a transformer (where LoRA's adapters are).
    fn has_attention(&self, piece: Piece) -> bool {
        match piece {
            Piece::Down(i, j) => self.down_blocks[i].attentions.len() > j,
            Piece::Mid(j) => j > 0 && self.mid.attentions.len() >= j,
            Piece::Up(i, j) => self.up_blocks[i].attentions.len() > j,
            _ => false,
        }
    }

    /// One piece on `h` (`skip`: the skip an up resnet joins to it).
    fn run(&self, piece: Piece, h: Tensor<4>, skip: Option<Tensor<4>>, temb: &Tensor<2>, ctx: &Tensor<3>) -> Tensor<4> {
        match piece {
            Piece::In => self.conv_in.forward(h),
            Piece::Down(i, j) => {
                let b = &self.down_blocks[i];
                let h = b.resnets[j].forward(h, Some(temb));
                match b.attentions.get(j) {
                    Some(a) => a.forward(h, ctx),
                    None => h,
                }
            }
            Piece::Downsample(i) => self.down_blocks[i].down.as_ref().expect("a downsampler").forward(h),
            // diffusers' default: one attention between two resnets (the transformer's own
            // depth is `transformer_layers_per_block`).
            Piece::Mid(0) => self.mid.resnets[0].forward(h, Some(temb)),
            Piece::Mid(j) => self.mid.resnets[j].forward(self.mid.attentions[j - 1].forward(h, ctx), Some(temb)),
            Piece::Up(i, j) => {
                let b = &self.up_blocks[i];
                let skip = skip.expect("an up resnet's skip");
                let h = b.resnets[j].forward(Tensor::cat(vec![h, skip], 1), Some(temb));
                match b.attentions.get(j) {
                    Some(a) => a.forward(h, ctx),
                    None => h,
                }
            }
            Piece::Upsample(i) => self.up_blocks[i].up.as_ref().expect("an upsampler").forward(h),
        }
    }

    /// The output layers, to f32.
    fn head(&self, h: Tensor<4>) -> Tensor<4> {
        self.conv_out.forward(silu(self.norm_out.forward(h))).cast(DType::F32)
    }

    /// LoRA learning's forward and backward pass through the UNet in pieces (activation
    /// checkpointing): the forward pass runs without autodiff, keeping only each piece's input
    /// feature maps (a few MB each); the backward pass then runs each piece again with autodiff,
    /// from the last to the first, and backpropagates the gradient of its output through it
    /// alone. So only one piece's activations are held at a time (at 512², the ≈ 9 GB of the
    /// whole network's would be kept otherwise), for one more forward pass of compute.
    ///
    /// `loss` turns the UNet's output (as `forward` returns it) into the loss, whose value is
    /// returned with the gradients of `scale` × loss: the adapters' (by parameter) and the
    /// context's (on the inner device, `None` when no piece attends to it). The same gradients
    /// as one backward pass through `forward`, up to the order of float sums.
    pub fn learn_in_pieces(
        &self,
        sample: Tensor<4>,
        timesteps: &[f32],
        context: &Tensor<3>,
        loss: impl FnOnce(Tensor<4>) -> Tensor<1>,
        scale: f32,
    ) -> (f32, GradientsParams, Option<Tensor<3>>) {
        let dtype = self.dtype();
        let plain = self.valid();
        let ctx = context.clone().inner().cast(dtype);
        let device = ctx.device();
        let pieces = self.pieces();
        // The forward pass without autodiff: each piece's inputs, and which skip it pushes or pops.
        let temb = plain.time_embedding(timesteps, &device, dtype);
        let mut h = sample.inner().cast(dtype);
        let mut skips: Vec<Tensor<4>> = Vec::new();
        let mut open: Vec<usize> = Vec::new();
        let mut saved = Vec::with_capacity(pieces.len());
        for &piece in &pieces {
            let pop = matches!(piece, Piece::Up(..)).then(|| open.pop().expect("one skip per up resnet"));
            let skip = pop.map(|s| skips[s].clone());
            saved.push((h.clone(), pop));
            h = plain.run(piece, h, skip, &temb, &ctx);
            if piece.is_skip() {
                open.push(skips.len());
                skips.push(h.clone());
            }
        }
        drop(plain);
        let leaf = |t: Tensor<4>| t.autodiff().require_grad();
        let out = leaf(h);
        let l = loss(self.head(out.clone()));
        let value: f32 = l.clone().into_scalar();
        let mut grads = (l * scale).backward();
        let mut g_h = out.grad(&grads);
        let mut g_skip: Vec<Option<Tensor<4>>> = vec![None; skips.len()];
        let mut g_ctx: Option<Tensor<3>> = None;
        let mut acc = GradientsAccumulator::new();
        acc.accumulate(self, GradientsParams::from_module(&mut grads, self));
        drop(grads);
        // Pieces before the first transformer have no adapters and nothing before them to learn.
        let first = pieces.iter().position(|&p| self.has_attention(p)).unwrap_or(pieces.len());
        let temb = self.time_embedding(timesteps, &device.autodiff(), dtype).detach();
        let mut pushed = skips.len();
        for (k, &piece) in pieces.iter().enumerate().rev() {
            let mut g_out = g_h.take();
            if piece.is_skip() {
                pushed -= 1;
                g_out = match (g_out, g_skip[pushed].take()) {
                    (Some(a), Some(b)) => Some(a + b),
                    (a, b) => a.or(b),
                };
            }
            if k < first {
                break;
            }
            let Some(g_out) = g_out else { continue };
            let (h_in, pop) = saved[k].clone();
            let h_in = leaf(h_in);
            let skip = pop.map(|s| leaf(skips[s].clone()));
            let ctx_leaf = ctx.clone().autodiff().require_grad();
            let y = self.run(piece, h_in.clone(), skip.clone(), &temb, &ctx_leaf);
            let mut grads = (y * g_out.autodiff()).sum().backward();
            g_h = h_in.grad(&grads);
            if let (Some(s), Some(skip)) = (pop, skip) {
                g_skip[s] = skip.grad(&grads);
            }
            if let Some(g) = ctx_leaf.grad(&grads) {
                g_ctx = Some(match g_ctx {
                    Some(a) => a + g,
                    None => g,
                });
            }
            acc.accumulate(self, GradientsParams::from_module(&mut grads, self));
        }
        (value, acc.grads(), g_ctx)
    }
}

/// A piece of the UNet's forward pass between two feature maps (`UNet::learn_in_pieces`).
#[derive(Clone, Copy, Debug)]
enum Piece {
    /// `conv_in`.
    In,
    /// Down block i's resnet j and its transformer, if any.
    Down(usize, usize),
    Downsample(usize),
    /// The middle block's first resnet (0), or its transformer j − 1 and resnet j.
    Mid(usize),
    /// Up block i's resnet j on the previous map joined with a skip, and its transformer.
    Up(usize, usize),
    Upsample(usize),
}

impl Piece {
    /// Whether an up resnet later takes this piece's output as its skip.
    fn is_skip(self) -> bool {
        matches!(self, Piece::In | Piece::Down(..) | Piece::Downsample(_))
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
