//! Stable Diffusion's UNet and VAE, inference only, on realfill's own CPU kernels instead of
//! burn's CPU backend (measured 1.6–1.8× slower than PyTorch on these networks): convolutions
//! and projections as `gemm` products over channels-last padded grids (`kernels::matmul`),
//! attention blockwise without the full logit matrix (`kernels::sdpa`), group norm (+ SiLU),
//! layer norm and GEGLU as vectorised row loops (`kernels::norm`, `kernels::rows`). These are
//! the layers and blocks; the networks' passes are `UNet::forward_cpu`, `Vae::encode_mean_cpu`
//! and `Vae::decode_cpu`, taken when the device is the CPU backend without autodiff (fills,
//! `realfill bench`; see `serves`); burn keeps GPUs, remote devices and LoRA learning.
//!
//! The burn modules stay the model of record: each layer's weight is read from its module when
//! the layer runs — f32 as is, f16 or burn's own int8 widened, a packed (`realfill quantize`)
//! layer widened from its codes — and dropped after, so no second copy of the model is resident
//! and a quantised folder keeps its small footprint. LoRA adapters are applied unmerged, as
//! `blocks::Proj` does. Activations are f32 whatever the weights' type.

use std::sync::atomic::{AtomicU8, Ordering};

use burn::module::Param;
use burn::nn::{GroupNorm, LayerNorm};
use burn::prelude::*;
use burn::tensor::DType;
use rayon::prelude::*;

use super::blocks::{Attention, Downsample, Proj, Resnet, SpatialAttention, Transformer2D, TransformerBlock, Upsample};
use super::layers::{Conv, Dense};
pub(super) use crate::kernels::grid::Grid as CpuGrid;
use crate::kernels::grid::{Grid, pool};
use crate::kernels::matmul::{View, conv_down, conv_oihw, conv_up, linear, matmul};
use crate::kernels::norm::group_norm;
pub(super) use crate::kernels::rows::silu;
use crate::kernels::rows::{geglu, layer_norm};
use crate::kernels::sdpa::{Heads, attention};
use crate::kernels::winograd;

/// 0: as the plan says; 1: own kernels; 2: burn (`realfill bench` times both in one process).
static CHOICE: AtomicU8 = AtomicU8::new(0);

/// Makes every later SD forward on the CPU use realfill's kernels (`Some(true)`), burn's
/// (`Some(false)`) or what the switches say (`None`). For measuring both in one process.
pub fn choose(own: Option<bool>) {
    CHOICE.store(
        match own {
            None => 0,
            Some(true) => 1,
            Some(false) => 2,
        },
        Ordering::Relaxed,
    );
}

/// Whether the SD networks on `device` run here: the CPU backend without autodiff (learning
/// needs burn's gradients), unless `REALFILL_SD_BURN_CPU` (or `choose`) says burn.
pub fn serves(device: &Device) -> bool {
    let own = match CHOICE.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => crate::kernels::plan().sd_network,
    };
    // Device equality ignores autodiff (an autodiff CPU device equals the plain one).
    own && *device == Device::flex() && !device.is_autodiff()
}

/// A float tensor's values as f32: f16/bf16 widened (rows in parallel), burn's int8 dequantised.
pub(super) fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    crate::kernels::profile::time("weights and inputs: read, widen", || values_of(t))
}

fn values_of<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    let t = if matches!(t.dtype(), DType::QFloat(_)) { t.dequantize() } else { t };
    let data = t.into_data();
    fn widen<T: Copy + Sync>(s: &[T], f: impl Fn(T) -> f32 + Sync) -> Vec<f32> {
        let mut out = vec![0.0f32; s.len()];
        out.par_chunks_mut(1 << 14).zip(s.par_chunks(1 << 14)).for_each(|(o, i)| {
            o.iter_mut().zip(i).for_each(|(o, &v)| *o = f(v));
        });
        out
    }
    match data.dtype() {
        DType::F32 => data.try_into_vec::<f32>().expect("f32 values"),
        DType::F16 => widen(data.as_slice::<half::f16>().expect("f16 values"), half::f16::to_f32),
        DType::BF16 => widen(data.as_slice::<half::bf16>().expect("bf16 values"), half::bf16::to_f32),
        _ => data.convert::<f32>().try_into_vec::<f32>().expect("float values"),
    }
}

