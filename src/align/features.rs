//! Scale- and rotation-invariant keypoints with gradient-histogram descriptors (SIFT-like):
//! multi-scale Harris corners on a √2 pyramid, a dominant gradient orientation per point, and
//! a 4×4×8 histogram descriptor, normalised so that exposure changes do not matter.

use std::f32::consts::PI;

#[derive(Clone, Debug)]
pub struct Gray {
    pub width: usize,
    pub height: usize,
    pub data: Vec<f32>,
}

impl Gray {
    pub fn new(width: usize, height: usize, data: Vec<f32>) -> Self {
        assert_eq!(data.len(), width * height);
        Gray { width, height, data }
    }

    #[inline]
    pub fn at(&self, x: isize, y: isize) -> f32 {
        let x = x.clamp(0, self.width as isize - 1) as usize;
        let y = y.clamp(0, self.height as isize - 1) as usize;
        self.data[y * self.width + x]
    }

    pub fn sample(&self, x: f32, y: f32) -> f32 {
        let x0 = x.floor();
        let y0 = y.floor();
        let (fx, fy) = (x - x0, y - y0);
        let (xi, yi) = (x0 as isize, y0 as isize);
        let a = self.at(xi, yi);
        let b = self.at(xi + 1, yi);
        let c = self.at(xi, yi + 1);
        let d = self.at(xi + 1, yi + 1);
        let top = a + (b - a) * fx;
        let bot = c + (d - c) * fx;
        top + (bot - top) * fy
    }

    pub fn blurred(&self, sigma: f32) -> Gray {
        let r = (3.0 * sigma).ceil() as isize;
        let k: Vec<f32> = (-r..=r).map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp()).collect();
        let s: f32 = k.iter().sum();
        let k: Vec<f32> = k.iter().map(|v| v / s).collect();
        let (w, h) = (self.width, self.height);
        let mut tmp = vec![0.0; w * h];
        for y in 0..h {
            for x in 0..w {
                let mut acc = 0.0;
                for (j, kv) in k.iter().enumerate() {
                    acc += kv * self.at(x as isize + j as isize - r, y as isize);
                }
                tmp[y * w + x] = acc;
            }
        }
        let t = Gray::new(w, h, tmp);
        let mut out = vec![0.0; w * h];
        for y in 0..h {
            for x in 0..w {
                let mut acc = 0.0;
                for (j, kv) in k.iter().enumerate() {
                    acc += kv * t.at(x as isize, y as isize + j as isize - r);
                }
                out[y * w + x] = acc;
            }
        }
        Gray::new(w, h, out)
    }

    /// Downscale by `factor` (> 1) with bilinear sampling of an already smoothed image.
    pub fn downscaled(&self, factor: f32) -> Gray {
        let w = ((self.width as f32 / factor).round() as usize).max(1);
        let h = ((self.height as f32 / factor).round() as usize).max(1);
        let mut data = Vec::with_capacity(w * h);
        for y in 0..h {
            for x in 0..w {
                data.push(self.sample((x as f32 + 0.5) * factor - 0.5, (y as f32 + 0.5) * factor - 0.5));
            }
        }
        Gray::new(w, h, data)
    }
}

#[derive(Clone, Debug)]
pub struct Keypoint {
    /// Position in base-image pixels.
    pub x: f32,
    pub y: f32,
    /// Size of one pyramid-level pixel in base pixels.
    pub scale: f32,
    pub angle: f32,
    pub desc: [f32; 128],
}

/// Detection settings.
pub struct DetectOptions {
    pub max_points: usize,
    /// Optional per-pixel usable radius (base pixels): a point is kept only if its descriptor
    /// window fits inside the known region (distance to the nearest unknown pixel).
    pub clearance: Option<Vec<f32>>,
}

const LEVEL_STEP: f32 = std::f32::consts::SQRT_2;
const DESC_SPACING: f32 = 1.25;

