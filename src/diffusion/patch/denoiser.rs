//! The patch denoiser of one pyramid level: attention of the noisy image's patches over the
//! sources' patches (exhaustive at the coarsest level, over a shortlist per pixel above it),
//! and patch voting at a level's last step. The maths is in the module docs of `patch`.

use burn::prelude::*;
use burn::tensor::activation::softmax;

use super::PatchSettings;
use crate::diffusion::sampler::{Condition, Denoiser};
use crate::diffusion::schedule::Schedule;
use crate::error::{Error, Result};
use crate::kernels::attention::{self, KeyPanels};

/// Best matches kept per pixel for the next level.
pub const TOP: usize = 4;
/// No key (an empty slot of a best-matches list).
pub(super) const NULL: u32 = u32::MAX;
/// Bias of a key that must not be chosen.
const NEVER: f32 = -1e9;

/// One image patches come from, at one level: planar CHW in [-1, 1], and where a patch
/// centred at a pixel may be used (the whole patch inside and valid).
#[derive(Clone, Debug)]
pub struct Source {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<f32>,
    pub usable: Vec<bool>,
}

/// Everything one pyramid level needs: the condition at that size and the sources.
#[derive(Clone, Debug)]
pub struct Level {
    pub cond: Condition,
    pub sources: Vec<Source>,
    /// Index of the guide source (warped references, target frame), if any.
    pub guide: Option<usize>,
    /// First key index of each source.
    offsets: Vec<usize>,
}

impl Level {
    pub fn new(cond: Condition, sources: Vec<Source>, guide: Option<usize>) -> Level {
        let mut offsets = Vec::with_capacity(sources.len());
        let mut n = 0;
        for s in &sources {
            offsets.push(n);
            n += s.width * s.height;
        }
        Level { cond, sources, guide, offsets }
    }

    fn key(&self, src: usize, x: usize, y: usize) -> u32 {
        (self.offsets[src] + y * self.sources[src].width + x) as u32
    }

    /// The source and the centre of the patch with this key.
    pub fn locate(&self, key: u32) -> (usize, usize, usize) {
        let k = key as usize;
        let src = self.offsets.partition_point(|&o| o <= k) - 1;
        let i = k - self.offsets[src];
        let w = self.sources[src].width;
        (src, i % w, i / w)
    }

    fn usable(&self, key: u32) -> bool {
        let (s, x, y) = self.locate(key);
        self.sources[s].usable[y * self.sources[s].width + x]
    }

    pub fn keys(&self) -> usize {
        self.sources.iter().map(|s| s.width * s.height).sum()
    }
}

/// Patch around (x, y) of a planar image, borders clamped; `out` has 3·p² values.
fn patch_of(rgb: &[f32], w: usize, h: usize, x: usize, y: usize, p: usize, out: &mut [f32]) {
    let r = (p / 2) as isize;
    let mut i = 0;
    for c in 0..3 {
        let plane = &rgb[c * w * h..(c + 1) * w * h];
        for dy in -r..=r {
            let yy = (y as isize + dy).clamp(0, h as isize - 1) as usize;
            for dx in -r..=r {
                let xx = (x as isize + dx).clamp(0, w as isize - 1) as usize;
                out[i] = plane[yy * w + xx];
                i += 1;
            }
        }
    }
}

/// Columns of a query or key row: d per-pixel terms twice, 3 patch-mean terms twice, bias.
const fn cols(d: usize) -> usize {
    2 * d + 7
}