fn widen(p: &super::packed::Packed) -> Vec<f32> {
    crate::kernels::profile::time("weights: widen packed", || p.widen())
}

/// A parameter's values as f32: borrowed from the CPU backend's own storage when it holds
/// them as f32 (no copy: the layers' weights of an f32 model), else widened.
pub(super) enum Floats {
    /// The tensor and how many of its storage's values are visible.
    Shared(burn::backend::flex::FlexTensor, usize),
    Owned(Vec<f32>),
}

impl std::ops::Deref for Floats {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            Floats::Shared(t, len) => &t.storage::<f32>()[..*len],
            Floats::Owned(v) => v,
        }
    }
}

/// The CPU backend's tensor behind `t` when it holds f32 values.
fn flex_f32<const D: usize>(t: &Tensor<D>) -> Option<burn::backend::flex::FlexTensor> {
    if t.dtype() != DType::F32 {
        return None;
    }
    t.clone().try_into_primitive::<burn::backend::Flex>().ok()
}

/// A parameter's values in row-major order.
pub(super) fn param<const D: usize>(p: &Param<Tensor<D>>) -> Floats {
    let t = p.val();
    match flex_f32(&t) {
        Some(f) if f.layout().is_contiguous() && f.layout().start_offset() == 0 => {
            let n = f.layout().num_elements();
            Floats::Shared(f, n)
        }
        _ => Floats::Owned(values(t)),
    }
}

/// A linear layer's weight read as din × dout: burn's [din, dout] (often a transposed view of
/// the file's [dout, din], read through its strides) or a packed layer's rows widened now.
struct LinearWeight {
    data: Floats,
    off: usize,
    rs: usize,
    cs: usize,
    din: usize,
    dout: usize,
}

impl LinearWeight {
    fn of(d: &Dense) -> LinearWeight {
        let (din, dout) = (d.din, d.dout);
        match (&d.weight, &d.packed) {
            (Some(w), _) => {
                let t = w.val();
                if let Some(f) = flex_f32(&t) {
                    let (st, off) = (f.layout().strides().to_vec(), f.layout().start_offset());
                    if st.len() == 2 && st[0] >= 0 && st[1] >= 0 {
                        let len = f.storage::<f32>().len();
                        return LinearWeight {
                            data: Floats::Shared(f, len),
                            off,
                            rs: st[0] as usize,
                            cs: st[1] as usize,
                            din,
                            dout,
                        };
                    }
                }
                LinearWeight { data: Floats::Owned(values(t)), off: 0, rs: dout, cs: 1, din, dout }
            }
            (None, Some(p)) => LinearWeight { data: Floats::Owned(widen(p)), off: 0, rs: 1, cs: din, din, dout },
            (None, None) => unreachable!("a Dense layer holds its weight one way or the other"),
        }
    }

    fn view(&self) -> View<'_> {
        View { data: &self.data, off: self.off, rows: self.din, cols: self.dout, rs: self.rs, cs: self.cs }
    }
}

/// `x·W + b` for `rows` rows of x (onto `residual` when given).
pub(super) fn dense(d: &Dense, x: &[f32], rows: usize, residual: Option<Vec<f32>>) -> Vec<f32> {
    let w = LinearWeight::of(d);
    let bias = d.bias.as_ref().map(|b| param(b).to_vec());
    linear(x, rows, w.view(), bias.as_deref(), residual)
}

