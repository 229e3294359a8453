//! The building blocks Stable Diffusion's UNet and VAE share, as diffusers defines them:
//! `ResnetBlock2D`, `Attention`, `Transformer2DModel` with its `BasicTransformerBlock`
//! (self-attention, cross-attention, GEGLU feed-forward), `Downsample2D` and `Upsample2D`.
//! Each is built from the weight names diffusers uses under a prefix.

use burn::module::Param;
use burn::nn::{GroupNorm, LayerNorm};
use burn::prelude::*;
use burn::tensor::activation::{gelu, silu};
use burn::tensor::module::{attention, linear};
use burn::tensor::ops::AttentionModuleOptions;

use super::layers::{Conv, Dense};
use super::weights::Weights;
use crate::error::Result;

#[derive(Module, Debug)]
pub struct Resnet {
    pub(crate) norm1: GroupNorm,
    pub(crate) conv1: Conv,
    pub(crate) time_emb_proj: Option<Dense>,
    pub(crate) norm2: GroupNorm,
    pub(crate) conv2: Conv,
    pub(crate) conv_shortcut: Option<Conv>,
}

impl Resnet {
    /// `temb`: the time-embedding width (None in the VAE).
    pub fn load(
        w: &Weights,
        p: &str,
        cin: usize,
        cout: usize,
        temb: Option<usize>,
        groups: usize,
        eps: f64,
    ) -> Result<Self> {
        Ok(Resnet {
            norm1: w.group_norm(&format!("{p}.norm1"), groups, cin, eps)?,
            conv1: w.conv(&format!("{p}.conv1"), cin, cout, 3, 1, 1)?,
            time_emb_proj: temb.map(|t| w.linear(&format!("{p}.time_emb_proj"), t, cout)).transpose()?,
            norm2: w.group_norm(&format!("{p}.norm2"), groups, cout, eps)?,
            conv2: w.conv(&format!("{p}.conv2"), cout, cout, 3, 1, 1)?,
            conv_shortcut: (cin != cout)
                .then(|| w.conv(&format!("{p}.conv_shortcut"), cin, cout, 1, 1, 0))
                .transpose()?,
        })
    }

    /// `temb`: the UNet's time embedding [B, T] (the SiLU is applied here, as diffusers does).
    pub fn forward(&self, x: Tensor<4>, temb: Option<&Tensor<2>>) -> Tensor<4> {
        let mut h = self.conv1.forward(silu(self.norm1.forward(x.clone())));
        if let (Some(proj), Some(t)) = (&self.time_emb_proj, temb) {
            let [b, c, _, _] = h.dims();
            h = h + proj.forward(silu(t.clone())).reshape([b, c, 1, 1]);
        }
        let h = self.conv2.forward(silu(self.norm2.forward(h)));
        match &self.conv_shortcut {
            Some(s) => s.forward(x) + h,
            None => x + h,
        }
    }
}

/// A linear projection that can carry a LoRA adapter (RealFill learns the scene into these):
/// `base(x) + scale · (x·down)·up`, the base frozen while learning.
#[derive(Module, Debug)]
pub struct Proj {
    pub base: Dense,
    pub lora: Option<Lora>,
    /// The diffusers/transformers name of the layer (`….attn1.to_q`), for LoRA files.
    #[module(skip)]
    pub name: String,
}

/// A rank-r adapter: `down` [in, r], `up` [r, out] (burn's layout; PEFT stores `lora_A`
/// [r, in] and `lora_B` [out, r]), scaled by alpha / r.
#[derive(Module, Debug)]
pub struct Lora {
    pub down: Param<Tensor<2>>,
    pub up: Param<Tensor<2>>,
    pub scale: f32,
}

impl Proj {
    pub fn load(w: &Weights, name: &str, din: usize, dout: usize) -> Result<Self> {
        Ok(Proj { base: w.linear(name, din, dout)?, lora: None, name: name.to_string() })
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match &self.lora {
            None => self.base.forward(x),
            Some(l) => {
                // The adapter stays f32 (it is what learns) beside an f16 base on a GPU.
                let dtype = x.dtype();
                let low = linear(linear(x.clone().cast(l.down.val().dtype()), l.down.val(), None), l.up.val(), None);
                self.base.forward(x) + (low * l.scale).cast(dtype)
            }
        }
    }

    /// (in, out) widths.
    pub fn dims(&self) -> (usize, usize) {
        (self.base.din, self.base.dout)
    }
}

/// diffusers' `Attention`: multi-head scaled dot-product attention over [B, N, C] tokens.
#[derive(Module, Debug)]
pub struct Attention {
    pub(crate) to_q: Proj,
    pub(crate) to_k: Proj,
    pub(crate) to_v: Proj,
    pub(crate) to_out: Proj,
    pub(crate) heads: usize,
}