/// Query rows [π⊙q, π, π_m·ḡ, π_m, 1] for the pixels `at` of the noisy image (ḡ: the prior's
/// mean colour over the patch, used where no reference covers the pixel).
fn query_rows(level: &Level, x_t: &[f32], at: &[usize], s: f32, var: f32, set: &PatchSettings) -> Vec<f32> {
    let c = &level.cond;
    let (w, h, p) = (c.width, c.height, set.patch);
    let d = 3 * p * p;
    let r = (p / 2) as isize;
    let pi_fill = 1.0 / var.max(1e-4);
    let pi_of = |tau: f32| 1.0 / (s * s * tau * tau).max(1e-6);
    let (pi_known, pi_guide, pi_mean) = (pi_of(set.known_tau), pi_of(set.guide_tau), pi_of(set.prior_tau));
    let mut rows = vec![0.0f32; at.len() * (cols(d))];
    for (qi, &pix) in at.iter().enumerate() {
        let (x, y) = ((pix % w) as isize, (pix / w) as isize);
        let row = &mut rows[qi * (cols(d))..(qi + 1) * (cols(d))];
        let mut i = 0;
        for ch in 0..3 {
            for dy in -r..=r {
                for dx in -r..=r {
                    let (xx, yy) = (x + dx, y + dy);
                    if xx >= 0 && yy >= 0 && xx < w as isize && yy < h as isize {
                        let j = yy as usize * w + xx as usize;
                        if c.mask[j] < 0.5 {
                            row[i] = pi_known * s * c.known[ch * w * h + j];
                            row[d + i] = pi_known;
                        } else {
                            // Two observations of s·k: the noisy pixel and the prior; their
                            // precisions add (product of Gaussians).
                            let pi_g = if c.guide_valid[j] >= 0.5 { pi_guide } else { 0.0 };
                            row[i] = pi_fill * x_t[ch * w * h + j] + pi_g * s * c.prior[ch * w * h + j];
                            row[d + i] = pi_fill + pi_g;
                        }
                    }
                    i += 1;
                }
            }
        }
        // Where no reference reaches, the prior is a smooth continuation: compare only the
        // patch's mean colour with it, so that textured patches are not penalised for their
        // texture (a per-pixel comparison with a flat prior favours flat patches).
        let centre = (y as usize) * w + x as usize;
        if c.guide_valid[centre] < 0.5 {
            let pi_m = pi_mean;
            for ch in 0..3 {
                let (mut sum, mut n) = (0.0f32, 0.0f32);
                for dy in -r..=r {
                    for dx in -r..=r {
                        let (xx, yy) = ((x + dx).clamp(0, w as isize - 1), (y + dy).clamp(0, h as isize - 1));
                        sum += c.prior[ch * w * h + yy as usize * w + xx as usize];
                        n += 1.0;
                    }
                }
                row[2 * d + ch] = pi_m * s * sum / n;
                row[2 * d + 3 + ch] = pi_m;
            }
        }
        row[cols(d) - 1] = 1.0;
    }
    rows
}

/// Key rows [√ᾱ·k, −½ᾱ·k², bias] and centres for `keys` (NULL → never chosen).
fn key_rows(level: &Level, keys: &[u32], s: f32, p: usize) -> (Vec<f32>, Vec<f32>) {
    let d = 3 * p * p;
    let mut rows = vec![0.0f32; keys.len() * (cols(d))];
    let mut centres = vec![0.0f32; keys.len() * 3];
    let mut patch = vec![0.0f32; d];
    let mid = p * p / 2;
    for (ki, &k) in keys.iter().enumerate() {
        let row = &mut rows[ki * (cols(d))..(ki + 1) * (cols(d))];
        if k == NULL || !level.usable(k) {
            row[cols(d) - 1] = NEVER;
            continue;
        }
        let (src, x, y) = level.locate(k);
        let sr = &level.sources[src];
        patch_of(&sr.rgb, sr.width, sr.height, x, y, p, &mut patch);
        for i in 0..d {
            row[i] = s * patch[i];
            row[d + i] = -0.5 * s * s * patch[i] * patch[i];
        }
        let pp = p * p;
        for ch in 0..3 {
            let mean = patch[ch * pp..(ch + 1) * pp].iter().sum::<f32>() / pp as f32;
            row[2 * d + ch] = s * mean;
            row[2 * d + 3 + ch] = -0.5 * s * s * mean * mean;
        }
        for c in 0..3 {
            centres[ki * 3 + c] = patch[c * p * p + mid];
        }
    }
    (rows, centres)
}

/// The result of attending a tile of queries: x0 estimates (3 per query) and each query's
/// best keys.
struct Attended {
    centres: Vec<f32>,
    top: Vec<u32>,
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.into_data().try_into_vec::<f32>().map_err(|e| Error::Engine(format!("reading a tensor: {e:?}")))
}

fn to_ints<const D: usize>(t: Tensor<D, Int>) -> Result<Vec<i64>> {
    let data = t.into_data().convert::<i64>();
    data.try_into_vec::<i64>().map_err(|e| Error::Engine(format!("reading indices: {e:?}")))
}

/// Attention of `n` query rows over all keys of a bank (B: keys × (2d+1), centres: keys × 3).
fn attend_all(a: &[f32], n: usize, bank: &Tensor<2>, centres: &Tensor<2>, device: &Device) -> Result<Attended> {
    let cols = bank.dims()[1];
    let keys = bank.dims()[0];
    let q = Tensor::<2>::from_data(TensorData::new(a.to_vec(), [n, cols]), device);
    let logits = q.matmul(bank.clone().transpose());
    let top = top_indices(&logits, TOP.min(keys), device)?;
    let w = softmax(logits, 1);
    let out = w.matmul(centres.clone());
    Ok(Attended { centres: to_vec(out)?, top })
}

