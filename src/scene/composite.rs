//! Putting the fill back into the photo: the model's working-size result is corrected for
//! colour drift, upscaled, and blended into the original through a feathered band outside the
//! mask. Pixels beyond the band are copied bit for bit from the original.

use image::{DynamicImage, ImageBuffer, Rgb};

use super::Scene;
use super::blur::blur;
use super::raster::{Mask, RgbF};

/// Correct the model's colour/exposure drift: compare its raw prediction of the known pixels
/// in a ring around the hole with the true pixels there, and shift the filled region by the
/// mean difference (per channel). `raw` is the model's last x0 estimate before known pixels
/// were pasted back; `known` the canvas; `mask` the fill region, all at working size.
pub fn match_colour(fill: &mut RgbF, raw: &RgbF, known: &RgbF, mask: &Mask, ring_px: f32) {
    let d = mask.distance_outside();
    let mut sum = [0.0f64; 3];
    let mut n = 0usize;
    for (i, &di) in d.iter().enumerate() {
        if di > 0.0 && di <= ring_px {
            for k in 0..3 {
                sum[k] += (known.data[3 * i + k] - raw.data[3 * i + k]) as f64;
            }
            n += 1;
        }
    }
    if n < 16 {
        return;
    }
    let off: Vec<f32> = sum.iter().map(|s| ((s / n as f64) as f32).clamp(-0.15, 0.15)).collect();
    for (i, &m) in mask.data.iter().enumerate() {
        if m >= 0.5 {
            for k in 0..3 {
                let v = &mut fill.data[3 * i + k];
                *v = (*v + off[k]).clamp(0.0, 1.0);
            }
        }
    }
}

/// Interior holes that no reference covers take their local mean colour from the smooth
/// `prior` (the push-pull continuation of the surrounding pixels): the fill keeps its own
/// detail, its colour over ≈ `sigma` px becomes the prior's. Without it the patch engine's
/// fill of such a hole drifts towards flat patches of another colour (aero-rect: water-blue
/// patches in a town). Regions that touch the image border (outpainting) are left alone:
/// there the prior only smears the border outwards and is a worse colour estimate than the
/// fill (both measured in docs/BENCHMARKS.md, "Aero, session 4") — but only when the canvas
/// is `extended`: in a photo that is not, a hole reaching the border (a stroke brushed off the
/// edge) is still surrounded by known pixels, and left alone it kept whatever colour the
/// patches brought (books-strokes: a pale band across a dark wall, 2 dB).
/// `fill_mask` and `covered` ≥ 0.5 mark pixels to fill and pixels a reference covers.
pub fn follow_prior_colour(
    fill: &mut RgbF,
    prior: &RgbF,
    fill_mask: &Mask,
    covered: &Mask,
    sigma: f32,
    extended: bool,
) {
    let (w, h) = (fill.width, fill.height);
    let open: Vec<bool> = (0..w * h).map(|i| fill_mask.data[i] >= 0.5 && covered.data[i] < 0.5).collect();
    let region = if extended { interior(&open, w, h) } else { open };
    if !region.iter().any(|&r| r) {
        return;
    }
    let weight: Vec<f32> = region.iter().map(|&r| if r { 1.0 } else { 0.0 }).collect();
    let mut norm = weight.clone();
    blur(&mut norm, w, h, sigma);
    for k in 0..3 {
        let mut diff: Vec<f32> =
            (0..w * h).map(|i| weight[i] * (prior.data[3 * i + k] - fill.data[3 * i + k])).collect();
        blur(&mut diff, w, h, sigma);
        for i in (0..w * h).filter(|&i| region[i] && norm[i] > 1e-6) {
            let v = &mut fill.data[3 * i + k];
            *v = (*v + diff[i] / norm[i]).clamp(0.0, 1.0);
        }
    }
}

