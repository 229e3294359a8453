//! Where no reference reaches (an outpainting's margin, a part of the scene no photo shows):
//! the hole filled with shifted copies of the photo's own known pixels and of the references,
//! joined along seams where they agree. He & Sun's offset statistics ("Statistics of Patch
//! Offsets for Image Completion", ECCV 2012): each hole pixel takes one of a few dozen shifts —
//! those that most often map a known patch to a similar patch (the photo's repetitions), and
//! for each reference those that most often map the photo's patches into it — chosen by graph
//! cuts (α-expansion) for seams that agree, as in a shift-map (Pritch et al. 2009). Each pixel
//! is a real pixel copied whole, not the vote of many patches, so the fill is texture at 100 %:
//! neither the smooth membrane's smear nor the flat average a patch vote drifts to in a large
//! hole (docs/BENCHMARKS.md, session 13). Near the known pixels the smooth continuation's
//! colours guide the choice (a hazy sky stays bright); far from them only the seams do; a
//! one-off patch (a nose, a title) is costly to copy. A Poisson correction then hides what is
//! left of the seams (`seam_correction`), and `engine::detail` reads the same shifts again at
//! the photo's own resolution.

use rayon::prelude::*;

use crate::rng::Rng;
use crate::scene::blur::blur;
use crate::scene::{Mask, RgbF, pushpull};

/// The labelling's long side: the working canvas is shrunk by a whole factor to about
/// LABEL_SIDE, less where the known part's short side would fall under MIN_KNOWN_SIDE label
/// pixels, but never to a long side above MAX_LABEL_SIDE (a graph cut over millions of pixels
/// per label would take minutes).
const LABEL_SIDE: usize = 200;
const MIN_KNOWN_SIDE: usize = 48;
const MAX_LABEL_SIDE: usize = 512;
/// A reference whose patches are this many times further from the photo's (median nearest
/// distance) than the photo's own repetitions are is another scene: not copied from.
const RELATED: f32 = 3.0;
/// Patch side of the offset statistics.
const P: usize = 8;
/// Shifts kept from the photo's own repetitions, and per reference.
const OWN_SHIFTS: usize = 32;
const REF_SHIFTS: usize = 8;
/// The shortest own shift, over the long side (He & Sun's 1/15): nearer, a patch matches its
/// own neighbours, which is no repetition.
const MIN_SHIFT: f32 = 1.0 / 15.0;
/// What a hole pixel pays for the smooth continuation instead of a copy (squared colour
/// difference, per pixel): only where no shift reaches a source pixel, or every copy's seam
/// would cost more.
const SMOOTH_COST: f32 = 0.06;
/// Weight of the difference between a copy's local mean colour and the smooth continuation's,
/// next to the known pixels; it fades with the distance from them (`GUIDE_REACH` label pixels).
const GUIDE: f32 = 0.5;
const GUIDE_REACH: f32 = 12.0;
/// What copying a pixel costs per unit of its patch's uniqueness (`Nearest::uniqueness`): a
/// duplicated nose or book title is worse than the smooth continuation there (a second nose
/// grew under the demo's cat at 4; 30 left a faint one; at 100 the books' cover copied
/// beside itself went too).
const UNIQUE: f32 = 100.0;
/// A patch counts as unique only beyond this many times its image's median distance to its
/// nearest look-alike (the texture's own level).
const TEXTURE: f32 = 2.0;
/// A seam between two copies where one of them has no pixel.
const NO_PIXEL: f32 = 3.0;
/// Never chosen (a label without a source pixel here).
const FORBIDDEN: f32 = 1e5;
/// α-expansion sweeps over the labels.
const SWEEPS: usize = 2;
/// Rows per band of the patch search, searched in parallel.
const BAND: usize = 16;

/// A label: the smooth continuation, or source `src` (0: the photo, 1…: the references) read
/// at the pixel shifted by (dx, dy).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Label {
    Smooth,
    Shift { src: usize, dx: i32, dy: i32 },
}

/// The images a copy reads, at one scale: the photo (valid where known) and the references.
struct Sources<'a> {
    images: Vec<&'a RgbF>,
    /// Per source, which pixels may be copied (`None`: all of them).
    valid: Vec<Option<&'a [bool]>>,
}

impl Sources<'_> {
    fn at(&self, l: Label, x: usize, y: usize) -> Option<[f32; 3]> {
        let Label::Shift { src, dx, dy } = l else { return None };
        let img = self.images[src];
        let (sx, sy) = (x as i64 + dx as i64, y as i64 + dy as i64);
        if sx < 0 || sy < 0 || sx >= img.width as i64 || sy >= img.height as i64 {
            return None;
        }
        let (sx, sy) = (sx as usize, sy as usize);
        if self.valid[src].is_some_and(|v| !v[sy * img.width + sx]) {
            return None;
        }
        Some(img.get(sx, sy))
    }
}

