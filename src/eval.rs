//! Scoring fills against ground truth inside the mask: PSNR, SSIM, and the detail ratio
//! (gradient energy of the result ÷ the truth's), so that a blur cannot hide behind a good
//! PSNR.

use crate::scene::{Mask, RgbF};

/// PSNR (dB) over the pixels where `mask` ≥ 0.5, all three channels, images in [0, 1].
pub fn psnr_masked(a: &RgbF, b: &RgbF, mask: &Mask) -> f64 {
    let (mut se, mut n) = (0.0f64, 0usize);
    for (i, &m) in mask.data.iter().enumerate() {
        if m >= 0.5 {
            for k in 0..3 {
                let d = (a.data[3 * i + k] - b.data[3 * i + k]) as f64;
                se += d * d;
            }
            n += 3;
        }
    }
    if n == 0 {
        return f64::NAN;
    }
    let mse = se / n as f64;
    if mse <= 1e-12 { 100.0 } else { 10.0 * (1.0 / mse).log10() }
}

/// Mean SSIM over the pixels where `mask` ≥ 0.5: the SSIM map of each channel with an
/// 11×11 Gaussian window (σ = 1.5, C1 = 0.01², C2 = 0.03²), averaged over channels. Computed
/// over the mask's bounding box grown by the window's radius (the same value as over the
/// whole image: windows clamp at the image border either way), so a 12 MP photo costs what
/// its hole costs.
pub fn ssim_masked(a: &RgbF, b: &RgbF, mask: &Mask) -> f64 {
    let Some((x0, y0, x1, y1)) = mask.bbox() else { return f64::NAN };
    let r = 5usize;
    let (x0, y0) = (x0.saturating_sub(r), y0.saturating_sub(r));
    let (x1, y1) = ((x1 + r).min(a.width), (y1 + r).min(a.height));
    if (x0, y0, x1, y1) != (0, 0, a.width, a.height) {
        let crop_mask = Mask {
            width: x1 - x0,
            height: y1 - y0,
            data: (y0..y1).flat_map(|y| (x0..x1).map(move |x| (x, y))).map(|(x, y)| mask.get(x, y)).collect(),
        };
        return ssim_masked(&a.crop(x0, y0, x1 - x0, y1 - y0), &b.crop(x0, y0, x1 - x0, y1 - y0), &crop_mask);
    }
    ssim_whole(a, b, mask)
}

/// Mean gradient magnitude of `a`'s grey values over the mask ÷ that of `b` (forward
/// differences). Below 1 the result is smoother than the truth — 0.1 is a smear — above 1
/// noisier or sharper.
pub fn detail_ratio(a: &RgbF, b: &RgbF, mask: &Mask) -> f64 {
    let energy = |img: &RgbF| {
        let (w, h) = (img.width, img.height);
        let grey = |x: usize, y: usize| {
            let p = img.get(x, y);
            0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64
        };
        let (mut sum, mut n) = (0.0f64, 0usize);
        for y in 0..h.saturating_sub(1) {
            for x in 0..w.saturating_sub(1) {
                if mask.get(x, y) >= 0.5 {
                    let g = grey(x, y);
                    sum += (grey(x + 1, y) - g).hypot(grey(x, y + 1) - g);
                    n += 1;
                }
            }
        }
        sum / n.max(1) as f64
    };
    let truth = energy(b);
    if truth <= 1e-12 { f64::NAN } else { energy(a) / truth }
}

