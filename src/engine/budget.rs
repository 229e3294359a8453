//! One memory budget for a job, checked before any work from the numbers the user gave (the
//! canvas after `--extend`, the references, the learning batch and crop): a job that would not
//! fit is refused with a message that says what to lower, instead of being killed by the
//! system halfway, or aborting on an allocation.
//!
//! The estimate is linear in pixel counts, with costs measured on this code (`/usr/bin/time -v`,
//! docs/BENCHMARKS.md "Session 6"): a filled canvas pixel costs its original, float copies, the
//! composite and the native crop's buffers; a reference pixel its original and float copy; a
//! learning pixel (batch × crop²) the network's activations and gradients.

use crate::error::{Error, Result};

/// The program, the network and the working-size buffers.
const BASE: u64 = 450 << 20;
/// Per canvas pixel (a 48 MP fill with a 13 MP reference peaked at 2.83 GB: ≈ 55 B/pixel; a
/// 16×16 photo extended to a 7016² canvas, with a 12 MP reference whose shifted copies fill it
/// at full resolution, at 4.04 GB: ≈ 70 B/pixel, docs/BENCHMARKS.md session 15).
const PER_CANVAS_PIXEL: u64 = 70;
/// Per reference pixel: the decoded original (3 bytes) and its float copy (12).
const PER_REFERENCE_PIXEL: u64 = 15;
/// Per learning pixel: batch 8 × 256² peaked at 2.60 GB, 16 × 256² at 4.78 GB (≈ 4.2 kB/pixel).
const PER_LEARNING_PIXEL: u64 = 4200;

/// What a job holds in memory, in the user's numbers.
#[derive(Clone, Debug, Default)]
pub struct Demand {
    /// The canvas (the target with its extension).
    pub canvas: (usize, usize),
    /// The references as kept (after `reference_size`).
    pub refs: Vec<(usize, usize)>,
    /// Learning batch and crop, when the job learns the scene model.
    pub learning: Option<(usize, usize)>,
}

fn pixels((w, h): (usize, usize)) -> u64 {
    (w as u64).saturating_mul(h as u64)
}

impl Demand {
    /// The estimate's parts in bytes: canvas, references, learning.
    fn parts(&self) -> [u64; 3] {
        let refs = self.refs.iter().fold(0u64, |a, &r| a.saturating_add(pixels(r)));
        let learning = self.learning.map(|(b, c)| (b as u64).saturating_mul(pixels((c, c)))).unwrap_or(0);
        [
            pixels(self.canvas).saturating_mul(PER_CANVAS_PIXEL),
            refs.saturating_mul(PER_REFERENCE_PIXEL),
            learning.saturating_mul(PER_LEARNING_PIXEL),
        ]
    }

    pub fn bytes(&self) -> u64 {
        self.parts().iter().fold(BASE, |a, &p| a.saturating_add(p))
    }
}

/// The crop learning uses: at most the working canvas's short side (a larger crop would only
/// upsample the canvas, at a cost that grows with its square), at least 16.
pub fn learning_crop(crop: usize, working: (usize, usize)) -> usize {
    crop.min((working.0.min(working.1) / 8 * 8).max(16))
}

/// The learning batch and crop of a job on a `canvas` learned at working size `size`.
pub fn learning(batch: usize, crop: usize, canvas: (usize, usize), size: usize) -> (usize, usize) {
    (batch, learning_crop(crop, crate::scene::raster::working_size(canvas.0, canvas.1, size)))
}

/// The largest a reference is kept, as its long side: twice the canvas's long side (a closer
/// view holds finer detail than the target's pixels, but more than twice finer is never
/// sampled), and at least 1024 pixels. Larger references are downscaled when loaded.
pub fn reference_long_side(canvas: (usize, usize)) -> usize {
    (2 * canvas.0.max(canvas.1)).max(1024)
}

/// A reference's size as kept under `reference_long_side`.
pub fn reference_size((w, h): (usize, usize), canvas: (usize, usize)) -> (usize, usize) {
    let cap = reference_long_side(canvas);
    let long = w.max(h);
    if long <= cap {
        return (w, h);
    }
    let s = cap as f64 / long as f64;
    (((w as f64 * s).round() as usize).max(1), ((h as f64 * s).round() as usize).max(1))
}

