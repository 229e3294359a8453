//! The Stable Diffusion engine inside the fill pipeline: the model loaded once from the
//! person's folder and kept between fills (loading SD-2 reads 5 GB), the working canvas sampled
//! by `diffusion::sd::inpaint`, previews with the photo's known pixels in place.

use std::path::PathBuf;
use std::sync::Arc;

use burn::prelude::*;

use super::settings::FillSettings;
use crate::diffusion::sampler::SampleOutput;
use crate::diffusion::sd::inpaint::{InpaintOptions, inpaint};
use crate::diffusion::sd::{StableDiffusion, precision_for};
use crate::error::{Error, Result};
use crate::scene::{Mask, RgbF};

/// The loaded model and the folder it came from.
pub type HeldSd = Option<(PathBuf, Arc<StableDiffusion>)>;

/// The model of `s.sd.model`, from `held` when it is that folder's; `true` when reused.
pub fn load_or_reuse(
    held: &mut HeldSd,
    s: &FillSettings,
    device: &Device,
    status: &mut dyn FnMut(String),
) -> Result<(Arc<StableDiffusion>, bool)> {
    let dir = s.sd.model.clone().ok_or_else(|| {
        Error::Invalid("the Stable Diffusion engine needs a model folder (README, \"Stable Diffusion\")".into())
    })?;
    if let Some((d, m)) = held
        && *d == dir
    {
        return Ok((m.clone(), true));
    }
    // Free the old model before reading the new one: two SD-2 models do not fit many laptops.
    *held = None;
    status(format!("loading Stable Diffusion from {}", dir.display()));
    let m = Arc::new(StableDiffusion::load(&dir, device, precision_for(device))?);
    *held = Some((dir, m.clone()));
    Ok((m, false))
}

/// `rgb` with the canvas's known pixels (fill < 0.5) put back.
fn with_known(mut rgb: RgbF, canvas: &RgbF, fill: &Mask) -> RgbF {
    for (i, px) in rgb.data.chunks_exact_mut(3).enumerate() {
        if fill.data[i] < 0.5 {
            px.copy_from_slice(&canvas.data[3 * i..3 * i + 3]);
        }
    }
    rgb
}

/// Samples the working canvas; `raw` is the model's own image, `x0` has the known pixels back.
pub fn sample(
    sd: &StableDiffusion,
    canvas: &RgbF,
    fill: &Mask,
    s: &FillSettings,
    on_preview: &mut dyn FnMut(usize, usize, RgbF),
    cancelled: &dyn Fn() -> bool,
) -> Result<SampleOutput> {
    let opts = InpaintOptions {
        prompt: s.sd.prompt.clone(),
        negative_prompt: String::new(),
        guidance: s.sd.guidance,
        steps: s.sd.steps,
        sampler: s.sampler,
        seed: s.seed,
        initial_noise: None,
    };
    let raw = inpaint(
        sd,
        canvas,
        fill,
        &opts,
        &mut |step, total, img| on_preview(step, total, with_known(img, canvas, fill)),
        cancelled,
    )?;
    let x0 = with_known(raw.clone(), canvas, fill);
    Ok(SampleOutput { x0: x0.to_planar(), raw: raw.to_planar() })
}