impl Attention {
    /// `context`: the width of the keys' source (the query width for self-attention).
    /// Old VAE checkpoints name the projections `query`/`key`/`value`/`proj_attn`.
    pub fn load(w: &Weights, p: &str, dim: usize, context: usize, heads: usize, inner: usize) -> Result<Self> {
        let legacy = !w.has(&format!("{p}.to_q.weight")) && w.has(&format!("{p}.query.weight"));
        let n = |new: &str, old: &str| format!("{p}.{}", if legacy { old } else { new });
        Ok(Attention {
            to_q: Proj::load(w, &n("to_q", "query"), dim, inner)?,
            to_k: Proj::load(w, &n("to_k", "key"), context, inner)?,
            to_v: Proj::load(w, &n("to_v", "value"), context, inner)?,
            to_out: Proj::load(w, &n("to_out.0", "proj_attn"), inner, dim)?,
            heads,
        })
    }

    pub fn projs_mut(&mut self) -> [&mut Proj; 4] {
        [&mut self.to_q, &mut self.to_k, &mut self.to_v, &mut self.to_out]
    }

    /// `x`: [B, N, C]; `context`: [B, M, D] or None for self-attention.
    pub fn forward(&self, x: Tensor<3>, context: Option<&Tensor<3>>) -> Tensor<3> {
        let ctx = context.cloned().unwrap_or_else(|| x.clone());
        let q = split_heads(self.to_q.forward(x), self.heads);
        let k = split_heads(self.to_k.forward(ctx.clone()), self.heads);
        let v = split_heads(self.to_v.forward(ctx), self.heads);
        let o = attention(q, k, v, None, None, AttentionModuleOptions::default());
        self.to_out.forward(merge_heads(o))
    }
}

/// [B, N, H·D] → [B, H, N, D].
pub fn split_heads(x: Tensor<3>, heads: usize) -> Tensor<4> {
    let [b, n, c] = x.dims();
    x.reshape([b, n, heads, c / heads]).swap_dims(1, 2)
}

/// [B, H, N, D] → [B, N, H·D].
pub fn merge_heads(x: Tensor<4>) -> Tensor<3> {
    let [b, h, n, d] = x.dims();
    x.swap_dims(1, 2).reshape([b, n, h * d])
}

/// [B, C, H, W] → [B, H·W, C].
pub fn to_tokens(x: Tensor<4>) -> Tensor<3> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h * w]).swap_dims(1, 2)
}

/// [B, H·W, C] → [B, C, H, W].
pub fn from_tokens(x: Tensor<3>, h: usize, w: usize) -> Tensor<4> {
    let [b, _, c] = x.dims();
    x.swap_dims(1, 2).reshape([b, c, h, w])
}

#[derive(Module, Debug)]
pub struct TransformerBlock {
    pub(crate) norm1: LayerNorm,
    pub(crate) attn1: Attention,
    pub(crate) norm2: LayerNorm,
    pub(crate) attn2: Attention,
    pub(crate) norm3: LayerNorm,
    /// GEGLU: one projection to twice the inner width, split into value and gate.
    pub(crate) ff_in: Dense,
    pub(crate) ff_out: Dense,
}

impl TransformerBlock {
    fn load(w: &Weights, p: &str, dim: usize, heads: usize, cross: usize) -> Result<Self> {
        let inner = 4 * dim;
        Ok(TransformerBlock {
            norm1: w.layer_norm(&format!("{p}.norm1"), dim, 1e-5)?,
            attn1: Attention::load(w, &format!("{p}.attn1"), dim, dim, heads, dim)?,
            norm2: w.layer_norm(&format!("{p}.norm2"), dim, 1e-5)?,
            attn2: Attention::load(w, &format!("{p}.attn2"), dim, cross, heads, dim)?,
            norm3: w.layer_norm(&format!("{p}.norm3"), dim, 1e-5)?,
            ff_in: w.linear(&format!("{p}.ff.net.0.proj"), dim, 2 * inner)?,
            ff_out: w.linear(&format!("{p}.ff.net.2"), inner, dim)?,
        })
    }

    fn projs_mut(&mut self) -> Vec<&mut Proj> {
        let [a, b, c, d] = self.attn1.projs_mut();
        let [e, f, g, h] = self.attn2.projs_mut();
        vec![a, b, c, d, e, f, g, h]
    }

    fn forward(&self, x: Tensor<3>, context: &Tensor<3>) -> Tensor<3> {
        let x = self.attn1.forward(self.norm1.forward(x.clone()), None) + x;
        let x = self.attn2.forward(self.norm2.forward(x.clone()), Some(context)) + x;
        let h = self.ff_in.forward(self.norm3.forward(x.clone()));
        let [value, gate] = <[Tensor<3>; 2]>::try_from(h.chunk(2, 2)).expect("two halves");
        self.ff_out.forward(value * gelu(gate)) + x
    }
}

/// `Transformer2DModel` on a feature map: GroupNorm, projection in (linear or 1×1 conv, as the
/// config says), transformer blocks, projection out, residual.
#[derive(Module, Debug)]
pub struct Transformer2D {
    pub(crate) norm: GroupNorm,
    pub(crate) proj_in_linear: Option<Dense>,
    pub(crate) proj_in_conv: Option<Conv>,
    pub(crate) blocks: Vec<TransformerBlock>,
    pub(crate) proj_out_linear: Option<Dense>,
    pub(crate) proj_out_conv: Option<Conv>,
}