pub fn detect(img: &Gray, opts: &DetectOptions) -> Vec<Keypoint> {
    let mut level = img.blurred(1.0);
    let mut scale = 1.0f32;
    let mut levels = Vec::new();
    while level.width.min(level.height) >= 40 && levels.len() < 8 {
        levels.push((level.clone(), scale));
        level = level.blurred(0.8).downscaled(LEVEL_STEP);
        scale *= LEVEL_STEP;
    }
    let per_level = (opts.max_points / levels.len().max(1)).max(16);
    let mut out = Vec::new();
    for (lv, s) in &levels {
        let grad = gradients(lv);
        let resp = harris(lv, &grad);
        let max_r = resp.iter().cloned().fold(0.0f32, f32::max);
        if max_r <= 0.0 {
            continue;
        }
        let mut cands = Vec::new();
        let border = 10isize;
        for y in border..lv.height as isize - border {
            for x in border..lv.width as isize - border {
                let r = resp[y as usize * lv.width + x as usize];
                if r < 0.005 * max_r {
                    continue;
                }
                let mut is_max = true;
                'n: for dy in -2..=2isize {
                    for dx in -2..=2isize {
                        if (dx != 0 || dy != 0) && resp[(y + dy) as usize * lv.width + (x + dx) as usize] >= r {
                            is_max = false;
                            break 'n;
                        }
                    }
                }
                if !is_max {
                    continue;
                }
                let (bx, by) = ((x as f32 + 0.5) * s - 0.5, (y as f32 + 0.5) * s - 0.5);
                if let Some(cl) = &opts.clearance {
                    let bi = (by.round() as usize).min(img.height - 1) * img.width
                        + (bx.round() as usize).min(img.width - 1);
                    if cl[bi] < 12.0 * s {
                        continue;
                    }
                }
                cands.push((r, x as usize, y as usize));
            }
        }
        cands.sort_by(|a, b| b.0.total_cmp(&a.0));
        cands.truncate(per_level);
        for (_, x, y) in cands {
            for angle in orientations(&grad, lv.width, x, y) {
                let desc = describe(lv, x as f32, y as f32, angle);
                out.push(Keypoint {
                    x: (x as f32 + 0.5) * s - 0.5,
                    y: (y as f32 + 0.5) * s - 0.5,
                    scale: *s,
                    angle,
                    desc,
                });
            }
        }
    }
    out
}

struct Grad {
    gx: Vec<f32>,
    gy: Vec<f32>,
}

fn gradients(g: &Gray) -> Grad {
    let (w, h) = (g.width, g.height);
    let mut gx = vec![0.0; w * h];
    let mut gy = vec![0.0; w * h];
    for y in 0..h as isize {
        for x in 0..w as isize {
            let i = y as usize * w + x as usize;
            gx[i] = 0.5 * (g.at(x + 1, y) - g.at(x - 1, y));
            gy[i] = 0.5 * (g.at(x, y + 1) - g.at(x, y - 1));
        }
    }
    Grad { gx, gy }
}

fn harris(g: &Gray, grad: &Grad) -> Vec<f32> {
    let (w, h) = (g.width, g.height);
    let xx = Gray::new(w, h, grad.gx.iter().map(|v| v * v).collect()).blurred(1.5);
    let yy = Gray::new(w, h, grad.gy.iter().map(|v| v * v).collect()).blurred(1.5);
    let xy = Gray::new(w, h, grad.gx.iter().zip(&grad.gy).map(|(a, b)| a * b).collect()).blurred(1.5);
    (0..w * h)
        .map(|i| {
            let (a, b, c) = (xx.data[i], yy.data[i], xy.data[i]);
            a * b - c * c - 0.04 * (a + b) * (a + b)
        })
        .collect()
}

