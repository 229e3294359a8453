//! Convolutions on padded grids: one direct kernel for every "same" convolution (3×3, 1×1,
//! the 2×2 form of a stride-2 3×3 after space-to-depth) and for every input gradient (the
//! same kernel with flipped taps and swapped channels), for sums of convolutions with a
//! residual (`conv_sum`), and for the four phases of an up-convolution (`UpPacked`); weight
//! gradients are matrix products per tap (`gemm`; a small kernel where gemm's blocks would be
//! mostly padding).
//!
//! The kernel keeps a register block of 14 positions × 32 output channels (28 AVX-512
//! accumulators) and streams taps × input channels through it: one broadcast per position
//! and two weight vectors per input channel — 28 FMAs per 16 loads. Outputs are written once.
//! Without AVX-512 the same loops run as plain Rust (`portable`).

use rayon::prelude::*;

use super::grid::Grid;
use crate::kernels::simd::Simd;

/// Positions per register block with two vectors of output channels (28 accumulators) and
/// with one (24); the longer block is also the shortest range the vector path takes.
const R2: usize = 14;
const R1: usize = 24;
const R: usize = if R1 > R2 { R1 } else { R2 };

/// Convolution weights packed for the kernel: taps × cin × cout_pad, with tap offsets (dy, dx).
#[derive(Clone, Debug)]
pub struct Packed {
    pub taps: Vec<(isize, isize)>,
    pub cin: usize,
    pub cout: usize,
    /// cout rounded up to 16 (one vector).
    pub cout_pad: usize,
    pub w: Vec<f32>,
}

impl Packed {
    /// From the [cout, cin, k, k] layout (burn and PyTorch) of a stride-1 convolution with
    /// padding k/2 (k = 1 or 3).
    pub fn from_oihw(w: &[f32], cout: usize, cin: usize, k: usize) -> Packed {
        let r = (k / 2) as isize;
        let taps: Vec<(isize, isize)> =
            (0..k as isize).flat_map(|dy| (0..k as isize).map(move |dx| (dy - r, dx - r))).collect();
        let cout_pad = cout.div_ceil(16) * 16;
        let mut out = vec![0.0f32; k * k * cin * cout_pad];
        // In output order (sequential writes, strided reads): packing runs every learning step.
        for (row, dst) in out.chunks_exact_mut(cout_pad).enumerate() {
            let (t, i) = (row / cin, row % cin);
            for (o, d) in dst.iter_mut().enumerate().take(cout) {
                *d = w[(o * cin + i) * k * k + t];
            }
        }
        Packed { taps, cin, cout, cout_pad, w: out }
    }

    /// A stride-2 3×3 convolution (padding 1) as a 2×2 convolution over the space-to-depth
    /// grid (4·cin channels ordered (py, px, c)): input row 2y+dy−1 is s2d row y+⌊(dy−1)/2⌋,
    /// parity (dy−1) mod 2.
    pub fn from_oihw_stride2(w: &[f32], cout: usize, cin: usize) -> Packed {
        let taps = vec![(-1, -1), (-1, 0), (0, -1), (0, 0)];
        let cin4 = 4 * cin;
        let cout_pad = cout.div_ceil(16) * 16;
        let mut out = vec![0.0f32; 4 * cin4 * cout_pad];
        let split = |d: isize| -> (isize, usize) { ((d - 1).div_euclid(2), (d - 1).rem_euclid(2) as usize) };
        for o in 0..cout {
            for i in 0..cin {
                for dy in 0..3isize {
                    for dx in 0..3isize {
                        let ((ty, py), (tx, px)) = (split(dy), split(dx));
                        let t = taps.iter().position(|&p| p == (ty, tx)).expect("tap");
                        let ch = (py * 2 + px) * cin + i;
                        out[(t * cin4 + ch) * cout_pad + o] = w[((o * cin + i) * 3 + dy as usize) * 3 + dx as usize];
                    }
                }
            }
        }
        Packed { taps, cin: cin4, cout, cout_pad, w: out }
    }

    /// Weights of the input gradient: dx = conv(dy) with taps negated and channels swapped.
    pub fn transposed(&self) -> Packed {
        let (cin, cout) = (self.cout, self.cin);
        let cout_pad = cout.div_ceil(16) * 16;
        let nt = self.taps.len();
        let mut w = vec![0.0f32; nt * cin * cout_pad];
        for (row, dst) in w.chunks_exact_mut(cout_pad).enumerate() {
            let (t, o) = (row / cin, row % cin);
            for (i, d) in dst.iter_mut().enumerate().take(cout) {
                *d = self.w[(t * self.cin + i) * self.cout_pad + o];
            }
        }
        let taps = self.taps.iter().map(|&(dy, dx)| (-dy, -dx)).collect();
        Packed { taps, cin, cout, cout_pad, w }
    }

    /// The gradient of the packed weights back in [cout, cin, k, k] (stride-1 forms).
    pub fn grad_to_oihw(dw: &[f32], cout: usize, cin: usize, k: usize) -> Vec<f32> {
        let mut out = vec![0.0f32; cout * cin * k * k];
        // Per output channel in parallel: these rearrangements otherwise leave a core idle.
        out.par_chunks_mut(cin * k * k).enumerate().for_each(|(o, dst)| {
            for i in 0..cin {
                for t in 0..k * k {
                    dst[i * k * k + t] = dw[(t * cin + i) * cout + o];
                }
            }
        });
        out
    }

