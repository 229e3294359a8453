//! The scene model as a Denoiser: the UNet on a device, with the condition uploaded once.

use burn::prelude::*;

use super::sampler::{Condition, Denoiser};
use super::unet::{IN_CHANNELS, TIME_FEATURES, UNet, time_features};
use crate::error::Result;

pub struct SceneModelDenoiser {
    model: UNet,
    /// On the CPU backend: the same network on the hand-written kernels (`cpu_unet`).
    cpu: Option<super::cpu_unet::CpuSampler>,
    device: Device,
    /// The last condition and its 8 channels on the device: uploaded once per fill, not per step.
    uploaded: Option<(Condition, Tensor<4>)>,
}

impl SceneModelDenoiser {
    pub fn new(model: UNet, device: Device) -> Self {
        // Falls back to burn if the weights cannot be exported (never expected).
        let cpu = if super::cpu_unet::serves(&device) { super::cpu_unet::CpuSampler::new(&model).ok() } else { None };
        SceneModelDenoiser { model, cpu, device, uploaded: None }
    }

    fn cond_tensor(&mut self, cond: &Condition) -> Tensor<4> {
        if let Some((c, t)) = &self.uploaded
            && c == cond
        {
            return t.clone();
        }
        let hw = cond.pixels();
        let mut data = Vec::with_capacity(8 * hw);
        data.extend_from_slice(&cond.mask);
        data.extend_from_slice(&cond.known);
        data.extend_from_slice(&cond.prior);
        data.extend_from_slice(&cond.guide_valid);
        let t = Tensor::<4>::from_data(TensorData::new(data, [1, 8, cond.height, cond.width]), &self.device);
        self.uploaded = Some((cond.clone(), t.clone()));
        t
    }
}

impl Denoiser for SceneModelDenoiser {
    fn predict_x0(&mut self, x_t: &[f32], t: usize, cond: &Condition) -> Result<Vec<f32>> {
        let (h, w) = (cond.height, cond.width);
        if let Some(cpu) = &self.cpu {
            // Same channel order as `cond_tensor`: x_t, mask, known, guide, guide validity.
            let mut input = Vec::with_capacity(IN_CHANNELS * h * w);
            input.extend_from_slice(x_t);
            input.extend_from_slice(&cond.mask);
            input.extend_from_slice(&cond.known);
            input.extend_from_slice(&cond.prior);
            input.extend_from_slice(&cond.guide_valid);
            let r = cpu.forward(&input, &time_features(&[t]), 1, h, w);
            return Ok(r.iter().zip(&cond.prior).map(|(r, g)| r + g).collect());
        }
        let c = self.cond_tensor(cond);
        let x = Tensor::<4>::from_data(TensorData::new(x_t.to_vec(), [1, 3, h, w]), &self.device);
        let input = Tensor::cat(vec![x, c], 1);
        debug_assert_eq!(input.dims()[1], IN_CHANNELS);
        let time = Tensor::<2>::from_data(TensorData::new(time_features(&[t]), [1, TIME_FEATURES]), &self.device);
        // The network predicts a correction to the warped references (see unet.rs).
        let residual = self.model.forward(input, time);
        let r = residual
            .into_data()
            .try_into_vec::<f32>()
            .map_err(|e| crate::error::Error::Engine(format!("reading model output: {e:?}")))?;
        Ok(r.iter().zip(&cond.prior).map(|(r, g)| r + g).collect())
    }
}