/// A projection with its LoRA adapter when it has one: base(x) + scale·(x·down)·up.
pub(super) fn proj(p: &Proj, x: &[f32], rows: usize, residual: Option<Vec<f32>>) -> Vec<f32> {
    let mut out = dense(&p.base, x, rows, residual);
    if let Some(l) = &p.lora {
        let (down, up) = (param(&l.down), param(&l.up));
        let (din, dout) = p.dims();
        let r = down.len() / din;
        let low = linear(x, rows, View::rows(&down, din, r), None, None);
        matmul(&mut out, 0, dout, View::rows(&low, rows, r), View::rows(&up, r, dout), true, l.scale, true);
    }
    out
}

/// A convolution's weight as [cout, cin·k·k] f32 (PyTorch's order, packed or not).
fn conv_weight(c: &Conv) -> Floats {
    match (&c.weight, &c.packed) {
        (Some(w), _) => param(w),
        (None, Some(p)) => Floats::Owned(widen(p)),
        (None, None) => unreachable!("a Conv layer holds its weight one way or the other"),
    }
}

fn conv_bias(c: &Conv) -> Vec<f32> {
    c.bias.as_ref().map_or_else(|| vec![0.0; c.cout], |b| param(b).to_vec())
}

/// A stride-1 convolution with `bias` (cout, or n·cout per image), onto `init` when given.
/// 3×3 layers with many positions by Winograd's form (`winograd::form_for`), the rest as
/// im2col products.
fn conv_same(c: &Conv, x: &Grid, bias: &[f32], init: Option<Grid>) -> Grid {
    assert_eq!((c.stride, c.pad), (1, c.kernel / 2), "a 'same' convolution");
    let w = conv_weight(c);
    match winograd::form_for(x.h, x.w, x.c, c.cout) {
        Some(form) if c.kernel == 3 => winograd::conv3x3(form, x, &w, c.cout, bias, init),
        _ => conv_oihw(x, &w, c.cout, c.kernel, bias, init),
    }
}

pub(super) fn conv(c: &Conv, x: &Grid) -> Grid {
    conv_same(c, x, &conv_bias(c), None)
}

pub(super) fn norm(g: &GroupNorm, x: &Grid, silu: bool) -> Grid {
    let c = g.num_channels;
    let gamma = g.gamma.as_ref().map_or_else(|| vec![1.0; c], |p| param(p).to_vec());
    let beta = g.beta.as_ref().map_or_else(|| vec![0.0; c], |p| param(p).to_vec());
    group_norm(x, &gamma, &beta, g.num_groups, g.epsilon, silu)
}

/// `blocks::TransformerBlock` builds its layer norms with ε 1e-5 (diffusers' default).
const LAYER_NORM_EPS: f32 = 1e-5;

fn layer(l: &LayerNorm, x: &[f32]) -> Vec<f32> {
    layer_eps(l, x, LAYER_NORM_EPS)
}

/// A layer norm over rows of its width, with the ε its model was built with.
pub(super) fn layer_eps(l: &LayerNorm, x: &[f32], eps: f32) -> Vec<f32> {
    let gamma = param(&l.gamma);
    let c = gamma.len();
    let beta = l.beta.as_ref().map_or_else(|| vec![0.0; c], |p| param(p).to_vec());
    layer_norm(x, c, &gamma, &beta, eps)
}

/// `blocks::Resnet`: `temb` is the SiLU of the UNet's time embedding (n × T), None in the VAE.
pub(super) fn resnet(r: &Resnet, x: Grid, temb: Option<&[f32]>) -> Grid {
    let n = x.n;
    let h = norm(&r.norm1, &x, true);
    let mut bias: Vec<f32> = conv_bias(&r.conv1).repeat(n);
    if let (Some(p), Some(t)) = (&r.time_emb_proj, temb) {
        let tp = dense(p, t, n, None);
        bias.iter_mut().zip(&tp).for_each(|(b, t)| *b += t);
    }
    let h = conv_same(&r.conv1, &h, &bias, None);
    let h = norm(&r.norm2, &h, true);
    let init = match &r.conv_shortcut {
        Some(s) => conv(s, &x),
        None => x,
    };
    conv_same(&r.conv2, &h, &conv_bias(&r.conv2), Some(init))
}

