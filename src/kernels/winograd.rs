//! 3×3 stride-1 convolutions by Winograd's minimal filtering F(m×m, 3×3) (Lavin & Gray, "Fast
//! Algorithms for Convolutional Neural Networks", 2015): every m×m block of outputs from its
//! (m+2)² input tile as (m+2)² products over the channels instead of 9·m², so 2.25× fewer
//! multiplications for m = 2 and 4× for m = 4. Each tile's transforms run over channel rows
//! (the grids are channels-last); the (m+2)² products are `gemm` products of all the tiles of a
//! block against the transformed weights. Stable Diffusion's CPU forward (`sd::cpu_forward`)
//! uses it for the layers with many positions (where the products dominate and transforming
//! the weights, once a call, is cheap beside them); `form_for` is the rule, measured in
//! docs/BENCHMARKS.md.
//!
//! F(4×4, 3×3)'s transforms hold coefficients up to 8 and 1/24, so its f32 rounding error
//! grows with the input width: 1.6e-5 of a layer's largest output at 640 channels (the widest
//! it serves; tested below 5e-5), beside ≈ 5e-4 from storing the weights in f16.

use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

use super::grid::{Grid, pool};
use super::matmul::{View, matmul, with_bias};

/// One F(m×m, 3×3): α = m + 2 points; Y = Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A for input tile d (α×α),
/// kernel g (3×3) and output block Y (m×m), a correlation as convolution layers compute it.
pub struct Form {
    pub m: usize,
    /// Bᵀ, α×α, row-major.
    bt: &'static [f32],
    /// G, α×3.
    g: &'static [f32],
    /// Aᵀ, m×α.
    at: &'static [f32],
}

impl Form {
    fn alpha(&self) -> usize {
        self.m + 2
    }
}

/// F(2×2, 3×3): points 0, ±1, ∞. Tests and timings only: it was never faster than F(4×4)
/// beyond noise where either serves (docs/BENCHMARKS.md, session 18).
#[cfg(test)]
#[rustfmt::skip]
pub const F2: Form = Form {
    m: 2,
    bt: &[1.0, 0.0, -1.0, 0.0,
          0.0, 1.0, 1.0, 0.0,
          0.0, -1.0, 1.0, 0.0,
          0.0, 1.0, 0.0, -1.0],
    g: &[1.0, 0.0, 0.0,
         0.5, 0.5, 0.5,
         0.5, -0.5, 0.5,
         0.0, 0.0, 1.0],
    at: &[1.0, 1.0, 1.0, 0.0,
          0.0, 1.0, -1.0, -1.0],
};

