//! The scene model: a compact inpainting UNet. Input = noisy image (3), fill mask (1), known
//! pixels (3), the prior estimate (3: warped references, else a smooth continuation; see
//! `scene::pushpull::prior`) and the references' coverage (1); output = the clean image minus the prior
//! (a residual: zero where the prior is right). GroupNorm + SiLU
//! residual blocks with a sinusoidal timestep embedding, strided-conv downsampling,
//! nearest-neighbour upsampling and skip connections.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::silu;

pub const IN_CHANNELS: usize = 11;
pub const TIME_FEATURES: usize = 64;

/// Network shape. Part of the checkpoint key: a different shape never loads old weights.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UNetSpec {
    /// Channels per resolution level (each level halves the resolution).
    pub channels: Vec<usize>,
    pub emb_dim: usize,
}

impl Default for UNetSpec {
    fn default() -> Self {
        UNetSpec { channels: vec![32, 64, 96, 128], emb_dim: 128 }
    }
}

impl UNetSpec {
    /// Input sides must divide by this.
    pub fn stride(&self) -> usize {
        1 << (self.channels.len() - 1)
    }
}

#[derive(Module, Debug)]
pub struct ResBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    emb: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    skip: Option<Conv2d>,
}

fn groups(c: usize) -> usize {
    if c.is_multiple_of(8) { 8 } else { 1 }
}

fn conv3(cin: usize, cout: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([cin, cout], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init(device)
}

impl ResBlock {
    fn new(cin: usize, cout: usize, emb_dim: usize, device: &Device) -> Self {
        ResBlock {
            norm1: GroupNormConfig::new(groups(cin), cin).init(device),
            conv1: conv3(cin, cout, device),
            emb: LinearConfig::new(emb_dim, cout).init(device),
            norm2: GroupNormConfig::new(groups(cout), cout).init(device),
            conv2: conv3(cout, cout, device),
            skip: (cin != cout).then(|| Conv2dConfig::new([cin, cout], [1, 1]).init(device)),
        }
    }

    fn forward(&self, x: Tensor<4>, emb: &Tensor<2>) -> Tensor<4> {
        let h = self.conv1.forward(silu(self.norm1.forward(x.clone())));
        let [b, c, _, _] = h.dims();
        let e = self.emb.forward(emb.clone()).reshape([b, c, 1, 1]);
        let h = self.conv2.forward(silu(self.norm2.forward(h + e)));
        let s = match &self.skip {
            Some(conv) => conv.forward(x),
            None => x,
        };
        s + h
    }
}

#[derive(Module, Debug)]
pub struct UNet {
    time1: Linear,
    time2: Linear,
    conv_in: Conv2d,
    down_blocks: Vec<ResBlock>,
    downsamples: Vec<Conv2d>,
    mid: ResBlock,
    up_convs: Vec<Conv2d>,
    up_blocks: Vec<ResBlock>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl UNet {
    pub fn new(spec: &UNetSpec, device: &Device) -> Self {
        let ch = &spec.channels;
        let l = ch.len();
        let e = spec.emb_dim;
        UNet {
            time1: LinearConfig::new(TIME_FEATURES, e).init(device),
            time2: LinearConfig::new(e, e).init(device),
            conv_in: conv3(IN_CHANNELS, ch[0], device),
            down_blocks: (0..l).map(|i| ResBlock::new(ch[i], ch[i], e, device)).collect(),
            downsamples: (0..l - 1)
                .map(|i| {
                    Conv2dConfig::new([ch[i], ch[i + 1]], [3, 3])
                        .with_stride([2, 2])
                        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                        .init(device)
                })
                .collect(),
            mid: ResBlock::new(ch[l - 1], ch[l - 1], e, device),
            up_convs: (0..l - 1).map(|i| conv3(ch[i + 1], ch[i], device)).collect(),
            up_blocks: (0..l - 1).map(|i| ResBlock::new(2 * ch[i], ch[i], e, device)).collect(),
            norm_out: GroupNormConfig::new(groups(ch[0]), ch[0]).init(device),
            // Zero-initialised: before learning, the model's estimate is the warped references.
            conv_out: Conv2dConfig::new([ch[0], 3], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_initializer(burn::nn::Initializer::Zeros)
                .init(device),
        }
    }

    /// `x`: [B, 11, H, W]; `time`: [B, TIME_FEATURES] sinusoidal features. Returns the residual [B, 3, H, W].
    pub fn forward(&self, x: Tensor<4>, time: Tensor<2>) -> Tensor<4> {
        let emb = self.time2.forward(silu(self.time1.forward(time)));
        let emb = silu(emb);
        let mut h = self.conv_in.forward(x);
        let mut skips = Vec::with_capacity(self.down_blocks.len());
        for (i, block) in self.down_blocks.iter().enumerate() {
            h = block.forward(h, &emb);
            if i < self.downsamples.len() {
                skips.push(h.clone());
                h = self.downsamples[i].forward(h);
            }
        }
        h = self.mid.forward(h, &emb);
        for i in (0..self.up_blocks.len()).rev() {
            h = self.up_convs[i].forward(upsample2(h));
            h = Tensor::cat(vec![h, skips[i].clone()], 1);
            h = self.up_blocks[i].forward(h, &emb);
        }
        self.conv_out.forward(silu(self.norm_out.forward(h)))
    }
}

/// Nearest-neighbour ×2 upsampling from reshapes (differentiable on every backend).
fn upsample2(x: Tensor<4>) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h, 1, w, 1]).expand([b, c, h, 2, w, 2]).reshape([b, c, 2 * h, 2 * w])
}