/// `blocks::Attention` over `tokens` rows per image of `x` (n images), keys from `context`
/// (`m` rows per image) or from x itself; the output projection lands on `residual`.
fn attend(
    a: &Attention,
    x: &[f32],
    n: usize,
    tokens: usize,
    context: Option<(&[f32], usize)>,
    residual: Vec<f32>,
) -> Vec<f32> {
    let rows = n * tokens;
    let c = a.to_q.dims().1;
    let q = proj(&a.to_q, x, rows, None);
    let (src, m) = context.unwrap_or((x, tokens));
    let k = proj(&a.to_k, src, n * m, None);
    let v = proj(&a.to_v, src, n * m, None);
    let heads = a.heads;
    let o = attention(
        Heads { data: &q, off: 0, ld: c },
        Heads { data: &k, off: 0, ld: c },
        Heads { data: &v, off: 0, ld: c },
        n,
        tokens,
        m,
        heads,
        c / heads,
        false,
    );
    [q, k, v].into_iter().for_each(pool::give);
    proj(&a.to_out, &o, rows, Some(residual))
}

/// `blocks::TransformerBlock` on token rows (n images × tokens).
fn transformer_block(b: &TransformerBlock, x: Vec<f32>, n: usize, tokens: usize, context: (&[f32], usize)) -> Vec<f32> {
    let rows = n * tokens;
    let a = layer(&b.norm1, &x);
    let x = attend(&b.attn1, &a, n, tokens, None, x);
    let a = layer(&b.norm2, &x);
    let x = attend(&b.attn2, &a, n, tokens, Some(context), x);
    let a = layer(&b.norm3, &x);
    let h = dense(&b.ff_in, &a, rows, None);
    pool::give(a);
    let g = geglu(&h, b.ff_out.din);
    pool::give(h);
    let out = dense(&b.ff_out, &g, rows, Some(x));
    pool::give(g);
    out
}

/// A 1×1 convolution or a linear layer on token rows (`Transformer2D`'s projections).
fn token_proj(lin: &Option<Dense>, conv: &Option<Conv>, x: Vec<f32>, rows: usize) -> Vec<f32> {
    match (lin, conv) {
        (Some(l), _) => dense(l, &x, rows, None),
        (None, Some(c)) => {
            let w = conv_weight(c);
            // [cout, cin, 1, 1] is PyTorch's linear layout.
            linear(&x, rows, View::rows(&w, c.cout, c.cin).t(), Some(&conv_bias(c)), None)
        }
        (None, None) => x,
    }
}

/// `blocks::Transformer2D`: the residual added as the tokens return to the grid.
pub(super) fn transformer(t: &Transformer2D, x: Grid, context: (&[f32], usize)) -> Grid {
    let (n, h, w, c) = (x.n, x.h, x.w, x.c);
    let rows = n * h * w;
    let mut tokens = norm(&t.norm, &x, false).interior();
    tokens = token_proj(&t.proj_in_linear, &t.proj_in_conv, tokens, rows);
    for b in &t.blocks {
        tokens = transformer_block(b, tokens, n, h * w, context);
    }
    tokens = token_proj(&t.proj_out_linear, &t.proj_out_conv, tokens, rows);
    Grid::from_interior(&tokens, n, h, w, c, Some(&x))
}

pub(super) fn downsample(d: &Downsample, x: &Grid) -> Grid {
    let c = &d.conv;
    conv_down(x, &conv_weight(c), c.cout, &conv_bias(c), if d.asymmetric { 0 } else { c.pad })
}

pub(super) fn upsample(u: &Upsample, x: &Grid) -> Grid {
    conv_up(x, &conv_weight(&u.conv), u.conv.cout, &conv_bias(&u.conv))
}

pub(super) fn tensor4(g: &Grid, device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(g.to_nchw(g.c), [g.n, g.c, g.h, g.w]), device)
}