/// `follow_prior_colour` at σ `sigmas.0` where a pixel lies within `depths.0` pixels of the
/// nearest known pixel and at `sigmas.1` beyond `depths.1`, blended linearly between: a
/// narrow hole's colour is known from its edges at a finer scale than a wide one's middle.
pub fn follow_prior_colour_by_depth(
    fill: &mut RgbF,
    prior: &RgbF,
    fill_mask: &Mask,
    covered: &Mask,
    extended: bool,
    sigmas: (f32, f32),
    depths: (f32, f32),
) {
    let mut near = fill.clone();
    follow_prior_colour(&mut near, prior, fill_mask, covered, sigmas.0, extended);
    follow_prior_colour(fill, prior, fill_mask, covered, sigmas.1, extended);
    for (i, d) in fill_mask.distance_inside().into_iter().enumerate() {
        let t = ((d - depths.0) / (depths.1 - depths.0).max(1e-6)).clamp(0.0, 1.0);
        for k in 0..3 {
            let v = &mut fill.data[3 * i + k];
            *v = near.data[3 * i + k] * (1.0 - t) + *v * t;
        }
    }
}

/// The pixels of `set` whose 4-connected component does not touch the image border.
fn interior(set: &[bool], w: usize, h: usize) -> Vec<bool> {
    let mut out = set.to_vec();
    // Flood from every border pixel of the set; what is reached is not interior.
    let mut stack: Vec<usize> =
        (0..w * h).filter(|&i| set[i] && (i % w == 0 || i % w == w - 1 || i / w == 0 || i / w == h - 1)).collect();
    for &i in &stack {
        out[i] = false;
    }
    while let Some(i) = stack.pop() {
        let (x, y) = (i % w, i / w);
        let mut visit = |j: usize| {
            if out[j] {
                out[j] = false;
                stack.push(j);
            }
        };
        if x > 0 {
            visit(i - 1);
        }
        if x + 1 < w {
            visit(i + 1);
        }
        if y > 0 {
            visit(i - w);
        }
        if y + 1 < h {
            visit(i + w);
        }
    }
    out
}

/// Default feather width at full resolution: about two working-size pixels, at least 2 px.
pub fn default_feather(full_long_side: usize, working_long_side: usize) -> f32 {
    (2.0 * full_long_side as f32 / working_long_side.max(1) as f32).max(2.0)
}

/// Blend weights at full resolution: 1 inside the mask, falling linearly to 0 at `feather`
/// pixels outside it, 0 beyond.
pub fn feather_alpha(mask: &Mask, feather: f32) -> Vec<f32> {
    mask.distance_outside()
        .into_iter()
        .map(|d| if d == 0.0 { 1.0 } else { (1.0 - d / feather.max(1e-3)).max(0.0) })
        .collect()
}

/// Blend weights over a rectangle of the canvas; zero outside it.
struct SparseAlpha {
    x0: usize,
    y0: usize,
    w: usize,
    h: usize,
    a: Vec<f32>,
}

impl SparseAlpha {
    #[inline]
    fn at(&self, x: usize, y: usize) -> f32 {
        if x >= self.x0 && y >= self.y0 && x < self.x0 + self.w && y < self.y0 + self.h {
            self.a[(y - self.y0) * self.w + x - self.x0]
        } else {
            0.0
        }
    }
}

/// A fill at the canvas's own resolution over part of it: canvas pixels
/// [x0, x0 + rgb.width) × [y0, y0 + rgb.height).
pub struct NativePart<'a> {
    pub x0: usize,
    pub y0: usize,
    pub rgb: &'a RgbF,
}