    /// The gradient of `from_oihw_stride2`'s packed weights back in [cout, cin, 3, 3].
    pub fn grad_to_oihw_stride2(dw: &[f32], cout: usize, cin: usize) -> Vec<f32> {
        let taps = [(-1isize, -1isize), (-1, 0), (0, -1), (0, 0)];
        let cin4 = 4 * cin;
        let split = |d: isize| -> (isize, usize) { ((d - 1).div_euclid(2), (d - 1).rem_euclid(2) as usize) };
        let mut out = vec![0.0f32; cout * cin * 9];
        out.par_chunks_mut(cin * 9).enumerate().for_each(|(o, dst)| {
            for i in 0..cin {
                for dy in 0..3isize {
                    for dx in 0..3isize {
                        let ((ty, py), (tx, px)) = (split(dy), split(dx));
                        let t = taps.iter().position(|&p| p == (ty, tx)).expect("tap");
                        let ch = (py * 2 + px) * cin + i;
                        dst[(i * 3 + dy as usize) * 3 + dx as usize] = dw[(t * cin4 + ch) * cout + o];
                    }
                }
            }
        });
        out
    }
}

/// A 3×3 convolution (padding 1) of a nearest-neighbour ×2 upsampled grid, computed on the
/// coarse grid: output pixel (2y+py, 2x+px) only sees coarse rows y + ⌊(py+ky−1)/2⌋, so each
/// of the four output phases is a 2×2 convolution of the coarse grid with summed weights —
/// 16 taps per coarse pixel instead of 36, and no upsampled copy.
#[derive(Clone, Debug)]
pub struct UpPacked {
    /// Phase py·2+px.
    pub phases: Vec<Packed>,
    pub cin: usize,
    pub cout: usize,
}

fn up_tap(p: usize, k: usize) -> isize {
    (p as isize + k as isize - 1).div_euclid(2)
}

impl UpPacked {
    pub fn from_oihw(w: &[f32], cout: usize, cin: usize) -> UpPacked {
        let cout_pad = cout.div_ceil(16) * 16;
        let phases = (0..4)
            .map(|ph| {
                let (py, px) = (ph / 2, ph % 2);
                let taps: Vec<(isize, isize)> = [py as isize - 1, py as isize]
                    .iter()
                    .flat_map(|&dy| [px as isize - 1, px as isize].into_iter().map(move |dx| (dy, dx)))
                    .collect();
                let mut out = vec![0.0f32; 4 * cin * cout_pad];
                for o in 0..cout {
                    for i in 0..cin {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let t =
                                    taps.iter().position(|&tp| tp == (up_tap(py, ky), up_tap(px, kx))).expect("tap");
                                out[(t * cin + i) * cout_pad + o] += w[((o * cin + i) * 3 + ky) * 3 + kx];
                            }
                        }
                    }
                }
                Packed { taps, cin, cout, cout_pad, w: out }
            })
            .collect();
        UpPacked { phases, cin, cout }
    }

    /// Gradients of the four phases' packed weights (each taps × cin × cout) back in
    /// [cout, cin, 3, 3]: every original weight was added into one tap of each phase.
    pub fn grad_to_oihw(&self, dws: &[Vec<f32>]) -> Vec<f32> {
        let (cin, cout) = (self.cin, self.cout);
        let mut out = vec![0.0f32; cout * cin * 9];
        out.par_chunks_mut(cin * 9).enumerate().for_each(|(o, dst)| {
            for (ph, dw) in dws.iter().enumerate() {
                let (py, px) = (ph / 2, ph % 2);
                let taps = &self.phases[ph].taps;
                for ky in 0..3 {
                    for kx in 0..3 {
                        let t = taps.iter().position(|&tp| tp == (up_tap(py, ky), up_tap(px, kx))).expect("tap");
                        for i in 0..cin {
                            dst[(i * 3 + ky) * 3 + kx] += dw[(t * cin + i) * cout + o];
                        }
                    }
                }
            }
        });
        out
    }

    /// conv3x3(upsample2(x)) + bias, at the fine resolution.
    pub fn forward(&self, x: &Grid, bias: &[f32]) -> Grid {
        let phases: Vec<Grid> = self.phases.iter().map(|p| conv(x, p, bias)).collect();
        super::profile::time("layout copies", || Grid::interleave(&phases))
    }

    /// Given the fine output's gradient: (dW [cout, cin, 3, 3], per-image bias gradient, dx coarse).
    pub fn backward(&self, x: &Grid, dy: &Grid) -> (Vec<f32>, Vec<f32>, Grid) {
        let dys = super::profile::time("layout copies", || dy.deinterleave());
        let mut dws = Vec::new();
        let mut db = vec![0.0f32; x.n * self.cout];
        let mut dx: Option<Grid> = None;
        for (p, d) in self.phases.iter().zip(&dys) {
            let (dw, dbp) = weight_grad(x, p, d);
            dws.push(dw);
            for (a, b) in db.iter_mut().zip(&dbp) {
                *a += b;
            }
            let part = conv(d, &p.transposed(), &vec![0.0; x.n * self.cin]);
            match &mut dx {
                Some(g) => g.data.iter_mut().zip(&part.data).for_each(|(a, b)| *a += b),
                None => dx = Some(part),
            }
        }
        (self.grad_to_oihw(&dws), db, dx.expect("four phases"))
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: the pointer is only written through by tasks that write disjoint position ranges
// of the output, which outlives them (the tasks are joined before it is returned).
unsafe impl Send for SendPtr {}
// SAFETY: as for Send: disjoint writes, joined before the output is used.
unsafe impl Sync for SendPtr {}

/// One input of a summed convolution.
pub struct Source<'a> {
    pub x: &'a Grid,
    pub p: &'a Packed,
}

/// An input as the kernel sees it: pointer, channels, tap offsets in floats, packed weights.
struct KSrc {
    x: *const f32,
    cin: usize,
    offs: Vec<isize>,
    w: *const f32,
}

/// out = conv(x) + bias (bias: n × cout, one row per image). Same geometry as x, cout channels,
/// border zero.
pub fn conv(x: &Grid, p: &Packed, bias: &[f32]) -> Grid {
    conv_sum(&[Source { x, p }], bias, None)
}