fn sq(a: [f32; 3], b: [f32; 3]) -> f32 {
    (0..3).map(|k| (a[k] - b[k]) * (a[k] - b[k])).sum()
}

/// What the shift-map made: the filled image and where it copied real pixels (the rest of
/// the hole, if any, is the smooth continuation).
pub struct Completion {
    pub rgb: RgbF,
    /// Per pixel, where its copy came from (`None` outside the copies).
    pub shifts: Vec<Option<Shift>>,
}

impl Completion {
    /// The pixels it copied (1), as a mask.
    pub fn copied(&self) -> Mask {
        let data = self.shifts.iter().map(|s| s.is_some() as u8 as f32).collect();
        Mask { width: self.rgb.width, height: self.rgb.height, data }
    }
}

/// Where a copied pixel came from: `src` 0 is the image itself, `src` r ≥ 1 the reference
/// r − 1; the source pixel is this pixel moved by (dx, dy), in the completed image's pixels
/// (a reference's pixels at the size it was given at). The native-resolution step reads the
/// same shift, scaled, from the photo and the references at their own resolution.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shift {
    pub src: usize,
    pub dx: i32,
    pub dy: i32,
}

/// `image` with its `hole` pixels (≥ 0.5) made of shifted copies of the rest of `image` and of
/// `refs`; where nothing reaches, the smooth continuation (which also sets the colours' layout
/// near the known pixels), made at the labelling's scale. Pixels outside the hole are returned
/// as they are.
pub fn complete(image: &RgbF, hole: &Mask, refs: &[&RgbF], seed: u64) -> Completion {
    let (w, h) = (image.width, image.height);
    // The labelling's scale: about LABEL_SIDE a side, but never so coarse that the known part
    // (a small photo on a much larger canvas) is a few patches, each "one-off", whose copies
    // would repeat its eyes (found by an attack on this change).
    let known_side = hole.inverted().bbox().map_or(0, |(x0, y0, x1, y1)| (x1 - x0).min(y1 - y0));
    let f =
        w.max(h).div_ceil(LABEL_SIDE).min(known_side / MIN_KNOWN_SIDE).max(w.max(h).div_ceil(MAX_LABEL_SIDE)).max(1);
    let (lw, lh) = (w / f, h / f);
    let mut out = Completion { rgb: image.clone(), shifts: vec![None; w * h] };
    if lw < 2 * P || lh < 2 * P || !hole.data.iter().any(|&v| v >= 0.5) {
        return out;
    }
    // The labelling's scale: a label pixel is hole if any of its pixels is.
    let small = image.resized(lw, lh);
    let small_hole: Vec<bool> = hole.resized_cover(lw, lh).data.iter().map(|&v| v >= 0.5).collect();
    let own_valid: Vec<bool> = small_hole.iter().map(|&b| !b).collect();
    let small_refs: Vec<RgbF> = refs.iter().map(|r| r.resized((r.width / f).max(1), (r.height / f).max(1))).collect();
    let hole_weight: Vec<f32> = small_hole.iter().map(|&b| b as u8 as f32).collect();
    let small_smooth = pushpull::prior(&small, &hole_weight, &small, &Mask::new(lw, lh, 0.0));

    let mut rng = Rng::new(seed ^ 0x5_1f7);
    let mut labels = vec![Label::Smooth];
    let side = lw.max(lh) as f32;
    let min_shift = (MIN_SHIFT * side).max(2.0);
    let own = nearest_shifts(&small, &own_valid, &small, min_shift, &mut rng);
    labels.extend(peaks(&own.shifts, lw, lh, OWN_SHIFTS).into_iter().map(|(dx, dy)| Label::Shift { src: 0, dx, dy }));
    let mut unique = vec![own.uniqueness(lw, lh)];
    for (r, img) in small_refs.iter().enumerate() {
        let whole = vec![true; img.width * img.height];
        let mut shifts = if img.width >= 2 * P && img.height >= 2 * P {
            let found = nearest_shifts(&small, &own_valid, img, 0.0, &mut rng);
            if found.median() > RELATED * own.median() {
                unique.push(vec![0.0; img.width * img.height]);
                continue;
            }
            let min_shift = (MIN_SHIFT * img.width.max(img.height) as f32).max(2.0);
            unique.push(nearest_shifts(img, &whole, img, min_shift, &mut rng).uniqueness(img.width, img.height));
            peaks(&found.shifts, lw.max(img.width), lh.max(img.height), REF_SHIFTS)
        } else {
            unique.push(vec![0.0; img.width * img.height]);
            Vec::new()
        };
        // The reference pasted as it is: the baseline a completion must beat.
        if !shifts.contains(&(0, 0)) {
            shifts.push((0, 0));
        }
        labels.extend(shifts.into_iter().map(|(dx, dy)| Label::Shift { src: r + 1, dx, dy }));
    }
    if labels.len() == 1 {
        // No shift to copy by (a photo too small for a patch, no related reference).
        return out;
    }
    let mut images: Vec<&RgbF> = vec![&small];
    images.extend(small_refs.iter());
    let mut valid: Vec<Option<&[bool]>> = vec![Some(&own_valid)];
    valid.extend(small_refs.iter().map(|_| None));
    let sources = Sources { images, valid };

    let guide = Guidance::new(&sources, unique, &small_smooth, &small_hole, lw, lh);
    let label_of = expand(&sources, &labels, &guide, &small, &small_hole, &small_smooth, lw, lh, &mut rng);
    if label_of.iter().zip(&small_hole).all(|(&l, &in_hole)| !in_hole || l == 0) {
        // Nothing reached (a photo too small to copy from, no related reference).
        return out;
    }

    // Back to the working scale: each pixel takes its label pixel's shift, times the factor,
    // read from the full-size source; where that lands on a hole pixel, the labelling's own
    // copy, enlarged.
    let small_fill = RgbF::from_fn(lw, lh, |x, y| {
        let i = y * lw + x;
        if !small_hole[i] {
            return small.get(x, y);
        }
        sources.at(labels[label_of[i]], x, y).unwrap_or_else(|| small_smooth.get(x, y))
    });
    let small_labels: Vec<Option<usize>> = (0..lw * lh).map(|i| small_hole[i].then_some(label_of[i])).collect();
    let small_value = |l: usize, x: usize, y: usize| value(&sources, &small_smooth, labels[l], x, y);
    let small_fix = seam_correction(&small_fill, &small_labels, &small_value, None, 400);

    let holes: Vec<bool> = hole.data.iter().map(|&v| v >= 0.5).collect();
    let work_labels: Vec<Option<usize>> = (0..w * h)
        .map(|i| holes[i].then(|| label_of[((i / w) / f).min(lh - 1) * lw + ((i % w) / f).min(lw - 1)]))
        .collect();
    let smooth = small_smooth.resized(w, h);
    let work_value = |l: usize, x: usize, y: usize| -> Option<[f32; 3]> {
        match labels[l] {
            Label::Smooth => Some(smooth.get(x, y)),
            Label::Shift { src, dx, dy } => {
                let img = if src == 0 { image } else { refs[src - 1] };
                let (sx, sy) = (x as i64 + (dx * f as i32) as i64, y as i64 + (dy * f as i32) as i64);
                let inside = sx >= 0 && sy >= 0 && (sx as usize) < img.width && (sy as usize) < img.height;
                (inside && (src != 0 || !holes[sy as usize * w + sx as usize]))
                    .then(|| img.get(sx as usize, sy as usize))
            }
        }
    };
    let (scale_x, scale_y) = (lw as f32 / w as f32, lh as f32 / h as f32);
    let at_small =
        |img: &RgbF, x: usize, y: usize| img.sample((x as f32 + 0.5) * scale_x - 0.5, (y as f32 + 0.5) * scale_y - 0.5);
    // Where a shift lands on a hole pixel at this scale, the labelling's own copy, enlarged.
    let composite = RgbF::from_fn(w, h, |x, y| match work_labels[y * w + x] {
        None => image.get(x, y),
        Some(l) => work_value(l, x, y).unwrap_or_else(|| at_small(&small_fill, x, y)),
    });
    let start = RgbF::from_fn(w, h, |x, y| if holes[y * w + x] { at_small(&small_fix, x, y) } else { [0.0; 3] });
    let fix = seam_correction(&composite, &work_labels, &work_value, Some(start), 40);
    for i in (0..w * h).filter(|&i| holes[i]) {
        for k in 0..3 {
            out.rgb.data[3 * i + k] = (composite.data[3 * i + k] + fix.data[3 * i + k]).clamp(0.0, 1.0);
        }
        if let Label::Shift { src, dx, dy } = labels[work_labels[i].expect("a hole pixel")] {
            out.shifts[i] = Some(Shift { src, dx: dx * f as i32, dy: dy * f as i32 });
        }
    }
    out
}

