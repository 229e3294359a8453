//! Matrix products through the `gemm` crate (its AVX-512 or AVX2 kernels, picked at run time)
//! on strided views of plain slices, and the large convolutions of Stable Diffusion as such
//! products: the input's taps gathered per position a block at a time (im2col; with the
//! border of a padded grid in memory, tap (dy, dx) of position q is position q + dy·(w+2)+dx)
//! times the weights read in place in PyTorch's [cout, cin, k, k] layout. One product per
//! block rather than one per tap: a per-tap product reads its weights with a stride of k²
//! and repacks them for every tap, which measured 2–4× slower on the 1280-channel layers.
//! `conv` (the scene model's direct kernel) is faster for its narrow layers; these products
//! are for hundreds of channels, where the kernel's register block would stream megabytes of
//! weights per few positions.

use rayon::prelude::*;

use super::grid::Grid;

/// A read-only matrix view: element (i, j) is `data[off + i·rs + j·cs]`.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub off: usize,
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> View<'a> {
    /// `rows` rows of `cols` values, one after the other.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> View<'a> {
        View { data, off: 0, rows, cols, rs: cols, cs: 1 }
    }

    /// The transposed view (no copy).
    pub fn t(self) -> View<'a> {
        View { rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs, ..self }
    }

    /// Whether every element lies inside `data`.
    fn inside(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || self.off + (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// `dst[off + i·ld + j] (+)= scale · (a·b)[i][j]`: accumulated onto what `dst` holds when
/// `accumulate`, else overwriting it. `parallel`: split over the rayon pool (false inside
/// tasks that are already parallel).
#[allow(clippy::too_many_arguments, reason = "a product's destination, operands and mode")]
pub fn matmul(
    dst: &mut [f32],
    off: usize,
    ld: usize,
    a: View<'_>,
    b: View<'_>,
    accumulate: bool,
    scale: f32,
    parallel: bool,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "inner dimensions");
    assert!(a.inside() && b.inside(), "operand views inside their slices");
    if m == 0 || n == 0 {
        return;
    }
    assert!(ld >= n && off + (m - 1) * ld + n <= dst.len(), "destination rows inside the slice");
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                dst[off + i * ld..off + i * ld + n].fill(0.0);
            }
        }
        return;
    }
    let threads = rayon::current_num_threads();
    // Few rows against a wide matrix (the 1280-channel layers at 8² and 16², projections of
    // a few hundred tokens): gemm's own split shares the rows, so every thread packs and
    // streams the whole matrix; split its columns instead, each thread a part of the weights.
    let split = parallel && threads > 1 && m <= 512 && n >= 128 * threads;
    let parts = if split { threads } else { 1 };
    let par = if parallel && !split { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    let width = n.div_ceil(parts).div_ceil(16) * 16;
    let dstp = SendPtr(dst.as_mut_ptr());
    let run = |j0: usize| {
        let cols = width.min(n - j0);
        // SAFETY: every element gemm reads is inside `a.data` or `b.data` (`inside`: the
        // views' last elements are; columns j0..j0+cols of b lie within its n columns), every
        // element it writes (rows m of `cols` values from column j0, ld apart, from off) is
        // inside `dst` (asserted for all n columns); `dst` is a unique borrow, so it overlaps
        // neither operand, and the parts write disjoint column ranges.
        unsafe {
            gemm::gemm(
                m,
                cols,
                k,
                dstp.get().add(off + j0),
                1,
                ld as isize,
                accumulate,
                a.data.as_ptr().add(a.off),
                a.cs as isize,
                a.rs as isize,
                b.data.as_ptr().add(b.off + j0 * b.cs),
                b.cs as isize,
                b.rs as isize,
                1.0,
                scale,
                false,
                false,
                false,
                par,
            )
        }
    };
    if parts == 1 {
        run(0);
    } else {
        (0..n).step_by(width).collect::<Vec<_>>().into_par_iter().for_each(run);
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);

impl SendPtr {
    /// Through a method, so that closures capture the whole (Send) wrapper.
    fn get(self) -> *mut f32 {
        self.0
    }
}
// SAFETY: the pointer is only written through by `matmul`'s parts, which write disjoint
// column ranges of the destination it borrows mutably until they are joined.
unsafe impl Send for SendPtr {}
// SAFETY: as for Send.
unsafe impl Sync for SendPtr {}

/// `x·w + bias` for `rows` rows of x, onto `residual` when given (which becomes the output):
/// a linear layer, its bias and the residual sum in one pass.
pub fn linear(x: &[f32], rows: usize, w: View<'_>, bias: Option<&[f32]>, residual: Option<Vec<f32>>) -> Vec<f32> {
    super::profile::time("linear (gemm)", || linear_inner(x, rows, w, bias, residual))
}

fn linear_inner(x: &[f32], rows: usize, w: View<'_>, bias: Option<&[f32]>, residual: Option<Vec<f32>>) -> Vec<f32> {
    let (din, dout) = (w.rows, w.cols);
    assert_eq!(x.len(), rows * din, "rows of the input width");
    // A recycled buffer, overwritten by the product: the transformer blocks' outputs reach
    // 84 MB, which the C allocator maps afresh for every call (a page fault per 4 KiB; the
    // widest layer ran at a fifth of gemm's speed). Callers give large temporaries back.
    let accumulate = residual.is_some();
    let mut out = match residual {
        Some(r) => {
            assert_eq!(r.len(), rows * dout, "residual rows");
            r
        }
        None => super::grid::pool::take_dirty(rows * dout),
    };
    matmul(&mut out, 0, dout, View::rows(x, rows, din), w, accumulate, 1.0, true);
    if let Some(b) = bias {
        assert_eq!(b.len(), dout, "one bias per output");
        out.par_chunks_mut(dout).for_each(|row| row.iter_mut().zip(b).for_each(|(o, b)| *o += b));
    }
    out
}

/// `Σ_t shift_t(x)·W_t + bias` on a padded grid for taps at offsets `offs` (each within one
/// pixel), onto `init` when given (which becomes the output: a residual). `w` is
/// [cout][cin][taps] — PyTorch's [cout, cin, k, k] for a k×k convolution with padding k/2 —
/// read in place as the (cin·taps) × cout matrix of one product. Its rows are gathered per
/// position (im2col) a block of positions at a time, so the copy stays small and the weights
/// are packed once per block, not once per tap. `bias`: one row of cout, or one per image
/// (n·cout). Borders zero.
pub fn conv_taps(x: &Grid, offs: &[(isize, isize)], w: &[f32], cout: usize, bias: &[f32], init: Option<Grid>) -> Grid {
    super::profile::time("convolution (gemm)", || {
        let (n, h, cin) = (x.n, x.h, x.c);
        let taps = offs.len();
        assert_eq!(w.len(), cout * cin * taps, "weights [cout][cin][taps]");
        assert!(offs.iter().all(|&(dy, dx)| dy.abs() <= 1 && dx.abs() <= 1), "taps within the border");
        let mut out = with_bias(x, cout, bias, init);
        let wp = x.wp();
        // Every position from the first image's second to the last image's second-to-last:
        // each tap's shift stays inside the buffer; what lands on borders is zeroed after.
        let (s, e) = (x.rows_range(0).0 + 1, x.rows_range(n - 1).1 - 1);
        let k = cin * taps;
        let shifts: Vec<isize> = offs.iter().map(|&(dy, dx)| dy * wp as isize + dx).collect();
        let wv = View { data: w, off: 0, rows: k, cols: cout, rs: 1, cs: k };
        let t0 = std::time::Instant::now();
        // About 8 MiB of gathered rows per block.
        let block = ((2 << 20) / k).max(64).min(e - s);
        let mut cols = vec![0.0f32; block * k];
        for b0 in (s..e).step_by(block) {
            let rows = block.min(e - b0);
            cols[..rows * k].par_chunks_mut(k).enumerate().for_each(|(r, dst)| {
                let q = (b0 + r) as isize;
                for (t, &sh) in shifts.iter().enumerate() {
                    let p = (q + sh) as usize * cin;
                    for (ci, &v) in x.data[p..p + cin].iter().enumerate() {
                        dst[ci * taps + t] = v;
                    }
                }
            });
            matmul(&mut out.data, b0 * cout, cout, View::rows(&cols, rows, k), wv, true, 1.0, true);
        }
        if super::profile::enabled() {
            let label = match h {
                64.. => "conv gemm 64²+",
                32..=63 => "conv gemm 32²",
                16..=31 => "conv gemm 16²",
                _ => "conv gemm 8²",
            };
            super::profile::add_flops(label, 2.0 * ((e - s) * k * cout) as f64 / 1e9, t0.elapsed().as_secs_f64());
        }
        out.zero_borders();
        out
    })
}

/// The tap offsets of a k×k convolution with padding k/2, in PyTorch's kernel order.
fn square_taps(k: usize) -> Vec<(isize, isize)> {
    let r = (k / 2) as isize;
    (0..k * k).map(|t| ((t / k) as isize - r, (t % k) as isize - r)).collect()
}

/// A stride-1 "same" convolution from [cout, cin, k, k] weights (k = 1 or 3).
pub fn conv_oihw(x: &Grid, w: &[f32], cout: usize, k: usize, bias: &[f32], init: Option<Grid>) -> Grid {
    assert!(k == 1 || k == 3, "1×1 or 3×3");
    if k == 1 {
        return conv_1x1(x, w, cout, bias, init);
    }
    conv_taps(x, &square_taps(k), w, cout, bias, init)
}

/// The output grid of a stride-1 convolution of `x` to `cout` channels, holding `init` (a
/// residual) when given plus `bias` (cout values, or n·cout: one row per image) everywhere,
/// borders included (the convolution zeroes them after).
pub fn with_bias(x: &Grid, cout: usize, bias: &[f32], init: Option<Grid>) -> Grid {
    let (n, h, wd) = (x.n, x.h, x.w);
    let mut out = match init {
        Some(g) => {
            assert_eq!((g.n, g.h, g.w, g.c), (n, h, wd, cout), "the residual's shape");
            g
        }
        None => Grid::zeros(n, h, wd, cout),
    };
    let per_image = bias.len() == n * cout;
    assert!(per_image || bias.len() == cout, "bias: cout or n·cout values");
    let image = (h + 2) * x.wp();
    out.data.par_chunks_mut(cout).enumerate().for_each(|(q, px)| {
        let b = if per_image { (q / image).min(n - 1) } else { 0 };
        px.iter_mut().zip(&bias[b * cout..(b + 1) * cout]).for_each(|(o, v)| *o += v);
    });
    out
}

/// A 1×1 convolution: one product over the grid as it lies (borders included, zeroed after).
fn conv_1x1(x: &Grid, w: &[f32], cout: usize, bias: &[f32], init: Option<Grid>) -> Grid {
    let cin = x.c;
    assert_eq!(w.len(), cout * cin, "weights [cout][cin]");
    let mut out = with_bias(x, cout, bias, init);
    let rows = x.data.len() / cin;
    let wv = View { data: w, off: 0, rows: cin, cols: cout, rs: 1, cs: cin };
    super::profile::time("convolution (gemm)", || {
        matmul(&mut out.data, 0, cout, View::rows(&x.data, rows, cin), wv, true, 1.0, true)
    });
    out.zero_borders();
    out
}

/// Which 3×3 kernel rows (or columns) feed coarse offset `d` ∈ {p−1, p} of output phase `p`
/// of an upsampled-by-2 input: upsampled row 2y+p+k−1 is coarse row y + ⌊(p+k−1)/2⌋.
fn phase_rows(p: usize, d: isize) -> impl Iterator<Item = usize> {
    (0..3).filter(move |&k| (p as isize + k as isize - 1).div_euclid(2) == d)
}

/// `conv3×3(upsample2(x)) + bias` (nearest-neighbour ×2, padding 1) computed on the coarse grid
/// as four 2×2 convolutions, one per output phase, with summed weights: 16 taps per coarse
/// pixel instead of 36 on the fine grid.
pub fn conv_up(x: &Grid, w: &[f32], cout: usize, bias: &[f32]) -> Grid {
    let cin = x.c;
    assert_eq!(w.len(), cout * cin * 9, "3×3 weights");
    let phases: Vec<Grid> = (0..4)
        .map(|ph| {
            let (py, px) = (ph / 2, ph % 2);
            let offs: Vec<(isize, isize)> = [py as isize - 1, py as isize]
                .into_iter()
                .flat_map(|dy| [px as isize - 1, px as isize].into_iter().map(move |dx| (dy, dx)))
                .collect();
            // [cout][cin][4 taps]: each output channel's summed kernels, in parallel.
            let mut pw = vec![0.0f32; cout * cin * 4];
            pw.par_chunks_mut(cin * 4).enumerate().for_each(|(o, dst)| {
                for (t, &(dy, dx)) in offs.iter().enumerate() {
                    for ky in phase_rows(py, dy) {
                        for kx in phase_rows(px, dx) {
                            for i in 0..cin {
                                dst[i * 4 + t] += w[(o * cin + i) * 9 + ky * 3 + kx];
                            }
                        }
                    }
                }
            });
            conv_taps(x, &offs, &pw, cout, bias, None)
        })
        .collect();
    super::profile::time("layout copies", || Grid::interleave(&phases))
}

/// A stride-2 3×3 convolution + bias: padding 1, or with `pad` 0 diffusers' asymmetric one
/// pixel on the right and bottom (the VAE encoder's). Even sides; the output is half each.
pub fn conv_down(x: &Grid, w: &[f32], cout: usize, bias: &[f32], pad: usize) -> Grid {
    assert!(pad <= 1 && x.h.is_multiple_of(2) && x.w.is_multiple_of(2), "even sides, padding 0 or 1");
    let (n, cin) = (x.n, x.c);
    assert_eq!(w.len(), cout * cin * 9, "3×3 weights");
    let (ho, wo) = (x.h / 2, x.w / 2);
    // im2col in PyTorch's weight order (channel-major, then tap): in the padded grid input
    // row 2y + ky − pad is stored at 2y + ky + 1 − pad (0 or h+1 is the zero border).
    let kc = 9 * cin;
    let mut cols = vec![0.0f32; n * ho * wo * kc];
    cols.par_chunks_mut(wo * kc).enumerate().for_each(|(r, dst)| {
        let (b, y) = (r / ho, r % ho);
        for xo in 0..wo {
            for t in 0..9 {
                let (ky, kx) = (t / 3, t % 3);
                let (gy, gx) = (2 * y + ky + 1 - pad, 2 * xo + kx + 1 - pad);
                let p = (b * (x.h + 2) + gy) * x.wp() + gx;
                for (ci, &v) in x.data[p * cin..(p + 1) * cin].iter().enumerate() {
                    dst[xo * kc + ci * 9 + t] = v;
                }
            }
        }
    });
    let rows = n * ho * wo;
    let mut out = vec![0.0f32; rows * cout];
    out.par_chunks_mut(cout).for_each(|o| o.copy_from_slice(bias));
    let wv = View { data: w, off: 0, rows: kc, cols: cout, rs: 1, cs: kc };
    super::profile::time("convolution (gemm)", || {
        matmul(&mut out, 0, cout, View::rows(&cols, rows, kc), wv, true, 1.0, true)
    });
    Grid::from_interior(&out, n, ho, wo, cout, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::reference::conv_nchw as reference;
    use crate::rng::Rng;

    fn close(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    #[test]
    fn products_follow_their_strides() {
        let a: Vec<f32> = Rng::new(1).normals(5 * 7);
        let b: Vec<f32> = Rng::new(2).normals(7 * 3);
        let mut want = [0.0f32; 5 * 3];
        for i in 0..5 {
            for j in 0..3 {
                want[i * 3 + j] = (0..7).map(|k| a[i * 7 + k] * b[k * 3 + j]).sum::<f32>() * 0.5 + 1.0;
            }
        }
        // b read transposed from its transpose; the result into column 2.. of 6-wide rows.
        let bt: Vec<f32> = (0..3 * 7).map(|i| b[(i % 7) * 3 + i / 7]).collect();
        let mut dst = vec![1.0f32; 5 * 6];
        matmul(&mut dst, 2, 6, View::rows(&a, 5, 7), View::rows(&bt, 3, 7).t(), true, 0.5, false);
        for i in 0..5 {
            assert!(close(&dst[i * 6 + 2..i * 6 + 5], &want[i * 3..i * 3 + 3]) < 1e-5);
            assert_eq!(dst[i * 6], 1.0, "columns outside the product untouched");
        } // Few rows, many columns, in parallel: the columns split between threads.
        let (m, k, n) = (40, 300, 270);
        let a: Vec<f32> = Rng::new(6).normals(m * k);
        let b: Vec<f32> = Rng::new(7).normals(k * n);
        let mut dst = vec![0.0f32; m * n];
        matmul(&mut dst, 0, n, View::rows(&a, m, k), View::rows(&b, k, n), false, 1.0, true);
        for i in 0..m {
            for j in 0..n {
                let want: f32 = (0..k).map(|x| a[i * k + x] * b[x * n + j]).sum();
                assert!((dst[i * n + j] - want).abs() < 1e-3, "({i}, {j})");
            }
        }
    }

    /// Every convolution form against the plain loop: same (3×3, 1×1, per-image bias, with a
    /// residual), stride 2 with either padding, and ×2 upsampling then 3×3.
    #[test]
    fn convolutions_match_the_plain_loop() {
        let (n, cin, cout, h, w) = (2, 5, 7, 6, 8);
        let x: Vec<f32> = Rng::new(3).normals(n * cin * h * w);
        let g = Grid::from_nchw(&x, n, cin, h, w);
        let bias: Vec<f32> = Rng::new(4).normals(cout);
        for k in [1, 3] {
            let wt: Vec<f32> = Rng::new(5 + k as u64).normals(cout * cin * k * k);
            let (want, _, _) = reference(&x, n, cin, h, w, &wt, cout, k, 1, k / 2, k / 2, &bias);
            let got = conv_oihw(&g, &wt, cout, k, &bias, None);
            assert!(close(&got.to_nchw(cout), &want) < 1e-4, "k = {k}");
            assert!(got.data[..got.wp() * cout].iter().all(|&v| v == 0.0), "top border zero");
            // A per-image bias and a residual.
            let res = Grid::from_nchw(&Rng::new(9).normals(n * cout * h * w), n, cout, h, w);
            let per: Vec<f32> = (0..n * cout).map(|i| i as f32).collect();
            let got = conv_oihw(&g, &wt, cout, k, &per, Some(res.clone()));
            let (plain, _, _) = reference(&x, n, cin, h, w, &wt, cout, k, 1, k / 2, k / 2, &vec![0.0; cout]);
            let r = res.to_nchw(cout);
            let want: Vec<f32> = (0..plain.len())
                .map(|i| plain[i] + r[i] + per[(i / (cout * h * w)) * cout + (i / (h * w)) % cout])
                .collect();
            assert!(close(&got.to_nchw(cout), &want) < 1e-4, "k = {k} with residual");
        }
        let wt: Vec<f32> = Rng::new(11).normals(cout * cin * 9);
        for pad in [0, 1] {
            let (want, ho, wo) = reference(&x, n, cin, h, w, &wt, cout, 3, 2, pad, 1, &bias);
            let got = conv_down(&g, &wt, cout, &bias, pad);
            assert_eq!((got.h, got.w), (ho, wo));
            assert!(close(&got.to_nchw(cout), &want) < 1e-4, "stride 2, pad {pad}");
        }
        let up: Vec<f32> = (0..n * cin * 4 * h * w)
            .map(|i| {
                let (plane, y, xx) = (i / (4 * h * w), (i / (2 * w)) % (2 * h), i % (2 * w));
                x[(plane * h + y / 2) * w + xx / 2]
            })
            .collect();
        let (want, _, _) = reference(&up, n, cin, 2 * h, 2 * w, &wt, cout, 3, 1, 1, 1, &bias);
        let got = conv_up(&g, &wt, cout, &bias);
        assert!(close(&got.to_nchw(cout), &want) < 1e-4, "upsampled");
    }

    /// The transformer layers' products of SD-2's guided pair (rows × din → dout), weights
    /// row-major and as burn holds a file's [dout, din] (a transposed view), by hand:
    /// `cargo test --release --lib matmul::tests::linear_timing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn linear_timing() {
        for (rows, din, dout) in [
            (8192, 320, 320),
            (8192, 320, 2560),
            (8192, 1280, 320),
            (2048, 640, 640),
            (2048, 640, 5120),
            (2048, 2560, 640),
            (512, 1280, 1280),
            (512, 1280, 10240),
            (512, 5120, 1280),
            (128, 1280, 1280),
        ] {
            let x: Vec<f32> = Rng::new(1).normals(rows * din);
            let w: Vec<f32> = Rng::new(2).normals(din * dout);
            let gflop = 2.0 * (rows * din * dout) as f64 / 1e9;
            let mut line = format!("{rows}×{din}→{dout}:");
            for (name, view) in
                [("row-major", View::rows(&w, din, dout)), ("transposed view", View::rows(&w, dout, din).t())]
            {
                let mut best = f64::MAX;
                for _ in 0..3 {
                    let t = std::time::Instant::now();
                    super::super::grid::pool::give(std::hint::black_box(linear(&x, rows, view, None, None)));
                    best = best.min(t.elapsed().as_secs_f64());
                }
                line += &format!("  {name} {:.1} ms ({:.0} GFLOP/s)", best * 1e3, gflop / best);
            }
            eprintln!("{line}");
        }
    }
}