/// F(4×4, 3×3): points 0, ±1, ±2, ∞.
#[rustfmt::skip]
pub const F4: Form = Form {
    m: 4,
    bt: &[4.0, 0.0, -5.0, 0.0, 1.0, 0.0,
          0.0, -4.0, -4.0, 1.0, 1.0, 0.0,
          0.0, 4.0, -4.0, -1.0, 1.0, 0.0,
          0.0, -2.0, -1.0, 2.0, 1.0, 0.0,
          0.0, 2.0, -1.0, -2.0, 1.0, 0.0,
          0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
    g: &[1.0 / 4.0, 0.0, 0.0,
         -1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0,
         -1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0,
         1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0,
         1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0,
         0.0, 0.0, 1.0],
    at: &[1.0, 1.0, 1.0, 1.0, 1.0, 0.0,
          0.0, 1.0, -1.0, 2.0, -2.0, 0.0,
          0.0, 1.0, 1.0, 4.0, 4.0, 0.0,
          0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
};

static OFF: AtomicBool = AtomicBool::new(false);

/// Turns the Winograd forms off (`false`) or on again for every later convolution: for
/// `realfill bench --sd-paths own,own-im2col`, which times both in one process.
pub fn enable(on: bool) {
    OFF.store(!on, Ordering::Relaxed);
}

/// The form for a 3×3 convolution on images of h×w positions, cin → cout channels, or none
/// (im2col products). Measured on SD-2's layers (`winograd::tests::timing`, by hand; figures in
/// docs/BENCHMARKS.md, session 18): F(4×4) is 1.5–2.9× faster than the products wherever an
/// image has ≥ 32² positions and both widths are ≥ 64; at 16² and 8² (1280 channels)
/// transforming 1.6 M weights every call costs more than the products save, and narrow layers
/// (the first and last) are too cheap to matter.
pub fn form_for(h: usize, w: usize, cin: usize, cout: usize) -> Option<&'static Form> {
    if OFF.load(Ordering::Relaxed) || cin < 64 || cout < 64 || h * w < 32 * 32 {
        return None;
    }
    Some(&F4)
}

/// The transformed weights for each output channel o: U[o][ξ][i] = (G g_{o,i} Gᵀ)[ξ] for the
/// α² points ξ, from PyTorch's [cout][cin][3][3]. Read by the products as the cin × cout matrix
/// of each ξ (column stride α²·cin). Computed on rows of cin values (each tap's weights of one
/// output channel gathered first), so that it vectorises: a scalar loop was slower than the
/// products it serves on the 1280-channel layers.
fn weights(f: &Form, w: &[f32], cin: usize, cout: usize) -> Vec<f32> {
    let a = f.alpha();
    // Every value is written below: a recycled buffer spares the page faults of a fresh one.
    let mut u = pool::take_dirty(cout * a * a * cin);
    u.par_chunks_mut(a * a * cin).enumerate().for_each_init(
        || (vec![0.0f32; 9 * cin], vec![0.0f32; a * 3 * cin]),
        |(taps, tmp), (o, dst)| {
            for (i, g) in w[o * cin * 9..(o + 1) * cin * 9].chunks_exact(9).enumerate() {
                for (k, &v) in g.iter().enumerate() {
                    taps[k * cin + i] = v;
                }
            }
            weight_rows(taps, f.g, a, cin, tmp, dst);
        },
    );
    u
}

multiversion!(weight_rows, weight_rows_inner, (taps: &[f32], g: &[f32], a: usize, c: usize, tmp: &mut [f32], dst: &mut [f32]));

/// dst[r·α+s] = Σ_l G[s][l]·(Σ_k G[r][k]·taps[k·3+l]) over rows of c values.
#[inline(always)]
fn weight_rows_inner(taps: &[f32], g: &[f32], a: usize, c: usize, tmp: &mut [f32], dst: &mut [f32]) {
    for (i, t) in tmp[..a * 3 * c].chunks_exact_mut(c).enumerate() {
        let (r, l) = (i / 3, i % 3);
        combine(t, (0..3).map(|k| (g[r * 3 + k], row(taps, c, k * 3 + l))));
    }
    for (i, d) in dst[..a * a * c].chunks_exact_mut(c).enumerate() {
        let (r, s) = (i / a, i % a);
        combine(d, (0..3).map(|l| (g[s * 3 + l], row(tmp, c, r * 3 + l))));
    }
}

/// Row i of rows of c values.
#[inline(always)]
fn row(v: &[f32], c: usize, i: usize) -> &[f32] {
    &v[i * c..(i + 1) * c]
}

/// dst = Σ k·row over the terms (rows of dst's length), zero coefficients skipped: each
/// transform is two passes of these, a matrix applied on the left then on the right.
#[inline(always)]
fn combine<'a>(dst: &mut [f32], terms: impl Iterator<Item = (f32, &'a [f32])>) {
    dst.fill(0.0);
    for (k, row) in terms {
        if k != 0.0 {
            dst.iter_mut().zip(row).for_each(|(d, v)| *d += k * v);
        }
    }
}

const NONE: usize = usize::MAX;

multiversion!(input_tile, input_tile_inner, (x: &[f32], at: &[usize], bt: &[f32], a: usize, c: usize, tmp: &mut [f32], dst: &mut [f32]));

/// dst[ξ=(r,s)] = (Bᵀ d B)[r][s] over c channels, where d[i][j] is the row of x at at[i·α+j]
/// (NONE: zero, outside the grid). tmp: α²·c floats. Whole rows of channels per coefficient:
/// passes of 16 channels with the tile in registers measured 2× slower.
#[inline(always)]
fn input_tile_inner(x: &[f32], at: &[usize], bt: &[f32], a: usize, c: usize, tmp: &mut [f32], dst: &mut [f32]) {
    // tmp[r][j] = Σ_i Bᵀ[r][i]·d[i][j], then dst[r][s] = Σ_j Bᵀ[s][j]·tmp[r][j].
    for (i, t) in tmp[..a * a * c].chunks_exact_mut(c).enumerate() {
        let (r, j) = (i / a, i % a);
        let inside = (0..a).filter(|&k| at[k * a + j] != NONE);
        combine(t, inside.map(|k| (bt[r * a + k], &x[at[k * a + j]..at[k * a + j] + c])));
    }
    for (i, d) in dst[..a * a * c].chunks_exact_mut(c).enumerate() {
        let (r, s) = (i / a, i % a);
        combine(d, (0..a).map(|j| (bt[s * a + j], row(tmp, c, r * a + j))));
    }
}

