//! Block-wise int8 weight-only quantisation on burn's own quantised tensors (Q8S, symmetric,
//! one f32 scale per block of about `block` values): the weights stay int8 in memory and burn
//! widens each layer's weight when the layer runs. A first step toward issue 31's 8-bit weights
//! (no `realfill quantize` folder yet): what it costs in accuracy and saves in memory, measured
//! on the fixtures (docs/BENCHMARKS.md, session 15, "Stable Diffusion on a laptop"). Blocks:
//! along a matrix's last axis (burn's `Linear` keeps [in, out]); over a convolution's whole
//! kernel and a few input channels. Burn's
//! block layout refuses partial blocks, so a side takes its largest divisor up to the block;
//! biases, norms and weights no block fits stay as they are.

use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;
use burn::tensor::quantization::{QuantScheme, QuantValue, ScaleDtype};

/// What `quantize_q8` did: weight values made int8, and left as they were.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Q8Stats {
    pub quantized: usize,
    pub kept: usize,
    /// Block scales made (4 bytes each).
    pub scales: usize,
}

struct BlockQ8 {
    block: usize,
    stats: Q8Stats,
}

/// The largest divisor of `n` that is at most `cap`.
fn divisor_up_to(n: usize, cap: usize) -> usize {
    (1..=cap.min(n).max(1)).rev().find(|d| n.is_multiple_of(*d)).unwrap_or(1)
}

impl BlockQ8 {
    /// The block shape (trailing axes) for a weight of `dims`, if one of at least 8 values fits.
    fn block_for(&self, dims: &[usize]) -> Option<Vec<u8>> {
        let shape = match dims {
            [_, last] => vec![divisor_up_to(*last, self.block)],
            [_, cin, kh, kw] if kh * kw <= self.block => {
                vec![divisor_up_to(*cin, (self.block / (kh * kw)).max(1)), *kh, *kw]
            }
            _ => return None,
        };
        let values: usize = shape.iter().product();
        (values >= 8 && shape.iter().all(|&v| v <= 255)).then(|| shape.iter().map(|&v| v as u8).collect())
    }
}

impl ModuleMapper for BlockQ8 {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let dims = param.val().dims();
        let n: usize = dims.iter().product();
        let Some(block) = self.block_for(&dims) else {
            self.stats.kept += n;
            return param;
        };
        self.stats.quantized += n;
        self.stats.scales += n / block.iter().map(|&b| b as usize).product::<usize>();
        let scheme = QuantScheme::default().with_value(QuantValue::Q8S).per_block(block, ScaleDtype::F32);
        param.map(|t| t.quantize_dynamic(&scheme))
    }
}

/// `m` with its matrices and convolution kernels made block-wise int8 (blocks of about `block`
/// values, see the module's comment).
pub fn quantize_q8<M: Module>(m: M, block: usize) -> (M, Q8Stats) {
    let mut q = BlockQ8 { block, stats: Q8Stats::default() };
    let m = m.map(&mut q);
    (m, q.stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::sd::StableDiffusion;
    use crate::rng::Rng;
    use burn::tensor::DType;

    fn rel(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.iter().map(|x| x.abs()).sum::<f32>()
    }

    /// UNet output at a `side`² latent, batch 1, t = 300, the prompt "a photo", its weights
    /// int8 and computed in `dtype`, against the f32 UNet's.
    fn unet_error(dir: &std::path::Path, side: usize) -> (f32, Q8Stats, usize) {
        unet_error_in(dir, side, DType::F32)
    }

    fn unet_error_in(dir: &std::path::Path, side: usize, dtype: DType) -> (f32, Q8Stats, usize) {
        let sd = StableDiffusion::load(dir, &Device::flex(), DType::F32).unwrap();
        let half = StableDiffusion::load(dir, &Device::flex(), dtype).unwrap();
        let cin = sd.unet.in_channels;
        let v = Rng::new(3).normals(cin * side * side);
        let x = Tensor::<4>::from_data(TensorData::new(v, [1, cin, side, side]), &sd.device);
        let ctx = sd.context(&[sd.tokenizer.encode("a photo")]).unwrap();
        let out = |u: &crate::diffusion::sd::unet::UNet| {
            u.forward(x.clone(), &[300.0], &ctx).into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
        };
        let whole = out(&sd.unet);
        let params = sd.unet.num_params();
        let (q, stats) = quantize_q8(half.unet, 64);
        (rel(&whole, &out(&q)), stats, params)
    }

    /// On the tiny fixture the int8 UNet's output is within 4 % (mean |Δ| over mean |out|; 2.2 %
    /// measured) of the f32 one, and nearly all its weights are int8.
    #[test]
    fn an_int8_unet_stays_close_to_the_f32_one() {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd-tiny");
        let (rel, stats, params) = unet_error(&dir, 16);
        eprintln!("int8 UNet (tiny): {stats:?} of {params}, relative error {rel}");
        assert!(rel < 0.04, "{rel}");
        assert!(stats.quantized > 9 * stats.kept, "{stats:?}");
    }

    /// Computed in f16, the int8 UNet is as close (2.3 % measured; bound 4 %).
    #[test]
    fn an_int8_unet_computes_in_half_precision() {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd-tiny");
        let (rel, _, _) = unet_error_in(&dir, 16, DType::F16);
        eprintln!("int8 UNet in f16 (tiny): relative error {rel}");
        assert!(rel < 0.04, "{rel}");
    }

    #[test]
    fn blocks_fit_every_weight_shape_they_can() {
        let q = BlockQ8 { block: 64, stats: Q8Stats::default() };
        assert_eq!(q.block_for(&[320, 1280]), Some(vec![64]));
        assert_eq!(q.block_for(&[1024, 77]), Some(vec![11]));
        assert_eq!(q.block_for(&[320, 9, 3, 3]), Some(vec![3, 3, 3]));
        assert_eq!(q.block_for(&[640, 320, 3, 3]), Some(vec![5, 3, 3]));
        assert_eq!(q.block_for(&[640, 320, 1, 1]), Some(vec![64, 1, 1]));
        assert_eq!(q.block_for(&[320]), None);
        assert_eq!(q.block_for(&[7, 5]), None);
    }

    /// The same on SD-2's shape (`realfill sd-random`), where one is given: a measurement, run
    /// by `REALFILL_SD2_DIR=/var/tmp/sd2-rs cargo test --release --lib quant -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn an_int8_sd2_unet_error() {
        // Run on purpose only (the folder is 3 GB of SD-2-shaped weights, `realfill sd-random`).
        let dir = std::env::var_os("REALFILL_SD2_DIR").expect("REALFILL_SD2_DIR names an SD-2-shaped folder");
        let (rel, stats, params) = unet_error(std::path::Path::new(&dir), 64);
        assert!(rel < 0.04, "int8 UNet relative error {rel}");
        let f16 = 2 * params;
        let q8 = stats.quantized + 4 * stats.scales + 2 * stats.kept;
        eprintln!(
            "int8 UNet (SD-2 shape): relative error {rel}; {stats:?} of {params} values; \
             weights {:.0} MB as f16, {:.0} MB int8 (+ f16 rest)",
            f16 as f64 / 1e6,
            q8 as f64 / 1e6
        );
    }
}
