//! The patch engine's pyramid: each source (the target's known pixels, the warped references,
//! each reference at several scales with its colours matched to the target's) halved level by
//! level, with the conditions per level.

use super::PatchSettings;
use super::denoiser::{Level, Source};
use crate::diffusion::sampler::Condition;
use crate::error::{Error, Result};
use crate::scene::RgbF;

/// Halve a planar image (2×2 box average); sizes must be even.
pub fn half(rgb: &[f32], w: usize, h: usize) -> Vec<f32> {
    let (hw2, hh2) = (w / 2, h / 2);
    let mut out = vec![0.0; 3 * hw2 * hh2];
    for c in 0..3 {
        for y in 0..hh2 {
            for x in 0..hw2 {
                let at = |xx: usize, yy: usize| rgb[c * w * h + yy * w + xx];
                out[c * hw2 * hh2 + y * hw2 + x] =
                    0.25 * (at(2 * x, 2 * y) + at(2 * x + 1, 2 * y) + at(2 * x, 2 * y + 1) + at(2 * x + 1, 2 * y + 1));
            }
        }
    }
    out
}

/// Halve a 0/1 map: a coarse pixel is set only when all four children are.
pub fn half_all(m: &[f32], w: usize, h: usize) -> Vec<f32> {
    let (hw2, hh2) = (w / 2, h / 2);
    let mut out = vec![0.0; hw2 * hh2];
    for y in 0..hh2 {
        for x in 0..hw2 {
            let v = m[2 * y * w + 2 * x]
                .min(m[2 * y * w + 2 * x + 1])
                .min(m[(2 * y + 1) * w + 2 * x])
                .min(m[(2 * y + 1) * w + 2 * x + 1]);
            out[y * hw2 + x] = v;
        }
    }
    out
}

/// Where a patch of side `p` centred at each pixel lies inside the image with every pixel valid.
pub fn usable_centres(valid: &[f32], w: usize, h: usize, p: usize) -> Vec<bool> {
    let r = p / 2;
    let mut out = vec![false; w * h];
    if w < p || h < p {
        return out;
    }
    for y in r..h - r {
        for x in r..w - r {
            out[y * w + x] = (y - r..=y + r).all(|yy| (x - r..=x + r).all(|xx| valid[yy * w + xx] >= 0.5));
        }
    }
    out
}

/// Per-channel mean and standard deviation of a planar image where `weight` ≥ 0.5.
fn stats(rgb: &[f32], weight: Option<&[f32]>, hw: usize) -> [(f32, f32); 3] {
    let mut out = [(0.0, 1.0); 3];
    for (c, o) in out.iter_mut().enumerate() {
        let (mut n, mut s, mut s2) = (0.0f64, 0.0f64, 0.0f64);
        for i in 0..hw {
            if weight.is_none_or(|w| w[i] >= 0.5) {
                let v = rgb[c * hw + i] as f64;
                n += 1.0;
                s += v;
                s2 += v * v;
            }
        }
        if n > 0.0 {
            let m = s / n;
            *o = (m as f32, ((s2 / n - m * m).max(0.0).sqrt() as f32).max(1e-3));
        }
    }
    out
}

/// Match a planar image's colour statistics to `to` (the target's known pixels): the same
/// scene under another exposure or white balance then matches patch for patch.
pub fn match_stats(rgb: &mut [f32], hw: usize, to: [(f32, f32); 3]) {
    let from = stats(rgb, None, hw);
    for c in 0..3 {
        // Limit the gain: a reference that shows mostly something else should not be stretched.
        let gain = (to[c].1 / from[c].1).clamp(0.5, 2.0);
        for v in &mut rgb[c * hw..(c + 1) * hw] {
            *v = ((*v - from[c].0) * gain + to[c].0).clamp(-1.0, 1.0);
        }
    }
}

/// A pyramid of one source, finest first, with patch usability per level.
fn source_pyramid(rgb: Vec<f32>, valid: Vec<f32>, w: usize, h: usize, levels: usize, p: usize) -> Vec<Source> {
    let mut out = Vec::with_capacity(levels);
    let (mut rgb, mut valid, mut w, mut h) = (rgb, valid, w, h);
    for l in 0..levels {
        out.push(Source { width: w, height: h, rgb: rgb.clone(), usable: usable_centres(&valid, w, h, p) });
        if l + 1 < levels {
            rgb = half(&rgb, w, h);
            valid = half_all(&valid, w, h);
            w /= 2;
            h /= 2;
        }
    }
    out
}

/// The scene at working size, as the patch engine sees it.
pub struct PatchScene<'a> {
    pub cond: &'a Condition,
    /// References at working size ([0, 1] interleaved).
    pub refs: &'a [RgbF],
    /// Warped references in the target's frame (planar [-1, 1]) and where they are valid.
    pub guide: Option<(&'a [f32], &'a [f32])>,
}