pub(super) fn grid(t: Tensor<4>) -> Grid {
    let [n, c, h, w] = t.dims();
    Grid::from_nchw(&values(t), n, c, h, w)
}

/// `blocks::SpatialAttention` (the VAE's single-head attention with its residual).
pub(super) fn spatial_attention(s: &SpatialAttention, x: Grid) -> Grid {
    let (n, h, w, c) = (x.n, x.h, x.w, x.c);
    let tokens = norm(&s.group_norm, &x, false).interior();
    let out = attend(&s.attn, &tokens, n, h * w, None, x.interior());
    Grid::from_interior(&out, n, h, w, c, None)
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::diffusion::sd::StableDiffusion;
    use crate::diffusion::sd::packed::{Format, Scheme};
    use crate::diffusion::sd::unet::UNet;
    use crate::diffusion::sd::vae::Vae;
    use crate::rng::Rng;

    fn fixture() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd-tiny")
    }

    fn vals(t: Tensor<4>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
    }

    /// max |a − b| / max |b|: a wrong layer anywhere moves the output by far more than the
    /// ≈ 1e-6 that summation order and the vectorised exp/erf leave.
    fn rel_max(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
        d / b.iter().map(|v| v.abs()).fold(0.0, f32::max)
    }

    const TOLERANCE: f32 = 1e-4;

    /// Batch 2 (a guided pair: two prompts, two timesteps), the inpainting UNet's 9 channels.
    fn unet_pair(sd: &StableDiffusion, side: usize) -> (Vec<f32>, Vec<f32>) {
        let device = &sd.device;
        let cin = sd.unet.in_channels;
        let x = Tensor::<4>::from_data(
            TensorData::new(Rng::new(3).normals(2 * cin * side * side), [2, cin, side, side]),
            device,
        );
        let ctx = sd.text_encoder().unwrap().forward(&[sd.tokenizer.encode(""), sd.tokenizer.encode("a photo of sks")]);
        let ts = [300.0, 951.0];
        let own = vals(sd.unet.forward_cpu(x.clone(), &ts, &ctx));
        let burn = vals(sd.unet.forward_burn(x, &ts, &ctx));
        (own, burn)
    }

    fn check_unet(sd: &StableDiffusion, what: &str) -> f32 {
        let (own, burn) = unet_pair(sd, 16);
        let e = rel_max(&own, &burn);
        eprintln!("{what}: UNet relative max difference {e:e}");
        assert!(e < TOLERANCE, "{what}: {e}");
        e
    }

    /// The UNet on these kernels computes what burn computes: plain, with LoRA adapters (the
    /// fixture's learned ones), on f16 weights, on burn's int8 weights.
    #[test]
    fn the_unet_matches_burn_on_the_tiny_fixture() {
        let mut sd = StableDiffusion::load(&fixture(), &Device::flex(), DType::F32).unwrap();
        check_unet(&sd, "f32");
        assert!(crate::diffusion::sd::lora::load(&mut sd, &fixture().join("lora_after.safetensors")).unwrap() > 0);
        let (with, _) = unet_pair(&sd, 16);
        check_unet(&sd, "f32 with LoRA adapters");
        crate::diffusion::sd::lora::clear(&mut sd);
        let (plain, _) = unet_pair(&sd, 16);
        // The adapters change the output (so the check above saw them applied).
        assert!(rel_max(&with, &plain) > 100.0 * TOLERANCE, "{}", rel_max(&with, &plain));
        let half = StableDiffusion::load(&fixture(), &Device::flex(), DType::F16).unwrap();
        let (own16, _) = unet_pair(&half, 16);
        // f16 weights widened: close to the f32 model (burn computes the f16 model in f16).
        assert!(rel_max(&own16, &plain) < 5e-3, "{}", rel_max(&own16, &plain));
        let mut q8 = StableDiffusion::load(&fixture(), &Device::flex(), DType::F32).unwrap();
        q8.unet = crate::diffusion::sd::quant::quantize_q8(q8.unet, 64).0;
        check_unet(&q8, "burn int8");
    }

    /// Folders made by `realfill quantize` (int8, NF4): the packed layers widened per layer.
    #[test]
    fn the_unet_matches_burn_on_quantised_folders() {
        for (format, name) in [(Format::Int8, "int8"), (Format::Nf4, "nf4")] {
            let out = std::env::temp_dir().join(format!("realfill-cpu-forward-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&out);
            crate::diffusion::sd::quantize::quantize_folder(
                &fixture(),
                &out,
                Scheme { format, block: 64 },
                &mut |_| {},
            )
            .unwrap();
            let sd = StableDiffusion::load(&out, &Device::flex(), DType::F32).unwrap();
            assert!(sd.unet.scheme.is_some());
            check_unet(&sd, name);
            let _ = std::fs::remove_dir_all(&out);
        }
    }

    /// A UNet whose transformers project with 1×1 convolutions and stack two blocks, and a
    /// level without attention on the way down (random weights, the fixture's shape otherwise).
    #[test]
    fn the_unet_matches_burn_with_convolution_projections() {
        let text = std::fs::read_to_string(fixture().join("unet/config.json")).unwrap();
        let text = text
            .replace("\"use_linear_projection\": true", "\"use_linear_projection\": false")
            .replace("\"transformer_layers_per_block\": 1", "\"transformer_layers_per_block\": 2");
        let dir = std::env::temp_dir().join(format!("realfill-cpu-forward-conv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), text).unwrap();
        let c = crate::diffusion::sd::config::UNetConfig::read(&dir.join("config.json")).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let device = Device::flex();
        let u = UNet::build(&c, &crate::diffusion::sd::weights::Weights::synthetic(&device, 5)).unwrap();
        assert!(u.down_blocks[0].attentions[0].proj_in_conv.is_some());
        let x = Tensor::<4>::from_data(TensorData::new(Rng::new(1).normals(2 * 9 * 64), [2, 9, 8, 8]), &device);
        let ctx = Tensor::<3>::from_data(TensorData::new(Rng::new(2).normals(2 * 5 * 16), [2, 5, 16]), &device);
        let own = vals(u.forward_cpu(x.clone(), &[10.0, 500.0], &ctx));
        let burn = vals(u.forward_burn(x, &[10.0, 500.0], &ctx));
        let e = rel_max(&own, &burn);
        assert!(e < TOLERANCE, "{e}");
    }

    /// The fixture's `sub/config.json` with 64 channels at every level, read by `read`: wide
    /// enough for Winograd's form (`winograd::form_for`) wherever a level has ≥ 32² positions.
    fn at_64_channels<T>(sub: &str, read: fn(&Path) -> crate::error::Result<T>) -> T {
        let text = std::fs::read_to_string(fixture().join(sub).join("config.json")).unwrap();
        let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
        json["block_out_channels"] = serde_json::json!([64, 64]);
        let dir = std::env::temp_dir().join(format!("realfill-cpu-forward-{sub}-64-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), json.to_string()).unwrap();
        let c = read(&dir.join("config.json")).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        c
    }

    /// The UNet where Winograd's form serves: 64 channels on a 32² latent (random weights), so
    /// its first level's 3×3 layers take F(4×4) and the second's im2col.
    #[test]
    fn the_unet_matches_burn_where_winograd_serves() {
        let c = at_64_channels("unet", crate::diffusion::sd::config::UNetConfig::read);
        let device = Device::flex();
        let u = UNet::build(&c, &crate::diffusion::sd::weights::Weights::synthetic(&device, 6)).unwrap();
        let side = 32;
        assert!(winograd::form_for(side, side, 64, 64).is_some(), "the first level takes Winograd's form");
        let x = Tensor::<4>::from_data(
            TensorData::new(Rng::new(1).normals(2 * 9 * side * side), [2, 9, side, side]),
            &device,
        );
        let ctx = Tensor::<3>::from_data(TensorData::new(Rng::new(2).normals(2 * 5 * 16), [2, 5, 16]), &device);
        let own = vals(u.forward_cpu(x.clone(), &[10.0, 500.0], &ctx));
        let burn = vals(u.forward_burn(x, &[10.0, 500.0], &ctx));
        let e = rel_max(&own, &burn);
        assert!(e < TOLERANCE, "{e}");
    }

    /// The VAE where Winograd's form serves: 64 channels, 64² images (random weights).
    #[test]
    fn the_vae_matches_burn_where_winograd_serves() {
        let c = at_64_channels("vae", crate::diffusion::sd::config::VaeConfig::read);
        let v = Vae::build(&c, &crate::diffusion::sd::weights::Weights::synthetic(&Device::flex(), 7)).unwrap();
        for (what, (own, burn)) in ["encode", "decode"].iter().zip(vae_pair(&v, 64)) {
            let e = rel_max(&own, &burn);
            assert!(e < TOLERANCE, "{what}: {e}");
        }
    }

    fn vae_pair(v: &Vae, side: usize) -> [(Vec<f32>, Vec<f32>); 2] {
        let device = Device::flex();
        let img = Tensor::<4>::from_data(
            TensorData::new(Rng::new(4).normals(2 * 3 * side * side), [2, 3, side, side]),
            &device,
        );
        let z = Tensor::<4>::from_data(
            TensorData::new(Rng::new(5).normals(2 * 4 * side * side / 4), [2, 4, side / 2, side / 2]),
            &device,
        );
        [
            (vals(v.encode_mean_cpu(img.clone())), vals(v.encode_mean_burn(img))),
            (vals(v.decode_cpu(z.clone())), vals(v.decode_burn(z))),
        ]
    }

    #[test]
    fn the_vae_matches_burn_on_the_tiny_fixture() {
        let (v, _) = Vae::load(&fixture().join("vae"), &Device::flex()).unwrap();
        for (what, (own, burn)) in ["encode", "decode"].iter().zip(vae_pair(&v, 32)) {
            let e = rel_max(&own, &burn);
            eprintln!("VAE {what}: relative max difference {e:e}");
            assert!(e < TOLERANCE, "{what}: {e}");
        }
    }

    /// The dispatch: the plain CPU device runs here, autodiff (learning) does not.
    #[test]
    fn only_the_plain_cpu_device_is_served() {
        assert_eq!(serves(&Device::flex()), crate::kernels::plan().sd_network);
        assert!(!serves(&Device::flex().autodiff()));
    }
}

#[cfg(test)]
mod timing {
    use super::*;
    use crate::diffusion::sd::unet::UNet;

    /// Per-operation times of one UNet step on an SD-2-shaped folder, by hand:
    /// `REALFILL_SD2_DIR=/var/tmp/sd2-rs REALFILL_PROFILE=1 cargo test --release --lib
    /// cpu_forward::timing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn unet_step_profile() {
        let dir = std::path::PathBuf::from(std::env::var_os("REALFILL_SD2_DIR").expect("REALFILL_SD2_DIR"));
        let device = Device::flex();
        let (u, _) = UNet::load(&dir.join("unet"), &device, DType::F32).unwrap();
        let side = 64;
        let batch: usize = std::env::var("REALFILL_SD2_BATCH").ok().and_then(|b| b.parse().ok()).unwrap_or(1);
        let x = Tensor::<4>::from_data(
            TensorData::new(crate::rng::Rng::new(1).normals(batch * 9 * side * side), [batch, 9, side, side]),
            &device,
        );
        let ctx = Tensor::<3>::from_data(
            TensorData::new(crate::rng::Rng::new(2).normals(batch * 77 * 1024), [batch, 77, 1024]),
            &device,
        );
        for i in 0..3 {
            let t = std::time::Instant::now();
            std::hint::black_box(u.forward_cpu(x.clone(), &vec![500.0; batch], &ctx).into_data());
            eprintln!("step {i}: {:.2} s", t.elapsed().as_secs_f64());
            crate::kernels::profile::report(&format!("step {i}"));
        }
    }
}