/// A neighbour of a hole pixel, and the correction's wanted step to it per channel.
type Link = (usize, [f32; 3]);

/// The correction that hides the seams of a composite (`label`: each hole pixel's label,
/// `None` outside the hole, where the correction is 0): across a seam the composite's step is
/// replaced by the mean of the two labels' own steps there (`value`: a label's colour at a
/// pixel, if it has one), within a label the step is kept, and the correction is the smooth
/// field that does this best (Gauss-Seidel with over-relaxation, `iterations` sweeps from
/// `start`). Poisson image editing's seam step, as the shift-map and He & Sun do.
fn seam_correction(
    composite: &RgbF,
    label: &[Option<usize>],
    value: &(dyn Fn(usize, usize, usize) -> Option<[f32; 3]> + Sync),
    start: Option<RgbF>,
    iterations: usize,
) -> RgbF {
    let (w, h) = (composite.width, composite.height);
    // Per hole pixel: its neighbours and, per channel, the correction's wanted step to each.
    let links: Vec<(usize, Vec<Link>)> = (0..w * h)
        .into_par_iter()
        .filter_map(|i| {
            let a = label[i]?;
            let (x, y) = (i % w, i / w);
            let mut near = Vec::with_capacity(4);
            for (nx, ny) in [(x.wrapping_sub(1), y), (x + 1, y), (x, y.wrapping_sub(1)), (x, y + 1)] {
                if nx >= w || ny >= h {
                    continue;
                }
                let j = ny * w + nx;
                let mut want = [0.0f32; 3];
                if label[j] != Some(a) {
                    let (cp, cq) = (composite.get(x, y), composite.get(nx, ny));
                    let mut steps = Vec::with_capacity(2);
                    for l in [Some(a), label[j]].into_iter().flatten() {
                        if let (Some(u), Some(v)) = (value(l, x, y), value(l, nx, ny)) {
                            steps.push([u[0] - v[0], u[1] - v[1], u[2] - v[2]]);
                        }
                    }
                    for k in 0..3 {
                        let g = steps.iter().map(|s| s[k]).sum::<f32>() / steps.len().max(1) as f32;
                        want[k] = g - (cp[k] - cq[k]);
                    }
                }
                near.push((j, want));
            }
            Some((i, near))
        })
        .collect();
    let mut fix = start.unwrap_or_else(|| RgbF::new(w, h));
    const OMEGA: f32 = 1.9;
    for _ in 0..iterations {
        for (i, near) in &links {
            let n = near.len() as f32;
            for k in 0..3 {
                let target = near.iter().map(|(j, want)| fix.data[3 * j + k] + want[k]).sum::<f32>() / n;
                let old = fix.data[3 * i + k];
                fix.data[3 * i + k] = old + OMEGA * (target - old);
            }
        }
    }
    fix
}