/// The budget in bytes: `memory_gib` (`REALFILL_MEMORY_GIB`), else ¾ of the machine's memory
/// (8 GiB where it cannot be read).
pub fn budget_bytes(memory_gib: Option<f64>) -> u64 {
    if let Some(g) = memory_gib {
        return (g * (1u64 << 30) as f64) as u64;
    }
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    });
    total.map(|t| t / 4 * 3).unwrap_or(8 << 30)
}

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

/// Refuse a job whose estimate is above the budget, naming the parts and what to lower.
/// `memory_gib`: the budget set by `REALFILL_MEMORY_GIB`, if any.
pub fn check(d: &Demand, memory_gib: Option<f64>) -> Result<()> {
    let (need, budget) = (d.bytes(), budget_bytes(memory_gib));
    if need <= budget {
        return Ok(());
    }
    let [canvas, refs, learning] = d.parts();
    let mut parts = vec![format!("canvas {}×{}: {:.1} GiB", d.canvas.0, d.canvas.1, gib(canvas))];
    if refs > 0 {
        parts.push(format!("{} references: {:.1} GiB", d.refs.len(), gib(refs)));
    }
    if let Some((b, c)) = d.learning {
        parts.push(format!("learning batch {b} × crop {c}²: {:.1} GiB", gib(learning)));
    }
    let lower = if learning >= canvas && learning >= refs {
        "lower --batch or --crop"
    } else if refs >= canvas {
        "use fewer or smaller references"
    } else {
        "extend the canvas less, or downscale the photo"
    };
    let source = if memory_gib.is_some() {
        "REALFILL_MEMORY_GIB"
    } else {
        "¾ of this machine's memory; REALFILL_MEMORY_GIB sets another"
    };
    Err(Error::Invalid(format!(
        "this job needs about {:.1} GiB ({}), above the memory budget of {:.1} GiB ({source}); {lower}",
        gib(need),
        parts.join(", "),
        gib(budget)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_adds_its_parts_and_the_message_names_the_largest() {
        let small = Demand { canvas: (4000, 3000), refs: vec![(4000, 3000)], learning: None };
        assert!((0.9..1.4).contains(&gib(small.bytes())), "{:.2} GiB", gib(small.bytes()));
        assert!(check(&small, None).is_ok() || budget_bytes(None) < small.bytes());
        // Learning at the largest batch and crop: tens of GiB, refused on any ordinary machine.
        let learn = Demand { canvas: (376, 256), refs: vec![], learning: Some((64, 512)) };
        assert!(gib(learn.bytes()) > 60.0);
        if budget_bytes(None) < learn.bytes() {
            let e = check(&learn, None).unwrap_err().to_string();
            assert!(e.contains("lower --batch or --crop") && e.contains("learning batch 64"), "{e}");
        }
        let refs = Demand { canvas: (376, 256), refs: vec![(1 << 20, 1 << 20)], learning: None };
        let e = check(&refs, None).unwrap_err().to_string();
        assert!(e.contains("fewer or smaller references"), "{e}");
        // Absurd numbers saturate instead of wrapping to a small estimate.
        let absurd =
            Demand { canvas: (usize::MAX, usize::MAX), refs: vec![], learning: Some((usize::MAX, usize::MAX)) };
        assert_eq!(absurd.bytes(), u64::MAX);
        // A budget set by the switch is the one checked, and named.
        let e = check(&small, Some(0.5)).unwrap_err().to_string();
        assert!(e.contains("budget of 0.5 GiB (REALFILL_MEMORY_GIB)"), "{e}");
        assert!(check(&small, Some(2.0)).is_ok());
    }

    #[test]
    fn references_are_kept_at_most_twice_the_canvas_long_side() {
        assert_eq!(reference_size((6000, 4000), (376, 256)), (1024, 683));
        assert_eq!(reference_size((6000, 4000), (4000, 3000)), (6000, 4000));
        assert_eq!(reference_size((4000, 12000), (3000, 2000)), (2000, 6000));
        assert_eq!(reference_size((800, 600), (376, 256)), (800, 600));
    }
}
