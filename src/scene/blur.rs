//! A cheap wide blur: three box blurs of radius ≈ σ approximate a Gaussian, at a cost that
//! does not grow with σ (the parallax field is spread over up to twice the image's size).

/// Three box blurs of radius ≈ σ (≈ a Gaussian), zero outside the image, in place.
pub fn blur(v: &mut [f32], w: usize, h: usize, sigma: f32) {
    let r = ((sigma * sigma + 1.0).sqrt() as usize).max(1);
    let mut line = Vec::new();
    for _ in 0..3 {
        for y in 0..h {
            line.clear();
            line.extend_from_slice(&v[y * w..(y + 1) * w]);
            box_line(&line, &mut v[y * w..(y + 1) * w], r);
        }
        for x in 0..w {
            line.clear();
            line.extend((0..h).map(|y| v[y * w + x]));
            let mut col = vec![0.0f32; h];
            box_line(&line, &mut col, r);
            for y in 0..h {
                v[y * w + x] = col[y];
            }
        }
    }
}

/// One box filter of radius `r` along rows then columns (the mean over a (2r+1)² window,
/// zero outside the image), in place. A ratio of two such filters is a windowed weighted mean.
pub fn box_filter(v: &mut [f32], w: usize, h: usize, r: usize) {
    let mut line = Vec::new();
    for y in 0..h {
        line.clear();
        line.extend_from_slice(&v[y * w..(y + 1) * w]);
        box_line(&line, &mut v[y * w..(y + 1) * w], r);
    }
    let mut col = vec![0.0f32; h];
    for x in 0..w {
        line.clear();
        line.extend((0..h).map(|y| v[y * w + x]));
        box_line(&line, &mut col, r);
        for y in 0..h {
            v[y * w + x] = col[y];
        }
    }
}

/// out[i] = mean of src[i−r..=i+r] (zeros beyond the ends).
fn box_line(src: &[f32], out: &mut [f32], r: usize) {
    let n = src.len();
    let mut prefix = vec![0.0f64; n + 1];
    for i in 0..n {
        prefix[i + 1] = prefix[i] + src[i] as f64;
    }
    for i in 0..n {
        let (lo, hi) = (i.saturating_sub(r), (i + r + 1).min(n));
        out[i] = ((prefix[hi] - prefix[lo]) / (2 * r + 1) as f64) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_a_constant_inside_and_spreads_a_point() {
        let (w, h) = (40, 30);
        let mut flat = vec![1.0f32; w * h];
        blur(&mut flat, w, h, 3.0);
        // Zero outside the image: the centre stays 1, the corners lose weight.
        assert!((flat[15 * w + 20] - 1.0).abs() < 1e-5);
        assert!(flat[0] < 0.5);
        let mut point = vec![0.0f32; w * h];
        point[15 * w + 20] = 1.0;
        blur(&mut point, w, h, 3.0);
        let total: f32 = point.iter().sum();
        assert!((total - 1.0).abs() < 1e-4, "mass kept: {total}");
        assert!(point[15 * w + 20] > point[15 * w + 24] && point[15 * w + 24] > point[15 * w + 29]);
    }

    #[test]
    fn a_box_filter_averages_its_window() {
        let (w, h) = (6, 5);
        let mut v: Vec<f32> = (0..w * h).map(|i| i as f32).collect();
        box_filter(&mut v, w, h, 1);
        // Inside: the mean of the 3×3 window around (2, 2) is the centre value (linear ramp).
        assert!((v[2 * w + 2] - (2 * w + 2) as f32).abs() < 1e-4);
        // At a corner, the zeros beyond the border count: 4 of 9 cells are inside.
        let corner = (0.0 + 1.0 + 6.0 + 7.0) / 9.0;
        assert!((v[0] - corner).abs() < 1e-5, "{}", v[0]);
    }
}