multiversion!(output_tile, output_tile_inner, (mt: &[f32], at: &[f32], a: usize, m: usize, c: usize, tmp: &mut [f32], dst: &mut [f32]));

/// dst[p][q] = (Aᵀ M A)[p][q] over c channels (m²·c floats), from the tile's products mt
/// (α²·c). tmp: m·α·c floats.
#[inline(always)]
fn output_tile_inner(mt: &[f32], at: &[f32], a: usize, m: usize, c: usize, tmp: &mut [f32], dst: &mut [f32]) {
    // tmp[p][s] = Σ_r Aᵀ[p][r]·M[r][s], then dst[p][q] = Σ_s Aᵀ[q][s]·tmp[p][s].
    for (i, t) in tmp[..m * a * c].chunks_exact_mut(c).enumerate() {
        let (p, s) = (i / a, i % a);
        combine(t, (0..a).map(|r| (at[p * a + r], row(mt, c, r * a + s))));
    }
    for (i, d) in dst[..m * m * c].chunks_exact_mut(c).enumerate() {
        let (p, q) = (i / m, i % m);
        combine(d, (0..a).map(|s| (at[q * a + s], row(tmp, c, p * a + s))));
    }
}

/// A stride-1 "same" 3×3 convolution from [cout, cin, 3, 3] weights by form `f`, as
/// `matmul::conv_oihw`: `bias` cout values or one row per image, onto `init` when given.
pub fn conv3x3(f: &Form, x: &Grid, w: &[f32], cout: usize, bias: &[f32], init: Option<Grid>) -> Grid {
    let mut out = with_bias(x, cout, bias, init);
    super::profile::time("convolution (winograd)", || conv3x3_onto(f, x, w, &mut out));
    out.zero_borders();
    out
}

