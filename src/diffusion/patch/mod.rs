//! The training-free reference patch engine: the closed-form optimal denoiser for the
//! empirical distribution of the references' patches (and the target's known patches), run
//! coarse to fine over an image pyramid.
//!
//! At noise level t (x_t = √ᾱ·x0 + √(1−ᾱ)·ε) the posterior mean of a pixel, if the data were
//! exactly the set of source patches {k}, is Σ w_k·centre(k) with
//! w = softmax_k(−½ Σ_d π_d (q_d − √ᾱ·k_d)²), q the noisy patch around the pixel. Per-dimension
//! precisions π carry the inpainting condition: a known pixel of the patch is compared at its
//! clean value with tolerance τ (references never match the target exactly), a pixel to fill
//! with the noise's precision 1/(1−ᾱ) plus, where warped references cover it, the prior as a
//! second observation (precisions add), and pixels beyond the border not at all. Where no
//! reference reaches, only the patch's mean colour is compared with the (smooth) prior.
//! Expanding the squares gives one matrix product per query tile:
//!   logits = [π⊙q, π, π_m·ḡ, π_m, 1] · [√ᾱ·k, −½ᾱ·k², √ᾱ·k̄, −½ᾱ·k̄², bias]ᵀ
//! followed by a softmax and a second product with the patch centres — attention of target
//! patches over source patches, on burn tensors (wgpu or the CPU backend). At the last step
//! of each level, every patch covering a pixel votes with its best match.
//!
//! Coarse to fine (Qiu, Kutulakos & Lindell, "Efficient and Training-Free Single-Image
//! Diffusion"): the coarsest level (1/8 of the working size) attends over all source patches
//! and fixes the layout; each finer level starts from the upsampled coarser result partly
//! re-noised (SDEdit) and attends only over a shortlist per pixel: windows around where its
//! parent pixel's best matches lie one level down, plus a window around the pixel itself in
//! the warped references (which are already in the target's frame). Memory stays bounded:
//! queries are tiled, and fine levels never build the full key matrix.
//!
//! Sources: the target's known patches, the warped exposure-matched references (the guide),
//! and each reference at four scales (0.5× to 1.4×), its colours matched to the target's known pixels
//! (mean and spread per channel), so that a brighter, rescaled view still matches.

mod denoiser;
mod pyramid;

pub use denoiser::{Level, PatchDenoiser, Source, TOP, attend_all_timed};
pub use pyramid::{PatchScene, build_levels, half, upsample};

use burn::prelude::Device;

use crate::diffusion::sampler::{self, Denoiser, SampleOptions, SampleOutput};
use crate::diffusion::schedule::Schedule;
use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct PatchSettings {
    /// Patch side (odd).
    pub patch: usize,
    /// Pyramid levels; the coarsest is the working size / 2^(levels−1).
    pub levels: usize,
    /// Denoising steps at the coarsest level (from pure noise).
    pub coarse_steps: usize,
    /// Steps at each finer level (from the upsampled coarser result, re-noised).
    pub fine_steps: usize,
    /// ᾱ at which finer levels start: higher keeps more of the coarser layout.
    pub fine_alpha_bar: f64,
    /// Window radius around shortlisted positions.
    pub window: usize,
    /// Tolerance for known pixels in a patch (units of the [-1, 1] range).
    pub known_tau: f32,
    /// Tolerance for the prior inside the fill region where warped references cover it: they
    /// show the right content, slightly misplaced (parallax) or differently lit.
    pub guide_tau: f32,
    /// Tolerance for the mean colour of a patch against the prior where no reference reaches
    /// (a smooth continuation: a hint of colour and layout, not of texture).
    pub prior_tau: f32,
    /// Scales at which each reference is searched.
    pub scales: Vec<f32>,
    /// Queries per tile (bounds memory: tile × keys logits at the coarsest level).
    pub tile: usize,
    /// At the last step of each level, let every patch covering a pixel vote with its best
    /// match (Wexler et al.'s patch voting) instead of taking the centre only: coherent,
    /// seam-free texture.
    pub vote: bool,
}