/// Sizes of one `Transformer2DModel`.
pub struct TransformerShape {
    pub channels: usize,
    pub heads: usize,
    pub layers: usize,
    pub cross: usize,
    pub groups: usize,
    pub linear: bool,
}

impl Transformer2D {
    pub fn load(w: &Weights, p: &str, s: &TransformerShape) -> Result<Self> {
        let c = s.channels;
        let (pil, pic, pol, poc) = if s.linear {
            (
                Some(w.linear(&format!("{p}.proj_in"), c, c)?),
                None,
                Some(w.linear(&format!("{p}.proj_out"), c, c)?),
                None,
            )
        } else {
            (
                None,
                Some(w.conv(&format!("{p}.proj_in"), c, c, 1, 1, 0)?),
                None,
                Some(w.conv(&format!("{p}.proj_out"), c, c, 1, 1, 0)?),
            )
        };
        Ok(Transformer2D {
            norm: w.group_norm(&format!("{p}.norm"), s.groups, c, 1e-6)?,
            proj_in_linear: pil,
            proj_in_conv: pic,
            blocks: (0..s.layers)
                .map(|i| TransformerBlock::load(w, &format!("{p}.transformer_blocks.{i}"), c, s.heads, s.cross))
                .collect::<Result<_>>()?,
            proj_out_linear: pol,
            proj_out_conv: poc,
        })
    }

    /// The attention projections of every transformer block (LoRA's targets).
    pub fn projs_mut(&mut self) -> Vec<&mut Proj> {
        self.blocks.iter_mut().flat_map(|b| b.projs_mut()).collect()
    }

    pub fn forward(&self, x: Tensor<4>, context: &Tensor<3>) -> Tensor<4> {
        let [_, _, h, w] = x.dims();
        let mut t = self.norm.forward(x.clone());
        if let Some(conv) = &self.proj_in_conv {
            t = conv.forward(t);
        }
        let mut tokens = to_tokens(t);
        if let Some(lin) = &self.proj_in_linear {
            tokens = lin.forward(tokens);
        }
        for b in &self.blocks {
            tokens = b.forward(tokens, context);
        }
        if let Some(lin) = &self.proj_out_linear {
            tokens = lin.forward(tokens);
        }
        let mut out = from_tokens(tokens, h, w);
        if let Some(conv) = &self.proj_out_conv {
            out = conv.forward(out);
        }
        out + x
    }
}

/// The VAE's single-head spatial self-attention (`Attention` with a group norm and a residual).
#[derive(Module, Debug)]
pub struct SpatialAttention {
    pub(crate) group_norm: GroupNorm,
    pub(crate) attn: Attention,
}

impl SpatialAttention {
    pub fn load(w: &Weights, p: &str, c: usize, groups: usize, eps: f64) -> Result<Self> {
        Ok(SpatialAttention {
            group_norm: w.group_norm(&format!("{p}.group_norm"), groups, c, eps)?,
            attn: Attention::load(w, p, c, c, 1, c)?,
        })
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [_, _, h, w] = x.dims();
        let t = self.attn.forward(to_tokens(self.group_norm.forward(x.clone())), None);
        from_tokens(t, h, w) + x
    }
}

/// `Downsample2D` with a convolution: stride 2, padding `pad` (0 means diffusers' asymmetric
/// right/bottom pad of one pixel, as the VAE encoder uses).
#[derive(Module, Debug)]
pub struct Downsample {
    pub(crate) conv: Conv,
    pub(crate) asymmetric: bool,
}

impl Downsample {
    pub fn load(w: &Weights, p: &str, c: usize, pad: usize) -> Result<Self> {
        Ok(Downsample { conv: w.conv(&format!("{p}.conv"), c, c, 3, 2, pad)?, asymmetric: pad == 0 })
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        if self.asymmetric {
            let [b, c, h, w] = x.dims();
            let (device, dtype) = (x.device(), x.dtype());
            let x = Tensor::cat(vec![x, Tensor::zeros([b, c, h, 1], (&device, dtype))], 3);
            let x = Tensor::cat(vec![x, Tensor::zeros([b, c, 1, w + 1], (&device, dtype))], 2);
            self.conv.forward(x)
        } else {
            self.conv.forward(x)
        }
    }
}

/// `Upsample2D`: nearest-neighbour ×2, then a 3×3 convolution.
#[derive(Module, Debug)]
pub struct Upsample {
    pub(crate) conv: Conv,
}

impl Upsample {
    pub fn load(w: &Weights, p: &str, c: usize) -> Result<Self> {
        Ok(Upsample { conv: w.conv(&format!("{p}.conv"), c, c, 3, 1, 1)? })
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let up = x.reshape([b, c, h, 1, w, 1]).expand([b, c, h, 2, w, 2]).reshape([b, c, 2 * h, 2 * w]);
        self.conv.forward(up)
    }
}