/// For every patch of `from` that lies wholly where `from_valid` holds, the shift to its most
/// similar patch of `to` (PatchMatch: random start, propagation, random search), at least
/// `min_shift` long; `to` is `from` itself (`min_shift` > 0: only its valid patches) or a
/// reference (all of it). Returns the shifts found.
fn nearest_shifts(from: &RgbF, from_valid: &[bool], to: &RgbF, min_shift: f32, rng: &mut Rng) -> Nearest {
    let (w, h) = (from.width, from.height);
    let whole = whole_patches(from_valid, w, h);
    let to_whole: Option<&[bool]> = (min_shift > 0.0).then_some(whole.as_slice());
    let (tw, th) = (to.width - P + 1, to.height - P + 1);
    let allowed = |x: usize, y: usize, sx: i64, sy: i64| -> bool {
        if sx < 0 || sy < 0 || sx as usize >= tw || sy as usize >= th {
            return false;
        }
        if to_whole.is_some_and(|v| !v[sy as usize * to.width + sx as usize]) {
            return false;
        }
        let (dx, dy) = ((sx - x as i64) as f32, (sy - y as i64) as f32);
        dx * dx + dy * dy >= min_shift * min_shift
    };
    let dist = |x: usize, y: usize, sx: usize, sy: usize, cap: f32| -> f32 {
        let mut d = 0.0;
        for j in 0..P {
            let a = &from.data[3 * ((y + j) * w + x)..3 * ((y + j) * w + x + P)];
            let b = &to.data[3 * ((sy + j) * to.width + sx)..3 * ((sy + j) * to.width + sx + P)];
            d += a.iter().zip(b).map(|(p, q)| (p - q) * (p - q)).sum::<f32>();
            if d > cap {
                return d;
            }
        }
        d
    };
    let n = w * h;
    let mut best: Vec<(i64, i64, f32)> = vec![(0, 0, f32::INFINITY); n];
    // Bands of rows searched in parallel, each with its own random stream (the same whatever
    // the number of threads); propagation stays inside a band.
    let seed = rng.next_u64();
    for pass in 0..5u64 {
        best.par_chunks_mut(BAND * w).enumerate().for_each(|(band, rows)| {
            let mut rng = Rng::new(seed ^ ((band as u64) << 8 | pass).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let (y0, y1) = (band * BAND, band * BAND + rows.len() / w);
            let cells: Vec<usize> = (0..rows.len()).filter(|&k| whole[y0 * w + k]).collect();
            if pass == 0 {
                for &k in &cells {
                    let (x, y) = (k % w, y0 + k / w);
                    for _ in 0..8 {
                        let (sx, sy) = (rng.range_usize(0, tw - 1) as i64, rng.range_usize(0, th - 1) as i64);
                        if allowed(x, y, sx, sy) {
                            rows[k] =
                                (sx - x as i64, sy - y as i64, dist(x, y, sx as usize, sy as usize, f32::INFINITY));
                            break;
                        }
                    }
                }
                return;
            }
            let forward = pass % 2 == 1;
            let step: i64 = if forward { 1 } else { -1 };
            let order: Box<dyn Iterator<Item = &usize>> =
                if forward { Box::new(cells.iter()) } else { Box::new(cells.iter().rev()) };
            for &k in order {
                let (x, y) = (k % w, y0 + k / w);
                let try_shift = |dx: i64, dy: i64, best: &mut (i64, i64, f32)| {
                    let (sx, sy) = (x as i64 + dx, y as i64 + dy);
                    if (dx, dy) != (best.0, best.1) && allowed(x, y, sx, sy) {
                        let d = dist(x, y, sx as usize, sy as usize, best.2);
                        if d < best.2 {
                            *best = (dx, dy, d);
                        }
                    }
                };
                let mut b = rows[k];
                // Propagation from the neighbours already visited in this pass.
                for (nx, ny) in [(x as i64 - step, y as i64), (x as i64, y as i64 - step)] {
                    if nx >= 0 && ny >= y0 as i64 && (nx as usize) < w && (ny as usize) < y1 {
                        let j = (ny as usize - y0) * w + nx as usize;
                        if whole[y0 * w + j] && rows[j].2.is_finite() {
                            try_shift(rows[j].0, rows[j].1, &mut b);
                        }
                    }
                }
                // Random search in shrinking windows around the best.
                let mut radius = tw.max(th) as i64;
                while radius >= 1 {
                    let dx = b.0 + rng.range_usize(0, 2 * radius as usize) as i64 - radius;
                    let dy = b.1 + rng.range_usize(0, 2 * radius as usize) as i64 - radius;
                    try_shift(dx, dy, &mut b);
                    radius /= 2;
                }
                rows[k] = b;
            }
        });
    }
    let cells: Vec<usize> = (0..n).filter(|&i| whole[i]).collect();
    Nearest {
        shifts: cells
            .iter()
            .filter(|&&i| best[i].2.is_finite())
            .map(|&i| (best[i].0 as i32, best[i].1 as i32))
            .collect(),
        distance: best.iter().map(|b| b.2).collect(),
    }
}

/// What `nearest_shifts` found: the shift of every patch that found one, and per patch (by
/// its top-left corner) the distance to its nearest patch (infinite where none).
struct Nearest {
    shifts: Vec<(i32, i32)>,
    distance: Vec<f32>,
}

impl Nearest {
    /// The median distance to the nearest patch, per value.
    fn median(&self) -> f32 {
        let per = (3 * P * P) as f32;
        let mut found: Vec<f32> = self.distance.iter().filter(|d| d.is_finite()).map(|d| d / per).collect();
        if found.is_empty() {
            return 0.0;
        }
        let mid = found.len() / 2;
        *found.select_nth_unstable_by(mid, f32::total_cmp).1
    }

    /// How unlike everything else in its image each pixel's patch is: the mean squared
    /// difference per value to its nearest patch, less `TEXTURE` times the image's median
    /// (zero in a texture: fur, a floor, a city from the air; high on an eye or a book's
    /// title, which a copy would duplicate). Pixels with no patch of their own take the median.
    fn uniqueness(&self, w: usize, h: usize) -> Vec<f32> {
        let per = (3 * P * P) as f32;
        let median = self.median();
        (0..w * h)
            .map(|i| {
                let (x, y) = ((i % w).checked_sub(P / 2), (i / w).checked_sub(P / 2));
                let d = match (x, y) {
                    (Some(x), Some(y)) if self.distance[y * w + x].is_finite() => self.distance[y * w + x] / per,
                    _ => median,
                };
                (d - TEXTURE * median).max(0.0)
            })
            .collect()
    }
}

/// Top-left corners of the `P`×`P` patches wholly inside `valid`.
fn whole_patches(valid: &[bool], w: usize, h: usize) -> Vec<bool> {
    let mut sum = vec![0u32; (w + 1) * (h + 1)];
    for y in 0..h {
        for x in 0..w {
            sum[(y + 1) * (w + 1) + x + 1] =
                valid[y * w + x] as u32 + sum[y * (w + 1) + x + 1] + sum[(y + 1) * (w + 1) + x] - sum[y * (w + 1) + x];
        }
    }
    let mut out = vec![false; w * h];
    for y in 0..h.saturating_sub(P - 1) {
        for x in 0..w.saturating_sub(P - 1) {
            let s = sum[(y + P) * (w + 1) + x + P] + sum[y * (w + 1) + x]
                - sum[y * (w + 1) + x + P]
                - sum[(y + P) * (w + 1) + x];
            out[y * w + x] = s as usize == P * P;
        }
    }
    out
}

/// The `k` most frequent shifts, after smoothing their histogram (σ = √2, as He & Sun), each
/// at least 3 pixels from those taken before; `w`, `h` bound the shifts.
fn peaks(shifts: &[(i32, i32)], w: usize, h: usize, k: usize) -> Vec<(i32, i32)> {
    let (hw, hh) = (2 * w + 1, 2 * h + 1);
    let mut hist = vec![0.0f32; hw * hh];
    for &(dx, dy) in shifts {
        let (x, y) = (dx + w as i32, dy + h as i32);
        if x >= 0 && y >= 0 && (x as usize) < hw && (y as usize) < hh {
            hist[y as usize * hw + x as usize] += 1.0;
        }
    }
    blur(&mut hist, hw, hh, std::f32::consts::SQRT_2);
    let mut out = Vec::with_capacity(k);
    for _ in 0..k {
        let (i, &v) = hist.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).expect("not empty");
        if v <= 0.0 {
            break;
        }
        let (x, y) = (i % hw, i / hw);
        out.push((x as i32 - w as i32, y as i32 - h as i32));
        for yy in y.saturating_sub(3)..(y + 4).min(hh) {
            for xx in x.saturating_sub(3)..(x + 4).min(hw) {
                hist[yy * hw + xx] = 0.0;
            }
        }
    }
    out
}