impl Default for PatchSettings {
    fn default() -> Self {
        PatchSettings {
            patch: 5,
            levels: 4,
            coarse_steps: 8,
            fine_steps: 3,
            fine_alpha_bar: 0.25,
            window: 1,
            known_tau: 0.15,
            guide_tau: 0.12,
            prior_tau: 0.08,
            scales: vec![0.5, 0.707, 1.0, 1.414],
            tile: 512,
            vote: true,
        }
    }
}

impl PatchSettings {
    /// Pyramid levels used for a working size: at most `levels`, fewer when the image is too
    /// small or does not halve evenly.
    pub fn levels_for(&self, w: usize, h: usize) -> usize {
        let fits = |l: usize| {
            let div = 1usize << (l - 1);
            w.is_multiple_of(div) && h.is_multiple_of(div) && w / div >= self.patch && h / div >= self.patch
        };
        (1..=self.levels.max(1)).rev().find(|&l| fits(l)).unwrap_or(1)
    }
}

impl PatchSettings {
    /// These settings with the fields named in `overrides` replaced (`REALFILL_PATCH`); an
    /// unknown field or a value of the wrong type is an error naming it.
    pub fn overridden(&self, overrides: &serde_json::Map<String, serde_json::Value>) -> Result<PatchSettings> {
        let bad = |e: String| Error::Invalid(format!("REALFILL_PATCH: {e}"));
        let mut v = serde_json::to_value(self).map_err(|e| bad(e.to_string()))?;
        let fields = v.as_object_mut().ok_or_else(|| bad("settings are not an object".into()))?;
        for (k, val) in overrides {
            if !fields.contains_key(k) {
                let known: Vec<&str> = fields.keys().map(String::as_str).collect();
                return Err(bad(format!("unknown field {k:?} (known: {})", known.join(", "))));
            }
            fields.insert(k.clone(), val.clone());
        }
        serde_json::from_value(v).map_err(|e| bad(e.to_string()))
    }
}

/// Where the fill copied from the photo's own known pixels: per pixel of the finest level
/// (the working canvas), the centre of its best source patch when that patch is of the
/// target's known pixels (source 0), in working canvas pixels. The native-resolution step
/// takes the photo's own detail from there where no reference covers the hole.
#[derive(Clone, Debug, Default)]
pub struct KnownMatches {
    pub width: usize,
    pub height: usize,
    pub at: Vec<Option<(u32, u32)>>,
}

impl KnownMatches {
    fn of(level: &Level, top: &[u32]) -> KnownMatches {
        let (w, h) = (level.cond.width, level.cond.height);
        let at = (0..w * h)
            .map(|pix| {
                let k = top[pix * TOP];
                (k != denoiser::NULL && level.cond.mask[pix] >= 0.5)
                    .then(|| level.locate(k))
                    .filter(|&(src, _, _)| src == 0)
                    .map(|(_, x, y)| (x as u32, y as u32))
            })
            .collect();
        KnownMatches { width: w, height: h, at }
    }
}