/// Composite a fill into the full-resolution result: `native` where given (it must cover the
/// fill region and the feather band), else the working-size `fill` (covering the whole canvas)
/// upscaled. The output has the canvas size and the original's bit depth (8 or 16 bits per
/// channel).
pub fn composite(scene: &Scene, fill: &RgbF, native: Option<NativePart<'_>>, feather: f32) -> DynamicImage {
    let (cw, ch) = scene.canvas_size();
    // The fill is in sRGB; the original pixels are in the photo's own profile: convert the fill.
    let colour = scene.target.metadata.colour.clone();
    let in_profile = |mut rgb: RgbF| {
        if let Some(c) = &colour {
            c.from_srgb(&mut rgb);
        }
        rgb
    };
    // Only needed where no native part is given.
    let up = if native.is_none() { in_profile(fill.resized(cw, ch)) } else { RgbF::new(0, 0) };
    let native_rgb = match (&native, &colour) {
        (Some(n), Some(_)) => Some(in_profile(n.rgb.clone())),
        _ => None,
    };
    let native = native.map(|n| NativePart { x0: n.x0, y0: n.y0, rgb: native_rgb.as_ref().unwrap_or(n.rgb) });
    let alpha = match &native {
        // The blend weights are non-zero only inside the native part: compute them there.
        Some(n) => {
            let (nw, nh) = (n.rgb.width, n.rgb.height);
            let part = Mask {
                width: nw,
                height: nh,
                data: (0..nw * nh).map(|i| scene.mask.get(n.x0 + i % nw, n.y0 + i / nw)).collect(),
            };
            let a = feather_alpha(&part, feather);
            SparseAlpha { x0: n.x0, y0: n.y0, w: nw, h: nh, a }
        }
        None => SparseAlpha { x0: 0, y0: 0, w: cw, h: ch, a: feather_alpha(&scene.mask, feather) },
    };
    let e = scene.extension;
    let (w, h) = (scene.target.width(), scene.target.height());
    let orig = &scene.target.original;
    let pixel = |x: usize, y: usize, max: f32, orig_px: Option<[f32; 3]>| -> [f32; 3] {
        let f = match &native {
            Some(n) if x >= n.x0 && y >= n.y0 && x < n.x0 + n.rgb.width && y < n.y0 + n.rgb.height => {
                n.rgb.get(x - n.x0, y - n.y0)
            }
            // Blended pixels lie inside the native part by construction; this is a guard.
            Some(_) => orig_px.map_or([0.0; 3], |o| o.map(|c| c / max)),
            None => up.get(x, y),
        };
        let a = alpha.at(x, y);
        match orig_px {
            Some(o) => [0, 1, 2].map(|k| (a * f[k] * max + (1.0 - a) * o[k]).round().clamp(0.0, max)),
            None => [0, 1, 2].map(|k| (f[k] * max).round().clamp(0.0, max)),
        }
    };
    let inside = |x: usize, y: usize| x >= e.left && y >= e.top && x < e.left + w && y < e.top + h;
    match orig {
        DynamicImage::ImageRgb16(o) => {
            let out = ImageBuffer::from_fn(cw as u32, ch as u32, |x, y| {
                let (x, y) = (x as usize, y as usize);
                if inside(x, y) {
                    let p = o.get_pixel((x - e.left) as u32, (y - e.top) as u32);
                    if alpha.at(x, y) == 0.0 {
                        return *p;
                    }
                    let v = pixel(x, y, 65535.0, Some(p.0.map(|c| c as f32)));
                    Rgb(v.map(|c| c as u16))
                } else {
                    Rgb(pixel(x, y, 65535.0, None).map(|c| c as u16))
                }
            });
            DynamicImage::ImageRgb16(out)
        }
        _ => {
            let o = orig.to_rgb8();
            let out = ImageBuffer::from_fn(cw as u32, ch as u32, |x, y| {
                let (x, y) = (x as usize, y as usize);
                if inside(x, y) {
                    let p = o.get_pixel((x - e.left) as u32, (y - e.top) as u32);
                    if alpha.at(x, y) == 0.0 {
                        return *p;
                    }
                    let v = pixel(x, y, 255.0, Some(p.0.map(|c| c as f32)));
                    Rgb(v.map(|c| c as u8))
                } else {
                    Rgb(pixel(x, y, 255.0, None).map(|c| c as u8))
                }
            });
            DynamicImage::ImageRgb8(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scene::{Extension, Photo};

    fn photo(w: u32, h: u32) -> Photo {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            Rgb([(x * 7 % 256) as u8, (y * 13 % 256) as u8, ((x + y) % 256) as u8])
        });
        let original = DynamicImage::ImageRgb8(img);
        let rgb = RgbF { width: w as usize, height: h as usize, data: original.to_rgb32f().into_raw() };
        Photo { path: "t.png".into(), original, rgb, transparent: None, metadata: Default::default() }
    }

    #[test]
    fn an_uncovered_interior_hole_takes_the_priors_colour_and_keeps_its_detail() {
        let (w, h) = (60, 40);
        // Fill: a blue-ish checker texture everywhere; prior: flat grey.
        let texture = |x: usize, y: usize| if (x / 2 + y / 2).is_multiple_of(2) { 0.1 } else { -0.1 };
        let mut fill = RgbF::from_fn(w, h, |x, y| {
            let t = texture(x, y);
            [0.3 + t, 0.35 + t, 0.6 + t]
        });
        let prior = RgbF::from_fn(w, h, |_, _| [0.5, 0.5, 0.5]);
        let mut mask = Mask::new(w, h, 0.0);
        // An interior hole, and an outpainting band along the left edge.
        for y in 10..30 {
            for x in 25..50 {
                mask.set(x, y, 1.0);
            }
            for x in 0..6 {
                mask.set(x, y, 1.0);
            }
        }
        let before = fill.clone();
        let mut not_extended = fill.clone();
        follow_prior_colour(&mut fill, &prior, &mask, &Mask::new(w, h, 0.0), 4.0, true);
        // The hole's centre: mean colour now the prior's, texture amplitude unchanged.
        let (mut mean, mut n) = ([0.0f32; 3], 0.0f32);
        for y in 16..24 {
            for x in 31..44 {
                for (k, m) in mean.iter_mut().enumerate() {
                    *m += fill.get(x, y)[k];
                }
                n += 1.0;
                let d = fill.get(x, y)[0] - fill.get(x + 1, y)[0];
                let d0 = before.get(x, y)[0] - before.get(x + 1, y)[0];
                assert!((d - d0).abs() < 0.05, "detail kept at ({x}, {y}): {d} vs {d0}");
            }
        }
        for m in mean {
            assert!((m / n - 0.5).abs() < 0.03, "mean colour {}", m / n);
        }
        // On an extended canvas the band touching the border is untouched; known pixels always.
        assert_eq!(fill.get(2, 20), before.get(2, 20));
        assert_eq!(fill.get(10, 5), before.get(10, 5));
        // On a canvas that is not extended, the band follows the prior too.
        follow_prior_colour(&mut not_extended, &prior, &mask, &Mask::new(w, h, 0.0), 4.0, false);
        assert_ne!(not_extended.get(2, 20), before.get(2, 20));
        assert_eq!(not_extended.get(10, 5), before.get(10, 5));
        // A hole a reference covers is left to the reference.
        let mut fill2 = before.clone();
        follow_prior_colour(&mut fill2, &prior, &mask, &Mask::new(w, h, 1.0), 4.0, false);
        assert_eq!(fill2.data, before.data);
    }

    #[test]
    fn near_the_known_pixels_the_colour_follows_the_prior_at_a_finer_scale() {
        // Stripes 10 px apart over a flat prior, in a hole 40 px tall: σ = 2 takes about half
        // of their amplitude, σ = 4 almost none.
        let (w, h) = (80, 60);
        let prior = RgbF::from_fn(w, h, |_, _| [0.5, 0.5, 0.5]);
        let stripes = |x: usize| 0.2 * (x as f32 * std::f32::consts::TAU / 10.0).sin();
        let before = RgbF::from_fn(w, h, |x, _| [0.5 + stripes(x), 0.5, 0.5]);
        let mut mask = Mask::new(w, h, 0.0);
        for y in 10..50 {
            for x in 10..70 {
                mask.set(x, y, 1.0);
            }
        }
        let mut fill = before.clone();
        follow_prior_colour_by_depth(&mut fill, &prior, &mask, &Mask::new(w, h, 0.0), false, (2.0, 4.0), (6.0, 12.0));
        // Amplitude over one row, relative to the stripes'.
        let amplitude = |y: usize| {
            let dev = |img: &RgbF| (25..55).map(|x| (img.get(x, y)[0] - 0.5).abs()).sum::<f32>();
            dev(&fill) / dev(&before)
        };
        let (edge, middle) = (amplitude(12), amplitude(30));
        assert!(edge < 0.75, "two rows from the edge the stripes follow the prior: {edge}");
        assert!(middle > 0.9, "deep in the hole they are kept: {middle}");
        assert_eq!(fill.get(5, 5), before.get(5, 5), "known pixels untouched");
    }

    #[test]
    fn pixels_outside_feather_band_are_bit_exact() {
        let target = photo(64, 48);
        let mut m = Mask::new(64, 48, 0.0);
        for y in 10..20 {
            for x in 20..40 {
                m.set(x, y, 1.0);
            }
        }
        let scene =
            Scene::new(target.clone(), Some((m.clone(), std::path::Path::new("m.png"))), Extension::default(), vec![])
                .unwrap();
        let fill = RgbF::from_fn(32, 24, |_, _| [0.9, 0.1, 0.5]);
        let feather = 3.0;
        let out = composite(&scene, &fill, None, feather).to_rgb8();
        let d = m.distance_outside();
        let orig = target.original.to_rgb8();
        let mut changed_inside = 0;
        for y in 0..48u32 {
            for x in 0..64u32 {
                let i = (y * 64 + x) as usize;
                if d[i] >= feather {
                    assert_eq!(out.get_pixel(x, y), orig.get_pixel(x, y), "pixel {x},{y}");
                } else if d[i] == 0.0 && out.get_pixel(x, y) != orig.get_pixel(x, y) {
                    changed_inside += 1;
                }
            }
        }
        assert!(changed_inside > 150);
        assert_eq!(*out.get_pixel(30, 15), Rgb([230, 26, 128]));
    }

    #[test]
    fn extension_grows_canvas_and_keeps_original() {
        let target = photo(20, 10);
        let ext = Extension { left: 4, top: 2, right: 6, bottom: 0 };
        let scene = Scene::new(target.clone(), None, ext, vec![]).unwrap();
        let fill = RgbF::from_fn(32, 16, |_, _| [0.0, 1.0, 0.0]);
        let out = composite(&scene, &fill, None, 2.0).to_rgb8();
        assert_eq!((out.width(), out.height()), (30, 12));
        assert_eq!(out.get_pixel(14, 8), target.original.to_rgb8().get_pixel(10, 6));
        assert_eq!(*out.get_pixel(0, 0), Rgb([0, 255, 0]));
    }

    #[test]
    fn colour_match_removes_constant_drift() {
        let known = RgbF::from_fn(40, 40, |_, _| [0.5, 0.5, 0.5]);
        let raw = RgbF::from_fn(40, 40, |_, _| [0.6, 0.5, 0.4]);
        let mut fill = raw.clone();
        let mut m = Mask::new(40, 40, 0.0);
        for y in 15..25 {
            for x in 15..25 {
                m.set(x, y, 1.0);
            }
        }
        match_colour(&mut fill, &raw, &known, &m, 4.0);
        let p = fill.get(20, 20);
        assert!((p[0] - 0.5).abs() < 1e-4 && (p[2] - 0.5).abs() < 1e-4, "{p:?}");
        assert_eq!(fill.get(0, 0), raw.get(0, 0));
    }
}