/// `conv3×3(x) + bias` (stride 1, padding 1) by form `f`, onto `out`, which holds the bias (and
/// the residual) already; [cout][cin][3][3] weights. Borders of `out` stay as they are.
fn conv3x3_onto(f: &Form, x: &Grid, w: &[f32], out: &mut Grid) {
    let (n, h, wd, cin, cout) = (x.n, x.h, x.w, x.c, out.c);
    assert_eq!(w.len(), cout * cin * 9, "weights [cout][cin][3][3]");
    assert_eq!((out.n, out.h, out.w), (n, h, wd), "the output's grid");
    let (a, m) = (f.alpha(), f.m);
    let (a2, wp) = (a * a, x.wp());
    let (th, tw) = (h.div_ceil(m), wd.div_ceil(m));
    let t0 = std::time::Instant::now();
    let u = super::profile::time("winograd weights", || weights(f, w, cin, cout));
    // Blocks of whole tile rows, ≈ 8 M floats of transformed tiles and products each, so
    // that each block's output is a run of the grid's rows.
    let tile_rows: Vec<(usize, usize)> = (0..n).flat_map(|b| (0..th).map(move |ty| (b, ty))).collect();
    let per_row = tw * a2 * (cin + cout);
    let rows_per_block = ((8 << 20) / per_row).clamp(1, tile_rows.len());
    // Both written before they are read (the tiles' transforms, products that overwrite).
    let mut v = pool::take_dirty(rows_per_block * tw * a2 * cin);
    let mut mm = pool::take_dirty(rows_per_block * tw * a2 * cout);
    let (xh, xw) = (h + 2, wd + 2);
    for block in tile_rows.chunks(rows_per_block) {
        let tiles = block.len() * tw;
        super::profile::time("winograd input", || {
            v[..tiles * a2 * cin].par_chunks_mut(a2 * cin).enumerate().for_each_init(
                || (vec![0usize; a2], vec![0.0f32; a2 * cin]),
                |(at, tmp), (t, dst)| {
                    let (b, ty) = block[t / tw];
                    let tx = t % tw;
                    for i in 0..a {
                        for j in 0..a {
                            let (py, px) = (ty * m + i, tx * m + j);
                            at[i * a + j] = if py < xh && px < xw { ((b * xh + py) * wp + px) * cin } else { NONE };
                        }
                    }
                    input_tile(&x.data, at, f.bt, a, cin, tmp, dst);
                },
            )
        });
        super::profile::time("winograd products", || {
            for xi in 0..a2 {
                let lhs = View { data: &v, off: xi * cin, rows: tiles, cols: cin, rs: a2 * cin, cs: 1 };
                let rhs = View { data: &u, off: xi * cin, rows: cin, cols: cout, rs: 1, cs: a2 * cin };
                matmul(&mut mm, xi * cout, a2 * cout, lhs, rhs, false, 1.0, true);
            }
        });
        // Each tile row's output rows, carved from `out` in order (they do not overlap).
        let mut parts: Vec<(usize, &mut [f32])> = Vec::with_capacity(block.len());
        let mut rest: &mut [f32] = &mut out.data;
        let mut taken = 0;
        for (k, &(b, ty)) in block.iter().enumerate() {
            let start = (b * xh + 1 + ty * m) * wp * cout;
            let len = m.min(h - ty * m) * wp * cout;
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(start - taken);
            let (part, tail) = tail.split_at_mut(len);
            parts.push((k, part));
            rest = tail;
            taken = start + len;
        }
        super::profile::time("winograd output", || {
            parts.into_par_iter().for_each_init(
                || (vec![0.0f32; m * a * cout], vec![0.0f32; m * m * cout]),
                |(tmp, y), (k, part)| {
                    let (_, ty) = block[k];
                    let rows = m.min(h - ty * m);
                    for tx in 0..tw {
                        let t = k * tw + tx;
                        output_tile(&mm[t * a2 * cout..(t + 1) * a2 * cout], f.at, a, m, cout, tmp, y);
                        for p in 0..rows {
                            for q in 0..m.min(wd - tx * m) {
                                let o = (p * wp + 1 + tx * m + q) * cout;
                                part[o..o + cout]
                                    .iter_mut()
                                    .zip(&y[(p * m + q) * cout..(p * m + q + 1) * cout])
                                    .for_each(|(o, v)| *o += v);
                            }
                        }
                    }
                },
            )
        });
    }
    for buffer in [u, v, mm] {
        pool::give(buffer);
    }
    if super::profile::enabled() {
        let label = if f.m == 4 { "conv winograd F4 (direct GFLOP)" } else { "conv winograd F2 (direct GFLOP)" };
        super::profile::add_flops(label, 2.0 * (n * h * wd * 9 * cin * cout) as f64 / 1e9, t0.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// conv3×3 (padding 1) of a grid by the plain reference, laid out as the grid's interior
    /// (image, row, column, channel).
    fn direct(x: &Grid, w: &[f32], cout: usize) -> Vec<f64> {
        let (n, h, wd, cin) = (x.n, x.h, x.w, x.c);
        let (out, _, _) =
            crate::kernels::reference::conv_nchw(&x.to_nchw(cin), n, cin, h, wd, w, cout, 3, 1, 1, 1, &vec![0.0; cout]);
        let plane = h * wd;
        (0..n * plane * cout)
            .map(|i| {
                let (b, p, o) = (i / (plane * cout), (i / cout) % plane, i % cout);
                out[(b * cout + o) * plane + p] as f64
            })
            .collect()
    }

    /// Both forms against the direct sum, on sides that are and are not multiples of m (the
    /// last tiles run past the grid), with bias and residual already in the output, several
    /// blocks of tile rows and two images; borders untouched.
    #[test]
    fn both_forms_match_the_direct_convolution() {
        // The last: SD-2's widest input that takes F(4×4) (640 channels), where rounding grows most.
        let shapes = [(2, 7, 10, 5, 6), (1, 12, 9, 3, 4), (2, 8, 8, 16, 8), (1, 37, 33, 70, 90), (1, 16, 20, 640, 24)];
        for (n, h, wd, cin, cout) in shapes {
            let x = Grid::from_nchw(&Rng::new(1).normals(n * cin * h * wd), n, cin, h, wd);
            let w: Vec<f32> = Rng::new(2).normals(cout * cin * 9);
            let want = direct(&x, &w, cout);
            let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            for (f, tol) in [(&F2, 1e-6), (&F4, 5e-5)] {
                let base = Grid::from_nchw(&Rng::new(3).normals(n * cout * h * wd), n, cout, h, wd);
                let mut out = base.clone();
                conv3x3_onto(f, &x, &w, &mut out);
                let mut err = 0.0f64;
                for b in 0..n {
                    for y in 0..h {
                        for xx in 0..wd {
                            let p = out.pos(b, y, xx) * cout;
                            for o in 0..cout {
                                let got = (out.data[p + o] - base.data[p + o]) as f64;
                                err = err.max((got - want[((b * h + y) * wd + xx) * cout + o]).abs());
                            }
                        }
                    }
                }
                assert!(err / scale < tol, "F({0}×{0}) on {n}×{h}×{wd}×{cin}→{cout}: {err:e} of {scale}", f.m);
                assert!(out.data[..out.wp() * cout].iter().all(|&v| v == 0.0), "top border untouched");
            }
        }
    }

    /// What `conv3x3` adds around the tiles: a per-image bias, a residual, zero borders, against
    /// the plain im2col products.
    #[test]
    fn the_convolution_keeps_its_bias_residual_and_borders() {
        let (n, c, side) = (2, 64, 32);
        assert!(form_for(side, side, c, c).is_some(), "a layer Winograd's form serves");
        let x = Grid::from_nchw(&Rng::new(12).normals(n * c * side * side), n, c, side, side);
        let w: Vec<f32> = Rng::new(13).normals(c * c * 9);
        let res = Grid::from_nchw(&Rng::new(14).normals(n * c * side * side), n, c, side, side);
        let per: Vec<f32> = (0..n * c).map(|i| i as f32).collect();
        let got = conv3x3(&F4, &x, &w, c, &per, Some(res.clone()));
        let want = super::super::matmul::conv_oihw(&x, &w, c, 3, &per, Some(res));
        let err = got.data.iter().zip(&want.data).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(err < 1e-3, "{err}");
        assert!(got.data[..got.wp() * c].iter().all(|&v| v == 0.0), "top border zero");
    }

    /// Wrong transforms would still pass a test that only compares the forms to each other:
    /// one flipped coefficient must break the match above.
    #[test]
    fn a_wrong_coefficient_is_caught() {
        let (n, h, wd, cin, cout) = (1, 8, 8, 4, 3);
        let x = Grid::from_nchw(&Rng::new(4).normals(n * cin * h * wd), n, cin, h, wd);
        let w: Vec<f32> = Rng::new(5).normals(cout * cin * 9);
        let want = direct(&x, &w, cout);
        let mut at = F4.at.to_vec();
        at[7] = -at[7];
        let broken = Form { m: 4, bt: F4.bt, g: F4.g, at: Box::leak(at.into_boxed_slice()) };
        let mut out = Grid::zeros(n, h, wd, cout);
        conv3x3_onto(&broken, &x, &w, &mut out);
        // Output row 1 of each tile reads Aᵀ's row 1.
        let p = out.pos(0, 1, 2) * cout;
        let err = (0..cout).map(|o| (out.data[p + o] as f64 - want[(wd + 2) * cout + o]).abs()).fold(0.0, f64::max);
        assert!(err > 1e-3, "a flipped output coefficient changes the result ({err:e})");
    }

    /// im2col products against both forms on SD-2's 3×3 layers, by hand:
    /// `cargo test --release --lib winograd::tests::timing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn timing() {
        let shapes = [
            (2, 64, 64, 320, 320),
            (2, 32, 32, 640, 640),
            (2, 16, 16, 1280, 1280),
            (2, 8, 8, 1280, 1280),
            (1, 64, 64, 512, 512),
            (1, 128, 128, 512, 512),
            (1, 256, 256, 256, 256),
            (1, 512, 512, 128, 128),
        ];
        for (n, h, wd, cin, cout) in shapes {
            let x = Grid::from_nchw(&Rng::new(1).normals(n * cin * h * wd), n, cin, h, wd);
            let w: Vec<f32> = Rng::new(2).normals(cout * cin * 9);
            let bias = vec![0.0f32; cout];
            let gflop = 2.0 * (n * h * wd * 9 * cin * cout) as f64 / 1e9;
            let mut line = format!("{n}×{h}×{wd} {cin}→{cout}:");
            for form in [None, Some(&F2), Some(&F4)] {
                let mut best = f64::MAX;
                for _ in 0..3 {
                    let t = std::time::Instant::now();
                    match form {
                        None => {
                            std::hint::black_box(super::super::matmul::conv_oihw(&x, &w, cout, 3, &bias, None));
                        }
                        Some(f) => {
                            let mut out = Grid::zeros(n, h, wd, cout);
                            conv3x3_onto(f, &x, &w, &mut out);
                            std::hint::black_box(out);
                        }
                    }
                    best = best.min(t.elapsed().as_secs_f64());
                }
                let name = form.map_or("im2col".to_string(), |f| format!("F{}", f.m));
                line += &format!("  {name} {:.0} ms ({:.0} GFLOP/s direct)", best * 1e3, gflop / best);
            }
            eprintln!("{line}");
            super::super::profile::report(&format!("{n}×{h}×{wd} {cin}→{cout}, every form"));
        }
    }
}
