//! In-memory rasters the pipeline works on: float RGB images in [0, 1] and float masks
//! (1 = fill, 0 = keep). Interleaved RGB, row-major.

use image::{ImageBuffer, Luma, Rgb, imageops};

#[derive(Clone, Debug, PartialEq)]
pub struct RgbF {
    pub width: usize,
    pub height: usize,
    /// Interleaved RGB, `3 * width * height` values in [0, 1].
    pub data: Vec<f32>,
}

impl RgbF {
    pub fn new(width: usize, height: usize) -> Self {
        RgbF { width, height, data: vec![0.0; 3 * width * height] }
    }

    pub fn from_fn(width: usize, height: usize, f: impl Fn(usize, usize) -> [f32; 3]) -> Self {
        let mut img = RgbF::new(width, height);
        for y in 0..height {
            for x in 0..width {
                img.set(x, y, f(x, y));
            }
        }
        img
    }

    #[inline]
    pub fn get(&self, x: usize, y: usize) -> [f32; 3] {
        let i = 3 * (y * self.width + x);
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }

    #[inline]
    pub fn set(&mut self, x: usize, y: usize, v: [f32; 3]) {
        let i = 3 * (y * self.width + x);
        self.data[i..i + 3].copy_from_slice(&v);
    }

    /// Bilinear sample at continuous pixel coordinates (pixel centres at integers);
    /// coordinates outside are clamped to the border.
    pub fn sample(&self, x: f32, y: f32) -> [f32; 3] {
        let (x0, y0, fx, fy) = split_coord(x, y, self.width, self.height);
        let x1 = (x0 + 1).min(self.width - 1);
        let y1 = (y0 + 1).min(self.height - 1);
        let a = self.get(x0, y0);
        let b = self.get(x1, y0);
        let c = self.get(x0, y1);
        let d = self.get(x1, y1);
        let mut out = [0.0; 3];
        for k in 0..3 {
            let top = a[k] + (b[k] - a[k]) * fx;
            let bot = c[k] + (d[k] - c[k]) * fx;
            out[k] = top + (bot - top) * fy;
        }
        out
    }

    /// Bicubic (Catmull-Rom) sample at continuous pixel coordinates, clamped to the border: a
    /// resampled photo keeps its fine texture, which bilinear sampling softens.
    pub fn sample_cubic(&self, x: f32, y: f32) -> [f32; 3] {
        let (w, h) = (self.width as isize, self.height as isize);
        let (xf, yf) = (x.floor(), y.floor());
        let (tx, ty) = (x - xf, y - yf);
        let weights = |t: f32| {
            let (t2, t3) = (t * t, t * t * t);
            [
                0.5 * (-t3 + 2.0 * t2 - t),
                0.5 * (3.0 * t3 - 5.0 * t2 + 2.0),
                0.5 * (-3.0 * t3 + 4.0 * t2 + t),
                0.5 * (t3 - t2),
            ]
        };
        let (wx, wy) = (weights(tx), weights(ty));
        let mut out = [0.0f32; 3];
        for (j, wyj) in wy.iter().enumerate() {
            let yy = (yf as isize + j as isize - 1).clamp(0, h - 1) as usize;
            let mut row = [0.0f32; 3];
            for (i, wxi) in wx.iter().enumerate() {
                let xx = (xf as isize + i as isize - 1).clamp(0, w - 1) as usize;
                let p = self.get(xx, yy);
                for k in 0..3 {
                    row[k] += wxi * p[k];
                }
            }
            for k in 0..3 {
                out[k] += wyj * row[k];
            }
        }
        out
    }

    /// Resize with a triangle (bilinear, area-aware when shrinking) filter.
    pub fn resized(&self, width: usize, height: usize) -> RgbF {
        if width == self.width && height == self.height {
            return self.clone();
        }
        let buf: ImageBuffer<Rgb<f32>, Vec<f32>> =
            ImageBuffer::from_raw(self.width as u32, self.height as u32, self.data.clone())
                .expect("raster size matches its data");
        let out = imageops::resize(&buf, width as u32, height as u32, imageops::FilterType::Triangle);
        RgbF { width, height, data: out.into_raw() }
    }