/// The `k` largest entries of each row, best first: k passes of arg-max, each masking out
/// the previous winner (a full sort, as `topk` does, costs far more over tens of thousands of
/// keys).
fn top_indices(logits: &Tensor<2>, k: usize, device: &Device) -> Result<Vec<u32>> {
    let [n, m] = logits.dims();
    let columns = Tensor::<1, Int>::arange(0..m as i64, device).reshape([1, m]);
    let mut l = logits.clone();
    let mut picks = Vec::with_capacity(k);
    for round in 0..k {
        let (_, idx) = l.clone().max_dim_with_indices(1); // n × 1
        if round + 1 < k {
            let hit = columns.clone().expand([n, m]).equal(idx.clone().expand([n, m]));
            l = l.mask_fill(hit, f32::NEG_INFINITY);
        }
        picks.push(to_ints(idx)?);
    }
    let mut top = vec![0u32; n * k];
    for (r, p) in picks.iter().enumerate() {
        for i in 0..n {
            top[i * k + r] = p[i] as u32;
        }
    }
    Ok(top)
}

/// `attend_all` for the bench: one tile, results read back (so the time includes the work).
pub fn attend_all_timed(a: &[f32], n: usize, bank: &Tensor<2>, centres: &Tensor<2>, device: &Device) -> Result<()> {
    attend_all(a, n, bank, centres, device).map(|_| ())
}

/// Attention of `n` query rows, each over its own `c` candidate keys (rows `b`: n·c × (2d+1)).
fn attend_listed(
    a: &[f32],
    b: Vec<f32>,
    centres: Vec<f32>,
    n: usize,
    c: usize,
    device: &Device,
) -> Result<(Vec<f32>, Vec<usize>)> {
    let cols = a.len() / n;
    let q = Tensor::<3>::from_data(TensorData::new(a.to_vec(), [n, 1, cols]), device);
    let k = Tensor::<3>::from_data(TensorData::new(b, [n, c, cols]), device);
    let logits = q.matmul(k.swap_dims(1, 2)); // n × 1 × c
    let (_, top) = logits.clone().topk_with_indices(TOP.min(c), 2);
    let w = softmax(logits, 2);
    let cen = Tensor::<3>::from_data(TensorData::new(centres, [n, c, 3]), device);
    let out = w.matmul(cen); // n × 1 × 3
    Ok((to_vec(out)?, to_ints(top)?.into_iter().map(|i| i as usize).collect()))
}