/// out = Σ conv(x_k) + bias (+ residual): a residual block's second convolution, its skip
/// convolution and the residual sum in one pass over the output.
pub fn conv_sum(srcs: &[Source<'_>], bias: &[f32], residual: Option<&Grid>) -> Grid {
    conv_sum_with(crate::kernels::plan().simd, srcs, bias, residual)
}

fn conv_sum_with(kernel: Simd, srcs: &[Source<'_>], bias: &[f32], residual: Option<&Grid>) -> Grid {
    let g = srcs[0].x;
    let (cout, cout_pad) = (srcs[0].p.cout, srcs[0].p.cout_pad);
    for s in srcs {
        assert_eq!((s.x.n, s.x.h, s.x.w), (g.n, g.h, g.w), "same geometry");
        assert_eq!(s.x.c, s.p.cin, "input channels");
        assert_eq!(s.p.cout, cout, "output channels");
    }
    if let Some(r) = residual {
        assert_eq!((r.n, r.h, r.w, r.c), (g.n, g.h, g.w, cout), "residual shape");
    }
    assert_eq!(bias.len(), g.n * cout, "bias per image");
    let mut out = Grid::for_overwrite(g.n, g.h, g.w, cout);
    let wp = g.wp() as isize;
    let ksrcs: Vec<KSrc> = srcs
        .iter()
        .map(|s| KSrc {
            x: s.x.data.as_ptr(),
            cin: s.p.cin,
            offs: s.p.taps.iter().map(|&(dy, dx)| (dy * wp + dx) * s.p.cin as isize).collect(),
            w: s.p.w.as_ptr(),
        })
        .collect();
    let rows_per_task = ((R + 2).div_ceil(g.wp())).max((g.n * g.h).div_ceil(8 * rayon::current_num_threads()));
    let tasks: Vec<(usize, usize, usize)> = (0..g.n)
        .flat_map(|b| {
            let (s, _) = g.rows_range(b);
            (0..g.h).step_by(rows_per_task).map(move |y| (b, s + y * (g.w + 2), (g.h - y).min(rows_per_task)))
        })
        .collect();
    let outp = SendPtr(out.data.as_mut_ptr());
    let res = ConstPtr(residual.map_or(std::ptr::null(), |r| r.data.as_ptr()));
    let ks = KSrcs(&ksrcs);
    tasks.par_iter().for_each(|&(b, start, rows)| {
        let (outp, res, ks) = (outp, res, ks);
        // Skip the range's first and last positions (the left border of its first row, the
        // right border of its last): garbage anyway, and their outer taps would leave the image.
        let (start, len) = (start + 1, rows * g.wp() - 2);
        let mut bias_pad = vec![0.0f32; cout_pad];
        bias_pad[..cout].copy_from_slice(&bias[b * cout..(b + 1) * cout]);
        let d = Dst { cout, cout_pad, bias: &bias_pad, res: res.0, out: outp.0 };
        // SAFETY: `run`'s contract: [start, start+len) lies inside image b's rows of every grid
        // (all have the same geometry, asserted above) and every 3×3 tap offset from it stays
        // inside that image's padded rows (the first and last position were skipped); the
        // packed weights hold taps·cin·cout_pad values; the output and residual grids have
        // cout channels per position (asserted); tasks write disjoint ranges; `kernel` comes
        // from `kernels::plan()` (or a test that checked the CPU).
        unsafe { run(kernel, ks.0, d, start, len) };
    });
    out.zero_side_borders();
    out
}

#[derive(Clone, Copy)]
struct ConstPtr(*const f32);
// SAFETY: points into a grid that is only read while the tasks run and outlives them.
unsafe impl Send for ConstPtr {}
// SAFETY: as for Send: shared reads only.
unsafe impl Sync for ConstPtr {}

#[derive(Clone, Copy)]
struct KSrcs<'a>(&'a [KSrc]);
// SAFETY: the raw pointers in KSrc point into grids and weights borrowed for 'a, only read
// while the tasks run.
unsafe impl Send for KSrcs<'_> {}
// SAFETY: as for Send: shared reads only.
unsafe impl Sync for KSrcs<'_> {}

/// Whether this CPU has a vector form of the kernel (else the scene model stays on burn).
pub fn vectorised() -> bool {
    crate::kernels::plan().simd != Simd::Portable
}

/// Where a block of a summed convolution goes: output channels (and their padded count), the
/// bias row of the image, the residual to add (or null) and the output grid.
#[derive(Clone, Copy)]
struct Dst<'a> {
    cout: usize,
    cout_pad: usize,
    bias: &'a [f32],
    res: *const f32,
    out: *mut f32,
}

