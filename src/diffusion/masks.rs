//! Training masks, following RealFill's recipe: 1–29 random rectangles (sides 3–25% of the
//! crop), the rectangles or their complement as the fill region (p = 0.5 each), and with
//! p = 0.1 the whole crop (mask dropout: the model must also work from the references alone).

use crate::rng::Rng;

/// A `size`×`size` mask, row-major, 1 = fill.
pub fn random_mask(size: usize, rng: &mut Rng) -> Vec<f32> {
    if rng.chance(0.1) {
        return vec![1.0; size * size];
    }
    let mut m = vec![0.0f32; size * size];
    let count = rng.range_usize(1, 29);
    let min_side = ((0.03 * size as f32) as usize).max(1);
    let margin = (0.01 * size as f32) as usize;
    let max_side = ((0.25 * size as f32) as usize).min(size - 2 * margin).max(min_side);
    for _ in 0..count {
        let w = rng.range_usize(min_side, max_side);
        let h = rng.range_usize(min_side, max_side);
        let x0 = rng.range_usize(margin, size - margin - w);
        let y0 = rng.range_usize(margin, size - margin - h);
        for y in y0..y0 + h {
            m[y * size + x0..y * size + x0 + w].fill(1.0);
        }
    }
    if rng.chance(0.5) {
        for v in m.iter_mut() {
            *v = 1.0 - *v;
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_statistics_follow_the_recipe() {
        let mut rng = Rng::new(11);
        let n = 4000;
        let size = 64;
        let (mut full, mut inverted_like, mut empty) = (0, 0, 0);
        let mut mean_cover = 0.0;
        for _ in 0..n {
            let m = random_mask(size, &mut rng);
            assert_eq!(m.len(), size * size);
            assert!(m.iter().all(|&v| v == 0.0 || v == 1.0));
            let cover = m.iter().sum::<f32>() / m.len() as f32;
            mean_cover += cover / n as f32;
            if cover == 1.0 {
                full += 1;
            } else if cover > 0.5 {
                inverted_like += 1;
            }
            if cover == 0.0 {
                empty += 1;
            }
        }
        let pf = full as f32 / n as f32;
        // Whole-image masks: 10% from dropout, plus rare complements of tiny rectangles (none).
        assert!((pf - 0.1).abs() < 0.02, "whole-image fraction {pf}");
        // Roughly half of the others are inverted (complement covers most of the crop).
        let pi = inverted_like as f32 / (n - full) as f32;
        assert!(pi > 0.4 && pi < 0.65, "inverted fraction {pi}");
        assert_eq!(empty, 0, "a mask always has something to fill");
        assert!(mean_cover > 0.4 && mean_cover < 0.65, "mean cover {mean_cover}");
    }
}