/// `attend_listed` on the CPU in one pass per query: each candidate's logit is taken
/// straight from its source pixels, without the n·c key rows (157 floats per candidate for
/// 5×5 patches) that the tensor form writes and reads back, then the softmax, the weighted
/// centre and the best TOP. Same maths as `key_rows` + `attend_listed`, summed in another
/// order (differences at float rounding).
fn attend_listed_fused(
    level: &Level,
    a: &[f32],
    cands: &[u32],
    n: usize,
    c: usize,
    s: f32,
    p: usize,
) -> (Vec<f32>, Vec<usize>) {
    use rayon::prelude::*;
    let d = 3 * p * p;
    let pp = p * p;
    let r = p / 2;
    let cols = cols(d);
    let kk = TOP.min(c);
    let mut out = vec![0.0f32; n * 3];
    let mut top = vec![0usize; n * kk];
    out.par_chunks_mut(3).zip(top.par_chunks_mut(kk)).enumerate().for_each_init(
        || (vec![0.0f32; d], vec![0.0f32; c], vec![[0.0f32; 3]; c]),
        |(patch, logits, centres), (qi, (o, t))| {
            let row = &a[qi * cols..(qi + 1) * cols];
            for k in 0..c {
                let key = cands[qi * c + k];
                let located = (key != NULL).then(|| level.locate(key));
                let Some((src, x, y)) = located.filter(|&(src, x, y)| {
                    let sr = &level.sources[src];
                    sr.usable[y * sr.width + x]
                }) else {
                    logits[k] = NEVER * row[cols - 1];
                    centres[k] = [0.0; 3];
                    continue;
                };
                let sr = &level.sources[src];
                let (w, h) = (sr.width, sr.height);
                // Σ π·q·(s·k) − ½·π·(s·k)², with s taken out of the sums; a patch wholly inside
                // its source is read in place (rows of p pixels), one at the border clamped.
                let (mut linear, mut square) = (0.0f32, 0.0f32);
                let mut sums = [0.0f32; 3];
                if x >= r && y >= r && x + r < w && y + r < h {
                    for (ch, sum) in sums.iter_mut().enumerate() {
                        let plane = &sr.rgb[ch * w * h..(ch + 1) * w * h];
                        for dy in 0..p {
                            let at = (y + dy - r) * w + x - r;
                            let i = ch * pp + dy * p;
                            for ((&v, &q), &pi) in
                                plane[at..at + p].iter().zip(&row[i..i + p]).zip(&row[d + i..d + i + p])
                            {
                                linear += q * v;
                                square += pi * v * v;
                                *sum += v;
                            }
                        }
                    }
                    let mid = |ch: usize| sr.rgb[ch * w * h + y * w + x];
                    centres[k] = [mid(0), mid(1), mid(2)];
                } else {
                    patch_of(&sr.rgb, w, h, x, y, p, patch);
                    for ((&v, &q), &pi) in patch.iter().zip(&row[..d]).zip(&row[d..2 * d]) {
                        linear += q * v;
                        square += pi * v * v;
                    }
                    for (ch, sum) in sums.iter_mut().enumerate() {
                        *sum = patch[ch * pp..(ch + 1) * pp].iter().sum::<f32>();
                    }
                    centres[k] = [patch[pp / 2], patch[pp + pp / 2], patch[2 * pp + pp / 2]];
                }
                let mut l = s * linear - 0.5 * s * s * square;
                for (ch, sum) in sums.iter().enumerate() {
                    let mean = sum / pp as f32;
                    l += row[2 * d + ch] * (s * mean) + row[2 * d + 3 + ch] * (-0.5 * s * s * mean * mean);
                }
                logits[k] = l;
            }
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let (mut z, mut acc) = (0.0f32, [0.0f32; 3]);
            for k in 0..c {
                let e = (logits[k] - max).exp();
                z += e;
                for ch in 0..3 {
                    acc[ch] += e * centres[k][ch];
                }
            }
            for ch in 0..3 {
                o[ch] = acc[ch] / z;
            }
            // The best kk, best first; ties to the earlier candidate.
            for r in 0..kk {
                let mut best = usize::MAX;
                for k in 0..c {
                    if t[..r].contains(&k) {
                        continue;
                    }
                    if best == usize::MAX || logits[k] > logits[best] {
                        best = k;
                    }
                }
                t[r] = best;
            }
        },
    );
    (out, top)
}

/// The coarsest level's keys: burn tensors (GPU), or panels for the fused CPU kernel
/// (`kernels::attention`), which on the CPU backend is far faster than the tensor version
/// (docs/BENCHMARKS.md).
#[allow(clippy::large_enum_variant, reason = "one per pyramid level")]
enum Bank {
    Tensors { rows: Tensor<2>, centres: Tensor<2> },
    Panels(KeyPanels),
}

/// The fused CPU kernel serves the CPU backend (unless REALFILL_TENSOR_ATTENTION is set,
/// for comparisons); every other device gets the tensor version.
fn use_cpu_kernel(device: &Device) -> bool {
    *device == Device::flex() && crate::kernels::plan().fused_attention
}

/// The denoiser of one pyramid level.
pub struct PatchDenoiser {
    pub level: Level,
    settings: PatchSettings,
    schedule: Schedule,
    device: Device,
    /// Pixels to predict (the fill region at this level).
    fill: Vec<usize>,
    /// The coarser level's best keys per pixel, and that level (None at the coarsest level).
    parent: Option<(Level, Vec<u32>)>,
    /// This level's best keys per pixel after the last step (for the next level and scoring).
    pub top: Vec<u32>,
    /// The full key bank (coarsest level only), the keys it holds, and the √ᾱ it was built for.
    bank: Option<(Bank, f32)>,
    bank_keys: Vec<u32>,
}

impl PatchDenoiser {
    pub fn new(level: Level, parent: Option<(Level, Vec<u32>)>, settings: &PatchSettings, device: &Device) -> Self {
        let fill: Vec<usize> = (0..level.cond.pixels()).filter(|&i| level.cond.mask[i] >= 0.5).collect();
        let top = vec![NULL; level.cond.pixels() * TOP];
        PatchDenoiser {
            level,
            settings: settings.clone(),
            schedule: Schedule::default(),
            device: device.clone(),
            fill,
            parent,
            top,
            bank: None,
            bank_keys: Vec::new(),
        }
    }