/// Positions [start, start+len) of the output, all output channels, with the kernel form the
/// CPU offers.
///
/// # Safety
/// - `kernel` is a form this CPU runs (as `kernels::plan()` reports it);
/// - for every source, each position q in [start, start+len) shifted by each of its tap
///   offsets (`q·cin + off`, plus up to cin − 1) is inside the allocation `x` points into, and
///   `w` points at taps·cin·cout_pad values;
/// - `d.bias` holds cout_pad values; `d.out` (and `d.res` unless null) point at grids with
///   `cout` values per position that contain every q in [start, start+len);
/// - no other thread reads or writes `d.out` at those positions meanwhile.
unsafe fn run(kernel: Simd, srcs: &[KSrc], d: Dst<'_>, start: usize, len: usize) {
    let cout_pad = d.cout_pad;
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 if len >= R => {
            let mut co = 0;
            while co < cout_pad {
                let two = co + 32 <= cout_pad;
                let rows = if two { R2 } else { R1 };
                let mut q = start;
                loop {
                    let q0 = q.min(start + len - rows);
                    // SAFETY: kernel is Avx512, so the CPU has it; positions q0..q0+rows lie in
                    // [start, start+len) (len ≥ R ≥ rows), channels co..co+16·V ≤ cout_pad:
                    // this function's contract covers every access.
                    unsafe {
                        if two {
                            avx512::block::<2, R2>(srcs, d, q0, co)
                        } else {
                            avx512::block::<1, R1>(srcs, d, q0, co)
                        }
                    }
                    q += rows;
                    if q >= start + len {
                        break;
                    }
                }
                co += if two { 32 } else { 16 };
            }
        }
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 if len >= avx2::R => {
            let mut q = start;
            loop {
                let q0 = q.min(start + len - avx2::R);
                let mut co = 0;
                while co < cout_pad {
                    // SAFETY: kernel is Avx2, so the CPU has AVX2 and FMA; positions
                    // q0..q0+avx2::R lie in [start, start+len), channels co..co+16 ≤ cout_pad:
                    // this function's contract covers every access.
                    unsafe { avx2::block(srcs, d, q0, co) };
                    co += 16;
                }
                q += avx2::R;
                if q >= start + len {
                    break;
                }
            }
        }
        // SAFETY: the same positions and buffers as this function's contract.
        _ => unsafe { portable(srcs, d, start, len) },
    }
}

/// # Safety
/// As for `run` (any CPU).
unsafe fn portable(srcs: &[KSrc], d: Dst<'_>, start: usize, len: usize) {
    let Dst { cout, cout_pad, bias, res, out } = d;
    let mut acc = vec![0.0f32; cout_pad];
    for q in start..start + len {
        acc.copy_from_slice(bias);
        if !res.is_null() {
            for (o, a) in acc.iter_mut().enumerate().take(cout) {
                // SAFETY: the residual grid has the output's shape.
                *a += unsafe { *res.add(q * cout + o) };
            }
        }
        for s in srcs {
            for (t, &off) in s.offs.iter().enumerate() {
                let xb = (q * s.cin) as isize + off;
                for ci in 0..s.cin {
                    // SAFETY: q·cin + off + ci is inside the source (the contract, ci < cin).
                    let v = unsafe { *s.x.offset(xb + ci as isize) };
                    // SAFETY: t < taps and ci < cin, so the row ends within taps·cin·cout_pad.
                    let wrow = unsafe { std::slice::from_raw_parts(s.w.add((t * s.cin + ci) * cout_pad), cout_pad) };
                    for (a, &wv) in acc.iter_mut().zip(wrow) {
                        *a += v * wv;
                    }
                }
            }
        }
        for (o, &a) in acc.iter().enumerate().take(cout) {
            // SAFETY: q < positions of the output grid, o < cout.
            unsafe { *out.add(q * cout + o) = a };
        }
    }
}