/// The colours' layout near the known pixels: each source's local mean colour, and how much
/// a hole pixel's choice must follow the smooth continuation's (fading with the distance).
struct Guidance {
    /// Per source, its colours blurred over its valid pixels.
    means: Vec<RgbF>,
    /// Per label pixel, the weight of the layout term.
    weight: Vec<f32>,
    smooth: RgbF,
    /// Per source, `Nearest::uniqueness` of each pixel.
    unique: Vec<Vec<f32>>,
}

impl Guidance {
    fn new(sources: &Sources, unique: Vec<Vec<f32>>, smooth: &RgbF, hole: &[bool], w: usize, h: usize) -> Guidance {
        let sigma = 3.0;
        let means = sources
            .images
            .iter()
            .zip(&sources.valid)
            .map(|(img, valid)| {
                let n = img.width * img.height;
                let mut wgt: Vec<f32> = (0..n).map(|i| valid.is_none_or(|v| v[i]) as u8 as f32).collect();
                let mut planes: Vec<Vec<f32>> =
                    (0..3).map(|k| (0..n).map(|i| img.data[3 * i + k] * wgt[i]).collect()).collect();
                for p in &mut planes {
                    blur(p, img.width, img.height, sigma);
                }
                blur(&mut wgt, img.width, img.height, sigma);
                RgbF::from_fn(img.width, img.height, |x, y| {
                    let i = y * img.width + x;
                    let s = wgt[i].max(1e-6);
                    [planes[0][i] / s, planes[1][i] / s, planes[2][i] / s]
                })
            })
            .collect();
        let known = Mask { width: w, height: h, data: hole.iter().map(|&b| (!b) as u8 as f32).collect() };
        let weight = known.distance_outside().iter().map(|d| GUIDE * (-d / GUIDE_REACH).exp()).collect();
        Guidance { means, weight, smooth: smooth.clone(), unique }
    }

