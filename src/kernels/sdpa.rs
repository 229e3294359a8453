//! Multi-head scaled dot-product attention, softmax(q·kᵀ/√d)·v, on dense token rows: per
//! image, block of query rows and head, the logits of the block against every key (one `gemm`
//! product into a scratch buffer that stays in cache), the softmax in place, then the product
//! with the values — the full N × M logit matrix never exists, and heads are read from the
//! [tokens, heads·d] rows through strides, with no reshaping copies.

use rayon::prelude::*;

use super::matmul::{View, matmul};
use super::rows::softmax_row;

/// Query rows per task at most (the scratch is this × keys floats).
const BLOCK: usize = 128;

/// Rows of one of attention's operands: row i of image b is `data[off + (b·rows + i)·ld ..]`,
/// heads side by side (so q, k and v may be column ranges of one fused projection).
pub struct Heads<'a> {
    pub data: &'a [f32],
    pub off: usize,
    pub ld: usize,
}

/// Attention of `n` queries over `m` keys for each of `b` images: `q` [b, n, heads·d], `k` and
/// `v` [b, m, heads·d]. Returns [b, n, heads·d]. `causal` (a text encoder's mask, m = n):
/// query i sees only keys 0..=i.
#[allow(clippy::too_many_arguments, reason = "queries, keys, values, their sizes and the mask")]
pub fn attention(
    q: Heads<'_>,
    k: Heads<'_>,
    v: Heads<'_>,
    b: usize,
    n: usize,
    m: usize,
    heads: usize,
    d: usize,
    causal: bool,
) -> Vec<f32> {
    assert!(!causal || m == n, "a causal mask over the queries' own tokens");
    super::profile::time("attention", || {
        let c = heads * d;
        for (t, rows) in [(&q, n), (&k, m), (&v, m)] {
            assert!(t.ld >= c && (b * rows == 0 || t.off + (b * rows - 1) * t.ld + c <= t.data.len()), "rows inside");
        }
        let mut out = vec![0.0f32; b * n * c];
        let threads = rayon::current_num_threads();
        // Enough blocks to keep every thread busy when a grid is small.
        let block = BLOCK.min(n.div_ceil(2 * threads).max(8));
        let scale = 1.0 / (d as f32).sqrt();
        // Tasks: (image, block of rows); each writes its own rows of `out`, all heads.
        let tasks: Vec<(usize, usize)> = (0..b).flat_map(|bi| (0..n).step_by(block).map(move |r| (bi, r))).collect();
        let mut chunks: Vec<&mut [f32]> = Vec::with_capacity(tasks.len());
        let mut rest: &mut [f32] = &mut out;
        for &(_, r) in &tasks {
            let rows = block.min(n - r);
            let (head, tail) = rest.split_at_mut(rows * c);
            chunks.push(head);
            rest = tail;
        }
        tasks.par_iter().zip(chunks).for_each_init(
            || vec![0.0f32; block * m],
            |scratch, (&(bi, r0), dst)| {
                let rows = dst.len() / c;
                let logits = &mut scratch[..rows * m];
                let mut sums = vec![0.0f32; rows];
                for h in 0..heads {
                    let qv = View {
                        data: q.data,
                        off: q.off + (bi * n + r0) * q.ld + h * d,
                        rows,
                        cols: d,
                        rs: q.ld,
                        cs: 1,
                    };
                    let kt =
                        View { data: k.data, off: k.off + bi * m * k.ld + h * d, rows: d, cols: m, rs: 1, cs: k.ld };
                    matmul(logits, 0, m, qv, kt, false, 1.0, false);
                    for (i, (row, s)) in logits.chunks_exact_mut(m).zip(&mut sums).enumerate() {
                        // Query r0 + i sees keys 0..=r0 + i: the rest weigh exactly nothing.
                        let seen = if causal { (r0 + i + 1).min(m) } else { m };
                        *s = softmax_row(&mut row[..seen], scale);
                        row[seen..].fill(0.0);
                    }
                    let vv =
                        View { data: v.data, off: v.off + bi * m * v.ld + h * d, rows: m, cols: d, rs: v.ld, cs: 1 };
                    matmul(dst, h * d, c, View::rows(logits, rows, m), vv, false, 1.0, false);
                    for (orow, s) in dst.chunks_exact_mut(c).zip(&sums) {
                        let inv = 1.0 / s;
                        orow[h * d..(h + 1) * d].iter_mut().for_each(|o| *o *= inv);
                    }
                }
            },
        );
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn attention_matches_the_plain_formula() {
        let (b, n, m, heads, d) = (2, 37, 11, 3, 8);
        let c = heads * d;
        // q inside wider rows (a fused projection's first columns), k and v plain.
        let qw: Vec<f32> = Rng::new(1).normals(b * n * (c + 5));
        let k: Vec<f32> = Rng::new(2).normals(b * m * c).into_iter().map(|v| 2.0 * v).collect();
        let v: Vec<f32> = Rng::new(3).normals(b * m * c);
        let got = attention(
            Heads { data: &qw, off: 0, ld: c + 5 },
            Heads { data: &k, off: 0, ld: c },
            Heads { data: &v, off: 0, ld: c },
            b,
            n,
            m,
            heads,
            d,
            false,
        );
        let mut worst = 0.0f64;
        for bi in 0..b {
            for i in 0..n {
                for h in 0..heads {
                    let logits: Vec<f64> = (0..m)
                        .map(|j| {
                            (0..d)
                                .map(|e| {
                                    qw[(bi * n + i) * (c + 5) + h * d + e] as f64
                                        * k[(bi * m + j) * c + h * d + e] as f64
                                })
                                .sum::<f64>()
                                / (d as f64).sqrt()
                        })
                        .collect();
                    let mx = logits.iter().cloned().fold(f64::MIN, f64::max);
                    let w: Vec<f64> = logits.iter().map(|l| (l - mx).exp()).collect();
                    let s: f64 = w.iter().sum();
                    for e in 0..d {
                        let want: f64 = (0..m).map(|j| w[j] / s * v[(bi * m + j) * c + h * d + e] as f64).sum();
                        worst = worst.max((got[(bi * n + i) * c + h * d + e] as f64 - want).abs());
                    }
                }
            }
        }
        assert!(worst < 1e-5, "{worst}");
    }

    /// The causal form equals plain attention over each query's prefix of the keys.
    #[test]
    fn causal_attention_sees_only_earlier_tokens() {
        let (b, n, heads, d) = (2, 21, 2, 4);
        let c = heads * d;
        let [q, k, v]: [Vec<f32>; 3] = std::array::from_fn(|i| Rng::new(10 + i as u64).normals(b * n * c));
        let all = |t| Heads { data: t, off: 0, ld: c };
        let whole = |causal| attention(all(&q), all(&k), all(&v), b, n, n, heads, d, causal);
        let got = whole(true);
        for bi in 0..b {
            for i in [0, 1, 7, n - 1] {
                // Query i alone against keys 0..=i.
                let row = &q[(bi * n + i) * c..(bi * n + i + 1) * c];
                let want = attention(
                    Heads { data: row, off: 0, ld: c },
                    Heads { data: &k, off: bi * n * c, ld: c },
                    Heads { data: &v, off: bi * n * c, ld: c },
                    1,
                    1,
                    i + 1,
                    heads,
                    d,
                    false,
                );
                let err = want.iter().zip(&got[(bi * n + i) * c..]).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                assert!(err < 1e-5, "image {bi}, token {i}: {err}");
            }
        }
        // Without the mask the first token's output differs (the test can fail).
        let plain = whole(false);
        assert!(plain[..c].iter().zip(&got[..c]).any(|(a, b)| (a - b).abs() > 1e-3));
    }
}