    /// Candidate keys for pixel `pix`: windows around the parent's best matches (scaled up one
    /// level), and a window around the pixel itself in the guide. Fixed length; NULL pads.
    fn candidates(&self, pix: usize, out: &mut Vec<u32>) {
        let lv = &self.level;
        let w = lv.cond.width;
        let (x, y) = (pix % w, pix / w);
        let r = self.settings.window as isize;
        let start = out.len();
        let push_window = |src: usize, cx: isize, cy: isize, out: &mut Vec<u32>| {
            let s = &lv.sources[src];
            for dy in -r..=r {
                for dx in -r..=r {
                    let (xx, yy) = (cx + dx, cy + dy);
                    let k = if xx >= 0 && yy >= 0 && (xx as usize) < s.width && (yy as usize) < s.height {
                        lv.key(src, xx as usize, yy as usize)
                    } else {
                        NULL
                    };
                    out.push(k);
                }
            }
        };
        if let Some((plv, ptop)) = &self.parent {
            let pw = plv.cond.width;
            let (px, py) = ((x / 2).min(pw - 1), (y / 2).min(plv.cond.height - 1));
            for m in 0..TOP {
                let k = ptop[(py * pw + px) * TOP + m];
                if k == NULL {
                    push_window(0, -100, -100, out);
                    continue;
                }
                let (src, kx, ky) = plv.locate(k);
                push_window(src, (2 * kx + x % 2) as isize, (2 * ky + y % 2) as isize, out);
            }
        }
        match lv.guide {
            Some(g) => push_window(g, x as isize, y as isize, out),
            None => push_window(0, -100, -100, out),
        }
        // Drop repeats (a key listed twice would count twice in the softmax).
        let listed = &mut out[start..];
        for i in 1..listed.len() {
            if listed[i] != NULL && listed[..i].contains(&listed[i]) {
                listed[i] = NULL;
            }
        }
    }

    fn candidates_per_pixel(&self) -> usize {
        let win = (2 * self.settings.window + 1).pow(2);
        win * (if self.parent.is_some() { TOP } else { 0 } + 1)
    }

    fn predict(&mut self, x_t: &[f32], t: usize) -> Result<Vec<f32>> {
        let (s, var) = {
            let (a, b) = self.schedule.coeffs(t);
            (a, b * b)
        };
        let p = self.settings.patch;
        let d = 3 * p * p;
        let hw = self.level.cond.pixels();
        let mut x0: Vec<f32> = self.level.cond.known.clone();
        let tile = self.settings.tile.max(1);
        if self.parent.is_none() {
            // Coarsest level: every usable key.
            let rebuild = self.bank.as_ref().is_none_or(|(_, bs)| *bs != s);
            if rebuild {
                let keys: Vec<u32> = (0..self.level.keys() as u32).filter(|&k| self.level.usable(k)).collect();
                if keys.is_empty() {
                    return Err(Error::Invalid(
                        "the patch engine found no usable patches: the references and the known part of the photo are smaller than a patch".into(),
                    ));
                }
                let (rows, centres) = key_rows(&self.level, &keys, s, p);
                let bank = if use_cpu_kernel(&self.device) {
                    Bank::Panels(KeyPanels::new(&rows, &centres, cols(d)))
                } else {
                    Bank::Tensors {
                        rows: Tensor::<2>::from_data(TensorData::new(rows, [keys.len(), cols(d)]), &self.device),
                        centres: Tensor::<2>::from_data(TensorData::new(centres, [keys.len(), 3]), &self.device),
                    }
                };
                self.bank = Some((bank, s));
                self.bank_keys = keys;
            }
            let (bank, _) = self.bank.as_ref().expect("built above");
            for chunk in self.fill.chunks(tile) {
                let a = query_rows(&self.level, x_t, chunk, s, var, &self.settings);
                let res = match bank {
                    Bank::Tensors { rows, centres } => attend_all(&a, chunk.len(), rows, centres, &self.device)?,
                    Bank::Panels(panels) => {
                        let r = attention::attend(&a, chunk.len(), panels, TOP);
                        Attended { centres: r.centres, top: r.top }
                    }
                };
                let kk = TOP.min(self.bank_keys.len());
                for (qi, &pix) in chunk.iter().enumerate() {
                    for ch in 0..3 {
                        x0[ch * hw + pix] = res.centres[qi * 3 + ch];
                    }
                    for m in 0..TOP {
                        self.top[pix * TOP + m] =
                            if m < kk { self.bank_keys[res.top[qi * kk + m] as usize] } else { NULL };
                    }
                }
            }
        } else {
            let cpp = self.candidates_per_pixel();
            let mut cands = Vec::with_capacity(tile * cpp);
            for chunk in self.fill.chunks(tile) {
                cands.clear();
                for &pix in chunk {
                    self.candidates(pix, &mut cands);
                }
                let a = query_rows(&self.level, x_t, chunk, s, var, &self.settings);
                let (out, top) = if use_cpu_kernel(&self.device) {
                    attend_listed_fused(&self.level, &a, &cands, chunk.len(), cpp, s, p)
                } else {
                    let (b, centres) = key_rows(&self.level, &cands, s, p);
                    attend_listed(&a, b, centres, chunk.len(), cpp, &self.device)?
                };
                let kk = TOP.min(cpp);
                for (qi, &pix) in chunk.iter().enumerate() {
                    for ch in 0..3 {
                        x0[ch * hw + pix] = out[qi * 3 + ch];
                    }
                    for m in 0..TOP {
                        let k = if m < kk { cands[qi * cpp + top[qi * kk + m]] } else { NULL };
                        self.top[pix * TOP + m] = if k != NULL && self.level.usable(k) { k } else { NULL };
                    }
                }
            }
        }
        Ok(x0)
    }
}