fn ssim_whole(a: &RgbF, b: &RgbF, mask: &Mask) -> f64 {
    let (w, h) = (a.width, a.height);
    let r = 5isize;
    let g: Vec<f64> = (-r..=r).map(|i| (-(i * i) as f64 / (2.0 * 1.5 * 1.5)).exp()).collect();
    let gs: f64 = g.iter().sum();
    let g: Vec<f64> = g.iter().map(|v| v / gs).collect();
    let blur = |src: &[f64]| -> Vec<f64> {
        let at = |x: isize, y: isize, s: &[f64]| {
            let xc = x.clamp(0, w as isize - 1) as usize;
            let yc = y.clamp(0, h as isize - 1) as usize;
            s[yc * w + xc]
        };
        let mut tmp = vec![0.0; w * h];
        for y in 0..h as isize {
            for x in 0..w as isize {
                tmp[y as usize * w + x as usize] = (-r..=r).map(|d| g[(d + r) as usize] * at(x + d, y, src)).sum();
            }
        }
        let mut out = vec![0.0; w * h];
        for y in 0..h as isize {
            for x in 0..w as isize {
                out[y as usize * w + x as usize] = (-r..=r).map(|d| g[(d + r) as usize] * at(x, y + d, &tmp)).sum();
            }
        }
        out
    };
    let (c1, c2) = (0.01f64.powi(2), 0.03f64.powi(2));
    let mut total = 0.0;
    let mut n = 0usize;
    for k in 0..3 {
        let x: Vec<f64> = (0..w * h).map(|i| a.data[3 * i + k] as f64).collect();
        let y: Vec<f64> = (0..w * h).map(|i| b.data[3 * i + k] as f64).collect();
        let mx = blur(&x);
        let my = blur(&y);
        let xx = blur(&x.iter().map(|v| v * v).collect::<Vec<_>>());
        let yy = blur(&y.iter().map(|v| v * v).collect::<Vec<_>>());
        let xy = blur(&x.iter().zip(&y).map(|(p, q)| p * q).collect::<Vec<_>>());
        for i in 0..w * h {
            if mask.data[i] >= 0.5 {
                let (vx, vy, cxy) = (xx[i] - mx[i] * mx[i], yy[i] - my[i] * my[i], xy[i] - mx[i] * my[i]);
                let s = ((2.0 * mx[i] * my[i] + c1) * (2.0 * cxy + c2))
                    / ((mx[i].powi(2) + my[i].powi(2) + c1) * (vx + vy + c2));
                total += s;
                n += 1;
            }
        }
    }
    if n == 0 { f64::NAN } else { total / n as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_images_score_perfectly_and_noise_lowers_scores() {
        let a = RgbF::from_fn(32, 32, |x, y| [x as f32 / 32.0, y as f32 / 32.0, 0.5]);
        let mut m = Mask::new(32, 32, 0.0);
        for y in 8..24 {
            for x in 8..24 {
                m.set(x, y, 1.0);
            }
        }
        assert_eq!(psnr_masked(&a, &a, &m), 100.0);
        assert!((ssim_masked(&a, &a, &m) - 1.0).abs() < 1e-9);
        let mut b = a.clone();
        for y in 8..24 {
            for x in 8..24 {
                let mut p = b.get(x, y);
                p[0] += 0.1;
                b.set(x, y, p);
            }
        }
        // only channel 0 differs by 0.1 on masked pixels: mse = 0.01/3
        let want = 10.0 * (3.0f64 / 0.01).log10();
        assert!((psnr_masked(&a, &b, &m) - want).abs() < 1e-3);
        assert!(ssim_masked(&a, &b, &m) < 1.0);
        // a difference outside the mask does not count
        let mut c = a.clone();
        c.set(0, 0, [1.0, 1.0, 1.0]);
        assert_eq!(psnr_masked(&a, &c, &m), 100.0);
    }

    #[test]
    fn ssim_over_the_holes_box_equals_ssim_over_the_image() {
        let a = RgbF::from_fn(60, 40, |x, y| [((x * 7 + y * 3) % 11) as f32 / 11.0, y as f32 / 40.0, 0.3]);
        let b = RgbF::from_fn(60, 40, |x, y| [((x * 5 + y * 3) % 13) as f32 / 13.0, y as f32 / 40.0, 0.35]);
        let mut m = Mask::new(60, 40, 0.0);
        for y in 10..22 {
            for x in 30..50 {
                m.set(x, y, 1.0);
            }
        }
        assert!((ssim_masked(&a, &b, &m) - ssim_whole(&a, &b, &m)).abs() < 1e-12);
    }

    #[test]
    fn a_blur_has_a_low_detail_ratio_and_the_truth_has_one() {
        let truth = RgbF::from_fn(40, 40, |x, y| [((x / 2 + y / 2) % 2) as f32; 3]);
        let blurred = RgbF::from_fn(40, 40, |_, _| [0.5; 3]);
        let m = Mask::new(40, 40, 1.0);
        assert!((detail_ratio(&truth, &truth, &m) - 1.0).abs() < 1e-12);
        assert!(detail_ratio(&blurred, &truth, &m) < 0.01);
    }
}
