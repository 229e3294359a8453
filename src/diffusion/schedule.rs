//! The noise schedule: cosine ᾱ(t) (Nichol & Dhariwal 2021) over `T` discrete steps:
//! x_t = √ᾱ·x0 + √(1−ᾱ)·ε. The scene model predicts x0 (as a residual over the warped
//! references); the sampler derives ε from x_t and that estimate.

pub const TRAIN_STEPS: usize = 1000;
const COSINE_S: f64 = 0.008;

#[derive(Clone, Debug)]
pub struct Schedule {
    /// ᾱ_t for t = 0..T-1 (t = 0 is the least noisy step).
    pub alpha_bar: Vec<f64>,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule::cosine(TRAIN_STEPS)
    }
}

/// The closed form ᾱ(τ) = f(τ)/f(0), f(τ) = cos²((τ + s)/(1 + s)·π/2), τ ∈ [0, 1].
pub fn cosine_alpha_bar(tau: f64) -> f64 {
    let f = |t: f64| ((t + COSINE_S) / (1.0 + COSINE_S) * std::f64::consts::FRAC_PI_2).cos().powi(2);
    f(tau) / f(0.0)
}

impl Schedule {
    /// Discrete cosine schedule; each step's β is clipped to 0.999 as in the paper, so ᾱ stays
    /// positive at the last step.
    pub fn cosine(steps: usize) -> Schedule {
        let mut alpha_bar = Vec::with_capacity(steps);
        let mut prod = 1.0f64;
        for t in 0..steps {
            let a0 = cosine_alpha_bar(t as f64 / steps as f64);
            let a1 = cosine_alpha_bar((t + 1) as f64 / steps as f64);
            let beta = (1.0 - a1 / a0).min(0.999);
            prod *= 1.0 - beta;
            alpha_bar.push(prod);
        }
        Schedule { alpha_bar }
    }

    pub fn len(&self) -> usize {
        self.alpha_bar.len()
    }

    pub fn is_empty(&self) -> bool {
        self.alpha_bar.is_empty()
    }

    /// `n` sampling timesteps from most to least noisy, evenly spaced, ending at 0.
    pub fn sampling_timesteps(&self, n: usize) -> Vec<usize> {
        let n = n.clamp(1, self.len());
        let last = (self.len() - 1) as f64;
        let mut ts: Vec<usize> =
            (0..n).map(|i| (last * (1.0 - i as f64 / (n - 1).max(1) as f64)).round() as usize).collect();
        ts.dedup();
        ts
    }

    /// `n` timesteps from `start` down to 0 (for sampling that starts from a partly noised
    /// image: the finer levels of the patch engine).
    pub fn timesteps_from(&self, start: usize, n: usize) -> Vec<usize> {
        let start = start.min(self.len() - 1);
        let n = n.clamp(1, start + 1);
        let mut ts: Vec<usize> =
            (0..n).map(|i| (start as f64 * (1.0 - i as f64 / (n - 1).max(1) as f64)).round() as usize).collect();
        ts.dedup();
        ts
    }

    /// The timestep whose ᾱ is closest to `alpha_bar`.
    pub fn timestep_for(&self, alpha_bar: f64) -> usize {
        (0..self.len())
            .min_by(|&a, &b| (self.alpha_bar[a] - alpha_bar).abs().total_cmp(&(self.alpha_bar[b] - alpha_bar).abs()))
            .unwrap_or(0)
    }

    pub fn coeffs(&self, t: usize) -> (f32, f32) {
        let a = self.alpha_bar[t];
        (a.sqrt() as f32, (1.0 - a).sqrt() as f32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discrete_schedule_matches_closed_form() {
        let s = Schedule::cosine(1000);
        // Until the β clip matters, the product telescopes to the closed form.
        for &t in &[0usize, 10, 100, 500, 900] {
            let want = cosine_alpha_bar((t + 1) as f64 / 1000.0);
            assert!((s.alpha_bar[t] - want).abs() < 1e-9, "t={t}: {} vs {want}", s.alpha_bar[t]);
        }
        assert!(s.alpha_bar.windows(2).all(|w| w[1] < w[0]), "ᾱ decreases");
        assert!(s.alpha_bar[999] > 0.0 && s.alpha_bar[999] < 1e-3);
        assert!(s.alpha_bar[0] > 0.999);
    }

    #[test]
    fn sampling_timesteps_span_the_schedule() {
        let s = Schedule::cosine(1000);
        let ts = s.sampling_timesteps(25);
        assert_eq!(ts.len(), 25);
        assert_eq!(ts[0], 999);
        assert_eq!(*ts.last().unwrap(), 0);
        assert!(ts.windows(2).all(|w| w[1] < w[0]));
        assert_eq!(s.sampling_timesteps(1), vec![999]);
    }
}