/// Dominant gradient orientations (the peak, plus any other peak above 80% of it).
fn orientations(grad: &Grad, w: usize, x: usize, y: usize) -> Vec<f32> {
    let h = grad.gx.len() / w;
    let mut hist = [0.0f32; 36];
    let r = 7isize;
    for dy in -r..=r {
        for dx in -r..=r {
            let (xx, yy) = (x as isize + dx, y as isize + dy);
            if xx < 0 || yy < 0 || xx >= w as isize || yy >= h as isize {
                continue;
            }
            let i = yy as usize * w + xx as usize;
            let (gx, gy) = (grad.gx[i], grad.gy[i]);
            let m = (gx * gx + gy * gy).sqrt() * (-((dx * dx + dy * dy) as f32) / (2.0 * 4.5 * 4.5)).exp();
            let a = gy.atan2(gx).rem_euclid(2.0 * PI);
            hist[((a / (2.0 * PI) * 36.0) as usize).min(35)] += m;
        }
    }
    let mut smooth = [0.0f32; 36];
    for i in 0..36 {
        smooth[i] = 0.25 * hist[(i + 35) % 36] + 0.5 * hist[i] + 0.25 * hist[(i + 1) % 36];
    }
    let peak = smooth.iter().cloned().fold(0.0f32, f32::max);
    let mut out = Vec::new();
    for i in 0..36 {
        let (l, c, r) = (smooth[(i + 35) % 36], smooth[i], smooth[(i + 1) % 36]);
        if c > l && c > r && c >= 0.8 * peak && peak > 0.0 {
            let off = 0.5 * (l - r) / (l - 2.0 * c + r);
            out.push(((i as f32 + 0.5 + off) / 36.0 * 2.0 * PI).rem_euclid(2.0 * PI));
            if out.len() == 2 {
                break;
            }
        }
    }
    if out.is_empty() {
        out.push(0.0);
    }
    out
}

/// 4×4 cells × 8 orientation bins over a 16×16 grid rotated to `angle`.
fn describe(g: &Gray, x: f32, y: f32, angle: f32) -> [f32; 128] {
    let (s, c) = angle.sin_cos();
    let n = 18usize; // one extra sample each side for central differences
    let mut patch = [[0.0f32; 18]; 18];
    for (j, row) in patch.iter_mut().enumerate() {
        for (i, v) in row.iter_mut().enumerate() {
            let u = (i as f32 - (n as f32 - 1.0) / 2.0) * DESC_SPACING;
            let w = (j as f32 - (n as f32 - 1.0) / 2.0) * DESC_SPACING;
            *v = g.sample(x + c * u - s * w, y + s * u + c * w);
        }
    }
    let mut d = [0.0f32; 128];
    for j in 1..n - 1 {
        for i in 1..n - 1 {
            let gx = patch[j][i + 1] - patch[j][i - 1];
            let gy = patch[j + 1][i] - patch[j - 1][i];
            let (pi, pj) = (i - 1, j - 1);
            let du = pi as f32 - 7.5;
            let dv = pj as f32 - 7.5;
            let wgt = (-(du * du + dv * dv) / (2.0 * 8.0 * 8.0)).exp();
            let m = (gx * gx + gy * gy).sqrt() * wgt;
            let a = gy.atan2(gx).rem_euclid(2.0 * PI);
            let bin = a / (2.0 * PI) * 8.0;
            let b0 = (bin.floor() as usize) % 8;
            let fb = bin - bin.floor();
            let cell = (pj / 4) * 4 + pi / 4;
            d[cell * 8 + b0] += m * (1.0 - fb);
            d[cell * 8 + (b0 + 1) % 8] += m * fb;
        }
    }
    normalise(&mut d);
    for v in d.iter_mut() {
        *v = v.min(0.2);
    }
    normalise(&mut d);
    d
}

fn normalise(d: &mut [f32; 128]) {
    let n = d.iter().map(|v| v * v).sum::<f32>().sqrt();
    if n > 1e-12 {
        for v in d.iter_mut() {
            *v /= n;
        }
    }
}

/// Nearest-neighbour matches from `a` to `b` that pass Lowe's ratio test.
pub fn match_descriptors(a: &[Keypoint], b: &[Keypoint], ratio: f32) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for (i, ka) in a.iter().enumerate() {
        let (mut best, mut second, mut bj) = (f32::INFINITY, f32::INFINITY, 0);
        for (j, kb) in b.iter().enumerate() {
            let mut dist = 0.0;
            for k in 0..128 {
                let t = ka.desc[k] - kb.desc[k];
                dist += t * t;
            }
            if dist < best {
                second = best;
                best = dist;
                bj = j;
            } else if dist < second {
                second = dist;
            }
        }
        if best < ratio * ratio * second {
            out.push((i, bj));
        }
    }
    out
}