    /// What label `l` costs at hole pixel (x, y) for itself.
    fn cost(&self, sources: &Sources, l: Label, x: usize, y: usize) -> f32 {
        match l {
            Label::Smooth => SMOOTH_COST,
            Label::Shift { src, dx, dy } => {
                if sources.at(l, x, y).is_none() {
                    return FORBIDDEN;
                }
                let (sx, sy) = ((x as i64 + dx as i64) as usize, (y as i64 + dy as i64) as usize);
                let mean = self.means[src].get(sx, sy);
                let unique = self.unique[src][sy * self.means[src].width + sx];
                self.weight[y * self.smooth.width + x] * sq(mean, self.smooth.get(x, y)) + UNIQUE * unique
            }
        }
    }
}

/// The value of label `l` at (x, y): a copied pixel, the smooth continuation, or none.
fn value(sources: &Sources, smooth: &RgbF, l: Label, x: usize, y: usize) -> Option<[f32; 3]> {
    match l {
        Label::Smooth => Some(smooth.get(x, y)),
        _ => sources.at(l, x, y),
    }
}

/// The seam's cost between neighbours p and q taking labels a and b: how differently the two
/// labels colour both pixels (zero for one label, or where two copies agree).
fn seam(sources: &Sources, smooth: &RgbF, a: Label, b: Label, p: (usize, usize), q: (usize, usize)) -> f32 {
    if a == b {
        return 0.0;
    }
    let mut c = 0.0;
    for (x, y) in [p, q] {
        c += match (value(sources, smooth, a, x, y), value(sources, smooth, b, x, y)) {
            (Some(u), Some(v)) => sq(u, v),
            _ => NO_PIXEL,
        };
    }
    c
}