impl PatchDenoiser {
    /// Replace each filled pixel by the mean of what the best matches of all patches covering
    /// it say about it.
    fn vote(&self, x0: &mut [f32]) {
        let c = &self.level.cond;
        let (w, h, hw) = (c.width, c.height, c.pixels());
        let r = (self.settings.patch / 2) as isize;
        let mut acc = vec![0.0f32; 3 * hw];
        let mut n = vec![0.0f32; hw];
        for &q in &self.fill {
            let k = self.top[q * TOP];
            if k == NULL {
                continue;
            }
            let (src, kx, ky) = self.level.locate(k);
            let s = &self.level.sources[src];
            let (qx, qy) = ((q % w) as isize, (q / w) as isize);
            for dy in -r..=r {
                for dx in -r..=r {
                    let (px, py) = (qx + dx, qy + dy);
                    let (sx, sy) = (kx as isize + dx, ky as isize + dy);
                    if px < 0 || py < 0 || px >= w as isize || py >= h as isize {
                        continue;
                    }
                    if sx < 0 || sy < 0 || sx >= s.width as isize || sy >= s.height as isize {
                        continue;
                    }
                    let p = py as usize * w + px as usize;
                    if c.mask[p] < 0.5 {
                        continue;
                    }
                    let si = sy as usize * s.width + sx as usize;
                    for ch in 0..3 {
                        acc[ch * hw + p] += s.rgb[ch * s.width * s.height + si];
                    }
                    n[p] += 1.0;
                }
            }
        }
        for &p in &self.fill {
            if n[p] > 0.0 {
                for ch in 0..3 {
                    x0[ch * hw + p] = acc[ch * hw + p] / n[p];
                }
            }
        }
    }
}

