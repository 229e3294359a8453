//! The patch engine's exhaustive attention (coarsest level) as one fused CPU kernel:
//! logits = Q·Kᵀ, a streaming ("online") softmax, the weighted sum of the keys' centres and
//! each query's best keys, in one pass over the keys, without materialising the
//! queries × keys logits (≈ 40 MB per 512-query tile, written and read three times by the
//! tensor version: product, arg-max passes, softmax).
//!
//! Keys are stored in panels of [`PANEL`] keys, column-major within the panel, so that the
//! inner product kernel loads two AVX-512 vectors of keys per column and broadcasts one query
//! value per row: a register block of 8 queries × 32 keys, 16 accumulators, 2 FMAs per
//! broadcast. AVX2 has 16 registers of 8 lanes, so its kernel walks the same tile in blocks of
//! 4 queries × 16 keys (8 accumulators, 2 key loads and 4 broadcasts per 8 FMAs), and its
//! softmax update runs 8 lanes at a time with a vector exp like the AVX-512 one. CPUs with
//! neither run plain Rust. `tests` check every form against a direct computation, and
//! patch.rs's tests check the kernel against the burn tensor version.

use rayon::prelude::*;

use super::simd::Simd;

/// Keys per panel (two 16-lane vectors).
pub const PANEL: usize = 32;
/// Queries per register block.
const ROWS: usize = 8;
/// Queries per task (a block of query rows shares one pass over all panels).
const QUERY_BLOCK: usize = 64;

/// Keys rearranged for the kernel.
pub struct KeyPanels {
    cols: usize,
    keys: usize,
    /// panels × cols × PANEL.
    panels: Vec<f32>,
    /// panels × 3 × PANEL.
    centres: Vec<f32>,
}

impl KeyPanels {
    /// `rows`: keys × cols (row-major), `centres`: keys × 3.
    pub fn new(rows: &[f32], centres: &[f32], cols: usize) -> KeyPanels {
        let keys = centres.len() / 3;
        assert_eq!(rows.len(), keys * cols);
        let n = keys.div_ceil(PANEL);
        let mut panels = vec![0.0f32; n * cols * PANEL];
        let mut cen = vec![0.0f32; n * 3 * PANEL];
        for k in 0..keys {
            let (p, j) = (k / PANEL, k % PANEL);
            let row = &rows[k * cols..(k + 1) * cols];
            let panel = &mut panels[p * cols * PANEL..(p + 1) * cols * PANEL];
            for (c, &v) in row.iter().enumerate() {
                panel[c * PANEL + j] = v;
            }
            for ch in 0..3 {
                cen[p * 3 * PANEL + ch * PANEL + j] = centres[k * 3 + ch];
            }
        }
        KeyPanels { cols, keys, panels, centres: cen }
    }

    pub fn keys(&self) -> usize {
        self.keys
    }

    fn panel(&self, p: usize) -> &[f32] {
        &self.panels[p * self.cols * PANEL..(p + 1) * self.cols * PANEL]
    }

    fn panel_centres(&self, p: usize) -> &[f32] {
        &self.centres[p * 3 * PANEL..(p + 1) * 3 * PANEL]
    }
}

/// Softmax state of one query row: running maximum, per-lane sums of exp and of exp·centre.
#[derive(Clone)]
struct RowState {
    max: f32,
    sum: [f32; 16],
    acc: [[f32; 16]; 3],
    /// Best keys, best first (value, key); value −∞ where empty.
    top: Vec<(f32, u32)>,
}

impl RowState {
    fn new(k: usize) -> RowState {
        RowState { max: f32::NEG_INFINITY, sum: [0.0; 16], acc: [[0.0; 16]; 3], top: vec![(f32::NEG_INFINITY, 0); k] }
    }

    /// Insert a candidate into the sorted top list (ties keep the earlier key, as arg-max does).
    fn offer(&mut self, v: f32, key: u32) {
        let k = self.top.len();
        // Not greater, or NaN: not a better match.
        if k == 0 || v.partial_cmp(&self.top[k - 1].0) != Some(std::cmp::Ordering::Greater) {
            return;
        }
        let mut i = k - 1;
        while i > 0 && v > self.top[i - 1].0 {
            self.top[i] = self.top[i - 1];
            i -= 1;
        }
        self.top[i] = (v, key);
    }
}