/// α-expansion over `labels` for the hole's label pixels: every hole pixel starts smooth; each
/// move lets any pixel switch to one label, by a minimum cut. Known neighbours are fixed (the
/// photo's own pixel). Returns each pixel's label index (known pixels: 0, unused).
#[allow(clippy::too_many_arguments)]
fn expand(
    sources: &Sources,
    labels: &[Label],
    guide: &Guidance,
    image: &RgbF,
    hole: &[bool],
    smooth: &RgbF,
    w: usize,
    h: usize,
    rng: &mut Rng,
) -> Vec<usize> {
    let nodes: Vec<usize> = (0..w * h).filter(|&i| hole[i]).collect();
    let mut node_of = vec![u32::MAX; w * h];
    for (k, &i) in nodes.iter().enumerate() {
        node_of[i] = k as u32;
    }
    // Neighbour pairs inside the hole, and each node's known neighbours.
    let mut inner: Vec<(u32, u32)> = Vec::new();
    let mut rim: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (k, &i) in nodes.iter().enumerate() {
        let (x, y) = (i % w, i / w);
        let mut near = Vec::with_capacity(4);
        if x > 0 {
            near.push(i - 1);
        }
        if x + 1 < w {
            near.push(i + 1);
        }
        if y > 0 {
            near.push(i - w);
        }
        if y + 1 < h {
            near.push(i + w);
        }
        for j in near {
            if hole[j] {
                if j > i {
                    inner.push((k as u32, node_of[j]));
                }
            } else {
                rim[k].push(j);
            }
        }
    }
    // A copy next to a known pixel pays for disagreeing with it there, twice (the other
    // half of the seam, the known label's value in the hole, does not exist).
    let against_known = |l: Label, j: usize| -> f32 {
        let (x, y) = (j % w, j / w);
        match value(sources, smooth, l, x, y) {
            Some(v) => 2.0 * sq(v, image.get(x, y)),
            None => 2.0 * NO_PIXEL,
        }
    };
    let unary = |k: usize, l: Label| -> f32 {
        let i = nodes[k];
        guide.cost(sources, l, i % w, i / w) + rim[k].iter().map(|&j| against_known(l, j)).sum::<f32>()
    };
    let mut current = vec![0usize; nodes.len()];
    let mut order: Vec<usize> = (1..labels.len()).collect();
    for _ in 0..SWEEPS {
        for i in (1..order.len()).rev() {
            order.swap(i, rng.range_usize(0, i));
        }
        for &alpha in &order {
            let a = labels[alpha];
            // Only the pixels that can take α and do not have it yet are in the cut; a pair
            // with a fixed pixel is a cost of its free one.
            let c1_all: Vec<f32> = (0..nodes.len()).into_par_iter().map(|k| unary(k, a)).collect();
            let free: Vec<usize> = (0..nodes.len()).filter(|&k| c1_all[k] < FORBIDDEN && current[k] != alpha).collect();
            if free.is_empty() {
                continue;
            }
            let mut slot = vec![u32::MAX; nodes.len()];
            for (n, &k) in free.iter().enumerate() {
                slot[k] = n as u32;
            }
            let mut c1: Vec<f32> = free.iter().map(|&k| c1_all[k]).collect();
            let mut c0: Vec<f32> = free.par_iter().map(|&k| unary(k, labels[current[k]])).collect();
            let energies: Vec<(u32, u32, [f32; 4])> = inner
                .par_iter()
                .filter(|&&(p, q)| slot[p as usize] != u32::MAX || slot[q as usize] != u32::MAX)
                .map(|&(p, q)| {
                    let (ip, iq) = (nodes[p as usize], nodes[q as usize]);
                    let (pp, pq) = ((ip % w, ip / w), (iq % w, iq / w));
                    let (lp, lq) = (labels[current[p as usize]], labels[current[q as usize]]);
                    let e00 = seam(sources, smooth, lp, lq, pp, pq);
                    let e01 = seam(sources, smooth, lp, a, pp, pq);
                    let e10 = seam(sources, smooth, a, lq, pp, pq);
                    (p, q, [e00, e01, e10, 0.0])
                })
                .collect();
            let mut pairs = Vec::with_capacity(energies.len());
            for (p, q, e) in energies {
                match (slot[p as usize], slot[q as usize]) {
                    (u32::MAX, sq) => {
                        c0[sq as usize] += e[0];
                        c1[sq as usize] += e[1];
                    }
                    (sp, u32::MAX) => {
                        c0[sp as usize] += e[0];
                        c1[sp as usize] += e[2];
                    }
                    (sp, sq) => pairs.push((sp, sq, e)),
                }
            }
            let moved = super::mincut::label_pairs([&c0, &c1], &pairs);
            for (n, m) in moved.into_iter().enumerate() {
                if m {
                    current[free[n]] = alpha;
                }
            }
        }
    }
    let mut out = vec![0usize; w * h];
    for (k, &i) in nodes.iter().enumerate() {
        out[i] = current[k];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A woven texture of period 12 with random thread shades (no smooth continuation can
    /// guess it; a copy shifted by a multiple of the period is exact).
    fn weave(w: usize, h: usize) -> RgbF {
        let mut rng = Rng::new(3);
        let shade: Vec<f32> = (0..12).map(|_| rng.range_f32(0.2, 0.9)).collect();
        RgbF::from_fn(w, h, |x, y| {
            let (u, v) = (shade[x % 12], shade[(y + 5) % 12]);
            let t = if (x / 3 + y / 3) % 2 == 0 { u } else { v };
            [t, 0.8 * t, 0.3 + 0.2 * t]
        })
    }

    fn mean_error(a: &RgbF, b: &RgbF, px: &[usize]) -> f32 {
        px.iter()
            .map(|&i| (0..3).map(|k| (a.data[3 * i + k] - b.data[3 * i + k]).abs()).sum::<f32>() / 3.0)
            .sum::<f32>()
            / px.len() as f32
    }

    #[test]
    fn a_wide_hole_in_a_repeating_texture_is_the_texture_not_a_smooth_continuation() {
        let (w, h) = (160, 120);
        let truth = weave(w, h);
        let mut hole = Mask::new(w, h, 0.0);
        for y in 40..90 {
            for x in 50..110 {
                hole.set(x, y, 1.0);
            }
        }
        let smooth = crate::scene::pushpull::push_pull(&truth, &hole.inverted());
        let made = complete(&truth, &hole, &[], 1);
        let inside: Vec<usize> = (0..w * h).filter(|&i| hole.data[i] >= 0.5).collect();
        let copied = inside.iter().filter(|&&i| made.shifts[i].is_some()).count();
        assert!(copied as f32 > 0.95 * inside.len() as f32, "{copied} of {} copied", inside.len());
        let (err, membrane) = (mean_error(&made.rgb, &truth, &inside), mean_error(&smooth, &truth, &inside));
        assert!(err < 0.3 * membrane, "copies {err}, membrane {membrane}");
        // Outside the hole nothing changes.
        let outside: Vec<usize> = (0..w * h).filter(|&i| hole.data[i] < 0.5).collect();
        assert_eq!(mean_error(&made.rgb, &truth, &outside), 0.0);
    }

    #[test]
    fn an_outpainting_beyond_the_photo_takes_a_references_pixels_where_they_continue_it() {
        // The photo is the middle of a wide weave whose margins only a reference (the whole
        // weave, moved by a few pixels) shows; no shift of the photo reaches the far margin.
        let (w, h) = (200, 100);
        let truth = weave(w, h);
        let reference = RgbF::from_fn(w, h, |x, y| truth.get((x + 7) % w, (y + 4) % h));
        let mut hole = Mask::new(w, h, 0.0);
        let mut image = truth.clone();
        for y in 0..h {
            for x in (0..60).chain(140..w) {
                hole.set(x, y, 1.0);
                image.set(x, y, [0.0; 3]);
            }
        }
        let smooth = crate::scene::pushpull::push_pull(&image, &hole.inverted());
        let made = complete(&image, &hole, &[&reference], 2);
        let inside: Vec<usize> = (0..w * h).filter(|&i| hole.data[i] >= 0.5 && (i % w < 30 || i % w >= 170)).collect();
        assert!(inside.iter().all(|&i| made.shifts[i].is_some()), "the far margins are copies");
        let (err, membrane) = (mean_error(&made.rgb, &truth, &inside), mean_error(&smooth, &truth, &inside));
        assert!(err < 0.3 * membrane, "copies {err}, membrane {membrane}");
    }

    #[test]
    fn a_copy_of_a_one_off_patch_costs_more_than_a_copy_of_texture() {
        // A weave with one bright square: its patches have no look-alike.
        let (w, h) = (96, 96);
        let mut img = weave(w, h);
        for y in 40..52 {
            for x in 40..52 {
                img.set(x, y, [1.0, 0.1, 0.9]);
            }
        }
        let valid = vec![true; w * h];
        let u = nearest_shifts(&img, &valid, &img, 8.0, &mut Rng::new(1)).uniqueness(w, h);
        let (square, texture) = (u[46 * w + 46], u[20 * w + 20]);
        assert!(square > 5.0 * texture.max(1e-4), "square {square}, texture {texture}");
    }
}