    pub fn gray(&self) -> Vec<f32> {
        self.data.chunks_exact(3).map(|p| 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]).collect()
    }

    /// 8-bit image of these values as they are (no colour conversion), for debugging output.
    pub fn to_image8(&self) -> image::DynamicImage {
        let bytes = self.data.iter().map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8).collect();
        let buf = ImageBuffer::<Rgb<u8>, Vec<u8>>::from_raw(self.width as u32, self.height as u32, bytes)
            .expect("raster size matches its data");
        image::DynamicImage::ImageRgb8(buf)
    }

    /// Crop a rectangle (must lie inside).
    pub fn crop(&self, x0: usize, y0: usize, w: usize, h: usize) -> RgbF {
        RgbF::from_fn(w, h, |x, y| self.get(x0 + x, y0 + y))
    }

    /// The denoisers' layout: planar (CHW) values in [-1, 1].
    pub fn to_planar(&self) -> Vec<f32> {
        let hw = self.width * self.height;
        let mut out = vec![0.0; 3 * hw];
        for i in 0..hw {
            for k in 0..3 {
                out[k * hw + i] = self.data[3 * i + k] * 2.0 - 1.0;
            }
        }
        out
    }

    /// Back from the denoisers' layout (`to_planar`), clamped to [0, 1].
    pub fn from_planar(v: &[f32], width: usize, height: usize) -> RgbF {
        let hw = width * height;
        let mut img = RgbF::new(width, height);
        for i in 0..hw {
            for k in 0..3 {
                img.data[3 * i + k] = ((v[k * hw + i] + 1.0) * 0.5).clamp(0.0, 1.0);
            }
        }
        img
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Mask {
    pub width: usize,
    pub height: usize,
    /// One value per pixel: 1 = fill (unknown), 0 = keep (known); values between are soft.
    pub data: Vec<f32>,
}

impl Mask {
    pub fn new(width: usize, height: usize, value: f32) -> Self {
        Mask { width, height, data: vec![value; width * height] }
    }

    #[inline]
    pub fn get(&self, x: usize, y: usize) -> f32 {
        self.data[y * self.width + x]
    }

    #[inline]
    pub fn set(&mut self, x: usize, y: usize, v: f32) {
        self.data[y * self.width + x] = v;
    }

    /// The complement: known pixels become the ones to fill and back (soft values 1 − v).
    pub fn inverted(&self) -> Mask {
        Mask { width: self.width, height: self.height, data: self.data.iter().map(|v| 1.0 - v).collect() }
    }

    pub fn fill_fraction(&self) -> f32 {
        self.data.iter().filter(|&&v| v >= 0.5).count() as f32 / self.data.len().max(1) as f32
    }

    pub fn is_empty(&self) -> bool {
        self.data.iter().all(|&v| v < 0.5)
    }

    /// Union with another mask of the same size.
    pub fn union(&mut self, other: &Mask) {
        assert_eq!((self.width, self.height), (other.width, other.height));
        for (a, b) in self.data.iter_mut().zip(&other.data) {
            *a = a.max(*b);
        }
    }

    /// Resize; anything partly covered by the fill region counts as fill (max-like), so a
    /// downscaled mask never shrinks the hole.
    pub fn resized_cover(&self, width: usize, height: usize) -> Mask {
        if width == self.width && height == self.height {
            return self.clone();
        }
        let mut out = Mask::new(width, height, 0.0);
        let sx = self.width as f32 / width as f32;
        let sy = self.height as f32 / height as f32;
        for y in 0..height {
            let ya = ((y as f32 * sy).floor() as usize).min(self.height - 1);
            let yb = (((y + 1) as f32 * sy).ceil() as usize).clamp(ya + 1, self.height);
            for x in 0..width {
                let xa = ((x as f32 * sx).floor() as usize).min(self.width - 1);
                let xb = (((x + 1) as f32 * sx).ceil() as usize).clamp(xa + 1, self.width);
                let mut m: f32 = 0.0;
                for yy in ya..yb {
                    for xx in xa..xb {
                        m = m.max(self.get(xx, yy));
                    }
                }
                out.set(x, y, if m >= 0.5 { 1.0 } else { 0.0 });
            }
        }
        out
    }

    /// Grow the fill region by one pixel (8-connected).
    pub fn dilated(&self) -> Mask {
        let mut out = self.clone();
        for y in 0..self.height {
            for x in 0..self.width {
                let (y0, y1) = (y.saturating_sub(1), (y + 1).min(self.height - 1));
                let (x0, x1) = (x.saturating_sub(1), (x + 1).min(self.width - 1));
                if (y0..=y1).any(|yy| (x0..=x1).any(|xx| self.get(xx, yy) >= 0.5)) {
                    out.set(x, y, 1.0);
                }
            }
        }
        out
    }

    /// Bilinear-resize (soft result), for blending weights.
    pub fn resized_soft(&self, width: usize, height: usize) -> Mask {
        let buf: ImageBuffer<Luma<f32>, Vec<f32>> =
            ImageBuffer::from_raw(self.width as u32, self.height as u32, self.data.clone())
                .expect("mask size matches its data");
        let out = imageops::resize(&buf, width as u32, height as u32, imageops::FilterType::Triangle);
        Mask { width, height, data: out.into_raw() }
    }

    /// Distance (in pixels, 8-connected chamfer 1/√2 metric) from each pixel to the nearest
    /// pixel whose value is ≥ 0.5. Pixels inside the mask have distance 0.
    pub fn distance_outside(&self) -> Vec<f32> {
        let (w, h) = (self.width, self.height);
        let inf = f32::INFINITY;
        let mut d: Vec<f32> = self.data.iter().map(|&v| if v >= 0.5 { 0.0 } else { inf }).collect();
        let diag = std::f32::consts::SQRT_2;
        for y in 0..h {
            for x in 0..w {
                let i = y * w + x;
                let mut v = d[i];
                if x > 0 {
                    v = v.min(d[i - 1] + 1.0);
                }
                if y > 0 {
                    v = v.min(d[i - w] + 1.0);
                    if x > 0 {
                        v = v.min(d[i - w - 1] + diag);
                    }
                    if x + 1 < w {
                        v = v.min(d[i - w + 1] + diag);
                    }
                }
                d[i] = v;
            }
        }
        for y in (0..h).rev() {
            for x in (0..w).rev() {
                let i = y * w + x;
                let mut v = d[i];
                if x + 1 < w {
                    v = v.min(d[i + 1] + 1.0);
                }
                if y + 1 < h {
                    v = v.min(d[i + w] + 1.0);
                    if x + 1 < w {
                        v = v.min(d[i + w + 1] + diag);
                    }
                    if x > 0 {
                        v = v.min(d[i + w - 1] + diag);
                    }
                }
                d[i] = v;
            }
        }
        d
    }

    /// The complement: distance from each pixel to the nearest known pixel.
    pub fn distance_inside(&self) -> Vec<f32> {
        let inv = Mask {
            width: self.width,
            height: self.height,
            data: self.data.iter().map(|&v| if v >= 0.5 { 0.0 } else { 1.0 }).collect(),
        };
        inv.distance_outside()
    }

    /// Bounding box `(x0, y0, x1, y1)` (exclusive end) of the fill region, if any.
    pub fn bbox(&self) -> Option<(usize, usize, usize, usize)> {
        let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
        for y in 0..self.height {
            for x in 0..self.width {
                if self.get(x, y) >= 0.5 {
                    x0 = x0.min(x);
                    y0 = y0.min(y);
                    x1 = x1.max(x + 1);
                    y1 = y1.max(y + 1);
                }
            }
        }
        (x0 != usize::MAX).then_some((x0, y0, x1, y1))
    }
}

#[inline]
pub(crate) fn split_coord(x: f32, y: f32, w: usize, h: usize) -> (usize, usize, f32, f32) {
    let xc = x.clamp(0.0, (w - 1) as f32);
    let yc = y.clamp(0.0, (h - 1) as f32);
    let x0 = xc.floor() as usize;
    let y0 = yc.floor() as usize;
    (x0, y0, xc - x0 as f32, yc - y0 as f32)
}

/// The model's working size: long side ≤ `max_side`, both sides multiples of 8, aspect kept.
pub fn working_size(width: usize, height: usize, max_side: usize) -> (usize, usize) {
    let max_side = max_side.max(16);
    let long = width.max(height) as f32;
    let scale = (max_side as f32 / long).min(1.0);
    let round8 = |v: f32| (((v / 8.0).round() as usize) * 8).max(8);
    (round8(width as f32 * scale), round8(height as f32 * scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cubic_sampling_hits_pixels_reproduces_ramps_and_keeps_more_contrast_than_bilinear() {
        let ramp = RgbF::from_fn(20, 16, |x, y| [0.01 * x as f32, 0.02 * y as f32, 0.5]);
        let p = ramp.sample_cubic(7.0, 5.0);
        assert_eq!(p, ramp.get(7, 5));
        let q = ramp.sample_cubic(7.3, 5.6);
        assert!((q[0] - 0.073).abs() < 1e-5 && (q[1] - 0.112).abs() < 1e-5, "{q:?}");
        // A one-pixel stripe pattern halfway between pixels: bilinear flattens it to grey;
        // bicubic keeps some of it between a dark and a light pixel pair.
        let stripes = RgbF::from_fn(20, 4, |x, _| [((x / 2) % 2) as f32; 3]);
        let (bl, bc) = (stripes.sample(5.25, 1.0)[0], stripes.sample_cubic(5.25, 1.0)[0]);
        assert!(bc < bl, "bicubic {bc} stays nearer the dark pixel than bilinear {bl}");
    }

    #[test]
    fn working_size_is_multiple_of_8_and_bounded() {
        for &(w, h, m) in &[(1000, 750, 384), (300, 200, 384), (17, 9, 384), (4000, 100, 512)] {
            let (a, b) = working_size(w, h, m);
            assert_eq!(a % 8, 0);
            assert_eq!(b % 8, 0);
            assert!(a.max(b) <= m.max(w.max(h)).max(8) + 4);
        }
        assert_eq!(working_size(1000, 750, 384), (384, 288));
    }

    #[test]
    fn cover_resize_never_loses_fill() {
        let mut m = Mask::new(100, 100, 0.0);
        m.set(37, 51, 1.0);
        let small = m.resized_cover(10, 10);
        assert_eq!(small.data.iter().filter(|&&v| v == 1.0).count(), 1);
        assert_eq!(small.get(3, 5), 1.0);
    }

    #[test]
    fn dilation_grows_by_one_pixel() {
        let mut m = Mask::new(5, 5, 0.0);
        m.set(2, 2, 1.0);
        let d = m.dilated();
        assert_eq!(d.data.iter().filter(|&&v| v == 1.0).count(), 9);
        assert_eq!(d.get(0, 0), 0.0);
        assert_eq!(d.get(3, 3), 1.0);
    }

    #[test]
    fn distance_transform_matches_geometry() {
        let mut m = Mask::new(20, 20, 0.0);
        m.set(10, 10, 1.0);
        let d = m.distance_outside();
        assert_eq!(d[10 * 20 + 10], 0.0);
        assert_eq!(d[10 * 20 + 13], 3.0);
        assert!((d[13 * 20 + 13] - 3.0 * std::f32::consts::SQRT_2).abs() < 1e-5);
    }

    #[test]
    fn bilinear_sample_interpolates() {
        let img = RgbF::from_fn(2, 1, |x, _| [x as f32, 0.0, 1.0]);
        assert_eq!(img.sample(0.5, 0.0), [0.5, 0.0, 1.0]);
        assert_eq!(img.sample(-3.0, 0.0), [0.0, 0.0, 1.0]);
    }
}