/// Sinusoidal features of the timestep, [sin(t·f_k), cos(t·f_k)] with geometric frequencies.
pub fn time_features(ts: &[usize]) -> Vec<f32> {
    let half = TIME_FEATURES / 2;
    let mut out = Vec::with_capacity(ts.len() * TIME_FEATURES);
    for &t in ts {
        for k in 0..half {
            let f = (-(10000f32).ln() * k as f32 / half as f32).exp();
            out.push((t as f32 * f).sin());
        }
        for k in 0..half {
            let f = (-(10000f32).ln() * k as f32 / half as f32).exp();
            out.push((t as f32 * f).cos());
        }
    }
    out
}

/// Multiply-accumulate count of one forward pass at `h`×`w` (batch 1), for GFLOP/s figures.
pub fn forward_macs(spec: &UNetSpec, h: usize, w: usize) -> u64 {
    let ch = &spec.channels;
    let mut macs = 0u64;
    let conv = |cin: usize, cout: usize, k: usize, px: usize| (cin * cout * k * k * px) as u64;
    let res = |cin: usize, cout: usize, px: usize| {
        conv(cin, cout, 3, px) + conv(cout, cout, 3, px) + if cin != cout { conv(cin, cout, 1, px) } else { 0 }
    };
    macs += conv(IN_CHANNELS, ch[0], 3, h * w) + conv(ch[0], 3, 3, h * w);
    for i in 0..ch.len() {
        let px = (h >> i) * (w >> i);
        macs += res(ch[i], ch[i], px);
        if i + 1 < ch.len() {
            let px_next = (h >> (i + 1)) * (w >> (i + 1));
            macs += conv(ch[i], ch[i + 1], 3, px_next); // downsample
            macs += conv(ch[i + 1], ch[i], 3, px); // up conv
            macs += res(2 * ch[i], ch[i], px);
        }
    }
    let l = ch.len() - 1;
    macs += res(ch[l], ch[l], (h >> l) * (w >> l));
    macs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_shapes_on_cpu() {
        let device = Device::flex();
        let spec = UNetSpec { channels: vec![8, 16], emb_dim: 16 };
        let net = UNet::new(&spec, &device);
        let x = Tensor::<4>::zeros([2, IN_CHANNELS, 16, 24], &device);
        let t = Tensor::<2>::from_data(TensorData::new(time_features(&[3, 900]), [2, TIME_FEATURES]), &device);
        let y = net.forward(x, t);
        assert_eq!(y.dims(), [2, 3, 16, 24]);
        let u = upsample2(Tensor::<4>::from_data(TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [1, 1, 2, 2]), &device));
        let v: Vec<f32> = u.into_data().try_into_vec().unwrap();
        assert_eq!(&v[..8], &[1.0, 1.0, 2.0, 2.0, 1.0, 1.0, 2.0, 2.0]);
    }

    #[test]
    fn time_features_are_bounded_and_distinct() {
        let f = time_features(&[0, 1, 999]);
        assert_eq!(f.len(), 3 * TIME_FEATURES);
        assert!(f.iter().all(|v| v.abs() <= 1.0));
        assert_ne!(&f[..TIME_FEATURES], &f[TIME_FEATURES..2 * TIME_FEATURES]);
    }
}