impl Denoiser for PatchDenoiser {
    fn predict_x0(&mut self, x_t: &[f32], t: usize, _cond: &Condition) -> Result<Vec<f32>> {
        let mut x0 = self.predict(x_t, t)?;
        if t == 0 && self.settings.vote {
            self.vote(&mut x0);
        }
        Ok(x0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::patch::pyramid::{half, usable_centres};

    fn device() -> Device {
        Device::flex()
    }

    /// Plain-Rust softmax attention over explicit candidate lists: the reference the tensor
    /// versions are checked against.
    fn reference(a: &[f32], b: &[f32], centres: &[f32], n: usize, c: usize) -> (Vec<f32>, Vec<f32>) {
        let cols = a.len() / n;
        let mut out = vec![0.0; n * 3];
        let mut weights = vec![0.0; n * c];
        for q in 0..n {
            let logits: Vec<f64> = (0..c)
                .map(|k| (0..cols).map(|j| a[q * cols + j] as f64 * b[(q * c + k) * cols + j] as f64).sum())
                .collect();
            let m = logits.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for k in 0..c {
                let wk = e[k] / z;
                weights[q * c + k] = wk as f32;
                for ch in 0..3 {
                    out[q * 3 + ch] += (wk * centres[(q * c + k) * 3 + ch] as f64) as f32;
                }
            }
        }
        (out, weights)
    }

    fn noise_image(w: usize, h: usize, seed: u64) -> Vec<f32> {
        let mut r = crate::rng::Rng::new(seed);
        (0..3 * w * h).map(|_| r.range_f32(-1.0, 1.0)).collect()
    }

    fn level_with(target: Vec<f32>, mask: Vec<f32>, w: usize, h: usize, sources: Vec<Source>) -> Level {
        let known: Vec<f32> = target.iter().enumerate().map(|(i, v)| v * (1.0 - mask[i % (w * h)])).collect();
        let cond =
            Condition { width: w, height: h, known, mask, prior: vec![0.0; 3 * w * h], guide_valid: vec![0.0; w * h] };
        Level::new(cond, sources, None)
    }

    #[test]
    fn at_the_smallest_noise_an_exact_patch_returns_its_centre() {
        let (w, h) = (12, 10);
        let refimg = noise_image(w, h, 1);
        let src =
            Source { width: w, height: h, rgb: refimg.clone(), usable: usable_centres(&vec![1.0; w * h], w, h, 5) };
        // The target is the reference itself, with one pixel to fill.
        let mut mask = vec![0.0; w * h];
        let pix = 5 * w + 6;
        mask[pix] = 1.0;
        let level = level_with(refimg.clone(), mask, w, h, vec![src]);
        let set = PatchSettings { patch: 5, ..Default::default() };
        let mut den = PatchDenoiser::new(level, None, &set, &device());
        // x_t at t = 0 is (almost) the clean image.
        let x0 = den.predict(&refimg, 0).unwrap();
        for ch in 0..3 {
            let (got, want) = (x0[ch * w * h + pix], refimg[ch * w * h + pix]);
            assert!((got - want).abs() < 1e-5, "channel {ch}: {got} vs {want}");
        }
        let (src, x, y) = den.level.locate(den.top[pix * TOP]);
        assert_eq!((src, x, y), (0, 6, 5), "the best match is the same place");
    }

    #[test]
    fn weights_sum_to_one_and_the_tensor_versions_match_plain_rust() {
        let (n, c, cols) = (7, 9, 13);
        let mut r = crate::rng::Rng::new(5);
        let a: Vec<f32> = (0..n * cols).map(|_| r.range_f32(-1.0, 1.0)).collect();
        let b: Vec<f32> = (0..n * c * cols).map(|_| r.range_f32(-1.0, 1.0)).collect();
        let cen: Vec<f32> = (0..n * c * 3).map(|_| r.range_f32(-1.0, 1.0)).collect();
        let (want, weights) = reference(&a, &b, &cen, n, c);
        for q in 0..n {
            let s: f32 = weights[q * c..(q + 1) * c].iter().sum();
            assert!((s - 1.0).abs() < 1e-5);
        }
        let (got, _) = attend_listed(&a, b.clone(), cen.clone(), n, c, &device()).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-4, "listed {g} vs {w}");
        }
        // The all-keys version: every query sees the same keys (those of query 0).
        let b0 = b[..c * cols].to_vec();
        let c0 = cen[..c * 3].to_vec();
        let bank = Tensor::<2>::from_data(TensorData::new(b0.clone(), [c, cols]), &device());
        let cens = Tensor::<2>::from_data(TensorData::new(c0.clone(), [c, 3]), &device());
        let got = attend_all(&a, n, &bank, &cens, &device()).unwrap();
        let shared_b: Vec<f32> = (0..n).flat_map(|_| b0.clone()).collect();
        let shared_c: Vec<f32> = (0..n).flat_map(|_| c0.clone()).collect();
        let (want, _) = reference(&a, &shared_b, &shared_c, n, c);
        for (g, w) in got.centres.iter().zip(&want) {
            assert!((g - w).abs() < 1e-4, "all {g} vs {w}");
        }
    }

    #[test]
    fn fused_cpu_kernel_matches_the_tensor_version() {
        // Real key and query rows from a level (exact patch statistics, the −1e9 bias of
        // unusable keys), several query tiles and a partial last panel.
        let (w, h) = (23, 19);
        let img = noise_image(w, h, 4);
        let refimg = noise_image(w, h, 6);
        let src = Source { width: w, height: h, rgb: refimg, usable: usable_centres(&vec![1.0; w * h], w, h, 3) };
        let mut mask = vec![0.0; w * h];
        for i in (0..w * h).step_by(3) {
            mask[i] = 1.0;
        }
        let level = level_with(img.clone(), mask.clone(), w, h, vec![src]);
        let set = PatchSettings { patch: 3, ..Default::default() };
        let (s, var) = (0.8f32, 0.36f32);
        let keys: Vec<u32> = (0..level.keys() as u32).collect();
        let (rows, centres) = key_rows(&level, &keys, s, 3);
        let at: Vec<usize> = (0..w * h).filter(|&i| mask[i] >= 0.5).collect();
        let q = query_rows(&level, &img, &at, s, var, &set);
        let d = cols(27);
        let bank = Tensor::<2>::from_data(TensorData::new(rows.clone(), [keys.len(), d]), &device());
        let cens = Tensor::<2>::from_data(TensorData::new(centres.clone(), [keys.len(), 3]), &device());
        let want = attend_all(&q, at.len(), &bank, &cens, &device()).unwrap();
        let got = attention::attend(&q, at.len(), &KeyPanels::new(&rows, &centres, d), TOP);
        for (g, w) in got.centres.iter().zip(&want.centres) {
            assert!((g - w).abs() < 1e-4, "fused {g} vs tensor {w}");
        }
        let agree = got.top.iter().zip(&want.top).filter(|(a, b)| a == b).count();
        assert!(agree as f32 >= 0.99 * want.top.len() as f32, "best keys agree for {agree} of {}", want.top.len());
    }

