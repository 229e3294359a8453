//! Multi-band blending (Burt and Adelson's Laplacian pyramid, as OpenCV's stitcher uses it):
//! two images joined along a seam, each band of detail blended over a width that matches its
//! scale — the fine detail switches within a pixel or two, the low frequencies (exposure, the
//! lighting's gradient) over a wide band, so the seam shows neither a hard edge nor a ghost.

use super::raster::RgbF;

/// `a` where `weight` is 0, `b` where it is 1, blended band by band over `levels` octaves
/// (fewer when the image is small). `weight`: one value per pixel in [0, 1].
pub fn multiband(a: &RgbF, b: &RgbF, weight: &[f32], levels: usize) -> RgbF {
    let (w, h) = (a.width, a.height);
    assert!((b.width, b.height) == (w, h) && weight.len() == w * h, "blend inputs of other sizes");
    let mask = RgbF { width: w, height: h, data: weight.iter().flat_map(|&v| [v; 3]).collect() };
    let (mut ga, mut gb, mut gm) = (a.clone(), b.clone(), mask);
    // Per level, the blended band (finest first).
    let mut bands: Vec<RgbF> = Vec::new();
    for _ in 0..levels {
        let (nw, nh) = (ga.width.div_ceil(2), ga.height.div_ceil(2));
        if nw < 4 || nh < 4 {
            break;
        }
        let (da, db, dm) = (ga.resized(nw, nh), gb.resized(nw, nh), gm.resized(nw, nh));
        let (ua, ub) = (da.resized(ga.width, ga.height), db.resized(ga.width, ga.height));
        let data = (0..ga.data.len())
            .map(|j| {
                let m = gm.data[j];
                (1.0 - m) * (ga.data[j] - ua.data[j]) + m * (gb.data[j] - ub.data[j])
            })
            .collect();
        bands.push(RgbF { width: ga.width, height: ga.height, data });
        (ga, gb, gm) = (da, db, dm);
    }
    // The coarsest level blended directly, then each band added back while upsampling.
    let mut out = RgbF {
        width: ga.width,
        height: ga.height,
        data: (0..ga.data.len()).map(|j| (1.0 - gm.data[j]) * ga.data[j] + gm.data[j] * gb.data[j]).collect(),
    };
    for band in bands.iter().rev() {
        let mut up = out.resized(band.width, band.height);
        up.data.iter_mut().zip(&band.data).for_each(|(u, d)| *u += d);
        out = up;
    }
    out.data.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_side_keeps_its_own_image_away_from_the_seam_and_the_seam_has_no_step() {
        // A dark striped image on the left, a bright striped one on the right.
        let (w, h) = (96, 40);
        let a = RgbF::from_fn(w, h, |x, _| [0.2 + 0.1 * (x % 4 < 2) as u8 as f32; 3]);
        let b = RgbF::from_fn(w, h, |_, y| [0.7 + 0.1 * (y % 3 == 0) as u8 as f32; 3]);
        let weight: Vec<f32> = (0..w * h).map(|i| if i % w >= w / 2 { 1.0 } else { 0.0 }).collect();
        let out = multiband(&a, &b, &weight, 4);
        for y in 0..h {
            for x in (0..20).chain(w - 20..w) {
                let want = if x < w / 2 { a.get(x, y)[0] } else { b.get(x, y)[0] };
                assert!((out.get(x, y)[0] - want).abs() < 0.02, "{x},{y}: {} vs {want}", out.get(x, y)[0]);
            }
        }
        // Across the seam the mean level changes gradually: no jump between neighbouring
        // columns bigger than a fraction of the 0.5 difference.
        let col = |x: usize| (0..h).map(|y| out.get(x, y)[0]).sum::<f32>() / h as f32;
        let steps: Vec<f32> = (w / 2 - 12..w / 2 + 12).map(|x| (col(x + 1) - col(x)).abs()).collect();
        let biggest = steps.iter().fold(0.0f32, |m, &s| m.max(s));
        assert!(biggest < 0.2, "largest step across the seam {biggest}");
        // A hard switch would have one step of ≈ 0.5.
        assert!(biggest > 0.0);
    }
}