/// Fill coarse to fine: the coarsest level from noise, each finer level from the upsampled
/// coarser result re-noised to `fine_alpha_bar`. `levels` finest first (`build_levels`);
/// `opts` gives the sampler and seed (the steps come from `ps`). Previews are planar at the
/// finest level's size, numbered across all levels. Also returns where the finest level
/// copied the photo's own known pixels from.
pub fn fill(
    mut levels: Vec<Level>,
    ps: &PatchSettings,
    opts: &SampleOptions,
    device: &Device,
    preview: &mut dyn FnMut(usize, usize, &[f32]),
    cancelled: &dyn Fn() -> bool,
) -> Result<(SampleOutput, KnownMatches)> {
    let schedule = Schedule::default();
    let total = ps.coarse_steps + ps.fine_steps * (levels.len() - 1);
    let (w, h) = (levels[0].cond.width, levels[0].cond.height);
    let mut done = 0;
    let mut parent: Option<(Level, Vec<u32>)> = None;
    let mut x: Option<(Vec<f32>, usize, usize)> = None;
    let mut out = None;
    while let Some(level) = levels.pop() {
        let lc = level.cond.clone();
        let (lw, lh) = (lc.width, lc.height);
        let mut den = PatchDenoiser::new(level, parent.take(), ps, device);
        let mut on_step = |step: usize, _n: usize, x0: &[f32]| {
            let full = if (lw, lh) == (w, h) { x0.to_vec() } else { upsample(x0, lw, lh, w, h) };
            preview(done + step, total, &full);
        };
        // Each level gets its own seed so that levels do not reuse one noise pattern.
        let seed = opts.seed.wrapping_mul(31).wrapping_add(lw as u64);
        let res = match &x {
            None => sampler::sample(
                &mut den,
                &schedule,
                &lc,
                &SampleOptions { kind: opts.kind, steps: ps.coarse_steps, seed },
                &mut on_step,
                cancelled,
            )?,
            Some((prev, pw, ph)) => {
                let init = upsample(prev, *pw, *ph, lw, lh);
                let start = schedule.timestep_for(ps.fine_alpha_bar);
                sampler::sample_from(
                    &mut den,
                    &schedule,
                    &lc,
                    &SampleOptions { kind: opts.kind, steps: ps.fine_steps, seed },
                    &init,
                    start,
                    &mut on_step,
                    cancelled,
                )?
            }
        };
        done += if x.is_none() { ps.coarse_steps } else { ps.fine_steps };
        x = Some((res.x0.clone(), lw, lh));
        parent = Some((den.level, den.top));
        out = Some(res);
    }
    let out = out.ok_or_else(|| Error::Invalid("the patch engine has no levels".into()))?;
    let matches = parent.map(|(level, top)| KnownMatches::of(&level, &top)).unwrap_or_default();
    Ok((out, matches))
}

/// How well a filled image (planar, working size) is explained by source patches: matched
/// coarse to fine at zero noise, the mean squared difference between each filled pixel's
/// patch and its best source patch, as dB (higher = closer to the references). Used to rank
/// candidates of either engine. Also returns where those best patches lie in the photo's known
/// pixels (what the native step needs for an engine without matches of its own).
pub fn agreement(
    mut levels: Vec<Level>,
    image: &[f32],
    ps: &PatchSettings,
    device: &Device,
) -> Result<(f32, KnownMatches)> {
    // The image at every level, finest first.
    let mut images = vec![image.to_vec()];
    for l in 1..levels.len() {
        let (w, h) = (levels[l - 1].cond.width, levels[l - 1].cond.height);
        images.push(half(&images[l - 1], w, h));
    }
    let mut parent: Option<(Level, Vec<u32>)> = None;
    let mut score = 0.0;
    while let Some(level) = levels.pop() {
        let img = images.pop().unwrap_or_default();
        let lc = level.cond.clone();
        let mut den = PatchDenoiser::new(level, parent.take(), ps, device);
        // At zero noise the posterior mean is the best-matching source patch's centre.
        let x0 = den.predict_x0(&img, 0, &lc)?;
        let hw = lc.pixels();
        let (mut sum, mut n) = (0.0f64, 0usize);
        for i in (0..hw).filter(|&i| lc.mask[i] >= 0.5) {
            for c in 0..3 {
                let d = (x0[c * hw + i] - img[c * hw + i]) as f64;
                sum += d * d;
            }
            n += 3;
        }
        // Range 2 ([-1, 1]): dB like PSNR on [0, 1] images.
        score = if n > 0 { (-10.0 * ((sum / n as f64).max(1e-10) / 4.0).log10()) as f32 } else { 99.0 };
        parent = Some((den.level, den.top));
    }
    let matches = parent.map(|(level, top)| KnownMatches::of(&level, &top)).unwrap_or_default();
    Ok((score, matches))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_named_fields_and_refuse_unknown_ones() {
        let o = |j: &str| serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(j).unwrap();
        let s = PatchSettings::default().overridden(&o(r#"{"patch":7,"vote":false}"#)).unwrap();
        assert_eq!((s.patch, s.vote, s.levels), (7, false, PatchSettings::default().levels));
        let e = PatchSettings::default().overridden(&o(r#"{"pach":7}"#)).unwrap_err().to_string();
        assert!(e.contains("unknown field \"pach\""), "{e}");
        assert!(PatchSettings::default().overridden(&o(r#"{"patch":"big"}"#)).is_err());
    }
}