    #[test]
    fn shortlisted_level_matches_exhaustive_when_the_shortlist_holds_the_matches() {
        // A fine level whose parent matched every pixel to itself: with a window of 1 the
        // shortlist holds the true patch, and at low noise both versions pick it.
        let (w, h) = (16, 16);
        let img = noise_image(w, h, 9);
        let usable = usable_centres(&vec![1.0; w * h], w, h, 3);
        let src = Source { width: w, height: h, rgb: img.clone(), usable };
        let mut mask = vec![0.0; w * h];
        for y in 6..10 {
            for x in 6..10 {
                mask[y * w + x] = 1.0;
            }
        }
        let set = PatchSettings { patch: 3, window: 1, ..Default::default() };
        let fine = level_with(img.clone(), mask.clone(), w, h, vec![src.clone()]);
        let mut exhaustive = PatchDenoiser::new(fine.clone(), None, &set, &device());
        let t = 5;
        let (a, b) = Schedule::default().coeffs(t);
        let noise = noise_image(w, h, 3);
        let x_t: Vec<f32> = img.iter().zip(&noise).map(|(v, n)| a * v + b * 0.01 * n).collect();
        let want = exhaustive.predict(&x_t, t).unwrap();
        // The parent level (8×8) matched each pixel to its own position.
        let half_img = half(&img, w, h);
        let psrc = Source { width: 8, height: 8, rgb: half_img.clone(), usable: vec![true; 64] };
        let parent = level_with(half_img, vec![0.0; 64], 8, 8, vec![psrc]);
        let mut ptop = vec![NULL; 64 * TOP];
        for i in 0..64 {
            ptop[i * TOP] = i as u32;
        }
        let mut listed = PatchDenoiser::new(fine, Some((parent, ptop)), &set, &device());
        let got = listed.predict(&x_t, t).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-3, "{g} vs {w}");
        }
    }

    #[test]
    fn the_fused_shortlist_attention_equals_the_tensor_form() {
        // Two sources (one with unusable centres), 5×5 patches, candidates inside, on the
        // border (clamped patches), repeated and NULL; queries with known, noisy and
        // mean-only terms: the one-pass CPU form gives the tensor form's estimates and best keys.
        let (w, h, p) = (13, 11, 5);
        let usable_a = usable_centres(&vec![1.0; w * h], w, h, p);
        let mut usable_b = vec![true; 9 * 7];
        usable_b[10] = false;
        let sources = vec![
            Source { width: w, height: h, rgb: noise_image(w, h, 4), usable: usable_a },
            Source { width: 9, height: 7, rgb: noise_image(9, 7, 5), usable: usable_b },
        ];
        let level = level_with(noise_image(w, h, 6), vec![1.0; w * h], w, h, sources);
        let (n, c) = (37, 12);
        let mut rng = crate::rng::Rng::new(8);
        let keys = level.keys() as u32;
        let cands: Vec<u32> = (0..n * c)
            .map(|i| match i % 7 {
                0 => NULL,
                1 => 0,                   // source 0's corner: unusable there (border patches: source 1's)
                2 => (w * h) as u32 + 10, // the unusable centre of source 1
                _ => (rng.range_f32(0.0, keys as f32) as u32).min(keys - 1),
            })
            .collect();
        let d = 3 * p * p;
        let a: Vec<f32> = (0..n * cols(d))
            .map(|i| {
                let col = i % cols(d);
                if col == cols(d) - 1 {
                    1.0
                } else if (d..2 * d).contains(&col) {
                    rng.range_f32(0.0, 3.0)
                } else {
                    rng.range_f32(-2.0, 2.0)
                }
            })
            .collect();
        let s = 0.7;
        let (b, centres) = key_rows(&level, &cands, s, p);
        let (want, want_top) = attend_listed(&a, b, centres, n, c, &device()).unwrap();
        let (got, got_top) = attend_listed_fused(&level, &a, &cands, n, c, s, p);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-4, "{g} vs {w}");
        }
        assert_eq!(got_top, want_top);
    }
}
