//! The plain convolution the kernels' tests check against (tests only).

/// Direct NCHW convolution in f64 sums: [cout, cin, k, k] weights, stride s, padding pt at the
/// top/left and pb at the bottom/right, plus `bias`. Returns the output and its sides.
#[allow(clippy::too_many_arguments, reason = "a reference convolution with its shapes")]
pub fn conv_nchw(
    x: &[f32],
    n: usize,
    cin: usize,
    h: usize,
    w: usize,
    wt: &[f32],
    cout: usize,
    k: usize,
    s: usize,
    pt: usize,
    pb: usize,
    bias: &[f32],
) -> (Vec<f32>, usize, usize) {
    let ho = (h + pt + pb - k) / s + 1;
    let wo = (w + pt + pb - k) / s + 1;
    let mut out = vec![0.0f32; n * cout * ho * wo];
    for b in 0..n {
        for o in 0..cout {
            for y in 0..ho {
                for xx in 0..wo {
                    let mut acc = bias[o] as f64;
                    for i in 0..cin {
                        for ky in 0..k {
                            for kx in 0..k {
                                let (iy, ix) =
                                    ((y * s + ky) as isize - pt as isize, (xx * s + kx) as isize - pt as isize);
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                acc += x[((b * cin + i) * h + iy as usize) * w + ix as usize] as f64
                                    * wt[((o * cin + i) * k + ky) * k + kx] as f64;
                            }
                        }
                    }
                    out[((b * cout + o) * ho + y) * wo + xx] = acc as f32;
                }
            }
        }
    }
    (out, ho, wo)
}