/// The AVX2 + FMA form of the kernel (16 registers): 6 positions × 16 output channels.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Dst, KSrc};
    use std::arch::x86_64::*;

    pub const R: usize = 6;

    fn mask(valid: usize) -> __m256i {
        let lanes: [i32; 8] = std::array::from_fn(|i| if i < valid { -1 } else { 0 });
        // SAFETY: reads 8 i32.
        unsafe { _mm256_loadu_si256(lanes.as_ptr() as *const __m256i) }
    }

    /// R positions from q0 × 16 output channels from co.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; positions q0..q0+R and channels co..co+16 ≤ cout_pad satisfy
    /// `run`'s contract.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn block(srcs: &[KSrc], d: Dst<'_>, q0: usize, co: usize) {
        let Dst { cout, cout_pad, bias, res, out } = d;
        let masks = [mask(cout.saturating_sub(co).min(8)), mask(cout.saturating_sub(co + 8).min(8))];
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for v in 0..2 {
            // SAFETY: bias has cout_pad ≥ co + 16 values; the residual has the output's shape
            // (masked to channels < cout).
            let b = unsafe { _mm256_loadu_ps(bias.as_ptr().add(co + 8 * v)) };
            for (r, a) in acc.iter_mut().enumerate() {
                a[v] = if res.is_null() {
                    b
                } else {
                    // SAFETY: position q0 + r is in the residual grid; the mask keeps channels < cout.
                    _mm256_add_ps(b, unsafe { _mm256_maskload_ps(res.add((q0 + r) * cout + co + 8 * v), masks[v]) })
                };
            }
        }
        for s in srcs {
            let cin = s.cin;
            for (t, &off) in s.offs.iter().enumerate() {
                // SAFETY: q0·cin + off is inside the source (`run`'s contract).
                let xb = unsafe { s.x.offset((q0 * cin) as isize + off) };
                // SAFETY: t < taps, co < cout_pad: inside the taps·cin·cout_pad weights.
                let wb = unsafe { s.w.add(t * cin * cout_pad + co) };
                for ci in 0..cin {
                    // SAFETY: ci < cin and co + 16 ≤ cout_pad: both 8-lane loads stay in the weights.
                    let (w0, w1) =
                        unsafe { (_mm256_loadu_ps(wb.add(ci * cout_pad)), _mm256_loadu_ps(wb.add(ci * cout_pad + 8))) };
                    for (r, a) in acc.iter_mut().enumerate() {
                        // SAFETY: position q0 + r < start + len, channel ci < cin: inside the source.
                        let b = _mm256_set1_ps(unsafe { *xb.add(r * cin + ci) });
                        a[0] = _mm256_fmadd_ps(b, w0, a[0]);
                        a[1] = _mm256_fmadd_ps(b, w1, a[1]);
                    }
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            for v in 0..2 {
                // SAFETY: position q0 + r is inside the output; the mask keeps channels < cout.
                unsafe { _mm256_maskstore_ps(out.add((q0 + r) * cout + co + 8 * v), masks[v], a[v]) };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Dst, KSrc};
    use std::arch::x86_64::*;

    /// R positions from q0 × (16·V) output channels from co.
    ///
    /// # Safety
    /// The CPU has AVX-512F; positions q0..q0+R and channels co..co+16·V ≤ cout_pad satisfy
    /// `run`'s contract.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn block<const V: usize, const R: usize>(srcs: &[KSrc], d: Dst<'_>, q0: usize, co: usize) {
        let Dst { cout, cout_pad, bias, res, out } = d;
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        let mut masks = [0xFFFFu16; V];
        for v in 0..V {
            let valid = cout.saturating_sub(co + 16 * v).min(16);
            masks[v] = if valid >= 16 { 0xFFFF } else { ((1u32 << valid) - 1) as u16 };
            // SAFETY: bias has cout_pad ≥ co + 16·V values.
            let b = unsafe { _mm512_loadu_ps(bias.as_ptr().add(co + 16 * v)) };
            for (r, a) in acc.iter_mut().enumerate() {
                a[v] = if res.is_null() {
                    b
                } else {
                    // SAFETY: the residual grid has the output's shape; masked to channels < cout.
                    _mm512_add_ps(b, unsafe { _mm512_maskz_loadu_ps(masks[v], res.add((q0 + r) * cout + co + 16 * v)) })
                };
            }
        }
        for s in srcs {
            let cin = s.cin;
            for (t, &off) in s.offs.iter().enumerate() {
                // SAFETY: q0·cin + off is inside the source (`run`'s contract).
                let xb = unsafe { s.x.offset((q0 * cin) as isize + off) };
                // SAFETY: t < taps, co < cout_pad: inside the taps·cin·cout_pad weights.
                let wb = unsafe { s.w.add(t * cin * cout_pad + co) };
                for ci in 0..cin {
                    let mut wv = [_mm512_setzero_ps(); V];
                    for (v, w) in wv.iter_mut().enumerate() {
                        // SAFETY: ci < cin and co + 16·V ≤ cout_pad: the load stays in the weights.
                        *w = unsafe { _mm512_loadu_ps(wb.add(ci * cout_pad + 16 * v)) };
                    }
                    for (r, a) in acc.iter_mut().enumerate() {
                        // SAFETY: position q0 + r < start + len, channel ci < cin: inside the source.
                        let b = _mm512_set1_ps(unsafe { *xb.add(r * cin + ci) });
                        for v in 0..V {
                            a[v] = _mm512_fmadd_ps(b, wv[v], a[v]);
                        }
                    }
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            for v in 0..V {
                // SAFETY: position q0 + r is inside the output; the mask keeps channels < cout.
                unsafe { _mm512_mask_storeu_ps(out.add((q0 + r) * cout + co + 16 * v), masks[v], a[v]) };
            }
        }
    }
}

/// Gradient of the packed weights (taps × cin × cout, unpadded) and of the per-image bias
/// (n × cout): dW[t][i][o] = Σ_q x[q + tap_t][i] · dy[q][o].
pub fn weight_grad(x: &Grid, p: &Packed, dy: &Grid) -> (Vec<f32>, Vec<f32>) {
    let (cin, cout) = (p.cin, p.cout);
    assert_eq!((x.c, dy.c), (cin, cout));
    // gemm is faster for the wide layers; the kernel wins where gemm's blocks are mostly
    // padding (conv_out's 3 output channels). Measured: docs/BENCHMARKS.md.
    #[cfg(target_arch = "x86_64")]
    if cout < 16 && crate::kernels::plan().simd == Simd::Avx512 {
        return (wgrad::weight_grad(x, p, dy), bias_grad(dy));
    }
    (weight_grad_gemm(x, p, dy), bias_grad(dy))
}

/// `weight_grad`'s dW through `gemm` (CPUs without AVX-512).
fn weight_grad_gemm(x: &Grid, p: &Packed, dy: &Grid) -> Vec<f32> {
    let (cin, cout) = (p.cin, p.cout);
    let wp = x.wp() as isize;
    let nt = p.taps.len();
    // One product per (image, tap) on large grids, reduced after; on small grids one per tap
    // over all images at once (the border rows between images hold dy = 0 and add nothing),
    // where per-image products are too short to pay for the call.
    let per_image = x.h * x.w >= 1024;
    let ranges: Vec<(usize, usize)> = if per_image {
        (0..x.n).map(|b| x.rows_range(b)).collect()
    } else {
        // One range per thread's share of the images, so that the jobs (ranges × taps) divide
        // evenly among the threads (9 taps on 2 threads would leave one idle for a ninth).
        let groups = rayon::current_num_threads().clamp(1, x.n);
        let per = x.n.div_ceil(groups);
        (0..x.n).step_by(per).map(|b| (x.rows_range(b).0, x.rows_range((b + per).min(x.n) - 1).1)).collect()
    };
    let jobs: Vec<(usize, usize)> = (0..ranges.len()).flat_map(|b| (0..nt).map(move |t| (b, t))).collect();
    let parts: Vec<Vec<f32>> = jobs
        .par_iter()
        .map(|&(b, t)| {
            // As in `conv`: the range's first and last positions (border columns, where dy is
            // zero) are skipped so that the outer taps stay inside the buffer.
            let (s, e) = ranges[b];
            let (s, e) = (s + 1, e - 1);
            let (dyy, dxx) = p.taps[t];
            let off = dyy * wp + dxx;
            let mut dw = vec![0.0f32; cin * cout];
            // SAFETY: positions s..e shifted by a tap stay inside image b's padded rows; dst is
            // cin × cout row-major.
            unsafe {
                gemm::gemm(
                    cin,
                    cout,
                    e - s,
                    dw.as_mut_ptr(),
                    1,
                    cout as isize,
                    false,
                    x.data.as_ptr().offset((s as isize + off) * cin as isize),
                    cin as isize,
                    1,
                    dy.data.as_ptr().add(s * cout),
                    1,
                    cout as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            dw
        })
        .collect();
    let mut dw = vec![0.0f32; nt * cin * cout];
    for (j, part) in parts.iter().enumerate() {
        let t = jobs[j].1;
        for (d, v) in dw[t * cin * cout..(t + 1) * cin * cout].iter_mut().zip(part) {
            *d += v;
        }
    }
    dw
}

/// Per-image sums of dy over positions (n × c).
fn bias_grad(dy: &Grid) -> Vec<f32> {
    let cout = dy.c;
    (0..dy.n)
        .into_par_iter()
        .flat_map_iter(|b| {
            let (s, e) = dy.rows_range(b);
            let mut acc = vec![0.0f32; cout];
            for px in dy.data[s * cout..e * cout].chunks_exact(cout) {
                for (a, v) in acc.iter_mut().zip(px) {
                    *a += v;
                }
            }
            acc
        })
        .collect()
}

/// Weight gradients with a register-blocked AVX-512 kernel: for each tap, a block of 8 input
/// channels × 32 output channels accumulates x[q + tap]ᵀ·dy[q] over a chunk of positions
/// (x and dy chunks stay in cache while every tap and channel block passes over them).
#[cfg(target_arch = "x86_64")]
mod wgrad {
    use super::{Grid, Packed};
    use rayon::prelude::*;
    use std::arch::x86_64::*;

    const RB: usize = 8;
    const CHUNK: usize = 96;

    /// dW of a convolution (taps × cin × cout) from its input `x` and output gradient `dy`.
    /// Panics unless the CPU has AVX-512F and the grids match the weights.
    pub fn weight_grad(x: &Grid, p: &Packed, dy: &Grid) -> Vec<f32> {
        assert!(crate::kernels::plan().simd == crate::kernels::simd::Simd::Avx512, "needs AVX-512F");
        assert_eq!((x.n, x.h, x.w, x.c, dy.c), (dy.n, dy.h, dy.w, p.cin, p.cout), "grids match the weights");
        let (cin, cout) = (p.cin, p.cout);
        let cout_pad = cout.div_ceil(16) * 16;
        let nt = p.taps.len();
        let wp = x.wp() as isize;
        let offs: Vec<isize> = p.taps.iter().map(|&(dy, dx)| dy * wp + dx).collect();
        // All images at once: border rows hold dy = 0. Skip the first and last positions so
        // that the outer taps stay inside the buffer.
        let (s0, e0) = (x.rows_range(0).0 + 1, x.rows_range(x.n - 1).1 - 1);
        let threads = rayon::current_num_threads().max(1);
        let per = (e0 - s0).div_ceil(threads * 4).max(CHUNK);
        let ranges: Vec<(usize, usize)> = (s0..e0).step_by(per).map(|s| (s, (s + per).min(e0))).collect();
        let partials: Vec<Vec<f32>> = ranges
            .par_iter()
            .map(|&(s, e)| {
                let mut dw = vec![0.0f32; nt * cin * cout_pad];
                let mut q = s;
                while q < e {
                    let qe = (q + CHUNK).min(e);
                    for (t, &off) in offs.iter().enumerate() {
                        let mut ci = 0;
                        while ci < cin {
                            let rows = (cin - ci).min(RB);
                            let mut co = 0;
                            while co < cout_pad {
                                let two = co + 32 <= cout_pad;
                                // SAFETY: AVX-512F asserted above; positions q..qe lie in
                                // [s0, e0), so shifted by a 3×3 tap they stay inside x's
                                // padded rows; channels ci..ci+rows ≤ cin; dw holds
                                // taps·cin·cout_pad values and co + 16·(1 + two) ≤ cout_pad.
                                unsafe {
                                    let dwp = dw.as_mut_ptr().add((t * cin + ci) * cout_pad + co);
                                    block(x, dy, q, qe, off, ci, rows, co, two, cout_pad, dwp)
                                };
                                co += if two { 32 } else { 16 };
                            }
                            ci += rows;
                        }
                    }
                    q = qe;
                }
                dw
            })
            .collect();
        // Sum the partials and drop the padding: taps × cin × cout.
        let mut out = vec![0.0f32; nt * cin * cout];
        for part in &partials {
            for r in 0..nt * cin {
                for o in 0..cout {
                    out[r * cout + o] += part[r * cout_pad + o];
                }
            }
        }
        out
    }

    /// # Safety
    /// The CPU has AVX-512F; every position in q0..q1 shifted by `off` is inside `x` (with
    /// channels ci..ci+rows ≤ x.c) and inside `dy`; `dw` points at `rows` rows of `cout_pad`
    /// values with co + 16·(1 + two) ≤ cout_pad.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn block(
        x: &Grid,
        dy: &Grid,
        q0: usize,
        q1: usize,
        off: isize,
        ci: usize,
        rows: usize,
        co: usize,
        two: bool,
        cout_pad: usize,
        dw: *mut f32,
    ) {
        // Dispatch the row count to a fixed-size kernel (registers are allocated statically).
        // SAFETY: R = rows (at most RB) and V = 1 + two: `kernel`'s contract is this one's.
        unsafe {
            macro_rules! go {
                ($r:literal) => {
                    if two {
                        kernel::<$r, 2>(x, dy, q0, q1, off, ci, co, cout_pad, dw)
                    } else {
                        kernel::<$r, 1>(x, dy, q0, q1, off, ci, co, cout_pad, dw)
                    }
                };
            }
            match rows {
                8 => go!(8),
                7 => go!(7),
                6 => go!(6),
                5 => go!(5),
                4 => go!(4),
                3 => go!(3),
                2 => go!(2),
                _ => go!(1),
            }
        }
    }

    /// # Safety
    /// As for `block`, with R rows and V blocks of 16 output channels.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn kernel<const R: usize, const V: usize>(
        x: &Grid,
        dy: &Grid,
        q0: usize,
        q1: usize,
        off: isize,
        ci: usize,
        co: usize,
        cout_pad: usize,
        dw: *mut f32,
    ) {
        let (cin, cout) = (x.c, dy.c);
        let mut masks = [0xFFFFu16; V];
        for (v, m) in masks.iter_mut().enumerate() {
            let valid = cout.saturating_sub(co + 16 * v).min(16);
            *m = if valid >= 16 { 0xFFFF } else { ((1u32 << valid) - 1) as u16 };
        }
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        // SAFETY: dw reads and writes stay in R rows × (co + 16·V ≤ cout_pad) values; dy loads
        // are at positions q < q1 inside dy, masked to channels < cout; x reads are at q + off
        // inside x, channels ci + r < x.c (the contract).
        unsafe {
            for (r, a) in acc.iter_mut().enumerate() {
                for (v, av) in a.iter_mut().enumerate() {
                    *av = _mm512_loadu_ps(dw.add(r * cout_pad + 16 * v));
                }
            }
            let xp = x.data.as_ptr();
            let dp = dy.data.as_ptr();
            for q in q0..q1 {
                let mut d = [_mm512_setzero_ps(); V];
                for (v, dv) in d.iter_mut().enumerate() {
                    *dv = _mm512_maskz_loadu_ps(masks[v], dp.add(q * cout + co + 16 * v));
                }
                let xb = xp.offset((q as isize + off) * cin as isize + ci as isize);
                for (r, a) in acc.iter_mut().enumerate() {
                    let b = _mm512_set1_ps(*xb.add(r));
                    for v in 0..V {
                        a[v] = _mm512_fmadd_ps(b, d[v], a[v]);
                    }
                }
            }
            for (r, a) in acc.iter().enumerate() {
                for (v, av) in a.iter().enumerate() {
                    _mm512_storeu_ps(dw.add(r * cout_pad + 16 * v), *av);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Direct NCHW convolution (stride s, padding 1 for k = 3, 0 for k = 1), no bias.
    fn direct(x: &[f32], shape: [usize; 4], wt: &[f32], cout: usize, k: usize, s: usize) -> Vec<f32> {
        let [n, cin, h, w] = shape;
        crate::kernels::reference::conv_nchw(x, n, cin, h, w, wt, cout, k, s, k / 2, k / 2, &vec![0.0; cout]).0
    }

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
        }
    }

    fn rand(n: usize, rng: &mut Rng) -> Vec<f32> {
        (0..n).map(|_| rng.range_f32(-1.0, 1.0)).collect()
    }

    #[test]
    fn convolutions_match_the_direct_computation() {
        let mut rng = Rng::new(3);
        // Channel counts that exercise one and two vectors, masked stores and short rows.
        for &(n, cin, cout, h, w, k) in
            &[(2, 5, 3, 6, 7, 3), (1, 16, 40, 5, 9, 3), (2, 8, 32, 4, 4, 1), (1, 3, 16, 3, 2, 3)]
        {
            let x = rand(n * cin * h * w, &mut rng);
            let wt = rand(cout * cin * k * k, &mut rng);
            let want = direct(&x, [n, cin, h, w], &wt, cout, k, 1);
            let g = Grid::from_nchw(&x, n, cin, h, w);
            let got = conv(&g, &Packed::from_oihw(&wt, cout, cin, k), &vec![0.0; n * cout]);
            close(&got.to_nchw(cout), &want);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn weight_gradient_kernel_matches_gemm() {
        if crate::kernels::plan().simd != Simd::Avx512 {
            return;
        }
        let mut rng = Rng::new(9);
        // Channel counts with partial row blocks (11) and partial vectors (3, 40).
        for &(n, cin, cout, h, w) in &[(3, 11, 32, 9, 7), (2, 32, 3, 6, 5), (1, 16, 40, 40, 33)] {
            let x = Grid::from_nchw(&rand(n * cin * h * w, &mut rng), n, cin, h, w);
            let dy = Grid::from_nchw(&rand(n * cout * h * w, &mut rng), n, cout, h, w);
            let p = Packed::from_oihw(&rand(cout * cin * 9, &mut rng), cout, cin, 3);
            close(&wgrad::weight_grad(&x, &p, &dy), &weight_grad_gemm(&x, &p, &dy));
        }
    }

    #[test]
    fn summed_convolutions_with_a_residual() {
        let mut rng = Rng::new(6);
        let (n, h, w, c1, c2, cout) = (2, 5, 7, 24, 40, 48);
        let x1 = Grid::from_nchw(&rand(n * c1 * h * w, &mut rng), n, c1, h, w);
        let x2 = Grid::from_nchw(&rand(n * c2 * h * w, &mut rng), n, c2, h, w);
        let res = Grid::from_nchw(&rand(n * cout * h * w, &mut rng), n, cout, h, w);
        let p1 = Packed::from_oihw(&rand(cout * c1 * 9, &mut rng), cout, c1, 3);
        let p2 = Packed::from_oihw(&rand(cout * c2, &mut rng), cout, c2, 1);
        let bias = rand(n * cout, &mut rng);
        let got = conv_sum(&[Source { x: &x1, p: &p1 }, Source { x: &x2, p: &p2 }], &bias, Some(&res));
        let a = conv(&x1, &p1, &bias);
        let b = conv(&x2, &p2, &vec![0.0; n * cout]);
        let want: Vec<f32> = a.data.iter().zip(&b.data).zip(&res.data).map(|((a, b), r)| a + b + r).collect();
        close(&got.data, &want);
    }

    #[test]
    fn upsampled_convolution_on_the_coarse_grid() {
        let mut rng = Rng::new(8);
        let (n, cin, cout, h, w) = (2, 5, 20, 3, 4);
        let x = rand(n * cin * h * w, &mut rng);
        let wt = rand(cout * cin * 9, &mut rng);
        let g = Grid::from_nchw(&x, n, cin, h, w);
        let up = UpPacked::from_oihw(&wt, cout, cin);
        let want = direct(&g.upsample2().to_nchw(cin), [n, cin, 2 * h, 2 * w], &wt, cout, 3, 1);
        let out = up.forward(&g, &vec![0.0; n * cout]);
        close(&out.to_nchw(cout), &want);
        // Gradients against the plain path (upsample, 3×3 conv, upsample's gradient).
        let r = Grid::from_nchw(&rand(n * cout * 4 * h * w, &mut rng), n, cout, 2 * h, 2 * w);
        let (dw, _, dx) = up.backward(&g, &r);
        let plain = Packed::from_oihw(&wt, cout, cin, 3);
        let (dwp, _) = weight_grad(&g.upsample2(), &plain, &r);
        close(&dw, &Packed::grad_to_oihw(&dwp, cout, cin, 3));
        let dxp = conv(&r, &plain.transposed(), &vec![0.0; n * cin]).upsample2_backward();
        close(&dx.data, &dxp.data);
    }

    #[test]
    fn portable_kernel_matches_the_vector_kernel() {
        // What CPUs without AVX-512 run, against what this one runs (the same where it has none).
        let mut rng = Rng::new(10);
        let (n, h, w, c1, cout) = (2, 6, 9, 20, 40);
        let x = Grid::from_nchw(&rand(n * c1 * h * w, &mut rng), n, c1, h, w);
        let res = Grid::from_nchw(&rand(n * cout * h * w, &mut rng), n, cout, h, w);
        let p = Packed::from_oihw(&rand(cout * c1 * 9, &mut rng), cout, c1, 3);
        let bias = rand(n * cout, &mut rng);
        let a = conv_sum_with(Simd::Portable, &[Source { x: &x, p: &p }], &bias, Some(&res));
        let b = conv_sum_with(crate::kernels::plan().simd, &[Source { x: &x, p: &p }], &bias, Some(&res));
        close(&a.data, &b.data);
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            let c = conv_sum_with(Simd::Avx2, &[Source { x: &x, p: &p }], &bias, Some(&res));
            close(&a.data, &c.data);
        }
    }

    #[test]
    fn stride_two_through_space_to_depth() {
        let mut rng = Rng::new(4);
        let (n, cin, cout, h, w) = (2, 6, 20, 8, 6);
        let x = rand(n * cin * h * w, &mut rng);
        let wt = rand(cout * cin * 9, &mut rng);
        let want = direct(&x, [n, cin, h, w], &wt, cout, 3, 2);
        let g = Grid::from_nchw(&x, n, cin, h, w).space_to_depth();
        let got = conv(&g, &Packed::from_oihw_stride2(&wt, cout, cin), &vec![0.0; n * cout]);
        close(&got.to_nchw(cout), &want);
    }

    #[test]
    fn gradients_match_finite_differences_of_a_linear_loss() {
        // loss = Σ out·r; d loss/dx = conv_transposed(r), d loss/dW = weight_grad(x, r).
        let mut rng = Rng::new(5);
        for stride2 in [false, true] {
            let (n, cin, cout, h, w) = (2, 4, 6, 6, 4);
            let x = rand(n * cin * h * w, &mut rng);
            let wt = rand(cout * cin * 9, &mut rng);
            let g0 = Grid::from_nchw(&x, n, cin, h, w);
            let (g, p) = if stride2 {
                (g0.space_to_depth(), Packed::from_oihw_stride2(&wt, cout, cin))
            } else {
                (g0.clone(), Packed::from_oihw(&wt, cout, cin, 3))
            };
            let out = conv(&g, &p, &vec![0.0; n * cout]);
            let r = Grid::from_nchw(&rand(n * cout * out.h * out.w, &mut rng), n, cout, out.h, out.w);
            let loss = |out: &Grid| out.data.iter().zip(&r.data).map(|(a, b)| (a * b) as f64).sum::<f64>();
            let dx = conv(&r, &p.transposed(), &vec![0.0; n * p.cin]);
            let dx = if stride2 { dx.depth_to_space() } else { dx };
            let (dwp, _) = weight_grad(&g, &p, &r);
            let dw = if stride2 {
                Packed::grad_to_oihw_stride2(&dwp, cout, cin)
            } else {
                Packed::grad_to_oihw(&dwp, cout, cin, 3)
            };
            let eps = 1e-2f32;
            for probe in [0usize, 7, 29, 50] {
                let mut x2 = x.clone();
                x2[probe] += eps;
                let g2 = Grid::from_nchw(&x2, n, cin, h, w);
                let g2 = if stride2 { g2.space_to_depth() } else { g2 };
                let fd = (loss(&conv(&g2, &p, &vec![0.0; n * cout])) - loss(&out)) / eps as f64;
                let an = dx.to_nchw(cin)[probe] as f64;
                assert!((fd - an).abs() < 1e-2 * (1.0 + an.abs()), "dx[{probe}] {fd} vs {an}");
                let mut w2 = wt.clone();
                w2[probe] += eps;
                let p2 = if stride2 {
                    Packed::from_oihw_stride2(&w2, cout, cin)
                } else {
                    Packed::from_oihw(&w2, cout, cin, 3)
                };
                let fd = (loss(&conv(&g, &p2, &vec![0.0; n * cout])) - loss(&out)) / eps as f64;
                assert!((fd - dw[probe] as f64).abs() < 1e-2 * (1.0 + fd.abs()), "dw[{probe}] {fd} vs {}", dw[probe]);
            }
        }
    }
}