/// Result: each query's x0 estimate (3 per query) and best keys (`k` per query, best first).
pub struct Attention {
    pub centres: Vec<f32>,
    pub top: Vec<u32>,
}

/// Attention of `nq` query rows (`q`: nq × cols) over every key of `bank`, keeping each
/// query's `k` best keys. Runs on the rayon pool, one task per 64 queries.
pub fn attend(q: &[f32], nq: usize, bank: &KeyPanels, k: usize) -> Attention {
    let cols = bank.cols;
    assert_eq!(q.len(), nq * cols);
    let k = k.min(bank.keys);
    let mut centres = vec![0.0f32; nq * 3];
    let mut top = vec![0u32; nq * k];
    centres.par_chunks_mut(QUERY_BLOCK * 3).zip(top.par_chunks_mut((QUERY_BLOCK * k).max(1))).enumerate().for_each(
        |(b, (cen_out, top_out))| {
            let r0 = b * QUERY_BLOCK;
            let rows = (nq - r0).min(QUERY_BLOCK);
            let states = attend_block(&q[r0 * cols..(r0 + rows) * cols], rows, bank, k);
            for (r, s) in states.iter().enumerate() {
                let total: f32 = s.sum.iter().sum();
                for ch in 0..3 {
                    cen_out[r * 3 + ch] = s.acc[ch].iter().sum::<f32>() / total;
                }
                for (m, &(_, key)) in s.top.iter().enumerate() {
                    top_out[r * k + m] = key;
                }
            }
        },
    );
    if k == 0 {
        top.clear();
    }
    Attention { centres, top }
}

fn attend_block(q: &[f32], rows: usize, bank: &KeyPanels, k: usize) -> Vec<RowState> {
    let cols = bank.cols;
    let groups = rows.div_ceil(ROWS);
    // Queries padded to whole register blocks (the padding rows' results are dropped).
    let mut qpad = vec![0.0f32; groups * ROWS * cols];
    qpad[..rows * cols].copy_from_slice(q);
    let mut states = vec![RowState::new(k); rows];
    let mut tile = [0.0f32; ROWS * PANEL];
    let kernel = crate::kernels::plan().simd;
    for p in 0..bank.keys.div_ceil(PANEL) {
        let panel = bank.panel(p);
        let cen = bank.panel_centres(p);
        let valid = (bank.keys - p * PANEL).min(PANEL);
        for g in 0..groups {
            logits(kernel, &qpad[g * ROWS * cols..(g + 1) * ROWS * cols], cols, panel, &mut tile);
            for r in 0..ROWS.min(rows - g * ROWS) {
                let logits = &tile[r * PANEL..(r + 1) * PANEL];
                update(kernel, &mut states[g * ROWS + r], logits, valid, cen, (p * PANEL) as u32);
            }
        }
    }
    states
}

/// tile[r][j] = q_r · key_j for the 8 query rows and the panel's 32 keys.
fn logits(kernel: Simd, q: &[f32], cols: usize, panel: &[f32], tile: &mut [f32; ROWS * PANEL]) {
    assert!(q.len() >= ROWS * cols && panel.len() >= cols * PANEL);
    match kernel {
        // SAFETY: `kernels::plan()` says Avx512 only when the CPU has AVX-512F; the slices
        // are long enough (asserted above) for every load and store the kernel makes.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { avx512::logits(q, cols, panel, tile) },
        // SAFETY: Avx2 only when the CPU has AVX2 and FMA; the slices as above.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { avx2::logits(q, cols, panel, tile) },
        _ => logits_portable(q, cols, panel, tile),
    }
}

