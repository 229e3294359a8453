//! Putting the fill back into the photo: the model's working-size result is corrected for
//! colour drift, upscaled, and blended into the original through a feathered band outside the
//! mask. Pixels beyond the band are copied bit for bit from the original.

use image::{DynamicImage, ImageBuffer, Rgb};

use super::Scene;
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

/// Composite a working-size fill (covering the whole canvas) into the full-resolution result.
/// The output has the canvas size and the original's bit depth (8 or 16 bits per channel).
pub fn composite(scene: &Scene, fill: &RgbF, feather: f32) -> DynamicImage {
    let (cw, ch) = scene.canvas_size();
    let up = fill.resized(cw, ch);
    let alpha = feather_alpha(&scene.mask, feather);
    let e = scene.extension;
    let (w, h) = (scene.target.width(), scene.target.height());
    let orig = &scene.target.original;
    let pixel = |x: usize, y: usize, max: f32, orig_px: Option<[f32; 3]>| -> [f32; 3] {
        let i = y * cw + x;
        let f = up.get(x, y);
        let a = alpha[i];
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
                    if alpha[y * cw + x] == 0.0 {
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
                    if alpha[y * cw + x] == 0.0 {
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
        Photo { path: "t.png".into(), original, rgb, transparent: None }
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
        let out = composite(&scene, &fill, feather).to_rgb8();
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
        let out = composite(&scene, &fill, 2.0).to_rgb8();
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