/// Levels finest first, as many as `set.levels` allows for the working size — fewer when the
/// coarsest level would have no usable source patch (a small photo with little known around
/// a large hole, tiny references).
pub fn build_levels(scene: &PatchScene<'_>, set: &PatchSettings) -> Result<Vec<Level>> {
    let mut levels = set.levels_for(scene.cond.width, scene.cond.height);
    loop {
        let built = build_levels_exactly(scene, &PatchSettings { levels, ..set.clone() })?;
        let coarsest = built.last().expect("at least one level");
        let usable = coarsest.sources.iter().map(|s| s.usable.iter().filter(|&&u| u).count()).sum::<usize>();
        if usable >= 16 || levels == 1 {
            return Ok(built);
        }
        levels -= 1;
    }
}

fn build_levels_exactly(scene: &PatchScene<'_>, set: &PatchSettings) -> Result<Vec<Level>> {
    let c = scene.cond;
    let (w, h) = (c.width, c.height);
    if w < set.patch || h < set.patch {
        return Err(Error::Invalid(format!(
            "the patch engine needs a working size of at least {0}×{0} pixels: got {w}×{h}",
            set.patch
        )));
    }
    let set = &PatchSettings { levels: set.levels_for(w, h), ..set.clone() };
    let div = 1usize << (set.levels - 1);
    let hw = w * h;
    let known: Vec<f32> = c.mask.iter().map(|m| 1.0 - m).collect();
    let target_stats = stats(&c.known, Some(&known), hw);
    // Sources, each as a pyramid (finest first).
    let mut pyramids: Vec<Vec<Source>> =
        vec![source_pyramid(c.known.clone(), known.clone(), w, h, set.levels, set.patch)];
    let mut guide_index = None;
    if let Some((g, valid)) = scene.guide
        && valid.iter().any(|&v| v >= 0.5)
    {
        guide_index = Some(pyramids.len());
        pyramids.push(source_pyramid(g.to_vec(), valid.to_vec(), w, h, set.levels, set.patch));
    }
    for r in scene.refs {
        for &sc in &set.scales {
            let rw = ((r.width as f32 * sc / div as f32).round() as usize).max(1) * div;
            let rh = ((r.height as f32 * sc / div as f32).round() as usize).max(1) * div;
            if rw / div < set.patch || rh / div < set.patch {
                continue;
            }
            let mut rgb = r.resized(rw, rh).to_planar();
            match_stats(&mut rgb, rw * rh, target_stats);
            pyramids.push(source_pyramid(rgb, vec![1.0; rw * rh], rw, rh, set.levels, set.patch));
        }
    }
    // Conditions per level.
    let mut conds = vec![c.clone()];
    for l in 1..set.levels {
        let prev: &Condition = &conds[l - 1];
        let (pw, ph) = (prev.width, prev.height);
        let known_prev: Vec<f32> = prev.mask.iter().map(|m| 1.0 - m).collect();
        let known_here = half_all(&known_prev, pw, ph);
        let (nw, nh) = (pw / 2, ph / 2);
        let mut k = half(&prev.known, pw, ph);
        for ch in 0..3 {
            for i in 0..nw * nh {
                k[ch * nw * nh + i] *= known_here[i];
            }
        }
        let gv = half_all(&prev.guide_valid, pw, ph);
        conds.push(Condition {
            width: nw,
            height: nh,
            known: k,
            mask: known_here.iter().map(|v| 1.0 - v).collect(),
            prior: half(&prev.prior, pw, ph),
            guide_valid: gv,
        });
    }
    let mut levels = Vec::with_capacity(set.levels);
    for (l, cond) in conds.into_iter().enumerate() {
        let sources = pyramids.iter().map(|p| p[l].clone()).collect();
        levels.push(Level::new(cond, sources, guide_index));
    }
    Ok(levels)
}

/// Bilinear ×2 upsampling of a planar image to exactly (w, h).
pub fn upsample(rgb: &[f32], w: usize, h: usize, to_w: usize, to_h: usize) -> Vec<f32> {
    let mut img = RgbF::new(w, h);
    for i in 0..w * h {
        for c in 0..3 {
            img.data[3 * i + c] = rgb[c * w * h + i];
        }
    }
    let up = img.resized(to_w, to_h);
    let mut out = vec![0.0; 3 * to_w * to_h];
    for i in 0..to_w * to_h {
        for c in 0..3 {
            out[c * to_w * to_h + i] = up.data[3 * i + c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pyramid_halves_and_keeps_only_wholly_known_pixels() {
        let m = vec![1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0];
        assert_eq!(half_all(&m, 4, 2), vec![1.0, 0.0]);
        let rgb: Vec<f32> = (0..3 * 8).map(|i| i as f32).collect();
        let hlf = half(&rgb, 4, 2);
        assert_eq!(hlf.len(), 6);
        assert_eq!(hlf[0], (0.0 + 1.0 + 4.0 + 5.0) / 4.0);
    }

    #[test]
    fn exposure_matching_moves_statistics_to_the_target() {
        let mut r = crate::rng::Rng::new(2);
        let hw = 400;
        let mut img: Vec<f32> = (0..3 * hw).map(|_| r.range_f32(-0.2, 0.2) + 0.5).collect();
        let want = [(-0.3, 0.1), (0.0, 0.2), (0.2, 0.15)];
        match_stats(&mut img, hw, want);
        let got = stats(&img, None, hw);
        for c in 0..3 {
            assert!((got[c].0 - want[c].0).abs() < 0.02 && (got[c].1 - want[c].1).abs() < 0.02, "{got:?}");
        }
    }
}