/// Fold a row's 32 logits into its softmax state and best keys.
fn update(kernel: Simd, s: &mut RowState, logits: &[f32], valid: usize, cen: &[f32], first_key: u32) {
    assert!(logits.len() >= PANEL && cen.len() >= 3 * PANEL);
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx512 only when the CPU has AVX-512F; `logits` and `cen` hold PANEL and
        // 3·PANEL values (asserted above); the state's sums and accumulators are [f32; 16].
        Simd::Avx512 => unsafe { avx512::update(s, logits, valid, cen, first_key) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx2 only when the CPU has AVX2 and FMA; the lengths as above.
        Simd::Avx2 => unsafe { avx2::update(s, logits, valid, cen, first_key) },
        _ => update_portable(s, logits, valid, cen, first_key),
    }
}

#[inline(always)]
fn logits_portable(q: &[f32], cols: usize, panel: &[f32], tile: &mut [f32; ROWS * PANEL]) {
    let mut acc = [[0.0f32; PANEL]; ROWS];
    for c in 0..cols {
        let kc: &[f32; PANEL] = panel[c * PANEL..(c + 1) * PANEL].try_into().expect("panel column");
        for r in 0..ROWS {
            let qv = q[r * cols + c];
            for j in 0..PANEL {
                acc[r][j] = qv.mul_add(kc[j], acc[r][j]);
            }
        }
    }
    for r in 0..ROWS {
        tile[r * PANEL..(r + 1) * PANEL].copy_from_slice(&acc[r]);
    }
}

fn update_portable(s: &mut RowState, logits: &[f32], valid: usize, cen: &[f32], first_key: u32) {
    let m = logits[..valid].iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if m > s.max {
        let scale = (s.max - m).exp();
        s.sum.iter_mut().for_each(|v| *v *= scale);
        s.acc.iter_mut().flatten().for_each(|v| *v *= scale);
        s.max = m;
    }
    for j in 0..valid {
        let e = (logits[j] - s.max).exp();
        s.sum[j % 16] += e;
        for ch in 0..3 {
            s.acc[ch][j % 16] += e * cen[ch * PANEL + j];
        }
        s.offer(logits[j], first_key + j as u32);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{PANEL, ROWS, RowState};
    use crate::kernels::simd::avx512::exp;
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must have AVX-512F; `q` must hold ROWS·cols values and `panel` cols·PANEL.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn logits(q: &[f32], cols: usize, panel: &[f32], tile: &mut [f32; ROWS * PANEL]) {
        let (qp, kp) = (q.as_ptr(), panel.as_ptr());
        let mut acc = [_mm512_setzero_ps(); 2 * ROWS];
        for c in 0..cols {
            // SAFETY: c < cols and panel holds cols·PANEL values (the caller's contract).
            let (k0, k1) = unsafe { (_mm512_loadu_ps(kp.add(c * PANEL)), _mm512_loadu_ps(kp.add(c * PANEL + 16))) };
            for r in 0..ROWS {
                // SAFETY: r < ROWS, c < cols and q holds ROWS·cols values.
                let b = _mm512_set1_ps(unsafe { *qp.add(r * cols + c) });
                acc[2 * r] = _mm512_fmadd_ps(b, k0, acc[2 * r]);
                acc[2 * r + 1] = _mm512_fmadd_ps(b, k1, acc[2 * r + 1]);
            }
        }
        let out = tile.as_mut_ptr();
        for r in 0..ROWS {
            // SAFETY: tile holds ROWS·PANEL values.
            unsafe {
                _mm512_storeu_ps(out.add(r * PANEL), acc[2 * r]);
                _mm512_storeu_ps(out.add(r * PANEL + 16), acc[2 * r + 1]);
            }
        }
    }

    /// # Safety
    /// The CPU must have AVX-512F; `logits` must hold PANEL values, `cen` 3·PANEL and the
    /// state's `sum` and `acc` rows 16 each.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn update(s: &mut RowState, logits: &[f32], valid: usize, cen: &[f32], first_key: u32) {
        // Lanes past `valid` (the last panel's padding) count as −∞.
        let m0: __mmask16 = if valid >= 16 { 0xFFFF } else { ((1u32 << valid) - 1) as u16 };
        let m1: __mmask16 = if valid >= 32 {
            0xFFFF
        } else if valid <= 16 {
            0
        } else {
            ((1u32 << (valid - 16)) - 1) as u16
        };
        let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
        // SAFETY: logits has PANEL values, cen 3·PANEL.
        let (l0, l1) = unsafe {
            (_mm512_mask_loadu_ps(ninf, m0, logits.as_ptr()), _mm512_mask_loadu_ps(ninf, m1, logits.as_ptr().add(16)))
        };
        let m = _mm512_reduce_max_ps(_mm512_max_ps(l0, l1));
        if m > s.max {
            let scale = if s.max == f32::NEG_INFINITY { 0.0 } else { (s.max - m).exp() };
            s.sum.iter_mut().for_each(|v| *v *= scale);
            s.acc.iter_mut().flatten().for_each(|v| *v *= scale);
            s.max = m;
        }
        let mv = _mm512_set1_ps(s.max);
        let e0 = _mm512_maskz_mov_ps(m0, exp(_mm512_sub_ps(l0, mv)));
        let e1 = _mm512_maskz_mov_ps(m1, exp(_mm512_sub_ps(l1, mv)));
        // SAFETY: sum and acc are [f32; 16] each; cen holds 3·PANEL values.
        unsafe {
            let sp = s.sum.as_mut_ptr();
            _mm512_storeu_ps(sp, _mm512_add_ps(_mm512_loadu_ps(sp), _mm512_add_ps(e0, e1)));
            for ch in 0..3 {
                let ap = s.acc[ch].as_mut_ptr();
                let c0 = _mm512_loadu_ps(cen.as_ptr().add(ch * PANEL));
                let c1 = _mm512_loadu_ps(cen.as_ptr().add(ch * PANEL + 16));
                let a = _mm512_fmadd_ps(e1, c1, _mm512_fmadd_ps(e0, c0, _mm512_loadu_ps(ap)));
                _mm512_storeu_ps(ap, a);
            }
        }
        // Best keys: only logits above the current k-th best need the scalar insertion.
        if let Some(&(floor, _)) = s.top.last() {
            let fv = _mm512_set1_ps(floor);
            let hits = (_mm512_cmp_ps_mask::<_CMP_GT_OQ>(l0, fv) as u32)
                | ((_mm512_cmp_ps_mask::<_CMP_GT_OQ>(l1, fv) as u32) << 16);
            let mut bits = hits;
            while bits != 0 {
                let j = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                s.offer(logits[j], first_key + j as u32);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{PANEL, ROWS, RowState};
    use crate::kernels::simd::avx2::exp;
    use std::arch::x86_64::*;

    /// Queries and keys of one register block.
    const BR: usize = 4;
    const BK: usize = 16;

    /// # Safety
    /// The CPU must have AVX2 and FMA; `q` must hold ROWS·cols values and `panel` cols·PANEL.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn logits(q: &[f32], cols: usize, panel: &[f32], tile: &mut [f32; ROWS * PANEL]) {
        let (qp, kp, out) = (q.as_ptr(), panel.as_ptr(), tile.as_mut_ptr());
        for r0 in (0..ROWS).step_by(BR) {
            for k0 in (0..PANEL).step_by(BK) {
                let mut acc = [_mm256_setzero_ps(); 2 * BR];
                for c in 0..cols {
                    // SAFETY: c < cols, k0 + 16 ≤ PANEL and panel holds cols·PANEL values.
                    let (a, b) = unsafe {
                        let p = kp.add(c * PANEL + k0);
                        (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)))
                    };
                    for r in 0..BR {
                        // SAFETY: r0 + r < ROWS, c < cols and q holds ROWS·cols values.
                        let v = _mm256_set1_ps(unsafe { *qp.add((r0 + r) * cols + c) });
                        acc[2 * r] = _mm256_fmadd_ps(v, a, acc[2 * r]);
                        acc[2 * r + 1] = _mm256_fmadd_ps(v, b, acc[2 * r + 1]);
                    }
                }
                for r in 0..BR {
                    // SAFETY: (r0 + r)·PANEL + k0 + 16 ≤ ROWS·PANEL, the tile's length.
                    unsafe {
                        let o = out.add((r0 + r) * PANEL + k0);
                        _mm256_storeu_ps(o, acc[2 * r]);
                        _mm256_storeu_ps(o.add(8), acc[2 * r + 1]);
                    }
                }
            }
        }
    }

    /// # Safety
    /// The CPU must have AVX2 and FMA; `logits` must hold PANEL values, `cen` 3·PANEL and the
    /// state's `sum` and `acc` rows 16 each.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn update(s: &mut RowState, logits: &[f32], valid: usize, cen: &[f32], first_key: u32) {
        // Lanes past `valid` (the last panel's padding) count as −∞ and weigh nothing.
        let ninf = _mm256_set1_ps(f32::NEG_INFINITY);
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let mut l = [ninf; 4];
        let mut keep = [_mm256_setzero_ps(); 4];
        for (v, (lv, kv)) in l.iter_mut().zip(keep.iter_mut()).enumerate() {
            // Lane i of vector v is key 8v + i: valid when 8v + i < valid.
            let live = _mm256_cmpgt_epi32(_mm256_set1_epi32(valid as i32 - 8 * v as i32), lanes);
            *kv = _mm256_castsi256_ps(live);
            // SAFETY: logits holds PANEL = 32 values.
            *lv = _mm256_blendv_ps(ninf, unsafe { _mm256_loadu_ps(logits.as_ptr().add(8 * v)) }, *kv);
        }
        let m8 = _mm256_max_ps(_mm256_max_ps(l[0], l[1]), _mm256_max_ps(l[2], l[3]));
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m8), _mm256_extractf128_ps::<1>(m8));
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let m = _mm_cvtss_f32(_mm_max_ss(m2, _mm_shuffle_ps::<1>(m2, m2)));
        if m > s.max {
            let scale = if s.max == f32::NEG_INFINITY { 0.0 } else { (s.max - m).exp() };
            s.sum.iter_mut().for_each(|v| *v *= scale);
            s.acc.iter_mut().flatten().for_each(|v| *v *= scale);
            s.max = m;
        }
        let mv = _mm256_set1_ps(s.max);
        let mut e = [_mm256_setzero_ps(); 4];
        for v in 0..4 {
            e[v] = _mm256_and_ps(exp(_mm256_sub_ps(l[v], mv)), keep[v]);
        }
        // Keys j and j + 16 share state lane j % 16, as in the portable and AVX-512 forms.
        let (lo, hi) = (_mm256_add_ps(e[0], e[2]), _mm256_add_ps(e[1], e[3]));
        // SAFETY: sum and acc are [f32; 16] each; cen holds 3·PANEL values.
        unsafe {
            let sp = s.sum.as_mut_ptr();
            _mm256_storeu_ps(sp, _mm256_add_ps(_mm256_loadu_ps(sp), lo));
            _mm256_storeu_ps(sp.add(8), _mm256_add_ps(_mm256_loadu_ps(sp.add(8)), hi));
            for ch in 0..3 {
                let ap = s.acc[ch].as_mut_ptr();
                let cp = cen.as_ptr().add(ch * PANEL);
                for half in 0..2 {
                    let a = _mm256_loadu_ps(ap.add(8 * half));
                    let a = _mm256_fmadd_ps(e[half], _mm256_loadu_ps(cp.add(8 * half)), a);
                    let a = _mm256_fmadd_ps(e[half + 2], _mm256_loadu_ps(cp.add(8 * half + 16)), a);
                    _mm256_storeu_ps(ap.add(8 * half), a);
                }
            }
        }
        // Best keys: only logits above the current k-th best need the scalar insertion.
        if let Some(&(floor, _)) = s.top.last() {
            let fv = _mm256_set1_ps(floor);
            let mut bits = 0u32;
            for (v, lv) in l.iter().enumerate() {
                bits |= (_mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(*lv, fv)) as u32) << (8 * v);
            }
            while bits != 0 {
                let j = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                s.offer(logits[j], first_key + j as u32);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Direct computation: full logits row, softmax, weighted centres, top-k by sorting.
    fn direct(q: &[f32], nq: usize, keys: &[f32], cen: &[f32], cols: usize, k: usize) -> (Vec<f32>, Vec<u32>) {
        let nk = cen.len() / 3;
        let (mut out, mut top) = (vec![0.0f32; nq * 3], Vec::new());
        for i in 0..nq {
            let l: Vec<f64> =
                (0..nk).map(|j| (0..cols).map(|c| q[i * cols + c] as f64 * keys[j * cols + c] as f64).sum()).collect();
            let m = l.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = l.iter().map(|v| (v - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for ch in 0..3 {
                out[i * 3 + ch] =
                    (e.iter().enumerate().map(|(j, w)| w * cen[j * 3 + ch] as f64).sum::<f64>() / z) as f32;
            }
            let mut order: Vec<usize> = (0..nk).collect();
            order.sort_by(|&a, &b| l[b].total_cmp(&l[a]));
            top.extend(order[..k].iter().map(|&j| j as u32));
        }
        (out, top)
    }

    fn random(n: usize, scale: f32, rng: &mut Rng) -> Vec<f32> {
        (0..n).map(|_| rng.range_f32(-scale, scale)).collect()
    }

    fn check(kernel: Simd) {
        let mut rng = Rng::new(5);
        // Sizes that leave partial register blocks, query blocks and panels.
        let (nq, nk, cols, k) = (77, 101, 13, 4);
        let q = random(nq * cols, 1.0, &mut rng);
        let keys = random(nk * cols, 1.0, &mut rng);
        let cen = random(nk * 3, 1.0, &mut rng);
        let bank = KeyPanels::new(&keys, &cen, cols);
        let (want, want_top) = direct(&q, nq, &keys, &cen, cols, k);
        let mut got = vec![0.0f32; nq * 3];
        let mut got_top = vec![0u32; nq * k];
        let mut tile = [0.0f32; ROWS * PANEL];
        for g in 0..nq.div_ceil(ROWS) {
            let rows = (nq - g * ROWS).min(ROWS);
            let mut qpad = vec![0.0f32; ROWS * cols];
            qpad[..rows * cols].copy_from_slice(&q[g * ROWS * cols..(g * ROWS + rows) * cols]);
            let mut states = vec![RowState::new(k); rows];
            for p in 0..nk.div_ceil(PANEL) {
                logits(kernel, &qpad, cols, bank.panel(p), &mut tile);
                for (r, s) in states.iter_mut().enumerate() {
                    let valid = (nk - p * PANEL).min(PANEL);
                    update(
                        kernel,
                        s,
                        &tile[r * PANEL..(r + 1) * PANEL],
                        valid,
                        bank.panel_centres(p),
                        (p * PANEL) as u32,
                    );
                }
            }
            for (r, s) in states.iter().enumerate() {
                let i = g * ROWS + r;
                let z: f32 = s.sum.iter().sum();
                for ch in 0..3 {
                    got[i * 3 + ch] = s.acc[ch].iter().sum::<f32>() / z;
                }
                for m in 0..k {
                    got_top[i * k + m] = s.top[m].1;
                }
            }
        }
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        assert_eq!(got_top, want_top);
    }

    #[test]
    fn every_kernel_matches_the_direct_computation() {
        check(Simd::Portable);
        let detected = crate::kernels::plan().simd;
        check(detected);
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            check(Simd::Avx2);
        }
    }

    #[test]
    fn attend_matches_the_direct_computation_with_peaked_weights() {
        // Large logits (sharp softmax) exercise the running-maximum rescaling.
        let mut rng = Rng::new(9);
        let (nq, nk, cols, k) = (130, 333, 21, 4);
        let q = random(nq * cols, 3.0, &mut rng);
        let keys = random(nk * cols, 3.0, &mut rng);
        let cen = random(nk * 3, 1.0, &mut rng);
        let bank = KeyPanels::new(&keys, &cen, cols);
        let got = attend(&q, nq, &bank, k);
        let (want, want_top) = direct(&q, nq, &keys, &cen, cols, k);
        for (a, b) in got.centres.iter().zip(&want) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
        assert_eq!(got.top, want_top);
    }
}
